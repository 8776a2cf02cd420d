"""Settings of the data-node role (``hypha-sm data run data.toml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from hypha_sm.config.addresses import Address
from hypha_sm.config.layers import LayeredSettings, check_tls_files


class DataNodeSettings(LayeredSettings):
    """The data node's key, network, the datasets it serves and whose grants it honours."""

    node_key: Path = Field(description="the data node's Ed25519 key (hypha-sm keygen)")
    gateway_addresses: list[Address] = Field(
        min_length=1, description="each gateway's request address (its `listen`)"
    )
    listen_address: Address = Field(
        default="tcp://127.0.0.1:7300", description="slice fetches arrive here"
    )
    external_address: Address | None = Field(
        default=None, description="the address workers dial, if it differs"
    )
    datasets: list[Path] = Field(
        min_length=1, description="dataset directories (hypha-sm data prepare), checked at start"
    )
    grant_from: list[str] = Field(
        default_factory=list,
        description="peer ids of the schedulers whose grants are honoured (empty: any)",
    )
    max_concurrent: int = Field(default=8, ge=1, le=256, description="slices sent at once")
    send_timeout: float = Field(default=300.0, gt=0, le=86400, description="seconds per slice")
    announce_every: float = Field(default=60.0, gt=0, le=3600, description="record renewal period")
    record_lifetime: float = Field(
        default=180.0, gt=0, le=86400, description="how long a record holds"
    )
    event_log_dir: Path | None = Field(
        default=None, description="where each run's event log is written; none if unset"
    )
    cert_pem: Path | None = Field(default=None, description="TLS certificate")
    key_pem: Path | None = Field(default=None, description="TLS private key")
    trust_pem: Path | None = Field(default=None, description="CA bundle peers must chain to")

    @model_validator(mode="after")
    def _tls_needs_files(self) -> Self:
        addresses = [*self.gateway_addresses, self.listen_address, self.external_address or ""]
        check_tls_files(self, addresses)
        return self

"""Settings of the gateway role (``hypha-sm gateway run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from hypha_sm.config.addresses import Address
from hypha_sm.config.layers import LayeredSettings, check_tls_files


class GatewaySettings(LayeredSettings):
    """Where the gateway listens, its key, and its limits."""

    node_key: Path = Field(description="the gateway's Ed25519 key (create with hypha-sm keygen)")
    listen: Address = Field("tcp://0.0.0.0:7000", description="requests: records, lookups, health")
    ingest: Address = Field("tcp://0.0.0.0:7001", description="schedulers' publishers dial here")
    publish: Address = Field("tcp://0.0.0.0:7002", description="workers' subscriptions dial here")
    cert_pem: Path | None = Field(None, description="TLS certificate, for tls+tcp:// addresses")
    key_pem: Path | None = Field(None, description="TLS private key")
    trust_pem: Path | None = Field(None, description="CA bundle peers' certificates must chain to")
    max_records: int = Field(100_000, ge=1, description="directory size limit, in records")
    max_directory_mb: int = Field(
        64, ge=1, description="directory size limit, in MiB of signed records"
    )
    relay_queue: int = Field(1024, ge=1, description="advertisements queued before overload drops")
    max_skew: float = Field(30.0, gt=0, description="largest clock difference accepted, seconds")

    @model_validator(mode="after")
    def _tls_needs_files(self) -> Self:
        check_tls_files(self, (self.listen, self.ingest, self.publish))
        return self

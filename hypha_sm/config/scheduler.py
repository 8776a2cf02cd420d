"""Settings of the minimal scheduler role (``hypha-sm scheduler run job.toml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hypha_sm.config.layers import LayeredSettings, check_tls_files

_ADDRESS = r"^(tcp|tls\+tcp)://[^\s]+:\d+$|^ipc:///[^\s]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class JobResources(_Strict):
    """What each worker must offer: cpu in cores; memory, storage and gpu in GB."""

    cpu: float = Field(default=1.0, ge=0, le=1e6)
    memory: float = Field(default=1.0, ge=0, le=1e9)
    storage: float = Field(default=0.0, ge=0, le=1e9)
    gpu: float = Field(default=0.0, ge=0, le=1e9)


class JobExecutor(_Strict):
    """The executor the job needs on every worker (matched by class and name)."""

    cls: Literal["train", "aggregate"] = Field(alias="class")
    name: str = Field(min_length=1, max_length=200)


class JobSettings(_Strict):
    """One job run on ``workers`` workers."""

    workers: int = Field(default=1, ge=1, le=1000, description="how many workers run the job")
    executor: JobExecutor
    resources: JobResources = JobResources()
    bid: float = Field(
        default=100.0, gt=0, allow_inf_nan=False, description="price offered per lease"
    )
    max_price: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="highest offer price accepted (a `whole` worker may counter above the bid)",
    )
    spec: dict[str, Any] = Field(
        default_factory=dict, description="given to each job (as `config` in its JOB_JSON)"
    )
    offer_wait: float = Field(
        0.3, gt=0, le=0.45, description="seconds to collect offers before choosing (< 0.5)"
    )
    advertise_timeout: float = Field(
        60.0, gt=0, description="give up if not enough workers offered within this"
    )
    renew_interval: float = Field(
        default=3.0, gt=0, le=8.0, description="seconds between renewals"
    )
    timeout: float = Field(
        default=3600.0, gt=0, description="cancel the job after this many seconds"
    )
    dataset: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="the dataset whose slices the job's workers fetch (specs/dataset.md)",
    )
    slice_timeout: float = Field(
        default=600.0, gt=0, le=86400, description="seconds a worker may hold a slice"
    )
    epochs: int = Field(default=0, ge=0, description="epochs of slices to hand out (0: no limit)")


class SchedulerSettings(LayeredSettings):
    """The scheduler's key, network and the job it runs."""

    node_key: Path = Field(description="the scheduler's Ed25519 key (hypha-sm keygen)")
    gateway_addresses: list[str] = Field(
        min_length=1, description="each gateway's request address (its `listen`)"
    )
    listen_address: str = Field(
        default="tcp://127.0.0.1:0", pattern=_ADDRESS, description="offers, statuses, progress"
    )
    external_address: str | None = Field(
        default=None, pattern=_ADDRESS, description="the address workers reply to, if it differs"
    )
    cert_pem: Path | None = Field(
        default=None, description="TLS certificate, for tls+tcp:// addresses"
    )
    key_pem: Path | None = Field(default=None, description="TLS private key")
    trust_pem: Path | None = Field(
        default=None, description="CA bundle peers' certificates must chain to"
    )
    event_log_dir: Path | None = Field(
        default=None,
        description="where each run's event log is written (hypha-sm replay DIR); none if unset",
    )
    job: JobSettings

    @model_validator(mode="after")
    def _tls_needs_files(self) -> Self:
        addresses = [*self.gateway_addresses, self.listen_address, self.external_address or ""]
        check_tls_files(self, addresses)
        return self

"""Settings of the minimal scheduler role (``hypha-sm scheduler run job.toml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hypha_sm.config.addresses import Address
from hypha_sm.config.layers import LayeredSettings, check_tls_files


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

    cls: Literal["train", "inference", "aggregate"] = Field(alias="class")
    name: str = Field(min_length=1, max_length=200)


class InnerOptimizer(_Strict):
    """The workers' AdamW (the original's ``Adam`` config, kebab-case keys)."""

    learning_rate: float = Field(1e-3, gt=0, alias="learning-rate", allow_inf_nan=False)
    betas: tuple[float, float] | None = None
    epsilon: float | None = Field(None, gt=0)
    weight_decay: float = Field(0.01, ge=0, alias="weight-decay")


class OuterOptimizer(_Strict):
    """The parameter server's Nesterov step (the original's defaults)."""

    learning_rate: float = Field(0.7, gt=0, alias="learning-rate", allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, lt=1)


class ParameterServerSettings(_Strict):
    """The parameter server's placement and its rounds' straggler rules."""

    resources: JobResources = JobResources(cpu=1.0, memory=1.0)
    bid: float = Field(default=100.0, gt=0, allow_inf_nan=False)
    quorum: int = Field(
        default=0, ge=0, description="files that close a round at its deadline (0: all)"
    )
    round_timeout: float = Field(
        default=120.0, gt=0, description="seconds after a round's first file the others may take"
    )
    weighting: Literal["samples", "equal"] = "samples"
    compat_pairwise: bool = Field(
        default=False, description="the original's pairwise average (a true mean only for 2)"
    )


class DiLoCoSettings(_Strict):
    """A DiLoCo job (``[job.diloco]``): rounds, optimizers, model and the parameter server.

    ``model`` is the original's ``Model`` (``task``, ``artifact``, ``input-names``) and is
    given to the executor as it is; so is ``extra`` (merged into the executor's config:
    the project's executor reads ``eval``, ``seed``, ``precision``, ``checkpoint_dir``).
    """

    rounds: int = Field(default=100, ge=1, le=1_000_000, description="outer rounds")
    avg_samples_between_updates: int = Field(default=1200, ge=1)
    max_batch_size: int = Field(default=600, ge=1)
    inner_optimizer: InnerOptimizer = Field(
        default_factory=lambda: InnerOptimizer.model_validate({})
    )
    outer_optimizer: OuterOptimizer = Field(
        default_factory=lambda: OuterOptimizer.model_validate({})
    )
    model: dict[str, Any] = Field(default_factory=dict)
    preprocessor: dict[str, Any] | None = None
    parameter_server: ParameterServerSettings = ParameterServerSettings()
    time_cap: float = Field(default=10.0, gt=0, description="seconds (the projection's cap)")
    update_cap: int = Field(default=3, ge=1)
    extra: dict[str, Any] = Field(default_factory=dict)


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
    diloco: DiLoCoSettings | None = Field(
        default=None, description="a DiLoCo training job (its own parameter server)"
    )
    metrics_dir: Path | None = Field(
        default=None, description="where a DiLoCo job's metrics.jsonl/.csv and loss curve go"
    )


class SchedulerSettings(LayeredSettings):
    """The scheduler's key, network and the job it runs."""

    node_key: Path = Field(description="the scheduler's Ed25519 key (hypha-sm keygen)")
    gateway_addresses: list[Address] = Field(
        min_length=1, description="each gateway's request address (its `listen`)"
    )
    listen_address: Address = Field(
        default="tcp://127.0.0.1:0", description="offers, statuses, progress"
    )
    external_address: Address | None = Field(
        default=None, description="the address workers reply to, if it differs"
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
    telemetry_endpoint: str | None = Field(
        default=None, description="OTLP endpoint for a DiLoCo job's round metrics (or OTEL_*)"
    )
    telemetry_headers: str | None = None
    telemetry_attributes: str | None = None
    telemetry_protocol: Literal["grpc", "http/protobuf"] | None = None
    telemetry_sampler: str | None = None
    telemetry_sample_ratio: float | None = Field(None, ge=0, le=1)
    job: JobSettings

    @model_validator(mode="after")
    def _tls_needs_files(self) -> Self:
        addresses = [*self.gateway_addresses, self.listen_address, self.external_address or ""]
        check_tls_files(self, addresses)
        return self

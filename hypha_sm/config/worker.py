"""Settings of a worker node (``worker.toml``), per the seed document.

Layers: the TOML file → ``HYPHA_*`` environment → command-line flags; telemetry settings may
also come from the standard ``OTEL_*`` variables, which win over the ``telemetry_*`` keys.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from hypha_sm.config.addresses import Address
from hypha_sm.config.layers import LayeredSettings, check_tls_files
from hypha_sm.roles.worker.core.policy import RUNTIME_FOR_CLASS, parse_strategy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResourceSettings(_Strict):
    """What the node offers: cpu in cores; memory, storage and gpu (VRAM, summed) in GB."""

    cpu: float = Field(ge=0, le=1e6)
    memory: float = Field(ge=0, le=1e9)
    storage: float = Field(ge=0, le=1e9)
    gpu: float = Field(default=0.0, ge=0, le=1e9)


def _strategy(value: object) -> str:
    return parse_strategy(value)


class OfferSettings(_Strict):
    """Pricing: ``floor`` is the hard minimum, ``price`` the ask (specs/pricing.md)."""

    price: float = Field(default=100.0, ge=0, allow_inf_nan=False)
    floor: float = Field(default=100.0, ge=0, allow_inf_nan=False)
    strategy: Annotated[Literal["whole", "flexible"], BeforeValidator(_strategy)] = "whole"


class ExecutorSettings(_Strict):
    """One executor: job class, name, runtime; ``cmd`` and ``args`` for the process runtime."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    cls: Literal["train", "inference", "aggregate"] = Field(alias="class")
    name: str = Field(min_length=1, max_length=200)
    runtime: Literal["process", "parameter-server"]
    cmd: str | None = None
    args: list[str] = []

    @model_validator(mode="after")
    def _runtime_fits(self) -> Self:
        if RUNTIME_FOR_CLASS[self.cls] != self.runtime:
            raise ValueError(
                f"class {self.cls!r} runs on runtime {RUNTIME_FOR_CLASS[self.cls]!r}, "
                f"not {self.runtime!r}"
            )
        if self.runtime == "process" and not self.cmd:
            raise ValueError("the process runtime needs `cmd`")
        if self.runtime == "parameter-server" and (self.cmd or self.args):
            raise ValueError("the parameter-server runtime is built in: no `cmd` or `args`")
        return self


class WorkerSettings(LayeredSettings):
    """Everything ``hypha-sm run worker.toml`` needs."""

    node_key: Path = Field(description="Ed25519 node key (hypha-sm keygen)")
    cert_pem: Path | None = Field(None, description="TLS certificate (HYPHA_CERT_PEM)")
    key_pem: Path | None = Field(None, description="TLS private key (HYPHA_KEY_PEM)")
    trust_pem: Path | None = Field(None, description="TLS CA bundle (HYPHA_TRUST_PEM)")
    gateway_addresses: list[Address] = Field(
        min_length=1, description="each gateway's request address (its `listen`)"
    )
    listen_addresses: list[Address] = Field(min_length=1)
    external_addresses: list[Address] = []
    bulk_listen_address: Address | None = Field(
        default=None,
        description="where peers push files (default: the first listen host, a free port)",
    )
    work_dir: Path
    event_log_max_bytes: int = Field(
        default=64 << 20, ge=64 << 10, description="start a new event-log segment past this size"
    )
    event_log_keep: int = Field(
        default=8, ge=1, le=10_000, description="event-log segments kept in <work_dir>/events"
    )
    event_log_fsync: Literal["never", "batch", "always"] = Field(
        default="batch",
        description="push event-log entries to the disk: never, once per loop wake-up that "
        "produced effects (batch), or after every entry (always)",
    )
    job_user: str = Field(
        default="auto",
        min_length=1,
        description='who jobs run as: "auto" (as root: a user of its own per job, from '
        "job_uid_range; otherwise the node's user), \"node\" (the node's own user), or a "
        "user name or uid for every job",
    )
    job_uid_range: tuple[int, int] = Field(
        default=(64000, 64999), description="uids (and gids) given to jobs with job_user = auto"
    )
    disk_reserve_mb: int = Field(
        default=256,
        ge=1,
        description="below this much free space on the work dir's disk, the node frees "
        "failed job dirs, stops offering and stops the job using the most disk",
    )
    fetch_file_roots: list[Path] = Field(
        default=[], description="directories jobs may fetch file:// artifacts from"
    )
    resources: ResourceSettings
    offer: OfferSettings = OfferSettings()
    executors: list[ExecutorSettings] = Field(min_length=1)
    telemetry_endpoint: str | None = None
    telemetry_headers: str | None = None
    telemetry_attributes: str | None = None
    telemetry_protocol: Literal["grpc", "http/protobuf"] | None = None
    telemetry_sampler: (
        Literal["always_on", "always_off", "traceidratio", "parentbased_traceidratio"] | None
    ) = None
    telemetry_sample_ratio: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        addresses = [
            *self.gateway_addresses,
            *self.listen_addresses,
            *self.external_addresses,
            self.bulk_listen_address or "",
        ]
        check_tls_files(self, addresses)
        low, high = self.job_uid_range
        if not 1000 <= low <= high < 2**31:
            raise ValueError(
                f"job_uid_range = {list(self.job_uid_range)}: expected [low, high] with "
                "1000 <= low <= high < 2^31"
            )
        seen = set()
        for executor in self.executors:
            key = (executor.cls, executor.name)
            if key in seen:
                raise ValueError(f"executor {executor.cls}/{executor.name} is configured twice")
            seen.add(key)
        return self


#: Programs that run their arguments as code (a shell's -c, an interpreter's -c/-e).
_CODE_RUNNERS = frozenset(
    {"sh", "bash", "dash", "zsh", "ksh", "fish", "busybox", "python", "python3", "perl", "node"}
)


def executor_warnings(settings: WorkerSettings) -> list[str]:
    """Executors whose args put the scheduler's spec where it becomes code or shell words.

    ``{JOB_JSON}`` is text a scheduler chose. Alone as an argument it is one argument; inside a
    larger one (``sh -c "train --job {JOB_JSON}"``), a spec such as ``{"x": "$(rm -rf ~)"}``
    is run by the shell. The environment (``$JOB_JSON``, ``$JOB_JSON_FILE``) is safe.
    """
    warnings = []
    for e in settings.executors:
        if not e.cmd:
            continue
        program = Path(e.cmd).name
        runs_code = program in _CODE_RUNNERS or program.startswith("python")
        for arg in e.args:
            if "{JOB_JSON}" not in arg:
                continue
            if arg != "{JOB_JSON}" or (runs_code and any(a in ("-c", "-e") for a in e.args)):
                warnings.append(
                    f"executor {e.cls}/{e.name}: {{JOB_JSON}} inside the argument {arg!r}"
                    f" of {program}: a scheduler's spec becomes code or shell words there "
                    "(command injection); read $JOB_JSON or $JOB_JSON_FILE in the job instead"
                )
                break
    return warnings


#: Standard OpenTelemetry variables and the keys they set (the variables win).
OTEL_VARIABLES = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "telemetry_endpoint",
    "OTEL_EXPORTER_OTLP_HEADERS": "telemetry_headers",
    "OTEL_RESOURCE_ATTRIBUTES": "telemetry_attributes",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "telemetry_protocol",
    "OTEL_TRACES_SAMPLER": "telemetry_sampler",
    "OTEL_TRACES_SAMPLER_ARG": "telemetry_sample_ratio",
}


def otel_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``telemetry_*`` values from ``OTEL_*`` variables (they override file and HYPHA_*)."""
    env = os.environ if environ is None else environ
    return {key: env[var] for var, key in OTEL_VARIABLES.items() if env.get(var)}


def otel_sources(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Which ``OTEL_*`` variable set each ``telemetry_*`` value (errors name it)."""
    env = os.environ if environ is None else environ
    return {key: var for var, key in OTEL_VARIABLES.items() if env.get(var)}


def load_worker_settings(path: Path | None, flags: Mapping[str, Any]) -> WorkerSettings:
    """The worker's settings: file → HYPHA_* → flags, with OTEL_* winning for telemetry.

    Raises:
        ConfigError: naming each invalid key, its value and what is allowed.
    """
    from hypha_sm.config.layers import load_settings

    layered = {k: v for k, v in flags.items() if v is not None}
    layered.update(otel_overrides())
    return load_settings(WorkerSettings, path, layered, otel_sources())


def uses_tls(settings: WorkerSettings) -> bool:
    """Some address is ``tls+tcp://``: the TLS files are needed (else they are not used)."""
    addresses = [
        *settings.gateway_addresses,
        *settings.listen_addresses,
        *settings.external_addresses,
        settings.bulk_listen_address or "",
    ]
    return any(a.startswith("tls+tcp://") for a in addresses)


def preflight(settings: WorkerSettings) -> list[str]:
    """What would stop ``run`` before it serves, one line each.

    ``check-config`` reports the same: the node key, the TLS files when an address needs them,
    the work dir, each executor's program.
    """
    problems = []
    key = settings.node_key
    if not key.is_file():
        elsewhere = Path.cwd() / key.name
        if elsewhere.is_file():  # where a path read against the current directory would be
            problems.append(
                f"node_key {key}: no such file; {elsewhere} exists, but paths in a config "
                f'file are relative to the file: set node_key = "{elsewhere}"'
            )
        else:
            problems.append(
                f"node_key {key}: no such file (if this node has an identity, point node_key "
                f"at it; `hypha-sm keygen {key}` makes a new one)"
            )
    if uses_tls(settings):
        for name in ("cert_pem", "key_pem", "trust_pem"):
            path = getattr(settings, name)
            if path is not None and not Path(path).is_file():
                problems.append(f"{name} {path}: no such file (a tls+tcp:// address needs it)")
    if (problem := _work_dir_problem(settings.work_dir.absolute())) is not None:
        problems.append(problem)
    problems.extend(
        f"executor {e.cls}/{e.name}: cmd {e.cmd!r} is not a program here"
        for e in settings.executors
        if e.cmd and shutil.which(e.cmd) is None
    )
    return problems


def _work_dir_problem(work_dir: Path) -> str | None:
    """Why ``work_dir`` cannot be made and written, found by trying (and undoing it).

    ``os.access`` says yes to root everywhere, /proc and read-only file systems included.
    """
    existing = work_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"work_dir {work_dir}: cannot create or write it: {existing} is a file"
    made: list[Path] = []
    try:
        for parent in reversed([work_dir, *work_dir.parents]):
            if not parent.exists():
                parent.mkdir()
                made.append(parent)
        os.rmdir(tempfile.mkdtemp(dir=work_dir, prefix=".hypha-check-"))
    except OSError as exc:
        return f"work_dir {work_dir}: cannot create or write it: {exc.strerror}"
    finally:
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()
    return None


def summary(settings: WorkerSettings) -> str:
    """One line of what the node offers: resources, price, executors, where it listens."""
    r, o = settings.resources, settings.offer
    executors = ", ".join(f"{e.cls}/{e.name}" for e in settings.executors) or "none"
    reached = ", ".join(settings.external_addresses) or "the listen address"
    gateways = ", ".join(settings.gateway_addresses) or "none"
    return (
        f"offering cpu {r.cpu:g}, memory {r.memory:g} GB, storage {r.storage:g} GB, "
        f"gpu {r.gpu:g} GB at price {o.price:g} ({o.strategy}, floor {o.floor:g}); "
        f"executors {executors}; listening on {', '.join(settings.listen_addresses)} "
        f"(reached at {reached}); gateways {gateways}"
    )


def capacity_warnings(
    settings: WorkerSettings,
    *,
    cpus: int,
    memory_bytes: int,
    gpu_found: bool,
    disk_bytes: int | None = None,
) -> list[str]:
    """Advertised resources this machine does not have (schedulers would pay for nothing)."""
    r = settings.resources
    warnings = []
    if r.cpu > cpus:
        warnings.append(f"resources.cpu = {r.cpu:g}, but this machine has {cpus} CPUs")
    if r.memory * 1e9 > memory_bytes:
        warnings.append(
            f"resources.memory = {r.memory:g} GB, but this machine has {memory_bytes / 1e9:.1f} GB"
        )
    if r.gpu > 0 and not gpu_found:
        warnings.append(f"resources.gpu = {r.gpu:g} GB, but no GPU was found (nvidia-smi)")
    if disk_bytes is not None and r.storage * 1e9 > disk_bytes:
        warnings.append(
            f"resources.storage = {r.storage:g} GB, but the work dir's disk has "
            f"{disk_bytes / 1e9:.1f} GB free"
        )
    return warnings

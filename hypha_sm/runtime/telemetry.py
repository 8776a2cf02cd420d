"""Telemetry set-up every role shares: settings, the sampler and the OTLP exporters.

``TelemetryConfig.from_settings`` reads a role's ``telemetry_*`` settings (``OTEL_*`` variables
already merged into them) and ``OTEL_SERVICE_NAME``; ``build_exporters`` and ``build_sampler``
make the OpenTelemetry SDK objects from it. The SDK is imported only when telemetry is on.
See docs/telemetry.md.
"""

from __future__ import annotations

import logging
import math
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol

from hypha_sm.core.errors import HyphaSMError

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME: Final = "hypha-worker"
DEFAULT_PROTOCOL: Final = "http/protobuf"
DEFAULT_EXPORT_INTERVAL: Final = 5.0
DEFAULT_EXPORT_TIMEOUT: Final = 5.0
PEER_ID_ATTRIBUTE: Final = "hypha.peer_id"

OtlpProtocol = Literal["grpc", "http/protobuf"]


class TelemetryConfigError(HyphaSMError, ValueError):
    """A telemetry setting that cannot be used; the message names it and the bad value."""


# -- settings ------------------------------------------------------------------------------


class TelemetrySettings(Protocol):
    """The settings ``from_settings`` reads; ``WorkerSettings`` has them."""

    @property
    def telemetry_endpoint(self) -> str | None: ...

    @property
    def telemetry_headers(self) -> str | None: ...

    @property
    def telemetry_attributes(self) -> str | None: ...

    @property
    def telemetry_protocol(self) -> str | None: ...

    @property
    def telemetry_sampler(self) -> str | None: ...

    @property
    def telemetry_sample_ratio(self) -> float | None: ...


def parse_pairs(text: str | None, what: str) -> dict[str, str]:
    """``k=v,k2=v2`` (W3C-baggage style, values percent-decoded) as a dict.

    Empty items are skipped; spaces around keys and values are trimmed.

    Raises:
        TelemetryConfigError: an item has no ``=`` or an empty key.
    """
    out: dict[str, str] = {}
    if not text:
        return out
    for item in text.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key = urllib.parse.unquote(key.strip())
        if not eq or not key:
            raise TelemetryConfigError(f"{what}: {item.strip()!r} is not key=value")
        out[key] = urllib.parse.unquote(value.strip())
    return out


@dataclass(frozen=True)
class TelemetryConfig:
    """Where and how to export, resolved from the settings and the environment."""

    endpoint: str
    protocol: OtlpProtocol
    headers: Mapping[str, str]
    #: The resource's attributes: ``service.name``, the peer id, and ``telemetry_attributes``.
    resource: Mapping[str, str]
    sampler: str | None = None
    sample_ratio: float | None = None
    #: Seconds between metric exports.
    export_interval: float = DEFAULT_EXPORT_INTERVAL
    #: Seconds one export may take; None leaves it to the exporters, which then read
    #: ``OTEL_EXPORTER_OTLP_TIMEOUT`` (in seconds, as the Python exporters do).
    export_timeout: float | None = DEFAULT_EXPORT_TIMEOUT

    @classmethod
    def from_settings(
        cls,
        settings: TelemetrySettings,
        peer_id: object,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> TelemetryConfig | None:
        """The configuration, or None when no endpoint is set (telemetry off).

        ``service.name`` is ``OTEL_SERVICE_NAME`` if set, else the one in
        ``telemetry_attributes``, else ``hypha-worker``; ``hypha.peer_id`` is always the node's
        peer id, and ``service.instance.id`` defaults to it.

        Raises:
            TelemetryConfigError: malformed headers or attributes, an unknown protocol or
                sampler, or a bad ``OTEL_METRIC_EXPORT_INTERVAL``.
        """
        env = os.environ if environ is None else environ
        endpoint = (settings.telemetry_endpoint or "").strip()
        if not endpoint:
            return None
        protocol = settings.telemetry_protocol or DEFAULT_PROTOCOL
        if protocol not in ("grpc", "http/protobuf"):
            raise TelemetryConfigError(
                f"telemetry_protocol: {protocol!r} is not 'grpc' or 'http/protobuf'"
            )
        sampler = settings.telemetry_sampler
        if sampler is not None and sampler not in _SAMPLERS:
            raise TelemetryConfigError(
                f"telemetry_sampler: {sampler!r} is not one of {', '.join(_SAMPLERS)}"
            )
        headers = parse_pairs(settings.telemetry_headers, "telemetry_headers")
        attributes = parse_pairs(settings.telemetry_attributes, "telemetry_attributes")
        service = (
            env.get("OTEL_SERVICE_NAME", "").strip()
            or attributes.get("service.name")
            or DEFAULT_SERVICE_NAME
        )
        peer = str(peer_id)
        resource = {
            **attributes,
            "service.name": service,
            "service.instance.id": attributes.get("service.instance.id") or peer,
            PEER_ID_ATTRIBUTE: peer,
        }
        interval = DEFAULT_EXPORT_INTERVAL
        raw = env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
        if raw:
            try:
                interval = float(raw) / 1000.0
            except ValueError:
                interval = math.nan
            if not (0 < interval < math.inf):
                raise TelemetryConfigError(
                    f"OTEL_METRIC_EXPORT_INTERVAL: {raw!r} is not a positive number of ms"
                )
        return cls(
            endpoint=endpoint,
            protocol=protocol,  # type: ignore[arg-type]  # checked above
            headers=headers,
            resource=resource,
            sampler=sampler,
            sample_ratio=settings.telemetry_sample_ratio,
            export_interval=interval,
            export_timeout=None if _timeout_variable_set(env) else DEFAULT_EXPORT_TIMEOUT,
        )


_SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_traceidratio")


def _timeout_variable_set(env: Mapping[str, str]) -> bool:
    names = (
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    )
    return any(env.get(name, "").strip() for name in names)


def build_sampler(name: str | None, ratio: float | None) -> Sampler:
    """The SDK sampler for ``telemetry_sampler`` / ``telemetry_sample_ratio``.

    Ratio defaults to 1.0 and is clamped to [0, 1]. With no sampler but a ratio:
    parent-based ratio; with neither: always on (as the original worker does).
    """
    from opentelemetry.sdk.trace import sampling

    r = 1.0 if ratio is None or math.isnan(ratio) else min(max(ratio, 0.0), 1.0)
    if name == "always_on":
        return sampling.ALWAYS_ON
    if name == "always_off":
        return sampling.ALWAYS_OFF
    if name == "traceidratio":
        return sampling.TraceIdRatioBased(r)
    if name == "parentbased_traceidratio" or (name is None and ratio is not None):
        return sampling.ParentBased(sampling.TraceIdRatioBased(r))
    if name is None:
        return sampling.ALWAYS_ON
    raise TelemetryConfigError(f"telemetry_sampler: {name!r} is not one of {', '.join(_SAMPLERS)}")


def build_exporters(config: TelemetryConfig) -> tuple[MetricExporter, SpanExporter]:
    """The OTLP metric and span exporters for ``config.protocol``.

    HTTP posts to ``<endpoint>/v1/metrics`` and ``<endpoint>/v1/traces``; gRPC uses the
    endpoint as given (``http://`` means no TLS) and sends the headers as metadata. Each
    exporter package is imported only here, so a node that uses one never loads the other.
    """
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        metadata = {k.lower(): v for k, v in config.headers.items()}  # gRPC wants lowercase
        return (
            GrpcMetricExporter(
                endpoint=config.endpoint, headers=metadata, timeout=config.export_timeout
            ),
            GrpcSpanExporter(
                endpoint=config.endpoint, headers=metadata, timeout=config.export_timeout
            ),
        )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    base = config.endpoint.rstrip("/")
    headers = dict(config.headers)
    timeout = config.export_timeout
    return (
        HttpMetricExporter(endpoint=f"{base}/v1/metrics", headers=headers, timeout=timeout),
        HttpSpanExporter(endpoint=f"{base}/v1/traces", headers=headers, timeout=timeout),
    )

"""Progress in the original's JSON forms: a job's report parsed, the scheduler's reply written."""

from __future__ import annotations

from typing import Any

from hypha_sm.roles.worker.bridge.interfaces import BridgeError
from hypha_sm.wire.messages import (
    BatchStatus,
    ProgressKind,
    ProgressReply,
    RoundMetrics,
    UpdateApplied,
    UpdateReceived,
    UpdateStarted,
)

_U32 = 2**32 - 1


# -- progress: the original's JSON forms -----------------------------------------------------


def _u32(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U32:
        raise BridgeError(400, "invalid_request", f"{what} must be an integer in 0..2^32-1")
    return value


def _digest(value: object) -> str:
    if not isinstance(value, str) or len(value) > 80:
        raise BridgeError(400, "invalid_request", "weights_sha256 must be a hex digest")
    return value


def parse_progress(body: object) -> ProgressKind:
    """The executor's progress JSON (hypha-execution.md §4) as our progress kind."""
    if body == "update":
        return UpdateStarted()
    if body == "update-received":
        return UpdateReceived()
    if isinstance(body, dict) and set(body) == {"update-received"}:
        value = body["update-received"]
        if not isinstance(value, dict):
            raise BridgeError(400, "invalid_request", '"update-received" must be an object')
        return UpdateReceived(weights_sha256=_digest(value.get("weights_sha256", "")))
    if body == "updated":
        return UpdateApplied()
    if isinstance(body, dict) and len(body) == 1:
        ((key, value),) = body.items()
        if key == "status" and isinstance(value, dict):
            return BatchStatus(
                batch_size=_u32(value.get("batch_size"), "status.batch_size"),
                weights_sha256=_digest(value.get("weights_sha256", "")),
            )
        if key == "metrics" and isinstance(value, dict):
            rnd = _u32(value.get("round"), "metrics.round")
            raw = value.get("metrics")
            if not isinstance(raw, dict):
                raise BridgeError(400, "invalid_request", "metrics.metrics must be an object")
            metrics: dict[str, float] = {}
            for name, val in raw.items():
                if isinstance(val, bool) or not isinstance(val, int | float):
                    raise BridgeError(400, "invalid_request", f"metric {name!r} is not a number")
                metrics[name] = float(val)
            return RoundMetrics(round=rnd, metrics=metrics)
    raise BridgeError(
        400,
        "invalid_request",
        'progress must be {"status":{...}}, {"metrics":{...}}, "update" or "update-received"',
    )


_REPLY_TYPES = {
    "ok": "Ok",
    "continue": "Continue",
    "schedule_update": "ScheduleUpdate",
    "done": "Done",
    "error": "Error",
}


def reply_json(reply: ProgressReply) -> dict[str, Any]:
    """The scheduler's reply in the original's JSON shape (``{"type": ...}``)."""
    out: dict[str, Any] = {"type": _REPLY_TYPES[reply.reply]}
    if reply.reply == "schedule_update":
        out["counter"] = reply.counter if reply.counter is not None else 0
    return out

"""A DiLoCo job's spec in the original's JobSpec JSON shape (hypha-execution.md §1.1).

Training workers get ``{"job_id", "executor": {"class": "train", "descriptor": {"name"},
"config": {model, data, updates, results, optimizer, batch_size, ...}}}``; the parameter server
gets ``class = "aggregate"`` with ``updates`` (the workers it receives from), ``results`` (the
workers it sends to) and the Nesterov ``optimizer``. Executors written for the original read
these unchanged. The project's additions are extra keys the original ignores.
"""

from __future__ import annotations

from typing import Any

from hypha_sm.config.scheduler import JobSettings
from hypha_sm.roles.scheduler.core.effects import DispatchJob
from hypha_sm.wire.messages import Executor

PS_EXECUTOR = Executor(cls="aggregate", name="parameter-server")


def peers_ref(peers: list[str]) -> dict[str, Any]:
    """The original's ``Reference::Peers`` with strategy All."""
    return {"type": "peers", "peers": peers, "strategy": {"type": "All"}, "resource": None}


def diloco_spec(
    job: JobSettings, effect: DispatchJob, scheduler: str, executor: Executor
) -> dict[str, Any]:
    """The spec for one placement of a DiLoCo job."""
    diloco = job.diloco
    assert diloco is not None
    workers = list(effect.workers)
    if effect.group == "ps":
        ps = diloco.parameter_server
        config: dict[str, Any] = {
            "updates": peers_ref(workers),
            "results": peers_ref(workers),
            "optimizer": diloco.outer_optimizer.model_dump(by_alias=True),
            "quorum": ps.quorum,
            "round_timeout": ps.round_timeout,
            "weighting": ps.weighting,
            "compat_pairwise": ps.compat_pairwise,
        }
    else:
        inner = diloco.inner_optimizer.model_dump(by_alias=True)
        config = {
            **diloco.extra,
            "model": diloco.model,
            "data": {"type": "scheduler", "peer": scheduler, "dataset": job.dataset or ""},
            "updates": peers_ref([effect.parameter_server]),
            "results": peers_ref([effect.parameter_server]),
            "optimizer": inner,
            "batch_size": effect.batch_size,
            "rank": effect.index,
            "workers": workers,
        }
        if diloco.preprocessor is not None:
            config["preprocessor"] = diloco.preprocessor
    return {
        "job_id": effect.job_id,
        "executor": {
            "class": executor.cls,
            "descriptor": {"name": executor.name},
            "config": config,
        },
    }

"""The parameter server's round: average the pseudo-gradients, take the outer Nesterov step.

Workers send g_i = θ_local - θ_global. The mean g is a true mean, optionally weighted by the
samples each worker trained on (the original's running pairwise average, B1, only with
``compat_pairwise``). The outer step is the original's (hypha-execution.md §6.4):

    round 1:  m = g                 later:  m = μ·m + g
    update:   u = η·(μ·m + g)       (workers add u to θ_global)

which is SGD with Nesterov momentum on -g. Everything is computed one tensor at a time in
float32; the momentum is kept on disk in float32; the update has each input tensor's dtype.
Peak memory: one tensor per input file plus the momentum and update of that tensor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from hypha_sm.diloco.tensors import WIRE_DTYPES, Layout, StreamWriter, read_layout


@dataclass(frozen=True)
class OuterStep:
    """The outer optimizer: learning rate η and momentum μ (the original's defaults)."""

    learning_rate: float = 0.7
    momentum: float = 0.9


@dataclass(frozen=True)
class Contribution:
    """One worker's pseudo-gradient file and the weight it counts with."""

    path: Path
    weight: float = 1.0


def mean_of(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], pairwise: bool
) -> torch.Tensor:
    """The weighted mean of same-shaped tensors, in float32 (``pairwise``: the original's)."""
    if pairwise:  # arrival order: (x + result) / 2, a true mean only for two files
        result = tensors[0].float()
        for x in tensors[1:]:
            result = (x.float() + result) / 2
        return result
    total = float(sum(weights))
    acc = torch.zeros_like(tensors[0], dtype=torch.float32)
    for t, w in zip(tensors, weights, strict=True):
        acc.add_(t.float(), alpha=w / total)
    return acc


def _tensor(handle: Any, name: str) -> torch.Tensor:
    tensor: torch.Tensor = handle.get_tensor(name)
    return tensor


def aggregate(
    contributions: Sequence[Contribution],
    *,
    momentum_path: Path,
    update_path: Path,
    step: OuterStep,
    first_round: bool,
    pairwise: bool = False,
) -> Layout:
    """Write the update for this round to ``update_path``; the momentum file moves on.

    Every file must share the first one's layout (checked by the caller on arrival). The new
    momentum goes to a temporary file renamed over ``momentum_path`` only once the update is
    written, so a failed round leaves the momentum as it was.
    """
    if not contributions:
        raise ValueError("no pseudo-gradients to aggregate")
    layout = read_layout(contributions[0].path)
    weights = [c.weight for c in contributions]
    mu, lr = step.momentum, step.learning_rate
    out_tensors = [(name, WIRE_DTYPES[dtype], shape) for name, dtype, shape in layout.tensors]
    mom_tensors = [(name, torch.float32, shape) for name, _, shape in layout.tensors]
    next_momentum = momentum_path.with_name(momentum_path.name + ".next")
    handles = [safe_open(str(c.path), framework="pt") for c in contributions]
    previous = None if first_round else safe_open(str(momentum_path), framework="pt")
    update = StreamWriter(update_path, out_tensors, {"format": "pt"})
    moment = StreamWriter(next_momentum, mom_tensors, {"format": "pt"})
    try:
        for (name, dtype, _), _spec in zip(layout.tensors, out_tensors, strict=True):
            g = mean_of([_tensor(h, name) for h in handles], weights, pairwise)
            m = g if previous is None else _tensor(previous, name).float().mul_(mu).add_(g)
            u = (m * mu).add_(g).mul_(lr)
            moment.write(name, m.contiguous())
            update.write(name, u.to(WIRE_DTYPES[dtype]))
        update.close()
        moment.close()
        os.replace(next_momentum, momentum_path)
    except BaseException:
        for path in (update_path, next_momentum):
            path.unlink(missing_ok=True)
        raise
    return layout

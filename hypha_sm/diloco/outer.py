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

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from hypha_sm.diloco.tensors import WIRE_DTYPES, StreamWriter, read_layout


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


def _mean_into(
    out: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], pairwise: bool
) -> torch.Tensor:
    flat = [t.reshape(-1) for t in tensors]
    if pairwise:  # arrival order: (x + result) / 2, a true mean only for two files
        out.copy_(flat[0])
        for x in flat[1:]:
            out.add_(x.float()).div_(2)
        return out
    total = float(sum(weights))
    out.zero_()
    for t, w in zip(flat, weights, strict=True):
        out.add_(t.float(), alpha=w / total)
    return out


def _tensor(handle: Any, name: str) -> torch.Tensor:
    tensor: torch.Tensor = handle.get_tensor(name)
    return tensor


def _swap(new: Path, current: Path) -> None:
    """``new`` becomes ``current``; the old ``current`` stays as ``new``.

    The next round writes over it, reusing its pages.
    """
    if not current.exists():
        os.replace(new, current)
        return
    spare = current.with_name(current.name + ".old")
    os.replace(current, spare)
    os.replace(new, current)
    os.replace(spare, new)


def aggregate(
    contributions: Sequence[Contribution],
    *,
    momentum_path: Path,
    update_path: Path,
    step: OuterStep,
    first_round: bool,
    pairwise: bool = False,
) -> str:
    """Write the update for this round to ``update_path``; the momentum file moves on.

    Every file must share the first one's layout (checked by the caller on arrival). The new
    momentum is written to ``<momentum_path>.next`` and swapped in only once the update is
    written, so a failed round leaves the momentum as it was. Returns the update's SHA-256.
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
    # Three scratch buffers for every tensor: no allocation (and no fresh pages) per tensor,
    # and nothing written into the memory-mapped inputs (copy-on-write faults).
    largest = max((math.prod(shape) for _, _, shape in layout.tensors), default=0)
    g_buf, m_buf, u_buf = (torch.empty(largest, dtype=torch.float32) for _ in range(3))
    try:
        for name, dtype, shape in layout.tensors:
            n = math.prod(shape)
            g = _mean_into(g_buf[:n], [_tensor(h, name) for h in handles], weights, pairwise)
            m = m_buf[:n]
            if previous is None:
                m.copy_(g)
            else:
                torch.mul(_tensor(previous, name).reshape(-1).float(), mu, out=m)
                m.add_(g)
            u = torch.mul(m, mu, out=u_buf[:n]).add_(g).mul_(lr)
            moment.write(name, m.view(shape))
            update.write(name, u.view(shape).to(WIRE_DTYPES[dtype]))
        # No fsync: both files live for the job only, and a crashed parameter server fails the
        # job; each worker's bulk receiver syncs the update it stores.
        update.close(fsync=False)
        moment.close(fsync=False)
        _swap(next_momentum, momentum_path)
    except BaseException:
        update_path.unlink(missing_ok=True)
        raise
    return update.digest.hexdigest()

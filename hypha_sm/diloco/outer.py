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

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hypha_sm.diloco.tensors import (
    WIRE_DTYPES,
    Layout,
    StreamWriter,
    TensorReader,
    TensorSpec,
    encode_header,
    read_layout,
)

#: The update file's metadata.
_UPDATE_METADATA = {"format": "pt"}
#: Torch threads for the step. Its element-wise ops are memory-bound, and the node's cores are
#: busy with the transfers carrying the update out while it is computed: with one thread the
#: step took 0.031-0.041 s (two: 0.046-0.049) and the round 2.1-2.5x its floor (two: 2.8-3.3x;
#: bench_ps, 2 cores), as idle OpenMP threads spin on cores the transfers need.
STEP_THREADS = 1


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


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """``count`` torch threads for this thread's parallel regions; the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _update_tensors(layout: Layout) -> list[TensorSpec]:
    return [(name, WIRE_DTYPES[dtype], shape) for name, dtype, shape in layout.tensors]


def update_size(pseudo_gradient: Path) -> int:
    """The size of the update ``aggregate`` writes for files laid out like this one."""
    return encode_header(_update_tensors(read_layout(pseudo_gradient)), _UPDATE_METADATA)[1]


def aggregate(
    contributions: Sequence[Contribution],
    *,
    momentum_path: Path,
    update_path: Path,
    step: OuterStep,
    first_round: bool,
    pairwise: bool = False,
    on_written: Callable[[int], None] | None = None,
) -> str:
    """Write the update for this round to ``update_path``; the momentum file moves on.

    Every file must share the first one's layout (checked by the caller on arrival). The new
    momentum is written to ``<momentum_path>.next`` and swapped in only once the update is
    written, so a failed round leaves the momentum as it was. Returns the update's BLAKE3.
    ``on_written`` follows the update file as it grows (``StreamWriter``): its bytes are
    final as they are reported, and the file ends at ``update_size``.
    """
    if not contributions:
        raise ValueError("no pseudo-gradients to aggregate")
    readers: list[TensorReader] = []
    update: StreamWriter | None = None
    moment: StreamWriter | None = None
    try:
        readers += [TensorReader(c.path) for c in contributions]
        if not first_round:
            readers.append(TensorReader(momentum_path))
        layout = readers[0].layout
        next_momentum = momentum_path.with_name(momentum_path.name + ".next")
        # The update is hashed (BLAKE3, what the bulk transfer offers) and written in a worker
        # thread while the next tensor is computed: SHA-256 alone was half of this function's
        # time. The momentum needs no digest.
        update = StreamWriter(
            update_path,
            _update_tensors(layout),
            _UPDATE_METADATA,
            digest="blake3",
            background=True,
            on_written=on_written,
        )
        moment = StreamWriter(
            next_momentum,
            [(name, torch.float32, shape) for name, _, shape in layout.tensors],
            {"format": "pt"},
            digest=None,
        )
        with _torch_threads(STEP_THREADS):
            _step(
                readers,
                contributions,
                update,
                moment,
                step,
                first_round=first_round,
                pairwise=pairwise,
            )
        # No fsync: both files live for the job only, and a crashed parameter server fails the
        # job; the workers' copies are not synced either (the bulk server's default): a worker
        # that crashes leaves the round's live set.
        update.close(fsync=False)
        moment.close(fsync=False)
        _swap(next_momentum, momentum_path)
    except BaseException:
        for writer in (update, moment):
            if writer is not None:
                writer.discard()
        raise
    finally:
        for reader in readers:
            reader.close()
    return update.hexdigest()


def _step(
    readers: Sequence[TensorReader],
    contributions: Sequence[Contribution],
    update: StreamWriter,
    moment: StreamWriter,
    step: OuterStep,
    *,
    first_round: bool,
    pairwise: bool,
) -> None:
    """Tensor by tensor: the mean, the momentum and the update, handed to the writers.

    One reader per contribution, in order, then (after the first round) the momentum's.
    """
    layout = readers[0].layout
    count = len(contributions)
    weights = [c.weight for c in contributions]
    mu, lr = step.momentum, step.learning_rate
    # Scratch buffers for every tensor: no allocation (and no fresh pages) per tensor. Two for
    # the update: the writer thread still reads one while the next is computed into the other.
    # Inputs are read with pread into buffers of their own, not memory-mapped: a map's pages
    # count as the parameter server's memory (3.5x one file at the peak of a later round).
    largest = max((math.prod(shape) for _, _, shape in layout.tensors), default=0)
    g_buf, m_buf, *u_bufs = (torch.empty(largest, dtype=torch.float32) for _ in range(4))
    scratch = [torch.empty(largest * 4, dtype=torch.uint8) for _ in readers]
    inputs = list(zip(readers, scratch, strict=True))
    contributed = inputs[:count]
    for index, (name, dtype, shape) in enumerate(layout.tensors):
        n = math.prod(shape)
        tensors = [reader.read_into(name, buf) for reader, buf in contributed]
        g = _mean_into(g_buf[:n], tensors, weights, pairwise)
        m = m_buf[:n]
        if first_round:
            m.copy_(g)
        else:
            reader, buf = inputs[-1]
            torch.mul(reader.read_into(name, buf).float(), mu, out=m)
            m.add_(g)
        u = torch.mul(m, mu, out=u_bufs[index % 2][:n]).add_(g).mul_(lr)
        moment.write(name, m.view(shape))
        update.write(name, u.view(shape).to(WIRE_DTYPES[dtype]))

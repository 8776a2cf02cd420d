"""The parameter server's outer step on files: streaming ``aggregate`` against an in-memory floor.

Two workers' pseudo-gradients of ``--params`` float32 parameters (default 10M, in 40 tensors)
are averaged and the Nesterov step taken twice (round 1 and 2, so the momentum file is read).
Floor: torch loads both files whole, averages, steps, saves (``safetensors.torch``). Each runs in
its own process, which reports its wall time and its peak RSS above what it had after imports.
Not included yet: the bulk channel (the files' transfer to and from the workers).

    python bench/bench_ps.py [--params 10000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(kind: str, directory: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from hypha_sm.diloco.outer import Contribution, OuterStep, aggregate

    base = _rss()
    files = [directory / "g0", directory / "g1"]
    started = time.perf_counter()
    for rnd in (1, 2):
        if kind == "streaming":
            aggregate(
                [Contribution(f) for f in files],
                momentum_path=directory / "m",
                update_path=directory / "u",
                step=OuterStep(),
                first_round=rnd == 1,
            )
        else:
            a, b = (load_file(str(f)) for f in files)
            g = {k: (a[k] + b[k]) / 2 for k in a}
            m = (
                g
                if rnd == 1
                else {k: 0.9 * v + g[k] for k, v in load_file(str(directory / "mf")).items()}
            )
            save_file({k: 0.7 * (0.9 * m[k] + g[k]) for k in g}, str(directory / "uf"))
            save_file({k: v.contiguous() for k, v in m.items()}, str(directory / "mf"))
            del a, b, g, m
    elapsed = time.perf_counter() - started
    print(json.dumps({"seconds": elapsed, "peak_extra": _rss() - base}))
    del torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--child", choices=["streaming", "floor"])
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.dir)
        return
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        per = args.params // 40
        for n in range(2):
            g = torch.Generator().manual_seed(n)
            save_file(
                {f"t{i:02d}": torch.randn(per, generator=g) for i in range(40)},
                str(directory / f"g{n}"),
            )
        size = (directory / "g0").stat().st_size
        results = {}
        for kind in ("floor", "streaming", "floor", "streaming"):  # alternated: noisy machines
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, "--dir", str(directory)],
                capture_output=True,
                text=True,
                check=True,
            )
            results.setdefault(kind, []).append(json.loads(out.stdout))
        print(
            f"two pseudo-gradients of {args.params:,} float32 parameters ({size / 2**20:.1f} MiB each), 2 rounds"
        )
        for kind, runs in results.items():
            secs = min(r["seconds"] for r in runs)
            peak = max(r["peak_extra"] for r in runs)
            print(
                f"  {kind:9}  {secs:6.3f} s   peak +{peak / 2**20:7.1f} MiB  = {peak / size:4.2f}x one file"
            )
        ratio = min(r["seconds"] for r in results["streaming"]) / min(
            r["seconds"] for r in results["floor"]
        )
        print(f"  streaming / floor time: {ratio:.2f}x")


if __name__ == "__main__":
    main()

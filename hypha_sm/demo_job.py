"""The devnet's demo job: a character bigram language model trained on shards of a corpus.

Run by a worker's process executor as ``python -m hypha_sm.demo_job`` with ``$SOCKET_PATH``
and ``$JOB_JSON`` (the scheduler's spec: ``index``, ``workers``, ``peers``, ``config``). It uses
every part of the job bridge, and only the standard library plus ``hypha_sm.sdk.bridge_client``:

1. fetch ``config.artifact`` (a ``file://`` corpus) into ``artifacts/``: its last tenth is the
   held-out text;
2. with ``config.dataset`` (the devnet's data node serves the corpus as slices), fetch slices
   of it through the bridge until the scheduler has no more for this epoch: the workers share
   the epoch, each slice going to one of them; without it, take shard ``index`` of
   ``len(workers)`` of the corpus;
3. train for ``config.rounds`` rounds, posting the held-out cross-entropy (bits per character)
   after each round;
4. send its counts to every peer, receive theirs, merge, and post the merged model's loss
   (on this corpus lower than either shard's alone: the workers learned together).

Slices are safetensors files; the format is a length, a JSON header and raw buffers, so the
job reads the ``input_ids`` rows (bytes of text) with the standard library alone.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hypha_sm.sdk.bridge_client import BridgeClient, BridgeClientError

HELD_OUT = 0.1  # the last tenth of the corpus is for evaluation only


def bigrams(text: str) -> Counter[str]:
    """Counts of each two-character sequence."""
    return Counter(text[i : i + 2] for i in range(len(text) - 1))


def cross_entropy(counts: Counter[str], text: str, alphabet: int) -> float:
    """Bits per character of ``text`` under add-one-smoothed bigram counts."""
    firsts: Counter[str] = Counter()
    for pair, n in counts.items():
        firsts[pair[0]] += n
    total = 0.0
    for i in range(len(text) - 1):
        pair = text[i : i + 2]
        p = (counts[pair] + 1) / (firsts[pair[0]] + alphabet)
        total -= math.log2(p)
    return total / max(1, len(text) - 1)


def slice_texts(path: Path) -> list[str]:
    """The text windows of one slice: its ``input_ids`` rows (int64 byte values) as text."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    tensor = header["input_ids"]
    rows, width = tensor["shape"]
    start, end = tensor["data_offsets"]
    values = struct.unpack(f"<{rows * width}q", data[8 + size + start : 8 + size + end])
    return [
        bytes(values[r * width : (r + 1) * width]).decode("utf-8", "replace") for r in range(rows)
    ]


def fetch_epoch(bridge: BridgeClient, scheduler: str, dataset: str) -> list[str]:
    """Every slice the scheduler hands this job until the epoch has none left."""
    windows: list[str] = []
    fetched = 0
    while True:
        try:
            (got,) = bridge.fetch({"type": "scheduler", "peer": scheduler, "dataset": dataset})
        except BridgeClientError as exc:
            if exc.status == 404:  # no slice left in this epoch
                break
            raise
        windows.extend(slice_texts(Path(got["path"])))
        fetched += 1
    print(f"fetched {fetched} slices of {dataset} ({len(windows)} windows)", flush=True)
    return windows


def main() -> int:
    spec: dict[str, Any] = json.loads(
        os.environ["JOB_JSON"]
        if "JOB_JSON" in os.environ
        else Path(os.environ["JOB_JSON_FILE"]).read_text()
    )
    config = spec.get("config", {})
    index, workers, peers = spec["index"], spec["workers"], spec["peers"]
    rounds = max(1, int(config.get("rounds", 5)))
    socket_path = os.environ["SOCKET_PATH"]
    received: dict[str, dict[str, Any]] = {}  # the latest file from each peer
    all_arrived = threading.Event()

    def listen() -> None:
        with BridgeClient(socket_path) as inbox:
            for event in inbox.receive("incoming", peers=peers):
                received[event["from_peer"]] = event
                if set(received) >= set(peers):
                    all_arrived.set()
                    return

    if peers:
        threading.Thread(target=listen, daemon=True).start()
    with BridgeClient(socket_path, timeout=120) as bridge:
        (artifact,) = bridge.fetch_uri(config["artifact"])
        text = Path(artifact["path"]).read_text()
        split = int(len(text) * (1 - HELD_OUT))
        train, held_out = text[:split], text[split : split + 20_000]
        alphabet = len(set(text))
        if config.get("dataset"):
            shard = fetch_epoch(bridge, spec["scheduler"], str(config["dataset"]))
        else:
            per_worker = len(train) // len(workers)
            part = train[index * per_worker : (index + 1) * per_worker]
            shard = [part[i : i + 4096] for i in range(0, len(part), 4096)]
        step = max(1, -(-len(shard) // rounds))
        counts: Counter[str] = Counter()
        for n in range(1, rounds + 1):
            for window in shard[(n - 1) * step : n * step]:
                counts.update(bigrams(window))
            loss = cross_entropy(counts, held_out, alphabet)
            bridge.status({"metrics": {"round": n, "metrics": {"loss": loss}}})
            time.sleep(float(config.get("round_pause", 0.2)))  # visible progress
        if not peers:
            return 0
        mine = Path(f"counts-{index}.json")
        mine.write_text(json.dumps(counts))
        waiting = list(peers)
        for _ in range(50):  # a peer's receive stream may open a moment after ours
            try:
                results = bridge.send(str(mine), waiting, purpose="bigram-counts")["results"]
            except BridgeClientError as exc:  # 502: no peer took it (yet)
                results = {"error": exc.detail}
                time.sleep(0.2)
                continue
            waiting = [peer for peer, outcome in results.items() if outcome != "delivered"]
            if not waiting:
                break
            time.sleep(0.2)
        else:
            print(f"could not send to every peer: {results}", file=sys.stderr)
            return 2
        if not all_arrived.wait(60):
            print("not every peer's counts arrived", file=sys.stderr)
            return 3
        for event in received.values():
            counts.update(json.loads(Path(event["path"]).read_text()))
        merged = cross_entropy(counts, held_out, alphabet)
        bridge.status({"metrics": {"round": rounds + 1, "metrics": {"merged_loss": merged}}})
    return 0


if __name__ == "__main__":
    sys.exit(main())

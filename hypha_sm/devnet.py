"""``hypha-sm devnet``: a whole local network, as real processes, running one job end to end.

It writes everything into one directory: node keys, ``gateway`` flags, two worker configs made
by ``hypha-sm init`` (the example config, with ports, work dirs and a small resource budget set
through flags and ``HYPHA_*`` variables, as a user would), a ``job.toml`` for the scheduler, a
corpus (the Python documentation's topic texts, which ship with Python) and, with the data
extra installed, that corpus prepared as slices and a ``data.toml``. Then it starts:

    hypha-sm gateway run          (waits until it answers)
    hypha-sm data run data.toml   (waits until healthy)
    hypha-sm run worker-1.toml    (waits until healthy: listening and subscribed)
    hypha-sm run worker-2.toml
    hypha-sm scheduler run job.toml   (in the foreground: its progress lines are shown)

The job is ``hypha_sm.demo_job``: the two workers share one epoch of the dataset's slices (each
slice goes to one of them, through the bridge, from the data node), each trains a bigram model
on its share and reports the held-out loss each round, then the two send each other their
counts through the bulk channel and report the merged model's loss. At the end the workers and the gateway get SIGTERM; their
logs and event logs (each worker's in ``work-N/events``, the scheduler's in ``scheduler-events``)
stay in the directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import trio

from hypha_sm.core.errors import HyphaSMError
from hypha_sm.init import write_example
from hypha_sm.net.keys import create_key_file
from hypha_sm.net.transport import Endpoint, NetError
from hypha_sm.wire.identity import Identity
from hypha_sm.wire.messages import Health, HealthReply

log = logging.getLogger(__name__)

WORKERS = 2
READY_TIMEOUT = 30.0
#: The job's bid, and the most it pays when a `whole` worker counters above it.
BID, MAX_PRICE = 100.0, 110.0
#: Each worker's `[offer]` (strategy, price, floor): the ones the job needs, by turns, then
#: two it will not get: one that asks more than the job pays, one whose floor is above the bid.
ABLE = [("whole", 100.0, 80.0), ("flexible", 90.0, 70.0), ("whole", 108.0, 80.0)]
EXTRA = [("whole", 130.0, 80.0), ("whole", 150.0, 120.0)]
#: The devnet's model: a byte-level GPT-2 (tied embeddings) of about 370,000 parameters.
MODEL_CONFIG = {
    "model_type": "gpt2",
    "vocab_size": 256,
    "n_positions": 64,
    "n_embd": 96,
    "n_layer": 3,
    "n_head": 4,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
}


def can_train() -> bool:
    """The train extra is installed (torch, transformers)."""
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("torch", "transformers", "safetensors"))


def free_port() -> int:
    """A TCP port that was free a moment ago on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _Child:
    name: str
    process: trio.Process
    log_file: IO[bytes] | None = None


@dataclass
class Devnet:
    """The directory, the ports, and the processes of one local network."""

    directory: Path
    rounds: int = 5
    children: list[_Child] = field(default_factory=list)
    #: Train a model with DiLoCo (training workers and a parameter server); else the
    #: bigram demo on two workers (without the train extra).
    training: bool = True
    #: DiLoCo: training workers, the outer step (learning rate, momentum: 0.5 rather than the
    #: original's 0.9, which needs more rounds than a demo has to pay off), and how long after
    #: a round's first pseudo-gradient the parameter server waits for the others.
    trainers: int = WORKERS
    outer: tuple[float, float] = (0.7, 0.5)
    round_timeout: float = 60.0
    quorum: int = 0
    #: The training executor's command line, if not ``python -m hypha_sm.executors.diloco``
    #: (``{SOCKET_PATH}``, ``{WORK_DIR}`` and ``{JOB_JSON}`` are filled in by the worker).
    train_args: list[str] | None = None
    #: The pseudo-gradients' dtype on the wire (``float32``, ``bfloat16``, ``float16``).
    precision: str = "float32"
    #: Samples the workers train between two updates, all together (the original's
    #: ``avg_samples_between_updates``): 256 is 16 inner steps of 8 samples for each of two.
    samples_per_round: int = 256
    #: Start from these weights (a safetensors file of the model ``MODEL_CONFIG`` builds)
    #: rather than a seeded initialisation: a warm start, as the DiLoCo paper's runs.
    model_weights: Path | None = None
    #: Also start the two workers the job will not get (too dear; floor above the bid), to
    #: show a price decision; tests that need the CPU for training leave them out.
    market_extras: bool = True

    def prepare(self) -> tuple[list[str], Path]:
        """Keys, configs, corpus; the gateway flags and the job file."""
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        create_key_file(d / "gateway-key.pem", force=True)
        create_key_file(d / "scheduler-key.pem", force=True)
        self.gateway = f"tcp://127.0.0.1:{free_port()}"
        gateway_flags = [
            "--node-key",
            str(d / "gateway-key.pem"),
            "--listen",
            self.gateway,
            "--ingest",
            f"tcp://127.0.0.1:{free_port()}",
            "--publish",
            f"tcp://127.0.0.1:{free_port()}",
        ]
        self.workers = []
        able = self.trainers + 1 if self.training else WORKERS
        self.offers = [ABLE[n % len(ABLE)] for n in range(able)]
        self.offers += EXTRA if self.market_extras else []
        for i in range(1, len(self.offers) + 1):
            config = d / f"worker-{i}.toml"
            write_example(config, work_dir=d / f"work-{i}", force=True, name=f"worker-{i}")
            # A devnet runs your own demo jobs from a private temp dir, as you (even as root).
            text = config.read_text().replace('job_user = "auto"', 'job_user = "node"', 1)
            if self.train_args is not None:
                start = text.index('args = ["-m", "hypha_sm.executors.diloco"')
                end = text.index("\n", start)
                text = text[:start] + f"args = {json.dumps(self.train_args)}" + text[end:]
            config.write_text(text)
            create_key_file(d / f"worker-{i}-node-key.pem", force=True)
            self.workers.append((config, f"tcp://127.0.0.1:{free_port()}"))
        (d / "data").mkdir(exist_ok=True)  # jobs may read only this, not the keys beside it
        corpus = write_pydoc_corpus(d / "data" / "corpus.txt")
        self.data_node = self._prepare_data_node(corpus)
        if self.training and self.data_node is not None:
            return gateway_flags, self._diloco_job()
        self.training = False
        dataset_lines = 'dataset = "pydoc"\nepochs = 1\n' if self.data_node else ""
        spec_dataset = ', dataset = "pydoc"' if self.data_node else ""
        job = d / "job.toml"
        job.write_text(
            self._scheduler_lines() + "[job]\n"
            "workers = 2\n"
            'executor = { class = "train", name = "bigram-demo" }\n'
            "resources = { cpu = 1, memory = 1 }\n"
            f"bid = {BID:g}\nmax_price = {MAX_PRICE:g}\n"
            "renew_interval = 0.5\n"
            "timeout = 300\n"
            f"{dataset_lines}"
            f'spec = {{ artifact = "file://{corpus}", rounds = {self.rounds}{spec_dataset} }}\n'
        )
        return gateway_flags, job

    def _scheduler_lines(self) -> str:
        """The scheduler's part of job.toml: its key, the gateway, where its log goes."""
        d = self.directory
        return (
            f'node_key = "{d / "scheduler-key.pem"}"\n'
            f'gateway_addresses = ["{self.gateway}"]\n'
            'listen_address = "tcp://127.0.0.1:0"\n'
            f'event_log_dir = "{d / "scheduler-events"}"\n\n'
        )

    def _diloco_job(self) -> Path:
        """The model's config beside the corpus, and a DiLoCo job.toml."""
        d = self.directory
        model = d / "data" / "model"
        model.mkdir(parents=True, exist_ok=True)
        (model / "config.json").write_text(json.dumps(MODEL_CONFIG, indent=2))
        artifacts = [model / "config.json"]
        if self.model_weights is not None:  # a warm start: every worker loads these weights
            shutil.copyfile(self.model_weights, model / "model.safetensors")
            artifacts.append(model / "model.safetensors")
        refs = [f'{{ type = "uri", value = "file://{a}" }}' for a in artifacts]
        # One reference stays bare: the original executor fetches ``model.artifact`` as one.
        artifact_refs = refs[0] if len(refs) == 1 else "[" + ", ".join(refs) + "]"
        evals = sorted((d / "datasets" / "pydoc").glob("eval-*.safetensors"))[:2]
        eval_refs = ", ".join(f'{{ type = "uri", value = "file://{e}" }}' for e in evals)
        job = d / "job.toml"
        job.write_text(
            self._scheduler_lines() + "[job]\n"
            f"workers = {self.trainers}\n"
            'executor = { class = "train", name = "diloco-transformer" }\n'
            # What a training process (torch; two under accelerate) needs: a `flexible` worker
            # offers exactly this, and a job's memory is its limit (1 GB failed to map scipy).
            "resources = { cpu = 1, memory = 2 }\n"
            f"bid = {BID:g}\nmax_price = {MAX_PRICE:g}\n"
            "renew_interval = 0.5\n"
            "timeout = 600\n"
            'dataset = "pydoc"\n'
            f'metrics_dir = "{d / "metrics"}"\n\n'
            "[job.diloco]\n"
            f"rounds = {self.rounds}\n"
            f"avg_samples_between_updates = {self.samples_per_round}\n"
            "max_batch_size = 8\n"
            "inner_optimizer = { learning-rate = 0.003 }\n"
            f"outer_optimizer = {{ learning-rate = {self.outer[0]}, momentum = {self.outer[1]} }}\n"
            'model = { task = "causal-lm", input-names = ["input_ids", "attention_mask"], '
            f"artifact = {artifact_refs} }}\n"
            f'extra = {{ seed = 0, precision = "{self.precision}", checkpoint_dir = "{d / "checkpoints"}", eval = [{eval_refs}] }}\n\n'
            "[job.diloco.parameter_server]\n"
            "resources = { cpu = 1, memory = 1 }\n"
            f"round_timeout = {self.round_timeout}\n"
            f"quorum = {self.quorum}\n"
        )
        return job

    def _prepare_data_node(self, corpus: Path) -> Path | None:
        """The corpus as slices and a data.toml serving them; None without the data extra."""
        d = self.directory
        try:
            import numpy  # noqa: F401
            import safetensors  # noqa: F401
        except ImportError:
            print("devnet: no data node (pip install 'hypha-sm[data]' to add one)")
            return None
        dataset = write_pydoc_dataset(corpus, d / "datasets" / "pydoc")
        create_key_file(d / "data-key.pem", force=True)
        self.data_address = f"tcp://127.0.0.1:{free_port()}"
        config = d / "data.toml"
        config.write_text(
            f'node_key = "{d / "data-key.pem"}"\n'
            f'gateway_addresses = ["{self.gateway}"]\n'
            f'listen_address = "{self.data_address}"\n'
            f'datasets = ["{dataset}"]\n'
            f'event_log_dir = "{d / "data-events"}"\n'
        )
        return config

    async def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log_file = (self.directory / f"{name}.log").open("wb")
        process = await trio.lowlevel.open_process(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.children.append(_Child(name, process, log_file))

    async def run(self) -> int:
        """Start everything, run the job, stop everything; the scheduler's exit code.

        SIGTERM or SIGHUP stops it as Ctrl-C does: every process it started is stopped first
        (without a handler the signal would end this process and leave them running).
        """
        result = 1
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                nonlocal result
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
                    async for signum in signals:
                        print(f"devnet: {signal.Signals(signum).name}: stopping everything")
                        result = 128 + signum
                        nursery.cancel_scope.cancel()
                        return

            async def main() -> None:
                nonlocal result
                result = await self._run()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(main)
        return result

    async def _run(self) -> int:
        gateway_flags, job = self.prepare()
        cli = [sys.executable, "-m", "hypha_sm.cli"]
        print(f"devnet in {self.directory}")
        try:
            await self._start("gateway", [*cli, "gateway", "run", *gateway_flags])
            await self._wait_answering(self.gateway, healthy=False, who="gateway")
            print(f"  gateway    {self.gateway} (pid {self.children[0].process.pid})")
            if self.data_node is not None:
                await self._start("data-node", [*cli, "data", "run", str(self.data_node)])
                await self._wait_answering(self.data_address, healthy=True, who="data node")
                pid = self.children[-1].process.pid
                print(f"  data node  {self.data_address} (pid {pid}, log data-node.log)")
            for i, (config, listen) in enumerate(self.workers, start=1):
                strategy, price, floor = self.offers[i - 1]
                env = {
                    "HYPHA_OFFER__STRATEGY": strategy,
                    "HYPHA_OFFER__PRICE": str(price),
                    "HYPHA_OFFER__FLOOR": str(floor),
                    "HYPHA_RESOURCES__CPU": "1",
                    "HYPHA_RESOURCES__MEMORY": "2",
                    "HYPHA_RESOURCES__STORAGE": "1",
                    "HYPHA_FETCH_FILE_ROOTS": json.dumps(
                        [str(self.directory / "data"), str(self.directory / "datasets")]
                    ),
                }
                flags = ["--gateway", self.gateway, "--listen", listen]
                await self._start(f"worker-{i}", [*cli, "run", str(config), *flags], env)
            for i, (_, listen) in enumerate(self.workers, start=1):
                await self._wait_answering(listen, healthy=True, who=f"worker-{i}")
                pid = next(c.process.pid for c in self.children if c.name == f"worker-{i}")
                strategy, price, floor = self.offers[i - 1]
                print(
                    f"  worker-{i}   {listen} (pid {pid}, log worker-{i}.log): {strategy}, "
                    f"asks {price:g}, floor {floor:g}"
                )
            if self.training:
                print(
                    f"  scheduler  running job.toml: DiLoCo, {self.trainers} training workers and a "
                    f"parameter server, {self.rounds} rounds of a byte-level GPT-2 on the "
                    "slices of pydoc\n",
                    flush=True,
                )
            else:
                shared = ", sharing the slices of pydoc" if self.data_node else ""
                print(
                    f"  scheduler  running job.toml: 2 workers, bigram-demo{shared}\n", flush=True
                )
            result = await trio.run_process([*cli, "scheduler", "run", str(job)], check=False)
            print(self.legend())
            return int(result.returncode)
        finally:
            with trio.CancelScope(shield=True):
                await self._stop_all()

    def legend(self) -> str:
        """What each worker did in the market, read from its log."""
        lines = [
            f"market: the scheduler bid {BID:g} a lease and paid up to {MAX_PRICE:g}, "
            "cheapest offers first"
        ]
        for i, (strategy, price, floor) in enumerate(self.offers, start=1):
            log_file = self.directory / f"worker-{i}.log"
            text = log_file.read_text(errors="replace") if log_file.exists() else ""
            lines.append(
                f"  worker-{i} ({strategy}, asks {price:g}, floor {floor:g}): {_market(text)}"
            )
        return "\n".join(lines)

    async def _wait_answering(self, address: str, *, healthy: bool, who: str) -> None:
        with Endpoint(Identity.generate()) as endpoint:
            with trio.move_on_after(READY_TIMEOUT):
                while True:
                    self._check_alive()
                    try:
                        answer = await endpoint.request(address, Health(), timeout=1.0)
                    except NetError:
                        await trio.sleep(0.1)
                        continue
                    if not healthy or answer.message == HealthReply(True):
                        return
                    await trio.sleep(0.1)
        raise DevnetError(f"{who} at {address} not ready within {READY_TIMEOUT} s")

    def _check_alive(self) -> None:
        for child in self.children:
            if child.process.returncode is not None:
                raise DevnetError(
                    f"{child.name} exited with {child.process.returncode}; "
                    f"see {self.directory / (child.name + '.log')}"
                )

    async def _stop_all(self) -> None:
        for child in reversed(self.children):  # workers first, the gateway last
            if child.process.returncode is None:
                child.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(15):
            for child in self.children:
                await child.process.wait()
        for child in self.children:
            if child.process.returncode is None:
                child.process.kill()
                await child.process.wait()
            if child.log_file is not None:
                child.log_file.close()


def _market(log_text: str) -> str:
    """A worker's market lines (roles/worker/market.py) told in a few words."""
    prices = sorted(
        {float(p) for p in re.findall(r"offered lease \S+ .* at price ([\d.]+)", log_text)}
    )
    won = len(re.findall(r"won: the scheduler accepted the offer", log_text))
    lapsed = len(re.findall(r"lapsed unaccepted", log_text))
    declined = re.findall(r"declining advertisements: (\w+)", log_text)
    parts = []
    if prices:
        parts.append("offered at " + ", ".join(f"{p:g}" for p in prices))
    if won:
        parts.append(f"won {won} lease(s)")
    if lapsed:
        parts.append(f"{lapsed} offer(s) not taken")
    if declined:
        parts.append("declined advertisements: " + ", ".join(declined))
    return "; ".join(parts) or "no advertisement reached it"


def write_pydoc_corpus(path: Path) -> Path:
    """The text of Python's documentation topics (it ships with Python), written to ``path``."""
    from pydoc_data.topics import topics

    path.write_text("\n".join(topics[k] for k in sorted(topics)))
    return path


def write_pydoc_dataset(corpus: Path, dataset: Path) -> Path:
    """The devnet's dataset: ``corpus`` as 64-byte samples in slices of 256 (10 % held out)."""
    from hypha_sm.datasets import prepare

    data, _ = prepare.read_text(str(corpus))
    train, evaluation = prepare.text_samples(data, 64, 0.1)
    prepare.write_dataset(
        dataset,
        name="pydoc",
        source="pydoc-topics, bytes, seq-len 64",
        seed=0,
        samples_per_slice=256,
        train=prepare.shuffled(train, 0),
        evaluation=evaluation,
        force=True,
    )
    return dataset


class DevnetError(HyphaSMError):
    """A part of the devnet did not come up; the message says which and where its log is."""


def run_devnet(
    directory: Path | None,
    *,
    keep: bool,
    rounds: int,
    trainers: int = WORKERS,
    outer: tuple[float, float] = (0.7, 0.5),
    quorum: int = 0,
    round_timeout: float = 60.0,
    precision: str = "float32",
    samples_per_round: int = 256,
    model_weights: Path | None = None,
) -> int:
    """Run the devnet; the directory is removed afterwards unless ``keep`` or it failed."""
    chosen = directory or Path(tempfile.mkdtemp(prefix="hypha-devnet-"))
    try:
        devnet = Devnet(
            chosen.absolute(),
            rounds=max(1, rounds),
            training=can_train(),
            trainers=max(1, trainers),
            outer=outer,
            quorum=quorum,
            round_timeout=round_timeout,
            precision=precision,
            samples_per_round=max(1, samples_per_round),
            model_weights=model_weights,
        )
        if not devnet.training:
            print("devnet: torch is not installed: running the bigram demo instead of DiLoCo")
        code = trio.run(devnet.run)
    except DevnetError as exc:
        print(f"devnet: {exc}", file=sys.stderr)
        code = 1
    if code == 0 and not keep and directory is None:
        shutil.rmtree(chosen, ignore_errors=True)
        print("devnet: the job finished; all processes stopped, the temporary directory removed")
    else:
        print(f"devnet: exit {code}; logs, configs and event logs in {chosen}")
    return code

"""The project's DiLoCo training executor: AdamW inner steps, pseudo-gradients to the PS.

Run by a worker's process runtime as ``python -m hypha_sm.executors.diloco`` (or under
``accelerate launch -m hypha_sm.executors.diloco``); it talks to the node only through the job
bridge (``$SOCKET_PATH``) and reads the original JobSpec JSON (``$JOB_JSON``/``--job``):

1. fetch ``model.artifact`` (a reference or a list of them: a Hugging Face ``config.json`` and,
   optionally, ``model.safetensors``) and build the model with ``transformers``; without
   weights it is initialised from ``seed`` (default 0), the same on every worker; the SHA-256 of
   the initial weights goes with the first status, and the scheduler compares them;
2. fetch data slices from the scheduler (``data``), ``batch_size`` samples per step; AdamW with
   the job's ``optimizer``; one status per step, the scheduler's ``ScheduleUpdate`` ends the
   inner loop (the original's counter rules, hypha-execution.md §4);
3. post ``update``, write ``<round>_local_gradients.pt`` (safetensors, θ_local - θ_global, in
   ``precision``; tied weights once: B2; ``samples`` in its metadata), send it to the parameter
   server (``updates``; a send nobody received fails the job), wait for the update on the
   receive stream (``results``), add it to θ_global (a bad update fails the job: B5), evaluate
   on ``eval`` (references to held-out slices), post the round's metrics and
   ``update-received`` with the new global weights' SHA-256; exit on ``Done``.

The model must return logits; slices hold ``input_ids`` (and ``attention_mask``); ``labels``
are each position's next token (``hypha-sm data prepare``'s text format) or, if absent, the
inputs themselves (the model shifts them).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hypha_sm.diloco.tensors import PRECISIONS, state_sha256
from hypha_sm.sdk.bridge_client import BridgeClient, BridgeClientError

#: Task names (the original's ModelType, kebab-case) and the Auto class each loads with.
AUTO_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
    "auto": "AutoModel",
}


class ExecutorError(Exception):
    """The job cannot go on; ``str()`` says why (the process exits 1 with it)."""


def _refs(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
        return list(value)
    raise ExecutorError(f"expected a reference or a list of references, got {value!r}")


def build_model(artifacts: Path, task: str, seed: int) -> torch.nn.Module:
    """The model from ``artifacts`` (config.json, weights if any); seeded when it has none."""
    import transformers

    auto = getattr(transformers, AUTO_CLASSES.get(task, "AutoModel"))
    if (artifacts / "model.safetensors").exists():
        model = auto.from_pretrained(artifacts)
    else:
        config = transformers.AutoConfig.from_pretrained(artifacts)
        torch.manual_seed(seed)
        model = auto.from_config(config)
    model.train()
    return model  # type: ignore[no-any-return]


def global_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """θ_global: a copy of every parameter, tied ones once (``named_parameters`` dedups)."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def load_into(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Make the model's parameters equal ``weights``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name])


def pseudo_gradient(
    model: torch.nn.Module, theta: Mapping[str, torch.Tensor], precision: torch.dtype
) -> dict[str, torch.Tensor]:
    """θ_local - θ_global per parameter, in ``precision``."""
    return {
        name: (p.detach() - theta[name]).to(precision).contiguous()
        for name, p in model.named_parameters()
    }


def merge(theta: dict[str, torch.Tensor], update: Mapping[str, torch.Tensor]) -> None:
    """θ_global += u; the update must have exactly θ's names and shapes (else: the job fails)."""
    if set(update) != set(theta):
        missing, extra = sorted(set(theta) - set(update)), sorted(set(update) - set(theta))
        raise ExecutorError(
            f"update does not match the model: missing {missing[:3]}, extra {extra[:3]}"
        )
    for name, value in update.items():  # every tensor checked before any is added
        if value.shape != theta[name].shape:
            raise ExecutorError(f"update {name!r} has shape {tuple(value.shape)}")
    for name, value in update.items():
        theta[name] += value.to(theta[name].dtype)


def lm_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of next-token prediction over the batch."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    if "labels" not in batch:
        out = model(**inputs, labels=batch["input_ids"])
        return out.loss  # type: ignore[no-any-return]
    logits = model(**inputs).logits
    labels = batch["labels"]
    if "attention_mask" in batch:
        labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100
    )


def rows_of(path: Path, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """The samples of one slice file."""
    tensors = load_file(str(path))
    keys = [k for k in names if k in tensors] or list(tensors)
    for i in range(tensors[keys[0]].shape[0]):
        yield {k: tensors[k][i] for k in keys}


def batches(
    rows: Iterator[dict[str, torch.Tensor]], size: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Rows stacked ``size`` at a time (a batch may span two slices, as the original's)."""
    pending: list[dict[str, torch.Tensor]] = []
    for row in rows:
        pending.append(row)
        if len(pending) == size:
            yield {k: torch.stack([r[k] for r in pending]) for k in pending[0]}
            pending = []


class Ranks:
    """The processes of one job: one, or several under ``accelerate launch`` (gloo on CPU).

    Only rank 0 talks to the bridge; what it learns (the next slice, the scheduler's counter,
    the update's path, Done) is broadcast, so every rank takes the same steps (the original's
    other ranks never left their inner loop: hypha-execution.md §5.5).
    """

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.accelerator: Any = None
        self.rank = 0
        if self.world > 1:
            from accelerate import Accelerator

            # Without a GPU, accelerate must be told to use the CPU, or it runs one process.
            self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
            self.rank = int(self.accelerator.process_index)
            self.world = int(self.accelerator.num_processes)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def prepare(self, model: torch.nn.Module, optimizer: Any) -> tuple[Any, Any]:
        if self.accelerator is None:
            return model, optimizer
        wrapped, prepared = self.accelerator.prepare(model, optimizer)
        return wrapped, prepared

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()  # type: ignore[no-untyped-call]
        else:
            self.accelerator.backward(loss)


class Job:
    """One training job on one worker (all of its ranks)."""

    def __init__(
        self, bridge: BridgeClient | None, work_dir: Path, spec: Mapping[str, Any], ranks: Ranks
    ) -> None:
        executor = spec.get("executor", {})
        if executor.get("class") != "train":
            raise ExecutorError(f'expected executor class "train", got {executor.get("class")!r}')
        self._bridge = bridge
        self.ranks = ranks
        self.work_dir = work_dir
        self.config: Mapping[str, Any] = executor.get("config", {})
        self.model_config: Mapping[str, Any] = self.config.get("model", {})
        self.names = list(self.model_config.get("input-names", ["input_ids", "attention_mask"]))
        self.batch_size = max(1, int(self.config.get("batch_size", 8)))
        self.precision = PRECISIONS[str(self.config.get("precision", "float32"))]
        checkpoints = self.config.get("checkpoint_dir")
        self.checkpoints = Path(checkpoints) if checkpoints else None
        #: This worker's place among the job's training workers (the spec's ``rank``); not the
        #: accelerate process rank (``ranks.rank``).
        self.worker_index = int(self.config.get("rank", 0))
        self.events: queue.Queue[dict[str, Any] | BaseException] = queue.Queue()

    @property
    def bridge(self) -> BridgeClient:
        """The bridge (rank 0 only)."""
        assert self._bridge is not None, "only rank 0 talks to the bridge"
        return self._bridge

    # -- bridge ----------------------------------------------------------------------------

    def fetch_all(self, refs: list[Mapping[str, Any]]) -> list[Path]:
        """Rank 0 fetches; every rank gets the paths (the work dir is shared)."""
        paths: list[Path] = []
        if self.ranks.main:
            for ref in refs:
                paths += [self.work_dir / f["path"] for f in self.bridge.fetch(ref)]
        return [Path(p) for p in self.ranks.share([str(p) for p in paths])]

    def next_slice(self) -> Path:
        """The next slice the scheduler hands this job (rank 0 asks; every rank reads it)."""
        path = ""
        if self.ranks.main:
            data = self.config.get("data")
            if not isinstance(data, Mapping):
                raise ExecutorError('the job has no "data" reference')
            while not path:
                try:
                    (got,) = self.bridge.fetch(data)
                    path = str(self.work_dir / got["path"])
                except BridgeClientError as exc:
                    if exc.status != 404:  # 404: no slice free now; the scheduler may hand one
                        raise
                    time.sleep(0.5)
        return Path(self.ranks.share(path))

    def slices(self) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's samples of each slice (rows ``rank::world``, an equal share each)."""
        world, rank = self.ranks.world, self.ranks.rank
        while True:
            rows = list(rows_of(self.next_slice(), [*self.names, "labels"]))
            share = len(rows) // world
            yield from rows[rank : share * world : world]

    def listen(self) -> None:
        """The receive stream (in a thread): each arrival (or the error that ended it) queued."""
        results = self.config.get("results", {})
        peers = list(results.get("peers", [])) if isinstance(results, Mapping) else []
        try:
            for event in self.bridge.receive("incoming", peers=peers or None):
                self.events.put(event)
        except BaseException as exc:
            self.events.put(exc)

    def status(self, body: Any) -> dict[str, Any]:
        """Rank 0 posts; every rank gets the scheduler's reply."""
        reply = self.bridge.status(body) if self.ranks.main else {}
        return dict(self.ranks.share(reply))

    # -- training --------------------------------------------------------------------------

    def evaluate(
        self, model: torch.nn.Module, eval_batches: list[dict[str, torch.Tensor]]
    ) -> float:
        if not eval_batches:
            return float("nan")
        model.eval()
        with torch.no_grad():
            total = sum(float(lm_loss(model, b)) for b in eval_batches)
        model.train()
        return total / len(eval_batches)

    def run(self) -> int:
        ranks = self.ranks
        main = ranks.main
        print(f"diloco executor: rank {ranks.rank} of {ranks.world}", flush=True)
        self.fetch_all(_refs(self.model_config.get("artifact")))
        task = str(self.model_config.get("task", "causal-lm"))
        model = build_model(self.work_dir / "artifacts", task, int(self.config.get("seed", 0)))
        eval_batches: list[dict[str, torch.Tensor]] = []
        eval_refs = self.config.get("eval")
        eval_paths = self.fetch_all(_refs(eval_refs)) if eval_refs else []
        if main:
            for path in eval_paths:
                eval_batches += list(batches(rows_of(path, [*self.names, "labels"]), 32))
        opt = self.config.get("optimizer", {})
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=float(opt.get("learning-rate", 1e-3)),
            betas=tuple(opt.get("betas") or (0.9, 0.999)),
            eps=float(opt.get("epsilon") or 1e-8),
            weight_decay=float(opt.get("weight-decay", 0.01)),
        )
        wrapped, optimizer = ranks.prepare(model, optimizer)
        theta = global_of(model)
        digest = state_sha256(theta)
        if main:
            self.save_checkpoint(0, theta)
            initial = {"eval_loss": self.evaluate(model, eval_batches)}
            self.bridge.status({"metrics": {"round": 0, "metrics": initial}})
            threading.Thread(target=self.listen, daemon=True).start()
        data = batches(self.slices(), self.batch_size)
        first = True
        rnd = 1
        while True:
            losses: list[float] = []
            samples = 0
            started = time.monotonic()
            counter = -1
            while counter != 0:
                batch = next(data)
                optimizer.zero_grad()
                loss = lm_loss(wrapped, batch)
                ranks.backward(loss)
                optimizer.step()
                losses.append(float(loss.detach()))
                size = int(next(iter(batch.values())).shape[0]) * ranks.world
                samples += size
                status: dict[str, Any] = {"batch_size": size}
                if first:
                    status["weights_sha256"] = digest
                    first = False
                reply = self.status({"status": status})
                if reply.get("type") == "ScheduleUpdate":
                    counter = int(reply.get("counter", 0))
                elif counter > 0:
                    counter -= 1
            step_ms = 1000 * (time.monotonic() - started) / max(1, len(losses))
            update = ""
            sent = 0
            if main:
                self.bridge.status("update")
                name = f"{rnd}_local_gradients.pt"
                save_file(
                    pseudo_gradient(model, theta, self.precision),
                    str(self.work_dir / name),
                    metadata={"format": "pt", "samples": str(samples), "round": str(rnd)},
                )
                sent = (self.work_dir / name).stat().st_size
                self.send(name)
                (self.work_dir / name).unlink()
                update = str(self.next_update())
            update_path = Path(ranks.share(update))
            received = update_path.stat().st_size
            merge(theta, load_file(str(update_path)))
            ranks.barrier()  # every rank read the update before rank 0 removes it
            load_into(model, theta)
            if not main:
                done = ranks.share(False)
            else:
                if self.checkpoints is not None:  # the update as received, beside the weights
                    target = (
                        self.checkpoints / f"update-{rnd}-rank-{self.worker_index}.safetensors"
                    )
                    os.replace(update_path, target)
                else:
                    update_path.unlink()
                digest = state_sha256(theta)
                self.save_checkpoint(rnd, theta)
                metrics = {
                    "loss": sum(losses) / len(losses),
                    "eval_loss": self.evaluate(model, eval_batches),
                    "samples": float(samples),
                    "steps": float(len(losses)),
                    "step_ms": step_ms,
                    "bytes_sent": float(sent),
                    "bytes_received": float(received),
                }
                self.bridge.status({"metrics": {"round": rnd, "metrics": metrics}})
                reply = self.bridge.status({"update-received": {"weights_sha256": digest}})
                done = ranks.share(reply.get("type") == "Done")
            if done:
                if main:
                    print(f"Finished training of {rnd} DiLoCo update rounds", flush=True)
                return 0
            rnd += 1

    def send(self, name: str) -> None:
        """Send the pseudo-gradient; retry while nobody received it, up to ``send_timeout``.

        A parameter server that is briefly unreachable costs a retry, not the job; one that is
        gone is found lost by the scheduler, which then ends the job with that reason.
        """
        deadline = time.monotonic() + float(self.config.get("send_timeout", 120.0))
        delay = 0.5
        while True:
            try:
                self.bridge.send_resource(self.config["updates"], name)
                return
            except BridgeClientError as exc:
                if exc.code != "not_delivered" or time.monotonic() + delay > deadline:
                    raise
                print(f"diloco executor: {exc.detail}; retrying in {delay:g} s", flush=True)
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    def next_update(self) -> Path:
        """The next file the parameter server pushed (waits)."""
        event = self.events.get()
        if isinstance(event, BaseException):
            raise ExecutorError(f"the receive stream ended: {event}")
        return self.work_dir / str(event["path"])

    def save_checkpoint(self, rnd: int, theta: Mapping[str, torch.Tensor]) -> None:
        """With ``checkpoint_dir``: θ_global after each round (``round-R-rank-K.safetensors``).

        The update received in that round is kept beside it (``update-R-rank-K.safetensors``).
        """
        if self.checkpoints is not None:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            target = self.checkpoints / f"round-{rnd}-rank-{self.worker_index}.safetensors"
            save_file({k: v.contiguous() for k, v in theta.items()}, str(target))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hypha_sm.executors.diloco", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--socket", default=os.environ.get("SOCKET_PATH"))
    parser.add_argument("--work-dir", default=os.environ.get("WORK_DIR"))
    parser.add_argument("--job", default=os.environ.get("JOB_JSON"))
    args = parser.parse_args(argv)
    job_text = args.job
    if job_text and not job_text.lstrip().startswith("{") and Path(job_text).is_file():
        job_text = Path(job_text).read_text()
    if not (args.socket and args.work_dir and job_text):
        parser.error("needs --socket, --work-dir and --job (or SOCKET_PATH, WORK_DIR, JOB_JSON)")
    torch.set_num_threads(int(os.environ.get("HYPHA_TORCH_THREADS", "1")))
    work_dir = Path(args.work_dir)
    ranks = Ranks()
    bridge = BridgeClient(args.socket, timeout=None) if ranks.main else None
    try:
        return Job(bridge, work_dir, json.loads(job_text), ranks).run()
    except (ExecutorError, BridgeClientError) as exc:
        print(f"diloco executor: {exc}", file=sys.stderr)
        return 1
    finally:
        if bridge is not None:
            bridge.close()


if __name__ == "__main__":
    sys.exit(main())

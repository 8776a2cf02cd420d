"""The ``hypha-sm`` command line: roles (``run``, ``gateway run``, ``scheduler run``) and tools."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from hypha_sm import __version__
from hypha_sm.config.layers import ConfigError, load_settings
from hypha_sm.core.engine import REJECTED
from hypha_sm.core.errors import HyphaSMError, SpecError
from hypha_sm.core.role import StepResult
from hypha_sm.init import InitError, write_example
from hypha_sm.log.codec import Entry, LogFormatError, role_of
from hypha_sm.log.replay import replay, replay_series
from hypha_sm.log.store import newest_run_of, read_lines, read_series
from hypha_sm.machines_io import default_machines_dir, load_engine, load_specs, roles
from hypha_sm.net.errors import NetworkError
from hypha_sm.net.keys import create_key_file
from hypha_sm.runtime.roles import ROLES, role_named
from hypha_sm.wire.errors import WireError

#: What a shell reports for a command a closed pipe stopped (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hypha-sm`` console script."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader left (`hypha-sm replay LOG | head`): stop quietly, as `cat` does. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _log_flags(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``: flags over ``HYPHA_LOG_*`` over the file."""
    parser.add_argument(
        "--log-level", help="debug, info (default), warning or error (also HYPHA_LOG_LEVEL)"
    )
    parser.add_argument(
        "--log-format", help="text (default) or json, one object per line (HYPHA_LOG_FORMAT)"
    )


def _log_settings(args: argparse.Namespace) -> dict[str, object]:
    return {"log_level": args.log_level, "log_format": args.log_format}


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="hypha-sm",
        description="Worker node for the Hypha compute market, as a declarative state-machine engine.",
    )
    parser.add_argument("--version", action="version", version=f"hypha-sm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_diagram = sub.add_parser(
        "diagram", help="generate diagrams of machines/ into docs/diagrams/"
    )
    p_diagram.add_argument("--out", type=Path, default=None, help="output directory")
    p_diagram.add_argument(
        "--check", action="store_true", help="fail if the files on disk are stale (CI)"
    )
    p_diagram.add_argument(
        "--no-svg", action="store_true", help="do not render SVG even if `dot` is installed"
    )

    p_replay = sub.add_parser("replay", help="re-run an event log and check its effects")
    p_replay.add_argument(
        "log", type=Path, help="a log or segment file, or a directory: its newest run's segments"
    )
    p_replay.add_argument("--until", type=int, help="stop after this seq and print the state")
    focus = p_replay.add_mutually_exclusive_group()
    focus.add_argument("--lease", help="print the timeline of one lease")
    focus.add_argument("--job", help="print the timeline of one job")
    p_replay.add_argument("--no-check", action="store_true", help="do not compare effects")
    p_replay.add_argument("--json", action="store_true", help="machine-readable summary")

    p_keygen = sub.add_parser("keygen", help="create this node's Ed25519 key (mode 0600)")
    p_keygen.add_argument("path", type=Path, help="where to write the key, e.g. node-key.pem")
    p_keygen.add_argument("--force", action="store_true", help="overwrite an existing key")

    p_gateway = sub.add_parser("gateway", help="the gateway role: relay, peer directory")
    gateway_sub = p_gateway.add_subparsers(dest="gateway_command", required=True)
    p_gw_run = gateway_sub.add_parser("run", help="run a gateway until SIGINT/SIGTERM")
    p_gw_run.add_argument("config", nargs="?", type=Path, help="gateway.toml")
    p_gw_run.add_argument("--config", dest="config_flag", type=Path, help="gateway.toml")
    for flag in ("listen", "ingest", "publish"):
        p_gw_run.add_argument(f"--{flag}", help=f"address to {flag} on (overrides the file)")
    p_gw_run.add_argument("--node-key", type=Path, help="the gateway's Ed25519 key file")
    _log_flags(p_gw_run)

    p_data = sub.add_parser("data", help="datasets as slices: prepare and serve them")
    data_sub = p_data.add_subparsers(dest="data_command", required=True)
    p_prepare = data_sub.add_parser(
        "prepare", help="cut real data into safetensors slices and a dataset.json manifest"
    )
    p_data_run = data_sub.add_parser("run", help="the data-node role: serve datasets")
    p_data_run.add_argument("config", nargs="?", type=Path, help="data.toml")
    p_data_run.add_argument("--config", dest="config_flag", type=Path, help="data.toml")
    p_data_run.add_argument("--gateway", action="append", help="replaces gateway_addresses")
    _log_flags(p_data_run)
    source = p_prepare.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--text", metavar="FILE", help="a text file, or pydoc-topics (Python's bundled docs)"
    )
    source.add_argument("--digits", action="store_true", help="scikit-learn's bundled 8x8 digits")
    source.add_argument(
        "--file", type=Path, help="a local .jsonl/.json/.csv/.parquet/.txt file (the hf extra)"
    )
    p_prepare.add_argument("--text-key", help="--file: the column of text (byte-level samples)")
    p_prepare.add_argument("--keys", help="--file: numeric columns, comma-separated, as tensors")
    p_prepare.add_argument(
        "--tokenizer", type=Path, help="text: a directory with a tokenizer.json (default: bytes)"
    )
    p_prepare.add_argument("--out", type=Path, required=True, help="the dataset directory")
    p_prepare.add_argument("--name", help="the dataset's name (default: the directory's)")
    p_prepare.add_argument(
        "--samples-per-slice", type=int, default=64, help="samples in each slice (64)"
    )
    p_prepare.add_argument("--seq-len", type=int, default=128, help="text: bytes per sample (128)")
    p_prepare.add_argument(
        "--eval-fraction", type=float, default=0.1, help="held out for evaluation (0.1)"
    )
    p_prepare.add_argument("--seed", type=int, default=0, help="orders the samples (0)")
    p_prepare.add_argument("--force", action="store_true", help="replace an existing dataset")

    p_sched = sub.add_parser(
        "scheduler", help="the scheduler role: one job on N workers (and its dataset's slices)"
    )
    sched_sub = p_sched.add_subparsers(dest="scheduler_command", required=True)
    p_sched_run = sched_sub.add_parser("run", help="place and run the job in job.toml")
    p_sched_run.add_argument("config", nargs="?", type=Path, help="job.toml")
    p_sched_run.add_argument("--config", dest="config_flag", type=Path, help="job.toml")
    p_sched_run.add_argument("--gateway", action="append", help="replaces gateway_addresses")
    _log_flags(p_sched_run)

    p_devnet = sub.add_parser(
        "devnet",
        help="a local network training with DiLoCo: gateway, data node, scheduler, workers, PS",
    )
    p_devnet.add_argument("--dir", type=Path, help="keep everything here (default: a temp dir)")
    p_devnet.add_argument("--keep", action="store_true", help="keep the temp dir afterwards")
    p_devnet.add_argument("--rounds", type=int, default=10, help="outer rounds (10)")
    p_devnet.add_argument("--workers", type=int, default=2, help="DiLoCo training workers (2)")
    p_devnet.add_argument("--outer-lr", type=float, default=0.7, help="outer learning rate (0.7)")
    p_devnet.add_argument(
        "--outer-momentum", type=float, default=0.5, help="outer momentum (0.5; the original: 0.9)"
    )
    p_devnet.add_argument(
        "--samples-per-round",
        type=int,
        default=256,
        help="samples all workers train between updates (256: 16 steps of 8 each for two)",
    )
    p_devnet.add_argument(
        "--model-weights",
        type=Path,
        help="start from these weights (safetensors of the devnet's model) instead of a seed",
    )
    p_devnet.add_argument(
        "--quorum", type=int, default=0, help="pseudo-gradients that close a late round (0: all)"
    )
    p_devnet.add_argument(
        "--round-timeout", type=float, default=60.0, help="seconds a round waits for stragglers"
    )
    p_devnet.add_argument(
        "--precision",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="pseudo-gradients on the wire (float32)",
    )

    p_init = sub.add_parser("init", help="write a commented example worker.toml")
    p_init.add_argument("path", nargs="?", type=Path, help="the file (default worker.toml)")
    p_init.add_argument("-o", "--output", type=Path, help="the file (the original's flag)")
    p_init.add_argument("--work-dir", type=Path, default=Path("work"), help="job directories")
    p_init.add_argument("--gateway", action="append", help="gateway addresses (repeatable)")
    p_init.add_argument("--listen", action="append", help="listen addresses (repeatable)")
    p_init.add_argument("--external", action="append", help="external addresses (repeatable)")
    p_init.add_argument(
        "--with-keys", action="store_true", help="also write a node key and dev TLS certificates"
    )
    p_init.add_argument(
        "-n", "--name", default="worker", help="the node's name: prefix of its key and cert files"
    )
    p_init.add_argument("--force", action="store_true", help="overwrite existing files")

    p_run = sub.add_parser("run", help="run a worker node (SIGINT/SIGTERM to stop)")
    p_run.add_argument("config", nargs="?", type=Path, help="worker.toml")
    p_run.add_argument("-c", "--config", dest="config_flag", type=Path, help="worker.toml")
    p_run.add_argument("--work-dir", type=Path)
    p_run.add_argument("--gateway", action="append", help="replaces gateway_addresses")
    p_run.add_argument("--listen", action="append", help="replaces listen_addresses")
    p_run.add_argument("--external", action="append", help="replaces external_addresses")
    _log_flags(p_run)

    p_probe = sub.add_parser("probe", help="exit 0 only if ADDRESS answers healthy in time")
    p_probe.add_argument("address")
    p_probe.add_argument(
        "-c", "--config", type=Path, help="take cert, key and trust from this worker.toml"
    )
    p_probe.add_argument("--timeout", type=int, default=2000, help="milliseconds (default 2000)")
    p_probe.add_argument("--cert", type=Path)
    p_probe.add_argument("--key", type=Path)
    p_probe.add_argument("--trust", type=Path)

    p_check = sub.add_parser("check-config", help="validate a worker.toml and print the result")
    p_check.add_argument("config", type=Path)
    p_check.add_argument("--work-dir", type=Path)
    p_check.add_argument("--gateway", action="append", help="replaces gateway_addresses")

    p_machines = sub.add_parser("machines", help="validate machines/ and list what they declare")
    p_machines.add_argument(
        "--dir", type=Path, default=None, help="check one role's machines in this directory"
    )
    p_machines.add_argument(
        "--role", default="worker", help="the role whose code runs --dir's machines (worker)"
    )

    args = parser.parse_args(argv)
    try:
        if args.command == "diagram":
            return _diagram(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "keygen":
            return _keygen(args)
        if args.command == "gateway":
            return _gateway(args)
        if args.command == "scheduler":
            return _scheduler(args)
        if args.command == "init":
            return _init(args)
        if args.command == "devnet":
            from hypha_sm.devnet import run_devnet

            return run_devnet(
                args.dir,
                keep=args.keep,
                rounds=args.rounds,
                trainers=args.workers,
                outer=(args.outer_lr, args.outer_momentum),
                quorum=args.quorum,
                round_timeout=args.round_timeout,
                precision=args.precision,
                samples_per_round=args.samples_per_round,
                model_weights=args.model_weights,
            )
        if args.command == "run":
            return _run(args)
        if args.command == "data":
            return _data(args)
        if args.command == "probe":
            return _probe(args)
        if args.command == "check-config":
            return _check_config(args)
        return _machines(args)
    except _USER_ERRORS as exc:
        # One root per layer: core, log, roles and runtime (HyphaSMError), wire, net, config.
        print(f"hypha-sm: error: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        # A role's task failed inside trio's nursery (e.g. its port is in use): the same
        # one line per error, if each is one of ours; anything else is a bug and raises.
        leaves = _leaves(group)
        if not leaves or not all(isinstance(leaf, _USER_ERRORS) for leaf in leaves):
            raise
        for leaf in leaves:
            print(f"hypha-sm: error: {leaf}", file=sys.stderr)
        return 2


#: The errors a user can cause and fix: each becomes one line.
_USER_ERRORS = (HyphaSMError, WireError, NetworkError, ConfigError, FileNotFoundError)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside a (nested) exception group."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _diagram(args: argparse.Namespace) -> int:
    from hypha_sm.diagrams.render import render_roles, stale_files, write_all

    out = args.out or _default_diagrams_dir()
    specs = {role: load_specs(role=role) for role in roles()}
    files = render_roles(specs, svg=False if args.no_svg else None)
    if args.check:
        stale = stale_files(out, files)
        if stale:
            print(f"stale diagrams in {out}: {', '.join(stale)}", file=sys.stderr)
            print("run `hypha-sm diagram` and commit the result", file=sys.stderr)
            return 1
        print(f"diagrams in {out} are up to date ({len(files)} files)")
        return 0
    changed = write_all(out, files)
    print(
        f"wrote {len(files)} files to {out}"
        + (f"; changed: {', '.join(changed)}" if changed else "")
    )
    unmade = stale_files(out, files)
    if unmade:
        print(
            f"warning: could not render {', '.join(unmade)}: install Graphviz (`dot`) to update them",
            file=sys.stderr,
        )
    return 0


def _default_diagrams_dir() -> Path:
    """``docs/diagrams`` of the checkout the machines come from, else of the current directory."""
    beside = default_machines_dir().parent / "docs" / "diagrams"
    return beside if beside.is_dir() else Path.cwd() / "docs" / "diagrams"


def _gateway(args: argparse.Namespace) -> int:
    from hypha_sm.config.gateway import GatewaySettings
    from hypha_sm.roles.gateway.main import run_gateway

    path = args.config_flag or args.config
    flags = {
        "listen": args.listen,
        "ingest": args.ingest,
        "publish": args.publish,
        "node_key": args.node_key,
        **_log_settings(args),
    }
    return run_gateway(load_settings(GatewaySettings, path, flags))


def _scheduler(args: argparse.Namespace) -> int:

    import trio

    from hypha_sm.config.scheduler import SchedulerSettings
    from hypha_sm.config.worker import otel_overrides, otel_sources
    from hypha_sm.roles.scheduler.scheduler import run_scheduler

    flags: dict[str, object] = {
        "gateway_addresses": args.gateway,
        **otel_overrides(),
        **_log_settings(args),
    }
    path = args.config_flag or args.config
    settings = load_settings(SchedulerSettings, path, flags, otel_sources())
    _log_to_stderr(settings)
    outcome = trio.run(run_scheduler, settings)
    for p in outcome.placements:
        code = "" if p.exit_code is None else f" exit {p.exit_code}"
        why = f" ({p.reason})" if p.reason else ""
        print(f"{p.worker} job {p.job_id}: {p.phase}{code}{why}")
    if outcome.reason:
        print(f"job {outcome.reason}")
    return 0 if outcome.ok else 1


def _check_telemetry(settings: Any) -> None:
    """Malformed telemetry headers or attributes stop the node before it starts."""
    from hypha_sm.runtime.telemetry import TelemetryConfig, TelemetryConfigError

    try:
        TelemetryConfig.from_settings(settings, "")
    except TelemetryConfigError as exc:
        raise ConfigError(f"invalid configuration:\n  {exc}") from None


def _log_to_stderr(settings: Any) -> None:
    from hypha_sm.runtime.textlog import configure

    configure(settings.log_level, settings.log_format)


def _init(args: argparse.Namespace) -> int:
    if args.path is not None and args.output is not None and args.path != args.output:
        raise InitError(f"two files named: {args.path} and -o {args.output}")
    written = write_example(
        args.output or args.path or Path("worker.toml"),
        work_dir=args.work_dir.absolute(),
        force=args.force,
        with_keys=args.with_keys,
        name=args.name,
        gateways=args.gateway,
        listen=args.listen,
        external=args.external,
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def _run(args: argparse.Namespace) -> int:

    import trio

    from hypha_sm.config.worker import load_worker_settings, preflight
    from hypha_sm.roles.worker.run import job_user_problems, run_worker

    flags = {
        "work_dir": args.work_dir,
        "gateway_addresses": args.gateway,
        "listen_addresses": args.listen,
        "external_addresses": args.external,
        **_log_settings(args),
    }
    settings = load_worker_settings(args.config_flag or args.config, flags)
    _check_telemetry(settings)
    if problems := preflight(settings) + job_user_problems(settings):  # as check-config
        for problem in problems:
            print(f"hypha-sm: error: {problem}", file=sys.stderr)
        return 2
    _log_to_stderr(settings)
    trio.run(run_worker, settings)
    return 0


def _probe(args: argparse.Namespace) -> int:
    import trio

    from hypha_sm.config.addresses import nng_address
    from hypha_sm.net.probe import probe
    from hypha_sm.net.tls import TlsFiles

    cert, key, trust = args.cert, args.key, args.trust
    if args.config is not None:  # the original's `probe -c`: its TLS files, flags win
        from hypha_sm.config.worker import load_worker_settings

        settings = load_worker_settings(args.config, {})
        cert, key, trust = (
            cert or settings.cert_pem,
            key or settings.key_pem,
            trust or settings.trust_pem,
        )
    tls = TlsFiles(cert, key, trust) if cert and key and trust else None
    try:  # the original's form: a multiaddr
        address = str(nng_address(args.address))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    healthy, detail = trio.run(lambda: probe(address, seconds=args.timeout / 1000, tls=tls))
    print(f"{args.address}: {detail}")
    return 0 if healthy else 1


def _check_config(args: argparse.Namespace) -> int:
    from hypha_sm.config.worker import executor_warnings, load_worker_settings, preflight
    from hypha_sm.roles.worker.run import job_user_problems

    flags = {"work_dir": args.work_dir, "gateway_addresses": args.gateway}
    settings = load_worker_settings(args.config, flags)
    _check_telemetry(settings)
    print(settings.model_dump_json(indent=2, by_alias=True))
    for warning in executor_warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    # What `run` would refuse, the same checks.
    problems = preflight(settings) + job_user_problems(settings)
    for problem in problems:
        print(f"hypha-sm: error: {problem}", file=sys.stderr)
    return 2 if problems else 0


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "run":
        from hypha_sm.config.data import DataNodeSettings
        from hypha_sm.roles.data.main import run_data_node

        flags = {"gateway_addresses": args.gateway, **_log_settings(args)}
        return run_data_node(
            load_settings(DataNodeSettings, args.config_flag or args.config, flags)
        )
    from hypha_sm.datasets import prepare
    from hypha_sm.datasets.manifest import DatasetError

    if not 0.0 <= args.eval_fraction < 1.0:
        raise DatasetError(f"eval-fraction {args.eval_fraction}: must be in [0, 1)")
    tokens = "bytes" if args.tokenizer is None else f"tokenizer {args.tokenizer.name}"
    if args.digits:
        train, evaluation = prepare.digits_samples(args.eval_fraction, args.seed)
        source = "digits (scikit-learn)"
    elif args.file is not None:
        keys = [k for k in (args.keys or "").split(",") if k]
        train, evaluation = prepare.file_samples(
            args.file,
            text_key=args.text_key,
            keys=keys,
            seq_len=args.seq_len,
            eval_fraction=args.eval_fraction,
            seed=args.seed,
            tokenizer=args.tokenizer,
        )
        columns = ", ".join(keys)
        what = f"column {args.text_key!r}, {tokens}" if args.text_key else f"columns {columns}"
        source = f"{args.file.name}, {what}"
    else:
        data, named = prepare.read_text(args.text)
        train, evaluation = prepare.text_samples(
            data, args.seq_len, args.eval_fraction, args.tokenizer
        )
        source = f"{named}, {tokens}, seq-len {args.seq_len}"
    train = prepare.shuffled(train, args.seed)
    manifest = prepare.write_dataset(
        args.out,
        name=args.name or args.out.name,
        source=source,
        seed=args.seed,
        samples_per_slice=args.samples_per_slice,
        train=train,
        evaluation=evaluation if args.eval_fraction > 0 else {},
        force=args.force,
    )
    shapes = ", ".join(f"{k} {v.dtype}{v.shape}" for k, v in manifest.keys.items())
    print(
        f"wrote {args.out}: {len(manifest.slices)} training and {len(manifest.eval_slices)} eval "
        f"slices of {manifest.samples_per_slice} samples ({shapes}); "
        f"{manifest.dropped_samples} samples did not fill a slice"
    )
    return 0


def _keygen(args: argparse.Namespace) -> int:
    identity = create_key_file(args.path, force=args.force)
    print(f"wrote {args.path} (mode 0600); peer id {identity.peer_id}")
    return 0


def _machines(args: argparse.Namespace) -> int:
    names = roles() if args.dir is None else [args.role]
    for role in names:
        if role not in ROLES:
            raise SpecError(f"machines/{role}/", role, None, "no code runs this role's machines")
        engine, machines_hash = load_engine(ROLES[role], args.dir)
        for name, spec in sorted(engine.specs.items()):
            print(
                f"{spec.file}: {name}: {len(spec.states)} states, {len(spec.events)} events, "
                f"{len(spec.transitions)} transitions"
            )
        print(f"{role}: all valid; {machines_hash}")
    return 0


class _Timeline:
    """Collects the lines of one lease's or job's life while a log replays."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        self.keys = {key}
        self.t0: float | None = None
        self.lines: list[str] = []

    def __call__(self, entry: Entry[Any, Any], result: StepResult) -> None:
        if self.t0 is None:
            self.t0 = entry.mono
        moves = []
        for machine, key, src, event, dst, index in result.trace:
            if key in self.keys:  # any role's machine keyed by the lease or its job
                if event == "created":
                    moves.append(f"{machine} created ({dst})")
                elif dst is None:
                    verdict = "rejected" if index == REJECTED else "ignored"
                    moves.append(f"{machine} {src or '(none)'}: {event} {verdict}")
                else:
                    moves.append(f"{machine} {src} -> {dst} on {event} (#{index})")
        effects = [
            e
            for e in result.effects
            if self.keys & {getattr(e, "lease_id", None), getattr(e, "job_id", None)}
        ]
        if self.kind == "lease":
            for e in result.effects:  # follow the lease's job too
                job_id = getattr(e, "job_id", None)
                if getattr(e, "lease_id", None) in self.keys and job_id:
                    self.keys.add(job_id)
        if not moves and not effects:
            return
        tag = entry.event.__struct_config__.tag
        self.lines.append(
            f"#{entry.seq:<5} +{entry.mono - self.t0:9.3f}s  {_clock(entry.wall)}  {tag}"
        )
        self.lines.extend(f"{'':18}{m}" for m in moves)
        self.lines.extend(f"{'':18}=> {_effect_text(e)}" for e in effects)


def _clock(wall: float) -> str:
    """A wall-clock time as people read it (UTC, milliseconds)."""
    try:
        when = datetime.datetime.fromtimestamp(wall, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return repr(wall)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _effect_text(effect: object) -> str:
    data = msgspec.to_builtins(effect)
    kind = str(data.pop("type"))

    def shown(key: str, value: object) -> str:
        # Expiry times are wall-clock seconds: shown as times, not as 1764000005.0.
        if key.startswith("expires") and isinstance(value, float):
            return f"{key}={_clock(value)}"
        return f"{key}={value}"

    return kind + " " + " ".join(shown(k, v) for k, v in data.items() if k not in ("spec",))


def _replay(args: argparse.Namespace) -> int:
    paths = newest_run_of(args.log, ROLES) if args.log.is_dir() else [args.log]
    if not paths:
        raise LogFormatError(f"{args.log}: no event-log segments in this directory")
    with paths[0].open("rb") as first:
        role = role_named(role_of(first.readline()))
    engine, machines_hash = load_engine(role)
    timeline = None
    if args.lease:
        timeline = _Timeline("lease", args.lease)
    elif args.job:
        timeline = _Timeline("job", args.job)
    started = time.perf_counter()
    options: dict[str, Any] = {
        "until": args.until,
        "check_effects": not args.no_check,
        "observe": timeline,
        "role": role,
    }
    if args.log.is_dir():
        report = replay_series(read_series(paths), engine, machines_hash, **options)
    else:
        report = replay(read_lines(args.log), engine, machines_hash, **options)
    elapsed = time.perf_counter() - started
    rate = report.events / elapsed if elapsed > 0 else math.inf
    header = report.header
    summary: dict[str, Any] = {
        "log": str(args.log),
        "role": role.name,
        "engine_version": header.engine_version,
        "machines_match": report.machines_match,
        "events": report.events,
        "seconds": round(elapsed, 6),
        "events_per_second": round(rate),
        "ok": report.ok,
        "divergence": report.divergence.to_builtins() if report.divergence else None,
        "error": None
        if report.error is None
        else {"seq": report.error[0], "exception": repr(report.error[1])},
        "partial_line": report.partial_line,
        "node_stopped": report.node_stopped,
    }
    past_end = args.until is not None and args.until > report.last_seq and report.ok
    if past_end:
        print(
            f"warning: --until {args.until} is past the end of the log (last entry "
            f"{report.last_seq}); the state shown is the final one",
            file=sys.stderr,
        )
    state_doc = None
    if args.until is not None:
        describe = role.describe or role.capture
        assert describe is not None  # every role has one or the other
        state_doc = msgspec.to_builtins(describe(report.state))
    if args.json:
        if state_doc is not None:  # one JSON document: the summary with the state in it
            summary["until"] = args.until
            summary["state"] = state_doc
        print(_strict_json(summary))
    else:
        print(
            f"log: {args.log} ({role.name}, v{header.version}, engine {header.engine_version}, "
            f"seed {header.seed})"
        )
        if not report.machines_match:
            print(
                f"warning: machines differ from the recording ({header.machines_hash} vs "
                f"{machines_hash}); a divergence may be expected",
            )
        if timeline is not None:
            print(f"timeline of {timeline.kind} {timeline.key}:")
            print("\n".join(timeline.lines) if timeline.lines else "  (never seen)")
        print(f"replayed {report.events} events in {elapsed:.3f} s ({rate:,.0f} events/s)")
        if report.partial_line is not None:
            print(
                f"line {report.partial_line} is partial (the node stopped while writing it); "
                "replayed the complete entries before it"
            )
        if report.ok and report.stopped_at is None and not report.node_stopped:
            print(
                "the recording ends with the node running: it was killed, crashed, "
                "or is still running"
            )
        if report.divergence is not None:
            print("DIVERGED:")
            print(json.dumps(report.divergence.to_builtins(), indent=2))
        elif report.error is not None:
            seq, exc = report.error
            print(f"ERROR at seq {seq}: {exc!r}")
        else:
            print("effects match the recording" if not args.no_check else "effects not checked")
    if state_doc is not None and not args.json:
        print(_strict_json(state_doc))
    if report.divergence is not None:
        return 1
    return 3 if report.error is not None else 0


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # "never" (no deadline): JSON has no infinity, and strict parsers refuse it
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _strict_json(document: object) -> str:
    """``document`` as standard JSON: non-finite numbers become null, other objects strings."""
    return json.dumps(_finite(document), indent=2, default=str, allow_nan=False)


if __name__ == "__main__":
    raise SystemExit(main())

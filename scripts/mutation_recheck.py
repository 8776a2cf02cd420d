"""Run mutants each in a fresh pytest process: mutmut's survivors, and the process stop's mutants.

Two kinds of mutant need a process of their own (``MUTANT_UNDER_TEST`` set, run in ``mutants/``
against the current ``tests/``):

- **mutmut's survivors and "suspicious" verdicts** (core and wire). mutmut forks every
  mutant's test run from a process that has already imported the package and built the engine
  the tests cache, so a mutant of code that runs once (a lookup table built by a function, the
  decorator registries, machine parsing, the engine's construction) never takes effect there.
  "Suspicious" is mutmut's word for an exit it has no name for: here, SIGABRT from a test
  that opens NNG sockets in a child forked from a process whose NNG threads already ran.
  Each runs against the tests mutmut found for its function plus
  its module's own tests (``HOME``).
- **the stop of a job's processes** (``STOP``), which mutmut generates but does not run: its
  mutants signal whatever process they find. Each runs in a PID namespace of its own (root
  only), where it can reach nothing but the test and the jobs it starts, against
  ``STOP_TESTS``.

Verdicts go to ``mutants/recheck.json`` with the mutated function's hash, so a later run redoes
only what changed; ``scripts/mutation_summary.py`` reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
RESULTS = MUTANTS / "recheck.json"

#: A module's own tests: the unit tests that exercise it directly.
HOME = {
    "hypha_sm.core.engine": [
        "tests/test_engine.py",
        "tests/test_spec.py",
        "tests/test_library_equivalence.py",
    ],
    "hypha_sm.core.errors": ["tests/test_spec.py", "tests/test_engine.py"],
    "hypha_sm.core.spec": [
        "tests/test_spec.py",
        "tests/test_acceptance.py",
        "tests/test_diagrams.py",
    ],
    "hypha_sm.core.reducer": ["tests/test_acceptance.py", "tests/test_library_equivalence.py"],
    "hypha_sm.core.state": ["tests/test_state.py", "tests/test_engine.py", "tests/test_ledger.py"],
    "hypha_sm.core.policy": ["tests/test_policy.py"],
    "hypha_sm.core.resources": ["tests/test_resources.py", "tests/test_ledger.py"],
    "hypha_sm.wire.bounds": ["tests/test_bounds.py", "tests/test_remote_decoders.py"],
    "hypha_sm.wire.envelope": ["tests/test_wire.py"],
    "hypha_sm.wire.identity": ["tests/test_wire.py"],
    "hypha_sm.wire.vectors": ["tests/test_wire.py"],
    # Since the roles move (the names above are those of runs made before it).
    "hypha_sm.core.host": ["tests/test_host.py", "tests/test_state.py", "tests/test_engine.py"],
    "hypha_sm.core.record": ["tests/test_host.py", "tests/test_state.py"],
    "hypha_sm.roles.worker.core.state": [
        "tests/test_state.py",
        "tests/test_engine.py",
        "tests/test_ledger.py",
    ],
    "hypha_sm.roles.worker.core.policy": ["tests/test_policy.py"],
    "hypha_sm.roles.worker.core.reducer": [
        "tests/test_acceptance.py",
        "tests/test_library_equivalence.py",
    ],
    "hypha_sm.roles.worker.core.snapshot": ["tests/test_log_rotation.py"],
    "hypha_sm.roles.worker.core.role": ["tests/test_log.py", "tests/test_log_rotation.py"],
    "hypha_sm.core.role": ["tests/test_log.py", "tests/test_scheduler_core.py"],
    # The scheduler's core (since it became machines).
    "hypha_sm.roles.scheduler.core.machines": [
        "tests/test_scheduler_core.py",
        "tests/test_small_defects.py",
    ],
    "hypha_sm.roles.scheduler.core.reducer": ["tests/test_scheduler_core.py"],
    "hypha_sm.roles.scheduler.core.state": ["tests/test_scheduler_core.py"],
    "hypha_sm.roles.scheduler.core.plan": ["tests/test_scheduler_core.py"],
    "hypha_sm.roles.scheduler.core.role": ["tests/test_scheduler_core.py"],
    "hypha_sm.roles.scheduler.core.slices": ["tests/test_scheduler_core.py"],
    "hypha_sm.roles.scheduler.core.diloco": ["tests/test_diloco_arithmetic.py"],
    "hypha_sm.roles.data.core.reducer": ["tests/test_data_core.py"],
    "hypha_sm.roles.data.core.machines": ["tests/test_data_core.py"],
}

#: The functions that find and kill a job's processes (module, function as mutmut names it).
STOP = {
    "hypha_sm.shell.process": (
        "x__alive",
        "x__cwd_inside",
        "x__signal_all",
        "x__killpg",
        "x__wait_exit",
        "xǁProcessJobǁstop",
        "xǁProcessJobǁwait",
        "xǁProcessJobǁ_cancelled",
        "xǁProcessJobǁ_members",
        "xǁProcessJobǁ_checked",
        "xǁProcessJobǁ_terminate",
    ),
    "hypha_sm.shell.sweep": (
        "x_marker_of",
        "x_adopted_children",
        "x_reap_adopted",
        "x_cgroup_pids",
        "x_kill_cgroup",
        "x_job_marker",
    ),
    # Since the roles move: the stop's process-set helpers live in sweep.py.
    "hypha_sm.roles.worker.process": (
        "x__wait_exit",
        "xǁProcessJobǁstop",
        "xǁProcessJobǁwait",
        "xǁProcessJobǁ_cancelled",
        "xǁProcessJobǁ_members",
        "xǁProcessJobǁ_checked",
        "xǁProcessJobǁ_terminate",
    ),
    "hypha_sm.roles.worker.sweep": (
        "x_alive",
        "x_cwd_inside",
        "x_signal_all",
        "x_killpg",
        "x_marker_of",
        "x_adopted_children",
        "x_reap_adopted",
        "x_cgroup_pids",
        "x_kill_cgroup",
        "x_job_marker",
    ),
    "hypha_sm.roles.worker.workdirs": ("x_clean_orphans",),
}
STOP_TESTS = ("tests/test_sweep.py", "tests/test_shell_process.py", "tests/test_escape.py")

#: mutmut's own pytest arguments (pyproject.toml): among them, the census tests it deselects,
#: which read the package's source and fail on mutmut's trampolines whatever the mutant.
PYTEST = [
    "-x",
    *tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["pytest_add_cli_args"],
]
RECHECKED = ("survived", "suspicious")
#: Seconds after which a run that pytest-timeout did not end counts as hung (killed).
HANG = 900
TIMED_OUT = -1


def mutants() -> dict[str, tuple[str, str]]:
    """Mutant name -> (mutmut's status, the mutated function's hash), for every mutant."""
    found = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        hashes = data.get("hash_by_function_name", {})
        for name, code in data.get("exit_code_by_key", {}).items():
            function = name.rsplit(".", 1)[1].rsplit("__mutmut_", 1)[0]
            found[name] = (status_by_exit_code[code], hashes.get(function, ""))
    return found


def in_stop(name: str) -> bool:
    """Whether mutant ``name`` is one of the process stop's."""
    module, _, mutant = name.rpartition(".")
    return mutant.rsplit("__mutmut_", 1)[0] in STOP.get(module, ())


def tests_for(name: str, stats: dict[str, list[str]]) -> tuple[str, ...]:
    """The test files to run against mutant ``name``."""
    if in_stop(name):
        return STOP_TESTS
    module, _, mutant = name.rpartition(".")
    function = f"{module}.{mutant.rsplit('__mutmut_', 1)[0]}"
    home = HOME.get(module, [])
    files = {test.split("::", 1)[0] for test in stats.get(function, [])} - set(home)
    # The module's own tests first: pytest keeps this order, and -x stops at the first failure.
    return (*home, *sorted(files))


def pytest_exit_code(tests: tuple[str, ...], mutant: str, *, isolate: bool) -> int:
    """Run ``tests`` in a fresh process in ``mutants/`` with ``mutant`` active ("" for none)."""
    command = [sys.executable, "-m", "pytest", *PYTEST, *tests]
    if isolate:
        command = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", *command]
    try:
        return subprocess.run(
            command,
            cwd=MUTANTS,
            env={**os.environ, "HYPOTHESIS_PROFILE": "ci", "MUTANT_UNDER_TEST": mutant},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=HANG,
        ).returncode
    except subprocess.TimeoutExpired:
        return TIMED_OUT


def _tests_digest() -> str:
    """A digest of the tests as they are in the working tree."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "tests").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def main() -> int:
    stats = json.loads((MUTANTS / "mutmut-stats.json").read_text())[
        "tests_by_mangled_function_name"
    ]
    # The verdict is the current tests': mutmut's copy of them is as old as its first run.
    # MUTATE_TESTS_FROM=<commit> takes them from a commit instead: the one the mutants were
    # made from, when the working tree has moved on since.
    commit = os.environ.get("MUTATE_TESTS_FROM")
    if commit:
        archive = subprocess.run(
            ["git", "archive", commit, "tests"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        shutil.rmtree(MUTANTS / "tests", ignore_errors=True)
        subprocess.run(["tar", "-x", "-C", str(MUTANTS)], input=archive, check=True)
    else:
        shutil.copytree(ROOT / "tests", MUTANTS / "tests", dirs_exist_ok=True)
    can_isolate = os.geteuid() == 0 and shutil.which("unshare") is not None
    done: dict[str, list[str]] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    todo = []
    for name, (status, digest) in mutants().items():
        # mutmut marks the stop's mutants "no tests" (no selected test starts a process).
        wanted = in_stop(name) or status in RECHECKED
        if wanted and done.get(name, ["", ""])[1] != digest:
            todo.append((name, digest))
    stop_todo = sum(in_stop(name) for name, _ in todo)
    if stop_todo and not can_isolate:
        print(f"skipping {stop_todo} process-stop mutants: they need root and unshare")
        todo = [(name, digest) for name, digest in todo if not in_stop(name)]
    # The stop's mutants first (nothing else runs them), then the cheapest test sets: an
    # interrupted run has the most verdicts per minute spent.
    todo.sort(key=lambda item: (not in_stop(item[0]), len(tests_for(item[0], stats))))
    print(f"{len(todo)} mutants to run in a fresh process ({len(done)} verdicts kept)")
    started = time.perf_counter()
    jobs = int(os.environ.get("MUTATE_JOBS", "2"))
    # Without a mutant every test set must pass here, or every verdict would be "killed".
    # Each set is checked before its first mutant; passing sets are remembered for the same
    # tests (a commit's, or the working tree's by content).
    source = commit or _tests_digest()
    clean_file = MUTANTS / "recheck-clean.json"
    clean: dict[str, bool] = json.loads(clean_file.read_text()) if clean_file.exists() else {}
    locks: dict[tuple[str, ...], threading.Lock] = defaultdict(threading.Lock)
    broken: list[str] = []

    def check_clean(tests: tuple[str, ...], isolate: bool) -> bool:
        key = f"{source} {' '.join(tests)}"
        with locks[tests]:
            if key not in clean:
                code = pytest_exit_code(tests, "", isolate=isolate)
                if code != 0:
                    broken.append(f"the unmutated code fails {' '.join(tests)} (exit {code})")
                    return False
                clean[key] = True
                clean_file.write_text(json.dumps(clean, indent=1))
        return True

    def verdict_of(name: str) -> tuple[str, int]:
        tests, isolate = tests_for(name, stats), in_stop(name)
        if broken or not check_clean(tests, isolate):
            return "unchecked", -2
        code = pytest_exit_code(tests, name, isolate=isolate)
        # 1: a test failed; 2: collection broke (the mutant broke the module at import). Any
        # other exit but 0 or 5 is the test process dying of the mutant (a signal it sent).
        return ("survived" if code in (0, 5) else "killed"), code

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = {pool.submit(verdict_of, name): (name, digest) for name, digest in todo}
        for i, run in enumerate(as_completed(runs), start=1):
            name, digest = runs[run]
            verdict, code = run.result()
            if verdict == "unchecked":
                continue
            done[name] = [verdict, digest]
            RESULTS.write_text(json.dumps(done, indent=1, ensure_ascii=False))
            print(f"[{i}/{len(todo)}] {verdict:8} {name} (exit {code})", flush=True)
    killed = sum(verdict == "killed" for verdict, _ in done.values())
    elapsed = time.perf_counter() - started
    print(f"{killed} of {len(done)} killed in a fresh process ({elapsed:.0f} s)")
    for problem in broken:
        print(f"{problem}: its mutants were not run")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

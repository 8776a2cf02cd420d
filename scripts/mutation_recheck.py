"""Re-run mutmut's survivors (and its "suspicious" verdicts) each in a fresh process.

mutmut forks every mutant's test run from a process that has already imported the package, so a
mutant of code that runs at import (a lookup table built by a function, a registry filled by
decorators, an engine the tests build once and cache) never takes effect and survives
whatever the tests check. A fresh ``pytest``
process in ``mutants/`` with ``MUTANT_UNDER_TEST`` set imports the mutated code. Each survivor
runs against the tests mutmut found for its function plus its module's own tests (``HOME``);
the verdicts go to ``mutants/recheck.json``, which ``scripts/mutation_summary.py`` reads.

"Suspicious" is mutmut's word for an exit it has no name for; here that is a test run killed by
SIGABRT after a test failed with NNG sockets open. Re-run alone, such a mutant gets a plain
verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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
    "hypha_sm.core.spec": ["tests/test_spec.py", "tests/test_acceptance.py"],
    "hypha_sm.core.reducer": ["tests/test_acceptance.py", "tests/test_library_equivalence.py"],
    "hypha_sm.core.state": ["tests/test_state.py", "tests/test_engine.py", "tests/test_ledger.py"],
    "hypha_sm.core.policy": ["tests/test_policy.py"],
    "hypha_sm.wire.bounds": ["tests/test_bounds.py", "tests/test_remote_decoders.py"],
    "hypha_sm.wire.envelope": ["tests/test_wire.py"],
    "hypha_sm.wire.identity": ["tests/test_wire.py"],
    "hypha_sm.wire.vectors": ["tests/test_wire.py"],
}
PYTEST = ["-x", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", "-p", "no:randomly"]


RECHECKED = ("survived", "suspicious")


def survivors() -> list[str]:
    """Every mutant mutmut marked survived or suspicious, in file order."""
    names = []
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        names += [n for n, code in codes.items() if status_by_exit_code[code] in RECHECKED]
    return names


def tests_for(name: str, stats: dict[str, list[str]]) -> list[str]:
    """The test files to run against mutant ``name``."""
    function = name.rsplit("__mutmut_", 1)[0]
    module = name.split(".x", 1)[0]
    files = {test.split("::", 1)[0] for test in stats.get(function, [])}
    return sorted(files | set(HOME.get(module, [])))


def pytest_exit_code(tests: tuple[str, ...], mutant: str) -> int:
    """Run ``tests`` in a fresh process in ``mutants/`` with ``mutant`` active ("" for none)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", *PYTEST, *tests],
        cwd=MUTANTS,
        env={**os.environ, "HYPOTHESIS_PROFILE": "ci", "MUTANT_UNDER_TEST": mutant},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    ).returncode


def main() -> int:
    stats = json.loads((MUTANTS / "mutmut-stats.json").read_text())[
        "tests_by_mangled_function_name"
    ]
    done: dict[str, str] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    todo = [n for n in survivors() if n not in done]
    print(f"{len(todo)} survivors to re-run in a fresh process ({len(done)} done before)")
    started = time.perf_counter()
    clean: set[tuple[str, ...]] = set()
    for i, name in enumerate(todo, start=1):
        tests = tuple(tests_for(name, stats))
        if not tests:
            continue
        if tests not in clean:
            # Without a mutant these tests must pass here, or every verdict would be "killed".
            code = pytest_exit_code(tests, "")
            if code != 0:
                print(f"the unmutated code fails {' '.join(tests)} (exit {code}): stopping")
                return 1
            clean.add(tests)
        code = pytest_exit_code(tests, name)
        # 1: a test failed; 2: collection broke (the mutant broke the module at import).
        done[name] = "killed" if code in (1, 2) else "survived"
        RESULTS.write_text(json.dumps(done, indent=1))
        print(f"[{i}/{len(todo)}] {done[name]:8} {name}", flush=True)
    killed = sum(v == "killed" for v in done.values())
    print(
        f"{killed} of {len(done)} killed in a fresh process ({time.perf_counter() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

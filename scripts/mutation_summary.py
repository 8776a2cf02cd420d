"""Summarise mutmut's results (``mutants/**/*.meta``): a table per module, then the survivors.

Reads the files mutmut writes and nothing else, so it works on a finished or a running (partial)
run. Statuses are mutmut's own (``mutmut.stats.status_by_exit_code``); a survivor that
``scripts/mutation_recheck.py`` killed in a fresh process counts as "killed (fresh)"; one listed
in ``docs/mutation-survivors.md`` is shown as "explained" with its reason's tag.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.stats import status_by_exit_code

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutation_recheck import in_stop

ROOT = Path(__file__).resolve().parent.parent
EXPLAINED = ROOT / "docs" / "mutation-survivors.md"


def explained() -> dict[str, str]:
    """Mutant name (or ``prefix*``) -> the tag of its explanation, from the survivors doc."""
    found: dict[str, str] = {}
    if EXPLAINED.exists():
        for match in re.finditer(r"^\| `([^`]+)` \| (\w[\w-]*) \|", EXPLAINED.read_text(), re.M):
            found[match.group(1)] = match.group(2)
    return found


def reason_for(name: str, reasons: dict[str, str]) -> str | None:
    if name in reasons:
        return reasons[name]
    for pattern, tag in reasons.items():
        if pattern.endswith("*") and name.startswith(pattern[:-1]):
            return tag
    return None


def _is_shell(module: str) -> bool:
    """A role's shell (not its pure core); before the roles move, ``hypha_sm/shell/``."""
    if module.startswith("hypha_sm/shell/"):
        return True
    return module.startswith("hypha_sm/roles/") and "/core/" not in module


def main() -> int:
    metas = sorted((ROOT / "mutants").rglob("*.py.meta"))
    if not metas:
        print("no results: run scripts/mutate first")
        return 1
    reasons = explained()
    recheck = ROOT / "mutants" / "recheck.json"
    fresh = json.loads(recheck.read_text()) if recheck.exists() else {}
    table: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[tuple[str, str | None]] = []
    outside = 0
    for meta in metas:
        module = str(meta.relative_to(ROOT / "mutants"))[: -len(".meta")]
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        for name, code in codes.items():
            status = status_by_exit_code[code]
            if _is_shell(module) and not in_stop(name):
                outside += 1
                continue  # shell code outside the stop: generated, never run
            if name in fresh and (status in ("survived", "suspicious") or in_stop(name)):
                status = "killed (fresh)" if fresh[name][0] == "killed" else "survived"
            if status == "survived":
                why = reason_for(name, reasons)
                status = "explained" if why else "survived"
                survivors.append((name, why))
            table[module][status] += 1
    columns = [
        "killed",
        "killed (fresh)",
        "survived",
        "explained",
        "no tests",
        "timeout",
        "not checked",
    ]
    others = sorted({s for c in table.values() for s in c} - set(columns))
    columns += others
    width = max(len(m) for m in table)
    print(f"{'module':{width}} " + " ".join(f"{c:>14}" for c in columns) + f" {'score':>6}")
    totals: Counter[str] = Counter()
    for module in sorted(table):
        counts = table[module]
        totals.update(counts)
        print(
            f"{module:{width}} "
            + " ".join(f"{counts[c]:>14}" for c in columns)
            + f" {score(counts):>6}"
        )
    print(
        f"{'all':{width}} "
        + " ".join(f"{totals[c]:>14}" for c in columns)
        + f" {score(totals):>6}"
    )
    if outside:
        print(f"({outside} mutants of shell code outside the process stop are not run)")
    unexplained = [name for name, why in survivors if why is None]
    print(f"\n{len(unexplained)} survivors without an explanation (docs/mutation-survivors.md):")
    for name in unexplained:
        print(f"  {name}")
    return 0


def score(counts: Counter[str]) -> str:
    """Killed out of everything tested (explained survivors count as not killed)."""
    killed = counts["killed"] + counts["killed (fresh)"] + counts["timeout"]
    tested = killed + counts["survived"] + counts["explained"]
    return f"{100 * killed / tested:.0f}%" if tested else "-"


if __name__ == "__main__":
    sys.exit(main())

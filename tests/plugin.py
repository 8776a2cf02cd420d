"""Pytest plugin: transition coverage at the end of the run; failing stateful examples as logs."""

from __future__ import annotations

import sys
from collections.abc import Generator
from pathlib import Path

import pytest

#: Where a failing Hypothesis stateful example is saved as a replayable event log.
FAILING_LOGS = Path(".hypothesis") / "failing-logs"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    module = sys.modules.get("tests.test_transition_coverage")
    if module is None or module.coverage.cache_info().currsize == 0:
        return
    terminalreporter.section("transition coverage")
    for line in module.coverage_report().splitlines():
        terminalreporter.write_line(line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """When a stateful test fails, save the example Hypothesis reported last (the shrunk one)."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    module = sys.modules.get("tests.test_stateful")
    if module is None or item.module is not module:
        return
    name = f"{item.parent.name}.{item.name}" if item.parent else item.name
    path = module.save_last_example(FAILING_LOGS / f"{name}.jsonl")
    if path is not None:
        report.sections.append(
            ("failing example", f"saved as an event log: {path}\nreplay: hypha-sm replay {path}")
        )

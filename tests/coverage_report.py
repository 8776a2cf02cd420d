"""Pytest plugin: print the transition coverage at the end of the run (when it was measured)."""

from __future__ import annotations

import sys

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    module = sys.modules.get("tests.test_transition_coverage")
    if module is None or module.coverage.cache_info().currsize == 0:
        return
    terminalreporter.section("transition coverage")
    for line in module.coverage_report().splitlines():
        terminalreporter.write_line(line)

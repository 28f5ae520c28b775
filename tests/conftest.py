"""Fixtures for the tests: deterministic seeds, figures closed after each test."""

from __future__ import annotations

from collections.abc import Iterator

import matplotlib.pyplot as plt
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_close_figures() -> Iterator[None]:
    torch.manual_seed(0)
    yield
    plt.close("all")


FAULT_COUNTS: dict[str, dict[str, int]] = {}
"""Outcome counts of the store's fault-injection trials (tests/test_store_faults.py), printed
at the end of the run."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FAULT_COUNTS:
        return
    terminalreporter.section("map store fault injection: outcomes")
    for group, counts in FAULT_COUNTS.items():
        trials = counts.get("trials", 0)
        terminalreporter.write_line(f"{group} ({trials} trials):")
        for outcome, count in sorted(counts.items()):
            if outcome != "trials":
                terminalreporter.write_line(f"  {count:4d}  {outcome}")

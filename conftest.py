"""Root pytest configuration, shared by the tests and the doctests in camkit/."""

from __future__ import annotations

import doctest
import os
import re
from typing import Any

import matplotlib
import pytest
import torch
from hypothesis import HealthCheck, settings

matplotlib.use("Agg")

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=40, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

torch.set_num_threads(min(2, torch.get_num_threads()))


ABSENT = frozenset(os.environ.get("CAMKIT_TESTS_WITHOUT", "").split())
"""Optional packages left out on purpose, by name (``CAMKIT_TESTS_WITHOUT="transformers timm"``):
the oldest-versions run in ``.ci/run`` cannot install the integrations and peers beside the
oldest torch. A test that needs one of them is skipped; without the variable it fails, as a
missing test dependency should."""

_NEEDS = re.compile(r"(?:No module named|could not import) '([\w.]+)'")


def _absent_module(error: BaseException | None) -> str | None:
    """The module of ``ABSENT`` whose import raised ``error`` (also inside a doctest), or None."""
    if isinstance(error, doctest.UnexpectedException):
        error = error.exc_info[1]
    if isinstance(error, ModuleNotFoundError) and error.name:
        return error.name if error.name.split(".")[0] in ABSENT else None
    return None


def _allowed_skip(report: Any) -> bool:
    """Whether a skip is one that ``ABSENT`` allows (a test needing an absent package)."""
    found = _NEEDS.search(str(report.longrepr))
    return found is not None and found.group(1).split(".")[0] in ABSENT


def _as_skipped(report: Any, module: str, path: str, line: int) -> None:
    report.outcome = "skipped"
    report.longrepr = (path, line, f"Skipped: needs {module}, left out: No module named '{module}'")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """With ``CAMKIT_TESTS_WITHOUT``, a test failing to import an absent package is skipped."""
    report = yield
    module = _absent_module(call.excinfo.value if call.excinfo else None)
    if module and report.failed:
        _as_skipped(report, module, str(item.path), item.location[1] or 0)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """With ``CAMKIT_TESTS_WITHOUT``, a test module importing an absent package is skipped."""
    report = yield
    if report.failed and ABSENT:
        found = _NEEDS.search(str(report.longrepr))
        if (
            found
            and found.group(1).split(".")[0] in ABSENT
            and "ModuleNotFoundError" in str(report.longrepr)
        ):
            _as_skipped(report, found.group(1), str(collector.path), 0)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """On CI, a skipped test fails the run: every dependency must be installed there, but
    for the packages ``CAMKIT_TESTS_WITHOUT`` names."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    skipped = [report for report in skipped if not _allowed_skip(report)]
    if os.environ.get("CI") and skipped and exitstatus == 0:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; a skip fails the run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

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

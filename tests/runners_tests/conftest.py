"""Shared fixtures of the runner tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): on a shared
    2-core machine two OpenMP threads can stall badly when other processes run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

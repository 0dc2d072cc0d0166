"""One real serial run of tests/fixtures/e2e.yaml shared by the results and verb tests (read-only: copy to change)."""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from space.schema import load_spec
from sweep.executors import SerialExecutor
from sweep.progress import Reporter, terminal_console
from sweep.run import run_sweep

FIXTURES = Path(__file__).parent.parent / "fixtures"


@dataclass(frozen=True)
class E2ERun:
    out: Path  # the run folder (its store is out/stages)
    log: str  # what the Reporter printed, to a stream that is not a terminal

    def copy(self, target: Path) -> Path:
        """A private copy of the run folder to change."""
        shutil.copytree(self.out, target)
        return target


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory) -> E2ERun:
    out = tmp_path_factory.mktemp("e2e") / "e2e"
    stream = io.StringIO()
    summary = run_sweep(load_spec(FIXTURES / "e2e.yaml"), out, SerialExecutor(), Reporter(terminal_console(file=stream)))
    assert summary.failures == [] and summary.counts == {"finished": 8}
    return E2ERun(out, stream.getvalue())

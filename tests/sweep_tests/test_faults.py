"""Every SWEEP_FAULT kind (raise, out-of-memory, NaN loss; SIGKILL is tests/sweep_tests/test_resume.py) ends as a
failed row with its reason, its dependants skipped with theirs, the rest of the sweep finished; a failed stage
stays failed until `--retry-failed` runs it again."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from rich.console import Console

import sweep.faults as faults
from space.schema import load_spec
from sweep.cli import main
from sweep.executors import SerialExecutor
from sweep.progress import Reporter
from sweep.results import load_results
from sweep.run import run_sweep

SPEC = Path(__file__).parent.parent / "fixtures" / "e2e.yaml"


def run(out: Path, retry_failed: bool = False):
    return run_sweep(load_spec(SPEC), out, SerialExecutor(), Reporter(Console(file=io.StringIO())),
                     retry_failed=retry_failed)


@pytest.fixture(scope="module")
def upstream_done(tmp_path_factory) -> Path:
    """A finished e2e run without its generators and evaluations: only they run in each test."""
    out = tmp_path_factory.mktemp("faults")
    assert run(out).counts == {"finished": 8}
    for kind in ("generator", "evaluation"):
        shutil.rmtree(out / "stages" / kind)
    return out


@pytest.fixture
def armed(monkeypatch):
    def arm(value: str) -> None:
        monkeypatch.setattr(faults, "_counts", {})  # counted per process: start from zero
        monkeypatch.setenv("SWEEP_FAULT", value)
    yield arm


FAULTS = {
    "raise": ("RuntimeError: fault injected by SWEEP_FAULT at generator_loss #1", "error"),
    "oom": ("OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB", "error"),
    "nan": ("FloatingPointError: loss is NaN at step 0", "error"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_gives_a_failed_row_with_its_reason_and_skipped_dependants(fault, upstream_done, tmp_path, armed):
    out = tmp_path / "run"
    shutil.copytree(upstream_done, out)
    armed(f"generator_loss:1:{fault}")  # the first loss of the first generator
    summary = run(out)
    assert summary.counts == {"failed": 1, "skipped": 1, "finished": 2}
    rows = load_results(out).rows
    generators = rows["generator"].set_index("status")
    reason, kind = FAULTS[fault]
    assert generators.loc["failed", "error"].startswith(reason)
    assert generators.loc["failed", "failure_kind"] == kind and reason.split(":")[0] in generators.loc["failed", "traceback"]
    evaluations = rows["evaluation"].set_index("status")
    assert sorted(rows["evaluation"]["status"]) == ["finished", "skipped"]
    failed_key = generators.loc["failed", "key"]
    assert evaluations.loc["skipped", "generator_key"] == failed_key
    assert evaluations.loc["skipped", "error"] == f"input generator {failed_key} did not finish: {generators.loc['failed', 'error']}"


def test_a_fault_in_an_evaluation_fails_only_that_evaluation(upstream_done, tmp_path, armed):
    out = tmp_path / "run"
    shutil.copytree(upstream_done, out)
    armed("evaluation:1:raise")
    summary = run(out)
    assert summary.counts == {"failed": 1, "finished": 3}
    evaluations = load_results(out).rows["evaluation"]
    assert sorted(evaluations["status"]) == ["failed", "finished"]
    assert "fault injected by SWEEP_FAULT at evaluation #1" in evaluations["error"].str.cat()


def test_retry_failed_runs_failed_stages_again(upstream_done, tmp_path, armed, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(upstream_done, out)
    armed("generator_loss:1:raise")
    assert run(out).counts == {"failed": 1, "skipped": 1, "finished": 2}
    monkeypatch.delenv("SWEEP_FAULT")
    kept = run(out)  # without --retry-failed: the failure is a result, kept with its dependant
    assert kept.counts == {} and kept.kept_failed == 2
    assert sorted(load_results(out).rows["generator"]["status"]) == ["failed", "finished"]
    # through the command line, as a user retries
    assert main(["run", str(SPEC), "--out", str(out), "--executor", "serial", "--retry-failed"]) == 0
    rows = load_results(out).rows
    assert set(rows["generator"]["status"]) == {"finished"} and set(rows["evaluation"]["status"]) == {"finished"}
    assert len(rows["evaluation"]) == 2


def test_an_unknown_fault_kind_is_refused(armed):
    armed("evaluation:1:explode")
    with pytest.raises(ValueError, match="SWEEP_FAULT faults are kill, raise, oom, nan, but got 'explode'"):
        faults.fault_point("evaluation")

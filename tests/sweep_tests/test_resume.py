"""Kill a real sweep at named points (SIGKILL, no clean-up), run it again, and get the rows of a run
that was never interrupted: every evaluation once, bit-identical values, no unreadable Parquet."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest
from rich.console import Console

from space.schema import load_spec
from sweep.executors import SerialExecutor
from sweep.progress import Reporter
from sweep.results import load_results
from sweep.run import run_sweep
from sweep.worker import RUN_METADATA_COLUMNS

SPEC = Path(__file__).parent.parent / "fixtures" / "resume.yaml"
PROVENANCE = ("code", "git_commit", "git_dirty", "versions", "python", "command", "spec_hash", "device", "traceback")
KINDS = ("classifier", "reference", "tokenizer", "reconstruction", "generator", "evaluation")


def resume(out: Path):
    return run_sweep(load_spec(SPEC), out, SerialExecutor(), Reporter(Console(file=io.StringIO())))


def killed_run(out: Path, fault: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SWEEP_FAULT": fault}
    return subprocess.run(
        [sys.executable, "-m", "sweep.cli", "run", str(SPEC), "--out", str(out), *extra],
        env=env, capture_output=True, text=True, timeout=600,
    )


def values(out: Path) -> dict[str, pd.DataFrame]:
    rows = load_results(out).rows
    drop = set(RUN_METADATA_COLUMNS) | set(PROVENANCE)
    return {k: rows[k].drop(columns=[c for c in rows[k].columns if c in drop]).sort_values("key").reset_index(drop=True)
            for k in KINDS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, pd.DataFrame]:
    out = tmp_path_factory.mktemp("reference")
    assert resume(out).failures == []
    return values(out)


def assert_same_as_reference(out: Path, reference: dict[str, pd.DataFrame]) -> None:
    for path in out.rglob("*.parquet"):
        pd.read_parquet(path)  # every Parquet file readable
    got = values(out)
    for kind in KINDS:
        pd.testing.assert_frame_equal(got[kind], reference[kind], check_exact=True, obj=kind)
    evaluations = load_results(out).evaluations()
    assert evaluations["evaluation_key"].is_unique and set(evaluations["status"]) == {"finished"}
    assert not list(out.glob("stages/*/.tmp-*")) and not list(out.glob("stages/*/.ckpt-*"))


@pytest.mark.parametrize("fault", ["checkpoint_saved:4", "before_rename:3", "row_written:4", "evaluation:1"])
def test_serial_driver_killed_then_resumed(fault, reference, tmp_path):
    killed = killed_run(tmp_path, fault, "--executor", "serial")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    finished_before = {p.parent.name for p in tmp_path.glob("stages/*/*/row.parquet") if not p.parent.name.startswith(".")}
    summary = resume(tmp_path)
    assert summary.cached == len(finished_before)  # nothing finished is run again
    assert_same_as_reference(tmp_path, reference)
    if fault.startswith("checkpoint_saved"):
        resumed = load_results(tmp_path).rows["generator"]["resumed_from_step"]
        # checkpoints 1-2 are the tokenizer's (10, 20 of 30 steps); the 4th is the first generator's 2nd
        assert sorted(resumed) == [-1, 20]  # the killed generator went on from its 2nd checkpoint (20 steps done)


def test_ray_worker_killed_then_resumed(reference, tmp_path):
    # each Ray worker SIGKILLs itself in its first evaluation; the driver records the loss and goes on
    # (runtime.retries is 0 here: no second attempt in this run, so it ends with failed stages: exit 1)
    first = killed_run(tmp_path, "evaluation:1", "--num-cpus", "2")
    assert first.returncode == 1, first.stderr[-2000:]
    failures = load_results(tmp_path).rows["evaluation"]
    assert "failed" in set(failures["status"]) and set(failures["failure_kind"].dropna()) >= {"lost"}
    resume(tmp_path)  # lost work runs again without --retry-failed
    assert_same_as_reference(tmp_path, reference)


def test_ray_driver_killed_leaves_no_ray_behind(reference, tmp_path):
    killed = killed_run(tmp_path, "stage_started:4", "--num-cpus", "2")
    assert killed.returncode == -signal.SIGKILL
    recorded = pd.read_json(tmp_path / "ray_processes.json")
    assert len(recorded) and any(psutil.pid_exists(pid) for pid in recorded["pid"])
    resume(tmp_path)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in recorded["pid"])
    assert_same_as_reference(tmp_path, reference)

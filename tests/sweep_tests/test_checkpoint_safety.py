"""Reading a checkpoint never runs code from it: a planted checkpoint.pt whose pickle would write a
marker file is refused, moved aside, and its stage trains from step 0, on resume and on --retry-failed."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch
from rich.console import Console

from runners.checkpoint import CHECKPOINT_FILE, Checkpointer
from space.schema import load_spec
from sweep.executors import SerialExecutor
from sweep.plan import make_plan
from sweep.progress import Reporter
from sweep.results import load_results
from sweep.run import run_sweep
from sweep.store import Store

SPEC = Path(__file__).parent.parent / "fixtures" / "resume.yaml"


class Planted:
    """Unpickling this calls exec, which writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def plant(folder: Path, marker: Path, how: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_FILE
    if how == "torch.save":
        torch.save({"step": 10, "model": Planted(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"step": 10, "model": Planted(marker)}))
    return path


def test_the_planted_pickle_really_runs_code_when_unpickled(tmp_path):
    """The threat is real: unrestricted unpickling of the planted file runs its code."""
    marker = tmp_path / "marker"
    path = plant(tmp_path / "ckpt", marker, "torch.save")
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_planted_checkpoint_is_refused_and_moved_aside(tmp_path, how, capfd):
    marker = tmp_path / "marker"
    plant(tmp_path / "ckpt", marker, how)
    checkpointer = Checkpointer(tmp_path / "ckpt", every_steps=10)
    assert checkpointer.restore() is None
    assert not marker.exists()
    assert not (tmp_path / "ckpt" / CHECKPOINT_FILE).exists()
    assert len(list((tmp_path / "ckpt").glob(".damaged-checkpoint-*.pt"))) == 1
    assert "training restarts from step 0" in checkpointer.discarded
    assert "restarts from step 0" in capfd.readouterr().err
    assert checkpointer.restore() is None  # and nothing left to try again


def test_a_saved_state_comes_back_unchanged(tmp_path):
    checkpointer = Checkpointer(tmp_path, every_steps=1)
    state = {"model": {"w": torch.randn(3, 4)}, "losses": [(0, 1.5)], "rng": {"torch": torch.get_rng_state()},
             "ema": None}
    checkpointer.save(7, state)
    restored = checkpointer.restore()
    assert restored["step"] == 7 and restored["losses"] == [(0, 1.5)] and restored["ema"] is None
    assert torch.equal(restored["model"]["w"], state["model"]["w"])
    assert torch.equal(restored["rng"]["torch"], state["rng"]["torch"])


def test_a_truncated_checkpoint_restarts_from_step_0(tmp_path):
    checkpointer = Checkpointer(tmp_path, every_steps=1)
    checkpointer.save(3, {"model": {"w": torch.ones(100)}})
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:200])
    assert checkpointer.restore() is None and "could not be loaded" in checkpointer.discarded


def test_a_sweep_never_runs_a_planted_checkpoint_on_resume_nor_on_retry_failed(tmp_path, capfd):
    spec = load_spec(SPEC)
    out = tmp_path / "run"
    store = Store(out / "stages")
    generators = [stage for stage in make_plan(spec).stages.values() if stage.kind == "generator"]
    marker = tmp_path / "marker"
    for stage in generators:
        plant(store.checkpoint_folder(stage.kind, stage.key), marker, "torch.save")
    failed = generators[0]  # failed with an error in an "earlier run": kept until --retry-failed
    store.record_failure(failed.kind, failed.key, {"kind": failed.kind, "key": failed.key, "status": "failed",
                                                   "failure_kind": "error", "error": "RuntimeError: earlier"})
    reporter = Reporter(Console(file=io.StringIO()))

    first = run_sweep(spec, out, SerialExecutor(), reporter)  # resumes the other generator from its "checkpoint"
    assert not marker.exists()
    assert first.kept_failed == 2  # the failed generator and its evaluation
    second = run_sweep(spec, out, SerialExecutor(), reporter, retry_failed=True)
    assert not marker.exists()
    assert second.failures == [] and second.counts == {"finished": 2}
    rows = load_results(out).rows["generator"]
    assert set(rows["status"]) == {"finished"} and sorted(rows["resumed_from_step"]) == [-1, -1]
    assert rows["checkpoint_discarded"].str.contains("training restarts from step 0").all()  # the row says so
    assert set(load_results(out).rows["tokenizer"]["checkpoint_discarded"]) == {""}  # nothing planted there
    for stage in generators:  # moved aside, so a third run cannot trip over it either
        assert not (store.checkpoint_folder(stage.kind, stage.key) / CHECKPOINT_FILE).exists()
    assert capfd.readouterr().err.count("training restarts from step 0") == 2

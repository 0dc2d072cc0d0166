"""End to end through real stages: serial and Ray executors, rows, resume, and the report."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from space.schema import AXES, Resources, load_spec
from sweep.executors import RayExecutor, SerialExecutor
from sweep.progress import Reporter
from sweep.results import load_results
from sweep.run import run_sweep
from sweep.worker import RUN_METADATA_COLUMNS

FIXTURES = Path(__file__).parent.parent / "fixtures"
PROVENANCE = ("code", "git_commit", "git_dirty", "versions", "python", "command", "spec_hash", "device", "traceback")


def quiet() -> Reporter:
    return Reporter(Console(file=io.StringIO(), width=120))


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial")
    summary = run_sweep(load_spec(FIXTURES / "e2e.yaml"), out, SerialExecutor(), quiet())
    # classifier, reference, tokenizer, reconstruction, 2 generators, 2 evaluations
    assert summary.failures == [] and summary.counts == {"finished": 8}
    return out


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray")
    summary = run_sweep(load_spec(FIXTURES / "e2e.yaml"), out, RayExecutor(out, num_cpus=2), quiet())
    assert summary.failures == [] and summary.counts == {"finished": 8}
    return out


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    drop = [c for c in frame.columns if c in RUN_METADATA_COLUMNS or c in PROVENANCE]
    return frame.drop(columns=drop).sort_values("key").reset_index(drop=True)


def test_serial_run_writes_one_row_per_evaluation_with_every_axis(serial_run):
    results = load_results(serial_run)
    table = results.evaluations()
    assert len(table) == 2 and set(table["status"]) == {"finished"}
    assert set(AXES) <= set(table.columns)
    assert sorted(table["token_each"]) == [1, 2]
    for column in ("fid", "kid", "class_accuracy", "seed", "sampling_seed", "generator_key", "wall_s",
                   "worker_pid", "git_commit", "versions", "spec_hash", "device", "command"):
        assert column in table.columns, column
    assert (table["fid"] > 0).all() and table["class_accuracy"].between(0, 1).all()
    # per-step training losses of every training stage
    assert set(results.losses["kind"]) == {"tokenizer", "generator", "classifier"}
    # artifacts: weights and config per trained stage, samples per evaluation
    store = serial_run / "stages"
    for kind in ("tokenizer", "generator"):
        for folder in (store / kind).iterdir():
            assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert len(list(store.glob("evaluation/*/samples.npz"))) == 2


def test_second_run_finds_everything_finished(serial_run):
    before = {p: p.stat().st_mtime_ns for p in serial_run.glob("stages/*/*/row.parquet")}
    summary = run_sweep(load_spec(FIXTURES / "e2e.yaml"), serial_run, SerialExecutor(), quiet())
    assert summary.cached == summary.planned == 8 and summary.counts == {}
    assert before == {p: p.stat().st_mtime_ns for p in serial_run.glob("stages/*/*/row.parquet")}


def test_ray_and_serial_give_the_same_rows_apart_from_run_metadata(serial_run, ray_run):
    for kind in ("classifier", "reference", "tokenizer", "reconstruction", "generator", "evaluation"):
        a = comparable(load_results(serial_run).rows[kind])
        b = comparable(load_results(ray_run).rows[kind])
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_ray_runs_stages_in_worker_processes_side_by_side(ray_run):
    rows = load_results(ray_run).rows
    everything = pd.concat(rows.values(), ignore_index=True)
    assert (everything["executor"] == "ray").all()
    assert os.getpid() not in set(everything["worker_pid"])
    assert everything["tune_trial_id"].str.len().gt(0).all()
    # the classifier and the tokenizer need nothing: on a 2-CPU Ray they ran at the same time
    first, second = rows["classifier"].iloc[0], rows["tokenizer"].iloc[0]
    start = lambda r: pd.Timestamp(r["started_at"])  # noqa: E731
    end = lambda r: pd.Timestamp(r["ended_at"])  # noqa: E731
    assert start(first) < end(second) and start(second) < end(first)
    assert first["worker_pid"] != second["worker_pid"]


def test_training_losses_reach_tensorboard_through_tune(ray_run):
    """Stages report their losses to Tune, whose TensorBoard logger writes them under <run>/ray."""
    import struct

    from tensorboardX.proto import event_pb2

    generator_key = load_results(ray_run).rows["generator"]["key"].iloc[0]
    (events,) = (ray_run / "ray").glob(f"tune-*/generator-{generator_key}/events.out.tfevents.*")
    data, offset, losses = events.read_bytes(), 0, []
    while offset < len(data):  # TFRecord framing: length (8), its crc (4), the event, its crc (4)
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        offset += 16 + length
        losses += [value.simple_value for value in event.summary.value if value.tag == "ray/tune/loss"]
    logged = load_results(ray_run).losses
    expected = logged[(logged["key"] == generator_key) & logged["loss"].notna()]["loss"]
    assert len(losses) >= len(expected) > 1
    assert losses[: len(expected)] == pytest.approx(list(expected), rel=1e-6)


def test_a_second_sweep_on_a_shared_store_reuses_every_finished_stage(serial_run, tmp_path):
    from sweep.status import stage_status

    spec = load_spec(FIXTURES / "e2e.yaml")
    summary = run_sweep(spec, tmp_path / "second", SerialExecutor(), quiet(), store_root=serial_run / "stages")
    assert summary.cached == summary.planned == 8 and summary.counts == {}
    assert not list((tmp_path / "second" / "stages").glob("*/*/row.parquet"))  # nothing written twice
    # the report and `sweep status` of the second run folder read the shared store
    first, second = load_results(serial_run).evaluations(), load_results(tmp_path / "second").evaluations()
    pd.testing.assert_frame_equal(first, second)
    assert stage_status(tmp_path / "second")["finished"].sum() == 8


def test_report_prints_a_table_per_study(serial_run, tmp_path):
    from reports.build import write_report

    markdown = write_report(load_results(serial_run), tmp_path)
    assert "## vocabulary" in markdown and "| token_each | FID ↓ |" in markdown
    assert (tmp_path / "report.md").read_text() == markdown


def test_a_half_written_artifact_is_not_finished(serial_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(serial_run, copy)
    evaluation = next((copy / "stages" / "evaluation").iterdir())
    (evaluation / "row.parquet").unlink()  # as if killed before the row was written
    dead = subprocess.Popen(["true"])  # a process id that no longer runs: the writer died
    dead.wait()
    os.rename(evaluation, evaluation.with_name(f".tmp-{evaluation.name}-{dead.pid}-abc"))
    summary = run_sweep(load_spec(FIXTURES / "e2e.yaml"), copy, SerialExecutor(), quiet())
    assert summary.counts == {"finished": 1} and summary.cached == 7
    assert not list((copy / "stages" / "evaluation").glob(".tmp-*"))


def test_a_stage_no_node_can_fit_fails_with_the_reason(tmp_path):
    spec = load_spec(FIXTURES / "e2e.yaml")
    spec = spec.model_copy(update={"resources": {k: Resources(cpus=99) for k in ("classifier", "tokenizer", "generator", "evaluation")}})
    summary = run_sweep(spec, tmp_path, RayExecutor(tmp_path, num_cpus=2), quiet())
    assert summary.counts == {"failed": 2, "skipped": 6}  # + reference (needs the classifier), reconstruction
    rows = load_results(tmp_path).rows
    assert "needs 99 CPUs" in rows["tokenizer"]["error"].iloc[0] and "lower resources.tokenizer" in rows["tokenizer"]["error"].iloc[0]
    assert set(rows["evaluation"]["status"]) == {"skipped"}


def test_training_rows_carry_their_throughput(serial_run):
    rows = load_results(serial_run).rows
    generators, tokenizers = rows["generator"], rows["tokenizer"]
    assert (generators["tokens_per_s"] > 0).all() and (generators["achieved_tflops"] > 0).all()
    assert generators["mfu"].isna().all()  # a CPU has no bf16 peak in runners/perf.py: left empty, never guessed
    assert (tokenizers["images_per_s"] > 0).all() and (tokenizers["achieved_tflops"] > 0).all()
    assert tokenizers["mfu"].isna().all()
    classifiers = rows["classifier"]  # a training stage too: the FID feature extractor of small datasets
    assert len(classifiers) == 1 and (classifiers["images_per_s"] > 0).all() and classifiers["mfu"].isna().all()
    assert (classifiers["achieved_tflops"] > 0).all()

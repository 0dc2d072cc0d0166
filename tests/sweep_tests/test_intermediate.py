"""Intermediate evaluations during generator training, and the scoring stages they share with evaluations
(reference, reconstruction), through a real serial sweep of two tiny generators: intermediate_every 0 and 10."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from rich.console import Console

from runners.evaluation.intermediate import INTERMEDIATE_FILE, INTERMEDIATE_LOG
from space.schema import SpecError, parse_spec
from sweep.executors import SerialExecutor
from sweep.plan import Stage, make_plan
from sweep.progress import Reporter
from sweep.results import INTERMEDIATE_FILE as RESULTS_INTERMEDIATE_FILE
from sweep.results import load_results
from sweep.run import run_sweep

SPEC = {
    "schema_version": 1,
    "name": "intermediate",
    "dataset": {"name": "digits", "image_size": 16},
    "seeds": [0],
    "baseline": {
        "code_dim": 8, "tokenizer_steps": 30, "classifier_steps": 40, "generator_steps": 30, "generator_batch": 32,
        "samples_per_class": 2, "cfg_scale": 2.0, "intermediate_samples_per_class": 2,
    },
    "studies": [{"name": "intermediate", "vary": {"intermediate_every": [0, 10]}}],
    "runtime": {"checkpoint_every_steps": 10},
}


def spec_with(**baseline):
    return parse_spec({**SPEC, "baseline": {**SPEC["baseline"], **baseline}})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: on a shared 2-core machine two OpenMP threads per process fight
    out = tmp_path_factory.mktemp("intermediate")
    summary = run_sweep(spec_with(), out, SerialExecutor(), Reporter(Console(file=io.StringIO())))
    assert summary.failures == [] and summary.counts == {"finished": 8}
    yield out
    torch.set_num_threads(threads)


def generator_folder(out: Path, every: int) -> Path:
    trials = load_results(out).trials
    key = trials.loc[trials["intermediate_every"] == every, "generator_key"].iloc[0]
    return out / "stages" / "generator" / key


def test_rows_at_every_nth_step_with_the_agreed_columns(run):
    table = load_results(run).intermediate()
    assert sorted(table["step"]) == [10, 20, 30]  # 30: the last step, scored after training
    for column in ("step", "fid", "kid", "class_accuracy", "num_samples", "intermediate", "protocol_id", "key",
                   "intermediate_every", "modeling", "size", "vocab", "seed"):
        assert column in table.columns, column
    assert table["intermediate"].all() and (table["num_samples"] == 20).all()
    assert (table["intermediate_every"] == 10).all() and table["key"].nunique() == 1
    assert table["key"].iloc[0] == generator_folder(run, 10).name
    assert (table["fid"] > 0).all() and table["class_accuracy"].between(0, 1).all()
    assert table["protocol_id"].nunique() == 1 and (table["protocol_samples"] == 20).all()
    # the generator that trains without them has none, and evaluations never hold intermediate rows
    assert not (generator_folder(run, 0) / INTERMEDIATE_FILE).exists()
    evaluations = load_results(run).evaluations()
    assert len(evaluations) == 2 and "step" not in evaluations.columns
    assert RESULTS_INTERMEDIATE_FILE == INTERMEDIATE_FILE


def test_the_hook_changes_nothing_in_training(run):
    with_hook, without = generator_folder(run, 10), generator_folder(run, 0)
    assert (with_hook / "model.safetensors").read_bytes() == (without / "model.safetensors").read_bytes()
    losses = [pd.read_parquet(folder / "losses.parquet")["loss"].tolist() for folder in (with_hook, without)]
    assert losses[0] == losses[1]


def test_evaluations_and_reconstructions_score_against_the_reference_stage(run):
    rows = load_results(run).rows
    reference = rows["reference"].iloc[0]
    assert len(rows["reference"]) == 1 and reference["reference_images"] == 360 and reference["feature_dim"] == 64
    checksums = set(rows["evaluation"]["protocol_reference_sha256"]) | set(rows["reconstruction"]["protocol_reference_sha256"])
    assert checksums == {reference["reference_checksum"]}
    assert set(rows["evaluation"]["reference_key"]) == {reference["key"]}
    reconstruction = rows["reconstruction"].iloc[0]
    assert reconstruction["tokenizer_key"] == rows["tokenizer"]["key"].iloc[0]
    assert 0 < reconstruction["rfid"] < 100 and reconstruction["reconstruction_images"] == 360
    # the report attaches the trial's rFID (same tokenizer, same feature space) to its table rows
    from reports.tables import ReportData

    table = ReportData.from_results(load_results(run)).evaluations
    assert (table["rfid"] == reconstruction["rfid"]).all()


def test_intermediate_rows_survive_a_kill(run, tmp_path, monkeypatch):
    # Kill the stage inside its 2nd intermediate evaluation (step 20, just after the step-20 checkpoint);
    # the resumed stage scores step 20 from the checkpoint and ends with the rows and weights of a clean run.
    import sweep.stages.common as common
    from sweep.stages import generator_stage

    class Killed(BaseException):
        pass

    folder = generator_folder(run, 10)
    stage = Stage.from_json(json.loads((folder / "stage.json").read_text()))
    inputs = {role: run / "stages" / role / key for role, key in stage.inputs.items()}
    checkpoints, calls = tmp_path / "ckpt", []

    def fault(point: str) -> None:
        calls.append(point)
        if point == "evaluation" and calls.count("evaluation") == 2:
            raise Killed

    monkeypatch.setattr(common, "fault_point", fault)  # iter_sample_blocks' fault point
    (tmp_path / "first").mkdir()
    with pytest.raises(Killed):
        generator_stage(stage, inputs, tmp_path / "first", lambda *_: None, checkpoints=checkpoints)
    logged = [json.loads(line)["step"] for line in (checkpoints / INTERMEDIATE_LOG).read_text().splitlines()]
    assert logged == [10]
    monkeypatch.undo()

    (tmp_path / "second").mkdir()
    metrics = generator_stage(stage, inputs, tmp_path / "second", lambda *_: None, checkpoints=checkpoints)
    assert metrics["resumed_from_step"] == 20
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "second" / INTERMEDIATE_FILE),
                                  pd.read_parquet(folder / INTERMEDIATE_FILE), check_exact=True)
    assert (tmp_path / "second" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_keys_and_inputs():
    generators = lambda spec: {s.settings.get("intermediate_every", 0): s for s in make_plan(spec).of_kind("generator")}  # noqa: E731
    off, on = generators(spec_with())[0], generators(spec_with())[10]
    assert sorted(off.inputs) == ["tokenizer"] and "intermediate_every" not in off.settings
    assert sorted(on.inputs) == ["classifier", "reference", "tokenizer"]
    # sampled with the baseline's knobs (an AR reads these five), whatever the trials' evaluations vary
    assert on.settings["intermediate_sampling"] == {"cfg_scale": 2.0, "cfg_schedule": "constant", "temperature": 1.0,
                                                   "top_k": 0, "top_p": 1.0}
    # its samples per class enter the key only when it is on
    other = generators(spec_with(intermediate_samples_per_class=3))
    assert other[0].key == off.key and other[10].key != on.key


def test_intermediate_every_beyond_training_is_refused():
    with pytest.raises(SpecError, match=r"intermediate_every must be at most generator_steps \(30\).*got intermediate_every=40"):
        spec_with(intermediate_every=40)

"""Every axis value of the ELM design space runs in a tiny CPU sweep and lands as a column value."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from space.schema import load_spec
from sweep.executors import SerialExecutor
from sweep.progress import Reporter
from sweep.results import load_results
from sweep.run import run_sweep

SPEC = Path(__file__).parent.parent / "fixtures" / "design_space.yaml"


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory):
    out = tmp_path_factory.mktemp("design")
    summary = run_sweep(load_spec(SPEC), out, SerialExecutor(), Reporter(Console(file=io.StringIO())))
    assert summary.failures == []
    table = load_results(out).evaluations()
    table.attrs["out"] = out
    return table


def varied_values() -> dict[str, set]:
    raw = yaml.safe_load(SPEC.read_text())
    values: dict[str, set] = {}
    for study in raw["studies"]:
        for axis, listed in study["vary"].items():
            values.setdefault(axis, set()).update(listed)
    return values


def test_every_varied_value_is_a_column_value(evaluations):
    assert set(evaluations["status"]) == {"finished"}
    for axis, values in varied_values().items():
        assert values <= set(evaluations[axis]), axis


def test_metrics_exist_for_every_cell(evaluations):
    assert evaluations["fid"].notna().all() and evaluations["class_accuracy"].between(0, 1).all()
    mlm = evaluations[evaluations["modeling"] == "mlm"]
    assert len(mlm) > 0 and set(mlm["vocab"]) >= {"1-8", "2-4"}


def test_analyses_land_as_rows(evaluations, tmp_path_factory):
    rows = load_results(evaluations.attrs["out"]).rows["analysis"]
    randomness = rows[rows["analysis"] == "token_randomness"]
    text = randomness[randomness["subject"].str.startswith("text")]
    images = randomness[~randomness["subject"].str.startswith("text")]
    assert set(text["order"]) == {"unigram", "bigram"} and len(images) >= 4
    # log|V| per vocabulary: 1-8 -> ln 256, 4-2 -> ln 4, the 512-word BPE -> ln 512 (bigrams: twice that)
    unigram = randomness[randomness["order"] == "unigram"].set_index("subject")["log_v"]
    assert abs(unigram["bae 1-8"].iloc[0] - 5.545177) < 1e-6 and abs(unigram["bae 4-2"] - 1.386294) < 1e-6
    assert abs(unigram["text (BPE 512)"] - 6.238325) < 1e-6
    assert (randomness["kl"] >= 0).all() and (randomness["uniform_floor_kl"] > 0).all()
    assert (text["kl"] > 2 * text["uniform_floor_kl"]).all()  # text is measurably far from uniform
    # (digits are mostly blank background, so their tokens are not near-uniform as ImageNet's are: no claim here)
    attention = rows[rows["analysis"] == "attention_locality"]
    assert set(attention["modeling"]) == {"ar", "mlm"}
    assert attention["local_mass"].between(0, 1).all() and (attention["mean_distance"] >= 0).all()

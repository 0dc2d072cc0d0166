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
    return load_results(out).evaluations()


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

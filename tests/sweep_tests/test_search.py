"""Optuna search of sampling axes and ASHA early stopping, through real runs of tests/fixtures/search.yaml.

The search is killed (SIGKILL of the driver) right after it journaled its second point, before that
point ran; the resumed run must end with exactly `budget` scored points, the best one evaluated
again on the study's protocol with a fresh sampling seed, and nothing finished run twice. The ASHA
study's second learning rate (1e-7) cannot learn: it must end as a `pruned` row that kept its
checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from rich.console import Console

from space.schema import SpecError, load_spec, parse_spec
from sweep.brackets import Bracket
from sweep.executors import SerialExecutor
from sweep.progress import Reporter
from sweep.results import load_results
from sweep.run import run_sweep
from sweep.search import journal_path, read_journal

SPEC = Path(__file__).parent.parent / "fixtures" / "search.yaml"


def run(out: Path, spec=None):
    return run_sweep(spec or load_spec(SPEC), out, SerialExecutor(), Reporter(Console(file=io.StringIO())))


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("search")
    env = {**os.environ, "SWEEP_FAULT": "search_suggested:2"}
    killed = subprocess.run(
        [sys.executable, "-m", "sweep.cli", "run", str(SPEC), "--out", str(out), "--executor", "serial"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    run(out)
    return out, killed


def search_id(out: Path) -> str:
    trials = pd.read_parquet(out / "trials.parquet")
    (found,) = trials["search_key"].dropna().unique()
    return found


def test_killed_search_resumes_to_exactly_its_budget(killed_then_resumed):
    out, killed = killed_then_resumed
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    points, chosen = read_journal(out / "stages", search_id(out))
    assert sorted(points) == [0, 1, 2] and chosen is not None
    lines = journal_path(out / "stages", search_id(out)).read_text().splitlines()
    assert len(lines) == 4  # three points and the chosen evaluation, each journaled once
    trace = load_results(out).search_points()
    assert list(trace["search_index"]) == [0, 1, 2] and (trace["status"] == "finished").all()
    assert trace["cfg_scale"].between(1.0, 4.0).all() and trace["cfg_scale"].is_unique
    assert (trace["samples_per_class"] == 1).all() and trace["sampling_seed"].nunique() == 1
    assert list(trace["best_so_far"]) == list(trace["fid"].cummin())


def test_the_best_point_is_evaluated_again_on_a_fresh_seed(killed_then_resumed):
    out, _ = killed_then_resumed
    results = load_results(out)
    trace = results.search_points()
    evaluations = results.evaluations()
    (row,) = evaluations[evaluations["study"] == "guidance_search"].to_dict("records")
    best = trace.loc[trace["fid"].idxmin()]
    assert row["searched"] and row["status"] == "finished"
    assert row["cfg_scale"] == best["cfg_scale"]  # the chosen value, not the baseline's 1.0
    assert row["samples_per_class"] == 2 and row["sampling_seed"] != best["sampling_seed"]
    assert not evaluations[evaluations["study"] != "guidance_search"]["searched"].any()


def test_a_finished_search_runs_nothing_more_and_a_larger_budget_continues_it(killed_then_resumed, tmp_path):
    out, _ = killed_then_resumed
    again = run(out)
    assert "finished" not in again.counts and "failed" not in again.counts
    assert len(journal_path(out / "stages", search_id(out)).read_text().splitlines()) == 4

    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    raw = json.loads(json.dumps(load_spec(SPEC).model_dump(mode="json")))
    raw["studies"][0]["search"]["budget"] = 4
    more = run(copy, parse_spec(raw))
    points, chosen = read_journal(copy / "stages", search_id(copy))
    assert sorted(points) == [0, 1, 2, 3] and chosen is not None  # the same search, one point more
    assert more.counts.get("finished", 0) in (1, 2)  # the new point, and the chosen one if it changed
    assert points[0]["key"] == read_journal(out / "stages", search_id(out))[0][0]["key"]


def test_asha_prunes_the_learning_rate_that_cannot_learn(killed_then_resumed):
    out, _ = killed_then_resumed
    generators = load_results(out).rows["generator"]
    study = generators[generators["generator_lr"].isin([3e-3, 1e-7]) & generators["key"].isin(
        pd.read_parquet(out / "trials.parquet").query("study == 'lr_early_stopping'")["generator_key"])]
    by_lr = study.set_index("generator_lr")
    assert by_lr.loc[3e-3, "status"] == "finished"
    assert by_lr.loc[1e-7, "status"] == "pruned" and by_lr.loc[1e-7, "pruned_at_step"] == 10
    assert "not among the best 1/2" in by_lr.loc[1e-7, "error"]
    pruned_key = by_lr.loc[1e-7, "key"]
    checkpoint = torch.load(out / "stages" / "generator" / f".ckpt-{pruned_key}" / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 10  # the pruned stage kept its checkpoint
    evaluations = load_results(out).evaluations()
    skipped = evaluations[evaluations["generator_key"] == pruned_key]
    assert (skipped["status"] == "skipped").all() and skipped["error"].str.contains("pruned").all()
    # a new run keeps the decision instead of training it again
    assert "pruned" not in run(out).counts


def test_the_report_counts_the_pruned_cell_apart_from_failures(killed_then_resumed, tmp_path):
    from reports.build import write_report

    out, _ = killed_then_resumed
    markdown = write_report(load_results(out), tmp_path, ("md",), figures=False)
    (line,) = [text for text in markdown.splitlines() if text.startswith("| 1e-07")]
    assert line.endswith("| 0/1 (1 pruned) |") and "failed" not in line
    assert "‡" in markdown  # the searched cell is marked


def test_asha_rule_with_literal_numbers(tmp_path):
    bracket = Bracket(tmp_path, reduction_factor=3)
    assert bracket.decide(10, "a", 2.0).keep  # first at a rung: nothing to compare with
    assert bracket.decide(10, "b", 1.0).keep  # values [2, 1]: 33rd percentile 1.333
    late = bracket.decide(10, "c", 3.0)  # values [2, 1, 3]: 33rd percentile 1.6667
    assert not late.keep and late.cutoff == pytest.approx(1.0 + 2.0 / 3.0) and late.compared == 3
    assert bracket.decide(10, "c", 0.5) == late  # a recorded decision is final (a resumed stage re-reads it)
    assert not Bracket(tmp_path / "nan", 2).decide(10, "a", float("nan")).keep


@pytest.mark.parametrize(
    "search, match",
    [
        ({"axes": {"generator_lr": {"low": 1e-4, "high": 1e-2}}, "budget": 4}, "only sampling axes can be searched"),
        ({"axes": {"cfg_scale": {"low": 4, "high": 1}}, "budget": 4}, "low must be below high"),
        ({"axes": {"top_k": {"low": 1.5, "high": 8}}, "budget": 4}, "integer axis"),
        ({"axes": {"top_p": {"low": 0.5, "high": 1.5}}, "budget": 4}, "search.axes.top_p"),
        ({"axes": {"cfg_scale": {"low": 1, "high": 2}}, "budget": 4, "metric": "psnr"}, "metric must be one of"),
        ({"axes": {"cfg_scal": {"low": 1, "high": 2}}, "budget": 4}, "did you mean 'cfg_scale'"),
    ],
)
def test_bad_search_blocks_name_the_field_and_the_fix(search, match):
    raw = {"schema_version": 1, "name": "bad", "studies": [{"name": "s", "search": search}]}
    with pytest.raises(SpecError, match=match):
        parse_spec(raw)


def test_searching_an_axis_the_generator_does_not_read_is_refused():
    from sweep.validate import check_spec

    raw = {"schema_version": 1, "name": "bad", "baseline": {"modeling": "mlm"},
           "studies": [{"name": "s", "search": {"axes": {"top_k": {"low": 1, "high": 64}}, "budget": 4}}]}
    with pytest.raises(SpecError, match=r"search.axes.top_k: a mlm generator does not read top_k"):
        check_spec(parse_spec(raw))


def test_status_counts_the_pruned_stage_and_shows_the_search(killed_then_resumed, capsys):
    from sweep.cli import main
    from sweep.status import search_status, stage_status

    out, _ = killed_then_resumed
    kinds = stage_status(out).set_index("kind")
    assert kinds.loc["generator", "pruned"] == 1 and kinds.loc["generator", "finished"] == 2
    assert kinds.loc["generator", "failed"] == 0 and kinds.loc["evaluation", "skipped"] == 1
    (search,) = search_status(out).to_dict("records")
    assert (search["journaled"], search["scored"], search["budget"]) == (3, 3, 3) and search["chosen"]
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pruned" in printed and "3 of 3 points scored" in printed


def test_the_search_runs_under_ray_with_two_points_in_flight(killed_then_resumed, tmp_path):
    """The same search through the Ray executor, concurrency 2, on a copy of the trained generator: TPE's
    first draws do not depend on timing, so its first points are those the serial run tried."""
    import shutil

    from sweep.executors import RayExecutor

    out, _ = killed_then_resumed
    copy = tmp_path / "ray"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("evaluation", "searches", "ray", "failed"))
    raw = json.loads(json.dumps(load_spec(SPEC).model_dump(mode="json")))
    raw["studies"] = raw["studies"][:1]
    raw["studies"][0]["search"]["concurrency"] = 2
    summary = run_sweep(parse_spec(raw), copy, RayExecutor(copy, num_cpus=2), Reporter(Console(file=io.StringIO())))
    assert summary.failures == [] and summary.counts == {"finished": 4}  # 3 points and the chosen evaluation
    serial_points, _ = read_journal(out / "stages", search_id(out))
    ray_points, chosen = read_journal(copy / "stages", search_id(copy))
    assert sorted(ray_points) == [0, 1, 2] and chosen is not None
    assert [ray_points[i]["params"] for i in (0, 1)] == [serial_points[i]["params"] for i in (0, 1)]
    evaluations = load_results(copy).rows["evaluation"]
    assert (evaluations["executor"] == "ray").all() and len(evaluations) == 4

"""results.parquet: one typed row per trial of the current spec, frozen columns, readable by pandas, polars, duckdb."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from space.schema import load_spec, parse_spec
from sweep.cli import main
from sweep.executors import SerialExecutor
from sweep.progress import Reporter
from sweep.results import RESULT_COLUMNS, RESULTS_FILE, load_results, results_table, write_results
from sweep.run import run_sweep
from sweep.store import Store

FIXTURES = Path(__file__).parent.parent / "fixtures"
DOCS = Path(__file__).parent.parent.parent / "docs" / "results.md"

FROZEN_COLUMNS = (
    "study", "trial_id", "varied", "searched",
    # every axis of space.schema.Settings, in its order
    "classifier_steps", "classifier_lr", "classifier_batch", "tokenizer", "code_dim", "tokenizer_size",
    "tokenizer_steps", "tokenizer_lr", "tokenizer_batch", "tokenizer_seed", "bernoulli", "restart_dead_codes",
    "gan_weight", "gan_start", "bit_usage_weight", "perceptual_weight", "tokenizer_checkpoint", "modeling", "size", "token_each",
    "scan_order", "encode", "mask_schedule_steps", "generator_steps", "generator_lr", "generator_batch",
    "generator_warmup", "weight_decay", "dropout", "class_dropout", "train_precision", "intermediate_every",
    "intermediate_samples_per_class", "generator_ema", "generator_checkpoint", "cfg_scale", "cfg_schedule", "top_k", "top_p", "temperature", "mlm_steps",
    "mlm_tau", "sampling_precision", "samples_per_class", "feature_extractor", "reference", "vocab",
    "seed", "sampling_seed",
    "status", "failure_kind", "error",
    "fid", "kid", "kid_std", "precision", "recall", "class_accuracy", "inception_score", "inception_score_std",
    "num_samples",
    "rfid", "psnr_db", "bit_usage", "parameter_count", "final_loss", "heldout_loss",
    "classifier_key", "reference_key", "tokenizer_key", "reconstruction_key", "generator_key", "evaluation_key",
    "search_id",
    "protocol_id", "feature_extractor_name", "started_at", "ended_at", "wall_s", "device", "sample_batch", "node", "executor", "code",
    "git_commit", "git_dirty", "versions", "python", "command", "spec_hash",
)


def test_columns_are_frozen_and_documented():
    assert RESULT_COLUMNS == FROZEN_COLUMNS
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", DOCS.read_text(), flags=re.MULTILINE))
    assert set(FROZEN_COLUMNS) <= documented, sorted(set(FROZEN_COLUMNS) - documented)


def test_the_run_writes_one_typed_row_per_trial(e2e_run):
    path = e2e_run.out / RESULTS_FILE
    table = pd.read_parquet(path)
    assert tuple(table.columns) == FROZEN_COLUMNS
    assert sorted(table["token_each"]) == [1, 2] and set(table["status"]) == {"finished"}
    assert (table["fid"] > 0).all() and table["kid"].notna().all() and table["rfid"].notna().all()
    assert str(table["started_at"].dtype) == "datetime64[ns, UTC]"
    schema = pq.read_schema(path)
    assert str(schema.field("ended_at").type) == "timestamp[ns, tz=UTC]"
    assert str(schema.field("seed").type) == "int64" and str(schema.field("fid").type) == "double"
    assert str(schema.field("bernoulli").type) == "bool"
    assert str(schema.field("inception_score").type) == "double"  # typed even when no trial has it
    # one name per metric: no kid_mean anywhere
    assert not any("kid_mean" in column for column in table.columns)


def test_readable_by_polars_and_duckdb(e2e_run):
    path = e2e_run.out / RESULTS_FILE
    polars = pytest.importorskip("polars")
    frame = polars.read_parquet(path)
    assert frame.columns == list(FROZEN_COLUMNS) and frame.height == 2
    assert str(frame.schema["started_at"]).startswith("Datetime")
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"select token_each, status from '{path}' order by token_each").fetchall()
    assert rows == [(1, "finished"), (2, "finished")]


def test_failed_skipped_and_pending_trials_are_rows_with_their_reason(e2e_run, tmp_path):
    out = e2e_run.copy(tmp_path / "run")
    trials = pd.read_parquet(out / "trials.parquet").set_index("token_each")
    store = Store(out / "stages")
    # token_each 1: its evaluation failed; token_each 2: its generator failed, so its evaluation never ran
    failed_eval, failed_gen = trials.loc[1, "evaluation_key"], trials.loc[2, "generator_key"]
    shutil.rmtree(store.folder("evaluation", failed_eval))
    store.record_failure("evaluation", failed_eval, {"key": failed_eval, "kind": "evaluation", "status": "failed",
                                                     "failure_kind": "error", "error": "RuntimeError: out of memory"})
    shutil.rmtree(store.folder("generator", failed_gen))
    shutil.rmtree(store.folder("evaluation", trials.loc[2, "evaluation_key"]))
    store.record_failure("generator", failed_gen, {"key": failed_gen, "kind": "generator", "status": "failed",
                                                   "failure_kind": "error", "error": "ValueError: loss is NaN"})
    table = results_table(load_results(out)).set_index("token_each")
    assert table.loc[1, "status"] == "failed" and table.loc[1, "error"] == "RuntimeError: out of memory"
    assert pd.isna(table.loc[1, "fid"])
    assert table.loc[2, "status"] == "skipped"
    assert table.loc[2, "error"] == f"input generator {failed_gen} did not finish: ValueError: loss is NaN"
    store.failure_file("generator", failed_gen).unlink()
    assert results_table(load_results(out)).set_index("token_each").loc[2, "status"] == "pending"
    # early stopping pruned the generator; the run recorded its evaluation as skipped: the trial is pruned
    reason = "pruned by early stopping at step 10"
    store.record_failure("generator", failed_gen, {"key": failed_gen, "kind": "generator", "status": "pruned",
                                                   "failure_kind": "pruned", "error": reason})
    skipped = trials.loc[2, "evaluation_key"]
    store.record_failure("evaluation", skipped, {"key": skipped, "kind": "evaluation", "status": "skipped",
                                                 "failure_kind": "upstream", "error": f"input generator did not finish: {reason}"})
    pruned = results_table(load_results(out)).set_index("token_each").loc[2]
    assert (pruned["status"], pruned["failure_kind"]) == ("pruned", "pruned")
    assert pruned["error"] == f"input generator {failed_gen} did not finish: {reason}"


def test_trials_of_cells_removed_from_the_spec_are_not_rows(e2e_run, tmp_path):
    out = e2e_run.copy(tmp_path / "run")
    raw = json.loads(json.dumps(load_spec(FIXTURES / "e2e.yaml").model_dump(mode="json")))
    raw["studies"][0]["vary"] = {"token_each": [1]}
    summary = run_sweep(parse_spec(raw), out, SerialExecutor(), Reporter(Console(file=io.StringIO())))
    assert summary.counts == {}  # every stage found finished
    table = pd.read_parquet(out / RESULTS_FILE)
    assert list(table["token_each"]) == [1]
    assert len(list((out / "stages" / "evaluation").iterdir())) == 2  # the removed cell's artifact is still stored


@pytest.mark.parametrize("fmt", ["csv", "json", "md"])
def test_sweep_results_prints_every_format(e2e_run, fmt, capsys):
    assert main(["results", str(e2e_run.out), "--format", fmt, "--study", "vocabulary"]) == 0
    text = capsys.readouterr().out
    if fmt == "csv":
        frame = pd.read_csv(io.StringIO(text))
        assert list(frame.columns) == list(FROZEN_COLUMNS) and len(frame) == 2
    elif fmt == "json":
        records = json.loads(text)
        assert len(records) == 2 and records[0]["started_at"].endswith("Z")
    else:
        lines = text.splitlines()
        assert lines[0].startswith("| study | token_each | seed | status | fid | kid |") and len(lines) == 4


def test_sweep_results_writes_parquet_and_refuses_bad_input(e2e_run, tmp_path, capsys):
    target = tmp_path / "all.parquet"
    assert main(["results", str(e2e_run.out), "--out", str(target)]) == 0
    assert tuple(pd.read_parquet(target).columns) == FROZEN_COLUMNS
    assert main(["results", str(e2e_run.out), "--study", "nope"]) == 2
    assert "--study must name a study of the run (vocabulary), but got 'nope'" in capsys.readouterr().err
    assert main(["results", str(e2e_run.out), "--format", "parquet"]) == 2
    assert main(["results", str(tmp_path)]) == 2
    assert "RUN must be a run folder made by `sweep run`" in capsys.readouterr().err


def test_report_rewrites_results_and_names_the_code(e2e_run, tmp_path, capsys):
    out = e2e_run.copy(tmp_path / "run")
    (out / RESULTS_FILE).unlink()
    assert main(["report", str(out), "--format", "md"]) == 0
    assert len(pd.read_parquet(out / RESULTS_FILE)) == 2
    code = pd.read_parquet(out / RESULTS_FILE)["code"].iloc[0]
    assert code.startswith("git ") and f"- Code: {code}." in (out / "report.md").read_text()
    assert f"wrote {out / RESULTS_FILE}, {out / 'report.md'}" in capsys.readouterr().out
    (out / RESULTS_FILE).unlink()
    write_results(out)
    assert (out / RESULTS_FILE).is_file()

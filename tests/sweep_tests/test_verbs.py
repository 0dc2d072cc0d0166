"""sweep ls, show, gc and export on a real run; help text on every positional argument."""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path

import pandas as pd
from rich.console import Console

from space.schema import load_spec, parse_spec
from sweep.cli import build_parser, main
from sweep.executors import SerialExecutor
from sweep.lock import RunLock
from sweep.progress import Reporter
from sweep.run import run_sweep
from sweep.store import Store

FIXTURES = Path(__file__).parent.parent / "fixtures"


def e2e_with(token_each: list[int]):
    raw = json.loads(json.dumps(load_spec(FIXTURES / "e2e.yaml").model_dump(mode="json")))
    raw["studies"][0]["vary"] = {"token_each": token_each}
    return parse_spec(raw)


def quietly(spec, out: Path, store: Path | None = None):
    return run_sweep(spec, out, SerialExecutor(), Reporter(Console(file=io.StringIO())), store_root=store)


def keys(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "trials.parquet").set_index("token_each")


def test_every_positional_argument_has_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"validate", "plan", "run", "status", "report", "results", "ls", "show", "gc", "export"} <= set(commands.choices)
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if not action.option_strings:  # a positional argument
                assert action.help and action.help != argparse.SUPPRESS, f"sweep {name} {action.dest} has no help"


def test_ls_lists_runs_with_their_spec_and_trial_counts(e2e_run, capsys):
    assert main(["ls", str(e2e_run.out.parent)]) == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if str(e2e_run.out) in line)  # the full path, not cut
    cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
    # run, spec, trials, finished, failed, skipped, pruned, running, pending, last activity, store
    assert cells[1:9] == ["e2e", "2", "2", "0", "0", "0", "0", "0"] and cells[-1] == "own"
    assert "(running now)" not in line
    with RunLock(e2e_run.out):  # as a live `sweep run` holds it
        assert main(["ls", str(e2e_run.out)]) == 0
    assert "UTC (running now)" in capsys.readouterr().out
    assert main(["ls", str(e2e_run.out.parent / "nope")]) == 2


def test_show_prints_settings_row_files_and_log_tail(e2e_run, capsys):
    generator = keys(e2e_run.out).loc[2, "generator_key"]
    assert main(["show", str(e2e_run.out), generator[:6]]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == f"generator {generator}: finished"
    assert "  token_each = 2" in text and "  generator_steps = 60" in text  # settings
    assert "  parameter_count = " in text and "  final_loss = " in text  # row
    size = (e2e_run.out / "stages" / "generator" / generator / "model.safetensors").stat().st_size
    assert f"{size / 1024:.1f} KiB  model.safetensors" in text
    assert "log tail (last 6 lines)" in text and "  step=59 loss=" in text


def test_show_gives_the_failure_reason_and_refuses_unknown_keys(e2e_run, tmp_path, capsys):
    out = e2e_run.copy(tmp_path / "run")
    evaluation = keys(out).loc[1, "evaluation_key"]
    store = Store(out / "stages")
    shutil.rmtree(store.folder("evaluation", evaluation))
    store.record_failure("evaluation", evaluation, {
        "key": evaluation, "kind": "evaluation", "status": "failed", "failure_kind": "error",
        "error": "RuntimeError: boom", "traceback": "Traceback (most recent call last):\n  File x\nRuntimeError: boom"})
    assert main(["show", str(out), evaluation]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == f"evaluation {evaluation}: failed"
    assert "failure (error): RuntimeError: boom" in text and "  RuntimeError: boom" in text.split("log tail")[1]
    assert main(["show", str(out), "zzzz"]) == 2
    assert "KEY must be a stage key of the run (or a unique prefix of one), but got 'zzzz'" in capsys.readouterr().err
    plan = json.loads((out / "plan.json").read_text())
    firsts = [stage["key"][0] for stage in plan["stages"]]
    shared = next((c for c in firsts if firsts.count(c) > 1), None)
    if shared is not None:  # keys are fixed by content: this holds for e2e.yaml
        assert main(["show", str(out), shared]) == 2
        assert f"KEY {shared!r} starts" in capsys.readouterr().err


def test_export_copies_weights_and_config_or_samples(e2e_run, tmp_path, capsys):
    trials = keys(e2e_run.out)
    store = Store(e2e_run.out / "stages")
    generator, evaluation = trials.loc[1, "generator_key"], trials.loc[1, "evaluation_key"]
    assert main(["export", str(e2e_run.out), generator, "--to", str(tmp_path / "gen")]) == 0
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["config.json", "model.safetensors", "stage.json"]
    assert (tmp_path / "gen" / "model.safetensors").read_bytes() == (store.folder("generator", generator) / "model.safetensors").read_bytes()
    assert main(["export", str(e2e_run.out), evaluation, "--to", str(tmp_path / "eval")]) == 0
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["samples.npz", "stage.json"]
    capsys.readouterr()
    assert main(["export", str(e2e_run.out), generator, "--to", str(tmp_path / "gen")]) == 2  # never overwrites
    assert "must not hold the exported files already" in capsys.readouterr().err
    assert main(["export", str(e2e_run.out), trials.loc[1, "reference_key"], "--to", str(tmp_path / "ref")]) == 2
    assert "is a reference stage" in capsys.readouterr().err and not (tmp_path / "ref").exists()


def test_gc_keeps_what_a_run_sharing_the_store_uses(e2e_run, tmp_path, capsys):
    run_a = e2e_run.copy(tmp_path / "a")
    store = Store(run_a / "stages")
    both = keys(run_a)
    only_two = {kind: both.loc[2, f"{kind}_key"] for kind in ("generator", "evaluation")}
    # run B (elsewhere, found through the store's registry) shares A's store and uses token_each 2 only
    run_b = tmp_path / "elsewhere" / "b"
    assert quietly(e2e_with([2]), run_b, store=run_a / "stages").counts == {}
    assert quietly(e2e_with([1]), run_a).counts == {}  # A's spec drops token_each 2
    damaged = store.root / "generator" / f".damaged-{both.loc[1, 'generator_key']}-20260101-000000-abcd"
    damaged.mkdir()
    (damaged / "model.safetensors").write_bytes(b"x" * 1000)
    stale_checkpoint = store.checkpoint_folder("generator", both.loc[1, "generator_key"])  # of a finished stage
    stale_checkpoint.mkdir()
    (stale_checkpoint / "checkpoint.pt").write_bytes(b"y" * 500)

    assert main(["gc", str(run_a)]) == 0
    text = capsys.readouterr().out
    assert str(damaged) in text and str(stale_checkpoint) in text
    assert not any(key in text for key in only_two.values())  # B's spec uses them
    assert "would remove 2 items, 1.5 KiB (1500 bytes); run again with --yes to delete them" in text
    assert damaged.exists() and stale_checkpoint.exists()  # a dry run

    shutil.rmtree(run_b)  # now nothing uses token_each 2
    assert main(["gc", str(run_a)]) == 0
    text = capsys.readouterr().out
    for kind, key in only_two.items():
        assert f"{store.folder(kind, key)}  (artifact no current spec uses)" in text
    sizes = sum(p.stat().st_size for kind, key in only_two.items() for p in store.folder(kind, key).rglob("*") if p.is_file())
    assert "would remove 4 items" in text and f"({sizes + 1500} bytes)" in text
    assert main(["gc", str(run_a), "--yes"]) == 0
    assert not damaged.exists() and not stale_checkpoint.exists()
    assert not any(store.folder(kind, key).exists() for kind, key in only_two.items())
    for kind in ("classifier", "reference", "tokenizer", "reconstruction", "generator", "evaluation"):
        assert store.is_finished(kind, both.loc[1, f"{kind}_key"])  # everything A's spec uses stays
    assert "nothing to remove" in (capsys.readouterr(), main(["gc", str(run_a)]), capsys.readouterr().out)[2]

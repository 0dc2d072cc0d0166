"""`sweep report` of a run whose stages live in a shared `--store` (not <run>/stages) draws its sample grids."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from space.schema import load_spec
from sweep.cli import main
from sweep.executors import SerialExecutor
from sweep.progress import Reporter
from sweep.run import run_sweep

SPEC = Path(__file__).parent.parent / "fixtures" / "e2e.yaml"


def test_the_report_of_a_store_run_includes_its_sample_grids(tmp_path, capsys):
    run_dir, store = tmp_path / "run", tmp_path / "shared-store"
    summary = run_sweep(load_spec(SPEC), run_dir, SerialExecutor(), Reporter(Console(file=io.StringIO())),
                        store_root=store)
    assert summary.counts == {"finished": 8}
    assert not list((run_dir / "stages").glob("evaluation/*/samples.npz"))  # the samples are in the store only
    keys = sorted(p.name for p in (store / "evaluation").iterdir() if not p.name.startswith("."))
    assert main(["report", str(run_dir), "--format", "md"]) == 0
    grids = sorted(p.name for p in (run_dir / "grids").glob("*.png"))
    assert grids == ["compare-vocabulary.png", *(f"trial-{key}.png" for key in keys)]
    markdown = (run_dir / "report.md").read_text()
    assert "grids/compare-vocabulary.png" in markdown and all(f"grids/trial-{key}.png" in markdown for key in keys)

"""Reading a run folder back as flat tables (pandas); no torch, no ray."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from space.schema import STAGE_KINDS, Spec, parse_spec
from sweep.run import SPEC_COPY, STORE_DIR, TRIALS_FILE
from sweep.store import Store


@dataclass
class Results:
    spec: Spec
    trials: pd.DataFrame  # one row per trial of the current spec
    rows: dict[str, pd.DataFrame]  # stage kind -> stage rows
    losses: pd.DataFrame  # per-step training losses of every training stage

    def evaluations(self) -> pd.DataFrame:
        """One row per trial: study, axes, seed and its evaluation row's metrics and status."""
        rows = self.rows.get("evaluation", pd.DataFrame())
        if rows.empty:
            table = self.trials.copy()
            table["status"] = "pending"
            return table
        shared = [c for c in rows.columns if c in self.trials.columns and c != "evaluation_key"]
        metrics = rows.drop(columns=shared).rename(columns={"key": "evaluation_key"})
        table = self.trials.merge(metrics, on="evaluation_key", how="left")
        table["status"] = table["status"].fillna("pending")
        return table


def load_results(run_dir: str | Path) -> Results:
    run_dir = Path(run_dir)
    spec_path = run_dir / SPEC_COPY
    if not spec_path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {SPEC_COPY}: is it a run folder made by `sweep run`?")
    spec = parse_spec(yaml.safe_load(spec_path.read_text()), str(spec_path))
    store = Store(run_dir / STORE_DIR)
    kinds = STAGE_KINDS
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    losses = pd.concat([store.losses(kind) for kind in kinds], ignore_index=True)
    return Results(spec=spec, trials=trials, rows={kind: store.rows(kind) for kind in kinds}, losses=losses)


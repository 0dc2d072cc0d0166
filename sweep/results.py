"""Reading a run folder back as flat tables (pandas); no torch, no ray."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from space.schema import STAGE_KINDS, Spec, parse_spec
from sweep.run import SPEC_COPY, TRIALS_FILE, run_store
from sweep.store import Store

INTERMEDIATE_FILE = "intermediate.parquet"  # in generator artifacts (runners/evaluation/intermediate.py writes it)


@dataclass
class Results:
    spec: Spec
    trials: pd.DataFrame  # one row per trial of the current spec
    rows: dict[str, pd.DataFrame]  # stage kind -> stage rows
    losses: pd.DataFrame  # per-step training losses of every training stage

    store_root: Path | None = None  # where search journals live

    def evaluations(self) -> pd.DataFrame:
        """One row per trial: study, axes, seed and its evaluation row's metrics and status.

        A searched trial's evaluation is the one its search chose (column `searched` True); its searched
        axes hold the chosen values. Search points are not trials' results: see `search_points()`.
        """
        trials = self.trials.copy()
        trials["searched"] = False
        searched_axes: dict[str, list[str]] = {}
        if "search_key" in trials.columns:
            studies = {study.name: study for study in self.spec.studies}
            mask = trials["search_key"].notna() & (trials["search_key"] != "")
            chosen = {sid: self._journal(sid)[1] for sid in trials.loc[mask, "search_key"].unique()}
            keys = trials.loc[mask, "search_key"].map(lambda sid: (chosen[sid] or {}).get("key"))
            if "evaluation_key" not in trials.columns:
                trials["evaluation_key"] = None
            trials.loc[mask, "evaluation_key"] = keys
            trials.loc[mask, "searched"] = True
            for study in trials.loc[mask, "study"].unique():
                searched_axes[study] = list(studies[study].search.axes) if studies[study].search else []
        rows = self.rows.get("evaluation", pd.DataFrame())
        if rows.empty:
            trials["status"] = "pending"
            return trials
        shared = [c for c in rows.columns if c in trials.columns and c != "evaluation_key"]
        metrics = rows.drop(columns=shared).rename(columns={"key": "evaluation_key"})
        table = trials.merge(metrics, on="evaluation_key", how="left")
        table["status"] = table["status"].fillna("pending")
        by_key = rows.drop_duplicates("key").set_index("key")
        for study, axes in searched_axes.items():
            mask = (table["study"] == study) & table["evaluation_key"].isin(by_key.index)
            for axis in axes:  # the chosen values, not the baseline's
                table.loc[mask, axis] = table.loc[mask, "evaluation_key"].map(by_key[axis]).to_numpy()
        return table

    def search_points(self) -> pd.DataFrame:
        """Every scored point of every search of this spec: study, search_id, search_index, the point's
        evaluation row (its settings and metrics) and `best_so_far` of the search's metric."""
        if "search_key" not in self.trials.columns:
            return pd.DataFrame()
        rows = self.rows.get("evaluation", pd.DataFrame())
        by_key = rows.drop_duplicates("key").set_index("key") if not rows.empty else pd.DataFrame()
        studies = {study.name: study for study in self.spec.studies}
        records = []
        searches = self.trials.dropna(subset=["search_key"]).drop_duplicates("search_key")
        for _, trial in searches.iterrows():
            if not trial["search_key"]:
                continue
            config = studies[trial["study"]].search
            points, _ = self._journal(trial["search_key"])
            best = None
            for index in sorted(points):
                key = points[index]["key"]
                row = by_key.loc[key].to_dict() if key in by_key.index else {"status": "pending"}
                value = row.get(config.metric) if row.get("status") == "finished" else None
                if value is not None and value == value:
                    better = best is None or (value < best if config.mode == "min" else value > best)
                    best = value if better else best
                records.append({**row, "study": trial["study"], "generator_key": trial["generator_key"],
                                "search_id": trial["search_key"], "search_index": index, "search_point": True,
                                "evaluation_key": key, "search_metric": config.metric, "best_so_far": best})
        return pd.DataFrame(records)

    def intermediate(self) -> pd.DataFrame:
        """Evaluations of generators during training (`intermediate_every` > 0), one row per generator and step:
        the generator row's columns (its axes; `key` is the generator key) + step, fid, kid, class_accuracy,
        num_samples, protocol_* / protocol_id and intermediate (True). Never part of `evaluations()`."""
        folder = Path(self.store_root) / "generator" if self.store_root is not None else None
        paths = sorted(folder.glob(f"*/{INTERMEDIATE_FILE}")) if folder is not None else []
        if "generator_key" in self.trials.columns:  # generators of this spec only
            paths = [path for path in paths if path.parent.name in set(self.trials["generator_key"])]
        if not paths:
            return pd.DataFrame()
        table = pd.concat([pd.read_parquet(path).assign(key=path.parent.name) for path in paths], ignore_index=True)
        generators = self.rows.get("generator", pd.DataFrame())
        if not generators.empty:
            columns = ["key", *(c for c in generators.columns if c not in table.columns)]
            table = generators.drop_duplicates("key")[columns].merge(table, on="key", how="right")  # axes first
        return table

    def _journal(self, search_id: str) -> tuple[dict, dict | None]:
        from sweep.search import read_journal

        return read_journal(self.store_root, search_id) if self.store_root else ({}, None)


def load_results(run_dir: str | Path) -> Results:
    run_dir = Path(run_dir)
    spec_path = run_dir / SPEC_COPY
    if not spec_path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {SPEC_COPY}: is it a run folder made by `sweep run`?")
    spec = parse_spec(yaml.safe_load(spec_path.read_text()), str(spec_path))
    store = Store(run_store(run_dir))  # <run>/stages, or the shared store given with `sweep run --store`
    kinds = STAGE_KINDS
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    losses = pd.concat([store.losses(kind) for kind in kinds], ignore_index=True)
    return Results(spec=spec, trials=trials, rows={kind: store.rows(kind) for kind in kinds}, losses=losses,
                   store_root=store.root)


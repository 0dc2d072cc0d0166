"""Reading a run folder back as flat tables (pandas); no torch, no ray.

`results.parquet` (RESULTS_FILE) is the one table a researcher reads: one row per trial of the current
spec, columns RESULT_COLUMNS (documented one by one in docs/results.md), written by `write_results` at
the end of every `sweep run` and by `sweep report`.
"""

from __future__ import annotations

import os
import secrets
import typing
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from space.schema import AXES, STAGE_KINDS, Settings, Spec, parse_spec
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


RESULTS_FILE = "results.parquet"

# The columns of results.parquet, in order; docs/results.md describes each, tests/sweep_tests/test_results.py
# freezes them. Every axis of space.schema.Settings sits between the trial's identity and its seeds.
IDENTITY_COLUMNS: tuple[str, ...] = ("study", "trial_id", "varied", "searched")
SEED_COLUMNS: tuple[str, ...] = ("seed", "sampling_seed")
STATUS_COLUMNS: tuple[str, ...] = ("status", "failure_kind", "error")
METRIC_COLUMNS: tuple[str, ...] = (
    "fid", "kid", "kid_std", "precision", "recall", "class_accuracy", "inception_score", "inception_score_std",
    "num_samples",
)
# Numbers of the trial's upstream stages: column -> the stage kind whose row holds it.
UPSTREAM_COLUMNS: dict[str, str] = {
    "rfid": "reconstruction", "psnr_db": "tokenizer", "bit_usage": "tokenizer",
    "parameter_count": "generator", "final_loss": "generator", "heldout_loss": "generator",
}
KEY_COLUMNS: tuple[str, ...] = (
    "classifier_key", "reference_key", "tokenizer_key", "reconstruction_key", "generator_key", "evaluation_key",
    "search_id",
)
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "protocol_id", "feature_extractor_name", "started_at", "ended_at", "wall_s", "device", "sample_batch", "node",
    "executor", "code",
    "git_commit", "git_dirty", "versions", "python", "command", "spec_hash",
)
RESULT_COLUMNS: tuple[str, ...] = (
    *IDENTITY_COLUMNS, *AXES, *SEED_COLUMNS, *STATUS_COLUMNS, *METRIC_COLUMNS, *UPSTREAM_COLUMNS, *KEY_COLUMNS,
    *PROVENANCE_COLUMNS,
)
TRIAL_STATUSES: tuple[str, ...] = ("finished", "failed", "skipped", "pruned", "running", "pending")
"""Values of `status`: the trial's evaluation stage finished, failed, was skipped (an input did not finish),
its generator was pruned by early stopping, it is running now, or it has not run (yet)."""

_TIMESTAMP = pa.timestamp("ns", tz="UTC")
_INTEGERS = {"seed", "sampling_seed", "num_samples", "parameter_count", "sample_batch"}
_BOOLEANS = {"searched", "git_dirty"}
_TIMESTAMPS = {"started_at", "ended_at"}


def _axis_type(name: str) -> pa.DataType:
    annotation = Settings.model_fields[name].annotation
    if annotation is bool:
        return pa.bool_()
    if annotation is int:
        return pa.int64()
    if annotation is float:
        return pa.float64()
    assert annotation is str or typing.get_origin(annotation) is typing.Literal, (name, annotation)
    return pa.string()


def results_schema() -> pa.Schema:
    """The Arrow schema of results.parquet: typed columns (timestamps in UTC), the same whatever the run holds."""
    fields = []
    for name in RESULT_COLUMNS:
        if name in AXES:
            kind = _axis_type(name)
        elif name in _INTEGERS:
            kind = pa.int64()
        elif name in _BOOLEANS:
            kind = pa.bool_()
        elif name in _TIMESTAMPS:
            kind = _TIMESTAMP
        elif name in METRIC_COLUMNS or name in UPSTREAM_COLUMNS or name == "wall_s":
            kind = pa.float64()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind))
    return pa.schema(fields)


def results_table(results: Results) -> pd.DataFrame:
    """One row per trial of the current spec, columns RESULT_COLUMNS, typed as `results_schema()`.

    Failed, skipped, pruned, running and pending trials are rows too, with their status and the reason in
    `error`; trials of cells removed from the spec are not (they are not in the run's trials.parquet).
    """
    table = results.evaluations()
    if "search_key" in table.columns:
        table["search_id"] = table["search_key"].where(table["search_key"].astype(bool), None)
    store = Store(results.store_root) if results.store_root is not None else None
    for column, kind in UPSTREAM_COLUMNS.items():  # numbers of the trial's tokenizer, reconstruction, generator
        rows = results.rows.get(kind, pd.DataFrame())
        key = f"{kind}_key"
        if rows.empty or column not in rows.columns or key not in table.columns:
            continue
        finished = rows[rows["status"] == "finished"].drop_duplicates("key").set_index("key")[column]
        table[column] = table[key].map(finished)
    if store is not None:
        table = _explain_unfinished(table, store)
    for column in RESULT_COLUMNS:
        if column not in table.columns:
            table[column] = None
    table = table[list(RESULT_COLUMNS)].copy()
    for column in _TIMESTAMPS:
        table[column] = pd.to_datetime(table[column], utc=True, format="ISO8601").astype("datetime64[ns, UTC]")
    return pa.Table.from_pandas(table, schema=results_schema(), preserve_index=False).to_pandas(
        types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get  # nullable: pending trials
    )


def _explain_unfinished(table: pd.DataFrame, store: Store) -> pd.DataFrame:
    """A trial without a finished evaluation: running, pending, blocked by an input that did not finish, or
    pruned (its generator was stopped early: its evaluation's row says `skipped`, the trial is `pruned`)."""
    table = table.copy()
    for column in ("failure_kind", "error"):
        if column not in table.columns:
            table[column] = None
    for index in table.index[table["status"].isin(["pending", "skipped"])]:
        key = table.at[index, "evaluation_key"]
        if table.at[index, "status"] == "pending" and isinstance(key, str) and key and store.running("evaluation", key):
            table.at[index, "status"] = "running"
            continue
        for kind in ("generator", "tokenizer", "reference", "classifier"):  # nearest input first
            upstream = table.at[index, f"{kind}_key"] if f"{kind}_key" in table.columns else None
            if not isinstance(upstream, str) or not upstream or store.is_finished(kind, upstream):
                continue
            failure = store.failure(kind, upstream)
            if failure is None:
                continue
            pruned = failure.get("status") == "pruned"
            if not pruned and table.at[index, "status"] == "skipped":
                break  # the evaluation's own skipped row already names the input and its reason
            table.at[index, "status"] = "pruned" if pruned else "skipped"
            table.at[index, "failure_kind"] = "pruned" if pruned else "upstream"
            table.at[index, "error"] = f"input {kind} {upstream} did not finish: {failure.get('error', '')}"
            break
    return table


def write_results(run_dir: str | Path) -> Path:
    """(Re)write `<run>/results.parquet` from the run's trials and the store; atomic (temporary file, rename)."""
    run_dir = Path(run_dir)
    return write_results_file(results_table(load_results(run_dir)), run_dir / RESULTS_FILE)


def write_results_file(table: pd.DataFrame, path: str | Path) -> Path:
    """`table` (rows of `results_table`) as Parquet with `results_schema()`, under a temporary name, then renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}.tmp")
    pq.write_table(pa.Table.from_pandas(table, schema=results_schema(), preserve_index=False), tmp)
    os.replace(tmp, path)
    return path


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


"""Ablation tables: pure functions from result rows (pandas) to tables. No torch, no rendering.

The report's input is a `ReportData`: the spec's studies and baseline as plain dicts plus the flat
result tables. `ReportData.from_results` builds it from `sweep.results.Results`; tests build it by hand,
with axes and metrics the schema may not know yet. Everything here works on whichever axis and metric
columns exist: a metric without a column is no table column, an axis nobody varies is no figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

Interval = Literal["std", "t95"]
INTERVALS: tuple[str, ...] = ("std", "t95")


@dataclass(frozen=True)
class Metric:
    """A metric column of the evaluation rows (or of the tokenizer rows, `stage="tokenizer"`)."""

    column: str
    label: str
    higher_is_better: bool
    digits: int
    aliases: tuple[str, ...] = ()  # other column names the same number may arrive under
    stage: str = "evaluation"  # tokenizer metrics are shown only where a study varies a tokenizer axis

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


# Every metric a table may show, in column order; a metric shows only where its column holds a value.
METRICS: tuple[Metric, ...] = (
    Metric("fid", "FID", higher_is_better=False, digits=2),
    Metric("kid_mean", "KID", higher_is_better=False, digits=4),
    Metric("inception_score", "IS", higher_is_better=True, digits=1, aliases=("inception_score_mean", "is_mean", "isc_mean")),
    Metric("precision", "Prec.", higher_is_better=True, digits=3),
    Metric("recall", "Rec.", higher_is_better=True, digits=3),
    Metric("class_accuracy", "class acc.", higher_is_better=True, digits=3),
    Metric("rfid", "rFID", higher_is_better=False, digits=2, aliases=("reconstruction_fid",), stage="tokenizer"),
    Metric("psnr_db", "PSNR (dB)", higher_is_better=True, digits=2, stage="tokenizer"),
)
METRIC_BY_COLUMN: dict[str, Metric] = {m.column: m for m in METRICS}

# Columns that mark an evaluation of an intermediate checkpoint (not a table row) and its training step.
INTERMEDIATE_COLUMN = "intermediate"
STEP_COLUMNS: tuple[str, ...] = ("step", "checkpoint_step", "generator_step", "train_step")


@dataclass(frozen=True)
class StudyInfo:
    """A study as the report sees it: a grid over `vary` around the baseline, with `fixed` held."""

    name: str
    vary: dict[str, list[Any]]
    description: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def varied(self) -> list[str]:
        return list(self.vary)


@dataclass
class ReportData:
    """Everything a report is made from: names, studies, baseline and flat result tables."""

    name: str
    studies: list[StudyInfo]
    baseline: dict[str, Any]
    evaluations: pd.DataFrame  # one row per trial (Results.evaluations()), intermediate rows removed
    rows: dict[str, pd.DataFrame] = field(default_factory=dict)  # stage kind -> rows (incl. "analysis")
    losses: pd.DataFrame = field(default_factory=pd.DataFrame)  # key, kind, step, loss, ...
    description: str = ""
    dataset: str = ""  # e.g. "digits 16x16, 10 classes"
    run_dir: str | None = None  # where stages/<kind>/<key>/samples.npz live (None: no sample grids)
    axis_stage: dict[str, str] = field(default_factory=dict)  # axis -> stage kind it determines (+ the schema's)

    def __post_init__(self) -> None:
        from space.schema import AXES_OF_STAGE

        known = {axis: kind for kind, axes in AXES_OF_STAGE.items() for axis in axes}
        self.axis_stage = {**known, **self.axis_stage}

    @classmethod
    def from_results(cls, results: Any, run_dir: str | None = None) -> ReportData:
        """From `sweep.results.Results` (duck-typed: spec, rows, losses, evaluations())."""
        spec = results.spec
        studies = [StudyInfo(s.name, dict(s.vary), s.description, dict(s.fixed)) for s in spec.studies]
        rows = dict(results.rows)
        evaluations = prepare_evaluations(results.evaluations(), rows.get("tokenizer"))
        dataset = spec.dataset
        return cls(
            name=spec.name,
            studies=studies,
            baseline=spec.baseline.model_dump(),
            evaluations=evaluations,
            rows=rows,
            losses=results.losses,
            description=spec.description,
            dataset=f"{dataset.name} {dataset.image_size}x{dataset.image_size}, {dataset.num_classes} classes",
            run_dir=str(run_dir) if run_dir is not None else getattr(results, "run_dir", None),
        )


def prepare_evaluations(evaluations: pd.DataFrame, tokenizer_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Final evaluations only, metric aliases under their canonical column, tokenizer metrics attached.

    Rows with `intermediate` true (checkpoints evaluated during training) are dropped: tables compare
    finished trainings. Tokenizer metrics (rFID, PSNR) come from the tokenizer row of each trial's
    `tokenizer_key` when the evaluation rows do not already carry them.
    """
    table = evaluations.copy()
    if INTERMEDIATE_COLUMN in table:
        table = table[~table[INTERMEDIATE_COLUMN].fillna(False).astype(bool)].reset_index(drop=True)
    for metric in METRICS:
        if metric.column not in table:
            for alias in metric.aliases:
                if alias in table:
                    table[metric.column] = table[alias]
                    break
    if tokenizer_rows is not None and not tokenizer_rows.empty and "tokenizer_key" in table and "key" in tokenizer_rows:
        wanted = {}
        for metric in METRICS:
            if metric.stage != "tokenizer" or metric.column in table:
                continue
            for name in (metric.column, *metric.aliases):
                if name in tokenizer_rows:
                    wanted[name] = metric.column
                    break
        if wanted:
            finished = tokenizer_rows
            if "status" in finished:
                finished = finished[finished["status"] == "finished"]
            extra = finished[["key", *wanted]].rename(columns={"key": "tokenizer_key", **wanted})
            table = table.merge(extra.drop_duplicates("tokenizer_key"), on="tokenizer_key", how="left")
    return table


def available_metrics(evaluations: pd.DataFrame, metrics: tuple[Metric, ...] = METRICS) -> tuple[Metric, ...]:
    """The metrics with at least one value among finished rows (FID always, so an empty run still has a column)."""
    done = evaluations[evaluations["status"] == "finished"] if "status" in evaluations else evaluations
    found = tuple(
        m for m in metrics if m.column in done and pd.to_numeric(done[m.column], errors="coerce").notna().any()
    )
    return found or tuple(m for m in metrics if m.column == "fid")


def study_metrics(study: StudyInfo, metrics: tuple[Metric, ...], axis_stage: dict[str, str]) -> tuple[Metric, ...]:
    """The metrics of one study's table: tokenizer metrics only where the study varies a tokenizer axis
    (elsewhere every row shares one tokenizer and the column repeats one number)."""
    varies_tokenizer = any(axis_stage.get(axis) == "tokenizer" for axis in study.vary)
    return tuple(m for m in metrics if m.stage != "tokenizer" or varies_tokenizer)


def same_value(a: Any, b: Any) -> bool:
    """Axis values equal as settings (2 == 2.0; NaN equals NaN)."""
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)) and not isinstance(a, bool):
        a, b = float(a), float(b)
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def is_baseline(point: dict[str, Any], study: StudyInfo, baseline: dict[str, Any]) -> bool:
    """Whether a grid point (with the study's fixed values) is the spec's baseline."""
    settings = {**study.fixed, **point}
    return all(name in baseline and same_value(value, baseline[name]) for name, value in settings.items())


def t_quantile_975(dof: int) -> float:
    """Student-t 0.975 quantile with `dof` degrees of freedom (12.706 for 1, 4.303 for 2)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def interval_half_width(values: pd.Series, interval: Interval) -> float:
    """The ± of a cell: the sample std (ddof 1), or the Student-t 95% half-width t·s/√n; NaN for n < 2."""
    n = len(values)
    if n < 2:
        return float("nan")
    std = float(values.std(ddof=1))
    if interval == "std":
        return std
    if interval == "t95":
        return t_quantile_975(n - 1) * std / math.sqrt(n)
    raise ValueError(f"interval must be one of {INTERVALS}, but got {interval!r}")


def ablation_table(
    evaluations: pd.DataFrame,
    study: str | StudyInfo,
    varied: list[str] | None = None,
    metrics: tuple[Metric, ...] = METRICS,
    *,
    interval: Interval = "std",
    baseline: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per grid point of a study (in spec order): the varied axes, `baseline` (the point equal
    to the spec's baseline), per metric the mean, the sample std and the ± half-width (`interval`) over
    finished seeds, the finished seed count `n`, the trial count and how many failed or were skipped.
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, but got {interval!r}")
    info = study if isinstance(study, StudyInfo) else StudyInfo(study, {name: [] for name in varied or []})
    varied = list(varied) if varied is not None else info.varied
    rows = evaluations[evaluations["study"] == info.name]
    records = []
    for point, group in rows.groupby(varied, sort=False, dropna=False):
        point = point if isinstance(point, tuple) else (point,)
        done = group[group["status"] == "finished"]
        record: dict[str, Any] = dict(zip(varied, point))
        record["baseline"] = baseline is not None and is_baseline(dict(zip(varied, point)), info, baseline)
        for metric in metrics:
            values = (
                pd.to_numeric(done[metric.column], errors="coerce").dropna()
                if metric.column in done
                else pd.Series(dtype=float)
            )
            record[f"{metric.column}_mean"] = float(values.mean()) if len(values) else float("nan")
            record[f"{metric.column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            record[f"{metric.column}_half"] = interval_half_width(values, interval)
            record[f"{metric.column}_n"] = len(values)
        record["n"] = len(done)
        record["trials"] = len(group)
        record["failed"] = int(group["status"].isin(["failed", "skipped"]).sum())
        records.append(record)
    columns = [*varied, "baseline", *(f"{m.column}_{s}" for m in metrics for s in ("mean", "std", "half", "n")), "n", "trials", "failed"]
    return pd.DataFrame(records, columns=columns)


def best_rows(table: pd.DataFrame, metric: Metric) -> set[int]:
    """Indices of the best mean of a metric in its direction (ties all count); none if < 2 rows have one."""
    column = table[f"{metric.column}_mean"]
    if column.notna().sum() < 2:
        return set()
    best = column.max() if metric.higher_is_better else column.min()
    return set(table.index[column == best])


@dataclass
class StudyTable:
    """A study's table with what every renderer needs: the numbers, the metrics shown, the footnote."""

    study: StudyInfo
    frame: pd.DataFrame  # ablation_table(...)
    metrics: tuple[Metric, ...]
    footnote: list[str]  # sentences, plain Unicode (renderers escape)
    interval: Interval

    @property
    def varied(self) -> list[str]:
        return self.study.varied

    def best(self) -> dict[str, set[int]]:
        return {m.column: best_rows(self.frame, m) for m in self.metrics}


def statistic_note(interval: Interval) -> str:
    if interval == "t95":
        return (
            "Cells: mean ± half-width of the Student-t 95% confidence interval of the mean over n training seeds "
            "(t · s / √n, t the 0.975 quantile of Student's t with n − 1 degrees of freedom); n = 1 shows the single value."
        )
    return "Cells: mean ± sample standard deviation (ddof 1) over n training seeds; n = 1 shows the single value."


def _distinct(values: pd.Series) -> list[str]:
    out = []
    for value in values.dropna().unique():
        text = str(int(value)) if isinstance(value, (float, np.floating)) and float(value).is_integer() else str(value)
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):  # a sha256: its first 12 digits
            text = text[:12]
        out.append(text)
    return sorted(out)


def protocol_note(rows: pd.DataFrame, dataset: str = "") -> list[str]:
    """The evaluation protocol of finished rows, one sentence each: sample count, per class, reference,
    feature extractor and every `protocol_*` column; flags a study whose rows used different protocols."""
    done = rows[rows["status"] == "finished"] if "status" in rows else rows
    if done.empty:
        return ["No finished evaluations yet."]
    parts = []
    mixed = []

    def values_of(column: str) -> list[str]:
        found = _distinct(done[column]) if column in done else []
        if len(found) > 1:
            mixed.append(column)
        return found

    samples = values_of("protocol_samples") or values_of("num_samples")
    per_class = values_of("protocol_samples_per_class") or values_of("samples_per_class")
    if samples or per_class:
        text = f"{' / '.join(samples)} generated samples" if samples else "generated samples"
        if per_class:
            text += f", {' / '.join(per_class)} per class (class-balanced)"
        parts.append(text)
    reference = values_of("protocol_reference")
    parts.append(f"reference: {' / '.join(reference)}" if reference else f"reference: the held-out split{' of ' + dataset if dataset else ''}")
    extractor = values_of("protocol_extractor") or values_of("feature_extractor")
    if extractor:
        parts.append(f"features: {' / '.join(extractor)}")
    shown = {"protocol_samples", "protocol_samples_per_class", "protocol_reference", "protocol_extractor", "protocol_sampling_seed"}
    for column in sorted(c for c in done.columns if c.startswith("protocol_") and c not in shown):
        found = values_of(column)
        if found:
            parts.append(f"{column.removeprefix('protocol_').replace('_', ' ')}: {' / '.join(found)}")
    note = ["Protocol: " + "; ".join(parts) + "."]
    if mixed:
        note.append(f"⚠ Rows differ in {', '.join(mixed)}: their numbers are not comparable.")
    return note


def study_table(data: ReportData, study: StudyInfo, interval: Interval = "std") -> StudyTable:
    """The table a paper prints for one study, with its footnote."""
    metrics = study_metrics(study, available_metrics(data.evaluations), data.axis_stage)
    frame = ablation_table(data.evaluations, study, study.varied, metrics, interval=interval, baseline=data.baseline)
    rows = data.evaluations[data.evaluations["study"] == study.name]
    footnote = [statistic_note(interval), "Bold: best per column; ↓ lower is better, ↑ higher is better."]
    if frame["baseline"].any():
        footnote.append("†: the spec's baseline settings.")
    if study.fixed:
        footnote.append("Held for this study: " + ", ".join(f"{k} = {v}" for k, v in study.fixed.items()) + ".")
    footnote += protocol_note(rows, data.dataset)
    return StudyTable(study=study, frame=frame, metrics=metrics, footnote=footnote, interval=interval)

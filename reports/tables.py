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

from reports.order import rank_key
from reports.protocols import FIELD_LABELS, ProtocolCheck, Refusal, check_protocols, finished

PRUNED_REASON = "pruned by early stopping"  # the reason sweep/stages/generator.py StagePruned gives

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
    scale: float = 1.0  # shown (tables, figures) multiplied by this, the label says so; CSVs keep raw units

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def header(self) -> str:
        """The column header of tables: label and direction (`KID ×10³ ↓`)."""
        return f"{self.label} {self.arrow}"


# Every metric a table may show, in column order; a metric shows only where its column holds a value.
METRICS: tuple[Metric, ...] = (
    Metric("fid", "FID", higher_is_better=False, digits=2),
    # KID: `kid_mean` in evaluation rows (kid_std there is the estimator's spread over subsets), `kid` in
    # intermediate rows and searches; the report names it `kid` and shows it x 10^3.
    Metric("kid", "KID ×10³", higher_is_better=False, digits=2, aliases=("kid_mean",), scale=1e3),
    Metric("inception_score", "IS", higher_is_better=True, digits=1, aliases=("inception_score_mean", "is_mean", "isc_mean")),
    Metric("precision", "Prec.", higher_is_better=True, digits=3),
    Metric("recall", "Rec.", higher_is_better=True, digits=3),
    Metric("class_accuracy", "class acc.", higher_is_better=True, digits=3),
    Metric("rfid", "rFID", higher_is_better=False, digits=2, aliases=("reconstruction_fid",), stage="tokenizer"),
    Metric("psnr_db", "PSNR (dB)", higher_is_better=True, digits=2, stage="tokenizer"),
)
METRIC_BY_COLUMN: dict[str, Metric] = {m.column: m for m in METRICS}
# Any name a metric arrives under (its column or an alias) -> the metric.
METRIC_BY_NAME: dict[str, Metric] = {**{a: m for m in METRICS for a in m.aliases}, **METRIC_BY_COLUMN}
SIGNIFICANCE = 0.05  # bold needs Welch's t-test p below this against every other row

# Columns that mark an evaluation of an intermediate checkpoint (not a table row) and its training step.
INTERMEDIATE_COLUMN = "intermediate"
STEP_COLUMNS: tuple[str, ...] = ("step", "checkpoint_step", "generator_step", "train_step")

# Columns of searched sampling axes (Optuna). A `search_point` row is one point of a search, scored on
# the cheap search protocol: the search's trace, never a table row. A `searched` row re-evaluated the
# best settings a search found, on a fresh sampling seed: a table row, its searched axes marked.
SEARCHED = "searched"
SEARCH_POINT = "search_point"
SEARCH_ID = "search_id"
SEARCH_INDEX = "search_index"
SEARCH_AXES = "search_axes"  # optional: the searched axes ("cfg_scale,temperature"); else derived
SEARCH_BUDGET = "search_budget"  # optional: the number of points; else counted
SEARCH_MARK = "‡"


@dataclass(frozen=True)
class StudyInfo:
    """A study as the report sees it: a grid over `vary` around the baseline, with `fixed` held."""

    name: str
    vary: dict[str, list[Any]]
    description: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)  # the study's Optuna search block (axes, budget, metric), if any

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
    run_dir: str | None = None  # the run folder (None: no sample grids)
    store_root: str | None = None  # where <kind>/<key>/samples.npz live (None: <run_dir>/stages)
    axis_stage: dict[str, str] = field(default_factory=dict)  # axis -> stage kind it determines (+ the schema's)
    # Evaluations of intermediate generator checkpoints (Results.intermediate(), joined with the trials
    # for `study`): key, axes, step, fid, ..., protocol_id. Never mixed with the final evaluations.
    intermediate: pd.DataFrame = field(default_factory=pd.DataFrame)
    # Points of Optuna searches (Results.search_points(): study, search_id, search_index, search_metric,
    # the point's evaluation row); empty: taken from `search_point` rows of `rows`.
    searches: pd.DataFrame = field(default_factory=pd.DataFrame)
    mix_protocols: bool = False  # draw comparisons whose rows mix evaluation protocols (marked) instead of refusing
    num_classes: int | None = None  # classes of the dataset: the chance level 1/num_classes of class accuracy
    refusals: list[Refusal] = field(default_factory=list)  # comparisons refused so far (filled while building)

    def __post_init__(self) -> None:
        from space.schema import AXES_OF_STAGE

        known = {axis: kind for kind, axes in AXES_OF_STAGE.items() for axis in axes}
        self.axis_stage = {**known, **self.axis_stage}

    @classmethod
    def from_results(cls, results: Any, run_dir: str | None = None) -> ReportData:
        """From `sweep.results.Results` (duck-typed: spec, rows, losses, evaluations())."""
        spec = results.spec
        studies = [
            StudyInfo(s.name, dict(s.vary), s.description, dict(s.fixed), _search_block(getattr(s, "search", None)))
            for s in spec.studies
        ]
        rows = dict(results.rows)
        evaluations = prepare_evaluations(results.evaluations(), rows.get("tokenizer"), rows.get("reconstruction"))
        dataset = spec.dataset
        source = getattr(results, "intermediate", None)  # Results.intermediate() where the run has it
        intermediate = source() if callable(source) else source
        source = getattr(results, "search_points", None)  # Results.search_points() where the run has it
        searches = source() if callable(source) else source
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
            store_root=str(results.store_root) if getattr(results, "store_root", None) is not None else None,
            intermediate=with_study(intermediate, getattr(results, "trials", None)),
            searches=searches if isinstance(searches, pd.DataFrame) else pd.DataFrame(),
            num_classes=dataset.num_classes,
        )

    def refuse(self, check: ProtocolCheck, study: str | None = None) -> bool:
        """Whether a comparison is refused (mixed protocols without `mix_protocols`); logs the refusal once."""
        if not check.mixed or self.mix_protocols:
            return False
        if all(r.comparison != check.comparison for r in self.refusals):
            self.refusals.append(Refusal(check.comparison, check.refusal(), study))
        return True


def _search_block(search: Any) -> dict[str, Any]:
    """A study's search block as a plain dict (axes as a list of names); {} without one."""
    if search is None:
        return {}
    block = search.model_dump(mode="json") if hasattr(search, "model_dump") else dict(search)
    block["axes"] = list(block.get("axes", {}))
    return block


def with_study(intermediate: pd.DataFrame | None, trials: pd.DataFrame | None) -> pd.DataFrame:
    """Intermediate rows with the `study` of their generator (joined with the trials on generator_key;
    a generator shared by studies appears once per study) and the trials' upstream axes they lack.
    Rows whose generator is in no trial keep no study."""
    if intermediate is None or not isinstance(intermediate, pd.DataFrame) or intermediate.empty:
        return pd.DataFrame()
    frame = intermediate
    if INTERMEDIATE_COLUMN in frame:
        frame = frame[frame[INTERMEDIATE_COLUMN].fillna(True).astype(bool)]
    key = "generator_key" if "generator_key" in frame else "key"
    if "study" in frame or trials is None or trials.empty or "generator_key" not in trials or key not in frame:
        return frame.reset_index(drop=True)
    from space.schema import AXES, AXES_OF_STAGE

    # the generator's own settings (sampling axes differ between a generator's trials: not its settings)
    sampling = set(AXES_OF_STAGE.get("evaluation", ()))
    extra = [c for c in AXES if c in trials and c not in frame and c not in sampling]
    joined = trials[["generator_key", "study", *extra]].drop_duplicates(["generator_key", "study"])
    return frame.merge(joined, left_on=key, right_on="generator_key", how="left", suffixes=("", "_trial")).reset_index(drop=True)


def flagged(frame: pd.DataFrame, column: str) -> pd.Series:
    """Boolean mask of rows with `column` true (all false when the column is absent: older results)."""
    if column not in frame:
        return pd.Series(False, index=frame.index)
    return frame[column].astype(object).where(frame[column].notna(), False).astype(bool)


def comparable_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Final evaluations only: drops intermediate checkpoints and search points (a search's trace)."""
    keep = ~flagged(frame, INTERMEDIATE_COLUMN) & ~flagged(frame, SEARCH_POINT)
    return frame if keep.all() else frame[keep].reset_index(drop=True)


def with_canonical_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every metric that arrived under an alias also under its column (`kid_mean` -> `kid`)."""
    missing = {
        m.column: next(a for a in m.aliases if a in frame)
        for m in METRICS
        if m.column not in frame and any(a in frame for a in m.aliases)
    }
    return frame.assign(**{column: frame[alias] for column, alias in missing.items()}) if missing else frame


def prepare_evaluations(evaluations: pd.DataFrame, tokenizer_rows: pd.DataFrame | None = None,
                        reconstruction_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Final evaluations only, metric aliases under their canonical column, tokenizer metrics attached.

    Rows with `intermediate` true (checkpoints evaluated during training) and `search_point` rows (the
    trace of an Optuna search, on its cheaper protocol) are dropped: tables compare finished trainings
    under the evaluation protocol. Tokenizer metrics (rFID, PSNR) come from the tokenizer row of each trial's
    `tokenizer_key` when the evaluation rows do not already carry them; rFID from the reconstruction row of
    the trial's (`tokenizer_key`, `reference_key`): the same tokenizer scored in the trial's feature space.
    """
    table = with_canonical_metrics(comparable_rows(evaluations).copy())
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
    if reconstruction_rows is not None and "rfid" in reconstruction_rows and "rfid" not in table:
        on = [c for c in ("tokenizer_key", "reference_key") if c in table and c in reconstruction_rows]
        done = reconstruction_rows[reconstruction_rows["status"] == "finished"] if "status" in reconstruction_rows else reconstruction_rows
        if "tokenizer_key" in on:
            table = table.merge(done[[*on, "rfid"]].drop_duplicates(on), on=on, how="left")
    return table


def available_metrics(evaluations: pd.DataFrame, metrics: tuple[Metric, ...] = METRICS) -> tuple[Metric, ...]:
    """The metrics with at least one value among finished rows (FID always, so an empty run still has a column)."""
    done = with_canonical_metrics(evaluations[evaluations["status"] == "finished"] if "status" in evaluations else evaluations)
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
    search_axes: list[str] | None = None,
) -> pd.DataFrame:
    """One row per grid point of a study (in the report's value order, reports.order): the varied axes, `baseline` (the point equal
    to the spec's baseline), per metric the mean, the sample std and the ± half-width (`interval`) over
    finished seeds, the finished seed count `n`, the trial count and how many failed or were skipped.

    Search points (`search_point` rows) and intermediate checkpoints are ignored. `searched` rows (the
    settings an Optuna search chose, re-evaluated) form their own row after their grid point's, with
    `searched` true; `search_axes` are shown as columns after the varied axes: the value each row used,
    or the distinct chosen values joined by " / " when seeds chose differently.
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, but got {interval!r}")
    info = study if isinstance(study, StudyInfo) else StudyInfo(study, {name: [] for name in varied or []})
    varied = list(varied) if varied is not None else info.varied
    shown = [a for a in (search_axes or []) if a not in varied]
    rows = with_canonical_metrics(comparable_rows(evaluations))
    rows = rows[rows["study"] == info.name]
    searched = flagged(rows, SEARCHED)
    records = []
    groups = rows.groupby(varied, sort=False, dropna=False) if varied else [((), rows)]  # a search-only study varies nothing
    for point, group in groups:
        point = point if isinstance(point, tuple) else (point,)
        for is_searched in (False, True):
            part = group[searched.loc[group.index] == is_searched]
            if part.empty:
                continue
            done = part[part["status"] == "finished"]
            record: dict[str, Any] = dict(zip(varied, point))
            for axis in shown:
                record[axis] = chosen_values(done if len(done) else part, axis)
            record["baseline"] = not is_searched and baseline is not None and is_baseline(dict(zip(varied, point)), info, baseline)
            record[SEARCHED] = is_searched
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
            record["trials"] = len(part)
            # an evaluation skipped because early stopping pruned its generator is no failure: count it apart
            errors = part["error"].fillna("").astype(str) if "error" in part else pd.Series("", index=part.index)
            pruned = part["status"].eq("skipped") & errors.str.contains(PRUNED_REASON, regex=False)
            record["pruned"] = int(pruned.sum())
            record["failed"] = int(part["status"].isin(["failed", "skipped"]).sum()) - record["pruned"]
            records.append(record)
    keys = {axis: rank_key(axis, info.vary.get(axis, ())) for axis in varied}
    records.sort(key=lambda r: (*(keys[a](r[a]) for a in varied), r[SEARCHED]))  # stable: a searched row after its point
    columns = [
        *varied, *shown, "baseline", SEARCHED,
        *(f"{m.column}_{s}" for m in metrics for s in ("mean", "std", "half", "n")), "n", "trials", "failed", "pruned",
    ]
    return pd.DataFrame(records, columns=columns)


def chosen_values(rows: pd.DataFrame, axis: str) -> Any:
    """The value of `axis` the rows used: the single value, or the distinct values joined by " / "
    (6 significant digits) when they differ (seeds whose searches chose differently); NaN if none."""
    if axis not in rows:
        return float("nan")
    values = list(dict.fromkeys(v for v in rows[axis].tolist() if not (isinstance(v, float) and math.isnan(v))))
    if not values:
        return float("nan")
    if len(values) == 1:
        value = values[0]
        return value.item() if isinstance(value, np.generic) else value
    return " / ".join(f"{float(v):.6g}" if isinstance(v, (float, np.floating)) else str(v) for v in values)


def welch_p(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) from each group's mean, sample std
    (ddof 1) and size; NaN when a group has fewer than 2 values. Two groups without spread: 0 if their
    means differ, 1 if not."""
    if n_a < 2 or n_b < 2 or any(math.isnan(float(v)) for v in (mean_a, std_a, mean_b, std_b)):
        return float("nan")
    var_a, var_b = std_a**2 / n_a, std_b**2 / n_b
    spread = var_a + var_b
    if spread == 0:
        return 0.0 if mean_a != mean_b else 1.0
    statistic = (mean_a - mean_b) / math.sqrt(spread)
    dof = spread**2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))  # Welch-Satterthwaite
    from scipy.stats import t

    return float(2.0 * t.sf(abs(statistic), dof))


def best_rows(table: pd.DataFrame, metric: Metric, alpha: float = SIGNIFICANCE) -> set[int]:
    """The index of the best mean of a metric in its direction, when it is distinguishable from every
    other row with a value: Welch's t-test p < `alpha` with n >= 2 seeds on both sides. Empty when
    fewer than 2 rows have a value, on a tie, or when any comparison has n = 1 or p >= `alpha`."""
    mean, std, n = (table[f"{metric.column}_{s}"] for s in ("mean", "std", "n"))
    scored = mean.dropna()
    if len(scored) < 2:
        return set()
    best = scored.idxmax() if metric.higher_is_better else scored.idxmin()
    for other in scored.index.drop(best):
        p = welch_p(mean[best], std[best], int(n[best]), mean[other], std[other], int(n[other]))
        if not p < alpha:  # NaN (n = 1) counts as not distinguishable
            return set()
    return {best}


@dataclass
class StudyTable:
    """A study's table with what every renderer needs: the numbers, the metrics shown, the footnote."""

    study: StudyInfo
    frame: pd.DataFrame  # ablation_table(...)
    metrics: tuple[Metric, ...]
    footnote: list[str]  # sentences, plain Unicode (renderers escape)
    interval: Interval
    search_axes: list[str] = field(default_factory=list)  # axes an Optuna search chose for `searched` rows
    refusal: str | None = None  # why the table is not drawn (mixed protocols); None: draw it
    protocol: str = ""  # the evaluation protocol in one short sentence (also the footnote's last line but notes)

    @property
    def varied(self) -> list[str]:
        return self.study.varied

    @property
    def label_axes(self) -> list[str]:
        """The label columns: the varied axes, then the searched axes (their values per row)."""
        return [*self.varied, *(a for a in self.search_axes if a not in self.varied)]

    def best(self) -> dict[str, set[int]]:
        return {m.column: best_rows(self.frame, m) for m in self.metrics}


def statistic_note(interval: Interval) -> str:
    if interval == "t95":
        return (
            "Cells: mean ± half-width of the Student-t 95% confidence interval of the mean over n training seeds "
            "(t · s / √n, t the 0.975 quantile of Student's t with n − 1 degrees of freedom); n = 1 shows the single value."
        )
    return "Cells: mean ± sample standard deviation (ddof 1) over n training seeds; n = 1 shows the single value."


def bold_note(alpha: float = SIGNIFICANCE) -> str:
    """The footnote sentence of the bold rule (best_rows)."""
    return (
        f"Bold: the best mean of a column, only where Welch's t-test (two-sided) against every other row gives "
        f"p < {alpha:g} with n ≥ 2 seeds on both sides; nothing is bold with n = 1. ↓ lower is better, ↑ higher is better."
    )


def _distinct(values: pd.Series) -> list[str]:
    out = []
    for value in values.dropna().unique():
        text = str(int(value)) if isinstance(value, (float, np.floating)) and float(value).is_integer() else str(value)
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):  # a sha256: its first 12 digits
            text = text[:12]
        out.append(text)
    return sorted(out)


def _is_audit_column(column: str) -> bool:
    """A protocol column for the provenance only: a hash or library versions (not in notes or captions)."""
    return column == "protocol_id" or column.endswith("_sha256") or "version" in column


def protocol_note(rows: pd.DataFrame, dataset: str = "") -> list[str]:
    """The evaluation protocol of finished rows in one sentence: sample count, per class, reference,
    feature extractor and every other `protocol_*` column but hashes and versions (those are in the
    provenance, `protocol_provenance`); values joined by " / " where rows differ (whether they may
    differ is `reports.protocols.check_protocols`'s call). Sampling seeds are not listed: a seed is a
    repeat of the same protocol."""
    done = finished(rows)
    if done.empty:
        return ["No finished evaluations yet."]
    parts = []

    def values_of(column: str) -> list[str]:
        return _distinct(done[column]) if column in done else []

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
    for column in sorted(c for c in done.columns if c.startswith("protocol_") and c not in shown and not _is_audit_column(c)):
        found = values_of(column)
        if found:
            label = FIELD_LABELS.get(column, column.removeprefix("protocol_").replace("_", " "))
            parts.append(f"{label}: {' / '.join(found)}")
    return ["Protocol: " + "; ".join(parts) + "."]


def protocol_provenance(rows: pd.DataFrame) -> list[str]:
    """The hashes and library versions of the finished rows' protocols, in full, one line per field
    (the report's provenance section; notes and captions leave them out)."""
    done = finished(rows)
    lines = []
    for column in sorted(c for c in done.columns if c.startswith("protocol_") and _is_audit_column(c)):
        found = sorted({str(v) for v in done[column].dropna().unique()})
        if found:
            label = FIELD_LABELS.get(column, column.removeprefix("protocol_").replace("_", " "))
            lines.append(f"Protocol {label}: {', '.join(found)}.")
    return lines


# ---------------------------------------------------------------- searched sampling axes


@dataclass(frozen=True)
class SearchSummary:
    """The Optuna searches behind a table's `searched` rows: the axes searched, budgets, how many."""

    axes: tuple[str, ...]
    budgets: tuple[int, ...]  # distinct points per search (empty: not recorded)
    searches: int

    def note(self) -> str:
        """The footnote of the searched rows."""
        if len(self.budgets) == 1:
            budget = f"budget {self.budgets[0]} points"
        elif self.budgets:
            budget = f"budgets {' / '.join(str(b) for b in self.budgets)} points"
        else:
            budget = "budget not recorded"
        each = f" each, {self.searches} searches" if self.searches > 1 else ""
        return (
            f"{SEARCH_MARK}: chosen by Optuna search over {', '.join(self.axes) or 'the sampling axes'}, {budget}{each}; "
            "re-evaluated on a fresh sampling seed (the search's own points, on its cheaper protocol, are not table rows)."
        )


def search_points(data: ReportData) -> pd.DataFrame:
    """Every point of every Optuna search: `data.searches` (Results.search_points()) when it holds
    rows, else the `search_point` rows of any kind (and of the evaluations), once per key."""
    if data.searches is not None and not data.searches.empty:
        return data.searches
    frames = [f[flagged(f, SEARCH_POINT)] for f in (*data.rows.values(), data.evaluations) if f is not None and not f.empty]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    points = pd.concat(frames, ignore_index=True)
    key = next((c for c in ("key", "evaluation_key") if c in points), None)
    return points.drop_duplicates(key) if key else points


def _axes_listed(value: Any) -> list[str]:
    if isinstance(value, str):
        return [a.strip() for a in value.replace(";", ",").split(",") if a.strip()]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(a) for a in value]
    return []


def _of_search(frame: pd.DataFrame, search_id: str | None) -> pd.DataFrame:
    if search_id is None or SEARCH_ID not in frame:
        return frame if search_id is None else frame.iloc[:0]
    return frame[frame[SEARCH_ID].astype(str) == search_id]


def search_summary(data: ReportData, searched: pd.DataFrame, study: StudyInfo | None = None) -> SearchSummary | None:
    """What the searches behind `searched` rows searched and with what budget: the study's search block
    where the report has the spec; else the rows' `search_axes` and `search_budget` columns; else the
    known axes that vary among a search's points and its distinct point indices; else the sampling
    axes whose chosen value differs from the baseline (budget not recorded)."""
    if searched.empty:
        return None
    points = search_points(data)
    ids = list(dict.fromkeys(searched[SEARCH_ID].dropna().astype(str))) if SEARCH_ID in searched else []
    block = study.search if study is not None else {}
    axes: list[str] = list(block.get("axes", []))
    budgets: list[int] = [int(block["budget"])] if block.get("budget") else []
    known = [a for a in data.axis_stage if a != "seed"]
    for search_id in ids or [None]:
        mine, trace = _of_search(searched, search_id), _of_search(points, search_id)
        if not block.get("axes"):
            listed = [a for v in (*mine.get(SEARCH_AXES, []), *trace.get(SEARCH_AXES, [])) for a in _axes_listed(v)]
            if not listed and not trace.empty:
                listed = [a for a in known if a in trace and trace[a].dropna().astype(str).nunique() > 1]
            if not listed:
                sampling = [a for a, kind in data.axis_stage.items() if kind == "evaluation"]
                listed = [
                    a for a in sampling
                    if a in mine and a in data.baseline and any(not same_value(v, data.baseline[a]) for v in mine[a].dropna())
                ]
            axes += [a for a in listed if a not in axes]
        if block.get("budget"):
            continue
        budget = pd.to_numeric(pd.concat([mine.get(SEARCH_BUDGET, pd.Series(dtype=float)), trace.get(SEARCH_BUDGET, pd.Series(dtype=float))]), errors="coerce").dropna()
        if len(budget):
            budgets.append(int(budget.iloc[0]))
        elif not trace.empty and SEARCH_INDEX in trace:
            index = pd.to_numeric(trace[SEARCH_INDEX], errors="coerce")
            budgets.append(int(index[index >= 0].nunique()))
    return SearchSummary(tuple(axes), tuple(sorted(set(budgets))), max(1, len(ids)))


# ---------------------------------------------------------------- a study's table


def study_rows(data: ReportData, study: StudyInfo) -> pd.DataFrame:
    """The final evaluations of a study (no intermediate checkpoints, no search points)."""
    rows = comparable_rows(data.evaluations)
    return rows[rows["study"] == study.name]


def study_check(data: ReportData, study: StudyInfo) -> ProtocolCheck:
    """Whether a study's finished rows share one evaluation protocol (its table and figures compare them)."""
    return check_protocols(study_rows(data, study), f"study {study.name}", study.varied, data.axis_stage)


def study_table(data: ReportData, study: StudyInfo, interval: Interval = "std") -> StudyTable:
    """The table a paper prints for one study, with its footnote; refused (`refusal` set, logged in
    `data.refusals`) when its rows mix evaluation protocols and `data.mix_protocols` is off."""
    metrics = study_metrics(study, available_metrics(data.evaluations), data.axis_stage)
    rows = study_rows(data, study)
    check = study_check(data, study)
    refused = data.refuse(check, study.name)
    searched = finished(rows[flagged(rows, SEARCHED)])
    search = search_summary(data, searched, study)
    search_axes = list(search.axes) if search else []
    frame = ablation_table(rows, study, study.varied, metrics, interval=interval, baseline=data.baseline, search_axes=search_axes)
    footnote = [statistic_note(interval), bold_note()]
    if frame["baseline"].any():
        footnote.append("†: the spec's baseline settings.")
    if search is not None:
        footnote.append(search.note())
    if study.fixed:
        footnote.append("Held for this study: " + ", ".join(f"{k} = {v}" for k, v in study.fixed.items()) + ".")
    protocol = protocol_note(rows, data.dataset)[0]
    footnote.append(protocol)
    if check.by_design:
        footnote.append(check.by_design_note())
    if check.mixed:
        footnote.append(check.mixed_note())
    return StudyTable(
        study=study, frame=frame, metrics=metrics, footnote=footnote, interval=interval,
        search_axes=search_axes, refusal=check.refusal() if refused else None, protocol=protocol,
    )


CSV_SPREAD: dict[str, str] = {"std": "std", "t95": "ci95"}


def csv_frame(table: StudyTable) -> pd.DataFrame:
    """A study's table as its CSV holds it: the label axes, `baseline`, `searched`, then per metric
    `<metric>` (the mean over seeds, in the metric's own units: KID not scaled), `<metric>_std` (sample
    std over seeds), `<metric>_ci95` (Student-t 95% half-width, with interval t95 only) and `<metric>_n`;
    then n, trials, failed, pruned. Rows in the table's order."""
    frame = table.frame
    columns: dict[str, str] = {a: a for a in table.label_axes}
    columns.update({"baseline": "baseline", SEARCHED: SEARCHED})
    for metric in table.metrics:
        columns[f"{metric.column}_mean"] = metric.column
        columns[f"{metric.column}_std"] = f"{metric.column}_std"
        if table.interval == "t95":
            columns[f"{metric.column}_half"] = f"{metric.column}_{CSV_SPREAD['t95']}"
        columns[f"{metric.column}_n"] = f"{metric.column}_n"
    columns.update({c: c for c in ("n", "trials", "failed", "pruned")})
    return frame[[c for c in columns if c in frame]].rename(columns=columns)

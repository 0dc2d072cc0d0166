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

from reports.protocols import ProtocolCheck, Refusal, check_protocols, finished

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
    run_dir: str | None = None  # where stages/<kind>/<key>/samples.npz live (None: no sample grids)
    axis_stage: dict[str, str] = field(default_factory=dict)  # axis -> stage kind it determines (+ the schema's)
    # Evaluations of intermediate generator checkpoints (Results.intermediate(), joined with the trials
    # for `study`): key, axes, step, fid, ..., protocol_id. Never mixed with the final evaluations.
    intermediate: pd.DataFrame = field(default_factory=pd.DataFrame)
    # Points of Optuna searches (Results.search_points(): study, search_id, search_index, search_metric,
    # the point's evaluation row); empty: taken from `search_point` rows of `rows`.
    searches: pd.DataFrame = field(default_factory=pd.DataFrame)
    mix_protocols: bool = False  # draw comparisons whose rows mix evaluation protocols (marked) instead of refusing
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
            intermediate=with_study(intermediate, getattr(results, "trials", None)),
            searches=searches if isinstance(searches, pd.DataFrame) else pd.DataFrame(),
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


def prepare_evaluations(evaluations: pd.DataFrame, tokenizer_rows: pd.DataFrame | None = None,
                        reconstruction_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Final evaluations only, metric aliases under their canonical column, tokenizer metrics attached.

    Rows with `intermediate` true (checkpoints evaluated during training) and `search_point` rows (the
    trace of an Optuna search, on its cheaper protocol) are dropped: tables compare finished trainings
    under the evaluation protocol. Tokenizer metrics (rFID, PSNR) come from the tokenizer row of each trial's
    `tokenizer_key` when the evaluation rows do not already carry them; rFID from the reconstruction row of
    the trial's (`tokenizer_key`, `reference_key`): the same tokenizer scored in the trial's feature space.
    """
    table = comparable_rows(evaluations).copy()
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
    if reconstruction_rows is not None and "rfid" in reconstruction_rows and "rfid" not in table:
        on = [c for c in ("tokenizer_key", "reference_key") if c in table and c in reconstruction_rows]
        done = reconstruction_rows[reconstruction_rows["status"] == "finished"] if "status" in reconstruction_rows else reconstruction_rows
        if "tokenizer_key" in on:
            table = table.merge(done[[*on, "rfid"]].drop_duplicates(on), on=on, how="left")
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
    search_axes: list[str] | None = None,
) -> pd.DataFrame:
    """One row per grid point of a study (in spec order): the varied axes, `baseline` (the point equal
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
    rows = comparable_rows(evaluations)
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
    search_axes: list[str] = field(default_factory=list)  # axes an Optuna search chose for `searched` rows
    refusal: str | None = None  # why the table is not drawn (mixed protocols); None: draw it

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


def _distinct(values: pd.Series) -> list[str]:
    out = []
    for value in values.dropna().unique():
        text = str(int(value)) if isinstance(value, (float, np.floating)) and float(value).is_integer() else str(value)
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):  # a sha256: its first 12 digits
            text = text[:12]
        out.append(text)
    return sorted(out)


def protocol_note(rows: pd.DataFrame, dataset: str = "") -> list[str]:
    """The evaluation protocol of finished rows in one sentence: sample count, per class, reference,
    feature extractor and every other `protocol_*` column (values joined by " / " where rows differ;
    whether they may differ is `reports.protocols.check_protocols`'s call). Sampling seeds are not
    listed: a seed is a repeat of the same protocol."""
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
    for column in sorted(c for c in done.columns if c.startswith("protocol_") and c not in shown):
        found = values_of(column)
        if found:
            parts.append(f"{column.removeprefix('protocol_').replace('_', ' ')}: {' / '.join(found)}")
    return ["Protocol: " + "; ".join(parts) + "."]


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
    footnote = [statistic_note(interval), "Bold: best per column; ↓ lower is better, ↑ higher is better."]
    if frame["baseline"].any():
        footnote.append("†: the spec's baseline settings.")
    if search is not None:
        footnote.append(search.note())
    if study.fixed:
        footnote.append("Held for this study: " + ", ".join(f"{k} = {v}" for k, v in study.fixed.items()) + ".")
    footnote += protocol_note(rows, data.dataset)
    if check.by_design:
        footnote.append(check.by_design_note())
    if check.mixed:
        footnote.append(check.mixed_note())
    return StudyTable(
        study=study, frame=frame, metrics=metrics, footnote=footnote, interval=interval,
        search_axes=search_axes, refusal=check.refusal() if refused else None,
    )

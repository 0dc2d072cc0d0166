"""Figures (matplotlib Agg, PNG + PDF), each made only when its data exists.

| figure | made when | file |
|---|---|---|
| metric vs axis, one line per value of the study's other axes | a study varies a numeric axis or `size` over >= 2 values with results (FID vs size per vocabulary, FID and IS vs cfg_scale per cfg_schedule, FID vs top_k / temperature / mlm_steps, ...) | `<study>--<axis>` |
| FID over training steps per modeling | stage rows with `intermediate` true and a step column (no study) | `training-steps` |
| FID over training steps per study, a line per cell (AR vs MLM) | `Results.intermediate()` rows of a study varying generator-side axes | `<study>--training-steps` |
| search trace: metric per point, best so far, chosen point | `search_point` rows of one `search_id` | `search-<search_id>` |
| training-loss curves per size, one panel per vocabulary | generator losses | `training-loss` |
| token-randomness KL bars | analysis rows `analysis == "token_randomness"` | `token-randomness` |
| attention locality vs layer per size | analysis rows `analysis == "attention_locality"` | `attention-locality` |
| FID vs IS (or class accuracy) trade-off | >= 2 grid points with both | `tradeoff` |

Colours come from one `Palette` keyed by (axis, value), so a value looks the same everywhere. Error
bars are the tables' ± (sample std or Student-t 95% half-width over training seeds). A figure that
compares rows of different evaluation protocols is not drawn (reports.protocols; logged in
`data.refusals`) unless `data.mix_protocols`, when its caption says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.markdown import format_chosen
from reports.order import ALL_LABEL, is_all, rank_key, setting_text, value_text
from reports.palette import SIZE_ORDER, Palette, value_key
from reports.protocols import ProtocolCheck, check_protocols
from reports.tables import (
    INTERMEDIATE_COLUMN,
    METRIC_BY_COLUMN,
    METRIC_BY_NAME,
    SEARCH_ID,
    SEARCH_INDEX,
    SEARCH_MARK,
    SEARCHED,
    STEP_COLUMNS,
    Interval,
    Metric,
    ReportData,
    StudyInfo,
    ablation_table,
    available_metrics,
    comparable_rows,
    flagged,
    interval_half_width,
    search_points,
    search_summary,
    study_check,
    study_rows,
)

# Axis labels with units for the axes the paper sweeps; any other axis is labelled by its name.
AXIS_LABELS: dict[str, str] = {
    "size": "generator size",
    "cfg_scale": "CFG scale s",
    "top_k": "top-k (ids kept per sub-token head)",
    "temperature": "sampling temperature",
    "top_p": "top-p (nucleus mass kept)",
    "mlm_steps": "MLM decoding steps",
    "mlm_tau": "MLM Gumbel temperature τ",
    "generator_steps": "generator training steps",
    "token_each": "sub-tokens per position K",
    "code_dim": "bits per latent position D",
    "samples_per_class": "samples per class",
    "generator_lr": "generator learning rate",
    "tokenizer_steps": "tokenizer training steps",
}
METRIC_AXIS_LABELS: dict[str, str] = {
    "fid": "FID ↓",
    "kid": "KID ×10³ ↓",
    "inception_score": "Inception Score ↑",
    "precision": "precision ↑",
    "recall": "recall ↑",
    "class_accuracy": "class accuracy ↑ (share correct)",
    "rfid": "rFID ↓",
    "psnr_db": "PSNR (dB) ↑",
}
VOCABULARY_AXES = ("token_each", "code_dim")
SIZE = "size"
MODELING = "modeling"
DPI = 150


@dataclass(frozen=True)
class FigureFile:
    """A written figure: PNG and PDF, its caption and the study it belongs to (None: the whole run)."""

    name: str
    title: str
    caption: str
    study: str | None
    png: Path
    pdf: Path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.labelsize": 9,
            "legend.fontsize": 8,
            "legend.title_fontsize": 8,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "figure.dpi": DPI,
        }
    )
    return plt


def _save(figure: Any, out: Path, name: str, title: str, caption: str, study: str | None) -> FigureFile:
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    png, pdf = out / f"{name}.png", out / f"{name}.pdf"
    figure.savefig(png, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    figure.savefig(pdf, bbox_inches="tight", metadata={"Creator": None, "Producer": None})
    plt.close(figure)
    return FigureFile(name=name, title=title, caption=caption, study=study, png=png, pdf=pdf)


def safe_name(text: str) -> str:
    """A file-name-safe version of a study or axis name."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def axis_label(axis: str) -> str:
    return AXIS_LABELS.get(axis, axis)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def chance_line(ax: Any, data: ReportData, column: str, vertical: bool = False) -> None:
    """The chance level 1/num_classes on a class-accuracy panel (nothing for other metrics, or when the
    class count is unknown)."""
    if column != "class_accuracy" or not data.num_classes:
        return
    level = 1.0 / data.num_classes
    draw = ax.axvline if vertical else ax.axhline
    draw(level, color="0.45", linestyle="--", linewidth=1.0, zorder=1, label=f"chance (1/{data.num_classes})")


def vocabulary_label(token_each: Any, code_dim: Any) -> str:
    """ELM's `K-c` name of a vocabulary: K sub-tokens of c = D/K bits (1-16, 2-12, ...)."""
    try:
        k, d = int(token_each), int(code_dim)
        return f"{k}-{d // k}"
    except (TypeError, ValueError, ZeroDivisionError):
        return f"{token_each}-?"


def _with_generator_columns(frame: pd.DataFrame, data: ReportData, columns: list[str]) -> pd.DataFrame:
    """`frame` with generator-row columns (e.g. parameter_count, size) joined on generator_key where missing."""
    generators = data.rows.get("generator")
    missing = [c for c in columns if c not in frame]
    if not missing or generators is None or generators.empty or "generator_key" not in frame or "key" not in generators:
        return frame
    present = [c for c in missing if c in generators]
    if not present:
        return frame
    extra = generators[["key", *present]].drop_duplicates("key").rename(columns={"key": "generator_key"})
    return frame.merge(extra, on="generator_key", how="left")


def _size_rank(value: Any) -> tuple[int, str]:
    text = value_key(value)
    return (SIZE_ORDER.index(text) if text in SIZE_ORDER else len(SIZE_ORDER), text)


def _format_count(count: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:.0f}"


# ---------------------------------------------------------------- metric vs axis, per study


def _x_axes(study: StudyInfo) -> list[str]:
    """The axes of a study that make an x axis: numeric or `size` over >= 2 values; failing those,
    the first categorical axis (a dot plot)."""
    multi = [a for a, values in study.vary.items() if len(values) >= 2]
    ordered = [a for a in multi if a == SIZE or all(_is_number(v) for v in study.vary[a])]
    return ordered or multi[:1]


@dataclass(frozen=True)
class Series:
    """One line of a figure over an axis: its legend label, the palette key of its colour, its rows."""

    label: str
    colour_axis: str  # "" : the study's colour
    colour_value: Any
    rows: pd.DataFrame


def _series(study: StudyInfo, x: str, table: pd.DataFrame, data: ReportData) -> tuple[str | None, list[Series]]:
    """(legend title, lines) of a figure over `x`: a line per value of the study's other axes, in the
    report's value order (reports.order)."""
    others = [a for a in study.varied if a != x]
    if not others:
        return None, [Series("", "", "", table)]
    keys = {a: rank_key(a, study.vary.get(a, ())) for a in others}
    split = sorted(
        table.groupby(others, sort=False, dropna=False),
        key=lambda item: tuple(keys[a](v) for a, v in zip(others, item[0] if isinstance(item[0], tuple) else (item[0],))),
    )
    groups = []
    if set(others) <= set(VOCABULARY_AXES):
        for _, rows in split:
            first = rows.iloc[0]
            k = first["token_each"] if "token_each" in rows else study.fixed.get("token_each", data.baseline.get("token_each"))
            d = first["code_dim"] if "code_dim" in rows else study.fixed.get("code_dim", data.baseline.get("code_dim"))
            label = vocabulary_label(k, d)
            groups.append(Series(label, "vocabulary", label, rows))
        return "vocabulary (K-c)", groups
    for values, rows in split:
        values = values if isinstance(values, tuple) else (values,)
        if len(others) == 1:
            label = ALL_LABEL if is_all(others[0], values[0]) else value_key(values[0])
            groups.append(Series(label, others[0], values[0], rows))
        else:
            label = ", ".join(setting_text(a, v) for a, v in zip(others, values))
            groups.append(Series(label, "series", label, rows))
    return (others[0] if len(others) == 1 else ", ".join(others)), groups


@dataclass(frozen=True)
class XAxis:
    """Where the values of an axis sit on a figure's x axis."""

    positions: dict[str, float]  # value key -> x coordinate
    ticks: dict[str, str]  # value key -> tick label (missing: the key)
    scale: str  # "linear" | "log" | "category"
    apart: str | None = None  # value key of the "all" value, drawn apart from the line (None: none)
    separator: float | None = None  # x of the dotted line between the numbers and "all"
    ordinal: bool = True  # False: names (vq, bae), no order between them: points without a line


def _x_positions(study: StudyInfo, x: str, data: ReportData) -> XAxis:
    """The x axis of a study's figure over `x`: numbers at their value (log scale when positive values
    span >= 20x), in the report's order; the "all" value (top_k = 0) a labelled category right of them,
    behind a dotted separator; sizes and names as evenly spaced categories in the report's order (names, which have
    no order between them, drawn as points without a line)."""
    values = ordered_values(study, x)
    if x != SIZE and all(_is_number(v) for v in values):
        apart = [v for v in values if is_all(x, v)]
        numbers = [v for v in values if not is_all(x, v)]
        positive = [float(v) for v in numbers if float(v) > 0]
        if apart and len(numbers) < 2:  # nothing to scale: two categories
            positions = {value_key(v): float(i) for i, v in enumerate(values)}
            ticks = {value_key(v): value_text(x, v) for v in values}
            return XAxis(positions, ticks, "category", value_key(apart[0]), len(numbers) - 0.5 if numbers else None)
        spread = bool(positive) and max(positive) / min(positive) >= 20
        if spread and len(positive) < len(numbers):  # a 0 next to values spanning decades: evenly spaced ticks
            positions = {value_key(v): float(i) for i, v in enumerate(values)}
            ticks = {value_key(v): value_text(x, v) for v in values}
            return XAxis(positions, ticks, "category", value_key(apart[0]) if apart else None, len(numbers) - 0.5 if apart else None)
        positions = {value_key(v): float(v) for v in numbers}
        ticks: dict[str, str] = {}
        if x in VOCABULARY_AXES:  # name the vocabulary K-c at each tick
            k = {value_key(v): (v if x == "token_each" else study.fixed.get("token_each", data.baseline.get("token_each"))) for v in numbers}
            d = {value_key(v): (v if x == "code_dim" else study.fixed.get("code_dim", data.baseline.get("code_dim"))) for v in numbers}
            ticks = {key: f"{key}\n({vocabulary_label(k[key], d[key])})" for key in positions}
        scale = "log" if spread else "linear"
        if not apart:
            return XAxis(positions, ticks, scale)
        low, high = min(positions.values()), max(positions.values())
        if scale == "log":  # "all" a third of the numbers' span (in decades) to their right
            where, separator = high * (high / low) ** 0.35, high * (high / low) ** 0.175
        else:
            where, separator = high + 0.35 * (high - low), high + 0.175 * (high - low)
        key = value_key(apart[0])
        return XAxis({**positions, key: where}, {**ticks, key: ALL_LABEL}, scale, key, separator)
    labels = {value_key(v): value_text(x, v) for v in values}
    if x == SIZE:
        rows = _with_generator_columns(data.evaluations, data, ["parameter_count"])
        if "parameter_count" in rows and SIZE in rows:
            counts = rows.dropna(subset=["parameter_count"]).groupby(SIZE)["parameter_count"].median()
            for size, count in counts.items():
                if value_key(size) in labels:
                    labels[value_key(size)] += f"\n{_format_count(float(count))} params"
    return XAxis({value_key(v): float(i) for i, v in enumerate(values)}, labels, "category", ordinal=x == SIZE)


def ordered_values(study: StudyInfo, axis: str) -> list[Any]:
    """The values a study varies an axis over, in the report's order (tables and figures alike)."""
    return sorted(study.vary[axis], key=rank_key(axis, study.vary[axis]))


PANEL_CANDIDATES: tuple[str, ...] = ("fid", "inception_score", "class_accuracy")


def _panel_metrics(table: pd.DataFrame, x: str) -> list[Metric]:
    """FID, then IS, else class accuracy (the paper's pairs): those with values at >= 2 x values."""

    def spread(metric: str) -> int:
        column = f"{metric}_mean"
        return table.loc[table[column].notna(), x].map(value_key).nunique() if column in table else 0

    picked = [METRIC_BY_COLUMN["fid"]] if spread("fid") >= 2 else []
    for second in PANEL_CANDIDATES[1:]:
        if spread(second) >= 2:
            picked.append(METRIC_BY_COLUMN[second])
            break
    return picked


def axis_figures(data: ReportData, out: Path, palette: Palette, interval: Interval) -> list[FigureFile]:
    """Per study and x axis: the panel metrics vs the axis, one line per value of the other axes."""
    plt = None
    files = []
    candidates = tuple(m for m in available_metrics(data.evaluations) if m.column in PANEL_CANDIDATES)
    for study in data.studies:
        check = study_check(data, study)
        if data.refuse(check, study.name):
            continue
        for x in _x_axes(study):
            table = ablation_table(data.evaluations, study, study.varied, candidates, interval=interval, baseline=data.baseline)
            searched = table[table[SEARCHED]]  # the settings a search chose: stars, off the lines
            table = table[~table[SEARCHED]]
            metrics = _panel_metrics(table, x) if len(table) else []
            if not metrics:
                continue
            plt = plt or _pyplot()
            xaxis = _x_positions(study, x, data)
            positions = xaxis.positions
            legend_title, groups = _series(study, x, table, data)
            figure, axes = plt.subplots(1, len(metrics), figsize=(4.0 * len(metrics), 3.2), squeeze=False)
            for ax, metric in zip(axes[0], metrics):
                mean, half = f"{metric.column}_mean", f"{metric.column}_half"
                for line in groups:
                    rows = line.rows[line.rows[mean].notna()]
                    if rows.empty:
                        continue
                    rows = rows.assign(_x=rows[x].map(lambda v: positions.get(value_key(v), np.nan))).sort_values("_x")
                    colour = palette(line.colour_axis, line.colour_value) if line.colour_axis else palette("study", study.name)
                    apart = rows[x].map(value_key) == xaxis.apart  # the "all" point: no line to the numbers
                    joined = rows[~apart]
                    if len(joined):
                        ax.errorbar(
                            joined["_x"], joined[mean] * metric.scale, yerr=joined[half].fillna(0.0) * metric.scale,
                            marker="o", markersize=4, capsize=3, linewidth=1.5, color=colour, label=line.label or None,
                            linestyle="-" if xaxis.ordinal else "none",
                        )
                    if apart.any():
                        alone = rows[apart]
                        ax.errorbar(
                            alone["_x"], alone[mean] * metric.scale, yerr=alone[half].fillna(0.0) * metric.scale,
                            marker="o", markersize=4, capsize=3, linestyle="none", color=colour,
                            label=(line.label or None) if joined.empty else None,
                        )
                    base = rows[rows["baseline"]]
                    if len(base):
                        ax.scatter(base["_x"], base[mean] * metric.scale, s=90, facecolors="none", edgecolors="black", linewidths=1.0, zorder=5)
                stars = searched[searched[mean].notna()] if len(searched) else searched
                if len(stars):
                    ax.scatter(
                        stars[x].map(lambda v: positions.get(value_key(v), np.nan)), stars[mean] * metric.scale,
                        marker="*", s=110, color="black", zorder=6, label=f"chosen by search {SEARCH_MARK}",
                    )
                chance_line(ax, data, metric.column)
                if xaxis.scale == "log":
                    ax.set_xscale("log")
                if xaxis.separator is not None:
                    ax.axvline(xaxis.separator, color="0.6", linestyle=":", linewidth=1.0)
                ax.set_xticks(list(positions.values()), [xaxis.ticks.get(k, k) for k in positions])
                ax.minorticks_off()
                if xaxis.scale == "category":
                    ax.set_xlim(min(positions.values()) - 0.4, max(positions.values()) + 0.4)
                ax.margins(x=0.08)
                ax.set_xlabel(axis_label(x) + (" (vocabulary K-c)" if x in VOCABULARY_AXES else ""))
                ax.set_ylabel(METRIC_AXIS_LABELS.get(metric.column, metric.header))
            if legend_title is not None:  # one legend for all panels, right of them
                handles: dict[str, Any] = {}
                for ax in axes[0]:
                    for handle, label in zip(*ax.get_legend_handles_labels()):
                        handles.setdefault(label, handle)
                figure.legend(handles.values(), handles.keys(), title=legend_title, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
            if legend_title is None and (len(searched) or any(ax.get_legend_handles_labels()[1] for ax in axes[0])):
                for ax in axes[0]:  # the search's stars, the chance line: a legend in the panel that has them
                    if ax.get_legend_handles_labels()[1]:
                        ax.legend(frameon=False, loc="best")
            names = " and ".join(m.label for m in metrics)
            title = f"{study.name}: {names} vs {x}"
            figure.suptitle(title, fontsize=10)
            figure.tight_layout()
            caption = (
                f"{names} against {x} in study {study.name}"
                + (f", one line per {legend_title}" if legend_title else "")
                + f"; points are means over training seeds, bars the {_interval_words(interval)}; the ringed point is the baseline"
                + (f"; stars: the settings an Optuna search chose ({SEARCH_MARK}), re-evaluated on a fresh sampling seed." if len(searched) else ".")
                + _mixed(check)
            )
            files.append(_save(figure, out, f"{safe_name(study.name)}--{safe_name(x)}", title, caption, study.name))
    return files


def _interval_words(interval: Interval) -> str:
    return "Student-t 95% interval of the mean" if interval == "t95" else "sample standard deviation"


def _mixed(check: ProtocolCheck) -> str:
    """The caption's mark of a comparison drawn with --mix-protocols ("" when its rows share a protocol)."""
    return " " + check.mixed_note() if check.mixed else ""


# ---------------------------------------------------------------- FID over training steps (AR vs MLM)


def intermediate_rows(data: ReportData) -> pd.DataFrame:
    """Evaluations of intermediate checkpoints (any kind's rows with `intermediate` true), with a `step`."""
    frames = []
    for frame in data.rows.values():
        if frame is None or frame.empty or INTERMEDIATE_COLUMN not in frame:
            continue
        rows = frame[frame[INTERMEDIATE_COLUMN].fillna(False).astype(bool)]
        step = next((c for c in STEP_COLUMNS if c in rows), None)
        if step is None or rows.empty:
            continue
        frames.append(rows.assign(_step=pd.to_numeric(rows[step], errors="coerce")))
    if not frames:
        return pd.DataFrame()
    rows = pd.concat(frames, ignore_index=True)
    if "status" in rows:
        rows = rows[rows["status"].fillna("finished") == "finished"]
    return rows


def training_step_figure(data: ReportData, out: Path, palette: Palette, interval: Interval) -> list[FigureFile]:
    """FID of intermediate checkpoints over training steps, one line per modeling, a panel per size,
    from rows of the stages flagged `intermediate` (rows that name no study; see study_training_figures)."""
    rows = intermediate_rows(data)
    if rows.empty or "fid" not in rows or rows["_step"].nunique() < 2:
        return []
    check = check_protocols(rows, "figure training-steps", (), data.axis_stage)
    if data.refuse(check):
        return []
    rows = _with_generator_columns(rows, data, [MODELING, SIZE])
    rows = rows.assign(
        _modeling=rows[MODELING].astype(str) if MODELING in rows else "all",
        _size=rows[SIZE].astype(str) if SIZE in rows else "",
        fid=pd.to_numeric(rows["fid"], errors="coerce"),
    ).dropna(subset=["fid", "_step"])
    sizes = sorted(rows["_size"].unique(), key=_size_rank)
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(sizes), figsize=(4.0 * len(sizes), 3.2), squeeze=False, sharey=True)
    for ax, size in zip(axes[0], sizes):
        for modeling, group in rows[rows["_size"] == size].groupby("_modeling", sort=True):
            stats = group.groupby("_step")["fid"].agg(["mean", lambda v: interval_half_width(v, interval)]).reset_index()
            stats.columns = ["step", "mean", "half"]
            colour = palette(MODELING, modeling)
            ax.plot(stats["step"], stats["mean"], marker="o", markersize=3, color=colour, label=str(modeling).upper())
            ax.fill_between(stats["step"], stats["mean"] - stats["half"].fillna(0), stats["mean"] + stats["half"].fillna(0), color=colour, alpha=0.15, linewidth=0)
        ax.set_title(f"size {size}" if size else "")
        ax.set_xlabel("generator training step")
    axes[0][0].set_ylabel("FID ↓")
    axes[0][-1].legend(title=MODELING, frameon=False)
    title = "FID over training steps: AR vs MLM"
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    caption = f"FID of checkpoints evaluated during training, per modeling (bands: {_interval_words(interval)} over training seeds)." + _mixed(check)
    return [_save(figure, out, "training-steps", title, caption, None)]


def _line_label(axis: str, value: Any) -> str:
    return str(value).upper() if axis == MODELING else value_key(value)


def _vary_rank(study: StudyInfo, axis: str, value: Any) -> tuple:
    """Where a value stands in the report's order of the axis (reports.order: numbers ascending, names
    in spec order, "all" last)."""
    return rank_key(axis, study.vary.get(axis, ()))(value)


def study_training_figures(data: ReportData, out: Path, palette: Palette, interval: Interval) -> list[FigureFile]:
    """Per study with intermediate evaluations (`data.intermediate`, from Results.intermediate()): FID vs
    generator training step, one line per cell of the study's varied generator-side axes (e.g. AR vs
    MLM), the mean over training seeds with a band when there are several.

    A study that varies only sampling axes shares its generators with the others: it draws no figure
    (one line per generator would repeat in every sampling study). Intermediate rows never meet the
    final evaluations; their protocol (often a cheaper one) must agree within the figure."""
    rows = data.intermediate
    if rows is None or rows.empty or "study" not in rows or "fid" not in rows:
        return []
    step = next((c for c in STEP_COLUMNS if c in rows), None)
    if step is None:
        return []
    rows = rows.assign(_step=pd.to_numeric(rows[step], errors="coerce"), fid=pd.to_numeric(rows["fid"], errors="coerce"))
    if "status" in rows:
        rows = rows[rows["status"].fillna("finished") == "finished"]
    rows = rows.dropna(subset=["_step", "fid"])
    key = next((c for c in ("generator_key", "key") if c in rows), None)
    files = []
    for study in data.studies:
        part = rows[rows["study"] == study.name]
        cells = [a for a in study.varied if a in part and data.axis_stage.get(a) != "evaluation"]
        if part.empty or not cells or part["_step"].nunique() < 2:
            continue
        name = f"{safe_name(study.name)}--training-steps"
        check = check_protocols(part, f"figure {name}", study.varied, data.axis_stage)
        if data.refuse(check, study.name):
            continue
        plt = _pyplot()
        figure, ax = plt.subplots(figsize=(5.0, 3.4))
        groups = list(part.groupby(cells, sort=False, dropna=False))
        groups.sort(key=lambda item: [_vary_rank(study, a, v) for a, v in zip(cells, item[0] if isinstance(item[0], tuple) else (item[0],))])
        several = False
        for values, group in groups:
            values = values if isinstance(values, tuple) else (values,)
            if len(cells) == 1:
                label, colour = _line_label(cells[0], values[0]), palette(cells[0], value_key(values[0]))
            else:
                label = ", ".join(f"{a}={value_key(v)}" for a, v in zip(cells, values))
                colour = palette("series", label)
            seeds = group[key].nunique() if key else 1
            stats = group.groupby("_step")["fid"].agg(["mean", lambda v: interval_half_width(v, interval)]).reset_index()
            stats.columns = ["step", "mean", "half"]
            ax.plot(stats["step"], stats["mean"], marker="o", markersize=3, color=colour, linewidth=1.5, label=f"{label} ({seeds} seed{'s' * (seeds > 1)})")
            if seeds > 1:
                several = True
                half = stats["half"].fillna(0)
                ax.fill_between(stats["step"], stats["mean"] - half, stats["mean"] + half, color=colour, alpha=0.15, linewidth=0)
        ax.set_xlabel("generator training step")
        ax.set_ylabel(METRIC_AXIS_LABELS["fid"])
        ax.legend(title=", ".join(cells), frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
        title = f"{study.name}: FID over training"
        ax.set_title(title)
        figure.tight_layout()
        caption = (
            f"FID of generator checkpoints evaluated during training in study {study.name}, one line per "
            f"{', '.join(cells)}; lines are means over training seeds"
            + (f", bands the {_interval_words(interval)}" if several else "")
            + ". Checkpoint evaluations, not the final ones of the table." + _mixed(check)
        )
        files.append(_save(figure, out, name, title, caption, study.name))
    return files


# ---------------------------------------------------------------- search traces


def search_figures(data: ReportData, out: Path, palette: Palette, interval: Interval) -> list[FigureFile]:
    """Per Optuna search (`search_point` rows of one `search_id`): its metric per point in the order
    tried, the best so far as a step line, the best point starred (its settings are the `searched` row)."""
    points = search_points(data)
    if points.empty or SEARCH_ID not in points:
        return []
    files = []
    studies = {s.name: s for s in data.studies}
    for search_id, trace in points.groupby(points[SEARCH_ID].astype(str), sort=True):
        study = _study_of_search(data, trace, search_id)
        info = studies.get(study) if study else None
        column = (
            str(trace["search_metric"].dropna().iloc[0]) if "search_metric" in trace and trace["search_metric"].notna().any()
            else (info.search.get("metric") if info is not None and info.search.get("metric") else "fid")
        )
        direction = _search_direction(column)
        known = METRIC_BY_NAME.get(column)
        names = (column, known.column, *known.aliases) if known else (column,)
        column = next((c for c in names if c in trace), None)
        if column is None:
            continue
        metric = known or Metric(column, column, higher_is_better=direction == "max", digits=3)
        index = pd.to_numeric(trace[SEARCH_INDEX], errors="coerce") if SEARCH_INDEX in trace else pd.Series(range(len(trace)), index=trace.index)
        trace = trace.assign(_index=index, _value=pd.to_numeric(trace[column], errors="coerce")).sort_values("_index")
        scored = trace.dropna(subset=["_index", "_value"])
        if scored.empty:
            continue
        name = f"search-{safe_name(search_id)}"
        check = check_protocols(trace, f"figure {name}", (), data.axis_stage)
        if data.refuse(check, study):
            continue
        best_so_far = scored["_value"].cummax() if metric.higher_is_better else scored["_value"].cummin()
        best = scored.loc[scored["_value"].idxmax() if metric.higher_is_better else scored["_value"].idxmin()]
        searched = comparable_rows(data.evaluations)
        searched = searched[flagged(searched, SEARCHED)]
        if SEARCH_ID in searched:
            searched = searched[searched[SEARCH_ID].astype(str) == search_id]
        summary = search_summary(data, searched if len(searched) else trace, info)
        axes = [a for a in (summary.axes if summary else ()) if a in best]
        chosen = ", ".join(f"{a}={format_chosen(best[a])}" for a in axes)
        plt = _pyplot()
        figure, ax = plt.subplots(figsize=(4.8, 3.2))
        colour = palette("study", study) if study else CYCLE_GREY
        ax.scatter(scored["_index"], scored["_value"] * metric.scale, s=14, color=colour, alpha=0.8, zorder=3, label="point")
        ax.step(scored["_index"], best_so_far * metric.scale, where="post", color="black", linewidth=1.3, label="best so far")
        ax.scatter([best["_index"]], [best["_value"] * metric.scale], marker="*", s=140, color="black", zorder=5, label="chosen " + SEARCH_MARK)
        chance_line(ax, data, metric.column)
        ax.xaxis.set_major_locator(_integer_locator())
        ax.set_xlabel("search point (order tried)")
        ax.set_ylabel(METRIC_AXIS_LABELS.get(metric.column, metric.header) + " (search protocol)")
        ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
        title = f"Search {search_id[:12]}: {metric.label} per point"
        ax.set_title(title)
        figure.tight_layout()
        caption = (
            f"The {len(scored)} scored points of Optuna search {search_id}"
            + (f" over {', '.join(summary.axes)}" if summary and summary.axes else "")
            + (f" in study {study}" if study else "")
            + f": {metric.label} of each point on the search's protocol, in the order tried; the line is the best so far, "
            f"the star the best point{f' ({chosen})' if chosen else ''}, whose settings were re-evaluated on a fresh sampling "
            f"seed for the table ({SEARCH_MARK})." + _mixed(check)
        )
        files.append(_save(figure, out, name, title, caption, study))
    return files


CYCLE_GREY = "#555555"


def _search_direction(metric: str) -> str | None:
    """"min" or "max": which value of a search metric is better (space.schema.SEARCH_METRICS)."""
    from space import schema

    return getattr(schema, "SEARCH_METRICS", {}).get(metric)


def _integer_locator() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _study_of_search(data: ReportData, trace: pd.DataFrame, search_id: str) -> str | None:
    """The study a search belongs to: its points' `study`, else its searched rows' (None: unknown or several)."""
    names = set(trace["study"].dropna().astype(str)) if "study" in trace else set()
    if not names and SEARCH_ID in data.evaluations and "study" in data.evaluations:
        rows = data.evaluations[data.evaluations[SEARCH_ID].astype(str) == search_id]
        names = set(rows["study"].dropna().astype(str))
    known = {s.name for s in data.studies}
    return next(iter(names)) if len(names) == 1 and names <= known else None


# ---------------------------------------------------------------- training losses per size


def loss_figure(data: ReportData, out: Path, palette: Palette, interval: Interval) -> list[FigureFile]:
    """Generator training losses: a panel per vocabulary (losses of different vocabularies are not
    comparable: ln|V| differs), a colour per size, mean over seeds with a min-max band."""
    losses = data.losses
    generators = data.rows.get("generator")
    if losses is None or losses.empty or generators is None or generators.empty or not {"key", "step", "loss"} <= set(losses.columns):
        return []
    losses = losses[losses["kind"] == "generator"] if "kind" in losses else losses
    if "generator_key" in data.evaluations:
        losses = losses[losses["key"].isin(set(data.evaluations["generator_key"].dropna()))]
    if losses.empty:
        return []
    info = generators.drop_duplicates("key").set_index("key")
    generator_axes = [a for a, kind in data.axis_stage.items() if kind == "generator" and a in info.columns]
    differing = [a for a in generator_axes if info.loc[info.index.isin(losses["key"]), a].map(value_key).nunique() > 1]
    panel_axes = [a for a in (MODELING, *VOCABULARY_AXES, "tokenizer") if a in info.columns]
    line_axes = [a for a in differing if a not in panel_axes and a != "seed"]
    colour_axis = SIZE if SIZE in info.columns else (line_axes[0] if line_axes else None)

    def panel_of(key: str) -> str:
        row = info.loc[key]
        parts = []
        if MODELING in info and info[MODELING].nunique() > 1:
            parts.append(str(row[MODELING]).upper())
        if "tokenizer" in info and info["tokenizer"].nunique() > 1:
            parts.append(str(row["tokenizer"]))
        if "token_each" in info and "code_dim" in info:
            parts.append(f"vocabulary {vocabulary_label(row['token_each'], row['code_dim'])}")
        return ", ".join(parts) or "all generators"

    def line_of(key: str) -> tuple[str, ...]:
        row = info.loc[key]
        axes = [colour_axis] if colour_axis else []
        axes += [a for a in line_axes if a != colour_axis]
        return tuple(f"{a}={value_key(row[a])}" for a in axes)

    losses = losses.assign(_panel=losses["key"].map(panel_of), _line=losses["key"].map(line_of))
    panels = list(dict.fromkeys(losses.sort_values("key")["_panel"]))
    panels.sort()
    plt = _pyplot()
    columns = min(3, len(panels))
    rows_n = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows_n, columns, figsize=(4.0 * columns, 3.0 * rows_n), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, panel in zip(axes.flat, panels):
        part = losses[losses["_panel"] == panel]
        lines = sorted(part["_line"].unique(), key=lambda line: (_size_rank(line[0].split("=", 1)[1]) if line else (0, ""), line))
        styles_used: dict[str, int] = {}
        for line in lines:
            group = part[part["_line"] == line]
            per_step = group.groupby("step")["loss"]
            mean, low, high = per_step.mean(), per_step.min(), per_step.max()
            window = max(1, len(mean) // 50)  # light smoothing for long runs; short runs stay raw
            mean = mean.rolling(window, min_periods=1).mean()
            colour_value = line[0].split("=", 1)[1] if line else panel
            colour = palette(colour_axis or "panel", colour_value)
            style = styles[styles_used.get(colour_value, 0) % len(styles)]  # same colour, other settings: other dash
            styles_used[colour_value] = styles_used.get(colour_value, 0) + 1
            seeds = group["key"].nunique()
            label = ", ".join([colour_value, *line[1:]]) if line else "loss"
            ax.plot(mean.index, mean.values, color=colour, linestyle=style, linewidth=1.5, label=f"{label} ({seeds} seed{'s' * (seeds > 1)})")
            if seeds > 1:
                ax.fill_between(low.index, low.values, high.values, color=colour, alpha=0.15, linewidth=0)
        keys = part["key"].unique()
        if "uniform_loss" in info:
            uniform = info.loc[keys, "uniform_loss"].dropna().unique()
            if len(uniform) == 1:
                ax.axhline(float(uniform[0]), color="0.5", linestyle="--", linewidth=1, label="uniform (ln |V|)")
        ax.set_title(panel)
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (nats per sub-token)")
        ax.legend(title=SIZE if colour_axis == SIZE else colour_axis, frameon=False, loc="upper right")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    title = "Generator training loss per size"
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    caption = (
        "Training loss of the generators, one panel per vocabulary (losses of different vocabularies are not "
        "comparable), one colour per size; lines are means over training seeds, bands their min-max; dashed grey: "
        "the loss of a uniform guess."
    )
    return [_save(figure, out, "training-loss", title, caption, None)]


# ---------------------------------------------------------------- analyses


def analysis_rows(data: ReportData, name: str) -> pd.DataFrame:
    """Rows of any kind with `analysis == name` (a future `analysis` stage kind), finished only."""
    frames = [f[f["analysis"] == name] for f in data.rows.values() if f is not None and not f.empty and "analysis" in f]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    rows = pd.concat(frames, ignore_index=True)
    if "status" in rows:
        rows = rows[rows["status"].fillna("finished") == "finished"]
    return rows


def token_randomness_figure(data: ReportData, out: Path, palette: Palette, interval: Interval) -> list[FigureFile]:
    """Bars of KL(p || uniform) per subject (BAE tokens, VQ tokens, text), a bar per n-gram order if
    the rows say, with the finite-sample floor (the KL a truly uniform sample of that size shows)."""
    rows = analysis_rows(data, "token_randomness")
    if rows.empty or not {"subject", "kl"} <= set(rows.columns):
        return []
    order_column = next((c for c in ("order", "ngram", "n_gram") if c in rows), None)
    rows = rows.assign(kl=pd.to_numeric(rows["kl"], errors="coerce"), _order=rows[order_column].astype(str) if order_column else "")
    subjects = list(dict.fromkeys(rows["subject"].astype(str)))
    orders = list(dict.fromkeys(rows["_order"]))
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(subjects) * max(1, len(orders)) ** 0.5 + 1.5), 3.2))
    width = 0.8 / len(orders)
    labelled: set[str] = set()
    for j, order in enumerate(orders):
        for i, subject in enumerate(subjects):
            group = rows[(rows["subject"].astype(str) == subject) & (rows["_order"] == order)]
            if group.empty:
                continue
            x = i + (j - (len(orders) - 1) / 2) * width
            colour = palette(order_column, order) if order_column else palette("subject", subject)
            half = interval_half_width(group["kl"].dropna(), interval)
            label = order if order_column and order not in labelled else None
            labelled.add(order)
            ax.bar(x, group["kl"].mean(), width=width * 0.9, color=colour, yerr=None if math.isnan(half) else half, capsize=3, label=label)
            if "uniform_floor_kl" in group:
                floor = pd.to_numeric(group["uniform_floor_kl"], errors="coerce").mean()
                if not math.isnan(floor):
                    label = "uniform floor (same sample size)" if "floor" not in labelled else None
                    labelled.add("floor")
                    ax.plot([x - width * 0.45, x + width * 0.45], [floor, floor], color="black", linewidth=2, label=label)
    values = pd.concat([rows["kl"], pd.to_numeric(rows.get("uniform_floor_kl", pd.Series(dtype=float)), errors="coerce")]).dropna()
    positive = values[values > 0]
    if len(positive) and positive.max() / positive.min() > 100:
        ax.set_yscale("log")
    ax.set_xticks(range(len(subjects)), subjects)
    ax.set_xlabel("token source")
    ax.set_ylabel("KL(p ‖ uniform) = log|V| − H(p) (nats)")
    ax.legend(title=order_column, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))  # outside: never over a bar
    title = "Token randomness: distance from uniform"
    ax.set_title(title)
    figure.tight_layout()
    caption = (
        "KL divergence of the token distribution from uniform per token source"
        + (f" and {order_column}" if order_column else "")
        + "; black ticks: the KL a uniform sample of the same size shows (the estimator's floor). Image tokens near "
        "the floor are close to random."
    )
    return [_save(figure, out, "token-randomness", title, caption, None)]


def attention_locality_figure(data: ReportData, out: Path, palette: Palette, interval: Interval) -> list[FigureFile]:
    """Attention mass inside a local neighbourhood per layer, a line per size (and mean attention
    distance when the rows carry it)."""
    rows = analysis_rows(data, "attention_locality")
    if rows.empty or not {"layer", "local_mass"} <= set(rows.columns):
        return []
    rows = _with_generator_columns(rows, data, [SIZE])
    rows = rows.assign(_size=rows[SIZE].astype(str) if SIZE in rows else "all")
    panels = [c for c in ("local_mass", "mean_distance") if c in rows]
    ylabels = {
        "local_mass": "local attention mass (share)",
        "mean_distance": "mean attention distance (positions)",
    }
    window = next((c for c in ("neighbourhood", "window", "k", "locality_k") if c in rows), None)
    if window:
        side = value_key(rows[window].iloc[0])
        ylabels["local_mass"] = f"attention mass in {side}×{side} (share)"
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.2), squeeze=False)
    for ax, column in zip(axes[0], panels):
        for size in sorted(rows["_size"].unique(), key=_size_rank):
            group = rows[rows["_size"] == size].assign(_v=lambda f: pd.to_numeric(f[column], errors="coerce"))
            stats = group.groupby("layer")["_v"].agg(["mean", lambda v: interval_half_width(v.dropna(), interval)]).reset_index()
            stats.columns = ["layer", "mean", "half"]
            colour = palette(SIZE, size)
            ax.plot(stats["layer"], stats["mean"], marker="o", markersize=3, color=colour, label=size)
            ax.fill_between(stats["layer"], stats["mean"] - stats["half"].fillna(0), stats["mean"] + stats["half"].fillna(0), color=colour, alpha=0.15, linewidth=0)
            chance = f"uniform_{column}"  # the same measure for uniform attention: the chance level
            if chance in group:
                level = group.assign(_c=pd.to_numeric(group[chance], errors="coerce")).groupby("layer")["_c"].mean()
                ax.plot(level.index, level.values, color=colour, linestyle=":", linewidth=1.2)
        ax.xaxis.set_major_locator(_integer_locator())  # layers are whole numbers: no 0.5 ticks
        ax.set_xlabel("layer (0 = first)")
        ax.set_ylabel(ylabels[column])
    handles, labels = axes[0][0].get_legend_handles_labels()
    if any(f"uniform_{c}" in rows for c in panels):  # one grey proxy for the dotted chance levels of every size
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="0.4", linestyle=":", linewidth=1.2))
        labels.append("uniform attention (chance)")
    axes[0][-1].legend(handles, labels, title=SIZE, frameon=False, loc="best")
    title = "Attention locality per layer"
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    caption = "Head-averaged attention per layer and generator size: the share of attention mass on nearby latent positions" + (
        " and the mean attention distance" if "mean_distance" in panels else ""
    ) + ("; dotted: the same for uniform attention (chance level)." if any(f"uniform_{c}" in rows for c in panels) else ".")
    return [_save(figure, out, "attention-locality", title, caption, None)]


# ---------------------------------------------------------------- trade-off


def tradeoff_figure(data: ReportData, out: Path, palette: Palette, interval: Interval) -> list[FigureFile]:
    """FID against IS (or class accuracy) of every grid point, a colour per study, the baseline ringed."""
    available = [m.column for m in available_metrics(data.evaluations)]
    other = next((c for c in ("inception_score", "class_accuracy") if c in available), None)
    if "fid" not in available or other is None:
        return []
    pair = (METRIC_BY_COLUMN["fid"], METRIC_BY_COLUMN[other])
    studies = [s for s in data.studies if not data.refuse(study_check(data, s), s.name)]  # a refused study is in no figure
    tables = [(s, ablation_table(data.evaluations, s, s.varied, pair, interval=interval, baseline=data.baseline)) for s in studies]
    points = sum(int((t["fid_mean"].notna() & t[f"{other}_mean"].notna()).sum()) for _, t in tables)
    if points < 2:
        return []
    # one figure compares every study's points: they too must share a protocol
    shown = pd.concat([study_rows(data, s) for s in studies], ignore_index=True)
    check = check_protocols(shown, "figure tradeoff (all studies)", sorted({a for s in studies for a in s.varied}), data.axis_stage)
    if data.refuse(check):
        return []
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6.0, 4.2))
    annotated: set[tuple[float, float]] = set()  # a point shared by studies (the baseline) is labelled once
    annotated_text: set[str] = set()
    other_metric = METRIC_BY_COLUMN[other]
    for study, table in tables:
        table = table[table["fid_mean"].notna() & table[f"{other}_mean"].notna()]
        if table.empty:
            continue
        colour = palette("study", study.name)
        ax.errorbar(  # points only: a line would join settings that are no sequence (and studies to each other)
            table[f"{other}_mean"] * other_metric.scale, table["fid_mean"],
            xerr=table[f"{other}_half"].fillna(0) * other_metric.scale, yerr=table["fid_half"].fillna(0),
            color=colour, marker="o", markersize=5, capsize=2, linestyle="none", elinewidth=0.8,
            label=f"{study.name} ({', '.join(study.varied)})",
        )
        for row in table.to_dict("records"):
            where = (round(row[f"{other}_mean"], 9), round(row["fid_mean"], 9))
            if where in annotated:
                continue
            annotated.add(where)
            if row["baseline"] and "baseline" in annotated_text:
                continue  # the ring marks it; one label is enough
            text = "baseline" if row["baseline"] else ", ".join(setting_text(a, row[a]) for a in study.varied)
            annotated_text.add(text)
            if row[SEARCHED]:
                text = f"{text or 'chosen'} {SEARCH_MARK}"
            ax.annotate(
                text, (row[f"{other}_mean"] * other_metric.scale, row["fid_mean"]), textcoords="offset points",
                xytext=(7, -11) if row["baseline"] else (5, 4), fontsize=7, color="black" if row["baseline"] else colour,
            )
        base = table[table["baseline"]]
        if len(base):
            ax.scatter(base[f"{other}_mean"] * other_metric.scale, base["fid_mean"], s=110, facecolors="none", edgecolors="black", linewidths=1.0, zorder=5)
    chance_line(ax, data, other, vertical=True)
    ax.set_xlabel(METRIC_AXIS_LABELS[other])
    ax.set_ylabel(METRIC_AXIS_LABELS["fid"])
    ax.margins(x=0.18, y=0.08)  # room for the labels right of the points
    ax.legend(title="study (axes)", frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below: never over a label
    title = f"Trade-off: FID vs {pair[1].label}"
    ax.set_title(title)
    figure.tight_layout()
    caption = (
        f"Every grid point of every study: FID against {pair[1].label} (means over training seeds, bars the "
        f"{_interval_words(interval)}); a colour per study, points labelled axis=value, the ringed point the baseline"
        + (f", {SEARCH_MARK} settings an Optuna search chose" if any(t[SEARCHED].any() for _, t in tables) else "")
        + (f"; dashed: chance (1/{data.num_classes})" if other == "class_accuracy" and data.num_classes else "")
        + ". Down and to the right is better."
        + _mixed(check)
    )
    return [_save(figure, out, "tradeoff", title, caption, None)]


FigureBuilder = Callable[[ReportData, Path, Palette, Interval], list[FigureFile]]
FIGURES: dict[str, FigureBuilder] = {
    "axis": axis_figures,
    "training_steps": training_step_figure,
    "study_training_steps": study_training_figures,
    "search_traces": search_figures,
    "training_loss": loss_figure,
    "token_randomness": token_randomness_figure,
    "attention_locality": attention_locality_figure,
    "tradeoff": tradeoff_figure,
}


def report_palette(data: ReportData) -> Palette:
    """One palette for a report: every value of every varied axis, sizes, modelings, studies."""
    values: dict[str, set[Any]] = {}
    for study in data.studies:
        for axis, axis_values in study.vary.items():
            values.setdefault(axis, set()).update(value_key(v) for v in axis_values)
    for axis in (SIZE, MODELING):
        if axis in data.evaluations:
            values.setdefault(axis, set()).update(value_key(v) for v in data.evaluations[axis].dropna().unique())
    return Palette(values, ordered={"study": [s.name for s in data.studies]})  # studies: distinct, in spec order


def make_figures(data: ReportData, out: Path, palette: Palette | None = None, interval: Interval = "std") -> list[FigureFile]:
    """Every figure whose data exists, written under `out` as PNG and PDF."""
    palette = palette or report_palette(data)
    files: list[FigureFile] = []
    for builder in FIGURES.values():
        files += builder(data, out, palette, interval)
    return files

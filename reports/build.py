"""A run folder's report: tables per study, figures, sample grids, as Markdown, HTML, LaTeX and CSV.

    <out>/report.md              tables + links to everything below
    <out>/report.html            one self-contained page (every image embedded, opens offline)
    <out>/tables/<study>.csv     full-precision numbers of each study table, in the metrics' own units:
                                 <metric> (mean over seeds), <metric>_std, <metric>_ci95 (--interval
                                 t95), <metric>_n per metric (reports.tables.csv_frame)
    <out>/tables/<study>.tex     booktabs table floats; tables/tables.tex compiles standalone
    <out>/figures/<name>.png|pdf figures whose data exists (reports.figures)
    <out>/grids/trial-<evaluation_key>.png   samples of one evaluation, a row per class, titled with its settings
    <out>/grids/compare-<study>.png          the trials of a study side by side, same classes and seed

Entry point: `write_report(results, out)`; `build_report(data, out)` takes a `ReportData`.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.figures import FigureFile, make_figures, report_palette, safe_name
from reports.grids import SAMPLES_FILE, choose_classes, compare_grid, read_samples, trial_grid
from reports.html import Picture, StudySection, report_html
from reports.latex import latex_document, latex_table
from reports.markdown import escape_markdown, markdown_study, refusal_markdown
from reports.order import rank_key, setting_text
from reports.protocols import Refusal
from reports.tables import (
    INTERVALS,
    Interval,
    ReportData,
    StudyInfo,
    StudyTable,
    comparable_rows,
    csv_frame,
    is_baseline,
    protocol_provenance,
    study_table,
)

FORMATS: tuple[str, ...] = ("md", "html", "latex", "csv")
TRIAL_GRID_PER_CLASS = 8
COMPARE_PER_CLASS = 4


@dataclass
class Grids:
    """Sample grids written for a report."""

    trials: dict[str, Picture] = field(default_factory=dict)  # evaluation_key -> grid
    compare: dict[str, Picture] = field(default_factory=dict)  # study -> side-by-side grid


def _write_text(path: Path, text: str) -> None:
    """Write under a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _samples_path(data: ReportData, key: Any) -> Path | None:
    """An evaluation's samples in the run's store: `<run>/stages`, or the `--store` the run was given."""
    if data.run_dir is None or not isinstance(key, str) or not key:
        return None
    stages = Path(data.store_root) if data.store_root else Path(data.run_dir) / "stages"
    path = stages / "evaluation" / key / SAMPLES_FILE
    return path if path.is_file() else None


def _point_text(row: dict[str, Any], axes: list[str]) -> str:
    """The settings of a trial as `axis=value, ...` (top_k=all)."""
    return ", ".join(setting_text(a, row[a]) for a in axes if a in row)


def in_axis_order(rows: pd.DataFrame, study: StudyInfo) -> pd.DataFrame:
    """Rows sorted like the study's table (reports.order), then by seed; a stable sort."""
    axes = [a for a in study.varied if a in rows]
    if rows.empty or not axes:
        return rows
    keys = {a: rank_key(a, study.vary.get(a, ())) for a in axes}
    order = sorted(range(len(rows)), key=lambda i: tuple(keys[a](rows.iloc[i][a]) for a in axes))
    return rows.iloc[order]


def _trial_axes(data: ReportData, key: str) -> list[str]:
    """The axes a trial's settings are told by: those varied by every study its evaluation belongs to
    (the baseline's evaluation is in several studies), in study order."""
    rows = data.evaluations[data.evaluations["evaluation_key"] == key]
    names = set(rows["study"]) if "study" in rows else set()
    axes: list[str] = []
    for study in data.studies:
        if study.name in names:
            axes += [a for a in study.varied if a not in axes]
    return axes


def make_grids(data: ReportData, out: Path) -> Grids:
    """A grid per finished evaluation with samples (titled with its settings), and per study the
    side-by-side comparison of its grid points for the training seed with the most finished points
    (same classes, same sampling seed)."""
    grids = Grids()
    evaluations = comparable_rows(data.evaluations)
    if data.run_dir is None or "evaluation_key" not in evaluations:
        return grids
    done = evaluations[evaluations["status"] == "finished"]
    for study in data.studies:
        rows = in_axis_order(done[done["study"] == study.name], study)
        for row in rows.to_dict("records"):
            key = row["evaluation_key"]
            path = _samples_path(data, key)
            if path is None or key in grids.trials:
                continue
            target = out / f"trial-{safe_name(key)}.png"
            settings = _point_text(row, _trial_axes(data, key))
            base = " (baseline)" if _is_baseline_row(row, study, data) else ""
            title = f"{settings}{base}, training seed {row.get('seed')}"
            _, classes = trial_grid(path, target, per_class=_per_class(path, TRIAL_GRID_PER_CLASS), title=title)
            caption = (
                f"{title} (evaluation {key}): rows are classes {', '.join(str(int(c)) for c in classes)} top to bottom."
            )
            grids.trials[key] = Picture(target, caption, f"samples of {settings}")
        if rows.empty or "seed" not in rows or not study.varied:  # a search-only study has no points to set side by side
            continue
        with_samples = rows[rows["evaluation_key"].map(lambda k: _samples_path(data, k) is not None)]
        if with_samples.empty:
            continue
        counts = with_samples.groupby("seed").size()
        seed = sorted(counts.index, key=lambda s: (-counts[s], s))[0]
        chosen = with_samples[with_samples["seed"] == seed].drop_duplicates(study.varied)
        if len(chosen) < 2:
            continue
        first = _samples_path(data, chosen.iloc[0]["evaluation_key"])
        _, labels = read_samples(first, None, 1)
        classes = choose_classes(labels)
        panels = []
        per_class = min(_per_class(_samples_path(data, k), COMPARE_PER_CLASS) for k in chosen["evaluation_key"])
        for row in chosen.to_dict("records"):
            images, _ = read_samples(_samples_path(data, row["evaluation_key"]), classes, per_class)
            label = _point_text(row, study.varied) + (" †" if _is_baseline_row(row, study, data) else "")
            panels.append((label.replace(", ", "\n"), images))
        sampling = sorted({str(s) for s in chosen.get("sampling_seed", pd.Series(dtype=object)).dropna()})
        seeds_text = f"training seed {seed}" + (f", sampling seed {sampling[0]}" if len(sampling) == 1 else "")
        title = f"{study.name}: first {per_class} samples per class, {seeds_text}"
        target = out / f"compare-{safe_name(study.name)}.png"
        compare_grid(panels, classes, target, title)
        caption = (
            f"The grid points of study {study.name} side by side ({seeds_text}): the same classes (rows) and the "
            f"first {per_class} samples of each; † marks the baseline."
        )
        grids.compare[study.name] = Picture(target, caption, f"samples of study {study.name}")
    return grids


def _per_class(path: Path | None, cap: int) -> int:
    """Columns of a grid: `cap`, or fewer when every class has fewer samples."""
    if path is None:
        return cap
    with zipfile.ZipFile(path) as archive, archive.open("labels.npy") as stream:
        labels = np.lib.format.read_array(stream)
    if labels.size == 0:
        return 1
    return max(1, min(cap, int(np.bincount(labels - labels.min()).max())))


def _is_baseline_row(row: dict[str, Any], study: StudyInfo, data: ReportData) -> bool:
    return is_baseline({a: row[a] for a in study.varied if a in row}, study, data.baseline)


def _failures(evaluations: pd.DataFrame) -> list[str]:
    if "status" not in evaluations or "evaluation_key" not in evaluations:
        return []
    failed = evaluations[evaluations["status"].isin(["failed", "skipped"])]
    out = []
    for _, row in failed.drop_duplicates("evaluation_key").iterrows():
        error = row.get("error", "")
        out.append(f"{row['evaluation_key']} ({row['status']}): {'' if pd.isna(error) else error}")
    return out


def _provenance(data: ReportData) -> list[str]:
    rows = data.evaluations
    lines = []
    if "status" in rows:
        counts = rows.drop_duplicates("evaluation_key")["status"].value_counts() if "evaluation_key" in rows else rows["status"].value_counts()
        lines.append("Evaluations: " + ", ".join(f"{int(n)} {status}" for status, n in counts.items()) + ".")
    if "code" in rows:  # `git <commit>` in a checkout, else the installed `elm-sweep==<version>` (sweep.worker.provenance)
        for code in rows["code"].dropna().unique():
            lines.append(f"Code: {code}.")
    elif "git_commit" in rows:  # rows written before the `code` column
        commits = rows[rows["git_commit"].fillna("").astype(str) != ""]
        for commit, group in commits.groupby("git_commit"):
            dirty = " (uncommitted changes)" if "git_dirty" in group and group["git_dirty"].fillna(False).astype(bool).any() else ""
            lines.append(f"Code: git {str(commit)[:12]}{dirty}.")
    if "versions" in rows:
        for versions in rows["versions"].dropna().unique():
            lines.append(f"Versions: {versions}.")
    lines += protocol_provenance(comparable_rows(rows))
    return lines


def _figure_markdown(figure: FigureFile, base: Path) -> str:
    png, pdf = figure.png.relative_to(base).as_posix(), figure.pdf.relative_to(base).as_posix()
    return f"![{escape_markdown(figure.title)}]({png})  \n_{escape_markdown(figure.caption)}_ ([PDF]({pdf}))"


def _picture_markdown(picture: Picture, base: Path) -> str:
    return f"![{escape_markdown(picture.alt)}]({picture.path.relative_to(base).as_posix()})  \n_{escape_markdown(picture.caption)}_"


def build_report(
    data: ReportData,
    out: Path,
    formats: tuple[str, ...] = FORMATS,
    *,
    interval: Interval = "std",
    figures: bool = True,
    grids: bool = True,
    mix_protocols: bool = False,
    refusals: list[Refusal] | None = None,
) -> str:
    """Write the report files for `formats` under `out`; return the Markdown (also when "md" is not
    among the formats). Figures and grids are written when `figures` / `grids` (and their data) exist.

    A comparison whose finished rows mix evaluation protocols (reports.protocols) is not drawn: its
    study shows the reason instead of a table (no CSV or LaTeX for it), the report opens with a "Not
    compared" section, and each refusal is appended to `refusals` when a list is given.
    `mix_protocols` draws such comparisons anyway, marked in their footnotes and captions."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"formats must be among {FORMATS}, but got {unknown}; e.g. formats=('md', 'html')")
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, but got {interval!r}; use 'std' or 't95'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = replace(data, mix_protocols=data.mix_protocols or mix_protocols, refusals=[])  # a fresh log per report
    tables: list[StudyTable] = [study_table(data, study, interval) for study in data.studies]
    figure_files = make_figures(data, out / "figures", report_palette(data), interval) if figures else []
    grid_files = make_grids(data, out / "grids") if grids else Grids()

    csv_texts: dict[str, str] = {}
    latex_texts: dict[str, str] = {}
    for table in tables:
        stem = safe_name(table.study.name)
        if table.refusal is not None:  # not compared: no table file (and none left from an earlier report)
            for suffix in (".csv", ".tex"):
                (out / "tables" / f"{stem}{suffix}").unlink(missing_ok=True)
            continue
        if "csv" in formats:
            csv_texts[table.study.name] = csv_frame(table).to_csv(index=False)
            _write_text(out / "tables" / f"{stem}.csv", csv_texts[table.study.name])
        if "latex" in formats:
            latex_texts[table.study.name] = latex_table(table)
            _write_text(out / "tables" / f"{stem}.tex", latex_texts[table.study.name])
    if "latex" in formats:
        _write_text(out / "tables" / "tables.tex", latex_document(tables, data.name))

    by_study: dict[str | None, list[FigureFile]] = {}
    for figure in figure_files:
        by_study.setdefault(figure.study, []).append(figure)
    failures = _failures(data.evaluations)
    provenance = _provenance(data)
    if refusals is not None:
        refusals.extend(data.refusals)

    # ---- Markdown
    parts = [f"# {data.name}", ""]
    if data.description:
        parts += [data.description.strip(), ""]
    if data.dataset:
        parts += [f"Dataset: {data.dataset}. Also as [one HTML page](report.html)." if "html" in formats else f"Dataset: {data.dataset}.", ""]
    if data.refusals:
        parts += ["## Not compared", ""] + [f"- {refusal_markdown(r.message)}" for r in data.refusals] + [""]
    for table in tables:
        study = table.study
        stem = safe_name(study.name)
        parts += [f"## {study.name}", ""]
        if study.description:
            parts += [study.description.strip(), ""]
        parts += [markdown_study(table), ""]
        links = ([f"[CSV](tables/{stem}.csv)"] if "csv" in formats else []) + ([f"[LaTeX](tables/{stem}.tex)"] if "latex" in formats else [])
        if links and table.refusal is None:
            parts += ["Table as " + " · ".join(links), ""]
        for figure in by_study.get(study.name, []):
            parts += [_figure_markdown(figure, out), ""]
        if study.name in grid_files.compare:
            parts += [_picture_markdown(grid_files.compare[study.name], out), ""]
        trial_keys = _study_keys(data, study.name, grid_files)
        if trial_keys:
            parts += ["Samples of each trial: " + " · ".join(f"[{k}]({grid_files.trials[k].path.relative_to(out).as_posix()})" for k in trial_keys), ""]
    if by_study.get(None):
        parts += ["## Across the run", ""]
        for figure in by_study[None]:
            parts += [_figure_markdown(figure, out), ""]
    if failures:
        parts += ["## Failures", ""] + [f"- `{line.split(' ', 1)[0]}` {escape_markdown(line.split(' ', 1)[1])}" for line in failures] + [""]
    if provenance:
        parts += ["## Provenance", ""] + [f"- {escape_markdown(line)}" for line in provenance] + [""]
    markdown = "\n".join(parts)
    if "md" in formats:
        _write_text(out / "report.md", markdown)

    # ---- HTML
    if "html" in formats:
        sections = []
        for table in tables:
            name = table.study.name
            sections.append(
                StudySection(
                    table=table,
                    csv=None if table.refusal else csv_texts.get(name, csv_frame(table).to_csv(index=False)),
                    latex=None if table.refusal else latex_texts.get(name, latex_table(table)),
                    figures=[Picture(f.png, f.caption, f.title) for f in by_study.get(name, [])],
                    compare=grid_files.compare.get(name),
                    trial_grids=[grid_files.trials[k] for k in _study_keys(data, name, grid_files)],
                )
            )
        meta = [f"Dataset: {data.dataset}."] if data.dataset else []
        page = report_html(
            data.name, data.description.strip(), meta, sections,
            [Picture(f.png, f.caption, f.title) for f in by_study.get(None, [])], failures, provenance,
            [r.message for r in data.refusals],
        )
        _write_text(out / "report.html", page)
    return markdown


def _study_keys(data: ReportData, study: str, grids: Grids) -> list[str]:
    """The evaluation keys of a study's trial grids, in the table's order."""
    info = next(s for s in data.studies if s.name == study)
    rows = in_axis_order(data.evaluations[data.evaluations["study"] == study], info)
    keys = rows["evaluation_key"].dropna().tolist() if "evaluation_key" in rows else []
    return [k for k in dict.fromkeys(keys) if k in grids.trials]


def report_markdown(results: Any, interval: Interval = "std") -> str:
    """The tables-only Markdown report of a run, writing nothing (no figures, no grids)."""
    with tempfile.TemporaryDirectory() as tmp:
        return build_report(ReportData.from_results(results), Path(tmp), ("md",), interval=interval, figures=False, grids=False)


def write_report(
    results: Any,
    out: str | Path,
    formats: tuple[str, ...] = FORMATS,
    *,
    interval: Interval = "std",
    figures: bool = True,
    grids: bool = True,
    run_dir: str | Path | None = None,
    mix_protocols: bool = False,
    refusals: list[Refusal] | None = None,
) -> str:
    """Write the report of a run (`sweep.results.Results`) under `out`; return the Markdown.

    formats: any of "md", "html", "latex", "csv". interval: "std" (sample standard deviation over
    seeds) or "t95" (Student-t 95% interval of the mean). run_dir: the run folder holding
    stages/evaluation/<key>/samples.npz for sample grids (default `results.run_dir` if set, else `out`
    when it is a run folder; no grids otherwise). mix_protocols: draw comparisons whose rows mix
    evaluation protocols (marked) instead of refusing them; refusals: a list the refused comparisons
    are appended to (the report also lists them).
    """
    out = Path(out)
    if run_dir is None:
        run_dir = getattr(results, "run_dir", None)
    if run_dir is None and (out / "stages").is_dir():
        run_dir = out
    data = ReportData.from_results(results, run_dir=str(run_dir) if run_dir is not None else None)
    return build_report(
        data, out, tuple(formats), interval=interval, figures=figures, grids=grids, mix_protocols=mix_protocols, refusals=refusals
    )

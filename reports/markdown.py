"""Rendering ablation tables as Markdown (GitHub-flavoured)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from reports.tables import METRICS, Metric, StudyTable, best_rows

BASELINE_MARK = "†"


def format_cell(mean: float, half: float, n: int, digits: int) -> str:
    """`mean ± half` over seeds; a single seed has no ±; nothing finished is an em dash."""
    if n == 0 or math.isnan(mean):
        return "—"
    if n == 1 or math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def format_value(value: Any) -> str:
    """An axis value as a table label (floats without trailing noise)."""
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else f"{value:.1f}"
    return str(value)


def count_cell(row: dict[str, Any]) -> str:
    """`n`, or `n/trials` when some trials did not finish, with how many failed."""
    n, trials, failed = int(row["n"]), int(row["trials"]), int(row["failed"])
    text = f"{n}" if n == trials else f"{n}/{trials}"
    return text + (f" ({failed} failed)" if failed else "")


def cell_texts(
    table: pd.DataFrame, varied: list[str], metrics: tuple[Metric, ...]
) -> list[tuple[list[str], list[tuple[str, bool]], str]]:
    """Renderer-neutral cells: per row (axis labels, [(metric text, is best)], count text); the first
    label carries the baseline mark."""
    best = {m.column: best_rows(table, m) for m in metrics}
    out = []
    for index, row in zip(table.index, table.to_dict("records")):  # records keep each column's dtype
        labels = [format_value(row[name]) for name in varied]
        if row.get("baseline"):
            labels[0] += f" {BASELINE_MARK}"
        cells = [
            (format_cell(row[f"{m.column}_mean"], row[f"{m.column}_half"], int(row[f"{m.column}_n"]), m.digits), index in best[m.column])
            for m in metrics
        ]
        out.append((labels, cells, count_cell(row)))
    return out


def markdown_table(table: pd.DataFrame, varied: list[str], metrics: tuple[Metric, ...] = METRICS) -> str:
    """A GitHub table: axes left-aligned, metrics right-aligned with arrows, best per column bold."""
    header = [*varied, *(f"{m.label} {m.arrow}" for m in metrics), "n"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(varied) + ["---:"] * (len(metrics) + 1)) + "|",
    ]
    for labels, cells, count in cell_texts(table, varied, metrics):
        texts = [f"**{text}**" if best and text != "—" else text for text, best in cells]
        lines.append("| " + " | ".join([*labels, *texts, count]) + " |")
    return "\n".join(lines)


def markdown_study(table: StudyTable) -> str:
    """A study's table with its footnote (italic lines under the table)."""
    body = markdown_table(table.frame, table.varied, table.metrics)
    notes = [f"_{escape_markdown(line)}_" for line in table.footnote]
    return body + "\n\n" + "  \n".join(notes)


def escape_markdown(text: str) -> str:
    """Text that Markdown shows as typed (no stray emphasis, links or table cells)."""
    for char in "\\`*_[]|<>":
        text = text.replace(char, "\\" + char)
    return text

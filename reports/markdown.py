"""Rendering ablation tables as Markdown (GitHub-flavoured)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from reports.order import value_text
from reports.tables import METRICS, SEARCH_MARK, Metric, StudyTable, best_rows

BASELINE_MARK = "†"


def format_cell(mean: float, half: float, n: int, digits: int) -> str:
    """`mean ± half` over seeds; a single seed has no ±; nothing finished is an em dash."""
    if n == 0 or math.isnan(mean):
        return "—"
    if n == 1 or math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def format_value(value: Any, axis: str = "") -> str:
    """An axis value as a table label (floats without trailing noise; "all" for top_k = 0, reports.order)."""
    return value_text(axis, value)


def format_chosen(value: Any) -> str:
    """A value a search chose (any float in a continuous range): 4 significant digits; several
    values (seeds whose searches chose differently) stay joined by " / "; none is an em dash."""
    if isinstance(value, float) and math.isnan(value):
        return "—"
    if isinstance(value, float):
        return format_value(value) if value.is_integer() else f"{value:.4g}"
    if isinstance(value, str) and " / " in value:
        return " / ".join(format_chosen(float(part)) if _is_float(part) else part for part in value.split(" / "))
    return str(value)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def count_cell(row: dict[str, Any]) -> str:
    """`n`, or `n/trials` when some trials did not finish, with how many failed or were pruned by early stopping."""
    n, trials, failed, pruned = int(row["n"]), int(row["trials"]), int(row["failed"]), int(row.get("pruned", 0) or 0)
    text = f"{n}" if n == trials else f"{n}/{trials}"
    why = [f"{count} {word}" for count, word in ((failed, "failed"), (pruned, "pruned")) if count]
    return text + (f" ({', '.join(why)})" if why else "")


def cell_texts(
    table: pd.DataFrame, varied: list[str], metrics: tuple[Metric, ...], search_axes: list[str] | tuple[str, ...] = ()
) -> list[tuple[list[str], list[tuple[str, bool]], str]]:
    """Renderer-neutral cells: per row (axis labels, [(metric text, is best)], count text); the first
    label carries the baseline mark; in a `searched` row each searched axis' value carries ‡. Metrics
    show multiplied by their scale (KID x 10^3; the header says so); best: `best_rows`."""
    best = {m.column: best_rows(table, m) for m in metrics}
    out = []
    for index, row in zip(table.index, table.to_dict("records")):  # records keep each column's dtype
        labels = [format_chosen(row[name]) if name in search_axes else format_value(row[name], name) for name in varied]
        if row.get("searched"):
            labels = [f"{label} {SEARCH_MARK}" if name in search_axes else label for name, label in zip(varied, labels)]
        if row.get("baseline"):
            labels[0] += f" {BASELINE_MARK}"
        cells = [
            (
                format_cell(row[f"{m.column}_mean"] * m.scale, row[f"{m.column}_half"] * m.scale, int(row[f"{m.column}_n"]), m.digits),
                index in best[m.column],
            )
            for m in metrics
        ]
        out.append((labels, cells, count_cell(row)))
    return out


def markdown_table(
    table: pd.DataFrame, varied: list[str], metrics: tuple[Metric, ...] = METRICS, search_axes: list[str] | tuple[str, ...] = ()
) -> str:
    """A GitHub table: axes left-aligned, metrics right-aligned with arrows, a distinguishable best bold."""
    header = [*varied, *(m.header for m in metrics), "n"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(varied) + ["---:"] * (len(metrics) + 1)) + "|",
    ]
    for labels, cells, count in cell_texts(table, varied, metrics, search_axes):
        texts = [f"**{text}**" if best and text != "—" else text for text, best in cells]
        lines.append("| " + " | ".join([*labels, *texts, count]) + " |")
    return "\n".join(lines)


def markdown_study(table: StudyTable) -> str:
    """A study's table with its footnote (italic lines under the table); a refused table is its reason."""
    if table.refusal is not None:
        return f"**Not compared.** {refusal_markdown(table.refusal)}"
    body = markdown_table(table.frame, table.label_axes, table.metrics, table.search_axes)
    notes = [f"_{escape_markdown(line)}_" for line in table.footnote]
    return body + "\n\n" + "  \n".join(notes)


def refusal_markdown(message: str) -> str:
    """A refusal (reports.protocols) as Markdown: escaped, the command it names as code."""
    from reports.protocols import MIX_FLAG

    command = f"sweep report {MIX_FLAG}"
    return escape_markdown(message).replace(escape_markdown(f"`{command}`"), f"`{command}`")


def escape_markdown(text: str) -> str:
    """Text that Markdown shows as typed (no stray emphasis, links or table cells)."""
    for char in "\\`*_[]|<>":
        text = text.replace(char, "\\" + char)
    return text

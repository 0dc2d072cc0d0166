"""Rendering ablation tables as Markdown (GitHub-flavoured)."""

from __future__ import annotations

import math

import pandas as pd

from reports.tables import METRICS, Metric, best_rows


def format_cell(mean: float, std: float, n: int, digits: int) -> str:
    """`mean ± std` over seeds; a single seed has no ±; nothing finished is an em dash."""
    if n == 0 or math.isnan(mean):
        return "—"
    if n == 1 or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(table: pd.DataFrame, varied: list[str], metrics: tuple[Metric, ...] = METRICS) -> str:
    header = [*varied, *(f"{m.label} {m.arrow}" for m in metrics), "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(varied) + ["---:"] * (len(metrics) + 1)) + "|"]
    best = {m.column: best_rows(table, m) for m in metrics}
    for index, row in zip(table.index, table.to_dict("records")):  # records keep each column's dtype
        cells = [str(row[name]) for name in varied]
        for m in metrics:
            text = format_cell(row[f"{m.column}_mean"], row[f"{m.column}_std"], int(row["n"]), m.digits)
            cells.append(f"**{text}**" if index in best[m.column] and len(table) > 1 else text)
        count = f"{int(row['n'])}" if row["n"] == row["trials"] else f"{int(row['n'])}/{int(row['trials'])}"
        cells.append(count + (f" ({int(row['failed'])} failed)" if row["failed"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

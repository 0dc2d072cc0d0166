"""Ablation tables: pure functions from result rows (pandas) to tables. No torch, no rendering."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Metric:
    column: str
    label: str
    higher_is_better: bool
    digits: int

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


# The evaluation columns a study table shows, in order.
METRICS: tuple[Metric, ...] = (
    Metric("fid", "FID", higher_is_better=False, digits=2),
    Metric("kid_mean", "KID", higher_is_better=False, digits=4),
    Metric("class_accuracy", "class acc.", higher_is_better=True, digits=3),
)


def ablation_table(evaluations: pd.DataFrame, study: str, varied: list[str], metrics: tuple[Metric, ...] = METRICS) -> pd.DataFrame:
    """One row per grid point of `study` (in spec order): the varied axes, then per metric the mean and
    the sample standard deviation over finished seeds, the seed count `n` and how many trials are done.
    """
    rows = evaluations[evaluations["study"] == study]
    records = []
    for point, group in rows.groupby(varied, sort=False, dropna=False):
        point = point if isinstance(point, tuple) else (point,)
        done = group[group["status"] == "finished"]
        record = dict(zip(varied, point))
        for metric in metrics:
            values = pd.to_numeric(done[metric.column], errors="coerce").dropna() if metric.column in done else pd.Series(dtype=float)
            record[f"{metric.column}_mean"] = values.mean() if len(values) else float("nan")
            record[f"{metric.column}_std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
        record["n"] = len(done)
        record["trials"] = len(group)
        record["failed"] = int((group["status"].isin(["failed", "skipped"])).sum())
        records.append(record)
    return pd.DataFrame(records)


def best_rows(table: pd.DataFrame, metric: Metric) -> set[int]:
    """Indices of the best mean of a metric (ties all count)."""
    column = table[f"{metric.column}_mean"]
    if column.isna().all():
        return set()
    best = column.max() if metric.higher_is_better else column.min()
    return set(table.index[column == best])

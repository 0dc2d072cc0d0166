"""`sweep status DIR`: where a run stands, per stage kind, from the store alone (no torch, no ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from space.schema import STAGE_KINDS
from sweep.run import PLAN_FILE, run_store
from sweep.store import Store


def stage_status(run_dir: Path, store_root: Path | None = None) -> pd.DataFrame:
    """One row per stage kind: finished, running, failed, skipped, pending counts, seconds spent, seconds left.

    The estimate of what is left is (pending + running) x the mean wall time of that kind's finished stages.
    """
    plan_path = Path(run_dir) / PLAN_FILE
    if not plan_path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {PLAN_FILE}: is it a run folder made by `sweep run`?")
    stages = json.loads(plan_path.read_text())["stages"]
    store = Store(store_root or run_store(run_dir))
    records = []
    for kind in STAGE_KINDS:
        counts = dict.fromkeys(("finished", "running", "failed", "pruned", "skipped", "pending"), 0)
        spent: list[float] = []
        for stage in (s for s in stages if s["kind"] == kind):
            if store.is_finished(kind, stage["key"]):
                counts["finished"] += 1
                spent.append(float(pd.read_parquet(store.folder(kind, stage["key"]) / "row.parquet")["wall_s"].iloc[0]))
            elif store.running(kind, stage["key"]):
                counts["running"] += 1
            elif (failure := store.failure(kind, stage["key"])) is not None:
                counts[failure["status"] if failure["status"] in ("skipped", "pruned") else "failed"] += 1
            else:
                counts["pending"] += 1
        mean = sum(spent) / len(spent) if spent else float("nan")
        left = (counts["pending"] + counts["running"]) * mean if counts["pending"] + counts["running"] else 0.0
        records.append({"kind": kind, **counts, "spent_s": sum(spent), "left_s": left})
    return pd.DataFrame(records)


def search_status(run_dir: Path, store_root: Path | None = None) -> pd.DataFrame:
    """One row per search of the run: points journaled and scored, the best value, the chosen evaluation."""
    from sweep.search import read_journal

    plan = json.loads((Path(run_dir) / PLAN_FILE).read_text())
    store = Store(store_root or run_store(run_dir))
    records = []
    for search in plan.get("searches", []):
        points, chosen = read_journal(store.root, search["id"])
        values = []
        for point in points.values():
            if (row := store.row("evaluation", point["key"])) is not None:
                values.append(float(row.get(search["metric"], float("nan"))))
        best = (min(values) if search["mode"] == "min" else max(values)) if values else float("nan")
        records.append({"search_id": search["id"], "study": search["study"], "budget": search["budget"],
                        "journaled": len(points), "scored": len(values), "metric": search["metric"], "best": best,
                        "chosen": chosen["key"] if chosen and len(points) >= search["budget"] else ""})
    return pd.DataFrame(records)

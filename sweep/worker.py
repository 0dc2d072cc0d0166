"""Run one stage inside whatever process an executor gives it, and record its row.

Both executors call :func:`execute`: the serial one in the driver's process, the Ray one inside a
Tune trial's worker process. The stage function itself (``runners.stages``) never sees Ray; the
executor hands run metadata (Tune trial id, node) in through `meta`.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from sweep.plan import Stage
from sweep.store import LOSSES_FILE, ROW_FILE, Store, write_json, write_rows

# Columns that describe how a row was produced, not what it holds; they differ between runs.
RUN_METADATA_COLUMNS: tuple[str, ...] = (
    "wall_s",
    "steps_per_s",
    "started_at",
    "ended_at",
    "worker_pid",
    "node",
    "tune_trial_id",
    "executor",
    "command",
)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def base_row(stage: Stage, context: dict[str, Any]) -> dict[str, Any]:
    """Identity, axes and provenance of a stage's row (no metrics yet)."""
    return {
        "kind": stage.kind,
        "key": stage.key,
        **{f"{role}_key": key for role, key in stage.inputs.items()},
        **stage.columns,
        **context,
    }


def execute(
    stage: Stage,
    store_root: str,
    context: dict[str, Any],
    meta: dict[str, Any] | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run `stage` unless it is finished; write its artifact and row atomically; return the row.

    An exception, a NaN loss or an out-of-memory error is caught and recorded as a failed row:
    failed work never takes the sweep down.
    """
    from runners.stages import STAGE_FUNCTIONS, device_name  # torch is imported here, in the worker

    store = Store(store_root)
    if store.is_finished(stage.kind, stage.key):
        return pd.read_parquet(store.folder(stage.kind, stage.key) / ROW_FILE).iloc[0].to_dict()

    import torch

    torch.set_num_threads(max(1, int(stage.resources.cpus)))
    started, started_at = time.perf_counter(), now_iso()
    row = base_row(stage, context)
    row.update(
        worker_pid=os.getpid(),
        node=socket.gethostname(),
        tune_trial_id="",
        executor="serial",
        started_at=started_at,
        device=device_name(stage.resources.gpus),
    )
    row.update(meta or {})
    losses: list[dict[str, Any]] = []

    def log(step: int, values: dict[str, float]) -> None:
        losses.append({"key": stage.key, "kind": stage.kind, "step": step, **values})
        if report is not None:
            report({"step": step, **values})

    # Input roles are named after the kind of the stage they point at.
    inputs = {role: store.folder(role, key) for role, key in stage.inputs.items()}
    missing = [role for role, folder in inputs.items() if not (folder / ROW_FILE).is_file()]
    tmp = store.begin(stage.kind, stage.key)
    try:
        if missing:
            raise RuntimeError(f"input stage(s) {', '.join(missing)} are not finished")
        metrics = STAGE_FUNCTIONS[stage.kind](stage, inputs, tmp, log)
        row.update(metrics, status="finished", error="")
    except Exception as error:  # noqa: BLE001 - every failure becomes a row
        shutil.rmtree(tmp, ignore_errors=True)
        row.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
        row.update(wall_s=time.perf_counter() - started, ended_at=now_iso())
        store.record_failure(stage.kind, stage.key, row)
        return row
    row.update(wall_s=time.perf_counter() - started, ended_at=now_iso())
    if losses:
        write_rows(tmp / LOSSES_FILE, losses)
    write_json(tmp / "stage.json", stage.to_json())
    write_rows(tmp / ROW_FILE, [row])
    store.commit(tmp, stage.kind, stage.key)
    return row


def provenance(command: list[str], spec_hash: str) -> dict[str, Any]:
    """The reproducibility record every row carries."""
    import importlib.metadata as metadata
    import subprocess

    source = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for package in ("elm-sweep", "torch", "ray", "torch-fidelity", "numpy", "pandas", "pyarrow", "optuna"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = ""
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "versions": " ".join(f"{k}=={v}" for k, v in versions.items()),
        "python": platform.python_version(),
        "command": " ".join(command),
        "spec_hash": spec_hash,
    }

"""Run one stage inside whatever process an executor gives it, and record its row.

Both executors call :func:`execute`: the serial one in the driver's process, the Ray one inside a
Tune trial's worker process. The stage function itself (``sweep.stages``) never sees Ray; the
executor hands run metadata (Tune trial id, node) in through `meta`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from sweep.plan import Stage
from sweep.store import LOSSES_FILE, ROW_FILE, Store, write_json, write_rows

# Columns that describe how a row was produced, not what it holds; they differ between runs.
RUN_METADATA_COLUMNS: tuple[str, ...] = (
    "wall_s",
    "steps_per_s",
    "resumed_from_step",
    "checkpoint_discarded",
    "attempts",
    "started_at",
    "ended_at",
    "worker_pid",
    "node",
    "tune_trial_id",
    "executor",
    "command",
    "workers",  # data-parallel workers: equal weights up to float rounding of the all-reduce, not bit for bit
    "tokens_per_s",  # throughput of training stages (runners/perf.py)
    "images_per_s",
    "achieved_tflops",
    "mfu",
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
    attempts_before: int = 0,
) -> dict[str, Any]:
    """Run `stage` unless it is finished; write its artifact and row atomically; return the row.

    An exception, a NaN loss or an out-of-memory error is caught and recorded as a failed row
    (`failure_kind` "error", tried `runtime.retries` more times first); a damaged input is moved aside
    and the stage recorded as failed with `failure_kind` "lost", so the next run recomputes both.
    Failed work never takes the sweep down. `attempts_before`: attempts of this stage already spent in
    this run by workers that were lost; they count against `runtime.retries`.
    The row records each input's digest (`<kind>_digest`); a finished stage whose inputs now hold other bytes
    is moved aside (`.stale-*`) and run again.
    """
    from sweep.stages import STAGE_FUNCTIONS, StagePruned, device_name  # torch is imported here, in the worker

    store = Store(store_root)
    if (finished := store.row(stage.kind, stage.key)) is not None:
        if not store.stale_inputs(stage.inputs, finished):
            return finished
        store.quarantine(stage.kind, stage.key, "stale")  # built from other input bytes than these: run again

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

    def fail(kind: str, error: str, trace: str = "", status: str = "failed") -> dict[str, Any]:
        row.update(status=status, failure_kind=kind, error=error, traceback=trace)
        row.update(wall_s=time.perf_counter() - started, ended_at=now_iso())
        store.record_failure(stage.kind, stage.key, row)
        return row

    # Inputs are read only after they pass their manifest checks.
    inputs = {role: store.folder(role, key) for role, key in stage.inputs.items()}  # roles are kind names
    for role, key in stage.inputs.items():
        problem = "not finished" if not store.is_finished(role, key) else store.verify(role, key)
        if problem:
            if store.folder(role, key).exists():
                store.quarantine(role, key)
            return fail("lost", f"input {role} {key} is damaged ({problem}); it will be recomputed")
        row[f"{role}_digest"] = store.digest(role, key)  # the input bytes this row is built from

    checkpoints = store.checkpoint_folder(stage.kind, stage.key)
    losses = LossLog(checkpoints / "losses.jsonl", stage)

    def log(step: int, values: dict[str, float]) -> None:
        losses.append(step, values)
        if report is not None:
            report({"step": step, **values})

    attempts = 1 + int(stage.runtime.get("retries", 0))
    for attempt in range(min(attempts_before, attempts - 1) + 1, attempts + 1):
        tmp = store.begin(stage.kind, stage.key)
        try:
            metrics = STAGE_FUNCTIONS[stage.kind](stage, inputs, tmp, log, checkpoints=checkpoints)
            break
        except StagePruned as stopped:  # early stopping: not a failure, never retried; the checkpoint stays
            shutil.rmtree(tmp, ignore_errors=True)
            row.update(pruned_at_step=stopped.step)
            return fail("pruned", str(stopped), status="pruned")
        except Exception as error:  # noqa: BLE001 - every failure becomes a row
            shutil.rmtree(tmp, ignore_errors=True)
            if attempt == attempts:
                return fail("error", f"{type(error).__name__}: {error}", traceback.format_exc())
    extra_rows = metrics.pop("rows", None)  # an analysis gives several rows: one per subject or layer
    row.update(metrics, status="finished", failure_kind="", error="", attempts=attempt)
    row.update(wall_s=time.perf_counter() - started, ended_at=now_iso())
    if losses.rows():
        write_rows(tmp / LOSSES_FILE, losses.rows())
    write_json(tmp / "stage.json", stage.to_json())
    write_rows(tmp / ROW_FILE, [{**row, **extra} for extra in extra_rows] if extra_rows else [row])
    store.commit(tmp, stage.kind, stage.key)
    return row


class LossLog:
    """Training curves appended to the stage's checkpoint folder, so a resumed stage keeps its history.

    A resumed loop logs again the steps after its last checkpoint; the last value logged for a step wins.
    """

    def __init__(self, path: Path, stage: Stage) -> None:
        self.path, self.stage = path, stage
        self.entries: dict[int, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                self.entries[entry["step"]] = entry

    def append(self, step: int, values: dict[str, float]) -> None:
        entry = {"key": self.stage.key, "kind": self.stage.kind, "step": step, **values}
        self.entries[step] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        return [self.entries[step] for step in sorted(self.entries)]


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
    # Only a git checkout of elm-sweep itself has a commit: an install inside some other repository (a venv in
    # a project folder) must not report that repository's commit.
    toplevel = git("rev-parse", "--show-toplevel")
    checkout = bool(toplevel) and Path(toplevel).resolve() == source
    commit = git("rev-parse", "HEAD") if checkout else ""
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if checkout else False
    code = f"git {commit[:12]}{' (dirty)' if dirty else ''}" if commit else f"elm-sweep=={versions['elm-sweep'] or 'unknown'}"
    return {
        "code": code,  # what produced the row: `git <commit>` in a checkout, else the installed package's version
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": " ".join(f"{k}=={v}" for k, v in versions.items()),
        "python": platform.python_version(),
        "command": " ".join(command),
        "spec_hash": spec_hash,
    }

"""Executors: who runs the stages. The stage functions are the same for both.

- :class:`SerialExecutor` runs stages one after another in this process (for debugging: breakpoints
  and tracebacks work as usual).
- :class:`RayExecutor` runs every stage as its own Ray Tune trial in a worker process. A small
  Tune searcher releases a stage only once all its inputs are finished, so independent stages run
  side by side and the DAG drains as fast as the cluster allows. Tune's own experiment state is not
  the ledger: the store is (a finished stage is a renamed folder), so a new run simply skips what
  is there.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from sweep.plan import Stage
from sweep.worker import base_row, execute, now_iso

# on_event(event, stage, row): event is "started", "finished", "failed" or "skipped".
EventHandler = Callable[[str, Stage, dict[str, Any]], None]


class Executor(Protocol):
    name: str

    def run(self, stages: list[Stage], store_root: str, context: dict[str, Any], on_event: EventHandler) -> None:
        """Run `stages` (in dependency order); every stage ends as a row, finished, failed or skipped."""


@dataclass
class Ledger:
    """Which of the stages to run are done, failed, running, or waiting; drives both executors."""

    stages: list[Stage]
    finished: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason
    running: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.by_key = {stage.key: stage for stage in self.stages}
        self.pending = [stage.key for stage in self.stages]

    def ready(self) -> Stage | None:
        """The next pending stage whose inputs (among the stages to run) are all finished."""
        for key in self.pending:
            stage = self.by_key[key]
            if all(dep not in self.by_key or dep in self.finished for dep in stage.depends_on):
                self.pending.remove(key)
                self.running.add(key)
                return stage
        return None

    def complete(self, key: str, row: dict[str, Any]) -> list[tuple[Stage, str]]:
        """Record a stage's row; returns the dependants skipped because it failed, with the reason."""
        self.running.discard(key)
        if row.get("status") == "finished":
            self.finished.add(key)
            return []
        self.failed[key] = str(row.get("error", ""))
        skipped = []
        frontier = {key}
        while frontier:
            newly = [k for k in self.pending if set(self.by_key[k].depends_on) & frontier]
            for k in newly:
                self.pending.remove(k)
                stage = self.by_key[k]
                upstream = next(d for d in stage.depends_on if d in frontier)
                reason = f"input {self.by_key[upstream].kind} {upstream} did not finish: {self.failed[key]}"
                self.failed[k] = reason
                skipped.append((stage, reason))
            frontier = set(newly)
        return skipped

    @property
    def done(self) -> bool:
        return not self.pending and not self.running


def skipped_row(stage: Stage, context: dict[str, Any], reason: str) -> dict[str, Any]:
    row = base_row(stage, context)
    row.update(status="skipped", failure_kind="upstream", error=reason, started_at=now_iso(), ended_at=now_iso(), wall_s=0.0)
    return row


class SerialExecutor:
    """Runs the stage functions in this process, in dependency order."""

    name = "serial"

    def run(self, stages: list[Stage], store_root: str, context: dict[str, Any], on_event: EventHandler) -> None:
        from sweep.store import Store

        ledger = Ledger(stages)
        while (stage := ledger.ready()) is not None:
            on_event("started", stage, {})
            row = execute(stage, store_root, context, {"executor": self.name},
                          report=lambda values, stage=stage: on_event("progress", stage, values))
            on_event(row["status"], stage, row)
            for skipped, reason in ledger.complete(stage.key, row):
                skip = skipped_row(skipped, context, reason)
                Store(store_root).record_failure(skipped.kind, skipped.key, skip)
                on_event("skipped", skipped, skip)


def _stage_trainable(config: dict[str, Any]) -> None:
    """A Tune function trainable that runs one stage (in a Ray worker process)."""
    import ray
    from ray import tune

    stage = Stage.from_json(config["stage"])
    context = tune.get_context()
    meta = {"tune_trial_id": context.get_trial_id(), "node": ray.util.get_node_ip_address(), "executor": "ray"}

    def report(values: dict[str, Any]) -> None:
        tune.report({name: value for name, value in values.items() if isinstance(value, (int, float))})

    row = execute(stage, config["store"], config["context"], meta, report=report)
    summary = {name: value for name, value in row.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    tune.report({**summary, "status": row["status"], "error": row.get("error", ""), "stage_key": stage.key})


class RayExecutor:
    """Every stage is a Ray Tune trial; a stage starts once its inputs exist."""

    name = "ray"

    def __init__(self, run_dir: Path, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus

    def run(self, stages: list[Stage], store_root: str, context: dict[str, Any], on_event: EventHandler) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter honours verbose=0; ours prints progress
        if self.address is None:
            # The embedded Ray listens on this machine only and lives as long as this command; a
            # shared cluster (--address) keeps whatever authentication its operator configured.
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray
        from ray import tune
        from sweep.store import Store

        project_root = str(Path(__file__).resolve().parent.parent)
        runtime_env = {"env_vars": {"PYTHONPATH": project_root, "RAY_USAGE_STATS_ENABLED": "0"}}
        started_here = not ray.is_initialized()
        if started_here:
            if self.address is None:
                ray.init(
                    num_cpus=self.num_cpus, num_gpus=self.num_gpus, include_dashboard=False,
                    log_to_driver=False, logging_level="WARNING", runtime_env=runtime_env,
                )
                record_ray_processes(self.run_dir)
            else:
                ray.init(address=self.address, log_to_driver=False, logging_level="WARNING", runtime_env=runtime_env)

        ledger = Ledger(stages)
        store = Store(store_root)
        for key, reason in unschedulable(stages).items():  # never submitted: they would wait forever
            if key not in ledger.pending:
                continue  # already skipped: an input of it cannot be scheduled either
            stage = ledger.by_key[key]
            ledger.pending.remove(key)
            row = skipped_row(stage, context, reason)
            row.update(status="failed", failure_kind="error")
            store.record_failure(stage.kind, key, row)
            on_event("failed", stage, row)
            for skipped, why in ledger.complete(key, row):
                skip = skipped_row(skipped, context, why)
                store.record_failure(skipped.kind, skipped.key, skip)
                on_event("skipped", skipped, skip)
        searcher = _stage_searcher_class()(ledger, store, context, on_event)

        def resources(config: dict[str, Any]) -> Any:
            from ray.tune import PlacementGroupFactory

            need = config["stage"]["resources"]
            return PlacementGroupFactory([{"CPU": need["cpus"], "GPU": need["gpus"]}])

        trainable = tune.with_resources(_stage_trainable, resources)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=len(stages),
                reuse_actors=True,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(self.run_dir / "ray"),
                verbose=0,
            ),
        )
        try:
            if not ledger.done:
                tuner.fit()
        finally:
            if started_here:
                ray.shutdown()
                (self.run_dir / "ray_processes.json").unlink(missing_ok=True)


def _stage_searcher_class() -> type:
    """The Tune searcher that drives the DAG (built lazily so importing this module never imports Ray)."""
    from ray.tune.search import Searcher

    class StageSearcher(Searcher):
        """Suggests a stage as soon as its inputs are finished; FINISHED once every stage is done."""

        def __init__(self, ledger: Ledger, store: Any, context: dict[str, Any], on_event: EventHandler) -> None:
            super().__init__()
            self.ledger, self.store, self.context, self.on_event = ledger, store, context, on_event
            self.trial_keys: dict[str, str] = {}

        # Tune pickles and saves its searcher for its own restore; the store, not Tune, is our ledger.
        def __getstate__(self) -> dict[str, Any]:
            return {"trial_keys": self.trial_keys}

        def save(self, checkpoint_path: str) -> None:
            pass

        def restore(self, checkpoint_path: str) -> None:
            pass

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
            stage = self.ledger.ready()
            if stage is None:
                return Searcher.FINISHED if self.ledger.done else None
            self.trial_keys[trial_id] = stage.key
            self.on_event("started", stage, {})
            return {"stage": stage.to_json(), "store": str(self.store.root), "context": self.context}

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            if trial_id in self.trial_keys and "step" in result:
                self.on_event("progress", self.ledger.by_key[self.trial_keys[trial_id]], result)

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            key = self.trial_keys[trial_id]
            stage = self.ledger.by_key[key]
            row = _row_of(self.store, stage, self.context, result, error)
            self.on_event(row["status"], stage, row)
            for skipped, reason in self.ledger.complete(key, row):
                skip = skipped_row(skipped, self.context, reason)
                self.store.record_failure(skipped.kind, skipped.key, skip)
                self.on_event("skipped", skipped, skip)

    return StageSearcher


def unschedulable(stages: list[Stage]) -> dict[str, str]:
    """Keys of the stages that no alive node of the connected Ray cluster can ever fit, with the reason."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    most_gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    found = {}
    for stage in stages:
        need = stage.resources
        if need.cpus > most_cpus or need.gpus > most_gpus:
            found[stage.key] = (
                f"needs {need.cpus:g} CPUs and {need.gpus:g} GPUs on one node, but the largest node of this Ray "
                f"cluster has {most_cpus:g} CPUs and {most_gpus:g} GPUs; lower resources.{stage.kind} in the spec "
                f"or add a node that fits"
            )
    return found


def _trial_name(trial: Any) -> str:
    stage = trial.config["stage"]
    return f"{stage['kind']}-{stage['key']}"


def _row_of(store: Any, stage: Stage, context: dict[str, Any], result: dict[str, Any] | None, error: bool) -> dict[str, Any]:
    """The row a finished trial left in the store; a failure row if the worker died before writing one."""
    import pandas as pd

    from sweep.store import ROW_FILE

    if store.is_finished(stage.kind, stage.key):
        return pd.read_parquet(store.folder(stage.kind, stage.key) / ROW_FILE).iloc[0].to_dict()
    failure = store.failure_file(stage.kind, stage.key)
    if failure.is_file() and not error:
        return pd.read_parquet(failure).iloc[0].to_dict()
    reason = "the worker process died before the stage wrote its row" if error else str((result or {}).get("error", ""))
    row = base_row(stage, context)
    row.update(status="failed", failure_kind="lost", error=reason, started_at=now_iso(), ended_at=now_iso(), wall_s=0.0)
    store.record_failure(stage.kind, stage.key, row)
    return row


def record_ray_processes(run_dir: Path) -> None:
    """Write the process ids of the embedded Ray so a later run can end them if this driver is killed."""
    import psutil

    run_dir.mkdir(parents=True, exist_ok=True)
    children = psutil.Process().children(recursive=True)
    records = [{"pid": p.pid, "create_time": p.create_time()} for p in children]
    (run_dir / "ray_processes.json").write_text(json.dumps(records))


def end_stale_ray_processes(run_dir: Path) -> int:
    """End the embedded-Ray processes a killed driver left behind (matched by pid and start time)."""
    import psutil

    path = Path(run_dir) / "ray_processes.json"
    if not path.is_file():
        return 0
    doomed = []
    for record in json.loads(path.read_text()):
        try:
            process = psutil.Process(record["pid"])
            if abs(process.create_time() - record["create_time"]) < 1e-3:
                doomed += [process, *process.children(recursive=True)]  # workers started after the record too
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for process in doomed:
        try:
            process.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    gone, alive = psutil.wait_procs(doomed, timeout=10)
    ended = len(gone)
    path.unlink(missing_ok=True)
    return ended

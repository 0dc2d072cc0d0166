"""The driver of `sweep run`: plan, skip what the store holds, run the rest, record everything.

    runs/<spec name>/
      spec.yaml          the validated spec (what the report reads)
      trials.parquet     one row per trial: study, axes, seed, the keys of its four stages
      results.parquet    one row per trial with its status, metrics, keys and provenance (docs/results.md)
      stages/            the store: one folder per finished stage (see sweep.store)
      ray/               Ray Tune's own logs (TensorBoard, per-trial output); not the ledger
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from space.schema import Spec
from sweep.executors import Executor, end_stale_ray_processes, skipped_row
from sweep.faults import fault_point
from sweep.lock import RunLock
from sweep.plan import Plan, Stage, make_plan
from sweep.search import SearchRun
from sweep.store import Store, write_json, write_rows
from sweep.worker import provenance

SPEC_COPY = "spec.yaml"
TRIALS_FILE = "trials.parquet"
PLAN_FILE = "plan.json"
STORE_DIR = "stages"


@dataclass
class RunSummary:
    planned: int
    cached: int
    counts: dict[str, int] = field(default_factory=dict)  # status -> stages this run
    wall_s: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # kind, key, error: failed or skipped this run
    kept: list[tuple[str, str, str]] = field(default_factory=list)  # failed in an earlier run (or behind one), not retried
    kept_failed: int = 0  # stages kept as they ended in an earlier run (failed, pruned, or behind one), not retried

    @property
    def complete(self) -> bool:
        """Every stage of the plan ended finished (or stopped early by pruning, or behind a pruned one)."""
        return not self.failures and not self.kept


def trials_frame(plan: Plan) -> pd.DataFrame:
    """One row per trial: its study, every axis, its seeds and the keys of its stages."""
    rows = []
    for planned in plan.trials:
        rows.append(
            {
                "study": planned.trial.study,
                "trial_id": planned.trial_id,
                "varied": ",".join(planned.trial.varied),
                **planned.trial.settings.model_dump(),
                "seed": planned.trial.seed,
                "sampling_seed": planned.sampling_seed,
                **{f"{kind}_key": key for kind, key in planned.keys.items()},
            }
        )
    return pd.DataFrame(rows)


def run_store(run_dir: Path) -> Path:
    """The store a run folder's stages live in: `<run>/stages`, or the `--store` the run was given."""
    plan_path = Path(run_dir) / PLAN_FILE
    if plan_path.is_file():
        recorded = json.loads(plan_path.read_text()).get("store")
        if recorded:
            return Path(recorded)
    return Path(run_dir) / STORE_DIR


def write_run_folder(spec: Spec, plan: Plan, out: Path, store_root: Path | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / STORE_DIR).mkdir(exist_ok=True)
    tmp = out / f".{SPEC_COPY}.tmp"
    tmp.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    tmp.replace(out / SPEC_COPY)
    write_rows(out / TRIALS_FILE, trials_frame(plan).to_dict("records"))
    stages = [{"kind": s.kind, "key": s.key, "depends_on": list(s.depends_on)} for s in plan.stages.values()]
    searches = [{"id": search.id, "study": search.study, "budget": search.config.budget, "metric": search.config.metric,
                 "mode": search.config.mode, "depends_on": list(search.depends_on)} for search in plan.searches.values()]
    store = str(Path(store_root).resolve()) if store_root else ""  # '' = <run>/stages
    write_json(out / PLAN_FILE, {"stages": stages, "searches": searches, "store": store})
    register_run(Path(store_root) if store_root else out / STORE_DIR, out)


RUN_FOLDERS_DIR = "run-folders"  # in a store: one small file per run folder that uses it (read by `sweep gc`)


def register_run(store_root: Path, run_dir: Path) -> None:
    """Record in the store that `run_dir` uses it, so `sweep gc` of any run keeps what this run's spec needs."""
    import hashlib

    run_dir = Path(run_dir).resolve()
    folder = Path(store_root) / RUN_FOLDERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(str(run_dir).encode()).hexdigest()[:16]
    if not (folder / f"{name}.json").is_file():
        write_json(folder / f"{name}.json", {"run": str(run_dir)})


def check_artifacts(plan: Plan, store: Store, reporter: Any) -> None:
    """Trust no finished artifact of the plan (or of its searches' journals) before its files match their
    manifest's sha256 (cached while unchanged): a damaged one is moved aside (`.damaged-*`) and runs again in
    this run. A finished stage whose row recorded other digests of its inputs than theirs now is moved aside
    (`.stale-*`) too: it was built from other bytes."""
    from sweep.search import read_journal

    checks = [(stage.kind, stage.key) for stage in plan.stages.values()]
    for search in plan.searches.values():
        journaled, _ = read_journal(store.root, search.id)
        checks += [("evaluation", entry["key"]) for entry in journaled.values()]
    for kind, key in checks:
        if store.is_finished(kind, key) and (problem := store.verify(kind, key)):
            moved = store.quarantine(kind, key)
            reporter.note(f"{kind} {key} is damaged ({problem}): moved aside to {moved.name if moved else 'elsewhere'}; "
                          "it runs again")
    for stage in plan.stages.values():  # in dependency order
        if (row := store.row(stage.kind, stage.key)) is not None and (stale := store.stale_inputs(stage.inputs, row)):
            moved = store.quarantine(stage.kind, stage.key, "stale")
            reporter.note(f"{stage.kind} {stage.key}: {stale}: moved aside to {moved.name if moved else 'elsewhere'}; "
                          "it runs again")


def run_sweep(
    spec: Spec,
    out: Path,
    executor: Executor,
    reporter: Any,
    store_root: Path | None = None,
    retry_failed: bool = False,
) -> RunSummary:
    """Run every unfinished stage of `spec`; returns what happened. Never raises for a failed stage.

    A stage that failed with an error in an earlier run stays failed (its dependants skipped) unless
    `retry_failed`; a stage whose worker was lost, or whose inputs were damaged, always runs again.
    """
    started = time.perf_counter()
    plan = make_plan(spec)
    out = out.resolve()
    executor.connect()  # an --address that does not answer is refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        write_run_folder(spec, plan, out, store_root)
        end_stale_ray_processes(out)
        store = Store(store_root or out / STORE_DIR)
        store.clean_temporaries()
        context = provenance(sys.argv, spec.fingerprint())

        check_artifacts(plan, store, reporter)
        todo: list[Stage] = []
        blocked: dict[str, str] = {}  # key -> reason it cannot run this time
        pruned: set[str] = set()  # stopped early (not failures), and the stages behind them
        kept: list[tuple[str, str, str]] = []
        rerun: set[str] = set()  # keys of `todo`
        for stage in plan.stages.values():
            if store.is_finished(stage.kind, stage.key):
                if any(dep in rerun for dep in stage.depends_on):
                    todo.append(stage)
                    rerun.add(stage.key)  # an input is recomputed: the worker keeps this one if the input's bytes match
                continue
            upstream = next((d for d in stage.depends_on if d in blocked), None)
            failure = store.failure(stage.kind, stage.key)
            if upstream is not None:
                blocked[stage.key] = f"input {plan.stages[upstream].kind} {upstream} did not finish: {blocked[upstream]}"
                store.record_failure(stage.kind, stage.key, skipped_row(stage, context, blocked[stage.key]))
            elif failure and failure.get("failure_kind") in ("error", "pruned") and not retry_failed:
                blocked[stage.key] = str(failure.get("error", ""))
            else:
                todo.append(stage)
                rerun.add(stage.key)
                continue
            if failure and failure.get("failure_kind") == "pruned" or upstream in pruned:
                pruned.add(stage.key)
            else:
                kept.append((stage.kind, stage.key, blocked[stage.key]))
        searches = []
        for search_plan in plan.searches.values():
            upstream = next((d for d in search_plan.depends_on if d in blocked), None)
            if upstream is not None:
                reporter.note(f"search {search_plan.id} ({search_plan.config.metric} over {', '.join(search_plan.config.axes)}) "
                              f"waits: input {plan.stages[upstream].kind} {upstream} did not finish")
                continue
            search = SearchRun(search_plan, store)
            if not search.done:
                searches.append(search)
        summary = RunSummary(planned=len(plan.stages), cached=len(plan.stages) - len(todo) - len(blocked), kept=kept)
        summary.kept_failed = len(blocked)
        reporter.begin(plan, todo, searches, store_root=store.root)
        if blocked:
            reporter.note(f"{len(blocked)} stages failed in an earlier run (or depend on one) and are kept as failed; "
                          "`sweep run --retry-failed` runs them again")

        def on_event(event: str, stage: Stage, row: dict[str, Any]) -> None:
            if event == "progress":
                reporter.running(stage, row)
                return
            if event == "started":
                fault_point("stage_started")
            else:
                summary.counts[event] = summary.counts.get(event, 0) + 1
                if event == "pruned" or event == "skipped" and pruned & set(stage.depends_on):
                    pruned.add(stage.key)  # early stopping, not a failure
                elif event in ("failed", "skipped"):
                    summary.failures.append((stage.kind, stage.key, str(row.get("error", ""))))
            reporter.event(event, stage, row)

        try:
            if todo or searches:
                executor.run(todo, str(store.root), context, on_event, searches)
        except KeyboardInterrupt:
            reporter.note("interrupted: finished stages are kept; run the same command again to resume")
            raise
        store.clean_temporaries()  # what workers lost during this run left behind
        for search in searches:
            if search.abandoned:
                reporter.note(f"search {search.plan.id} ended without a chosen evaluation: {search.abandoned}")
        write_results_of(out, reporter)
        summary.wall_s = time.perf_counter() - started
        reporter.end(summary)
        return summary


def write_results_of(out: Path, reporter: Any) -> None:
    """Rewrite `<run>/results.parquet` (sweep.results); a problem is reported, never raised: the stages are done."""
    from sweep.results import write_results

    try:
        write_results(out)
    except Exception as error:  # noqa: BLE001 - the run's work is in the store; `sweep report` writes it again
        reporter.note(f"could not write {out}/results.parquet ({type(error).__name__}: {error}); `sweep report {out}` "
                      "writes it again")

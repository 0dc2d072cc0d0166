"""Optuna search of sampling axes per trained generator, through Ray Tune's Optuna integration.

A study with a `search` block (space/schema.py `Search`) plans no evaluation for its trials; each
trial gets a search instead:

    generator (+ tokenizer, classifier) finished
      -> point 0 .. budget-1   evaluation stages at Optuna's suggestions, on the cheap search protocol
                               (search.samples_per_class images per class, one sampling seed shared by
                               every point, so points differ only in their settings)
      -> chosen                the best point's settings evaluated again on the study's protocol with
                               the trial's own (fresh) sampling seed: the trial's result, `searched`

Every point is an ordinary evaluation stage keyed by its settings, so a suggestion seen before (in
this search, another search or a grid) is a cache hit. The search's own state is a journal in the
store, `<store>/searches/<id>.jsonl`, one line per point written *before* the point runs, and one
line for the chosen evaluation:

    {"index": 3, "params": {"cfg_scale": 3.71}, "key": "<evaluation key>"}
    {"chosen": {"cfg_scale": 2.94}, "key": "<evaluation key>"}

So a search killed at any moment resumes to exactly its budget: journaled points whose stage
finished are replayed into the sampler (`OptunaSearch.add_evaluated_point`), journaled points that
did not finish run again with the same settings, and new points are suggested only while fewer than
`budget` are journaled. The search id hashes everything that determines the points except the
budget and the concurrency, so raising the budget later continues the same search.

Tune's OptunaSearch is used as an ask/tell object from the driver (suggest / on_trial_complete),
not as the Tuner's search algorithm: the Tuner's searcher is the stage DAG's (sweep/executors.py),
which asks each running search for its next stage. That keeps one ledger (the store) for grids and
searches alike and lets the serial executor run searches too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from space.schema import Search, Settings, Spec, compose
from sweep.faults import fault_point
from sweep.keys import content_key, derive_seed
from sweep.plan import Stage, plan_stage

JOURNAL_DIR = "searches"


@dataclass(frozen=True, eq=False)
class SearchPlan:
    """One search: a trained generator, the evaluation settings around the searched axes, the search block."""

    id: str
    study: str
    spec: Spec
    config: Search
    settings: Settings  # the trial's settings (searched axes at their baseline values, unused)
    sampling_seed: int  # the chosen evaluation's: the trial's own, fresh with respect to the points'
    point_seed: int  # shared by every point: common random numbers across the suggestions
    inputs: dict[str, str]
    columns: dict[str, Any]

    @property
    def depends_on(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.inputs.values()))

    def point(self, index: int, params: dict[str, Any]) -> Stage:
        settings = compose(self.settings, params, {"samples_per_class": self.config.samples_per_class})
        columns = {**self.columns, **settings.model_dump(), "sampling_seed": self.point_seed,
                   "search_point": True, "search_id": self.id, "search_index": index}
        return plan_stage(self.spec, "evaluation", settings, {"sampling_seed": self.point_seed}, self.inputs, columns)

    def chosen(self, params: dict[str, Any]) -> Stage:
        settings = compose(self.settings, params)
        columns = {**self.columns, **settings.model_dump(), "sampling_seed": self.sampling_seed,
                   "searched": True, "search_id": self.id, "search_axes": ",".join(self.config.axes)}
        return plan_stage(self.spec, "evaluation", settings, {"sampling_seed": self.sampling_seed}, self.inputs, columns)


def plan_search(
    spec: Spec, study: str, config: Search, settings: Settings, sampling_seed: int, inputs: dict[str, str],
    columns: dict[str, Any],
) -> SearchPlan:
    """The search of one trial; its id hashes what determines its points (not the budget or concurrency)."""
    base = plan_stage(spec, "evaluation", settings, {}, inputs, {})
    fixed = {name: value for name, value in base.settings.items() if name not in config.axes}
    space = config.model_dump(mode="json", exclude={"budget", "concurrency"})
    search_id = content_key("search", {"evaluation": fixed, "search": space}, inputs, base.code)
    return SearchPlan(
        id=search_id, study=study, spec=spec, config=config, settings=settings, sampling_seed=sampling_seed,
        point_seed=derive_seed("search-points", search_id), inputs=inputs, columns=columns,
    )


# ---------------------------------------------------------------------------------------------------------------
# the journal


def journal_path(store_root: str | Path, search_id: str) -> Path:
    return Path(store_root) / JOURNAL_DIR / f"{search_id}.jsonl"


def read_journal(store_root: str | Path, search_id: str) -> tuple[dict[int, dict[str, Any]], dict[str, Any] | None]:
    """(points by index, the chosen entry or None); a line cut short by a kill is ignored."""
    path = journal_path(store_root, search_id)
    points: dict[int, dict[str, Any]] = {}
    chosen = None
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if "chosen" in entry:
                chosen = entry
            else:
                points.setdefault(int(entry["index"]), entry)  # the first line of an index is the point
    return points, chosen


def _append(path: Path, entry: dict[str, Any]) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:  # one short line: written whole or cut short (then ignored on reading)
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------------------------
# a search at run time (in the driver)


@dataclass
class SearchRun:
    """Drives one search: hands out its next stage, hears back rows, ends with the chosen evaluation."""

    plan: SearchPlan
    store: Any  # sweep.store.Store
    points: dict[int, dict[str, Any]] = field(default_factory=dict)  # index -> {params, key, value, state}
    chosen_key: str | None = None
    chosen_params: dict[str, Any] | None = None
    chosen_running: bool = False
    done: bool = False
    abandoned: str = ""  # why the search stopped without a chosen evaluation

    def __post_init__(self) -> None:
        from ray.tune.search.optuna import OptunaSearch

        logging.getLogger("optuna").setLevel(logging.WARNING)
        config = self.plan.config
        journaled, chosen = read_journal(self.store.root, self.plan.id)
        # Replayed points do not advance the sampler's random state: a resumed search seeded like the
        # first process would suggest that process's first points again. Its seed depends on how many
        # points are journaled, so it goes on with new draws (still deterministic for a given history).
        seed = config.seed if not journaled else derive_seed("optuna-resume", config.seed, len(journaled))
        self.optuna = OptunaSearch(space=config.distributions(), metric=config.metric, mode=config.mode, seed=seed)
        self.asked: set[int] = set()  # indices suggested by this process (told through on_trial_complete)
        for index in sorted(journaled):
            entry = journaled[index]
            point = {"params": entry["params"], "key": entry["key"], "value": None, "state": "todo"}
            self.points[index] = point
            row = self.store.row("evaluation", entry["key"])
            if row is not None:
                self._resolve(index, row)
        if chosen is not None and len(self.points) >= config.budget:  # (a raised budget chooses again)
            self.chosen_key = chosen["key"]
            self.chosen_params = chosen["chosen"]
            self.done = self.store.row("evaluation", chosen["key"]) is not None

    # -- what the ledger asks

    def remaining(self) -> int:
        """At most how many more stages this search will hand out."""
        if self.done:
            return 0
        unresolved = sum(1 for p in self.points.values() if p["state"] in ("todo", "running"))
        return unresolved + max(0, self.plan.config.budget - len(self.points)) + 1

    def next_stage(self) -> Stage | None:
        """The next stage to run (a point or the chosen evaluation), or None for now."""
        if self.done:
            return None
        config = self.plan.config
        running = sum(1 for p in self.points.values() if p["state"] == "running")
        for index, point in sorted(self.points.items()):  # journaled before a kill: same settings again
            if point["state"] == "todo" and running < config.concurrency:
                point["state"] = "running"
                return self.plan.point(index, point["params"])
        if len(self.points) < config.budget and running < config.concurrency:
            index = len(self.points)
            params = self._clean(self.optuna.suggest(str(index)))
            self.asked.add(index)
            stage = self.plan.point(index, params)
            _append(journal_path(self.store.root, self.plan.id), {"index": index, "params": params, "key": stage.key})
            self.points[index] = {"params": params, "key": stage.key, "value": None, "state": "running"}
            fault_point("search_suggested")
            return stage
        if running or len(self.points) < config.budget:
            return None
        if self.chosen_key is None:
            scored = [(p["value"], index) for index, p in self.points.items() if p["state"] == "finished"]
            if not scored:
                self.done, self.abandoned = True, f"every one of its {len(self.points)} points failed"
                return None
            sign = 1.0 if config.mode == "min" else -1.0
            _, best = min((sign * value, index) for value, index in scored)  # ties: the earliest point
            self.chosen_params = self.points[best]["params"]
            stage = self.plan.chosen(self.chosen_params)
            _append(journal_path(self.store.root, self.plan.id), {"chosen": self.chosen_params, "key": stage.key})
            self.chosen_key, self.chosen_running = stage.key, True
            return stage
        if not self.chosen_running:  # journaled before a kill, not finished: run it again
            self.chosen_running = True
            return self.plan.chosen(self.chosen_params or {})
        return None

    def waiting_on(self, key: str) -> bool:
        return key == self.chosen_key or any(p["key"] == key and p["state"] == "running" for p in self.points.values())

    def complete(self, key: str, row: dict[str, Any]) -> None:
        """A stage this search waits on ended with `row` (finished or failed)."""
        if key == self.chosen_key and self.chosen_running:
            self.done = True
        for index, point in self.points.items():
            if point["key"] == key and point["state"] == "running":
                self._resolve(index, row)

    def abandon(self, reason: str) -> None:
        self.done, self.abandoned = True, reason

    # -- helpers

    def _resolve(self, index: int, row: dict[str, Any]) -> None:
        point = self.points[index]
        metric = self.plan.config.metric
        value = row.get(metric) if row.get("status") == "finished" else None
        ok = value is not None and value == value  # NaN is a failed point
        point.update(value=float(value) if ok else None, state="finished" if ok else "failed")
        if index in self.asked:
            self.optuna.on_trial_complete(str(index), {metric: float(value)} if ok else None, error=not ok)
        else:
            self.optuna.add_evaluated_point(point["params"], float(value) if ok else 0.0, error=not ok)

    def _clean(self, params: dict[str, Any]) -> dict[str, Any]:
        """Plain JSON types of the axes (numpy scalars from Optuna become int/float)."""
        clean = {}
        for name, value in params.items():
            kind = Settings.model_fields[name].annotation
            clean[name] = int(value) if kind is int else float(value) if kind is float else value
        return clean

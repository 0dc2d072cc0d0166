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
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from sweep.plan import Stage
from sweep.worker import base_row, execute, now_iso

# on_event(event, stage, row): event is "started", "finished", "failed", "skipped", "pruned", "cached" or
# "retried" (its worker was lost and it runs again in this run).
EventHandler = Callable[[str, Stage, dict[str, Any]], None]


class ClusterError(RuntimeError):
    """The Ray cluster cannot be reached or cannot run this sweep (bad --address, a store the workers
    cannot see); `sweep run` exits 2 with the message."""


class Executor(Protocol):
    name: str

    def connect(self) -> None:
        """Reach the compute before anything is written (raises ClusterError)."""

    def run(self, stages: list[Stage], store_root: str, context: dict[str, Any], on_event: EventHandler,
            searches: Sequence[Any] = ()) -> None:
        """Run `stages` (in dependency order) and the stages `searches` hand out; every stage ends as a row,
        finished, failed or skipped."""


@dataclass
class Ledger:
    """Which of the stages to run are done, failed, running, or waiting; drives both executors.

    Besides the planned stages it runs searches (sweep/search.py): once a search's inputs are finished
    it asks the search for its next stage; a stage the store already holds is answered from the store
    at once (`on_cached`), one that is planned or running already is simply awaited.
    """

    stages: list[Stage]
    searches: Sequence[Any] = ()  # sweep.search.SearchRun
    store: Any = None  # sweep.store.Store: answers search stages that are already finished
    on_cached: Callable[[Stage, dict[str, Any]], None] | None = None
    finished: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason
    running: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.by_key = {stage.key: stage for stage in self.stages}
        self.pending = [stage.key for stage in self.stages]

    can_start: Callable[[Stage, list[Stage]], bool] | None = None  # (stage, running stages): room for it now?
    attempts: dict[str, int] = field(default_factory=dict)  # key -> attempts whose worker was lost in this run

    def ready(self) -> Stage | None:
        """The next pending stage whose inputs (among the stages to run) are all finished and that
        `can_start` (if given) lets start beside the running ones."""
        for key in self.pending:
            stage = self.by_key[key]
            if self._inputs_ready(stage.depends_on) and (
                self.can_start is None or self.can_start(stage, [self.by_key[k] for k in self.running])
            ):
                self.pending.remove(key)
                self.running.add(key)
                return stage
        for search in self.searches:
            if not search.done and self._inputs_ready(search.plan.depends_on):
                if (stage := self._search_stage(search)) is not None:
                    return stage
        return None

    def _inputs_ready(self, keys: Sequence[str]) -> bool:
        return all(dep not in self.by_key or dep in self.finished for dep in keys)

    def _search_stage(self, search: Any) -> Stage | None:
        while (stage := search.next_stage()) is not None:
            if stage.key in self.running or stage.key in self.pending:
                continue  # the same evaluation is planned or running already: its row answers this one too
            if stage.key in self.failed:
                search.complete(stage.key, {"status": "failed", "error": self.failed[stage.key]})
                continue
            if self.store is not None and (row := self.store.row(stage.kind, stage.key)) is not None:
                search.complete(stage.key, row)
                if self.on_cached is not None:
                    self.on_cached(stage, row)
                continue
            self.by_key[stage.key] = stage
            self.running.add(stage.key)
            return stage
        return None

    def remaining(self) -> int:
        """At most how many more stages this ledger hands out, retries of lost workers included."""
        stages = len(self.pending) + len(self.running) + sum(search.remaining() for search in self.searches)
        most_retries = max((int(s.runtime.get("retries", 0)) for s in self.stages), default=0)
        return stages * (1 + most_retries)

    def retry_lost(self, key: str) -> bool:
        """Put a stage whose worker was lost back in line if `runtime.retries` allows another attempt.

        Each lost worker uses one attempt of the stage's 1 + retries in this run, as a raised error does
        (`execute` goes on counting from `attempts_before`)."""
        stage = self.by_key[key]
        used = self.attempts.get(key, 0) + 1
        if used > int(stage.runtime.get("retries", 0)):
            return False
        self.attempts[key] = used
        self.running.discard(key)
        self.pending.insert(0, key)
        return True

    def complete(self, key: str, row: dict[str, Any]) -> list[tuple[Stage, str]]:
        """Record a stage's row; returns the dependants skipped because it failed, with the reason."""
        self.running.discard(key)
        for search in self.searches:
            if search.waiting_on(key):
                search.complete(key, row)
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
        for search in self.searches:
            lost = [dep for dep in search.plan.depends_on if dep in self.failed]
            if lost and not search.done:
                search.abandon(f"input {self.by_key[lost[0]].kind} {lost[0]} did not finish: {self.failed[lost[0]]}")
        return skipped

    @property
    def done(self) -> bool:
        return not self.pending and not self.running and all(search.done for search in self.searches)


def skipped_row(stage: Stage, context: dict[str, Any], reason: str) -> dict[str, Any]:
    row = base_row(stage, context)
    row.update(status="skipped", failure_kind="upstream", error=reason, started_at=now_iso(), ended_at=now_iso(), wall_s=0.0)
    return row


class SerialExecutor:
    """Runs the stage functions in this process, in dependency order."""

    name = "serial"

    def connect(self) -> None:
        pass  # runs in this process: nothing to reach

    def run(self, stages: list[Stage], store_root: str, context: dict[str, Any], on_event: EventHandler,
            searches: Sequence[Any] = ()) -> None:
        from sweep.store import Store

        ledger = Ledger(stages, searches, Store(store_root), lambda stage, row: on_event("cached", stage, row))
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

    row = execute(stage, config["store"], config["context"], meta, report=report,
                  attempts_before=int(config.get("attempts_before", 0)))
    summary = {name: value for name, value in row.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    tune.report({**summary, "status": row["status"], "error": row.get("error", ""), "stage_key": stage.key})


class RayExecutor:
    """Every stage is a Ray Tune trial; a stage starts once its inputs exist.

    Without `address` it starts a private Ray for this command (see the module docstring) and ends it
    when the command ends; with `address` it joins that cluster, refusing within 30 s if none answers.
    """

    name = "ray"

    def __init__(self, run_dir: Path, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.started_here = False  # this executor started (or joined) Ray and shuts it down after the run
        self._restore: Callable[[], None] = lambda: None

    def _runtime_env(self) -> dict[str, Any]:
        project_root = str(Path(__file__).resolve().parent.parent)
        return {"env_vars": {"PYTHONPATH": project_root, "RAY_USAGE_STATS_ENABLED": "0"}}

    def connect(self) -> None:
        """Join the --address cluster now, before the run folder is written; raises ClusterError if it cannot.

        `ray.init` alone retries an address where no Ray answers for minutes, so the address is first asked
        whether it speaks gRPC at all (a Ray GCS does), within 5 s each for connecting and answering.
        The local private Ray is started later, in `run`, once the run folder's lock is held."""
        if self.address is None:
            return
        _quiet_ray_environment()
        import ray

        if ray.is_initialized():
            return
        host, port = _cluster_host_port(self.address)
        token_hint = ("if it uses token authentication, export RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, "
                      "RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token; `ray get-auth-token` on the head prints it)")
        if "://" not in self.address:  # Ray Client (ray://) is checked by ray.init itself
            if problem := _grpc_problem(host, port, timeout_s=5.0):
                raise ClusterError(f"--address {self.address}: no Ray cluster answers at {host}:{port} ({problem}); "
                                   f"start one with `ray start --head` there, or give a head node's GCS address "
                                   f"(port 6379 unless `ray start --port` said otherwise)")
            from ray._raylet import GcsClient
            from ray.exceptions import AuthenticationError

            try:  # a refused token fails here at once; ray.init would retry it for a while
                GcsClient(address=f"{host}:{port}").internal_kv_get(b"elm-sweep", None, timeout=10)
            except AuthenticationError as error:
                raise ClusterError(f"--address {self.address}: the Ray cluster refused this driver ({error}); "
                                   f"{token_hint}") from None
        try:
            ray.init(address=self.address, log_to_driver=False, logging_level="WARNING", runtime_env=self._runtime_env())
        except Exception as error:  # noqa: BLE001 - Ray raises several kinds; each means "cannot join"
            raise ClusterError(f"--address {self.address}: could not join the Ray cluster ({type(error).__name__}: "
                               f"{error}); {token_hint}") from None
        self.started_here = True

    def _start_private_ray(self) -> None:
        """A new Ray for this command only: on 127.0.0.1, token authentication on, never an existing cluster."""
        saved = {name: os.environ.get(name) for name in _PRIVATE_RAY_ENV}
        os.environ.update({
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_urlsafe(32),  # lives in this process's environment and its children's only
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's switch for a loopback-only node address (read at import)
        })
        import ray
        from ray._private import ray_constants
        from ray._raylet import AuthenticationTokenLoader, Config

        single_machine = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False  # Ray imported before this point read the switch already
        Config.initialize("")  # Ray reads RAY_AUTH_MODE into its config; the same refresh ray.init does for its own default
        AuthenticationTokenLoader.instance().reset_cache()

        def restore() -> None:
            ray_constants.ENABLE_RAY_CLUSTER = single_machine
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

        self._restore = restore
        # address="local": a new cluster even when RAY_ADDRESS or the record of the latest `ray start` names one.
        ray.init(
            address="local", _node_ip_address="127.0.0.1", num_cpus=self.num_cpus, num_gpus=self.num_gpus,
            include_dashboard=False, log_to_driver=False, logging_level="WARNING", runtime_env=self._runtime_env(),
        )
        self.started_here = True
        record_ray_processes(self.run_dir)

    def run(self, stages: list[Stage], store_root: str, context: dict[str, Any], on_event: EventHandler,
            searches: Sequence[Any] = ()) -> None:
        _quiet_ray_environment()
        import ray

        previous_sigterm = signal.getsignal(signal.SIGTERM)
        try:
            if not ray.is_initialized():
                if self.address is None:
                    self._start_private_ray()
                else:
                    self.connect()
            signal.signal(signal.SIGTERM, interrupt)  # ray.init makes SIGTERM exit at once; ours is Ctrl-C's path
            if self.address is not None:
                check_store_visible(Path(store_root), _write_on_every_node)
            self._run(stages, store_root, context, on_event, searches)
        finally:
            if self.started_here:
                ray.shutdown()
                self.started_here = False
                (self.run_dir / "ray_processes.json").unlink(missing_ok=True)
            self._restore()
            self._restore = lambda: None
            signal.signal(signal.SIGTERM, previous_sigterm)

    def _run(self, stages: list[Stage], store_root: str, context: dict[str, Any], on_event: EventHandler,
             searches: Sequence[Any]) -> None:
        import ray
        from ray import tune
        from sweep.store import Store

        store = Store(store_root)
        ledger = Ledger(stages, searches, store, lambda stage, row: on_event("cached", stage, row))
        totals = ray.cluster_resources()
        ledger.can_start = lambda stage, running: data_parallel_fits(
            stage, running, totals.get("CPU", 0.0), totals.get("GPU", 0.0))
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
        if searches:  # their stages are evaluations: if no node fits one, the searches cannot run
            probe = searches[0].plan.point(0, {})
            if reason := unschedulable([probe]).get(probe.key):
                for search in searches:
                    search.abandon(reason)
        searcher = _stage_searcher_class()(ledger, store, context, on_event)

        def resources(config: dict[str, Any]) -> Any:
            from ray.tune import PlacementGroupFactory

            from space.schema import COORDINATOR_CPUS, Resources

            need = Resources(**config["stage"]["resources"])
            if need.num_workers > 1:
                # Data-parallel stage: the trial itself only coordinates (data, tokenizer, held-out loss); Ray Train
                # reserves its workers' bundles (need.cpus and need.gpus split over them) in a placement group of
                # its own, outside this trial's (Train V2 starts its controller with 0 CPUs).
                return PlacementGroupFactory([{"CPU": COORDINATOR_CPUS, "GPU": 0}])
            return PlacementGroupFactory([{"CPU": need.cpus, "GPU": need.gpus}])

        trainable = tune.with_resources(_stage_trainable, resources)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=max(1, ledger.remaining()),  # an upper bound: the searcher ends the run
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
        if not ledger.done:
            tuner.fit()
        if interrupted():  # the KeyboardInterrupt raised by the handler was lost inside Tune
            raise KeyboardInterrupt("interrupted while Tune ran")


# What the private Ray changes in this process's environment (restored when the run ends).
_PRIVATE_RAY_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


def _quiet_ray_environment() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter honours verbose=0; ours prints progress
    # Ctrl-C reaches us as KeyboardInterrupt (exit 130, "run the same command again") instead of Tune ending its
    # loop quietly and advising Tuner.restore: the store, not Tune's experiment state, is what a rerun resumes from.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"


INTERRUPTED = threading.Event()
"""Set by `interrupt`: once set, no new stage starts and the Ray run ends with KeyboardInterrupt even where a
library swallowed the one the handler raised (cleared by `install_interrupt_handlers`). Read it through
`interrupted()`: Tune pickles the searcher class by value, and an Event (a lock) does not pickle."""


def interrupted() -> bool:
    return INTERRUPTED.is_set()


def interrupt(signum: int, frame: Any) -> None:
    """SIGINT / SIGTERM handler: remember the signal, then stop the run the way Ctrl-C does."""
    INTERRUPTED.set()
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def install_interrupt_handlers() -> None:
    """SIGINT and SIGTERM end a run alike: KeyboardInterrupt now, and no stage started after it (see INTERRUPTED).
    Also where the process was started with SIGINT ignored (e.g. a background job of a script)."""
    INTERRUPTED.clear()
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _cluster_host_port(address: str) -> tuple[str, int]:
    """The host and port `--address` points at, as `ray.init` resolves them ("auto": the cluster Ray would
    find; localhost: this node's address unless Ray is kept to loopback)."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        resolved = address.split("://", 1)[1] if "://" in address else canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as error:
        raise ClusterError(f"--address {address}: {error}") from None
    host, _, port = (resolved or "").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address must be host:port, ray://host:port or auto, but got {address!r}; "
                           f"e.g. --address 10.0.0.1:6379")
    return host.strip("[]"), int(port)


def _grpc_problem(host: str, port: int, timeout_s: float) -> str:
    """Why nothing gRPC answers at host:port ('' if something does): a gRPC server (a Ray GCS among them)
    answers the HTTP/2 connection preface with a SETTINGS frame at once."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + an empty SETTINGS frame
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            connection.sendall(preface)
            header = connection.recv(9)  # length (3), type (1), flags (1), stream (4)
    except socket.timeout:
        return f"no answer within {timeout_s:.0f}s"
    except OSError as error:
        return error.strerror or str(error)
    return "" if len(header) >= 4 and header[3] == 4 else "it does not speak gRPC"


PROBE_PREFIX = ".visible-"


def check_store_visible(store_root: Path, write_on_every_node: Callable[[Path, str], dict[str, str]]) -> None:
    """Refuse (ClusterError) unless every node of the cluster sees the store this driver writes to.

    `write_on_every_node(folder, name)` has a worker on each node write `folder/name` holding that node's
    id and returns {node id: where it wrote or why it could not}; the driver then reads every file back.
    A node whose file this driver cannot read writes elsewhere (a local disk, another mount): its stages'
    artifacts would be invisible to the driver and to the other nodes.
    """
    store_root = Path(store_root)
    store_root.mkdir(parents=True, exist_ok=True)
    name = f"{PROBE_PREFIX}{secrets.token_hex(6)}"
    try:
        outcomes = write_on_every_node(store_root, name)
        unseen = []
        for node, outcome in sorted(outcomes.items()):
            path = store_root / f"{name}-{node}"
            if not (path.is_file() and path.read_text() == node):
                unseen.append(f"node {node[:12]} ({outcome})")
    finally:
        for path in store_root.glob(f"{name}-*"):
            path.unlink(missing_ok=True)
    if unseen:
        raise ClusterError(
            f"the store {store_root} is not shared with every Ray node: this driver cannot read what a worker "
            f"wrote there on {'; '.join(unseen)}. Put the store on a filesystem mounted at the same path on every "
            f"node (--store /shared/path) and run the driver where it is mounted"
        )


def _write_on_every_node(folder: Path, name: str) -> dict[str, str]:
    """One zero-CPU task pinned to each alive node writes `folder/<name>-<node id>`; returns what each reported."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def write(path: str, node: str) -> str:
        import socket as host

        try:
            Path(path).write_text(node)
        except OSError as error:
            return f"on {host.gethostname()} it could not write {path}: {error}"
        return f"on {host.gethostname()} it wrote {path}"

    nodes = [node["NodeID"] for node in ray.nodes() if node.get("Alive")]
    tasks = {node: write.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
             .remote(str(folder / f"{name}-{node}"), node) for node in nodes}
    return dict(zip(tasks, ray.get(list(tasks.values()), timeout=120)))


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
            if interrupted():  # interrupted: nothing new starts; the run ends as soon as Tune returns
                return Searcher.FINISHED
            stage = self.ledger.ready()
            if stage is None:
                return Searcher.FINISHED if self.ledger.done else None
            self.trial_keys[trial_id] = stage.key
            self.on_event("started", stage, {})
            return {"stage": stage.to_json(), "store": str(self.store.root), "context": self.context,
                    "attempts_before": self.ledger.attempts.get(stage.key, 0)}

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            if trial_id in self.trial_keys and "step" in result:
                self.on_event("progress", self.ledger.by_key[self.trial_keys[trial_id]], result)

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            key = self.trial_keys[trial_id]
            stage = self.ledger.by_key[key]
            row = _row_of(self.store, stage, self.context, result, error)
            if error and row.get("failure_kind") == "lost" and self.ledger.retry_lost(key):
                self.on_event("retried", stage, row)  # a new worker runs it again in this run
                return
            self.on_event(row["status"], stage, row)
            for skipped, reason in self.ledger.complete(key, row):
                skip = skipped_row(skipped, self.context, reason)
                self.store.record_failure(skipped.kind, skipped.key, skip)
                self.on_event("skipped", skipped, skip)

    return StageSearcher


def data_parallel_fits(stage: Stage, running: list[Stage], total_cpus: float, total_gpus: float) -> bool:
    """Whether a data-parallel stage may start beside the running ones.

    Its Tune trial holds only a coordinator CPU and Ray Train reserves the workers afterwards, so Tune
    alone would start as many coordinators as CPUs allow and leave no CPUs for their workers: a
    deadlock. A data-parallel stage therefore starts only when its workers and coordinator fit in the
    cluster's totals beside the data-parallel stages already running (the first one always may:
    `unschedulable` has checked that it fits on its own). Other stages always may: they wait on nothing.
    """
    from space.schema import COORDINATOR_CPUS

    if stage.resources.num_workers <= 1:
        return True
    parallel = [s for s in running if s.resources.num_workers > 1]
    if not parallel:
        return True
    cpus = sum(s.resources.cpus + COORDINATOR_CPUS for s in [*parallel, stage])
    gpus = sum(s.resources.gpus for s in [*parallel, stage])
    return cpus <= total_cpus + 1e-9 and gpus <= total_gpus + 1e-9


def unschedulable(stages: list[Stage]) -> dict[str, str]:
    """Keys of the stages that no alive node of the connected Ray cluster can ever fit, with the reason.

    A data-parallel stage needs its coordinator bundle (COORDINATOR_CPUS) on some node, each worker's bundle
    (cpus and gpus split over the workers) on some node, and all of them together within the cluster's total.
    """
    import ray

    from space.schema import COORDINATOR_CPUS

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    most_gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    total_cpus = sum(n.get("CPU", 0.0) for n in nodes)
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)

    def bundles_on(node: dict[str, float], cpus: float, gpus: float) -> int:
        """How many bundles of (cpus, gpus) one node holds."""
        by_cpu = int(node.get("CPU", 0.0) / cpus + 1e-9)
        return min(by_cpu, int(node.get("GPU", 0.0) / gpus + 1e-9)) if gpus > 0 else by_cpu

    found = {}
    for stage in stages:
        need = stage.resources
        workers = need.num_workers
        if workers == 1 and (need.cpus > most_cpus or need.gpus > most_gpus):
            found[stage.key] = (
                f"needs {need.cpus:g} CPUs and {need.gpus:g} GPUs on one node, but the largest node of this Ray "
                f"cluster has {most_cpus:g} CPUs and {most_gpus:g} GPUs; lower resources.{stage.kind} in the spec "
                f"or add a node that fits"
            )
        elif workers > 1:
            cpus, gpus = need.cpus_per_worker, need.gpus_per_worker
            placeable = sum(bundles_on(node, cpus, gpus) for node in nodes)
            if (placeable < workers or COORDINATOR_CPUS > most_cpus
                    or need.cpus + COORDINATOR_CPUS > total_cpus + 1e-9 or need.gpus > total_gpus + 1e-9):
                found[stage.key] = (
                    f"needs {workers} data-parallel workers of {cpus:g} CPUs and {gpus:g} GPUs each (plus "
                    f"{COORDINATOR_CPUS:g} CPU to coordinate), but this Ray cluster holds {placeable} such workers "
                    f"({total_cpus:g} CPUs and {total_gpus:g} GPUs in all, at most {most_cpus:g} CPUs and "
                    f"{most_gpus:g} GPUs on one node); lower resources.{stage.kind} (cpus, gpus or workers) in the "
                    f"spec or add nodes"
                )
    return found


def _trial_name(trial: Any) -> str:
    stage = trial.config["stage"]
    return f"{stage['kind']}-{stage['key']}"


def _row_of(store: Any, stage: Stage, context: dict[str, Any], result: dict[str, Any] | None, error: bool) -> dict[str, Any]:
    """The row a finished trial left in the store; a failure row if the worker died before writing one."""
    if (row := store.row(stage.kind, stage.key)) is not None:
        return row
    failure = store.failure(stage.kind, stage.key)
    if failure is not None and not error:
        return failure
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

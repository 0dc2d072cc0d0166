"""`sweep run` exits 0 when every stage of the plan is finished, 1 when any failed (listing them and how to
retry), 130 on Ctrl-C or SIGTERM (saying that the same command resumes, never Tune's restore advice); a stage
whose worker process is killed runs again in the same run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from space.schema import load_spec
from sweep.executors import INTERRUPTED, Ledger, _stage_searcher_class
from sweep.plan import make_plan
from sweep_tests.ray_cluster import FIXTURES, REPO, base_env, private_tmpdir, sweep


def test_a_lost_worker_uses_one_of_runtime_retries():
    stages = list(make_plan(load_spec(FIXTURES / "ops.yaml")).stages.values())  # runtime.retries: 1
    ledger = Ledger(stages)
    stage = ledger.ready()
    assert ledger.retry_lost(stage.key) and ledger.pending[0] == stage.key and stage.key not in ledger.running
    assert ledger.attempts == {stage.key: 1}  # the next trial's execute starts counting at attempt 2
    assert ledger.ready() is stage and not ledger.retry_lost(stage.key)  # its one retry is spent
    assert ledger.attempts == {stage.key: 1}


def test_once_interrupted_the_searcher_starts_no_stage(tmp_path):
    """If Tune swallowed the KeyboardInterrupt of a signal, the flag the handler set still stops the run: no stage
    is handed out after it (and RayExecutor raises KeyboardInterrupt when Tune returns)."""
    from ray.tune.search import Searcher

    from sweep.store import Store

    stages = list(make_plan(load_spec(FIXTURES / "ops.yaml")).stages.values())
    searcher = _stage_searcher_class()(Ledger(stages), Store(tmp_path), {}, lambda *_: None)
    try:
        INTERRUPTED.set()
        assert searcher.suggest("t0") == Searcher.FINISHED
        INTERRUPTED.clear()
        assert searcher.suggest("t1")["stage"] == stages[0].to_json()  # the same searcher hands the stage out
    finally:
        INTERRUPTED.clear()


@pytest.mark.slow
def test_a_run_whose_every_stage_failed_exits_1_and_says_how_to_retry(tmp_path):
    spec = yaml.safe_load((FIXTURES / "ops.yaml").read_text())
    spec["resources"] = {"classifier": {"cpus": 99}, "tokenizer": {"cpus": 99}}  # no node fits: both fail
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    args = [str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "run"), "--num-cpus", "1"]
    with private_tmpdir() as tmpdir:
        first = sweep(args, tmpdir, timeout=180)
        again = sweep(args, tmpdir, timeout=180)  # kept failed: still not a finished plan
    assert first.returncode == 1, first.stdout + first.stderr[-3000:]
    assert "6 stages did not finish" in first.stdout and "--retry-failed" in first.stdout
    assert "classifier" in first.stdout and "needs 99 CPUs" in first.stdout
    assert again.returncode == 1 and "6 stages did not finish" in again.stdout


class Driver:
    """A `sweep run` subprocess whose output is read as it comes."""

    def __init__(self, args: list[str], tmpdir: Path, sigint_ignored: bool = False) -> None:
        # sigint_ignored: started as a script's background job is, with SIGINT ignored (inherited by the process)
        ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
        self.process = subprocess.Popen([sys.executable, "-m", "sweep.cli", "run", *args], env=base_env(tmpdir),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                        preexec_fn=ignore)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def wait_for(self, condition, timeout: float = 300.0) -> None:
        deadline = time.time() + timeout
        while not condition():
            assert self.process.poll() is None and time.time() < deadline, "".join(self.lines)[-3000:]
            time.sleep(0.05)

    def finish(self, timeout: float = 600.0) -> int:
        returncode = self.process.wait(timeout=timeout)
        time.sleep(0.2)  # the reader thread drains the last lines
        return returncode

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.mark.slow
@pytest.mark.parametrize("signum, sigint_ignored", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGINT", "SIGTERM", "SIGINT-ignored-at-start"])
def test_an_interrupted_run_exits_130_and_says_the_same_command_resumes(signum, sigint_ignored, tmp_path):
    with private_tmpdir() as tmpdir:
        driver = Driver([str(FIXTURES / "ops.yaml"), "--out", str(tmp_path / "run"), "--num-cpus", "2"], tmpdir,
                        sigint_ignored)
        try:
            driver.wait_for(lambda: "start   " in driver.output)  # stages handed to Ray workers
            ray_processes = psutil.Process(driver.process.pid).children(recursive=True)
            driver.process.send_signal(signum)
            returncode = driver.finish(timeout=120)
        finally:
            if driver.process.poll() is None:
                driver.process.kill()
    assert returncode == 130, driver.output[-3000:]
    assert "run the same command again to resume" in driver.output
    assert "Tuner.restore" not in driver.output and "Resume experiment" not in driver.output
    _, alive = psutil.wait_procs(ray_processes, timeout=30)  # the private Ray ended with its driver
    assert not alive, [p.pid for p in alive]


@pytest.mark.slow
def test_a_killed_worker_is_retried_in_the_same_run_within_runtime_retries(tmp_path):
    out = tmp_path / "run"  # ops.yaml: runtime.retries 1
    killed = []

    def kill_the_generator_worker() -> bool:
        for tmp in out.glob("stages/generator/.tmp-*"):
            pid = int(tmp.name.split("-")[2])  # .tmp-<key>-<worker pid>-<random>
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return True
        return False

    with private_tmpdir() as tmpdir:
        driver = Driver([str(FIXTURES / "ops.yaml"), "--out", str(out), "--num-cpus", "2"], tmpdir)
        try:
            driver.wait_for(kill_the_generator_worker)
            returncode = driver.finish()
        finally:
            if driver.process.poll() is None:
                driver.process.kill()
    assert returncode == 0, driver.output[-3000:]
    assert "retry   generator" in driver.output
    (generator,) = [pd.read_parquet(p) for p in out.glob("stages/generator/*/row.parquet")]
    assert generator["attempts"].iloc[0] == 2 and generator["worker_pid"].iloc[0] != killed[0]
    assert not list(out.glob("stages/failed/*/*.parquet"))  # nothing left failed
    assert "6 finished" in driver.output and "1 retried" in driver.output

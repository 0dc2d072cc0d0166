"""Orchestration overhead and stage reuse, side by side in one run (not part of `make test`):

    .venv/bin/python benchmarks/bench_orchestration.py

1. A small sweep (tests/fixtures/e2e.yaml) through the serial executor and through Ray: the sweep's
   wall time against the sum of its stages' own wall times (what the orchestration adds).
   The ratio column is wall / (sum of stage times / workers) (target <= 1.25): 1 worker serially, 2 under Ray.
2. space/full.yaml: stages planned with content-keyed reuse against one tokenizer (and one
   classifier) per trial, as a tool without a stage DAG would run it.
3. Adding one cell to a finished sweep through the CLI (`sweep run`, Ray, 2 CPUs, a fresh process as a user
   would start it): run e2e.yaml, add one value to its axis (token_each 1, 2 -> 1, 2, 4), run again. The
   overhead is the second run's wall time minus the new cell's own stage times (target <= 20 s).

Every figure is printed with the machine's load average (1 min).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from space.schema import load_spec
from sweep.executors import RayExecutor, SerialExecutor
from sweep.plan import make_plan
from sweep.progress import Reporter
from sweep.results import load_results
from sweep.run import run_sweep

ROOT = Path(__file__).resolve().parent.parent


def overhead() -> None:
    spec = load_spec(ROOT / "tests" / "fixtures" / "e2e.yaml")
    print(f"{'executor':<8} {'stages':>6} {'sweep wall s':>13} {'sum of stage s':>15} {'overhead s':>11} {'ratio':>6} "
          f"{'wall/(sum/workers)':>19}  load")
    for name in ("serial", "ray"):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder)
            executor = SerialExecutor() if name == "serial" else RayExecutor(out, num_cpus=2)
            started = time.perf_counter()
            run_sweep(spec, out, executor, Reporter(Console(file=io.StringIO())))
            wall = time.perf_counter() - started
            rows = load_results(out).rows
            stage_s = sum(float(frame["wall_s"].sum()) for frame in rows.values() if not frame.empty)
            count = sum(len(frame) for frame in rows.values())
            workers = 1 if name == "serial" else 2
            print(f"{name:<8} {count:>6} {wall:>13.1f} {stage_s:>15.1f} {wall - stage_s:>11.1f} {wall / stage_s:>6.2f} "
                  f"{wall / (stage_s / workers):>19.2f}  {os.getloadavg()[0]:.1f}  (target <= 1.25)", flush=True)
    print("(on Ray, stages run side by side: the sum of stage times can exceed the wall time)")


def reuse() -> None:
    plan = make_plan(load_spec(ROOT / "space" / "full.yaml"))
    counts = plan.counts()
    trials = len(plan.trials)
    naive = {"classifier": trials, "tokenizer": trials, "generator": trials, "evaluation": trials}
    print(f"\nspace/full.yaml: {trials} trials")
    print(f"{'stage kind':<11} {'with reuse':>10} {'one per trial':>14}")
    for kind in naive:
        print(f"{kind:<11} {counts[kind]:>10} {naive[kind]:>14}")


def add_one_cell() -> None:
    source = (ROOT / "tests" / "fixtures" / "e2e.yaml").read_text()
    assert "token_each: [1, 2]" in source, "e2e.yaml's axis changed: update this benchmark"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as folder:
        spec, out = Path(folder) / "e2e.yaml", Path(folder) / "run"

        def run() -> float:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "sweep.cli", "run", str(spec), "--out", str(out), "--num-cpus", "2"],
                           check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.perf_counter() - started

        spec.write_text(source)
        first = run()
        before = {key for frame in load_results(out).rows.values() if not frame.empty for key in frame["key"]}
        spec.write_text(source.replace("token_each: [1, 2]", "token_each: [1, 2, 4]"))
        second = run()
        rows = load_results(out).rows
        new = [(kind, float(wall)) for kind, frame in rows.items() if not frame.empty
               for key, wall in zip(frame["key"], frame["wall_s"]) if key not in before]
        cell_s = sum(wall for _, wall in new)
        print(f"\nadding one cell (token_each 4) to the finished e2e sweep, CLI + Ray, 2 CPUs:")
        print(f"first run {first:.1f} s; rerun {second:.1f} s, of which the new cell's {len(new)} stages "
              f"({', '.join(kind for kind, _ in new)}) took {cell_s:.1f} s: overhead {second - cell_s:.1f} s "
              f"(target <= 20 s), load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    reuse()
    overhead()
    add_one_cell()

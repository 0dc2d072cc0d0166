"""Orchestration overhead and stage reuse, side by side in one run (not part of `make test`):

    .venv/bin/python benchmarks/bench_orchestration.py

1. A small sweep (tests/fixtures/e2e.yaml) through the serial executor and through Ray: the sweep's
   wall time against the sum of its stages' own wall times (what the orchestration adds).
2. space/full.yaml: stages planned with content-keyed reuse against one tokenizer (and one
   classifier) per trial, as a tool without a stage DAG would run it.
"""

from __future__ import annotations

import io
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
    print(f"{'executor':<8} {'stages':>6} {'sweep wall s':>13} {'sum of stage s':>15} {'overhead s':>11} {'ratio':>6}")
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
            print(f"{name:<8} {count:>6} {wall:>13.1f} {stage_s:>15.1f} {wall - stage_s:>11.1f} {wall / stage_s:>6.2f}")
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


if __name__ == "__main__":
    reuse()
    overhead()

"""Orchestration overhead and stage reuse, side by side in one run (not part of `make test`):

    .venv/bin/python benchmarks/bench_orchestration.py

1. The demo (space/tiny.yaml, `make demo`'s sweep) through the CLI with Ray on 2 CPUs, as a user starts it: the
   sweep's wall time against the sum of its stages' own wall times divided by the 2 workers (target <= 1.25).
2. space/full.yaml (planned with its asset files absent, as `sweep plan` does): stages planned with content-keyed reuse against one tokenizer (and one
   classifier) per trial, as a tool without a stage DAG would run it.
3. Adding one cell to a finished sweep through the CLI (`sweep run`, Ray, 2 CPUs, a fresh process as a user
   would start it): run e2e.yaml, add one value to its axis (token_each 1, 2 -> 1, 2, 4), run again. The
   overhead is the second run's wall time minus the new cell's own stage times (target <= 20 s).

Every figure is printed with the machine's load average (1 min).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from space.schema import load_spec
from sweep.plan import make_plan
from sweep.results import load_results

ROOT = Path(__file__).resolve().parent.parent


WORKERS = 2


def cli_run(spec: Path, out: Path) -> float:
    """`sweep run SPEC --out OUT --num-cpus 2` in a fresh process, as a user starts it; its wall seconds."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sweep.cli", "run", str(spec), "--out", str(out), "--num-cpus",
                    str(WORKERS)], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def stage_seconds(out: Path) -> tuple[int, float]:
    """Stages recorded in the run's store and the sum of their own wall times."""
    rows = load_results(out).rows
    frames = [frame for frame in rows.values() if not frame.empty]
    return sum(len(frame) for frame in frames), sum(float(frame["wall_s"].sum()) for frame in frames)


def overhead() -> None:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "demo"
        load_before = os.getloadavg()[0]
        wall = cli_run(ROOT / "space" / "tiny.yaml", out)
        count, stage_s = stage_seconds(out)
        print(f"\nthe demo (space/tiny.yaml), CLI + Ray, {WORKERS} workers: {count} stages, wall {wall:.1f} s, "
              f"sum of stage times {stage_s:.1f} s; wall / (sum / {WORKERS}) = {wall / (stage_s / WORKERS):.2f} "
              f"(target <= 1.25), load {load_before:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)


def reuse() -> None:
    plan = make_plan(load_spec(ROOT / "space" / "full.yaml"), missing_ok=True)
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
    with tempfile.TemporaryDirectory() as folder:
        spec, out = Path(folder) / "e2e.yaml", Path(folder) / "run"
        run = lambda: cli_run(spec, out)  # noqa: E731
        spec.write_text(source)
        first = run()
        before = {key for frame in load_results(out).rows.values() if not frame.empty for key in frame["key"]}
        spec.write_text(source.replace("token_each: [1, 2]", "token_each: [1, 2, 4]"))
        second = run()
        rows = load_results(out).rows
        new = [(kind, float(wall)) for kind, frame in rows.items() if not frame.empty
               for key, wall in zip(frame["key"], frame["wall_s"]) if key not in before]
        cell_s = sum(wall for _, wall in new)
        print("\nadding one cell (token_each 4) to the finished e2e sweep, CLI + Ray, 2 CPUs:")
        print(f"first run {first:.1f} s; rerun {second:.1f} s, of which the new cell's {len(new)} stages "
              f"({', '.join(kind for kind, _ in new)}) took {cell_s:.1f} s: overhead {second - cell_s:.1f} s "
              f"(target <= 20 s), load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    parts = {"reuse": reuse, "demo": overhead, "cell": add_one_cell}
    for name in sys.argv[1:] or list(parts):
        parts[name]()

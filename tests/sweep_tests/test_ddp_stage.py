"""A generator stage with `resources: {generator: {workers: 2}}` trains data-parallel (Ray Train, DDP) inside its
Ray Tune trial, and ends with the weights of the same stage trained in one process.

Deterministic loss (dropout 0, class_dropout 0): DDP's mean of the two shard gradients is the global-batch
gradient, so the weights agree up to float rounding of the reduction. On the way the data-parallel stage
checkpoints every 2 steps (rank 0 writes into the stage's checkpoint folder, removed once the stage is published).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from runners.generators import GENERATORS
from runners.artifacts import load_generator
from space.schema import Resources, parse_spec
from sweep.executors import RayExecutor, SerialExecutor
from sweep.plan import make_plan
from sweep.store import LOSSES_FILE, ROW_FILE, Store

pytestmark = pytest.mark.slow

SPEC = {  # tests/fixtures/e2e.yaml at its smallest: one tokenizer, one generator
    "schema_version": 1,
    "name": "ddp",
    "dataset": {"name": "digits", "image_size": 16},
    "seeds": [0],
    "baseline": {
        "code_dim": 8, "tokenizer_steps": 8, "generator_steps": 6, "generator_batch": 16, "generator_lr": 3e-3,
        "dropout": 0.0, "class_dropout": 0.0, "samples_per_class": 2,
    },
    "studies": [{"name": "ddp", "vary": {"token_each": [1]}}],
    "resources": {"generator": {"cpus": 1, "workers": 2}},
    "runtime": {"checkpoint_every_steps": 2, "checkpoint_every_minutes": 0},
}


def events() -> tuple[list[tuple[str, str]], Any]:
    seen: list[tuple[str, str]] = []
    return seen, lambda event, stage, row: seen.append((event, stage.kind))


def test_two_workers_in_a_tune_trial_equal_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # Train's controller notices the end sooner
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")  # a busy 2-core machine starts workers slowly
    plan = make_plan(parse_spec(SPEC))
    (generator,) = plan.of_kind("generator")
    assert generator.resources.num_workers == 2
    upstream = [plan.stages[key] for key in generator.depends_on]  # the tokenizer: trained once, copied to both stores

    ray_store, serial_store = tmp_path / "ray-store", tmp_path / "serial-store"
    SerialExecutor().run(upstream, str(ray_store), {}, lambda *_: None)
    shutil.copytree(ray_store, serial_store)

    seen, on_event = events()
    # 4 logical CPUs: the stage's coordinator (1) and two 1/2-CPU workers fit beside a spare on this 2-core machine
    RayExecutor(tmp_path / "run", num_cpus=4).run([generator], str(ray_store), {}, on_event)
    assert seen[-1] == ("finished", "generator"), seen
    single = dataclasses.replace(generator, resources=Resources(cpus=1, workers=1))
    SerialExecutor().run([single], str(serial_store), {}, lambda *_: None)

    rows, weights, losses = {}, {}, {}
    for name, root in (("ddp", ray_store), ("single", serial_store)):
        folder = Store(root).folder("generator", generator.key)  # same key: resources never enter it
        rows[name] = pd.read_parquet(folder / ROW_FILE).iloc[0]
        weights[name] = load_file(str(folder / "model.safetensors"))
        losses[name] = pd.read_parquet(folder / LOSSES_FILE)
    assert rows["ddp"]["status"] == rows["single"]["status"] == "finished"
    assert (rows["ddp"]["workers"], rows["single"]["workers"]) == (2, 1)
    assert rows["ddp"]["executor"] == "ray" and rows["single"]["executor"] == "serial"
    assert not Store(ray_store).checkpoint_folder("generator", generator.key).exists()  # published: checkpoints gone
    # both rows carry their throughput, counted the same way (global-batch positions x the same FLOPs per position)
    for name in ("ddp", "single"):
        assert rows[name]["tokens_per_s"] > 0 and pd.isna(rows[name]["mfu"]), name  # a CPU has no known peak
    assert rows["ddp"]["achieved_tflops"] / rows["ddp"]["tokens_per_s"] == pytest.approx(
        rows["single"]["achieved_tflops"] / rows["single"]["tokens_per_s"], rel=1e-9)

    assert set(weights["ddp"]) == set(weights["single"])
    for name, value in weights["single"].items():
        torch.testing.assert_close(weights["ddp"][name], value, atol=1e-5, rtol=0, msg=name)
    # the comparison can fail: six steps moved the weights far more than 1e-5 away from the initial ones
    _, config, _ = load_generator(Store(serial_store).folder("generator", generator.key), torch.device("cpu"))
    torch.manual_seed(0)  # the stage's init: torch.manual_seed(seed), then build
    initial = GENERATORS["ar"].build(config).state_dict()
    assert max((weights["single"][k] - initial[k]).abs().max().item() for k in initial) > 1e-3
    assert abs(rows["ddp"]["initial_loss"] - rows["single"]["initial_loss"]) < 1e-5
    assert rows["ddp"]["final_loss"] == pytest.approx(rows["single"]["final_loss"], abs=1e-5)
    assert rows["ddp"]["heldout_loss"] == pytest.approx(rows["single"]["heldout_loss"], abs=1e-5)
    # the same training curve: global-batch losses at the same log steps
    assert list(losses["ddp"]["step"]) == list(losses["single"]["step"])
    assert list(losses["ddp"]["loss"]) == pytest.approx(list(losses["single"]["loss"]), abs=1e-5)
    assert list(losses["ddp"]["grad_norm"]) == pytest.approx(list(losses["single"]["grad_norm"]), rel=1e-4)
    # and every logged step of both curves carries its throughput, the data-parallel one the global batch's
    for name in ("ddp", "single"):
        assert (losses[name]["tokens_per_s"] > 0).all(), name
    assert list(losses["ddp"]["achieved_tflops"] / losses["ddp"]["tokens_per_s"]) == pytest.approx(
        list(losses["single"]["achieved_tflops"] / losses["single"]["tokens_per_s"]), rel=1e-9)


def test_unschedulable_checks_each_worker_and_the_total(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from sweep.executors import unschedulable

    (generator,) = make_plan(parse_spec(SPEC)).of_kind("generator")

    def verdict(nodes: list[dict[str, float]], **need: Any) -> str:
        monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": node} for node in nodes])
        stage = dataclasses.replace(generator, resources=Resources(**need))
        return unschedulable([stage]).get(stage.key, "")

    eight = {"CPU": 16.0, "GPU": 8.0}
    assert verdict([eight], cpus=8, gpus=8) == ""  # 8 workers of 1 CPU and 1 GPU, and 1 CPU to coordinate
    assert verdict([{"CPU": 8.0, "GPU": 4.0}] * 2, cpus=8, gpus=8) == ""  # workers may spread over nodes
    message = verdict([eight], cpus=64, gpus=8)  # 8 CPUs per worker: only 2 fit next to each other
    assert "needs 8 data-parallel workers of 8 CPUs and 1 GPUs each" in message and "holds 2 such workers" in message
    assert "lower resources.generator" in message
    assert "holds 4 such workers" in verdict([{"CPU": 16.0, "GPU": 4.0}], cpus=8, gpus=8)
    assert verdict([{"CPU": 8.0, "GPU": 8.0}], cpus=8, gpus=8) != ""  # no CPU left for the coordinator
    assert "needs 99 CPUs and 0 GPUs on one node" in verdict([eight], cpus=99)  # one process: one node


def test_data_parallel_stages_start_only_while_their_workers_fit_beside_the_running_ones() -> None:
    """Tune holds only a coordinator CPU per data-parallel trial: without this check, coordinators could
    take every CPU and leave none for the workers they wait on."""
    from sweep.executors import Ledger, data_parallel_fits

    (generator,) = make_plan(parse_spec(SPEC)).of_kind("generator")
    ddp = [dataclasses.replace(generator, key=f"g{i}", resources=Resources(cpus=8, gpus=8)) for i in range(3)]
    single = dataclasses.replace(generator, key="s", resources=Resources(cpus=1, gpus=1))
    assert data_parallel_fits(ddp[1], [ddp[0]], total_cpus=18, total_gpus=16)  # 2 x (8 workers + 1 coordinator)
    assert not data_parallel_fits(ddp[1], [ddp[0]], total_cpus=17, total_gpus=16)  # no CPU for the 2nd coordinator
    assert not data_parallel_fits(ddp[1], [ddp[0]], total_cpus=64, total_gpus=15)
    assert data_parallel_fits(ddp[0], [], total_cpus=0, total_gpus=0)  # alone: `unschedulable` has judged it
    assert data_parallel_fits(single, ddp[:2], total_cpus=0, total_gpus=0)  # waits on nothing: never held back
    ledger = Ledger(ddp, can_start=lambda stage, running: data_parallel_fits(stage, running, 18, 16))
    assert ledger.ready().key == "g0" and ledger.ready().key == "g1" and ledger.ready() is None
    ledger.complete("g0", {"status": "finished"})
    assert ledger.ready().key == "g2"

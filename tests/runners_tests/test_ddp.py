"""Data-parallel training (runners/distributed.py): 2 gloo ranks equal one process, and resume bit-identically.

Same global batch, deterministic loss (dropout 0, class_dropout 0): DDP's average of the two equal
shard gradients is the global-batch gradient, so after a few AdamW steps the weights match
single-process `train_generator` up to float rounding of the reduction. With dropout, each rank draws its
own masks: a run resumed from its checkpoint (rank 0 writes every rank's streams) ends bit-identical.

The ranks here are two torch.multiprocessing processes running `train_rank`, the body of Ray Train's worker
function; the whole path through Ray Train, inside a Ray Tune trial, is tests/sweep_tests/test_ddp_stage.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load as load_safetensors
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from runners.checkpoint import CHECKPOINT_FILE, Checkpointer
from runners.distributed import LossForward, loop_config, shard_record, shard_rows, train_generator_ddp, train_rank
from runners.generators import ARGenerator, GeneratorConfig
from runners.train_generator import train_generator

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[2]
GLOBAL_BATCH = 8
STEPS = 3
LR = 1e-3


def problem(dropout: float = 0.0) -> tuple[Callable[[], ARGenerator], Callable[[int, torch.Generator], tuple[Tensor, Tensor]]]:
    """build_model and batch_fn as closures (cloudpickle ships closures by value to Ray workers); dropout > 0 also
    drops labels to the null class (both draw from each rank's own streams)."""
    config = GeneratorConfig("tiny", 4, 4, token_each=2, bits_each=4, num_classes=10, dropout=dropout,
                             class_dropout=dropout)

    def build_model() -> ARGenerator:
        torch.manual_seed(123)
        model = ARGenerator(config)
        with torch.no_grad():
            for head in model.heads:
                # random heads: every parameter gets a gradient well above Adam's eps from step 0 (zero
                # heads leave the trunk's first gradients ~eps, where Adam amplifies rounding noise)
                head.weight.normal_(0.0, 0.3)
        return model

    def batch_fn(step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        ids = torch.randint(0, config.vocab_size, (GLOBAL_BATCH, config.seq_len, config.token_each), generator=generator)
        labels = torch.randint(0, config.num_classes, (GLOBAL_BATCH,), generator=generator)
        return ids, labels  # (B, N, K), (B,): drawn from the generator, so every rank must seed it alike

    return build_model, batch_fn


def test_shard_rows_takes_contiguous_equal_blocks() -> None:
    batch = torch.arange(12).view(6, 2)
    assert shard_rows(batch, 0, 3).tolist() == [[0, 1], [2, 3]]
    assert shard_rows(batch, 2, 3).tolist() == [[8, 9], [10, 11]]
    assert shard_rows(batch, 0, 1).tolist() == batch.tolist()
    with pytest.raises(ValueError, match="B=6 rows for 4 workers"):
        shard_rows(batch, 0, 4)
    with pytest.raises(ValueError, match="rank must lie in"):
        shard_rows(batch, 3, 3)


def test_loss_forward_is_the_model_loss() -> None:
    build_model, batch_fn = problem()
    model = build_model()
    ids, labels = batch_fn(0, torch.Generator().manual_seed(0))
    wrapped = LossForward(model)
    assert list(wrapped.parameters()) == list(model.parameters())  # same tensors: DDP syncs the model's grads
    assert wrapped(ids, labels).item() == model.loss(ids, labels).item()
    with pytest.raises(TypeError, match="must define loss"):
        LossForward(torch.nn.Linear(2, 2))


def test_bad_arguments_fail_before_ray_starts() -> None:
    build_model, batch_fn = problem()
    with pytest.raises(ValueError, match="num_workers must be an int >= 1, but got num_workers=0"):
        train_generator_ddp(build_model, batch_fn, num_workers=0, steps=1, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        train_generator_ddp(
            build_model, batch_fn, num_workers=1, steps=1, lr=1e-3, seed=0, precision="fp16"  # type: ignore[arg-type]
        )


def test_importing_runners_distributed_does_not_import_ray() -> None:
    code = "import sys, runners.distributed; sys.exit('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _rank_main(rank: int, world_size: int, workdir: str) -> None:
    """One gloo rank (torch.multiprocessing.spawn; Ray Train's own start-up is tested in
    tests/sweep_tests/test_ddp_stage.py): the runs the test compares, written by rank 0 to results.pt."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=world_size)
    try:
        work = Path(workdir)
        ranked = dict(rank=rank, world_size=world_size, prepare_model=DistributedDataParallel, report=lambda _: None)
        results = {}
        build_model, batch_fn = problem()
        results["exact"] = train_rank(loop_config(build_model, batch_fn, steps=STEPS, lr=LR, seed=0), **ranked)

        # dropout and label dropout: every rank draws its own masks, so a resume must restore each rank's streams
        noisy_build, noisy_batch = problem(dropout=0.1)

        def noisy(folder: str) -> dict:
            checkpointer = Checkpointer(work / folder, every_steps=2, every_s=3600.0)  # time-based: rank 0 decides
            config = loop_config(noisy_build, noisy_batch, steps=5, lr=LR, seed=0, log_every=2, checkpointer=checkpointer)
            return train_rank(config, **ranked)
        results["full"] = noisy("ckpt")  # saves after steps 2 and 4; the one of step 4 stays
        if rank == 0:
            results["checkpoint"] = torch.load(work / "ckpt" / CHECKPOINT_FILE, weights_only=False)
        dist.barrier()
        results["resumed"] = noisy("ckpt")  # continues after step 4
        if rank == 0:  # the same checkpoint without the per-rank streams, as if written by another worker count
            state = torch.load(work / "ckpt" / CHECKPOINT_FILE, weights_only=False)
            (work / "fresh").mkdir()
            torch.save({k: v for k, v in state.items() if k != "rng_by_rank"}, work / "fresh" / CHECKPOINT_FILE)
        dist.barrier()
        results["fresh"] = noisy("fresh")
        if rank == 0:
            torch.save(results, work / "results.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    # Fresh attempts when a rank dies of a signal: on this shared 2-core machine a gloo rank has aborted in
    # gloo's C++ code ("terminate called without an active exception"), in one session twice in a row, right
    # after another test's Ray had shut down. A rank that fails in Python raises at once; a third abort fails.
    for attempt in range(3):
        workdir = tmp_path_factory.mktemp("ddp")
        try:
            torch.multiprocessing.spawn(_rank_main, args=(2, str(workdir)), nprocs=2, join=True)
            break
        except torch.multiprocessing.ProcessExitedException:
            if attempt == 2:
                raise
    return torch.load(workdir / "results.pt", weights_only=False)


def weights_of(result: dict) -> dict[str, Tensor]:
    return load_safetensors(result["state_dict"])


def test_two_gloo_ranks_match_single_process_training(two_ranks: dict) -> None:
    build_model, batch_fn = problem()
    single = train_generator(build_model(), batch_fn, steps=STEPS, lr=LR, seed=0)
    expected = single.model.state_dict()
    result = two_ranks["exact"]
    got = weights_of(result)

    assert set(got) == set(expected)  # plain keys, no "module." / "model." prefixes
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=0, msg=name)
    # the losses are the global batch's (mean of the two shard means), not rank 0's half
    assert [step for step, _ in result["losses"]] == list(range(STEPS))
    for (_, value), (_, want) in zip(result["losses"], single.losses):
        assert value == pytest.approx(want, abs=1e-5)
    build_model().load_state_dict(got)  # loads into a fresh model as is

    # the comparison can fail: the weights moved far more than 1e-5, and training on rank 0's half of
    # each batch alone (no gradient sync) lands 1e-4+ away from the global-batch weights
    initial = build_model().state_dict()
    assert max((expected[name] - initial[name]).abs().max().item() for name in expected) > 5e-4

    def first_half(step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        ids, labels = batch_fn(step, generator)
        return ids[: GLOBAL_BATCH // 2], labels[: GLOBAL_BATCH // 2]

    unsynced = train_generator(build_model(), first_half, steps=STEPS, lr=LR, seed=0).model.state_dict()
    assert max((expected[name] - unsynced[name]).abs().max().item() for name in expected) > 1e-4


def test_a_resumed_data_parallel_run_is_bit_identical(two_ranks: dict) -> None:
    full, resumed, fresh = two_ranks["full"], two_ranks["resumed"], two_ranks["fresh"]
    assert (full["resumed_from_step"], resumed["resumed_from_step"], fresh["resumed_from_step"]) == (-1, 4, 4)
    full_weights, resumed_weights = weights_of(full), weights_of(resumed)
    for name, value in full_weights.items():
        assert torch.equal(resumed_weights[name], value), name
    assert resumed["losses"] == full["losses"]  # global-batch losses, the restored ones included

    # rank 0 wrote every rank's streams, the data stream and the global losses
    checkpoint = two_ranks["checkpoint"]
    assert checkpoint["step"] == 4 and checkpoint["world_size"] == 2 and len(checkpoint["rng_by_rank"]) == 2
    assert [value for _, value in checkpoint["losses"]] == [value for _, value in full["losses"][:4]]
    # the test can fail: without each rank's own streams the resumed masks differ, and so do the weights
    fresh_weights = weights_of(fresh)
    assert max((fresh_weights[name] - value).abs().max().item() for name, value in full_weights.items()) > 1e-6

    # logs as single-process training writes them: global losses at steps 1, 3 and the last (4)
    assert [step for step, _ in full["logs"]] == [step for step, _ in resumed["logs"]] == [1, 3, 4]
    for (_, want), (_, got) in zip(full["logs"], resumed["logs"]):
        assert got["loss"] == want["loss"] and got["lr"] == want["lr"]
    assert "grad_norm" not in resumed["logs"][0][1] and "grad_norm" in resumed["logs"][2][1]  # before / after the resume
    losses = [value for _, value in full["losses"]]
    assert full["logs"][1][1]["loss"] == pytest.approx((losses[2] + losses[3]) / 2, abs=1e-12)


def test_each_rank_records_and_trains_on_its_own_half_of_every_global_batch(two_ranks: dict) -> None:
    """The record is made from the tensors each rank trains on: if every rank took the whole batch, DDP would
    still match single-process training (the same gradient twice), but these records would not match."""
    _, batch_fn = problem()
    data = torch.Generator().manual_seed(0)  # train_rank's data generator: seeded alike on every rank
    shards = two_ranks["exact"]["shards"]
    assert [len(record) for record in shards] == [STEPS, STEPS]
    half = GLOBAL_BATCH // 2
    for step in range(STEPS):
        ids, labels = batch_fn(step, data)  # (B, N, K), (B,)
        for rank in range(2):
            rows = slice(rank * half, (rank + 1) * half)
            assert shards[rank][step] == shard_record(step, rank, ids[rows], labels[rows]), (step, rank)
            assert shards[rank][step][1:3] == (rank * half, (rank + 1) * half)
    assert {entry[3] for entry in shards[0]}.isdisjoint({entry[3] for entry in shards[1]})


@pytest.mark.slow
def test_log_records_reach_the_caller_while_the_workers_train(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through Ray Train: rank 0's records come through the queue while fit still runs (its helper thread is
    alive), each with the global batches' loss (the single process's, not rank 0's half) and throughput."""
    import threading

    from runners.distributed import train_generator_data_parallel

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    build_model, batch_fn = problem()
    steps, every = 6, 2
    single: list[tuple[int, dict[str, float]]] = []
    train_generator(build_model(), batch_fn, steps=steps, lr=LR, seed=0, log_every=every,
                    on_log=lambda step, metrics: single.append((step, metrics)))

    records: list[tuple[int, dict[str, float], bool]] = []

    def on_log(step: int, metrics: dict[str, float]) -> None:
        fitting = any(thread.name.startswith("ray-train-fit") for thread in threading.enumerate())
        records.append((step, metrics, fitting))

    train_generator_data_parallel(build_model(), build_model, lambda device: batch_fn, num_workers=2, steps=steps,
                                  lr=LR, seed=0, log_every=every, on_log=on_log, flops_per_token=1e6,
                                  cpus_per_worker=0.5)
    assert [step for step, _, _ in records] == [step for step, _ in single] == [1, 3, 5]  # each once
    assert all(fitting for _, _, fitting in records), records  # delivered live, not replayed after fit
    for (_, got, _), (_, want) in zip(records, single):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-5)  # rank 0's half alone: 0.3 away
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
        assert got["tokens_per_s"] > 0 and got["achieved_tflops"] == pytest.approx(got["tokens_per_s"] * 1e-6)


class FakeQueue:
    """ray.util.queue.Queue's get(block, timeout) on a local queue.Queue."""

    def __init__(self) -> None:
        import queue

        self.items: queue.Queue = queue.Queue()

    def put(self, item: object) -> None:
        self.items.put(item)

    def get(self, block: bool = True, timeout: float | None = None) -> object:
        return self.items.get(block=block, timeout=timeout)


class FakeTrainer:
    """fit() puts records in the queue as rank 0 would, then returns or raises."""

    def __init__(self, live: FakeQueue, steps: list[int], error: Exception | None = None) -> None:
        self.live, self.steps, self.error = live, steps, error

    def fit(self) -> object:
        import time
        import types

        for step in self.steps:
            self.live.put((step, {"loss": float(step)}))
            time.sleep(0.05)
        if self.error is not None:
            raise self.error
        return types.SimpleNamespace(return_value={"done": True})


def test_fit_hands_over_every_record_and_raises_what_fit_raised() -> None:
    from runners.distributed import _fit

    live = FakeQueue()
    seen: list[int] = []
    assert _fit(FakeTrainer(live, [1, 3, 5]), live, lambda step, metrics: seen.append(step)) == {"done": True}
    assert seen == [1, 3, 5]

    live, seen = FakeQueue(), []
    with pytest.raises(ValueError, match="no batch 3"):  # a worker's failure reaches the caller, in its thread
        _fit(FakeTrainer(live, [1], ValueError("no batch 3")), live, lambda step, metrics: seen.append(step))
    assert seen == [1]  # what was logged before the failure came through

    live = FakeQueue()
    assert _fit(FakeTrainer(live, [1]), None, None) == {"done": True}  # no queue: fit in this thread

"""Data-parallel generator training through Ray Train (TorchTrainer, DistributedDataParallel).

`train_generator_ddp` runs the same loop as `runners.train_generator.train_generator` in each of
`num_workers` Ray Train workers (gloo on CPU, NCCL on GPU; Ray Train V2, the default since Ray 2.x,
whose `Result.return_value` carries rank 0's weights back to the caller, as safetensors bytes). Every step:

    global batch   batch_fn(step, data_generator) -> ids (B, N, K), labels (B,)   same on every rank
    shard          rank r keeps the contiguous rows [r B/W, (r+1) B/W)            (B/W, N, K)
    loss           DDP(LossForward(model))(ids, labels, ...) = model.loss on the shard
    backward       DDP averages the gradients over the W ranks while backward runs
    step           clip + AdamW (+ EMA) on identical gradients: the replicas stay identical

Why the loss goes through the DDP wrapper's forward: DDP only all-reduces gradients of a backward
that started from its own forward, but train_generator calls `model.loss`, which DDP never sees.
`LossForward` is a module whose forward *is* `model.loss`; `ray.train.torch.prepare_model` wraps it
in DDP (and moves it to the worker's device), and train_generator gets it as `loss_fn`, while its
optimizer, EMA and logs keep working on the plain model (the same parameter tensors), so the
returned state_dict has the same keys as single-process training.

What matches single-process training, and why: the mean of W equal-size shard means is the mean over
the global batch, so for a loss that is a per-row-uniform mean (AR: cross-entropy over N x K
sub-tokens of every row) the averaged gradient is the global-batch gradient, and clipping, AdamW
and EMA see the same numbers: the weights equal `train_generator` on the global batch up to float
rounding of the reduction (the test checks 1e-5 after 3 steps), *provided the loss draws no
randomness* (dropout 0 and class_dropout 0). Randomness inside the loss is not reproduced row for
row: each rank draws its dropout masks, label-dropout coins and MLM masks from its own streams
(seeded with `seed + RANK_SEED_STRIDE * rank`, so ranks are decorrelated rather than copying each
other's masks), while the batch comes from a separate data generator seeded with `seed` that is
identical on every rank. Such runs are statistically, not bitwise, equivalent. The MLM's loss is
a mean over the masked sub-tokens of the batch, whose count differs between shards, so even its
expected gradient weights rows slightly differently from the global mean (standard DDP semantics).

This is the one module under runners/ that uses Ray; it imports Ray inside its functions only, so
importing runners (or this module) never starts or imports Ray.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from runners.train_generator import PRECISIONS, BatchFn, train_generator

RANK_SEED_STRIDE = 1_000_003
"""rank r draws its in-loss randomness (dropout, label dropout, MLM masks) from seed + stride * r"""

_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


@dataclass
class DistributedTrainResult:
    """Outcome of `train_generator_ddp`, gathered from the workers."""

    state_dict: dict[str, Tensor]
    """rank 0's trained weights on the CPU (the EMA copy when ema_decay is set), plain keys:
    load with build_model().load_state_dict(result.state_dict)"""
    losses: list[tuple[int, float]]
    """(step, loss of the global batch): the mean over ranks of each rank's shard loss"""
    initial_loss: float
    """global-batch loss of the first step"""
    final_loss: float
    """mean global-batch loss over the last 10% of steps (at least one)"""
    world_size: int
    """number of data-parallel workers"""
    wall_s: float
    """wall-clock seconds of rank 0's training loop (without Ray start-up)"""
    steps_per_s: float


class LossForward(nn.Module):
    """A module whose forward is `model.loss`, so that DistributedDataParallel can wrap the loss.

    forward(ids, labels, *, positions, generator) -> scalar loss; the parameters are the model's.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(model, "loss", None)):
            raise TypeError(f"model must define loss(ids, labels, *, generator), but {type(model).__name__} does not")
        self.model = model

    def forward(
        self, ids: Tensor, labels: Tensor, *, positions: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        return self.model.loss(ids, labels, positions=positions, generator=generator)


def shard_rows(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank `rank`'s contiguous block of the global batch: rows [rank B/W, (rank+1) B/W) of (B, ...).

    B must be divisible by W so that every shard mean weighs the same in DDP's gradient average.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size) with world_size >= 1, but got rank={rank}, "
                         f"world_size={world_size}")
    rows = batch.shape[0]
    if rows % world_size != 0:
        raise ValueError(
            f"the global batch must split into equal shards, but got B={rows} rows for {world_size} workers; "
            f"make the batch size a multiple of num_workers"
        )
    per_rank = rows // world_size
    return batch[rank * per_rank : (rank + 1) * per_rank]


def _worker_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train's per-worker function: build, wrap in DDP, train on this rank's shard, return from rank 0."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    seed: int = config["seed"]
    batch_fn: BatchFn = config["batch_fn"]

    torch.manual_seed(seed)  # same initial weights on every rank (DDP also broadcasts rank 0's at wrap time)
    model = config["build_model"]()
    loss_module = ray.train.torch.prepare_model(LossForward(model))  # to this worker's device; DDP when W > 1
    device = next(model.parameters()).device
    positions = config["positions"].to(device) if config["positions"] is not None else None

    # the global batch comes from a data generator that is the same on every rank; the generator that
    # train_generator hands over (seeded per rank) is left to the loss's own draws (dropout coins, masks)
    data_generator = torch.Generator().manual_seed(seed)

    def shard_batch(step: int, _loss_generator: torch.Generator) -> tuple[Tensor, Tensor]:
        ids, labels = batch_fn(step, data_generator)  # (B, N, K), (B,): the global batch
        if ids.shape[0] != labels.shape[0]:
            raise ValueError(f"batch_fn must return ids (B, N, K) and labels (B,) with the same B, "
                             f"but got {tuple(ids.shape)} and {tuple(labels.shape)}")
        return shard_rows(ids, rank, world_size).to(device), shard_rows(labels, rank, world_size).to(device)

    def on_log(step: int, metrics: dict[str, float]) -> None:
        # every rank logs at the same steps, as ray.train.report (a barrier) requires; rank 0's metrics
        # (its shard's loss) are the ones Ray Train keeps
        ray.train.report({"step": step, **metrics})

    result = train_generator(
        model, shard_batch, steps=config["steps"], lr=config["lr"], seed=seed + RANK_SEED_STRIDE * rank,
        loss_fn=loss_module, on_log=on_log, positions=positions, **config["train_kwargs"],
    )
    # global-batch losses: the mean of the equal-size shards' mean losses (one collective for all steps)
    shard_losses = torch.tensor([value for _, value in result.losses], dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(shard_losses)  # sum over ranks
        shard_losses /= world_size
    if rank != 0:
        return None
    losses = [(step, float(value)) for (step, _), value in zip(result.losses, shard_losses.tolist())]
    weights = result.model.state_dict()
    tail = max(1, len(losses) // 10)
    return {
        # Ray Train refuses torch tensors in a return value: ship the weights as safetensors bytes
        "state_dict": save_safetensors({name: value.detach().cpu().contiguous() for name, value in weights.items()}),
        "losses": losses,
        "final_loss": sum(value for _, value in losses[-tail:]) / tail,
        "wall_s": result.wall_s,
        "steps_per_s": result.steps_per_s,
    }


def _start_local_ray(num_cpus: int, num_gpus: int | None) -> None:
    """A Ray instance on this machine only: no dashboard, no usage stats, no token authentication."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(
        address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": _PROJECT_ROOT, "RAY_USAGE_STATS_ENABLED": "0"}},
    )


def train_generator_ddp(
    build_model: Callable[[], nn.Module],
    batch_fn: BatchFn,
    *,
    num_workers: int,
    use_gpu: bool = False,
    steps: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.95),
    grad_clip: float = 1.0,
    warmup_steps: int = 0,
    ema_decay: float | None = None,
    log_every: int = 10,
    precision: Literal["fp32", "bf16"] = "fp32",
    compile: bool = False,
    positions: Tensor | None = None,
    cpus_per_worker: float = 1.0,
    storage_path: str | os.PathLike[str] | None = None,
) -> DistributedTrainResult:
    """Train the model from `build_model()` data-parallel on `num_workers` Ray Train workers (DDP).

    build_model: () -> freshly initialised model with `loss` (built on the CPU in each worker after
    torch.manual_seed(seed); prepare_model moves it to the worker's device). batch_fn(step, generator)
    -> (ids (B, N, K), labels (B,)): the GLOBAL batch of that step, a deterministic function of the
    step and the generator's draws (every rank calls it with an identically seeded generator; return
    CPU tensors, each rank moves its shard to its device). B must be a multiple of num_workers; rank r
    trains on rows [r B/W, (r+1) B/W). Both callables are pickled to the workers (cloudpickle), so
    closures are fine but whatever they reference must be importable there.

    The optimizer knobs (lr, weight_decay, betas, grad_clip, warmup_steps, ema_decay, log_every,
    precision, compile, positions) mean what they mean in `train_generator`; every log_every steps the
    workers call ray.train.report with the step's metrics. use_gpu: one GPU per worker, NCCL; else
    gloo on CPU. Ray: an already initialised Ray is used as it is; otherwise a local one is started
    (no dashboard, RAY_USAGE_STATS_ENABLED=0, RAY_AUTH_MODE=disabled) and shut down afterwards.
    storage_path: where Ray Train writes its run folder (absolute; default a temporary folder that is
    removed afterwards). Needs Ray Train V2 (RAY_TRAIN_V2_ENABLED unset or 1). Checkpoint/resume is
    not offered here: a failed worker fails the whole call (ray.train.TrainingFailedError).
    """
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an int >= 1, but got num_workers={num_workers!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, but got steps={steps}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, but got precision={precision!r}")
    if not cpus_per_worker > 0:
        raise ValueError(f"cpus_per_worker must be > 0, but got cpus_per_worker={cpus_per_worker}")
    if positions is not None and (positions.ndim != 2 or positions.shape[-1] != 2):
        raise ValueError(f"positions must have shape (N, 2) of (row, col), but got {tuple(positions.shape)}")

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray.train.v2._internal.constants import is_v2_enabled

    if not is_v2_enabled():
        raise RuntimeError(
            "train_generator_ddp needs Ray Train V2 (it returns rank 0's weights as the training function's "
            f"return value), but got RAY_TRAIN_V2_ENABLED={os.environ.get('RAY_TRAIN_V2_ENABLED')!r}; unset it or set 1"
        )
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started_here = not ray.is_initialized()
    if started_here:
        cpus_needed = int(-(-num_workers * cpus_per_worker // 1))  # ceil
        _start_local_ray(max(os.cpu_count() or 1, cpus_needed), num_workers if use_gpu else None)
    made_storage = storage_path is None
    storage = Path(tempfile.mkdtemp(prefix="elm-ddp-") if made_storage else storage_path).resolve()  # type: ignore[arg-type]
    config = {
        "build_model": build_model,
        "batch_fn": batch_fn,
        "seed": seed,
        "steps": steps,
        "lr": lr,
        "positions": positions.cpu() if positions is not None else None,
        "train_kwargs": {
            "weight_decay": weight_decay, "betas": betas, "grad_clip": grad_clip, "warmup_steps": warmup_steps,
            "ema_decay": ema_decay, "log_every": log_every, "precision": precision, "compile": compile,
        },
    }
    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    try:
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=RunConfig(name=f"generator-ddp-{uuid.uuid4().hex[:8]}", storage_path=str(storage)),
        )
        out = trainer.fit().return_value
    finally:
        if made_storage:
            shutil.rmtree(storage, ignore_errors=True)
        if started_here:
            ray.shutdown()
    if out is None:
        raise RuntimeError("Ray Train finished without rank 0's return value; check the workers' logs")
    return DistributedTrainResult(
        state_dict=load_safetensors(out["state_dict"]),
        losses=out["losses"],
        initial_loss=out["losses"][0][1],
        final_loss=out["final_loss"],
        world_size=num_workers,
        wall_s=out["wall_s"],
        steps_per_s=out["steps_per_s"],
    )

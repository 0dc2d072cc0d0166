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

Checkpoints (`checkpointer`, the protocol of runners/checkpoint.py): every rank restores the same file and
rank 0 writes it (the stage's checkpoint folder must be on a filesystem every node sees). Besides the model,
optimizer and EMA it holds the data generator's state, every rank's own RNG states and the global-batch
losses, so a resumed run on the same number of workers continues bit-identically; see `RankCheckpointer`.

This is the one module under runners/ that uses Ray; it imports Ray inside its functions only, so
importing runners (or this module) never starts or imports Ray.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from runners.checkpoint import Checkpointer, rng_state
from runners.perf import throughput
from runners.train_generator import PRECISIONS, BatchFn, TrainResult, evaluate_loss, train_generator
from runners.train_speed import device_name

RANK_SEED_STRIDE = 1_000_003
"""rank r draws its in-loss randomness (dropout, label dropout, MLM masks) from seed + stride * r"""
RESUME_SEED_STRIDE = 7_919
"""a rank without its own saved streams (resumed on another worker count) reseeds with + stride * completed steps"""

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
    tokens: int = 0
    """sequence positions of the global batches trained on in this run (all ranks together)"""
    device_name: str = ""
    """rank 0's device as runners.perf names it (every rank runs on the same kind)"""
    logs: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    """what single-process training hands on_log, (step, {"loss", "lr", "grad_norm"}) every log_every steps and at
    the last, with "loss" the global batch's mean since the previous log; steps before a resume carry no grad_norm"""
    resumed_from_step: int = -1
    """steps completed in the checkpoint this run resumed from (-1: started from scratch)"""
    heldout_loss: float | None = None
    """evaluate_loss of the trained model on `heldout`'s data, computed by rank 0 on its device (None: no heldout)"""
    shards: list[list[tuple[int, int, int, str]]] = field(default_factory=list)
    """per rank, the samples it trained on at each step of this run: (step, first row, end row) of the global batch
    and the sha256 of the shard's ids and labels as the rank received them (`shard_record`)"""


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


def shard_record(step: int, rank: int, ids: Tensor, labels: Tensor) -> tuple[int, int, int, str]:
    """What rank `rank` trained on at `step`: its rows [first, end) of the global batch (from the shard it holds)
    and the sha256 of those ids (B/W, N, K) and labels (B/W,), so a test can tell a shard from the whole batch."""
    digest = hashlib.sha256()
    for tensor in (ids, labels):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    rows = int(ids.shape[0])
    return step, rank * rows, (rank + 1) * rows, digest.hexdigest()


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


class RankCheckpointer(Checkpointer):
    """One rank's view of a data-parallel run's checkpoint: every rank restores the file, rank 0 writes it.

    Saves are collective (every rank reaches them at the same steps; for time-based saves rank 0's clock
    decides and broadcasts). Rank 0 writes train_generator's snapshot with these changes:

        losses, since_log   the global batch's values (mean over ranks), not rank 0's shard's
        rng                 rank 0's global torch RNG with the *data* generator (the stream batch_fn draws,
                            identical on every rank): what a single-process loop keeps, so it can resume it
        rng_by_rank         each rank's own global torch RNG and loss generator; and world_size

    Resuming on the same number of workers restores each rank's own streams: bit-identical to a run never
    interrupted. On another number of workers, or from a single-process checkpoint, each rank gets fresh loss
    streams seeded from (seed, rank, completed steps): still exact when the loss draws no randomness (dropout
    0, class_dropout 0), statistically equivalent otherwise.
    """

    def __init__(self, base: Checkpointer, *, rank: int, world_size: int, data_generator: torch.Generator,
                 seed: int, device: torch.device) -> None:
        super().__init__(base.folder, base.every_steps, base.every_s, base.on_save if rank == 0 else None)
        self.rank, self.world_size, self.seed, self.device = rank, world_size, seed, device
        self.data_generator = data_generator
        self.restored_step = -1

    def restore(self) -> dict[str, Any] | None:
        state = super().restore()
        if state is None:
            return None
        self.restored_step = int(state["step"])
        self.data_generator.set_state(state["rng"]["generators"][0])
        by_rank = state.get("rng_by_rank")
        if by_rank is not None and len(by_rank) == self.world_size:
            own = by_rank[self.rank]
        else:
            fresh = self.seed + RANK_SEED_STRIDE * self.rank + RESUME_SEED_STRIDE * self.restored_step
            torch.manual_seed(fresh)
            own = rng_state(torch.Generator().manual_seed(fresh))
        return {**state, "rng": own}

    def due(self, step: int) -> bool:
        due = super().due(step)
        if self.world_size > 1 and self.enabled and self.every_s > 0:  # clocks differ between ranks: rank 0's decides
            import torch.distributed as dist

            flag = torch.tensor([float(due)], device=self.device)
            dist.broadcast(flag, src=0)
            due = bool(flag.item())
        return due

    def save(self, step: int, state: dict[str, Any]) -> None:
        losses, since_log, rngs = state["losses"], state["since_log"], [state["rng"]]
        if self.world_size > 1:
            import torch.distributed as dist

            rngs = [None] * self.world_size
            dist.all_gather_object(rngs, state["rng"])
            values = torch.tensor([v for _, v in losses] + list(since_log), dtype=torch.float64, device=self.device)
            dist.all_reduce(values)  # sum over ranks of equal-size shard means
            means = (values / self.world_size).tolist()
            losses, since_log = [(s, v) for (s, _), v in zip(losses, means)], means[len(losses):]
        if self.rank != 0:
            self.last_save, self.saved = time.monotonic(), self.saved + 1
            return
        rng = {**state["rng"], "generators": [self.data_generator.get_state()]}
        super().save(step, {**state, "losses": losses, "since_log": since_log, "rng": rng, "rng_by_rank": rngs,
                            "world_size": self.world_size})


def _lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """train_generator's schedule: linear warm-up, then constant."""
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr


def log_records(losses: list[tuple[int, float]], logged: dict[int, dict[str, float]], *, steps: int, log_every: int,
                lr: float, warmup_steps: int) -> list[tuple[int, dict[str, float]]]:
    """What train_generator hands on_log, rebuilt from the global-batch losses (step, loss) of every completed step:
    at every log_every-th step and the last, "loss" is the mean since the previous log; "lr" and "grad_norm" come
    from `logged` (rank 0's on_log of this run: the averaged gradients are the same on every rank), and for steps
    before a resume, which this run did not log, "lr" is recomputed and "grad_norm" is absent."""
    records, previous = [], 0
    for index, (step, _) in enumerate(losses):
        if (step + 1) % log_every == 0 or step == steps - 1:
            window = [value for _, value in losses[previous : index + 1]]
            metrics = logged.get(step, {"lr": _lr_at(step, lr, warmup_steps)})
            records.append((step, {**metrics, "loss": sum(window) / len(window)}))
            previous = index + 1
    return records


def loop_config(
    build_model: Callable[[], nn.Module], batch_fn: BatchFn | None, *, steps: int, lr: float, seed: int,
    weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.95), grad_clip: float = 1.0,
    warmup_steps: int = 0, ema_decay: float | None = None, log_every: int = 10,
    precision: Literal["fp32", "bf16"] = "fp32", compile: bool = False, positions: Tensor | None = None,
    checkpointer: Checkpointer | None = None, make_batch_fn: Callable[[torch.device], BatchFn] | None = None,
    heldout: Callable[[torch.device], tuple[Tensor, Tensor]] | None = None, flops_per_token: float | None = None,
) -> dict[str, Any]:
    """What every worker's `train_rank` receives (Ray Train's train_loop_config); arguments as train_generator_ddp."""
    if (batch_fn is None) == (make_batch_fn is None):
        raise ValueError("pass exactly one of batch_fn (the batches themselves) and make_batch_fn (device -> batch_fn, "
                         f"called in each worker), but got batch_fn={batch_fn!r}, make_batch_fn={make_batch_fn!r}")
    return {
        "build_model": build_model,
        "batch_fn": batch_fn,
        "make_batch_fn": make_batch_fn,
        "heldout": heldout,
        "seed": seed,
        "steps": steps,
        "lr": lr,
        "positions": positions.cpu() if positions is not None else None,
        "checkpointer": checkpointer,
        "live": None,  # a ray.util.queue.Queue that rank 0 puts its log records in (train_generator_ddp's on_log)
        "train_kwargs": {
            "weight_decay": weight_decay, "betas": betas, "grad_clip": grad_clip, "warmup_steps": warmup_steps,
            "ema_decay": ema_decay, "log_every": log_every, "precision": precision, "compile": compile,
            "flops_per_token": flops_per_token,
        },
    }


def _worker_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train's per-worker function: `train_rank` with Ray Train's rank, DDP wrapper and metric reports."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    return train_rank(config, rank=context.get_world_rank(), world_size=context.get_world_size(),
                      prepare_model=ray.train.torch.prepare_model, report=ray.train.report)


def train_rank(
    config: dict[str, Any], *, rank: int, world_size: int, prepare_model: Callable[[nn.Module], nn.Module],
    report: Callable[[dict[str, Any]], None],
) -> dict[str, Any] | None:
    """One rank of data-parallel training in an initialised torch.distributed process group (Ray Train's, or any
    other): build, wrap with `prepare_model` (to the rank's device, DDP when world_size > 1), train on this rank's
    shard of every global batch; rank 0 returns the weights, the global-batch losses and the log records."""
    import torch.distributed as dist

    seed: int = config["seed"]

    torch.manual_seed(seed)  # same initial weights on every rank (DDP also broadcasts rank 0's at wrap time)
    model = config["build_model"]()
    loss_module = prepare_model(LossForward(model))  # to this worker's device; DDP when W > 1
    device = next(model.parameters()).device
    # batches from the caller's batch_fn, or from one made here (e.g. a tokenizer encoding the data on this GPU)
    batch_fn: BatchFn = config["batch_fn"] if config["batch_fn"] is not None else config["make_batch_fn"](device)
    positions = config["positions"].to(device) if config["positions"] is not None else None

    # the global batch comes from a data generator that is the same on every rank; the generator that
    # train_generator hands over (seeded per rank) is left to the loss's own draws (dropout coins, masks)
    data_generator = torch.Generator().manual_seed(seed)

    def shard_batch(step: int, _loss_generator: torch.Generator) -> tuple[Tensor, Tensor]:
        ids, labels = batch_fn(step, data_generator)  # (B, N, K), (B,): the global batch
        if ids.shape[0] != labels.shape[0]:
            raise ValueError(f"batch_fn must return ids (B, N, K) and labels (B,) with the same B, "
                             f"but got {tuple(ids.shape)} and {tuple(labels.shape)}")
        ids, labels = shard_rows(ids, rank, world_size).to(device), shard_rows(labels, rank, world_size).to(device)
        seen.append(shard_record(step, rank, ids, labels))  # recorded from the tensors this rank trains on
        return ids, labels

    seen: list[tuple[int, int, int, str]] = []

    logged: dict[int, dict[str, float]] = {}

    live = config["live"]  # loop_config always sets it (None: no live hand-over)

    def on_log(step: int, metrics: dict[str, float]) -> None:
        # every rank logs at the same steps, as ray.train.report (a barrier) requires. The loss becomes the global
        # batches' mean since the last log: the mean of the ranks' equal-shard means (one scalar all-reduce)
        if world_size > 1:
            loss = torch.tensor([metrics["loss"]], dtype=torch.float64, device=device)
            dist.all_reduce(loss)
            metrics = {**metrics, "loss": loss.item() / world_size}
        if rank == 0:
            logged[step] = dict(metrics)
            if live is not None:
                live.put((step, dict(metrics)))
        report({"step": step, **metrics})

    checkpointer = None
    if config["checkpointer"] is not None:
        checkpointer = RankCheckpointer(config["checkpointer"], rank=rank, world_size=world_size,
                                        data_generator=data_generator, seed=seed, device=device)
    result = train_generator(
        model, shard_batch, steps=config["steps"], lr=config["lr"], seed=seed + RANK_SEED_STRIDE * rank,
        loss_fn=loss_module, on_log=on_log, positions=positions, checkpointer=checkpointer, data_parallel=world_size,
        **config["train_kwargs"],
    )
    # global-batch losses: the mean of the equal-size shards' mean losses (one collective for all steps)
    shard_losses = torch.tensor([value for _, value in result.losses], dtype=torch.float64, device=device)
    shards = [seen]
    if world_size > 1:
        dist.all_reduce(shard_losses)  # sum over ranks
        shard_losses /= world_size
        shards = [[] for _ in range(world_size)]
        dist.all_gather_object(shards, seen)  # every rank's record, for rank 0 to return
    if rank != 0:
        return None
    heldout_loss = None
    if config["heldout"] is not None:  # rank 0 alone, on its device: the same batches as one-process evaluation
        heldout_ids, heldout_labels = config["heldout"](device)
        heldout_loss = evaluate_loss(result.model, heldout_ids.to(device), heldout_labels.to(device), positions=positions)
    losses = [(step, float(value)) for (step, _), value in zip(result.losses, shard_losses.tolist())]
    weights = result.model.state_dict()
    tail = max(1, len(losses) // 10)
    kwargs = config["train_kwargs"]
    return {
        # Ray Train refuses torch tensors in a return value: ship the weights as safetensors bytes
        "state_dict": save_safetensors({name: value.detach().cpu().contiguous() for name, value in weights.items()}),
        "losses": losses,
        "final_loss": sum(value for _, value in losses[-tail:]) / tail,
        "wall_s": result.wall_s,
        "steps_per_s": result.steps_per_s,
        "tokens": result.tokens * world_size,  # equal shards: every rank trained on as many positions as rank 0
        "device_name": device_name(device),
        "logs": log_records(losses, logged, steps=config["steps"], log_every=kwargs["log_every"], lr=config["lr"],
                            warmup_steps=kwargs["warmup_steps"]),
        "resumed_from_step": checkpointer.restored_step if checkpointer is not None else -1,
        "heldout_loss": heldout_loss,
        "shards": [[tuple(entry) for entry in record] for record in shards],
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
    batch_fn: BatchFn | None,
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
    checkpointer: Checkpointer | None = None,
    make_batch_fn: Callable[[torch.device], BatchFn] | None = None,
    heldout: Callable[[torch.device], tuple[Tensor, Tensor]] | None = None,
    flops_per_token: float | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
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
    removed afterwards). Needs Ray Train V2 (RAY_TRAIN_V2_ENABLED unset or 1). A failed worker fails the
    whole call (ray.train.TrainingFailedError). checkpointer: the stage's checkpoint folder and cadence; each
    worker wraps it in a `RankCheckpointer` (every rank restores, rank 0 writes), so its folder must be one
    every worker's node sees; a call that finds a checkpoint continues after its step (`resumed_from_step`).
    make_batch_fn: instead of batch_fn, device -> batch_fn, called once in each worker with its device (so that
    the data is prepared there, e.g. encoded on the worker's GPU; batches may then live on that device).
    heldout: device -> (ids (M, N, K), labels (M,)); rank 0 computes `evaluate_loss` of the trained model on
    them after training, on its device (`heldout_loss`). flops_per_token: every log record then carries the
    global batches' tokens/s, achieved TFLOP/s and MFU against num_workers devices' summed peak, measured by rank 0.
    on_log(step, metrics): called in this thread while the workers train, every log_every steps, with rank 0's
    record ("loss": the global batches' mean since the previous log, "lr", "grad_norm", throughput); the workers
    hand the records over through a zero-CPU Ray queue, and Ray Train's fit runs in a helper thread meanwhile.
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

    config = loop_config(
        build_model, batch_fn, steps=steps, lr=lr, seed=seed, weight_decay=weight_decay, betas=betas,
        grad_clip=grad_clip, warmup_steps=warmup_steps, ema_decay=ema_decay, log_every=log_every, precision=precision,
        compile=compile, positions=positions, checkpointer=checkpointer, make_batch_fn=make_batch_fn, heldout=heldout,
        flops_per_token=flops_per_token,
    )
    started_here = not ray.is_initialized()
    if started_here:
        cpus_needed = int(-(-num_workers * cpus_per_worker // 1))  # ceil
        _start_local_ray(max(os.cpu_count() or 1, cpus_needed), num_workers if use_gpu else None)
    made_storage = storage_path is None
    storage = Path(tempfile.mkdtemp(prefix="elm-ddp-") if made_storage else storage_path).resolve()  # type: ignore[arg-type]
    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    live = None
    try:
        if on_log is not None:
            from ray.util.queue import Queue

            live = config["live"] = Queue(actor_options={"num_cpus": 0})  # needs no free CPU of the stage's
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=RunConfig(name=f"generator-ddp-{uuid.uuid4().hex[:8]}", storage_path=str(storage)),
        )
        out = _fit(trainer, live, on_log)
    finally:
        if made_storage:
            shutil.rmtree(storage, ignore_errors=True)
        if live is not None:
            live.shutdown(force=True)
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
        tokens=out["tokens"],
        device_name=out["device_name"],
        logs=out["logs"],
        resumed_from_step=out["resumed_from_step"],
        heldout_loss=out["heldout_loss"],
        shards=out["shards"],
    )


def _fit(trainer: Any, live: Any, on_log: Callable[[int, dict[str, float]], None] | None) -> dict[str, Any] | None:
    """trainer.fit()'s return value; with a live queue, fit runs in a daemon thread while this thread hands the
    records rank 0 puts in the queue to on_log as they come (and the last ones after fit returns). An exception
    here (Ctrl-C) leaves at once: the caller's Ray shutdown, or the end of the process owning the run, ends it."""
    if live is None or on_log is None:
        return trainer.fit().return_value
    import threading
    from queue import Empty

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = error

    def drain(timeout: float | None) -> None:
        while True:
            try:
                step, metrics = live.get(block=timeout is not None, timeout=timeout)
            except Empty:
                return
            on_log(step, metrics)
            timeout = None if timeout is None else 0.0  # after one record, take what is there without waiting

    fitting = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    fitting.start()
    while fitting.is_alive():
        drain(0.5)
    drain(None)  # what rank 0 put in before it returned
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"].return_value


def train_generator_data_parallel(
    model: nn.Module,
    build_model: Callable[[], nn.Module],
    make_batch_fn: Callable[[torch.device], BatchFn],
    *,
    num_workers: int,
    heldout: Callable[[torch.device], tuple[Tensor, Tensor]] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    flops_per_token: float | None = None,
    **kwargs: Any,
) -> tuple[TrainResult, float | None]:
    """`train_generator`'s contract on `num_workers` DDP workers, for a stage that trains either way.

    Each worker prepares its batches with make_batch_fn(its device). `model` (a fresh build in this process, e.g.
    on the CPU) receives rank 0's trained weights and comes back in eval mode inside a TrainResult, with the
    held-out loss rank 0 computed on `heldout`'s data (None without heldout); on_log receives, while the workers
    train, what single-process training would log (global-batch losses), and after training the records of steps
    this run did not log (`log_records`: those before a resume). With flops_per_token the result, and every log
    record (since the previous one, measured by rank 0), carry the throughput of the global batches (tokens/s,
    TFLOP/s, MFU against num_workers devices' peak), as one process's training does. kwargs go to
    `train_generator_ddp` (steps, lr, seed, use_gpu, checkpointer, ...).
    """
    delivered: set[int] = set()

    def live(step: int, values: dict[str, float]) -> None:
        delivered.add(step)
        on_log(step, values)  # type: ignore[misc]

    trained = train_generator_ddp(build_model, None, make_batch_fn=make_batch_fn, heldout=heldout,
                                  num_workers=num_workers, flops_per_token=flops_per_token,
                                  on_log=live if on_log is not None else None, **kwargs)
    if on_log is not None:  # the records of steps this run did not log itself (before a resume)
        for step, values in trained.logs:
            if step not in delivered:
                on_log(step, values)
    model.load_state_dict(trained.state_dict)
    result = TrainResult(
        model=model.eval(), losses=trained.losses, initial_loss=trained.initial_loss, final_loss=trained.final_loss,
        wall_s=trained.wall_s, steps_per_s=trained.steps_per_s, tokens=trained.tokens,
        throughput=throughput(tokens=trained.tokens, seconds=trained.wall_s, flops_per_token=flops_per_token,
                              device_name=trained.device_name, devices=trained.world_size)
        if flops_per_token is not None and trained.wall_s > 0 and trained.tokens else None,
    )
    return result, trained.heldout_loss

"""Training loop for the image-token generators (ELM.md "Training recipe (generators)").

AdamW betas (0.9, 0.95), weight decay 0.05 on matrices only (ndim >= 2: linear weights and
embedding tables; norms gains are exempt), gradient clipping 1.0, constant lr after an optional
linear warmup, optional EMA of the weights. The model owns its objective through
`model.loss(ids, labels, positions=..., generator=...)` (AR: mean cross-entropy over all positions
x K; MLM: cross-entropy on freshly masked positions), so the same loop trains both generators.

GPU hooks: `precision="bf16"` runs the forward and loss under torch.autocast(bfloat16) on the
model's device type (the recipe's bf16; weights, gradients, optimizer state and EMA stay float32,
no loss scaling needed for bf16); on CPU it works but is slow. `compile` (runtime.compile: "auto" = on
for CUDA only, True, False) compiles the whole model's forward in place for the loop
(runners/train_speed.py; state_dict keys stay plain) and returns it eager. On CUDA the loop also turns
on TF32 matmuls, uses AdamW's fused kernel and draws the next batch while the current step runs
(`prefetch`, same draws in the same order). `flops_per_token` (runners/perf.py) makes the live line
and the result carry tokens/s, achieved TFLOP/s and MFU (None on devices without a known peak).
`positions` (N, 2) trains in a scan order (runners/scan.py; ids from batch_fn must then be in that
order too).

Determinism: `seed` seeds torch's global RNG (dropout) and a CPU torch.Generator that drives label
dropout and is handed to `batch_fn`, so the same seed gives the same run on the same device.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from runners.checkpoint import Checkpointer, rng_state, set_rng_state
from runners.perf import Throughput, throughput
from runners.train_speed import (
    Prefetcher, adamw_fused, compile_model, configure_matmul, device_name, resolve_compile, uncompile_model,
)

PRECISIONS = ("fp32", "bf16")

BatchFn = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]
"""(step, generator) -> (ids (B, N, K) int64, labels (B,) int64) on the model's device."""

Hook = tuple[int, Callable[[int, nn.Module], bool | None]]
"""(every, fn): after every `every` completed steps (not after the last), fn(completed_steps, model)
runs with the model as it would be returned (the EMA copy when EMA is on) in eval mode and without
gradients; it must draw no randomness from torch's global RNG (so training stays bit-identical with
or without it). fn returning True stops training there (early stopping): the checkpoint is saved
first, so a stopped stage keeps it."""


@dataclass
class TrainResult:
    """Outcome of `train_generator`."""

    model: nn.Module
    """the trained model (the EMA copy when ema_decay is set), in eval mode"""
    losses: list[tuple[int, float]]
    """(step, training loss) for every step"""
    initial_loss: float
    """loss of the first step"""
    final_loss: float
    """mean loss over the last 10% of steps (at least one)"""
    wall_s: float
    """wall-clock seconds of the loop"""
    steps_per_s: float = field(default=0.0)
    stopped_at: int | None = None
    """completed steps when a hook stopped training early (None: it ran all `steps`)"""
    tokens: int = 0
    """sequence positions trained on in this call (batch x N per step; a resumed run counts its own steps)"""
    throughput: Throughput | None = None
    """tokens/s, achieved TFLOP/s and MFU of this call (None unless flops_per_token was given)"""
    compiled: bool = False
    """whether the loop ran the compiled model"""


def _optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]  # matrices: linear weights, embedding tables
    no_decay = [p for p in params if p.ndim < 2]  # RMSNorm gains (and any bias)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    device = params[0].device if params else torch.device("cpu")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=adamw_fused(device) or None)



@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for ema_p, p in zip(ema.parameters(), model.parameters()):
        ema_p.lerp_(p, 1.0 - decay)  # ema = decay * ema + (1 - decay) * p
    for ema_b, b in zip(ema.buffers(), model.buffers()):
        ema_b.copy_(b)


def train_generator(
    model: nn.Module,
    batch_fn: BatchFn,
    *,
    steps: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.95),
    grad_clip: float = 1.0,
    warmup_steps: int = 0,
    ema_decay: float | None = None,
    log_every: int = 10,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    precision: Literal["fp32", "bf16"] = "fp32",
    compile: bool | Literal["auto"] = False,
    positions: Tensor | None = None,
    checkpointer: Checkpointer | None = None,
    loss_fn: Callable[..., Tensor] | None = None,
    hooks: Sequence[Hook] = (),
    prefetch: bool | None = None,
    flops_per_token: float | None = None,
    data_parallel: int = 1,
) -> TrainResult:
    """Train `model` (in place) for `steps` optimizer steps on batches from `batch_fn`.

    model must provide `loss(ids, labels, *, positions, generator) -> scalar Tensor`. precision
    "bf16" autocasts forward + loss to bfloat16 on the model's device; compile ("auto": CUDA only,
    True, False; see runners.train_speed.resolve_compile) runs the whole model compiled during the
    loop; prefetch (None: on CUDA only) draws batch s + 1 while step s runs; positions (N, 2) is the
    scan order handed to every loss call (None = raster). loss_fn, when given, computes the loss in
    place of `model.loss` (same arguments): data-parallel training (runners/distributed.py) passes a DistributedDataParallel wrapper whose forward
    is `model.loss`, so backward all-reduces the gradients while the optimizer, EMA and checkpoints
    keep working on the plain `model` (same parameter tensors, plain state_dict keys).
    checkpointer (runners.checkpoint) saves model, optimizer, EMA, losses and every RNG
    state when due; a loop that finds a checkpoint continues after its step, bit-identically. on_log(step, metrics)
    is called every `log_every` steps and at the last step with metrics "loss" (mean since the
    last log), "lr" and "grad_norm". A non-finite loss raises FloatingPointError at once. hooks: see
    `Hook` (intermediate evaluations, early stopping); a stopped run returns with `stopped_at` set.
    flops_per_token (runners.perf.train_flops_per_token, per sequence position): the live line and the
    result then carry tokens/s, achieved TFLOP/s and MFU. data_parallel: how many ranks train on equal shards
    of each global batch (runners/distributed.py); the throughput is then the global batch's, and MFU is against
    that many devices' summed peak.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, but got steps={steps}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, but got lr={lr}")
    if data_parallel < 1:
        raise ValueError(f"data_parallel must be >= 1 (the ranks sharing each batch), but got {data_parallel}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, but got warmup_steps={warmup_steps}")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1) or be None, but got ema_decay={ema_decay}")
    for every, _ in hooks:
        if every < 1:
            raise ValueError(f"a hook's interval must be >= 1 step, but got {every}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, but got log_every={log_every}")
    if not callable(getattr(model, "loss", None)):
        raise TypeError(f"model must define loss(ids, labels, *, generator), but {type(model).__name__} does not")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, but got precision={precision!r}")

    torch.manual_seed(seed)  # dropout masks
    generator = torch.Generator().manual_seed(seed)  # label dropout and batch_fn draws (CPU: device-independent)
    device = next(model.parameters()).device
    device_type = device.type
    configure_matmul(device)  # TF32 on CUDA
    optimizer = _optimizer(model, lr, weight_decay, betas)
    ema = copy.deepcopy(model).requires_grad_(False) if ema_decay is not None else None
    loss_fn = loss_fn if loss_fn is not None else model.loss
    compiled, _ = resolve_compile(compile, device)
    if compiled:
        compile_model(model)  # the loss (and a DDP wrapper's forward) call the compiled forward
    prefetcher = Prefetcher(batch_fn, generator, device)
    prefetch = device_type == "cuda" if prefetch is None else prefetch

    model.train()
    losses: list[tuple[int, float]] = []
    since_log: list[float] = []
    first_step = 0
    checkpointer = checkpointer or Checkpointer(None)
    if (state := checkpointer.restore()) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"], generator)
        losses, since_log, first_step = state["losses"], state["since_log"], state["step"]  # steps completed

    def snapshot() -> dict:
        rng = rng_state(generator)
        rng["generators"] = [prefetcher.generator_state()]  # as before a batch drawn ahead
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "rng": rng,
            "losses": losses, "since_log": since_log,
        }

    start = time.perf_counter()
    stopped_at = None
    tokens = 0
    window_start, window_tokens = start, 0  # the live line's throughput: since the last log
    for step in range(first_step, steps):
        step_lr = lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr  # linear warmup, then constant
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        ids, labels = prefetcher.take(step)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(ids, labels, positions=positions, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if prefetch and step < steps - 1:
            prefetcher.ahead(step + 1)  # after this step's draws: the draw order is unchanged
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is NaN at step {step} (got {loss_value}); lower lr or check inputs")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if ema is not None:
            _ema_update(ema, model, ema_decay)  # type: ignore[arg-type]
        losses.append((step, loss_value))
        since_log.append(loss_value)
        tokens += ids.shape[0] * ids.shape[1]
        window_tokens += ids.shape[0] * ids.shape[1]
        if on_log is not None and ((step + 1) % log_every == 0 or step == steps - 1):
            metrics = {"loss": sum(since_log) / len(since_log), "lr": step_lr, "grad_norm": float(grad_norm)}
            now = time.perf_counter()
            if flops_per_token is not None and now > window_start:
                speed = throughput(tokens=window_tokens * data_parallel, seconds=now - window_start,
                                   flops_per_token=flops_per_token, device_name=device_name(device),
                                   devices=data_parallel)
                metrics.update({k: v for k, v in speed.row().items() if v is not None})
            on_log(step, metrics)
            since_log = []
            window_start, window_tokens = time.perf_counter(), 0
        if step < steps - 1:
            saved = checkpointer.maybe_save(step + 1, snapshot)  # counted in completed steps
            due = [fn for every, fn in hooks if (step + 1) % every == 0]
            if due and _run_hooks(due, step + 1, ema if ema is not None else model, model):
                if checkpointer.enabled and not saved:
                    checkpointer.save(step + 1, snapshot())
                stopped_at = step + 1
                break
    wall_s = time.perf_counter() - start
    if compiled:
        uncompile_model(model)  # what follows (evaluation, saving) runs eager with any shapes

    done = len(losses)
    tail = max(1, done // 10)
    final_loss = sum(v for _, v in losses[-tail:]) / tail
    trained = ema if ema is not None else model
    trained.eval()
    return TrainResult(
        model=trained,
        losses=losses,
        initial_loss=losses[0][1],
        final_loss=final_loss,
        wall_s=wall_s,
        steps_per_s=(done - first_step) / wall_s if wall_s > 0 else float("inf"),
        stopped_at=stopped_at,
        tokens=tokens,
        throughput=throughput(tokens=tokens * data_parallel, seconds=wall_s, flops_per_token=flops_per_token,
                              device_name=device_name(device), devices=data_parallel)
        if flops_per_token is not None and wall_s > 0 and tokens else None,
        compiled=compiled,
    )


def _run_hooks(due: list[Callable[[int, nn.Module], bool | None]], completed: int, evaluated: nn.Module,
               trained: nn.Module) -> bool:
    """Run the hooks due after `completed` steps on `evaluated` in eval mode; True if one asks to stop."""
    evaluated.eval()
    try:
        with torch.no_grad():
            stop = [bool(fn(completed, evaluated)) for fn in due]  # every due hook runs, even after a stop
    finally:
        trained.train()
        evaluated.train(evaluated is trained)
    return any(stop)


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    ids: Tensor,
    labels: Tensor,
    batch_size: int = 256,
    *,
    positions: Tensor | None = None,
    seed: int = 0,
) -> float:
    """Mean loss of `model` on (ids (B, N, K), labels (B,)) in eval mode (no dropout, no label dropout).

    Batches are weighted by their size. A CPU generator seeded with `seed` is handed to every loss
    call, so a loss with random parts (the MLM's masks) is reproducible; a deterministic loss (AR)
    does not depend on batch_size, the MLM's draws do (same seed, same batch_size: same value).
    positions (N, 2): the scan order of ids (None = raster). The model's mode is restored afterwards.
    """
    if ids.shape[0] != labels.shape[0] or ids.shape[0] == 0:
        raise ValueError(
            f"ids and labels must hold the same non-zero number of samples, "
            f"but got {ids.shape[0]} and {labels.shape[0]}"
        )
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    try:
        total = 0.0
        for start in range(0, ids.shape[0], batch_size):
            batch_ids, batch_labels = ids[start : start + batch_size], labels[start : start + batch_size]
            loss = model.loss(batch_ids, batch_labels, positions=positions, generator=generator)
            total += loss.item() * batch_ids.shape[0]
    finally:
        model.train(was_training)
    return total / ids.shape[0]

"""Sampling strategies as pure functions of (model, inputs, knobs, torch.Generator).

ELM.md "Sampling". AR (`sample_ar`): CFG on logits l = l_u + s_t (l_c - l_u) with the batch doubled
by the null class and s_t from a CFG schedule, then temperature, then top-k, then top-p, per
sub-token head, then each sub-token sampled independently. MLM (`sample_mlm`): MaskGIT decoding
with CFG and a Gumbel temperature tau on the confidences only (no top-k, no logit temperature).
Every random draw comes from the `generator` argument; the device comes from the inputs (labels),
never hard-coded.

`generator` is one torch.Generator for the whole batch, or a sequence of G generators each owning a
consecutive slice of B / G rows: then every draw is made slice by slice, each from its own generator, in
the order the sampler makes it when that slice runs alone. A slice's random stream therefore does not
depend on which other slices share its forward pass, and its tokens equal those of the slice sampled alone
up to float rounding of the batched matmuls (the evaluation stage groups blocks of SAMPLE_BATCH samples this
way, sweep/stages/common.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:  # runtime import would be circular (runners.generators registers these samplers)
    from runners.generators.ar import GeneratorConfig, KVCache

# Bumped when a change alters which tokens a given (model, knobs, seed) produce; part of evaluation keys.
# sampling-2: sample_ar decodes with a KV cache by default (same tokens up to float rounding of the
# logits, but not bit-identical arithmetic), adds CFG schedules, top-p, and the MLM sampler.
# sampling-3: MLM decoding as the authors': confidence = mean over the K sub-tokens of (log p + its own
# Gumbel draw), at least one position left masked until the last step; the `powercos` CFG schedule.
SAMPLING_CODE_VERSION = "sampling-3"


class ARDecoder(Protocol):
    """What `sample_ar` needs from a model (ARGenerator provides it).

    next_logits is the full-prefix path (kv_cache=False); init_cache / prefill / decode_step the
    cached one (kv_cache=True).
    """

    config: GeneratorConfig
    training: bool

    def next_logits(self, prefix: Tensor, labels: Tensor, *, positions: Tensor | None = None) -> Tensor:
        """prefix (B, n, K), labels (B,) -> logits of position n, (B, K, V)."""
        ...

    def init_cache(self, batch_size: int, *, positions: Tensor | None = None) -> KVCache: ...

    def prefill(self, prefix: Tensor, labels: Tensor, cache: KVCache) -> Tensor: ...

    def decode_step(self, tokens: Tensor, cache: KVCache) -> Tensor: ...

    def train(self, mode: bool = True) -> object: ...


class MaskedDecoder(Protocol):
    """What `sample_mlm` needs from a model (MLMGenerator provides it)."""

    config: GeneratorConfig
    training: bool
    mask_id: int

    def __call__(self, ids: Tensor, labels: Tensor, *, positions: Tensor | None = None) -> Tensor:
        """ids (B, N, K) with [MASK] = mask_id, labels (B,) -> logits (B, N, K, V)."""
        ...

    def train(self, mode: bool = True) -> object: ...


# ---------------------------------------------------------------------------------------------------------------
# classifier-free guidance


def cfg_logits(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance on logits: uncond + scale * (cond - uncond). scale 1 = conditional."""
    if cond.shape != uncond.shape:
        raise ValueError(
            f"cond and uncond must have the same shape, but got {tuple(cond.shape)} and {tuple(uncond.shape)}"
        )
    return uncond + scale * (cond - uncond)


# schedule -> (s, t, N, p) -> s_t, with r = (t + 1) / N (ELM.md "Sampling"). t counts AR positions or MLM
# steps; p (the `cfg_power` knob) is read by powercos only.
CFG_SCHEDULES: dict[str, Callable[[float, int, int, float], float]] = {
    "constant": lambda s, t, N, p: s,
    "linear": lambda s, t, N, p: 1 + (s - 1) * ((t + 1) / N),
    "cosine": lambda s, t, N, p: 1 + (s - 1) * math.sin(math.pi / 2 * ((t + 1) / N)),
    "log": lambda s, t, N, p: 1 + (s - 1) * math.log(1 + ((t + 1) / N) * (math.e - 1)),
    "square": lambda s, t, N, p: 1 + (s - 1) * ((t + 1) / N) ** 2,
    # as the authors wrote it: t / N, not r, so it starts at exactly 1 and never reaches s
    "square_root": lambda s, t, N, p: 1 + (s - 1) * math.sqrt(t / N),
    # the authors' MLM schedule: 1 + (s - 1) (1 - cos(pi r^p)) / 2, an S-curve from ~1 to s (p = 1: half a cosine)
    "powercos": lambda s, t, N, p: 1 + (s - 1) * (1 - math.cos(math.pi * ((t + 1) / N) ** p)) / 2,
}
DEFAULT_CFG_POWER = 1.0
"""p of powercos when the knobs do not say (the authors' default `scale_pow`)"""


def cfg_scale_at(schedule: str, scale: float, t: int, N: int, power: float = DEFAULT_CFG_POWER) -> float:
    """Guidance scale at step t of N (t = 0..N-1) under `schedule`, peaking at `scale`.

    All but square_root reach `scale` at the last step (r = 1); square_root uses t/N instead of r.
    `power` is p of powercos (> 0); the other schedules ignore it.
    """
    if schedule not in CFG_SCHEDULES:
        raise ValueError(f"cfg_schedule must be one of {sorted(CFG_SCHEDULES)}, but got {schedule!r}")
    if not 0 <= t < N:
        raise ValueError(f"step t must lie in [0, N={N}), but got t={t}")
    if not power > 0:
        raise ValueError(f"cfg_power must be > 0 (the p of powercos; 1 = half a cosine), but got cfg_power={power}")
    return float(CFG_SCHEDULES[schedule](scale, t, N, power))


# ---------------------------------------------------------------------------------------------------------------
# logit filters and draws


def filter_logits(logits: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Temperature first, then top-k, then top-p (nucleus), over the last dim (one sub-token head per row).

    top_k 0 = off, k capped at V; entries outside the top k become -inf, exactly k survive per row
    (ties broken by torch.topk). top_p 1.0 = off; otherwise keep the smallest set of most likely
    ids (of the temperature-scaled, top-k-filtered distribution) whose probability reaches top_p,
    i.e. id i survives iff the ids ranked above it hold less than top_p; the top id always survives.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, but got temperature={temperature}; use top_k=1 for greedy")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), but got top_k={top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1] (1 = off), but got top_p={top_p}")
    logits = logits / temperature
    V = logits.shape[-1]
    if 0 < top_k < V:
        values, indices = torch.topk(logits, top_k, dim=-1)  # (..., k)
        filtered = torch.full_like(logits, float("-inf"))
        logits = filtered.scatter(-1, indices, values)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)  # (..., V)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        mass_above = probs.cumsum(dim=-1) - probs  # probability of the ids ranked strictly above
        drop_sorted = mass_above >= top_p  # rank 0 has mass_above 0 < top_p: never dropped
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


Generators = torch.Generator | Sequence[torch.Generator]
"""One generator for every row, or G generators each owning a consecutive slice of B / G rows."""


def row_slices(batch_size: int, generator: Generators) -> list[tuple[slice, torch.Generator]]:
    """(rows, generator) pairs: the whole batch with one generator, or B / G consecutive rows per generator."""
    if isinstance(generator, torch.Generator):
        return [(slice(0, batch_size), generator)]
    generators = list(generator)
    if not generators or batch_size % len(generators):
        raise ValueError(f"a sequence of generators splits the batch evenly, one slice each, but got "
                         f"{len(generators)} generators for {batch_size} rows; pass a multiple of their count")
    rows = batch_size // len(generators)
    return [(slice(i * rows, (i + 1) * rows), g) for i, g in enumerate(generators)]


def _sample_categorical(logits: Tensor, generator: Generators) -> Tensor:
    """One draw per row of (B, ..., V) logits -> (B, ...) int64; each slice of rows from its own generator only."""
    probs = torch.softmax(logits.float(), dim=-1)
    draws = []
    for rows, g in row_slices(probs.shape[0], generator):
        part = probs[rows]
        flat = part.reshape(-1, part.shape[-1])  # (rows * ..., V)
        draws.append(torch.multinomial(flat, 1, generator=g).view(part.shape[:-1]))
    return draws[0] if len(draws) == 1 else torch.cat(draws)


def _uniform(shape: tuple[int, ...], generator: Generators, device: torch.device) -> Tensor:
    """Uniform [0, 1) draws of `shape` (B, ...), each slice of rows from its own generator, on `device`."""
    parts = [torch.rand(rows.stop - rows.start, *shape[1:], generator=g, device=g.device)
             for rows, g in row_slices(shape[0], generator)]
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(device)


def _check_labels_and_generator(labels: Tensor, num_classes: int, generator: Generators) -> None:
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (B,), but got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(
            f"labels must lie in [0, num_classes={num_classes}] (num_classes = null class), "
            f"but got range [{int(labels.min())}, {int(labels.max())}]"
        )
    for _, g in row_slices(labels.shape[0], generator):
        if g.device.type != labels.device.type:
            raise ValueError(
                f"generator must live on the labels' device ({labels.device}), but got {g.device}; "
                f"create it with torch.Generator(device=labels.device)"
            )


# ---------------------------------------------------------------------------------------------------------------
# AR


@torch.no_grad()
def sample_ar(
    model: ARDecoder,
    labels: Tensor,
    *,
    cfg_scale: float = 1.0,
    cfg_schedule: str = "constant",
    cfg_power: float = DEFAULT_CFG_POWER,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: Generators,
    positions: Tensor | None = None,
    kv_cache: bool = True,
) -> Tensor:
    """Sample token ids (B, N, K) position by position for class labels (B,).

    Position n is predicted from [class token, ids[:, :n]]: with kv_cache (default) the class token
    is prefilled once and each step feeds only the token just sampled; without it the whole prefix
    is recomputed every step (the authors' sampler). Both give the same logits up to float rounding.
    With cfg_scale != 1 the batch is doubled with the null class and l = l_u + s_n (l_c - l_u),
    s_n = cfg_scale_at(cfg_schedule, cfg_scale, n, N, cfg_power). Then temperature, top-k, top-p, and each of
    the K sub-tokens is drawn independently from its own head. positions (N, 2): the scan order's
    (row, col) of each sequence index, as in the model (default raster); the ids come back in that
    scan order. The model runs in eval mode (its mode is restored afterwards).
    """
    cfg = model.config
    _check_labels_and_generator(labels, cfg.num_classes, generator)
    cfg_scale_at(cfg_schedule, cfg_scale, 0, 1, cfg_power)  # validate the schedule before any compute
    filter_logits(torch.zeros(1), temperature=temperature, top_k=top_k, top_p=top_p)  # validate knobs
    if kv_cache and not callable(getattr(model, "init_cache", None)):
        raise TypeError(f"kv_cache=True needs model.init_cache/prefill/decode_step, which "
                        f"{type(model).__name__} lacks; pass kv_cache=False")
    device = labels.device
    B, N, K = labels.shape[0], cfg.seq_len, cfg.token_each
    guided = cfg_scale != 1.0
    # doubled batch: first half conditional, second half the null class
    model_labels = torch.cat([labels, torch.full_like(labels, cfg.null_class)]) if guided else labels

    was_training = model.training
    model.train(False)
    try:
        ids = torch.zeros(B, N, K, dtype=torch.long, device=device)
        cache = model.init_cache(model_labels.shape[0], positions=positions) if kv_cache else None
        for n in range(N):
            if cache is not None:
                if n == 0:
                    logits = model.prefill(ids.new_zeros(model_labels.shape[0], 0, K), model_labels, cache)
                else:
                    last = ids[:, n - 1]  # (B, K): the token sampled at the previous step
                    logits = model.decode_step(torch.cat([last, last]) if guided else last, cache)
            else:
                prefix = ids[:, :n]  # (B, n, K)
                if guided:
                    prefix = torch.cat([prefix, prefix])  # (2B, n, K)
                logits = model.next_logits(prefix, model_labels, positions=positions)
            logits = logits.float()  # (B or 2B, K, V)
            if guided:
                scale = cfg_scale_at(cfg_schedule, cfg_scale, n, N, cfg_power)
                logits = cfg_logits(logits[:B], logits[B:], scale)  # (B, K, V)
            logits = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
            ids[:, n] = _sample_categorical(logits, generator)  # (B, K): each head drawn independently
    finally:
        model.train(was_training)
    return ids


# ---------------------------------------------------------------------------------------------------------------
# MLM


def mlm_masked_after(step: int, steps: int, seq_len: int, masked_before: int) -> int:
    """Positions left masked after MLM decoding step t (0-based) of `steps`, the authors' rule.

    Before the last step: floor(N cos(pi/2 r)), r = (t+1)/steps, clamped to [1, masked_before - 1]:
    at least one position newly fixed while that leaves one masked, and at least one kept masked (so a
    step may fix nothing once one position is left). At the last step: 0, everything is fixed.
    """
    if step == steps - 1:
        return 0
    target = math.floor(seq_len * math.cos(math.pi / 2 * (step + 1) / steps))
    return max(1, min(target, masked_before - 1))


def mlm_confidence(log_p: Tensor, gumbel: Tensor, tau: float, r: float) -> Tensor:
    """Confidence of each position, the authors' rule: mean over its K sub-tokens of log p(sampled) plus
    that sub-token's own Gumbel draw scaled by tau (1 - r). log_p, gumbel (B, N, K) -> (B, N)."""
    return (log_p + tau * (1.0 - r) * gumbel).mean(-1)


@torch.no_grad()
def sample_mlm(
    model: MaskedDecoder,
    labels: Tensor,
    *,
    steps: int = 10,
    tau: float = 4.5,
    cfg_scale: float = 1.0,
    cfg_schedule: str = "constant",
    cfg_power: float = DEFAULT_CFG_POWER,
    generator: Generators,
    positions: Tensor | None = None,
) -> Tensor:
    """MaskGIT decoding of token ids (B, N, K) for class labels (B,) in `steps` steps, as the authors decode.

    Start all-masked. At step t (r = (t+1)/steps): run the model on the current ids (batch doubled
    with the null class when cfg_scale != 1; s_t = cfg_scale_at(cfg_schedule, cfg_scale, t, steps,
    cfg_power)), sample every masked position's K sub-tokens from softmax(logits) (no temperature, no
    top-k), score each masked position by confidence = mean over its K sub-tokens of
    (log p(sampled) + tau * (1 - r) * g), one Gumbel draw g per sub-token, and re-mask the
    `mlm_masked_after(t, ...)` least confident ones (ties: lower index first); the rest are fixed for
    good. Positions are masked and fixed with all K sub-tokens together, as in training. tau (the
    authors' sampling `temperature`) is annealed to 0 at the last step. All draws (tokens, Gumbel
    noise) come from `generator`. positions (N, 2) as in the model (default raster); ids come back in
    that scan order.
    """
    cfg = model.config
    _check_labels_and_generator(labels, cfg.num_classes, generator)
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an int >= 1, but got steps={steps!r}")
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0 (0 = no Gumbel noise), but got tau={tau}")
    cfg_scale_at(cfg_schedule, cfg_scale, 0, 1, cfg_power)  # validate the schedule before any compute
    device = labels.device
    B, N, K = labels.shape[0], cfg.seq_len, cfg.token_each
    guided = cfg_scale != 1.0
    model_labels = torch.cat([labels, torch.full_like(labels, cfg.null_class)]) if guided else labels

    was_training = model.training
    model.train(False)
    try:
        ids = torch.full((B, N, K), model.mask_id, dtype=torch.long, device=device)
        masked = torch.ones(B, N, dtype=torch.bool, device=device)
        n_masked = N
        for t in range(steps):
            if n_masked == 0:  # nothing left to decode
                break
            r = (t + 1) / steps
            inputs = torch.cat([ids, ids]) if guided else ids
            logits = model(inputs, model_labels, positions=positions).float()  # (B or 2B, N, K, V)
            if guided:
                scale = cfg_scale_at(cfg_schedule, cfg_scale, t, steps, cfg_power)
                logits = cfg_logits(logits[:B], logits[B:], scale)
            sampled = _sample_categorical(logits, generator)  # (B, N, K)
            log_p = torch.log_softmax(logits, dim=-1).gather(-1, sampled[..., None])[..., 0]  # (B, N, K)
            uniform = _uniform((B, N, K), generator, device)  # (B, N, K), after the token draws of each slice
            gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))  # (B, N, K)
            confidence = mlm_confidence(log_p, gumbel, tau, r)  # (B, N)
            confidence = confidence.masked_fill(~masked, float("inf"))  # fixed positions are never re-masked
            ids = torch.where(masked[..., None], sampled, ids)
            n_masked = mlm_masked_after(t, steps, N, n_masked)
            remask = torch.zeros_like(masked)
            if n_masked > 0:
                least = torch.sort(confidence, dim=1, stable=True).indices[:, :n_masked]  # (B, m)
                remask.scatter_(1, least, True)
            ids = torch.where(remask[..., None], torch.full_like(ids, model.mask_id), ids)
            masked = remask
    finally:
        model.train(was_training)
    return ids

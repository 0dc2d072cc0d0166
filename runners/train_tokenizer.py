"""Train an image tokenizer (the BAE) and measure its reconstructions.

Loss (this stage of the project): L1 reconstruction + bit_usage_weight * bit-usage penalty. The paper adds
LPIPS and an adaptively weighted hinge GAN; those enter as further terms of `tokenizer_loss` (the decoder's
`last_layer` is exposed for the adaptive weight).

Determinism: given the model's initial weights (the caller seeds the init), the run is a function of `seed`:
a CPU torch.Generator drives the data order and a generator on the model's device drives the Bernoulli bits.
No global RNG is used inside the loop.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from runners.data import stack
from runners.tokenizers.bae import bit_usage_penalty

ADAMW_BETAS = (0.9, 0.99)
ADAMW_WEIGHT_DECAY = 0.0  # an autoencoder with few hundred steps has nothing to gain from shrinking weights


def tokenizer_loss(
    images: Tensor, out: dict[str, Tensor], *, bit_usage_weight: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its (detached, scalar) terms for one batch; images (B, C, H, W), out = model(images)."""
    l1 = F.l1_loss(out["recon"], images)
    usage = bit_usage_penalty(out["probs"])
    loss = l1 + bit_usage_weight * usage
    # Further terms (perceptual, adversarial) add here and to the returned dict.
    return loss, {"loss": loss.detach(), "l1": l1.detach(), "bit_usage_penalty": usage.detach()}


def _batches(train: Dataset, batch_size: int, generator: torch.Generator):
    """Endless batches (images (B, C, H, W), labels (B,)) in a seeded shuffled order, reshuffled every epoch."""
    n = len(train)  # type: ignore[arg-type]
    tensors = train.tensors if isinstance(train, TensorDataset) else None
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            index = order[start:start + batch_size]
            if tensors is not None:
                yield tensors[0][index], tensors[1][index]
            else:
                items = [train[int(i)] for i in index]
                yield torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for ema_p, p in zip(ema.parameters(), model.parameters()):
        ema_p.lerp_(p.detach(), 1.0 - decay)
    for ema_b, b in zip(ema.buffers(), model.buffers()):
        ema_b.copy_(b)


def train_tokenizer(
    model: nn.Module,
    train: Dataset,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    bit_usage_weight: float = 0.01,
    ema_decay: float = 0.999,
    log_every: int = 10,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> nn.Module:
    """Train `model` (in place) with AdamW on L1 (+ bit-usage penalty); return its EMA copy in eval mode.

    Args:
        model: a tokenizer whose forward(images, generator) returns dict(recon, probs, bits).
        train: items (image (C, H, W) in [0, 1], label); a TensorDataset is indexed directly (fast path).
        steps: optimizer steps.
        lr: AdamW learning rate (constant).
        batch_size: images per step (the last partial batch of each epoch is dropped).
        seed: seeds the data order and the Bernoulli draws.
        bit_usage_weight: weight of `bit_usage_penalty` (0 turns it off).
        ema_decay: EMA decay; warmed up as min(ema_decay, (1 + t) / (10 + t)) so that short runs are not
            dominated by the random initial weights (0.999 ** 300 would still leave 74% of the init).
        log_every: call on_log every this many steps (and at the last step) with the terms averaged since the
            previous call.
        on_log: callback(step, {"loss", "l1", "bit_usage_penalty"}), step counted from 1.
    """
    if steps < 1 or batch_size < 1 or log_every < 1 or not lr > 0:
        raise ValueError(f"steps, batch_size, log_every and lr must be positive, but got steps={steps}, "
                         f"batch_size={batch_size}, log_every={log_every}, lr={lr}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), but got ema_decay={ema_decay}; try 0.999")
    if len(train) == 0:  # type: ignore[arg-type]
        raise ValueError("train must hold at least one image, but got an empty dataset")
    device = next(model.parameters()).device
    data_generator = torch.Generator().manual_seed(seed)
    bit_generator = torch.Generator(device=device).manual_seed(seed + 1)

    model.train()
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=ADAMW_BETAS, weight_decay=ADAMW_WEIGHT_DECAY)
    batches = _batches(train, batch_size, data_generator)
    sums: dict[str, Tensor] = {}  # terms summed on the device since the last log (one host sync per log)
    count = 0
    for step in range(1, steps + 1):
        images, _ = next(batches)
        images = images.to(device, non_blocking=True)  # (B, C, H, W)
        out = model(images, generator=bit_generator)
        loss, terms = tokenizer_loss(images, out, bit_usage_weight=bit_usage_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _ema_update(ema, model, min(ema_decay, (1.0 + step) / (10.0 + step)))

        for key, value in terms.items():
            sums[key] = sums[key] + value if key in sums else value
        count += 1
        if step % log_every == 0 or step == steps:
            averages = {key: float(value) / count for key, value in sums.items()}
            if not math.isfinite(averages["loss"]):
                raise FloatingPointError(
                    f"tokenizer loss is {averages['loss']} by step {step}; lower lr (got lr={lr})"
                )
            if on_log is not None:
                on_log(step, averages)
            sums, count = {}, 0
    return ema.eval()


def _psnr_db(mse: float) -> float:
    return float("inf") if mse == 0.0 else 10.0 * math.log10(1.0 / mse)  # peak 1.0


@torch.no_grad()
def reconstruction_metrics(model: nn.Module, images: Tensor, batch_size: int = 256) -> dict[str, float]:
    """Reconstruction quality of a BAE with thresholded bits on `images` (N, C, H, W) in [0, 1].

    Returns:
        psnr_db: 10 log10(1 / MSE), MSE over all pixels of all images (peak 1.0).
        l1: mean absolute error per pixel.
        bit_usage: share of the D bits that take both values somewhere in (images x positions).
        bit_entropy_mean: mean over bits of the binary entropy (bits) of each bit's frequency of ones.
        mean_image_psnr_db: PSNR of predicting the mean of `images` for every image (the baseline to beat).
        mean_image_l1: L1 of the same baseline.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be (N, C, H, W) with N >= 1, but got shape {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    squared, absolute, pixels = 0.0, 0.0, 0
    ones: Tensor | None = None  # (D,) count of ones per bit
    positions = 0
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size].to(device)  # (b, C, H, W)
        bits = model.quantize(model.encode_probs(batch), "threshold")  # (b, D, h, w)
        recon = model.decode(bits)
        squared += float(((recon - batch) ** 2).sum())
        absolute += float((recon - batch).abs().sum())
        pixels += batch.numel()
        batch_ones = bits.sum(dim=(0, 2, 3)).double()  # (D,)
        ones = batch_ones if ones is None else ones + batch_ones
        positions += bits.shape[0] * bits.shape[2] * bits.shape[3]
    model.train(was_training)
    assert ones is not None
    frequency = (ones / positions).cpu()  # (D,) share of ones per bit
    used = ((frequency > 0) & (frequency < 1)).double().mean()
    q = frequency.clamp(1e-12, 1 - 1e-12)
    entropy = -(q * torch.log2(q) + (1 - q) * torch.log2(1 - q))
    entropy = torch.where((frequency > 0) & (frequency < 1), entropy, torch.zeros_like(entropy))

    mean_image = images.mean(dim=0, keepdim=True)  # (1, C, H, W)
    baseline_mse = float(((images - mean_image) ** 2).mean())
    return {
        "psnr_db": _psnr_db(squared / pixels),
        "l1": absolute / pixels,
        "bit_usage": float(used),
        "bit_entropy_mean": float(entropy.mean()),
        "mean_image_psnr_db": _psnr_db(baseline_mse),
        "mean_image_l1": float((images - mean_image).abs().mean()),
    }


def heldout_metrics(model: nn.Module, heldout: Dataset, limit: int | None = None) -> dict[str, float]:
    """`reconstruction_metrics` on (the first `limit` images of) a held-out dataset."""
    images, _ = stack(heldout, limit)
    return reconstruction_metrics(model, images)

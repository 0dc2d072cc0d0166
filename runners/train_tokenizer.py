"""Train an image tokenizer (BAE or VQ) and measure its reconstructions.

Loss (ELM.md "Tokenizers"): L1 + perceptual_weight * LPIPS + adaptive_weight * hinge-GAN, plus the tokenizer's
own terms: bit_usage_weight * bit-usage penalty for a BAE (forward returns "probs"), the codebook + commitment
loss for a VQ (forward returns "quant_loss"). LPIPS and GAN are off by default (weights 0): the digits recipe is
L1 + bit-usage. See runners/tokenizers/losses.py for the formulas.

The recipe otherwise is the authors' (Binary Latent Diffusion's train_ae_dist.py with the hparams ELM ships,
bae/binaryae.py, hparams/defaults/binarygan_default.py, hparams/set_up_hparams.py):
- autoencoder: Adam, betas (0.9, 0.999), no weight decay, constant lr (AdamW with weight decay 0 is Adam);
- discriminator: Adam with the same lr and betas, PyTorch's default init (no taming init), hinge loss;
- GAN: the autoencoder's term is on from step `gan_start` with the adaptive weight clamped to `gan_weight_max`
  (1) times `gan_weight` (1); the discriminator trains from the step after (theirs: AE term from 0-based step
  disc_start_step, discriminator at steps > disc_start_step);
- LPIPS reads the [0, 1] images as they are (their LPIPS has no [-1, 1] map);
- EMA of the autoencoder's weights: decay 0.995 every 10 steps (their ema_beta, steps_per_update_ema), with a
  warm-up of ours (the decay is min(decay, (1 + t) / (10 + t)) at update t) that keeps short runs off their
  random init; after 2,000 updates it no longer acts, so long runs end as theirs.
Steps are counted from 1 here, from 0 in theirs: their step s is our step s + 1.

Data: the training split streams through a torch DataLoader (worker processes decode images while the model
computes, `loader`); the loop decides which items each step reads (a seeded shuffled order) and, with `flip`,
draws a fresh horizontal flip per sample per step in its own process.

Determinism: given the model's initial weights (the caller seeds the init), the run is a function of `seed`:
a CPU torch.Generator drives the data order, a generator on the model's device drives the Bernoulli bits (BAE)
or the dead-code restarts (VQ), a third seeds the discriminator's init and a fourth draws the flips. No global
RNG is used; the number of loader workers does not change the run.

Checkpoints (`checkpointer`, the protocol of runners/checkpoint.py) hold the model, its optimizer and EMA copy,
the discriminator and its optimizer (GAN on), the terms summed since the last log, the step, the position in
the shuffled epoch and every random state (the global torch RNG, the data-order, Bernoulli and flip
generators): a resumed run ends bit-identical to one that was never interrupted.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from runners.checkpoint import Checkpointer, rng_state, set_rng_state
from runners.data import Batches, ImageSource, LoaderSettings, image_batches, loader as make_loader, stream
from runners.tokenizers.bae import bit_usage_penalty, bits_to_token_ids
from runners.tokenizers.losses import (ADAPTIVE_WEIGHT_MAX, PatchDiscriminator, PerceptualLoss, adaptive_gan_weight,
                                       hinge_d_loss, hinge_g_loss, patch_discriminator_layers)
from runners.vocab import Vocabulary

ADAMW_BETAS = (0.9, 0.999)  # the authors' torch.optim.Adam defaults
ADAMW_WEIGHT_DECAY = 0.0  # theirs: Adam without weight decay
DISC_BETAS = (0.9, 0.999)  # theirs: the discriminator's Adam also keeps the defaults (taming: 0.5, 0.9)
EMA_DECAY = 0.995  # their ema_beta
EMA_EVERY = 10  # their steps_per_update_ema


def tokenizer_loss(
    images: Tensor,
    out: dict[str, Tensor],
    *,
    bit_usage_weight: float,
    perceptual: Callable[[Tensor, Tensor], Tensor] | None = None,
    perceptual_weight: float = 0.0,
    discriminator: nn.Module | None = None,
    gan_weight: float = 0.0,
    last_layer_weight: Tensor | None = None,
    gan_weight_max: float = ADAPTIVE_WEIGHT_MAX,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total autoencoder loss and its (detached, scalar) terms for one batch; images (B, C, H, W), out = model(images).

    Terms: l1; bit_usage_penalty if out has "probs" (BAE); quant_loss (+ codebook_loss, commitment_loss) if out
    has "quant_loss" (VQ); perceptual if `perceptual` is given and perceptual_weight > 0; gan_g and gan_weight
    (the adaptive weight, already times gan_weight) if `discriminator` is given and gan_weight > 0, which needs
    `last_layer_weight` (the decoder's last conv weight) for the adaptive weight, clamped to gan_weight_max.
    """
    recon = out["recon"]
    l1 = F.l1_loss(recon, images)
    terms: dict[str, Tensor] = {"l1": l1.detach()}
    rec_loss = l1  # what the adaptive GAN weight balances against (taming's nll_loss: L1 + LPIPS)
    if perceptual is not None and perceptual_weight > 0:
        lpips = perceptual(recon, images).mean()
        rec_loss = rec_loss + perceptual_weight * lpips
        terms["perceptual"] = lpips.detach()
    loss = rec_loss
    if "probs" in out:
        usage = bit_usage_penalty(out["probs"])
        loss = loss + bit_usage_weight * usage
        terms["bit_usage_penalty"] = usage.detach()
    if "quant_loss" in out:
        loss = loss + out["quant_loss"]
        for key in ("quant_loss", "codebook_loss", "commitment_loss"):
            terms[key] = out[key].detach()
    if discriminator is not None and gan_weight > 0:
        if last_layer_weight is None:
            raise ValueError("last_layer_weight must be the decoder's last conv weight when the GAN term is on, "
                             "but got None; pass model.last_layer.weight")
        gan_g = hinge_g_loss(discriminator(recon))
        weight = adaptive_gan_weight(rec_loss, gan_g, last_layer_weight, gan_weight, gan_weight_max)
        loss = loss + weight * gan_g
        terms["gan_g"], terms["gan_weight"] = gan_g.detach(), weight.detach()
    terms["loss"] = loss.detach()
    return loss, terms


class _BatchOrder:
    """Endless batches of item indices (B,) in a seeded shuffled order, reshuffled every epoch; the last partial
    batch of an epoch is dropped (a dataset smaller than the batch gives one batch of all items per epoch).

    Its state (the generator's state before this epoch's shuffle, and how many batches of the epoch were taken)
    restores the stream in the middle of an epoch.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.per_epoch = max(1, n // batch_size)
        self.epoch_state: Tensor | None = None
        self.order: Tensor | None = None  # (n,) this epoch's permutation
        self.taken = 0

    def next(self) -> Tensor:
        if self.order is None or self.taken == self.per_epoch:
            self.epoch_state = self.generator.get_state()
            self.order = torch.randperm(self.n, generator=self.generator)
            self.taken = 0
        start = self.taken * self.batch_size
        self.taken += 1
        return self.order[start:start + self.batch_size]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_state": self.epoch_state, "taken": self.taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["epoch_state"] is None:
            return
        self.generator.set_state(state["epoch_state"])
        self.order = torch.randperm(self.n, generator=self.generator)  # the same permutation, generator state after it
        self.epoch_state, self.taken = state["epoch_state"], state["taken"]


def _index_batches(order: _BatchOrder) -> Iterator[list[int]]:
    """The endless index batches of `order`, as a DataLoader batch_sampler reads them."""
    while True:
        yield order.next().tolist()


def flip_batch(images: Tensor, generator: torch.Generator) -> Tensor:
    """Flip each image of `images` (B, C, H, W) horizontally with probability 1/2, coins from `generator` (CPU)."""
    coins = torch.rand(images.shape[0], generator=generator) < 0.5  # (B,)
    return torch.where(coins.to(images.device)[:, None, None, None], images.flip(-1), images)


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
    ema_decay: float = EMA_DECAY,
    ema_every: int = EMA_EVERY,
    log_every: int = 10,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    perceptual_weight: float = 0.0,
    perceptual_weights: str | None = None,
    gan_weight: float = 0.0,
    gan_start: int = 0,
    gan_weight_max: float = ADAPTIVE_WEIGHT_MAX,
    disc_width: int = 64,
    disc_layers: int | None = None,
    checkpointer: Checkpointer | None = None,
    loader: LoaderSettings | None = None,
    flip: bool = False,
) -> nn.Module:
    """Train `model` (in place) with Adam on L1 (+ its own terms, + LPIPS, + GAN); return its EMA copy in eval mode.

    Args:
        model: a tokenizer whose forward(images, generator) returns dict(recon, ...): BAE "probs" (bit-usage
            penalty), VQ "quant_loss" (codebook + commitment); `model.last_layer` for the adaptive GAN weight,
            `model.channels` and `model.image_size` for the discriminator.
        train: items (image (C, H, W) in [0, 1], label), read through a DataLoader with `loader`'s workers.
        steps: optimizer steps.
        lr: learning rate of the autoencoder's and the discriminator's Adam (constant).
        batch_size: images per step (the last partial batch of each epoch is dropped).
        seed: seeds the data order, the Bernoulli draws / dead-code restarts and the discriminator init.
        bit_usage_weight: weight of `bit_usage_penalty` (0 turns it off).
        ema_decay: EMA decay per update (the authors' 0.995); warmed up as min(ema_decay, (1 + t) / (10 + t)) at
            update t so that short runs are not dominated by the random initial weights.
        ema_every: update the EMA after every this many steps (steps ema_every, 2 ema_every, ...; theirs 10)
            and after the last step.
        log_every: call on_log every this many steps (and at the last step) with the terms averaged since the
            previous call.
        on_log: callback(step, averaged terms), step counted from 1. Terms: "loss", "l1", plus
            "bit_usage_penalty" (BAE), "quant_loss", "codebook_loss", "commitment_loss", "code_usage" (VQ: share
            of the codebook chosen in the batch), "perceptual" (perceptual_weight > 0), "gan_g", "gan_weight",
            "gan_d" (from step gan_start when gan_weight > 0; averaged over the steps where they exist).
        perceptual_weight: weight of the LPIPS term (0 = off).
        perceptual_weights: local LPIPS-VGG16 weights file (see losses.PerceptualLoss); needed when
            perceptual_weight > 0, never downloaded.
        gan_weight: multiplies the adaptive weight of the hinge-GAN term (0 = off; the authors' 1).
        gan_start: first step (counted from 1) at which the GAN term is on; the discriminator trains from the step
            after (the authors' disc_start_step 30001, 0-based, is our gan_start 30002).
        gan_weight_max: the adaptive weight's clamp (the authors' disc_weight_max 1; taming 1e4).
        disc_width: channels of the discriminator's first conv (taming: 64).
        disc_layers: stride-2 layers of the discriminator; None = as many as fit the image, at most 3 (taming).
        checkpointer: saves the run's whole state when due (runners/checkpoint.py); a run that finds a checkpoint
            continues after its step and ends bit-identical to an uninterrupted one. None = no checkpoints.
        loader: worker processes, pinned memory and prefetching of the DataLoader (default: read in this process).
        flip: flip each sample horizontally with probability 1/2, freshly at every step (ImageDataset.flip).
    """
    if steps < 1 or batch_size < 1 or log_every < 1 or not lr > 0:
        raise ValueError(f"steps, batch_size, log_every and lr must be positive, but got steps={steps}, "
                         f"batch_size={batch_size}, log_every={log_every}, lr={lr}")
    if not 0.0 <= ema_decay < 1.0 or ema_every < 1:
        raise ValueError(f"ema_decay must be in [0, 1) and ema_every >= 1, but got ema_decay={ema_decay}, "
                         f"ema_every={ema_every}; try 0.995 and 10 (the authors')")
    if not gan_weight_max > 0:
        raise ValueError(f"gan_weight_max must be > 0, but got gan_weight_max={gan_weight_max}; the authors use 1")
    if perceptual_weight < 0 or gan_weight < 0 or gan_start < 0:
        raise ValueError(f"perceptual_weight, gan_weight and gan_start must be >= 0, but got perceptual_weight="
                         f"{perceptual_weight}, gan_weight={gan_weight}, gan_start={gan_start}; use 0 to turn off")
    if len(train) == 0:  # type: ignore[arg-type]
        raise ValueError("train must hold at least one image, but got an empty dataset")
    device = next(model.parameters()).device
    data_generator = torch.Generator().manual_seed(seed)
    bit_generator = torch.Generator(device=device).manual_seed(seed + 1)

    # The authors' LPIPS takes the [0, 1] images without LPIPS' [-1, 1] map (bae/lpips.py, bae/binaryae.py).
    perceptual = PerceptualLoss(perceptual_weights, to_signed=False).to(device) if perceptual_weight > 0 else None
    discriminator: nn.Module | None = None
    disc_optimizer: torch.optim.Optimizer | None = None
    if gan_weight > 0:
        channels, image_size = int(model.channels), int(model.image_size)  # (reading train[0] could draw a flip)
        layers = patch_discriminator_layers(image_size) if disc_layers is None else disc_layers
        discriminator = PatchDiscriminator(channels, width=disc_width, layers=layers,
                                           generator=torch.Generator().manual_seed(seed + 2)).to(device).train()
        disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=DISC_BETAS)

    model.train()
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=ADAMW_BETAS, weight_decay=ADAMW_WEIGHT_DECAY)
    batches = _BatchOrder(len(train), batch_size, data_generator)  # type: ignore[arg-type]
    flip_generator = torch.Generator().manual_seed(seed + 3)
    generators = [data_generator, bit_generator, *([flip_generator] if flip else [])]  # every stream a step draws from
    sums: dict[str, Tensor] = {}  # terms summed on the device since the last log (one host sync per log)
    counts: dict[str, int] = {}
    first_step = 0  # steps completed before this call (a resumed run continues after them)
    checkpointer = checkpointer or Checkpointer(None)
    if (state := checkpointer.restore()) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        if discriminator is not None and disc_optimizer is not None:
            discriminator.load_state_dict(state["discriminator"])
            disc_optimizer.load_state_dict(state["disc_optimizer"])
        set_rng_state(state["rng"], *generators)
        batches.load_state_dict(state["batch_order"])
        sums = {key: value.to(device) for key, value in state["sums"].items()}
        counts, first_step = dict(state["counts"]), int(state["step"])

    def snapshot() -> dict[str, Any]:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state_dict(),
            "discriminator": discriminator.state_dict() if discriminator is not None else None,
            "disc_optimizer": disc_optimizer.state_dict() if disc_optimizer is not None else None,
            "rng": rng_state(*generators), "batch_order": batches.state_dict(), "sums": sums, "counts": counts,
        }

    # The loader reads ahead (workers, prefetching), so it walks its own copy of the batch order; `batches`, which
    # the checkpoint saves, advances only as batches are consumed.
    ahead = _BatchOrder(len(train), batch_size, torch.Generator().manual_seed(seed))  # type: ignore[arg-type]
    ahead.load_state_dict(batches.state_dict())
    feed = stream(make_loader(train, loader or LoaderSettings(), batch_sampler=_index_batches(ahead)))

    for step in range(first_step + 1, steps + 1):
        expected = batches.next()
        images, _ = next(feed)
        if images.shape[0] != expected.shape[0]:
            raise RuntimeError(f"the loader gave {images.shape[0]} images for a batch of {expected.shape[0]}")
        if flip:
            images = flip_batch(images, flip_generator)
        images = images.to(device, non_blocking=True)  # (B, C, H, W)
        out = model(images, generator=bit_generator)
        gan_on = discriminator is not None and step >= gan_start
        loss, terms = tokenizer_loss(
            images, out, bit_usage_weight=bit_usage_weight, perceptual=perceptual,
            perceptual_weight=perceptual_weight, discriminator=discriminator if gan_on else None,
            gan_weight=gan_weight, last_layer_weight=model.last_layer.weight if gan_on else None,
            gan_weight_max=gan_weight_max,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % ema_every == 0 or step == steps:  # (the last step too: ours, so short runs end updated)
            update = -(-step // ema_every)  # 1, 2, ...
            _ema_update(ema, model, min(ema_decay, (1.0 + update) / (10.0 + update)))
        if gan_on and step > gan_start:
            assert discriminator is not None and disc_optimizer is not None
            # Discriminator step on real images vs the (detached) reconstructions of this step, hinge loss.
            gan_d = hinge_d_loss(discriminator(images), discriminator(out["recon"].detach()))
            disc_optimizer.zero_grad(set_to_none=True)  # also drops what the autoencoder's GAN term left here
            gan_d.backward()
            disc_optimizer.step()
            terms["gan_d"] = gan_d.detach()
        if "ids" in out:  # VQ: share of the codebook chosen somewhere in this batch
            chosen = torch.bincount(out["ids"].flatten(), minlength=int(model.codebook_size))  # (V,)
            terms["code_usage"] = (chosen > 0).float().mean()

        for key, value in terms.items():
            sums[key] = sums[key] + value if key in sums else value
            counts[key] = counts.get(key, 0) + 1
        if step % log_every == 0 or step == steps:
            averages = {key: float(value) / counts[key] for key, value in sums.items()}
            if not math.isfinite(averages["loss"]):
                raise FloatingPointError(
                    f"tokenizer loss is {averages['loss']} by step {step}; lower lr (got lr={lr})"
                )
            if on_log is not None:
                on_log(step, averages)
            sums, counts = {}, {}
        if step < steps:
            checkpointer.maybe_save(step, snapshot)  # step = steps completed
    feed.close()  # stops the loader's workers
    return ema.eval()


def _psnr_db(mse: float) -> float:
    return float("inf") if mse == 0.0 else 10.0 * math.log10(1.0 / mse)  # peak 1.0


def _id_histogram_metrics(counts: Tensor) -> dict[str, float]:
    """Share of ids used and entropy (bits) of the id frequencies, from counts (V,)."""
    frequency = (counts.double() / counts.sum()).cpu()  # (V,)
    nonzero = frequency[frequency > 0]
    return {"token_usage": float((frequency > 0).double().mean()),
            "token_entropy_bits": float(-(nonzero * torch.log2(nonzero)).sum())}


@torch.no_grad()
def reconstruction_metrics(model: nn.Module, images: ImageSource, batch_size: int = 256,
                           vocab: Vocabulary | None = None) -> dict[str, float]:
    """Reconstruction quality of a tokenizer on `images` (N, C, H, W) in [0, 1]: BAE with thresholded bits, VQ
    with nearest-neighbour ids (both deterministic).

    `images` is a tensor or a re-iterable source of batches (`runners.data.Batches`): it is read twice, once
    for the mean image of the baseline and once for the reconstructions, and never held whole.

    Returns:
        psnr_db: 10 log10(1 / MSE), MSE over all pixels of all images (peak 1.0).
        l1: mean absolute error per pixel.
        mean_image_psnr_db: PSNR of predicting the mean of `images` for every image (the baseline to beat).
        mean_image_l1: L1 of the same baseline.
        BAE ("bits") only:
        bit_usage: share of the D bits that take both values somewhere in (images x positions).
        bit_entropy_mean: mean over bits of the binary entropy (bits) of each bit's frequency of ones.
        token_usage, token_entropy_bits (BAE only with `vocab`; always for VQ): share of the V sub-token ids
            used somewhere in (images x positions x K sub-tokens), and the entropy (bits, at most log2 V) of
            their frequencies.
        VQ ("index") only:
        code_usage: share of the codebook entries that are nearest somewhere (= token_usage, K = 1).
    """
    if isinstance(images, Tensor) and (images.ndim != 4 or images.shape[0] == 0):
        raise ValueError(f"images must be (N, C, H, W) with N >= 1, but got shape {tuple(images.shape)}")
    kind = model.latent_kind
    if kind == "bits" and vocab is not None and vocab.code_dim != model.code_dim:
        raise ValueError(f"vocab.code_dim must equal the BAE's code_dim ({model.code_dim}), but got {vocab!r}")
    if kind == "index" and vocab is not None:
        raise ValueError(f"vocab must be None for an index tokenizer, but got {vocab!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    squared, absolute, pixels = 0.0, 0.0, 0
    ones: Tensor | None = None  # (D,) count of ones per bit
    id_counts: Tensor | None = None  # (V,) count of each sub-token id / codebook entry
    positions = 0
    # first pass: the mean image (float64 sums), which the baseline predicts for every image
    total: Tensor | None = None
    count = 0
    for batch in image_batches(images, batch_size):
        batch_sum = batch.to(device).double().sum(dim=0)  # (C, H, W)
        total, count = (batch_sum if total is None else total + batch_sum), count + batch.shape[0]
    if total is None:
        raise ValueError("images must hold at least one image, but got none")
    mean_image = (total / count).float()[None]  # (1, C, H, W)
    baseline_squared, baseline_absolute = 0.0, 0.0
    for batch in image_batches(images, batch_size):
        batch = batch.to(device)  # (b, C, H, W)
        baseline_squared += float(((batch - mean_image).double() ** 2).sum())
        baseline_absolute += float((batch - mean_image).double().abs().sum())
        if kind == "bits":
            bits = model.binarize(model.encode_probs(batch), "threshold")  # (b, D, h, w)
            recon = model.decode(bits).clamp(0.0, 1.0)  # images: the decoder's output clamped, as the samplers
            batch_ones = bits.sum(dim=(0, 2, 3)).double()  # (D,)
            ones = batch_ones if ones is None else ones + batch_ones
            positions += bits.shape[0] * bits.shape[2] * bits.shape[3]
            ids = bits_to_token_ids(bits, vocab) if vocab is not None else None  # (b, h*w, K)
            size = vocab.size if vocab is not None else 0
        else:
            ids = model.encode(batch)  # (b, h, w)
            recon = model.decode(ids).clamp(0.0, 1.0)
            size = model.codebook_size
        if ids is not None:
            batch_counts = torch.bincount(ids.flatten(), minlength=size)  # (V,)
            id_counts = batch_counts if id_counts is None else id_counts + batch_counts
        squared += float(((recon - batch) ** 2).sum())
        absolute += float((recon - batch).abs().sum())
        pixels += batch.numel()
    model.train(was_training)

    metrics = {
        "psnr_db": _psnr_db(squared / pixels),
        "l1": absolute / pixels,
        "mean_image_psnr_db": _psnr_db(baseline_squared / pixels),
        "mean_image_l1": baseline_absolute / pixels,
    }
    if kind == "bits":
        assert ones is not None
        frequency = (ones / positions).cpu()  # (D,) share of ones per bit
        used = ((frequency > 0) & (frequency < 1)).double().mean()
        q = frequency.clamp(1e-12, 1 - 1e-12)
        entropy = -(q * torch.log2(q) + (1 - q) * torch.log2(1 - q))
        entropy = torch.where((frequency > 0) & (frequency < 1), entropy, torch.zeros_like(entropy))
        metrics.update(bit_usage=float(used), bit_entropy_mean=float(entropy.mean()))
    if id_counts is not None:
        metrics.update(_id_histogram_metrics(id_counts))
    if kind == "index":
        metrics["code_usage"] = metrics["token_usage"]
    return metrics


def heldout_metrics(model: nn.Module, heldout: Dataset, limit: int | None = None,
                    vocab: Vocabulary | None = None, loader: LoaderSettings | None = None) -> dict[str, float]:
    """`reconstruction_metrics` on (the first `limit` images of) a held-out dataset, streamed in batches."""
    return reconstruction_metrics(model, Batches(heldout, 256, loader or LoaderSettings(), limit), vocab=vocab)

"""tokenizer: dataset -> tokenizer weights (+ held-out reconstruction metrics)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from runners.artifacts import save_model
from runners.data import Batches
from runners.tokenizers import TOKENIZERS, vocabulary_for
from runners.tokenizers.losses import check_perceptual_weights
from runners.perf import throughput
from runners.train_speed import RateMeter, device_name, measured_train_flops
from runners.train_tokenizer import reconstruction_metrics, train_tokenizer
from sweep.stages.common import Log, checkpointer_of, dataset_of, loader_of, pick_device


def tokenizer_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    s = stage.settings
    if "checkpoint" in s:  # an imported tokenizer (released BAE or `sweep import` folder): no training
        from sweep.stages.imported import import_tokenizer

        return import_tokenizer(stage, out)
    device = pick_device(stage.resources.gpus)
    data = dataset_of(stage)
    feed = loader_of(stage)  # the training and held-out images stream through a DataLoader
    kwargs: dict[str, Any] = {"size": s["tokenizer_size"], "channels": data.channels, "image_size": data.image_size}
    if s["tokenizer"] == "vq":  # a codebook of 2^code_dim entries: ids of code_dim bits, as the vocab column says
        kwargs.update(codebook_size=2 ** s["code_dim"], restart_dead_codes=s["restart_dead_codes"])
    else:
        kwargs.update(code_dim=s["code_dim"], bernoulli=s["bernoulli"])
    perceptual_weights = stage.runtime.get("perceptual_weights")  # absolute path (not hashed); the key holds its sha256
    if s.get("perceptual_weight", 0.0) > 0:
        check_perceptual_weights(perceptual_weights, s["perceptual_weights_sha256"])
    checkpointer = checkpointer_of(stage, checkpoints)
    resumed = checkpointer.restore()
    torch.manual_seed(s["tokenizer_seed"])
    model = TOKENIZERS[s["tokenizer"]].build(**kwargs).to(device)
    first_step = 0 if resumed is None else int(resumed["step"])
    flops = image_train_flops(model, data.channels, data.image_size, device)  # per image
    meter = RateMeter(log, per_step=s["tokenizer_batch"], unit="images", device=device, flops_per_unit=flops,
                      first_step=first_step)
    started = time.perf_counter()
    model = train_tokenizer(
        model, data.train, steps=s["tokenizer_steps"], lr=s["tokenizer_lr"], batch_size=s["tokenizer_batch"],
        seed=s["tokenizer_seed"], bit_usage_weight=s.get("bit_usage_weight", 0.0), on_log=meter,
        gan_weight=s["gan_weight"], gan_start=s["gan_start"], perceptual_weight=s.get("perceptual_weight", 0.0),
        perceptual_weights=perceptual_weights, checkpointer=checkpointer, loader=feed, flip=data.flip,
    )
    speed = throughput(tokens=(s["tokenizer_steps"] - first_step) * s["tokenizer_batch"],
                       seconds=max(time.perf_counter() - started, 1e-9), flops_per_token=flops,
                       device_name=device_name(device))
    save_model(model, out, {"tokenizer": s["tokenizer"], "kwargs": kwargs})
    vocab = vocabulary_for(model, 1) if s["tokenizer"] == "bae" else None  # ids of one whole latent position
    metrics = reconstruction_metrics(model, Batches(data.heldout, 256, feed), vocab=vocab)
    return {**{name: float(value) for name, value in metrics.items()},
            "resumed_from_step": -1 if resumed is None else int(resumed["step"]),
            "checkpoint_discarded": checkpointer.discarded,  # why a checkpoint found was not used ('' if none)
            **speed.row("images")}


def image_train_flops(model: torch.nn.Module, channels: int, image_size: int, device: torch.device) -> float:
    """Training FLOPs per image of a tokenizer: 3 x its forward's (encoder + decoder) on one image, counted."""
    image = torch.zeros(1, channels, image_size, image_size, device=device)
    was_training = model.training
    model.eval()
    try:
        return measured_train_flops(lambda: model(image))
    finally:
        model.train(was_training)


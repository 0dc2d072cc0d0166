"""classifier: dataset -> classifier weights (feature extractor of FID/KID, class accuracy).

Planned only when a metric needs it (sweep/plan.py): feature_extractor "classifier", or class accuracy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from runners.data import batches
from runners.evaluation.classifier import (
    accuracy_of_batches,
    classifier_train_flops,
    save_classifier,
    train_classifier,
)
from runners.perf import throughput
from runners.train_speed import RateMeter, device_name
from sweep.stages.common import Log, dataset_of, loader_of, pick_device


def classifier_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    s = stage.settings
    data = dataset_of(stage)
    feed = loader_of(stage)  # both splits stream through a DataLoader
    device = pick_device(stage.resources.gpus)
    flops = classifier_train_flops(data.channels, data.image_size, data.num_classes)  # per image
    meter = RateMeter(log, per_step=s["classifier_batch"], unit="images", device=device, flops_per_unit=flops)
    torch.manual_seed(0)
    started = time.perf_counter()
    model = train_classifier(
        data.train, num_classes=data.num_classes, steps=s["classifier_steps"], lr=s["classifier_lr"],
        batch_size=s["classifier_batch"], seed=0, loader=feed, device=device, on_log=meter,
    )
    speed = throughput(tokens=s["classifier_steps"] * s["classifier_batch"],
                       seconds=max(time.perf_counter() - started, 1e-9), flops_per_token=flops,
                       device_name=device_name(device))
    save_classifier(model, out)
    return {"heldout_accuracy": accuracy_of_batches(model, batches(data.heldout, 512, feed)),
            **speed.row("images")}

"""classifier: dataset -> classifier weights (feature extractor of FID/KID, class accuracy).

Planned only when a metric needs it (sweep/plan.py): feature_extractor "classifier", or class accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from runners.data import batches
from runners.evaluation.classifier import accuracy_of_batches, save_classifier, train_classifier
from sweep.stages.common import Log, dataset_of, loader_of, pick_device


def classifier_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    s = stage.settings
    data = dataset_of(stage)
    feed = loader_of(stage)  # both splits stream through a DataLoader
    torch.manual_seed(0)
    model = train_classifier(
        data.train, num_classes=data.num_classes, steps=s["classifier_steps"], lr=s["classifier_lr"],
        batch_size=s["classifier_batch"], seed=0, loader=feed, device=pick_device(stage.resources.gpus),
    )
    save_classifier(model, out)
    return {"heldout_accuracy": accuracy_of_batches(model, batches(data.heldout, 512, feed))}

"""classifier: dataset -> classifier weights (feature extractor of FID/KID, class accuracy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from runners.data import stack
from runners.evaluation.classifier import accuracy, save_classifier, train_classifier
from sweep.stages.common import Log, dataset_of


def classifier_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    s = stage.settings
    data = dataset_of(s)
    images, labels = stack(data.train)
    heldout_images, heldout_labels = stack(data.heldout)
    torch.manual_seed(0)
    model = train_classifier(
        images, labels, num_classes=data.num_classes, steps=s["classifier_steps"], lr=s["classifier_lr"],
        batch_size=s["classifier_batch"], seed=0,
    )
    save_classifier(model, out)
    return {"heldout_accuracy": accuracy(model, heldout_images, heldout_labels)}


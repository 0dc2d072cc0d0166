"""reconstruction: tokenizer, reference -> rFID, once per tokenizer x feature extractor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from runners.artifacts import load_tokenizer
from runners.data import Batches
from runners.evaluation.reconstruction import reconstruction_fid
from sweep.stages.common import Log, dataset_of, loader_of, pick_device, scoring_space


@torch.no_grad()
def reconstruction_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    """Reconstruction FID of a tokenizer on the held-out images, in the reference's feature space."""
    s = stage.settings
    device = pick_device(stage.resources.gpus)
    data = dataset_of(stage)
    tokenizer = load_tokenizer(inputs["tokenizer"], device)
    reference, _, extractor, record = scoring_space(
        inputs, device, num_samples=len(data.heldout), samples_per_class=0, image_size=data.image_size,
        sampling_seed=0,
    )
    metrics = reconstruction_fid(tokenizer, Batches(data.heldout, 256, loader_of(stage)), extractor, reference)
    return {**metrics, **record}


"""reference: (classifier) -> held-out features + FID statistics, once per dataset x feature extractor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from runners.data import Batches
from runners.evaluation.classifier import load_classifier
from runners.evaluation.reference import feature_extractor_for, save_adm_reference_features, save_reference_features
from space.schema import file_sha256
from sweep.stages.common import Log, dataset_of, loader_of, pick_device


@torch.no_grad()
def reference_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    """Features and FID statistics of the held-out images in one feature space, for every stage that scores."""
    s = stage.settings
    device = pick_device(stage.resources.gpus)
    classifier = load_classifier(inputs["classifier"]).to(device) if "classifier" in inputs else None
    extractor = feature_extractor_for(s["feature_extractor"], classifier, device, stage.runtime.get("inception_weights"))
    if s.get("reference") == "adm_npz":  # the paper's reference: the ADM batch's images in the sweep's feature space
        path = Path(stage.runtime["adm_reference"])  # not hashed; the key holds its sha256
        if file_sha256(path) != s["adm_reference_sha256"]:
            raise ValueError(f"assets.adm_reference {path} is not the file the sweep was planned with (sha256 "
                             f"{s['adm_reference_sha256'][:12]}...); plan again or restore the file")
        return save_adm_reference_features(out, extractor, path, extractor_kind=s["feature_extractor"])
    data = dataset_of(stage)
    # the held-out images stream through: features appended to a file, float64 sums for mu and sigma
    return save_reference_features(out, extractor, Batches(data.heldout, 256, loader_of(stage)),
                                   name=f"{s['dataset']['name']}/heldout", extractor_kind=s["feature_extractor"])


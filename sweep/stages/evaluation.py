"""evaluation: generator, tokenizer, (classifier), reference -> samples + FID, KID, precision/recall, class accuracy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runners.artifacts import load_generator, load_tokenizer
from runners.evaluation.metrics import feature_extractor_name, image_metrics
from runners.evaluation.reference import to_uint8_nhwc
from runners.generators import GENERATORS
from runners.scan import scan_positions
from runners.tokenizers import vocabulary_for
from sweep.stages.common import PR_K, SAMPLE_BATCH, Log, balanced_labels, pick_device, sample_blocks, scoring_space


@torch.no_grad()
def evaluation_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    s = stage.settings
    device = pick_device(stage.resources.gpus)
    num_classes, image_size = s["dataset"]["num_classes"], s["dataset"]["image_size"]  # no images needed to sample
    tokenizer = load_tokenizer(inputs["tokenizer"], device)
    generator, config, saved = load_generator(inputs["generator"], device)
    vocab = vocabulary_for(tokenizer, config.token_each)
    entry = GENERATORS[saved["modeling"]]
    order, grid = saved["scan_order"], (config.grid_height, config.grid_width)
    positions = scan_positions(order, *grid, device=device)

    # Class-balanced labels; fixed micro-batches, each drawing from its own generator seeded from
    # (sampling seed, batch index): the images do not depend on how the work is split.
    labels = balanced_labels(num_classes, s["samples_per_class"], device)
    blocks = range(math.ceil(len(labels) / SAMPLE_BATCH))
    sampled = sample_blocks(blocks, labels, s, tokenizer, vocab, generator, entry, order, grid, positions)
    fake = torch.cat([sampled[block] for block in blocks]).clamp(0, 1)
    # The held-out set's features and statistics come from the reference stage (computed once per extractor).
    reference, classifier, extractor, record = scoring_space(
        inputs, device, num_samples=len(labels), samples_per_class=s["samples_per_class"],
        image_size=image_size, sampling_seed=s["sampling_seed"],
    )
    metrics = image_metrics(classifier, None, fake, labels, real_features=reference.features,
                            real_statistics=reference.statistics, extractor=extractor, k=PR_K)
    # Samples as scored (uint8 by truncation, as torch-fidelity does), NHWC: the ADM evaluator reads arr_0;
    # labels let reports draw per-class grids.
    np.savez(out / "samples.npz", arr_0=to_uint8_nhwc(fake), labels=labels.cpu().numpy())
    return {**metrics, **record, "feature_extractor_name": feature_extractor_name(extractor), "num_samples": len(labels)}


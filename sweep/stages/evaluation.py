"""evaluation: generator, tokenizer, (classifier), reference -> samples + FID, KID, precision/recall, class accuracy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from runners.artifacts import load_generator, load_tokenizer
from runners.evaluation.metrics import feature_extractor_name
from runners.evaluation.reference import to_uint8_nhwc
from runners.evaluation.streaming import SampleBatchWriter, StreamingScorer
from runners.generators import GENERATORS
from runners.scan import scan_positions
from runners.tokenizers import vocabulary_for
from sweep.stages.common import PR_K, SAMPLE_BATCH, Log, balanced_labels, iter_sample_blocks, pick_device, sampling_group, scoring_space


@torch.no_grad()
def evaluation_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    s = stage.settings
    runtime = getattr(stage, "runtime", {})
    precision = s.get("sampling_precision", "fp32")  # not in the settings (key) when fp32
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
    # The held-out set's features and statistics come from the reference stage (computed once per extractor).
    reference, classifier, extractor, record = scoring_space(
        inputs, device, num_samples=len(labels), samples_per_class=s["samples_per_class"],
        image_size=image_size, sampling_seed=s["sampling_seed"],
        sampling_precision=precision,
    )
    # G blocks per sampler forward (runtime.sample_batch, else what the GPU's free memory holds with every model
    # loaded; 1 on a CPU): the images do not depend on G, each block drawing from its own generator
    group = sampling_group(
        runtime, device, modeling=saved["modeling"], config=config, tokenizer=tokenizer, image_size=image_size,
        guided=float(s.get("cfg_scale", 1.0)) != 1.0, precision=precision,
        num_blocks=len(blocks),
    )
    # One block of images at a time (runners/evaluation/streaming.py): written to samples.npz as scored (uint8
    # by truncation, as torch-fidelity does, NHWC: the ADM evaluator reads arr_0; labels let reports draw
    # per-class grids) and featurised; the scorer's temporary feature files are gone when the stage returns.
    with StreamingScorer(extractor, classifier, out) as scorer, SampleBatchWriter(out / "samples.npz", len(labels)) as samples:
        for block, images in iter_sample_blocks(blocks, labels, s, tokenizer, vocab, generator, entry, order, grid,
                                                positions, group=group, compile=runtime.get("compile", "auto")):
            images = images.clamp(0, 1)  # (b, C, H, W)
            samples.add(to_uint8_nhwc(images))
            scorer.add(images, labels[block * SAMPLE_BATCH : (block + 1) * SAMPLE_BATCH])
        samples.finish(labels.cpu().numpy())
        metrics = scorer.metrics(reference.features, reference.statistics, k=PR_K, device=device)  # PR on the GPU
    return {**metrics, **record, "feature_extractor_name": feature_extractor_name(extractor), "num_samples": len(labels),
            "sample_batch": min(group * SAMPLE_BATCH, len(labels))}  # images per sampler forward: run metadata

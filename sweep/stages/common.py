"""What several stage functions share: the dataset of a stage, its device, its checkpoint cadence, the
generator config of its settings, class-balanced labels, block-seeded sampling and the scoring space."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

import torch
from torch import Tensor

from runners.checkpoint import Checkpointer
from runners.data import ImageDataset, LoaderSettings, load_dataset
from runners.evaluation.classifier import load_classifier
from runners.evaluation.protocol import protocol, protocol_id
from runners.evaluation.reference import feature_extractor_for, load_reference_features
from runners.generators import GeneratorConfig
from runners.scan import from_scan
from runners.tokenizers.backbone import BACKBONE_SIZES
from sweep.faults import fault_point

Log = Callable[[int, dict[str, float]], None]
StageFunction = Callable[..., dict[str, Any]]  # (stage, inputs, out, log, *, checkpoints) -> metrics

PR_K = 3  # k of precision / recall (ELM.md "Evaluation")
SAMPLE_BATCH = 100  # fixed micro-batch of the sampler: samples do not depend on the worker's batch size


def generator_config(settings: dict[str, Any], code_dim: int, grid: tuple[int, int], num_classes: int) -> GeneratorConfig:
    return GeneratorConfig(
        size=settings["size"], grid_height=grid[0], grid_width=grid[1], token_each=settings["token_each"],
        bits_each=code_dim // settings["token_each"], num_classes=num_classes,
        dropout=settings["dropout"], class_dropout=settings["class_dropout"],
        mask_schedule_steps=settings.get("mask_schedule_steps", 10),
    )


def latent_grid(settings: dict[str, Any], image_size: int) -> tuple[int, int]:
    side = image_size // BACKBONE_SIZES[settings["tokenizer_size"]].downsample
    return side, side


def checkpointer_of(stage: Any, folder: Path | None) -> Checkpointer:
    """The checkpoint cadence of the spec's runtime settings, in the stage's checkpoint folder."""
    runtime = stage.runtime
    return Checkpointer(
        folder, every_steps=int(runtime.get("checkpoint_every_steps", 0)),
        every_s=60.0 * float(runtime.get("checkpoint_every_minutes", 0.0)),
        on_save=lambda step: fault_point("checkpoint_saved"),
    )


def loader_of(stage: Any) -> LoaderSettings:
    """How a stage streams its images: workers from its CPUs (runtime.loader_workers overrides), pinned memory on
    a GPU (runners/data.py LoaderSettings)."""
    workers = getattr(stage, "runtime", {}).get("loader_workers")
    gpus = stage.resources.gpus if stage.resources.num_workers == 1 else 0
    cpus = stage.resources.cpus if stage.resources.num_workers == 1 else 1
    return LoaderSettings.for_stage(cpus, pick_device(gpus).type == "cuda", workers)


def device_name(gpus: float) -> str:
    device = pick_device(gpus)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")



def dataset_of(stage_or_settings: Any) -> ImageDataset:
    """The dataset a stage reads: its settings say which (by content fingerprint), its runtime where (the root is
    never hashed, sweep/fingerprint.py). Plain settings with a `root` work too (tests, tools)."""
    settings = getattr(stage_or_settings, "settings", stage_or_settings)
    runtime = getattr(stage_or_settings, "runtime", {})
    d = settings["dataset"]
    root = runtime.get("dataset_root", d.get("root"))
    data = load_dataset(d["name"], d["image_size"], root, d["heldout_fraction"], d["split_seed"])
    if data.num_classes != d["num_classes"]:
        raise ValueError(f"dataset.num_classes is {d['num_classes']} but the data holds {data.num_classes} classes; "
                         f"set dataset.num_classes: {data.num_classes}")
    return data



def balanced_labels(num_classes: int, per_class: int, device: torch.device) -> Tensor:
    """Global sample index -> class: class-major, `per_class` images of each class."""
    return torch.arange(num_classes, device=device).repeat_interleave(per_class)


@torch.no_grad()
def iter_sample_blocks(
    blocks: Any, labels: Tensor, settings: dict[str, Any], tokenizer: Any, vocab: Any, generator: Any, entry: Any,
    order: str, grid: tuple[int, int], positions: Tensor,
) -> Iterator[tuple[int, Tensor]]:
    """(block, images (<=SAMPLE_BATCH, C, H, W)) of the given blocks of global sample indices, one block at a
    time, as each is decoded: a consumer that scores and writes each block before asking for the next holds
    one block of images, never all of them (the evaluation stage, intermediate evaluations).

    Block b holds global indices [b*SAMPLE_BATCH, (b+1)*SAMPLE_BATCH) and draws only from its own
    generator seeded from (sampling seed, b): any split of the blocks over workers, in any order, gives
    the same images (tested with 1 and 4 workers).
    """
    device = labels.device
    generator = fast_decoder(generator, settings)
    for block in blocks:
        fault_point("evaluation")
        rng = torch.Generator(device=device).manual_seed(settings["sampling_seed"] * 1_000_003 + block)
        chunk = labels[block * SAMPLE_BATCH : (block + 1) * SAMPLE_BATCH]
        ids = entry.sample(generator, chunk, settings, rng, positions)  # (B, N, K) in scan order
        yield block, tokenizer.decode_ids(from_scan(ids, order, *grid), vocab)  # back to raster, then decode


def sample_blocks(
    blocks: Any, labels: Tensor, settings: dict[str, Any], tokenizer: Any, vocab: Any, generator: Any, entry: Any,
    order: str, grid: tuple[int, int], positions: Tensor,
) -> dict[int, Tensor]:
    """All of `iter_sample_blocks` at once, {block: (<=SAMPLE_BATCH, C, H, W)}: for small sets and tests only
    (it holds every image)."""
    return dict(iter_sample_blocks(blocks, labels, settings, tokenizer, vocab, generator, entry, order, grid, positions))


def fast_decoder(model: Any, settings: dict[str, Any]) -> Any:
    """What the sampler runs on (runners/fast_decode.py `sampling_model`): an AR generator on CUDA decodes through
    the static KV cache with its step compiled as a CUDA graph (same tokens up to float rounding); with
    `sampling_precision: bf16` AR decodes through that cache under bf16 autocast and MLM runs its forward under
    bf16 autocast, on any device; otherwise the model itself (the fp32 CPU path stays the reference one).
    The sampling batch stays one block (SAMPLE_BATCH labels, doubled by CFG): sample_ar draws a whole batch from
    one generator, so several blocks per forward would need per-block draws inside the sampler to keep each
    block's images independent of how blocks are grouped."""
    from runners.fast_decode import sampling_model

    return sampling_model(model, settings.get("sampling_precision", "fp32"), compile="auto")


def scoring_space(
    inputs: dict[str, Path], device: torch.device, *, num_samples: int, samples_per_class: int, image_size: int,
    sampling_seed: int, sampling_precision: str = "fp32",
) -> tuple[Any, torch.nn.Module | None, Any, dict[str, Any]]:
    """What every score against the reference needs: (reference features, the dataset classifier if an input,
    the extractor that made the features, the protocol record of the score with its `protocol_id`).

    The extractor is checked against the weights the reference recorded: numbers are never computed in
    one feature space against statistics of another."""
    reference = load_reference_features(inputs["reference"])
    classifier = load_classifier(inputs["classifier"]).to(device) if "classifier" in inputs else None
    extractor = feature_extractor_for(reference.extractor, classifier, device, reference.extractor_weights)
    record = protocol(
        extractor=extractor, num_samples=num_samples, samples_per_class=samples_per_class, image_size=image_size,
        reference=reference.name, reference_checksum=reference.protocol_checksum, k=PR_K, sampling_seed=sampling_seed,
        sampling_precision=sampling_precision,
    )
    reference.check_extractor(str(record["protocol_extractor_sha256"]))
    return reference, classifier, extractor, {**record, "protocol_id": protocol_id(record)}


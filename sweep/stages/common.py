"""What several stage functions share: the dataset of a stage, its device, its checkpoint cadence, the
generator config of its settings, class-balanced labels, block-seeded sampling and the scoring space."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
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
SAMPLE_BATCH = 100  # labels per seeded generator (a block): samples do not depend on workers or on blocks per forward


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
    order: str, grid: tuple[int, int], positions: Tensor, group: int = 1, compile: bool | str = "auto",
) -> Iterator[tuple[int, Tensor]]:
    """(block, images (<=SAMPLE_BATCH, C, H, W)) of the given blocks of global sample indices, one block at a
    time, as each is decoded: a consumer that scores and writes each block before asking for the next holds
    one block of images, never all of them (the evaluation stage, intermediate evaluations).

    Block b holds global indices [b*SAMPLE_BATCH, (b+1)*SAMPLE_BATCH) and draws only from its own
    generator seeded from (sampling seed, b): any split of the blocks over workers, in any order, gives
    the same images (tested with 1 and 4 workers). `group` full blocks, taken in the given order, share one
    sampler forward (G x SAMPLE_BATCH labels, each block's rows drawing from its own generator: the same
    images as one block at a time, tested); a partial last block runs alone. Each block's tokens are decoded
    on their own, so the decoder holds one block whatever `group` is. `compile` is the stage's runtime.compile
    (`fast_decoder`).
    """
    if group < 1:
        raise ValueError(f"group must be >= 1 block per forward, but got group={group}")
    device = labels.device
    generator = fast_decoder(generator, settings, compile)
    pending: list[int] = []

    def run(members: list[int]) -> Iterator[tuple[int, Tensor]]:
        for _ in members:
            fault_point("evaluation")
        rngs = [torch.Generator(device=device).manual_seed(settings["sampling_seed"] * 1_000_003 + b) for b in members]
        chunk = torch.cat([labels[b * SAMPLE_BATCH : (b + 1) * SAMPLE_BATCH] for b in members])  # (G B,)
        ids = entry.sample(generator, chunk, settings, rngs[0] if len(rngs) == 1 else rngs, positions)  # (G B, N, K)
        for i, block in enumerate(members):
            rows = ids[i * SAMPLE_BATCH : (i + 1) * SAMPLE_BATCH]  # (B, N, K) in scan order
            yield block, tokenizer.decode_ids(from_scan(rows, order, *grid), vocab)  # back to raster, then decode

    for block in blocks:
        if len(labels[block * SAMPLE_BATCH : (block + 1) * SAMPLE_BATCH]) < SAMPLE_BATCH:  # a partial last block
            if pending:
                yield from run(pending)
                pending = []
            yield from run([block])
            continue
        pending.append(block)
        if len(pending) == group:
            yield from run(pending)
            pending = []
    if pending:
        yield from run(pending)


def fast_decoder(model: Any, settings: dict[str, Any], compile: bool | str = "auto") -> Any:
    """What the sampler runs on (runners/fast_decode.py `sampling_model`): an AR generator on CUDA decodes through
    the static KV cache with its step compiled as a CUDA graph (same tokens up to float rounding); with
    `sampling_precision: bf16` AR decodes through that cache under bf16 autocast and MLM runs its forward under
    bf16 autocast, on any device; otherwise the model itself (the fp32 CPU path stays the reference one). With
    runtime.compile false an fp32 AR generator on CUDA samples through its own KV cache instead.
    Several blocks may share one forward (`iter_sample_blocks` group, `sampling_group`): the samplers draw each
    block's rows from that block's own generator, so the images do not depend on the grouping."""
    from runners.fast_decode import sampling_model

    return sampling_model(model, settings.get("sampling_precision", "fp32"), compile=compile)


def sampling_group(
    runtime: dict[str, Any], device: torch.device, *, modeling: str, config: GeneratorConfig, tokenizer: Any,
    image_size: int, guided: bool, precision: str, num_blocks: int,
) -> int:
    """G, the SAMPLE_BATCH blocks one sampler forward holds: `runtime.sample_batch` / SAMPLE_BATCH when the spec
    fixes it; else on CUDA what the free memory holds by runners/sampling_memory.py's estimate; on a CPU 1 (the
    reference path). At most `num_blocks` (every block of the stage)."""
    from runners.sampling_memory import blocks_per_forward, bytes_per_sample, decode_bytes_per_image

    fixed = runtime.get("sample_batch")
    if fixed is not None:
        return max(1, min(num_blocks, int(fixed) // SAMPLE_BATCH))
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    backbone = getattr(tokenizer, "config", None)
    # the decoder's full-resolution width; a tokenizer without a backbone config: the paper's (the widest rung)
    backbone = backbone if hasattr(backbone, "base_channels") else BACKBONE_SIZES["imagenet"]
    per_sample = bytes_per_sample(
        modeling, layers=config.layers, width=config.width, heads=config.heads, seq_len=config.seq_len,
        token_each=config.token_each, vocab_size=config.vocab_size, guided=guided, precision=precision,
    )
    decode = decode_bytes_per_image(image_size, backbone.base_channels * backbone.channel_multipliers[0])
    return blocks_per_forward(free, per_sample=per_sample, decode_per_image=decode, block=SAMPLE_BATCH,
                              max_blocks=num_blocks)


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


"""generator: tokenizer (+ classifier, reference with intermediate evaluations) -> generator weights, training
losses, held-out loss; early stopping (ASHA rungs) and intermediate FID as training hooks."""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from runners.artifacts import load_tokenizer, save_model
from runners.data import ImageDataset, LoaderSettings, batches
from runners.encode import EncodedFolder, encode_to_folder
from runners.evaluation.intermediate import INTERMEDIATE_LOG, IntermediateEvaluator, IntermediateLog
from runners.generators import GENERATORS, tokens_per_sample
from runners.scan import scan_positions, to_scan
from runners.tokenizers import vocabulary_for
from runners.train_generator import Hook, evaluate_loss, train_generator
from sweep.faults import armed, fault_loss
from runners.train_speed import generator_flops_per_position
from sweep.stages.common import (
    SAMPLE_BATCH, Log, balanced_labels, checkpointer_of, dataset_of, generator_config, loader_of, pick_device,
    iter_sample_blocks, scoring_space,
)

ENCODED_DIR = "encoded"  # in the stage's checkpoint folder: kept for a resumed attempt, removed with the stage's end


def generator_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    s = stage.settings
    if "checkpoint" in s:  # an imported generator (released file or `sweep import` folder): no training
        from sweep.stages.imported import import_generator

        return import_generator(stage, out)
    workers = stage.resources.num_workers  # > 1: DDP on Ray Train workers that hold the GPUs; this process coordinates
    device = pick_device(stage.resources.gpus if workers == 1 else 0)
    data = dataset_of(stage)
    tokenizer = load_tokenizer(inputs["tokenizer"], device)
    vocab = vocabulary_for(tokenizer, s["token_each"])  # None for codebook tokenizers (one id per position)
    grid = tuple(tokenizer.grid)
    positions = scan_positions(s["scan_order"], *grid, device=device)  # (N, 2) grid coordinates in scan order
    # the encoded training set: memory-mapped files in the checkpoint folder (every rank reads the same), or a
    # temporary folder when the stage runs outside a store
    scratch = None if checkpoints is not None else tempfile.TemporaryDirectory(prefix="elm-encoded-")
    encoded_dir = Path(checkpoints) / ENCODED_DIR if checkpoints is not None else Path(scratch.name)  # type: ignore[union-attr]
    rank_loader = (loader_of(stage) if workers == 1 else
                   LoaderSettings.for_stage(stage.resources.cpus_per_worker, stage.resources.gpus > 0,
                                            stage.runtime.get("loader_workers")))

    def token_batches(on: torch.device) -> Callable[[int, torch.Generator], tuple[Tensor, Tensor]]:
        """batch_fn giving batches on `on`. The frozen tokenizer encodes the training set once, in batches streamed
        through a DataLoader, into memory-mapped files (both orientations when the recipe flips: a fresh flip per
        sample at every step); data-parallel ranks encode one block each on their own GPU, then every rank reads
        the same files. Every step draws fresh Bernoulli bits with the loop's CPU generator (ELM's stochastic
        augmentation; the same bits on any device), or thresholds them."""
        frozen = load_tokenizer(inputs["tokenizer"], on)
        rank, world, barrier = 0, 1, None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world, barrier = torch.distributed.get_rank(), torch.distributed.get_world_size(), torch.distributed.barrier
        encoded = encode_to_folder(frozen, data.train, encoded_dir, flips=data.flip, loader=rank_loader, rank=rank,
                                   world_size=world, barrier=barrier)
        del frozen

        def batch_fn(step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            index = torch.randint(len(encoded), (s["generator_batch"],), generator=generator)
            ids, labels = encoded.batch(index, mode=s.get("encode", "threshold"), vocab=vocab, generator=generator)  # (B, N, K) raster
            return to_scan(ids, s["scan_order"], *grid).to(on), labels.to(on)

        return batch_fn

    def heldout_tokens(on: torch.device) -> tuple[Tensor, Tensor]:
        """Held-out ids (M, N, K) in scan order (thresholded bits) and labels (M,), encoded on `on` batch by batch
        as the images stream through (the tokens are kept, the images are not)."""
        frozen = load_tokenizer(inputs["tokenizer"], on)
        ids, labels = [], []
        with torch.no_grad():
            for images, batch_labels in batches(data.heldout, 256, rank_loader):
                ids.append(to_scan(frozen.encode_ids(images.to(on), mode="threshold", vocab=vocab), s["scan_order"], *grid))
                labels.append(batch_labels.to(on))
        return torch.cat(ids), torch.cat(labels)

    if workers > 1 and (s.get("early_stopping") or s.get("intermediate_every")):
        raise ValueError(
            f"early stopping and intermediate evaluations run in the stage's own process and cannot steer "
            f"data-parallel training, but got resources.generator.workers={workers}; train this study with "
            f"workers: 1 (gpus: 1) or turn them off (no early_stopping, intermediate_every: 0)"
        )

    token_each, vocab_size = tokenizer.token_shape(vocab)
    config = generator_config(s, token_each * int(math.log2(vocab_size)), grid, data.num_classes)
    checkpointer = checkpointer_of(stage, checkpoints)
    resumed = checkpointer.restore()
    torch.manual_seed(s["seed"])
    model = GENERATORS[s["modeling"]].build(config).to(device)
    if workers == 1:  # a data-parallel run prepares its data in each worker instead
        batch_fn = token_batches(device)
        heldout_ids, heldout_labels = heldout_tokens(device)
    hooks: list[Hook] = []  # (every, fn) run during training: intermediate evaluations, early stopping
    pruned: list[Any] = []
    if s.get("early_stopping"):
        hooks.append(early_stopping_hook(stage, checkpoints, pruned, log,
                                         lambda m: evaluate_loss(m, heldout_ids, heldout_labels, positions=positions)))
    intermediate = None
    if s.get("intermediate_every"):  # FID / KID / class accuracy every N steps (runners/evaluation/intermediate.py)
        intermediate = intermediate_evaluator(s, inputs, tokenizer, vocab, grid, positions, data, device, checkpoints)
        intermediate.catch_up(resumed, model)
        hooks.append(intermediate.hook())
    recipe = dict(
        steps=s["generator_steps"], lr=s["generator_lr"], seed=s["seed"], weight_decay=s["weight_decay"],
        warmup_steps=s["generator_warmup"], precision=s["train_precision"], ema_decay=s.get("generator_ema") or None,
        compile=stage.runtime.get("compile", "auto"), positions=positions, checkpointer=checkpointer,
    )
    heldout_loss = None
    if workers == 1:
        loss_fn = None
        if armed("generator_loss"):  # SWEEP_FAULT=generator_loss:<n>:nan|raise|oom, at the n-th training loss
            loss_fn = lambda *args, **kwargs: fault_loss("generator_loss", model.loss(*args, **kwargs))  # noqa: E731
        result = train_generator(model, batch_fn, on_log=log, hooks=hooks, loss_fn=loss_fn,
                                 flops_per_token=flops_per_position(s["modeling"], config), **recipe)
    else:  # same batches in every worker, losses logged live by rank 0, same checkpoint folder, rank 0's held-out loss
        assert not hooks, "training-time hooks need workers: 1"
        from runners.distributed import train_generator_data_parallel

        result, heldout_loss = train_generator_data_parallel(
            model, lambda: GENERATORS[s["modeling"]].build(config), token_batches, heldout=heldout_tokens,
            num_workers=workers, on_log=log, use_gpu=stage.resources.gpus > 0,
            flops_per_token=flops_per_position(s["modeling"], config),
            cpus_per_worker=stage.resources.cpus_per_worker,
            storage_path=checkpoints / "ray-train" if checkpoints is not None else None, **recipe,
        )
    if pruned:
        raise pruned[0]
    if scratch is not None:
        scratch.cleanup()
    else:
        shutil.rmtree(encoded_dir, ignore_errors=True)  # the weights are saved next: the cache has done its work
    # With generator_ema the trained model is the EMA copy: the artifact holds the weights every evaluation uses
    save_model(result.model, out, {"modeling": s["modeling"], "config": config.__dict__, "scan_order": s["scan_order"],
                                   "ema_decay": s.get("generator_ema", 0.0)})
    if intermediate is not None:
        intermediate.finish(len(result.losses), result.model, out)  # + the last step; intermediate.parquet
    if heldout_loss is None:
        heldout_loss = evaluate_loss(result.model, heldout_ids, heldout_labels, positions=positions)
    return {
        "parameter_count": GENERATORS[s["modeling"]].parameter_count(config),
        "uniform_loss": math.log(vocab_size),
        "initial_loss": result.initial_loss,
        "final_loss": result.final_loss,
        "heldout_loss": heldout_loss,
        "steps_per_s": result.steps_per_s,
        **throughput_row(result.throughput),
        "resumed_from_step": -1 if resumed is None else int(resumed["step"]),
        "checkpoint_discarded": checkpointer.discarded,  # why a checkpoint found was not used ('' if none)
        "workers": workers,
    }


def flops_per_position(modeling: str, config: Any) -> float:
    """Training FLOPs per sequence position (runners.perf's rule) for the transformer slots a sample runs
    (runners.generators.tokens_per_sample: the AR N, the MLM K + N K)."""
    N, slots = config.seq_len, tokens_per_sample(modeling, config)
    return generator_flops_per_position(GENERATORS[modeling].parameter_count(config), config.layers, config.width,
                                        N, slots)


def throughput_row(speed: Any) -> dict[str, Any]:
    """tokens_per_s, achieved_tflops, mfu (None on devices without a known peak) of a training stage's row."""
    if speed is None:
        return {"tokens_per_s": None, "achieved_tflops": None, "mfu": None}
    return speed.row()


class StagePruned(Exception):
    """A training stage stopped by early stopping: recorded as a `pruned` row; its checkpoint is kept."""

    def __init__(self, message: str, step: int, value: float) -> None:
        super().__init__(message)
        self.step, self.value = step, value


def early_stopping_hook(stage: Any, checkpoints: Path | None, pruned: list[Any], log: Log,
                        metric: Callable[[torch.nn.Module], float]) -> Hook:
    """The ASHA hook of a generator in a study with `early_stopping` (sweep/brackets.py): at each rung it
    records `metric(model)` (held-out loss) in the bracket and stops training unless it is among the best."""
    from space.schema import EarlyStopping
    from sweep.brackets import BRACKETS_DIR, Bracket

    config = EarlyStopping(**stage.settings["early_stopping"])
    rungs = set(config.rungs(stage.settings["generator_steps"]))
    if checkpoints is None:
        raise ValueError("early stopping needs the store (its rungs live there); run the stage through a sweep")
    store_root = Path(checkpoints).parent.parent  # <store>/<kind>/.ckpt-<key>
    bracket = Bracket(store_root / BRACKETS_DIR / stage.runtime["early_stopping_bracket"], config.reduction_factor)

    def hook(step: int, model: torch.nn.Module) -> bool:
        if step not in rungs:
            return False
        decision = bracket.decide(step, stage.key, metric(model))
        log(step, {f"rung_{config.metric}": decision.value})
        if not decision.keep:
            pruned.append(StagePruned(
                f"pruned by early stopping at step {step}: {config.metric} {decision.value:.4g} is not among the best "
                f"1/{config.reduction_factor} of the {decision.compared} stages at this rung (cutoff {decision.cutoff:.4g})",
                step, decision.value))
        return not decision.keep

    return (config.grace_steps, hook)



def intermediate_evaluator(
    s: dict[str, Any], inputs: dict[str, Path], tokenizer: Any, vocab: Any, grid: tuple[int, int], positions: Tensor,
    data: ImageDataset, device: torch.device, checkpoints: Path | None,
) -> IntermediateEvaluator:
    """The intermediate evaluations of a training generator (runners/evaluation/intermediate.py): a fixed
    class-balanced set sampled with the baseline's knobs (`intermediate_sampling`) and one seed derived from the
    training seed, scored against the reference features; rows kept in the checkpoint folder until the end."""
    from sweep.keys import derive_seed

    per_class = s["intermediate_samples_per_class"]
    labels = balanced_labels(data.num_classes, per_class, device)
    knobs = {**s["intermediate_sampling"], "sampling_seed": derive_seed("intermediate", s["seed"])}
    reference, classifier, extractor, record = scoring_space(
        inputs, device, num_samples=len(labels), samples_per_class=per_class, image_size=data.image_size,
        sampling_seed=knobs["sampling_seed"],
    )
    entry, blocks = GENERATORS[s["modeling"]], range(math.ceil(len(labels) / SAMPLE_BATCH))

    def sample(model: torch.nn.Module) -> Iterator[Tensor]:
        for _, images in iter_sample_blocks(blocks, labels, knobs, tokenizer, vocab, model, entry, s["scan_order"],
                                            grid, positions):
            yield images  # (<=SAMPLE_BATCH, C, H, W), blocks in order

    return IntermediateEvaluator(
        every=s["intermediate_every"], sample=sample, labels=labels, classifier=classifier, extractor=extractor,
        reference=reference, record=record,
        log=IntermediateLog(checkpoints / INTERMEDIATE_LOG if checkpoints is not None else None),
    )


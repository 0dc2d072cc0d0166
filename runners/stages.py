"""The stage functions: plain functions of (stage settings, input artifacts) that write one folder.

    classifier  dataset            -> classifier weights        (feature extractor of FID/KID, class accuracy)
    reference   (classifier)       -> held-out features + stats (once per dataset x feature extractor)
    tokenizer   dataset            -> tokenizer weights         (+ held-out reconstruction metrics)
    reconstruction tokenizer, reference -> rFID                 (once per tokenizer x feature extractor)
    generator   tokenizer          -> generator weights         (+ training losses, held-out loss; with
                (classifier, reference)                            intermediate_every: FID over training)
    evaluation  generator, tokenizer, classifier, reference -> samples (+ FID, KID, class accuracy)

Each function is `fn(stage, inputs, out, log) -> metrics`: `stage.settings` holds exactly what
determines it, `inputs` maps an input role to its finished artifact folder, everything is written
inside `out`, `log(step, values)` records training curves. No Ray here: the executors call these.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from runners.analysis.attention import attention_maps, locality
from runners.analysis.token_randomness import bigram_kl, text_corpus_ids, unigram_kl
from runners.checkpoint import Checkpointer
from runners.data import ImageDataset, load_dataset, stack
from sweep.faults import fault_point
from runners.evaluation.classifier import (
    CLASSIFIER_CODE_VERSION,
    accuracy,
    load_classifier,
    save_classifier,
    train_classifier,
)
from runners.evaluation.intermediate import (
    INTERMEDIATE_CODE_VERSION,
    INTERMEDIATE_LOG,
    IntermediateEvaluator,
    IntermediateLog,
)
from runners.evaluation.metrics import METRICS_CODE_VERSION, feature_extractor_name, image_metrics
from runners.evaluation.protocol import protocol, protocol_id
from runners.evaluation.reconstruction import RECONSTRUCTION_CODE_VERSION, reconstruction_fid
from runners.evaluation.reference import (
    REFERENCE_CODE_VERSION,
    feature_extractor_for,
    load_reference_features,
    save_reference_features,
    to_uint8_nhwc,
)
from runners.generators import GENERATOR_SIZES, GENERATORS, GeneratorConfig
from runners.sampling import CFG_SCHEDULES, SAMPLING_CODE_VERSION
from runners.scan import SCAN_ORDERS, from_scan, scan_positions, to_scan
from runners.encode import encode_dataset, token_batch
from runners.tokenizers import TOKENIZERS, vocabulary_for
from runners.tokenizers.backbone import BACKBONE_SIZES
from runners.train_generator import Hook, evaluate_loss, train_generator
from runners.tokenizers.losses import check_perceptual_weights
from runners.train_tokenizer import reconstruction_metrics, train_tokenizer

Log = Callable[[int, dict[str, float]], None]
StageFunction = Callable[..., dict[str, Any]]  # (stage, inputs, out, log, *, checkpoints) -> metrics

# Bumped when a stage function changes what it computes (part of every key of that kind).
STAGE_CODE_VERSIONS = {
    "classifier": "1", "reference": "1", "tokenizer": "2", "reconstruction": "1", "generator": "2",
    "evaluation": "3",  # 3: real features from the reference stage (float32, as stored), no extraction of its own
    "analysis": "1",
}
PR_K = 3  # k of precision / recall (ELM.md "Evaluation")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SAMPLE_BATCH = 100  # fixed micro-batch of the sampler: samples do not depend on the worker's batch size


# ---------------------------------------------------------------------------------------------------------------
# what the planner asks of the runners


def code_versions(kind: str, settings: Any) -> dict[str, str]:
    """Code versions of the registry entries a stage of `kind` runs."""
    versions = {"stage": f"{kind}-{STAGE_CODE_VERSIONS[kind]}"}
    if kind == "classifier":
        versions["classifier"] = CLASSIFIER_CODE_VERSION
    elif kind == "tokenizer":
        versions["tokenizer"] = TOKENIZERS[settings.tokenizer].code_version
    elif kind == "generator":
        versions["generator"] = GENERATORS[settings.modeling].code_version
        if settings.intermediate_every:  # only then: keys of generators without them stay as they were
            versions.update(sampling=SAMPLING_CODE_VERSION, metrics=METRICS_CODE_VERSION,
                            intermediate=INTERMEDIATE_CODE_VERSION)
    elif kind == "evaluation":
        versions.update(sampling=SAMPLING_CODE_VERSION, metrics=METRICS_CODE_VERSION)
    elif kind == "reference":
        versions["reference"] = REFERENCE_CODE_VERSION
    elif kind == "reconstruction":
        versions.update(reconstruction=RECONSTRUCTION_CODE_VERSION, metrics=METRICS_CODE_VERSION)
    return versions


def intermediate_sampling(settings: Any, baseline: Any) -> dict[str, Any]:
    """Sampling knobs of a generator's intermediate evaluations: the spec baseline's values of the knobs its
    modeling reads. One protocol for every generator of a sweep, whatever sampling its evaluations vary."""
    entry = GENERATORS.get(settings.modeling)
    return {name: getattr(baseline, name) for name in (entry.sample_knobs if entry else SAMPLING_AXES)}


# Sampling knobs any generator reads; an entry's own `sample_knobs` says which of them determine its samples.
SAMPLING_AXES = ("cfg_scale", "cfg_schedule", "top_k", "top_p", "temperature", "mlm_steps", "mlm_tau")


def ignored_axes(kind: str, settings: Any) -> set[str]:
    """Axes of a stage kind that the chosen registry entries do not read: left out of its key, so that
    e.g. MLM evaluations differing only in top_k are one stage."""
    if kind == "evaluation" and settings.modeling in GENERATORS:
        return set(SAMPLING_AXES) - set(GENERATORS[settings.modeling].sample_knobs)
    ignored: set[str] = set()
    if kind == "generator":
        if settings.modeling != "mlm":
            ignored.add("mask_schedule_steps")
        if settings.tokenizer == "vq":
            ignored.add("encode")  # codebook ids are deterministic: nothing to sample
        if not settings.intermediate_every:
            ignored |= {"intermediate_every", "intermediate_samples_per_class"}
    if kind == "tokenizer":
        ignored |= {"restart_dead_codes"} if settings.tokenizer == "bae" else {"bernoulli", "bit_usage_weight"}
    return ignored


def check_settings(settings: Any, dataset: Any) -> list[tuple[str, str]]:
    """Cross-axis rules that need the registries: (axis, message naming the value and the fix)."""
    problems = []
    for axis, value, registry in (
        ("tokenizer", settings.tokenizer, TOKENIZERS),
        ("tokenizer_size", settings.tokenizer_size, BACKBONE_SIZES),
        ("modeling", settings.modeling, GENERATORS),
        ("size", settings.size, GENERATOR_SIZES),
        ("scan_order", settings.scan_order, SCAN_ORDERS),
        ("cfg_schedule", settings.cfg_schedule, CFG_SCHEDULES),
    ):
        if value not in registry:
            problems.append((axis, f"{axis} must be one of {', '.join(registry)}, but got {value!r}"))
    if settings.tokenizer_size in BACKBONE_SIZES:
        down = BACKBONE_SIZES[settings.tokenizer_size].downsample
        if dataset.image_size % down:
            problems.append(("tokenizer_size", f"tokenizer_size {settings.tokenizer_size!r} downsamples by {down}, "
                             f"which must divide dataset.image_size ({dataset.image_size}); pick another size or image_size"))
    if settings.tokenizer == "vq" and settings.token_each != 1:
        problems.append(("token_each", f"a vq tokenizer gives one codebook id per position (K = 1), but got "
                         f"token_each={settings.token_each}; set token_each: 1 (vocab 1-{settings.code_dim})"))
    if settings.bits_each > 20:
        problems.append(("token_each", f"code_dim/token_each = {settings.bits_each} bits gives a 2^{settings.bits_each}-word "
                         f"head per sub-token; use at most 20 bits per sub-token (raise token_each)"))
    return problems


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


def describe(stage: Any, tflops: float = 400.0) -> dict[str, Any]:
    """Facts about a planned generator computed without allocating anything (instant for 2B): parameter
    count, and a cost estimate: training FLOPs ~ 6 x parameters x tokens seen, GPU-hours at `tflops`
    sustained TFLOP/s per GPU."""
    if stage.kind != "generator":
        return {}
    s = {**stage.columns}
    dataset = stage.settings["dataset"]
    grid = latent_grid(s, dataset["image_size"])
    config = generator_config(s, s["code_dim"], grid, dataset["num_classes"])
    params = GENERATORS[s["modeling"]].parameter_count(config)
    tokens = s["generator_steps"] * s["generator_batch"] * config.seq_len * config.token_each
    return {
        "parameter_count": params,
        "sequence_length": config.seq_len,
        "vocab": f"{config.token_each}-{config.bits_each}",
        "train_flops": 6.0 * params * tokens,
        "gpu_hours": 6.0 * params * tokens / (tflops * 1e12) / 3600.0,
    }


def checkpointer_of(stage: Any, folder: Path | None) -> Checkpointer:
    """The checkpoint cadence of the spec's runtime settings, in the stage's checkpoint folder."""
    runtime = stage.runtime
    return Checkpointer(
        folder, every_steps=int(runtime.get("checkpoint_every_steps", 0)),
        every_s=60.0 * float(runtime.get("checkpoint_every_minutes", 0.0)),
        on_save=lambda step: fault_point("checkpoint_saved"),
    )


def device_name(gpus: float) -> str:
    device = pick_device(gpus)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------------
# artifacts


def dataset_of(settings: dict[str, Any]) -> ImageDataset:
    d = settings["dataset"]
    data = load_dataset(d["name"], d["image_size"], d.get("root"), d["heldout_fraction"], d["split_seed"])
    if data.num_classes != d["num_classes"]:
        raise ValueError(f"dataset.num_classes is {d['num_classes']} but the data holds {data.num_classes} classes; "
                         f"set dataset.num_classes: {data.num_classes}")
    return data


def save_model(model: torch.nn.Module, folder: Path, config: dict[str, Any]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_tokenizer(folder: Path, device: torch.device) -> torch.nn.Module:
    config = json.loads((folder / CONFIG_FILE).read_text())
    model = TOKENIZERS[config["tokenizer"]].build(**config["kwargs"])
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.to(device).eval()


def load_generator(folder: Path, device: torch.device) -> tuple[torch.nn.Module, GeneratorConfig, dict[str, Any]]:
    saved = json.loads((folder / CONFIG_FILE).read_text())
    config = GeneratorConfig(**saved["config"])
    model = GENERATORS[saved["modeling"]].build(config)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.to(device).eval(), config, saved


# ---------------------------------------------------------------------------------------------------------------
# the stages


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


def tokenizer_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    s = stage.settings
    device = pick_device(stage.resources.gpus)
    data = dataset_of(s)
    kwargs: dict[str, Any] = {"size": s["tokenizer_size"], "channels": data.channels, "image_size": data.image_size}
    if s["tokenizer"] == "vq":  # a codebook of 2^code_dim entries: ids of code_dim bits, as the vocab column says
        kwargs.update(codebook_size=2 ** s["code_dim"], restart_dead_codes=s["restart_dead_codes"])
    else:
        kwargs.update(code_dim=s["code_dim"], bernoulli=s["bernoulli"])
    perceptual_weights = stage.runtime.get("perceptual_weights")  # absolute path (not hashed); the key holds its sha256
    if s.get("perceptual_weight", 0.0) > 0:
        check_perceptual_weights(perceptual_weights, s["perceptual_weights_sha256"])
    checkpointer = checkpointer_of(stage, checkpoints)
    resumed = checkpointer.restore()
    torch.manual_seed(s["tokenizer_seed"])
    model = TOKENIZERS[s["tokenizer"]].build(**kwargs).to(device)
    model = train_tokenizer(
        model, data.train, steps=s["tokenizer_steps"], lr=s["tokenizer_lr"], batch_size=s["tokenizer_batch"],
        seed=s["tokenizer_seed"], bit_usage_weight=s.get("bit_usage_weight", 0.0), on_log=log,
        gan_weight=s["gan_weight"], gan_start=s["gan_start"], perceptual_weight=s.get("perceptual_weight", 0.0),
        perceptual_weights=perceptual_weights, checkpointer=checkpointer,
    )
    save_model(model, out, {"tokenizer": s["tokenizer"], "kwargs": kwargs})
    heldout_images, _ = stack(data.heldout)
    vocab = vocabulary_for(model, 1) if s["tokenizer"] == "bae" else None  # ids of one whole latent position
    metrics = reconstruction_metrics(model, heldout_images.to(device), vocab=vocab)
    return {**{name: float(value) for name, value in metrics.items()},
            "resumed_from_step": -1 if resumed is None else int(resumed["step"])}


def generator_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    s = stage.settings
    workers = stage.resources.num_workers  # > 1: DDP on Ray Train workers that hold the GPUs; this process coordinates
    device = pick_device(stage.resources.gpus if workers == 1 else 0)
    data = dataset_of(s)
    tokenizer = load_tokenizer(inputs["tokenizer"], device)
    vocab = vocabulary_for(tokenizer, s["token_each"])  # None for codebook tokenizers (one id per position)
    grid = tuple(tokenizer.grid)
    positions = scan_positions(s["scan_order"], *grid, device=device)  # (N, 2) grid coordinates in scan order

    def token_batches(on: torch.device) -> Callable[[int, torch.Generator], tuple[Tensor, Tensor]]:
        """batch_fn giving batches on `on`, where the frozen tokenizer encodes the training set once (here, or in
        each data-parallel worker on its own GPU). The cache (BAE: bit logits, VQ: ids) stays on the CPU: every
        step draws fresh Bernoulli bits from it with the loop's CPU generator (ELM's stochastic augmentation; the
        same bits on any device), or thresholds them."""
        frozen = load_tokenizer(inputs["tokenizer"], on)
        encoded = {name: t.cpu() for name, t in encode_dataset(frozen, data.train).items()}

        def batch_fn(step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            index = torch.randint(len(encoded["labels"]), (s["generator_batch"],), generator=generator)
            ids = token_batch(encoded, index, mode=s.get("encode", "threshold"), vocab=vocab, generator=generator)  # (B, N, K) raster
            return to_scan(ids, s["scan_order"], *grid).to(on), encoded["labels"][index].to(on)

        return batch_fn

    def heldout_tokens(on: torch.device) -> tuple[Tensor, Tensor]:
        """Held-out ids (M, N, K) in scan order (thresholded bits) and labels (M,), encoded on `on`."""
        frozen = load_tokenizer(inputs["tokenizer"], on)
        images, labels = stack(data.heldout)
        with torch.no_grad():
            ids = to_scan(frozen.encode_ids(images.to(on), mode="threshold", vocab=vocab), s["scan_order"], *grid)
        return ids, labels.to(on)

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
        warmup_steps=s["generator_warmup"], precision=s["train_precision"],
        compile=bool(stage.runtime.get("compile", False)), positions=positions, checkpointer=checkpointer,
    )
    heldout_loss = None
    if workers == 1:
        result = train_generator(model, batch_fn, on_log=log, hooks=hooks, **recipe)
    else:  # same batches in every worker, losses logged after training, same checkpoint folder, rank 0's held-out loss
        assert not hooks, "training-time hooks need workers: 1"
        from runners.distributed import train_generator_data_parallel

        result, heldout_loss = train_generator_data_parallel(
            model, lambda: GENERATORS[s["modeling"]].build(config), token_batches, heldout=heldout_tokens,
            num_workers=workers, on_log=log, use_gpu=stage.resources.gpus > 0,
            cpus_per_worker=stage.resources.cpus_per_worker,
            storage_path=checkpoints / "ray-train" if checkpoints is not None else None, **recipe,
        )
    if pruned:
        raise pruned[0]
    save_model(result.model, out, {"modeling": s["modeling"], "config": config.__dict__, "scan_order": s["scan_order"]})
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
        "resumed_from_step": -1 if resumed is None else int(resumed["step"]),
        "workers": workers,
    }


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


def balanced_labels(num_classes: int, per_class: int, device: torch.device) -> Tensor:
    """Global sample index -> class: class-major, `per_class` images of each class."""
    return torch.arange(num_classes, device=device).repeat_interleave(per_class)


@torch.no_grad()
def sample_blocks(
    blocks: Any, labels: Tensor, settings: dict[str, Any], tokenizer: Any, vocab: Any, generator: Any, entry: Any,
    order: str, grid: tuple[int, int], positions: Tensor,
) -> dict[int, Tensor]:
    """Images of the given blocks of global sample indices, {block: (<=SAMPLE_BATCH, C, H, W)}.

    Block b holds global indices [b*SAMPLE_BATCH, (b+1)*SAMPLE_BATCH) and draws only from its own
    generator seeded from (sampling seed, b): any split of the blocks over workers, in any order, gives
    the same images (tested with 1 and 4 workers).
    """
    device = labels.device
    out = {}
    for block in blocks:
        fault_point("evaluation")
        rng = torch.Generator(device=device).manual_seed(settings["sampling_seed"] * 1_000_003 + block)
        chunk = labels[block * SAMPLE_BATCH : (block + 1) * SAMPLE_BATCH]
        ids = entry.sample(generator, chunk, settings, rng, positions)  # (B, N, K) in scan order
        out[block] = tokenizer.decode_ids(from_scan(ids, order, *grid), vocab)  # back to raster, then decode
    return out


def scoring_space(
    inputs: dict[str, Path], device: torch.device, *, num_samples: int, samples_per_class: int, image_size: int,
    sampling_seed: int,
) -> tuple[Any, torch.nn.Module | None, Any, dict[str, Any]]:
    """What every score against the reference needs: (reference features, the dataset classifier if an input,
    the extractor that made the features, the protocol record of the score with its `protocol_id`).

    The extractor is checked against the weights the reference recorded: numbers are never computed in
    one feature space against statistics of another."""
    reference = load_reference_features(inputs["reference"])
    classifier = load_classifier(inputs["classifier"]).to(device) if "classifier" in inputs else None
    extractor = feature_extractor_for(reference.extractor, classifier, device)
    record = protocol(
        extractor=extractor, num_samples=num_samples, samples_per_class=samples_per_class, image_size=image_size,
        reference=reference.name, reference_checksum=reference.checksum, k=PR_K, sampling_seed=sampling_seed,
    )
    reference.check_extractor(str(record["protocol_extractor_sha256"]))
    return reference, classifier, extractor, {**record, "protocol_id": protocol_id(record)}


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

    def sample(model: torch.nn.Module) -> Tensor:
        images = sample_blocks(blocks, labels, knobs, tokenizer, vocab, model, entry, s["scan_order"], grid, positions)
        return torch.cat([images[block] for block in blocks])  # (M, C, H, W)

    return IntermediateEvaluator(
        every=s["intermediate_every"], sample=sample, labels=labels, classifier=classifier, extractor=extractor,
        reference=reference, record=record,
        log=IntermediateLog(checkpoints / INTERMEDIATE_LOG if checkpoints is not None else None),
    )


@torch.no_grad()
def reference_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    """Features and FID statistics of the held-out images in one feature space, for every stage that scores."""
    s = stage.settings
    device = pick_device(stage.resources.gpus)
    data = dataset_of(s)
    classifier = load_classifier(inputs["classifier"]).to(device) if "classifier" in inputs else None
    extractor = feature_extractor_for(s["feature_extractor"], classifier, device)
    images, _ = stack(data.heldout)
    return save_reference_features(out, extractor, images.to(device), name=f"{s['dataset']['name']}/heldout",
                                   extractor_kind=s["feature_extractor"])


@torch.no_grad()
def reconstruction_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    """Reconstruction FID of a tokenizer on the held-out images, in the reference's feature space."""
    s = stage.settings
    device = pick_device(stage.resources.gpus)
    data = dataset_of(s)
    tokenizer = load_tokenizer(inputs["tokenizer"], device)
    images, _ = stack(data.heldout)
    reference, _, extractor, record = scoring_space(
        inputs, device, num_samples=len(images), samples_per_class=0, image_size=data.image_size, sampling_seed=0
    )
    metrics = reconstruction_fid(tokenizer, images.to(device), extractor, reference)
    return {**metrics, **record}


@torch.no_grad()
def evaluation_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    s = stage.settings
    device = pick_device(stage.resources.gpus)
    data = dataset_of(s)
    tokenizer = load_tokenizer(inputs["tokenizer"], device)
    generator, config, saved = load_generator(inputs["generator"], device)
    vocab = vocabulary_for(tokenizer, config.token_each)
    entry = GENERATORS[saved["modeling"]]
    order, grid = saved["scan_order"], (config.grid_height, config.grid_width)
    positions = scan_positions(order, *grid, device=device)

    # Class-balanced labels; fixed micro-batches, each drawing from its own generator seeded from
    # (sampling seed, batch index): the images do not depend on how the work is split.
    labels = balanced_labels(data.num_classes, s["samples_per_class"], device)
    blocks = range(math.ceil(len(labels) / SAMPLE_BATCH))
    sampled = sample_blocks(blocks, labels, s, tokenizer, vocab, generator, entry, order, grid, positions)
    fake = torch.cat([sampled[block] for block in blocks]).clamp(0, 1)
    # The held-out set's features and statistics come from the reference stage (computed once per extractor).
    reference, classifier, extractor, record = scoring_space(
        inputs, device, num_samples=len(labels), samples_per_class=s["samples_per_class"],
        image_size=data.image_size, sampling_seed=s["sampling_seed"],
    )
    metrics = image_metrics(classifier, None, fake, labels, real_features=reference.features,
                            real_statistics=reference.statistics, extractor=extractor, k=PR_K)
    # Samples as scored (uint8 by truncation, as torch-fidelity does), NHWC: the ADM evaluator reads arr_0;
    # labels let reports draw per-class grids.
    np.savez(out / "samples.npz", arr_0=to_uint8_nhwc(fake), labels=labels.cpu().numpy())
    return {**metrics, **record, "feature_extractor_name": feature_extractor_name(extractor), "num_samples": len(labels)}


@torch.no_grad()
def analysis_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    """ELM's analyses beyond FID; returns `rows`: one row per (subject, n-gram order) or per layer."""
    s = stage.settings
    device = pick_device(stage.resources.gpus)
    if s["analysis"] == "token_randomness_text":
        ids = text_corpus_ids(s["text_bpe_vocab"], s["text_corpus"])
        subject = f"text (BPE {s['text_bpe_vocab']})"
        return {"rows": [
            {"analysis": "token_randomness", "subject": subject, "order": order, **measure(ids, s["text_bpe_vocab"])}
            for order, measure in (("unigram", unigram_kl), ("bigram", bigram_kl))
        ]}

    data = dataset_of(s)
    tokenizer = load_tokenizer(inputs["tokenizer"], device)
    images, labels = stack(data.heldout, limit=s["images"])
    grid = tuple(tokenizer.grid)
    if s["analysis"] == "token_randomness":
        vocab = vocabulary_for(tokenizer, s["token_each"])
        _, vocab_size = tokenizer.token_shape(vocab)
        ids = to_scan(tokenizer.encode_ids(images.to(device), mode="threshold", vocab=vocab), s["scan_order"], *grid)
        sequences = ids.flatten(1).cpu()  # (B, N*K): sub-tokens in scan order, consecutive pairs are bigrams
        name = stage.columns["tokenizer"]
        subject = f"{name} {stage.columns['vocab']}" if name == "bae" else f"{name} {vocab_size}"
        return {"rows": [
            {"analysis": "token_randomness", "subject": subject, "order": order, **measure(sequences, vocab_size)}
            for order, measure in (("unigram", unigram_kl), ("bigram", bigram_kl))
        ]}

    # attention locality of a trained generator on real held-out tokens
    generator, config, saved = load_generator(inputs["generator"], device)
    vocab = vocabulary_for(tokenizer, config.token_each)
    positions = scan_positions(saved["scan_order"], *grid, device=device)
    ids = to_scan(tokenizer.encode_ids(images.to(device), mode="threshold", vocab=vocab), saved["scan_order"], *grid)
    maps = attention_maps(generator, ids, labels.to(device), positions=positions)  # (layers, B, H, T, T)
    causal = saved["modeling"] == "ar"
    slots = positions[: maps.shape[-1] - 1] if causal else positions.repeat_interleave(maps.shape[-1] // len(positions), 0)
    per_layer = locality(maps, slots[: maps.shape[-1] - 1], k=s["locality_k"], causal=causal)
    return {"rows": [{"analysis": "attention_locality", **layer} for layer in per_layer]}


STAGE_FUNCTIONS: dict[str, StageFunction] = {
    "classifier": classifier_stage,
    "reference": reference_stage,
    "tokenizer": tokenizer_stage,
    "reconstruction": reconstruction_stage,
    "generator": generator_stage,
    "evaluation": evaluation_stage,
    "analysis": analysis_stage,
}

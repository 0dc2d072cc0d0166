"""What the planner asks of the stage layer: code versions in keys, axes a stage does not read, cross-axis
rules that need the registries, and cost estimates of planned generators."""

from __future__ import annotations

from typing import Any

from runners.evaluation.classifier import CLASSIFIER_CODE_VERSION
from runners.evaluation.intermediate import INTERMEDIATE_CODE_VERSION
from runners.evaluation.metrics import METRICS_CODE_VERSION
from runners.evaluation.reconstruction import RECONSTRUCTION_CODE_VERSION
from runners.evaluation.reference import REFERENCE_CODE_VERSION
from runners.generators import GENERATOR_SIZES, GENERATORS, tokens_per_sample
from runners.sampling import CFG_SCHEDULES, SAMPLING_CODE_VERSION
from runners.scan import SCAN_ORDERS
from runners.tokenizers import TOKENIZERS
from runners.tokenizers.backbone import BACKBONE_SIZES
from sweep.stages.common import generator_config, latent_grid

IMPORT_CODE_VERSION = "import-1"
"""Bumped when importing a checkpoint (sweep/stages/importing.py) changes what it writes (keys of imported stages)."""

RELEASED_GENERATORS: dict[tuple[str, str, str], str] = {
    **{("ar", size, vocab): f"gpt/{size}-{vocab}.pth" for size in ("L", "XL") for vocab in ("1-16", "2-8", "2-10", "2-12")},
    **{("ar", "XXL", vocab): f"gpt/XXL-{vocab}.pth" for vocab in ("1-16", "2-10", "2-12")},
    ("ar", "2B", "2-12"): "gpt/2B-2-12.pth",
    **{("mlm", size, "1-16"): f"gpt/mlm{size}-1-16.pth" for size in ("L", "XL", "XXL")},
}
"""(modeling, size, vocab) -> the authors' released generator file (Hugging Face xuantonglll/ELM), 15 in all."""

RELEASED_TOKENIZERS: dict[tuple[int, bool], str] = {
    (16, True): "bae/bae_16/binaryae_ema.th", (16, False): "bae/bae_16_deter/binaryae_ema.th",
    (20, True): "bae/bae_20/binaryae_ema.th", (24, True): "bae/bae_24/binaryae_ema.th",
}
"""(code_dim, bernoulli) -> the authors' released BAE file. A generator of vocab K-c reads the BAE of K*c bits
(their sampling scripts pick bae_<K*c>; the deterministic 16-bit one only with their --deter-ae flag)."""

# Bumped when a stage function changes what it computes (part of every key of that kind).
STAGE_CODE_VERSIONS = {
    "classifier": "1", "reference": "1", "tokenizer": "2", "reconstruction": "1", "generator": "2",
    "evaluation": "3",  # 3: real features from the reference stage (float32, as stored), no extraction of its own
    "analysis": "1",
}


def code_versions(kind: str, settings: Any) -> dict[str, str]:
    """Code versions of the registry entries a stage of `kind` runs."""
    versions = {"stage": f"{kind}-{STAGE_CODE_VERSIONS[kind]}"}
    if kind == "tokenizer" and settings.tokenizer_checkpoint:  # imported: the architecture's version, no training code
        return {**versions, "tokenizer": TOKENIZERS[settings.tokenizer].code_version, "import": IMPORT_CODE_VERSION}
    if kind == "generator" and settings.generator_checkpoint:
        return {**versions, "generator": GENERATORS[settings.modeling].code_version, "import": IMPORT_CODE_VERSION}
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
        ignored = set(SAMPLING_AXES) - set(GENERATORS[settings.modeling].sample_knobs)
        if settings.sampling_precision == "fp32":
            ignored.add("sampling_precision")  # the default: keys of evaluations made before the axis existed stay
        return ignored
    from space.schema import AXES_OF_STAGE

    ignored: set[str] = set()
    if kind == "generator" and settings.generator_checkpoint:  # imported: the file's sha256 is the key, not the axes
        return set(AXES_OF_STAGE["generator"])
    if kind == "tokenizer" and settings.tokenizer_checkpoint:
        return set(AXES_OF_STAGE["tokenizer"])
    if kind == "reference" and settings.reference == "heldout":
        ignored.add("reference")  # the default: keys of references made before the axis existed stay as they were
    if kind == "generator":
        ignored.add("generator_checkpoint")  # "" here: a trained generator
        if not settings.generator_ema:
            ignored.add("generator_ema")  # off: keys of generators made before the axis existed stay as they were
        if settings.modeling != "mlm":
            ignored.add("mask_schedule_steps")
        if settings.tokenizer == "vq":
            ignored.add("encode")  # codebook ids are deterministic: nothing to sample
        if not settings.intermediate_every:
            ignored |= {"intermediate_every", "intermediate_samples_per_class"}
    if kind == "tokenizer":
        ignored.add("tokenizer_checkpoint")  # "" here: a trained tokenizer
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


def describe(stage: Any, tflops: float = 400.0) -> dict[str, Any]:
    """Facts about a planned generator computed without allocating anything (instant for 2B): parameter
    count, and a cost estimate: training FLOPs ~ 6 x parameters x tokens seen (positions, not sub-tokens),
    GPU-hours at `tflops` sustained TFLOP/s per GPU (0 for an imported generator); `released` names the
    authors' released file of the same configuration, when there is one."""
    if stage.kind != "generator":
        return {}
    s = {**stage.columns}
    dataset = stage.settings["dataset"]
    grid = latent_grid(s, dataset["image_size"])
    config = generator_config(s, s["code_dim"], grid, dataset["num_classes"])
    params = GENERATORS[s["modeling"]].parameter_count(config)
    imported = bool(s.get("generator_checkpoint"))
    # positions, not sub-tokens: an AR sample runs N slots whatever K; an MLM one K (N + 1) (runners.generators)
    tokens = 0 if imported else s["generator_steps"] * s["generator_batch"] * tokens_per_sample(s["modeling"], config)
    facts = {
        "parameter_count": params,
        "sequence_length": config.seq_len,
        "vocab": f"{config.token_each}-{config.bits_each}",
        "train_flops": 6.0 * params * tokens,
        "gpu_hours": 6.0 * params * tokens / (tflops * 1e12) / 3600.0,
        "imported": imported,
    }
    released = RELEASED_GENERATORS.get((s["modeling"], s["size"], facts["vocab"]))
    authors = s["tokenizer"] == "bae" and s["bernoulli"] and s["scan_order"] == "raster" and grid == (16, 16)
    return {**facts, "released": released} if released and authors else facts

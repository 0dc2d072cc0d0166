"""What the planner asks of the stage layer: code versions in keys, axes a stage does not read, cross-axis
rules that need the registries, and cost estimates of planned generators."""

from __future__ import annotations

from typing import Any

from runners.evaluation.classifier import CLASSIFIER_CODE_VERSION
from runners.evaluation.intermediate import INTERMEDIATE_CODE_VERSION
from runners.evaluation.metrics import METRICS_CODE_VERSION
from runners.evaluation.reconstruction import RECONSTRUCTION_CODE_VERSION
from runners.evaluation.reference import REFERENCE_CODE_VERSION
from runners.generators import GENERATOR_SIZES, GENERATORS
from runners.sampling import CFG_SCHEDULES, SAMPLING_CODE_VERSION
from runners.scan import SCAN_ORDERS
from runners.tokenizers import TOKENIZERS
from runners.tokenizers.backbone import BACKBONE_SIZES
from sweep.stages.common import generator_config, latent_grid

# Bumped when a stage function changes what it computes (part of every key of that kind).
STAGE_CODE_VERSIONS = {
    "classifier": "1", "reference": "1", "tokenizer": "2", "reconstruction": "1", "generator": "2",
    "evaluation": "3",  # 3: real features from the reference stage (float32, as stored), no extraction of its own
    "analysis": "1",
}


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


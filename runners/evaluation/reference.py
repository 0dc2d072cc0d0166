"""Reference sets from files, and sample batches in the ADM evaluator's format.

The paper's numbers (ELM.md "Evaluation") come from the TensorFlow ADM evaluator run on a sample
batch `.npz` whose `arr_0` holds uint8 images `(N, H, W, 3)`, against the reference batch
`VIRTUAL_imagenet256_labeled.npz` (which holds images as `arr_0` and TF-Inception statistics as
`mu` / `sigma`). `export_adm_npz` writes our samples in that format, so the official evaluator can
score them; `load_reference` reads such a file (or our own) as a reference set:

    key(s) in the .npz         gives                          enough for
    arr_0  (N, H, W, C) uint8  images (C = 1 or 3)            every metric (features via any extractor)
    mu (F,), sigma (F, F)      FID statistics                 FID only
    features (N, F)            features of one extractor      FID, KID, precision / recall

Statistics and features are only comparable with numbers from the same extractor; record which one
produced them (the protocol record, runners/evaluation/protocol.py).

The sweep's `reference` stage computes a dataset's reference once per feature extractor and every
evaluation, reconstruction FID and intermediate evaluation reads it (`save_reference_features` /
`load_reference_features`):

    features.npy     (N, F) float32   features of the held-out images (KID, precision / recall)
    stats.npz        mu (F,), sigma (F, F) float64, of exactly those float32 features (FID)
    reference.json   what it is: name, checksum (array_sha256 of the features), N, extractor and its sha256

The images stream through in batches (`accumulate_features` takes any iterable of uint8 or float image
batches): each batch's features are appended to features.npy on disk and added to float64 running sums
(shifted by the first batch's mean, for accuracy), from which mu and sigma (N - 1 denominator) come; no
stage holds the images or the features of a whole split. KID and precision / recall read every reference
feature through a memory map of features.npy (`reference_features: all, memory-mapped` in reference.json; no
subsample), so protocol_reference_sha256, the checksum of all N features, names exactly what they compared to.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from runners.data import image_batches, npy_header
from runners.evaluation.classifier import DatasetClassifier
from runners.evaluation.metrics import FeatureExtractor, extract_features, feature_extractor_name, to_uint8
from runners.evaluation.protocol import extractor_sha256
from space.schema import file_sha256

# Bumped when the reference artifact changes for the same images and extractor (part of its key).
REFERENCE_CODE_VERSION = "reference-1"  # streaming accumulation: same numbers up to float64 rounding
FEATURES_FILE = "features.npy"
STATISTICS_FILE = "stats.npz"
REFERENCE_FILE = "reference.json"
FEATURES_KEPT = "all, memory-mapped"
"""What KID and precision / recall compare with: every reference feature, read through a memory map."""
FEATURE_EXTRACTORS: tuple[str, ...] = ("classifier", "inception")
"""Values of the `feature_extractor` axis (space/schema.py)."""


@dataclass(frozen=True)
class Reference:
    """A reference set read by `load_reference`: whichever of images / statistics / features the file holds."""

    path: str
    """the file it came from"""
    sha256: str
    """hex sha256 of the file's bytes (the protocol's reference checksum)"""
    images: np.ndarray | None
    """(N, H, W, C) uint8, or None"""
    mu: np.ndarray | None
    """(F,) float64 FID mean, or None"""
    sigma: np.ndarray | None
    """(F, F) float64 FID covariance, or None"""
    features: np.ndarray | None
    """(N, F) float64 features, or None"""

    @property
    def statistics(self) -> dict[str, np.ndarray] | None:
        """{"mu", "sigma"} as `metrics.fid_from_statistics` takes them, or None."""
        return None if self.mu is None else {"mu": self.mu, "sigma": self.sigma}

    def image_tensor(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Images start:stop as float32 `(n, C, H, W)` in [0, 1] (the runners' convention)."""
        if self.images is None:
            raise ValueError(
                f"{self.path!r} holds no images (arr_0), only {'statistics' if self.mu is not None else 'features'}; "
                f"KID and precision / recall need reference images or features"
            )
        batch = torch.from_numpy(np.ascontiguousarray(self.images[start:stop]))  # (n, H, W, C) uint8
        return batch.permute(0, 3, 1, 2).float().div_(255.0)  # (n, C, H, W)


def load_reference(path: str | Path) -> Reference:
    """Read a reference `.npz`: images `arr_0` (N, H, W, C) uint8, and/or `mu` + `sigma`, and/or `features`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"reference file {str(path)!r} does not exist; pass an .npz with arr_0 images (e.g. the ADM "
            f"reference batch VIRTUAL_imagenet256_labeled.npz) or mu/sigma statistics"
        )
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        images = archive["arr_0"] if "arr_0" in keys else None
        mu = np.asarray(archive["mu"], dtype=np.float64) if "mu" in keys else None
        sigma = np.asarray(archive["sigma"], dtype=np.float64) if "sigma" in keys else None
        features = np.asarray(archive["features"], dtype=np.float64) if "features" in keys else None
    if images is None and mu is None and features is None:
        raise ValueError(
            f"a reference .npz must hold arr_0 (images), mu + sigma (FID statistics) or features, but "
            f"{str(path)!r} holds {sorted(keys)}"
        )
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3)):
        raise ValueError(
            f"arr_0 must be uint8 images (N, H, W, C) with C = 1 or 3 (the ADM format), but got "
            f"{images.dtype} {images.shape}; convert with to_uint8_nhwc"
        )
    if (mu is None) != (sigma is None):
        raise ValueError(f"FID statistics need both mu and sigma, but {str(path)!r} holds only one of them")
    if mu is not None and (mu.ndim != 1 or sigma.shape != (len(mu), len(mu))):
        raise ValueError(f"mu must be (F,) and sigma (F, F), but got {mu.shape} and {sigma.shape}")
    if features is not None and features.ndim != 2:
        raise ValueError(f"features must be (N, F), but got shape {features.shape}")
    return Reference(path=str(path), sha256=file_sha256(path), images=images, mu=mu, sigma=sigma, features=features)


def to_uint8_nhwc(images: Tensor) -> np.ndarray:
    """Images float `(N, C, H, W)` in [0, 1] (or uint8) -> uint8 `(N, H, W, 3)` numpy, grayscale repeated to RGB.

    The same truncating conversion as the feature extractors (`metrics.to_uint8`).
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3, but got shape {tuple(images.shape)}")
    rgb = to_uint8(images.detach().cpu())
    rgb = rgb.expand(-1, 3, -1, -1) if rgb.shape[1] == 1 else rgb  # (N, 3, H, W)
    return np.ascontiguousarray(rgb.permute(0, 2, 3, 1).numpy())  # (N, H, W, 3)


def export_adm_npz(images: np.ndarray | Tensor, path: str | Path) -> Path:
    """Write uint8 images `(N, H, W, 3)` as `arr_0` of an uncompressed .npz, the ADM evaluator's sample batch.

    The official evaluator (guided-diffusion/evaluations/evaluator.py) reads `arr_0` from such a file.
    `path` must end in `.npz` (numpy would append it silently otherwise). Returns the path written.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"path must end in .npz, but got {str(path)!r}; try {str(path.with_suffix('.npz'))!r}")
    array = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(
            f"images must be uint8 (N, H, W, 3) (channels last, RGB), but got {array.dtype} {array.shape}; "
            f"convert float (N, C, H, W) images with to_uint8_nhwc"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, arr_0=array)
    return path


# ---------------------------------------------------------------------------------------------------------------
# the reference stage's artifact


def feature_extractor_for(
    kind: str, classifier: DatasetClassifier | None, device: torch.device, inception_weights: str | Path | None = None
) -> FeatureExtractor:
    """The feature space named by the `feature_extractor` axis: the dataset classifier, or the FID Inception-v3
    (from `inception_weights`: a TorchScript pool3 file or torch-fidelity's state dict; None: fid-helper's file)."""
    if kind == "classifier":
        if classifier is None:
            raise ValueError("feature_extractor 'classifier' needs the trained dataset classifier, but got None; "
                             "pass the classifier stage's model")
        return classifier
    if kind == "inception":
        from runners.evaluation.inception import InceptionFeatures  # torch-fidelity, torchvision: imported when used

        return InceptionFeatures(inception_weights).to(device)
    raise ValueError(f"feature_extractor must be one of {', '.join(FEATURE_EXTRACTORS)}, but got {kind!r}")


@dataclass(frozen=True)
class ReferenceFeatures:
    """A reference stage's artifact, read back by `load_reference_features`."""

    name: str
    """what the reference set is, e.g. "digits/heldout" (the protocol's reference)"""
    features_path: str
    """features.npy: (N, F) float32, read through a memory map"""
    statistics: dict[str, np.ndarray]
    """{"mu": (F,), "sigma": (F, F)} float64 FID statistics of the stored features"""
    checksum: str
    """array_sha256 of the features: the protocol's reference checksum"""
    extractor: str
    """the `feature_extractor` axis value (classifier | inception)"""
    extractor_name: str
    """feature space name (metrics.feature_extractor_name)"""
    extractor_sha256: str
    """checksum of the extractor's weights the features came from"""
    count: int
    """N, the number of reference images"""
    extractor_weights: str | None = None
    """the Inception weights file the features came from (assets.inception_weights, or fid-helper's default_1.pt),
    so stages that score against them load the same file; None for the classifier (and older artifacts)"""
    source_sha256: str | None = None
    """sha256 of the file the reference images came from (the ADM batch), None for a dataset's held-out images"""

    @property
    def protocol_checksum(self) -> str:
        """The protocol's reference checksum: the source file's sha256 when there is one, else the features'."""
        return self.source_sha256 or self.checksum

    @functools.cached_property
    def features(self) -> Tensor:
        """(N, F) float64 on CPU, exactly the stored float32 values (read on first use: KID, precision / recall)."""
        return read_features(self.features_path)

    def check_extractor(self, sha256: str) -> None:
        """Refuse to compare with features from other weights than the reference's."""
        if sha256 != self.extractor_sha256:
            raise ValueError(
                f"the reference {self.name!r} holds features of extractor weights {self.extractor_sha256[:12]}, but "
                f"this stage's extractor has weights {sha256[:12]}; plan both from the same classifier / Inception file"
            )


def as_float_images(batch: Tensor | np.ndarray) -> Tensor:
    """An image batch as float32 `(b, C, H, W)` in [0, 1]: float batches as they are; uint8 batches divided by
    255, channels-last `(b, H, W, C)` uint8 (the ADM .npz layout) moved to channels-first."""
    batch = torch.from_numpy(np.asarray(batch)) if not isinstance(batch, Tensor) else batch
    if batch.ndim != 4:
        raise ValueError(f"image batches must be (b, C, H, W) (or uint8 (b, H, W, C)), but got {tuple(batch.shape)}")
    if batch.dtype == torch.uint8:
        if batch.shape[-1] in (1, 3) and batch.shape[1] not in (1, 3):
            batch = batch.permute(0, 3, 1, 2)  # (b, C, H, W)
        return batch.float().div_(255.0)
    return batch.float()


class FeatureSums:
    """FID statistics of feature rows added batch by batch: float64 sums of x - s and (x - s)(x - s)^T with s the
    first batch's mean (a shift that keeps the one-pass covariance as accurate as the two-pass one)."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: Tensor | None = None  # (F,)
        self.first: Tensor | None = None  # (F,) sum of x - s
        self.second: Tensor | None = None  # (F, F) sum of (x - s)(x - s)^T

    def add(self, features: Tensor) -> None:
        rows = features.detach().to("cpu", torch.float64)  # (b, F)
        if rows.ndim != 2 or len(rows) == 0:
            raise ValueError(f"features must be (b, F) with b >= 1, but got {tuple(rows.shape)}")
        if not torch.isfinite(rows).all():
            raise ValueError("features must be finite, but got NaN or inf; check the images and the extractor")
        if self.shift is None:
            self.shift = rows.mean(dim=0)
            self.first = torch.zeros_like(self.shift)
            self.second = torch.zeros(len(self.shift), len(self.shift), dtype=torch.float64)
        centred = rows - self.shift
        self.first += centred.sum(dim=0)
        self.second += centred.T @ centred
        self.count += len(rows)

    def statistics(self) -> dict[str, np.ndarray]:
        """{"mu": (F,), "sigma": (F, F)} float64, sigma with the N - 1 denominator (as numpy's cov)."""
        if self.count < 2 or self.shift is None:
            raise ValueError(f"FID statistics need N >= 2 feature rows for a covariance, but got N={self.count}")
        mean_offset = self.first / self.count  # (F,)
        sigma = (self.second - self.count * torch.outer(mean_offset, mean_offset)) / (self.count - 1)
        return {"mu": (self.shift + mean_offset).numpy(), "sigma": sigma.numpy()}


class FeatureFile:
    """Feature rows appended batch by batch to a (N, F) float32 .npy, with their FID statistics in `FeatureSums`.

    The rows go to `<path>.rows` as they come (raw little-endian float32); `close()` writes the .npy (its header,
    then those bytes copied in blocks: file I/O, not a memory map, so the copy does not become resident memory)
    and removes the raw file. With `path=None` only the statistics are kept. The statistics are those of the
    float32 rows as stored, so FID from them equals FID from the .npy.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        self.raw_path = None if path is None else Path(f"{path}.rows")
        self.raw = open(self.raw_path, "wb") if self.raw_path is not None else None  # noqa: SIM115 - closed in close()
        self.sums = FeatureSums()
        self.width = 0

    def add(self, features: Tensor) -> Tensor:
        """Append features (b, F) (stored as float32); returns them as stored, float32 on CPU."""
        rows = features.detach().to("cpu", torch.float32)  # (b, F): as stored
        self.sums.add(rows)
        self.width = rows.shape[1]
        if self.raw is not None:
            self.raw.write(rows.numpy().astype("<f4", copy=False).tobytes())
        return rows

    def close(self) -> tuple[dict[str, np.ndarray], int, int]:
        """Write the .npy (if a path was given): (FID statistics {"mu", "sigma"}, N, F)."""
        self.discard()
        statistics = self.sums.statistics()
        if self.path is not None and self.raw_path is not None:
            with open(self.path, "wb") as stored, open(self.raw_path, "rb") as rows_on_disk:
                np.lib.format.write_array_header_1_0(
                    stored, {"descr": "<f4", "fortran_order": False, "shape": (self.sums.count, self.width)})
                while block := rows_on_disk.read(1 << 24):
                    stored.write(block)
            os.remove(self.raw_path)
        return statistics, self.sums.count, self.width

    def discard(self) -> None:
        """Close the raw file (idempotent); `close` still writes the .npy afterwards, `remove` deletes it."""
        if self.raw is not None:
            self.raw.close()
            self.raw = None

    def remove(self) -> None:
        """Delete the raw rows and the .npy, whatever state they are in (a failed or finished scoring)."""
        self.discard()
        for path in (self.raw_path, self.path):
            if path is not None and path.exists():
                path.unlink()


@torch.no_grad()
def accumulate_features(
    extractor: FeatureExtractor, image_batches: Iterable[Any], features_file: str | Path | None = None,
    batch_size: int = 512,
) -> tuple[dict[str, np.ndarray], int, int]:
    """Features of image batches, accumulated without holding the images: FID statistics of the float32
    features, N and F; with `features_file`, the (N, F) float32 features written there as .npy, appended batch
    by batch (the reusable part of the reference stage: any iterable of uint8 / float image batches, or of
    (images, labels) pairs, such as `runners.data.Batches` or the arr_0 of an ADM reference batch in slices)."""
    stored = FeatureFile(features_file)
    try:
        for item in image_batches:
            batch = as_float_images(item[0] if isinstance(item, (tuple, list)) else item)
            stored.add(extract_features(extractor, batch, batch_size))  # (b, F)
    finally:
        stored.discard()
    return stored.close()


def read_features(path: str | Path) -> Tensor:
    """A stored float32 (N, F) .npy (features, logits) read through a memory map -> float64 tensor on CPU, the
    dtype the metric functions compute in; never unpickles (np.load's default allow_pickle=False)."""
    return torch.from_numpy(np.asarray(np.load(path, mmap_mode="r"), dtype=np.float64))


def features_sha256(path: str | Path, rows_per_chunk: int = 65536) -> str:
    """`array_sha256` of a stored (N, F) features .npy, read in blocks of rows (same digest, bounded memory)."""
    with open(path, "rb") as stream:
        shape, fortran, dtype = npy_header(stream)
        if fortran or len(shape) != 2:
            raise ValueError(f"{str(path)!r} must hold a C-ordered (N, F) array, but holds shape {shape}")
        digest = hashlib.sha256(repr(tuple(shape)).encode())
        row_bytes = shape[1] * np.dtype(dtype).itemsize
        while block := stream.read(rows_per_chunk * row_bytes):
            rows = np.frombuffer(block, dtype=dtype).reshape(-1, shape[1])
            digest.update(np.ascontiguousarray(rows, dtype="<f8").tobytes())
    return digest.hexdigest()


@torch.no_grad()
def save_reference_features(
    out: str | Path, extractor: FeatureExtractor, images: Any, *, name: str, extractor_kind: str,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Features of reference images -> features.npy, stats.npz, reference.json in `out`.

    `images`: a tensor `(N, C, H, W)` in [0, 1], or an iterable of image batches (`accumulate_features`). The
    statistics are those of the float32 features as stored, so FID from stats.npz equals FID from
    features.npy. Returns the reference stage's row: reference, reference_checksum, reference_images,
    reference_extractor (feature space name), reference_extractor_sha256, feature_dim, reference_features.
    """
    source = image_batches(images, batch_size) if isinstance(images, Tensor) else images
    return _write_reference(out, extractor, source, name=name, extractor_kind=extractor_kind, batch_size=batch_size)


@torch.no_grad()
def save_adm_reference_features(
    out: str | Path, extractor: FeatureExtractor, path: str | Path, *, extractor_kind: str, batch_size: int = 250
) -> dict[str, Any]:
    """The reference stage's artifact of an ADM reference batch (`arr_0` uint8 (N, H, W, 3) images, e.g.
    VIRTUAL_imagenet256_labeled.npz): its images featurised in `batch_size` slices (never the whole set as
    float), streamed through the same accumulation as held-out images, named after the file and carrying its
    sha256 (the protocol's reference checksum)."""
    reference = load_reference(path)
    if reference.images is None:
        raise ValueError(f"{str(path)!r} holds no images (arr_0); the reference stage needs the ADM batch's images "
                         f"to featurise them with the sweep's extractor, not only its statistics")
    slices = (reference.image_tensor(start, start + batch_size) for start in range(0, len(reference.images), batch_size))
    return _write_reference(out, extractor, slices, name=Path(path).name, extractor_kind=extractor_kind,
                            batch_size=batch_size, source_sha256=reference.sha256)


def _write_reference(out: str | Path, extractor: FeatureExtractor, batches: Any, *, name: str, extractor_kind: str,
                     batch_size: int, source_sha256: str | None = None) -> dict[str, Any]:
    out = Path(out)
    stats, count, width = accumulate_features(extractor, batches, out / FEATURES_FILE, batch_size)
    record = {
        "reference": name,
        "reference_checksum": features_sha256(out / FEATURES_FILE),
        "reference_images": count,
        "reference_extractor": feature_extractor_name(extractor),
        "reference_extractor_sha256": extractor_sha256(extractor),
        "feature_dim": width,
        "reference_features": FEATURES_KEPT,
        **({"reference_sha256": source_sha256} if source_sha256 else {}),
    }
    np.savez(out / STATISTICS_FILE, mu=stats["mu"], sigma=stats["sigma"])
    weights = getattr(extractor, "weights_path", None) if extractor_kind == "inception" else None
    (out / REFERENCE_FILE).write_text(json.dumps(
        {**record, "feature_extractor": extractor_kind, "extractor_weights": None if weights is None else str(weights)},
        indent=2, sort_keys=True) + "\n")
    return record


def load_reference_features(folder: str | Path) -> ReferenceFeatures:
    """Read a reference stage's artifact; the features must match the checksum recorded with them."""
    folder = Path(folder)
    missing = [f for f in (FEATURES_FILE, STATISTICS_FILE, REFERENCE_FILE) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"a reference artifact must hold {FEATURES_FILE}, {STATISTICS_FILE} and {REFERENCE_FILE}, but "
            f"{str(folder)!r} lacks {', '.join(missing)}; run the reference stage first"
        )
    record = json.loads((folder / REFERENCE_FILE).read_text())
    if features_sha256(folder / FEATURES_FILE) != record["reference_checksum"]:
        raise ValueError(
            f"{str(folder / FEATURES_FILE)!r} does not match the checksum recorded in {REFERENCE_FILE} "
            f"({record['reference_checksum'][:12]}); delete the artifact and run the reference stage again"
        )
    with np.load(folder / STATISTICS_FILE, allow_pickle=False) as stats:
        statistics = {"mu": np.asarray(stats["mu"], dtype=np.float64), "sigma": np.asarray(stats["sigma"], dtype=np.float64)}
    return ReferenceFeatures(
        name=record["reference"], features_path=str(folder / FEATURES_FILE), statistics=statistics,
        checksum=record["reference_checksum"], extractor=record["feature_extractor"],
        extractor_name=record["reference_extractor"], extractor_sha256=record["reference_extractor_sha256"],
        count=int(record["reference_images"]),
        extractor_weights=record.get("extractor_weights"),
        source_sha256=record.get("reference_sha256"),
    )

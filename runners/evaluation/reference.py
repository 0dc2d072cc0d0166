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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from runners.evaluation.classifier import DatasetClassifier
from runners.evaluation.inception import InceptionFeatures, file_sha256, to_uint8
from runners.evaluation.metrics import FeatureExtractor, extract_features, feature_extractor_name, feature_statistics
from runners.evaluation.protocol import array_sha256, extractor_sha256

# Bumped when the reference artifact changes for the same images and extractor (part of its key).
REFERENCE_CODE_VERSION = "reference-1"
FEATURES_FILE = "features.npy"
STATISTICS_FILE = "stats.npz"
REFERENCE_FILE = "reference.json"
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

    The same truncating conversion as the feature extractors (`inception.to_uint8`).
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
        return InceptionFeatures(inception_weights).to(device)
    raise ValueError(f"feature_extractor must be one of {', '.join(FEATURE_EXTRACTORS)}, but got {kind!r}")


@dataclass(frozen=True)
class ReferenceFeatures:
    """A reference stage's artifact, read back by `load_reference_features`."""

    name: str
    """what the reference set is, e.g. "digits/heldout" (the protocol's reference)"""
    features: Tensor
    """(N, F) float64 on CPU, exactly the stored float32 values"""
    statistics: dict[str, np.ndarray]
    """{"mu": (F,), "sigma": (F, F)} float64 FID statistics of `features`"""
    checksum: str
    """array_sha256 of the features: the protocol's reference checksum"""
    extractor: str
    """the `feature_extractor` axis value (classifier | inception)"""
    extractor_name: str
    """feature space name (metrics.feature_extractor_name)"""
    extractor_sha256: str
    """checksum of the extractor's weights the features came from"""
    extractor_weights: str | None = None
    """the Inception weights file the features came from (assets.inception_weights, or fid-helper's default_1.pt),
    so stages that score against them load the same file; None for the classifier (and older artifacts)"""
    source_sha256: str | None = None
    """sha256 of the file the reference images came from (the ADM batch), None for a dataset's held-out images"""

    @property
    def protocol_checksum(self) -> str:
        """The protocol's reference checksum: the source file's sha256 when there is one, else the features'."""
        return self.source_sha256 or self.checksum

    def check_extractor(self, sha256: str) -> None:
        """Refuse to compare with features from other weights than the reference's."""
        if sha256 != self.extractor_sha256:
            raise ValueError(
                f"the reference {self.name!r} holds features of extractor weights {self.extractor_sha256[:12]}, but "
                f"this stage's extractor has weights {sha256[:12]}; plan both from the same classifier / Inception file"
            )


@torch.no_grad()
def save_reference_features(
    out: str | Path, extractor: FeatureExtractor, images: Tensor, *, name: str, extractor_kind: str, batch_size: int = 512
) -> dict[str, Any]:
    """Features of reference `images` `(N, C, H, W)` in [0, 1] -> features.npy, stats.npz, reference.json in `out`.

    The statistics are those of the float32 features as stored, so FID from stats.npz equals FID from
    features.npy. Returns the reference stage's row: reference, reference_checksum, reference_images,
    reference_extractor (feature space name), reference_extractor_sha256, feature_dim.
    """
    features = extract_features(extractor, images, batch_size).to(torch.float32).numpy()  # (N, F)
    return _write_reference(out, features, extractor, name=name, extractor_kind=extractor_kind)


@torch.no_grad()
def save_adm_reference_features(
    out: str | Path, extractor: FeatureExtractor, path: str | Path, *, extractor_kind: str, batch_size: int = 250
) -> dict[str, Any]:
    """The reference stage's artifact of an ADM reference batch (`arr_0` uint8 (N, H, W, 3) images, e.g.
    VIRTUAL_imagenet256_labeled.npz): features of its images in `batch_size` slices (never the whole set as
    float), named after the file and carrying its sha256 (the protocol's reference checksum)."""
    reference = load_reference(path)
    if reference.images is None:
        raise ValueError(f"{str(path)!r} holds no images (arr_0); the reference stage needs the ADM batch's images "
                         f"to featurise them with the sweep's extractor, not only its statistics")
    chunks = [extract_features(extractor, reference.image_tensor(start, start + batch_size), batch_size)
              for start in range(0, len(reference.images), batch_size)]
    features = torch.cat(chunks).to(torch.float32).numpy()  # (N, F)
    return _write_reference(out, features, extractor, name=Path(path).name, extractor_kind=extractor_kind,
                            source_sha256=reference.sha256)


def _write_reference(out: str | Path, features: np.ndarray, extractor: FeatureExtractor, *, name: str,
                     extractor_kind: str, source_sha256: str | None = None) -> dict[str, Any]:
    out = Path(out)
    stats = feature_statistics(torch.from_numpy(features).double())
    record = {
        "reference": name,
        "reference_checksum": array_sha256(features),
        "reference_images": int(features.shape[0]),
        "reference_extractor": feature_extractor_name(extractor),
        "reference_extractor_sha256": extractor_sha256(extractor),
        "feature_dim": int(features.shape[1]),
        **({"reference_sha256": source_sha256} if source_sha256 else {}),
    }
    np.save(out / FEATURES_FILE, features)
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
    features = np.load(folder / FEATURES_FILE, allow_pickle=False)  # (N, F) float32
    if array_sha256(features) != record["reference_checksum"]:
        raise ValueError(
            f"{str(folder / FEATURES_FILE)!r} does not match the checksum recorded in {REFERENCE_FILE} "
            f"({record['reference_checksum'][:12]}); delete the artifact and run the reference stage again"
        )
    with np.load(folder / STATISTICS_FILE, allow_pickle=False) as stats:
        statistics = {"mu": np.asarray(stats["mu"], dtype=np.float64), "sigma": np.asarray(stats["sigma"], dtype=np.float64)}
    return ReferenceFeatures(
        name=record["reference"], features=torch.from_numpy(features).double(), statistics=statistics,
        checksum=record["reference_checksum"], extractor=record["feature_extractor"],
        extractor_name=record["reference_extractor"], extractor_sha256=record["reference_extractor_sha256"],
        extractor_weights=record.get("extractor_weights"),
        source_sha256=record.get("reference_sha256"),
    )

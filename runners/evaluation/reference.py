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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from runners.evaluation.inception import file_sha256, to_uint8


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

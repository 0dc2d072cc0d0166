"""Scoring generated images that stream through in batches: bounded memory for 50,000 samples at 256 x 256.

Holding every sample of an ImageNet evaluation costs 50,000 x 3 x 256 x 256 float32 = 39 GB; the evaluation
stage instead hands each sampling batch, as soon as it is decoded, to

    SampleBatchWriter   the batch as uint8 NHWC appended to arr_0 of samples.npz (the ADM evaluator's sample
                        batch), written into the zip entry as it comes: no copy of all samples, in memory or
                        in a temporary file
    StreamingScorer     the batch's features (the reference's feature space) appended to a float32 .npy and
                        to float64 running sums (`reference.FeatureFile`, the reference stage's own
                        accumulator), the dataset classifier's count of correct predictions, and the
                        extractor's logits (Inception Score) to a second .npy

and then computes FID (from the running statistics), KID and precision / recall (from the features .npy,
read through a memory map) and the Inception Score (from the logits .npy) with the formulas of the
in-memory `metrics.image_metrics` (`metrics.scores_from_features`): the same numbers up to float rounding
(the one-pass covariance of the sums against numpy's two-pass one; tested). Only features, never images,
are held whole: 50,000 x 2048 float64 = 0.8 GB for KID and precision / recall.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from runners.evaluation.classifier import DatasetClassifier, predict
from runners.evaluation.metrics import DEFAULT_K, FeatureExtractor, extract_features, extract_logits, scores_from_features
from runners.evaluation.reference import FeatureFile, read_features

FEATURES_FILE = "fake_features.npy"
"""(M, F) float32 features of the samples, in the scorer's folder while it scores (removed by `remove`)."""
LOGITS_FILE = "fake_logits.npy"
"""(M, C) float32 logits of the samples (extractors with `has_logits`), likewise temporary."""


class StreamingScorer:
    """Metrics of generated images added batch by batch (see the module docstring).

    Args:
        extractor: the reference's feature space (`features(images) -> (b, F)`; `has_logits` adds the IS).
        classifier: the dataset classifier (class accuracy), or None (class accuracy NaN).
        folder: where the temporary features / logits .npy files live (the stage's out folder); `remove()`
            deletes them (also after a failure: use the scorer as a context manager).
        batch_size: images per forward pass of the extractor and the classifier (a batch larger than this is
            split; a sampling batch of 100 is never merged with another).
    """

    def __init__(self, extractor: FeatureExtractor, classifier: DatasetClassifier | None, folder: str | Path,
                 *, batch_size: int = 512) -> None:
        self.extractor, self.classifier, self.batch_size = extractor, classifier, batch_size
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.features = FeatureFile(folder / FEATURES_FILE)
        self.has_logits = bool(getattr(extractor, "has_logits", False))
        self.logits = FeatureFile(folder / LOGITS_FILE) if self.has_logits else None
        self.correct = 0
        self.count = 0

    @torch.no_grad()
    def add(self, images: Tensor, labels: Tensor) -> None:
        """One batch: images `(b, C, H, W)` in [0, 1] and the classes `(b,)` they were generated for."""
        if images.ndim != 4 or labels.shape != (len(images),):
            raise ValueError(f"images must be (b, C, H, W) with labels (b,), but got {tuple(images.shape)} and "
                             f"{tuple(labels.shape)}")
        both = getattr(self.extractor, "features_and_logits", None) if self.logits is not None else None
        if both is not None:  # Inception with its classifier: one network pass gives pool3 and the logits
            for start in range(0, len(images), self.batch_size):
                features, logits = both(images[start : start + self.batch_size].float())  # (b', F), (b', C)
                self.features.add(features.to("cpu", torch.float64))
                self.logits.add(logits.to("cpu", torch.float64))
        else:
            self.features.add(extract_features(self.extractor, images, self.batch_size))  # (b, F)
            if self.logits is not None:
                self.logits.add(extract_logits(self.extractor, images, self.batch_size))  # (b, C)
        if self.classifier is not None:
            predicted = predict(self.classifier, images, self.batch_size)  # (b,)
            self.correct += int((predicted == labels.to(predicted.device)).sum())
        self.count += len(images)

    def metrics(
        self, real_features: Tensor, real_statistics: dict[str, np.ndarray] | None = None, *,
        kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0, k: int = DEFAULT_K,
        device: torch.device | str | None = None,
    ) -> dict[str, float]:
        """METRIC_KEYS (+ INCEPTION_SCORE_KEYS) of every batch added, against reference features `(N, F)` (and
        their FID statistics, computed from them when None); the arguments as in `metrics.image_metrics`, and
        `device` where precision / recall run (`metrics.scores_from_features`)."""
        if self.count == 0:
            raise ValueError("the scorer holds no images; add at least one batch before asking for metrics")
        fake_statistics, _, _ = self.features.close()
        logits = None
        if self.logits is not None:
            self.logits.close()
            logits = read_features(self.logits.path)
        return scores_from_features(
            real_features, read_features(self.features.path), real_statistics=real_statistics,
            fake_statistics=fake_statistics,
            class_accuracy=self.correct / self.count if self.classifier is not None else float("nan"),
            logits=logits, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed, k=k, device=device,
        )

    def remove(self) -> None:
        """Delete the temporary features / logits files."""
        self.features.remove()
        if self.logits is not None:
            self.logits.remove()

    def __enter__(self) -> StreamingScorer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.remove()


class SampleBatchWriter:
    """samples.npz written as the samples come: `arr_0` uint8 `(M, H, W, 3)` batch by batch, then `labels (M,)`.

    The same file as `np.savez(path, arr_0=..., labels=...)` (an uncompressed zip of two .npy entries, zip64),
    which the ADM evaluator and `np.load` read; the arr_0 entry's header holds M up front and each batch's bytes
    are appended to it, so no array of all samples exists anywhere. `finish(labels)` checks that exactly M
    images came and closes the file; leaving without `finish` (an error) deletes it.
    """

    def __init__(self, path: str | Path, count: int) -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1 sample, but got count={count}")
        self.path, self.count, self.written = Path(path), count, 0
        self.archive = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self.entry: Any = None
        self.shape: tuple[int, ...] | None = None
        self.finished = False

    def add(self, images: np.ndarray) -> None:
        """Append uint8 images `(b, H, W, 3)` (`reference.to_uint8_nhwc` of a float batch)."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (b, H, W, 3), but got {images.dtype} {images.shape}; "
                             f"convert with to_uint8_nhwc")
        if self.shape is None:
            self.shape = tuple(images.shape[1:])
            self.entry = self.archive.open("arr_0.npy", "w", force_zip64=True)
            np.lib.format.write_array_header_1_0(
                self.entry, {"descr": "|u1", "fortran_order": False, "shape": (self.count, *self.shape)})
        if tuple(images.shape[1:]) != self.shape or self.written + len(images) > self.count:
            raise ValueError(f"batches must be (b, {', '.join(map(str, self.shape))}) and {self.count} images in "
                             f"all, but got {images.shape} after {self.written}")
        self.entry.write(np.ascontiguousarray(images).tobytes())
        self.written += len(images)

    def finish(self, labels: np.ndarray) -> Path:
        """Write `labels (M,)` after the images and close the file; returns its path."""
        if self.written != self.count or len(labels) != self.count:
            raise ValueError(f"samples.npz expects {self.count} images and labels, but got {self.written} images "
                             f"and {len(labels)} labels")
        self.entry.close()
        self.entry = None
        with self.archive.open("labels.npy", "w", force_zip64=True) as entry:
            np.lib.format.write_array(entry, np.asarray(labels), allow_pickle=False)
        self.archive.close()
        self.finished = True
        return self.path

    def __enter__(self) -> SampleBatchWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if not self.finished:  # an error, or fewer samples than promised: nothing half-written stays behind
            if self.entry is not None:
                self.entry.close()
            self.archive.close()
            self.path.unlink(missing_ok=True)

"""FID, KID, precision / recall and class accuracy of generated images, with torch-fidelity's metric code.

Path through torch-fidelity: we extract features ourselves (any model with a `features(images) -> (B, F)`
method: the small `DatasetClassifier` here, `InceptionFeatures` (runners/evaluation/inception.py) on
ImageNet) and hand the feature
matrices to torch-fidelity's own metric functions:

- FID: `torch_fidelity.metric_fid.fid_features_to_statistics` (mu, sigma) and `fid_statistics_to_metric`
  (|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)), with the trace of the square root from eigenvalues).
- KID: `torch_fidelity.metric_kid.kid_features_to_metric` (unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / F + 1)^3, averaged over random subsets; mean and std over subsets).

We do not go through `torch_fidelity.calculate_metrics`: that entry point wants image datasets in uint8,
writes feature caches to disk and resolves extractors by name; the feature-level functions give the same
numbers with none of that, for any extractor. Nothing here downloads anything (no Inception weights).

Beyond torch-fidelity's FID / KID:

- Precision / recall (k = 3): `runners/evaluation/precision_recall.py` (pure torch, chunked).
- Inception Score from logits: `torch_fidelity.metric_isc.isc_features_to_metric` without shuffling
  (consecutive splits, as the original code and the ADM evaluator split).

Conventions: images float32 `(N, C, H, W)` in [0, 1]; features float64 `(N, F)` on CPU.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from runners.evaluation.classifier import CLASSIFIER_CODE_VERSION, DatasetClassifier, accuracy
from runners.evaluation.precision_recall import DEFAULT_K, precision_recall

def to_uint8(images: Tensor) -> Tensor:
    """Images float `(B, C, H, W)` in [0, 1] -> uint8 `(B, C, H, W)`: `(255 * x.clamp(0, 1)).to(uint8)`.

    Truncation, as torch-fidelity's examples and the ADM sampler convert float images. For images that
    came from uint8 as `v / 255` in float32 the round trip is exact.
    """
    if images.dtype == torch.uint8:
        return images
    return (255 * images.float().clamp(0, 1)).to(torch.uint8)


METRIC_KEYS: tuple[str, ...] = ("fid", "kid", "kid_std", "precision", "recall", "class_accuracy")
"""Keys of the dict `image_metrics` returns (flat floats, ready for a result row). One spelling everywhere:
rows, intermediate rows, searches (`space.schema.SEARCH_METRICS`), results.parquet, CSV and figures.
`kid` is the mean over KID subsets, `kid_std` their standard deviation."""
INCEPTION_SCORE_KEYS: tuple[str, ...] = ("inception_score", "inception_score_std")
"""Added by `image_metrics` when the extractor has a classifier head (`has_logits`, e.g. torch-fidelity's
full Inception weights file)."""


class FeatureExtractor(Protocol):
    """Anything that maps images `(B, C, H, W)` in [0, 1] to features `(B, F)`."""

    def features(self, images: Tensor) -> Tensor: ...


def feature_extractor_name(model: FeatureExtractor) -> str:
    """A name for the feature space, to record next to FID / KID (numbers differ across feature spaces).

    `DatasetClassifier` -> "dataset_classifier/classifier-1/f64" (code version and feature width); other
    extractors give their `name` attribute, else their class name.
    """
    if isinstance(model, DatasetClassifier):
        return f"dataset_classifier/{CLASSIFIER_CODE_VERSION}/f{model.feature_dim}"
    return str(getattr(model, "name", type(model).__name__))


@torch.no_grad()
def extract_features(model: FeatureExtractor, images: Tensor, batch_size: int = 512) -> Tensor:
    """Features `(N, F)` float64 on CPU of images `(N, C, H, W)` in [0, 1], computed in batches.

    Batches move to the model's device (the device of its first parameter, if it has any); an
    `nn.Module` runs in eval mode and gets its previous mode back afterwards.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), but got shape {tuple(images.shape)}; add a channel axis")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, but got batch_size={batch_size}; try 512")
    module = model if isinstance(model, torch.nn.Module) else None
    device = images.device
    was_training = False
    if module is not None:
        parameter = next(module.parameters(), None)
        device = parameter.device if parameter is not None else device
        was_training = module.training
        module.eval()
    try:
        chunks = [
            model.features(images[i : i + batch_size].to(device).float()).to("cpu", torch.float64)  # (b, F)
            for i in range(0, len(images), batch_size)
        ]
    finally:
        if module is not None:
            module.train(was_training)
    if not chunks:
        raise ValueError("images must hold at least one image, but got N=0")
    return torch.cat(chunks)  # (N, F)


def _check_features(features: Tensor, name: str) -> Tensor:
    if features.ndim != 2:
        raise ValueError(f"{name} features must be (N, F), but got shape {tuple(features.shape)}; flatten them")
    if len(features) < 2:
        raise ValueError(f"{name} features need N >= 2 rows for a covariance, but got N={len(features)}")
    features = features.detach().to("cpu", torch.float64)
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} features must be finite, but got NaN or inf; check the images and the extractor")
    return features


def feature_statistics(features: Tensor) -> dict[str, np.ndarray]:
    """torch-fidelity's FID statistics of features `(N, F)`: {"mu": (F,), "sigma": (F, F)} float64 arrays."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    stats = fid_features_to_statistics(_check_features(features, "the"))
    # np.cov of a single feature is 0-d; torch-fidelity expects a (F, F) matrix.
    return {"mu": np.atleast_1d(stats["mu"]), "sigma": np.atleast_2d(stats["sigma"])}


def real_feature_statistics(
    model: FeatureExtractor, real_images: Tensor, batch_size: int = 512
) -> dict[str, np.ndarray]:
    """FID statistics {"mu": (F,), "sigma": (F, F)} of a reference image set, to cache and reuse across trials."""
    return feature_statistics(extract_features(model, real_images, batch_size))


def fid_from_statistics(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """FID between two sets of statistics from `feature_statistics` (torch-fidelity's formula)."""
    if stats_1["mu"].shape != stats_2["mu"].shape:
        raise ValueError(
            f"both statistics must come from the same feature space, but got feature widths "
            f"{stats_1['mu'].shape[0]} and {stats_2['mu'].shape[0]}; use one extractor for real and fake images"
        )
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)[KEY_METRIC_FID])


def fid_from_features(real: Tensor, fake: Tensor) -> float:
    """Frechet distance between Gaussians fitted to features `real (N, F)` and `fake (M, F)`.

    FID = |mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)), covariances with the N - 1 denominator.
    """
    return fid_from_statistics(feature_statistics(real), feature_statistics(fake))


def kid_from_features(
    real: Tensor, fake: Tensor, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel (Inception) distance between features `real (N, F)` and `fake (M, F)`: (mean, std) over subsets.

    Each of `subsets` draws min(subset_size, N, M) rows of each set without replacement and computes the
    unbiased MMD^2 with the kernel (x.y / F + 1)^3. Near 0 (slightly negative is possible) for sets from
    one distribution. Deterministic given `seed`.
    """
    real = _check_features(real, "real")
    fake = _check_features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real and fake features must have the same width, but got {real.shape[1]} and {fake.shape[1]}; "
            f"use one extractor for both"
        )
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, but got subsets={subsets}; try 100")
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"subset_size must be >= 2 for the unbiased MMD estimate, but got subset_size={subset_size}")
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    out = kid_features_to_metric(
        real, fake, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False
    )
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def inception_score(logits: Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score of class logits `(N, C)`: (mean, std) over `splits` consecutive splits.

    Per split, IS = exp(mean_i KL(p(y|x_i) || p(y))) with p(y) the split's mean prediction; std is the
    population std over splits. torch-fidelity's formula, without its shuffle (ADM / the original code
    split in order). Works on any classifier's logits: Inception's unbiased logits on ImageNet, the
    dataset classifier's on small datasets (numbers are comparable only within one classifier).
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, C) with C >= 2 classes, but got shape {tuple(logits.shape)}")
    if splits < 1 or len(logits) < splits:
        raise ValueError(
            f"splits must lie in [1, N] = [1, {len(logits)}] (every split needs a sample), but got splits={splits}; "
            f"try splits=1 or more samples"
        )
    logits = logits.detach().to("cpu", torch.float64)
    if not torch.isfinite(logits).all():
        raise ValueError("logits must be finite, but got NaN or inf")
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    out = isc_features_to_metric(logits, splits=splits, shuffle=False)
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])


@torch.no_grad()
def extract_logits(model: torch.nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Class logits `(N, C)` float64 on CPU of images `(N, C, H, W)`, in batches on the model's device.

    Uses `model.logits(images)` where the model has one (InceptionFeatures), else `model(images)`
    (DatasetClassifier). The model runs in eval mode and gets its previous mode back.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, but got batch_size={batch_size}; try 512")
    forward = getattr(model, "logits", None) or model
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else images.device
    was_training = model.training
    model.eval()
    try:
        chunks = [
            forward(images[i : i + batch_size].to(device)).to("cpu", torch.float64)  # (b, C)
            for i in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("images must hold at least one image, but got N=0")
    return torch.cat(chunks)  # (N, C)


def image_metrics(
    classifier: DatasetClassifier | None,
    real_images: Tensor | None,
    fake_images: Tensor,
    fake_labels: Tensor,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    k: int = DEFAULT_K,
    real_features: Tensor | None = None,
    batch_size: int = 512,
    extractor: FeatureExtractor | None = None,
    real_statistics: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """FID, KID, precision / recall and class accuracy of generated images held in memory.

    The in-memory entry point (tests, small sets); the evaluation stage streams its samples through
    `runners.evaluation.streaming.StreamingScorer` instead, and both end in `scores_from_features`.

    Args:
        classifier: the trained dataset classifier (judge of classes; also the feature extractor unless
            `extractor` is given).
        real_images: reference images `(N, C, H, W)` in [0, 1] (ignored when `real_features` is given).
        fake_images: generated images `(M, C, H, W)` in [0, 1].
        fake_labels: `(M,)` the class each fake image was generated for.
        kid_subsets, kid_subset_size, seed: KID subsets (size capped at min(N, M)) and their seed.
        k: neighbourhood size of precision / recall (the paper: 3).
        real_features: cached `extract_features(extractor, real_images)` `(N, F)`, to skip recomputing it
            (a reference stage's features; then `real_images` may be None).
        batch_size: images per forward pass.
        extractor: the feature space of FID / KID / precision / recall (e.g. `InceptionFeatures()`);
            default the classifier.
        real_statistics: cached `feature_statistics(real_features)` {"mu", "sigma"} for the FID (a
            reference stage's stats.npz); computed from `real_features` when None.

    Returns:
        {"fid", "kid", "kid_std", "precision", "recall", "class_accuracy"} (METRIC_KEYS) as floats;
        `class_accuracy` is the share of fake images the classifier labels as their `fake_labels`. The
        feature space's name is `feature_extractor_name(extractor or classifier)`. With an extractor that
        has logits (`has_logits`: Inception with its classifier head) also INCEPTION_SCORE_KEYS, the
        Inception Score of the fake images (10 consecutive splits).
    """
    if fake_labels.shape != (len(fake_images),):
        raise ValueError(
            f"fake_labels must be (M,) = ({len(fake_images)},) to match fake_images, but got shape "
            f"{tuple(fake_labels.shape)}"
        )
    extractor = classifier if extractor is None else extractor
    if real_features is None:
        if real_images is None:
            raise ValueError("image_metrics needs real_images or real_features, but got neither; pass one of them")
        real_features = extract_features(extractor, real_images, batch_size)
    fake_features = extract_features(extractor, fake_images, batch_size)  # (M, F)
    return scores_from_features(
        real_features, fake_features,
        real_statistics=real_statistics, fake_statistics=feature_statistics(fake_features),
        # no dataset classifier (inception features, class accuracy not asked for): not scored
        class_accuracy=accuracy(classifier, fake_images, fake_labels) if classifier is not None else float("nan"),
        logits=extract_logits(extractor, fake_images, batch_size) if getattr(extractor, "has_logits", False) else None,
        kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed, k=k,
    )


def scores_from_features(
    real_features: Tensor,
    fake_features: Tensor,
    *,
    real_statistics: dict[str, np.ndarray] | None,
    fake_statistics: dict[str, np.ndarray],
    class_accuracy: float,
    logits: Tensor | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    k: int = DEFAULT_K,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """The metrics of `image_metrics` from what the images leave behind (the one place their formulas meet).

    Args:
        real_features, fake_features: `(N, F)` and `(M, F)` features in one feature space (any float dtype).
        real_statistics: {"mu", "sigma"} of the real features, or None to compute them from `real_features`.
        fake_statistics: {"mu", "sigma"} of the fake features (`feature_statistics`, or the running sums of
            `reference.FeatureSums` when the images streamed through).
        class_accuracy: share of fake images the dataset classifier labels as their class (NaN: not scored).
        logits: `(M, C)` class logits of the fake images for the Inception Score, or None (no IS keys).
        kid_subsets, kid_subset_size, seed, k: as in `image_metrics`.
        device: where precision / recall compute their nearest neighbours (float64 distances of every fake
            to every real feature and within each set: 4 x 10 TFLOP at 50k x 50k x 2048, about a minute on a
            16-core CPU, a second on a GPU); None: where `real_features` are. The same numbers up to the
            rounding of the float64 matmuls.

    Returns:
        METRIC_KEYS (+ INCEPTION_SCORE_KEYS with logits) as floats.
    """
    kid_mean, kid_std = kid_from_features(
        real_features, fake_features, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )
    real_on = real_features if device is None else real_features.to(device)
    precision, recall = precision_recall(real_on, fake_features, k)  # fake features follow real's device
    if real_statistics is None:
        real_statistics = feature_statistics(real_features)
    metrics = {
        "fid": fid_from_statistics(real_statistics, fake_statistics),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "class_accuracy": float(class_accuracy),
    }
    if logits is not None:
        score, score_std = inception_score(logits, splits=min(10, len(logits)))
        metrics.update(inception_score=score, inception_score_std=score_std)
    return metrics


# Bumped when a change alters the numbers computed from the same images; part of evaluation keys.
# metrics-2: image_metrics gained precision / recall (k = 3).
# metrics-3: KID is `kid` (was `kid_mean`); the Inception Score when the extractor has logits.
METRICS_CODE_VERSION = "metrics-3"

"""Improved precision and recall (Kynkaenniemi et al. 2019), k = 3 as in ELM.md "Evaluation".

Each feature set approximates its manifold by a union of balls: around every sample, a ball whose
radius is the distance to its k-th nearest neighbour in the same set (the sample itself excluded).

    precision = share of fake samples inside the real manifold (inside at least one real ball)
    recall    = share of real samples inside the fake manifold (inside at least one fake ball)

A point on a ball's boundary counts as inside (`<=`, as in the reference code and torch-fidelity's
`metric_prc`). Distances are computed in chunks of rows, so memory stays O(chunk_size x N) even for
50k x 50k sets; squared distances |a|^2 + |b|^2 - 2 a.b in float64 on the features' device are exact
for small integer features, which the hand-made tests rely on.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_K = 3
DEFAULT_CHUNK_SIZE = 4096


def _check(features: Tensor, name: str, k: int) -> Tensor:
    if features.ndim != 2:
        raise ValueError(f"{name} features must be (N, F), but got shape {tuple(features.shape)}; flatten them")
    if len(features) < k + 1:
        raise ValueError(
            f"{name} features need N >= k + 1 = {k + 1} rows for a k-th nearest neighbour, but got N={len(features)}; "
            f"use more samples or a smaller k"
        )
    features = features.detach().to(torch.float64)
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} features must be finite, but got NaN or inf; check the images and the extractor")
    return features


def _squared_distances(a: Tensor, b: Tensor, b_norms: Tensor) -> Tensor:
    """(n, F), (m, F), (m,) -> squared Euclidean distances (n, m), clamped at 0 against rounding."""
    return ((a * a).sum(dim=1, keepdim=True) + b_norms[None, :] - 2.0 * a @ b.T).clamp_min_(0.0)


def knn_radii_squared(features: Tensor, k: int = DEFAULT_K, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Squared distance of each row of `features (N, F)` to its k-th nearest other row: (N,) float64.

    Row i's own distance (0) is the smallest of its row, so the k-th neighbour is the (k+1)-th smallest.
    """
    features = _check(features, "the", k)
    norms = (features * features).sum(dim=1)  # (N,)
    radii = [
        _squared_distances(chunk, features, norms).kthvalue(k + 1, dim=1).values  # (c,)
        for chunk in features.split(chunk_size)
    ]
    return torch.cat(radii)


def _coverage(points: Tensor, centres: Tensor, radii_squared: Tensor, chunk_size: int) -> float:
    """Share of `points (M, F)` inside at least one ball (centres (N, F), squared radii (N,))."""
    norms = (centres * centres).sum(dim=1)  # (N,)
    inside = [
        (_squared_distances(chunk, centres, norms) <= radii_squared[None, :]).any(dim=1)  # (c,)
        for chunk in points.split(chunk_size)
    ]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: Tensor, fake: Tensor, k: int = DEFAULT_K, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[float, float]:
    """(precision, recall) of fake features `(M, F)` against real features `(N, F)`, both in [0, 1].

    Computed on `real`'s device in float64; `chunk_size` rows of distances at a time.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, but got k={k}; the paper uses k=3")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, but got chunk_size={chunk_size}; try {DEFAULT_CHUNK_SIZE}")
    real = _check(real, "real", k)
    fake = _check(fake, "fake", k).to(real.device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real and fake features must have the same width, but got {real.shape[1]} and {fake.shape[1]}; "
            f"use one extractor for both"
        )
    real_radii = knn_radii_squared(real, k, chunk_size)  # (N,)
    fake_radii = knn_radii_squared(fake, k, chunk_size)  # (M,)
    precision = _coverage(fake, real, real_radii, chunk_size)
    recall = _coverage(real, fake, fake_radii, chunk_size)
    return precision, recall

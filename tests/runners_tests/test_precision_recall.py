"""Tests of runners/evaluation/precision_recall.py (Kynkaenniemi et al. 2019) on hand-made sets."""

from __future__ import annotations

import pytest
import torch
from torch_fidelity.metric_prc import calculate_precision_recall_full

from runners.evaluation.precision_recall import knn_radii_squared, precision_recall


def _points(*rows: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_one_dimensional_k1_by_hand() -> None:
    # Real {0, 1, 3}: nearest-other distances (radii, k = 1) 1, 1, 2.
    # Fake {0, 0.5, 6, 7}: radii 0.5, 0.5, 1, 1.
    # Precision: 0 and 0.5 lie within 1 of real 0; 6 is 3 from real 3 (radius 2), 7 further -> 2/4.
    # Recall: real 0 is a fake point; real 1 is exactly 0.5 from fake 0.5 (radius 0.5: on the boundary,
    # inside); real 3 is 2.5 from fake 0.5 and 3 from fake 6 (radius 1) -> 2/3.
    real = _points((0.0,), (1.0,), (3.0,))
    fake = _points((0.0,), (0.5,), (6.0,), (7.0,))
    assert torch.equal(knn_radii_squared(real, k=1), torch.tensor([1.0, 1.0, 4.0], dtype=torch.float64))
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == 0.5
    assert recall == pytest.approx(2 / 3, abs=1e-15)


def test_two_dimensional_k3_by_hand() -> None:
    # Real: the corners of the square [0, 2]^2 and its centre. Squared distances: corner-centre 2,
    # corner-adjacent corner 4, corner-opposite corner 8 -> a corner's 3rd neighbour is at 4 (radius 2);
    # the centre's neighbours are all at 2 (radius sqrt 2).
    real = _points((0, 0), (0, 2), (2, 0), (2, 2), (1, 1))
    assert torch.equal(knn_radii_squared(real, k=3), torch.tensor([4.0, 4.0, 4.0, 4.0, 2.0], dtype=torch.float64))
    # Fake: (1, 1) the centre itself; (3, 1) at squared distance 2 of corner (2, 0); (0, -2) at exactly 4 of
    # corner (0, 0) (boundary: inside); (4, 1) and (1, 4) at 5 or more from every corner and 9 from the centre.
    # Precision 3/5. Fake radii (k = 3, squared): 9, 13, 25, 18, 18; every real point is within 2 of (1, 1),
    # whose radius^2 is 9 -> recall 1.
    fake = _points((1, 1), (3, 1), (0, -2), (4, 1), (1, 4))
    assert torch.equal(knn_radii_squared(fake, k=3),
                       torch.tensor([9.0, 13.0, 25.0, 18.0, 18.0], dtype=torch.float64))
    assert precision_recall(real, fake, k=3) == (0.6, 1.0)
    # Swapping the roles swaps the numbers.
    assert precision_recall(fake, real, k=3) == (1.0, 0.6)


def test_identical_sets_and_disjoint_sets() -> None:
    points = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert precision_recall(points, points) == (1.0, 1.0)
    assert precision_recall(points, points + 100.0) == (0.0, 0.0)


def test_matches_torch_fidelity_and_chunking_changes_nothing() -> None:
    generator = torch.Generator().manual_seed(1)
    real = torch.randn(300, 16, generator=generator, dtype=torch.float64)
    fake = 1.3 * torch.randn(200, 16, generator=generator, dtype=torch.float64) + 0.4
    ours = precision_recall(real, fake, k=3)
    # torch-fidelity's convention: features_1 is generated, features_2 is real.
    theirs = calculate_precision_recall_full(fake, real, neighborhood=3)
    assert ours == pytest.approx(theirs, abs=1e-6)  # it averages in float32
    assert 0.0 < ours[0] < 1.0 and 0.0 < ours[1] < 1.0
    assert precision_recall(real, fake, k=3, chunk_size=7) == ours
    assert precision_recall(real.float(), fake.float(), k=3) == pytest.approx(ours, abs=0.01)


def test_rejects_too_few_rows_and_mismatched_widths() -> None:
    with pytest.raises(ValueError, match=r"N >= k \+ 1 = 4"):
        precision_recall(torch.zeros(3, 2), torch.zeros(10, 2), k=3)
    with pytest.raises(ValueError, match="same width"):
        precision_recall(torch.randn(10, 2), torch.randn(10, 3))
    with pytest.raises(ValueError, match="k must be >= 1"):
        precision_recall(torch.randn(10, 2), torch.randn(10, 2), k=0)

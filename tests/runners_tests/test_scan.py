"""Contracts of runners/scan.py: literal orders, exact inverses, and positions flowing through the models."""

from __future__ import annotations

import pytest
import torch

from runners.generators import ARGenerator, GeneratorConfig, MLMGenerator
from runners.generators.ar import raster_positions
from runners.sampling import sample_ar
from runners.scan import SCAN_ORDERS, from_scan, scan_permutation, scan_positions, to_scan

torch.set_num_threads(1)


def test_registry_names() -> None:
    assert sorted(SCAN_ORDERS) == ["column", "column_zigzag", "diagonal_zigzag", "raster", "row_zigzag"]


# Each 3 x 3 order written out by hand as raster indices (row * 3 + col) in visiting order.
@pytest.mark.parametrize(
    "order, expected",
    [
        ("raster", [0, 1, 2, 3, 4, 5, 6, 7, 8]),
        ("column", [0, 3, 6, 1, 4, 7, 2, 5, 8]),
        ("row_zigzag", [0, 1, 2, 5, 4, 3, 6, 7, 8]),
        ("column_zigzag", [0, 3, 6, 7, 4, 1, 2, 5, 8]),
        ("diagonal_zigzag", [0, 1, 3, 6, 4, 2, 5, 7, 8]),
    ],
)
def test_3x3_orders_literal(order: str, expected: list[int]) -> None:
    assert scan_permutation(order, 3, 3).tolist() == expected


def test_diagonal_zigzag_positions_literal() -> None:
    # JPEG zigzag on 3 x 3 as (row, col)
    assert scan_positions("diagonal_zigzag", 3, 3).tolist() == [
        [0, 0], [0, 1], [1, 0], [2, 0], [1, 1], [0, 2], [1, 2], [2, 1], [2, 2],
    ]
    # 4 x 4: the classic JPEG order's first 10 entries (raster indices)
    assert scan_permutation("diagonal_zigzag", 4, 4).tolist()[:10] == [0, 1, 4, 8, 5, 2, 3, 6, 9, 12]


def test_non_square_grids_literal() -> None:
    # 2 rows x 3 columns
    assert scan_permutation("column", 2, 3).tolist() == [0, 3, 1, 4, 2, 5]
    assert scan_permutation("row_zigzag", 2, 3).tolist() == [0, 1, 2, 5, 4, 3]
    assert scan_permutation("column_zigzag", 2, 3).tolist() == [0, 3, 4, 1, 2, 5]
    assert scan_permutation("diagonal_zigzag", 2, 3).tolist() == [0, 1, 3, 4, 2, 5]
    assert scan_permutation("diagonal_zigzag", 3, 2).tolist() == [0, 1, 2, 4, 3, 5]


@pytest.mark.parametrize("order", sorted(SCAN_ORDERS))
@pytest.mark.parametrize("h, w", [(1, 1), (1, 5), (4, 1), (3, 4), (16, 16)])
def test_every_order_is_a_permutation_with_matching_positions(order: str, h: int, w: int) -> None:
    positions = scan_positions(order, h, w)
    assert positions.shape == (h * w, 2) and positions.dtype == torch.int64
    perm = scan_permutation(order, h, w)
    assert sorted(perm.tolist()) == list(range(h * w))
    assert torch.equal(perm, positions[:, 0] * w + positions[:, 1])
    # zigzag orders move to a neighbouring cell (8-neighbourhood) at every step; raster/column jump at line ends
    steps = (positions[1:] - positions[:-1]).abs().amax(dim=1)
    if order in ("row_zigzag", "column_zigzag"):
        assert (steps == 1).all()
    if order == "diagonal_zigzag":
        assert ((positions[1:] - positions[:-1]).abs().sum(1) <= 2).all()  # right, down or one diagonal step


@pytest.mark.parametrize("order", sorted(SCAN_ORDERS))
def test_to_scan_from_scan_round_trip(order: str) -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (3, 12, 2), generator=g)  # (B, N, K), 3 x 4 grid
    scanned = to_scan(ids, order, 3, 4)
    assert torch.equal(from_scan(scanned, order, 3, 4), ids)
    assert torch.equal(to_scan(from_scan(ids, order, 3, 4), order, 3, 4), ids)
    perm = scan_permutation(order, 3, 4)
    assert torch.equal(scanned[:, 5], ids[:, perm[5]])  # sequence index i holds the raster cell perm[i]
    # extra trailing dims (e.g. bits (B, N, D)) travel along
    bits = torch.rand(2, 12, 3, 4, generator=g)
    assert torch.equal(from_scan(to_scan(bits, order, 3, 4), order, 3, 4), bits)


def test_to_scan_literal_and_errors() -> None:
    tokens = torch.arange(9).view(1, 9)  # raster cell index as the token
    assert to_scan(tokens, "diagonal_zigzag", 3, 3).tolist() == [[0, 1, 3, 6, 4, 2, 5, 7, 8]]
    assert from_scan(torch.tensor([[0, 1, 3, 6, 4, 2, 5, 7, 8]]), "diagonal_zigzag", 3, 3).tolist() == [
        list(range(9))
    ]
    with pytest.raises(ValueError, match=r"scan order must be one of \['column', .*but got order='spiral'"):
        scan_positions("spiral", 3, 3)
    with pytest.raises(ValueError, match=r"N = h\*w = 9"):
        to_scan(torch.zeros(1, 8), "raster", 3, 3)
    with pytest.raises(ValueError, match="grid size must be two positive ints"):
        scan_positions("raster", 0, 3)


def test_raster_matches_model_default() -> None:
    assert torch.equal(scan_positions("raster", 3, 5), raster_positions(3, 5))


# ------------------------------------------------------------------ positions flow through the models
def _config(token_each: int = 1) -> GeneratorConfig:
    return GeneratorConfig("tiny", 3, 3, token_each=token_each, bits_each=5, num_classes=4, dropout=0.0)


def test_mlm_is_equivariant_to_scan_order() -> None:
    """Bidirectional attention + rotary at each token's true cell: a scan order only permutes the output."""
    torch.manual_seed(0)
    model = MLMGenerator(_config(token_each=2))
    with torch.no_grad():
        model.head.norm.weight.normal_(0.0, 1.0)  # non-uniform logits
    model.eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 33, (2, 9, 2), generator=g)  # 32 = [MASK] allowed
    labels = torch.tensor([0, 3])
    raster = model(ids, labels)  # (B, N, K, V) in raster order
    for order in ("column", "diagonal_zigzag"):
        scanned = model(to_scan(ids, order, 3, 3), labels, positions=scan_positions(order, 3, 3))
        torch.testing.assert_close(from_scan(scanned, order, 3, 3), raster, atol=1e-5, rtol=0)
        # without the positions the rotary would disagree with the permuted tokens
        wrong = model(to_scan(ids, order, 3, 3), labels)
        assert (from_scan(wrong, order, 3, 3) - raster).abs().max() > 1e-3


def test_ar_sees_scan_positions_and_sampler_passes_them() -> None:
    torch.manual_seed(0)
    model = ARGenerator(_config())
    with torch.no_grad():
        model.heads[0].weight.normal_(0.0, 0.5)
    model.eval()
    labels = torch.tensor([1, 2])
    positions = scan_positions("diagonal_zigzag", 3, 3)
    ids = sample_ar(model, labels, top_k=1, positions=positions, generator=torch.Generator().manual_seed(0))
    # greedy tokens are the argmax of the teacher-forced logits under the same scan positions
    assert torch.equal(model(ids, labels, positions=positions).argmax(-1), ids)
    # the same ids read with raster coordinates give different logits after the first two slots
    other = model(ids, labels)
    assert (other[:, 2:] - model(ids, labels, positions=positions)[:, 2:]).abs().max() > 1e-4

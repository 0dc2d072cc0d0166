"""Scan orders: in which order a generator visits the h x w latent grid (ELM.md "scan order" axis).

The tokenizer and `runners/vocab.py` produce ids in row-major raster order, (B, h*w, K). A scan
order is a permutation of the N = h*w grid cells: sequence index i visits cell
`scan_positions(order, h, w)[i] = (row, col)`. Training and sampling work in scan order:

    ids_scan = to_scan(ids_raster, order, h, w)        # (B, N, K), the order the generator reads
    positions = scan_positions(order, h, w)             # (N, 2) (row, col) of each sequence index
    model.loss(ids_scan, labels, positions=positions)   # 2D rotary follows the tokens
    ids_scan = sample_ar(model, labels, positions=positions, ...)
    ids_raster = from_scan(ids_scan, order, h, w)       # exact inverse, before decoding to bits

The order permutes the tokens AND their 2D rotary coordinates together, so a token always rotates
with its true grid cell; only what the causal mask lets each token see changes.

Orders (examples on a 3 x 3 grid, each cell written as its raster index row*w + col):

    raster           0 1 2 3 4 5 6 7 8      row-major, each row left to right
    column           0 3 6 1 4 7 2 5 8      column-major, each column top to bottom
    row_zigzag       0 1 2 5 4 3 6 7 8      boustrophedon: even rows left->right, odd rows right->left
    column_zigzag    0 3 6 7 4 1 2 5 8      even columns top->bottom, odd columns bottom->top
    diagonal_zigzag  0 1 3 6 4 2 5 7 8      JPEG zigzag over anti-diagonals d = row + col: the first
                                            move is to the right; odd d runs top-right -> bottom-left
                                            (row increasing), even d bottom-left -> top-right
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ScanFn = Callable[[int, int], list[tuple[int, int]]]


def _raster(h: int, w: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(h) for c in range(w)]


def _column(h: int, w: int) -> list[tuple[int, int]]:
    return [(r, c) for c in range(w) for r in range(h)]


def _row_zigzag(h: int, w: int) -> list[tuple[int, int]]:
    return [(r, c if r % 2 == 0 else w - 1 - c) for r in range(h) for c in range(w)]


def _column_zigzag(h: int, w: int) -> list[tuple[int, int]]:
    return [(r if c % 2 == 0 else h - 1 - r, c) for c in range(w) for r in range(h)]


def _diagonal_zigzag(h: int, w: int) -> list[tuple[int, int]]:
    cells = []
    for d in range(h + w - 1):
        rows = range(max(0, d - w + 1), min(d, h - 1) + 1)  # rows present on anti-diagonal d
        if d % 2 == 0:
            rows = reversed(rows)  # even diagonals climb: bottom-left -> top-right
        cells.extend((r, d - r) for r in rows)
    return cells


# order name -> (h, w) -> list of (row, col), one per sequence index
SCAN_ORDERS: dict[str, ScanFn] = {
    "raster": _raster,
    "column": _column,
    "row_zigzag": _row_zigzag,
    "column_zigzag": _column_zigzag,
    "diagonal_zigzag": _diagonal_zigzag,
}


def scan_positions(order: str, h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """(row, col) grid cell of each sequence index in `order`: (h*w, 2) int64."""
    if order not in SCAN_ORDERS:
        raise ValueError(f"scan order must be one of {sorted(SCAN_ORDERS)}, but got order={order!r}")
    if not (isinstance(h, int) and isinstance(w, int) and h >= 1 and w >= 1):
        raise ValueError(f"grid size must be two positive ints, but got h={h!r}, w={w!r}")
    return torch.tensor(SCAN_ORDERS[order](h, w), dtype=torch.int64, device=device).view(h * w, 2)


def scan_permutation(order: str, h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """Raster index (row * w + col) of each sequence index: (h*w,) int64, a permutation of 0..h*w-1."""
    positions = scan_positions(order, h, w, device)
    return positions[:, 0] * w + positions[:, 1]


def _check_tokens(tokens: Tensor, h: int, w: int) -> None:
    if tokens.ndim < 2 or tokens.shape[1] != h * w:
        raise ValueError(
            f"tokens must have shape (B, N, ...) with N = h*w = {h * w}, but got {tuple(tokens.shape)}"
        )


def to_scan(tokens_raster: Tensor, order: str, h: int, w: int) -> Tensor:
    """Reorder (B, N, ...) from raster order to `order`: out[:, i] = tokens_raster[:, raster index of i]."""
    _check_tokens(tokens_raster, h, w)
    return tokens_raster[:, scan_permutation(order, h, w, tokens_raster.device)]


def from_scan(tokens_scan: Tensor, order: str, h: int, w: int) -> Tensor:
    """Exact inverse of `to_scan`: (B, N, ...) in `order` -> raster order."""
    _check_tokens(tokens_scan, h, w)
    perm = scan_permutation(order, h, w, tokens_scan.device)
    out = torch.empty_like(tokens_scan)
    out[:, perm] = tokens_scan  # raster cell perm[i] receives sequence index i
    return out

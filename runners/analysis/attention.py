"""Attention maps of the AR generator and how local they are (ELM.md "Analyses beyond FID").

`attention_maps` records, for every layer, the attention probabilities an `ARGenerator` uses in a
teacher-forced forward pass. `runners/generators/layers.Attention` calls fused
`F.scaled_dot_product_attention`, which never materialises the probabilities, so we do not read them:
a forward hook on each `Attention` module receives its inputs (x (B, T, C), rotary angles (T, D/2),
is_causal, attn_mask) and recomputes

    q, k = rotary(qkv(x) split), per head          # (B, H, T, D)
    P = softmax(q k^T / sqrt(D) + mask)            # (B, H, T, T), rows sum to 1

with the module's own weights, rotary function and mask rule (an explicit attn_mask if given, else a
causal lower triangle when is_causal), in float32. P @ v, projected, reproduces the module's output
(checked in tests/runners_tests/test_attention_locality.py). Nothing in the model is modified; the
hooks are removed afterwards.

`locality` turns maps into numbers per layer on the 2D latent grid. Slot layout of the AR generator
(runners/generators/ar.py): slot 0 is the class token, slot t >= 1 holds token t-1, which sits at grid
cell positions[t-1] of the scan order. So for scan positions P (N, 2) the grid positions of the T = N
slots are `P[:N-1]` with `class_tokens=1`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from runners.generators.layers import Attention, apply_rotary

DEFAULT_MAX_QUERIES = 256


@torch.no_grad()
def attention_maps(model: torch.nn.Module, ids: Tensor, labels: Tensor, positions: Tensor | None = None) -> Tensor:
    """Attention probabilities of every layer of an `ARGenerator`: (layers, B, heads, T, T) float32.

    ids (B, T, K), labels (B,), positions (N, 2) scan order (default raster), as `ARGenerator.forward`
    takes them; T slots = class token + tokens 0..T-2 (the last token is never fed). Runs in eval mode
    (no dropout, no label dropout) and restores the model's mode. maps[l, b, h, i, j] is how much slot i
    attends to slot j in layer l, head h.
    """
    modules = [module for module in model.modules() if isinstance(module, Attention)]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no runners.generators.layers.Attention module to record")
    maps: dict[int, Tensor] = {}

    def record(index: int):
        def hook(module: Attention, args: tuple, kwargs: dict, output: Tensor) -> None:
            x, angles = args[0], args[1]  # (B, T, C), (T, D/2)
            is_causal, attn_mask = kwargs.get("is_causal", False), kwargs.get("attn_mask")
            B, T, C = x.shape
            q, k, _ = module.qkv(x).split(C, dim=-1)  # 2 x (B, T, C)
            q, k = (t.view(B, T, module.heads, module.head_dim).transpose(1, 2) for t in (q, k))  # (B, H, T, D)
            q, k = apply_rotary(q, angles).float(), apply_rotary(k, angles).float()
            scores = q @ k.transpose(-2, -1) / math.sqrt(module.head_dim)  # (B, H, T, T)
            if attn_mask is not None:  # the module's rule: an explicit mask wins over is_causal
                scores = scores.masked_fill(~attn_mask.to(torch.bool), float("-inf"))
            elif is_causal:
                visible = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                scores = scores.masked_fill(~visible, float("-inf"))
            maps[index] = F.softmax(scores, dim=-1)

        return hook

    handles = [
        module.register_forward_hook(record(index), with_kwargs=True) for index, module in enumerate(modules)
    ]
    was_training = model.training
    model.eval()
    try:
        model(ids, labels, positions=positions)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if len(maps) != len(modules):
        raise RuntimeError(f"recorded {len(maps)} of {len(modules)} attention layers; the model skipped some")
    return torch.stack([maps[index] for index in range(len(modules))])  # (layers, B, H, T, T)


def locality(
    maps: Tensor,
    positions: Tensor,
    *,
    k: int = 3,
    causal: bool,
    class_tokens: int = 1,
    max_queries: int | None = DEFAULT_MAX_QUERIES,
    seed: int = 0,
) -> list[dict[str, float | int]]:
    """How local attention is on the 2D grid, per layer, averaged over heads, batch and query slots.

    Args:
        maps: attention probabilities (layers, B, heads, T, T) (`attention_maps`).
        positions: grid (row, col) of the grid slots (T - class_tokens, 2), in slot order after the class slots.
        k: neighbourhood side (odd): keys with |d_row| <= k // 2 and |d_col| <= k // 2 of the query
            cell (the query's own cell included) are local.
        causal: the maps come from causal attention; keys after the query are then out of sight:
            their mass is dropped and each row renormalised over the visible keys (a no-op on real
            causal maps, where that mass is already 0).
        class_tokens: the first slots hold class tokens, not grid cells (AR: 1; the authors' MLM: K, one per
            sub-token; 0: none).
        max_queries: at most this many grid query slots, drawn uniformly with `seed` (None: all).

    Returns one dict per layer: {"layer", "local_mass": share of the grid-key mass inside the k x k
    neighbourhood (grid keys renormalised to 1), "class_mass": share of the whole row on the class slots
    (NaN without any), "mean_distance": attention-weighted mean Euclidean distance to the grid keys in
    cells, "uniform_local_mass" / "uniform_mean_distance": the same for uniform attention over the
    visible grid keys (the chance level), "queries": query slots averaged}.
    """
    if maps.ndim != 5 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"maps must be (layers, B, heads, T, T), but got shape {tuple(maps.shape)}")
    if k < 1 or k % 2 == 0:
        raise ValueError(f"k must be a positive odd neighbourhood side, but got k={k}; try 3 or 5")
    T = maps.shape[-1]
    offset = class_tokens
    if positions.shape != (T - offset, 2):
        raise ValueError(
            f"positions must be (T - class_tokens, 2) = ({T - offset}, 2) grid cells of the slots after the "
            f"{class_tokens} class slot(s), but got {tuple(positions.shape)}; for an ARGenerator pass the scan "
            f"positions [:T - 1] with class_tokens=1"
        )
    device = maps.device
    grid = positions.to(device, torch.float64)  # (G, 2), G = T - offset
    queries = torch.arange(offset, T, device=device)  # grid query slots
    if max_queries is not None and len(queries) > max_queries:
        generator = torch.Generator().manual_seed(seed)
        queries = queries[torch.randperm(len(queries), generator=generator)[:max_queries].sort().values.to(device)]
    query_cells = grid[queries - offset]  # (Q, 2)
    delta = query_cells[:, None, :] - grid[None, :, :]  # (Q, G, 2)
    distance = delta.pow(2).sum(-1).sqrt()  # (Q, G) Euclidean, in cells
    local = (delta.abs() <= k // 2).all(-1).to(torch.float64)  # (Q, G) Chebyshev neighbourhood
    key_slots = torch.arange(T, device=device)
    visible = key_slots[None, :] <= queries[:, None] if causal else torch.ones(len(queries), T, dtype=torch.bool,
                                                                                  device=device)  # (Q, T)
    grid_visible = visible[:, offset:].to(torch.float64)  # (Q, G)
    uniform = grid_visible / grid_visible.sum(-1, keepdim=True)  # (Q, G)
    uniform_local = float((uniform * local).sum(-1).mean())
    uniform_distance = float((uniform * distance).sum(-1).mean())

    results = []
    for layer in range(maps.shape[0]):
        rows = maps[layer][:, :, queries].to(torch.float64) * visible  # (B, H, Q, T), hidden keys dropped
        rows = rows / rows.sum(-1, keepdim=True).clamp_min(1e-300)  # renormalised over visible keys
        grid_rows = rows[..., offset:]  # (B, H, Q, G)
        grid_rows = grid_rows / grid_rows.sum(-1, keepdim=True).clamp_min(1e-300)  # grid keys sum to 1
        results.append({
            "layer": layer,
            "local_mass": float((grid_rows * local).sum(-1).mean()),
            "class_mass": float(rows[..., :offset].sum(-1).mean()) if offset else float("nan"),
            "mean_distance": float((grid_rows * distance).sum(-1).mean()),
            "uniform_local_mass": uniform_local,
            "uniform_mean_distance": uniform_distance,
            "queries": len(queries),
        })
    return results

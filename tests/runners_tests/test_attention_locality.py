"""Tests of runners/analysis/attention.py: recorded attention maps of the AR generator, locality numbers."""

from __future__ import annotations

import math

import pytest
import torch

from runners.analysis.attention import attention_maps, locality
from runners.generators.ar import ARGenerator, GeneratorConfig, raster_positions
from runners.scan import scan_positions


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _grid_3x3() -> torch.Tensor:
    return raster_positions(3, 3)  # (9, 2)


# ----------------------------------------------------------------------------------------------------------------
# locality on hand-set maps


def test_all_mass_on_self_is_local_at_distance_zero() -> None:
    maps = torch.eye(9).expand(2, 1, 3, 9, 9)  # (layers, B, heads, T, T), no class token
    for row in locality(maps, _grid_3x3(), k=3, causal=False, class_tokens=0):
        assert row["local_mass"] == 1.0
        assert row["mean_distance"] == 0.0
        assert math.isnan(row["class_mass"])
        assert row["queries"] == 9
    assert [row["layer"] for row in locality(maps, _grid_3x3(), causal=False, class_tokens=0)] == [0, 1]


def test_uniform_bidirectional_on_3x3() -> None:
    # Uniform attention over all 9 cells, k = 3 (the 8 neighbours and the cell itself are local):
    # a corner sees 4 local cells, an edge 6, the centre 9 -> mean (4*4 + 4*6 + 9) / 81 = 49/81.
    # Mean distance: per axis, of the 9 ordered cell pairs 3 differ by 0, 4 by 1, 2 by 2; over both axes
    # sum n(a) n(b) sqrt(a^2 + b^2) = 24 + 24 + 16 sqrt2 + 16 sqrt5 + 4 sqrt8 = 117.718213 -> / 81 = 1.4533113.
    maps = torch.full((1, 1, 2, 9, 9), 1.0 / 9)
    (row,) = locality(maps, _grid_3x3(), k=3, causal=False, class_tokens=0)
    assert row["local_mass"] == pytest.approx(49 / 81, abs=1e-12)
    assert row["mean_distance"] == pytest.approx(1.4533113, abs=1e-7)
    assert row["uniform_local_mass"] == pytest.approx(49 / 81, abs=1e-12)  # the chance level is this map
    assert row["uniform_mean_distance"] == pytest.approx(1.4533113, abs=1e-7)
    (wide,) = locality(maps, _grid_3x3(), k=5, causal=False, class_tokens=0)
    assert wide["local_mass"] == pytest.approx(1.0, abs=1e-12)  # 5 x 5 covers the whole 3 x 3 grid


def test_uniform_causal_with_class_token_on_a_row() -> None:
    # Slots: 0 class token, 1..3 the cells (0,0), (0,1), (0,2). Uniform maps over all 4 slots, made causal:
    # slot 1 sees {class, (0,0)}: class 1/2, local 1, distance 0;
    # slot 2 sees {class, (0,0), (0,1)}: class 1/3, grid keys 1/2 each: local 1, distance 1/2;
    # slot 3 sees all: class 1/4, grid keys 1/3 each: local 2/3 ((0,0) is 2 columns away), distance 1.
    # Means: class (1/2 + 1/3 + 1/4) / 3 = 13/36, local (1 + 1 + 2/3) / 3 = 8/9, distance 1/2.
    maps = torch.full((1, 1, 1, 4, 4), 0.25)
    positions = torch.tensor([[0, 0], [0, 1], [0, 2]])
    (row,) = locality(maps, positions, k=3, causal=True, class_tokens=1)
    assert row["class_mass"] == pytest.approx(13 / 36, abs=1e-12)
    assert row["local_mass"] == pytest.approx(8 / 9, abs=1e-12)
    assert row["mean_distance"] == pytest.approx(0.5, abs=1e-12)
    assert row["queries"] == 3


def test_far_attention_and_query_sampling() -> None:
    # Every cell (r, c) of a 4 x 4 grid attends only to the opposite cell (3 - r, 3 - c).
    grid = raster_positions(4, 4)  # (16, 2)
    opposite = (3 - grid[:, 0]) * 4 + (3 - grid[:, 1])  # (16,) flat index of the opposite cell
    maps = torch.zeros(1, 1, 1, 16, 16)
    maps[0, 0, 0, torch.arange(16), opposite] = 1.0
    (row,) = locality(maps, grid, k=3, causal=False, class_tokens=0)
    # |d| per axis is |3 - 2r|: 3 or 1 -> distances sqrt(9+9), sqrt(9+1) x2, sqrt(1+1), 4 cells each.
    expected = (4 * math.sqrt(18) + 8 * math.sqrt(10) + 4 * math.sqrt(2)) / 16
    assert row["mean_distance"] == pytest.approx(expected, abs=1e-12)
    assert row["local_mass"] == pytest.approx(4 / 16, abs=1e-12)  # only the 4 centre cells are 1 step away
    sampled = locality(maps, grid, k=3, causal=False, class_tokens=0, max_queries=5, seed=1)
    assert sampled[0]["queries"] == 5
    again = locality(maps, grid, causal=False, class_tokens=0, max_queries=5, seed=1)
    assert again[0]["mean_distance"] == sampled[0]["mean_distance"]  # seeded: the same 5 queries
    assert again[0]["local_mass"] == sampled[0]["local_mass"]


def test_several_class_slots_as_the_authors_mlm_has_them() -> None:
    # T = 2 class slots + 2 grid cells side by side, uniform bidirectional attention: half the mass on the class
    # slots, the grid mass split evenly between the query's own cell (local) and its neighbour (local at k=3)
    maps = torch.full((1, 1, 1, 4, 4), 0.25)
    (row,) = locality(maps, torch.tensor([[0, 0], [0, 1]]), k=3, causal=False, class_tokens=2)
    assert row["class_mass"] == pytest.approx(0.5)
    assert row["local_mass"] == pytest.approx(1.0) and row["mean_distance"] == pytest.approx(0.5)
    assert row["queries"] == 2


def test_locality_rejects_bad_inputs() -> None:
    maps = torch.full((1, 1, 1, 4, 4), 0.25)
    with pytest.raises(ValueError, match=r"positions must be \(T - class_tokens, 2\) = \(3, 2\)"):
        locality(maps, torch.zeros(4, 2), causal=True)
    with pytest.raises(ValueError, match="odd"):
        locality(maps, torch.zeros(3, 2), k=2, causal=True)


# ----------------------------------------------------------------------------------------------------------------
# maps recorded from a tiny ARGenerator


def test_attention_maps_of_a_tiny_generator_reproduce_the_module_output() -> None:
    torch.manual_seed(0)
    config = GeneratorConfig(size="tiny", grid_height=4, grid_width=4, token_each=2, bits_each=3, num_classes=10)
    model = ARGenerator(config)
    for parameter in model.heads.parameters():  # non-zero heads: a less trivial function
        torch.nn.init.normal_(parameter, std=0.02)
    model.train()  # attention_maps must switch dropout off and give the mode back
    ids = torch.randint(0, 8, (3, 16, 2))
    labels = torch.tensor([0, 4, 9])
    positions = scan_positions("row_zigzag", 4, 4)  # (16, 2)

    # Record each Attention's inputs and output through our own hooks, in the same eval-mode forward.
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    handles = [
        block.attention.register_forward_hook(
            lambda module, args, kwargs, output: seen.append((args[0], args[1], output)), with_kwargs=True)
        for block in model.blocks
    ]
    maps = attention_maps(model, ids, labels, positions)
    for handle in handles:
        handle.remove()

    assert model.training  # mode restored
    assert all(not block.attention._forward_hooks for block in model.blocks)  # its hooks are gone
    T = 16  # class token + tokens 0..14
    assert maps.shape == (2, 3, 4, T, T) and maps.dtype == torch.float32
    assert torch.allclose(maps.sum(-1), torch.ones(2, 3, 4, T), atol=1e-6)
    assert torch.all(maps.triu(diagonal=1) == 0)  # causal: no slot sees a later one

    for layer, (x, angles, output) in enumerate(seen):
        attention = model.blocks[layer].attention
        B, _, C = x.shape
        v = attention.qkv(x).split(C, dim=-1)[2].view(B, T, attention.heads, attention.head_dim).transpose(1, 2)
        y = (maps[layer] @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        assert torch.allclose(attention.proj(y), output, atol=1e-5), layer

    rows = locality(maps, positions[: T - 1], k=3, causal=True, class_tokens=1)
    assert len(rows) == 2
    for row in rows:
        assert 0.0 < row["class_mass"] < 1.0
        assert 0.0 < row["local_mass"] <= 1.0 and row["mean_distance"] >= 0.0
        assert row["queries"] == 15

"""Contracts of runners/sampling.py: CFG arithmetic and schedules, logit filtering, and the AR sampler.

The MLM decoder's tests live in test_generator_mlm.py, the KV cache's in test_kv_cache.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from runners.generators import ARGenerator, GeneratorConfig
from runners.generators.ar import raster_positions
from runners.sampling import (
    CFG_SCHEDULES,
    SAMPLING_CODE_VERSION,
    cfg_logits,
    cfg_scale_at,
    filter_logits,
    sample_ar,
)
from runners.train_generator import train_generator

torch.set_num_threads(1)
INF = float("inf")


def random_model(token_each: int = 2, bits_each: int = 5, std: float = 0.1, seed: int = 0) -> ARGenerator:
    """Tiny AR model with random (not zero) heads so that its logits carry information."""
    torch.manual_seed(seed)
    model = ARGenerator(GeneratorConfig("tiny", 4, 4, token_each, bits_each, num_classes=5))
    with torch.no_grad():
        for head in model.heads:
            head.weight.normal_(0.0, std)
    return model.eval()


# ------------------------------------------------------------------ pure functions
def test_cfg_logits_literal() -> None:
    cond, uncond = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(cfg_logits(cond, uncond, 3.0), torch.tensor([4.0, -2.0]))
    torch.testing.assert_close(cfg_logits(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_logits(cond, uncond, 0.0), uncond)
    with pytest.raises(ValueError, match="same shape"):
        cfg_logits(cond, torch.zeros(3), 2.0)


# s = 4, N = 4, t = 0..3 (r = 0.25, 0.5, 0.75, 1), values computed by hand from ELM.md's formulas
@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("constant", [4.0, 4.0, 4.0, 4.0]),
        ("linear", [1.75, 2.5, 3.25, 4.0]),
        ("cosine", [2.148050, 3.121320, 3.771639, 4.0]),
        ("log", [2.072122, 2.860344, 3.483967, 4.0]),
        ("square", [1.1875, 1.75, 2.6875, 4.0]),
        ("square_root", [1.0, 2.5, 3.121320, 3.598076]),  # uses t/N: starts at 1, never reaches s
        ("powercos", [1.439340, 2.5, 3.560660, 4.0]),  # p = 1: 1 + 3 (1 - cos(pi r)) / 2
    ],
)
def test_cfg_schedules_literal(schedule: str, expected: list[float]) -> None:
    assert [cfg_scale_at(schedule, 4.0, t, 4) for t in range(4)] == pytest.approx(expected, abs=1e-6)


def test_powercos_power_literal() -> None:
    # p = 2: r^2 = 1/16, 1/4, 9/16, 1 -> 1 + 3 (1 - cos(pi r^2)) / 2
    assert [cfg_scale_at("powercos", 4.0, t, 4, power=2.0) for t in range(4)] == pytest.approx(
        [1.028822, 1.439340, 2.792636, 4.0], abs=1e-6)
    assert cfg_scale_at("linear", 4.0, 0, 4, power=2.0) == 1.75  # the other schedules ignore p
    with pytest.raises(ValueError, match="cfg_power must be > 0"):
        cfg_scale_at("powercos", 4.0, 0, 4, power=0.0)


def test_cfg_schedule_registry_and_errors() -> None:
    assert sorted(CFG_SCHEDULES) == ["constant", "cosine", "linear", "log", "powercos", "square", "square_root"]
    assert all(cfg_scale_at(name, 1.0, t, 5) == pytest.approx(1.0) for name in CFG_SCHEDULES for t in range(5))
    with pytest.raises(ValueError, match=r"cfg_schedule must be one of \['constant', .*but got 'exp'"):
        cfg_scale_at("exp", 4.0, 0, 4)
    with pytest.raises(ValueError, match=r"step t must lie in \[0, N=4\)"):
        cfg_scale_at("linear", 4.0, 4, 4)
    assert SAMPLING_CODE_VERSION == "sampling-3"


def test_filter_logits_top_p_literal() -> None:
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()  # probabilities 0.5, 0.3, 0.15, 0.05
    kept = lambda out: torch.isfinite(out).tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_p=0.45)) == [True, False, False, False]  # 0.5 alone reaches 0.45
    assert kept(filter_logits(logits, top_p=0.7)) == [True, True, False, False]  # 0.5 + 0.3 = 0.8 >= 0.7
    assert kept(filter_logits(logits, top_p=0.81)) == [True, True, True, False]
    assert kept(filter_logits(logits, top_p=1.0)) == [True] * 4  # off
    assert kept(filter_logits(logits, top_p=1e-9)) == [True, False, False, False]  # the top id always stays
    torch.testing.assert_close(filter_logits(logits, top_p=0.7)[:2], logits[:2])  # survivors unchanged
    # after temperature: T = 2 flattens to ~0.379, 0.294, 0.208, 0.120, so 0.7 now needs three ids
    assert kept(filter_logits(logits, temperature=2.0, top_p=0.7)) == [True, True, True, False]
    # after top-k: k = 2 renormalises to 0.625, 0.375, so 0.6 needs one id (without top-k it needs two)
    assert kept(filter_logits(logits, top_k=2, top_p=0.6)) == [True, False, False, False]
    assert kept(filter_logits(logits, top_p=0.6)) == [True, True, False, False]
    # per row (one row per sub-token head), vocabulary order restored after sorting
    rows = torch.tensor([[0.05, 0.15, 0.3, 0.5], [0.3, 0.5, 0.05, 0.15]]).log()
    assert kept(filter_logits(rows, top_p=0.7)) == [[False, False, True, True], [True, True, False, False]]
    with pytest.raises(ValueError, match=r"top_p must lie in \(0, 1\]"):
        filter_logits(logits, top_p=0.0)
    with pytest.raises(ValueError, match=r"top_p must lie in \(0, 1\]"):
        filter_logits(logits, top_p=1.5)


def test_filter_logits_temperature_literal() -> None:
    out = filter_logits(torch.tensor([2.0, 1.0, -4.0]), temperature=2.0)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.5, -2.0]))


def test_filter_logits_top_k_keeps_exactly_k() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0], [5.0, 4.0, 3.0, 6.0]])
    out = filter_logits(logits, top_k=2)
    torch.testing.assert_close(out, torch.tensor([[-INF, 3.0, -INF, 2.0], [5.0, -INF, -INF, 6.0]]))
    tied = filter_logits(torch.ones(3, 7), top_k=3)  # ties: still exactly k survive per row
    assert torch.isfinite(tied).sum(-1).tolist() == [3, 3, 3]


def test_filter_logits_temperature_then_top_k_and_caps() -> None:
    logits = torch.tensor([3.0, -1.0, 2.0])
    torch.testing.assert_close(filter_logits(logits, temperature=2.0, top_k=2), torch.tensor([1.5, -INF, 1.0]))
    torch.testing.assert_close(filter_logits(logits, top_k=0), logits)  # off
    torch.testing.assert_close(filter_logits(logits, top_k=10), logits)  # k capped at V
    with pytest.raises(ValueError, match="temperature must be > 0"):
        filter_logits(logits, temperature=0.0)
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        filter_logits(logits, top_k=-1)


# ------------------------------------------------------------------ sampler on random models
def test_sample_ar_deterministic_and_in_range() -> None:
    model = random_model(token_each=2, bits_each=5)
    labels = torch.tensor([0, 1, 2, 5])  # 5 = null class is allowed
    a = sample_ar(model, labels, cfg_scale=2.0, top_k=8, generator=torch.Generator().manual_seed(7))
    b = sample_ar(model, labels, cfg_scale=2.0, top_k=8, generator=torch.Generator().manual_seed(7))
    c = sample_ar(model, labels, cfg_scale=2.0, top_k=8, generator=torch.Generator().manual_seed(8))
    assert a.shape == (4, 16, 2) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 32


def test_top_k_1_is_greedy() -> None:
    model = random_model(token_each=2, bits_each=5, std=0.5)
    labels = torch.tensor([0, 3, 4])
    null = torch.full_like(labels, 5)
    ids = sample_ar(model, labels, top_k=1, generator=torch.Generator().manual_seed(0))
    # every sampled token is the argmax of the teacher-forced logits given its own prefix
    assert torch.equal(model(ids, labels).argmax(-1), ids)
    guided = sample_ar(model, labels, cfg_scale=3.0, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(cfg_logits(model(guided, labels), model(guided, null), 3.0).argmax(-1), guided)
    assert not torch.equal(guided, ids)  # guidance changed some choices


def test_sample_ar_tiny_top_p_is_greedy() -> None:
    model = random_model(token_each=2, bits_each=5, std=0.5)
    labels = torch.tensor([0, 3, 4])
    nucleus = sample_ar(model, labels, top_p=1e-6, generator=torch.Generator().manual_seed(0))
    greedy = sample_ar(model, labels, top_k=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(nucleus, greedy)


def test_sample_ar_custom_positions_consistent_with_model() -> None:
    model = random_model(token_each=1, bits_each=5, std=0.5)
    labels = torch.tensor([1, 2])
    positions = raster_positions(4, 4)[:, [1, 0]]  # column-major coordinates
    ids = sample_ar(model, labels, top_k=1, positions=positions, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(ids, labels, positions=positions).argmax(-1), ids)


def test_sample_ar_restores_mode_and_validates() -> None:
    model = random_model()
    model.train()
    sample_ar(model, torch.tensor([0]), generator=torch.Generator().manual_seed(0))
    assert model.training
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=5\]"):
        sample_ar(model, torch.tensor([6]), generator=torch.Generator())
    with pytest.raises(ValueError, match=r"labels must have shape \(B,\)"):
        sample_ar(model, torch.zeros(2, 1, dtype=torch.long), generator=torch.Generator())


class GuidanceProbe(nn.Module):
    """Stub decoder: logits [2, 0] for a real class, [1, 1] for the null class, at every position."""

    def __init__(self) -> None:
        super().__init__()
        self.config = GeneratorConfig("tiny", 1, 3, token_each=1, bits_each=1, num_classes=4)
        self.batch_sizes: list[int] = []

    def next_logits(self, prefix: Tensor, labels: Tensor, *, positions: Tensor | None = None) -> Tensor:
        self.batch_sizes.append(prefix.shape[0])
        is_null = (labels == self.config.null_class).float().view(-1, 1, 1)
        cond = torch.tensor([2.0, 0.0]).expand(labels.shape[0], 1, 2)
        return is_null * torch.ones_like(cond) + (1 - is_null) * cond


def test_sample_ar_cfg_doubles_batch_with_null_class() -> None:
    probe = GuidanceProbe()
    labels = torch.tensor([0, 1])
    # s = -1: [1, 1] - 1 * ([2, 0] - [1, 1]) = [0, 2] -> greedy picks token 1 (conditional alone picks 0)
    ids = sample_ar(probe, labels, cfg_scale=-1.0, top_k=1, generator=torch.Generator().manual_seed(0),
                    kv_cache=False)
    assert ids.view(-1).tolist() == [1] * 6
    assert probe.batch_sizes == [4, 4, 4]
    probe.batch_sizes.clear()
    ids = sample_ar(probe, labels, cfg_scale=1.0, top_k=1, generator=torch.Generator().manual_seed(0),
                    kv_cache=False)
    assert ids.view(-1).tolist() == [0] * 6
    assert probe.batch_sizes == [2, 2, 2]  # no doubling without guidance
    # s = 3: [4, -2]; at temperature 1 token 0 has probability 1 / (1 + e^-6) ~ 0.9975
    many = torch.zeros(400, dtype=torch.long)
    ids = sample_ar(probe, many, cfg_scale=3.0, generator=torch.Generator().manual_seed(0), kv_cache=False)
    assert (ids == 0).float().mean() > 0.99
    with pytest.raises(TypeError, match="pass kv_cache=False"):
        sample_ar(probe, labels, generator=torch.Generator())


def test_sample_ar_cfg_schedule_per_position() -> None:
    # guided logits [1 + s, 1 - s]: greedy picks token 0 iff s_n > 0
    probe = GuidanceProbe()
    labels = torch.tensor([0])
    pick = lambda schedule: sample_ar(  # noqa: E731
        probe, labels, cfg_scale=-1.0, cfg_schedule=schedule, top_k=1, generator=torch.Generator(), kv_cache=False
    ).view(-1).tolist()
    assert pick("constant") == [1, 1, 1]  # s = -1 everywhere
    assert pick("linear") == [0, 1, 1]  # s_n = 1 - 2 (n+1)/3 = 1/3, -1/3, -1
    assert pick("square") == [0, 0, 1]  # s_n = 1 - 2 ((n+1)/3)^2 = 7/9, 1/9, -1
    assert pick("square_root") == [0, 1, 1]  # s_n = 1 - 2 sqrt(n/3) = 1, -0.15, -0.63


# ------------------------------------------------------------------ learning end to end
def test_tiny_model_learns_class_patterns_and_cfg_samples_them() -> None:
    """Each class owns a fixed 16-token pattern (vocabulary 256), 10% of tokens replaced by noise."""
    torch.manual_seed(0)
    config = GeneratorConfig("tiny", 4, 4, token_each=1, bits_each=8, num_classes=4, dropout=0.0)
    patterns = torch.randint(0, 256, (4, 16, 1), generator=torch.Generator().manual_seed(123))

    def batch_fn(step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = torch.randint(0, 4, (32,), generator=generator)
        ids = patterns[labels].clone()
        noise = torch.rand(ids.shape, generator=generator) < 0.1
        ids[noise] = torch.randint(0, 256, (int(noise.sum()),), generator=generator)
        return ids, labels

    result = train_generator(ARGenerator(config), batch_fn, steps=200, lr=3e-3, seed=0)
    assert abs(result.initial_loss - math.log(256)) < 1e-3
    assert result.final_loss < 0.5 * math.log(256)  # ~0.95 here; the noise floor is ~0.88

    labels = torch.arange(4).repeat(16)  # (64,)
    ids = sample_ar(result.model, labels, cfg_scale=3.0, generator=torch.Generator().manual_seed(1))
    match = (ids == patterns[labels]).float()
    assert match.mean() > 0.5  # chance is 1/256
    assert match[:, 0].mean() > 0.9  # position 0 sees only the class token: guidance decides it

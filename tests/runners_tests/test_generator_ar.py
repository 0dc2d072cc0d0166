"""Contracts of the AR generator (runners/generators), its shared layers and the training loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from runners.generators import GENERATOR_SIZES, GENERATORS, ARGenerator, GeneratorConfig, GeneratorSize
from runners.generators.ar import parameter_count, raster_positions
from runners.generators.layers import apply_rotary, rotary_angles_2d, rotation_table, swiglu_hidden
from runners.train_generator import _optimizer, evaluate_loss, train_generator

torch.set_num_threads(1)


def tiny_config(token_each: int = 1, bits_each: int = 8, **kwargs) -> GeneratorConfig:
    defaults = dict(grid_height=4, grid_width=4, num_classes=10)
    defaults.update(kwargs)
    return GeneratorConfig("tiny", token_each=token_each, bits_each=bits_each, **defaults)


def random_heads(model: ARGenerator, std: float = 0.1) -> ARGenerator:
    """Zero-initialised heads make every logit equal; give them weights so outputs carry information."""
    with torch.no_grad():
        for head in model.heads:
            head.weight.normal_(0.0, std)
    return model.eval()


def random_batch(config: GeneratorConfig, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, config.seq_len, config.token_each), generator=g)
    labels = torch.randint(0, config.num_classes, (batch,), generator=g)
    return ids, labels


# ------------------------------------------------------------------ sizes and config
def test_size_registry_paper_rungs() -> None:
    assert GENERATOR_SIZES["L"] == GeneratorSize(24, 1024, 16)
    assert GENERATOR_SIZES["XL"] == GeneratorSize(36, 1280, 20)
    assert GENERATOR_SIZES["XXL"] == GeneratorSize(48, 1536, 24)
    assert GENERATOR_SIZES["2B"] == GeneratorSize(48, 1792, 28)
    assert GENERATOR_SIZES["small"] == GeneratorSize(4, 256, 4)
    for name in ("L", "XL", "XXL", "2B", "small"):
        size = GENERATOR_SIZES[name]
        assert size.width // size.heads == 64, name


def test_unknown_size_names_valid_choices() -> None:
    with pytest.raises(ValueError, match=r"size must be one of .*'2B'.*'tiny'.*but got size='huge'"):
        GeneratorConfig("huge", 4, 4, 1, 8, 10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bits_each=0), "bits_each must be a positive int"),
        (dict(token_each=0), "token_each must be a positive int"),
        (dict(grid_height=0), "grid_height must be a positive int"),
        (dict(dropout=1.0), r"dropout must lie in \[0, 1\)"),
        (dict(class_dropout=-0.1), r"class_dropout must lie in \[0, 1\]"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    base = dict(size="tiny", grid_height=4, grid_width=4, token_each=1, bits_each=8, num_classes=10)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GeneratorConfig(**base)


def test_config_derived_quantities() -> None:
    config = GeneratorConfig("L", 16, 16, token_each=2, bits_each=10, num_classes=1000)
    assert (config.layers, config.width, config.heads, config.head_dim) == (24, 1024, 16, 64)
    assert config.vocab_size == 1024
    assert config.seq_len == 256
    assert config.null_class == 1000


# ------------------------------------------------------------------ layers
def test_swiglu_hidden_rounds_up_to_256() -> None:
    widths = [64, 256, 1024, 1280, 1536, 1792]
    assert [swiglu_hidden(w) for w in widths] == [256, 768, 2816, 3584, 4096, 4864]


def test_rotary_angles_literal() -> None:
    # head_dim 8: 2 pairs rotate with the row, 2 with the column; frequencies 10000^(-i/2) = 1, 0.01
    angles = rotary_angles_2d(torch.tensor([[1, 0], [0, 2], [3, 5]]), head_dim=8)
    expected = torch.tensor([[1.0, 0.01, 0.0, 0.0], [0.0, 0.0, 2.0, 0.02], [3.0, 0.03, 5.0, 0.05]])
    torch.testing.assert_close(angles, expected)


def test_apply_rotary_literal() -> None:
    x = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 8)
    angles = torch.tensor([[1.0, 0.5, 0.0, 0.0]])  # (T=1, D/2=4)
    out = apply_rotary(x, rotation_table(angles)).view(8)
    # pair 0 (1, 0) by 1 rad -> (cos 1, sin 1); pair 1 (0, 1) by 0.5 rad -> (-sin .5, cos .5); rest identity
    expected = torch.tensor([0.5403023, 0.8414710, -0.4794255, 0.8775826, 1.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(out, expected)


def test_rotary_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pos_q: list[int], pos_k: list[int]) -> torch.Tensor:
        rq = apply_rotary(q, rotation_table(rotary_angles_2d(torch.tensor([pos_q]), 16)))
        rk = apply_rotary(k, rotation_table(rotary_angles_2d(torch.tensor([pos_k]), 16)))
        return (rq * rk).sum()

    torch.testing.assert_close(score([2, 3], [1, 1]), score([7, 9], [6, 7]))
    assert not torch.allclose(score([2, 3], [1, 1]), score([2, 3], [1, 2]))  # column offset matters
    assert not torch.allclose(score([2, 3], [1, 1]), score([2, 3], [0, 1]))  # row offset matters


def test_raster_positions() -> None:
    assert raster_positions(2, 3).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


# ------------------------------------------------------------------ parameter count
@pytest.mark.parametrize(
    "config",
    [
        tiny_config(1, 8),
        tiny_config(2, 4, num_classes=3),
        tiny_config(3, 5, grid_height=2, grid_width=5),
        GeneratorConfig("small", 2, 2, token_each=2, bits_each=6, num_classes=7),
    ],
)
def test_parameter_count_matches_model(config: GeneratorConfig) -> None:
    model = ARGenerator(config)
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "size, vocab, count",
    [  # every released AR generator; sum(p.numel()) of the authors' module (llama/ar_model.py at c2f29f0,
        # built on the meta device with 1000 classes, block_size 256), read once by hand
        ("L", "1-16", 443_574_272), ("L", "2-8", 312_502_272), ("L", "2-10", 315_648_000), ("L", "2-12", 328_230_912),
        ("XL", "1-16", 900_528_640), ("XL", "2-8", 737_344_000), ("XL", "2-10", 741_276_160),
        ("XL", "2-12", 757_004_800), ("XXL", "1-16", 1_561_967_616), ("XXL", "2-10", 1_371_651_072),
        ("XXL", "2-12", 1_390_525_440), ("2B", "2-12", 1_909_458_432),
    ],
)
def test_parameter_count_equals_the_authors(size: str, vocab: str, count: int) -> None:
    K, c = map(int, vocab.split("-"))
    assert parameter_count(GeneratorConfig(size, 16, 16, token_each=K, bits_each=c, num_classes=1000)) == count


def test_parameter_count_paper_literals() -> None:
    l_config = GeneratorConfig("L", 16, 16, token_each=2, bits_each=10, num_classes=1000)
    with torch.device("meta"):
        model = ARGenerator(l_config)
    assert sum(p.numel() for p in model.parameters()) == 315_648_000


def test_registry_entry() -> None:
    entry = GENERATORS["ar"]
    config = tiny_config(2, 4)
    model = entry.build(config)
    assert isinstance(model, ARGenerator)
    assert entry.parameter_count(config) == sum(p.numel() for p in model.parameters())
    assert entry.code_version == "ar-2"


# ------------------------------------------------------------------ forward behaviour
@pytest.mark.parametrize("token_each, bits_each", [(1, 8), (2, 10)])
def test_initial_loss_is_log_vocab(token_each: int, bits_each: int) -> None:
    torch.manual_seed(0)
    config = tiny_config(token_each, bits_each)
    model = ARGenerator(config)  # train mode: dropout on, still uniform logits
    ids, labels = random_batch(config, 8)
    logits = model(ids, labels)
    assert logits.shape == (8, 16, token_each, 2**bits_each)
    expected = {8: 5.545177, 10: 6.931472}[bits_each]  # ln 256, ln 1024
    assert abs(model.loss(ids, labels).item() - expected) < 1e-3


def test_init_statistics() -> None:
    torch.manual_seed(0)
    model = ARGenerator(GeneratorConfig("small", 4, 4, token_each=2, bits_each=8, num_classes=10))
    assert all(int(torch.count_nonzero(h.weight)) == 0 for h in model.heads)
    std = model.blocks[0].mlp.w1.weight.std().item()
    assert abs(std - 0.02) < 0.001
    assert torch.equal(model.norm.weight, torch.ones(256))
    assert all(not isinstance(m, nn.Linear) or m.bias is None for m in model.modules())


@pytest.mark.parametrize("token_each", [1, 2])
def test_causality(token_each: int) -> None:
    torch.manual_seed(0)
    config = tiny_config(token_each, 6)
    model = random_heads(ARGenerator(config))
    ids, labels = random_batch(config, 3)
    base = model(ids, labels)
    for j in (0, 5, 15):
        changed = ids.clone()
        changed[:, j] = (changed[:, j] + 1) % config.vocab_size
        out = model(changed, labels)
        # logits[:, n] predict token n from tokens < n: positions <= j cannot see the change
        torch.testing.assert_close(out[:, : j + 1], base[:, : j + 1], rtol=0, atol=1e-6)
        if j < config.seq_len - 1:
            assert (out[:, j + 1 :] - base[:, j + 1 :]).abs().amax(dim=(0, 2, 3)).min() > 1e-6


def test_next_logits_matches_teacher_forcing() -> None:
    torch.manual_seed(0)
    config = tiny_config(2, 5)
    model = random_heads(ARGenerator(config))
    ids, labels = random_batch(config, 2)
    positions = raster_positions(4, 4).flip(0)  # a non-raster order (reverse raster)
    full = model(ids, labels, positions=positions)
    for n in (0, 1, 7, 15):
        step = model.next_logits(ids[:, :n], labels, positions=positions)  # (B, K, V)
        torch.testing.assert_close(step, full[:, n], atol=1e-5, rtol=0)


def test_positions_default_raster_and_used() -> None:
    torch.manual_seed(0)
    config = tiny_config(1, 6)
    model = random_heads(ARGenerator(config))
    ids, labels = random_batch(config, 2)
    default = model(ids, labels)
    torch.testing.assert_close(model(ids, labels, positions=raster_positions(4, 4)), default)
    column_major = raster_positions(4, 4)[:, [1, 0]]
    # token 0 sits at (0, 0) in both orders and the class slot is unrotated: position 0 and 1 agree
    other = model(ids, labels, positions=column_major)
    torch.testing.assert_close(other[:, :2], default[:, :2], atol=1e-6, rtol=0)
    assert (other[:, 2:] - default[:, 2:]).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"positions must have shape \(N, 2\) = \(16, 2\)"):
        model(ids, labels, positions=raster_positions(2, 2))


def test_shape_errors() -> None:
    config = tiny_config(2, 4)
    model = ARGenerator(config)
    with pytest.raises(ValueError, match="ids must have shape"):
        model(torch.zeros(2, 16, 1, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have shape"):
        model(torch.zeros(2, 16, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_label_dropout_train_only_and_seeded() -> None:
    torch.manual_seed(0)
    config = tiny_config(1, 6, dropout=0.0, class_dropout=1.0)
    model = random_heads(ARGenerator(config))
    ids, labels = random_batch(config, 4)
    null = torch.full_like(labels, config.null_class)
    model.train()
    torch.testing.assert_close(model(ids, labels), model(ids, null))  # every label dropped
    model.eval()
    assert (model(ids, labels) - model(ids, null)).abs().max() > 1e-4  # eval: labels kept

    half = ARGenerator(tiny_config(1, 6, dropout=0.0, class_dropout=0.5))
    random_heads(half).train()
    many_ids, many_labels = random_batch(config, 64)
    a = half(many_ids, many_labels, generator=torch.Generator().manual_seed(3))
    b = half(many_ids, many_labels, generator=torch.Generator().manual_seed(3))
    c = half(many_ids, many_labels, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def pattern_task(config: GeneratorConfig, noise: float = 0.1):
    """Each class owns a fixed token pattern; each token is replaced by a uniform one w.p. `noise`."""
    patterns = torch.randint(0, config.vocab_size, (config.num_classes, config.seq_len, config.token_each),
                             generator=torch.Generator().manual_seed(123))

    def batch_fn(step: int, generator: torch.Generator, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, config.num_classes, (batch,), generator=generator)
        ids = patterns[labels].clone()
        replace = torch.rand(ids.shape, generator=generator) < noise
        ids[replace] = torch.randint(0, config.vocab_size, (int(replace.sum()),), generator=generator)
        return ids, labels

    return patterns, batch_fn


def test_class_conditioning_after_training() -> None:
    torch.manual_seed(0)
    config = tiny_config(1, 6, num_classes=4)
    model = ARGenerator(config)
    ids = torch.zeros(4, 16, 1, dtype=torch.long)
    labels = torch.arange(4)
    model.eval()
    before = model(ids, labels)[:, 0]  # zero heads: identical for every class
    torch.testing.assert_close(before[0], before[1])
    _, batch_fn = pattern_task(config)
    result = train_generator(model, batch_fn, steps=30, lr=3e-3, seed=0)
    after = result.model(ids, labels)[:, 0]  # first position: only the class token is visible
    assert (after[0] - after[1]).abs().max() > 0.1
    assert (after.argmax(-1) != after[0].argmax(-1)).any()


# ------------------------------------------------------------------ training loop
def test_train_generator_deterministic_and_logs() -> None:
    config = tiny_config(2, 4, num_classes=3)
    _, batch_fn = pattern_task(config)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        logs: list[tuple[int, dict[str, float]]] = []
        result = train_generator(ARGenerator(config), batch_fn, steps=12, lr=1e-3, seed=5, warmup_steps=4,
                                 log_every=5, on_log=lambda step, metrics: logs.append((step, metrics)))
        runs.append((result, logs))
    (a, logs), (b, _) = runs
    assert a.losses == b.losses
    assert [step for step, _ in a.losses] == list(range(12))
    assert abs(a.initial_loss - math.log(16)) < 1e-3
    assert a.final_loss == pytest.approx(a.losses[-1][1])  # last 10% of 12 steps = 1 step
    assert [step for step, _ in logs] == [4, 9, 11]
    assert [m["lr"] for _, m in logs] == pytest.approx([1e-3, 1e-3, 1e-3])
    assert logs[0][1]["loss"] == pytest.approx(sum(v for _, v in a.losses[:5]) / 5)
    assert not a.model.training


def test_warmup_is_linear() -> None:
    config = tiny_config(1, 4, num_classes=2)
    _, batch_fn = pattern_task(config)
    lrs: list[float] = []
    train_generator(ARGenerator(config), batch_fn, steps=6, lr=1e-3, seed=0, warmup_steps=4, log_every=1,
                    on_log=lambda step, metrics: lrs.append(metrics["lr"]))
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_nan_loss_raises() -> None:
    config = tiny_config(1, 4)
    model = ARGenerator(config)
    with torch.no_grad():
        model.norm.weight.fill_(float("nan"))
        model.heads[0].weight.fill_(1.0)
    _, batch_fn = pattern_task(config)
    with pytest.raises(FloatingPointError, match="loss is NaN at step 0"):
        train_generator(model, batch_fn, steps=5, lr=1e-3, seed=0)


def test_weight_decay_on_matrices_only() -> None:
    model = ARGenerator(tiny_config(2, 4))
    decay, no_decay = _optimizer(model, 1e-3, 0.05, (0.9, 0.95)).param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(no_decay["params"]) == 2 * 2 + 1  # two RMSNorms per block + final norm
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_ema_model_returned() -> None:
    config = tiny_config(1, 4, num_classes=2)
    _, batch_fn = pattern_task(config)
    torch.manual_seed(0)
    model = ARGenerator(config)
    initial = [p.detach().clone() for p in model.parameters()]
    result = train_generator(model, batch_fn, steps=5, lr=1e-2, seed=0, ema_decay=0.5)
    assert result.model is not model and not result.model.training
    for ema_p, p, p0 in zip(result.model.parameters(), model.parameters(), initial):
        # after 5 updates with decay 0.5 the EMA lies strictly between start and end for moved weights
        if not torch.equal(p, p0):
            assert not torch.equal(ema_p, p)
    moved = [not torch.equal(p, p0) for p, p0 in zip(model.parameters(), initial)]
    assert sum(moved) > len(moved) // 2
    # decay 0: the EMA is exactly the latest weights
    plain = ARGenerator(config)
    same = train_generator(plain, batch_fn, steps=3, lr=1e-2, seed=0, ema_decay=0.0)
    for ema_p, p in zip(same.model.parameters(), plain.parameters()):
        assert torch.equal(ema_p, p)


def test_hooks_run_on_schedule_and_leave_training_unchanged(tmp_path) -> None:
    from runners.checkpoint import Checkpointer

    config = tiny_config(1, 4, num_classes=2)
    _, batch_fn = pattern_task(config, noise=0.3)
    torch.manual_seed(0)
    plain = train_generator(ARGenerator(config), batch_fn, steps=10, lr=1e-2, seed=3, ema_decay=0.5)
    seen: list[tuple[int, bool, bool]] = []

    def hook(step: int, model: torch.nn.Module) -> bool:
        seen.append((step, model.training, torch.is_grad_enabled()))
        return False

    torch.manual_seed(0)
    hooked = train_generator(ARGenerator(config), batch_fn, steps=10, lr=1e-2, seed=3, ema_decay=0.5,
                             hooks=[(3, hook), (4, hook)])
    assert seen == [(3, False, False), (4, False, False), (6, False, False), (8, False, False), (9, False, False)]
    assert hooked.losses == plain.losses and hooked.stopped_at is None
    for a, b in zip(hooked.model.parameters(), plain.model.parameters()):
        assert torch.equal(a, b)

    # a hook that asks to stop ends training there; the checkpoint of that step is kept
    checkpointer = Checkpointer(tmp_path, every_steps=100)
    torch.manual_seed(0)
    stopped = train_generator(ARGenerator(config), batch_fn, steps=10, lr=1e-2, seed=3, checkpointer=checkpointer,
                              hooks=[(4, lambda step, model: step >= 8)])
    assert stopped.stopped_at == 8 and [s for s, _ in stopped.losses] == list(range(8))
    assert checkpointer.restore()["step"] == 8
    with pytest.raises(ValueError, match="interval must be >= 1"):
        train_generator(ARGenerator(config), batch_fn, steps=2, lr=1e-2, seed=0, hooks=[(0, hook)])


def test_evaluate_loss() -> None:
    torch.manual_seed(0)
    config = tiny_config(1, 8)
    model = random_heads(ARGenerator(config))
    model.train()
    ids, labels = random_batch(config, 10)
    full = evaluate_loss(model, ids, labels, batch_size=256)
    chunked = evaluate_loss(model, ids, labels, batch_size=3)
    assert chunked == pytest.approx(full, abs=1e-5)
    model.eval()
    assert full == pytest.approx(model.loss(ids, labels).item(), abs=1e-5)
    assert not model.training
    fresh = ARGenerator(config)
    assert evaluate_loss(fresh, ids, labels) == pytest.approx(5.545177, abs=1e-4)
    assert fresh.training  # mode restored

"""One contract suite run over every GENERATORS entry (diffusers-style): a new generator passes it or fails it.

Each entry must: build the tiny rung; start at loss ln(2**c) (within 1e-3 with uniform logits at init, as
AR's zero heads give; within INITIAL_LOSS_SLACK for entries whose init, like the authors' MLM head, gives
small non-zero logits); count its
parameters analytically and exactly; train one step to a finite, changed loss; sample ids of the
right shape and range through its uniform `sample(model, labels, knobs, generator, positions)`,
deterministically for a fixed seed and honouring scan positions; train under bf16 autocast.
The torch.compile agreement test runs the whole-model compile on CPU (inductor needs a C++ compiler; about
15 s per entry with a warm inductor cache, minutes on the first run of a machine).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from runners.generators import GENERATORS, GeneratorConfig, GeneratorEntry
from runners.scan import scan_positions
from runners.train_generator import evaluate_loss, train_generator
from runners.train_speed import cxx_compiler, is_compiled

torch.set_num_threads(1)

NAMES = sorted(GENERATORS)
# Every knob any entry reads, with a value; entries must ignore the ones they do not use.
KNOBS = {"cfg_scale": 2.0, "cfg_schedule": "linear", "temperature": 1.0, "top_k": 0, "top_p": 0.9,
         "mlm_steps": 4, "mlm_tau": 2.0, "unrelated_setting": "ignored"}
# how far above ln V the first loss may start: 0 for zero-initialised heads; the MLM head (the authors' init:
# LayerNorm gain 1, table N(0, 0.02)) gives logits of std ~0.02 sqrt(C) at init (0.16 on the tiny rung)
INITIAL_LOSS_SLACK = {"ar": 1e-3, "mlm": 0.05}


def test_suite_covers_the_whole_registry() -> None:
    assert NAMES == ["ar", "mlm"]  # frozen surface: adding an entry means extending this list (and passing below)
    assert all(isinstance(GENERATORS[name], GeneratorEntry) for name in NAMES)
    assert {name: GENERATORS[name].sample_knobs for name in NAMES} == {
        "ar": ("cfg_scale", "cfg_schedule", "temperature", "top_k", "top_p"),
        "mlm": ("cfg_scale", "cfg_schedule", "mlm_steps", "mlm_tau"),
    }
    assert all(set(GENERATORS[name].sample_knobs) <= set(KNOBS) for name in NAMES)
    assert all(dict(GENERATORS[name].optional_knobs) == {"cfg_power": 1.0} for name in NAMES)


def tiny_config(token_each: int = 2, bits_each: int = 4, **kwargs) -> GeneratorConfig:
    defaults = dict(grid_height=3, grid_width=3, num_classes=4)
    defaults.update(kwargs)
    return GeneratorConfig("tiny", token_each=token_each, bits_each=bits_each, **defaults)


def random_batch(config: GeneratorConfig, batch: int = 6, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, config.seq_len, config.token_each), generator=g)
    return ids, torch.randint(0, config.num_classes, (batch,), generator=g)


def batch_fn_for(config: GeneratorConfig):
    def batch_fn(step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        ids = torch.randint(0, config.vocab_size, (8, config.seq_len, config.token_each), generator=generator)
        return ids, torch.randint(0, config.num_classes, (8,), generator=generator)

    return batch_fn


@pytest.fixture(params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("token_each, bits_each", [(1, 6), (2, 4)])
def test_initial_loss_is_log_vocab(name: str, token_each: int, bits_each: int) -> None:
    torch.manual_seed(0)
    config = tiny_config(token_each, bits_each)
    model = GENERATORS[name].build(config)  # train mode: dropout and label dropout on
    ids, labels = random_batch(config)
    loss = model.loss(ids, labels, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and loss.dtype == torch.float32
    assert abs(loss.item() - math.log(2**bits_each)) < INITIAL_LOSS_SLACK[name]
    assert abs(evaluate_loss(model, ids, labels) - math.log(2**bits_each)) < INITIAL_LOSS_SLACK[name]


@pytest.mark.parametrize(
    "config",
    [tiny_config(1, 6), tiny_config(2, 4), tiny_config(3, 3, grid_height=2, grid_width=5, num_classes=2)],
    ids=["1-6", "2-4", "3-3"],
)
def test_parameter_count_is_exact(name: str, config: GeneratorConfig) -> None:
    entry = GENERATORS[name]
    assert entry.parameter_count(config) == sum(p.numel() for p in entry.build(config).parameters())


def test_one_training_step_changes_the_loss(name: str) -> None:
    torch.manual_seed(0)
    config = tiny_config()
    model = GENERATORS[name].build(config)
    before = [p.detach().clone() for p in model.parameters()]
    result = train_generator(model, batch_fn_for(config), steps=2, lr=1e-2, seed=0,
                             positions=scan_positions("column_zigzag", 3, 3))
    assert all(math.isfinite(v) for _, v in result.losses)
    assert result.losses[1][1] != result.losses[0][1]
    assert any(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), before))


def _trained_model(name: str, config: GeneratorConfig) -> torch.nn.Module:
    """A briefly trained tiny model, so that sampling sees non-uniform, class-dependent logits."""
    torch.manual_seed(0)
    result = train_generator(GENERATORS[name].build(config), batch_fn_for(config), steps=3, lr=3e-2, seed=0)
    return result.model


def test_sample_shape_range_and_determinism(name: str) -> None:
    config = tiny_config(2, 4)
    entry = GENERATORS[name]
    model = _trained_model(name, config)
    labels = torch.tensor([0, 1, 3, 4])  # 4 = null class is allowed
    positions = scan_positions("diagonal_zigzag", 3, 3)

    def draw(seed: int, knobs: dict = KNOBS, positions: Tensor | None = positions) -> Tensor:
        return entry.sample(model, labels, knobs, torch.Generator().manual_seed(seed), positions)

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (4, 9, 2) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < 16
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not model.training  # mode restored (eval, as train_generator returned it)
    missing = {k: v for k, v in KNOBS.items() if k != "cfg_scale"}
    with pytest.raises(ValueError, match=rf"sampling knobs for modeling '{name}' must hold .*'cfg_scale'"):
        draw(0, missing)


def test_positions_reach_the_model_when_sampling(name: str) -> None:
    config = tiny_config(1, 4, dropout=0.0)
    entry = GENERATORS[name]
    torch.manual_seed(0)
    model = entry.build(config).eval()
    with torch.no_grad():  # large random weights everywhere: sharp logits that depend on the rotary positions
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    labels = torch.arange(4).repeat(4)
    raster = entry.sample(model, labels, KNOBS, torch.Generator().manual_seed(0), None)
    same = entry.sample(model, labels, KNOBS, torch.Generator().manual_seed(0), scan_positions("raster", 3, 3))
    other = entry.sample(model, labels, KNOBS, torch.Generator().manual_seed(0), scan_positions("column", 3, 3))
    assert torch.equal(raster, same)  # None means raster
    assert not torch.equal(raster, other)


def test_bf16_autocast_training_runs(name: str) -> None:
    torch.manual_seed(0)
    config = tiny_config()
    result = train_generator(GENERATORS[name].build(config), batch_fn_for(config), steps=2, lr=1e-3, seed=0,
                             precision="bf16")
    # the first loss is still ~ln V under bf16; the weights stay float32
    assert abs(result.initial_loss - math.log(16)) < 1e-2 + INITIAL_LOSS_SLACK[name]
    assert all(math.isfinite(v) for _, v in result.losses)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16'\], but got precision='fp16'"):
        train_generator(GENERATORS[name].build(config), batch_fn_for(config), steps=1, lr=1e-3, seed=0,
                        precision="fp16")  # type: ignore[arg-type]


@pytest.mark.skipif(cxx_compiler() is None, reason="torch.compile on CPU needs a C++ compiler (c++, g++ or clang++)")
def test_compiled_loss_matches_eager(name: str) -> None:
    config = tiny_config(dropout=0.0)  # dropout masks differ between eager and compiled RNG streams
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        result = train_generator(GENERATORS[name].build(config), batch_fn_for(config), steps=3, lr=1e-2, seed=0,
                                 compile=compiled)
        assert result.compiled == compiled  # the compiled run really ran compiled, then went back to eager
        assert not is_compiled(result.model)
        runs.append([v for _, v in result.losses])
    eager, compiled_losses = runs
    assert eager[0] != eager[-1]  # the weights moved, so later losses compare trained compiled weights too
    assert compiled_losses == pytest.approx(eager, abs=1e-3)


def test_tokens_per_sample_counts_slots_not_sub_tokens() -> None:
    from runners.generators import tokens_per_sample

    l_2_10 = GeneratorConfig("L", 16, 16, token_each=2, bits_each=10, num_classes=1000)
    l_1_16 = GeneratorConfig("L", 16, 16, token_each=1, bits_each=16, num_classes=1000)
    assert tokens_per_sample("ar", l_2_10) == tokens_per_sample("ar", l_1_16) == 256  # one slot per position
    assert tokens_per_sample("mlm", l_1_16) == 257  # the class slot + 256 positions
    assert tokens_per_sample("mlm", l_2_10) == 514  # K class slots + N*K sub-token slots
    with pytest.raises(ValueError, match="modeling must be one of"):
        tokens_per_sample("diffusion", l_1_16)


def test_cfg_power_is_read_when_given(name: str) -> None:
    entry = GENERATORS[name]
    config = tiny_config()
    torch.manual_seed(0)
    model = entry.build(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    labels = torch.arange(4).repeat(4)
    knobs = {**KNOBS, "cfg_schedule": "powercos", "cfg_scale": 6.0}
    default = entry.sample(model, labels, knobs, torch.Generator().manual_seed(0), None)
    same = entry.sample(model, labels, {**knobs, "cfg_power": 1.0}, torch.Generator().manual_seed(0), None)
    other = entry.sample(model, labels, {**knobs, "cfg_power": 0.1}, torch.Generator().manual_seed(0), None)
    assert torch.equal(default, same)
    assert not torch.equal(default, other)

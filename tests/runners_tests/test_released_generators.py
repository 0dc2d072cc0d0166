"""Released ELM generators (runners/generators/released.py): the authors' key layout loads strictly into the
project's modules and gives the authors' logits.

The checkpoints are small ones in the authors' exact layout (tests/fixtures/authors_layout.py). The literal
logits were computed once by running the authors' own modules (llama/ar_model.py, llama/mlm_model.py at
c2f29f0, exported to a scratch folder) on exactly these tensors and inputs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from runners.generators import ARGenerator, GeneratorConfig, MLMGenerator
from runners.generators.released import (
    authors_parameter_count,
    generator_from_released,
    infer_config,
    key_map,
    parse_vocab,
)

torch.set_num_threads(1)

_spec = importlib.util.spec_from_file_location(
    "authors_layout", Path(__file__).resolve().parents[1] / "fixtures" / "authors_layout.py"
)
authors_layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(authors_layout)  # type: ignore[union-attr]

# the authors' logits: [0, :4, 0, :4] and [1, -1, -1, :4] of (B=2, N=16, K, V), and sum |logits|
AR_REFERENCE = {
    (2, 4): (
        [[0.309148, -1.350422, 2.229820, -0.416553], [-1.125176, -0.659190, 0.934040, -1.142147],
         [-2.848567, -0.036844, 0.776793, 1.369130], [-1.272673, 0.998783, 0.698142, -0.486991]],
        [-1.054406, -2.037910, 1.190815, -0.308306], 834.3061,
    ),
    (1, 6): (
        [[0.106598, 1.069595, -0.242569, 0.247515], [0.441762, -1.080165, 0.419534, 0.162880],
         [-0.034386, 1.631423, 0.599712, -0.324435], [0.662464, 1.144617, -0.034668, 1.528366]],
        [0.575525, -0.431481, 2.680203, 1.233617], 1583.0721,
    ),
}
MLM_REFERENCE = {
    (1, 5): (
        [[-3.554348, 12.723201, 3.590726, -5.011754], [13.395770, 4.080925, -7.659094, 3.407257],
         [11.748487, -7.058838, -6.335845, 5.588955], [-3.951530, 10.822680, 1.346117, -7.699256]],
        [-4.945980, 17.277119, -1.698041, -0.005036], 6270.892,
    ),
    (2, 4): (
        [[8.526448, 6.021852, 2.356846, -3.316697], [7.945829, 6.978715, 1.449199, 17.721912],
         [12.845420, 6.115889, 6.991251, 7.617502], [8.554609, 2.963837, 4.816721, -4.638052]],
        [12.609091, 3.958878, 11.042149, 1.966086], 6337.867,
    ),
}


def check_against(logits: torch.Tensor, reference: tuple, atol: float) -> None:
    head, tail, abs_sum = reference
    torch.testing.assert_close(logits[0, :4, 0, :4], torch.tensor(head), rtol=0, atol=atol)
    torch.testing.assert_close(logits[1, -1, -1, :4], torch.tensor(tail), rtol=0, atol=atol)
    assert logits.abs().sum().item() == pytest.approx(abs_sum, rel=1e-5)


def mlm_inputs(token_each: int, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixture's ids with [MASK] on every third position of sample 0 and positions 5.. of sample 1."""
    ids, labels = authors_layout.inputs(token_each=token_each, bits=bits)
    masked = torch.zeros(2, 16, dtype=torch.bool)
    masked[0, ::3] = True
    masked[1, 5:] = True
    return torch.where(masked[..., None], torch.full_like(ids, 2**bits), ids), labels


@pytest.mark.parametrize("token_each, bits", [(2, 4), (1, 6)])
def test_ar_gives_the_authors_logits(token_each: int, bits: int) -> None:
    state = authors_layout.ar_state(token_each=token_each, bits=bits)
    model, config = generator_from_released(state, "ar", grid=(4, 4))
    assert isinstance(model, ARGenerator) and not model.training
    assert (config.size, config.token_each, config.bits_each, config.num_classes) == ("tiny", token_each, bits, 5)
    assert config.class_rotary == "zero"
    ids, labels = authors_layout.inputs(token_each=token_each, bits=bits)
    with torch.no_grad():
        logits = model(ids, labels)
        check_against(logits, AR_REFERENCE[(token_each, bits)], atol=1e-5)
        # the same numbers through the KV-cached path the sampler uses
        cache = model.init_cache(2)
        first = model.prefill(ids[:, :0], labels, cache)
        torch.testing.assert_close(first, logits[:, 0], rtol=0, atol=1e-5)
        torch.testing.assert_close(model.decode_step(ids[:, 0], cache), logits[:, 1], rtol=0, atol=1e-5)


def test_the_identity_class_rotation_is_not_the_authors_model() -> None:
    """The documented rule: the class slot's rotary row is zero. Leaving it unrotated changes every logit that
    attends over more than the class slot alone (position 0 sees only it: softmax over one key is 1 either way)."""
    state = authors_layout.ar_state(token_each=2, bits=4)
    model, config = generator_from_released(state, "ar", grid=(4, 4))
    variant = ARGenerator(dataclasses.replace(config, class_rotary="identity")).eval()
    variant.load_state_dict(model.state_dict())
    ids, labels = authors_layout.inputs(token_each=2, bits=4)
    with torch.no_grad():
        difference = (variant(ids, labels) - model(ids, labels)).abs()
    assert difference[:, 0].amax() == 0
    assert difference[:, 1:].amax(dim=(0, 2, 3)).min() > 1e-3


@pytest.mark.parametrize("token_each, bits", [(1, 5), (2, 4)])
@pytest.mark.parametrize("output_heads", [True, False])  # the released MLM files hold no output heads
def test_mlm_gives_the_authors_logits(token_each: int, bits: int, output_heads: bool) -> None:
    state = authors_layout.mlm_state(token_each=token_each, bits=bits, output_heads=output_heads)
    vocab = None if output_heads or token_each == 1 else (token_each, bits)  # K is in proj.weight anyway
    model, config = generator_from_released(state, "mlm", vocab=vocab)
    assert isinstance(model, MLMGenerator)
    assert (config.grid_height, config.grid_width, config.token_each) == (4, 4, token_each)  # from pos_embed
    ids, labels = mlm_inputs(token_each, bits)
    with torch.no_grad():
        check_against(model(ids, labels), MLM_REFERENCE[(token_each, bits)], atol=1e-4)


def test_key_map_is_one_to_one_and_covers_the_module() -> None:
    for modeling, build, vocab in (("ar", ARGenerator, (2, 4)), ("ar", ARGenerator, (1, 6)), ("mlm", MLMGenerator, (2, 4))):
        config = GeneratorConfig("tiny", 4, 4, token_each=vocab[0], bits_each=vocab[1], num_classes=5)
        renames = key_map(modeling, config)
        assert len(set(renames.values())) == len(renames)
        assert set(renames.values()) == set(build(config).state_dict())
    assert key_map("ar", GeneratorConfig("L", 16, 16, 2, 10, 1000))["layers.23.ffn_norm.weight"] == "blocks.23.mlp_norm.weight"


def test_authors_parameter_count_of_the_fixture() -> None:
    config = GeneratorConfig("tiny", 4, 4, token_each=2, bits_each=4, num_classes=5)
    assert authors_parameter_count("mlm", config) == sum(
        t.numel() for t in authors_layout.mlm_state(token_each=2, bits=4).values())
    assert authors_parameter_count("ar", config) == sum(t.numel() for t in authors_layout.ar_state().values())


# ------------------------------------------------------------------ refusals
def test_refuses_what_fits_no_architecture() -> None:
    state = authors_layout.ar_state()
    with pytest.raises(ValueError, match=r"3 blocks of width 64 fits no size rung"):
        infer_config({**state, **{k.replace("layers.1.", "layers.2."): v for k, v in state.items() if "layers.1." in k}},
                     "ar")
    with pytest.raises(ValueError, match="no tensor 'norm.weight'"):
        infer_config({k: v for k, v in state.items() if k != "norm.weight"}, "ar")
    odd = {**state, "tok_embedder.0.weight": torch.zeros(12, 64), "tok_embedder.1.weight": torch.zeros(12, 64)}
    with pytest.raises(ValueError, match="12 rows, which is no power of two"):
        infer_config(odd, "ar")


def test_refuses_flags_that_disagree_with_the_shapes() -> None:
    state = authors_layout.ar_state(token_each=2, bits=4)
    with pytest.raises(ValueError, match=r"vocab: the flag says 1-8, but the checkpoint's tables and heads are 2-4; "
                                         r"pass --vocab 2-4"):
        infer_config(state, "ar", vocab=(1, 8))
    with pytest.raises(ValueError, match=r"size: the flag says 'L', .* are size 'tiny'"):
        infer_config(state, "ar", size="L")
    with pytest.raises(ValueError, match=r"num_classes: the flag says 1000, but the class table holds 5"):
        infer_config(state, "ar", num_classes=1000)
    wrong_head = {**state, "output.1.weight": torch.zeros(32, 64)}
    with pytest.raises(ValueError, match=r"head output.1.weight has 32 outputs"):
        infer_config(wrong_head, "ar")
    with pytest.raises(ValueError, match=r"grid: the flag says 5x5 = 25 positions, but pos_embed.weight holds 16"):
        infer_config(authors_layout.mlm_state(), "mlm", grid=(5, 5))


def test_refuses_missing_unknown_and_misshapen_tensors() -> None:
    state = authors_layout.ar_state()
    with pytest.raises(ValueError, match=r"missing \['layers.0.attention.wo.weight'\]"):
        generator_from_released({k: v for k, v in state.items() if k != "layers.0.attention.wo.weight"}, "ar")
    with pytest.raises(ValueError, match=r"unknown \['optimizer.step'\]"):
        generator_from_released({**state, "optimizer.step": torch.zeros(1)}, "ar")
    with pytest.raises(ValueError, match=r"proj.weight has shape \(64, 64\), but token_projection.weight .* has \(64, 128\)"):
        generator_from_released({**state, "proj.weight": torch.zeros(64, 64)}, "ar")
    mlm = authors_layout.mlm_state()
    with pytest.raises(ValueError, match=r"output.weight has shape \(33, 32\)"):
        generator_from_released({**mlm, "output.weight": torch.zeros(33, 32)}, "mlm")


def test_parse_vocab() -> None:
    assert parse_vocab("2-10") == (2, 10)
    for bad in ("2_10", "0-16", "2-", "x-y"):
        with pytest.raises(ValueError, match="vocab must read K-c"):
            parse_vocab(bad)

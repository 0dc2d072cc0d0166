"""runners/tokenizers/released.py: the ELM authors' BAE checkpoints in our tokenizers, with their outputs.

The checkpoints are built by tests/fixtures/authors_bae_layout.py in the authors' key layout. The literal values
below are what the authors' own `BinaryAutoEncoder` (bae/binaryae.py at c2f29f0, loaded strictly with the same
fixture tensors, fp32 CPU, `deterministic=True`) computes: bit probabilities, thresholded bits and decodings.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from runners.artifacts import load_tokenizer, save_model
from runners.tokenizers.backbone import count_parameters
from runners.tokenizers.released import tokenizer_from_released

_SPEC = importlib.util.spec_from_file_location(
    "authors_bae_layout", Path(__file__).parents[1] / "fixtures" / "authors_bae_layout.py")
assert _SPEC is not None and _SPEC.loader is not None
layout = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(layout)

# The small rung in the authors' hparams: nf 32, ch_mult 1 2 2, 2 res blocks, attention at 4, emb_dim 64, 16 px.
SMALL = dict(nf=32, ch_mult=(1, 2, 2), res_blocks=2, attn_resolutions=(4,), emb_dim=64, code_dim=8, channels=1,
             img_size=16)
# The released BAEs' hparams (hparams/defaults/binarygan_default.py, dataset custom / imagenet, --norm_first).
RELEASED = dict(nf=128, ch_mult=(1, 1, 2, 2, 4), res_blocks=2, attn_resolutions=(16,), emb_dim=256, channels=3,
                img_size=256)

pytestmark = pytest.mark.usefixtures("one_thread")


def _images() -> torch.Tensor:
    """Two fixed 16x16 grey images with values k/16, no RNG involved."""
    return ((torch.arange(2 * 256).reshape(2, 1, 16, 16) * 7) % 17).float() / 16


def _as_ints(bits: torch.Tensor) -> list[list[int]]:
    """Bits (8, h, w) -> the code of each position as an integer, first bit most significant."""
    return (bits * (2 ** torch.arange(7, -1, -1)).reshape(8, 1, 1)).sum(0).int().tolist()


def test_an_authors_checkpoint_gives_their_encodings_and_decodings() -> None:
    model, config = tokenizer_from_released(layout.authors_bae_state(**SMALL), "bae")
    assert config == {"tokenizer": "bae", "kwargs": {"code_dim": 8, "size": "small", "channels": 1, "image_size": 16,
                                                     "bernoulli": True}}
    assert not model.training
    x = _images()
    with torch.no_grad():
        probs = model.encode_probs(x)
        bits = model.encode(x, "threshold")
        decoded = model.decode(bits)
    # Their outputs (see the module docstring):
    assert probs[0, :, 0, 0].tolist() == pytest.approx(
        [0.1872081, 0.5647934, 0.2554766, 0.3715137, 0.4244827, 0.4490533, 0.7869508, 0.5462974], abs=1e-4)
    assert probs[1, :, 3, 2].tolist() == pytest.approx(
        [0.4181955, 0.4935491, 0.6562493, 0.8565340, 0.4784240, 0.5086643, 0.5583967, 0.4747626], abs=1e-4)
    assert float(probs.double().sum()) == pytest.approx(134.8970079, abs=1e-3)
    assert _as_ints(bits[0]) == [[67, 60, 246, 18], [127, 51, 48, 243], [152, 246, 19, 146], [177, 82, 150, 186]]
    assert _as_ints(bits[1]) == [[254, 114, 127, 52], [190, 254, 35, 240], [19, 126, 210, 19], [157, 147, 54, 136]]
    assert decoded[0, 0, 0, :4].tolist() == pytest.approx([-0.0869377, -0.8395182, -1.1611494, -1.5326258], abs=1e-4)
    assert decoded[1, 0, 15, 12:].tolist() == pytest.approx([-0.3798479, -0.5301708, -1.4459940, 0.4321100], abs=1e-4)
    assert float(decoded.double().sum()) == pytest.approx(95.4834183, abs=1e-2)
    assert float(decoded.min()) == pytest.approx(-3.1718771, abs=1e-4)  # unbounded, as theirs
    assert float(decoded.max()) == pytest.approx(3.4106057, abs=1e-4)


def test_the_artifact_config_rebuilds_the_same_model(tmp_path: Path) -> None:
    # What `sweep import` writes: our weights and the config, saved and loaded as a tokenizer stage's artifact.
    model, config = tokenizer_from_released(layout.authors_bae_state(**SMALL, seed=3), "bae")
    save_model(model, tmp_path, config)
    assert json.loads((tmp_path / "config.json").read_text()) == config
    rebuilt = load_tokenizer(tmp_path, torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(rebuilt.decode(rebuilt.encode(_images())), model.decode(model.encode(_images())))
    # the authors' bae_16_deter trained on thresholded bits: a setting the caller records, the weights cannot tell
    assert tokenizer_from_released(layout.authors_bae_state(**SMALL), "bae", bernoulli=False)[0].bernoulli is False


def test_the_released_layout_is_the_imagenet_rung() -> None:
    state = layout.authors_bae_state(**RELEASED, code_dim=20)
    model, config = tokenizer_from_released(state, "bae")
    assert config["kwargs"] == {"code_dim": 20, "size": "imagenet", "channels": 3, "image_size": 256,
                                "bernoulli": True}
    theirs = sum(v.numel() for k, v in state.items() if k.startswith("ae."))
    assert theirs == 65_528_602  # their module at D = 20 (65,530,654 at D = 24); 2,496,899 of it never used
    assert count_parameters(model) == 63_031_703 == theirs - 2_496_899
    ours = model.state_dict()
    # Attention at 16x16 = the last level of 256 px: after its two res blocks (14, 16), then the middle's (18).
    assert [k for k in ours if k.endswith(".q.weight")] == [
        "encoder.blocks.14.q.weight", "encoder.blocks.16.q.weight", "encoder.blocks.18.q.weight",
        "decoder.blocks.3.q.weight", "decoder.blocks.6.q.weight", "decoder.blocks.8.q.weight"]
    for key in ("encoder.blocks.0.weight", "quantize.embed.weight", "encoder.blocks.16.q.weight"):
        assert torch.equal(ours[key], state["ae." + key])  # the same names, the same tensors
    assert torch.equal(ours["decoder.blocks.0.weight"], state["ae.generator.blocks.0.weight"])  # norm_first


def test_their_vq_layout_loads_too() -> None:
    state = layout.authors_bae_state(**{**SMALL, "code_dim": 16}, norm_first=False, codebook=True)
    model, config = tokenizer_from_released(state, "vq")
    assert config["tokenizer"] == "vq" and config["kwargs"]["codebook_size"] == 16
    assert config["kwargs"]["code_width"] == 64 and config["kwargs"]["size"] == "small"
    assert torch.equal(model.codebook.weight, state["ae.quantize.embedding.weight"])


# ---------------------------------------------------------------------------------------------------------- refusals


def test_refuses_what_is_not_an_authors_checkpoint() -> None:
    with pytest.raises(ValueError, match="must be a state dict .* but got a list"):
        tokenizer_from_released([torch.zeros(1)], "bae")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"names -> tensors\), but it holds 'model' \(dict\).*not a training"):
        tokenizer_from_released({"model": {"ae.x": torch.zeros(1)}}, "bae")  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"keys starting 'ae\.'.*but this one has blocks\.0\.weight.*binaryae_ema"):
        tokenizer_from_released({"blocks.0.weight": torch.zeros(2), "tok_embeddings.weight": torch.zeros(2)}, "bae")
    with pytest.raises(ValueError, match="kind must be one of bae, vq, but got kind='ar'"):
        tokenizer_from_released(layout.authors_bae_state(**SMALL), "ar")
    vq_state = layout.authors_bae_state(**SMALL, norm_first=False, codebook=True)
    with pytest.raises(ValueError, match=r"must hold ae\.quantize\.proj\.0\.weight.*absent.*or use kind vq"):
        tokenizer_from_released(vq_state, "bae")
    with pytest.raises(ValueError, match=r"must hold ae\.quantize\.embedding\.weight.*absent.*or use kind bae"):
        tokenizer_from_released(layout.authors_bae_state(**SMALL), "vq")


def test_refuses_shapes_that_fit_no_rung() -> None:
    three_blocks = layout.authors_bae_state(**{**SMALL, "res_blocks": 3})  # not a rung of the ladder
    with pytest.raises(ValueError, match=r"must fit a rung of the tokenizer ladder .* but none fits \(.*small at "
                                         r"image_size 16: decoder\.blocks\.10\.conv1\.bias expected \(64,\), found absent"):
        tokenizer_from_released(three_blocks, "bae")
    without_norm_first = layout.authors_bae_state(**SMALL, norm_first=False)  # every ELM script sets norm_first
    with pytest.raises(ValueError, match=r"none fits .*small at image_size 16: decoder\.blocks\.0\.weight expected "
                                         r"\(64,\), found \(64, 64, 3, 3\)"):
        tokenizer_from_released(without_norm_first, "bae")
    state = layout.authors_bae_state(**SMALL)
    state["ae.encoder.blocks.1.conv_out.weight"] = torch.zeros(32, 32, 3, 3)  # an unused tensor of a wrong shape
    with pytest.raises(ValueError, match=r"encoder\.blocks\.1\.conv_out\.weight expected \(32, 32, 1, 1\), found "
                                         r"\(32, 32, 3, 3\)"):
        tokenizer_from_released(state, "bae")
    state = layout.authors_bae_state(**SMALL)
    state["ae.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"extra\.weight expected absent, found \(1,\)"):
        tokenizer_from_released(state, "bae")
    with pytest.raises(ValueError, match="none fits .* or check image_size"):
        tokenizer_from_released(layout.authors_bae_state(**SMALL), "bae", image_size=32)  # attention moves


def test_an_image_size_the_shapes_cannot_tell_must_be_given() -> None:
    # The tiny rung has no attention on any level: its tensors are the same at every image size.
    tiny = dict(nf=8, ch_mult=(1, 2, 4), res_blocks=1, attn_resolutions=(), emb_dim=32, code_dim=8, channels=1,
                img_size=16)
    state = layout.authors_bae_state(**tiny)
    # (their GroupNorm has 32 groups, which 8 channels cannot hold: the tiny rung shares their layout, not groups)
    with pytest.raises(ValueError, match=r"image_size must be given for this checkpoint: its tensors fit the tiny "
                                         r"rung at every image size"):
        tokenizer_from_released(state, "bae")
    model, config = tokenizer_from_released(state, "bae", image_size=16)
    assert config["kwargs"]["size"] == "tiny" and model.grid == (4, 4)

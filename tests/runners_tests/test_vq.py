"""runners/tokenizers/vq.py: the VQGAN-style codebook tokenizer."""

from __future__ import annotations


import pytest
import torch

from runners.data import load_dataset, stack
from runners.tokenizers import TOKENIZERS, get_tokenizer, vocabulary_for
from runners.tokenizers.backbone import count_parameters
from runners.tokenizers.vq import VQ_SIZES, VQTokenizer, nearest_code, vector_quantize
from runners.train_tokenizer import reconstruction_metrics, train_tokenizer
from runners.vocab import Vocabulary


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(seed: int = 0, **kwargs: object) -> VQTokenizer:
    torch.manual_seed(seed)
    return VQTokenizer(**{"codebook_size": 16, "size": "tiny", "channels": 1, "image_size": 16, **kwargs})


# ---------------------------------------------------------------------------------------------------- shapes / registry


def test_shapes_registry_and_init_kwargs() -> None:
    model = _tiny()
    assert model.grid == (4, 4) and model.code_width == 32  # None -> the tiny backbone's latent width
    assert model.token_shape(None) == (1, 16) and model.latent_kind == "index" and not model.stochastic_encoding
    with torch.no_grad():
        out = model(torch.rand(2, 1, 16, 16))
    assert out["recon"].shape == (2, 1, 16, 16) and out["z"].shape == (2, 32, 4, 4)
    assert out["ids"].shape == (2, 4, 4) and out["ids"].dtype == torch.int64
    assert VQTokenizer(**model.init_kwargs).init_kwargs == model.init_kwargs
    assert TOKENIZERS["vq"].code_version == "vq-2" and get_tokenizer("vq").build is VQTokenizer
    assert set(VQ_SIZES) == {"tiny", "small", "imagenet"}
    # taming's codebook init: U(-1/V, 1/V).
    assert float(model.codebook.weight.detach().abs().max()) <= 1.0 / 16
    with torch.device("meta"):
        paper = VQTokenizer(codebook_size=1024, size="imagenet", channels=3, image_size=256)
    assert paper.grid == (16, 16) and paper.codebook.weight.shape == (1024, 256)  # taming f16: embed_dim 256
    assert count_parameters(paper.encoder) == 29_298_176  # the BAE's backbone
    # As the authors' VQAutoEncoder: the encoder ends in the codebook's width, no 1x1 maps around the codebook,
    # and the decoder starts with its conv (no GroupNorm first): 29,298,176 + 1024 * 256 + 33,722,755.
    assert not hasattr(paper, "quant_conv") and not paper.decoder.norm_first
    assert isinstance(paper.decoder.blocks[0], torch.nn.Conv2d) and paper.decoder.blocks[0].in_channels == 256
    assert count_parameters(paper) == 63_283_075


def test_constructor_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="codebook_size must be >= 2, but got codebook_size=1; try 256"):
        _tiny(codebook_size=1)
    with pytest.raises(ValueError, match="size must be one of tiny, small, imagenet, but got size='xl'"):
        _tiny(size="xl")
    with pytest.raises(ValueError, match="beta must be >= 0, but got beta=-0.1; the authors' VQGAN uses 0.25"):
        _tiny(beta=-0.1)
    with pytest.raises(ValueError, match=r"code_width must be >= 1 or None.*try None \(the backbone's latent width"):
        _tiny(code_width=0)
    with pytest.raises(ValueError, match="restart_after_steps must be >= 1"):
        _tiny(restart_after_steps=0)


# ---------------------------------------------------------------------------------------------------- quantiser


def test_nearest_code_literal() -> None:
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[0.9, 0.1], [0.1, 1.5], [-1.0, -1.0], [0.5, 0.0]])
    # distances^2 of [0.5, 0]: 0.25 to entries 0 and 1 -> the tie goes to the lower id.
    assert nearest_code(z, codebook).tolist() == [1, 2, 0, 0]


def test_nearest_code_in_chunks_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    import runners.tokenizers.vq as vq

    generator = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(300, 4, generator=generator), torch.randn(50, 4, generator=generator)
    brute = torch.cdist(z, codebook).argmin(dim=1)
    monkeypatch.setattr(vq, "NEAREST_CHUNK_ELEMENTS", 7 * 50)  # 7 rows per chunk, a ragged last chunk
    assert torch.equal(nearest_code(z, codebook), brute)


def test_vector_quantize_losses_and_straight_through_literal() -> None:
    z = torch.tensor([0.9, 0.1]).reshape(1, 2, 1, 1).requires_grad_(True)  # one position, e = 2
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    out = vector_quantize(z, codebook, beta=0.25)
    assert out["ids"].tolist() == [[[1]]]
    assert out["z_q"].detach().flatten().tolist() == [1.0, 0.0]  # forward value: the entry
    # ((1 - 0.9)^2 + (0 - 0.1)^2) / 2 = 0.01 for both; quant = commitment 0.01 + beta 0.25 * codebook 0.01.
    assert out["codebook_loss"].item() == pytest.approx(0.01)
    assert out["commitment_loss"].item() == pytest.approx(0.01)
    assert out["quant_loss"].item() == pytest.approx(0.0125)
    (out["z_q"] * torch.tensor([3.0, -2.0]).reshape(1, 2, 1, 1)).sum().backward(retain_graph=True)
    assert z.grad.flatten().tolist() == [3.0, -2.0]  # straight-through: identity to z
    assert codebook.grad is None  # the reconstruction path does not move the entries
    z.grad = None
    out["quant_loss"].backward()
    # The authors' (taming legacy) weighting: d/dc of 0.25 mean((c - sg z)^2) = 0.25 (c - z) = [0.025, -0.025]
    # for entry 1 only; d/dz of mean((z - sg c)^2) = (z - c) = [-0.1, 0.1] (commitment weight 1).
    assert codebook.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.025, -0.025])
    assert z.grad.flatten().tolist() == pytest.approx([-0.1, 0.1])


def test_usage_tracking_and_dead_code_restarts_are_deterministic() -> None:
    images = torch.rand(2, 1, 16, 16)

    def one_step(restart: bool, seed: int) -> VQTokenizer:
        model = _tiny(restart_dead_codes=restart, restart_after_steps=1).train()
        model(images, generator=torch.Generator().manual_seed(seed))
        return model

    plain = one_step(False, 0)
    before = _tiny().codebook.weight
    used = plain.steps_unused == 0
    assert torch.equal(plain.codebook.weight, before)  # no restarts: forward never writes the codebook
    assert 0 < int(used.sum()) < 16 and plain.dead_codes == int((~used).sum())

    a, b, c = one_step(True, 0), one_step(True, 0), one_step(True, 1)
    assert torch.equal(a.codebook.weight, b.codebook.weight)  # same generator seed, same restarts
    assert not torch.equal(a.codebook.weight, c.codebook.weight)
    assert torch.equal(a.codebook.weight[used], before[used])  # used entries are kept
    with torch.no_grad():
        z = a.encode_latent(images).permute(0, 2, 3, 1).reshape(-1, a.code_width)  # (32, e) this batch's outputs
    for entry in a.codebook.weight[~used]:  # every dead entry now is one of the batch's encoder outputs
        assert bool((z == entry).all(dim=1).any())
    assert a.dead_codes == 0 and int(a.steps_unused.sum()) == 0

    frozen = _tiny(restart_dead_codes=True, restart_after_steps=1).eval()
    with torch.no_grad():
        frozen(images)
    assert torch.equal(frozen.codebook.weight, before) and int(frozen.steps_unused.sum()) == 0  # eval: no tracking


def test_code_counts_and_usage() -> None:
    model = _tiny().eval()
    images = torch.rand(5, 1, 16, 16)
    counts = model.code_counts(images, batch_size=2)
    assert counts.shape == (16,) and int(counts.sum()) == 5 * 16  # every (image, position) picks one entry
    assert model.code_usage(images) == pytest.approx(float((counts > 0).float().mean()))
    direct = torch.bincount(model.encode(images).flatten(), minlength=16)
    assert torch.equal(counts, direct)


def test_token_interface_and_errors() -> None:
    model = _tiny().eval()
    images = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        ids = model.encode_ids(images, mode="threshold", vocab=None)
        same = model.encode_ids(images, mode="bernoulli", vocab=None, generator=torch.Generator().manual_seed(1))
        decoded = model.decode_ids(ids)
    assert ids.shape == (3, 16, 1) and torch.equal(ids, same)  # nearest-neighbour lookup is deterministic
    assert torch.equal(ids[..., 0], model.encode(images).flatten(1))  # raster order
    assert torch.equal(decoded, model.decode(ids[..., 0].reshape(3, 4, 4)).clamp(0, 1))  # images: clamped
    assert vocabulary_for(model, 1) is None
    with pytest.raises(ValueError, match="token_each must be 1 for a codebook tokenizer"):
        vocabulary_for(model, 2)
    with pytest.raises(ValueError, match="vocab must be None for the VQ tokenizer"):
        model.encode_ids(images, mode="threshold", vocab=Vocabulary(code_dim=4, token_each=1))
    with pytest.raises(ValueError, match="mode must be one of bernoulli, threshold"):
        model.encode_ids(images, mode="round", vocab=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 16\)"):
        model.decode_ids(torch.full((1, 16, 1), 16))
    with pytest.raises(ValueError, match=r"ids must have shape \(B, h\*w=16, 1\)"):
        model.decode_ids(torch.zeros(1, 16, 2, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------- training


def test_training_uses_the_codebook_loss_and_restarts_raise_usage() -> None:
    data = load_dataset("digits", 16)
    heldout, _ = stack(data.heldout)
    results = {}
    for restart in (False, True):
        logs: list[dict[str, float]] = []
        model = _tiny(codebook_size=64, restart_dead_codes=restart, restart_after_steps=3)
        ema = train_tokenizer(model, data.train, steps=20, lr=3e-3, batch_size=16, seed=0, log_every=20,
                              on_log=lambda step, terms: logs.append(terms))
        assert {"loss", "l1", "quant_loss", "codebook_loss", "commitment_loss", "code_usage"} == set(logs[0])
        assert logs[0]["loss"] == pytest.approx(logs[0]["l1"] + logs[0]["quant_loss"], rel=1e-5)
        results[restart] = reconstruction_metrics(ema, heldout)
    print({k: {m: round(v, 3) for m, v in r.items()} for k, r in results.items()})
    assert results[False]["code_usage"] == results[False]["token_usage"]
    # Without restarts most of the 64 entries stay where taming's init put them; restarts bring them into use.
    assert results[True]["code_usage"] > results[False]["code_usage"] + 0.2

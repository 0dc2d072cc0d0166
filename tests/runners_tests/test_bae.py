"""runners/tokenizers (BAE + registry) and runners/train_tokenizer.py."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn as nn

from runners.data import load_dataset, stack
from runners.tokenizers import TOKENIZERS, TokenizerEntry, get_tokenizer
from runners.tokenizers.backbone import AttentionBlock, ResnetBlock, count_parameters
from runners.tokenizers.bae import (BAE_SIZES, BinaryAutoencoder, bit_usage_penalty, bits_to_token_ids,
                                    quantize_bits, token_ids_to_bits)
from runners.train_tokenizer import reconstruction_metrics, train_tokenizer
from runners.vocab import Vocabulary

# The digits demo recipe (also the defaults proposed for the demo spec).
DIGITS_RECIPE = dict(steps=200, lr=3e-3, batch_size=32, bit_usage_weight=0.01)


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(code_dim: int = 8, bernoulli: bool = True, seed: int = 0) -> BinaryAutoencoder:
    torch.manual_seed(seed)
    return BinaryAutoencoder(code_dim=code_dim, size="tiny", channels=1, image_size=16, bernoulli=bernoulli)


# ---------------------------------------------------------------------------------------------------- shapes / registry


@pytest.mark.parametrize(("size", "channels", "image_size", "grid"), [("tiny", 1, 16, 4), ("small", 1, 16, 4),
                                                                      ("small", 3, 32, 8), ("imagenet", 3, 32, 2)])
def test_shapes_at_each_size(size: str, channels: int, image_size: int, grid: int) -> None:
    torch.manual_seed(0)
    model = BinaryAutoencoder(code_dim=12, size=size, channels=channels, image_size=image_size)
    assert model.grid == (grid, grid) and model.code_dim == 12
    images = torch.rand(2, channels, image_size, image_size)
    with torch.no_grad():
        out = model(images)
    assert out["recon"].shape == (2, channels, image_size, image_size)
    assert out["probs"].shape == out["bits"].shape == (2, 12, grid, grid)
    assert set(out["bits"].unique().tolist()) <= {0.0, 1.0}
    assert BinaryAutoencoder(**model.init_kwargs).init_kwargs == model.init_kwargs


def test_imagenet_size_matches_the_authors_bae() -> None:
    # Built on the meta device: shapes only, no memory, no compute.
    with torch.device("meta"):
        model = BinaryAutoencoder(code_dim=24, size="imagenet", channels=3, image_size=256)
    assert model.grid == (16, 16)  # downsampling 16
    encoder, decoder = model.encoder.blocks, model.decoder.blocks
    assert encoder[0].weight.shape == (128, 3, 3, 3)  # base channels 128
    assert model.to_logits.weight.shape == (24, 256, 1, 1)  # latent width 256 -> D logits
    # Bias-free bit embedding, one 256-d row per bit (the authors' einsum over an nn.Embedding table).
    assert model.quantize.embed.weight.shape == (24, 256) and "quantize.embed.bias" not in model.state_dict()
    # norm_first: the decoder starts with a GroupNorm of its 256-channel input, then its conv.
    assert isinstance(decoder[0], nn.GroupNorm) and decoder[0].num_channels == 256 and decoder[0].num_groups == 32
    assert isinstance(decoder[1], nn.Conv2d) and decoder[1].in_channels == 256
    # No activation between the last GroupNorm and the last conv of either half.
    assert isinstance(encoder[-2], nn.GroupNorm) and isinstance(encoder[-1], nn.Conv2d)
    assert isinstance(decoder[-2], nn.GroupNorm) and isinstance(decoder[-1], nn.Conv2d)
    assert encoder[-1].in_channels == 512 and decoder[-1].out_channels == 3
    # 2 res blocks per level in both halves: 5 levels x 2 + 2 (middle) each.
    assert sum(isinstance(m, ResnetBlock) for m in encoder) == sum(isinstance(m, ResnetBlock) for m in decoder) == 12
    # Attention at 16x16: 2 (encoder level) + 1 (encoder middle) + 1 (decoder middle) + 2 (decoder level).
    assert sum(isinstance(m, AttentionBlock) for m in model.modules()) == 6
    # The authors' used parameters (their module holds 65,530,654: 2,496,899 more in tensors it never uses).
    assert count_parameters(model.encoder) == 29_298_176 and count_parameters(model.decoder) == 33_723_267
    assert count_parameters(model) == 63_033_755


def test_state_dict_keys_are_the_authors() -> None:
    model = _tiny()
    keys = list(model.state_dict())
    assert keys[:2] == ["encoder.blocks.0.weight", "encoder.blocks.0.bias"]
    assert {"quantize.proj.0.weight", "quantize.proj.0.bias", "quantize.embed.weight"} <= set(keys)
    assert "decoder.blocks.0.weight" in keys and "decoder.blocks.1.weight" in keys  # GroupNorm, then conv
    assert "encoder.blocks.1.conv_out.weight" not in keys  # 8 -> 8 channels: no shortcut conv
    assert "encoder.blocks.3.conv_out.weight" in keys  # 8 -> 16 channels
    assert all(key.split(".")[0] in ("encoder", "quantize", "decoder") for key in keys)


def test_registry_and_errors() -> None:
    entry = TOKENIZERS["bae"]
    assert isinstance(entry, TokenizerEntry) and entry.code_version == "bae-2" and get_tokenizer("bae") is entry
    assert isinstance(entry.build(code_dim=4, size="tiny", channels=1, image_size=16), BinaryAutoencoder)
    assert set(BAE_SIZES) == {"tiny", "small", "imagenet"}
    with pytest.raises(ValueError, match="size must be one of tiny, small, imagenet, but got size='huge'"):
        BinaryAutoencoder(code_dim=8, size="huge", channels=1, image_size=16)
    with pytest.raises(ValueError, match=r"multiple of the tokenizer's downsampling factor \(4\).*try 16"):
        BinaryAutoencoder(code_dim=8, size="tiny", channels=1, image_size=18)
    with pytest.raises(ValueError, match="code_dim must be >= 1"):
        BinaryAutoencoder(code_dim=0, size="tiny", channels=1, image_size=16)
    with pytest.raises(ValueError, match="tokenizer must be one of bae"):
        get_tokenizer("vqgan2")
    with pytest.raises(ValueError, match="mode must be one of bernoulli, threshold"):
        quantize_bits(torch.rand(1, 2, 1, 1), "round")  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------------------- quantisation


def test_threshold_mode_is_deterministic_and_literal() -> None:
    probs = torch.tensor([0.2, 0.7, 0.5, 0.51, 0.0, 1.0]).reshape(1, 6, 1, 1)
    assert quantize_bits(probs, "threshold").flatten().tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    model = _tiny().eval()
    images = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        first, second = model(images), model(images)
    assert torch.equal(first["bits"], second["bits"]) and torch.equal(first["recon"], second["recon"])
    assert torch.equal(first["bits"], (first["probs"] > 0.5).float())


def test_bernoulli_mode_follows_the_generator() -> None:
    probs = torch.full((4, 8, 4, 4), 0.3)
    draw = lambda seed: quantize_bits(probs, "bernoulli", torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(1), draw(1))  # same seed, same bits
    assert not torch.equal(draw(1), draw(2))  # another seed, other bits
    many = quantize_bits(torch.full((20, 8, 8, 8), 0.3), "bernoulli", torch.Generator().manual_seed(0))
    assert abs(float(many.mean()) - 0.3) < 0.01  # 10240 draws: the frequency of ones is p
    extremes = quantize_bits(torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1), "bernoulli", torch.Generator())
    assert extremes.flatten().tolist() == [0.0, 1.0]

    model = _tiny().train()  # training + bernoulli=True: forward samples
    images = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        a = model(images, generator=torch.Generator().manual_seed(5))["bits"]
        b = model(images, generator=torch.Generator().manual_seed(5))["bits"]
        c = model(images, generator=torch.Generator().manual_seed(6))["bits"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    threshold_in_training = _tiny(bernoulli=False).train()
    with torch.no_grad():
        out = threshold_in_training(images, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out["bits"], (out["probs"] > 0.5).float())


@pytest.mark.parametrize("mode", ["bernoulli", "threshold"])
def test_straight_through_gradient_reaches_the_encoder(mode: str) -> None:
    # The quantiser's backward is the identity: d(sum(w * bits)) / d probs = w.
    probs = torch.tensor([0.2, 0.9, 0.6]).reshape(1, 3, 1, 1).requires_grad_(True)
    weights = torch.tensor([1.0, -2.0, 3.0]).reshape(1, 3, 1, 1)
    bits = quantize_bits(probs, mode, torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    assert set(bits.detach().flatten().tolist()) <= {0.0, 1.0}
    (bits * weights).sum().backward()
    assert probs.grad is not None and probs.grad.flatten().tolist() == [1.0, -2.0, 3.0]

    model = _tiny()
    model.train()
    images = torch.rand(2, 1, 16, 16)
    probs = model.encode_probs(images)
    recon = model.decode(model.binarize(probs, mode, torch.Generator().manual_seed(0)))  # type: ignore[arg-type]
    (recon - images).abs().mean().backward()
    grad = model.encoder.blocks[0].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0.0
    assert float(model.to_logits.weight.grad.abs().sum()) > 0.0


def test_bit_embedding_is_a_bias_free_sum_of_rows() -> None:
    model = _tiny(code_dim=3)
    with torch.no_grad():
        model.quantize.embed.weight.copy_(torch.arange(3 * 32, dtype=torch.float32).reshape(3, 32))
        bits = torch.zeros(2, 3, 4, 4)
        bits[0, 0, 1, 2] = bits[0, 2, 1, 2] = 1.0  # bits 0 and 2 set at one position of image 0
        latent = model.quantize.embed_bits(bits)  # (2, 32, 4, 4)
    assert latent.shape == (2, 32, 4, 4)
    assert latent[0, :, 1, 2].tolist() == [float(64 + 2 * c) for c in range(32)]  # row 0 (c) + row 2 (64 + c)
    assert float(latent.abs().sum() - latent[0, :, 1, 2].abs().sum()) == 0.0  # no bits set: exactly 0, no bias


def test_decoder_output_is_unbounded_and_images_are_its_clamp() -> None:
    # The authors' decoder ends in a conv (no sigmoid): a constant code decodes to values outside [0, 1] once the
    # last conv's bias is pushed; images (decode_ids, what samplers and evaluations use) are the output clamped.
    model = _tiny(code_dim=6).eval()
    with torch.no_grad():
        model.decoder.last_layer.bias.fill_(3.0)
        ones = torch.ones(1, 6, 4, 4)
        raw = model.decode(ones)
        ids = bits_to_token_ids(ones, Vocabulary(code_dim=6, token_each=1))
        images = model.decode_ids(ids)
    assert float(raw.min()) > 1.0  # every pixel above 1: no squashing anywhere
    assert torch.equal(images, raw.clamp(0, 1)) and float(images.min()) == 1.0
    with torch.no_grad():
        model.decoder.last_layer.bias.fill_(-3.0)
        assert float(model.decode(ones).max()) < 0.0 and float(model.decode_ids(ids).max()) == 0.0


def test_token_ids_literal_and_interface() -> None:
    # Position 0 holds bits [1, 0, 1, 1], position 1 (to its right) [0, 0, 0, 1]: (B=1, D=4, h=1, w=2).
    bits = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]).reshape(1, 4, 1, 2)
    vocab = Vocabulary(code_dim=4, token_each=2)
    ids = bits_to_token_ids(bits, vocab)
    assert ids.tolist() == [[[2, 3], [0, 1]]]  # (B, h*w, K), first bit most significant
    assert torch.equal(token_ids_to_bits(ids, vocab, (1, 2)), bits)

    model = _tiny(code_dim=8).eval()
    images = torch.rand(2, 1, 16, 16)
    vocab = Vocabulary(code_dim=8, token_each=2)
    with torch.no_grad():
        ids = model.encode_ids(images, mode="threshold", vocab=vocab)
        assert torch.equal(ids, bits_to_token_ids(model.encode(images, "threshold"), vocab))
        assert torch.equal(model.decode_ids(ids, vocab), model.decode(model.encode(images, "threshold")).clamp(0, 1))
        assert torch.equal(model.decode_ids(ids), model.decode_ids(ids, vocab))  # K read from the ids
        assert torch.equal(torch.sigmoid(model.encode_logits(images)), model.encode_probs(images))
    assert model.token_shape(vocab) == (2, 16) and model.latent_kind == "bits" and model.stochastic_encoding
    with pytest.raises(ValueError, match=r"vocab must be a Vocabulary with code_dim=8.*token_each=K"):
        model.encode_ids(images, mode="threshold", vocab=Vocabulary(code_dim=4, token_each=1))


def test_bit_usage_penalty_literals() -> None:
    assert float(bit_usage_penalty(torch.full((4, 3, 2, 2), 0.5))) == 0.0
    assert float(bit_usage_penalty(torch.zeros(4, 3, 2, 2))) == pytest.approx(0.25)  # every bit stuck
    # Two bits with batch means 0.3 and 0.5: ((0.3 - 0.5)^2 + 0) / 2 = 0.02.
    probs = torch.stack([torch.tensor([[0.1, 0.5], [0.3, 0.3]]), torch.full((2, 2), 0.5)]).unsqueeze(0)  # (1,2,2,2)
    assert float(bit_usage_penalty(probs)) == pytest.approx(0.02)


# ----------------------------------------------------------------------------------------------------------- metrics


class _KnownCodec(nn.Module):
    """A fixed 'tokenizer' with known outputs: 2 bits per single position, recon = image + 0.1."""

    latent_kind = "bits"
    code_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device

    def encode_probs(self, images: torch.Tensor) -> torch.Tensor:
        first = (images.mean(dim=(1, 2, 3)) > 0.25).float()  # bit 0 follows the image, bit 1 is stuck at 1
        return torch.stack([first, torch.ones_like(first)], dim=1).reshape(-1, 2, 1, 1)

    def binarize(self, probs: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
        return (probs > 0.5).float()

    def decode(self, bits: torch.Tensor) -> torch.Tensor:
        return self._images + 0.1

    def forward(self, images: torch.Tensor) -> None:  # pragma: no cover - metrics never call forward
        raise AssertionError("reconstruction_metrics must use encode_probs / binarize / decode")


def test_reconstruction_metrics_literals() -> None:
    codec = _KnownCodec()
    # 4 constant images 0.2, 0.2, 0.4, 0.4 (1 channel, 2x2): bit 0 is on for half, bit 1 always.
    images = torch.tensor([0.2, 0.2, 0.4, 0.4]).reshape(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    codec._images = images  # decode returns images + 0.1 for the single full batch
    metrics = reconstruction_metrics(codec, images, batch_size=8)
    assert metrics["psnr_db"] == pytest.approx(20.0)  # MSE 0.01
    assert metrics["l1"] == pytest.approx(0.1)
    assert metrics["bit_usage"] == pytest.approx(0.5)  # bit 1 never takes the value 0
    assert metrics["bit_entropy_mean"] == pytest.approx(0.5)  # (1 bit + 0 bits) / 2
    assert metrics["mean_image_psnr_db"] == pytest.approx(20.0)  # mean 0.3, every pixel off by 0.1
    assert metrics["mean_image_l1"] == pytest.approx(0.1)
    assert "token_usage" not in metrics  # sub-token id statistics need a vocabulary
    # With Vocabulary(2, 1) the ids are 2 * bit0 + bit1 = [1, 1, 3, 3]: 2 of 4 ids used, 1 bit of entropy.
    with_vocab = reconstruction_metrics(codec, images, batch_size=8, vocab=Vocabulary(code_dim=2, token_each=1))
    assert with_vocab["token_usage"] == pytest.approx(0.5) and with_vocab["token_entropy_bits"] == pytest.approx(1.0)
    assert with_vocab["psnr_db"] == metrics["psnr_db"]


def test_reconstruction_metrics_score_the_clamped_images() -> None:
    codec = _KnownCodec()
    images = torch.tensor([0.95, 0.95, 0.4, 0.4]).reshape(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    codec._images = images  # decoder output 1.05, 1.05, 0.5, 0.5: the first two are clamped to 1.0
    metrics = reconstruction_metrics(codec, images, batch_size=8)
    assert metrics["l1"] == pytest.approx(0.075)  # (0.05 + 0.05 + 0.1 + 0.1) / 4, not 0.1
    assert metrics["psnr_db"] == pytest.approx(22.0411998)  # MSE (2 * 0.0025 + 2 * 0.01) / 4 = 0.00625


# ---------------------------------------------------------------------------------------------------------- training


def _short_run(seed: int, steps: int = 4) -> tuple[nn.Module, list[tuple[int, dict[str, float]]]]:
    data = load_dataset("digits", 16)
    logs: list[tuple[int, dict[str, float]]] = []
    ema = train_tokenizer(_tiny(seed=0), data.train, steps=steps, lr=3e-3, batch_size=16, seed=seed,
                          log_every=2, on_log=lambda step, terms: logs.append((step, terms)))
    return ema, logs


def test_training_is_deterministic_given_seed_and_logs() -> None:
    torch.manual_seed(123)  # the loop must not depend on the global RNG
    first, logs = _short_run(seed=7, steps=3)
    torch.manual_seed(456)
    second, _ = _short_run(seed=7, steps=3)
    other, _ = _short_run(seed=8, steps=3)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values()))
    assert not first.training and all(not p.requires_grad for p in first.parameters())
    assert [step for step, _ in logs] == [2, 3]  # every log_every steps and at the last
    assert set(logs[0][1]) == {"loss", "l1", "bit_usage_penalty"}
    assert all(math.isfinite(v) for _, terms in logs for v in terms.values())


def test_training_accepts_a_plain_dataset_and_rejects_bad_arguments() -> None:
    images, labels = stack(load_dataset("digits", 16).train, limit=40)

    class Plain(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 40

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return images[i], int(labels[i])

    model = _tiny()
    ema = train_tokenizer(model, Plain(), steps=2, lr=1e-3, batch_size=8, seed=0)
    assert isinstance(ema, BinaryAutoencoder) and ema is not model
    with pytest.raises(ValueError, match="must be positive"):
        train_tokenizer(model, Plain(), steps=0, lr=1e-3, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="ema_decay must be in"):
        train_tokenizer(model, Plain(), steps=1, lr=1e-3, batch_size=8, seed=0, ema_decay=1.0)


def test_quality_bar_on_digits() -> None:
    """16x16 digits, D=8, tiny: held-out PSNR >= mean-image baseline + 3 dB with >= 90% of bits used."""
    data = load_dataset("digits", 16)
    model = _tiny(code_dim=8, seed=0)
    start = time.perf_counter()
    ema = train_tokenizer(model, data.train, seed=0, **DIGITS_RECIPE)  # type: ignore[arg-type]
    wall_s = time.perf_counter() - start
    heldout, _ = stack(data.heldout)
    metrics = reconstruction_metrics(ema, heldout)
    print(f"digits BAE: {wall_s:.1f} s training, held-out {metrics}")
    assert metrics["mean_image_psnr_db"] == pytest.approx(13.5, abs=0.3)
    assert metrics["psnr_db"] >= metrics["mean_image_psnr_db"] + 3.0
    assert metrics["bit_usage"] >= 0.9

"""Binary autoencoder (BAE): the ELM tokenizer that turns each latent position into D bits.

    images (B, C, H, W) --Encoder--> (B, latent_width, h, w) --1x1 conv (quantize.proj)--> logits (B, D, h, w)
      --sigmoid--> probs p --quantize--> bits {0, 1} --bit embedding (quantize.embed)--> (B, latent_width, h, w)
      --Decoder (GroupNorm first)--> images (B, C, H, W), unbounded

Quantisation (ELM "Tokenizers"): in training, bits ~ Bernoulli(p) (the paper's pick); deterministic mode
bits = [p > 0.5] (used for evaluation). Either way straight-through: the forward value is the hard bit,
the backward pass treats the quantiser as the identity so the gradient reaches p and the encoder.

Bit embedding: a bias-free linear map, one learned latent_width vector per bit, summed over the bits that are
set (the authors' einsum over an nn.Embedding table, so their tensor loads as is). The decoder normalises it
with a GroupNorm before its first conv (`norm_first`, on in every ELM script).

Output: the decoder's last conv, unbounded, as the authors'. Training losses read it as it is; `decode_ids`, the
interface that makes images (sampling, evaluation), clamps it to [0, 1], as the authors' samplers do.

Parameter names match the authors' `BinaryAutoEncoder` after its `ae.` prefix, except `decoder.` for their
`generator.` (a word this project keeps for the image generators); runners/tokenizers/released.py converts.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn as nn
from torch import Tensor

from runners.tokenizers.backbone import BACKBONE_SIZES, Decoder, Encoder, check_backbone
from runners.vocab import Vocabulary

# Size ladder of the BAE: each rung is a backbone config (see backbone.py for shapes and parameter counts).
BAE_SIZES = {name: BACKBONE_SIZES[name] for name in ("tiny", "small", "imagenet")}

QuantizeMode = Literal["bernoulli", "threshold"]
QUANTIZE_MODES: tuple[str, ...] = ("bernoulli", "threshold")


def check_mode(mode: str) -> None:
    """ValueError unless `mode` is one of QUANTIZE_MODES."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"mode must be one of {', '.join(QUANTIZE_MODES)}, but got mode={mode!r}; "
                         f"use 'bernoulli' for training and 'threshold' for evaluation")


def bits_to_token_ids(bits: Tensor, vocab: Vocabulary) -> Tensor:
    """Bits (B, D, h, w) -> sub-token ids (B, h*w, K) int64, positions in row-major raster order."""
    return vocab.bits_to_ids(bits.flatten(2).transpose(1, 2))  # (B, h*w, D) -> (B, h*w, K)


def token_ids_to_bits(ids: Tensor, vocab: Vocabulary, grid: tuple[int, int]) -> Tensor:
    """Sub-token ids (B, h*w, K) -> bits (B, D, h, w) float32; the exact inverse of `bits_to_token_ids`."""
    if ids.ndim != 3 or ids.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"ids must have shape (B, h*w={grid[0] * grid[1]}, K={vocab.token_each}), "
                         f"but got {tuple(ids.shape)}")
    bits = vocab.ids_to_bits(ids)  # (B, h*w, D)
    # contiguous: a strided input takes another conv kernel path whose float rounding differs (~1e-6)
    return bits.transpose(1, 2).reshape(ids.shape[0], vocab.code_dim, *grid).contiguous()


def quantize_bits(probs: Tensor, mode: QuantizeMode, generator: torch.Generator | None = None) -> Tensor:
    """Bit probabilities (B, D, h, w) -> bits {0., 1.} of the same shape, straight-through to `probs`.

    "bernoulli": bit = [u < p] with u ~ U(0, 1) drawn from `generator` (global RNG if None; the generator must
    live on probs.device). "threshold": bit = [p > 0.5], deterministic.
    """
    check_mode(mode)
    if mode == "bernoulli":
        uniform = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
        hard = (uniform < probs).to(probs.dtype)
    else:
        hard = (probs > 0.5).to(probs.dtype)
    # Forward value = hard bits; d bits / d probs = identity (straight-through estimator).
    return probs + (hard - probs).detach()


def bit_usage_penalty(probs: Tensor) -> Tensor:
    """Mean over the D bits of (batch-mean probability of bit d - 0.5)^2; probs (B, D, h, w) -> scalar.

    Zero when every bit is on for half of the (image, position) pairs; 0.25 when every bit is stuck. Without it,
    small BAEs leave some bits at one value for every image (ELM.md "Tokenizers", digits note).
    """
    mean_per_bit = probs.mean(dim=(0, 2, 3))  # (D,)
    return ((mean_per_bit - 0.5) ** 2).mean()


class BitMaps(nn.Module):
    """The two learned maps between latent features and bits (the authors' `quantize` module, same names)."""

    def __init__(self, latent_width: int, code_dim: int):
        super().__init__()
        # (B, latent_width, h, w) -> D bit logits (B, D, h, w); a Sequential so that the key is `proj.0`, as theirs
        self.proj = nn.Sequential(nn.Conv2d(latent_width, code_dim, 1))
        # row n: the latent vector that bit n adds where it is set (no bias); nn.Embedding's N(0, 1) init, as theirs
        self.embed = nn.Embedding(code_dim, latent_width)

    def logits(self, features: Tensor) -> Tensor:
        """(B, latent_width, h, w) -> (B, D, h, w)."""
        return self.proj(features)

    def embed_bits(self, bits: Tensor) -> Tensor:
        """Bits (B, D, h, w) -> (B, latent_width, h, w): the sum of embed.weight[n] over the set bits n."""
        return torch.einsum("b n h w, n d -> b d h w", bits, self.embed.weight)


class BinaryAutoencoder(nn.Module):
    """Conv encoder -> D sigmoid bits per latent position -> conv decoder (ELM's BAE tokenizer, the authors' layout).

    Token interface (runners/tokenizers/__init__.py): a latent position holds `code_dim` bits, cut into K
    sub-token ids by a `Vocabulary(code_dim, K)`; encoding is stochastic (Bernoulli) or thresholded.
    """

    latent_kind: ClassVar[str] = "bits"
    """What a latent position holds: D = code_dim bits."""
    stochastic_encoding: ClassVar[bool] = True
    """encode_ids(mode="bernoulli") draws fresh bits each call (ELM's augmentation for generator training)."""

    def __init__(self, *, code_dim: int, size: str, channels: int, image_size: int, bernoulli: bool = True):
        """
        Args:
            code_dim: D, bits per latent position (the paper tries 16, 20, 24, 32).
            size: a key of BAE_SIZES ("tiny", "small", "imagenet").
            channels: image channels C.
            image_size: image side H = W; a multiple of the size's downsampling factor.
            bernoulli: sample bits ~ Bernoulli(p) in training mode (else threshold also in training).
        """
        super().__init__()
        if size not in BAE_SIZES:
            raise ValueError(f"size must be one of {', '.join(BAE_SIZES)}, but got size={size!r}; "
                             f"try 'tiny' on a CPU or 'imagenet' for the paper's BAE")
        if code_dim < 1:
            raise ValueError(f"code_dim must be >= 1, but got code_dim={code_dim}; the paper uses 16, 20, 24 or 32")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, but got channels={channels}; use 1 (grey) or 3 (RGB)")
        config = BAE_SIZES[size]
        check_backbone(config, image_size)
        self.config = config
        self.code_dim = code_dim
        self.size = size
        self.channels = channels
        self.image_size = image_size
        self.bernoulli = bernoulli
        self.encoder = Encoder(config, channels, image_size)  # (B, C, H, W) -> (B, latent_width, h, w)
        self.quantize = BitMaps(config.latent_width, code_dim)
        self.decoder = Decoder(config, channels, image_size, norm_first=True)  # (B, latent_width, h, w) -> images

    @property
    def init_kwargs(self) -> dict[str, object]:
        """The constructor arguments: `BinaryAutoencoder(**model.init_kwargs)` rebuilds the architecture."""
        return dict(code_dim=self.code_dim, size=self.size, channels=self.channels, image_size=self.image_size,
                    bernoulli=self.bernoulli)

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w): latent positions per image side."""
        side = self.image_size // self.config.downsample
        return side, side

    def encode_logits(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in [0, 1] -> bit logits (B, D, h, w); probabilities are their sigmoid."""
        return self.quantize.logits(self.encoder(images))

    def encode_probs(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in [0, 1] -> bit probabilities (B, D, h, w)."""
        return torch.sigmoid(self.encode_logits(images))

    def binarize(self, probs: Tensor, mode: QuantizeMode, generator: torch.Generator | None = None) -> Tensor:
        """Probabilities (B, D, h, w) -> straight-through bits {0., 1.} (B, D, h, w); see `quantize_bits`."""
        return quantize_bits(probs, mode, generator)

    def encode(self, images: Tensor, mode: QuantizeMode = "threshold",
               generator: torch.Generator | None = None) -> Tensor:
        """Images (B, C, H, W) -> bits (B, D, h, w). For a generator's training data use mode="bernoulli"."""
        return self.binarize(self.encode_probs(images), mode, generator)

    def decode(self, bits: Tensor) -> Tensor:
        """Bits (B, D, h, w) -> decoder output (B, C, H, W), unbounded (images are its clamp to [0, 1])."""
        return self.decoder(self.quantize.embed_bits(bits))

    @property
    def to_logits(self) -> nn.Conv2d:
        """The 1x1 conv from the encoder's features to the D bit logits."""
        conv = self.quantize.proj[0]
        assert isinstance(conv, nn.Conv2d)
        return conv

    @property
    def last_layer(self) -> nn.Conv2d:
        """The decoder's final conv (for an adaptive loss weight based on gradient norms)."""
        return self.decoder.last_layer

    # ------------------------------------------------------------------------------------------ token interface

    def check_vocab(self, vocab: Vocabulary | None) -> Vocabulary:
        """`vocab` itself if it cuts this BAE's code_dim bits; ValueError naming the fix otherwise."""
        if not isinstance(vocab, Vocabulary) or vocab.code_dim != self.code_dim:
            raise ValueError(f"vocab must be a Vocabulary with code_dim={self.code_dim} (this BAE's bits per "
                             f"position), but got {vocab!r}; pass Vocabulary(code_dim={self.code_dim}, token_each=K)")
        return vocab

    def token_shape(self, vocab: Vocabulary | None) -> tuple[int, int]:
        """(K, V): sub-tokens per latent position and ids per sub-token (2^c) under `vocab`."""
        vocab = self.check_vocab(vocab)
        return vocab.token_each, vocab.size

    def encode_ids(self, images: Tensor, *, mode: QuantizeMode, vocab: Vocabulary | None,
                   generator: torch.Generator | None = None) -> Tensor:
        """Images (B, C, H, W) -> sub-token ids (B, h*w, K) int64 in raster order.

        mode "bernoulli": bits ~ Bernoulli(p) from `generator` (fresh draws every call); "threshold": [p > 0.5].
        """
        vocab = self.check_vocab(vocab)
        check_mode(mode)
        bits = quantize_bits(self.encode_probs(images), mode, generator).detach()  # (B, D, h, w)
        return bits_to_token_ids(bits, vocab)

    def decode_ids(self, ids: Tensor, vocab: Vocabulary | None = None) -> Tensor:
        """Sub-token ids (B, h*w, K) -> images (B, C, H, W), the decoder's output clamped to [0, 1].

        vocab None = Vocabulary(D, K=ids.shape[-1])."""
        if vocab is None:
            vocab = Vocabulary(code_dim=self.code_dim, token_each=int(ids.shape[-1]))
        vocab = self.check_vocab(vocab)
        bits = token_ids_to_bits(ids, vocab, self.grid).to(self.quantize.embed.weight.dtype)  # (B, D, h, w)
        return self.decode(bits).clamp(0.0, 1.0)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Images (B, C, H, W) -> dict(recon (B, C, H, W) unbounded, probs (B, D, h, w), bits (B, D, h, w)).

        Bernoulli bits (drawn from `generator`) when `self.bernoulli` and in training mode, else threshold.
        """
        probs = self.encode_probs(images)
        mode: QuantizeMode = "bernoulli" if (self.bernoulli and self.training) else "threshold"
        bits = self.binarize(probs, mode, generator)
        return dict(recon=self.decode(bits), probs=probs, bits=bits)

"""Image tokenizers: one file per tokenizer, one line each in TOKENIZERS.

Every tokenizer is an nn.Module built by `TOKENIZERS[name].build(size=..., channels=..., image_size=..., ...)`
(its own settings as further keyword arguments: BAE `code_dim`, `bernoulli`; VQ `codebook_size`, `code_width`,
`beta`, `restart_dead_codes`, `restart_after_steps`) and implements the `Tokenizer` protocol below:

    training     forward(images, generator) -> dict(recon (B, C, H, W) unbounded, + its own loss inputs:
                 BAE probs/bits, VQ quant_loss/ids); last_layer (decoder's final conv, for the adaptive GAN weight);
                 init_kwargs (rebuilds the architecture).
    tokens       grid -> (h, w); latent_kind -> "bits" (a position holds code_dim bits, cut into K sub-tokens by
                 a runners.vocab.Vocabulary) or "index" (a position holds one id in [0, codebook_size), K = 1,
                 vocab None); token_shape(vocab) -> (K, V) sub-tokens per position and ids per sub-token;
                 encode_ids(images, *, mode, vocab, generator) -> ids (B, h*w, K) int64 in raster order;
                 decode_ids(ids, vocab) -> images (B, C, H, W) clamped to [0, 1] (the one place where the
                 decoder's unbounded output becomes images); stochastic_encoding (whether
                 mode="bernoulli" draws fresh tokens per call: BAE yes, VQ no).

`vocabulary_for(tokenizer, token_each)` gives the vocab argument for a tokenizer (a Vocabulary for bits, None for
an index tokenizer). `code_version` enters the content key of every tokenizer artifact: bump it when a change
to the code changes what a trained tokenizer computes. `runners.tokenizers.released.tokenizer_from_released`
builds one from the ELM authors' released checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn
from torch import Tensor

from runners.tokenizers.bae import BAE_SIZES, BinaryAutoencoder, QuantizeMode
from runners.tokenizers.vq import VQ_SIZES, VQTokenizer
from runners.vocab import Vocabulary

LATENT_KINDS: tuple[str, ...] = ("bits", "index")


@runtime_checkable
class Tokenizer(Protocol):
    """What downstream code (generator data, sampling, evaluation) may use of any tokenizer."""

    latent_kind: str
    """"bits" (code_dim bits per position, cut by a Vocabulary) or "index" (one codebook id per position)."""
    stochastic_encoding: bool
    """True if encode_ids(mode="bernoulli") draws fresh tokens each call."""

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) latent positions; a sequence has N = h*w positions in raster order."""
        ...

    @property
    def init_kwargs(self) -> dict[str, object]:
        """Constructor arguments that rebuild the architecture."""
        ...

    @property
    def last_layer(self) -> nn.Conv2d:
        """The decoder's final conv (adaptive GAN weight)."""
        ...

    def token_shape(self, vocab: Vocabulary | None) -> tuple[int, int]:
        """(K, V): sub-tokens per position and ids per sub-token."""
        ...

    def encode_ids(self, images: Tensor, *, mode: QuantizeMode, vocab: Vocabulary | None,
                   generator: torch.Generator | None = None) -> Tensor:
        """Images (B, C, H, W) in [0, 1] -> ids (B, h*w, K) int64."""
        ...

    def decode_ids(self, ids: Tensor, vocab: Vocabulary | None = None) -> Tensor:
        """Ids (B, h*w, K) -> images (B, C, H, W), clamped to [0, 1]."""
        ...


@dataclass(frozen=True)
class TokenizerEntry:
    """A registered tokenizer."""

    build: Callable[..., nn.Module]
    """Builds an untrained tokenizer from keyword arguments."""
    code_version: str
    """Version of the code that defines it; part of artifact content keys."""
    description: str
    """One line for docs and reports."""


TOKENIZERS: dict[str, TokenizerEntry] = {
    "bae": TokenizerEntry(
        build=BinaryAutoencoder,
        code_version="bae-2",  # 2: the authors' architecture (norm_first, 2 res blocks, no output sigmoid)
        description="binary autoencoder: D Bernoulli/threshold bits per latent position, straight-through "
        f"(ELM's pick); sizes {', '.join(BAE_SIZES)}",
    ),
    "vq": TokenizerEntry(
        build=VQTokenizer,
        code_version="vq-2",  # 2: the authors' backbone and loss weighting (commitment 1, codebook beta)
        description="VQGAN-style nearest-neighbour codebook (codebook term 0.25, straight-through, optional dead-code "
        f"restarts) on the BAE's backbone; sizes {', '.join(VQ_SIZES)}",
    ),
}


def get_tokenizer(name: str) -> TokenizerEntry:
    """The registry entry for `name`; ValueError naming the valid choices otherwise."""
    if name not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, but got tokenizer={name!r}")
    return TOKENIZERS[name]


def vocabulary_for(tokenizer: nn.Module, token_each: int) -> Vocabulary | None:
    """The `vocab` argument of a tokenizer's token methods when each position becomes `token_each` sub-tokens.

    "bits": Vocabulary(code_dim, token_each) (its own errors name valid token_each). "index": None, and
    token_each must be 1 (a codebook id cannot be cut).
    """
    kind = getattr(tokenizer, "latent_kind", None)
    if kind == "bits":
        return Vocabulary(code_dim=int(tokenizer.code_dim), token_each=token_each)  # type: ignore[arg-type]
    if kind == "index":
        if token_each != 1:
            raise ValueError(f"token_each must be 1 for a codebook tokenizer (one id per position), but got "
                             f"token_each={token_each}; set token_each: 1 or use tokenizer: bae")
        return None
    raise ValueError(f"tokenizer.latent_kind must be one of {', '.join(LATENT_KINDS)}, but got {kind!r}; "
                     f"implement the Tokenizer protocol of runners/tokenizers/__init__.py")

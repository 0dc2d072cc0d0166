"""Image tokenizers: one file per tokenizer, one line each in TOKENIZERS.

A tokenizer's `build(code_dim=..., size=..., channels=..., image_size=..., ...)` returns an nn.Module with
`grid`, `encode(images, mode, generator)` and `decode(codes)`. `code_version` enters the content key of every
tokenizer artifact: bump it when a change to the code changes what a trained tokenizer computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from runners.tokenizers.bae import BAE_SIZES, BinaryAutoencoder


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
        code_version="bae-1",
        description="binary autoencoder: D Bernoulli/threshold bits per latent position, straight-through "
        f"(ELM's pick); sizes {', '.join(BAE_SIZES)}",
    ),
}


def get_tokenizer(name: str) -> TokenizerEntry:
    """The registry entry for `name`; ValueError naming the valid choices otherwise."""
    if name not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, but got tokenizer={name!r}")
    return TOKENIZERS[name]

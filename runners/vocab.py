"""Bits <-> sub-token ids: the ELM "K-c" vocabulary.

Each latent position carries a D-bit binary code. It is cut into K chunks of c = D / K bits; chunk k
(bits k*c .. (k+1)*c - 1) becomes one integer id in [0, 2^c), read with the first bit most significant.
So D=4, K=2 maps bits [1, 0, 1, 1] to ids [0b10, 0b11] = [2, 3]. The map is a bijection: ids_to_bits
reverses it exactly. The paper's picks: 2-10 (D=20) for L/XL and 2-12 (D=24) for XXL/2B.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MAX_BITS_EACH = 62  # ids are int64; 2**62 still fits with room for sign and arithmetic


@dataclass(frozen=True)
class Vocabulary:
    """The sub-token vocabulary of a D-bit code cut into K sub-tokens of c = D // K bits each."""

    code_dim: int
    """D: bits per latent position (the tokenizer's code dimension)."""
    token_each: int
    """K: sub-tokens per latent position; must divide code_dim."""

    def __post_init__(self) -> None:
        if self.code_dim < 1:
            raise ValueError(f"code_dim must be >= 1, but got code_dim={self.code_dim}; try 16, 20 or 24")
        if self.token_each < 1 or self.code_dim % self.token_each != 0:
            divisors = [k for k in range(1, self.code_dim + 1) if self.code_dim % k == 0]
            choices = ", ".join(str(k) for k in divisors[:-1]) + f" or {divisors[-1]}" if len(divisors) > 1 else "1"
            raise ValueError(
                f"token_each must divide code_dim ({self.code_dim}), but got token_each={self.token_each}; "
                f"try {choices}"
            )
        if self.bits_each > MAX_BITS_EACH:
            raise ValueError(
                f"bits per sub-token (code_dim / token_each) must be <= {MAX_BITS_EACH} to fit int64 ids, but got "
                f"{self.bits_each} (code_dim={self.code_dim}, token_each={self.token_each}); raise token_each"
            )

    @property
    def bits_each(self) -> int:
        """c = D // K: bits per sub-token."""
        return self.code_dim // self.token_each

    @property
    def size(self) -> int:
        """2^c: number of distinct ids per sub-token."""
        return 2**self.bits_each

    def _weights(self, device: torch.device) -> Tensor:
        # Place values of one chunk, first bit most significant: (c,) = [2^(c-1), ..., 2, 1].
        return 2 ** torch.arange(self.bits_each - 1, -1, -1, device=device, dtype=torch.int64)

    def bits_to_ids(self, bits: Tensor) -> Tensor:
        """Bits `(..., D)` with values in {0, 1} (float, bool or int) -> ids `(..., K)` int64 in [0, 2^c)."""
        if bits.shape[-1:] != (self.code_dim,):
            raise ValueError(
                f"bits must have last dimension code_dim={self.code_dim}, but got shape {tuple(bits.shape)}; "
                f"move the bit axis last, e.g. (B, D, h, w) -> (B, h*w, D)"
            )
        hard = bits.to(torch.int64)  # (..., D)
        if hard.numel() and not bool(((hard == 0) | (hard == 1)).all() & (hard == bits).all()):
            raise ValueError("bits must hold only the values 0 and 1; threshold or sample the probabilities first")
        chunks = hard.reshape(*hard.shape[:-1], self.token_each, self.bits_each)  # (..., K, c)
        return (chunks * self._weights(hard.device)).sum(-1)  # (..., K)

    def ids_to_bits(self, ids: Tensor) -> Tensor:
        """Ids `(..., K)` integers in [0, 2^c) -> bits `(..., D)` float32 {0., 1.}; exact inverse of bits_to_ids."""
        if ids.shape[-1:] != (self.token_each,):
            raise ValueError(
                f"ids must have last dimension token_each={self.token_each}, but got shape {tuple(ids.shape)}"
            )
        if ids.is_floating_point():
            raise ValueError(f"ids must be an integer tensor, but got dtype {ids.dtype}; use ids.long()")
        ids = ids.to(torch.int64)
        if ids.numel() and not bool(((ids >= 0) & (ids < self.size)).all()):
            raise ValueError(
                f"ids must lie in [0, {self.size}) for {self.bits_each} bits per sub-token, but got values in "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )
        chunks = (ids.unsqueeze(-1) // self._weights(ids.device)) % 2  # (..., K, c)
        return chunks.reshape(*ids.shape[:-1], self.code_dim).to(torch.float32)  # (..., D)

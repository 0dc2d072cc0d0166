"""Shared Llama-style transformer blocks for the image-token generators (AR and MLM).

Everything here follows ELM.md "Generators": pre-norm RMSNorm (eps 1e-5), SwiGLU MLP with
hidden = 8/3 * width rounded up to a multiple of 256, no biases anywhere, 2D rotary positions
(half of each head dim rotates with the row index, half with the column index, base 10000),
dropout on the residual branches, init N(0, 0.02).

Rotary positions travel as a rotation table (T, D/2, 2) holding (cos, sin) of each slot's angle per
channel pair, not as angles, so that a slot can also get the all-zero row (cos 0, sin 0). That row
zeroes the slot's query and key: it is what the authors' code (and LlamaGen) gives the class-token
slot(s), so such a slot is never attended to by its query-key score (its value still enters with
score 0) and attends uniformly itself. `class_rotation` builds those rows; "identity" (cos 1, sin 0,
the slot unrotated) is the project's own variant, off by default (GeneratorConfig.class_rotary).

Shapes: B batch, T sequence slots, C width, H heads, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROTARY_BASE = 10000.0
INIT_STD = 0.02
CLASS_ROTARY = ("zero", "identity")
"""rotary rows of class-token slots: "zero" (cos 0, sin 0: q and k of the slot become 0; the authors')
or "identity" (cos 1, sin 0: the slot unrotated; the project's earlier variant)"""


def swiglu_hidden(width: int, multiple_of: int = 256) -> int:
    """Hidden width of the SwiGLU MLP: 8/3 * width rounded UP to a multiple of `multiple_of`.

    Integer arithmetic (ceil(8 * width / (3 * multiple_of)) * multiple_of), so e.g. 1024 -> 2816,
    1536 -> 4096 (exact), 64 -> 256.
    """
    if width <= 0:
        raise ValueError(f"width must be positive, but got width={width}")
    return -(-8 * width // (3 * multiple_of)) * multiple_of


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain and no bias (Llama). Computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:  # (..., C) -> (..., C)
        x_float = x.float()
        normed = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class SwiGLU(nn.Module):
    """Llama MLP: w2(silu(w1 x) * w3 x), no biases, dropout on the output (the "MLP dropout")."""

    def __init__(self, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = swiglu_hidden(width)
        self.w1 = nn.Linear(width, hidden, bias=False)  # gate
        self.w3 = nn.Linear(width, hidden, bias=False)  # value
        self.w2 = nn.Linear(hidden, width, bias=False)  # back to the residual stream
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def rotary_angles_2d(positions: Tensor, head_dim: int, base: float = ROTARY_BASE) -> Tensor:
    """Rotation angles of 2D rotary embeddings for (row, col) grid coordinates.

    positions: (T, 2) integer or float (row, col). Returns angles (T, head_dim // 2) in float32,
    one angle per pair of adjacent channels (2i, 2i+1) of a head. The first head_dim/4 pairs
    rotate with the row index, the last head_dim/4 with the column index, each with frequencies
    base ** (-i / (head_dim/4)), i = 0..head_dim/4-1 (LlamaGen's `precompute_freqs_cis_2d`).
    """
    if head_dim % 4 != 0:
        raise ValueError(
            f"2D rotary needs head_dim divisible by 4 (pairs split between row and column), "
            f"but got head_dim={head_dim}; choose width/heads as a multiple of 4"
        )
    if positions.ndim != 2 or positions.shape[-1] != 2:
        raise ValueError(f"positions must have shape (T, 2) of (row, col), but got {tuple(positions.shape)}")
    quarter = head_dim // 4
    exponent = torch.arange(quarter, dtype=torch.float32, device=positions.device) / quarter
    freqs = base ** (-exponent)  # (D/4,)
    pos = positions.to(torch.float32)
    row = pos[:, 0:1] * freqs  # (T, D/4)
    col = pos[:, 1:2] * freqs  # (T, D/4)
    return torch.cat([row, col], dim=-1)  # (T, D/2)


def rotation_table(angles: Tensor) -> Tensor:
    """(T, D/2) angles -> (T, D/2, 2) rotation table of (cos, sin), float32."""
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def class_rotation(slots: int, head_dim: int, mode: str, device: torch.device | str | None = None) -> Tensor:
    """Rotation rows (slots, D/2, 2) of class-token slots: all zeros ("zero") or cos 1, sin 0 ("identity")."""
    if mode not in CLASS_ROTARY:
        raise ValueError(f"class_rotary must be one of {list(CLASS_ROTARY)}, but got {mode!r}")
    rows = torch.zeros(slots, head_dim // 2, 2, device=device)
    if mode == "identity":
        rows[..., 0] = 1.0
    return rows


def apply_rotary(x: Tensor, rotation: Tensor) -> Tensor:
    """Rotate each adjacent channel pair (2i, 2i+1) of x by the (cos, sin) in rotation[..., i, :].

    x: (B, H, T, D); rotation: (T, D/2, 2) float32 (`rotation_table`, `class_rotation`). Computed in
    float32, returned in x's dtype. A (1, 0) row is the identity; a (0, 0) row zeroes the slot.
    """
    x_pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, H, T, D/2, 2)
    cos, sin = rotation[..., 0], rotation[..., 1]  # (T, D/2)
    x0, x1 = x_pairs[..., 0], x_pairs[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(-2).type_as(x)


class Attention(nn.Module):
    """Multi-head self-attention with 2D rotary q/k, no biases, residual dropout on the output.

    Causal (AR) or bidirectional (MLM) is chosen per call, so one block serves both generators.
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width must be divisible by heads, but got width={width}, heads={heads}")
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, rotation: Tensor, *, is_causal: bool, attn_mask: Tensor | None = None
    ) -> Tensor:
        """x (B, T, C), rotation (T, D/2, 2); attn_mask (T, T) bool (True = may attend) or None."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        q, k = apply_rotary(q, rotation), apply_rotary(k, rotation)
        # attention-probability dropout is 0 (LlamaGen default); dropout sits on the residual branch
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal and attn_mask is None)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.proj(y))

    def forward_cached(self, x: Tensor, rotation: Tensor, keys: Tensor, values: Tensor, start: int) -> Tensor:
        """Causal attention of t new slots against a key/value cache (AR decoding).

        x (B, t, C) holds slots start..start+t-1, rotation (t, D/2, 2) their rotations. keys / values
        (B, H, S, D) hold slots 0..start-1 already; the new slots' k / v are written in place at
        start..start+t-1, then each new slot attends to every slot up to and including itself.
        """
        B, t, C = x.shape
        end = start + t
        if end > keys.shape[2]:
            raise ValueError(f"the KV cache holds {keys.shape[2]} slots, but slots up to {end} were requested")
        q, k, v = self.qkv(x).split(C, dim=-1)  # 3 x (B, t, C)
        q, k, v = (u.view(B, t, self.heads, self.head_dim).transpose(1, 2) for u in (q, k, v))  # (B, H, t, D)
        q, k = apply_rotary(q, rotation), apply_rotary(k, rotation)
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        k_all, v_all = keys[:, :, :end].to(q.dtype), values[:, :, :end].to(q.dtype)  # (B, H, end, D)
        mask = None
        if t > 1:  # new slot i (absolute start + i) sees slots 0..start + i
            mask = torch.ones(t, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)  # (B, H, t, D)
        y = y.transpose(1, 2).reshape(B, t, C)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """Pre-norm Llama block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(width, norm_eps)
        self.attention = Attention(width, heads, dropout)
        self.mlp_norm = RMSNorm(width, norm_eps)
        self.mlp = SwiGLU(width, dropout)

    def forward(
        self, x: Tensor, rotation: Tensor, *, is_causal: bool, attn_mask: Tensor | None = None
    ) -> Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.attention(self.attention_norm(x), rotation, is_causal=is_causal, attn_mask=attn_mask)
        return x + self.mlp(self.mlp_norm(x))

    def forward_cached(self, x: Tensor, rotation: Tensor, keys: Tensor, values: Tensor, start: int) -> Tensor:
        """The same block on t new slots with a KV cache (see Attention.forward_cached)."""
        x = x + self.attention.forward_cached(self.attention_norm(x), rotation, keys, values, start)
        return x + self.mlp(self.mlp_norm(x))


def block_parameter_count(width: int) -> int:
    """Parameters of one Block, analytically: qkv + proj (4 C^2), SwiGLU (3 C hidden), two norms (2 C)."""
    return 4 * width * width + 3 * width * swiglu_hidden(width) + 2 * width


def drop_labels(
    labels: Tensor, p: float, null_class: int, *, training: bool, generator: torch.Generator | None
) -> Tensor:
    """Replace each label by the null class with probability p (training only; CFG's class dropout).

    The coin flips come from `generator` when given (on its device, then moved to the labels'), else
    from the global RNG on the labels' device.
    """
    if not training or p == 0.0:
        return labels
    rng_device = generator.device if generator is not None else labels.device
    drop = torch.rand(labels.shape, generator=generator, device=rng_device).to(labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def init_weights(module: nn.Module, std: float = INIT_STD) -> None:
    """N(0, std) for every Linear / Embedding weight (no biases exist); RMSNorm gains stay 1."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)

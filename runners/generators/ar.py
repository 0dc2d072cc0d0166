"""Llama-style autoregressive (AR) image-token generator (ELM.md "Generators").

The generator sees ids (B, N, K): N = grid_height * grid_width latent positions in scan order,
K sub-tokens per position, each in [0, 2**bits_each). Class labels (B,) in [0, num_classes];
the value num_classes is the null class used for classifier-free guidance.

Sequence layout (teacher forcing), T = N slots:

    slot      0            1             2            ...  N-1
    holds     class token  token 0       token 1      ...  token N-2
    rotary    zero row     pos(token 0)  pos(token 1) ...  pos(token N-2)
    predicts  token 0      token 1       token 2      ...  token N-1

Rotary choice (LlamaGen's and the authors'): the slot holding token n-1 rotates with the grid
coordinates of token n-1 itself, i.e. where the token it *holds* lives, not where the token it
predicts goes. The class-token slot has no grid position; its rotation row is all zeros (cos 0,
sin 0), which zeroes that slot's query and key, as in the authors' code. `class_rotary="identity"`
keeps them intact instead (the project's own variant, off by default). With a fixed scan order the
position of token n follows from that of token n-1, so nothing is lost. The sampler
(runners/sampling.py) builds its prefixes the same way through `next_logits`.

The released ELM checkpoints load into this module through runners/generators/released.py (one
documented key rename per tensor, identical shapes) and give the authors' logits.

KV-cached decoding (what `sample_ar(..., kv_cache=True)` uses): `init_cache` allocates per-layer
keys/values for the N slots and binds the scan order's rotations; `prefill` runs the class
token (and optionally a prefix of tokens) once, then each `decode_step` feeds the one token just
sampled and returns the logits of the next position. Slot for slot it computes the same numbers
as `next_logits` (up to float rounding), in O(N) instead of O(N^2) token passes per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runners.generators.layers import (
    CLASS_ROTARY,
    Block,
    RMSNorm,
    block_parameter_count,
    class_rotation,
    drop_labels,
    init_weights,
    rotary_angles_2d,
    rotation_table,
)


@dataclass(frozen=True)
class GeneratorSize:
    """One rung of the size ladder: transformer depth, residual width and attention heads."""

    layers: int
    width: int
    heads: int


# Parameter counts (from `parameter_count`) for the vocabulary each rung is used with:
GENERATOR_SIZES: dict[str, GeneratorSize] = {
    # CPU rungs. tiny (head dim 16): 0.16M for 1-8, 10 classes, 4x4 grid; small (head dim 64): 3.5M
    # for the same vocabulary.
    "tiny": GeneratorSize(layers=2, width=64, heads=4),
    "small": GeneratorSize(layers=4, width=256, heads=4),
    # paper sizes, head dim 64, 1000 classes, 16x16 grid (equal to the authors' modules' counts):
    # L 2-10 315.6M, XL 2-10 741.3M, XXL 2-12 1.39B, 2B 2-12 1.91B.
    "L": GeneratorSize(layers=24, width=1024, heads=16),
    "XL": GeneratorSize(layers=36, width=1280, heads=20),
    "XXL": GeneratorSize(layers=48, width=1536, heads=24),
    "2B": GeneratorSize(layers=48, width=1792, heads=28),
}


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything that determines a generator's architecture (and hence its parameter count)."""

    size: str
    """key of GENERATOR_SIZES ("tiny", "small", "L", "XL", "XXL", "2B")"""
    grid_height: int
    """latent grid rows h (16 for 256 px with downsampling 16)"""
    grid_width: int
    """latent grid columns w"""
    token_each: int
    """K: sub-tokens per latent position (the K of the paper's "K-c" vocabulary)"""
    bits_each: int
    """c: bits per sub-token; each sub-token has vocabulary 2**c"""
    num_classes: int
    """real classes; id num_classes is the null class for CFG"""
    dropout: float = 0.1
    """token, residual and MLP dropout"""
    class_dropout: float = 0.1
    """probability of replacing a label with the null class during training"""
    mask_schedule_steps: int = 10
    """MLM only (AR ignores it): T of the training mask schedule; a step s is drawn uniformly from
    {0..T-1} and floor(N cos(pi/2 s/T)) positions are masked. With T = the decoder's step count the
    training mask counts are exactly those the MaskGIT decoder feeds the model (ELM: ~10 steps)"""
    class_rotary: str = "zero"
    """rotary row of the class-token slot(s): "zero" zeroes their query and key (the authors' code,
    LlamaGen); "identity" leaves them unrotated (the project's own variant)"""
    mask_per_sample: bool = False
    """MLM only: draw the mask-schedule step per sample (True, the project's variant) instead of once
    per batch (False, the authors' default)"""

    def __post_init__(self) -> None:
        if self.size not in GENERATOR_SIZES:
            raise ValueError(
                f"size must be one of {sorted(GENERATOR_SIZES)}, but got size={self.size!r}"
            )
        for name in ("grid_height", "grid_width", "token_each", "bits_each", "num_classes", "mask_schedule_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, but got {name}={value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), but got dropout={self.dropout!r}")
        if not 0.0 <= self.class_dropout <= 1.0:
            raise ValueError(f"class_dropout must lie in [0, 1], but got class_dropout={self.class_dropout!r}")
        if self.class_rotary not in CLASS_ROTARY:
            raise ValueError(
                f"class_rotary must be one of {list(CLASS_ROTARY)}, but got class_rotary={self.class_rotary!r}"
            )
        if not isinstance(self.mask_per_sample, bool):
            raise ValueError(f"mask_per_sample must be a bool, but got mask_per_sample={self.mask_per_sample!r}")
        if self.head_dim % 4 != 0:
            raise ValueError(
                f"2D rotary needs head dim (width/heads) divisible by 4, but size {self.size!r} "
                f"gives {self.head_dim}; pick another size"
            )

    @property
    def layers(self) -> int:
        return GENERATOR_SIZES[self.size].layers

    @property
    def width(self) -> int:
        return GENERATOR_SIZES[self.size].width

    @property
    def heads(self) -> int:
        return GENERATOR_SIZES[self.size].heads

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def vocab_size(self) -> int:
        """Vocabulary of one sub-token: 2**bits_each."""
        return 2**self.bits_each

    @property
    def seq_len(self) -> int:
        """N: latent positions per image."""
        return self.grid_height * self.grid_width

    @property
    def null_class(self) -> int:
        return self.num_classes


def raster_positions(grid_height: int, grid_width: int, device: torch.device | str | None = None) -> Tensor:
    """(row, col) of each position in row-major raster order: (h*w, 2) int64."""
    rows = torch.arange(grid_height, device=device).repeat_interleave(grid_width)
    cols = torch.arange(grid_width, device=device).repeat(grid_height)
    return torch.stack([rows, cols], dim=-1)


def slot_rotation(positions: Tensor, config: GeneratorConfig, class_slots: int = 1, repeat: int = 1) -> Tensor:
    """Rotation table of a sequence: `class_slots` class rows (config.class_rotary), then each position's
    rotation `repeat` times (MLM: its K sub-token slots share it).

    positions (n, 2) (row, col) -> (class_slots + n * repeat, D/2, 2) float32.
    """
    table = rotation_table(rotary_angles_2d(positions, config.head_dim)).repeat_interleave(repeat, dim=0)
    head = class_rotation(class_slots, config.head_dim, config.class_rotary, device=positions.device)
    return torch.cat([head, table], dim=0)


@dataclass
class KVCache:
    """Per-layer attention keys and values of the slots decoded so far (one batch, one scan order).

    Slot 0 is the class token, slot t >= 1 holds token t-1; N slots suffice because the last token
    is never fed back. Made by `ARGenerator.init_cache`, filled by `prefill` and `decode_step`.
    """

    keys: list[Tensor]
    """per layer (B, H, N, D)"""
    values: list[Tensor]
    """per layer (B, H, N, D)"""
    rotation: Tensor
    """(N, D/2, 2) rotation table of every slot, from the positions given to init_cache"""
    length: int = 0
    """slots filled so far (class token + tokens fed); the logits last returned predict position length - 1"""

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0

    @property
    def capacity(self) -> int:
        return self.rotation.shape[0]


def check_positions(config: GeneratorConfig, positions: Tensor | None, device: torch.device) -> Tensor:
    """(N, 2) (row, col) of each sequence position on `device`; raster order when None."""
    N = config.seq_len
    if positions is None:
        return raster_positions(config.grid_height, config.grid_width, device)
    if positions.shape != (N, 2):
        raise ValueError(f"positions must have shape (N, 2) = ({N}, 2) of (row, col), but got {tuple(positions.shape)}")
    return positions.to(device)


class ARGenerator(nn.Module):
    """Class-conditional causal transformer over K sub-tokens per latent position."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        C, K, V = config.width, config.token_each, config.vocab_size
        self.class_embedding = nn.Embedding(config.num_classes + 1, C)  # +1: null class for CFG
        # one table per sub-token index; the K embeddings are concatenated and projected K*C -> C.
        # With K = 1 the projection would be a redundant C x C matrix, so it is omitted (plain LlamaGen).
        self.token_embeddings = nn.ModuleList(nn.Embedding(V, C) for _ in range(K))
        self.token_projection = nn.Linear(K * C, C, bias=False) if K > 1 else nn.Identity()
        self.token_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(C, config.heads, config.dropout) for _ in range(config.layers))
        self.norm = RMSNorm(C)
        # K heads read the same hidden state: sub-tokens of one position are predicted independently
        self.heads = nn.ModuleList(nn.Linear(C, V, bias=False) for _ in range(K))
        init_weights(self)
        for head in self.heads:
            # zero heads: uniform logits at init, so the initial loss is exactly ln(V)
            nn.init.zeros_(head.weight)

    # ---------------------------------------------------------------- helpers
    def _check_positions(self, positions: Tensor | None, device: torch.device) -> Tensor:
        return check_positions(self.config, positions, device)

    def _drop_labels(self, labels: Tensor, generator: torch.Generator | None) -> Tensor:
        """Replace labels with the null class with probability class_dropout (training only)."""
        cfg = self.config
        return drop_labels(labels, cfg.class_dropout, cfg.null_class, training=self.training, generator=generator)

    def _embed_tokens(self, ids: Tensor) -> Tensor:
        """(B, T, K) ids -> (B, T, C): K tables, concatenated, projected K*C -> C."""
        parts = [table(ids[..., k]) for k, table in enumerate(self.token_embeddings)]  # K x (B, T, C)
        return self.token_projection(torch.cat(parts, dim=-1))

    def _hidden(self, prefix: Tensor, labels: Tensor, positions: Tensor) -> Tensor:
        """Run the trunk on [class token, prefix tokens]; returns normed hidden (B, 1 + T, C).

        prefix (B, T, K) with 0 <= T <= N - 1 holds tokens 0..T-1; positions (N, 2).
        """
        B, T, K = prefix.shape
        x = self.class_embedding(labels).unsqueeze(1)  # (B, 1, C)
        if T > 0:
            x = torch.cat([x, self._embed_tokens(prefix)], dim=1)  # (B, 1 + T, C)
        x = self.token_dropout(x)
        # slot 0 (class token): class_rotary row; slot t >= 1 holds token t-1 and rotates with its coordinates
        rotation = slot_rotation(positions[:T], self.config)  # (1 + T, D/2, 2)
        for block in self.blocks:
            x = block(x, rotation, is_causal=True)
        return self.norm(x)

    def _logits(self, hidden: Tensor) -> Tensor:  # (B, T, C) -> (B, T, K, V)
        return torch.stack([head(hidden) for head in self.heads], dim=2)

    # ---------------------------------------------------------------- public
    def forward(
        self,
        ids: Tensor,
        labels: Tensor,
        *,
        positions: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Teacher-forced logits: ids (B, T, K), labels (B,) -> logits (B, T, K, V), 1 <= T <= N.

        logits[:, n] predict ids[:, n] from the class token and ids[:, :n]. positions (N, 2) are the
        (row, col) grid coordinates of each sequence position (default raster). Label dropout is
        applied in training mode only, drawn from `generator` when given.
        """
        cfg = self.config
        if ids.ndim != 3 or ids.shape[-1] != cfg.token_each or not 1 <= ids.shape[1] <= cfg.seq_len:
            raise ValueError(
                f"ids must have shape (B, T, K) with 1 <= T <= N={cfg.seq_len}, K={cfg.token_each}, "
                f"but got {tuple(ids.shape)}"
            )
        if labels.shape != ids.shape[:1]:
            raise ValueError(f"labels must have shape (B,) = ({ids.shape[0]},), but got {tuple(labels.shape)}")
        positions = self._check_positions(positions, ids.device)
        labels = self._drop_labels(labels, generator)
        hidden = self._hidden(ids[:, :-1], labels, positions)  # (B, T, C): input drops the last token
        return self._logits(hidden)

    def next_logits(self, prefix: Tensor, labels: Tensor, *, positions: Tensor | None = None) -> Tensor:
        """Logits of the next position given a prefix: prefix (B, n, K), n < N -> (B, K, V).

        Recomputes the whole prefix (the authors' sampler does the same; `sample_ar(kv_cache=False)`);
        init_cache / prefill / decode_step compute the same logits incrementally. No label dropout.
        """
        cfg = self.config
        if prefix.ndim != 3 or prefix.shape[-1] != cfg.token_each or not 0 <= prefix.shape[1] < cfg.seq_len:
            raise ValueError(
                f"prefix must have shape (B, n, K) with 0 <= n < N={cfg.seq_len}, K={cfg.token_each}, "
                f"but got {tuple(prefix.shape)}"
            )
        positions = self._check_positions(positions, prefix.device)
        hidden = self._hidden(prefix, labels, positions)[:, -1:]  # (B, 1, C)
        return self._logits(hidden)[:, 0]  # (B, K, V)

    # ---------------------------------------------------------------- KV-cached decoding
    def init_cache(
        self,
        batch_size: int,
        *,
        positions: Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """Empty KV cache for `batch_size` rows decoding in the scan order given by positions (N, 2).

        device / dtype default to the model's parameters'. The positions are bound to the cache:
        every slot's rotation is computed once here.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, but got batch_size={batch_size}")
        cfg = self.config
        reference = next(self.parameters())
        device = torch.device(device) if device is not None else reference.device
        dtype = dtype or reference.dtype
        positions = self._check_positions(positions, device)
        rotation = slot_rotation(positions[: cfg.seq_len - 1], cfg)  # (N, D/2, 2): class + tokens 0..N-2
        shape = (batch_size, cfg.heads, cfg.seq_len, cfg.head_dim)
        keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.blocks]
        values = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.blocks]
        return KVCache(keys=keys, values=values, rotation=rotation)

    def _extend(self, x: Tensor, cache: KVCache) -> Tensor:
        """Run t new slots x (B, t, C) through the trunk against the cache; logits of the last (B, K, V)."""
        B, t, _ = x.shape
        if B != cache.batch_size:
            raise ValueError(f"the cache was made for batch {cache.batch_size}, but got a batch of {B}")
        start = cache.length
        if start + t > cache.capacity:
            raise ValueError(
                f"the KV cache holds N={cache.capacity} slots (class token + tokens 0..N-2), but "
                f"{start} are filled and {t} more were fed; position N-1 is the last one to predict"
            )
        x = self.token_dropout(x)
        rotation = cache.rotation[start : start + t]  # (t, D/2, 2)
        for block, keys, values in zip(self.blocks, cache.keys, cache.values):
            x = block.forward_cached(x, rotation, keys, values, start)
        cache.length = start + t
        return self._logits(self.norm(x[:, -1:]))[:, 0]  # (B, K, V)

    def prefill(self, prefix: Tensor, labels: Tensor, cache: KVCache) -> Tensor:
        """Feed [class token, prefix] into an empty cache; logits of position n (B, K, V).

        prefix (B, n, K) with 0 <= n < N holds tokens 0..n-1 (n = 0: the class token alone).
        Labels are used as given (no label dropout).
        """
        cfg = self.config
        if cache.length != 0:
            raise ValueError(f"prefill needs an empty cache, but it already holds {cache.length} slots")
        if prefix.ndim != 3 or prefix.shape[-1] != cfg.token_each or not 0 <= prefix.shape[1] < cfg.seq_len:
            raise ValueError(
                f"prefix must have shape (B, n, K) with 0 <= n < N={cfg.seq_len}, K={cfg.token_each}, "
                f"but got {tuple(prefix.shape)}"
            )
        if labels.shape != prefix.shape[:1]:
            raise ValueError(f"labels must have shape (B,) = ({prefix.shape[0]},), but got {tuple(labels.shape)}")
        x = self.class_embedding(labels).unsqueeze(1)  # (B, 1, C)
        if prefix.shape[1] > 0:
            x = torch.cat([x, self._embed_tokens(prefix)], dim=1)  # (B, 1 + n, C)
        return self._extend(x, cache)

    def decode_step(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """Feed the token of position n = cache.length - 1, (B, K); logits of position n + 1 (B, K, V)."""
        cfg = self.config
        if cache.length == 0:
            raise ValueError("decode_step needs the class token first: call prefill(prefix, labels, cache)")
        if tokens.ndim != 2 or tokens.shape[-1] != cfg.token_each:
            raise ValueError(f"tokens must have shape (B, K) with K={cfg.token_each}, but got {tuple(tokens.shape)}")
        return self._extend(self._embed_tokens(tokens.unsqueeze(1)), cache)

    def loss(
        self,
        ids: Tensor,
        labels: Tensor,
        *,
        positions: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Mean cross-entropy over all positions x K sub-tokens (scalar, float32)."""
        logits = self(ids, labels, positions=positions, generator=generator)  # (B, N, K, V)
        return F.cross_entropy(logits.flatten(0, 2).float(), ids.flatten())


def parameter_count(config: GeneratorConfig) -> int:
    """Exact parameter count of ARGenerator(config), analytically (no weights allocated)."""
    C, K, V = config.width, config.token_each, config.vocab_size
    embeddings = (config.num_classes + 1) * C + K * V * C + (K * C * C if K > 1 else 0)
    trunk = config.layers * block_parameter_count(C) + C  # blocks + final norm
    heads = K * C * V
    return embeddings + trunk + heads


def sequence_slots(config: GeneratorConfig) -> int:
    """Transformer slots one training sample runs through: N (class token + tokens 0..N-2). The K
    sub-tokens of a position share one slot, so the cost of a sample does not grow with K."""
    return config.seq_len


def initial_loss(config: GeneratorConfig) -> float:
    """Loss of a freshly initialised model (zero heads => uniform logits): ln(2**bits_each)."""
    return math.log(config.vocab_size)

"""Masked (MLM, MaskGIT-style) image-token generator (ELM.md "Generators", "MLM").

Same Llama backbone as the AR generator (layers.Block, RMSNorm, SwiGLU, 2D rotary), but
bidirectional attention and a [MASK] id. ids (B, N, K) in [0, 2**c); the id V = 2**c is [MASK].

Sequence layout, T = 1 + N*K slots (the K sub-tokens are flattened into the sequence, as the
authors do for K > 1):

    slot      0            1 + n*K + k
    holds     class token  sub-token k of position n (or [MASK])
    rotary    none (0)     (row, col) of position n: all K sub-tokens of a position share its cell

One embedding table of V + 1 rows (2**c ids + [MASK]) is shared by every sub-token index. Because
the K sub-tokens of a position share table and rotation, they would be exchangeable (two masked
sub-tokens of one cell would get identical hidden states and identical predictions), so for K > 1
a learned sub-token-index embedding (K, C) is added to each flattened slot (our choice; ELM.md does
not say how the authors tell them apart). For K = 1 it is omitted.

Output head, MAGE-style: Linear(C, C) (with bias, as MAGE) -> GELU -> LayerNorm -> dot product with
the first V rows of the shared embedding table + a bias (V,). The [MASK] row is left out of the
output, so the model never predicts [MASK]. Init: the LayerNorm gain and bias and the output bias
start at zero, so every logit is 0 at init (uniform over the V real ids, initial loss exactly ln V),
the MLM analogue of the AR's zero-initialised heads; the gain still gets gradients at step one.

Training (`loss`): per sample draw s uniformly from {0..T-1} (T = config.mask_schedule_steps), mask
m = max(1, floor(N cos(pi/2 s/T))) positions chosen uniformly (all K sub-tokens of a position
together), cross-entropy on the masked sub-tokens only (mean over all masked sub-tokens in the
batch). Class token first with class dropout to the null class, as in AR. Decoding lives in
runners/sampling.py (`sample_mlm`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runners.generators.ar import GeneratorConfig, check_positions
from runners.generators.layers import Block, RMSNorm, block_parameter_count, drop_labels, init_weights, rotary_angles_2d


def masked_count(step: int, schedule_steps: int, seq_len: int) -> int:
    """Positions masked at training step s of T: max(1, floor(N cos(pi/2 s/T))), s in {0..T-1}."""
    if not 0 <= step < schedule_steps:
        raise ValueError(f"step must lie in [0, {schedule_steps}), but got step={step}")
    return max(1, math.floor(seq_len * math.cos(math.pi / 2 * step / schedule_steps)))


class MAGEHead(nn.Module):
    """Linear -> GELU -> LayerNorm, then logits = hidden . E[:V]^T + bias (E: the shared token table)."""

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: Tensor, table: Tensor) -> Tensor:  # (B, T, C), (V, C) -> (B, T, V)
        return self.norm(F.gelu(self.fc(hidden))) @ table.t() + self.bias


class MLMGenerator(nn.Module):
    """Class-conditional bidirectional transformer that predicts masked sub-tokens."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        C, K, V = config.width, config.token_each, config.vocab_size
        self.class_embedding = nn.Embedding(config.num_classes + 1, C)  # +1: null class for CFG
        self.token_embedding = nn.Embedding(V + 1, C)  # 2**c ids + [MASK] (id V), shared by all K sub-tokens
        # tells the K flattened sub-tokens of one position apart (they share table and rotation)
        self.subtoken_embedding = nn.Parameter(torch.empty(K, C)) if K > 1 else None
        self.token_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(C, config.heads, config.dropout) for _ in range(config.layers))
        self.norm = RMSNorm(C)
        self.head = MAGEHead(C, V)
        init_weights(self)
        if self.subtoken_embedding is not None:
            nn.init.normal_(self.subtoken_embedding, std=0.02)
        nn.init.zeros_(self.head.fc.bias)
        # zero LayerNorm gain and bias (and output bias): every logit is 0 at init -> loss exactly ln V
        nn.init.zeros_(self.head.norm.weight)
        nn.init.zeros_(self.head.norm.bias)

    @property
    def mask_id(self) -> int:
        """The [MASK] id: V = 2**bits_each (one past the real ids)."""
        return self.config.vocab_size

    def _check_positions(self, positions: Tensor | None, device: torch.device) -> Tensor:
        return check_positions(self.config, positions, device)

    def _check_ids(self, ids: Tensor, labels: Tensor, allow_mask: bool) -> None:
        cfg = self.config
        if ids.ndim != 3 or ids.shape[1:] != (cfg.seq_len, cfg.token_each):
            raise ValueError(
                f"ids must have shape (B, N, K) = (B, {cfg.seq_len}, {cfg.token_each}), but got {tuple(ids.shape)}"
            )
        if labels.shape != ids.shape[:1]:
            raise ValueError(f"labels must have shape (B,) = ({ids.shape[0]},), but got {tuple(labels.shape)}")
        top = self.mask_id if allow_mask else self.mask_id - 1
        if ids.numel() and (ids.min() < 0 or ids.max() > top):
            raise ValueError(
                f"ids must lie in [0, {top}] ({'real ids and [MASK]' if allow_mask else 'real ids'}), "
                f"but got range [{int(ids.min())}, {int(ids.max())}]"
            )

    def forward(
        self,
        ids: Tensor,
        labels: Tensor,
        *,
        positions: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Logits of every sub-token: ids (B, N, K) in [0, V] (V = [MASK]), labels (B,) -> (B, N, K, V).

        positions (N, 2) (row, col) of each sequence position (default raster). Label dropout in
        training mode only, drawn from `generator` when given.
        """
        cfg = self.config
        self._check_ids(ids, labels, allow_mask=True)
        B, N, K = ids.shape
        positions = self._check_positions(positions, ids.device)
        labels = drop_labels(labels, cfg.class_dropout, cfg.null_class, training=self.training, generator=generator)

        tokens = self.token_embedding(ids)  # (B, N, K, C)
        if self.subtoken_embedding is not None:
            tokens = tokens + self.subtoken_embedding  # (K, C) broadcast over (B, N)
        x = torch.cat([self.class_embedding(labels).unsqueeze(1), tokens.flatten(1, 2)], dim=1)  # (B, 1 + N*K, C)
        x = self.token_dropout(x)
        # slot 0 unrotated; slot 1 + n*K + k rotates with the cell of position n
        angles = rotary_angles_2d(positions.repeat_interleave(K, dim=0), cfg.head_dim)  # (N*K, D/2)
        angles = torch.cat([angles.new_zeros(1, angles.shape[-1]), angles], dim=0)  # (1 + N*K, D/2)
        for block in self.blocks:
            x = block(x, angles, is_causal=False)
        hidden = self.norm(x[:, 1:])  # (B, N*K, C): the class slot predicts nothing
        logits = self.head(hidden, self.token_embedding.weight[: cfg.vocab_size])  # (B, N*K, V)
        return logits.view(B, N, K, cfg.vocab_size)

    def mask_batch(self, ids: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Mask a training batch: ids (B, N, K) -> (inputs (B, N, K) with [MASK], masked (B, N) bool).

        Per sample: s ~ U{0..T-1}, m = masked_count(s, T, N) positions chosen uniformly, all K
        sub-tokens of a chosen position replaced by [MASK]. Draws come from `generator` (on its
        device) when given, else from the global RNG on the ids' device.
        """
        cfg = self.config
        B, N, _ = ids.shape
        T = cfg.mask_schedule_steps
        rng_device = generator.device if generator is not None else ids.device
        steps = torch.randint(0, T, (B,), generator=generator, device=rng_device)
        ratio = torch.cos(math.pi / 2 * steps.double() / T)  # float64: counts match masked_count exactly
        counts = (N * ratio).floor().long().clamp(min=1)  # (B,)
        # a uniformly random subset of size m: rank positions by uniform noise, keep the m smallest
        ranks = torch.rand(B, N, generator=generator, device=rng_device).argsort(dim=1).argsort(dim=1)  # (B, N)
        masked = (ranks < counts[:, None]).to(ids.device)  # (B, N)
        inputs = torch.where(masked[..., None], torch.full_like(ids, self.mask_id), ids)
        return inputs, masked

    def loss(
        self,
        ids: Tensor,
        labels: Tensor,
        *,
        positions: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Mean cross-entropy over the masked sub-tokens of a freshly masked batch (scalar, float32)."""
        self._check_ids(ids, labels, allow_mask=False)
        inputs, masked = self.mask_batch(ids, generator)
        logits = self(inputs, labels, positions=positions, generator=generator)  # (B, N, K, V)
        return F.cross_entropy(logits[masked].flatten(0, 1).float(), ids[masked].flatten())


def parameter_count(config: GeneratorConfig) -> int:
    """Exact parameter count of MLMGenerator(config), analytically (no weights allocated)."""
    C, K, V = config.width, config.token_each, config.vocab_size
    embeddings = (config.num_classes + 1) * C + (V + 1) * C + (K * C if K > 1 else 0)
    trunk = config.layers * block_parameter_count(C) + C  # blocks + final norm
    head = C * C + C + 2 * C + V  # fc weight + bias, LayerNorm gain + bias, output bias
    return embeddings + trunk + head

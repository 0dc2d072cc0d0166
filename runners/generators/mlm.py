"""Masked (MLM, MaskGIT-style) image-token generator (ELM.md "Generators", "MLM").

Same Llama backbone as the AR generator (layers.Block, RMSNorm, SwiGLU, 2D rotary), but
bidirectional attention and a [MASK] id. ids (B, N, K) in [0, 2**c); the id V = 2**c is [MASK].
It computes what the authors' MLM module computes (released checkpoints load through
runners/generators/released.py):

Sequence layout, T = K + N*K slots (the K sub-tokens are flattened into the sequence):

    slot      0 .. K-1                    K + n*K + k
    holds     class token, K copies       sub-token k of position n (or [MASK])
    rotary    class_rotary row (zero)     (row, col) of position n: its K sub-tokens share the cell

One embedding table of V + 1 rows (2**c ids + [MASK]) is shared by every sub-token index, and
nothing else tells the K sub-tokens of a position apart: two masked sub-tokens of one cell get the
same prediction (but are drawn independently when sampling). That is the authors' model.

Output head, MAGE-style: Linear(C, C) (with bias) -> GELU -> LayerNorm -> dot product with the
token table (detached: the head never sends gradients into the table) + a bias of V + 1 entries;
the [MASK] column is dropped, so the model never predicts [MASK]. Init as the authors': every
Linear / Embedding N(0, 0.02) with zero biases, the LayerNorm at its default (gain 1, bias 0), the
output bias zero. The logits are therefore small but not zero at init: the first loss lies a little
above ln V.

Training (`loss`): draw a step s uniformly from {0..T-1} (T = config.mask_schedule_steps) once per
batch (the authors' default; `mask_per_sample=True` draws it per sample), mask
m = max(1, floor(N cos(pi/2 s/T))) positions of each sample chosen uniformly (all K sub-tokens of a
position together), cross-entropy on the masked sub-tokens only (mean over all masked sub-tokens in
the batch). Class token with class dropout to the null class, as in AR. Decoding lives in
runners/sampling.py (`sample_mlm`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runners.generators.ar import GeneratorConfig, check_positions, slot_rotation
from runners.generators.layers import Block, RMSNorm, block_parameter_count, drop_labels, init_weights


def masked_count(step: int, schedule_steps: int, seq_len: int) -> int:
    """Positions masked at training step s of T: max(1, floor(N cos(pi/2 s/T))), s in {0..T-1}."""
    if not 0 <= step < schedule_steps:
        raise ValueError(f"step must lie in [0, {schedule_steps}), but got step={step}")
    return max(1, math.floor(seq_len * math.cos(math.pi / 2 * step / schedule_steps)))


class MAGEHead(nn.Module):
    """Linear -> GELU -> LayerNorm, then logits = hidden . E[:V]^T + bias[:V].

    E (V + 1, C) is the shared token table, detached here; bias has V + 1 entries like the table (its
    [MASK] entry, as the table's [MASK] row, never reaches an output)."""

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.bias = nn.Parameter(torch.zeros(vocab_size + 1))

    def forward(self, hidden: Tensor, table: Tensor) -> Tensor:  # (B, T, C), (V + 1, C) -> (B, T, V)
        V = table.shape[0] - 1
        return self.norm(F.gelu(self.fc(hidden))) @ table[:V].detach().t() + self.bias[:V]


class MLMGenerator(nn.Module):
    """Class-conditional bidirectional transformer that predicts masked sub-tokens."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        C, V = config.width, config.vocab_size
        self.class_embedding = nn.Embedding(config.num_classes + 1, C)  # +1: null class for CFG
        self.token_embedding = nn.Embedding(V + 1, C)  # 2**c ids + [MASK] (id V), shared by all K sub-tokens
        self.token_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(C, config.heads, config.dropout) for _ in range(config.layers))
        self.norm = RMSNorm(C)
        self.head = MAGEHead(C, V)
        init_weights(self)  # the LayerNorm keeps its default gain 1, bias 0
        nn.init.zeros_(self.head.fc.bias)

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

        tokens = self.token_embedding(ids).flatten(1, 2)  # (B, N*K, C)
        classes = self.class_embedding(labels).unsqueeze(1).expand(B, K, -1)  # (B, K, C): K class slots
        x = self.token_dropout(torch.cat([classes, tokens], dim=1))  # (B, K + N*K, C)
        # class slots: class_rotary rows; slot K + n*K + k rotates with the cell of position n
        rotation = slot_rotation(positions, cfg, class_slots=K, repeat=K)  # (K + N*K, D/2, 2)
        for block in self.blocks:
            x = block(x, rotation, is_causal=False)
        hidden = self.norm(x[:, K:])  # (B, N*K, C): the class slots predict nothing
        logits = self.head(hidden, self.token_embedding.weight)  # (B, N*K, V)
        return logits.view(B, N, K, cfg.vocab_size)

    def mask_batch(self, ids: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Mask a training batch: ids (B, N, K) -> (inputs (B, N, K) with [MASK], masked (B, N) bool).

        s ~ U{0..T-1} once for the batch (config.mask_per_sample: once per sample), then per sample
        m = masked_count(s, T, N) positions chosen uniformly, all K sub-tokens of a chosen position
        replaced by [MASK]. Draws come from `generator` (on its device) when given, else from the
        global RNG on the ids' device.
        """
        cfg = self.config
        B, N, _ = ids.shape
        T = cfg.mask_schedule_steps
        rng_device = generator.device if generator is not None else ids.device
        steps = torch.randint(0, T, (B if cfg.mask_per_sample else 1,), generator=generator, device=rng_device)
        steps = steps.expand(B)
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
    """Exact parameter count of MLMGenerator(config), analytically (no weights allocated).

    The authors' module also holds tensors its forward never reads (a frozen position table, K
    unused output heads, a projection for K > 1); runners.generators.released.authors_parameter_count
    counts those too."""
    C, V = config.width, config.vocab_size
    embeddings = (config.num_classes + 1) * C + (V + 1) * C
    trunk = config.layers * block_parameter_count(C) + C  # blocks + final norm
    head = C * C + C + 2 * C + V + 1  # fc weight + bias, LayerNorm gain + bias, output bias (V + [MASK])
    return embeddings + trunk + head


def sequence_slots(config: GeneratorConfig) -> int:
    """Transformer slots one training sample runs through: K class slots + N*K sub-token slots."""
    return config.token_each * (config.seq_len + 1)

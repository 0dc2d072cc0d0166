"""Contracts of the masked generator (runners/generators/mlm.py) and its decoder (sampling.sample_mlm)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from runners.generators import GENERATORS, GeneratorConfig, MLMGenerator
from runners.generators.mlm import masked_count, parameter_count
from runners.sampling import mlm_masked_after, sample_mlm
from runners.train_generator import evaluate_loss, train_generator

torch.set_num_threads(1)


def tiny_config(token_each: int = 1, bits_each: int = 6, **kwargs) -> GeneratorConfig:
    defaults = dict(grid_height=4, grid_width=4, num_classes=5)
    defaults.update(kwargs)
    return GeneratorConfig("tiny", token_each=token_each, bits_each=bits_each, **defaults)


def random_head(model: MLMGenerator, std: float = 1.0) -> MLMGenerator:
    """The zero LayerNorm gain makes every logit 0 at init; give it weights so outputs carry information."""
    with torch.no_grad():
        model.head.norm.weight.normal_(0.0, std)
    return model.eval()


def random_batch(config: GeneratorConfig, batch: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, config.seq_len, config.token_each), generator=g)
    return ids, torch.randint(0, config.num_classes, (batch,), generator=g)


# ------------------------------------------------------------------ schedule and structure
def test_masked_count_literal() -> None:
    # N = 16, T = 10: floor(16 cos(pi/2 s/10)) for s = 0..9
    assert [masked_count(s, 10, 16) for s in range(10)] == [16, 15, 15, 14, 12, 11, 9, 7, 4, 2]
    assert masked_count(3, 4, 2) == 1  # floor(2 cos(3pi/8)) = 0, clamped to at least one
    with pytest.raises(ValueError, match=r"step must lie in \[0, 10\)"):
        masked_count(10, 10, 16)


@pytest.mark.parametrize(
    "config",
    [tiny_config(1, 8), tiny_config(2, 4, num_classes=3), tiny_config(4, 3, grid_height=2, grid_width=5),
     GeneratorConfig("small", 2, 2, token_each=2, bits_each=6, num_classes=7)],
)
def test_parameter_count_matches_model(config: GeneratorConfig) -> None:
    assert parameter_count(config) == sum(p.numel() for p in MLMGenerator(config).parameters())


def test_parameter_count_paper_literal() -> None:
    # MLM-L 1-16 (the paper's MLM), 1000 classes, 16 x 16; literal checked once against a model built
    # on the meta device (slow, so not repeated here): 24 blocks 308,330,496 + final norm 1,024 +
    # class table 1,025,024 + token table (65,536 + 1) x 1,024 + MAGE head 1,117,184
    config = GeneratorConfig("L", 16, 16, token_each=1, bits_each=16, num_classes=1000)
    assert parameter_count(config) == 377_583_616


@pytest.mark.parametrize("token_each, bits_each", [(1, 8), (2, 5)])
def test_initial_logits_uniform_over_real_ids(token_each: int, bits_each: int) -> None:
    torch.manual_seed(0)
    config = tiny_config(token_each, bits_each)
    model = MLMGenerator(config)
    ids, labels = random_batch(config, 4)
    logits = model(ids, labels)
    assert logits.shape == (4, 16, token_each, 2**bits_each)  # the [MASK] id is never an output
    assert torch.count_nonzero(logits) == 0
    expected = {8: 5.545177, 5: 3.465736}[bits_each]  # ln 256, ln 32
    assert abs(model.loss(ids, labels).item() - expected) < 1e-3
    assert model.mask_id == 2**bits_each


def test_bidirectional_attention() -> None:
    torch.manual_seed(0)
    config = tiny_config(1, 6, dropout=0.0)
    model = random_head(MLMGenerator(config))
    ids, labels = random_batch(config, 2)
    base = model(ids, labels)
    changed = ids.clone()
    changed[:, 15] = model.mask_id  # mask the LAST position
    out = model(changed, labels)
    # every other position sees it, including the first one (an AR model's position 0 could not)
    assert (out[:, :15] - base[:, :15]).abs().amax(dim=(0, 2, 3)).min() > 1e-5


def test_subtokens_of_one_position_are_told_apart() -> None:
    torch.manual_seed(0)
    config = tiny_config(2, 5, dropout=0.0)
    model = random_head(MLMGenerator(config))
    ids = torch.full((1, 16, 2), model.mask_id)
    logits = model(ids, torch.tensor([1]))  # every sub-token masked: only the index embedding differs
    assert (logits[:, :, 0] - logits[:, :, 1]).abs().max() > 1e-3
    no_index = MLMGenerator(tiny_config(1, 5))
    assert no_index.subtoken_embedding is None  # K = 1: nothing to tell apart


def test_mask_batch_masks_whole_positions_on_schedule() -> None:
    config = tiny_config(2, 4, mask_schedule_steps=10)
    model = MLMGenerator(config)
    ids, _ = random_batch(config, 400)
    inputs, masked = model.mask_batch(ids, torch.Generator().manual_seed(0))
    assert masked.shape == (400, 16) and masked.dtype == torch.bool
    is_mask = inputs == model.mask_id  # (B, N, K)
    assert torch.equal(is_mask[..., 0], masked) and torch.equal(is_mask[..., 1], masked)  # sub-tokens together
    assert torch.equal(inputs[~masked], ids[~masked])
    counts = masked.sum(1)
    allowed = {16, 15, 14, 12, 11, 9, 7, 4, 2}  # masked_count(s, 10, 16), s = 0..9
    assert set(counts.tolist()) == allowed  # every step value drawn (400 samples), nothing else
    again, _ = model.mask_batch(ids, torch.Generator().manual_seed(0))
    assert torch.equal(again, inputs)


def test_loss_is_cross_entropy_on_masked_subtokens_only() -> None:
    torch.manual_seed(0)
    config = tiny_config(2, 4, dropout=0.0, class_dropout=0.0)
    model = random_head(MLMGenerator(config))
    ids, labels = random_batch(config, 6)
    loss = model.loss(ids, labels, generator=torch.Generator().manual_seed(5))
    inputs, masked = model.mask_batch(ids, torch.Generator().manual_seed(5))
    log_p = torch.log_softmax(model(inputs, labels), -1).gather(-1, ids[..., None])[..., 0]  # (B, N, K)
    expected = -(log_p * masked[..., None]).sum() / (masked.sum() * 2)
    torch.testing.assert_close(loss, expected)
    everywhere = -log_p.mean()  # what a loss over all positions would give
    assert abs(loss.item() - everywhere.item()) > 1e-3


def test_forward_validation() -> None:
    model = MLMGenerator(tiny_config(1, 4))
    labels = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"ids must have shape \(B, N, K\) = \(B, 16, 1\)"):
        model(torch.zeros(2, 15, 1, dtype=torch.long), labels)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 16\]"):
        model(torch.full((2, 16, 1), 17), labels)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 15\] \(real ids\)"):
        model.loss(torch.full((2, 16, 1), 16), labels)  # [MASK] is no training target
    with pytest.raises(ValueError, match="mask_schedule_steps must be a positive int"):
        tiny_config(mask_schedule_steps=0)


def test_registry_entry() -> None:
    entry = GENERATORS["mlm"]
    config = tiny_config(2, 4)
    assert isinstance(entry.build(config), MLMGenerator)
    assert entry.code_version == "mlm-1"
    assert entry.sample_knobs == ("cfg_scale", "cfg_schedule", "mlm_steps", "mlm_tau")


# ------------------------------------------------------------------ decoder
def test_mlm_masked_after_literal() -> None:
    # N = 16, 4 steps: floor(16 cos(pi/8)), floor(16 cos(pi/4)), floor(16 cos(3pi/8)), 0
    left, sequence = 16, []
    for t in range(4):
        left = mlm_masked_after(t, 4, 16, left)
        sequence.append(left)
    assert sequence == [14, 11, 6, 0]
    # N = 4, 8 steps: the schedule says 3, 3, 3, 2, ... but each step must fix at least one position
    left, sequence = 4, []
    for t in range(8):
        left = mlm_masked_after(t, 8, 4, left)
        sequence.append(left)
    assert sequence == [3, 2, 1, 0, 0, 0, 0, 0]


class MaskProbe(nn.Module):
    """Stub masked decoder over V = 2 ids: position n's logits are [10 + n, 0] (confidence grows with n).

    Records the ids it is fed. With a null label the logits are [0, 10 + n] instead.
    """

    def __init__(self, grid: tuple[int, int] = (4, 4), token_each: int = 1) -> None:
        super().__init__()
        self.config = GeneratorConfig("tiny", *grid, token_each=token_each, bits_each=1, num_classes=3)
        self.mask_id = 2
        self.seen: list[Tensor] = []

    def forward(self, ids: Tensor, labels: Tensor, *, positions: Tensor | None = None) -> Tensor:
        self.seen.append(ids.clone())
        B, N, K = ids.shape
        strength = (10.0 + torch.arange(N, dtype=torch.float32)).view(1, N, 1).expand(B, N, K)
        is_null = (labels == self.config.null_class).view(B, 1, 1)
        first = torch.where(is_null, torch.zeros_like(strength), strength)
        second = torch.where(is_null, strength, torch.zeros_like(strength))
        return torch.stack([first, second], dim=-1)  # (B, N, K, 2)


def test_sample_mlm_unmasks_most_confident_first_on_schedule() -> None:
    probe = MaskProbe()
    ids = sample_mlm(probe, torch.tensor([0, 1]), steps=4, tau=0.0, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (2, 16, 1) and torch.equal(ids, torch.zeros_like(ids))  # token 0 (p > 0.99995)
    assert [int((seen == 2).sum(1)[0, 0]) for seen in probe.seen] == [16, 14, 11, 6]
    # tau = 0: the highest positions (largest logit gap) are fixed first
    fixed_after_step_0 = (probe.seen[1][0, :, 0] != 2).nonzero().view(-1).tolist()
    fixed_after_step_1 = (probe.seen[2][0, :, 0] != 2).nonzero().view(-1).tolist()
    assert fixed_after_step_0 == [14, 15]
    assert fixed_after_step_1 == [11, 12, 13, 14, 15]


def test_sample_mlm_keeps_progress_and_stops_when_done() -> None:
    probe = MaskProbe(grid=(2, 2), token_each=2)
    ids = sample_mlm(probe, torch.tensor([0]), steps=8, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert [int((seen[..., 0] == 2).sum()) for seen in probe.seen] == [4, 3, 2, 1]  # no calls once all fixed
    assert int((ids == 2).sum()) == 0
    for seen in probe.seen:  # the K sub-tokens of a position are masked together
        assert torch.equal(seen[..., 0] == 2, seen[..., 1] == 2)


def test_sample_mlm_gumbel_noise_changes_order_and_is_seeded() -> None:
    def order(seed: int, tau: float) -> list[int]:
        probe = MaskProbe()
        sample_mlm(probe, torch.tensor([0]), steps=4, tau=tau, generator=torch.Generator().manual_seed(seed))
        return (probe.seen[1][0, :, 0] != 2).nonzero().view(-1).tolist()

    assert order(0, 0.0) == order(1, 0.0) == [14, 15]  # no noise: the seed cannot matter
    assert order(0, 50.0) == order(0, 50.0)  # same seed, same order
    noisy = {tuple(order(seed, 50.0)) for seed in range(6)}
    assert len(noisy) > 1 and noisy != {(14, 15)}  # high tau shuffles which positions go first


def test_sample_mlm_cfg_doubles_batch() -> None:
    probe = MaskProbe()
    # s = -1: null logits [0, 10+n] minus (cond - null) -> [-(10+n), 2(10+n)]: token 1 everywhere
    ids = sample_mlm(probe, torch.tensor([0, 1]), steps=3, cfg_scale=-1.0, tau=0.0,
                     generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, torch.ones_like(ids))
    assert all(seen.shape[0] == 4 for seen in probe.seen)


def test_sample_mlm_validates() -> None:
    probe = MaskProbe()
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        sample_mlm(probe, torch.tensor([0]), steps=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="tau must be >= 0"):
        sample_mlm(probe, torch.tensor([0]), tau=-1.0, generator=torch.Generator())
    with pytest.raises(ValueError, match="cfg_schedule must be one of"):
        sample_mlm(probe, torch.tensor([0]), cfg_schedule="exp", generator=torch.Generator())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=3\]"):
        sample_mlm(probe, torch.tensor([4]), generator=torch.Generator())


# ------------------------------------------------------------------ learning end to end
def test_tiny_mlm_learns_class_patterns_and_decodes_them() -> None:
    """Each class owns a fixed 16-position pattern (2-5 vocabulary); MaskGIT decoding with CFG recovers it."""
    torch.manual_seed(0)
    config = GeneratorConfig("tiny", 4, 4, token_each=2, bits_each=5, num_classes=4, dropout=0.0)
    patterns = torch.randint(0, 32, (4, 16, 2), generator=torch.Generator().manual_seed(123))

    def batch_fn(step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = torch.randint(0, 4, (32,), generator=generator)
        return patterns[labels], labels

    result = train_generator(MLMGenerator(config), batch_fn, steps=200, lr=5e-3, seed=0)
    assert abs(result.initial_loss - math.log(32)) < 1e-3
    assert result.final_loss < 0.3 * math.log(32)
    ids, labels = batch_fn(0, torch.Generator().manual_seed(9))
    heldout = evaluate_loss(result.model, ids, labels)
    assert heldout == evaluate_loss(result.model, ids, labels)  # seeded masks: reproducible
    assert heldout < 0.3 * math.log(32)

    labels = torch.arange(4).repeat(8)  # (32,)
    sampled = sample_mlm(result.model, labels, steps=6, tau=1.0, cfg_scale=2.0, cfg_schedule="linear",
                         generator=torch.Generator().manual_seed(1))
    match = (sampled == patterns[labels]).float()
    assert match.mean() > 0.7  # ~0.86 here; chance is 1/32

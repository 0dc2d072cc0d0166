"""Contracts of the masked generator (runners/generators/mlm.py) and its decoder (sampling.sample_mlm)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor, nn

from runners.generators import GENERATORS, GeneratorConfig, MLMGenerator
from runners.generators.mlm import masked_count, parameter_count
from runners.generators.released import authors_parameter_count
from runners.sampling import mlm_confidence, mlm_masked_after, sample_mlm
from runners.train_generator import evaluate_loss, train_generator

torch.set_num_threads(1)


def tiny_config(token_each: int = 1, bits_each: int = 6, **kwargs) -> GeneratorConfig:
    defaults = dict(grid_height=4, grid_width=4, num_classes=5)
    defaults.update(kwargs)
    return GeneratorConfig("tiny", token_each=token_each, bits_each=bits_each, **defaults)


def random_head(model: MLMGenerator, std: float = 1.0) -> MLMGenerator:
    """Logits at init are small (table N(0, 0.02)); a larger random LayerNorm gain makes them informative."""
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


@pytest.mark.parametrize(
    "size, ours, authors",
    [  # the released MLMs (1-16, 1000 classes, 16 x 16). `authors`: sum(p.numel()) of the authors' module
        # (llama/mlm_model.py at c2f29f0, on the meta device), read once by hand; it also counts tensors the
        # forward never reads (position table, output head). `ours` x 4 bytes is the released file's size
        # (1.51 GB, 3.27 GB, 5.86 GB): the files hold no output head.
        ("L", 377_583_617, 444_955_649), ("XL", 818_351_617, 902_566_657), ("XXL", 1_463_735_297, 1_564_793_345),
    ],
)
def test_parameter_count_paper_literal(size: str, ours: int, authors: int) -> None:
    config = GeneratorConfig(size, 16, 16, token_each=1, bits_each=16, num_classes=1000)
    assert parameter_count(config) == ours
    assert authors_parameter_count("mlm", config) == authors


@pytest.mark.parametrize("token_each, bits_each", [(1, 8), (2, 5)])
def test_initial_logits_near_uniform_over_real_ids(token_each: int, bits_each: int) -> None:
    torch.manual_seed(0)
    config = tiny_config(token_each, bits_each)
    model = MLMGenerator(config)
    # the authors' init: LayerNorm at its default, biases zero, everything else N(0, 0.02)
    assert torch.equal(model.head.norm.weight, torch.ones(64)) and torch.count_nonzero(model.head.norm.bias) == 0
    assert torch.count_nonzero(model.head.bias) == 0 and model.head.bias.shape == (2**bits_each + 1,)
    ids, labels = random_batch(config, 4)
    logits = model(ids, labels)
    assert logits.shape == (4, 16, token_each, 2**bits_each)  # the [MASK] id is never an output
    assert 0.05 < logits.std().item() < 0.3  # ~0.02 sqrt(64) = 0.16: small, not zero
    expected = {8: 5.545177, 5: 3.465736}[bits_each]  # ln 256, ln 32
    assert 0 < model.loss(ids, labels).item() - expected < 0.05
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


def test_subtokens_of_one_position_share_everything() -> None:
    """The authors' K > 1 MLM: no sub-token embedding; masked sub-tokens of one cell predict alike."""
    torch.manual_seed(0)
    config = tiny_config(2, 5, dropout=0.0)
    model = random_head(MLMGenerator(config))
    assert not any("subtoken" in name for name, _ in model.named_parameters())
    ids = torch.full((1, 16, 2), model.mask_id)
    logits = model(ids, torch.tensor([1]))
    torch.testing.assert_close(logits[:, :, 0], logits[:, :, 1], rtol=0, atol=1e-6)
    ids[0, 3, 0] = 7  # an unmasked sub-token breaks the tie in its cell only through attention
    assert (model(ids, torch.tensor([1]))[:, 5] - logits[:, 5]).abs().max() > 1e-4


def test_class_slots_are_zero_rotated_and_k_fold() -> None:
    """K class slots lead the sequence; with class_rotary "zero" their q and k vanish, so changing the class
    moves the logits only through the values (which a class slot of score 0 still contributes)."""
    from runners.generators.ar import slot_rotation

    config = tiny_config(2, 5, dropout=0.0)
    rotation = slot_rotation(torch.tensor([[0, 0], [1, 2]]), config, class_slots=2, repeat=2)
    assert rotation.shape == (6, 8, 2)
    assert torch.count_nonzero(rotation[:2]) == 0  # cos 0, sin 0
    torch.testing.assert_close(rotation[2], rotation[3])  # the K sub-tokens of a cell share its rotation
    assert torch.equal(rotation[2, :, 0], torch.ones(8))  # cell (0, 0): the identity
    identity = slot_rotation(torch.tensor([[0, 0]]), dataclasses.replace(config, class_rotary="identity"), 2, 2)
    assert torch.equal(identity[:2, :, 0], torch.ones(2, 8)) and torch.count_nonzero(identity[:2, :, 1]) == 0


def test_mask_batch_draws_one_step_per_batch_by_default() -> None:
    config = tiny_config(2, 4, mask_schedule_steps=10)
    model = MLMGenerator(config)
    ids, _ = random_batch(config, 8)
    seen = set()
    for seed in range(60):
        _, masked = model.mask_batch(ids, torch.Generator().manual_seed(seed))
        counts = set(masked.sum(1).tolist())
        assert len(counts) == 1  # every sample of the batch masks the same number of positions
        seen |= counts
    assert seen == {16, 15, 14, 12, 11, 9, 7, 4, 2}  # masked_count(s, 10, 16), s = 0..9


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
    assert entry.code_version == "mlm-2"
    assert entry.sample_knobs == ("cfg_scale", "cfg_schedule", "mlm_steps", "mlm_tau")


# ------------------------------------------------------------------ decoder
def test_mlm_masked_after_literal() -> None:
    # N = 16, 4 steps: floor(16 cos(pi/8)), floor(16 cos(pi/4)), floor(16 cos(3pi/8)), 0
    left, sequence = 16, []
    for t in range(4):
        left = mlm_masked_after(t, 4, 16, left)
        sequence.append(left)
    assert sequence == [14, 11, 6, 0]
    # N = 4, 8 steps: the schedule says 3, 3, 3, 2, 1, 1, 0, but each step fixes at least one position while
    # that leaves one masked, and one stays masked until the last step (the authors' clamp)
    left, sequence = 4, []
    for t in range(8):
        left = mlm_masked_after(t, 8, 4, left)
        sequence.append(left)
    assert sequence == [3, 2, 1, 1, 1, 1, 1, 0]


def test_mlm_confidence_literal() -> None:
    # K = 2, tau = 2, r = 0.5: mean(-1 + 1 * 0.5, -3 + 1 * (-0.5)) = -2; each sub-token has its own draw
    log_p = torch.tensor([[[-1.0, -3.0], [-0.5, -0.5]]])
    gumbel = torch.tensor([[[0.5, -0.5], [1.0, 3.0]]])
    torch.testing.assert_close(mlm_confidence(log_p, gumbel, 2.0, 0.5), torch.tensor([[-2.0, 1.5]]))
    torch.testing.assert_close(mlm_confidence(log_p, gumbel, 2.0, 1.0), torch.tensor([[-2.0, -0.5]]))  # no noise at r = 1


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
    assert [int((seen[..., 0] == 2).sum()) for seen in probe.seen] == [4, 3, 2, 1, 1, 1, 1, 1]
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
    """Each class owns a fixed 16-position pattern (1-5 vocabulary); MaskGIT decoding with CFG recovers it.

    K = 1 as every MLM the paper reports: the authors' K > 1 model cannot tell the masked sub-tokens of one
    cell apart (test_subtokens_of_one_position_share_everything), so it could not learn such patterns."""
    torch.manual_seed(0)
    config = GeneratorConfig("tiny", 4, 4, token_each=1, bits_each=5, num_classes=4, dropout=0.0)
    patterns = torch.randint(0, 32, (4, 16, 1), generator=torch.Generator().manual_seed(123))

    def batch_fn(step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = torch.randint(0, 4, (32,), generator=generator)
        return patterns[labels], labels

    result = train_generator(MLMGenerator(config), batch_fn, steps=200, lr=5e-3, seed=0)
    assert abs(result.initial_loss - math.log(32)) < 0.05
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


def test_head_reads_a_detached_token_table() -> None:
    """The output dot product sends no gradient into the token table (the authors detach it): with every
    input masked, only the [MASK] row is read on the input side, so only it gets a gradient."""
    torch.manual_seed(0)
    config = tiny_config(1, 4, dropout=0.0)
    model = MLMGenerator(config)
    ids = torch.full((2, 16, 1), model.mask_id)
    model(ids, torch.tensor([0, 1])).square().sum().backward()
    grad = model.token_embedding.weight.grad
    assert torch.count_nonzero(grad[:16]) == 0
    assert grad[16].abs().sum() > 0
    assert model.head.bias.grad[:16].abs().sum() > 0 and model.head.bias.grad[16] == 0

"""Generator EMA (`generator_ema`): a killed and resumed run gives the uninterrupted run's EMA weights bit for bit
(the EMA copy travels in the checkpoint), and the returned model is the EMA copy."""

from __future__ import annotations

import torch

from runners.checkpoint import Checkpointer
from runners.generators import ARGenerator, GeneratorConfig
from runners.train_generator import train_generator

CONFIG = GeneratorConfig(size="tiny", grid_height=2, grid_width=2, token_each=2, bits_each=3, num_classes=3)


def batch_fn(step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 8, (8, 4, 2), generator=generator)  # (B, N, K)
    return ids, torch.randint(0, 3, (8,), generator=generator)


def train(steps: int, checkpointer: Checkpointer | None = None):
    torch.manual_seed(0)
    return train_generator(ARGenerator(CONFIG), batch_fn, steps=steps, lr=1e-2, seed=1, ema_decay=0.9,
                           checkpointer=checkpointer)


def test_a_resumed_run_has_the_uninterrupted_runs_ema_weights(tmp_path):
    uninterrupted = train(10)
    train(6, Checkpointer(tmp_path, every_steps=4))  # "killed" after step 6; its last checkpoint holds step 4
    assert Checkpointer(tmp_path, every_steps=4).restore()["step"] == 4
    resumed = train(10, Checkpointer(tmp_path, every_steps=4))
    assert resumed.losses == uninterrupted.losses
    for (name, a), b in zip(resumed.model.state_dict().items(), uninterrupted.model.state_dict().values()):
        assert torch.equal(a, b), name
    # the EMA is not the raw weights: after 10 steps at decay 0.9 it lags behind them
    torch.manual_seed(0)
    raw = ARGenerator(CONFIG)
    train_generator(raw, batch_fn, steps=10, lr=1e-2, seed=1)
    assert not torch.equal(raw.norm.weight, uninterrupted.model.norm.weight)

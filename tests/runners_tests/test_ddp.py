"""Data-parallel training (runners/distributed.py): 2 gloo workers through Ray Train equal one process.

Same global batch, deterministic loss (dropout 0, class_dropout 0): DDP's average of the two equal
shard gradients is the global-batch gradient, so after a few AdamW steps the weights match
single-process `train_generator` up to float rounding of the reduction.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

from runners.distributed import LossForward, shard_rows, train_generator_ddp
from runners.generators import ARGenerator, GeneratorConfig
from runners.train_generator import train_generator

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = GeneratorConfig("tiny", 4, 4, token_each=2, bits_each=4, num_classes=10, dropout=0.0, class_dropout=0.0)
GLOBAL_BATCH = 8
STEPS = 3
LR = 1e-3


def problem() -> tuple[Callable[[], ARGenerator], Callable[[int, torch.Generator], tuple[Tensor, Tensor]]]:
    """build_model and batch_fn as closures: cloudpickle ships closures by value to the Ray workers
    (module-level functions of this test module would be pickled by a module name they cannot import)."""

    def build_model() -> ARGenerator:
        torch.manual_seed(123)
        model = ARGenerator(CONFIG)
        with torch.no_grad():
            for head in model.heads:
                # random heads: every parameter gets a gradient well above Adam's eps from step 0 (zero
                # heads leave the trunk's first gradients ~eps, where Adam amplifies rounding noise)
                head.weight.normal_(0.0, 0.3)
        return model

    def batch_fn(step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        ids = torch.randint(0, CONFIG.vocab_size, (GLOBAL_BATCH, CONFIG.seq_len, CONFIG.token_each), generator=generator)
        labels = torch.randint(0, CONFIG.num_classes, (GLOBAL_BATCH,), generator=generator)
        return ids, labels  # (B, N, K), (B,): drawn from the generator, so every rank must seed it alike

    return build_model, batch_fn


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        # 4 logical CPUs: two 1-CPU workers (the Train controller takes none) fit on this 2-core machine
        ray.init(
            address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}},
        )
    yield
    if started_here:
        ray.shutdown()


def test_shard_rows_takes_contiguous_equal_blocks() -> None:
    batch = torch.arange(12).view(6, 2)
    assert shard_rows(batch, 0, 3).tolist() == [[0, 1], [2, 3]]
    assert shard_rows(batch, 2, 3).tolist() == [[8, 9], [10, 11]]
    assert shard_rows(batch, 0, 1).tolist() == batch.tolist()
    with pytest.raises(ValueError, match="B=6 rows for 4 workers"):
        shard_rows(batch, 0, 4)
    with pytest.raises(ValueError, match="rank must lie in"):
        shard_rows(batch, 3, 3)


def test_loss_forward_is_the_model_loss() -> None:
    build_model, batch_fn = problem()
    model = build_model()
    ids, labels = batch_fn(0, torch.Generator().manual_seed(0))
    wrapped = LossForward(model)
    assert list(wrapped.parameters()) == list(model.parameters())  # same tensors: DDP syncs the model's grads
    assert wrapped(ids, labels).item() == model.loss(ids, labels).item()
    with pytest.raises(TypeError, match="must define loss"):
        LossForward(torch.nn.Linear(2, 2))


def test_bad_arguments_fail_before_ray_starts() -> None:
    build_model, batch_fn = problem()
    with pytest.raises(ValueError, match="num_workers must be an int >= 1, but got num_workers=0"):
        train_generator_ddp(build_model, batch_fn, num_workers=0, steps=1, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        train_generator_ddp(
            build_model, batch_fn, num_workers=1, steps=1, lr=1e-3, seed=0, precision="fp16"  # type: ignore[arg-type]
        )


def test_importing_runners_distributed_does_not_import_ray() -> None:
    code = "import sys, runners.distributed; sys.exit('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_two_gloo_workers_match_single_process_training(local_ray: None) -> None:
    build_model, batch_fn = problem()
    single = train_generator(build_model(), batch_fn, steps=STEPS, lr=LR, seed=0)
    expected = single.model.state_dict()

    result = train_generator_ddp(build_model, batch_fn, num_workers=2, use_gpu=False, steps=STEPS, lr=LR, seed=0)

    assert result.world_size == 2
    assert set(result.state_dict) == set(expected)  # plain keys, no "module." / "model." prefixes
    for name, value in expected.items():
        torch.testing.assert_close(result.state_dict[name], value, atol=1e-5, rtol=0, msg=name)
    # the losses are the global batch's (mean of the two shard means), not rank 0's half
    assert [step for step, _ in result.losses] == list(range(STEPS))
    for (_, got), (_, want) in zip(result.losses, single.losses):
        assert got == pytest.approx(want, abs=1e-5)
    rebuilt = build_model()
    rebuilt.load_state_dict(result.state_dict)  # loads into a fresh model as is

    # the comparison can fail: the weights moved far more than 1e-5, and training on rank 0's half of
    # each batch alone (no gradient sync) lands 1e-4+ away from the global-batch weights
    initial = build_model().state_dict()
    assert max((expected[name] - initial[name]).abs().max().item() for name in expected) > 5e-4

    def first_half(step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        ids, labels = batch_fn(step, generator)
        return ids[: GLOBAL_BATCH // 2], labels[: GLOBAL_BATCH // 2]

    unsynced = train_generator(build_model(), first_half, steps=STEPS, lr=LR, seed=0).model.state_dict()
    assert max((expected[name] - unsynced[name]).abs().max().item() for name in expected) > 1e-4

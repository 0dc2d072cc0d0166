"""Device setup of the training loop (runners/train_speed.py), chosen by device so that the CUDA-only paths are
tested on a CPU: fused AdamW only on CUDA, TF32 only on CUDA, compile on/off by `runtime.compile`, the next
batch drawn ahead without changing the run, and the throughput a training run reports."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import runners.train_speed as train_speed
from runners.checkpoint import Checkpointer
from runners.generators import GENERATORS, GeneratorConfig
from runners.train_generator import _optimizer, train_generator
from runners.train_speed import Prefetcher, RateMeter, adamw_fused, configure_matmul, resolve_compile

torch.set_num_threads(1)


def test_fused_adamw_is_chosen_only_on_cuda() -> None:
    assert adamw_fused("cuda") is True
    assert adamw_fused(torch.device("cuda", 0)) is True
    assert adamw_fused("cpu") is False
    assert adamw_fused("meta") is False
    optimizer = _optimizer(torch.nn.Linear(3, 3), 1e-3, 0.05, (0.9, 0.95))  # a CPU model
    assert all(not group["fused"] for group in optimizer.param_groups)


def test_tf32_is_turned_on_only_on_cuda() -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
              torch.get_float32_matmul_precision())
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert configure_matmul("cpu") is False
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert configure_matmul("cuda") is True  # the flags are process-wide; setting them needs no GPU
        assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])


def test_compile_setting_by_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_compile("auto", "cuda")[0] is True
    assert resolve_compile("auto", "cpu") == (False, "runtime.compile is 'auto' and the device is cpu, not cuda")
    assert resolve_compile(False, "cuda") == (False, "runtime.compile is false")
    monkeypatch.setattr(train_speed, "cxx_compiler", lambda: "/usr/bin/g++")
    assert resolve_compile(True, "cpu")[0] is True
    monkeypatch.setattr(train_speed, "cxx_compiler", lambda: None)
    compiled, why = resolve_compile(True, "cpu")
    assert not compiled and "needs a C++ compiler" in why
    assert resolve_compile(True, "cuda")[0] is True  # CUDA kernels come from triton, not a host C++ compiler
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=r"runtime.compile must be one of 'auto', true, false, but got"):
            resolve_compile(bad, "cpu")


def test_runtime_compile_field_defaults_to_auto() -> None:
    from space.schema import Runtime

    assert Runtime().compile == "auto"
    assert Runtime(compile=True).compile is True and Runtime(compile=False).compile is False
    with pytest.raises(ValueError, match="compile"):
        Runtime(compile="sometimes")


CONFIG = GeneratorConfig("tiny", 3, 3, token_each=2, bits_each=4, num_classes=4)  # dropout and label dropout on


def batch_fn(step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    ids = torch.randint(0, CONFIG.vocab_size, (6, CONFIG.seq_len, CONFIG.token_each), generator=generator)
    return ids, torch.randint(0, CONFIG.num_classes, (6,), generator=generator)


def run(steps: int, prefetch: bool, checkpointer: Checkpointer | None = None, **kwargs) -> list[float]:
    torch.manual_seed(0)
    model = GENERATORS["ar"].build(CONFIG)
    result = train_generator(model, batch_fn, steps=steps, lr=1e-2, seed=3, prefetch=prefetch,
                             checkpointer=checkpointer, **kwargs)
    return [v for _, v in result.losses]


def test_prefetching_keeps_the_run_bit_identical() -> None:
    plain = run(6, prefetch=False)
    assert run(6, prefetch=True) == plain  # exact: the draws happen in the same order


def test_prefetched_run_resumes_bit_identically(tmp_path) -> None:
    plain = run(6, prefetch=False)
    checkpointer = Checkpointer(tmp_path, every_steps=3)
    first = run(4, prefetch=True, checkpointer=checkpointer)  # saved after step 3 with batch 4 drawn ahead
    assert first == plain[:4]
    assert run(6, prefetch=True, checkpointer=Checkpointer(tmp_path, every_steps=3)) == plain


def test_prefetcher_draws_ahead_and_reports_the_state_before() -> None:
    generator = torch.Generator().manual_seed(0)
    calls: list[int] = []

    def fn(step: int, g: torch.Generator) -> tuple[Tensor]:
        calls.append(step)
        return (torch.rand(2, generator=g),)

    prefetcher = Prefetcher(fn, generator, "cpu")
    before = generator.get_state()
    prefetcher.ahead(1)
    assert torch.equal(prefetcher.generator_state(), before)
    batch = prefetcher.take(1)
    assert calls == [1] and torch.equal(batch[0], torch.rand(2, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(prefetcher.generator_state(), before)  # nothing pending: the live state
    prefetcher.take(2)
    assert calls == [1, 2]


def test_training_reports_its_throughput() -> None:
    lines: list[dict[str, float]] = []
    torch.manual_seed(0)
    result = train_generator(GENERATORS["ar"].build(CONFIG), batch_fn, steps=4, lr=1e-3, seed=0, log_every=2,
                             on_log=lambda step, metrics: lines.append(metrics), flops_per_token=1e6)
    assert result.tokens == 4 * 6 * 9  # steps x batch x positions
    speed = result.throughput
    assert speed is not None and speed.tokens_per_s == pytest.approx(result.tokens / result.wall_s)
    assert speed.tflops == pytest.approx(speed.tokens_per_s * 1e6 / 1e12)
    assert speed.mfu is None  # a CPU has no bf16 peak in the table: never guessed
    assert len(lines) == 2 and all({"tokens_per_s", "achieved_tflops"} <= set(m) and "mfu" not in m for m in lines)
    assert all(m["tokens_per_s"] > 0 for m in lines)


def test_a_data_parallel_rank_reports_the_global_batch_throughput(monkeypatch: pytest.MonkeyPatch) -> None:
    """One of W ranks training on a shard of each global batch reports the global batch: its own positions
    x W, and MFU against W devices' peak (runners/distributed.py passes data_parallel=world_size)."""
    import runners.train_generator as loop

    calls: list[dict] = []
    real = loop.throughput

    def recorded(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(loop, "throughput", recorded)
    lines: list[dict[str, float]] = []
    torch.manual_seed(0)
    result = train_generator(GENERATORS["ar"].build(CONFIG), batch_fn, steps=4, lr=1e-3, seed=0, log_every=2,
                             on_log=lambda step, metrics: lines.append(metrics), flops_per_token=1e6, data_parallel=2)
    assert result.tokens == 4 * 6 * 9  # this rank's own positions
    assert [(c["tokens"], c["devices"]) for c in calls] == [(2 * 2 * 6 * 9, 2), (2 * 2 * 6 * 9, 2), (2 * 4 * 6 * 9, 2)]
    assert len(lines) == 2 and all(m["tokens_per_s"] > 0 for m in lines)
    with pytest.raises(ValueError, match="data_parallel must be >= 1"):
        train_generator(GENERATORS["ar"].build(CONFIG), batch_fn, steps=1, lr=1e-3, seed=0, data_parallel=0)


def test_rate_meter_adds_images_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[tuple[int, dict[str, float]]] = []
    meter = RateMeter(lambda step, m: lines.append((step, m)), per_step=8, unit="images", device="cpu",
                      flops_per_unit=2e9)
    times = iter([10.0, 14.0])
    meter._clock = lambda: next(times)
    meter.last_time = 8.0  # 10 steps (0..9) of 8 images in 2 s, then 10 more in 4 s
    meter(9, {"loss": 1.0})
    meter(19, {"loss": 0.5})
    assert lines[0] == (9, {"loss": 1.0, "images_per_s": 40.0, "achieved_tflops": 40.0 * 2e9 / 1e12})
    assert lines[1][1]["images_per_s"] == 20.0 and "mfu" not in lines[1][1]


def test_generator_flops_per_position() -> None:
    # AR: one slot per position, so the PaLM rule as is; 100 parameters, 2 layers, width 8, 9 positions
    assert train_speed.generator_flops_per_position(100, 2, 8, 9, 9) == 6 * 100 + 12 * 2 * 9 * 8
    # 19 slots for 9 positions (1 + 9 x 2): each position pays for 19/9 slots of 19 attended
    assert train_speed.generator_flops_per_position(100, 2, 8, 9, 19) == pytest.approx(19 / 9 * (600 + 12 * 2 * 19 * 8))
    assert math.isfinite(train_speed.measured_train_flops(lambda: torch.nn.Linear(4, 5)(torch.zeros(3, 4))))
    assert train_speed.measured_train_flops(lambda: torch.nn.Linear(4, 5)(torch.zeros(3, 4))) == 3 * 2 * 3 * 4 * 5

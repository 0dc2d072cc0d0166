"""GPU smoke test for the generator path (under 5 minutes on one GPU; not part of `make test`).

    python scripts/gpu_smoke.py              # on CUDA; exits 0 with a "no CUDA device" line where there is none
    python scripts/gpu_smoke.py --cpu        # the same checks on the CPU at the tiny rung (logic check)
    python scripts/gpu_smoke.py --ddp        # also 1 step of data-parallel training through Ray Train
    python scripts/gpu_smoke.py --json out.json

Checks (each one records its numbers and ok; one JSON summary is printed at the end; exit 1 if any fails):

  bf16_train   train_generator(precision="bf16") on a fixed batch for --steps steps: every loss finite,
               the mean of the last quarter below the mean of the first quarter, weights still float32
  compile      dropout 0: torch.compile(model.loss) vs eager loss on one batch (relative 1e-3), then
               3 training steps with compile=True vs compile=False from the same weights (losses agree)
  kv_cache     sample_ar with the KV cache vs full-prefix recompute, same seed on a device generator,
               CFG 2: identical tokens; sub-tokens/s of both paths
  ddp          (--ddp) train_generator_ddp on every visible GPU (NCCL; 2 gloo workers with --cpu):
               finite losses, weights load into a fresh model
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from runners.generators import ARGenerator, GeneratorConfig  # noqa: E402
from runners.sampling import sample_ar  # noqa: E402
from runners.train_generator import train_generator  # noqa: E402

# The problem per device: (size rung, grid side, K, c, classes, batch). CUDA: the 3.5M-parameter "small"
# rung on a 16x16 grid (N = 256, the paper's grid at 256 px) with a 2-8 vocabulary; CPU: the tiny rung.
PROBLEMS: dict[str, dict[str, Any]] = {
    "cuda": {"size": "small", "grid": 16, "token_each": 2, "bits_each": 8, "num_classes": 1000, "batch": 64},
    "cpu": {"size": "tiny", "grid": 4, "token_each": 2, "bits_each": 4, "num_classes": 10, "batch": 16},
}


def config_for(problem: dict[str, Any], dropout: float = 0.1, class_dropout: float = 0.1) -> GeneratorConfig:
    return GeneratorConfig(
        problem["size"], problem["grid"], problem["grid"], problem["token_each"], problem["bits_each"],
        problem["num_classes"], dropout=dropout, class_dropout=class_dropout,
    )


def fixed_batch(config: GeneratorConfig, batch: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, config.seq_len, config.token_each), generator=g)  # (B, N, K)
    labels = torch.randint(0, config.num_classes, (batch,), generator=g)  # (B,)
    return ids.to(device), labels.to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_bf16_train(problem: dict[str, Any], device: torch.device, steps: int) -> dict[str, Any]:
    """bf16 autocast training on one fixed batch (memorisable): finite, decreasing loss."""
    torch.manual_seed(0)
    config = config_for(problem)
    model = ARGenerator(config).to(device)
    ids, labels = fixed_batch(config, problem["batch"], device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        autocast_dtype = model(ids, labels).dtype  # what the matmuls produce under the recipe's autocast
    result = train_generator(model, lambda step, g: (ids, labels), steps=steps, lr=1e-3, seed=0, precision="bf16")
    losses = [value for _, value in result.losses]
    quarter = max(1, steps // 4)
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    weight_dtypes = sorted({str(p.dtype) for p in model.parameters()})
    return {
        "ok": all(math.isfinite(v) for v in losses) and last < first and weight_dtypes == ["torch.float32"]
        and autocast_dtype == torch.bfloat16,
        "steps": steps, "initial_loss": losses[0], "first_quarter_loss": first, "last_quarter_loss": last,
        "ln_vocab": math.log(config.vocab_size), "autocast_dtype": str(autocast_dtype), "weight_dtypes": weight_dtypes,
        "steps_per_s": result.steps_per_s, "parameters": sum(p.numel() for p in model.parameters()),
    }


def check_compile(problem: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """torch.compile agrees with eager: one loss, then 3 training steps through train_generator(compile=...)."""
    torch._dynamo.reset()
    config = config_for(problem, dropout=0.0, class_dropout=0.0)  # no randomness inside the loss
    torch.manual_seed(0)
    eager_model = ARGenerator(config).to(device)
    with torch.no_grad():
        for head in eager_model.heads:
            head.weight.normal_(0.0, 0.3)  # non-uniform logits, so the comparison is not trivially ln(V)
    compiled_model = ARGenerator(config).to(device)
    compiled_model.load_state_dict(eager_model.state_dict())
    ids, labels = fixed_batch(config, problem["batch"], device, seed=1)

    start = time.perf_counter()
    compiled_loss = torch.compile(compiled_model.loss)(ids, labels).item()
    synchronize(device)
    first_call_s = time.perf_counter() - start
    eager_loss = eager_model.loss(ids, labels).item()
    loss_rel_error = abs(compiled_loss - eager_loss) / max(1.0, abs(eager_loss))

    def batch_fn(step: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        return fixed_batch(config, problem["batch"], device, seed=10 + step)

    start = time.perf_counter()
    compiled_run = train_generator(compiled_model, batch_fn, steps=3, lr=1e-3, seed=0, compile=True)
    train_compiled_s = time.perf_counter() - start
    eager_run = train_generator(eager_model, batch_fn, steps=3, lr=1e-3, seed=0)
    step_errors = [abs(a - b) / max(1.0, abs(b)) for (_, a), (_, b) in zip(compiled_run.losses, eager_run.losses)]
    return {
        "ok": loss_rel_error <= 1e-3 and max(step_errors) <= 1e-3,
        "eager_loss": eager_loss, "compiled_loss": compiled_loss, "loss_rel_error": loss_rel_error,
        "train_losses_compiled": [v for _, v in compiled_run.losses], "train_losses_eager": [v for _, v in eager_run.losses],
        "train_max_rel_error": max(step_errors), "first_call_s": first_call_s, "train_3_steps_compiled_s": train_compiled_s,
    }


def check_kv_cache(problem: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """KV-cached sampling gives the full-recompute tokens under the same seed; throughput of both."""
    config = config_for(problem)
    torch.manual_seed(0)
    model = ARGenerator(config).to(device).eval()
    with torch.no_grad():
        for head in model.heads:
            head.weight.normal_(0.0, 0.3)  # peaked logits, like a trained model's
    batch = min(problem["batch"], 32)
    labels = torch.arange(batch, device=device) % config.num_classes  # (B,)
    knobs: dict[str, Any] = {"cfg_scale": 2.0, "temperature": 1.0, "top_k": 0}

    def run(kv_cache: bool, seed: int, rows: int) -> tuple[Tensor, float]:
        generator = torch.Generator(device=device).manual_seed(seed)
        synchronize(device)
        start = time.perf_counter()
        ids = sample_ar(model, labels[:rows], generator=generator, kv_cache=kv_cache, **knobs)
        synchronize(device)
        return ids, time.perf_counter() - start

    run(True, 0, 2), run(False, 0, 2)  # warm-up: kernels, allocator
    cached, cached_s = run(True, 7, batch)
    full, full_s = run(False, 7, batch)
    sub_tokens = batch * config.seq_len * config.token_each
    match = (cached == full).float().mean().item()
    return {
        "ok": bool(torch.equal(cached, full)), "token_match_fraction": match, "batch": batch,
        "positions": config.seq_len, "token_each": config.token_each,
        "kv_cache_tokens_per_s": sub_tokens / cached_s, "full_recompute_tokens_per_s": sub_tokens / full_s,
        "speedup": full_s / cached_s,
    }


def check_ddp(problem: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A few steps of data-parallel training through Ray Train on this machine."""
    from runners.distributed import train_generator_ddp

    use_gpu = device.type == "cuda"
    workers = torch.cuda.device_count() if use_gpu else 2
    config = config_for(problem)
    batch = problem["batch"] - problem["batch"] % workers

    def build_model() -> ARGenerator:
        return ARGenerator(config)

    def batch_fn(step: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        ids = torch.randint(0, config.vocab_size, (batch, config.seq_len, config.token_each), generator=g)
        return ids, torch.randint(0, config.num_classes, (batch,), generator=g)

    start = time.perf_counter()
    result = train_generator_ddp(
        build_model, batch_fn, num_workers=workers, use_gpu=use_gpu, steps=3, lr=1e-3, seed=0,
        precision="bf16" if use_gpu else "fp32",
    )
    fresh = build_model()
    fresh.load_state_dict(result.state_dict)
    return {
        "ok": all(math.isfinite(v) for _, v in result.losses), "workers": workers,
        "losses": [v for _, v in result.losses], "wall_s_with_ray": time.perf_counter() - start,
        "loop_wall_s": result.wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the checks on the CPU at the tiny rung")
    parser.add_argument("--ddp", action="store_true", help="also train through Ray Train (DDP)")
    parser.add_argument("--steps", type=int, default=20, help="bf16 training steps (default 20)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (pass --cpu to run the same checks on the CPU at the tiny rung)")
        print(json.dumps({"ok": True, "skipped": "no CUDA device", "torch": torch.__version__}))
        return 0
    device = torch.device("cpu" if args.cpu else "cuda")
    problem = PROBLEMS[device.type]
    if device.type == "cpu":
        torch.set_num_threads(min(4, torch.get_num_threads()))

    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "bf16_train": lambda: check_bf16_train(problem, device, args.steps),
        "compile": lambda: check_compile(problem, device),
        "kv_cache": lambda: check_kv_cache(problem, device),
    }
    if args.ddp:
        checks["ddp"] = lambda: check_ddp(problem, device)

    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for name, check in checks.items():
        check_start = time.perf_counter()
        try:
            results[name] = check()
        except Exception as error:  # a failed check is a recorded result, the others still run
            results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        results[name]["wall_s"] = time.perf_counter() - check_start
        print(f"{name}: {'ok' if results[name]['ok'] else 'FAILED'} ({results[name]['wall_s']:.1f} s)", file=sys.stderr)

    summary = {
        "ok": all(r["ok"] for r in results.values()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "problem": problem,
        "checks": results, "wall_s": time.perf_counter() - start,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

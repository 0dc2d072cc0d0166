"""One-command GPU benchmark (not part of pytest), under 5 minutes on one GPU:

    .venv/bin/python benchmarks/bench_gpu.py          # CUDA: the paper's ELM-L 2-10
    .venv/bin/python benchmarks/bench_gpu.py --cpu    # logic check on a CPU at the tiny rung

Prints:
1. the AR-L 2-10 training step (bf16 autocast, the whole model compiled, TF32, fused AdamW: the training loop's
   CUDA settings, runners/train_speed.py) at batch 32 x 256 positions: step time, tokens/s, achieved TFLOP/s
   and MFU against the device's bf16 dense peak (runners/perf.py; none for devices not in its table);
2. ELM-L 2-10 AR sampling with CFG (scale 4, linear) at batch 256: images/s with the model's KV cache launched
   kernel by kernel, and with the static cache whose decode step is compiled as a CUDA graph
   (runners/fast_decode.py); the two must give the same tokens;
3. decoding tokens to images with the imagenet-rung BAE (256 px, 24 bits): images/s at batch 64.

--cpu runs the same code at the tiny rung (tiny generator and BAE, 16 x 16 grid, small batches, compile off as
runtime.compile "auto" decides on a CPU): the figures check the logic only, they say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from runners.fast_decode import StaticDecoder  # noqa: E402
from runners.generators import ARGenerator, GeneratorConfig, parameter_count  # noqa: E402
from runners.perf import throughput  # noqa: E402
from runners.sampling import sample_ar  # noqa: E402
from runners.tokenizers import TOKENIZERS, vocabulary_for  # noqa: E402
from runners.train_generator import _ema_update, _optimizer  # noqa: E402
from runners.train_speed import (  # noqa: E402
    compile_model, configure_matmul, device_name, generator_flops_per_position, resolve_compile,
)

RUNGS = {  # generator size, train batch, sample batch, BAE size, image size, decode batch
    "gpu": dict(size="L", train_batch=32, sample_batch=256, bae="imagenet", image=256, decode_batch=64, classes=1000),
    "cpu": dict(size="tiny", train_batch=4, sample_batch=4, bae="tiny", image=32, decode_batch=8, classes=10),
}
GRID, K, BITS = 16, 2, 10


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Mean seconds of fn over `repeats` runs (after the caller's warm-up)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def train_step(rung: dict, device: torch.device) -> None:
    config = GeneratorConfig(rung["size"], GRID, GRID, token_each=K, bits_each=BITS, num_classes=rung["classes"])
    torch.manual_seed(0)
    model = ARGenerator(config).to(device).train()
    configure_matmul(device)
    optimizer = _optimizer(model, 1e-4, 0.05, (0.9, 0.95))
    ema = copy.deepcopy(model).requires_grad_(False)
    compiled, why = resolve_compile("auto", device)
    if compiled:
        compile_model(model)
    B = rung["train_batch"]
    ids = torch.randint(0, 2**BITS, (B, GRID * GRID, K), device=device)
    labels = torch.randint(0, rung["classes"], (B,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model.loss(ids, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        _ema_update(ema, model, 0.9999)

    start = time.perf_counter()
    for _ in range(3):  # warm-up, compile included
        step()
    sync(device)
    warm = time.perf_counter() - start
    seconds = timed(step, device, 10 if device.type == "cuda" else 3)
    tokens = B * GRID * GRID
    flops = generator_flops_per_position(parameter_count(config), config.layers, config.width, GRID * GRID,
                                         GRID * GRID)
    speed = throughput(tokens=tokens, seconds=seconds, flops_per_token=flops, device_name=device_name(device))
    mfu = "n/a (device not in runners.perf's table)" if speed.mfu is None else f"{100 * speed.mfu:.1f}%"
    print(f"1. AR-{rung['size']} 2-10 training step, bf16, batch {B} x {GRID * GRID} positions "
          f"({'compiled' if compiled else 'eager: ' + why}; warm-up {warm:.1f} s): {seconds * 1e3:.1f} ms/step, "
          f"{speed.tokens_per_s:,.0f} tokens/s, {speed.tflops:.2f} TFLOP/s, MFU {mfu}", flush=True)


def sampling(rung: dict, device: torch.device) -> None:
    config = GeneratorConfig(rung["size"], GRID, GRID, token_each=K, bits_each=BITS, num_classes=rung["classes"])
    torch.manual_seed(0)
    model = ARGenerator(config).to(device).eval()
    with torch.no_grad():
        for head in model.heads:
            head.weight.normal_(0.0, 0.02)
    B = rung["sample_batch"]
    labels = torch.arange(B, device=device) % rung["classes"]
    static = StaticDecoder(model, compile="auto")

    def run(decoder: object) -> torch.Tensor:
        return sample_ar(decoder, labels, cfg_scale=4.0, cfg_schedule="linear",  # type: ignore[arg-type]
                         generator=torch.Generator(device=device).manual_seed(0))

    results = {}
    for name, decoder in (("KV cache, kernel by kernel", model),
                          (f"static cache, {'CUDA graph' if static.compiled and device.type == 'cuda' else 'compiled' if static.compiled else 'eager'}",
                           static)):
        start = time.perf_counter()
        ids = run(decoder)  # warm-up (and compile / graph capture)
        sync(device)
        warm = time.perf_counter() - start
        seconds = timed(lambda: run(decoder), device, 1)
        results[name] = ids
        print(f"2. ELM-{rung['size']} 2-10 sampling, CFG 4, batch {B}, {name} (first call {warm:.1f} s): "
              f"{B / seconds:,.1f} images/s ({B * GRID * GRID / seconds:,.0f} tokens/s)", flush=True)
    first, second = results.values()
    same = torch.equal(first, second)
    print(f"   same tokens with both caches: {same}" + ("" if same else f" ({(first != second).float().mean():.2%} "
                                                            f"of sub-tokens differ: float rounding of the logits)"))


def decoding(rung: dict, device: torch.device) -> None:
    bae = TOKENIZERS["bae"].build(code_dim=24, size=rung["bae"], channels=3, image_size=rung["image"]).to(device).eval()
    vocab = vocabulary_for(bae, 2)
    h, w = bae.grid
    B = rung["decode_batch"]
    ids = torch.randint(0, 2**12, (B, h * w, 2), device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        bae.decode_ids(ids, vocab)  # warm-up
        seconds = timed(lambda: bae.decode_ids(ids, vocab), device, 5 if device.type == "cuda" else 2)
    print(f"3. BAE ({rung['bae']} rung, {rung['image']} px, 24 bits) decoding, batch {B}: {B / seconds:,.1f} images/s",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="logic check on the CPU at the tiny rung")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads with --cpu")
    args = parser.parse_args()
    if args.cpu:
        device, rung = torch.device("cpu"), RUNGS["cpu"]
        torch.set_num_threads(args.threads)
    elif torch.cuda.is_available():
        device, rung = torch.device("cuda"), RUNGS["gpu"]
    else:
        raise SystemExit("no CUDA device: run with --cpu for the logic check at the tiny rung")
    started = time.perf_counter()
    print(f"device {device_name(device)}, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}"
          + (" (CPU logic check at the tiny rung: not GPU figures)" if args.cpu else ""), flush=True)
    train_step(rung, device)
    sampling(rung, device)
    decoding(rung, device)
    print(f"total {time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

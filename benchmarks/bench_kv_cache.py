"""KV-cached vs full-recompute AR decoding: same tokens, and how much faster.

Not part of pytest. Run from the repository root:

    .venv/bin/python benchmarks/bench_kv_cache.py [--threads 1] [--device cpu]

For each model it first asserts that `sample_ar(kv_cache=True)` and `sample_ar(kv_cache=False)`
give exactly the same tokens under the same seed, then prints decoded tokens per second of both
paths at 256 positions (16 x 16 grid) and their ratio. "bench" (4 layers, width 256, 4 heads, 2-6
vocabulary, 4 labels with CFG = 8 rows) must be at least 10x faster cached; the "tiny" rung's ratio
is printed without a target.

Default one thread: on a shared 2-core machine, two intra-op threads per process make every small
kernel wait on a descheduled thread (the cached path, made of small kernels, suffers most).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from runners.generators import GENERATOR_SIZES, ARGenerator, GeneratorConfig  # noqa: E402
from runners.sampling import sample_ar  # noqa: E402

GRID = 16  # 16 x 16 = 256 positions
BENCH_RUNG = "small"  # the "bench" model: 4 layers, width 256, 4 heads (the small rung of GENERATOR_SIZES)
TARGET_SPEEDUP = 10.0


def build(size: str, device: torch.device) -> ARGenerator:
    config = GeneratorConfig(size, GRID, GRID, token_each=2, bits_each=6, num_classes=10)
    torch.manual_seed(0)
    model = ARGenerator(config)
    with torch.no_grad():  # random heads, so that the sampled tokens depend on the logits
        for head in model.heads:
            head.weight.normal_(0.0, 0.1)
    return model.to(device).eval()


def decode(model: ARGenerator, labels: torch.Tensor, kv_cache: bool) -> tuple[torch.Tensor, float]:
    generator = torch.Generator(device=labels.device).manual_seed(0)
    if labels.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    ids = sample_ar(model, labels, cfg_scale=4.0, cfg_schedule="linear", top_k=32, generator=generator,
                    kv_cache=kv_cache)
    if labels.device.type == "cuda":
        torch.cuda.synchronize()
    return ids, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    rung = GENERATOR_SIZES[BENCH_RUNG]
    assert (rung.layers, rung.width, rung.heads) == (4, 256, 4), f"the bench model must be 4/256/4, got {rung}"
    labels = torch.arange(4, device=device)  # 4 labels, CFG doubles them: 8 rows through the model
    print(f"device {device}, {torch.get_num_threads()} threads, {GRID}x{GRID} = {GRID * GRID} positions, "
          f"2-6 vocabulary, 4 labels x CFG = 8 rows")
    print(f"{'model':<6} {'params':>9} {'cached tok/s':>13} {'full tok/s':>11} {'speedup':>8}  target")
    ok = True
    for name, size in (("bench", BENCH_RUNG), ("tiny", "tiny")):
        model = build(size, device)
        decode(model, labels[:1], True)  # warm-up (allocator, kernels)
        cached, cached_s = decode(model, labels, True)
        full, full_s = decode(model, labels, False)
        assert torch.equal(cached, full), f"{name}: cached and full-recompute decoding gave different tokens"
        tokens = labels.numel() * GRID * GRID  # positions decoded (each K sub-tokens), CFG rows not counted
        speedup = full_s / cached_s
        target = f">= {TARGET_SPEEDUP:.0f}x" if name == "bench" else "-"
        if name == "bench" and speedup < TARGET_SPEEDUP:
            ok = False
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:<6} {params / 1e6:>8.2f}M {tokens / cached_s:>13.0f} {tokens / full_s:>11.0f} "
              f"{speedup:>7.1f}x  {target}")
    if not ok:
        raise SystemExit(f"bench: the KV cache must be at least {TARGET_SPEEDUP:.0f}x faster")
    print("tokens identical with and without the cache: OK")


if __name__ == "__main__":
    main()

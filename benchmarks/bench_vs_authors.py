"""Our generators against the authors' modules, side by side on this machine (not part of pytest):

    .venv/bin/python benchmarks/bench_vs_authors.py CHECKOUT [--threads 2] [--reps 3]

CHECKOUT is a checkout of the authors' repository (Pepper-lll/LMforImageGeneration, commit c2f29f0). The script
puts it on sys.path and imports their `llama/ar_model.py` and `llama/mlm_model.py` from there; nothing of theirs
is copied into this project. Without CHECKOUT it prints how to get one and exits 0.

Both sides build the same architecture: 4 layers, width 256, 4 heads, K = 2 sub-tokens of 6 bits (2-6),
16 x 16 grid, 10 classes, eval mode. It prints, each with our/their ratio:

- AR sampling tokens/s (a token = one latent position, CFG rows not counted) at 4 and 32 labels, CFG scale 4
  with the linear schedule and top-k 32: ours `sample_ar` with the model's KV cache (the CPU default), and on
  a second line through the static-cache decoder with its step compiled (runners/fast_decode.py, when a C++
  compiler exists), theirs `generate_cfg` (it recomputes the whole prefix at every position);
  then a line per label count with the time per decoding step of each side, the step time the target asks for,
  and the floor of ours: only the step's weight matmuls at its rows, nothing else (at a few rows these are bound
  by reading the weights from memory, which is what holds the 4-label ratio on a CPU);
- MLM sampling (10 steps, 32 labels, CFG 4 linear): images/s of `sample_mlm` against their `generate_cfg`;
- one training step at batch 16 (forward, backward, gradient clipping at 1.0, AdamW, EMA): ours the pieces of
  runners/train_generator.py, compiled with torch.compile when a C++ compiler exists (else eager, said so),
  theirs their forward with targets plus the same optimizer, clipping and EMA update; once in fp32 and once with
  both forwards under CPU bf16 autocast (the paper's precision; --train-precision picks).

The sides alternate (ours, theirs, ours, ...) and each figure is the median of --reps runs, with the machine's
load average (1 min) when it was taken: on a shared machine the ratio is the figure to read.
Their modules import `einops` (never called on these paths); without it installed a stand-in module that
raises on use is registered first.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from runners.fast_decode import StaticDecoder  # noqa: E402
from runners.generators import ARGenerator, GeneratorConfig, MLMGenerator  # noqa: E402
from runners.sampling import sample_ar, sample_mlm  # noqa: E402
from runners.train_generator import _ema_update, _optimizer  # noqa: E402
from runners.train_speed import compile_model, cxx_compiler  # noqa: E402

HOW_TO_GET = """no CHECKOUT given. Get the authors' code (read-only use, nothing is copied) and pass its folder:

    git clone https://github.com/Pepper-lll/LMforImageGeneration /tmp/authors
    git -C /tmp/authors checkout c2f29f0
    .venv/bin/python benchmarks/bench_vs_authors.py /tmp/authors
"""

LAYERS, WIDTH, HEADS, K, BITS, GRID, CLASSES = 4, 256, 4, 2, 6, 16, 10
CFG, TOP_K, MLM_STEPS, MLM_TAU, TRAIN_BATCH = 4.0, 32, 10, 4.5, 16
TARGETS = {"ar4": 30.0, "ar32": 50.0, "mlm": 1.0, "train": 1 / 0.8}  # minimum speed ratios (ours / theirs)


def load(checkout: Path) -> tuple[types.ModuleType, types.ModuleType]:
    if not (checkout / "llama" / "ar_model.py").is_file():
        raise SystemExit(f"{checkout} holds no llama/ar_model.py: pass a checkout of Pepper-lll/LMforImageGeneration")
    try:
        import einops  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("einops")

        def unavailable(*args, **kwargs):
            raise RuntimeError("einops is not installed; the benchmarked paths do not call it")

        stand_in.rearrange = stand_in.reduce = stand_in.pack = stand_in.unpack = unavailable
        sys.modules["einops"] = stand_in
    sys.path.insert(0, str(checkout))
    from llama import ar_model, mlm_model

    return ar_model, mlm_model


def load_text() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(ours: Callable[[], object], theirs: Callable[[], object], reps: int,
              extra: Callable[[], object] | None = None) -> tuple[float, float, str, float | None]:
    """Median seconds of each side over `reps` alternating runs, the load averages seen, and the median of an
    optional second variant of ours (run in the same rotation)."""
    ours()  # warm-up of our side (allocator, compiled graphs); theirs has no first-call setup worth a run
    if extra is not None:
        extra()
    times: dict[str, list[float]] = {"ours": [], "theirs": [], "extra": []}
    loads = []
    for _ in range(reps):
        times["ours"].append(timed(ours))
        times["theirs"].append(timed(theirs))
        if extra is not None:
            times["extra"].append(timed(extra))
        loads.append(os.getloadavg()[0])
    return statistics.median(times["ours"]), statistics.median(times["theirs"]), \
        f"load {min(loads):.1f}-{max(loads):.1f}", statistics.median(times["extra"]) if extra is not None else None


def report(name: str, unit: str, amount: float, ours_s: float, theirs_s: float, loads: str, target: str) -> bool:
    ratio = theirs_s / ours_s
    goal = TARGETS[target]
    ok = ratio >= goal
    print(f"{name:<28} ours {amount / ours_s:>10.1f} {unit:<9} theirs {amount / theirs_s:>9.1f} {unit:<9} "
          f"ratio {ratio:>6.2f}x  target >= {goal:.2f}x {'ok' if ok else 'MISSED'}  ({loads})", flush=True)
    return ok


def our_config() -> GeneratorConfig:
    return GeneratorConfig("small", GRID, GRID, token_each=K, bits_each=BITS, num_classes=CLASSES)


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random non-zero weights everywhere (zero-initialised heads would make every logit equal)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


def bench_ar(ar_model: types.ModuleType, reps: int, label_counts: tuple[int, ...], compile: bool) -> list[bool]:
    ours = randomise(ARGenerator(our_config())).eval()
    theirs = randomise(ar_model.Transformer(ar_model.ModelArgs(
        dim=WIDTH, n_layer=LAYERS, n_head=HEADS, token_each=K, code_dim=BITS, num_classes=CLASSES,
        block_size=GRID * GRID, cls_token_num=1))).eval()
    # the static-cache decoder with its step compiled (what runtime.compile true gives on a CPU with a compiler)
    static = StaticDecoder(ours, compile=True) if compile else None
    ok = []
    for count in label_counts:
        labels = torch.arange(count) % CLASSES
        run_ours = lambda: sample_ar(ours, labels, cfg_scale=CFG, cfg_schedule="linear", top_k=TOP_K,  # noqa: E731
                                     generator=torch.Generator().manual_seed(0))
        run_theirs = lambda: theirs.generate_cfg(None, labels, num_iter=GRID * GRID, top_k=TOP_K,  # noqa: E731
                                                 cfg_scale=CFG, cfg_schedule="linear")
        run_static = None
        if static is not None:
            run_static = lambda: sample_ar(static, labels, cfg_scale=CFG, cfg_schedule="linear",  # noqa: E731
                                           top_k=TOP_K, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours_s, theirs_s, loads, static_s = alternate(run_ours, run_theirs, reps if count <= 4 else 1, run_static)
        target = f"ar{count}" if f"ar{count}" in TARGETS else "ar4"
        ok.append(report(f"AR sampling, {count} labels", "tokens/s", count * GRID * GRID, ours_s, theirs_s, loads,
                         target))
        if static_s is not None:
            report("  static cache, compiled", "tokens/s", count * GRID * GRID, static_s, theirs_s, loads, target)
        weights_s, attention_s = step_floor(ours, 2 * count)
        steps = GRID * GRID
        print(f"  per step: ours {ours_s / steps * 1e3:.2f} ms, theirs {theirs_s / steps * 1e3:.2f} ms; the target "
              f"needs <= {theirs_s / TARGETS[target] / steps * 1e3:.2f} ms. Floor of ours at {2 * count} rows: the "
              f"{len(matrices(ours))} weight matmuls alone {weights_s * 1e3:.2f} ms, with attention over the KV cache "
              f"{attention_s * 1e3:.2f} ms (nothing else)", flush=True)
    return ok


def matrices(model: torch.nn.Module) -> list[torch.Tensor]:
    """The weight matrices one decode step multiplies by (every Linear; embeddings are only gathered)."""
    return [module.weight for module in model.modules() if isinstance(module, torch.nn.Linear)]


@torch.no_grad()
def step_floor(model: ARGenerator, rows: int) -> tuple[float, float]:
    """Seconds per decode step (mean over the N steps of one image) of only (a) multiplying `rows` rows by every
    weight matrix of the model once, and (b) that plus each layer's attention of one query per row over a KV cache
    of the step's length: what a step costs before norms, rotary, embeddings and sampling. At a few rows both are
    bound by reading the weights and the cache from memory, not by arithmetic."""
    cfg = model.config
    weights = matrices(model)
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
    shape = (rows, cfg.heads, cfg.seq_len, cfg.head_dim)
    keys = [torch.randn(shape) for _ in range(cfg.layers)]
    values = [torch.randn(shape) for _ in range(cfg.layers)]
    query = torch.randn(rows, cfg.heads, 1, cfg.head_dim)

    def run(attend: bool) -> float:
        start = time.perf_counter()
        for step in range(cfg.seq_len):
            for w in weights:
                torch.nn.functional.linear(inputs[w.shape[1]], w)
            if attend:
                for k, v in zip(keys, values):
                    torch.nn.functional.scaled_dot_product_attention(query, k[:, :, : step + 1], v[:, :, : step + 1])
        return (time.perf_counter() - start) / cfg.seq_len

    run(True)  # warm-up
    return run(False), run(True)


def bench_mlm(mlm_model: types.ModuleType, reps: int, count: int = 32) -> bool:
    ours = randomise(MLMGenerator(our_config())).eval()
    args = mlm_model.ModelArgs(dim=WIDTH, n_layer=LAYERS, n_head=HEADS, token_each=K, code_dim=BITS,
                               num_classes=CLASSES, block_size=GRID * GRID, cls_token_num=1)
    args.model_type = "c2i"  # their MLM Transformer reads this attribute, which their MLM ModelArgs lacks
    theirs = randomise(mlm_model.Transformer(args)).eval()
    labels = torch.arange(count) % CLASSES
    run_ours = lambda: sample_mlm(ours, labels, steps=MLM_STEPS, tau=MLM_TAU, cfg_scale=CFG,  # noqa: E731
                                  cfg_schedule="linear", generator=torch.Generator().manual_seed(0))
    run_theirs = lambda: theirs.generate_cfg(None, labels, num_iter=MLM_STEPS, temperature=MLM_TAU,  # noqa: E731
                                             cfg_scale=CFG, cfg_schedule="linear")
    with torch.no_grad():
        ours_s, theirs_s, loads, _ = alternate(run_ours, run_theirs, reps)
    return report(f"MLM sampling, {count} labels", "images/s", count, ours_s, theirs_s, loads, "mlm")


def bench_train(ar_model: types.ModuleType, reps: int, compile: bool, precision: str = "fp32") -> bool:
    """One training step on each side; precision "bf16" runs both forwards under torch.autocast("cpu", bfloat16)
    (the paper's precision and the default of their train_ddp.py, whose torch.cuda.amp.autocast does nothing on a
    CPU, so the bench applies the same CPU autocast to both sides)."""
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")  # noqa: E731
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 2**BITS, (TRAIN_BATCH, GRID * GRID, K), generator=generator)
    labels = torch.randint(0, CLASSES, (TRAIN_BATCH,), generator=generator)

    torch.manual_seed(0)
    ours = ARGenerator(our_config()).train()
    ours_ema = copy.deepcopy(ours).requires_grad_(False)
    ours_opt = _optimizer(ours, 1e-4, 0.05, (0.9, 0.95))
    if compile:
        compile_model(ours)

    def step_ours() -> None:
        with autocast():
            loss = ours.loss(ids, labels, generator=generator)
        ours_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        ours_opt.step()
        _ema_update(ours_ema, ours, 0.9999)

    torch.manual_seed(0)
    theirs = ar_model.Transformer(ar_model.ModelArgs(
        dim=WIDTH, n_layer=LAYERS, n_head=HEADS, token_each=K, code_dim=BITS, num_classes=CLASSES,
        block_size=GRID * GRID, cls_token_num=1)).train()
    theirs_ema = copy.deepcopy(theirs).requires_grad_(False)
    decay = [p for p in theirs.parameters() if p.ndim >= 2]
    rest = [p for p in theirs.parameters() if p.ndim < 2]
    theirs_opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                                   lr=1e-4, betas=(0.9, 0.95))

    def step_theirs() -> None:
        with autocast():
            _, loss, _ = theirs(idx=ids[:, :-1], cond=labels, targets=ids)
        theirs_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        theirs_opt.step()
        with torch.no_grad():  # the usual EMA update: ema = decay * ema + (1 - decay) * p, parameter by parameter
            for e, p in zip(theirs_ema.parameters(), theirs.parameters()):
                e.mul_(0.9999).add_(p, alpha=1 - 0.9999)

    if compile:
        for _ in range(2):  # compile (or load from the inductor cache) before timing
            step_ours()
    ours_s, theirs_s, loads, _ = alternate(step_ours, step_theirs, reps)
    how = f"{precision}, {'compiled' if compile else 'eager'}"
    return report(f"training step, batch {TRAIN_BATCH} ({how})", "tokens/s", TRAIN_BATCH * GRID * GRID, ours_s,
                  theirs_s, loads, "train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", nargs="?", type=Path, help="a checkout of Pepper-lll/LMforImageGeneration")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", choices=("ar", "mlm", "train"), action="append",
                        help="run only these parts (repeatable; default all)")
    parser.add_argument("--labels", type=int, nargs="+", default=[4, 32], help="AR label counts (default 4 32)")
    parser.add_argument("--mlm-labels", type=int, default=32, help="MLM label count (default 32)")
    parser.add_argument("--eager", action="store_true", help="train our side eager even where compile is possible")
    parser.add_argument("--train-precision", choices=("fp32", "bf16"), nargs="+", default=["fp32", "bf16"],
                        help="training-step precisions, both sides alike (default fp32 bf16)")
    args = parser.parse_args()
    if args.checkout is None:
        print(HOW_TO_GET)
        return
    ar_model, mlm_model = load(args.checkout.resolve())
    torch.set_num_threads(args.threads)
    parts = args.only or ["ar", "mlm", "train"]
    compile = not args.eager and cxx_compiler() is not None
    print(f"{args.threads} threads, torch {torch.__version__}, {os.cpu_count()} CPUs, {load_text()} at start; "
          f"{LAYERS} layers, width {WIDTH}, {HEADS} heads, {K}-{BITS} vocabulary, {GRID}x{GRID} grid, "
          f"{CLASSES} classes; C++ compiler: {cxx_compiler() or 'none (training eager)'}", flush=True)
    ok = []
    if "ar" in parts:
        ok += bench_ar(ar_model, args.reps, tuple(args.labels), compile)
    if "mlm" in parts:
        ok.append(bench_mlm(mlm_model, args.reps, args.mlm_labels))
    if "train" in parts:
        for precision in args.train_precision:
            ok.append(bench_train(ar_model, args.reps, compile, precision))
    print(f"{sum(ok)} of {len(ok)} targets met ({load_text()} at the end)")


if __name__ == "__main__":
    main()

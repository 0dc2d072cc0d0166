"""Tests of runners/evaluation: the dataset classifier, FID / KID through torch-fidelity, precision / recall in
image_metrics, class accuracy, the protocol record and reference files."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from runners.data import load_dataset, stack
from runners.evaluation.classifier import (
    CLASSIFIER_CODE_VERSION,
    DatasetClassifier,
    accuracy,
    classifier_train_flops,
    load_classifier,
    predict,
    random_shift,
    save_classifier,
    train_classifier,
)
from runners.evaluation.metrics import (
    METRIC_KEYS,
    METRICS_CODE_VERSION,
    extract_features,
    extract_logits,
    feature_extractor_name,
    feature_statistics,
    fid_from_features,
    fid_from_statistics,
    image_metrics,
    inception_score,
    kid_from_features,
    real_feature_statistics,
)
from runners.evaluation.protocol import (
    PROTOCOL_ID_KEYS,
    PROTOCOL_KEYS,
    array_sha256,
    protocol,
    protocol_id,
    state_dict_sha256,
    statistics_sha256,
)
from runners.evaluation.reference import export_adm_npz, load_reference, to_uint8_nhwc


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # One thread: on a shared 2-core machine, two OpenMP threads per process fight each other.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    # Stratified 80/20 split with train_test_split(random_state=0): 1437 train, 360 held-out, (1, 16, 16).
    dataset = load_dataset("digits", 16, heldout_fraction=0.2, split_seed=0)
    train_images, train_labels = stack(dataset.train)
    heldout_images, heldout_labels = stack(dataset.heldout)
    return {"train_images": train_images, "train_labels": train_labels,
            "heldout_images": heldout_images, "heldout_labels": heldout_labels}


@pytest.fixture(scope="module")
def classifier(digits) -> DatasetClassifier:
    start = time.perf_counter()
    model = train_classifier(digits["train_images"], digits["train_labels"], num_classes=10,
                             steps=300, lr=3e-3, batch_size=64, seed=0)
    print(f"\ntrain_classifier on digits 16x16: {time.perf_counter() - start:.1f} s")
    return model


# ----------------------------------------------------------------------------------------------------------------
# classifier


@pytest.mark.parametrize("channels,image_size", [(1, 8), (1, 16), (3, 24), (3, 32)])
def test_classifier_shapes(channels: int, image_size: int) -> None:
    torch.manual_seed(0)
    model = DatasetClassifier(channels=channels, image_size=image_size, num_classes=7, feature_dim=32)
    images = torch.rand(5, channels, image_size, image_size)
    assert model(images).shape == (5, 7)
    assert model.features(images).shape == (5, 32)
    assert (model.features(images) >= 0).all()  # post-ReLU features


def test_classifier_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        DatasetClassifier(channels=1, image_size=12, num_classes=10)
    model = DatasetClassifier(channels=1, image_size=16, num_classes=10)
    with pytest.raises(ValueError, match=r"\(B, 1, 16, 16\)"):
        model(torch.rand(2, 1, 8, 8))


def test_classifier_heldout_accuracy(classifier: DatasetClassifier, digits) -> None:
    assert not classifier.training  # returned in eval mode
    heldout = accuracy(classifier, digits["heldout_images"], digits["heldout_labels"])
    print(f"held-out accuracy: {heldout:.4f}")
    assert heldout >= 0.90
    predicted = predict(classifier, digits["heldout_images"], batch_size=100)  # several batches
    assert predicted.dtype == torch.int64 and predicted.shape == (360,)
    assert float((predicted == digits["heldout_labels"]).double().mean()) == heldout


def test_train_classifier_is_deterministic_given_seed(digits) -> None:
    images, labels = digits["train_images"][:256], digits["train_labels"][:256]
    global_state = torch.get_rng_state()
    first = train_classifier(images, labels, num_classes=10, steps=3, lr=3e-3, batch_size=16, seed=5)
    second = train_classifier(images, labels, num_classes=10, steps=3, lr=3e-3, batch_size=16, seed=5)
    other = train_classifier(images, labels, num_classes=10, steps=3, lr=3e-3, batch_size=16, seed=6)
    assert torch.equal(torch.get_rng_state(), global_state)  # the caller's RNG is left alone
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert not torch.equal(first.head.weight, other.head.weight)


def test_train_classifier_logs_the_mean_loss_since_the_last_log(digits) -> None:
    images, labels = digits["train_images"][:256], digits["train_labels"][:256]
    lines: list[tuple[int, dict[str, float]]] = []
    logged = train_classifier(images, labels, num_classes=10, steps=5, lr=3e-3, batch_size=16, seed=5, log_every=2,
                              on_log=lambda step, metrics: lines.append((step, metrics)))
    quiet = train_classifier(images, labels, num_classes=10, steps=5, lr=3e-3, batch_size=16, seed=5)
    assert [step for step, _ in lines] == [1, 3, 4]  # every 2 steps and the last
    assert all(set(metrics) == {"loss", "lr"} and 0 < metrics["loss"] < 10 for _, metrics in lines)
    assert lines[0][1]["lr"] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi / 5)))  # step 1 of the cosine
    for name, tensor in quiet.state_dict().items():  # logging changes nothing of the run
        assert torch.equal(tensor, logged.state_dict()[name]), name


def test_classifier_train_flops_is_three_forwards() -> None:
    # 16x16x1 digits: convolutions 2*(256*9*1*16 + 64*9*16*32 + 16*9*32*64 + 4*9*64*128) = 1,843,200 and
    # linears 2*(128*64 + 64*10) = 17,664 FLOPs per forward; x3 for forward + backward
    assert classifier_train_flops(1, 16, 10) == 3 * (1_843_200 + 17_664)


def test_train_classifier_rejects_bad_labels(digits) -> None:
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\)"):
        train_classifier(digits["train_images"][:8], digits["train_labels"][:8] + 10, num_classes=10,
                         steps=1, lr=1e-3, batch_size=4, seed=0)


def test_random_shift_moves_pixels_by_at_most_max_shift() -> None:
    images = torch.zeros(64, 2, 8, 8)
    images[:, :, 4, 3] = 1.0  # one lit pixel, away from the borders
    shifted = random_shift(images, 1, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    assert torch.equal(shifted.sum(dim=(2, 3)), torch.ones(64, 2))  # nothing falls off the edge
    assert torch.equal(shifted[:, 0], shifted[:, 1])  # one offset per image, shared by its channels
    lit = shifted[:, 0].flatten(1).argmax(dim=1)  # (64,) flat index of the lit pixel
    rows, cols = lit // 8, lit % 8
    assert set(rows.tolist()) == {3, 4, 5} and set(cols.tolist()) == {2, 3, 4}


def test_save_load_round_trip(classifier: DatasetClassifier, digits, tmp_path) -> None:
    save_classifier(classifier, tmp_path / "clf")
    assert json.loads((tmp_path / "clf" / "config.json").read_text()) == {
        "channels": 1, "image_size": 16, "num_classes": 10, "feature_dim": 64}
    loaded = load_classifier(tmp_path / "clf")
    assert not loaded.training
    images = digits["heldout_images"][:50]
    with torch.no_grad():
        assert torch.equal(loaded(images), classifier(images))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_classifier(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------------------------
# FID / KID on hand-made features


def test_fid_of_a_set_with_itself_is_zero() -> None:
    features = torch.randn(500, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(fid_from_features(features, features)) < 1e-6


def test_fid_hand_made_2d() -> None:
    # X: the four points (+-1, 0), (0, +-1): mean 0, covariance (sum x^2 = 2) / (N - 1 = 3) = 2/3 I.
    # Y = 2 X + (3, 4): mean (3, 4), covariance 4 * 2/3 I = 8/3 I.
    # FID = |(3, 4)|^2 + tr(2/3 I + 8/3 I - 2 sqrt(16/9 I)) = 25 + 2 * (2/3 + 8/3 - 8/3) = 25 + 4/3 = 26.333...
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    y = 2.0 * x + torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert fid_from_features(x, y) == pytest.approx(26.333333333, abs=1e-6)
    assert fid_from_features(y, x) == pytest.approx(26.333333333, abs=1e-6)


def test_fid_hand_made_1d() -> None:
    # X = {0, 2}: mean 1, variance 2. Y = {5, 11}: mean 8, variance 18.
    # FID = (8 - 1)^2 + 2 + 18 - 2 sqrt(2 * 18) = 49 + 20 - 12 = 57.
    x = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([[5.0], [11.0]], dtype=torch.float64)
    assert fid_from_features(x, y) == pytest.approx(57.0, abs=1e-9)


def test_fid_of_shifted_copy_is_shift_squared_times_dims() -> None:
    # Same covariance, means 0.5 apart on each of 64 axes: FID = 64 * 0.5^2 = 16.
    x = torch.randn(300, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert fid_from_features(x, x + 0.5) == pytest.approx(16.0, abs=1e-6)


def test_kid_hand_made() -> None:
    # F = 1, kernel k(x, y) = (x y / 1 + 1)^3; X = {0, 1}, Y = {1, 2}; subsets of size 2 = the whole sets.
    # Off-diagonal K_XX: k(0, 1) = 1, twice -> 2. Off-diagonal K_YY: k(1, 2) = 27, twice -> 54.
    # K_XY: k(0,1) + k(0,2) + k(1,1) + k(1,2) = 1 + 1 + 8 + 27 = 37.
    # Unbiased MMD^2 = (2 + 54) / (2 * 1) - 2 * 37 / (2 * 2) = 28 - 18.5 = 9.5, every subset alike (std 0).
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    mean, std = kid_from_features(x, y, subsets=5, subset_size=1000)  # size capped at min(N, M) = 2
    assert mean == pytest.approx(9.5, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_same_distribution_near_zero_shifted_positive() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=generator, dtype=torch.float64)
    b = torch.randn(400, 8, generator=generator, dtype=torch.float64)
    same_mean, same_std = kid_from_features(a, b, subsets=10, subset_size=200)
    shifted_mean, _ = kid_from_features(a, b + 1.0, subsets=10, subset_size=200)
    assert abs(same_mean) < 0.05
    assert shifted_mean > 1.0
    assert shifted_mean > 50 * abs(same_mean)
    # Seeded: the same seed gives the same subsets, another seed other subsets.
    assert kid_from_features(a, b, subsets=10, subset_size=200) == (same_mean, same_std)
    assert kid_from_features(a, b, subsets=10, subset_size=200, seed=1)[0] != same_mean


def test_metrics_reject_mismatched_widths() -> None:
    with pytest.raises(ValueError, match="same"):
        fid_from_features(torch.randn(10, 4), torch.randn(10, 5))
    with pytest.raises(ValueError, match="same width"):
        kid_from_features(torch.randn(10, 4), torch.randn(10, 5))
    with pytest.raises(ValueError, match="N >= 2"):
        fid_from_features(torch.randn(1, 4), torch.randn(10, 4))


# ----------------------------------------------------------------------------------------------------------------
# metrics on digits with the trained classifier


def test_extract_features_batched_float64_and_mode_restored(classifier: DatasetClassifier, digits) -> None:
    images = digits["heldout_images"][:100]
    classifier.train()
    try:
        in_batches = extract_features(classifier, images, batch_size=33)
        assert classifier.training  # mode restored
    finally:
        classifier.eval()
    whole = extract_features(classifier, images, batch_size=512)
    assert in_batches.dtype == torch.float64 and in_batches.shape == (100, 64)
    assert torch.allclose(in_batches, whole, atol=1e-5)


def test_image_metrics_real_vs_noise(classifier: DatasetClassifier, digits) -> None:
    start = time.perf_counter()
    real_features = extract_features(classifier, digits["train_images"])  # (1437, 64), the reference set
    real_vs_real = image_metrics(classifier, digits["train_images"], digits["heldout_images"],
                                 digits["heldout_labels"], real_features=real_features, kid_subsets=20)
    noise = torch.rand(360, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    noise_labels = torch.arange(360) % 10  # balanced: chance is 0.1 whatever the classifier predicts
    real_vs_noise = image_metrics(classifier, digits["train_images"], noise, noise_labels, kid_subsets=20)
    print(f"\nimage_metrics x2: {time.perf_counter() - start:.1f} s; held-out: {real_vs_real}; noise: {real_vs_noise}")

    assert tuple(real_vs_real) == METRIC_KEYS
    assert METRIC_KEYS == ("fid", "kid", "kid_std", "precision", "recall", "class_accuracy")
    assert METRICS_CODE_VERSION == "metrics-3"
    assert all(isinstance(value, float) for value in real_vs_real.values())
    # Held-out digits lie on the training digits' manifold and cover it; noise does neither.
    assert real_vs_real["precision"] > 0.7 and real_vs_real["recall"] > 0.7
    assert real_vs_noise["precision"] < 0.2 < real_vs_real["precision"]
    assert real_vs_real["class_accuracy"] >= 0.9
    assert real_vs_noise["class_accuracy"] < 0.2  # chance is 0.1
    assert real_vs_real["fid"] < 0.05 * real_vs_noise["fid"]
    assert real_vs_noise["kid"] > 20 * abs(real_vs_real["kid"])
    assert real_vs_noise["kid_std"] > 0.0

    # Cached reference statistics give the same FID as features.
    stats_real = real_feature_statistics(classifier, digits["train_images"])
    stats_fake = real_feature_statistics(classifier, digits["heldout_images"])
    assert fid_from_statistics(stats_real, stats_fake) == pytest.approx(real_vs_real["fid"], rel=1e-9)
    assert feature_extractor_name(classifier) == f"dataset_classifier/{CLASSIFIER_CODE_VERSION}/f64"
    assert np.isfinite(real_vs_noise["fid"])


def test_image_metrics_with_another_extractor_and_classifier_inception_score(classifier, digits) -> None:
    # The feature space can be another extractor (Inception on ImageNet); class accuracy stays the classifier's.
    class PixelFeatures:
        name = "pixels"

        def features(self, images: torch.Tensor) -> torch.Tensor:
            return images.flatten(1)  # (B, 256)

    real, fake = digits["train_images"][:300], digits["heldout_images"][:100]
    labels = digits["heldout_labels"][:100]
    out = image_metrics(classifier, real, fake, labels, kid_subsets=5, kid_subset_size=100, k=5,
                        extractor=PixelFeatures())
    pixels_real, pixels_fake = real.flatten(1).double(), fake.flatten(1).double()
    assert out["fid"] == pytest.approx(fid_from_features(pixels_real, pixels_fake), rel=1e-9)
    assert out["class_accuracy"] == accuracy(classifier, fake, labels)
    # Inception Score from the dataset classifier's logits: held-out digits are confidently and evenly
    # classified, so the score nears the 10 classes; all-noise images collapse it.
    logits = extract_logits(classifier, digits["heldout_images"], batch_size=100)  # (360, 10) float64
    assert logits.shape == (360, 10) and logits.dtype == torch.float64
    score, _ = inception_score(logits, splits=1)
    noise = torch.rand(360, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    noise_score, _ = inception_score(extract_logits(classifier, noise), splits=1)
    print(f"\nclassifier IS: held-out {score:.3f}, noise {noise_score:.3f}")
    assert score > 8.0 and noise_score < 0.5 * score


# ----------------------------------------------------------------------------------------------------------------
# protocol record


def test_protocol_record_and_id(classifier, tmp_path) -> None:
    record = protocol(extractor=classifier, num_samples=1000, samples_per_class=100, image_size=16,
                      reference="digits/train", reference_checksum="ab" * 32, k=3, sampling_seed=7)
    assert tuple(record) == PROTOCOL_KEYS
    assert record["protocol_extractor"] == feature_extractor_name(classifier)
    assert record["protocol_samples"] == 1000 and record["protocol_pr_k"] == 3
    assert record["protocol_versions"].startswith("torch-fidelity=0.") and ";torch=" in record["protocol_versions"]
    # The extractor checksum is of the weights: a saved and reloaded copy has it, another seed does not.
    save_classifier(classifier, tmp_path / "clf")
    assert record["protocol_extractor_sha256"] == state_dict_sha256(load_classifier(tmp_path / "clf"))
    other = DatasetClassifier(channels=1, image_size=16, num_classes=10)
    assert state_dict_sha256(other) != record["protocol_extractor_sha256"]

    # The id ignores the sampling seed and the versions, and follows everything else.
    assert PROTOCOL_ID_KEYS == tuple(k for k in PROTOCOL_KEYS if k not in ("protocol_sampling_seed",
                                                                          "protocol_versions"))
    base = protocol_id(record)
    assert len(base) == 12 and int(base, 16) >= 0
    assert protocol_id({**record, "protocol_sampling_seed": 8, "protocol_versions": "x"}) == base
    assert record["protocol_sampling_precision"] == "fp32"
    for key, value in (("protocol_pr_k", 5), ("protocol_samples", 999), ("protocol_reference_sha256", "cd" * 32),
                       ("protocol_sampling_precision", "bf16")):
        assert protocol_id({**record, key: value}) != base, key
    # Golden: the id of a fixed record never changes (stored results are grouped by it).
    fixed = {"protocol_extractor": "inception_v3_fid/pool3", "protocol_extractor_sha256": "0" * 64,
             "protocol_samples": 50000, "protocol_samples_per_class": 50, "protocol_image_size": 256,
             "protocol_reference": "VIRTUAL_imagenet256_labeled.npz", "protocol_reference_sha256": "1" * 64,
             "protocol_pr_k": 3}
    assert protocol_id(fixed) == GOLDEN_PROTOCOL_ID
    with pytest.raises(ValueError, match="lacks"):
        protocol_id({"protocol_pr_k": 3})
    with pytest.raises(ValueError, match="samples_per_class"):
        protocol(extractor=classifier, num_samples=10, samples_per_class=-1, image_size=16, reference="r",
                 reference_checksum="c", k=3, sampling_seed=0)


GOLDEN_PROTOCOL_ID = "e4878a94478f"


def test_array_checksums() -> None:
    values = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert array_sha256(values) == array_sha256(values.double()) == array_sha256(values.numpy())
    assert array_sha256(values) != array_sha256(values.reshape(3, 2))  # the shape is part of it
    assert array_sha256(values) != array_sha256(values + 1e-9)
    assert array_sha256(np.zeros(2)) == GOLDEN_ZEROS_SHA256
    stats = {"mu": np.zeros(2), "sigma": np.eye(2)}
    assert statistics_sha256(stats) == statistics_sha256({"sigma": np.eye(2), "mu": np.zeros(2)})
    assert statistics_sha256(stats) != statistics_sha256({"mu": np.zeros(2), "sigma": 2 * np.eye(2)})


# sha256(b"(2,)" + 16 zero bytes): the shape's repr, then the float64 values
GOLDEN_ZEROS_SHA256 = "45e2f25e02832ebe2ff01c77369d754e8270cc3707914b80bc591ac522b5e197"


# ----------------------------------------------------------------------------------------------------------------
# reference files


def test_adm_npz_round_trip(tmp_path) -> None:
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = to_uint8_nhwc(images)  # (5, 8, 8, 3) uint8, gray repeated
    assert batch.shape == (5, 8, 8, 3) and batch.dtype == np.uint8
    assert np.array_equal(batch[..., 0], batch[..., 2])
    assert np.array_equal(batch[..., 1], (255 * images[:, 0]).to(torch.uint8).numpy())
    path = export_adm_npz(batch, tmp_path / "samples.npz")
    with np.load(path) as archive:  # what the ADM evaluator reads
        assert archive.files == ["arr_0"] and np.array_equal(archive["arr_0"], batch)
    reference = load_reference(path)
    assert reference.statistics is None and reference.features is None
    assert np.array_equal(reference.images, batch) and len(reference.sha256) == 64
    tensor = reference.image_tensor(1, 3)  # (2, 3, 8, 8) float in [0, 1]
    assert tensor.shape == (2, 3, 8, 8) and torch.equal(tensor[:, 0], torch.from_numpy(batch[1:3, ..., 0]) / 255.0)
    with pytest.raises(ValueError, match="must end in .npz"):
        export_adm_npz(batch, tmp_path / "samples")
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W, 3\)"):
        export_adm_npz(batch.astype(np.float32), tmp_path / "bad.npz")


def test_load_reference_statistics_and_errors(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(50, 4, generator=generator, dtype=torch.float64)
    stats = feature_statistics(features)
    np.savez(tmp_path / "stats.npz", mu=stats["mu"], sigma=stats["sigma"])
    reference = load_reference(tmp_path / "stats.npz")
    assert reference.images is None
    assert fid_from_statistics(reference.statistics, stats) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="no images"):
        reference.image_tensor()
    np.savez(tmp_path / "features.npz", features=features.numpy())
    assert np.array_equal(load_reference(tmp_path / "features.npz").features, features.numpy())
    np.savez(tmp_path / "other.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match="must hold arr_0"):
        load_reference(tmp_path / "other.npz")
    np.savez(tmp_path / "mu_only.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="both mu and sigma"):
        load_reference(tmp_path / "mu_only.npz")
    with pytest.raises(FileNotFoundError, match="VIRTUAL_imagenet256_labeled"):
        load_reference(tmp_path / "missing.npz")

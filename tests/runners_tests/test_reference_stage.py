"""The reference stage (held-out features and FID statistics, once per dataset x feature extractor), the
reconstruction FID of tokenizers against it, and how both are planned."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import Tensor

from runners.evaluation.classifier import DatasetClassifier
from runners.evaluation.protocol import array_sha256, state_dict_sha256
from runners.evaluation.reconstruction import reconstruct, reconstruction_fid
from runners.evaluation.reference import (
    FEATURES_FILE,
    REFERENCE_FILE,
    feature_extractor_for,
    load_reference_features,
    save_reference_features,
)
from space.schema import parse_spec
from sweep.plan import make_plan


class FirstPixels(torch.nn.Module):
    """A hand-made extractor: features = the first two pixels of each image."""

    name = "first_pixels"
    weights_sha256 = "f" * 64

    def features(self, images: Tensor) -> Tensor:
        return images.flatten(1)[:, :2]  # (B, 2)


class Identity:
    """A 'tokenizer' whose reconstruction is the image itself (ids are the pixels)."""

    latent_kind = "index"

    def encode_ids(self, images: Tensor, *, mode: str, vocab: object) -> Tensor:
        return images.flatten(1)[..., None]  # (B, H*W*C, 1), floats standing in for ids

    def decode_ids(self, ids: Tensor, vocab: object = None) -> Tensor:
        return ids[..., 0].view(-1, 1, 4, 4)


class Blank(Identity):
    def decode_ids(self, ids: Tensor, vocab: object = None) -> Tensor:
        return torch.zeros(len(ids), 1, 4, 4)


def images_4x4(n: int = 64, seed: int = 0) -> Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_reference_artifact_hand_made(tmp_path):
    images = torch.zeros(4, 1, 4, 4)
    images.view(4, -1)[:, 0] = torch.tensor([0.0, 0.5, 0.5, 1.0])  # first pixel
    images.view(4, -1)[:, 1] = torch.tensor([1.0, 1.0, 0.0, 0.0])  # second pixel
    row = save_reference_features(tmp_path, FirstPixels(), images, name="toy/heldout", extractor_kind="classifier")
    features = np.load(tmp_path / FEATURES_FILE)
    assert features.dtype == np.float32 and features.shape == (4, 2)
    with np.load(tmp_path / "stats.npz") as stats:
        np.testing.assert_allclose(stats["mu"], [0.5, 0.5])
        # covariances (N - 1 = 3): var(0, .5, .5, 1) = 1/6, var(1, 1, 0, 0) = 1/3, cov = -1/6
        np.testing.assert_allclose(stats["sigma"], [[1 / 6, -1 / 6], [-1 / 6, 1 / 3]], atol=1e-12)
    assert row == {
        "reference": "toy/heldout", "reference_checksum": array_sha256(features), "reference_images": 4,
        "reference_extractor": "first_pixels", "reference_extractor_sha256": "f" * 64, "feature_dim": 2,
        "reference_features": "all, memory-mapped",
    }
    loaded = load_reference_features(tmp_path)
    assert loaded.checksum == row["reference_checksum"] and loaded.extractor == "classifier"
    assert loaded.features.dtype == torch.float64 and torch.equal(loaded.features, torch.from_numpy(features).double())
    loaded.check_extractor("f" * 64)
    with pytest.raises(ValueError, match="holds features of extractor weights ffffffffffff.*plan both"):
        loaded.check_extractor("0" * 64)


def test_a_tampered_or_incomplete_reference_is_refused(tmp_path):
    save_reference_features(tmp_path, FirstPixels(), images_4x4(8), name="toy", extractor_kind="classifier")
    np.save(tmp_path / FEATURES_FILE, np.zeros((8, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="does not match the checksum.*run the reference stage again"):
        load_reference_features(tmp_path)
    (tmp_path / REFERENCE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="lacks reference.json; run the reference stage first"):
        load_reference_features(tmp_path)


def test_reference_of_the_dataset_classifier_records_its_weights(tmp_path):
    torch.manual_seed(0)
    classifier = DatasetClassifier(channels=1, image_size=16, num_classes=10)
    assert feature_extractor_for("classifier", classifier, torch.device("cpu")) is classifier
    row = save_reference_features(tmp_path, classifier, images_4x4(20).repeat(1, 1, 4, 4), name="digits/heldout",
                                  extractor_kind="classifier")
    assert row["reference_extractor_sha256"] == state_dict_sha256(classifier) and row["feature_dim"] == 64
    assert json.loads((tmp_path / REFERENCE_FILE).read_text())["feature_extractor"] == "classifier"
    with pytest.raises(ValueError, match="needs the trained dataset classifier"):
        feature_extractor_for("classifier", None, torch.device("cpu"))
    with pytest.raises(ValueError, match="feature_extractor must be one of classifier, inception, but got 'clip'"):
        feature_extractor_for("clip", classifier, torch.device("cpu"))


def test_reconstruction_fid_is_zero_for_a_perfect_tokenizer_and_large_for_a_blank_one(tmp_path):
    images = images_4x4(64)
    save_reference_features(tmp_path, FirstPixels(), images, name="toy", extractor_kind="classifier")
    reference = load_reference_features(tmp_path)
    assert torch.equal(reconstruct(Identity(), images, batch_size=10), images)
    perfect = reconstruction_fid(Identity(), images, FirstPixels(), reference)
    assert perfect["reconstruction_images"] == 64 and abs(perfect["rfid"]) < 1e-6
    # blank reconstructions: every feature 0, so FID = |mu|^2 + tr(sigma) of the reference (sigma_fake = 0)
    blank = reconstruction_fid(Blank(), images, FirstPixels(), reference)
    mu, sigma = reference.statistics["mu"], reference.statistics["sigma"]
    assert blank["rfid"] == pytest.approx(float(mu @ mu + np.trace(sigma)), rel=1e-6)
    with pytest.raises(ValueError, match="must be the reference's 64 images, but got 10"):
        reconstruction_fid(Identity(), images[:10], FirstPixels(), reference)


SPEC = {
    "schema_version": 1, "name": "scoring", "dataset": {"name": "digits", "image_size": 16}, "seeds": [0],
    "baseline": {"code_dim": 8},
    "studies": [{"name": "grid", "vary": {"feature_extractor": ["classifier", "inception"], "code_dim": [8, 12]}}],
}


def test_planned_once_per_extractor_and_tokenizer_x_extractor():
    plan = make_plan(parse_spec(SPEC))
    counts = plan.counts()
    assert (counts["reference"], counts["tokenizer"], counts["reconstruction"], counts["generator"]) == (2, 2, 4, 2)
    references = {s.settings["feature_extractor"]: s for s in plan.of_kind("reference")}
    classifier = plan.of_kind("classifier")[0].key
    assert references["classifier"].inputs == {"classifier": classifier} and references["inception"].inputs == {}
    assert set(references["inception"].settings) == {"dataset", "feature_extractor"}
    reconstructions = {(s.inputs["tokenizer"], s.inputs["reference"]) for s in plan.of_kind("reconstruction")}
    assert reconstructions == {(t.key, r.key) for t in plan.of_kind("tokenizer") for r in references.values()}
    for trial in plan.trials:  # the extractor reaches evaluations only through the reference
        evaluation = plan.stages[trial.keys["evaluation"]]
        assert evaluation.inputs["reference"] == references[trial.trial.settings.feature_extractor].key
        assert "feature_extractor" not in evaluation.settings
    # varying the feature extractor trains no extra tokenizer or generator
    generators = {fx: {t.keys["generator"] for t in plan.trials if t.trial.settings.feature_extractor == fx}
                  for fx in references}
    assert generators["classifier"] == generators["inception"] and len(generators["inception"]) == 2

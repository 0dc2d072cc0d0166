"""One spelling per metric: `kid` / `kid_std` everywhere, and the Inception Score when the extractor has logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from runners.evaluation.classifier import DatasetClassifier
from runners.evaluation.metrics import INCEPTION_SCORE_KEYS, METRIC_KEYS, image_metrics
from space.schema import SEARCH_METRICS


class FlatLogits(nn.Module):
    """A stand-in for Inception with its classifier head: features are the pixels, logits are all zero."""

    has_logits = True

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1) * self.scale  # (B, C*H*W)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(images), 5)  # (B, 5): every image predicts the uniform distribution


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(40, 1, 8, 8, generator=generator)
    fake = torch.rand(30, 1, 8, 8, generator=generator)
    return real, fake, torch.arange(30) % 3


def test_kid_is_spelled_kid_in_rows_and_searches(images):
    real, fake, labels = images
    classifier = DatasetClassifier(channels=1, image_size=8, num_classes=3, feature_dim=4)
    metrics = image_metrics(classifier, real, fake, labels, kid_subsets=3)
    assert tuple(metrics) == ("fid", "kid", "kid_std", "precision", "recall", "class_accuracy") == METRIC_KEYS
    assert "kid" in SEARCH_METRICS  # a search optimises the same name a row holds


def test_an_extractor_with_logits_adds_the_inception_score(images):
    real, fake, labels = images
    classifier = DatasetClassifier(channels=1, image_size=8, num_classes=3, feature_dim=4)
    metrics = image_metrics(classifier, real, fake, labels, kid_subsets=3, extractor=FlatLogits())
    assert tuple(metrics) == METRIC_KEYS + INCEPTION_SCORE_KEYS == (*METRIC_KEYS, "inception_score", "inception_score_std")
    # uniform predictions: p(y|x) = p(y), KL 0, IS = exp(0) = 1 in every split
    assert metrics["inception_score"] == pytest.approx(1.0)
    assert metrics["inception_score_std"] == pytest.approx(0.0)

"""Reconstruction FID (rFID) of a tokenizer: the reference images through the tokenizer, scored against them.

    held-out images (N, C, H, W) --encode_ids(threshold)--> ids --decode_ids--> reconstructions, clamped to [0, 1]
    rFID = FID(reference stats, stats of the reconstructions' features)      (same extractor as the reference)

(No rKID: KID over all N x N reference pairs costs seconds on a CPU for a number nobody reads.)

The images stream through in batches (a tensor, or any iterable of image batches such as
`runners.data.Batches(heldout)`): each batch is reconstructed, featurised and added to float64 running sums
(`reference.FeatureSums`); neither the images nor the features of the split are held.

Thresholded bits (BAE) / nearest codes (VQ): reconstruction quality is measured deterministically (ELM.md
"Tokenizers"). The other reconstruction numbers (L1, PSNR, bit and code usage, per-bit entropy) come with the
tokenizer stage itself (runners/train_tokenizer.py `reconstruction_metrics`); rFID needs a feature extractor
and a reference, so it is its own stage keyed by (tokenizer, reference): a new feature extractor adds
reconstruction stages, never tokenizer trainings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from runners.data import image_batches
from runners.evaluation.metrics import FeatureExtractor, extract_features, fid_from_statistics
from runners.evaluation.reference import FeatureSums, ReferenceFeatures, as_float_images
from runners.tokenizers import vocabulary_for

# Bumped when the numbers change for the same tokenizer and reference (part of reconstruction keys).
RECONSTRUCTION_CODE_VERSION = "reconstruction-1"


@torch.no_grad()
def reconstruct(tokenizer: Any, images: Tensor, batch_size: int = 256) -> Tensor:
    """Images `(N, C, H, W)` in [0, 1] -> their reconstructions `(N, C, H, W)` in [0, 1], on the images' device.

    Any tokenizer of runners/tokenizers: ids of whole positions (K = 1 for bits), thresholded, decoded back.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be (N, C, H, W) with N >= 1, but got shape {tuple(images.shape)}")
    vocab = vocabulary_for(tokenizer, 1)  # None for a codebook tokenizer
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]  # (b, C, H, W)
        ids = tokenizer.encode_ids(batch, mode="threshold", vocab=vocab)  # (b, h*w, K)
        chunks.append(tokenizer.decode_ids(ids, vocab).clamp(0, 1))  # (b, C, H, W)
    return torch.cat(chunks)


@torch.no_grad()
def reconstruction_fid(
    tokenizer: Any, images: Any, extractor: FeatureExtractor, reference: ReferenceFeatures, batch_size: int = 256,
) -> dict[str, float]:
    """rFID of `tokenizer` on the reference images (those the reference features came from: a tensor
    `(N, C, H, W)` in [0, 1] or an iterable of batches), in the reference's feature space:
    {"rfid", "reconstruction_images"}. The statistics of the reconstructions accumulate batch by batch."""
    sums = FeatureSums()
    parameter = next(iter(getattr(tokenizer, "parameters", lambda: iter(()))()), None)
    for batch in image_batches(images, batch_size):
        batch = as_float_images(batch)
        batch = batch.to(parameter.device) if parameter is not None else batch
        sums.add(extract_features(extractor, reconstruct(tokenizer, batch, batch_size)))  # (b, F) float64
    if sums.count != reference.count:
        raise ValueError(
            f"images must be the reference's {reference.count} images, but got {sums.count}; pass the "
            f"held-out split the reference stage featurised"
        )
    return {"rfid": fid_from_statistics(reference.statistics, sums.statistics()), "reconstruction_images": sums.count}

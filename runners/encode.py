"""What generator training needs from a frozen tokenizer, encoded once per (tokenizer, dataset) and cached.

    encode_dataset(tokenizer, dataset) -> encoded       (one pass of the frozen encoder over the dataset)
    save_encoded(encoded, folder) / load_encoded(folder) (one safetensors file)
    token_batch(encoded, index, mode, vocab, generator) -> ids (B, h*w, K)   (every training step)

The encoded dict holds plain tensors, so a batch needs no tokenizer:
- "labels": int64 (N,).
- BAE ("bits"): "logits" float16 (N, D, h, w), the bit logits. Each step draws fresh bits ~ Bernoulli(sigmoid(l))
  (ELM's stochastic augmentation) or thresholds them, so the probabilities, not one draw, must be kept.
- VQ ("index"): "ids" int64 (N, h*w), raster order (nearest-neighbour lookup is deterministic).

Why float16 logits (2 bytes per bit) rather than float16 or uint8 probabilities: what matters for fresh draws is
the flip probability min(p, 1 - p) of every bit, in both tails. Rounding a logit l to float16 changes it by at
most |l| * 2^-11, so p moves by at most p (1 - p) |l| 2^-11 <= 1.1e-4 absolute anywhere, and the tail
probability changes by a relative |l| * 2^-11 (0.5% at l = 10, p = 4.5e-5). Float16 probabilities are exact
near 0 but not near 1: their spacing below 1 is 4.9e-4, so any p > 0.99976 becomes exactly 1 and that bit never
flips again. uint8 probabilities (1/255 steps) are off by up to 2e-3 and zero every p < 0.002 (or round it up to
0.004). Thresholding is unaffected: float16 rounding keeps the sign of every logit, so cached and direct
threshold bits can differ only for logits within 2e-7 of 0, where float32 sigmoid itself rounds to 0.5.
ImageNet at 16x16 x 24 bits: 1.28M images x 6144 bits x 2 bytes = 15.7 GB (float32 probabilities: 31 GB).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from runners.tokenizers.bae import QuantizeMode, bits_to_token_ids, check_mode, quantize_bits
from runners.vocab import Vocabulary

ENCODED_FILE = "encoded.safetensors"
CODE_KEYS: tuple[str, ...] = ("logits", "ids")  # exactly one of them, with "labels"


def _image_batches(dataset: Dataset, batch_size: int, num_workers: int):
    """(images (b, C, H, W), labels (b,)) in dataset order."""
    if isinstance(dataset, TensorDataset):  # fast path: slice the stored tensors
        images, labels = dataset.tensors[0], dataset.tensors[1]
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size].float(), labels[start:start + batch_size].long()
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for images, labels in loader:
        yield images.float(), torch.as_tensor(labels).long()


@torch.no_grad()
def encode_dataset(tokenizer: torch.nn.Module, dataset: Dataset, *, batch_size: int = 256,
                   num_workers: int = 0) -> dict[str, Tensor]:
    """Encode every item of `dataset` (image (C, H, W) in [0, 1], label) with the frozen tokenizer, in order.

    Returns CPU tensors: {"logits": float16 (N, D, h, w), "labels"} for a BAE; {"ids": int64 (N, h*w), "labels"}
    for a VQ tokenizer. The tokenizer runs in eval mode on its own device. The cache holds whatever view the
    dataset returns (a randomly flipped training split keeps one flip per image).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, but got batch_size={batch_size}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("dataset must hold at least one image, but got an empty dataset")
    kind = tokenizer.latent_kind
    if kind not in ("bits", "index"):
        raise ValueError(f"tokenizer.latent_kind must be 'bits' or 'index', but got {kind!r}")
    was_training = tokenizer.training
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    codes, labels = [], []
    for images, batch_labels in _image_batches(dataset, batch_size, num_workers):
        images = images.to(device)  # (b, C, H, W)
        if kind == "bits":
            codes.append(tokenizer.encode_logits(images).to(torch.float16).cpu())  # (b, D, h, w)
        else:
            codes.append(tokenizer.encode(images).flatten(1).cpu())  # (b, h*w)
        labels.append(batch_labels.cpu())
    tokenizer.train(was_training)
    key = "logits" if kind == "bits" else "ids"
    return {key: torch.cat(codes), "labels": torch.cat(labels)}


def _check_encoded(encoded: dict[str, Tensor]) -> str:
    """The code key of a valid encoded dict; ValueError naming the problem otherwise."""
    present = [key for key in CODE_KEYS if key in encoded]
    if len(present) != 1 or "labels" not in encoded or set(encoded) != {present[0], "labels"}:
        raise ValueError(f"encoded must hold 'labels' and exactly one of {', '.join(CODE_KEYS)}, but got keys "
                         f"{sorted(encoded)}; make it with encode_dataset")
    key = present[0]
    if encoded[key].shape[0] != encoded["labels"].shape[0]:
        raise ValueError(f"encoded['{key}'] and encoded['labels'] must have the same length, but got "
                         f"{encoded[key].shape[0]} and {encoded['labels'].shape[0]}")
    return key


def save_encoded(encoded: dict[str, Tensor], folder: str | Path) -> Path:
    """Write `encoded` to folder/encoded.safetensors (the folder is created); returns the file path."""
    _check_encoded(encoded)
    path = Path(folder) / ENCODED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.detach().cpu().contiguous() for key, value in encoded.items()}, str(path))
    return path


def load_encoded(folder: str | Path, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Read what save_encoded wrote, onto `device`."""
    path = Path(folder) / ENCODED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"folder must hold {ENCODED_FILE} written by save_encoded, but {str(path)!r} "
                                f"does not exist; run encode_dataset and save_encoded first")
    encoded = dict(load_file(str(path), device=str(device)))
    _check_encoded(encoded)
    return encoded


def token_batch(encoded: dict[str, Tensor], index: Tensor, *, mode: QuantizeMode, vocab: Vocabulary | None,
                generator: torch.Generator | None = None) -> Tensor:
    """Ids (B, h*w, K) int64 of the cached items `index` (B,), on the device of the encoded tensors.

    BAE: mode "bernoulli" draws fresh bits [u < sigmoid(logit)] with u from `generator` (which must live on that
    device; global RNG if None), "threshold" takes [sigmoid(logit) > 0.5]; the bits are cut by `vocab` (required).
    VQ: the cached ids (B, h*w, 1); vocab must be None and `mode` does not change them.
    """
    key = _check_encoded(encoded)
    check_mode(mode)
    codes = encoded[key]
    index = index.to(codes.device)
    if key == "ids":
        if vocab is not None:
            raise ValueError(f"vocab must be None for codebook ids (one token per position), but got {vocab!r}")
        return codes[index].long().unsqueeze(-1)  # (B, h*w, 1)
    if not isinstance(vocab, Vocabulary) or vocab.code_dim != codes.shape[1]:
        raise ValueError(f"vocab must be a Vocabulary with code_dim={codes.shape[1]} (bits per position of the "
                         f"cache), but got {vocab!r}; pass Vocabulary(code_dim={codes.shape[1]}, token_each=K)")
    probs = torch.sigmoid(codes[index].float())  # (B, D, h, w)
    bits = quantize_bits(probs, mode, generator)  # (B, D, h, w) in {0., 1.}
    return bits_to_token_ids(bits, vocab)  # (B, h*w, K)

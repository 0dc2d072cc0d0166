"""What generator training needs from a frozen tokenizer, encoded once per (tokenizer, dataset) and cached.

    encode_to_folder(tokenizer, dataset, folder, flips)  one pass of the frozen encoder in batches, written
                                                         row by row into memory-mapped files (any size)
    EncodedFolder(folder).batch(index, flip, ...)        ids (B, h*w, K) of a training step, read through the
                                                         memory map (every data-parallel rank opens the same files)
    encode_dataset / save_encoded / load_encoded / token_batch   the same codes as in-memory tensors (small data)

The folder holds codes.npy (N, O, ...) with O = 2 orientations when the data is flipped in training (the
image and its horizontal mirror, both encoded once, so every step draws a fresh flip per sample, as the
authors flip afresh every epoch) or O = 1 (digits), labels.npy (N,) and encoded.json, written last (a folder
without it is unfinished and is encoded again).

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

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from runners.data import LoaderSettings, batches, npy_header
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


# ---------------------------------------------------------------------------------------------------------------
# the memory-mapped cache of generator training

CODES_FILE, LABELS_FILE, INFO_FILE = "codes.npy", "labels.npy", "encoded.json"


@torch.no_grad()
def _encode_batch(tokenizer: torch.nn.Module, images: Tensor) -> np.ndarray:
    """Codes of one image batch: BAE logits float16 (b, D, h, w), VQ ids int32 (b, h*w)."""
    if tokenizer.latent_kind == "bits":
        return tokenizer.encode_logits(images).to(torch.float16).cpu().numpy()
    return tokenizer.encode(images).flatten(1).to(torch.int32).cpu().numpy()


@torch.no_grad()
def encode_to_folder(
    tokenizer: torch.nn.Module, dataset: Dataset, folder: str | Path, *, flips: bool, batch_size: int = 256,
    loader: LoaderSettings | None = None, rank: int = 0, world_size: int = 1, barrier: Any = None,
) -> EncodedFolder:
    """Encode every item of `dataset` with the frozen tokenizer into `folder` (memory-mapped files), in batches.

    With `flips` each image is encoded as it is and mirrored (orientation 1). Data-parallel ranks share the work:
    rank r encodes its contiguous block of rows into the same files; `barrier()` (e.g. torch.distributed.barrier)
    separates creating the files (rank 0), writing the blocks and marking the folder finished (rank 0). A folder
    already finished is opened as it is (a resumed stage does not encode again)."""
    folder = Path(folder)
    if (folder / INFO_FILE).is_file():
        return EncodedFolder(folder)
    kind = tokenizer.latent_kind
    if kind not in ("bits", "index"):
        raise ValueError(f"tokenizer.latent_kind must be 'bits' or 'index', but got {kind!r}")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("dataset must hold at least one image, but got an empty dataset")
    was_training = tokenizer.training
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    orientations = 2 if flips else 1
    if rank == 0:  # the files, shaped from one image's codes
        folder.mkdir(parents=True, exist_ok=True)
        side = int(tokenizer.image_size)
        probe = _encode_batch(tokenizer, torch.zeros(1, int(tokenizer.channels), side, side, device=device))  # (1, ...)
        np.lib.format.open_memmap(folder / CODES_FILE, mode="w+", dtype=probe.dtype,
                                  shape=(n, orientations, *probe.shape[1:])).flush()
        np.lib.format.open_memmap(folder / LABELS_FILE, mode="w+", dtype=np.int64, shape=(n,)).flush()
    if barrier is not None:
        barrier()
    # Rows go to the files with positional writes, not through a writable memory map: written pages stay in the
    # page cache instead of this process's resident memory (which would grow with the dataset).
    codes_file, labels_file = _RowWriter(folder / CODES_FILE), _RowWriter(folder / LABELS_FILE)
    lo, hi = n * rank // world_size, n * (rank + 1) // world_size
    row = lo
    try:
        for images, batch_labels in batches(Subset(dataset, range(lo, hi)), batch_size, loader or LoaderSettings()):
            images = images.to(device, non_blocking=True)  # (b, C, H, W)
            views = [_encode_batch(tokenizer, images)]  # (b, ...) each orientation
            if flips:
                views.append(_encode_batch(tokenizer, images.flip(-1)))
            codes_file.write(row, np.stack(views, axis=1))  # (b, O, ...)
            labels_file.write(row, batch_labels.numpy().astype(np.int64))
            row += images.shape[0]
    finally:
        codes_file.close()
        labels_file.close()
    tokenizer.train(was_training)
    if barrier is not None:
        barrier()
    if rank == 0:
        (folder / INFO_FILE).write_text(json.dumps({"kind": kind, "count": n, "orientations": orientations}) + "\n")
    if barrier is not None:
        barrier()
    return EncodedFolder(folder)


class _RowWriter:
    """Writes rows of a C-ordered .npy file in place (os.pwrite at the row's offset after the header)."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as stream:
            shape, _, dtype = npy_header(stream)
            self.offset = stream.tell()
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        self.dtype = np.dtype(dtype)
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, row: int, values: np.ndarray) -> None:
        os.pwrite(self.fd, np.ascontiguousarray(values, dtype=self.dtype).tobytes(), self.offset + row * self.row_bytes)

    def close(self) -> None:
        os.close(self.fd)


class EncodedFolder:
    """A finished `encode_to_folder` folder, read through memory maps (nothing is loaded whole)."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        if not (folder / INFO_FILE).is_file():
            raise FileNotFoundError(f"{str(folder)!r} holds no finished encoding ({INFO_FILE} missing); run "
                                    f"encode_to_folder first")
        info = json.loads((folder / INFO_FILE).read_text())
        self.kind: str = info["kind"]
        self.orientations: int = int(info["orientations"])
        self.codes = np.load(folder / CODES_FILE, mmap_mode="r")  # (N, O, D, h, w) float16 | (N, O, h*w) int32
        self.labels = np.load(folder / LABELS_FILE, mmap_mode="r")  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: Tensor, *, mode: QuantizeMode, vocab: Vocabulary | None,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(ids (B, h*w, K), labels (B,)) of the rows `index` (B,): with two orientations each sample's is drawn
        afresh from `generator` (a coin per sample, before the Bernoulli bits), then `token_batch` draws the bits."""
        rows = index.cpu().numpy()
        orientation = np.zeros(len(rows), dtype=np.int64)
        if self.orientations == 2:
            orientation = (torch.rand(len(rows), generator=generator) < 0.5).long().numpy()
        codes = torch.from_numpy(np.ascontiguousarray(self.codes[rows, orientation]))  # (B, ...)
        labels = torch.from_numpy(np.ascontiguousarray(self.labels[rows]))
        key = "logits" if self.kind == "bits" else "ids"
        encoded = {key: codes if key == "logits" else codes.long(), "labels": labels}
        ids = token_batch(encoded, torch.arange(len(rows)), mode=mode, vocab=vocab, generator=generator)
        return ids, labels

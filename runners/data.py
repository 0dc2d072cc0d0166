"""Image datasets for tokenizers and generators.

Two sources, one contract: `load_dataset(name, image_size, ...)` returns an `ImageDataset` whose `train`
and `heldout` items are `(image, label)` with `image` a float32 tensor `(C, H, W)` in `[0, 1]` and
`label` a Python int.

- "digits": scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; offline), scaled
  to [0, 1] and upsampled to `image_size`. Held in memory as tensors; no flips (digits are not
  mirror-symmetric: a flipped 3 is not a 3).
- "imagefolder": the ImageNet layout `root/<class>/<image files>`, read with PIL on access. Centre
  crop to a square, resize to `image_size`; the train split also flips horizontally at random
  (the ELM recipe: centre crop 256 + horizontal flip).

`stack(dataset)` turns any such dataset into `(images (N, C, H, W), labels (N,))` tensors.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

DATASET_NAMES: tuple[str, ...] = ("digits", "imagefolder")
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image dataset cut into a training and a held-out split.

    Items of `train` and `heldout` are `(image float32 (C, H, W) in [0, 1], label int)`.
    """

    train: Dataset
    """Training split (with random horizontal flips for "imagefolder")."""
    heldout: Dataset
    """Held-out split (deterministic transform): reconstruction metrics and generator validation."""
    num_classes: int
    """Number of classes; labels are 0 .. num_classes - 1."""
    channels: int
    """Image channels C (1 for digits, 3 for imagefolder)."""
    image_size: int
    """Height and width H = W of every image, in pixels."""
    class_names: tuple[str, ...]
    """Class name of each label, in label order."""


class LabelledTensors(TensorDataset):
    """A `TensorDataset` of `(images (N, C, H, W), labels (N,))` whose items carry the label as an int."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        super().__init__(images, labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:  # type: ignore[override]
        images, labels = self.tensors
        return images[index], int(labels[index])


def _check_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size <= 0 or image_size % 8 != 0:
        raise ValueError(
            f"image_size must be a positive multiple of 8, but got image_size={image_size!r}; "
            f"try {max(8, (int(image_size) // 8) * 8) if isinstance(image_size, (int, float)) else 16}"
        )


def _check_heldout_fraction(heldout_fraction: float) -> None:
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(
            f"heldout_fraction must be in [0, 1), but got heldout_fraction={heldout_fraction!r}; try 0.2"
        )


# ----------------------------------------------------------------------------------------------------------------
# digits


@functools.lru_cache(maxsize=8)
def _digits(image_size: int, heldout_fraction: float, split_seed: int) -> ImageDataset:
    # Cached on the arguments: every trial of a sweep reloads the same digits for free. The tensors are
    # shared between callers, so nobody may write into them in place.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.from_numpy(bunch.target.astype(np.int64))  # (1797,)
    if image_size != 8:
        # Bilinear (antialias matters only when shrinking) is a convex blend: the clamp only guards float rounding.
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False).clamp_(0.0, 1.0)
    index = np.arange(len(labels))
    if heldout_fraction > 0.0:
        train_index, heldout_index = train_test_split(
            index, test_size=heldout_fraction, random_state=split_seed, stratify=bunch.target
        )
        train_index, heldout_index = np.sort(train_index), np.sort(heldout_index)
    else:
        train_index, heldout_index = index, index[:0]
    train_t, heldout_t = torch.from_numpy(train_index), torch.from_numpy(heldout_index)
    return ImageDataset(
        train=LabelledTensors(images[train_t].contiguous(), labels[train_t].contiguous()),
        heldout=LabelledTensors(images[heldout_t].contiguous(), labels[heldout_t].contiguous()),
        num_classes=10,
        channels=1,
        image_size=image_size,
        class_names=tuple(str(d) for d in range(10)),
    )


# ----------------------------------------------------------------------------------------------------------------
# imagefolder


def load_image(path: str | Path, image_size: int) -> Tensor:
    """Read one image file as RGB, centre-crop it to a square and resize it: float32 `(3, S, S)` in [0, 1]."""
    from PIL import Image

    with Image.open(path) as raw:
        image = raw.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != image_size:
        image = image.resize((image_size, image_size), resample=Image.BICUBIC, reducing_gap=None)
    array = np.asarray(image, dtype=np.uint8)  # (S, S, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, S, S)


class ImageFiles(Dataset):
    """Image files with labels, read on access (centre crop + resize, optional random horizontal flip).

    The flips come from the dataset's own seeded `torch.Generator` (never the global RNG), so a training run
    that reads items in a seeded order sees the same flips every time.
    """

    def __init__(self, files: list[Path], labels: list[int], image_size: int, *, flip: bool, flip_seed: int = 0):
        if len(files) != len(labels):
            raise ValueError(f"files and labels must have the same length, but got {len(files)} and {len(labels)}")
        self.files = list(files)
        self.labels = list(labels)
        self.image_size = image_size
        self.flip = flip
        self._flip_generator = torch.Generator().manual_seed(flip_seed)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = load_image(self.files[index], self.image_size)  # (3, S, S)
        if self.flip and bool(torch.rand((), generator=self._flip_generator) < 0.5):
            image = image.flip(-1)
        return image, self.labels[index]


def _imagefolder(root: str | None, image_size: int, heldout_fraction: float, split_seed: int) -> ImageDataset:
    if root is None:
        raise ValueError(
            "root must name a folder for dataset 'imagefolder', but got root=None; "
            "pass root='/path/to/train' laid out as root/<class>/<image files>"
        )
    root_path = Path(root)
    if not root_path.is_dir():
        raise ValueError(
            f"root must be an existing folder for dataset 'imagefolder', but got root={str(root)!r}, which "
            f"does not exist or is not a folder; pass the folder laid out as root/<class>/<image files>"
        )
    class_dirs = sorted(p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(
            f"root must hold one sub-folder per class, but got root={str(root)!r} with no sub-folders; "
            f"lay the images out as root/<class>/<image files>"
        )
    rng = np.random.default_rng(split_seed)
    train_files: list[Path] = []
    train_labels: list[int] = []
    heldout_files: list[Path] = []
    heldout_labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(
                f"every class folder must hold images ({', '.join(sorted(IMAGE_EXTENSIONS))}), but got class "
                f"folder {str(class_dir)!r} with none; add images or remove the folder"
            )
        # Split each class by a fixed seeded permutation, so the held-out set is class-balanced and stable.
        order = rng.permutation(len(files))
        n_heldout = int(round(len(files) * heldout_fraction))
        n_heldout = min(n_heldout, len(files) - 1)  # keep at least one training image per class
        heldout_set = set(order[:n_heldout].tolist())
        for i, path in enumerate(files):
            if i in heldout_set:
                heldout_files.append(path)
                heldout_labels.append(label)
            else:
                train_files.append(path)
                train_labels.append(label)
    return ImageDataset(
        train=ImageFiles(train_files, train_labels, image_size, flip=True, flip_seed=split_seed),
        heldout=ImageFiles(heldout_files, heldout_labels, image_size, flip=False),
        num_classes=len(class_dirs),
        channels=3,
        image_size=image_size,
        class_names=tuple(p.name for p in class_dirs),
    )


# ----------------------------------------------------------------------------------------------------------------
# public entry points


def load_dataset(
    name: str,
    image_size: int,
    root: str | None = None,
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
) -> ImageDataset:
    """Load a labelled image dataset, split into train and held-out parts.

    Args:
        name: "digits" (bundled with scikit-learn, offline) or "imagefolder" (root/<class>/<images>).
        image_size: output height = width in pixels; a positive multiple of 8.
        root: the folder for "imagefolder" (ignored for "digits").
        heldout_fraction: share of each class held out, in [0, 1).
        split_seed: seed of the train/held-out split (and of the training flips for "imagefolder").

    Raises:
        ValueError: unknown name, bad image_size or heldout_fraction, missing or empty root.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"dataset name must be one of {', '.join(DATASET_NAMES)}, but got name={name!r}; "
                         f"try 'digits' (offline) or 'imagefolder' with root=...")
    _check_image_size(image_size)
    _check_heldout_fraction(heldout_fraction)
    if name == "digits":
        return _digits(int(image_size), float(heldout_fraction), int(split_seed))
    return _imagefolder(root, int(image_size), float(heldout_fraction), int(split_seed))


def stack(dataset: Dataset, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """All (or the first `limit`) items of a dataset as tensors: images `(N, C, H, W)` float32, labels `(N,)` int64."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, but got limit={limit}")
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors[0], dataset.tensors[1]
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        return images.float(), labels.long()
    count = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    if count == 0:
        raise ValueError("stack needs at least one item to know the image shape, but the dataset (or limit) is empty")
    items = [dataset[i] for i in range(count)]
    images = torch.stack([image for image, _ in items]).float()  # (N, C, H, W)
    labels = torch.tensor([int(label) for _, label in items], dtype=torch.int64)  # (N,)
    return images, labels

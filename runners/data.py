"""Image datasets for tokenizers and generators, and the loaders every stage streams them through.

Three sources, one contract: `load_dataset(name, image_size, ...)` returns an `ImageDataset` whose `train`
and `heldout` items are `(image, label)` with `image` a float32 tensor `(C, H, W)` in `[0, 1]` and
`label` a Python int. Items are deterministic (no augmentation inside a dataset): a training loop that
wants ELM's random horizontal flips draws them itself, per sample, when `ImageDataset.flip` is set, so
its random stream lives in one process and is checkpointed with the rest of the run.

- "digits": scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; offline), scaled
  to [0, 1] and upsampled to `image_size`. Held in memory (it is 1 MB); no flips (a flipped 3 is not a 3).
- "fashion-mnist": Zalando's Fashion-MNIST (70,000 28x28 grayscale images, 10 balanced classes) from its
  four IDX .gz files (the Debian package `dataset-fashion-mnist` installs them under
  /usr/share/datasets/fashion-mnist/); the official 60k / 10k split is train / held-out. The raw uint8
  images (55 MB) stay in memory; each item is preprocessed on access like an image file.
- "imagefolder": the ImageNet layout `root/<class>/<image files>`, read with PIL on access.

Preprocessing of files (and Fashion-MNIST) is ADM's and the ELM authors' `center_crop_arr`: halve the
image with a box filter while its short side is at least twice the target, resize with bicubic
interpolation so the short side equals the target, then crop the centre square.

Loading: `LoaderSettings` (worker processes, pinned memory, prefetching) and `batches(dataset, ...)`
stream a split in order through a torch DataLoader; no stage holds a whole split in memory.
`stack(dataset)` still turns a (small) dataset into tensors, for tests and tiny tools.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset, get_worker_info

from space.schema import FASHION_MNIST_FILES, FASHION_MNIST_ROOT, IMAGE_EXTENSIONS

DATASET_NAMES: tuple[str, ...] = ("digits", "fashion-mnist", "imagefolder")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)


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
    flip: bool = False
    """Whether training draws a random horizontal flip per sample (the ELM recipe; not for digits)."""


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


def center_crop_arr(image: "PIL.Image.Image", image_size: int) -> np.ndarray:  # noqa: F821
    """ADM's preprocessing: a PIL image -> uint8 array `(image_size, image_size, channels)` (or (S, S) for "L").

    While the short side is at least 2 x image_size, halve the image with a box filter (each output pixel the
    mean of a 2x2 block: cheap and alias-free); then one bicubic resize brings the short side to image_size
    (the long side rounded); then the centre square is cut, offsets rounded down.
    """
    from PIL import Image

    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - image_size) // 2, (array.shape[1] - image_size) // 2
    return array[top:top + image_size, left:left + image_size]


def _to_tensor(array: np.ndarray) -> Tensor:
    """uint8 `(S, S)` or `(S, S, C)` -> float32 `(C, S, S)` in [0, 1]."""
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).float().div_(255.0)


def load_image(path: str | Path, image_size: int) -> Tensor:
    """Read one image file as RGB and preprocess it with `center_crop_arr`: float32 `(3, S, S)` in [0, 1].

    An unreadable file raises ValueError naming it (and the fix)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as raw:
            image = raw.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"image file {str(path)!r} cannot be read ({error}); replace or delete it "
                         f"(`sweep validate --deep` lists the first unreadable file)") from None
    return _to_tensor(center_crop_arr(image, image_size))  # (3, S, S)


class ImageFiles(Dataset):
    """Image files with labels, read and preprocessed on access (`load_image`); deterministic items."""

    def __init__(self, files: Any, labels: Any, image_size: int) -> None:
        if len(files) != len(labels):
            raise ValueError(f"files and labels must have the same length, but got {len(files)} and {len(labels)}")
        # Paths as one numpy bytes array, not a list of Path objects: loader workers are forked, and a list of
        # Python objects would be copied page by page as their reference counts change (1.28M paths).
        self.files = np.array([os.fsencode(f) for f in files], dtype=bytes) if not isinstance(files, np.ndarray) else files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_size = image_size
        self.channels = 3

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return load_image(os.fsdecode(self.files[index]), self.image_size), int(self.labels[index])


def _image_files(folder: str) -> Iterator[str]:
    """Paths of the image files under `folder`, at any depth (os.scandir: one listing, no stat per file)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                yield from _image_files(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                yield entry.path


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
    # Paths as bytes arrays built class by class: no Python object per file survives the listing (1.28M paths).
    train_files, train_labels, heldout_files, heldout_labels = [], [], [], []
    for label, class_dir in enumerate(class_dirs):
        files = np.array(sorted(os.fsencode(path) for path in _image_files(str(class_dir))), dtype=bytes)
        if not len(files):
            raise ValueError(
                f"every class folder must hold images ({', '.join(sorted(IMAGE_EXTENSIONS))}), but got class "
                f"folder {str(class_dir)!r} with none; add images or remove the folder"
            )
        # Split each class by a fixed seeded permutation, so the held-out set is class-balanced and stable.
        order = rng.permutation(len(files))
        n_heldout = int(round(len(files) * heldout_fraction))
        n_heldout = min(n_heldout, len(files) - 1)  # keep at least one training image per class
        held = np.zeros(len(files), dtype=bool)
        held[order[:n_heldout]] = True
        train_files.append(files[~held])
        heldout_files.append(files[held])
        train_labels.append(np.full(int((~held).sum()), label, dtype=np.int64))
        heldout_labels.append(np.full(int(held.sum()), label, dtype=np.int64))
    train_files, heldout_files = np.concatenate(train_files), np.concatenate(heldout_files)
    train_labels, heldout_labels = np.concatenate(train_labels), np.concatenate(heldout_labels)
    return ImageDataset(
        train=ImageFiles(train_files, train_labels, image_size),
        heldout=ImageFiles(heldout_files, heldout_labels, image_size),
        num_classes=len(class_dirs),
        channels=3,
        image_size=image_size,
        class_names=tuple(p.name for p in class_dirs),
        flip=True,
    )


# ----------------------------------------------------------------------------------------------------------------
# .npy files read and written in place (encoded caches, feature files)


def npy_header(stream: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy file open in `stream` (binary, at its start), the stream left at
    the first byte of the data: for reading or writing rows in place without loading the array."""
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(stream)


# ----------------------------------------------------------------------------------------------------------------
# fashion-mnist


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped): big-endian magic (0, 0, dtype 0x08 = uint8, ndim), ndim int32 sizes, then the data."""
    with gzip.open(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{str(path)!r} is not a uint8 IDX file (magic {raw[:4]!r}); reinstall "
                         f"{FASHION_MNIST_PACKAGE} (apt-get install --reinstall -y {FASHION_MNIST_PACKAGE})")
    ndim = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{str(path)!r} holds {data.size} values but its header says {shape}; the file is cut "
                         f"short: reinstall {FASHION_MNIST_PACKAGE}")
    return data.reshape(shape)


def fashion_mnist_files(root: str | None) -> dict[str, Path]:
    """The four IDX files of Fashion-MNIST under `root` (default FASHION_MNIST_ROOT); ValueError naming the
    Debian package and its install command when one is missing."""
    folder = Path(root or FASHION_MNIST_ROOT)
    files = {role: folder / name for role, name in FASHION_MNIST_FILES.items()}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise ValueError(
            f"dataset 'fashion-mnist' reads its IDX files from {str(folder)!r}, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing; install the Debian package {FASHION_MNIST_PACKAGE} "
            f"(apt-get install -y {FASHION_MNIST_PACKAGE}) or set dataset.root to a folder holding "
            f"{', '.join(FASHION_MNIST_FILES.values())}")
    return files


class GrayImages(Dataset):
    """uint8 images `(N, H, W)` with labels, preprocessed on access like files (`center_crop_arr`): (1, S, S)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, image_size: int) -> None:
        self.images, self.labels, self.image_size = images, labels.astype(np.int64), image_size
        self.channels = 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        array = center_crop_arr(Image.fromarray(self.images[index], mode="L"), self.image_size)  # (S, S)
        return _to_tensor(array), int(self.labels[index])


@functools.lru_cache(maxsize=2)
def _fashion_arrays(root: str | None) -> tuple[np.ndarray, ...]:
    files = fashion_mnist_files(root)
    arrays = tuple(_read_idx(files[role]) for role in FASHION_MNIST_FILES)
    train_images, train_labels, heldout_images, heldout_labels = arrays
    if len(train_images) != len(train_labels) or len(heldout_images) != len(heldout_labels):
        raise ValueError(f"the Fashion-MNIST files under {str(files['train_images'].parent)!r} disagree on how many "
                         f"images there are; reinstall {FASHION_MNIST_PACKAGE}")
    return arrays


def _fashion_mnist(root: str | None, image_size: int) -> ImageDataset:
    train_images, train_labels, heldout_images, heldout_labels = _fashion_arrays(root)
    return ImageDataset(
        train=GrayImages(train_images, train_labels, image_size),
        heldout=GrayImages(heldout_images, heldout_labels, image_size),
        num_classes=len(FASHION_MNIST_CLASSES),
        channels=1,
        image_size=image_size,
        class_names=FASHION_MNIST_CLASSES,
        flip=True,
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
        name: "digits" (bundled with scikit-learn, offline), "fashion-mnist" (IDX files, official split) or
            "imagefolder" (root/<class>/<images>).
        image_size: output height = width in pixels; a positive multiple of 8.
        root: the folder for "imagefolder"; for "fashion-mnist" the folder of its IDX files (default
            FASHION_MNIST_ROOT); ignored for "digits".
        heldout_fraction: share of each class held out, in [0, 1) (not for "fashion-mnist").
        split_seed: seed of the train/held-out split (not for "fashion-mnist").

    Raises:
        ValueError: unknown name, bad image_size or heldout_fraction, missing or empty root.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"dataset name must be one of {', '.join(DATASET_NAMES)}, but got name={name!r}; "
                         f"try 'digits' (offline), 'fashion-mnist' or 'imagefolder' with root=...")
    _check_image_size(image_size)
    _check_heldout_fraction(heldout_fraction)
    if name == "digits":
        return _digits(int(image_size), float(heldout_fraction), int(split_seed))
    if name == "fashion-mnist":  # the official split: heldout_fraction and split_seed do not apply
        return _fashion_mnist(root, int(image_size))
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
    items = [dataset[i] for i in range(count)]  # everything at once: for tests and tiny tools, never a stage
    images = torch.stack([image for image, _ in items]).float()  # (N, C, H, W)
    labels = torch.tensor([int(label) for _, label in items], dtype=torch.int64)  # (N,)
    return images, labels


# ----------------------------------------------------------------------------------------------------------------
# loaders: how every stage reads a split


@dataclass(frozen=True)
class LoaderSettings:
    """How a stage streams images: worker processes decode while the model computes."""

    workers: int = 0
    """DataLoader worker processes (0: read in the calling process)."""
    pin_memory: bool = False
    """Page-locked batches, so host-to-GPU copies run asynchronously (GPUs only)."""
    prefetch: int = 2
    """Batches each worker prepares ahead."""

    @classmethod
    def for_stage(cls, cpus: float, on_gpu: bool, workers: int | None = None) -> LoaderSettings:
        """A stage's loader: one worker per CPU beyond the one the stage's own process computes on (or `workers`,
        the spec's runtime override), pinned memory on a GPU."""
        count = max(0, int(cpus) - 1) if workers is None else int(workers)
        if count < 0:
            raise ValueError(f"loader workers must be >= 0, but got {count}; set runtime.loader_workers: 0 or more")
        return cls(workers=count, pin_memory=bool(on_gpu), prefetch=2)


_loader_depth = 0  # > 0 while the calling process reads items on behalf of a loader (workers=0, or stack)


@contextlib.contextmanager
def _in_loader() -> Iterator[None]:
    global _loader_depth
    _loader_depth += 1
    try:
        yield
    finally:
        _loader_depth -= 1


def in_loader() -> bool:
    """True while items are read by a loader of this module (a worker process, or `batches` / `stream` in the
    calling process): lets a test dataset refuse reads that materialise a split outside a loader."""
    return _loader_depth > 0 or get_worker_info() is not None


def _in_memory(dataset: Dataset) -> bool:
    """A dataset of tensors already in memory: worker processes would only add start-up and copies."""
    return isinstance(dataset, TensorDataset)


def item_shape(dataset: Dataset) -> tuple[int, int, int]:
    """(C, H, W) of the dataset's images without reading an image where the dataset says it (tensors,
    `channels` + `image_size` attributes, subsets of those); otherwise from its first item."""
    if isinstance(dataset, TensorDataset):
        return tuple(dataset.tensors[0].shape[1:])  # type: ignore[return-value]
    if isinstance(dataset, torch.utils.data.Subset):
        return item_shape(dataset.dataset)
    channels, side = getattr(dataset, "channels", None), getattr(dataset, "image_size", None)
    if channels is not None and side is not None:
        return int(channels), int(side), int(side)
    return tuple(dataset[0][0].shape)  # type: ignore[return-value]


def loader(dataset: Dataset, settings: LoaderSettings, *, batch_size: int | None = None,
           batch_sampler: Iterable[list[int]] | None = None) -> DataLoader:
    """A DataLoader over `dataset` with `settings`: in order in batches of `batch_size`, or the index batches
    of `batch_sampler`. In-memory tensor datasets are read in the calling process whatever `settings` say."""
    workers = 0 if _in_memory(dataset) else settings.workers
    extra: dict[str, Any] = {"prefetch_factor": settings.prefetch, "persistent_workers": False} if workers > 0 else {}
    # The loader draws its workers' base seed from this generator, not from torch's global RNG, which reading
    # must leave alone (items are deterministic; the seed matters to nothing here).
    extra["generator"] = torch.Generator().manual_seed(0)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, pin_memory=settings.pin_memory,
                          **extra)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=settings.pin_memory, **extra)


def stream(data_loader: Iterable[tuple[Tensor, Any]]) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches `(images (b, C, H, W) float32, labels (b,) int64)` of a loader, read as a loader's reads."""
    iterator = iter(data_loader)
    while True:
        with _in_loader():
            try:
                images, labels = next(iterator)
            except StopIteration:
                return
        yield images.float(), torch.as_tensor(labels).long()


def batches(dataset: Dataset, batch_size: int = 256, settings: LoaderSettings = LoaderSettings(),
            limit: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """The items of `dataset` in order (the first `limit` of them), as `(images (b, C, H, W), labels (b,))`
    CPU batches (pinned with `settings.pin_memory`): one split streamed, never held whole."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, but got batch_size={batch_size}")
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0 or None, but got limit={limit}")
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))  # type: ignore[arg-type]
    if len(dataset) == 0:  # type: ignore[arg-type]
        return iter(())
    return stream(loader(dataset, settings, batch_size=batch_size))


class Batches:
    """`batches(dataset, batch_size, settings, limit)` as an object that can be iterated more than once (a
    consumer that needs two passes, e.g. a mean first, reads the split twice rather than keeping it)."""

    def __init__(self, dataset: Dataset, batch_size: int = 256, settings: LoaderSettings = LoaderSettings(),
                 limit: int | None = None) -> None:
        self.dataset, self.batch_size, self.settings, self.limit = dataset, batch_size, settings, limit

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return batches(self.dataset, self.batch_size, self.settings, self.limit)

    def __len__(self) -> int:
        """Number of images (not batches)."""
        n = len(self.dataset)  # type: ignore[arg-type]
        return n if self.limit is None else min(n, self.limit)


ImageSource = Tensor | Iterable[tuple[Tensor, Tensor]] | Iterable[Tensor]
"""Images for a streaming consumer: a tensor `(N, C, H, W)`, or an iterable of batches (images, or
(images, labels) pairs) such as `batches(dataset)` or `Batches(dataset)`."""


def image_batches(source: Any, batch_size: int = 256) -> Iterator[Tensor]:
    """Image batches `(b, C, H, W)` of an `ImageSource` (a tensor is cut into slices of `batch_size`)."""
    if isinstance(source, Tensor):
        if source.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), but got shape {tuple(source.shape)}; add a channel axis")
        for start in range(0, len(source), batch_size):
            yield source[start:start + batch_size]
        return
    for item in source:
        yield item[0] if isinstance(item, (tuple, list)) else item

"""runners/data.py: digits and imagefolder loading, splits, transforms, errors, stack()."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runners.data import ImageDataset, load_dataset, stack

# ---------------------------------------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_split_sizes() -> None:
    data = load_dataset("digits", 16)
    assert isinstance(data, ImageDataset)
    assert (data.num_classes, data.channels, data.image_size) == (10, 1, 16)
    assert data.class_names == tuple("0123456789")
    assert (len(data.train), len(data.heldout)) == (1437, 360)  # 1797 images, 20% held out
    image, label = data.train[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    images, labels = stack(data.train)
    assert images.shape == (1437, 1, 16, 16) and labels.shape == (1437,) and labels.dtype == torch.int64
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0  # 0..16 scaled by 1/16


def test_digits_native_size_is_pixel_values_over_16() -> None:
    data = load_dataset("digits", 8, heldout_fraction=0.0)
    images, labels = stack(data.train)
    assert images.shape == (1797, 1, 8, 8) and len(data.heldout) == 0
    # First digit of sklearn's set is a 0 whose first row is [0, 0, 5, 13, 9, 1, 0, 0].
    assert int(labels[0]) == 0
    assert torch.allclose(images[0, 0, 0], torch.tensor([0, 0, 5, 13, 9, 1, 0, 0]) / 16.0)


def test_digits_split_is_stratified_seeded_and_cached() -> None:
    data = load_dataset("digits", 16)
    held = Counter(stack(data.heldout)[1].tolist())
    # sklearn class counts are 178..183; 20% stratified gives 35 or 36 (or 37) per class.
    assert set(held) == set(range(10)) and all(35 <= n <= 37 for n in held.values())
    assert load_dataset("digits", 16) is data  # lru_cache: repeated loads are free
    same = load_dataset("digits", 16, split_seed=0)
    other = load_dataset("digits", 16, split_seed=1)
    assert torch.equal(stack(same.heldout)[0], stack(data.heldout)[0])
    assert not torch.equal(stack(other.heldout)[0], stack(data.heldout)[0])


def test_stack_limit_and_generic_path() -> None:
    data = load_dataset("digits", 16)
    images, labels = stack(data.train, limit=5)
    assert images.shape == (5, 1, 16, 16) and labels.shape == (5,)

    class Plain(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.full((2, 8, 8), i / 10.0), i

    images, labels = stack(Plain())
    assert images.shape == (3, 2, 8, 8) and labels.tolist() == [0, 1, 2]
    assert float(images[2, 1, 3, 3]) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(name="mnist", image_size=16), "dataset name must be one of digits, fashion-mnist, imagefolder"),
        (dict(name="digits", image_size=12), "image_size must be a positive multiple of 8"),
        (dict(name="digits", image_size=16, heldout_fraction=1.0), "heldout_fraction must be in [0, 1)"),
        (dict(name="imagefolder", image_size=16), "root must name a folder"),
        (dict(name="imagefolder", image_size=16, root="/nonexistent/elm"), "does not exist"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        load_dataset(**kwargs)
    assert fragment in str(info.value)


# ----------------------------------------------------------------------------------------------------- imagefolder


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _left_white(width: int, height: int) -> np.ndarray:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = 255
    return array


def test_imagefolder_classes_split_crop_and_flip(tmp_path: Path) -> None:
    # Class "b" sorts after "a"; 10 images each, 20% held out per class.
    for cls in ("b", "a"):
        for i in range(10):
            _write(tmp_path / cls / f"{i}.png", _left_white(32, 32))
    data = load_dataset("imagefolder", 16, root=str(tmp_path), heldout_fraction=0.2, split_seed=3)
    assert data.class_names == ("a", "b") and data.num_classes == 2 and data.channels == 3
    assert (len(data.train), len(data.heldout)) == (16, 4)
    assert Counter(stack(data.heldout)[1].tolist()) == {0: 2, 1: 2}

    # Items are never flipped (left half white); training flips them itself (data.flip, train_tokenizer.flip_batch).
    assert data.flip and not load_dataset("digits", 16).flip
    for split in (data.heldout, data.train):
        for i in range(len(split)):
            image, _ = split[i]
            assert image.shape == (3, 16, 16) and image.dtype == torch.float32
            assert float(image[:, :, 0].mean()) == pytest.approx(1.0) and float(image[:, :, -1].mean()) == 0.0


def test_imagefolder_centre_crop_keeps_the_middle(tmp_path: Path) -> None:
    # 48x16 image: red 16x16 centre square, blue sides. The centre crop must keep only red.
    array = np.zeros((16, 48, 3), dtype=np.uint8)
    array[:, :, 2] = 255
    array[:, 16:32] = [255, 0, 0]
    _write(tmp_path / "only" / "wide.png", array)
    _write(tmp_path / "only" / "other.jpg", np.full((20, 20, 3), 128))
    data = load_dataset("imagefolder", 8, root=str(tmp_path), heldout_fraction=0.0)
    images, _ = stack(data.train)
    assert images.shape == (2, 3, 8, 8)
    red = images[1]  # sorted: other.jpg, wide.png
    assert torch.allclose(red[0], torch.ones(8, 8), atol=0.02) and float(red[2].max()) < 0.02


def test_imagefolder_empty_folders_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_dataset("imagefolder", 16, root=str(tmp_path))
    assert "no sub-folders" in str(info.value)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError) as info:
        load_dataset("imagefolder", 16, root=str(tmp_path))
    assert "cat" in str(info.value) and "with none" in str(info.value)

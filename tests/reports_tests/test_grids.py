"""Sample grids: partial reads of samples.npz, class choice, mosaics."""

import numpy as np
from PIL import Image

from reports.grids import choose_classes, mosaic, read_samples, trial_grid


def write_samples(path, per_class=(3, 1, 2), side=4, channels=1):
    labels = np.repeat(np.arange(len(per_class)), per_class)
    images = (np.arange(len(labels) * side * side * channels) % 251).astype(np.uint8).reshape(len(labels), side, side, channels)
    np.savez_compressed(path, arr_0=images, labels=labels)
    return images, labels


def test_read_samples_takes_the_first_of_each_class_without_loading_everything(tmp_path):
    images, labels = write_samples(tmp_path / "samples.npz")
    got, classes = read_samples(tmp_path / "samples.npz", per_class=2)
    assert classes.tolist() == [0, 1, 2] and got.shape == (3, 2, 4, 4, 1)
    assert np.array_equal(got[0], images[[0, 1]])  # class 0: samples 0 and 1
    assert np.array_equal(got[1, 0], images[3]) and not got[1, 1].any()  # class 1 has one sample: a black slot
    assert np.array_equal(got[2], images[[4, 5]])
    only, _ = read_samples(tmp_path / "samples.npz", classes=np.array([2]), per_class=1)
    assert np.array_equal(only[0, 0], images[4])


def test_many_classes_are_subsampled_evenly():
    assert choose_classes(np.arange(1000).repeat(2)).tolist() == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert choose_classes(np.array([3, 1, 1, 2])).tolist() == [1, 2, 3]


def test_mosaic_upscales_small_images_and_pads_between_them():
    images = np.zeros((2, 3, 16, 16, 1), dtype=np.uint8)
    images[1, 2] = 200
    canvas = mosaic(images)  # 16 px -> x4 = 64 px cells, 2 px padding
    assert canvas.shape == (2 * 66 + 2, 3 * 66 + 2, 3)
    assert (canvas[68:132, 134:198] == 200).all() and (canvas[0:2] == 255).all()


def test_trial_grid_writes_a_png_with_a_row_per_class(tmp_path):
    write_samples(tmp_path / "samples.npz", per_class=(2, 2), side=16, channels=3)
    path, classes = trial_grid(tmp_path / "samples.npz", tmp_path / "grid.png", per_class=2)
    assert classes.tolist() == [0, 1]
    assert Image.open(path).size == (2 * 66 + 2, 2 * 66 + 2)


def test_a_titled_trial_grid_carries_its_settings_above_the_samples(tmp_path):
    write_samples(tmp_path / "samples.npz", per_class=(2, 2), side=16, channels=3)
    bare, _ = trial_grid(tmp_path / "samples.npz", tmp_path / "bare.png", per_class=2)
    titled, classes = trial_grid(tmp_path / "samples.npz", tmp_path / "titled.png", per_class=2, title="top_k=all, training seed 0")
    assert classes.tolist() == [0, 1]
    image = np.asarray(Image.open(titled).convert("L"))
    assert image.shape[0] > Image.open(bare).size[1]  # room for the title (and class labels on the left)
    top = image[: image.shape[0] // 6]
    assert (top < 128).any()  # dark title text on white above the samples

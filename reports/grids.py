"""Sample grids from an evaluation's `samples.npz` (arr_0 uint8 (N, H, W, C), labels (N,)).

`read_samples` reads only the rows it needs straight from the zip member, so a 50k-image ImageNet
artifact (about 10 GB of pixels) costs one streaming pass, not 10 GB of memory.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

SAMPLES_FILE = "samples.npz"
MAX_CLASSES = 10  # rows of a grid; more classes are subsampled evenly (ImageNet: 10 of 1000)
PAD = 2  # pixels between images
CELL_MIN_PX = 64  # small images are upscaled (nearest) to at least this
CELL_MAX_PX = 128  # large images are downscaled to at most this


def _read_array_rows(archive: zipfile.ZipFile, name: str, indices: np.ndarray) -> np.ndarray:
    """Rows `indices` (sorted, unique) of a C-order .npy member, seeking forward through the stream."""
    with archive.open(f"{name}.npy") as stream:
        major, _ = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)
        if fortran_order or not shape:
            stream.seek(0)
            return np.lib.format.read_array(stream)[indices]
        row_shape = shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
        start = stream.tell()
        rows = np.empty((len(indices), *row_shape), dtype=dtype)
        for i, index in enumerate(indices):
            stream.seek(start + int(index) * row_bytes)
            rows[i] = np.frombuffer(stream.read(row_bytes), dtype=dtype).reshape(row_shape)
        return rows


def choose_classes(labels: np.ndarray, max_classes: int = MAX_CLASSES) -> np.ndarray:
    """Up to `max_classes` class ids present in `labels`, evenly spread over the sorted ids."""
    classes = np.unique(labels)
    if len(classes) <= max_classes:
        return classes
    return classes[np.linspace(0, len(classes) - 1, max_classes).round().astype(int)]


def read_samples(path: str | Path, classes: np.ndarray | None = None, per_class: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` samples of each class: images (R, per_class, H, W, C) uint8 and the class
    ids (R,). Missing samples (a class with fewer) stay black. `classes` default: `choose_classes`."""
    with zipfile.ZipFile(path) as archive:
        names = {Path(n).stem for n in archive.namelist()}
        if "arr_0" not in names or "labels" not in names:
            raise ValueError(f"{path} must hold arr_0 (N, H, W, C) and labels (N,), but holds {sorted(names)}")
        with archive.open("labels.npy") as stream:
            labels = np.lib.format.read_array(stream)
        classes = choose_classes(labels) if classes is None else np.asarray(classes)
        picks = [np.flatnonzero(labels == c)[:per_class] for c in classes]  # (per_class,) indices each
        wanted = np.unique(np.concatenate(picks)) if picks else np.zeros(0, dtype=int)
        rows = _read_array_rows(archive, "arr_0", wanted)  # (M, H, W, C)
    if rows.ndim == 3:  # (M, H, W): grayscale without a channel axis
        rows = rows[..., None]
    position = {int(index): i for i, index in enumerate(wanted)}
    images = np.zeros((len(classes), per_class, *rows.shape[1:]), dtype=np.uint8)
    for r, pick in enumerate(picks):
        for c, index in enumerate(pick):
            images[r, c] = rows[position[int(index)]]
    return images, classes


def _cell_size(side: int) -> tuple[int, int]:
    """(upscale factor, target side) of one image in a grid."""
    if side < CELL_MIN_PX:
        factor = -(-CELL_MIN_PX // side)
        return factor, side * factor
    return 1, min(side, CELL_MAX_PX)


def mosaic(images: np.ndarray, pad: int = PAD, background: int = 255) -> np.ndarray:
    """A (R, C, H, W, ch) uint8 stack as one RGB uint8 image (rows x columns), resized for viewing."""
    from PIL import Image

    rows, columns, height, width, channels = images.shape
    if channels == 1:
        images = np.repeat(images, 3, axis=-1)
    elif channels == 4:
        images = images[..., :3]
    factor, _ = _cell_size(max(height, width))
    if factor > 1:
        images = images.repeat(factor, axis=2).repeat(factor, axis=3)  # nearest upscale: pixels stay crisp
    elif max(height, width) > CELL_MAX_PX:
        scale = CELL_MAX_PX / max(height, width)
        size = (round(width * scale), round(height * scale))
        images = np.stack(
            [np.stack([np.asarray(Image.fromarray(im).resize(size, Image.LANCZOS)) for im in row]) for row in images]
        )
    h, w = images.shape[2:4]
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), background, dtype=np.uint8)
    for r in range(rows):
        for c in range(columns):
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            canvas[top : top + h, left : left + w] = images[r, c]
    return canvas


def save_png(image: np.ndarray, path: Path) -> Path:
    """Write an RGB uint8 image as PNG (no metadata)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG", optimize=True)
    return path


def trial_grid(
    samples_path: str | Path, out: Path, per_class: int = 8, max_classes: int = MAX_CLASSES, title: str = ""
) -> tuple[Path, np.ndarray]:
    """A PNG of one evaluation's samples: one row per class, `per_class` columns. With a `title` (the
    trial's settings) the grid is drawn under it with the class ids on the left; without, it is the
    bare mosaic. Returns the path and the class ids of the rows."""
    with zipfile.ZipFile(samples_path) as archive, archive.open("labels.npy") as stream:
        labels = np.lib.format.read_array(stream)
    images, classes = read_samples(samples_path, choose_classes(labels, max_classes), per_class)
    if title:
        return compare_grid([(title, images)], classes, out), classes
    return save_png(mosaic(images), out), classes


def _wrap(text: str, inches: float) -> str:
    """`text` broken into lines about `inches` wide (8-9 pt text: ~14 characters per inch), each line
    of the text wrapped apart; a line breaks after a comma where it can."""
    import textwrap

    width = max(18, int(inches * 14))
    return "\n".join(textwrap.fill(line, width, break_on_hyphens=False) for line in text.split("\n"))


def compare_grid(
    panels: list[tuple[str, np.ndarray]], classes: np.ndarray, out: Path, title: str = "", class_names: list[str] | None = None
) -> Path:
    """Side by side: one panel per trial (its title the trial's axis values), each (R, C, H, W, ch)
    images of the same classes (rows, labelled on the left) and sampling seed."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    mosaics = [mosaic(images) for _, images in panels]
    height, width = mosaics[0].shape[:2]
    rows = len(classes)
    panel_h = 0.38 * rows + 0.3  # inches: a row of thumbnails about 0.38 in tall
    panel_w = max(panel_h * width / height, 1.0)
    figure, axes = plt.subplots(1, len(panels), figsize=(panel_w * len(panels) + 0.6, panel_h + 0.7), squeeze=False)
    cell = (height - PAD) / max(rows, 1)
    for index, (ax, (label, _), image) in enumerate(zip(axes[0], panels, mosaics)):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(_wrap(label, panel_w), fontsize=8)
        ax.set_xticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
        if index == 0:
            ax.set_yticks([PAD / 2 + cell * (r + 0.5) for r in range(rows)], class_names or [str(int(c)) for c in classes], fontsize=7)
            ax.set_ylabel("class")
        else:
            ax.set_yticks([])
    if title:
        figure.suptitle(_wrap(title, panel_w * len(panels) + 0.6), fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=150, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return out

"""The identity of a spec's dataset in stage keys: a fingerprint of its content listing, not its path.

    listing      every file under the root: (path relative to the root, size in bytes, mtime in ns), sorted
    fingerprint  sha256 of the listing's lines, 16 hex digits

Moving or copying the folder with its timestamps (mv, rsync -a, cp -p) keeps every key; adding, deleting,
renaming or rewriting one image gives new keys for every stage that reads the data. The listing needs one
`os.scandir` pass with one `stat` per file and opens no image (seconds for ImageNet's 1.28M files); it is
made once per spec object, i.e. once per `sweep` command, and shared by the dataset checks of `sweep validate`
(sweep/validate.py) and the planner. It is not cached across commands: an image rewritten in place changes no
directory's mtime, so such a cache could hand out a stale fingerprint.

The bundled digits have no files of their own: their identity stays what the spec says (name, image size,
split), so digits keys are those of every earlier version.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from space.schema import FASHION_MNIST_FILES, FASHION_MNIST_ROOT, IMAGE_EXTENSIONS, Dataset

FINGERPRINT_LENGTH = 16
FASHION_MNIST_NAMES = tuple(FASHION_MNIST_FILES.values())
"""The four IDX file names, in the order of space.schema.FASHION_MNIST_FILES."""


@dataclass
class ClassFolder:
    """One class folder of an imagefolder: its image files and those of them that are empty (0 bytes)."""

    name: str
    images: int = 0
    empty: list[str] = field(default_factory=list)


@dataclass
class Listing:
    """What one scan of a dataset root found."""

    root: str
    files: list[tuple[str, int, int]]
    """(relative path, size, mtime_ns) of every file, sorted by path"""
    classes: list[ClassFolder]
    """imagefolder: the class folders (non-hidden sub-folders of the root), sorted by name"""

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path, size, mtime_ns in self.files:
            digest.update(f"{path}\t{size}\t{mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:FINGERPRINT_LENGTH]


def _walk(folder: str, prefix: str, files: list[tuple[str, int, int]], found: ClassFolder | None) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            relative = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=True):
                _walk(entry.path, relative + "/", files, found)
            elif entry.is_file(follow_symlinks=True):
                stat = entry.stat(follow_symlinks=True)
                files.append((relative, stat.st_size, stat.st_mtime_ns))
                if found is not None and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    found.images += 1
                    if stat.st_size == 0:
                        found.empty.append(relative)


def scan_imagefolder(root: str) -> Listing:
    """Every file under `root` with its size and mtime, and the class folders with their image counts.

    Raises OSError (FileNotFoundError, NotADirectoryError, PermissionError) when the root cannot be listed."""
    files: list[tuple[str, int, int]] = []
    classes: list[ClassFolder] = []
    with os.scandir(root) as entries:
        top = sorted(entries, key=lambda e: e.name)
    for entry in top:
        if entry.is_dir(follow_symlinks=True):
            if entry.name.startswith("."):
                continue
            folder = ClassFolder(entry.name)
            classes.append(folder)
            _walk(entry.path, entry.name + "/", files, folder)
        elif entry.is_file(follow_symlinks=True):
            stat = entry.stat(follow_symlinks=True)
            files.append((entry.name, stat.st_size, stat.st_mtime_ns))
    files.sort()
    return Listing(root=root, files=files, classes=classes)


def scan_fashion_mnist(root: str) -> Listing:
    """The four IDX files of Fashion-MNIST (those that exist) with their sizes and mtimes."""
    files = []
    for name in FASHION_MNIST_NAMES:
        path = Path(root) / name
        if path.is_file():
            stat = path.stat()
            files.append((name, stat.st_size, stat.st_mtime_ns))
    return Listing(root=root, files=sorted(files), classes=[])


_SCANS: dict[int, tuple[Dataset, Listing]] = {}  # id(spec.dataset) -> (that object, kept alive, its listing)


def dataset_root(dataset: Dataset) -> str | None:
    """The folder a dataset's files live in (None for the bundled digits)."""
    if dataset.name in ("digits", "labels"):  # bundled, or no images at all
        return None
    if dataset.name == "fashion-mnist":
        return os.path.abspath(dataset.root or FASHION_MNIST_ROOT)
    return os.path.abspath(dataset.root) if dataset.root else None


def listing_of(dataset: Dataset) -> Listing | None:
    """The content listing of a spec's dataset, scanned once per Dataset object (None for digits)."""
    root = dataset_root(dataset)
    if root is None:
        return None
    cached = _SCANS.get(id(dataset))
    if cached is not None and cached[0] is dataset:
        return cached[1]
    listing = scan_fashion_mnist(root) if dataset.name == "fashion-mnist" else scan_imagefolder(root)
    _SCANS[id(dataset)] = (dataset, listing)
    return listing


def dataset_identity(dataset: Dataset) -> dict[str, Any]:
    """What stage keys hash of the dataset: the spec's fields with the root replaced by the content fingerprint
    (digits: the spec's fields, unchanged). A root that cannot be listed here (planning full.yaml on a laptop)
    gives provisional keys, named by the root with no fingerprint; `sweep validate` and `sweep run` refuse it."""
    fields = dataset.model_dump(mode="json")
    try:
        listing = listing_of(dataset)
    except OSError:
        return {**fields, "root": dataset_root(dataset), "fingerprint": None}
    if listing is None:
        return fields
    fields.pop("root", None)
    return {**fields, "fingerprint": listing.fingerprint()}

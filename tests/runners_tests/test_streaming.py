"""Bounded memory: every stage reads its images through a loader; ADM preprocessing; Fashion-MNIST; the
memory-mapped encoded training set with both flip orientations; streaming statistics."""

from __future__ import annotations

import gzip
import io
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

import runners.data as data_module
from runners.data import Batches, ImageDataset, LoaderSettings, batches, center_crop_arr, in_loader, load_dataset, stack
from runners.encode import EncodedFolder, encode_dataset, encode_to_folder
from runners.evaluation.reference import FeatureSums
from runners.tokenizers.bae import BinaryAutoencoder
from runners.vocab import Vocabulary
import yaml

from space.schema import parse_spec
from sweep.executors import SerialExecutor
from sweep.progress import Reporter
from sweep.run import run_sweep

# ------------------------------------------------------------------------------------------- preprocessing


def test_center_crop_arr_box_halves_then_crops_the_centre() -> None:
    # 8 wide x 4 high, target 2: the short side 4 >= 2 x 2, so one box halving to 4 x 2 (each pixel the mean of a
    # 2x2 block), the bicubic resize to short side 2 changes nothing, and the centre crop keeps columns 1..2.
    array = np.array([
        [0, 4, 8, 12, 16, 20, 24, 28],
        [4, 8, 12, 16, 20, 24, 28, 32],
        [100, 100, 200, 200, 0, 0, 40, 40],
        [100, 100, 200, 200, 0, 0, 40, 40],
    ], dtype=np.uint8)
    out = center_crop_arr(Image.fromarray(array, mode="L"), 2)
    assert out.dtype == np.uint8 and out.tolist() == [[12, 20], [200, 0]]


def test_center_crop_arr_rounds_the_long_side_and_floors_the_offset() -> None:
    # 7 x 3 to 2: no halving (3 < 4), bicubic to round(7 * 2/3) = 5 x 2, crop columns (5 - 2) // 2 = 1 .. 2.
    # A flat image stays flat under bicubic resampling, a left/right split keeps its sides.
    flat = center_crop_arr(Image.fromarray(np.full((3, 7, 3), 77, dtype=np.uint8)), 2)
    assert flat.shape == (2, 2, 3) and (flat == 77).all()
    split = np.zeros((40, 160), dtype=np.uint8)
    split[:, 80:] = 255  # right half white: 160 x 40 -> box to 80 x 20 -> 40 x 10 -> bicubic 32 x 8 -> crop 8 x 8
    out = center_crop_arr(Image.fromarray(split, mode="L"), 8)
    assert out.shape == (8, 8) and out[:, 0].max() < 10 and out[:, -1].min() > 245


# -------------------------------------------------------------------------------------------- fashion-mnist


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(root: Path, train: int = 6, heldout: int = 4) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", heldout)):
        images = rng.integers(0, 256, (n, 28, 28))
        images[0] = 0
        images[0, :, 14:] = 255  # first image: right half white
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_fashion_mnist_reads_idx_files_official_split(tmp_path: Path) -> None:
    _fake_fashion(tmp_path)
    data = load_dataset("fashion-mnist", 32, root=str(tmp_path))
    assert (len(data.train), len(data.heldout), data.channels, data.num_classes) == (6, 4, 1, 10)
    assert data.flip and data.class_names[9] == "ankle-boot"
    image, label = data.heldout[0]
    assert image.shape == (1, 32, 32) and label == 0
    assert float(image[0, :, :12].max()) < 0.05 and float(image[0, :, 20:].min()) > 0.95  # 28 -> 32 bicubic
    images, labels = stack(data.heldout)
    assert labels.tolist() == [0, 1, 2, 3]


def test_fashion_mnist_missing_files_name_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_dataset("fashion-mnist", 32, root=str(tmp_path))
    message = str(info.value)
    assert "dataset-fashion-mnist" in message and "apt-get install -y dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte.gz" in message


@pytest.mark.skipif(not Path(data_module.FASHION_MNIST_ROOT, "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist is not installed")
def test_installed_fashion_mnist_is_the_real_70k() -> None:
    data = load_dataset("fashion-mnist", 32)
    assert (len(data.train), len(data.heldout)) == (60000, 10000)
    assert np.bincount(data.heldout.labels).tolist() == [1000] * 10  # balanced classes


# ------------------------------------------------------------------------------------------------- loaders


def test_batches_stream_in_order_with_and_without_workers(tmp_path: Path) -> None:
    _fake_fashion(tmp_path, train=10)
    data = load_dataset("fashion-mnist", 16, root=str(tmp_path))
    expected, labels = stack(data.train)
    for settings in (LoaderSettings(workers=0), LoaderSettings(workers=2, prefetch=1)):
        got = list(batches(data.train, 4, settings))
        assert [len(images) for images, _ in got] == [4, 4, 2]
        assert torch.equal(torch.cat([images for images, _ in got]), expected)
        assert torch.equal(torch.cat([y for _, y in got]), labels)
    twice = Batches(data.train, 3, LoaderSettings(), limit=5)
    assert len(twice) == 5 and [len(b) for b, _ in twice] == [3, 2] == [len(b) for b, _ in twice]
    assert LoaderSettings.for_stage(8, True) == LoaderSettings(workers=7, pin_memory=True, prefetch=2)
    assert LoaderSettings.for_stage(1, False).workers == 0 and LoaderSettings.for_stage(8, False, 3).workers == 3


def test_feature_sums_equal_two_pass_statistics() -> None:
    rows = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5 + 100
    sums = FeatureSums()
    for start in range(0, 50, 7):
        sums.add(rows[start:start + 7])
    stats = sums.statistics()
    np.testing.assert_allclose(stats["mu"], rows.mean(0).numpy(), rtol=1e-13)
    np.testing.assert_allclose(stats["sigma"], np.cov(rows.numpy(), rowvar=False), rtol=1e-10)


# ---------------------------------------------------------------------------------- the encoded training set


class _Flippable(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels, self.channels, self.image_size = images, labels, 1, images.shape[-1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def test_encoded_folder_holds_both_orientations_and_draws_a_fresh_flip(tmp_path: Path) -> None:
    images, labels = stack(load_dataset("digits", 16).train, limit=24)
    torch.manual_seed(0)
    model = BinaryAutoencoder(code_dim=8, size="tiny", channels=1, image_size=16).eval()
    folder = encode_to_folder(model, _Flippable(images, labels), tmp_path / "enc", flips=True, batch_size=10)
    assert folder.codes.shape == (24, 2, 8, 4, 4) and folder.codes.dtype == np.float16
    direct = encode_dataset(model, _Flippable(images, labels), batch_size=10)["logits"]
    mirrored = encode_dataset(model, _Flippable(images.flip(-1), labels), batch_size=10)["logits"]
    assert torch.equal(torch.from_numpy(np.array(folder.codes[:, 0])), direct)
    assert torch.equal(torch.from_numpy(np.array(folder.codes[:, 1])), mirrored)
    assert folder.labels.tolist() == labels.tolist()
    # two ranks (threads here) writing one block each give the same files
    barrier = threading.Barrier(2)
    ranks = [threading.Thread(target=encode_to_folder, args=(model, _Flippable(images, labels), tmp_path / "ranks"),
                              kwargs=dict(flips=True, batch_size=10, rank=rank, world_size=2, barrier=barrier.wait))
             for rank in (0, 1)]
    for thread in ranks:
        thread.start()
    for thread in ranks:
        thread.join()
    assert np.array_equal(EncodedFolder(tmp_path / "ranks").codes, folder.codes)
    # each sample of a step draws its orientation: both occur, a seeded generator repeats them
    vocab = Vocabulary(8, 1)
    index = torch.arange(24)
    one = folder.batch(index, mode="threshold", vocab=vocab, generator=torch.Generator().manual_seed(1))[0]
    again = folder.batch(index, mode="threshold", vocab=vocab, generator=torch.Generator().manual_seed(1))[0]
    with torch.no_grad():
        plain = model.encode_ids(images, mode="threshold", vocab=vocab)
        flipped = model.encode_ids(images.flip(-1), mode="threshold", vocab=vocab)
    assert torch.equal(one, again)
    rows_plain = [bool(torch.equal(one[i], plain[i])) for i in range(24)]
    rows_flip = [bool(torch.equal(one[i], flipped[i])) for i in range(24)]
    assert all(a or b for a, b in zip(rows_plain, rows_flip)) and 3 < sum(rows_flip) and 3 < sum(rows_plain)


# ----------------------------------------------------------------------- no stage materialises a split

OUTSIDE_READS = 2  # reads a stage may make outside a loader (none needs any; a probe of one item is tolerated)


class GuardedSplit(torch.utils.data.Dataset):
    """Digits that refuse more than OUTSIDE_READS reads outside a loader (`runners.data.in_loader`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels, self.channels, self.image_size = images, labels, 1, images.shape[-1]
        self.outside = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not in_loader():
            self.outside += 1
            if self.outside > OUTSIDE_READS:
                raise AssertionError(f"more than {OUTSIDE_READS} items read outside a loader: a stage materialises a split")
        return self.images[i], int(self.labels[i])


SPEC = """
schema_version: 1
name: guarded
dataset: {name: digits, image_size: 16}
baseline: {code_dim: 8, tokenizer_steps: 3, tokenizer_batch: 8, classifier_steps: 3, generator_steps: 3,
           generator_batch: 8, samples_per_class: 1, intermediate_every: 2, intermediate_samples_per_class: 1}
analyses: {token_randomness: true, attention_locality: true, images: 8}
runtime: {loader_workers: 0}
studies: [{name: s, vary: {token_each: [2]}}]
"""


def test_no_stage_reads_a_split_outside_its_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digits = load_dataset("digits", 16)

    def guarded(name, image_size, root=None, heldout_fraction=0.2, split_seed=0) -> ImageDataset:
        train, heldout = stack(digits.train, limit=40), stack(digits.heldout, limit=30)  # tensors: no reads counted
        return ImageDataset(train=GuardedSplit(*train), heldout=GuardedSplit(*heldout), num_classes=10, channels=1,
                            image_size=16, class_names=digits.class_names, flip=True)

    monkeypatch.setattr("sweep.stages.common.load_dataset", guarded)
    summary = run_sweep(parse_spec(yaml.safe_load(SPEC)), tmp_path, SerialExecutor(), Reporter(Console(file=io.StringIO())))
    assert summary.failures == [], summary.failures
    # every kind ran: classifier, reference, tokenizer, reconstruction, generator, evaluation, 3 analyses
    assert summary.counts == {"finished": 9}


def test_tokenizer_training_does_not_depend_on_loader_workers(tmp_path: Path) -> None:
    from runners.train_tokenizer import train_tokenizer

    _fake_fashion(tmp_path, train=24)
    data = load_dataset("fashion-mnist", 16, root=str(tmp_path))
    runs = []
    for settings in (LoaderSettings(workers=0), LoaderSettings(workers=2, prefetch=2)):
        torch.manual_seed(0)
        model = BinaryAutoencoder(code_dim=8, size="tiny", channels=1, image_size=16)
        runs.append(train_tokenizer(model, data.train, steps=7, lr=3e-3, batch_size=8, seed=0, log_every=7,
                                    loader=settings, flip=True))
    for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values()):
        assert torch.equal(a, b)

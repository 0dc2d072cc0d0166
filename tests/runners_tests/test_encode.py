"""runners/encode.py: the frozen tokenizer's cache for generator training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runners.data import LabelledTensors, load_dataset, stack
from runners.encode import encode_dataset, load_encoded, save_encoded, token_batch
from runners.tokenizers.bae import BinaryAutoencoder
from runners.tokenizers.vq import VQTokenizer
from runners.vocab import Vocabulary


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> LabelledTensors:
    images, labels = stack(load_dataset("digits", 16).train, limit=48)
    return LabelledTensors(images, labels)


def _bae() -> BinaryAutoencoder:
    torch.manual_seed(0)
    return BinaryAutoencoder(code_dim=8, size="tiny", channels=1, image_size=16).eval()


class _Plain(torch.utils.data.Dataset):
    """The same items without the TensorDataset fast path (the DataLoader route)."""

    def __init__(self, data: LabelledTensors) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.data[i]


def test_bae_cache_threshold_equals_direct_encoding(digits: LabelledTensors) -> None:
    model = _bae()
    encoded = encode_dataset(model, digits, batch_size=20)
    assert set(encoded) == {"logits", "labels"} and encoded["logits"].dtype == torch.float16
    assert encoded["logits"].shape == (48, 8, 4, 4) and torch.equal(encoded["labels"], digits.tensors[1])
    again = encode_dataset(model, _Plain(digits), batch_size=20)
    assert all(torch.equal(encoded[k], again[k]) for k in encoded)  # either data route
    other = encode_dataset(model, digits, batch_size=7)  # another batch size: equal up to float rounding
    assert torch.allclose(encoded["logits"].float(), other["logits"].float(), atol=1e-3)
    images = digits.tensors[0]
    for vocab in (Vocabulary(8, 1), Vocabulary(8, 2), Vocabulary(8, 8)):
        index = torch.arange(48)
        cached = token_batch(encoded, index, mode="threshold", vocab=vocab)
        with torch.no_grad():
            direct = model.encode_ids(images, mode="threshold", vocab=vocab)
        assert cached.shape == (48, 16, vocab.token_each) and torch.equal(cached, direct)
    every = token_batch(encoded, torch.arange(48), mode="threshold", vocab=Vocabulary(8, 2))
    picked = token_batch(encoded, torch.tensor([5, 0, 5]), mode="threshold", vocab=Vocabulary(8, 2))
    assert torch.equal(picked, every[[5, 0, 5]]) and picked.dtype == torch.int64


def test_bae_cache_bernoulli_draws(digits: LabelledTensors) -> None:
    model = _bae()
    encoded = encode_dataset(model, digits)
    vocab = Vocabulary(8, 2)
    index = torch.arange(4)
    draw = lambda seed: token_batch(encoded, index, mode="bernoulli", vocab=vocab,  # noqa: E731
                                    generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    # Fresh draws per call: 2000 draws of 4 images x 16 positions x 8 bits. The mean bit approaches the float32
    # probabilities of direct encoding (std of a mean <= 0.011; 512 of them stay within 0.06).
    generator = torch.Generator().manual_seed(0)
    total = torch.zeros(4, 16, 8)
    for _ in range(2000):
        total += vocab.ids_to_bits(token_batch(encoded, index, mode="bernoulli", vocab=vocab, generator=generator))
    with torch.no_grad():
        probs = model.encode_probs(digits.tensors[0][:4]).flatten(2).transpose(1, 2)  # (4, 16, 8)
    assert float((total / 2000 - probs).abs().max()) < 0.06
    assert float((total / 2000 - probs).abs().mean()) < 0.01
    assert float(((probs > 0.05) & (probs < 0.95)).float().mean()) > 0.5  # a test of real randomness, not 0/1
    # Same uniforms, float16 logits vs float32 probabilities: the bits differ only where u falls between them.
    with torch.no_grad():
        direct = model.encode_ids(digits.tensors[0], mode="bernoulli", vocab=Vocabulary(8, 8),
                                  generator=torch.Generator().manual_seed(9))
    cached = token_batch(encoded, torch.arange(48), mode="bernoulli", vocab=Vocabulary(8, 8),
                         generator=torch.Generator().manual_seed(9))
    assert float((cached != direct).float().mean()) < 1e-3


def test_save_load_round_trip_and_errors(digits: LabelledTensors, tmp_path: Path) -> None:
    encoded = encode_dataset(_bae(), digits)
    path = save_encoded(encoded, tmp_path / "cache")
    assert path.name == "encoded.safetensors"
    loaded = load_encoded(tmp_path / "cache")
    assert set(loaded) == set(encoded) and all(torch.equal(loaded[k], encoded[k]) for k in encoded)
    assert loaded["logits"].dtype == torch.float16
    with pytest.raises(FileNotFoundError, match="run encode_dataset and save_encoded first"):
        load_encoded(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="exactly one of logits, ids"):
        save_encoded({"labels": encoded["labels"]}, tmp_path / "bad")
    with pytest.raises(ValueError, match="vocab must be a Vocabulary with code_dim=8"):
        token_batch(encoded, torch.arange(2), mode="threshold", vocab=Vocabulary(4, 1))
    with pytest.raises(ValueError, match="mode must be one of bernoulli, threshold"):
        token_batch(encoded, torch.arange(2), mode="sample", vocab=Vocabulary(8, 1))  # type: ignore[arg-type]


def test_vq_cache_holds_ids(digits: LabelledTensors, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VQTokenizer(codebook_size=32, size="tiny", channels=1, image_size=16).eval()
    encoded = encode_dataset(model, digits, batch_size=16)
    assert set(encoded) == {"ids", "labels"} and encoded["ids"].shape == (48, 16)
    assert encoded["ids"].dtype == torch.int64
    save_encoded(encoded, tmp_path)
    loaded = load_encoded(tmp_path)
    index = torch.tensor([3, 1])
    for mode in ("threshold", "bernoulli"):
        ids = token_batch(loaded, index, mode=mode, vocab=None, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(ids, model.encode_ids(digits.tensors[0][index], mode="threshold", vocab=None))
    with pytest.raises(ValueError, match="vocab must be None for codebook ids"):
        token_batch(loaded, index, mode="threshold", vocab=Vocabulary(8, 1))

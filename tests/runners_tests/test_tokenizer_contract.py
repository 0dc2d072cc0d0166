"""One contract suite run over every TOKENIZERS entry (diffusers-style): what downstream code relies on.

A new tokenizer registers one line in TOKENIZERS and one tiny build here; the first test fails until it does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from runners.data import load_dataset, stack
from runners.tokenizers import TOKENIZERS, Tokenizer, vocabulary_for
from runners.train_tokenizer import reconstruction_metrics, train_tokenizer

IMAGE_SIZE, CHANNELS = 16, 1
# A tiny CPU build of every registered tokenizer, and how many sub-tokens per position its tests use.
TINY_KWARGS: dict[str, dict[str, object]] = {
    "bae": dict(code_dim=8, size="tiny", channels=CHANNELS, image_size=IMAGE_SIZE),
    "vq": dict(codebook_size=32, size="tiny", channels=CHANNELS, image_size=IMAGE_SIZE),
}
TOKEN_EACH: dict[str, int] = {"bae": 2, "vq": 1}
NAMES = sorted(TOKENIZERS)


pytestmark = pytest.mark.usefixtures("one_thread")


def _build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TOKENIZERS[name].build(**TINY_KWARGS[name])


def test_the_suite_covers_every_registered_tokenizer() -> None:
    assert NAMES == sorted(TINY_KWARGS) == sorted(TOKEN_EACH)
    assert len({entry.code_version for entry in TOKENIZERS.values()}) == len(TOKENIZERS)


@pytest.mark.parametrize("name", NAMES)
def test_builds_tiny_and_implements_the_interface(name: str) -> None:
    model = _build(name)
    assert isinstance(model, Tokenizer) and model.latent_kind in ("bits", "index")
    assert model.grid == (4, 4) and isinstance(model.last_layer, nn.Conv2d)
    assert TOKENIZERS[name].build(**model.init_kwargs).init_kwargs == model.init_kwargs
    out = model(torch.rand(2, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), generator=torch.Generator().manual_seed(0))
    assert out["recon"].shape == (2, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)  # unbounded: the losses read it as it is


@pytest.mark.parametrize("name", NAMES)
def test_token_round_trip_shapes_and_ranges(name: str) -> None:
    model = _build(name).eval()
    vocab = vocabulary_for(model, TOKEN_EACH[name])
    K, V = model.token_shape(vocab)
    assert K == TOKEN_EACH[name] and V >= 2
    images = torch.rand(3, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        ids = model.encode_ids(images, mode="threshold", vocab=vocab)
        again = model.encode_ids(images, mode="threshold", vocab=vocab)
        decoded = model.decode_ids(ids, vocab)
        drawn = [model.encode_ids(images, mode="bernoulli", vocab=vocab, generator=torch.Generator().manual_seed(s))
                 for s in (1, 1, 2)]
        random_ids = torch.randint(0, V, (5, 16, K), generator=torch.Generator().manual_seed(0))
        random_images = model.decode_ids(random_ids, vocab)
    assert ids.shape == (3, 16, K) and ids.dtype == torch.int64 and torch.equal(ids, again)
    assert int(ids.min()) >= 0 and int(ids.max()) < V
    assert decoded.shape == images.shape and float(decoded.min()) >= 0.0 and float(decoded.max()) <= 1.0
    with torch.no_grad():
        # tokens carry exactly what the eval forward decodes; images are its clamp to [0, 1]
        assert torch.equal(decoded, model(images)["recon"].clamp(0, 1))
    assert random_images.shape == (5, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    assert float(random_images.min()) >= 0.0 and float(random_images.max()) <= 1.0
    assert torch.equal(drawn[0], drawn[1])  # a seeded generator reproduces the draw
    assert torch.equal(drawn[0], drawn[2]) != model.stochastic_encoding  # fresh tokens only where stochastic
    with pytest.raises(ValueError, match="mode must be one of bernoulli, threshold"):
        model.encode_ids(images, mode="round", vocab=vocab)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_training_lowers_the_loss_and_returns_an_eval_ema(name: str) -> None:
    data = load_dataset("digits", IMAGE_SIZE)
    model = _build(name)
    logs: list[dict[str, float]] = []
    ema = train_tokenizer(model, data.train, steps=12, lr=3e-3, batch_size=16, seed=0, log_every=4,
                          on_log=lambda step, terms: logs.append(terms))
    assert len(logs) == 3 and logs[-1]["loss"] < logs[0]["loss"] and logs[-1]["l1"] < logs[0]["l1"]
    assert ema is not model and type(ema) is type(model)
    assert not ema.training and all(not p.requires_grad for p in ema.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(ema.state_dict().values(), model.state_dict().values()))
    heldout, _ = stack(data.heldout, limit=32)
    metrics = reconstruction_metrics(ema, heldout)
    assert {"psnr_db", "l1", "mean_image_psnr_db", "mean_image_l1"} <= set(metrics)
    assert ema.training is False  # metrics leave the mode as they found it


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_identical_outputs(name: str, tmp_path: Path) -> None:
    model = _build(name, seed=1)
    model.train()
    model(torch.rand(4, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), generator=torch.Generator().manual_seed(0))  # buffers move
    model.eval()
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    rebuilt = _build(name, seed=2)  # other random init, overwritten by the file
    rebuilt.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    rebuilt.eval()
    images = torch.rand(3, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    vocab = vocabulary_for(model, TOKEN_EACH[name])
    with torch.no_grad():
        assert torch.equal(model(images)["recon"], rebuilt(images)["recon"])
        ids = model.encode_ids(images, mode="threshold", vocab=vocab)
        assert torch.equal(ids, rebuilt.encode_ids(images, mode="threshold", vocab=vocab))
        assert torch.equal(model.decode_ids(ids, vocab), rebuilt.decode_ids(ids, vocab))

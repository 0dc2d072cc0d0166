"""runners/tokenizers/losses.py (LPIPS, patch-GAN, adaptive weight) and their use in train_tokenizer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from runners.data import load_dataset
from runners.tokenizers.bae import BinaryAutoencoder
from runners.tokenizers.losses import (PatchDiscriminator, PerceptualLoss, adaptive_gan_weight,
                                       convert_lpips_state_dict, hinge_d_loss, hinge_g_loss,
                                       patch_discriminator_layers, perceptual_state_keys, vgg16_features)
from runners.train_tokenizer import train_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LPIPS-VGG16 file in the documented format, made the documented way (convert_lpips_state_dict)."""
    torch.manual_seed(0)
    # torchvision's vgg16 state-dict keys (features + a stand-in classifier entry the converter must drop).
    with torch.device("meta"):
        shapes = {f"features.{k}": v.shape for k, v in vgg16_features().state_dict().items()}
    # He-scaled normal conv weights keep the random features' magnitudes sane through 13 layers.
    vgg_state = {k: torch.randn(shape) * (2.0 / math.prod(shape[1:])) ** 0.5 if k.endswith("weight")
                 else torch.zeros(shape) for k, shape in shapes.items()}
    vgg_state["classifier.0.weight"] = torch.zeros(2, 2)
    lin_state = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg16.safetensors"
    save_file(convert_lpips_state_dict(vgg_state, lin_state), str(path))
    return path


# --------------------------------------------------------------------------------------------------------- LPIPS


def test_perceptual_loss_from_a_local_file(weights_file: Path) -> None:
    loss = PerceptualLoss(str(weights_file))
    torch.manual_seed(1)
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    y = torch.rand(2, 1, 16, 16)
    assert loss(y, y).tolist() == [0.0, 0.0]  # identical images
    distance = loss(x, y)
    assert distance.shape == (2,) and bool((distance > 0).all())
    assert float(loss(x, x.detach().flip(-1)).sum()) > 0  # not blind to a mirrored image
    distance.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # gradients reach the images
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())  # the network is frozen
    assert not loss.train().training  # never leaves eval mode
    rgb = torch.rand(1, 3, 16, 16)
    assert float(loss(rgb, rgb)) == 0.0 and float(loss(rgb, torch.rand(1, 3, 16, 16))) > 0
    assert set(perceptual_state_keys()) == {f"lin{i}.weight" for i in range(5)} | {
        f"features.{i}.{n}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28) for n in ("weight", "bias")}


def test_perceptual_loss_reads_a_torch_file_too(weights_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(weights_file))
    torch.save(state, tmp_path / "lpips.pt")
    x, y = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    assert torch.equal(PerceptualLoss(str(tmp_path / "lpips.pt"))(x, y), PerceptualLoss(str(weights_file))(x, y))
    del state["lin4.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"must hold exactly the LPIPS-VGG16 keys.*lacks \['lin4.weight'\]"):
        PerceptualLoss(str(tmp_path / "partial.pt"))
    state["lin4.weight"] = torch.zeros(1, 256, 1, 1)
    torch.save(state, tmp_path / "misshapen.pt")
    with pytest.raises(ValueError, match=r"perceptual_weights\['lin4.weight'\] must have shape \(1, 512, 1, 1\)"):
        PerceptualLoss(str(tmp_path / "misshapen.pt"))


def test_missing_weights_are_a_clear_error_never_a_download(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError, match=r"perceptual_weights must name an existing local file.*nowhere"
                                                r".*set perceptual_weight=0"):
        PerceptualLoss(str(missing))
    with pytest.raises(FileNotFoundError, match="perceptual_weights must name a local LPIPS-VGG16 weights file"):
        PerceptualLoss(None)
    data = load_dataset("digits", 16)
    with pytest.raises(FileNotFoundError, match="perceptual_weights=None"):
        train_tokenizer(_tiny(), data.train, steps=1, lr=1e-3, batch_size=4, seed=0, perceptual_weight=1.0)


def test_convert_lpips_state_dict_maps_the_official_keys() -> None:
    vgg = {f"features.{i}.{n}": torch.full((1,), float(i)) for i in range(31) for n in ("weight", "bias")}
    vgg["classifier.0.weight"] = torch.zeros(1)
    lin = {f"lin{i}.model.1.weight": torch.full((1, 1, 1, 1), 10.0 + i) for i in range(5)}
    state = convert_lpips_state_dict(vgg, lin)
    assert sorted(state) == sorted(perceptual_state_keys())
    assert float(state["features.28.bias"]) == 28.0 and float(state["lin3.weight"]) == 13.0


# ----------------------------------------------------------------------------------------------------------- GAN


def test_hinge_losses_literal() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = [0, 0.5, 2], mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = [0, 1, 2], mean 1
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (5 / 6 + 1))  # 0.916667
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.9166667)
    assert float(hinge_g_loss(fake)) == pytest.approx(1 / 3)
    assert float(hinge_d_loss(torch.tensor([1.5]), torch.tensor([-3.0]))) == 0.0  # both margins met


def test_adaptive_weight_literal() -> None:
    w = torch.tensor([1.0, 2.0], requires_grad=True)  # stands in for the decoder's last conv weight
    rec = 3.0 * w.sum()  # grad [3, 3], norm 4.2426407
    gan = w[0] * 1.0  # grad [1, 0], norm 1
    weight = adaptive_gan_weight(rec, gan, w, disc_weight=0.5, max_weight=1e4)  # taming's clamp
    assert float(weight) == pytest.approx(2.1211082, rel=1e-6)  # 0.5 * 4.2426407 / (1 + 1e-4)
    assert not weight.requires_grad
    # The authors' default: clamp at 1 (disc_weight_max), then times the factor.
    assert float(adaptive_gan_weight(rec, gan, w, disc_weight=1.0)) == 1.0  # 4.2422 clamped to 1
    assert float(adaptive_gan_weight(rec, gan, w, disc_weight=0.5)) == 0.5
    assert float(adaptive_gan_weight(0.1 * w.sum(), gan, w, disc_weight=1.0)) == pytest.approx(0.1414072, rel=1e-5)
    flat = adaptive_gan_weight(3.0 * w.sum(), 0.0 * w.sum(), w, disc_weight=1.0, max_weight=1e4)
    assert float(flat) == 1e4  # 4.24 / 1e-4 = 42426 clamped to 1e4
    rec.backward()  # the graphs were retained for the real backward pass
    assert w.grad.tolist() == [3.0, 3.0]


def test_patch_discriminator_shapes_and_init() -> None:
    assert [patch_discriminator_layers(s) for s in (8, 16, 32, 256)] == [1, 2, 3, 3]
    with pytest.raises(ValueError, match="image_size must be >= 8"):
        patch_discriminator_layers(4)
    def make(seed: int, **init: str) -> PatchDiscriminator:
        return PatchDiscriminator(1, width=8, layers=2, generator=torch.Generator().manual_seed(seed), **init)

    a, b = make(0), make(0)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert a(torch.rand(3, 1, 16, 16)).shape == (3, 1, 2, 2)  # one logit per patch
    # The authors' (PyTorch's default) init: U(+-1/sqrt(fan_in)), first conv fan_in 1 * 4 * 4 = 16 -> 0.25;
    # BatchNorm weights 1.
    first = a.net[0]
    assert float(first.weight.abs().max()) <= 0.25 and float(first.weight.abs().max()) > 0.2
    assert float(first.bias.abs().max()) <= 0.25 and float(first.bias.abs().sum()) > 0
    assert float(a.net[3].weight.min()) == float(a.net[3].weight.max()) == 1.0
    taming_init = make(0, init="taming")
    first = taming_init.net[0]
    assert float(first.bias.abs().sum()) == 0.0 and abs(float(first.weight.std()) - 0.02) < 0.01
    with pytest.raises(ValueError, match="init must be one of default, taming"):
        make(0, init="xavier")
    with torch.device("meta"):
        taming = PatchDiscriminator(3)  # taming's default: width 64, 3 layers, 256 px -> 30x30 patches
        assert taming(torch.empty(1, 3, 256, 256)).shape == (1, 1, 30, 30)
        assert PatchDiscriminator.output_side(256, 3) == 30
    # conv 3->64 (+bias) 3136; 64->128 131072 + BN 256; 128->256 524288 + BN 512; 256->512 2097152 + BN 1024;
    # 512->1 (+bias) 8193: the convs before a BatchNorm have no bias, as taming's.
    assert sum(p.numel() for p in taming.parameters()) == 2_765_633


# ------------------------------------------------------------------------------------------------ in the training loop


def _tiny() -> BinaryAutoencoder:
    torch.manual_seed(0)
    return BinaryAutoencoder(code_dim=8, size="tiny", channels=1, image_size=16)


def test_train_tokenizer_with_lpips_and_gan(weights_file: Path) -> None:
    data = load_dataset("digits", 16)
    common = dict(steps=4, lr=3e-3, batch_size=8, seed=0, log_every=1)
    extra = dict(perceptual_weight=1.0, perceptual_weights=str(weights_file), gan_weight=0.5, gan_start=3,
                 disc_width=8)
    runs = []
    for _ in range(2):
        logs: list[tuple[int, dict[str, float]]] = []
        ema = train_tokenizer(_tiny(), data.train, **common, **extra,  # type: ignore[arg-type]
                              on_log=lambda step, terms: logs.append((step, terms)))
        runs.append((ema, logs))
    (ema, logs), (again, _) = runs
    assert all(torch.equal(p, q) for p, q in zip(ema.state_dict().values(), again.state_dict().values()))
    assert set(logs[0][1]) == {"loss", "l1", "bit_usage_penalty", "perceptual"}  # GAN off before gan_start
    # As the authors': the autoencoder's GAN term from gan_start, the discriminator's training from the step after.
    assert set(logs[2][1]) == {"loss", "l1", "bit_usage_penalty", "perceptual", "gan_g", "gan_weight"}
    assert set(logs[3][1]) == {"loss", "l1", "bit_usage_penalty", "perceptual", "gan_g", "gan_weight", "gan_d"}
    assert all(math.isfinite(v) for _, terms in logs for v in terms.values())
    assert 0 < logs[2][1]["gan_weight"] <= 0.5  # adaptive weight clamped to 1, times gan_weight 0.5

    # Before gan_start the run is exactly the run without a GAN (the discriminator does not touch the autoencoder).
    with_gan = train_tokenizer(_tiny(), data.train, **{**common, "steps": 2},  # type: ignore[arg-type]
                               gan_weight=0.5, gan_start=3, disc_width=8)
    without = train_tokenizer(_tiny(), data.train, **{**common, "steps": 2})  # type: ignore[arg-type]
    assert all(torch.equal(p, q) for p, q in zip(with_gan.state_dict().values(), without.state_dict().values()))


def test_authors_lpips_reads_unit_range_images(weights_file: Path) -> None:
    # to_signed=False feeds the [0, 1] images to LPIPS' shift/scale as they are (the authors' BAE training):
    # it equals the signed LPIPS of (x + 1) / 2, which that maps back to x.
    theirs, signed = PerceptualLoss(str(weights_file), to_signed=False), PerceptualLoss(str(weights_file))
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert torch.allclose(theirs(x, y), signed((x + 1) / 2, (y + 1) / 2), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(theirs(x, y), signed(x, y), rtol=1e-3)


def test_train_tokenizer_uses_the_authors_lpips_and_ema(weights_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runners.train_tokenizer as loop

    made: list[PerceptualLoss] = []

    class Recording(PerceptualLoss):
        def __init__(self, path: str | None, to_signed: bool = True) -> None:
            super().__init__(path, to_signed)
            made.append(self)

    monkeypatch.setattr(loop, "PerceptualLoss", Recording)
    data = load_dataset("digits", 16)
    common = dict(lr=3e-3, batch_size=8, seed=0)
    train_tokenizer(_tiny(), data.train, steps=1, perceptual_weight=1.0, perceptual_weights=str(weights_file),
                    **common)  # type: ignore[arg-type]
    assert len(made) == 1 and made[0].to_signed is False
    assert loop.EMA_DECAY == 0.995 and loop.EMA_EVERY == 10 and loop.ADAMW_BETAS == loop.DISC_BETAS == (0.9, 0.999)

    # EMA every 10 steps and after the last: 3 steps -> one update (t = 1, decay min(0.995, 2 / 11)) after step 3.
    init = _tiny()
    trained = _tiny()
    ema = train_tokenizer(trained, data.train, steps=3, **common)  # type: ignore[arg-type]
    for name, value in ema.state_dict().items():
        expected = init.state_dict()[name] * (2 / 11) + trained.state_dict()[name] * (9 / 11)
        assert torch.allclose(value, expected, atol=1e-6), name
    every_step = train_tokenizer(_tiny(), data.train, steps=3, ema_every=1, **common)  # type: ignore[arg-type]
    assert any(not torch.equal(a, b) for a, b in zip(ema.state_dict().values(), every_step.state_dict().values()))

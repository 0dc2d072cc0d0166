"""Tokenizer losses beyond L1: LPIPS perceptual loss and the adaptively weighted hinge patch-GAN (taming VQGAN).

ELM trains its tokenizers with L1 + LPIPS + an adaptively weighted hinge GAN (ELM.md "Tokenizers"). The GAN term
of the autoencoder is -mean(D(recon)), scaled by

    adaptive weight = ||d rec / d w|| / (||d gan / d w|| + 1e-4), clamped to [0, max_weight], detached, times
                      disc_weight,

with w the decoder's last conv weight and rec the reconstruction (+ perceptual) loss: the GAN gradient is
rescaled to the size of the reconstruction gradient where both reach the image. The authors' BAE recipe
(bae/binaryae.py, utils/vqgan_utils.py) clamps at max_weight = 1 (their disc_weight_max) and multiplies by 1;
taming's VQGAN clamps at 1e4 and multiplies by its disc_weight (0.5 or 0.8). It is off (0) before `gan_start`.

LPIPS weights are never downloaded: `PerceptualLoss(path)` reads a local file (see `PerceptualLoss` for its
format and how to make one offline from the official lpips package's weights).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# torchvision vgg16().features: the ReLU outputs LPIPS reads (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) end
# after these indices of the features Sequential, with these channel counts.
VGG_SLICE_ENDS: tuple[int, ...] = (4, 9, 16, 23, 30)
VGG_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
VGG_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# LPIPS' ScalingLayer: inputs in [-1, 1] are shifted and scaled to what the ImageNet VGG expects.
LPIPS_SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
LPIPS_SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)
ADAPTIVE_WEIGHT_EPS = 1e-4
ADAPTIVE_WEIGHT_MAX = 1.0  # the authors' disc_weight_max (hparams/defaults/binarygan_default.py); taming: 1e4


def vgg16_features() -> nn.Sequential:
    """torchvision's `vgg16(weights=None).features` (13 convs, 5 max-pools; same module indices), randomly
    initialised, built without the 124M-parameter classifier that LPIPS never uses. Never downloads."""
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["D"], batch_norm=False)


def perceptual_state_keys() -> list[str]:
    """The exact keys (and only those) a perceptual weights file must hold."""
    keys = [f"features.{i}.{name}" for i in VGG_CONV_INDICES for name in ("weight", "bias")]
    return keys + [f"lin{i}.weight" for i in range(len(VGG_CHANNELS))]


def convert_lpips_state_dict(vgg16_state: Mapping[str, Tensor],
                             lpips_lin_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official weights -> the state dict `PerceptualLoss` reads (pure; run it offline, once).

    Args:
        vgg16_state: torchvision's ImageNet VGG16 state dict (vgg16-397923af.pth, keys "features.N.weight" ...).
        lpips_lin_state: the lpips package's linear heads (lpips/weights/v0.1/vgg.pth, keys
            "lin0.model.1.weight" .. "lin4.model.1.weight", each (1, channels, 1, 1)).
    """
    state = {f"features.{i}.{name}": vgg16_state[f"features.{i}.{name}"]
             for i in VGG_CONV_INDICES for name in ("weight", "bias")}
    for i in range(len(VGG_CHANNELS)):
        state[f"lin{i}.weight"] = lpips_lin_state[f"lin{i}.model.1.weight"]
    return {key: value.detach().float().contiguous() for key, value in state.items()}


def _load_state(path: str | None) -> dict[str, Tensor]:
    if path is None:
        raise FileNotFoundError(
            "perceptual_weights must name a local LPIPS-VGG16 weights file when the perceptual loss is on, but got "
            "perceptual_weights=None; make one offline with runners.tokenizers.losses.convert_lpips_state_dict "
            "(see PerceptualLoss) or set perceptual_weight=0"
        )
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"perceptual_weights must name an existing local file (weights are never downloaded), but got "
            f"perceptual_weights={str(path)!r}, which does not exist; copy the LPIPS-VGG16 weights there (see "
            f"PerceptualLoss for the format) or set perceptual_weight=0"
        )
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(file)))
    state = torch.load(str(file), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"perceptual_weights must hold a state dict, but {str(path)!r} holds a {type(state).__name__}")
    return state


def check_perceptual_weights(path: str | None, sha256: str) -> None:
    """Raise if the file at `path` is not the one the stage was planned with (the sha256 in its key).

    A missing file passes here: `PerceptualLoss` names it with the fix.
    """
    from space.schema import file_sha256

    if path is None or not Path(path).is_file():
        return
    digest = file_sha256(path)
    if digest != sha256:
        raise ValueError(
            f"perceptual_weights must be the file the sweep was planned with (sha256 {sha256[:12]}...), but "
            f"{str(path)!r} now has sha256 {digest[:12]}...; restore that file, or run the sweep again to plan "
            f"tokenizers with the new one (new keys)"
        )


class PerceptualLoss(nn.Module):
    """LPIPS (Zhang et al. 2018, "vgg" v0.1): a frozen VGG16 and five learned 1x1 heads. (x, y) -> (B,) distances.

    d(x, y) = sum_l mean_{h,w} sum_c w_l,c (f_l(x) - f_l(y))_c^2, f_l = VGG16 relu{1_2,2_2,3_3,4_3,5_3} features
    unit-normalised over channels; inputs in [0, 1] are mapped to [-1, 1] (LPIPS' convention; `to_signed=False`
    skips it, as the authors' BAE training does: their LPIPS gets the [0, 1] images as they are), then LPIPS'
    shift/scale; grey images are repeated to 3 channels. 0 for identical images.

    Weights file (`path`): a `.safetensors` file, or a torch `.pt`/`.pth` state dict, holding exactly the keys of
    `perceptual_state_keys()`: "features.{i}.weight/bias" for the 13 convs of torchvision's `vgg16().features`
    (i in 0, 2, 5, ..., 28; torchvision's ImageNet weights) and "lin{0..4}.weight" of shape (1, 64|128|256|512|512,
    1, 1) (the lpips package's vgg v0.1 heads). To make one offline, on a machine that has both files:

        vgg = torch.load("vgg16-397923af.pth")                  # torchvision's cache, ~528 MB
        lin = torch.load("<site-packages>/lpips/weights/v0.1/vgg.pth")
        safetensors.torch.save_file(convert_lpips_state_dict(vgg, lin), "lpips_vgg16.safetensors")

    The module is frozen (no gradients to its weights) and always in eval mode; gradients flow to the inputs.
    """

    def __init__(self, path: str | None, to_signed: bool = True):
        super().__init__()
        self.to_signed = to_signed
        state = _load_state(path)
        expected = perceptual_state_keys()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"perceptual_weights must hold exactly the LPIPS-VGG16 keys, but {str(path)!r} lacks "
                             f"{missing[:4]}{'...' if len(missing) > 4 else ''} and has extra "
                             f"{unexpected[:4]}{'...' if len(unexpected) > 4 else ''}; make the file with "
                             f"convert_lpips_state_dict")
        with torch.device("meta"):  # shapes only: the file supplies every weight (no random init to pay for)
            self.features = vgg16_features()[: VGG_SLICE_ENDS[-1]]  # up to relu5_3 (the last maxpool is unused)
            self.lin = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in VGG_CHANNELS)
        renamed = {k.replace("lin", "lin.", 1) if k.startswith("lin") else k: v.float() for k, v in state.items()}
        for (key, value), name in zip(state.items(), renamed):
            expected_shape = self.get_parameter(name).shape
            if value.shape != expected_shape:
                raise ValueError(f"perceptual_weights[{key!r}] must have shape {tuple(expected_shape)}, but got "
                                 f"{tuple(value.shape)} in {str(path)!r}; make the file with convert_lpips_state_dict")
        self.load_state_dict(renamed, assign=True)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).reshape(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # frozen network: never dropout / batch statistics

    def _features(self, images: Tensor) -> list[Tensor]:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # grey -> RGB
        if self.to_signed:
            images = 2.0 * images - 1.0
        h = (images - self.shift) / self.scale  # (B, 3, H, W)
        out, start = [], 0
        for end in VGG_SLICE_ENDS:
            h = self.features[start:end](h)
            out.append(h)
            start = end
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Images x, y (B, C, H, W) in [0, 1], C in {1, 3} -> LPIPS distance per image (B,)."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"x and y must be (B, C, H, W) with C 1 or 3 and equal shapes, but got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        total = x.new_zeros(x.shape[0])
        for fx, fy, lin in zip(self._features(x), self._features(y), self.lin):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit norm over channels, as lpips
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((fx - fy) ** 2).mean(dim=(1, 2, 3))  # (B,)
        return total


# ---------------------------------------------------------------------------------------------------------- GAN


def patch_discriminator_layers(image_size: int, max_layers: int = 3) -> int:
    """Most stride-2 layers (<= max_layers, taming uses 3) whose patch-logit map is still >= 1x1 for `image_size`."""
    layers = max_layers
    while layers > 0 and PatchDiscriminator.output_side(image_size, layers) < 1:
        layers -= 1
    if layers == 0:
        raise ValueError(f"image_size must be >= 8 for a patch discriminator, but got image_size={image_size}")
    return layers


class PatchDiscriminator(nn.Module):
    """taming's NLayerDiscriminator (pix2pix PatchGAN): images (B, C, H, W) -> patch logits (B, 1, h', w').

    conv4 s2 -> LeakyReLU(0.2), then `layers - 1` x [conv4 s2, BatchNorm, LeakyReLU], one [conv4 s1, BatchNorm,
    LeakyReLU], and a conv4 s1 to one logit per patch. Widths width * min(2^n, 8). Weights drawn from `generator`
    (global RNG if None), init "default": PyTorch's own layer init (conv weights and biases U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), BatchNorm 1 and 0), which the authors' BAE training keeps (their BinaryGAN applies no init
    function); "taming": taming's weights_init, conv weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0.
    """

    def __init__(self, channels: int, *, width: int = 64, layers: int = 3, generator: torch.Generator | None = None,
                 init: str = "default"):
        super().__init__()
        if width < 1 or layers < 1:
            raise ValueError(f"width and layers must be >= 1, but got width={width}, layers={layers}")
        if init not in ("default", "taming"):
            raise ValueError(f"init must be one of default, taming, but got init={init!r}")
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        multiplier = 1
        for n in range(1, layers + 1):
            previous, multiplier = multiplier, min(2**n, 8)
            stride = 2 if n < layers else 1
            blocks += [nn.Conv2d(width * previous, width * multiplier, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(width * multiplier), nn.LeakyReLU(0.2)]
        blocks.append(nn.Conv2d(width * multiplier, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)
        self.layers = layers
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and init == "default":
                # nn.Conv2d.reset_parameters, with the generator: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
                bound = 1.0 / math.sqrt(module.weight[0].numel())
                nn.init.uniform_(module.weight, -bound, bound, generator=generator)
                if module.bias is not None:
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
            elif isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                if init == "taming":
                    nn.init.normal_(module.weight, 1.0, 0.02, generator=generator)
                else:
                    nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def output_side(image_size: int, layers: int) -> int:
        """Side of the patch-logit map for a square input of `image_size`."""
        side = image_size
        for _ in range(layers):
            side = (side + 2 - 4) // 2 + 1  # conv4 s2 p1
        return side - 2  # two conv4 s1 p1: each loses one pixel

    def forward(self, images: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 1, h', w')
        return self.net(images)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss: 0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator (autoencoder) side of the hinge GAN: -mean D(fake)."""
    return -logits_fake.mean()


def adaptive_gan_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer_weight: Tensor, disc_weight: float,
                        max_weight: float = ADAPTIVE_WEIGHT_MAX) -> Tensor:
    """||d rec_loss / d w|| / (||d gan_loss / d w|| + 1e-4), clamped to [0, max_weight], detached, times disc_weight.

    w = the decoder's last conv weight. Both losses must still have their graphs (they are retained for the
    backward pass that follows).
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer_weight, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + ADAPTIVE_WEIGHT_EPS)
    return weight.clamp(0.0, max_weight).detach() * disc_weight

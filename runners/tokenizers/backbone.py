"""The convolutional encoder/decoder shared by the image tokenizers (taming-transformers VQGAN family, in the
form the ELM authors' binary autoencoder uses it).

Encoder (`blocks`, run in order):
    conv3x3 -> per level i [res_blocks x (res block, + self-attention at the listed resolutions), stride-2
    downsample except at the last level] -> res, attention, res -> GroupNorm -> conv3x3 to `out_channels`
Decoder (`blocks`, run in order):
    [GroupNorm of the input if norm_first] -> conv3x3 -> res, attention, res -> per level, last first,
    [res_blocks x (res block, + attention), 2x nearest upsample + conv except at level 0] -> GroupNorm -> conv3x3

There is no activation between the last GroupNorm and the last conv of either half, and none after the
decoder: its output is unbounded (images are clamped to [0, 1] only where they are made, `decode_ids`).

Parameter names equal the authors' (`blocks.<i>.norm1`, `.conv1`, `.q`, `.proj_out`, ...), so their tensors load
by name. One difference in layout: their res blocks always own a 1x1 `conv_out` shortcut, also where the width
does not change and it is never used; ours own it only where it is used. A tokenizer puts its quantiser between
the two halves (BAE: bits; VQ: a codebook). Sizes live in `BACKBONE_SIZES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class BackboneConfig:
    """Shape of a taming-style conv encoder/decoder pair."""

    base_channels: int
    """Channels of the first level (taming `ch`, the authors' `nf`)."""
    channel_multipliers: tuple[int, ...]
    """Channels of level i are base_channels * channel_multipliers[i]; len - 1 stride-2 steps."""
    res_blocks: int
    """Residual blocks per level, in the encoder and in the decoder alike."""
    attention_resolutions: tuple[int, ...]
    """Feature-map sizes (pixels, absolute) at which a level adds self-attention after each res block."""
    latent_width: int
    """Channels of the encoder's output and the decoder's input (the authors' `emb_dim`)."""
    norm_groups: int = 32
    """GroupNorm groups; must divide every level's channel count and latent_width."""

    @property
    def downsample(self) -> int:
        """Image side / latent side."""
        return 2 ** (len(self.channel_multipliers) - 1)


# Parameter counts are for the BAE built on them (code_dim 8, 1 channel for tiny/small; code_dim 24, RGB for imagenet).
BACKBONE_SIZES: dict[str, BackboneConfig] = {
    # CPU rung: 16x16 digits -> 4x4 latent, widths 8/16/32, one res block per level. 0.16M parameters.
    "tiny": BackboneConfig(base_channels=8, channel_multipliers=(1, 2, 4), res_blocks=1,
                           attention_resolutions=(), latent_width=32, norm_groups=4),
    # CPU, a bit bigger: widths 32/64/64, 2 res blocks, attention at the 4x4 level of 16x16 inputs, 32 GroupNorm
    # groups as the authors' (the imagenet rung with fewer, narrower levels). 1.26M parameters.
    "small": BackboneConfig(base_channels=32, channel_multipliers=(1, 2, 2), res_blocks=2,
                            attention_resolutions=(4,), latent_width=64, norm_groups=32),
    # The paper's (the authors' hparams for 256 px): 256 px -> 16x16 latent, widths 128/128/256/256/512, 2 res
    # blocks per level, attention at 16x16, latent width 256. 63,033,755 parameters at D = 24 (encoder 29.3M,
    # decoder 33.7M), as the authors' used ones; their module holds 65,530,654: 2,496,899 more in never-used
    # tensors (see released.py).
    "imagenet": BackboneConfig(base_channels=128, channel_multipliers=(1, 1, 2, 2, 4), res_blocks=2,
                               attention_resolutions=(16,), latent_width=256, norm_groups=32),
}


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus the input (through a 1x1 `conv_out` if the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_out = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.conv_out is None else self.conv_out(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of a feature map, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).reshape(B, C, H * W).transpose(1, 2) for conv in (self.q, self.k, self.v))  # (B, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C), softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Stride-2 3x3 conv with taming's asymmetric (right/bottom) zero padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def check_backbone(config: BackboneConfig, image_size: int) -> None:
    """Raise ValueError if `image_size` does not fit `config` (divisibility, GroupNorm groups)."""
    if image_size <= 0 or image_size % config.downsample != 0:
        raise ValueError(
            f"image_size must be a positive multiple of the tokenizer's downsampling factor ({config.downsample}), "
            f"but got image_size={image_size}; try {max(1, image_size // config.downsample) * config.downsample}"
        )
    widths = [config.base_channels * m for m in config.channel_multipliers] + [config.base_channels]
    for width in widths + [config.latent_width]:
        if width % config.norm_groups != 0:
            raise ValueError(f"norm_groups must divide every level's channels, but got norm_groups="
                             f"{config.norm_groups} and a level of {width} channels; pick a divisor of {width}")


def _middle(channels: int, groups: int) -> list[nn.Module]:
    """res, attention, res at the latent resolution (the authors' "non-local" block; in every rung)."""
    return [ResnetBlock(channels, channels, groups), AttentionBlock(channels, groups),
            ResnetBlock(channels, channels, groups)]


class Encoder(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> features (B, out_channels, H/f, W/f) with f = config.downsample."""

    def __init__(self, config: BackboneConfig, in_channels: int, image_size: int, out_channels: int | None = None):
        super().__init__()
        check_backbone(config, image_size)
        groups, widths = config.norm_groups, [config.base_channels * m for m in config.channel_multipliers]
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, config.base_channels, 3, padding=1)]
        width, resolution = config.base_channels, image_size
        for i, out_width in enumerate(widths):
            for _ in range(config.res_blocks):
                blocks.append(ResnetBlock(width, out_width, groups))
                width = out_width
                if resolution in config.attention_resolutions:
                    blocks.append(AttentionBlock(width, groups))
            if i != len(widths) - 1:
                blocks.append(Downsample(width))
                resolution //= 2
        blocks += _middle(width, groups)
        blocks += [_norm(width, groups), nn.Conv2d(width, out_channels or config.latent_width, 3, padding=1)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, images: Tensor) -> Tensor:
        h = images
        for block in self.blocks:
            h = block(h)
        return h  # (B, out_channels, h, w)


class Decoder(nn.Module):
    """Features (B, in_channels, h, w) -> images (B, C, h*f, w*f), unbounded (clamp to [0, 1] to make images).

    norm_first: a GroupNorm on the input before the first conv (the authors' `norm_first`, on in every ELM
    script; it makes the decoder blind to the scale of the learned bit embedding).
    """

    def __init__(self, config: BackboneConfig, out_channels: int, image_size: int, in_channels: int | None = None,
                 norm_first: bool = False):
        super().__init__()
        check_backbone(config, image_size)
        groups, widths = config.norm_groups, [config.base_channels * m for m in config.channel_multipliers]
        in_channels = in_channels or config.latent_width
        width, resolution = widths[-1], image_size // config.downsample
        blocks: list[nn.Module] = [_norm(in_channels, groups)] if norm_first else []
        blocks.append(nn.Conv2d(in_channels, width, 3, padding=1))
        blocks += _middle(width, groups)
        for i in reversed(range(len(widths))):
            for _ in range(config.res_blocks):
                blocks.append(ResnetBlock(width, widths[i], groups))
                width = widths[i]
                if resolution in config.attention_resolutions:
                    blocks.append(AttentionBlock(width, groups))
            if i != 0:
                blocks.append(Upsample(width))
                resolution *= 2
        blocks += [_norm(width, groups), nn.Conv2d(width, out_channels, 3, padding=1)]
        self.blocks = nn.ModuleList(blocks)
        self.norm_first = norm_first

    @property
    def last_layer(self) -> nn.Conv2d:
        """The final conv: where an adaptive GAN weight reads its gradient norms (taming's `last_layer`)."""
        last = self.blocks[-1]
        assert isinstance(last, nn.Conv2d)
        return last

    def forward(self, latent: Tensor) -> Tensor:
        h = latent
        for block in self.blocks:
            h = block(h)
        return h  # (B, C, H, W), unbounded


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on the meta device too)."""
    return sum(math.prod(p.shape) for p in module.parameters())

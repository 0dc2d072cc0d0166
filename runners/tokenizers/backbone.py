"""The convolutional encoder/decoder shared by the image tokenizers (taming-transformers VQGAN family).

Encoder: conv_in -> per level [res blocks (+ self-attention at the listed resolutions), stride-2 downsample
except at the last level] -> mid [res, attention, res] -> GroupNorm, SiLU, conv_out to `latent_width` channels.
Decoder: the mirror image, with one extra res block per level and nearest-neighbour 2x upsampling + conv.
A tokenizer puts its quantiser between the two (BAE: bits; VQ: a codebook) and maps its code to and from the
`latent_width` channels with 1x1 convolutions.

Sizes live in `BACKBONE_SIZES`; the tokenizers index their own ladders into it.
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
    """Channels of the first level (taming `ch`)."""
    channel_multipliers: tuple[int, ...]
    """Channels of level i are base_channels * channel_multipliers[i]; len - 1 stride-2 steps."""
    res_blocks: int
    """Residual blocks per encoder level (the decoder uses res_blocks + 1, as in taming)."""
    attention_resolutions: tuple[int, ...]
    """Feature-map sizes (pixels, absolute) at which a level adds self-attention after each res block."""
    latent_width: int
    """Channels at the latent grid, before the tokenizer's own 1x1 map to its code (taming `z_channels`)."""
    norm_groups: int = 32
    """GroupNorm groups; must divide every level's channel count."""
    mid_attention: bool = True
    """Self-attention between the two res blocks of the middle (latent-resolution) block, as in taming."""

    @property
    def downsample(self) -> int:
        """Image side / latent side."""
        return 2 ** (len(self.channel_multipliers) - 1)


# Parameter counts are for the BAE built on them (code_dim 8, 1 channel for tiny/small; code_dim 24, RGB for imagenet).
BACKBONE_SIZES: dict[str, BackboneConfig] = {
    # CPU rung: 16x16 digits -> 4x4 latent, widths 8/16/32. ~0.19M parameters; ~0.1 s per step of 32 on one core.
    "tiny": BackboneConfig(base_channels=8, channel_multipliers=(1, 2, 4), res_blocks=1,
                           attention_resolutions=(), latent_width=32, norm_groups=4),
    # CPU, a bit bigger: widths 32/64/64, 2 res blocks, attention at the 4x4 level of 16x16 inputs. ~1.4M parameters.
    "small": BackboneConfig(base_channels=32, channel_multipliers=(1, 2, 2), res_blocks=2,
                            attention_resolutions=(4,), latent_width=64, norm_groups=8),
    # The paper's (ELM "Tokenizers", taming f16): 256 px -> 16x16 latent, attention at 16x16. 71.8M parameters
    # (encoder 29.3M, decoder 42.4M, as taming's f16 VQGAN).
    "imagenet": BackboneConfig(base_channels=128, channel_multipliers=(1, 1, 2, 2, 4), res_blocks=2,
                               attention_resolutions=(16,), latent_width=256, norm_groups=32),
}


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a (1x1 if the width changes) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of a feature map, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)  # 3 x (B, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C), softmax(q k^T / sqrt(C)) v
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


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


def _level(blocks: list[nn.Module]) -> nn.Sequential:
    return nn.Sequential(*blocks)


def _mid(channels: int, config: BackboneConfig) -> nn.Sequential:
    attention: nn.Module = AttentionBlock(channels, config.norm_groups) if config.mid_attention else nn.Identity()
    return nn.Sequential(ResnetBlock(channels, channels, config.norm_groups), attention,
                         ResnetBlock(channels, channels, config.norm_groups))


def check_backbone(config: BackboneConfig, image_size: int) -> None:
    """Raise ValueError if `image_size` does not fit `config` (divisibility, GroupNorm groups)."""
    if image_size <= 0 or image_size % config.downsample != 0:
        raise ValueError(
            f"image_size must be a positive multiple of the tokenizer's downsampling factor ({config.downsample}), "
            f"but got image_size={image_size}; try {max(1, image_size // config.downsample) * config.downsample}"
        )
    for width in [config.base_channels * m for m in config.channel_multipliers] + [config.base_channels]:
        if width % config.norm_groups != 0:
            raise ValueError(f"norm_groups must divide every level's channels, but got norm_groups="
                             f"{config.norm_groups} and a level of {width} channels; pick a divisor of {width}")


class Encoder(nn.Module):
    """Images (B, C, H, W) -> features (B, latent_width, H/f, W/f) with f = config.downsample."""

    def __init__(self, config: BackboneConfig, in_channels: int, image_size: int):
        super().__init__()
        check_backbone(config, image_size)
        groups, widths = config.norm_groups, [config.base_channels * m for m in config.channel_multipliers]
        self.conv_in = nn.Conv2d(in_channels, config.base_channels, 3, padding=1)
        levels: list[nn.Module] = []
        width, resolution = config.base_channels, image_size
        for i, out_width in enumerate(widths):
            blocks: list[nn.Module] = []
            for _ in range(config.res_blocks):
                blocks.append(ResnetBlock(width, out_width, groups))
                width = out_width
                if resolution in config.attention_resolutions:
                    blocks.append(AttentionBlock(width, groups))
            if i != len(widths) - 1:
                blocks.append(Downsample(width))
                resolution //= 2
            levels.append(_level(blocks))
        self.levels = nn.Sequential(*levels)
        self.mid = _mid(width, config)
        self.norm_out = _norm(width, groups)
        self.conv_out = nn.Conv2d(width, config.latent_width, 3, padding=1)

    def forward(self, images: Tensor) -> Tensor:
        h = self.mid(self.levels(self.conv_in(images)))  # (B, widths[-1], h, w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, latent_width, h, w)


class Decoder(nn.Module):
    """Features (B, latent_width, h, w) -> pre-activation images (B, C, h*f, w*f); the tokenizer maps them to [0, 1]."""

    def __init__(self, config: BackboneConfig, out_channels: int, image_size: int):
        super().__init__()
        check_backbone(config, image_size)
        groups, widths = config.norm_groups, [config.base_channels * m for m in config.channel_multipliers]
        width, resolution = widths[-1], image_size // config.downsample
        self.conv_in = nn.Conv2d(config.latent_width, width, 3, padding=1)
        self.mid = _mid(width, config)
        levels: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            blocks: list[nn.Module] = []
            for _ in range(config.res_blocks + 1):
                blocks.append(ResnetBlock(width, widths[i], groups))
                width = widths[i]
                if resolution in config.attention_resolutions:
                    blocks.append(AttentionBlock(width, groups))
            if i != 0:
                blocks.append(Upsample(width))
                resolution *= 2
            levels.append(_level(blocks))
        self.levels = nn.Sequential(*levels)
        self.norm_out = _norm(width, groups)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    @property
    def last_layer(self) -> nn.Conv2d:
        """The final conv: where an adaptive GAN weight reads its gradient norms (taming's `last_layer`)."""
        return self.conv_out

    def forward(self, latent: Tensor) -> Tensor:
        h = self.levels(self.mid(self.conv_in(latent)))  # (B, widths[0], H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W), unbounded


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on the meta device too)."""
    return sum(math.prod(p.shape) for p in module.parameters())

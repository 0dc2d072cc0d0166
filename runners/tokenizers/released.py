"""Build a project tokenizer from a released checkpoint of the ELM authors (their `bae/bae_<D>/binaryae_ema.th`).

Their file is a state dict of their whole training module: the autoencoder's tensors under `ae.`, plus the
discriminator's (`disc.`) and the LPIPS network's (`perceptual.`), which a tokenizer does not need. Key by key,
after `ae.`, their autoencoder and ours agree except for three documented rules:

    generator.<rest>                  -> decoder.<rest>      (this project calls its image models generators)
    <res block>.conv_out.*  where the block keeps its width: dropped (their res blocks always own this 1x1
                                          shortcut; it is never used where the width does not change)
    generator.logsigma.*              -> dropped (an output-variance head their forward never calls)

Every dropped tensor is checked against the shape it must have, so a file that merely resembles theirs is
refused. The architecture is read from the tensors' shapes: bits D from `quantize.proj.0`, image channels and
base width from the first conv, then the rung of BAE_SIZES (and the image size, which decides where attention
sits) whose every key and shape match.

The VQ tokenizer reads the layout of the authors' `VQAutoEncoder` (bae/vqgan.py) the same way, with the codebook
at `quantize.embedding.weight` (ours `codebook.weight`). The authors released no VQ checkpoint.

Nothing here reads a file: the caller loads it with `torch.load(path, map_location="cpu", weights_only=True)`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from runners.tokenizers.backbone import BackboneConfig, ResnetBlock
from runners.tokenizers.bae import BAE_SIZES, BinaryAutoencoder
from runners.tokenizers.vq import VQ_SIZES, VQTokenizer

AUTHORS_PREFIX = "ae."
"""The authors' checkpoints keep the autoencoder under this prefix (their training module's `ae` attribute)."""
RELEASED_KINDS: tuple[str, ...] = ("bae", "vq")
_MAX_IMAGE_SIDE_STEPS = 64  # image sizes tried when no attention resolution pins the size: downsample * 1..64


def strip_authors_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The autoencoder's tensors of an authors' checkpoint, without `ae.` (everything else left out).

    ValueError if `state` is not a dict of tensors or holds no `ae.` key.
    """
    if not isinstance(state, dict):
        raise ValueError(f"a released tokenizer checkpoint must be a state dict (names -> tensors), but got a "
                         f"{type(state).__name__}; load the authors' binaryae_ema.th with torch.load(path, "
                         f"map_location='cpu', weights_only=True)")
    odd = [f"{key!r} ({type(value).__name__})" for key, value in state.items() if not isinstance(value, Tensor)]
    if odd:
        raise ValueError(f"a released tokenizer checkpoint must be a state dict (names -> tensors), but it holds "
                         f"{', '.join(odd[:3])}; pass the authors' binaryae_ema.th itself (a plain state dict), not "
                         f"a training checkpoint that wraps one")
    autoencoder = {key[len(AUTHORS_PREFIX):]: value for key, value in state.items() if key.startswith(AUTHORS_PREFIX)}
    if not autoencoder:
        sample = ", ".join(sorted(state)[:4]) or "no keys at all"
        raise ValueError(f"a released tokenizer checkpoint must hold the autoencoder's tensors under keys starting "
                         f"{AUTHORS_PREFIX!r} (the authors' binaryae_ema.th does), but this one has {sample}; pass "
                         f"the authors' bae/bae_<D>/binaryae_ema.th file")
    return autoencoder


def _renamed(autoencoder: dict[str, Tensor]) -> dict[str, Tensor]:
    """Their names -> ours (generator. -> decoder., quantize.embedding -> codebook); nothing dropped yet."""
    out: dict[str, Tensor] = {}
    for key, value in autoencoder.items():
        if key.startswith("generator."):
            key = "decoder." + key[len("generator."):]
        if key == "quantize.embedding.weight":
            key = "codebook.weight"
        out[key] = value
    return out


def _unused_shapes(model: nn.Module, config: BackboneConfig, channels: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors the authors' module owns but never uses, for `model` of our layout (our names).

    Their res blocks always own conv_out (Cin -> Cout, 1x1); ours only where Cin != Cout. Their decoder (BAE and
    VQ alike) also owns logsigma: conv3x3 (C0 -> C0) -> ReLU -> conv1x1 (C0 -> image channels), C0 the first
    level's width.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_modules():
        if isinstance(module, ResnetBlock) and module.conv_out is None:
            width = module.conv1.in_channels
            shapes[f"{name}.conv_out.weight"] = (width, width, 1, 1)
            shapes[f"{name}.conv_out.bias"] = (width,)
    c0 = config.base_channels * config.channel_multipliers[0]
    shapes.update({"decoder.logsigma.0.weight": (c0, c0, 3, 3), "decoder.logsigma.0.bias": (c0,),
                   "decoder.logsigma.2.weight": (channels, c0, 1, 1), "decoder.logsigma.2.bias": (channels,)})
    return shapes


def _expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items() if key != "steps_unused"}


def _candidate_image_sizes(config: BackboneConfig) -> list[int]:
    """Image sizes at which an attention resolution falls on a level (each gives its own layout), then the first
    size at which none does (the layout every such size shares)."""
    levels = len(config.channel_multipliers)
    pinned = sorted({r * 2**i for r in config.attention_resolutions for i in range(levels)
                     if (r * 2**i) % config.downsample == 0})
    for multiple in range(1, _MAX_IMAGE_SIDE_STEPS + 1):
        side = config.downsample * multiple
        if not any(side // 2**i == r and side % 2**i == 0 for r in config.attention_resolutions for i in range(levels)):
            return pinned + [side]
    return pinned


def _build(kind: str, size: str, code: int, channels: int, image_size: int, code_width: int) -> nn.Module:
    with torch.device("meta"):  # shapes only
        if kind == "bae":
            return BinaryAutoencoder(code_dim=code, size=size, channels=channels, image_size=image_size)
        return VQTokenizer(codebook_size=code, size=size, channels=channels, image_size=image_size,
                           code_width=code_width)


def _code_of(kind: str, renamed: dict[str, Tensor]) -> tuple[int, int]:
    """(code: D bits or codebook entries, latent width) from the quantiser's tensors; ValueError if absent."""
    key = "quantize.proj.0.weight" if kind == "bae" else "codebook.weight"
    their_key = "ae.quantize.proj.0.weight" if kind == "bae" else "ae.quantize.embedding.weight"
    tensor = renamed.get(key)
    expected_ndim = 4 if kind == "bae" else 2
    if tensor is None or tensor.ndim != expected_ndim:
        found = "absent" if tensor is None else f"of shape {tuple(tensor.shape)}"
        shape, module, other = (("(D, latent width, 1, 1)", "BinaryAutoEncoder", "vq") if kind == "bae" else
                                ("(codebook size, code width)", "VQAutoEncoder", "bae"))
        raise ValueError(f"a released {kind} checkpoint must hold {their_key} {shape}, but it is {found}; pass a "
                         f"checkpoint of the authors' {module} or use kind {other}")
    return int(tensor.shape[0]), int(tensor.shape[1])


def tokenizer_from_released(state: dict[str, Tensor], kind: str, *, image_size: int | None = None,
                            bernoulli: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """An authors' checkpoint (a state dict with `ae.` keys) -> (our tokenizer with its weights, artifact config).

    Args:
        state: the loaded file, e.g. torch.load("bae_20/binaryae_ema.th", map_location="cpu", weights_only=True).
        kind: "bae" (the released BAEs) or "vq" (the layout of the authors' VQAutoEncoder).
        image_size: the image side; None = read from where attention sits (256 for every released BAE). Needed
            only for a rung whose attention falls on no level at that size (the tiny rung always).
        bernoulli: BAE only: the `bernoulli` setting recorded for it (False for the authors' bae_16_deter, trained
            with thresholded bits; the weights cannot tell). It acts only if the model trains further.

    Returns:
        (model in eval mode on the CPU, loaded strictly; {"tokenizer": kind, "kwargs": the constructor arguments}),
        the config.json of a tokenizer artifact (runners.artifacts.save_model / load_tokenizer).

    Raises:
        ValueError naming what was expected, what was found and the fix: not a state dict, no `ae.` keys, no
        quantiser tensor, or shapes that fit no rung of the ladder.
    """
    if kind not in RELEASED_KINDS:
        raise ValueError(f"kind must be one of {', '.join(RELEASED_KINDS)}, but got kind={kind!r}; use bae for the "
                         f"authors' binaryae_ema.th files")
    renamed = _renamed(strip_authors_prefix(state))
    code, width = _code_of(kind, renamed)
    first = renamed.get("encoder.blocks.0.weight")
    if first is None or first.ndim != 4:
        raise ValueError("a released tokenizer checkpoint must hold ae.encoder.blocks.0.weight (the first conv, "
                         "(base channels, image channels, 3, 3)), but it is absent or not a conv weight; pass the "
                         "authors' binaryae_ema.th")
    channels = int(first.shape[1])
    sizes = BAE_SIZES if kind == "bae" else VQ_SIZES
    found = {key: tuple(value.shape) for key, value in renamed.items()}
    matches: list[tuple[str, int, bool]] = []  # (rung, image size, whether the shapes pin that size)
    for size, config in sizes.items():
        if config.base_channels != first.shape[0] or (kind == "bae" and config.latent_width != width):
            continue
        candidates = _candidate_image_sizes(config)
        for side in [image_size] if image_size is not None else candidates:
            try:
                model = _build(kind, size, code, channels, side, width)
            except ValueError:  # image_size does not fit this rung
                continue
            if found == {**_expected_shapes(model), **_unused_shapes(model, config, channels)}:
                matches.append((size, side, image_size is not None or side != candidates[-1]))
    if not matches:
        lines = "; ".join(_first_mismatches(found, kind, sizes, code, channels, width, image_size))
        raise ValueError(f"a released {kind} checkpoint must fit a rung of the tokenizer ladder ({', '.join(sizes)}) "
                         f"tensor for tensor, but none fits ({lines}); pass an authors' checkpoint of a size the "
                         f"ladder holds (the released BAEs fit imagenet: nf 128, ch_mult 1 1 2 2 4, 2 res blocks, "
                         f"attention at 16, 256 px){'' if image_size is None else ', or check image_size'}")
    size, side, pinned = matches[0]
    if not pinned:
        raise ValueError(f"image_size must be given for this checkpoint: its tensors fit the {size} rung at every "
                         f"image size where attention falls on no level (e.g. {side}), so the shapes do not tell "
                         f"the size; pass image_size=<the side the tokenizer was trained at>")
    kwargs: dict[str, Any] = {"size": size, "channels": channels, "image_size": side}
    kwargs.update({"code_dim": code, "bernoulli": bernoulli} if kind == "bae" else
                  {"codebook_size": code, "code_width": width})
    model = (BinaryAutoencoder if kind == "bae" else VQTokenizer)(**kwargs)
    weights = {key: value.float() for key, value in renamed.items() if key in model.state_dict()}
    if kind == "vq":
        weights["steps_unused"] = torch.zeros(code, dtype=torch.int64)  # our training state, not in their file
    model.load_state_dict(weights, strict=True)
    return model.eval(), {"tokenizer": kind, "kwargs": model.init_kwargs}


def _first_mismatches(found: dict[str, tuple[int, ...]], kind: str, sizes: dict[str, BackboneConfig], code: int,
                      channels: int, width: int, image_size: int | None) -> list[str]:
    """One line per rung, at its closest image size: the first key whose shape differs or that one side lacks,
    and how many keys differ."""
    lines = []
    for size, config in sizes.items():
        best: tuple[int, str] | None = None
        for side in [image_size] if image_size is not None else _candidate_image_sizes(config):
            try:
                model = _build(kind, size, code, channels, side, width)
            except ValueError:
                continue
            expected = {**_expected_shapes(model), **_unused_shapes(model, config, channels)}
            wrong = [key for key in sorted(set(expected) | set(found)) if expected.get(key) != found.get(key)]
            line = (f"{size} at image_size {side}: {wrong[0]} expected {expected.get(wrong[0], 'absent')}, found "
                    f"{found.get(wrong[0], 'absent')} ({len(wrong)} keys differ)") if wrong else ""
            if best is None or len(wrong) < best[0]:
                best = (len(wrong), line)
        lines.append(best[1] if best is not None else f"{size}: image_size {image_size} does not fit this rung")
    return lines

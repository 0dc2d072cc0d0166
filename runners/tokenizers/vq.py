"""VQ tokenizer (ELM's VQGAN baseline): the BAE's conv backbone with a nearest-neighbour codebook in between.

    images (B, C, H, W) --Encoder--> z (B, e, h, w) --nearest codebook entry (squared L2)--> ids (B, h, w) in
      [0, codebook_size), z_q = codebook[ids] --straight-through z + sg(z_q - z)--> Decoder --> images (B, C, H, W),
      unbounded (clamped to [0, 1] where images are made, `decode_ids`)

As the authors' VQAutoEncoder (bae/vqgan.py): the encoder's last conv gives the e = code_width channels the
codebook lives in (no 1x1 maps around the codebook), and the decoder starts with its conv (no GroupNorm first).

Losses, weighted as the taming code the authors ship (its default legacy form): the commitment term
||z - sg(z_q)||^2 with weight 1 keeps the encoder close to its entries; the codebook term ||sg(z) - z_q||^2 with
weight `beta` (0.25) pulls the chosen entries towards the encoder outputs. The forward pass returns
quant_loss = commitment_loss + beta * codebook_loss; the training loop adds it to the reconstruction loss.

Codebook init as taming: U(-1/codebook_size, 1/codebook_size). With it most entries are never the nearest of any
encoder output and so never move (ELM: VQGAN uses a few % of its codes at scale). Dead-code restarts
(`restart_dead_codes=True`, off by default = the paper's VQGAN): in training, an entry unused for
`restart_after_steps` consecutive forward passes is re-initialised from a random encoder output of the current
batch (drawn from the training generator, so the run stays deterministic).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from runners.tokenizers.backbone import BACKBONE_SIZES, Decoder, Encoder, check_backbone
from runners.tokenizers.bae import QuantizeMode, check_mode
from runners.vocab import Vocabulary

# Size ladder of the VQ tokenizer: the same backbone rungs as the BAE, so a tokenizer study changes only the quantiser.
VQ_SIZES = {name: BACKBONE_SIZES[name] for name in ("tiny", "small", "imagenet")}


NEAREST_CHUNK_ELEMENTS = 2**27  # distance-matrix elements per chunk (512 MB float32): bounds memory at 16384 codes


def nearest_code(z: Tensor, codebook: Tensor) -> Tensor:
    """Encoder outputs z (M, e) and codebook (V, e) -> ids (M,) of the nearest entry in squared L2 distance.

    Ties go to the lowest id (argmin's first minimum). ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2; ||z||^2 is the same
    for every entry, so it is left out. Rows go in chunks so that a (M, V) matrix never exceeds 2^27 elements.
    """
    squared_norms = codebook.pow(2).sum(1)  # (V,)
    rows = max(1, NEAREST_CHUNK_ELEMENTS // codebook.shape[0])
    ids = [(squared_norms - 2.0 * chunk @ codebook.t()).argmin(dim=1)  # (m, V) -> (m,)
           for chunk in z.split(rows)]
    return torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64, device=z.device)


def vector_quantize(z: Tensor, codebook: Tensor, beta: float) -> dict[str, Tensor]:
    """Quantise encoder outputs z (B, e, h, w) with a codebook (V, e): the VQ-VAE forward, losses included.

    Returns dict(z_q (B, e, h, w) straight-through: value codebook[ids], gradient to z as if identity;
    ids (B, h, w); codebook_loss = mean ||sg(z) - z_q||^2 (gradient to the entries); commitment_loss =
    mean ||z - sg(z_q)||^2 (gradient to the encoder); quant_loss = commitment_loss + beta * codebook_loss, the
    authors' (taming's legacy) weighting).
    Means are over all B * e * h * w elements, as taming's torch.mean.
    """
    B, e, h, w = z.shape
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, e)  # (B*h*w, e)
    ids = nearest_code(flat, codebook.detach()).reshape(B, h, w)  # (B, h, w)
    chosen = F.embedding(ids, codebook).permute(0, 3, 1, 2).contiguous()  # (B, e, h, w), differentiable in entries
    codebook_loss = F.mse_loss(chosen, z.detach())
    commitment_loss = F.mse_loss(z, chosen.detach())
    # Straight-through estimator: value exactly chosen (adding an exact 0, unlike taming's z + (z_q - z).detach(),
    # which is off by float rounding), gradient to z as if identity, none to the entries along this path.
    z_q = chosen.detach() + (z - z.detach())
    return dict(z_q=z_q, ids=ids, codebook_loss=codebook_loss, commitment_loss=commitment_loss,
                quant_loss=commitment_loss + beta * codebook_loss)


class VQTokenizer(nn.Module):
    """Conv encoder -> nearest-neighbour codebook of `codebook_size` entries -> conv decoder (ELM's VQGAN)."""

    latent_kind: ClassVar[str] = "index"
    """What a latent position holds: one codebook id in [0, codebook_size)."""
    stochastic_encoding: ClassVar[bool] = False
    """Nearest-neighbour lookup is deterministic: encode_ids gives the same ids for mode bernoulli and threshold."""

    def __init__(self, *, codebook_size: int, size: str, channels: int, image_size: int,
                 code_width: int | None = None, beta: float = 0.25, restart_dead_codes: bool = False,
                 restart_after_steps: int = 50):
        """
        Args:
            codebook_size: V, entries in the codebook (taming's ImageNet VQGAN: 1024 or 16384).
            size: a key of VQ_SIZES ("tiny", "small", "imagenet").
            channels: image channels C.
            image_size: image side H = W; a multiple of the size's downsampling factor.
            code_width: e, the dimension of a codebook entry = the encoder's output channels; None = the
                backbone's latent width (the authors' emb_dim 256 at the imagenet size; 32 at tiny).
            beta: weight of the codebook loss (the commitment loss has weight 1), 0.25 as the authors' hparams.
            restart_dead_codes: re-initialise entries unused for `restart_after_steps` training forward passes
                from random encoder outputs of the batch (off = the paper's VQGAN).
            restart_after_steps: N, the number of consecutive unused training forward passes that makes an entry dead.
        """
        super().__init__()
        if size not in VQ_SIZES:
            raise ValueError(f"size must be one of {', '.join(VQ_SIZES)}, but got size={size!r}; "
                             f"try 'tiny' on a CPU or 'imagenet' for the paper's VQGAN")
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, but got codebook_size={codebook_size}; "
                             f"try 256 (= 8 bits) on digits or 1024 / 16384 as taming's ImageNet VQGANs")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, but got channels={channels}; use 1 (grey) or 3 (RGB)")
        config = VQ_SIZES[size]
        check_backbone(config, image_size)
        code_width = config.latent_width if code_width is None else code_width
        if code_width < 1:
            raise ValueError(f"code_width must be >= 1 or None, but got code_width={code_width}; "
                             f"try None (the backbone's latent width, {config.latent_width})")
        if not beta >= 0.0:
            raise ValueError(f"beta must be >= 0, but got beta={beta}; the authors' VQGAN uses 0.25")
        if restart_after_steps < 1:
            raise ValueError(f"restart_after_steps must be >= 1, but got restart_after_steps={restart_after_steps}; "
                             f"try 50")
        self.config = config
        self.codebook_size = codebook_size
        self.size = size
        self.channels = channels
        self.image_size = image_size
        self.code_width = code_width
        self.beta = float(beta)
        self.restart_dead_codes = bool(restart_dead_codes)
        self.restart_after_steps = int(restart_after_steps)

        self.encoder = Encoder(config, channels, image_size, out_channels=code_width)  # -> (B, e, h, w)
        self.codebook = nn.Embedding(codebook_size, code_width)  # (V, e)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)  # taming's init
        self.decoder = Decoder(config, channels, image_size, in_channels=code_width)  # (B, e, h, w) -> images
        # Training forward passes since each entry was last chosen (training state; saved with the weights).
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.int64))

    @property
    def init_kwargs(self) -> dict[str, object]:
        """The constructor arguments: `VQTokenizer(**model.init_kwargs)` rebuilds the architecture."""
        return dict(codebook_size=self.codebook_size, size=self.size, channels=self.channels,
                    image_size=self.image_size, code_width=self.code_width, beta=self.beta,
                    restart_dead_codes=self.restart_dead_codes, restart_after_steps=self.restart_after_steps)

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w): latent positions per image side."""
        side = self.image_size // self.config.downsample
        return side, side

    @property
    def last_layer(self) -> nn.Conv2d:
        """The decoder's final conv (for an adaptive loss weight based on gradient norms)."""
        return self.decoder.last_layer

    # ---------------------------------------------------------------------------------------------- quantiser

    def encode_latent(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in [0, 1] -> continuous encoder outputs z (B, e, h, w), before the codebook."""
        return self.encoder(images)

    def lookup(self, z: Tensor) -> Tensor:
        """z (B, e, h, w) -> ids (B, h, w) int64 of the nearest codebook entries."""
        B, e, h, w = z.shape
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, e)  # (B*h*w, e)
        return nearest_code(flat, self.codebook.weight.detach()).reshape(B, h, w)

    def embed(self, ids: Tensor) -> Tensor:
        """ids (B, h, w) -> codebook entries z_q (B, e, h, w)."""
        # contiguous, as in forward: a strided input takes another conv kernel whose float rounding differs
        return self.codebook(ids).permute(0, 3, 1, 2).contiguous()

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) -> codebook ids (B, h, w) int64."""
        return self.lookup(self.encode_latent(images))

    def decode(self, ids: Tensor) -> Tensor:
        """Codebook ids (B, h, w) -> decoder output (B, C, H, W), unbounded."""
        return self.decode_latent(self.embed(ids))

    def decode_latent(self, z_q: Tensor) -> Tensor:
        """Quantised latents (B, e, h, w) -> decoder output (B, C, H, W), unbounded."""
        return self.decoder(z_q)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Images (B, C, H, W) -> dict(recon, z, ids, quant_loss, codebook_loss, commitment_loss).

        recon (B, C, H, W) unbounded; z (B, e, h, w) encoder outputs; ids (B, h, w). In training mode with
        `restart_dead_codes`, dead entries are re-initialised from this batch's z using `generator` (after the
        losses are formed: this step's gradients are unaffected, as a dead entry received none).
        """
        z = self.encode_latent(images)  # (B, e, h, w)
        quantized = vector_quantize(z, self.codebook.weight, self.beta)
        recon = self.decode_latent(quantized["z_q"])
        if self.training:
            self._track_usage(quantized["ids"], z, generator)
        return dict(recon=recon, z=z, ids=quantized["ids"], quant_loss=quantized["quant_loss"],
                    codebook_loss=quantized["codebook_loss"], commitment_loss=quantized["commitment_loss"])

    @torch.no_grad()
    def _track_usage(self, ids: Tensor, z: Tensor, generator: torch.Generator | None) -> None:
        used = torch.zeros(self.codebook_size, dtype=torch.bool, device=ids.device)
        used[ids.flatten()] = True
        self.steps_unused.add_(1).masked_fill_(used, 0)
        if not self.restart_dead_codes:
            return
        dead = (self.steps_unused >= self.restart_after_steps).nonzero().flatten()  # (n_dead,)
        if dead.numel() == 0:
            return
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, self.code_width)  # (B*h*w, e)
        pick = torch.randint(flat.shape[0], (dead.numel(),), generator=generator, device=flat.device)
        # The embedding backward needs only the ids, so writing the weight in place keeps this step's graph valid.
        self.codebook.weight.data[dead] = flat[pick].to(self.codebook.weight.dtype)
        self.steps_unused[dead] = 0

    @property
    def dead_codes(self) -> int:
        """Entries unused for at least `restart_after_steps` training forward passes (running count)."""
        return int((self.steps_unused >= self.restart_after_steps).sum())

    @torch.no_grad()
    def code_counts(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """How often each codebook entry is the nearest over `images` (N, C, H, W) x positions: (V,) int64."""
        counts = torch.zeros(self.codebook_size, dtype=torch.int64, device=self.codebook.weight.device)
        for start in range(0, images.shape[0], batch_size):
            ids = self.encode(images[start:start + batch_size].to(counts.device))
            counts += torch.bincount(ids.flatten(), minlength=self.codebook_size)
        return counts

    def code_usage(self, images: Tensor, batch_size: int = 256) -> float:
        """Share of the codebook entries that are the nearest entry somewhere in `images` x positions."""
        return float((self.code_counts(images, batch_size) > 0).double().mean())

    # ------------------------------------------------------------------------------------------ token interface

    def check_vocab(self, vocab: Vocabulary | None) -> None:
        """ValueError unless vocab is None: a codebook id is one token, there are no bits to cut."""
        if vocab is not None:
            raise ValueError(f"vocab must be None for the VQ tokenizer (one id in [0, {self.codebook_size}) per "
                             f"position, nothing to cut into sub-tokens), but got {vocab!r}; pass vocab=None "
                             f"(token_each must be 1)")

    def token_shape(self, vocab: Vocabulary | None = None) -> tuple[int, int]:
        """(K, V) = (1, codebook_size): one id per latent position."""
        self.check_vocab(vocab)
        return 1, self.codebook_size

    def encode_ids(self, images: Tensor, *, mode: QuantizeMode, vocab: Vocabulary | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
        """Images (B, C, H, W) -> ids (B, h*w, 1) int64 in raster order; mode is checked but the lookup is
        deterministic (no generator is used)."""
        self.check_vocab(vocab)
        check_mode(mode)
        return self.encode(images).flatten(1).unsqueeze(-1)  # (B, h*w, 1)

    def decode_ids(self, ids: Tensor, vocab: Vocabulary | None = None) -> Tensor:
        """Ids (B, h*w, 1) -> images (B, C, H, W): the decoder's output clamped to [0, 1]."""
        self.check_vocab(vocab)
        h, w = self.grid
        if ids.ndim != 3 or ids.shape[1:] != (h * w, 1):
            raise ValueError(f"ids must have shape (B, h*w={h * w}, 1), but got {tuple(ids.shape)}")
        if ids.is_floating_point():
            raise ValueError(f"ids must be an integer tensor, but got dtype {ids.dtype}; use ids.long()")
        if ids.numel() and not bool(((ids >= 0) & (ids < self.codebook_size)).all()):
            raise ValueError(f"ids must lie in [0, {self.codebook_size}), but got values in "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return self.decode(ids.long().reshape(ids.shape[0], h, w)).clamp(0.0, 1.0)

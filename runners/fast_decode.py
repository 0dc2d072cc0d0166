"""AR decoding with a static KV cache: every decode step has the same shapes, so it can be compiled once
(torch.compile; on CUDA mode "reduce-overhead", i.e. the step replayed as a CUDA graph) instead of being
launched kernel by kernel.

`StaticDecoder(model, ...)` wraps an ARGenerator and offers what `runners.sampling.sample_ar` needs (config,
init_cache / prefill / decode_step, next_logits), so the sampler runs unchanged on it:

    ids = sample_ar(StaticDecoder(model, compile="auto"), labels, ..., generator=g)

How it differs from the model's own cached path (ARGenerator.prefill / decode_step): the keys and values of
all N slots live in preallocated buffers and, compiled, each step attends to all N of them with a mask (slots
after the current one are masked out, so they get probability exactly 0: every step has the same shapes; eager,
a step attends only to the slots filled so far), the slot index is a tensor (not a Python int that would
specialise a compiled graph), the rotary rows of every slot are computed once, and the K output
heads run as one matmul. The logits are those of the model's own paths up to float rounding (summation order);
`tests/runners_tests/test_fast_decode.py` checks that the sampled tokens are the same as with the dynamic cache
and without a cache under the same seed.

`precision="bf16"` runs the trunk under bfloat16 autocast (an evaluation-protocol setting: it changes the
tokens); the logits come back in float32 either way. `sampling_model(model, precision, compile=)` picks what a
sampler runs on: this decoder for an AR generator on CUDA or in bf16, `AutocastMasked` for an MLM generator in
bf16, else the model itself (the fp32 CPU path stays the reference one).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runners.generators.layers import apply_rotary
from runners.train_speed import resolve_compile

SAMPLING_PRECISIONS = ("fp32", "bf16")


class StaticCache:
    """The static decoder's state for one batch: the model's KV buffers plus the slot counter."""

    def __init__(self, inner: Any, heads: Tensor) -> None:
        self.inner = inner  # the model's KVCache: keys / values (B, H, N, D) per layer, rotary rows of every slot
        self.heads = heads  # (K V, C): the K output heads stacked
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    @property
    def capacity(self) -> int:
        return self.inner.capacity


class _Wrapped:
    """What a sampler reads of the generator beside its calls: `training` and `train(mode)`, the wrapped model's."""

    model: nn.Module

    @property
    def training(self) -> bool:
        return self.model.training

    def train(self, mode: bool = True) -> Any:
        self.model.train(mode)
        return self


class StaticDecoder(_Wrapped):
    """Static-cache, optionally compiled, decoding of an ARGenerator (see the module docstring).

    compile: "auto" (on CUDA only: torch.compile mode "reduce-overhead"), True (also on a CPU with a C++
    compiler, default mode), False (eager). One decoder compiles once per batch size it meets.
    """

    def __init__(self, model: nn.Module, *, compile: bool | str = "auto", precision: str = "fp32") -> None:
        if precision not in SAMPLING_PRECISIONS:
            raise ValueError(f"sampling_precision must be one of {list(SAMPLING_PRECISIONS)}, but got {precision!r}")
        self.model, self.config, self.precision = model, model.config, precision
        device = next(model.parameters()).device
        self.device = device
        self.compiled, self.compile_reason = resolve_compile(compile, device)
        self._step = self._trunk
        if self.compiled:
            mode = "reduce-overhead" if device.type == "cuda" else None
            self._step = torch.compile(self._trunk, mode=mode, fullgraph=True, dynamic=False)

    # what sample_ar reads besides the decoding calls (and `training` / `train`)
    def next_logits(self, prefix: Tensor, labels: Tensor, *, positions: Tensor | None = None) -> Tensor:
        return self.model.next_logits(prefix, labels, positions=positions)

    # ------------------------------------------------------------------ decoding
    def init_cache(self, batch_size: int, *, positions: Tensor | None = None) -> StaticCache:
        inner = self.model.init_cache(batch_size, positions=positions)
        if self.precision == "bf16":  # keys and values as the autocast trunk makes them
            inner.keys = [k.to(torch.bfloat16) for k in inner.keys]
            inner.values = [v.to(torch.bfloat16) for v in inner.values]
        if self.compiled and self.device.type == "cuda":
            for buffer in (*inner.keys, *inner.values):  # CUDA-graph replays write these same buffers
                torch._dynamo.mark_static_address(buffer)
        # the K output heads as one (K V, C) matrix, taken from the weights as they are now
        heads = torch.cat([head.weight for head in self.model.heads], dim=0).detach()
        return StaticCache(inner, heads)

    def prefill(self, prefix: Tensor, labels: Tensor, cache: StaticCache) -> Tensor:
        """[class token, prefix (B, n, K)] into an empty cache, one slot at a time; logits of position n."""
        if cache.length != 0:
            raise ValueError(f"prefill needs an empty cache, but it already holds {cache.length} slots")
        if labels.shape != (cache.batch_size,) or prefix.shape[0] != cache.batch_size:
            raise ValueError(f"the cache was made for batch {cache.batch_size}, but got labels {tuple(labels.shape)} "
                             f"and a prefix {tuple(prefix.shape)}")
        logits = self._feed(self.model.class_embedding(labels).unsqueeze(1), cache)
        for n in range(prefix.shape[1]):
            logits = self.decode_step(prefix[:, n], cache)
        return logits

    def decode_step(self, tokens: Tensor, cache: StaticCache) -> Tensor:
        """Feed the token (B, K) of position cache.length - 1; logits (B, K, V) of the next position."""
        if cache.length == 0:
            raise ValueError("decode_step needs the class token first: call prefill(prefix, labels, cache)")
        K = self.config.token_each
        if tokens.shape != (cache.batch_size, K):
            raise ValueError(f"tokens must have shape (B, K) = ({cache.batch_size}, {K}), but got {tuple(tokens.shape)}")
        return self._feed(self.model._embed_tokens(tokens.unsqueeze(1)), cache)

    def _feed(self, x: Tensor, cache: StaticCache) -> Tensor:
        if cache.length >= cache.capacity:
            raise ValueError(f"the KV cache holds N={cache.capacity} slots, all filled; position N-1 is the last "
                             f"one to predict")
        slot = torch.tensor(cache.length, device=x.device)
        inner = cache.inner
        rotary = getattr(inner, "rotation", None)
        rotary = inner.angles if rotary is None else rotary  # (N, D/2) angles or (N, D/2, 2) (cos, sin) rows
        # compiled: every step attends to all N slots (one graph, one CUDA graph); eager: only to the filled ones
        span = cache.capacity if self.compiled else cache.length + 1
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self._step(x, slot, rotary, inner.keys, inner.values, cache.heads, span)
        if self.compiled and self.device.type == "cuda":
            logits = logits.clone()  # a CUDA-graph output is overwritten by the next replay
        cache.length += 1
        return logits.float()

    def _trunk(self, x: Tensor, slot: Tensor, rotary: Tensor, keys: list[Tensor], values: list[Tensor],
               heads: Tensor, span: int) -> Tensor:
        """One slot x (B, 1, C) at index `slot` (0-dim tensor) through every block, attending to the first `span`
        slots of the cache (slots after `slot` masked out); logits (B, K, V)."""
        model = self.model
        B, _, C = x.shape
        row = rotary.index_select(0, slot.view(1))  # (1, D/2[, 2])
        visible = (torch.arange(span, device=x.device) <= slot).view(1, span)  # (1, span): filled slots, this one too
        for block, k_cache, v_cache in zip(model.blocks, keys, values):
            attention = block.attention
            H, D = attention.heads, attention.head_dim
            q, k, v = attention.qkv(block.attention_norm(x)).split(C, dim=-1)
            q, k, v = (u.view(B, 1, H, D).transpose(1, 2) for u in (q, k, v))  # (B, H, 1, D)
            q, k = apply_rotary(q, row), apply_rotary(k, row)
            k_cache.index_copy_(2, slot.view(1), k.to(k_cache.dtype))
            v_cache.index_copy_(2, slot.view(1), v.to(v_cache.dtype))
            keys_seen, values_seen = k_cache[:, :, :span].to(q.dtype), v_cache[:, :, :span].to(q.dtype)
            y = F.scaled_dot_product_attention(q, keys_seen, values_seen, attn_mask=visible)
            x = x + attention.proj(y.transpose(1, 2).reshape(B, 1, C))  # eval: no residual dropout
            x = x + block.mlp(block.mlp_norm(x))
        hidden = model.norm(x[:, 0])  # (B, C)
        return (hidden @ heads.to(hidden.dtype).t()).view(B, self.config.token_each, -1)  # (B, K, V)


class AutocastMasked(_Wrapped):
    """An MLM generator whose forward runs under bfloat16 autocast, logits back in float32: what
    `runners.sampling.sample_mlm` needs (config, mask_id, training / train, a call ids (B, N, K), labels (B,) ->
    logits (B, N, K, V)); the weights stay float32."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.config, self.mask_id = model, model.config, model.mask_id
        self.device_type = next(model.parameters()).device.type

    def __call__(self, ids: Tensor, labels: Tensor, *, positions: Tensor | None = None) -> Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            logits = self.model(ids, labels, positions=positions)
        return logits.float()


def sampling_path(modeling: str, device_type: str, precision: str = "fp32", compile: bool | str = "auto") -> str:
    """Which decoder a sampler runs on: "static" (`StaticDecoder`, compiled per `compile`), "autocast"
    (`AutocastMasked`) or "model" (the generator itself; for AR its own KV cache, kernel by kernel).

    AR: "static" whenever precision is bf16 (on any device), and on CUDA unless `compile` is False (the switch
    back to the model's own cache, which reads only the slots filled so far where the static cache attends to
    all N under a mask: at large batches on a GPU either may win, see docs/perf.md). MLM: "autocast" when
    precision is bf16. Otherwise "model": the fp32 CPU path stays the reference one."""
    if precision not in SAMPLING_PRECISIONS:
        raise ValueError(f"sampling_precision must be one of {list(SAMPLING_PRECISIONS)}, but got {precision!r}")
    if modeling == "ar" and (precision == "bf16" or device_type == "cuda" and compile is not False):
        return "static"
    if modeling == "mlm" and precision == "bf16":
        return "autocast"
    return "model"


def sampling_model(model: nn.Module, precision: str = "fp32", *, compile: bool | str = "auto") -> Any:
    """What a sampler runs on for `sampling_precision` `precision` and `runtime.compile` `compile`
    (`sampling_path`): the model wrapped in `StaticDecoder` or `AutocastMasked`, or the model itself."""
    from runners.generators import ARGenerator, MLMGenerator

    modeling = "ar" if isinstance(model, ARGenerator) else "mlm" if isinstance(model, MLMGenerator) else ""
    path = sampling_path(modeling, next(model.parameters()).device.type, precision, compile)
    if path == "static":
        return StaticDecoder(model, compile=compile, precision=precision)
    if path == "autocast":
        return AutocastMasked(model)
    return model

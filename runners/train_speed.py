"""Device setup of the training loops: the choices that make a step fast on the hardware it runs on.

Each choice is a function of the device (and a setting), so the CUDA-only paths are chosen, and tested, on
any machine:

- `configure_matmul(device)`: TF32 tensor-core matmuls and convolutions for float32 work on CUDA (bf16
  autocast covers the forward; TF32 speeds up what stays float32). Nothing changes on a CPU.
- `adamw_fused(device)`: AdamW's fused multi-tensor kernel, on CUDA only (one launch for all parameters).
- `resolve_compile(setting, device)`: torch.compile of the whole model, `runtime.compile` = "auto" (on for
  CUDA, off elsewhere), true or false. On a CPU torch.compile needs a C++ compiler; without one the loop stays
  eager and says why.
- `compile_model` / `uncompile_model`: compile `model.forward` in place (nn.Module.compile), so the object and
  its state_dict keys stay the same, and go back to eager after training (evaluation reuses the model with
  other shapes).
- `Prefetcher`: draws the next batch while the device still works on the current step (see its docstring for
  why the draws keep their order, so the run is the same with or without it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

COMPILE_SETTINGS = ("auto", True, False)


def configure_matmul(device: torch.device | str) -> bool:
    """Allow TF32 in float32 matmuls and convolutions on CUDA; returns whether TF32 is now on (False on CPU)."""
    if torch.device(device).type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    return True


def adamw_fused(device: torch.device | str) -> bool:
    """Whether AdamW uses its fused kernel on `device`: only on CUDA (the CPU path stays the reference one)."""
    return torch.device(device).type == "cuda"


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile (inductor) would use on a CPU: $CXX, else c++, g++ or clang++ on PATH."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and (found := shutil.which(name)):
            return found
    return None


def resolve_compile(setting: Any, device: torch.device | str) -> tuple[bool, str]:
    """(compile?, why) for a `runtime.compile` setting on `device`.

    "auto": on for CUDA, off on other devices (compiling a small CPU model costs more than it saves).
    True: on, except on a CPU without a C++ compiler (then eager, and the reason says so). False: off.
    """
    if setting not in COMPILE_SETTINGS or (setting in (0, 1) and not isinstance(setting, bool)):
        raise ValueError(f"runtime.compile must be one of 'auto', true, false, but got {setting!r}")
    kind = torch.device(device).type
    if setting is False:
        return False, "runtime.compile is false"
    if setting == "auto" and kind != "cuda":
        return False, f"runtime.compile is 'auto' and the device is {kind}, not cuda"
    if kind == "cpu" and cxx_compiler() is None:
        return False, "torch.compile on a CPU needs a C++ compiler (none of $CXX, c++, g++, clang++ on PATH): eager"
    return True, f"torch.compile of the whole model on {kind}"


def compile_model(model: nn.Module, **options: Any) -> nn.Module:
    """Compile `model`'s forward in place (nn.Module.compile): same object, same parameters, same state_dict keys.

    Everything that calls the model (its `loss`, a DDP wrapper's forward) goes through the compiled forward.
    """
    model.compile(**options)
    return model


def uncompile_model(model: nn.Module) -> nn.Module:
    """Undo `compile_model`: the model calls its eager forward again (nn.Module.compile keeps the compiled call
    in `_compiled_call_impl`; None is the eager state)."""
    if getattr(model, "_compiled_call_impl", None) is not None:
        model._compiled_call_impl = None
    return model


def is_compiled(model: nn.Module) -> bool:
    return getattr(model, "_compiled_call_impl", None) is not None


Batch = tuple[Tensor, ...]


class Prefetcher:
    """Draw batch step + 1 while the device runs step's backward pass, keeping every random draw in order.

    The training loop draws, per step, the batch (batch_fn(step, generator)) and then the label dropout (in the
    loss, from the same generator). `ahead(step + 1)` is called after step's forward (and backward) have been
    queued, so the sequence of draws is batch(s), dropout(s), batch(s + 1), dropout(s + 1), ...: exactly the
    order without prefetching, hence the same run. The generator's state from before the early draw is kept
    (`state_before`) so that a checkpoint saved after step s resumes with batch s + 1's draws.

    On CUDA the early batch is built under a side stream (its host-to-device copies do not wait for the
    backward kernels queued on the main stream) and the main stream waits for it when the batch is taken.
    """

    def __init__(self, batch_fn: Callable[[int, torch.Generator], Batch], generator: torch.Generator,
                 device: torch.device | str) -> None:
        self.batch_fn, self.generator = batch_fn, generator
        self.cuda = torch.device(device).type == "cuda"
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None
        self.pending: tuple[int, Batch] | None = None
        self.state_before: Tensor | None = None

    def ahead(self, step: int) -> None:
        """Draw the batch of `step` now (call once the current step's work is queued)."""
        self.state_before = self.generator.get_state()
        if self.stream is not None:
            with torch.cuda.stream(self.stream):
                batch = self.batch_fn(step, self.generator)
        else:
            batch = self.batch_fn(step, self.generator)
        self.pending = (step, batch)

    def take(self, step: int) -> Batch:
        """The batch of `step`: the one drawn ahead if any, else drawn now."""
        if self.pending is not None and self.pending[0] == step:
            batch = self.pending[1]
            self.pending, self.state_before = None, None
            if self.stream is not None:
                current = torch.cuda.current_stream()
                current.wait_stream(self.stream)
                for tensor in batch:
                    if isinstance(tensor, Tensor) and tensor.is_cuda:
                        tensor.record_stream(current)
            return batch
        self.pending, self.state_before = None, None
        return self.batch_fn(step, self.generator)

    def generator_state(self) -> Tensor:
        """The generator's state as if nothing had been drawn ahead (what a checkpoint must hold)."""
        return self.state_before if self.pending is not None and self.state_before is not None \
            else self.generator.get_state()


def device_name(device: torch.device | str) -> str:
    """What runners.perf matches against its table of peaks: the CUDA device's name, else the device type."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def generator_flops_per_position(parameters: int, layers: int, width: int, seq_len: int, slots: int) -> float:
    """Training FLOPs per sequence position of a generator whose samples run `slots` transformer slots for
    `seq_len` positions (AR: slots = N, one per position; a model that spreads a position over several slots
    pays for each): (slots / N) x runners.perf.train_flops_per_token(parameters, layers, width, slots)."""
    from runners.perf import train_flops_per_token

    return slots / seq_len * train_flops_per_token(parameters, layers, width, slots)


def measured_train_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one training step whose forward is `fn()`: 3 x the forward's matmul and convolution FLOPs
    counted by torch.utils.flop_counter (the backward costs about twice the forward). For models without an
    analytic count (tokenizers); elementwise work is not counted, as in the PaLM rule."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return 3.0 * counter.get_total_flops()


class RateMeter:
    """Wrap a live-line callback so that each line also carries the throughput since the previous one.

    `per_step` units (images, tokens) are processed per step; `unit` names the rate field ("images" ->
    "images_per_s"). With `flops_per_unit` the line also gets achieved_tflops and, on a device with a known
    peak, mfu (runners.perf.throughput).
    """

    def __init__(self, log: Callable[[int, dict[str, float]], None], *, per_step: int, unit: str,
                 device: torch.device | str, flops_per_unit: float | None = None,
                 first_step: int = 0) -> None:
        import time

        self._clock = time.perf_counter
        self.log, self.per_step, self.unit = log, per_step, unit
        self.flops_per_unit, self.device = flops_per_unit, torch.device(device)
        self.last_step, self.last_time = first_step - 1, self._clock()

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        from runners.perf import throughput

        now = self._clock()
        units = (step - self.last_step) * self.per_step
        if units > 0 and now > self.last_time:
            speed = throughput(tokens=units, seconds=now - self.last_time, flops_per_token=self.flops_per_unit or 0.0,
                               device_name=device_name(self.device))
            metrics = {**metrics, f"{self.unit}_per_s": speed.tokens_per_s}
            if self.flops_per_unit is not None:
                metrics["achieved_tflops"] = speed.tflops
                if speed.mfu is not None:
                    metrics["mfu"] = speed.mfu
        self.last_step, self.last_time = step, now
        self.log(step, metrics)

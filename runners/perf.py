"""Throughput of a training stage: tokens/s, achieved TFLOP/s and model FLOPs utilisation (MFU).

FLOPs of one training step follow the PaLM accounting (Chowdhery et al. 2022, appendix B): per token seen,
6 x parameters for the forward and backward matmuls, plus 12 x layers x T x d for the attention scores and
their weighted sums (T = attended length, d = width). Embedding lookups cost no matmul, but the parameter count
keeps them: a slight over-count (< 1% for L and larger), stated here rather than hidden.

MFU = achieved FLOP/s / the device's bf16 dense peak. The peak comes from a small table of devices whose
datasheets we checked; a device not in it gets no MFU (None), never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

# bf16 dense tensor-core peak in TFLOP/s (datasheet figures without structured sparsity). Matched against
# torch.cuda.get_device_name() by substring, first match wins: specific names before general ones.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("B200", 2250.0),
    ("H200", 989.4),
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3") and GH200
    ("A100", 312.0),  # SXM4 and PCIe alike
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX A6000", 154.8),
    ("RTX 4090", 165.2),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The bf16 dense peak of a device by its name, or None when the device is not in the table (or a CPU)."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if pattern in device_name:
            return tflops
    return None


def train_flops_per_token(parameters: int, layers: int, width: int, attended: int) -> float:
    """Training FLOPs per token: 6 N (matmuls, forward + backward) + 12 L T d (attention), PaLM's rule."""
    return 6.0 * parameters + 12.0 * layers * attended * width


@dataclass(frozen=True)
class Throughput:
    """What a training stage's row and live line report about its speed."""

    tokens_per_s: float
    """tokens (sequence positions, not sub-tokens) trained on per second"""
    tflops: float
    """achieved TFLOP/s from the model's FLOPs per step"""
    mfu: float | None
    """tflops / (the devices' bf16 dense peak x their count); None for devices not in PEAK_BF16_TFLOPS"""

    def row(self, unit: str = "tokens") -> dict[str, float | None]:
        """The row's columns: `<unit>_per_s` (tokens of generators, images of tokenizers and classifiers),
        achieved_tflops, mfu."""
        return {f"{unit}_per_s": self.tokens_per_s, "achieved_tflops": self.tflops, "mfu": self.mfu}


def throughput(*, tokens: int, seconds: float, flops_per_token: float, device_name: str, devices: int = 1) -> Throughput:
    """Throughput of `tokens` trained on in `seconds` by `devices` devices of the named kind (data-parallel
    workers: tokens of the global batches, MFU against their summed peak)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, but got {seconds}")
    if devices < 1:
        raise ValueError(f"devices must be >= 1, but got {devices}")
    tokens_per_s = tokens / seconds
    tflops = tokens_per_s * flops_per_token / 1e12
    peak = peak_bf16_tflops(device_name)
    return Throughput(tokens_per_s=tokens_per_s, tflops=tflops, mfu=None if peak is None else tflops / (peak * devices))

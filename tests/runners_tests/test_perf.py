"""Throughput accounting: literal FLOPs and MFU figures, and no MFU for devices we have no datasheet for."""

import pytest

from runners.perf import peak_bf16_tflops, throughput, train_flops_per_token


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.4),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.4),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA L40S", 362.1),
    ("NVIDIA L40", 181.0),
    ("NVIDIA L4", 121.0),
])
def test_known_devices_have_their_datasheet_peak(name, peak):
    assert peak_bf16_tflops(name) == peak


@pytest.mark.parametrize("name", ["cpu", "Tesla V100-SXM2-32GB", "NVIDIA GeForce GTX 1080"])
def test_unknown_devices_get_no_mfu(name):
    assert peak_bf16_tflops(name) is None
    assert throughput(tokens=1000, seconds=1.0, flops_per_token=1e9, device_name=name).mfu is None


def test_flops_per_token_of_elm_l():
    # L: 24 layers, width 1024, 257 attended positions (class token + 256), 315.6M parameters
    assert train_flops_per_token(315_600_000, 24, 1024, 257) == 6 * 315_600_000 + 12 * 24 * 257 * 1024
    assert train_flops_per_token(315_600_000, 24, 1024, 257) == pytest.approx(1.969e9, rel=1e-3)


def test_throughput_and_mfu():
    # 32 x 256 tokens in 0.05 s at 2e9 FLOPs per token: 163,840 tokens/s, 327.68 TFLOP/s, 33.1% of an H100
    result = throughput(tokens=32 * 256, seconds=0.05, flops_per_token=2e9, device_name="NVIDIA H100 80GB HBM3")
    assert result.tokens_per_s == pytest.approx(163_840.0)
    assert result.tflops == pytest.approx(327.68)
    assert result.mfu == pytest.approx(0.33119, abs=1e-5)
    assert set(result.row()) == {"tokens_per_s", "achieved_tflops", "mfu"}


def test_data_parallel_mfu_divides_by_the_summed_peak():
    # 8 H100s training 8 x 32 x 256 tokens in 0.05 s at 2e9 FLOPs per token: 2,621.44 TFLOP/s, 33.1% of 8 peaks
    result = throughput(tokens=8 * 32 * 256, seconds=0.05, flops_per_token=2e9, device_name="NVIDIA H100 80GB HBM3",
                        devices=8)
    assert result.tokens_per_s == pytest.approx(1_310_720.0)
    assert result.tflops == pytest.approx(2621.44)
    assert result.mfu == pytest.approx(0.33119, abs=1e-5)
    with pytest.raises(ValueError, match="devices must be >= 1"):
        throughput(tokens=1, seconds=1.0, flops_per_token=1.0, device_name="cpu", devices=0)


def test_zero_seconds_is_refused():
    with pytest.raises(ValueError, match="seconds must be > 0"):
        throughput(tokens=1, seconds=0.0, flops_per_token=1.0, device_name="cpu")

"""The static-cache AR decoder (runners/fast_decode.py) samples the same tokens as the model's dynamic KV cache
and as full-prefix recomputation under the same seed, eager and compiled (CPU, with a C++ compiler)."""

from __future__ import annotations

import pytest
import torch

from runners.fast_decode import StaticDecoder
from runners.generators import ARGenerator, GeneratorConfig
from runners.sampling import sample_ar
from runners.scan import scan_positions
from runners.train_speed import cxx_compiler

torch.set_num_threads(1)


def model() -> ARGenerator:
    torch.manual_seed(0)
    m = ARGenerator(GeneratorConfig("tiny", 3, 4, token_each=2, bits_each=4, num_classes=5))
    with torch.no_grad():  # random heads and norms: the tokens depend on every part of the step
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m.eval()


KNOBS = dict(cfg_scale=3.0, cfg_schedule="linear", temperature=1.0, top_k=6, top_p=0.95)


def sample(decoder, labels, positions=None, kv_cache=True, seed=0):
    return sample_ar(decoder, labels, **KNOBS, generator=torch.Generator().manual_seed(seed), positions=positions,
                     kv_cache=kv_cache)


@pytest.mark.parametrize("scan", ["raster", "diagonal_zigzag"])
def test_static_cache_gives_the_same_tokens_as_dynamic_and_no_cache(scan: str) -> None:
    m = model()
    positions = scan_positions(scan, 3, 4)
    labels = torch.tensor([0, 1, 2, 3, 4, 1, 0])
    static = sample(StaticDecoder(m, compile=False), labels, positions)
    dynamic = sample(m, labels, positions)
    full = sample(m, labels, positions, kv_cache=False)
    assert torch.equal(static, dynamic) and torch.equal(static, full)
    assert not torch.equal(static, sample(StaticDecoder(m, compile=False), labels, positions, seed=1))


def test_static_logits_match_the_model_slot_by_slot() -> None:
    m = model()
    decoder = StaticDecoder(m, compile=False)
    ids = torch.randint(0, 16, (3, 12, 2), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 4, 2])
    cache = decoder.init_cache(3)
    logits = [decoder.prefill(ids[:, :0], labels, cache)]
    logits += [decoder.decode_step(ids[:, n], cache) for n in range(11)]
    with torch.no_grad():
        reference = m(ids, labels)  # teacher forcing: (B, N, K, V)
    torch.testing.assert_close(torch.stack(logits, dim=1), reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="all filled"):
        decoder.decode_step(ids[:, 11], cache)


def test_bf16_sampling_precision_runs_and_is_checked() -> None:
    m = model()
    labels = torch.tensor([0, 1, 2])
    ids = sample(StaticDecoder(m, compile=False, precision="bf16"), labels)
    assert ids.shape == (3, 12, 2) and int(ids.max()) < 16
    with pytest.raises(ValueError, match=r"sampling_precision must be one of \['fp32', 'bf16'\], but got 'fp16'"):
        StaticDecoder(m, precision="fp16")


def test_compile_is_chosen_by_device() -> None:
    m = model()
    assert StaticDecoder(m, compile="auto").compiled is False  # auto: CUDA only
    assert StaticDecoder(m, compile=False).compiled is False


@pytest.mark.skipif(cxx_compiler() is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_static_step_gives_the_same_tokens() -> None:
    m = model()
    labels = torch.tensor([0, 1, 2, 3])
    full, dynamic = sample(m, labels, kv_cache=False), sample(m, labels)
    decoder = StaticDecoder(m, compile=True)
    assert decoder.compiled
    compiled = sample(decoder, labels)
    assert torch.equal(compiled, dynamic) and torch.equal(compiled, full)


@pytest.mark.parametrize("modeling, device, precision, compile, path", [
    ("ar", "cpu", "fp32", "auto", "model"),  # the reference path
    ("ar", "cpu", "fp32", True, "model"),
    ("ar", "cpu", "bf16", "auto", "static"),  # bf16 needs the decoder's autocast trunk
    ("ar", "cuda", "fp32", "auto", "static"),  # CUDA: the decode step as a CUDA graph
    ("ar", "cuda", "fp32", False, "model"),  # runtime.compile false: the model's own KV cache
    ("ar", "cuda", "bf16", False, "static"),  # bf16 still through the decoder, eager
    ("mlm", "cuda", "fp32", "auto", "model"),
    ("mlm", "cpu", "bf16", "auto", "autocast"),
])
def test_sampling_path_by_device_precision_and_compile(modeling, device, precision, compile, path) -> None:
    from runners.fast_decode import sampling_path

    assert sampling_path(modeling, device, precision, compile) == path


def test_eager_static_steps_attend_only_to_the_filled_slots(monkeypatch) -> None:
    import runners.fast_decode as fast_decode

    m, lengths = model(), []
    attend = fast_decode.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None):
        lengths.append(k.shape[2])
        return attend(q, k, v, attn_mask=attn_mask)

    monkeypatch.setattr(fast_decode.F, "scaled_dot_product_attention", spy)
    sample(StaticDecoder(m, compile=False), torch.tensor([0, 4]))
    N, layers = m.config.seq_len, m.config.layers
    assert lengths == [n for n in range(1, N + 1) for _ in range(layers)]  # step n: the n slots filled, per layer

"""The AR generator's KV-cached decoding path equals the full-prefix recompute (logits and sampled tokens)."""

from __future__ import annotations

import pytest
import torch

from runners.generators import ARGenerator, GeneratorConfig, KVCache
from runners.sampling import sample_ar
from runners.scan import scan_positions

torch.set_num_threads(1)


def random_model(token_each: int, bits_each: int = 5, std: float = 0.3, seed: int = 0) -> ARGenerator:
    torch.manual_seed(seed)
    model = ARGenerator(GeneratorConfig("tiny", 4, 4, token_each, bits_each, num_classes=5))
    with torch.no_grad():
        for head in model.heads:
            head.weight.normal_(0.0, std)
    return model.eval()


@pytest.mark.parametrize("order", ["raster", "diagonal_zigzag"])
@pytest.mark.parametrize("token_each", [1, 2, 4])
def test_cached_logits_match_full_prefix_at_every_step(token_each: int, order: str) -> None:
    model = random_model(token_each)
    positions = scan_positions(order, 4, 4)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 32, (3, 16, token_each), generator=g)
    labels = torch.tensor([0, 4, 5])  # 5 = null class
    teacher = model(ids, labels, positions=positions)  # (B, N, K, V)
    cache = model.init_cache(3, positions=positions)
    with torch.no_grad():
        for n in range(16):
            step = model.prefill(ids[:, :0], labels, cache) if n == 0 else model.decode_step(ids[:, n - 1], cache)
            full = model.next_logits(ids[:, :n], labels, positions=positions)  # recompute the whole prefix
            assert step.shape == (3, token_each, 32)
            torch.testing.assert_close(step, full, atol=1e-4, rtol=0)
            torch.testing.assert_close(step, teacher[:, n], atol=1e-4, rtol=0)
            assert cache.length == n + 1
    assert isinstance(cache, KVCache) and cache.capacity == 16


def test_prefill_with_a_prefix_equals_stepwise_decoding() -> None:
    model = random_model(2)
    positions = scan_positions("column", 4, 4)
    ids = torch.randint(0, 32, (2, 16, 2), generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        chunked = model.init_cache(2, positions=positions)
        logits_5 = model.prefill(ids[:, :5], labels, chunked)  # class + 5 tokens at once (causal inside the chunk)
        stepwise = model.init_cache(2, positions=positions)
        model.prefill(ids[:, :0], labels, stepwise)
        for n in range(5):
            last = model.decode_step(ids[:, n], stepwise)
        torch.testing.assert_close(logits_5, last, atol=1e-5, rtol=0)
        for cache_a, cache_b in zip(chunked.keys, stepwise.keys):
            torch.testing.assert_close(cache_a[:, :, :6], cache_b[:, :, :6], atol=1e-5, rtol=0)
        torch.testing.assert_close(model.decode_step(ids[:, 5], chunked), model.decode_step(ids[:, 5], stepwise),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("order", ["raster", "diagonal_zigzag"])
@pytest.mark.parametrize("token_each", [1, 2, 4])
def test_sample_ar_same_tokens_with_and_without_cache(token_each: int, order: str) -> None:
    model = random_model(token_each, std=0.5)
    positions = scan_positions(order, 4, 4)
    labels = torch.tensor([0, 1, 2, 3])
    for knobs in (dict(), dict(cfg_scale=3.0, cfg_schedule="linear", top_k=8), dict(cfg_scale=2.0, top_p=0.8)):
        cached = sample_ar(model, labels, generator=torch.Generator().manual_seed(3), positions=positions, **knobs)
        full = sample_ar(model, labels, generator=torch.Generator().manual_seed(3), positions=positions,
                         kv_cache=False, **knobs)
        assert torch.equal(cached, full), knobs
    assert cached.shape == (4, 16, token_each)


def test_cfg_cache_holds_doubled_batch() -> None:
    model = random_model(2)
    calls: list[int] = []
    original = model.init_cache

    def spy(batch_size: int, **kwargs) -> KVCache:
        calls.append(batch_size)
        return original(batch_size, **kwargs)

    model.init_cache = spy  # type: ignore[method-assign]
    sample_ar(model, torch.tensor([0, 1, 2]), cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    sample_ar(model, torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    assert calls == [6, 3]  # guided: conditional + null-class rows


def test_cache_errors() -> None:
    model = random_model(1)
    ids = torch.zeros(2, 16, 1, dtype=torch.long)
    labels = torch.tensor([0, 1])
    cache = model.init_cache(2)
    with pytest.raises(ValueError, match="decode_step needs the class token first"):
        model.decode_step(ids[:, 0], cache)
    with torch.no_grad():
        model.prefill(ids[:, :15], labels, cache)  # class + tokens 0..14: the cache is full (N = 16 slots)
        with pytest.raises(ValueError, match="the KV cache holds N=16 slots"):
            model.decode_step(ids[:, 15], cache)
        with pytest.raises(ValueError, match="prefill needs an empty cache"):
            model.prefill(ids[:, :0], labels, cache)
        with pytest.raises(ValueError, match="the cache was made for batch 3, but got a batch of 2"):
            model.prefill(ids[:, :0], labels, model.init_cache(3))
    with pytest.raises(ValueError, match=r"positions must have shape \(N, 2\)"):
        model.init_cache(2, positions=scan_positions("raster", 2, 2))
    with pytest.raises(ValueError, match="tokens must have shape"):
        fresh = model.init_cache(2)
        model.prefill(ids[:, :0], labels, fresh)
        model.decode_step(ids[:, 0, 0], fresh)

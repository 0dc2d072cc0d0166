"""Tests of runners/analysis/token_randomness.py: KL to uniform of unigrams / bigrams, the sample-size floor,
and the BPE text baseline."""

from __future__ import annotations

import math

import pytest
import torch

from runners.analysis.token_randomness import bigram_kl, text_corpus_ids, unigram_kl


def test_uniform_counts_give_kl_exactly_zero() -> None:
    ids = torch.arange(8).repeat(5)  # every id of V = 8 exactly 5 times
    out = unigram_kl(ids, 8)
    assert out["kl"] == 0.0
    assert out["entropy"] == math.log(8) == out["log_v"]
    assert out["count"] == 40
    # Bigrams: all 4 pairs of V = 2 once each in [[0, 0, 1, 1, 0]] -> uniform over V^2, KL 0.
    pairs = bigram_kl(torch.tensor([[0, 0, 1, 1, 0]]), 2)
    assert pairs["kl"] == 0.0 and pairs["count"] == 4 and pairs["log_v"] == 2 * math.log(2)


def test_two_symbol_unigram_by_hand() -> None:
    # p = (3/4, 1/4) over V = 2: KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.1308120;
    # H = ln 2 - KL = 0.5623351.
    out = unigram_kl(torch.tensor([0, 0, 0, 1]), 2)
    assert out["kl"] == pytest.approx(0.1308120359, abs=1e-9)
    assert out["entropy"] == pytest.approx(0.5623351446, abs=1e-9)
    assert out["log_v"] == pytest.approx(0.6931471806, abs=1e-9)
    # Any shape and lists of sequences read the same tokens.
    assert unigram_kl([[0, 0], [0, 1]], 2)["kl"] == out["kl"]
    assert unigram_kl(torch.tensor([[0, 0], [0, 1]]), 2)["kl"] == out["kl"]


def test_bigram_by_hand_and_pairs_stay_within_sequences() -> None:
    # [0, 1, 0, 1]: pairs (0,1), (1,0), (0,1) -> p = (2/3, 1/3) on 2 of the 4 bins of V^2.
    # H = -(2/3 ln 2/3 + 1/3 ln 1/3) = 0.6365142; KL = 2 ln 2 - H = 1.3862944 - 0.6365142 = 0.7497802.
    out = bigram_kl(torch.tensor([[0, 1, 0, 1]]), 2)
    assert out["count"] == 3
    assert out["entropy"] == pytest.approx(0.6365141683, abs=1e-9)
    assert out["kl"] == pytest.approx(0.7497801928, abs=1e-9)
    # Two sequences [0, 1] and [0, 1]: the pair (1, 0) across their boundary must not be counted:
    # only (0, 1) twice -> one bin of 4, KL = ln 4.
    split = bigram_kl(torch.tensor([[0, 1], [0, 1]]), 2)
    assert split["count"] == 2 and split["kl"] == pytest.approx(math.log(4), abs=1e-12)
    ragged = bigram_kl([[0, 1, 0, 1], [1]], 2)  # a list with a length-1 sequence: no pair from it
    assert ragged["count"] == 3 and ragged["kl"] == out["kl"]


def test_uniform_floor_is_positive_and_shrinks_with_count() -> None:
    floors = [unigram_kl(torch.zeros(n, dtype=torch.int64), 16)["uniform_floor_kl"] for n in (100, 1000, 10000)]
    assert all(floor > 0 for floor in floors)
    assert floors[0] > floors[1] > floors[2]
    # Plug-in bias for n >> |V|: about (|V| - 1) / (2 n) = 15 / 20000 = 0.00075 at n = 10000.
    assert floors[2] == pytest.approx(0.00075, rel=0.3)
    # Seeded: the same floor again; another seed another floor.
    assert unigram_kl(torch.zeros(100, dtype=torch.int64), 16)["uniform_floor_kl"] == floors[0]
    assert unigram_kl(torch.zeros(100, dtype=torch.int64), 16, floor_seed=1)["uniform_floor_kl"] != floors[0]
    # Uniformly random tokens sit at their floor, not above it.
    generator = torch.Generator().manual_seed(3)
    random_ids = torch.randint(0, 16, (64, 64), generator=generator)
    uni, bi = unigram_kl(random_ids, 16), bigram_kl(random_ids, 16)
    assert uni["kl"] < 3 * uni["uniform_floor_kl"]
    assert bi["kl"] < 1.5 * bi["uniform_floor_kl"] and bi["uniform_floor_kl"] > uni["uniform_floor_kl"]


def test_rejects_ids_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size\) = \[0, 4\)"):
        unigram_kl(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        bigram_kl(torch.tensor([0, 1, 2]), 4)


def test_text_is_far_from_uniform() -> None:
    ids = text_corpus_ids(1024)  # pydoc_data.topics, byte-level BPE with 1024 symbols
    assert len(ids) == 79 and min(map(min, ids)) >= 0 and max(map(max, ids)) < 1024
    uni, bi = unigram_kl(ids, 1024), bigram_kl(ids, 1024)
    print(f"\ntext unigram {uni}\ntext bigram {bi}")
    assert uni["count"] > 100_000
    assert uni["kl"] > 0.5 and uni["kl"] > 50 * uni["uniform_floor_kl"]
    assert bi["kl"] > uni["kl"] and bi["kl"] > bi["uniform_floor_kl"] + 1.0
    with pytest.raises(ValueError, match="too small"):
        text_corpus_ids(1024, path=__file__)  # this file alone cannot fill 1024 BPE symbols

"""runners/vocab.py: the K-c bits <-> sub-token ids map."""

from __future__ import annotations

import pytest
import torch

from runners.vocab import Vocabulary


def test_properties() -> None:
    vocab = Vocabulary(code_dim=24, token_each=2)
    assert (vocab.bits_each, vocab.size) == (12, 4096)
    assert (Vocabulary(20, 2).bits_each, Vocabulary(20, 2).size) == (10, 1024)
    assert (Vocabulary(16, 1).bits_each, Vocabulary(16, 1).size) == (16, 65536)


def test_literal_examples() -> None:
    # First bit most significant within each chunk.
    assert Vocabulary(4, 2).bits_to_ids(torch.tensor([1.0, 0.0, 1.0, 1.0])).tolist() == [2, 3]
    assert Vocabulary(4, 1).bits_to_ids(torch.tensor([1, 0, 1, 1])).tolist() == [11]
    assert Vocabulary(4, 4).bits_to_ids(torch.tensor([True, False, True, True])).tolist() == [1, 0, 1, 1]
    assert Vocabulary(6, 2).bits_to_ids(torch.tensor([[0, 0, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])).tolist() == [
        [1, 7],
        [4, 0],
    ]
    assert Vocabulary(4, 2).ids_to_bits(torch.tensor([2, 3])).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert Vocabulary(8, 2).ids_to_bits(torch.tensor([5, 12])).tolist() == [0, 1, 0, 1, 1, 1, 0, 0]
    out = Vocabulary(4, 2).ids_to_bits(torch.tensor([[0, 1]]))
    assert out.dtype == torch.float32 and out.tolist() == [[0.0, 0.0, 0.0, 1.0]]


@pytest.mark.parametrize(("code_dim", "token_each"), [(8, 1), (8, 2), (16, 4), (20, 2), (24, 2), (24, 3), (32, 4)])
def test_round_trip_is_exact(code_dim: int, token_each: int) -> None:
    vocab = Vocabulary(code_dim, token_each)
    generator = torch.Generator().manual_seed(code_dim * 100 + token_each)
    bits = (torch.rand(3, 5, code_dim, generator=generator) < 0.5).float()  # (B, N, D)
    ids = vocab.bits_to_ids(bits)  # (B, N, K)
    assert ids.shape == (3, 5, token_each) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < vocab.size
    assert torch.equal(vocab.ids_to_bits(ids), bits)
    # And the other way round: every id pattern survives ids -> bits -> ids.
    ids = torch.randint(0, vocab.size, (7, token_each), generator=generator)
    assert torch.equal(vocab.bits_to_ids(vocab.ids_to_bits(ids)), ids)


def test_all_codes_are_distinct_ids() -> None:
    vocab = Vocabulary(6, 2)
    codes = torch.tensor([[(n >> (5 - i)) & 1 for i in range(6)] for n in range(64)])  # (64, 6), n in binary
    ids = vocab.bits_to_ids(codes)  # (64, 2)
    assert ids[:, 0].tolist() == [n // 8 for n in range(64)] and ids[:, 1].tolist() == [n % 8 for n in range(64)]


def test_errors() -> None:
    with pytest.raises(ValueError) as info:
        Vocabulary(code_dim=20, token_each=3)
    assert str(info.value) == "token_each must divide code_dim (20), but got token_each=3; try 1, 2, 4, 5, 10 or 20"
    with pytest.raises(ValueError, match="token_each must divide"):
        Vocabulary(code_dim=8, token_each=0)
    with pytest.raises(ValueError, match="code_dim must be >= 1"):
        Vocabulary(code_dim=0, token_each=1)
    vocab = Vocabulary(4, 2)
    with pytest.raises(ValueError, match="last dimension code_dim=4"):
        vocab.bits_to_ids(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="only the values 0 and 1"):
        vocab.bits_to_ids(torch.tensor([0.3, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        vocab.ids_to_bits(torch.tensor([4, 0]))
    with pytest.raises(ValueError, match="integer tensor"):
        vocab.ids_to_bits(torch.tensor([1.0, 0.0]))

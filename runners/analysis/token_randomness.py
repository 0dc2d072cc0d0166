"""Token randomness: how far image tokens are from uniform, against text (ELM.md "Analyses beyond FID").

For a token distribution p over a vocabulary V,

    KL(p || uniform) = sum_v p(v) ln(p(v) |V|) = ln|V| - H(p)        (nats)

with p the plug-in estimate (counts / total). Unigrams use every token; bigrams use consecutive pairs
in scan order, p over V x V, so ln|V| becomes ln|V|^2 = 2 ln|V|. The paper's finding: image tokens
(BAE, VQGAN) sit far closer to uniform than a BPE text corpus.

The plug-in estimate is biased: even truly uniform tokens show KL > 0 from a finite sample (about
(|V| - 1) / (2 n) nats for n draws when n >> |V|; far more for bigrams, where |V|^2 bins share the same
n pairs). Each result therefore carries `uniform_floor_kl`: the same estimator on uniform draws of the
same shape (seeded, averaged over a few draws). A KL near its floor says "as random as sampling
allows us to tell".

Inputs: ids as int tensors or lists of int sequences. K sub-tokens per position: pass one sub-token
stream `ids[..., k]`, or flatten `(B, N * K)` to read sub-tokens in their decoding order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

DEFAULT_FLOOR_DRAWS = 4
DEFAULT_FLOOR_SEED = 0

IdSequences = Tensor | Sequence[Sequence[int]]


def _kl_from_counts(counts: Tensor, bins: int) -> float:
    """KL(p || uniform over `bins`) of observed counts (zeros allowed), as sum p ln(p * bins), in float64.

    Written as ln(c * bins / n) rather than ln|V| - H so that exactly uniform counts give exactly 0.
    """
    counts = counts[counts > 0].to(torch.float64)
    total = counts.sum()
    return float((counts / total * torch.log(counts * bins / total)).sum())


def _check_vocab(ids: Tensor, vocab_size: int) -> None:
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, but got vocab_size={vocab_size}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(
            f"ids must lie in [0, vocab_size) = [0, {vocab_size}), but got ids in "
            f"[{int(ids.min())}, {int(ids.max())}]; pass the vocabulary size of the tokens (2**bits_each for one "
            f"sub-token stream)"
        )


def _as_flat(ids: IdSequences) -> Tensor:
    if isinstance(ids, Tensor):
        return ids.reshape(-1).long()
    return torch.tensor([token for sequence in ids for token in sequence], dtype=torch.int64)


def _pair_codes(ids: IdSequences, vocab_size: int) -> Tensor:
    """Consecutive pairs within each sequence -> codes a * V + b, (pairs,) int64."""
    if isinstance(ids, Tensor):
        if ids.ndim != 2:
            raise ValueError(f"ids must be (B, N) sequences in scan order, but got shape {tuple(ids.shape)}")
        ids = ids.long()
        return (ids[:, :-1] * vocab_size + ids[:, 1:]).reshape(-1)  # (B * (N - 1),)
    codes = [a * vocab_size + b for sequence in ids for a, b in zip(sequence[:-1], sequence[1:])]
    return torch.tensor(codes, dtype=torch.int64)


def _uniform_floor(draw: Callable[[torch.Generator], Tensor], bins: int, draws: int, seed: int) -> float:
    """Mean KL of `draws` seeded samples of uniform codes from `draw` (same estimator as the data's)."""
    if draws < 1:
        raise ValueError(f"floor_draws must be >= 1, but got floor_draws={draws}; try {DEFAULT_FLOOR_DRAWS}")
    generator = torch.Generator().manual_seed(seed)
    total = sum(_kl_from_counts(torch.unique(draw(generator), return_counts=True)[1], bins) for _ in range(draws))
    return total / draws


def unigram_kl(
    ids: IdSequences, vocab_size: int, *, floor_draws: int = DEFAULT_FLOOR_DRAWS, floor_seed: int = DEFAULT_FLOOR_SEED
) -> dict[str, float | int]:
    """KL to uniform of the unigram distribution of ids (any shape, or a list of sequences), in nats.

    Returns {"log_v": ln|V|, "entropy": H(p), "kl": ln|V| - H(p), "count": tokens, "uniform_floor_kl":
    mean KL of `floor_draws` seeded draws of `count` uniform tokens}.
    """
    flat = _as_flat(ids)  # (M,)
    _check_vocab(flat, vocab_size)
    count = flat.numel()
    if count == 0:
        raise ValueError("ids must hold at least one token, but got none")
    kl = _kl_from_counts(torch.unique(flat, return_counts=True)[1], vocab_size)
    def draw(generator: torch.Generator) -> Tensor:  # `count` uniform tokens
        return torch.randint(0, vocab_size, (count,), generator=generator)

    floor = _uniform_floor(draw, vocab_size, floor_draws, floor_seed)
    log_v = math.log(vocab_size)
    return {"log_v": log_v, "entropy": log_v - kl, "kl": kl, "count": count, "uniform_floor_kl": floor}


def bigram_kl(
    ids: IdSequences, vocab_size: int, *, floor_draws: int = DEFAULT_FLOOR_DRAWS, floor_seed: int = DEFAULT_FLOOR_SEED
) -> dict[str, float | int]:
    """KL to uniform over V x V of consecutive pairs in scan order, in nats.

    ids: `(B, N)` int sequences (pairs never cross sequences), or a list of sequences of any lengths.
    Returns {"log_v": ln|V|^2, "entropy", "kl", "count": pairs, "uniform_floor_kl": the same estimator on
    uniform tokens of the same sequence lengths}.
    """
    flat = _as_flat(ids)
    _check_vocab(flat, vocab_size)
    codes = _pair_codes(ids, vocab_size)  # (pairs,)
    count = codes.numel()
    if count == 0:
        raise ValueError("bigrams need sequences of length >= 2, but got no consecutive pair")
    bins = vocab_size * vocab_size
    kl = _kl_from_counts(torch.unique(codes, return_counts=True)[1], bins)

    def draw(generator: torch.Generator) -> Tensor:  # uniform tokens in the same sequence lengths -> pair codes
        if isinstance(ids, Tensor):
            return _pair_codes(torch.randint(0, vocab_size, tuple(ids.shape), generator=generator), vocab_size)
        sequences = [torch.randint(0, vocab_size, (len(sequence),), generator=generator) for sequence in ids]
        return torch.cat([s[:-1] * vocab_size + s[1:] for s in sequences])

    floor = _uniform_floor(draw, bins, floor_draws, floor_seed)
    log_v = 2.0 * math.log(vocab_size)
    return {"log_v": log_v, "entropy": log_v - kl, "kl": kl, "count": count, "uniform_floor_kl": floor}


def text_corpus_ids(vocab_size: int = 2048, path: str | None = None) -> list[list[int]]:
    """A text baseline: ids of a corpus under a byte-level BPE trained on it (HF `tokenizers`), offline.

    path: a UTF-8 text file, one document per blank-line-separated block; default the standard library's
    `pydoc_data.topics` (Python's help texts, ~0.47 M characters, 79 documents), which fills BPE
    vocabularies of about 1k-4k. Training is deterministic. Returns one id list per document; every
    id lies in [0, vocab_size).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if path is None:
        import pydoc_data.topics

        documents = [pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)]
    else:
        text = Path(path).read_text(encoding="utf-8")
        documents = [block for block in text.split("\n\n") if block.strip()]
    if not documents:
        raise ValueError(f"the corpus {path!r} holds no text")
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # 256 byte symbols: every text encodes, no unknown token
    if vocab_size <= len(alphabet):
        raise ValueError(f"vocab_size must exceed the {len(alphabet)} byte symbols, but got vocab_size={vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, initial_alphabet=alphabet, special_tokens=[]
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the corpus is too small for a BPE vocabulary of {vocab_size}: training stopped at "
            f"{tokenizer.get_vocab_size()} symbols; use a smaller vocab_size or a larger corpus"
        )
    return [encoding.ids for encoding in tokenizer.encode_batch(documents)]

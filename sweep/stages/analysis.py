"""analysis: ELM's analyses beyond FID (token randomness, attention locality) as rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from runners.analysis.attention import attention_maps, locality
from runners.analysis.token_randomness import bigram_kl, text_corpus_ids, unigram_kl
from runners.artifacts import load_generator, load_tokenizer
from runners.data import batches
from runners.scan import scan_positions, to_scan
from runners.tokenizers import vocabulary_for
from sweep.stages.common import Log, dataset_of, loader_of, pick_device


@torch.no_grad()
def analysis_stage(
    stage: Any, inputs: dict[str, Path], out: Path, log: Log, checkpoints: Path | None = None
) -> dict[str, Any]:
    """ELM's analyses beyond FID; returns `rows`: one row per (subject, n-gram order) or per layer."""
    s = stage.settings
    device = pick_device(stage.resources.gpus)
    if s["analysis"] == "token_randomness_text":
        ids = text_corpus_ids(s["text_bpe_vocab"], s["text_corpus"])
        subject = f"text (BPE {s['text_bpe_vocab']})"
        return {"rows": [
            {"analysis": "token_randomness", "subject": subject, "order": order, **measure(ids, s["text_bpe_vocab"])}
            for order, measure in (("unigram", unigram_kl), ("bigram", bigram_kl))
        ]}

    data = dataset_of(stage)
    tokenizer = load_tokenizer(inputs["tokenizer"], device)
    read = list(batches(data.heldout, s["images"], loader_of(stage), limit=s["images"]))  # the first `images` only
    images, labels = torch.cat([b for b, _ in read]), torch.cat([y for _, y in read])
    grid = tuple(tokenizer.grid)
    if s["analysis"] == "token_randomness":
        vocab = vocabulary_for(tokenizer, s["token_each"])
        _, vocab_size = tokenizer.token_shape(vocab)
        ids = to_scan(tokenizer.encode_ids(images.to(device), mode="threshold", vocab=vocab), s["scan_order"], *grid)
        sequences = ids.flatten(1).cpu()  # (B, N*K): sub-tokens in scan order, consecutive pairs are bigrams
        name = stage.columns["tokenizer"]
        subject = f"{name} {stage.columns['vocab']}" if name == "bae" else f"{name} {vocab_size}"
        return {"rows": [
            {"analysis": "token_randomness", "subject": subject, "order": order, **measure(sequences, vocab_size)}
            for order, measure in (("unigram", unigram_kl), ("bigram", bigram_kl))
        ]}

    # attention locality of a trained generator on real held-out tokens
    generator, config, saved = load_generator(inputs["generator"], device)
    vocab = vocabulary_for(tokenizer, config.token_each)
    positions = scan_positions(saved["scan_order"], *grid, device=device)
    ids = to_scan(tokenizer.encode_ids(images.to(device), mode="threshold", vocab=vocab), saved["scan_order"], *grid)
    maps = attention_maps(generator, ids, labels.to(device), positions=positions)  # (layers, B, H, T, T)
    causal = saved["modeling"] == "ar"
    # AR: one class slot, then a slot per position (the last position is predicted, never attended from);
    # MLM (the authors' layout): K class slots, then the K sub-tokens of every position in turn
    class_slots = 1 if causal else config.token_each
    slots = positions.repeat_interleave(1 if causal else config.token_each, 0)[: maps.shape[-1] - class_slots]
    per_layer = locality(maps, slots, k=s["locality_k"], causal=causal, class_tokens=class_slots)
    return {"rows": [{"analysis": "attention_locality", **layer} for layer in per_layer]}



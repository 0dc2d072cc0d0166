"""How many images one sampling forward may hold on a device: an estimate of the bytes a sample occupies while it
is sampled, and the number of SAMPLE_BATCH blocks that fit in the free memory.

The evaluation stage samples blocks of B = 100 labels, each block from its own seeded generator; on a GPU with
room to spare it runs G consecutive blocks in one forward (runners/sampling.py draws each block's slice from
its own generator, so the images do not depend on G). G comes from

    G = floor((usable x free bytes - decode bytes of one block) / (bytes per sample x B)), clamped to [1, blocks]

where free bytes is what `torch.cuda.mem_get_info()` reports with the generator, tokenizer and feature
extractor already loaded, usable = 0.8 leaves headroom for the feature extractor's batch and the allocator's
fragmentation, and the tokenizer decodes one block at a time whatever G is (its bytes do not grow with G).

Bytes per sample (one row of the batch; twice that with classifier-free guidance, which doubles the batch),
with b = 4 bytes per value in fp32 and 2 in bf16 (the KV cache and activations; logits are float32):

    AR    KV cache     2 (keys, values) x layers x N x width x b
          one step     16 x width x 4 (the slot's activations through a block)  +  4 x K x V x 4 (logits and
                       their filtered, softmax and sampled copies)
    MLM   one layer    10 x T x width x b (q, k, v, attention output, 4x MLP, residual)  +  heads x T^2 x b
                       (attention scores, if the kernel materialises them), T = K (N + 1) slots
          logits       4 x N x K x V x 4 (logits, the guided mix, softmax and log-softmax)

Decode bytes per image: 4 live activations of the tokenizer decoder's full-resolution level, channels x H x W x
4 bytes each. These are upper-bound style estimates, not measurements: they decide a batch size, never a number
in a result (the images do not depend on G).
"""

from __future__ import annotations

USABLE_SHARE = 0.8
"""Share of the free device memory the sampling batch may plan for (the rest: extractor batch, fragmentation)."""


def bytes_per_sample(
    modeling: str, *, layers: int, width: int, heads: int, seq_len: int, token_each: int, vocab_size: int,
    guided: bool, precision: str,
) -> int:
    """Device bytes one sample occupies while it is sampled (see the module docstring for the terms)."""
    if modeling not in ("ar", "mlm"):
        raise ValueError(f"modeling must be 'ar' or 'mlm', but got {modeling!r}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', but got {precision!r}")
    b = 2 if precision == "bf16" else 4
    K, V, N = token_each, vocab_size, seq_len
    if modeling == "ar":
        cache = 2 * layers * N * width * b
        per_row = cache + 16 * width * 4 + 4 * K * V * 4
    else:
        slots = K * (N + 1)
        per_row = 10 * slots * width * b + heads * slots * slots * b + 4 * N * K * V * 4
    return per_row * (2 if guided else 1)


def decode_bytes_per_image(image_size: int, channels: int) -> int:
    """Device bytes the tokenizer decoder holds per image: 4 activations of `channels` at full resolution."""
    return 4 * channels * image_size * image_size * 4


def blocks_per_forward(
    free_bytes: int, *, per_sample: int, decode_per_image: int, block: int, max_blocks: int,
    usable: float = USABLE_SHARE,
) -> int:
    """G, the blocks of `block` samples one forward may hold: what fits in `usable` x `free_bytes` after one
    block's decode, at `per_sample` bytes each, at least 1 and at most `max_blocks` (every block of the stage)."""
    if per_sample < 1 or block < 1 or max_blocks < 1:
        raise ValueError(f"per_sample, block and max_blocks must be >= 1, but got {per_sample}, {block}, {max_blocks}")
    budget = usable * free_bytes - decode_per_image * block
    return max(1, min(max_blocks, int(budget // (per_sample * block))))

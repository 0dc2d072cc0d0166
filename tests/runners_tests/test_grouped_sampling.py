"""Several blocks in one sampler forward: each block's rows draw from its own generator in the order they would
alone (runners/sampling.py), so grouping never changes a block's tokens; and the memory estimate that picks the
group size on a GPU (runners/sampling_memory.py), on literal numbers."""

from __future__ import annotations

import pytest
import torch

from runners.generators import GENERATORS, GeneratorConfig
from runners.sampling import row_slices
from runners.sampling_memory import blocks_per_forward, bytes_per_sample, decode_bytes_per_image

torch.set_num_threads(1)
KNOBS = {"cfg_scale": 2.0, "cfg_schedule": "linear", "temperature": 1.0, "top_k": 0, "top_p": 0.9, "mlm_steps": 4,
         "mlm_tau": 4.5}
BLOCK = 6


def model_of(modeling: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = GeneratorConfig("tiny", token_each=2, bits_each=4, grid_height=3, grid_width=3, num_classes=10)
    model = GENERATORS[modeling].build(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # informative logits, not the near-uniform ones of a fresh init
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def generators(blocks: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(1000 + b) for b in range(blocks)]


@pytest.mark.parametrize("modeling", ["ar", "mlm"])
def test_three_blocks_in_one_forward_give_each_block_its_own_tokens(modeling):
    model, sample = model_of(modeling), GENERATORS[modeling].sample
    labels = torch.arange(3 * BLOCK) % 10  # (18,): three blocks of 6
    alone = torch.cat([sample(model, labels[b * BLOCK : (b + 1) * BLOCK], KNOBS, g, None)
                       for b, g in enumerate(generators(3))])  # G = 1, block by block
    grouped = sample(model, labels, KNOBS, generators(3), None)  # G = 3
    # measured on this CPU: equal to the last token (the batched matmuls of 6 and 18 rows round alike here)
    assert torch.equal(grouped, alone)
    # the grouping is what makes them equal: one generator for all 18 rows draws other tokens
    assert not torch.equal(sample(model, labels, KNOBS, generators(1)[0], None), alone)
    # and the order of the generators is the order of the slices
    assert not torch.equal(sample(model, labels, KNOBS, generators(3)[::-1], None), alone)


def test_generators_split_the_rows_evenly():
    gens = generators(3)
    assert [(rows.start, rows.stop) for rows, _ in row_slices(12, gens)] == [(0, 4), (4, 8), (8, 12)]
    assert row_slices(5, gens[0]) == [(slice(0, 5), gens[0])]
    with pytest.raises(ValueError, match="splits the batch evenly, one slice each, but got 3 generators for 10 rows"):
        row_slices(10, gens)


def test_bytes_per_sample_on_literal_numbers():
    # AR, 2 layers of width 64, N = 16, K = 2, V = 16, bf16 (b = 2), guided (x 2):
    #   cache 2 x 2 x 16 x 64 x 2 = 8192; step 16 x 64 x 4 + 4 x 2 x 16 x 4 = 4096 + 512; (8192 + 4608) x 2
    ar = dict(layers=2, width=64, heads=4, seq_len=16, token_each=2, vocab_size=16)
    assert bytes_per_sample("ar", **ar, guided=True, precision="bf16") == 25600
    assert bytes_per_sample("ar", **ar, guided=False, precision="fp32") == 16384 + 4608
    # MLM, same shapes, fp32, unguided: T = 2 x 17 = 34 slots;
    #   10 x 34 x 64 x 4 = 87040, 4 x 34^2 x 4 = 18496, logits 4 x 16 x 2 x 16 x 4 = 8192
    assert bytes_per_sample("mlm", **ar, guided=False, precision="fp32") == 113728
    # the paper's XL AR 2-10 at 256 px (36 layers, width 1280, N = 256, V = 1024), bf16 and guided: ~95 MB each
    xl = bytes_per_sample("ar", layers=36, width=1280, heads=20, seq_len=256, token_each=2, vocab_size=1024,
                          guided=True, precision="bf16")
    assert xl == 94_601_216  # 2 x (47_185_920 cache + 81_920 + 32_768)
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', but got 'fp16'"):
        bytes_per_sample("ar", **ar, guided=True, precision="fp16")


def test_decode_bytes_and_blocks_per_forward_on_literal_numbers():
    assert decode_bytes_per_image(256, 128) == 134_217_728  # 4 x 128 x 256 x 256 x 4: 128 MiB per image
    # 80 GB free: 0.8 x 80e9 = 64e9, minus one block's decode 100 x 134_217_728 = 13.42e9, leaves 50.58e9;
    # blocks of 100 XL samples take 9.46e9 each: 5 blocks (500 images per forward)
    assert blocks_per_forward(80_000_000_000, per_sample=94_601_216, decode_per_image=134_217_728, block=100,
                              max_blocks=500) == 5
    assert blocks_per_forward(80_000_000_000, per_sample=1000, decode_per_image=0, block=100, max_blocks=7) == 7  # cap
    assert blocks_per_forward(1_000, per_sample=10**9, decode_per_image=10**9, block=100, max_blocks=7) == 1  # floor

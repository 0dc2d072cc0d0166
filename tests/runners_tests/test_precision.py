"""`precision="bf16"` really trains under bfloat16 autocast: the matmuls of the forward pass compute in bf16
(the weights stay float32); "fp32" keeps them in float32. Fails if the autocast is turned off."""

from __future__ import annotations

import pytest
import torch

from runners.generators import GENERATORS, GeneratorConfig
from runners.train_generator import train_generator

torch.set_num_threads(1)


def tiny_config() -> GeneratorConfig:
    return GeneratorConfig("tiny", token_each=2, bits_each=4, grid_height=3, grid_width=3, num_classes=4)


def batch_fn_for(config: GeneratorConfig):
    def batch_fn(step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, config.vocab_size, (8, config.seq_len, config.token_each), generator=generator)
        return ids, torch.randint(0, config.num_classes, (8,), generator=generator)  # (B, N, K), (B,)

    return batch_fn


def linear_output_dtypes(name: str, precision: str) -> set[torch.dtype]:
    torch.manual_seed(0)
    config = tiny_config()
    model = GENERATORS[name].build(config)
    seen: set[torch.dtype] = set()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears, f"{name} has no nn.Linear to watch"
    for module in linears:
        module.register_forward_hook(lambda _m, _i, output: seen.add(output.dtype))
    result = train_generator(model, batch_fn_for(config), steps=2, lr=1e-3, seed=0, precision=precision)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # master weights stay float32
    return seen


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_bf16_training_computes_in_bfloat16(name: str) -> None:
    assert linear_output_dtypes(name, "bf16") == {torch.bfloat16}
    assert linear_output_dtypes(name, "fp32") == {torch.float32}

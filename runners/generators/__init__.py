"""Generator registry: modeling method ("ar", "mlm") -> builder, analytic parameter count, code version,
and a uniform sampler.

A new generator is one new file plus one line in GENERATORS. Every entry is checked by one contract
suite (tests/runners_tests/test_generator_contract.py).

Uniform sampling call, for the evaluation stage:

    entry = GENERATORS[modeling]
    ids = entry.sample(model, labels, knobs, generator, positions)   # (B, N, K) in scan order

`knobs` is a mapping that must hold every name in `entry.sample_knobs` (extra keys are ignored, so
the whole settings dict may be passed); the names in `entry.optional_knobs` are read when present and
take the default given there otherwise:

    ar:  cfg_scale, cfg_schedule, temperature, top_k, top_p      -> runners.sampling.sample_ar
    mlm: cfg_scale, cfg_schedule, mlm_steps, mlm_tau             -> runners.sampling.sample_mlm
    both, optional: cfg_power (p of the powercos CFG schedule, default 1)

`tokens_per_sample(modeling, config)` is what a training sample costs in transformer slots (the
cost estimate's tokens): N positions for AR whatever K, K (N + 1) slots for MLM.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from runners.generators.ar import (
    GENERATOR_SIZES,
    ARGenerator,
    GeneratorConfig,
    GeneratorSize,
    KVCache,
    parameter_count,
    sequence_slots,
)
from runners.generators.mlm import MLMGenerator
from runners.generators.mlm import parameter_count as mlm_parameter_count
from runners.generators.mlm import sequence_slots as mlm_sequence_slots
from runners.sampling import DEFAULT_CFG_POWER, sample_ar, sample_mlm

SampleFn = Callable[[nn.Module, Tensor, Mapping[str, Any], torch.Generator, "Tensor | None"], Tensor]
"""(model, labels (B,), knobs, generator, positions (N, 2) or None) -> ids (B, N, K); generator may also be a
sequence of G generators, each owning B / G consecutive rows (runners/sampling.py)"""


@dataclass(frozen=True)
class GeneratorEntry:
    """How to build one kind of generator, sample from it, and what identifies its code."""

    build: Callable[[GeneratorConfig], nn.Module]
    """config -> freshly initialised model"""
    parameter_count: Callable[[GeneratorConfig], int]
    """config -> exact parameter count, computed without allocating weights"""
    code_version: str
    """bumped whenever a change alters what a trained model computes (part of the stage key)"""
    description: str
    sample: SampleFn
    """(model, labels, knobs, generator, positions) -> ids (B, N, K); reads knobs[name] for sample_knobs"""
    sample_knobs: tuple[str, ...]
    """the knob names `sample` reads (all required)"""
    sequence_slots: Callable[[GeneratorConfig], int]
    """config -> transformer slots one training sample runs through (the cost estimate's tokens per sample)"""
    optional_knobs: Mapping[str, Any]
    """knob name -> default: read by `sample` when the knobs hold it, else the default"""


OPTIONAL_KNOBS = {"cfg_power": DEFAULT_CFG_POWER}


def _knobs(knobs: Mapping[str, Any], names: tuple[str, ...], modeling: str) -> dict[str, Any]:
    missing = [name for name in names if name not in knobs]
    if missing:
        raise ValueError(f"sampling knobs for modeling {modeling!r} must hold {list(names)}, but {missing} are missing")
    return {name: knobs[name] for name in names} | {name: knobs.get(name, d) for name, d in OPTIONAL_KNOBS.items()}


AR_KNOBS = ("cfg_scale", "cfg_schedule", "temperature", "top_k", "top_p")
MLM_KNOBS = ("cfg_scale", "cfg_schedule", "mlm_steps", "mlm_tau")


def _sample_ar(
    model: nn.Module, labels: Tensor, knobs: Mapping[str, Any], generator: torch.Generator, positions: Tensor | None
) -> Tensor:
    k = _knobs(knobs, AR_KNOBS, "ar")
    return sample_ar(
        model, labels, cfg_scale=float(k["cfg_scale"]), cfg_schedule=str(k["cfg_schedule"]),
        cfg_power=float(k["cfg_power"]), temperature=float(k["temperature"]), top_k=int(k["top_k"]), top_p=float(k["top_p"]),
        generator=generator, positions=positions,
    )


def _sample_mlm(
    model: nn.Module, labels: Tensor, knobs: Mapping[str, Any], generator: torch.Generator, positions: Tensor | None
) -> Tensor:
    k = _knobs(knobs, MLM_KNOBS, "mlm")
    return sample_mlm(
        model, labels, steps=int(k["mlm_steps"]), tau=float(k["mlm_tau"]), cfg_scale=float(k["cfg_scale"]),
        cfg_schedule=str(k["cfg_schedule"]), cfg_power=float(k["cfg_power"]), generator=generator, positions=positions,
    )


GENERATORS: dict[str, GeneratorEntry] = {
    "ar": GeneratorEntry(
        ARGenerator,
        parameter_count,
        # ar-2: the class slot's rotary row is zero (its q and k vanish), as in the authors' code
        "ar-2",
        "Llama-style causal transformer, class token first, K sub-token heads, next-position prediction",
        _sample_ar,
        AR_KNOBS,
        sequence_slots,
        OPTIONAL_KNOBS,
    ),
    "mlm": GeneratorEntry(
        MLMGenerator,
        mlm_parameter_count,
        # mlm-2: the authors' module: K zero-rotated class slots, no sub-token embedding, detached table in the
        # head, LayerNorm at default init, a bias over V + [MASK], mask step drawn once per batch
        "mlm-2",
        "Llama-style bidirectional transformer, K sub-tokens flattened, shared table + [MASK], MAGE head, "
        "cosine mask schedule; MaskGIT decoding",
        _sample_mlm,
        MLM_KNOBS,
        mlm_sequence_slots,
        OPTIONAL_KNOBS,
    ),
}


def tokens_per_sample(modeling: str, config: GeneratorConfig) -> int:
    """Transformer slots one training sample of `modeling` runs through: what the cost estimate multiplies
    by steps x batch (AR: N positions, its K sub-tokens share a slot; MLM: K (N + 1))."""
    if modeling not in GENERATORS:
        raise ValueError(f"modeling must be one of {sorted(GENERATORS)}, but got modeling={modeling!r}")
    return GENERATORS[modeling].sequence_slots(config)

__all__ = [
    "GENERATORS",
    "GENERATOR_SIZES",
    "ARGenerator",
    "GeneratorConfig",
    "GeneratorEntry",
    "GeneratorSize",
    "KVCache",
    "MLMGenerator",
    "parameter_count",
    "tokens_per_sample",
]

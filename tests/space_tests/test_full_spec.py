"""space/full.yaml, the paper's ImageNet-256 study: accepted and planned on a CPU, with pinned stage counts."""

from __future__ import annotations

from pathlib import Path

from space.schema import load_spec
from sweep.plan import make_plan
from sweep.validate import check_spec, describe_stage

FULL = Path(__file__).parent.parent.parent / "space" / "full.yaml"


def test_full_spec_stage_counts_are_pinned():
    spec = load_spec(FULL)
    check_spec(spec)
    plan = make_plan(spec)
    # no dataset classifier: inception features, and the spec does not ask for class accuracy
    assert plan.counts() == {"classifier": 0, "reference": 1, "tokenizer": 6, "reconstruction": 6, "generator": 24,
                             "evaluation": 44, "analysis": 0}
    # the vocabulary study trains one BAE per code size (16, 20, 24, 32 bits), not one per vocabulary
    vocabulary = [t for t in plan.trials if t.trial.study == "vocabulary-size"]
    assert len({t.keys["tokenizer"] for t in vocabulary}) == 4
    assert len({t.keys["generator"] for t in vocabulary}) == 12


def test_every_generator_has_a_parameter_count_and_cost():
    plan = make_plan(load_spec(FULL))
    described = {(s.columns["size"], s.columns["modeling"], s.columns["vocab"]): describe_stage(s) for s in plan.of_kind("generator")}
    assert described[("L", "ar", "2-10")]["parameter_count"] == 315_648_000
    assert described[("2B", "ar", "1-16")]["parameter_count"] == 2_108_556_800
    assert all(d["gpu_hours"] > 0 for d in described.values())

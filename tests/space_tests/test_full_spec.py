"""space/full.yaml, the paper's ImageNet-256 study: accepted and planned on a CPU (without its files), with pinned
stage counts, every released configuration planned with its parameter count, and the cost estimate in literals."""

from __future__ import annotations

from pathlib import Path

from space.schema import expand, load_spec
from sweep.plan import make_plan
from sweep.stages.planning import RELEASED_GENERATORS
from sweep.validate import check_spec, describe_stage

FULL = Path(__file__).parent.parent.parent / "space" / "full.yaml"


def _plan():
    spec = load_spec(FULL)
    check_spec(spec, files=False)  # the ImageNet-scale files are not on a CPU box: a plan does not need them
    return make_plan(spec, missing_ok=True)


def test_full_spec_stage_counts_are_pinned():
    plan = _plan()
    # no dataset classifier: inception features, and the spec does not ask for class accuracy;
    # references: the ADM batch (evaluations) and the held-out images (rFID); generators: 24 grid cells of which
    # the main-results table shares L 2-10 and L 2-12 with other studies, XL 2-10 and 2-12 with vocabulary-size
    assert plan.counts() == {"classifier": 0, "reference": 2, "tokenizer": 6, "reconstruction": 6, "generator": 23,
                             "evaluation": 43, "analysis": 0}
    # the vocabulary study trains one BAE per code size (16, 20, 24, 32 bits), not one per vocabulary
    vocabulary = [t for t in plan.trials if t.trial.study == "vocabulary-size"]
    assert len({t.keys["tokenizer"] for t in vocabulary}) == 4
    assert len({t.keys["generator"] for t in vocabulary}) == 10  # 3-8 and 4-8 at L only


def test_main_results_hold_the_papers_table_and_no_run_it_never_made():
    trials = expand(load_spec(FULL))
    main = {(t.settings.size, t.settings.vocab, t.settings.code_dim) for t in trials if t.study == "main-results"}
    assert main == {("L", "2-10", 20), ("L", "2-12", 24), ("XL", "2-10", 20), ("XL", "2-12", 24), ("XXL", "2-10", 20),
                    ("XXL", "2-12", 24), ("2B", "2-12", 24)}
    assert not [t for t in trials if t.settings.size == "2B" and t.settings.vocab != "2-12"]
    baseline = load_spec(FULL).baseline
    assert (baseline.generator_ema, baseline.perceptual_weight, baseline.gan_weight, baseline.gan_start) == (
        0.9999, 1.0, 1.0, 30002)
    assert baseline.reference == "adm_npz" and baseline.samples_per_class * 1000 == 50_000


def test_every_released_configuration_is_planned_with_its_parameter_count():
    described = [describe_stage(s) for s in _plan().of_kind("generator")]
    released = {d["released"]: d["parameter_count"] for d in described if "released" in d}
    assert sorted(released) == sorted(RELEASED_GENERATORS.values()) and len(released) == 15
    assert released["gpt/L-2-10.pth"] == 315_648_000
    assert released["gpt/XL-2-12.pth"] == 757_004_800  # the table's "ELM-XL 757M"
    assert released["gpt/2B-2-12.pth"] == 1_909_458_432
    assert released["gpt/mlmL-1-16.pth"] == 377_583_617  # the authors' MLM head bias covers [MASK] too


def test_cost_estimate_counts_positions_not_sub_tokens():
    described = {(s.columns["size"], s.columns["modeling"], s.columns["vocab"], s.columns["tokenizer"],
                  s.columns["bernoulli"], s.columns["scan_order"]): describe_stage(s) for s in _plan().of_kind("generator")}
    l_2_10 = described[("L", "ar", "2-10", "bae", True, "raster")]
    l_1_16 = described[("L", "ar", "1-16", "bae", True, "raster")]
    # 6 x params x 2M steps x batch 256 x 256 positions at 400 TFLOP/s: fewer parameters, fewer GPU-hours
    assert round(l_2_10["gpu_hours"], 4) == 172.3859 and round(l_1_16["gpu_hours"], 4) == 242.2507
    # the MLM runs the class token and all 256 positions
    assert round(described[("L", "mlm", "1-16", "bae", True, "raster")]["gpu_hours"], 4) == 207.0165
    assert all(d["gpu_hours"] > 0 and not d["imported"] for d in described.values())

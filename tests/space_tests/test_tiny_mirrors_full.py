"""space/tiny.yaml is space/full.yaml in miniature: the same studies in the same order, varying and fixing
the same axes around a baseline that sets the same axes; only the values (and the dataset) are CPU-sized.

The stage counts are pinned because they are the demo's budget: `make demo` must finish (install
included) in 10 minutes on a fresh 2-core machine, and these 41 stages took about 3.5 minutes through
Ray on 2 quiet cores. Adding stages means measuring again (see the README's "What you get").
"""

from __future__ import annotations

from pathlib import Path

import yaml

from space.schema import expand, load_spec
from sweep.plan import make_plan
from sweep.validate import check_spec

SPACE = Path(__file__).parent.parent.parent / "space"
CPU_SIZES = {"tiny", "small"}


def test_same_studies_and_axes_differing_only_in_scale():
    tiny, full = load_spec(SPACE / "tiny.yaml"), load_spec(SPACE / "full.yaml")
    assert [s.name for s in tiny.studies] == [s.name for s in full.studies]
    assert len(tiny.studies) == 9
    for small, big in zip(tiny.studies, full.studies):
        assert list(small.vary) == list(big.vary), small.name
        assert sorted(small.fixed) == sorted(big.fixed), small.name
    assert tiny.dataset.name == "digits" and tiny.dataset.image_size == 16
    assert full.dataset.name == "imagefolder"


def test_baselines_set_the_same_axes():
    # every choice full.yaml states explicitly, tiny.yaml states too (nothing silently left at a default)
    tiny = yaml.safe_load((SPACE / "tiny.yaml").read_text())["baseline"]
    full = yaml.safe_load((SPACE / "full.yaml").read_text())["baseline"]
    assert sorted(tiny) == sorted(full)


def test_every_tiny_trial_runs_at_cpu_scale():
    tiny = load_spec(SPACE / "tiny.yaml")
    for trial in expand(tiny):
        s = trial.settings
        assert s.size in CPU_SIZES and s.tokenizer_size == "tiny", trial.study
        assert s.feature_extractor == "classifier", trial.study  # Inception on a CPU is far too slow
        assert s.code_dim <= 12 and s.bits_each <= 8, (trial.study, s.vocab)  # vq: a 2^code_dim codebook
        assert s.generator_steps <= 400 and s.samples_per_class <= 20, trial.study
    seeds = {study.name: len(study.seeds or tiny.seeds) for study in tiny.studies}
    assert seeds["vocabulary-size"] == 2 and max(seeds.values()) == 2
    assert sum(n == 1 for n in seeds.values()) == 8


def test_tiny_validates_and_plans_within_the_demo_budget():
    tiny = load_spec(SPACE / "tiny.yaml")
    check_spec(tiny)
    plan = make_plan(tiny)
    assert {kind: n for kind, n in plan.counts().items() if n} == {
        "classifier": 1, "reference": 1, "tokenizer": 4, "reconstruction": 4, "generator": 10, "evaluation": 21,
        # the paper's analyses beyond FID: token randomness per tokenizer x vocab (6) and of the text baseline (1),
        # attention locality per generator (10)
        "analysis": 17,
    }
    # the vocabulary study trains one BAE per code size (8 and 12 bits) and one generator per vocab and seed
    vocabulary = [t for t in plan.trials if t.trial.study == "vocabulary-size"]
    assert len({t.keys["tokenizer"] for t in vocabulary}) == 2
    assert len({t.keys["generator"] for t in vocabulary}) == 6
    # sampling-only studies reuse the baseline generator: no training of their own
    baseline_generator = {t.keys["generator"] for t in plan.trials if t.trial.study == "cfg-schedule"}
    assert len(baseline_generator) == 1
    assert {t.keys["generator"] for t in plan.trials if t.trial.study == "top-k"} == baseline_generator
    # so does the main-results miniature: its two cells are the vocabulary study's seed-0 runs
    main = {t.keys["evaluation"] for t in plan.trials if t.trial.study == "main-results"}
    assert len(main) == 2 and main <= {t.keys["evaluation"] for t in vocabulary}

"""Planning: golden stage keys for a fixture spec, deduplication, and the `plan` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from space.schema import load_spec
from sweep.plan import make_plan

FIXTURES = Path(__file__).parent.parent / "fixtures"
GOLDEN = FIXTURES / "plan_golden.json"  # written once by hand (see its "how" field), reviewed, never by tests


def plan_summary(plan) -> dict:
    return {
        "counts": plan.counts(),
        "trials": [
            {"study": t.trial.study, "seed": t.trial.seed, "varied": {a: getattr(t.trial.settings, a) for a in t.trial.varied},
             "keys": t.keys}
            for t in plan.trials
        ],
    }


def test_plan_matches_the_golden_file():
    golden = json.loads(GOLDEN.read_text())
    summary = plan_summary(make_plan(load_spec(FIXTURES / "plan.yaml")))
    assert summary["counts"] == golden["counts"]
    assert summary["trials"] == golden["trials"]


def test_identical_stages_are_planned_once():
    plan = make_plan(load_spec(FIXTURES / "plan.yaml"))
    # 16 trials but: one classifier; one reference (one feature extractor); tokenizers for code_dim 8 and 12, each
    # with its reconstruction FID; generators per (code_dim, K, seed)
    assert plan.counts() == {"classifier": 1, "reference": 1, "tokenizer": 2, "reconstruction": 2, "generator": 7,
                             "evaluation": 13, "analysis": 0}
    # the vocabulary study's three generators per seed share one tokenizer
    vocab = [t for t in plan.trials if t.trial.study == "vocabulary"]
    assert len({t.keys["tokenizer"] for t in vocab}) == 1
    assert len({t.keys["generator"] for t in vocab}) == 6
    # the guidance study's baseline point (cfg 2.0, top_k 0) is the vocabulary study's K=1 point
    shared = {t.keys["evaluation"] for t in vocab} & {t.keys["evaluation"] for t in plan.trials if t.trial.study == "guidance"}
    assert len(shared) == 2  # one per seed


def test_stages_come_in_dependency_order():
    plan = make_plan(load_spec(FIXTURES / "plan.yaml"))
    seen: set[str] = set()
    for stage in plan.stages.values():
        assert set(stage.depends_on) <= seen
        seen.add(stage.key)


def test_plan_json_lists_every_stage_with_parameter_counts():
    result = subprocess.run([sys.executable, "-m", "sweep.cli", "plan", str(FIXTURES / "plan.yaml"), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["stages"]) == 26
    generators = [s for s in data["stages"] if s["kind"] == "generator"]
    assert all(s["parameter_count"] > 0 and len(s["depends_on"]) == 1 for s in generators)
    evaluation = next(s for s in data["stages"] if s["kind"] == "evaluation")
    assert set(evaluation["depends_on"]) == set(evaluation["inputs"].values())

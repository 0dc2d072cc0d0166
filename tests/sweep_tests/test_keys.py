"""Content keys: exactly the determining settings, however they were spelled."""

from __future__ import annotations

from pathlib import Path

import pytest

from space.schema import AXES_OF_STAGE, Resources, parse_spec
from sweep.keys import canonical_json, content_key, derive_seed
from sweep.plan import make_plan

FIXTURES = Path(__file__).parent.parent / "fixtures"


def spec_with(**baseline):
    return parse_spec({
        "schema_version": 1, "name": "k", "baseline": baseline,
        "studies": [{"name": "s", "vary": {"token_each": [1, 2]}}],
    })


def keys_by_kind(plan):
    return {kind: sorted(s.key for s in plan.of_kind(kind)) for kind in ("classifier", "tokenizer", "generator", "evaluation")}


def test_canonical_json_normalises_numbers_and_order():
    assert canonical_json({"b": 1, "a": -0.0}) == '{"a":0.0,"b":1}'
    assert content_key("x", {"lr": 3e-3}, {}, {}) == content_key("x", {"lr": 0.003}, {}, {})
    with pytest.raises(ValueError, match="finite"):
        canonical_json({"lr": float("nan")})


def test_integral_float_spellings_give_one_key():
    assert keys_by_kind(make_plan(spec_with(cfg_scale=2))) == keys_by_kind(make_plan(spec_with(cfg_scale=2.0)))


def test_resources_never_enter_a_key():
    plain = make_plan(spec_with())
    spec = spec_with().model_copy(update={"resources": {"generator": Resources(cpus=4, gpus=1)}})
    assert keys_by_kind(make_plan(spec)) == keys_by_kind(plain)


def test_evaluation_settings_do_not_change_upstream_keys():
    a, b = keys_by_kind(make_plan(spec_with(cfg_scale=1.0))), keys_by_kind(make_plan(spec_with(cfg_scale=3.0)))
    assert a["tokenizer"] == b["tokenizer"] and a["generator"] == b["generator"]
    assert a["evaluation"] != b["evaluation"]


def test_generator_settings_do_not_change_tokenizer_keys():
    a, b = keys_by_kind(make_plan(spec_with(generator_lr=1e-3))), keys_by_kind(make_plan(spec_with(generator_lr=2e-3)))
    assert a["tokenizer"] == b["tokenizer"] and a["classifier"] == b["classifier"]
    assert set(a["generator"]).isdisjoint(b["generator"])


def test_tokenizer_change_propagates_downstream():
    a, b = keys_by_kind(make_plan(spec_with(tokenizer_steps=10))), keys_by_kind(make_plan(spec_with(tokenizer_steps=11)))
    assert a["classifier"] == b["classifier"]
    for kind in ("tokenizer", "generator", "evaluation"):
        assert set(a[kind]).isdisjoint(b[kind])


def test_code_version_enters_the_key(monkeypatch):
    import sweep.stages.planning as stages

    before = keys_by_kind(make_plan(spec_with()))
    monkeypatch.setitem(stages.STAGE_CODE_VERSIONS, "generator", "999")
    after = keys_by_kind(make_plan(spec_with()))
    assert before["tokenizer"] == after["tokenizer"]
    assert set(before["generator"]).isdisjoint(after["generator"])
    assert set(before["evaluation"]).isdisjoint(after["evaluation"])


def test_each_kind_hashes_exactly_its_own_settings():
    # nothing else (no resources, retries or output folder) can reach a key: the hashed settings are these
    plan = make_plan(spec_with())
    expected = {
        "classifier": {"dataset", *AXES_OF_STAGE["classifier"]},
        # a BAE has no codebook; a trained tokenizer imports no checkpoint
        "tokenizer": {"dataset", *AXES_OF_STAGE["tokenizer"]} - {"restart_dead_codes", "tokenizer_checkpoint"},
        # an AR generator reads neither the MLM mask schedule nor the MLM sampling knobs
        # ... nor, without intermediate evaluations, their sample count; EMA off and no import leave keys as they were
        "generator": {"dataset", "seed", *AXES_OF_STAGE["generator"]}
        - {"mask_schedule_steps", "intermediate_every", "intermediate_samples_per_class", "generator_ema",
           "generator_checkpoint"},
        # ... and sampling in fp32 (the default) leaves evaluation keys as they were before the axis existed
        "evaluation": {"dataset", "sampling_seed", *AXES_OF_STAGE["evaluation"]} - {"mlm_steps", "mlm_tau", "sampling_precision"},
        "reference": {"dataset", "feature_extractor"},
        "reconstruction": {"dataset"},  # everything else arrives through the tokenizer and reference keys
    }
    for stage in plan.stages.values():
        assert set(stage.settings) == expected[stage.kind], stage.kind
    assert {k: sorted(s.inputs) for k, s in ((s.kind, s) for s in plan.stages.values())} == {
        "classifier": [], "tokenizer": [], "generator": ["tokenizer"],
        "evaluation": ["classifier", "generator", "reference", "tokenizer"],
        "reference": ["classifier"], "reconstruction": ["classifier", "reference", "tokenizer"],
    }


def test_sampling_seed_is_derived_from_the_training_seed():
    assert derive_seed("sampling", 0) == derive_seed("sampling", 0) != derive_seed("sampling", 1)
    assert 0 <= derive_seed("sampling", 7) < 2**31


def test_knobs_a_generator_does_not_read_leave_its_keys_alone():
    mlm = lambda **kw: keys_by_kind(make_plan(spec_with(modeling="mlm", **kw)))  # noqa: E731
    ar = lambda **kw: keys_by_kind(make_plan(spec_with(**kw)))  # noqa: E731
    assert mlm(top_k=0) == mlm(top_k=50)  # MLM decoding reads no top-k
    assert mlm(mlm_steps=8)["evaluation"] != mlm(mlm_steps=12)["evaluation"]
    assert ar(mlm_tau=1.0) == ar(mlm_tau=3.0)
    assert ar(top_k=0)["evaluation"] != ar(top_k=50)["evaluation"]

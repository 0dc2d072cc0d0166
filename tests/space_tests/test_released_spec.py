"""space/released.yaml: every released generator, paired with the BAE its vocabulary reads, imported (not trained)
and scored with the paper's protocol against the ADM reference batch; one variable sets every path."""

from __future__ import annotations

from pathlib import Path

import pytest

from space.schema import SpecError, expand, load_spec
from sweep.plan import make_plan
from sweep.stages.planning import RELEASED_GENERATORS, RELEASED_TOKENIZERS
from sweep.validate import check_spec, describe_stage

RELEASED = Path(__file__).parent.parent.parent / "space" / "released.yaml"


def test_every_released_generator_is_evaluated_with_its_bae(monkeypatch, tmp_path):
    monkeypatch.setenv("ELM_CKPT", str(tmp_path))
    spec = load_spec(RELEASED)
    generators = {name: entry for name, entry in spec.checkpoints.items() if entry.kind in ("ar", "mlm")}
    assert sorted(entry.path for entry in generators.values()) == sorted(RELEASED_GENERATORS.values())
    for entry in generators.values():
        assert RELEASED_GENERATORS[(entry.kind, entry.size, entry.vocab)] == entry.path
        token_each, bits_each = map(int, entry.vocab.split("-"))
        bae = spec.checkpoints[entry.tokenizer]
        assert RELEASED_TOKENIZERS[(token_each * bits_each, True)] == bae.path  # bae_<K*c>, Bernoulli-trained
    tokenizers = sorted(e.path for e in spec.checkpoints.values() if e.kind == "bae")
    assert tokenizers == sorted(RELEASED_TOKENIZERS.values())
    released = [t.settings for t in expand(spec) if t.study == "released"]
    assert sorted(s.generator_checkpoint for s in released) == sorted(generators)
    for s in released:  # the paper's protocol
        assert (s.samples_per_class, s.cfg_schedule, s.reference, s.feature_extractor) == (50, "linear", "adm_npz",
                                                                                         "inception")
    assert spec.checkpoint_path("L-2-10") == tmp_path / "gpt" / "L-2-10.pth"
    assert spec.adm_reference_path() == tmp_path / "VIRTUAL_imagenet256_labeled.npz"


def test_it_plans_without_the_files_and_trains_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("ELM_CKPT", str(tmp_path))
    spec = load_spec(RELEASED)
    check_spec(spec, files=False)
    plan = make_plan(spec, missing_ok=True)
    assert {k: n for k, n in plan.counts().items() if n} == {"reference": 1, "tokenizer": 3, "generator": 15,
                                                           "evaluation": 32}
    described = {s.columns["generator_checkpoint"]: describe_stage(s) for s in plan.of_kind("generator")}
    assert described["L-2-10"]["parameter_count"] == 315_648_000 and described["L-2-10"]["released"] == "gpt/L-2-10.pth"
    assert all(d["imported"] and d["gpu_hours"] == 0 for d in described.values())
    with pytest.raises(SpecError, match="19 missing file"):  # 15 generators, 3 BAEs (bae_16_deter is not read), ADM
        check_spec(spec)


def test_the_readme_elm_l_spec_is_the_released_specs_l_2_10_evaluation(monkeypatch, tmp_path):
    monkeypatch.setenv("ELM_CKPT", str(tmp_path))
    for name in ("gpt/L-2-10.pth", "bae/bae_20/binaryae_ema.th", "VIRTUAL_imagenet256_labeled.npz"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())  # stand-ins: keys hash the bytes
    elm_l = load_spec(RELEASED.parent / "elm-l-2-10.yaml")
    check_spec(elm_l)  # its three files are all it reads
    (trial,) = make_plan(elm_l).trials
    released = make_plan(load_spec(RELEASED), missing_ok=True)
    same = [t for t in released.trials if t.trial.study == "released" and t.trial.settings.generator_checkpoint == "L-2-10"]
    assert [t.keys["evaluation"] for t in same] == [trial.keys["evaluation"]]

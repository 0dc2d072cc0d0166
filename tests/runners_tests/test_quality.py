"""Quality bars of the demo's tiny models, measured through the real stage functions."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from rich.console import Console

from runners.generators import GENERATORS, GeneratorConfig
from runners.artifacts import CONFIG_FILE, save_model
from sweep.stages import evaluation_stage
from space.schema import load_spec
from sweep.executors import SerialExecutor
from sweep.plan import make_plan
from sweep.progress import Reporter
from sweep.run import run_sweep

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    spec = load_spec(FIXTURES / "quality.yaml")
    summary = run_sweep(spec, out, SerialExecutor(), Reporter(Console(file=io.StringIO())))
    assert summary.failures == []
    return out, make_plan(spec)


def row(out: Path, kind: str) -> dict:
    return pd.read_parquet(next((out / "stages" / kind).glob("*/row.parquet"))).iloc[0].to_dict()


def test_classifier_is_a_reliable_judge(run):
    assert row(run[0], "classifier")["heldout_accuracy"] >= 0.90


def test_tokenizer_reconstructs_and_uses_its_bits(run):
    tokenizer = row(run[0], "tokenizer")
    assert tokenizer["psnr_db"] >= tokenizer["mean_image_psnr_db"] + 3.0
    assert tokenizer["bit_usage"] >= 0.9


def test_generator_learns_from_uniform(run):
    generator = row(run[0], "generator")
    uniform = math.log(2**8)
    assert abs(generator["initial_loss"] - uniform) < 1e-3
    assert generator["final_loss"] < 0.9 * uniform


def test_trained_generator_with_guidance_beats_chance_and_its_untrained_self(run, tmp_path):
    out, plan = run
    trained = row(out, "evaluation")
    assert trained["class_accuracy"] >= 0.30  # 3x chance on 10 classes

    # the same evaluation, of the same architecture with its initial weights
    stage = plan.of_kind("evaluation")[0]
    inputs = {role: out / "stages" / role / key for role, key in stage.inputs.items()}
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    saved = json.loads((inputs["generator"] / CONFIG_FILE).read_text())
    torch.manual_seed(0)
    save_model(GENERATORS[saved["modeling"]].build(GeneratorConfig(**saved["config"])), untrained, saved)
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    baseline = evaluation_stage(stage, {**inputs, "generator": untrained}, evaluation, lambda *_: None)
    assert trained["fid"] <= 0.5 * baseline["fid"], (trained["fid"], baseline["fid"])
    shutil.rmtree(evaluation)


def test_samples_do_not_depend_on_how_blocks_are_split_over_workers(run):
    from runners.artifacts import load_generator, load_tokenizer
    from runners.scan import scan_positions
    from runners.tokenizers import vocabulary_for
    from sweep.stages.common import SAMPLE_BATCH, balanced_labels, iter_sample_blocks

    out, plan = run
    stage = plan.of_kind("evaluation")[0]
    folder = lambda role: out / "stages" / role / stage.inputs[role]  # noqa: E731
    device = torch.device("cpu")
    tokenizer = load_tokenizer(folder("tokenizer"), device)
    model, config, saved = load_generator(folder("generator"), device)
    grid = (config.grid_height, config.grid_width)
    args = (vocabulary_for(tokenizer, config.token_each), model, GENERATORS[saved["modeling"]], saved["scan_order"],
            grid, scan_positions(saved["scan_order"], *grid))
    labels = balanced_labels(10, 30, device)  # 300 images: 3 blocks of SAMPLE_BATCH
    blocks = range(len(labels) // SAMPLE_BATCH)
    one_worker = dict(iter_sample_blocks(blocks, labels, stage.settings, tokenizer, *args))
    four_workers = {}
    for worker in range(4):  # round-robin, in reverse order within each worker
        four_workers.update(iter_sample_blocks(list(blocks)[worker::4][::-1], labels, stage.settings, tokenizer, *args))
    assert sorted(four_workers) == list(blocks)
    for block in blocks:
        assert torch.equal(one_worker[block], four_workers[block])

"""Tokenizer training checkpoints (the protocol of runners/checkpoint.py) and the tokenizer stage's wiring.

A run interrupted after its 2nd checkpoint and resumed from it ends bit-identical to a run never
interrupted, with the GAN on (discriminator and its optimizer in the checkpoint) and off; the tokenizer stage
checkpoints into the stage's folder, records `resumed_from_step`, and trains with the LPIPS weights the spec
names in `assets.perceptual_weights`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import TensorDataset

from runners.checkpoint import CHECKPOINT_FILE, Checkpointer
from sweep.stages import tokenizer_stage
from runners.tokenizers.bae import BinaryAutoencoder
from runners.tokenizers.losses import VGG_CHANNELS, convert_lpips_state_dict, vgg16_features
from runners.train_tokenizer import train_tokenizer
from space.schema import parse_spec
from sweep.plan import make_plan

STEPS = 7  # 24 images in batches of 8: 3 per epoch, so the run crosses two reshuffles; checkpoints at 2, 4, 6
GAN = dict(gan_weight=0.5, gan_start=2, disc_width=8)


pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupted(Exception):
    pass


def images() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(24, 1, 16, 16, generator=generator), torch.arange(24) % 10)


def tiny() -> BinaryAutoencoder:
    torch.manual_seed(0)
    return BinaryAutoencoder(code_dim=8, size="tiny", channels=1, image_size=16)  # Bernoulli bits in training


def train(folder: Path | None, gan: bool, *, interrupt_after: int | None = None) -> tuple[dict, list]:
    """EMA weights and on_log calls of one run, checkpointing every 2 steps into `folder`."""
    def on_save(step: int) -> None:
        if interrupt_after is not None and checkpointer.saved == interrupt_after:
            raise Interrupted(f"after checkpoint {checkpointer.saved} (step {step})")

    checkpointer = Checkpointer(folder, every_steps=2, on_save=on_save)
    logs: list[tuple[int, dict[str, float]]] = []
    ema = train_tokenizer(tiny(), images(), steps=STEPS, lr=3e-3, batch_size=8, seed=0, log_every=3,
                          on_log=lambda step, terms: logs.append((step, terms)), checkpointer=checkpointer,
                          **(GAN if gan else {}))
    return ema.state_dict(), logs


@pytest.mark.parametrize("gan", [False, True], ids=["gan-off", "gan-on"])
def test_an_interrupted_run_resumes_bit_identically(tmp_path: Path, gan: bool) -> None:
    expected, expected_logs = train(None, gan)

    with pytest.raises(Interrupted, match="checkpoint 2 .step 4"):
        train(tmp_path, gan, interrupt_after=2)
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)
    assert saved["step"] == 4 and (saved["discriminator"] is not None) == gan
    assert len(saved["rng"]["generators"]) == 2  # data order, Bernoulli bits (a TensorDataset draws nothing)
    resumed, logs = train(tmp_path, gan)

    assert set(resumed) == set(expected)
    for name, value in expected.items():
        assert torch.equal(resumed[name], value), name
    assert [step for step, _ in logs] == [6, 7]  # only the steps after the checkpoint ran again
    assert logs == expected_logs[-2:]  # the terms summed since step 3's log came back with the checkpoint
    if gan:
        assert "gan_d" in logs[0][1]


def test_the_comparison_can_fail_without_the_bernoulli_stream(tmp_path: Path) -> None:
    expected, _ = train(None, gan=False)
    with pytest.raises(Interrupted):
        train(tmp_path, gan=False, interrupt_after=2)
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)
    state["rng"]["generators"][1] = torch.Generator().manual_seed(123).get_state()  # other bits from step 5 on
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    resumed, _ = train(tmp_path, gan=False)
    assert max((resumed[name] - value).abs().max().item() for name, value in expected.items()) > 1e-6


# ----------------------------------------------------------------------------------------------- the tokenizer stage


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random LPIPS-VGG16 weights in the documented format, made with convert_lpips_state_dict."""
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = {f"features.{k}": v.shape for k, v in vgg16_features().state_dict().items()}
    vgg = {k: torch.randn(shape) * (2.0 / math.prod(shape[1:])) ** 0.5 if k.endswith("weight") else torch.zeros(shape)
           for k, shape in shapes.items()}
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(VGG_CHANNELS)}
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg16.safetensors"
    save_file(convert_lpips_state_dict(vgg, lin), str(path))
    return path


def test_tokenizer_stage_checkpoints_resumes_and_reads_the_spec_weights(tmp_path: Path, lpips_file: Path) -> None:
    spec = parse_spec({
        "schema_version": 1, "name": "lpips", "dataset": {"name": "digits", "image_size": 16},
        "baseline": {"code_dim": 8, "tokenizer_steps": 5, "tokenizer_batch": 8, "perceptual_weight": 0.5},
        "studies": [{"name": "one", "vary": {"token_each": [1]}}],
        "assets": {"perceptual_weights": str(lpips_file)},
        "runtime": {"checkpoint_every_steps": 2, "checkpoint_every_minutes": 0},
    })
    (stage,) = make_plan(spec).of_kind("tokenizer")
    assert stage.runtime["perceptual_weights"] == str(lpips_file)  # absolute path: read, never hashed

    def run(out: Path) -> tuple[dict[str, Any], list]:
        out.mkdir()
        logs: list[tuple[int, dict[str, float]]] = []
        row = tokenizer_stage(stage, {}, out, lambda step, values: logs.append((step, values)),
                              checkpoints=tmp_path / "ckpt")
        return {**row, "weights": load_file(str(out / "model.safetensors"))}, logs

    first, logs = run(tmp_path / "first")  # checkpoints at steps 2 and 4 (the last step saves none)
    assert first["resumed_from_step"] == -1
    assert "perceptual" in logs[-1][1] and logs[-1][1]["perceptual"] > 0  # the LPIPS term trained
    second, _ = run(tmp_path / "second")  # finds step 4's checkpoint: only step 5 runs again
    assert second["resumed_from_step"] == 4
    for name, value in first["weights"].items():
        assert torch.equal(second["weights"][name], value), name
    timing = ["weights", "resumed_from_step", "images_per_s", "achieved_tflops", "mfu"]  # throughput: wall-clock
    assert pd.Series(first).drop(timing).equals(pd.Series(second).drop(timing))

    lpips_file.write_bytes(lpips_file.read_bytes()[:-4] + b"\0\0\0\0")  # the file changed since planning
    with pytest.raises(ValueError, match="perceptual_weights must be the file the sweep was planned with"):
        tokenizer_stage(stage, {}, tmp_path / "third", lambda *_: None)

"""`sweep import`: released generator checkpoints (in the authors' exact layout, tests/fixtures/authors_layout.py)
become artifacts that load_generator reads and that give the authors' logits; everything else is refused with
exit 2 and nothing written, and no pickle is ever executed."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from runners.artifacts import load_generator
from sweep.cli import main

torch.set_num_threads(1)

_spec = importlib.util.spec_from_file_location(
    "authors_layout", Path(__file__).resolve().parents[1] / "fixtures" / "authors_layout.py"
)
authors_layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(authors_layout)  # type: ignore[union-attr]


def saved(tmp_path: Path, state: object, name: str = "L-2-10.pth") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_ar_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = saved(tmp_path, authors_layout.ar_state(token_each=2, bits=4))
    out = tmp_path / "imported" / "ar"
    code = main(["import", "ar", str(file), "--out", str(out), "--grid", "4x4", "--vocab", "2-4", "--size", "tiny",
                 "--num-classes", "5"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not list(out.parent.glob(".ar.importing-*"))  # the staging folder is gone
    saved_config = json.loads((out / "config.json").read_text())
    imported = saved_config["imported"]
    assert imported["file"] == str(file.resolve())
    assert imported["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert imported["bytes"] == file.stat().st_size and imported["left_out"] == []
    assert imported["parameter_count"] == imported["authors_parameter_count"] == 144_064
    assert saved_config["config"]["class_rotary"] == "zero" and saved_config["scan_order"] == "raster"

    model, config, _ = load_generator(out, torch.device("cpu"))
    assert (config.size, config.token_each, config.bits_each, config.grid_height) == ("tiny", 2, 4, 4)
    ids, labels = authors_layout.inputs(token_each=2, bits=4)
    with torch.no_grad():
        logits = model(ids, labels)
    # the authors' module on the same tensors (see tests/runners_tests/test_released_generators.py)
    torch.testing.assert_close(logits[0, 0, 0, :4], torch.tensor([0.309148, -1.350422, 2.229820, -0.416553]),
                               rtol=0, atol=1e-5)
    assert logits.abs().sum().item() == pytest.approx(834.3061, rel=1e-5)


def test_mlm_round_trip_leaves_out_the_unused_tensors(tmp_path: Path) -> None:
    file = saved(tmp_path, authors_layout.mlm_state(token_each=1, bits=5), "mlmL-1-16.pth")
    out = tmp_path / "mlm"
    assert main(["import", "mlm", str(file), "--out", str(out)]) == 0
    imported = json.loads((out / "config.json").read_text())["imported"]
    assert imported["left_out"] == ["output.weight", "pos_embed.weight"]
    assert imported["authors_parameter_count"] - imported["parameter_count"] == 33 * 64 + 16 * 64
    model, config, _ = load_generator(out, torch.device("cpu"))
    assert (config.grid_height, config.grid_width) == (4, 4)  # read from pos_embed
    ids, labels = authors_layout.inputs(token_each=1, bits=5)
    masked = torch.zeros(2, 16, dtype=torch.bool)
    masked[0, ::3] = True
    masked[1, 5:] = True
    with torch.no_grad():
        logits = model(torch.where(masked[..., None], torch.full_like(ids, 32), ids), labels)
    torch.testing.assert_close(logits[0, 0, 0, :4], torch.tensor([-3.554348, 12.723201, 3.590726, -5.011754]),
                               rtol=0, atol=1e-4)


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], out: Path, *needles: str) -> None:
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.importing-*"))


def test_refuses_a_file_that_is_no_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    out = tmp_path / "out"
    refused(capsys, ["import", "ar", str(junk), "--out", str(out)], out, "is not a checkpoint this command reads")
    refused(capsys, ["import", "ar", str(tmp_path / "absent.pth"), "--out", str(out)], out, "is no file")
    listed = saved(tmp_path, [torch.zeros(2)], "list.pth")
    refused(capsys, ["import", "ar", str(listed), "--out", str(out)], out, "holds a list, not a state dict")
    training = saved(tmp_path, {"model": authors_layout.ar_state(), "steps": torch.tensor(3)}, "train.pth")
    refused(capsys, ["import", "ar", str(training), "--out", str(out)], out, "is not a plain state dict",
            "checkpoint['ema']")


class _Payload:
    """Unpickling this runs `touch <marker>` - unless the unpickler refuses to call anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_not_executed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"norm.weight": _Payload(marker)}))
    out = tmp_path / "out"
    refused(capsys, ["import", "ar", str(evil), "--out", str(out)], out, "torch.load(weights_only=True) refused it")
    assert not marker.exists()
    zipped = tmp_path / "evil-zip.pth"
    torch.save({"norm.weight": _Payload(marker)}, zipped)  # torch's own zip format, same payload
    refused(capsys, ["import", "mlm", str(zipped), "--out", str(out)], out, "refused it")
    assert not marker.exists()


def test_refuses_shapes_and_flags_that_do_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = authors_layout.ar_state(token_each=2, bits=4)
    file = saved(tmp_path, state)
    out = tmp_path / "out"
    refused(capsys, ["import", "ar", str(file), "--out", str(out), "--vocab", "2-10"], out,
            "vocab: the flag says 2-10, but the checkpoint's tables and heads are 2-4; pass --vocab 2-4")
    refused(capsys, ["import", "ar", str(file), "--out", str(out), "--size", "L"], out,
            "size: the flag says 'L'", "pass --size tiny")
    refused(capsys, ["import", "ar", str(file), "--out", str(out), "--size", "huge"], out, "--size must be one of")
    refused(capsys, ["import", "ar", str(file), "--out", str(out), "--vocab", "2_10"], out, "vocab must read K-c")
    refused(capsys, ["import", "ar", str(file), "--out", str(out), "--grid", "16"], out, "--grid must read HxW")
    refused(capsys, ["import", "bae", str(file), "--out", str(out), "--vocab", "2-4"], out,
            "--vocab describe generators, but kind is 'bae'")
    deeper = {**state, **{k.replace("layers.1.", "layers.2."): v for k, v in state.items() if "layers.1." in k}}
    refused(capsys, ["import", "ar", str(saved(tmp_path, deeper, "deep.pth")), "--out", str(out)], out,
            "3 blocks of width 64 fits no size rung")
    misshapen = {**state, "output.1.weight": torch.zeros(32, 64)}
    refused(capsys, ["import", "ar", str(saved(tmp_path, misshapen, "heads.pth")), "--out", str(out)], out,
            "head output.1.weight has 32 outputs")
    # an MLM file read as AR: its table has 2^c + 1 rows
    mlm = saved(tmp_path, authors_layout.mlm_state(), "mlm.pth")
    refused(capsys, ["import", "ar", str(mlm), "--out", str(out)], out, "33 rows, which is no power of two")


def test_refuses_an_out_folder_that_holds_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = saved(tmp_path, authors_layout.ar_state())
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["import", "ar", str(file), "--out", str(out), "--grid", "4x4"]) == 2
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["import", "ar", str(file), "--out", str(empty), "--grid", "4x4"]) == 0  # an empty folder is fine
    assert (empty / "model.safetensors").is_file()


_bae_spec = importlib.util.spec_from_file_location(
    "authors_bae_layout", Path(__file__).resolve().parents[1] / "fixtures" / "authors_bae_layout.py"
)
authors_bae_layout = importlib.util.module_from_spec(_bae_spec)
_bae_spec.loader.exec_module(authors_bae_layout)  # type: ignore[union-attr]
SMALL_BAE = dict(nf=32, ch_mult=(1, 2, 2), res_blocks=2, attn_resolutions=(4,), emb_dim=64, code_dim=8, channels=1,
                 img_size=16)


@pytest.mark.parametrize("deterministic", [False, True])
def test_bae_round_trip_through_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], deterministic) -> None:
    from runners.artifacts import load_tokenizer
    from runners.tokenizers.released import tokenizer_from_released

    state = authors_bae_layout.authors_bae_state(**SMALL_BAE)
    file = saved(tmp_path, state, "binaryae_ema.th")
    out = tmp_path / "bae"
    code = main(["import", "bae", str(file), "--out", str(out)] + (["--deterministic"] if deterministic else []))
    assert code == 0, capsys.readouterr().err
    saved_config = json.loads((out / "config.json").read_text())
    assert saved_config["tokenizer"] == "bae" and saved_config["kwargs"]["bernoulli"] is (not deterministic)
    assert saved_config["imported"]["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    tokenizer = load_tokenizer(out, torch.device("cpu"))
    reference, _ = tokenizer_from_released(state, "bae")
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(tokenizer.decode(tokenizer.encode(images)), reference.decode(reference.encode(images)))


def test_deterministic_is_refused_for_generators(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = saved(tmp_path, authors_layout.ar_state(token_each=2, bits=4))
    out = tmp_path / "ar"
    assert main(["import", "ar", str(file), "--out", str(out), "--deterministic"]) == 2
    assert "--deterministic" in capsys.readouterr().err and not out.exists()

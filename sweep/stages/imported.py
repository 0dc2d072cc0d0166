"""Imported stages: a tokenizer or generator stage whose `checkpoint` names a trained model instead of training one.

The file is an authors' released checkpoint (a generator `L-2-10.pth`: a plain state dict; a BAE
`binaryae_ema.th`: a state dict whose autoencoder tensors start with `ae.`), read with
torch.load(weights_only=True) and converted by the parity modules (runners/generators/released.py,
runners/tokenizers/released.py), or a folder written by `sweep import` (model.safetensors + config.json),
loaded and checked. Either way the stage writes the project's artifact, so everything downstream
(reconstruction, evaluation, analyses) reads it like a trained one. The stage's key holds the file's
sha256 (sweep/plan.py), never its path; its row says where it came from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from runners.artifacts import CONFIG_FILE, load_generator, load_tokenizer, save_model
from runners.generators import GENERATORS
from space.schema import checkpoint_sha256


def _check_sha256(path: Path, expected: str) -> None:
    """Refuse a file that changed since the sweep was planned (its key would be a lie)."""
    found = checkpoint_sha256(path)
    if found != expected:
        raise ValueError(
            f"checkpoint {path} has sha256 {found[:12]}..., but the sweep was planned with {expected[:12]}...; plan "
            f"again (`sweep run` does) or restore the file"
        )


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """A released checkpoint's state dict, read as `sweep import` reads it (weights_only: no code runs)."""
    from sweep.importing import read_state_dict

    return read_state_dict(path)


def import_generator(stage: Any, out: Path) -> dict[str, Any]:
    """Write the artifact of the generator named by stage.settings["checkpoint"]; its row."""
    record, path = stage.settings["checkpoint"], Path(stage.runtime["checkpoint_path"])
    _check_sha256(path, record["sha256"])
    token_each, bits_each = map(int, record["vocab"].split("-"))
    num_classes = stage.settings["dataset"]["num_classes"]
    if path.is_dir():
        model, config, saved = load_generator(path, torch.device("cpu"))
        found = (saved["modeling"], config.size, config.token_each, config.bits_each, config.num_classes,
                 [config.grid_height, config.grid_width])
        wanted = (record["kind"], record["size"], token_each, bits_each, num_classes, list(record["grid"]))
        if found != wanted:
            raise ValueError(f"{path} holds a {found[0]} generator of size {found[1]}, vocab {found[2]}-{found[3]}, "
                             f"{found[4]} classes, grid {found[5]}, but the spec says {wanted[0]} {wanted[1]}, "
                             f"{wanted[2]}-{wanted[3]}, {wanted[4]} classes, grid {wanted[5]}; fix its checkpoints entry")
        scan_order, ema = saved["scan_order"], saved.get("ema_decay", 0.0)
        provenance = {"imported": saved["imported"]} if "imported" in saved else {}  # what `sweep import` recorded
    else:
        from runners.generators.released import generator_from_released

        model, config = generator_from_released(
            _read_state(path), record["kind"], vocab=(token_each, bits_each), size=record["size"],
            num_classes=num_classes, grid=tuple(record["grid"]),
        )
        scan_order, ema, provenance = "raster", 0.0, {}  # the authors train in raster order
    save_model(model, out, {"modeling": record["kind"], "config": config.__dict__, "scan_order": scan_order,
                            "ema_decay": ema, "imported_from": str(path), "imported_sha256": record["sha256"],
                            **provenance})
    return {"parameter_count": GENERATORS[record["kind"]].parameter_count(config), "imported": True,
            "generator_file": str(path), "generator_sha256": record["sha256"]}


def import_tokenizer(stage: Any, out: Path) -> dict[str, Any]:
    """Write the artifact of the tokenizer named by stage.settings["checkpoint"]; its row."""
    record, path = stage.settings["checkpoint"], Path(stage.runtime["checkpoint_path"])
    _check_sha256(path, record["sha256"])
    if path.is_dir():
        model = load_tokenizer(path, torch.device("cpu"))
        config = json.loads((path / CONFIG_FILE).read_text())
        if config["tokenizer"] != record["kind"]:
            raise ValueError(f"{path} holds a {config['tokenizer']} tokenizer, but its checkpoints entry says "
                             f"{record['kind']}; fix the entry's kind")
    else:
        from runners.tokenizers.released import tokenizer_from_released

        model, config = tokenizer_from_released(_read_state(path), record["kind"], bernoulli=record["bernoulli"],
                                                image_size=stage.settings["dataset"]["image_size"])
    bits = int(model.code_dim) if hasattr(model, "code_dim") else int(math.log2(model.codebook_size))
    if bits != record["code_dim"]:
        raise ValueError(f"{path} holds a {bits}-bit tokenizer, but its checkpoints entry says code_dim "
                         f"{record['code_dim']}; fix the entry's code_dim")
    save_model(model, out, {**config, "imported_from": str(path), "imported_sha256": record["sha256"]})
    return {"imported": True, "tokenizer_file": str(path), "tokenizer_sha256": record["sha256"]}

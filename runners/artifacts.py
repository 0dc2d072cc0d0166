"""A trained model as an artifact: `model.safetensors` (weights, never pickle) + `config.json` (how to rebuild it).

Tokenizer configs hold {"tokenizer": registry name, "kwargs": builder arguments}; generator configs hold
{"modeling": registry name, "config": GeneratorConfig fields, "scan_order": ...}. The training stages write
them and everything that samples, scores or imports reads them back through these functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from runners.generators import GENERATORS, GeneratorConfig
from runners.tokenizers import TOKENIZERS

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_model(model: torch.nn.Module, folder: Path, config: dict[str, Any]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_tokenizer(folder: Path, device: torch.device) -> torch.nn.Module:
    config = json.loads((folder / CONFIG_FILE).read_text())
    model = TOKENIZERS[config["tokenizer"]].build(**config["kwargs"])
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.to(device).eval()


def load_generator(folder: Path, device: torch.device) -> tuple[torch.nn.Module, GeneratorConfig, dict[str, Any]]:
    saved = json.loads((folder / CONFIG_FILE).read_text())
    config = GeneratorConfig(**saved["config"])
    model = GENERATORS[saved["modeling"]].build(config)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.to(device).eval(), config, saved


"""`sweep import {ar,mlm,bae,vq} FILE --out DIR`: a released checkpoint of the ELM authors as a project artifact.

Generators (`L-2-10.pth`, `mlmL-1-16.pth`, ...: plain state dicts of the authors' modules) go through
runners.generators.released: the architecture is read from the tensor shapes, checked against the flags,
and the tensors renamed one to one onto ARGenerator / MLMGenerator. Tokenizers (`binaryae_ema.th`, a state
dict whose autoencoder tensors are under `ae.`) go through runners.tokenizers.released.tokenizer_from_released,
which gets the file's whole state dict.

The file is read with torch.load(weights_only=True) only: a pickle that would run code is refused, never
executed. Every refusal (not such a checkpoint, a shape that fits no architecture, flags that disagree with
the shapes, an --out folder that holds files) exits 2 with the field, the value and the fix, before anything
is written. The artifact (model.safetensors + config.json, what runners' load_generator / load_tokenizer
read) is written to a temporary sibling folder and renamed into place at the end, so --out either holds a
complete artifact or does not exist. config.json records that it was imported, from which file (absolute
path, sha256, bytes) and which tensors of the file were left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from space.schema import SpecError
from sweep.store import file_sha256

GENERATOR_KINDS = ("ar", "mlm")
TOKENIZER_KINDS = ("bae", "vq")
KINDS = GENERATOR_KINDS + TOKENIZER_KINDS
SOURCE = "ELM release (Pepper-lll/LMforImageGeneration, huggingface.co/xuantonglll/ELM)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="ar / mlm: a generator file; bae / vq: a tokenizer file")
    parser.add_argument("file", help="the released checkpoint, e.g. L-2-10.pth, mlmL-1-16.pth, binaryae_ema.th")
    parser.add_argument("--out", required=True, help="artifact folder to create (model.safetensors + config.json)")
    parser.add_argument("--vocab", help="generators: K-c the file must have, e.g. 2-10 (MLM: gives K when the file cannot)")
    parser.add_argument("--size", help="generators: size rung the file must have (L, XL, XXL, 2B, ...)")
    parser.add_argument("--num-classes", type=int, help="generators: classes the file must have (1000 for ImageNet)")
    parser.add_argument("--grid", help="generators: latent grid HxW (default 16x16: 256 px images, downsampling 16)")
    parser.add_argument("--deterministic", action="store_true",
                        help="bae: the file was trained with thresholded bits (bae_16_deter); the weights cannot tell")


def cmd_import(args: argparse.Namespace, console: Console) -> int:
    summary = import_checkpoint(
        args.kind, Path(args.file), Path(args.out), vocab=args.vocab, size=args.size,
        num_classes=args.num_classes, grid=args.grid, deterministic=args.deterministic,
    )
    console.print(f"imported {args.file} ({summary['sha256'][:12]}) as {args.kind} {summary['describes']} into "
                  f"{args.out}", highlight=False)
    return 0


def import_checkpoint(
    kind: str,
    file: Path,
    out: Path,
    *,
    vocab: str | None = None,
    size: str | None = None,
    num_classes: int | None = None,
    grid: str | None = None,
    deterministic: bool = False,
) -> dict[str, Any]:
    """Convert `file` into an artifact folder `out`; returns the `imported` record written to config.json.

    Raises SpecError (exit 2) with nothing written when the file or the flags do not fit."""
    if kind not in KINDS:
        raise SpecError(f"kind must be one of {', '.join(KINDS)}, but got {kind!r}")
    if not file.is_file():
        raise SpecError(f"FILE {str(file)!r} is no file; give the path of a released checkpoint (e.g. L-2-10.pth)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpecError(f"--out {str(out)!r} already exists and is not an empty folder; pick a new folder "
                        f"(nothing was written)")
    if deterministic and kind != "bae":
        raise SpecError(f"--deterministic describes a BAE trained with thresholded bits, but kind is {kind!r}; drop it")
    if kind in TOKENIZER_KINDS:
        given = [flag for flag, value in (("--vocab", vocab), ("--size", size), ("--num-classes", num_classes),
                                          ("--grid", grid)) if value is not None]
        if given:
            raise SpecError(f"{', '.join(given)} describe generators, but kind is {kind!r}; drop them "
                            f"(a tokenizer's architecture is read from the file)")

    state = read_state_dict(file)
    record: dict[str, Any] = {"kind": kind, "file": str(file.resolve()), "sha256": file_sha256(file),
                              "bytes": file.stat().st_size, "source": SOURCE}
    if kind in GENERATOR_KINDS:
        model, config = _generator(kind, state, file, vocab=vocab, size=size, num_classes=num_classes, grid=grid)
        from runners.generators import GENERATORS
        from runners.generators.released import authors_parameter_count, key_map

        record["left_out"] = sorted(set(state) - set(key_map(kind, config)))
        record["parameter_count"] = GENERATORS[kind].parameter_count(config)
        record["authors_parameter_count"] = authors_parameter_count(kind, config)
        record["describes"] = f"{config.size} {config.token_each}-{config.bits_each}"
        artifact = {"modeling": kind, "config": dataclasses.asdict(config), "scan_order": "raster", "imported": record}
    else:
        from runners.tokenizers.released import tokenizer_from_released

        try:
            model, artifact = tokenizer_from_released(state, kind, **({"bernoulli": False} if deterministic else {}))
        except ValueError as error:
            raise SpecError(f"{file}: {error}") from None
        record["parameter_count"] = sum(p.numel() for p in model.parameters())
        record["describes"] = f"{artifact.get('tokenizer', kind)}"
        artifact = {**artifact, "imported": record}
    _write_atomically(model, out, artifact)
    return record


def read_state_dict(file: Path) -> dict[str, Any]:
    """The file's top-level dict of tensors, read without running code (weights_only); SpecError otherwise."""
    import torch

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to read means "not such a checkpoint"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SpecError(
            f"FILE {str(file)!r} is not a checkpoint this command reads: torch.load(weights_only=True) refused it "
            f"({reason[:200]}). Released ELM files are plain state dicts of tensors; a file that needs code to "
            f"load is never unpickled"
        ) from None
    if not isinstance(state, dict) or not state:
        raise SpecError(f"FILE {str(file)!r} holds a {type(state).__name__}, not a state dict (name -> tensor); "
                        f"give a released generator (.pth) or tokenizer (binaryae_ema.th) file")
    wrong = [key for key, value in state.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if wrong:
        raise SpecError(f"FILE {str(file)!r} is not a plain state dict: entries {wrong[:3]} are no tensors (a training "
                        f"checkpoint with 'model'/'ema'/'opt' parts?); save the weights alone, e.g. "
                        f"torch.save(checkpoint['ema'], 'model.pth'), and import that")
    return state


def _generator(kind: str, state: dict[str, Any], file: Path, *, vocab: str | None, size: str | None,
               num_classes: int | None, grid: str | None) -> tuple[Any, Any]:
    from runners.generators import GENERATOR_SIZES
    from runners.generators.released import generator_from_released, parse_vocab

    parsed_grid = None
    if grid is not None:
        match = re.fullmatch(r"\s*(\d+)x(\d+)\s*", grid)
        if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
            raise SpecError(f"--grid must read HxW (latent rows x columns), e.g. 16x16, but got {grid!r}")
        parsed_grid = (int(match.group(1)), int(match.group(2)))
    try:
        parsed_vocab = parse_vocab(vocab) if vocab is not None else None
    except ValueError as error:
        raise SpecError(f"--vocab: {error}") from None
    if size is not None and size not in GENERATOR_SIZES:
        raise SpecError(f"--size must be one of {', '.join(GENERATOR_SIZES)}, but got {size!r}")
    if num_classes is not None and num_classes < 1:
        raise SpecError(f"--num-classes must be a positive number of classes, but got {num_classes}")
    try:
        return generator_from_released(state, kind, vocab=parsed_vocab, size=size, num_classes=num_classes,
                                       grid=parsed_grid)
    except ValueError as error:
        raise SpecError(f"{file} as an {kind} generator: {error}") from None


def _write_atomically(model: Any, out: Path, artifact: dict[str, Any]) -> None:
    """model.safetensors + config.json into a temporary sibling folder, then renamed to `out`."""
    from runners.artifacts import save_model

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.importing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        save_model(model, staging, artifact)
        if out.exists():  # an empty folder (checked above)
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

"""The checkpoint protocol of training stages: resume exactly where a killed stage stopped.

A training loop asks `checkpointer.restore()` once before its first step and, if a state comes back,
continues after the `state["step"]` steps it had completed; after every step it calls
`checkpointer.maybe_save(completed_steps, state_fn)`,
which writes a checkpoint every `every_steps` steps or `every_s` seconds (whichever comes first).
A state holds everything that decides the next step: model, optimizer, EMA weights, the step, and
every random state (the global torch RNG that drives dropout, and each torch.Generator that draws
data order, labels dropped for CFG and Bernoulli bits), so a resumed stage computes bit-identical
weights to one that was never interrupted.

Checkpoints live in the stage's `.ckpt-<key>` folder of the store, written under a temporary name
and renamed, and are removed once the stage's artifact is published.

Reading a checkpoint never runs code from it: `torch.load(weights_only=True)` unpickles only tensors,
dtypes, plain containers and numbers (torch's weights-only set) plus `ALLOWED_GLOBALS`, which is empty;
any other global (a class, a function such as `exec` in a planted file's `__reduce__`) is refused. A
checkpoint that fails to load, planted or merely damaged, is moved aside (`.damaged-checkpoint-*.pt`)
and the stage restarts from step 0, saying so on stderr and in `Checkpointer.discarded`.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_STEP_FILE = "checkpoint.json"  # {"step": N} of checkpoint.pt, readable without torch (live lines, `sweep show`)
# Globals a checkpoint may name besides torch's weights-only defaults. States hold only tensors, dicts,
# lists, tuples, numbers, strings and None, so nothing else is allowed.
ALLOWED_GLOBALS: list[Any] = []


class Checkpointer:
    def __init__(
        self,
        folder: Path | None,
        every_steps: int = 0,
        every_s: float = 0.0,
        on_save: Callable[[int], None] | None = None,
    ) -> None:
        """`folder` None (or both intervals 0) turns checkpointing off."""
        self.folder = Path(folder) if folder is not None else None
        self.every_steps = every_steps
        self.every_s = every_s
        self.on_save = on_save
        self.last_save = time.monotonic()
        self.saved = 0
        self.discarded = ""  # why a checkpoint found at restore() was not used ('' if none was discarded)

    @property
    def enabled(self) -> bool:
        return self.folder is not None and (self.every_steps > 0 or self.every_s > 0)

    def restore(self) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        path = self.folder / CHECKPOINT_FILE  # type: ignore[operator]
        if not path.is_file():
            return None
        try:
            with torch.serialization.safe_globals(ALLOWED_GLOBALS):
                state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not isinstance(state.get("step"), int):
                raise ValueError(f"a checkpoint is a dict with an int 'step', but got {type(state).__name__}")
        except Exception as error:  # noqa: BLE001 - damaged, truncated or planted: never trusted
            moved = path.with_name(f".damaged-checkpoint-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}.pt")
            try:
                os.replace(path, moved)
            except FileNotFoundError:
                pass  # another data-parallel rank moved the same file aside first
            (self.folder / CHECKPOINT_STEP_FILE).unlink(missing_ok=True)  # type: ignore[operator]  # no step to show
            self.discarded = (f"checkpoint {path} could not be loaded safely ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}); moved aside to {moved.name}; "
                              f"training restarts from step 0")
            print(self.discarded, file=sys.stderr, flush=True)
            return None
        return state

    def due(self, step: int) -> bool:
        if not self.enabled:
            return False
        by_steps = self.every_steps > 0 and step % self.every_steps == 0
        by_time = self.every_s > 0 and time.monotonic() - self.last_save >= self.every_s
        return by_steps or by_time

    def maybe_save(self, step: int, state_fn: Callable[[], dict[str, Any]]) -> bool:
        if not self.due(step):
            return False
        self.save(step, state_fn())
        return True

    def save(self, step: int, state: dict[str, Any]) -> None:
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{CHECKPOINT_FILE}.{secrets.token_hex(3)}.tmp"
        torch.save({**state, "step": step}, tmp)
        os.replace(tmp, self.folder / CHECKPOINT_FILE)
        step_tmp = self.folder / f".{CHECKPOINT_STEP_FILE}.{secrets.token_hex(3)}.tmp"
        step_tmp.write_text(json.dumps({"step": int(step)}) + "\n")
        os.replace(step_tmp, self.folder / CHECKPOINT_STEP_FILE)
        self.last_save = time.monotonic()
        self.saved += 1
        if self.on_save is not None:
            self.on_save(step)


def rng_state(*generators: torch.Generator) -> dict[str, Any]:
    """The global torch RNG (CPU and CUDA) and the states of `generators`, in order."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": [g.get_state() for g in generators],
    }


def set_rng_state(state: dict[str, Any], *generators: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for generator, saved in zip(generators, state["generators"], strict=True):
        generator.set_state(saved)

"""Asynchronous successive halving (ASHA) whose rungs live in the store, so decisions survive kills.

A study with `early_stopping` (space/schema.py `EarlyStopping`) puts its generator stages in one
bracket. A stage that reaches a rung (completed steps `grace * rf**r`) records its metric there and
goes on only if it is among the best 1/rf of every value recorded at that rung so far, itself
included (Li et al. 2020, the rule of Ray Tune's AsyncHyperBandScheduler). With lower-is-better
values v at a rung, a stage with value x continues iff

    x <= percentile(v, 100 / rf)          (linear interpolation, numpy's default)

so the first stage to reach a rung always continues, and of two stages with rf = 2 the worse stops.

    <store>/brackets/<bracket>/rung-<steps>/<stage key>.json   {"value": x, "continue": bool, "cutoff": c}

Why not Tune's scheduler itself: it decides in the driver (its rung state is lost with a killed
driver) and stops a trial by ending its process between reports, without a checkpoint at the
decision. Here a stage makes its own decision at the rung from records every worker of a cluster
sees (the store), writes it once (a resumed stage re-reads its decision rather than re-deciding),
saves its checkpoint and ends as a `pruned` row. The order in which stages reach a rung still
decides what they are compared with: that is ASHA's asynchrony, deterministic with the serial
executor, not across parallel workers.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BRACKETS_DIR = "brackets"


@dataclass(frozen=True)
class Decision:
    keep: bool
    value: float
    cutoff: float
    compared: int  # values recorded at the rung, this one included


class Bracket:
    def __init__(self, folder: str | Path, reduction_factor: int) -> None:
        self.folder = Path(folder)
        self.reduction_factor = reduction_factor

    def decide(self, rung: int, key: str, value: float) -> Decision:
        """Record `value` of stage `key` at `rung` and decide whether it goes on (lower is better).

        A decision already recorded for this stage and rung is returned unchanged.
        """
        folder = self.folder / f"rung-{rung}"
        own = folder / f"{key}.json"
        if own.is_file():
            record = json.loads(own.read_text())
            return Decision(record["continue"], record["value"], record["cutoff"], record["compared"])
        others = []
        for path in folder.glob("*.json") if folder.is_dir() else ():
            try:
                others.append(float(json.loads(path.read_text())["value"]))
            except (OSError, ValueError, KeyError):
                continue  # a record being written by another worker
        values = np.array(others + [value], dtype=np.float64)
        finite = values[np.isfinite(values)]
        cutoff = float(np.percentile(finite, 100.0 / self.reduction_factor)) if finite.size else float("nan")
        keep = bool(np.isfinite(value) and value <= cutoff)
        record = {"value": value, "continue": keep, "cutoff": cutoff, "compared": int(values.size)}
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{secrets.token_hex(3)}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, own)
        return Decision(keep, value, cutoff, int(values.size))

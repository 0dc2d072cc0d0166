"""One colour per axis value, the same in every figure of every report.

A colour is keyed by `(axis, value)`: `ar` is the same orange in the size figure, the training-step
figure and the loss curves. Values the paper uses have fixed colours (`KNOWN`); sizes get an ordered
ramp so a bigger model always reads darker. A small integer n takes `CYCLE[n]`; any other value
hashes (sha256, not Python's salted `hash`) into `CYCLE`; a `Palette` built from the values a report shows moves such a value to the next
free colour when two values of one axis would collide, so one figure never shows two series in one
colour.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

# 20 distinct colours: matplotlib's tab10 and tab20b/c picks, without greys (grey marks reference lines).
CYCLE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79",
    "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#d6616b", "#ce6dbd",
)

# Ordered generator sizes (the ladder of runners/ plus the paper's rungs): a light-to-dark ramp.
SIZE_ORDER: tuple[str, ...] = ("tiny", "small", "base", "medium", "L", "XL", "XXL", "2B")
_SIZE_RAMP: tuple[str, ...] = ("#41b6c4", "#225ea8", "#253494", "#081d58", "#fd8d3c", "#e31a1c", "#800026", "#54278f")

KNOWN: dict[tuple[str, str], str] = {
    ("modeling", "ar"): "#ff7f0e",
    ("modeling", "mlm"): "#1f77b4",
    ("tokenizer", "bae"): "#2ca02c",
    ("tokenizer", "vq"): "#d62728",
    ("tokenizer", "vqgan"): "#d62728",
    ("cfg_schedule", "constant"): "#7f7f7f",
    ("cfg_schedule", "linear"): "#1f77b4",
    ("cfg_schedule", "cosine"): "#2ca02c",
    ("cfg_schedule", "log"): "#9467bd",
    ("cfg_schedule", "square"): "#d62728",
    ("cfg_schedule", "square_root"): "#8c564b",
    ("cfg_schedule", "sqrt"): "#8c564b",
    ("encode", "bernoulli"): "#17becf",
    ("encode", "threshold"): "#bcbd22",
    ("order", "unigram"): "#4c72b0",
    ("order", "bigram"): "#dd8452",
    **{("size", name): colour for name, colour in zip(SIZE_ORDER, _SIZE_RAMP)},
}


def value_key(value: Any) -> str:
    """The text a value is keyed by: numbers in canonical form (2, 2.0 and numpy 2.0 are one value)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)) or type(value).__module__ == "numpy":
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        if math.isnan(number):
            return "nan"
        return format(number, "g")
    return str(value)


def _hashed_index(axis: str, key: str) -> int:
    """Small integers (K = 1, 2, 4; D = 16; steps) take consecutive colours, so the usual values of
    an axis never collide; anything else hashes."""
    if key.isdigit() and int(key) < len(CYCLE):
        return int(key)
    digest = hashlib.sha256(f"{axis}={key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % len(CYCLE)


def colour(axis: str, value: Any) -> str:
    """The colour of one axis value, independent of which other values exist (hex `#rrggbb`)."""
    key = value_key(value)
    return KNOWN.get((axis, key)) or CYCLE[_hashed_index(axis, key)]


class Palette:
    """Colours for the values a report shows: `colour(axis, value)`, with hash collisions inside one
    axis resolved in sorted value order (so the result depends only on the set of values, not on the
    order figures ask for them)."""

    def __init__(self, values: Mapping[str, Iterable[Any]] | None = None, ordered: Mapping[str, list[Any]] | None = None) -> None:
        """values: axis -> values to keep apart; ordered: axis -> values coloured CYCLE[0], CYCLE[1], ...
        in that order (for names that mean something only inside one report, e.g. its studies)."""
        self._assigned: dict[tuple[str, str], str] = {}
        for axis, axis_values in (values or {}).items():
            self._assign(axis, axis_values)
        for axis, axis_values in (ordered or {}).items():
            for index, value in enumerate(axis_values):
                self._assigned[(axis, value_key(value))] = CYCLE[index % len(CYCLE)]

    def _assign(self, axis: str, axis_values: Iterable[Any]) -> None:
        keys = sorted({value_key(v) for v in axis_values})
        used = {KNOWN[(axis, key)] for key in keys if (axis, key) in KNOWN}
        for key in keys:
            if (axis, key) in KNOWN:
                self._assigned[(axis, key)] = KNOWN[(axis, key)]
                continue
            index = _hashed_index(axis, key)
            for step in range(len(CYCLE)):  # linear probing; past 20 values colours must repeat
                candidate = CYCLE[(index + step) % len(CYCLE)]
                if candidate not in used:
                    break
            else:
                candidate = CYCLE[index]
            used.add(candidate)
            self._assigned[(axis, key)] = candidate

    def __call__(self, axis: str, value: Any) -> str:
        return self._assigned.get((axis, value_key(value))) or colour(axis, value)

"""Content keys: a stage is named by the hash of exactly what determines its output.

A key hashes canonical JSON: sorted keys, no whitespace, integral floats written the same way
whichever way the YAML spelled them (``2``, ``2.0``, ``2e0``), ``-0.0`` folded into ``0.0``.
Resources, retries and output folders never reach this module.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

KEY_LENGTH = 16


def normalise(value: Any) -> Any:
    """A JSON-able value whose serialisation does not depend on how numbers were spelled."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"stage settings must be finite numbers, but got {value}")
        return 0.0 if value == 0 else value
    if isinstance(value, dict):
        return {str(k): normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    raise TypeError(f"cannot hash a value of type {type(value).__name__}: {value!r}")


def canonical_json(value: Any) -> str:
    return json.dumps(normalise(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_key(kind: str, settings: dict[str, Any], inputs: dict[str, str], code: dict[str, str]) -> str:
    """The key of a stage: its kind, determining settings, input stage keys and code versions."""
    payload = {"kind": kind, "settings": settings, "inputs": inputs, "code": code}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:KEY_LENGTH]


def derive_seed(*parts: Any) -> int:
    """A seed in [0, 2**31) derived from parts (e.g. the sampling seed of a training seed)."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31)

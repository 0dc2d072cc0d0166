"""The protocol columns of evaluation rows. Torch-free, so that reports (which never import torch) name the
same fields as the runners that write them (runners/evaluation/protocol.py)."""

from __future__ import annotations

PROTOCOL_KEYS: tuple[str, ...] = (
    "protocol_extractor",
    "protocol_extractor_sha256",
    "protocol_samples",
    "protocol_samples_per_class",
    "protocol_image_size",
    "protocol_reference",
    "protocol_reference_sha256",
    "protocol_pr_k",
    "protocol_versions",
    "protocol_sampling_seed",
    "protocol_sampling_precision",
)
"""Keys of the dict `protocol` returns, in order (flat columns of a result row)."""

PROTOCOL_ID_KEYS: tuple[str, ...] = tuple(
    key for key in PROTOCOL_KEYS if key not in ("protocol_sampling_seed", "protocol_versions")
)
"""The keys `protocol_id` hashes: what makes two numbers comparable."""

PROTOCOL_DEFAULTS: dict[str, str] = {"protocol_sampling_precision": "fp32"}
"""Fields added after rows were first recorded, with the value every row before them had: `protocol_id` leaves a
field out of its hash while it holds this value (ids of rows recorded before the field existed stay valid), and
reports read a row without the field as holding it."""

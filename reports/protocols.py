"""One evaluation protocol per comparison: the report refuses to compare numbers measured differently.

FID, KID, precision and recall move with the sample count, class balance, reference set and feature
extractor by more than many ablation effects, so every evaluation row records its protocol
(`protocol_*` columns and `protocol_id`, runners/evaluation/protocol.py). A comparison (a study's
table and its figures, the trade-off figure across studies, a FID-over-training figure, a search
trace) is drawn only when its finished rows share one protocol. Otherwise the report refuses it and
says which comparison, which protocol fields differ with their values and row counts, and the fix;
`sweep report --mix-protocols` (`write_report(..., mix_protocols=True)`) draws it anyway, marked
"⚠ mixed protocols" in the footnote or caption.

What counts as the same protocol (decided deliberately, as `protocol_id` decides):
- The sampling seed is not part of it. Each trial samples with its own seed (and a searched row is
  re-evaluated on a fresh one): a seed is a repeat of the same protocol, and the ± over training
  seeds already holds that noise. Rows that differ only in `protocol_sampling_seed` are comparable.
- Library versions (`protocol_versions`) are not part of it: they move numbers at rounding level and
  would split every comparison at an upgrade; the protocol note lists them for audit.
- A study that varies an axis that sets the protocol (`samples_per_class`; `feature_extractor`;
  `sampling_precision`; an axis of the classifier stage, which trains the feature space) compares protocols on purpose: the
  fields that axis determines may differ between its grid points. Rows of one grid point, and every
  other field, must still agree.
- Rows compare field by field: `protocol_id` is compared only when some field column is absent (it
  is a hash of the fields). A row that does not record a field ("not recorded", e.g. from an older
  version) differs from one that does: old and new rows are compared only with --mix-protocols.
  Exception: `protocol_sampling_precision` came later and every row before it sampled in fp32, so a row
  without it reads fp32 (`space.protocol.PROTOCOL_DEFAULTS`; `protocol_id` agrees: fp32 is not hashed).

Pure pandas; never imports torch (the field list mirrors `runners.evaluation.protocol.PROTOCOL_ID_KEYS`,
and a test keeps the two equal).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from space.protocol import PROTOCOL_DEFAULTS, PROTOCOL_ID_KEYS

PROTOCOL_ID = "protocol_id"
MIX_FLAG = "--mix-protocols"

COMPARABLE_FIELDS: tuple[str, ...] = PROTOCOL_ID_KEYS
"""The fields that decide whether two numbers are comparable: those `protocol_id` hashes (no seed, no versions)."""

# Older rows name some fields without the prefix: used where the protocol_* value is missing.
# (samples_per_class and feature_extractor are also the axes that set them: a row's axis value is what it used.)
FIELD_FALLBACKS: dict[str, tuple[str, ...]] = {
    "protocol_extractor": ("feature_extractor_name", "feature_extractor"),
    "protocol_samples": ("num_samples",),
    "protocol_samples_per_class": ("samples_per_class",),
}

FIELD_LABELS: dict[str, str] = {
    PROTOCOL_ID: "protocol id",
    "protocol_extractor": "feature extractor",
    "protocol_extractor_sha256": "extractor weights sha256",
    "protocol_samples": "generated samples",
    "protocol_samples_per_class": "samples per class",
    "protocol_image_size": "image size",
    "protocol_reference": "reference",
    "protocol_reference_sha256": "reference sha256",
    "protocol_pr_k": "precision/recall k",
    "protocol_sampling_precision": "sampling precision",
}

# Axes that set protocol fields: a study varying one compares those fields on purpose.
PROTOCOL_AXES: dict[str, tuple[str, ...]] = {
    "samples_per_class": ("protocol_samples_per_class", "protocol_samples"),
    "feature_extractor": ("protocol_extractor", "protocol_extractor_sha256", "protocol_reference_sha256"),
    "sampling_precision": ("protocol_sampling_precision",),
}
# A classifier-stage axis changes the classifier, i.e. the feature space of the metrics.
CLASSIFIER_FIELDS: tuple[str, ...] = ("protocol_extractor", "protocol_extractor_sha256", "protocol_reference_sha256")

NOT_RECORDED = "not recorded"


def fields_set_by(axis: str, axis_stage: dict[str, str] | None = None) -> tuple[str, ...]:
    """The protocol fields an axis determines (empty for an axis that leaves the protocol alone)."""
    if axis in PROTOCOL_AXES:
        return PROTOCOL_AXES[axis]
    if axis_stage is not None and axis_stage.get(axis) == "classifier":
        return CLASSIFIER_FIELDS
    return ()


def value_text(value: Any) -> str:
    """A protocol value as text: integral floats without `.0`, a sha256 as its first 12 digits."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(float(value))):
        return NOT_RECORDED
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    text = str(value)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12]
    return text


def protocol_fields(rows: pd.DataFrame) -> pd.DataFrame:
    """Per row, the protocol as text: one column per comparable field the rows record (a protocol_*
    column, or its older unprefixed name), plus `protocol_id` when some field is not recorded at all. A field
    added later (PROTOCOL_DEFAULTS: protocol_sampling_precision) reads as its default where a row predates it."""
    out = pd.DataFrame(index=rows.index)
    for field in COMPARABLE_FIELDS:
        sources = [c for c in (field, *FIELD_FALLBACKS.get(field, ())) if c in rows]
        if not sources:
            if field in PROTOCOL_DEFAULTS:
                out[field] = PROTOCOL_DEFAULTS[field]
            continue
        values = rows[sources[0]]
        for fallback in sources[1:]:
            values = values.where(values.notna(), rows[fallback])
        if field in PROTOCOL_DEFAULTS:
            values = values.where(values.notna(), PROTOCOL_DEFAULTS[field])
        out[field] = values.map(value_text)
    if PROTOCOL_ID in rows and len(out.columns) < len(COMPARABLE_FIELDS):
        out[PROTOCOL_ID] = rows[PROTOCOL_ID].map(value_text)
    return out


@dataclass(frozen=True)
class ProtocolDifference:
    """One protocol field whose values differ among a comparison's rows: (value, row count) pairs."""

    field: str
    counts: tuple[tuple[str, int], ...]

    @property
    def label(self) -> str:
        return FIELD_LABELS.get(self.field, self.field.removeprefix("protocol_").replace("_", " "))

    def text(self) -> str:
        """e.g. "samples per class 20 (4 rows) vs 50 (2 rows)"."""
        parts = [f"{value} ({n} row{'s' * (n != 1)})" for value, n in self.counts]
        return f"{self.label} {' vs '.join(parts)}"


@dataclass(frozen=True)
class ProtocolCheck:
    """Whether the finished rows of one comparison share one protocol, and if not, how they differ."""

    comparison: str  # what is compared, e.g. "study guidance", "figure tradeoff"
    rows: int  # finished rows checked
    protocols: int  # distinct protocols among them (1 when nothing is recorded)
    differences: tuple[ProtocolDifference, ...]  # fields that make rows incomparable
    by_design: tuple[str, ...] = ()  # varied axes that set protocol fields (their fields may differ)

    @property
    def mixed(self) -> bool:
        return bool(self.differences)

    def details(self) -> str:
        return "; ".join(d.text() for d in self.differences)

    def refusal(self) -> str:
        """The message of a refused comparison: what, which fields differ with their values, the fix."""
        return (
            f"{self.comparison[:1].upper()}{self.comparison[1:]} is not compared: its {self.rows} finished rows use "
            f"{self.protocols} evaluation protocols ({self.details()}). Numbers measured under different protocols "
            f"are not comparable. Fix: evaluate every row under one protocol (re-run the odd rows), or run "
            f"`sweep report {MIX_FLAG}` to compare them anyway (marked as mixed)."
        )

    def mixed_note(self) -> str:
        """The footnote or caption sentence of a comparison drawn with --mix-protocols."""
        return (
            f"⚠ Mixed protocols, compared on request ({MIX_FLAG}): {self.details()}; "
            "numbers under different protocols are not comparable."
        )

    def by_design_note(self) -> str:
        """The footnote of a study that varies a protocol axis (empty when it varies none)."""
        if not self.by_design:
            return ""
        return (
            f"Protocols differ between grid points by design: this study varies {', '.join(self.by_design)}, "
            "which sets the evaluation protocol."
        )


def _differences(table: pd.DataFrame, columns: Iterable[str]) -> list[ProtocolDifference]:
    out = []
    for column in columns:
        if column not in table:
            continue
        counts = table[column].value_counts(sort=False)
        if len(counts) > 1:
            ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            out.append(ProtocolDifference(column, tuple((str(v), int(n)) for v, n in ordered)))
    return out


def finished(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows whose numbers exist: status finished (all rows when there is no status column)."""
    return rows[rows["status"] == "finished"] if "status" in rows else rows


def check_protocols(
    rows: pd.DataFrame,
    comparison: str,
    varied: Sequence[str] = (),
    axis_stage: dict[str, str] | None = None,
) -> ProtocolCheck:
    """Check that the finished `rows` of one comparison share one evaluation protocol.

    `varied`: the axes the comparison varies; one that sets the protocol (see `fields_set_by`) lets the
    fields it determines differ between its values, while rows with equal values of it must agree on
    every field.
    """
    done = finished(rows)
    table = protocol_fields(done)
    if table.empty or not len(table.columns):
        return ProtocolCheck(comparison, len(done), 1 if len(done) else 0, ())
    designed = tuple(a for a in varied if fields_set_by(a, axis_stage) and a in done)
    explained: set[str] = set()
    for axis in designed:
        explained.update(fields_set_by(axis, axis_stage))
    if designed:
        explained.add(PROTOCOL_ID)  # a hash of the fields: it differs whenever they do
    differences = _differences(table, [c for c in table.columns if c not in explained])
    if designed:  # within one grid point of the protocol axes, every field must agree
        seen = {d.field for d in differences}
        odd: dict[str, list[Any]] = {}  # field -> row indices of the grid points where it differs
        for _, group in table.groupby([done[a].map(value_text) for a in designed], sort=False):
            for difference in _differences(group, [c for c in group.columns if c in explained and c not in seen]):
                odd.setdefault(difference.field, []).extend(group.index)
        for field in [c for c in table.columns if c in odd]:
            differences += _differences(table.loc[odd[field]], [field])
    if any(d.field != PROTOCOL_ID for d in differences):  # the id differs because a field does: name the field
        differences = [d for d in differences if d.field != PROTOCOL_ID]
    protocols = len(table.drop_duplicates()) if differences else 1
    return ProtocolCheck(comparison, len(done), protocols, tuple(differences), designed)


@dataclass(frozen=True)
class Refusal:
    """A comparison the report did not draw, and why (ProtocolCheck.refusal)."""

    comparison: str
    message: str
    study: str | None = None  # the study it belongs to (None: across the run)

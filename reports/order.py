"""One order and one label for axis values, shared by every table, figure and grid of a report.

- Numbers ascending.
- The "all" value of an axis whose schema says a value turns the axis off (`top_k: 0`, keep all ids;
  `top_p: 1.0`, keep all the mass) is its own category, labelled "all", after the numbers. Figures
  draw it apart from the numeric points (never at x = 0, never joined to them by a line).
- Sizes on the generator ladder (tiny, small, ..., 2B), smallest first.
- Other values (names, booleans) in the order the spec lists them; values the spec does not list
  keep the order they came in, after those it lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from reports.palette import SIZE_ORDER, value_key

# axis -> the value that means "all" (space/schema.py: top_k "0 = all", top_p "1 = off");
# tests/reports_tests/test_order.py keeps this in step with the schema's descriptions.
ALL_VALUES: dict[str, float] = {"top_k": 0, "top_p": 1.0}
ALL_LABEL = "all"
SIZE = "size"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def is_all(axis: str, value: Any) -> bool:
    """Whether `value` is the "all" value of `axis` (top_k = 0, top_p = 1.0)."""
    return axis in ALL_VALUES and is_number(value) and float(value) == float(ALL_VALUES[axis])


def value_text(axis: str, value: Any) -> str:
    """An axis value as a label: "all" for the all value, floats without trailing noise (2.0, 0.25)."""
    if is_all(axis, value):
        return ALL_LABEL
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else f"{value:.1f}"
    return str(value)


def setting_text(axis: str, value: Any) -> str:
    """`axis=value`, the label of one setting in figures and grids (top_k=all, cfg_scale=2.0)."""
    return f"{axis}={value_text(axis, value)}"


def rank_key(axis: str, spec_values: Sequence[Any] = ()) -> Callable[[Any], tuple]:
    """A sort key for values of `axis`: numbers ascending, then names (sizes on the ladder, others in
    `spec_values` order), then "all"; missing values (NaN) last."""
    listed = [value_key(v) for v in spec_values]

    def key(value: Any) -> tuple:
        if value is None or (isinstance(value, float) and value != value):
            return (4, 0.0, "")
        if is_all(axis, value):
            return (3, 0.0, "")
        if is_number(value):
            return (0, float(value), "")
        text = value_key(value)
        if axis == SIZE and text in SIZE_ORDER:
            return (1, float(SIZE_ORDER.index(text)), "")
        if text in listed:
            return (1, float(len(SIZE_ORDER) + listed.index(text)), "")
        return (2, 0.0, "")  # unlisted: a stable sort keeps their incoming order

    return key


def ordered(axis: str, values: Iterable[Any], spec_values: Sequence[Any] = ()) -> list[Any]:
    """`values` in the report's order for `axis` (a stable sort: unlisted names keep their order)."""
    return sorted(values, key=rank_key(axis, spec_values))

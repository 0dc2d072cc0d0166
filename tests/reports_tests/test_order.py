"""One order and one label for axis values (reports.order), shared by tables, figures and grids."""

import re

import numpy as np

from reports.order import ALL_VALUES, ordered, setting_text, value_text


def test_numbers_ascend_all_comes_last_and_names_keep_spec_order():
    assert ordered("top_k", [4, 0, 16, 1], [4, 0, 16, 1]) == [1, 4, 16, 0]
    assert ordered("top_p", [1.0, 0.5, 0.9]) == [0.5, 0.9, 1.0]
    assert ordered("cfg_scale", [4.0, 0.0, 1.5]) == [0.0, 1.5, 4.0]  # a 0 that means 0 stays a number
    spec = ["square", "constant", "linear"]
    assert ordered("cfg_schedule", ["linear", "constant", "square"], spec) == spec
    assert ordered("size", ["XL", "tiny", "L"], ["XL", "tiny", "L"]) == ["tiny", "L", "XL"]  # the size ladder
    assert ordered("vocab", ["2-4", "x", "1-8"], ["1-8", "2-4"]) == ["1-8", "2-4", "x"]  # unlisted last
    assert ordered("bernoulli", [False, True], [True, False]) == [True, False]


def test_labels_name_the_all_value_and_print_floats_plainly():
    assert value_text("top_k", 0) == "all" and value_text("top_k", np.int64(0)) == "all"
    assert value_text("top_p", 1.0) == "all" and value_text("top_p", 0.9) == "0.9"
    assert value_text("cfg_scale", 2.0) == "2.0" and value_text("cfg_scale", 0) == "0"
    assert setting_text("top_k", 0) == "top_k=all" and setting_text("cfg_scale", np.float64(1.5)) == "cfg_scale=1.5"


def test_all_values_follow_the_schema():
    from space.schema import AXES_OF_STAGE, Settings

    found = {}
    for name in AXES_OF_STAGE["evaluation"]:
        match = re.search(r"\((\d+(?:\.\d+)?) = (all|off)\)", Settings.model_fields[name].description or "")
        if match:
            found[name] = float(match.group(1))
    assert found == {name: float(value) for name, value in ALL_VALUES.items()}

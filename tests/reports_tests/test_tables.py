"""Ablation tables against hand-computed numbers."""

import pandas as pd

from reports.markdown import format_cell, markdown_table
from reports.tables import ablation_table


def evaluations() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"study": "vocab", "token_each": 1, "seed": 0, "status": "finished", "fid": 10.0, "kid_mean": 0.01, "class_accuracy": 0.5},
            {"study": "vocab", "token_each": 1, "seed": 1, "status": "finished", "fid": 12.0, "kid_mean": 0.03, "class_accuracy": 0.7},
            {"study": "vocab", "token_each": 2, "seed": 0, "status": "finished", "fid": 9.0, "kid_mean": 0.015, "class_accuracy": 0.4},
            {"study": "vocab", "token_each": 2, "seed": 1, "status": "failed", "fid": None, "kid_mean": None, "class_accuracy": None},
            {"study": "other", "token_each": 1, "seed": 0, "status": "finished", "fid": 99.0, "kid_mean": 0.9, "class_accuracy": 0.1},
        ]
    )


def test_mean_and_sample_std_over_finished_seeds():
    table = ablation_table(evaluations(), "vocab", ["token_each"])
    assert list(table["token_each"]) == [1, 2]
    first, second = table.iloc[0], table.iloc[1]
    assert first["fid_mean"] == 11.0 and abs(first["fid_std"] - 1.4142136) < 1e-6  # sqrt(((10-11)^2+(12-11)^2)/1)
    assert first["n"] == 2 and second["n"] == 1 and second["failed"] == 1 and second["trials"] == 2
    assert second["fid_mean"] == 9.0 and pd.isna(second["fid_std"])


def test_cells_show_plus_minus_only_with_two_or_more_seeds():
    assert format_cell(11.0, 1.4142136, 2, 2) == "11.00 ± 1.41"
    assert format_cell(9.0, float("nan"), 1, 2) == "9.00"
    assert format_cell(float("nan"), float("nan"), 0, 2) == "—"


def test_markdown_bolds_the_best_per_column_in_its_direction():
    text = markdown_table(ablation_table(evaluations(), "vocab", ["token_each"]), ["token_each"])
    lines = text.splitlines()
    assert lines[0] == "| token_each | FID ↓ | KID ↓ | class acc. ↑ | n |"
    assert lines[2] == "| 1 | 11.00 ± 1.41 | 0.0200 ± 0.0141 | **0.600 ± 0.141** | 2 |"
    assert lines[3] == "| 2 | **9.00** | **0.0150** | 0.400 | 1/2 (1 failed) |"

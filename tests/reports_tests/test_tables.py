"""Ablation tables against hand-computed numbers."""

import math

import pandas as pd
import pytest

from reports.markdown import format_cell, markdown_study, markdown_table
from reports.tables import (
    ReportData,
    StudyInfo,
    ablation_table,
    available_metrics,
    prepare_evaluations,
    protocol_note,
    study_table,
)

BASELINE = {"token_each": 1, "code_dim": 8, "cfg_scale": 2.0, "size": "tiny"}


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


def three_seeds() -> pd.DataFrame:
    rows = []
    for cfg, fids in ((1.0, [10.0, 12.0, 14.0]), (2.0, [5.0, 6.0, 7.0])):
        for seed, fid in enumerate(fids):
            rows.append({"study": "cfg", "cfg_scale": cfg, "token_each": 1, "seed": seed, "status": "finished", "fid": fid})
    return pd.DataFrame(rows)


def test_mean_and_sample_std_over_finished_seeds():
    table = ablation_table(evaluations(), "vocab", ["token_each"])
    assert list(table["token_each"]) == [1, 2]
    first, second = table.iloc[0], table.iloc[1]
    assert first["fid_mean"] == 11.0 and abs(first["fid_std"] - 1.4142136) < 1e-6  # sqrt(((10-11)^2+(12-11)^2)/1)
    assert first["n"] == 2 and second["n"] == 1 and second["failed"] == 1 and second["trials"] == 2
    assert second["fid_mean"] == 9.0 and pd.isna(second["fid_std"]) and pd.isna(second["fid_half"])


def test_student_t_95_interval_half_widths():
    study = StudyInfo("cfg", {"cfg_scale": [1.0, 2.0]})
    table = ablation_table(three_seeds(), study, interval="t95")
    # t(0.975, 2) = 4.302653: 4.302653 * 2 / sqrt(3) and 4.302653 * 1 / sqrt(3)
    assert table["fid_half"].tolist() == pytest.approx([4.9682754, 2.4841377], abs=1e-6)
    assert table["fid_std"].tolist() == pytest.approx([2.0, 1.0])
    two = ablation_table(evaluations(), "vocab", ["token_each"], interval="t95")
    assert two.iloc[0]["fid_half"] == pytest.approx(12.7062047, abs=1e-6)  # t(0.975, 1) * sqrt(2) / sqrt(2)
    with pytest.raises(ValueError, match="interval must be one of"):
        ablation_table(three_seeds(), study, interval="sem")


def test_cells_show_plus_minus_only_with_two_or_more_seeds():
    assert format_cell(11.0, 1.4142136, 2, 2) == "11.00 ± 1.41"
    assert format_cell(9.0, float("nan"), 1, 2) == "9.00"
    assert format_cell(float("nan"), float("nan"), 0, 2) == "—"


def test_markdown_bolds_the_best_per_column_in_its_direction_and_marks_the_baseline():
    metrics = available_metrics(evaluations())
    study = StudyInfo("vocab", {"token_each": [1, 2]})
    table = ablation_table(evaluations(), study, metrics=metrics, baseline=BASELINE)
    lines = markdown_table(table, ["token_each"], metrics).splitlines()
    assert lines[0] == "| token_each | FID ↓ | KID ↓ | class acc. ↑ | n |"
    assert lines[2] == "| 1 † | 11.00 ± 1.41 | 0.0200 ± 0.0141 | **0.600 ± 0.141** | 2 |"
    assert lines[3] == "| 2 | **9.00** | **0.0150** | 0.400 | 1/2 (1 failed) |"


def test_baseline_is_the_point_equal_to_the_spec_baseline_including_fixed_values():
    rows = three_seeds()
    plain = ablation_table(rows, StudyInfo("cfg", {"cfg_scale": [1.0, 2.0]}), baseline=BASELINE)
    assert plain["baseline"].tolist() == [False, True]
    held = ablation_table(rows, StudyInfo("cfg", {"cfg_scale": [1.0, 2.0]}, fixed={"token_each": 2}), baseline=BASELINE)
    assert held["baseline"].tolist() == [False, False]  # token_each = 2 is not the baseline's 1


def test_absent_metrics_are_skipped_and_present_ones_in_registry_order():
    rows = evaluations().drop(columns=["kid_mean"]).assign(recall=0.5)
    assert [m.column for m in available_metrics(rows)] == ["fid", "recall", "class_accuracy"]
    pending = pd.DataFrame([{"study": "vocab", "token_each": 1, "status": "pending"}])
    assert [m.column for m in available_metrics(pending)] == ["fid"]  # an empty run still has a FID column
    table = ablation_table(pending, "vocab", ["token_each"], available_metrics(pending))
    assert table.iloc[0]["n"] == 0 and math.isnan(table.iloc[0]["fid_mean"])


def test_prepare_drops_intermediate_rows_maps_aliases_and_attaches_tokenizer_metrics():
    rows = pd.DataFrame(
        [
            {"study": "s", "code_dim": 8, "tokenizer_key": "t8", "status": "finished", "fid": 3.0, "inception_score_mean": 150.0},
            {"study": "s", "code_dim": 8, "tokenizer_key": "t8", "status": "finished", "fid": 9.0, "intermediate": True},
        ]
    )
    rows.loc[0, "intermediate"] = False
    tokenizers = pd.DataFrame([{"key": "t8", "status": "finished", "rfid": 1.25, "psnr_db": 21.0}])
    out = prepare_evaluations(rows, tokenizers)
    assert out["fid"].tolist() == [3.0]
    assert out["inception_score"].tolist() == [150.0]
    assert out[["rfid", "psnr_db"]].iloc[0].tolist() == [1.25, 21.0]


def test_tokenizer_metrics_only_where_a_tokenizer_axis_varies():
    rows = pd.DataFrame(
        [
            {"study": "bits", "code_dim": d, "cfg_scale": 2.0, "token_each": 1, "seed": 0, "status": "finished", "fid": f, "rfid": r}
            for d, f, r in ((8, 5.0, 3.0), (12, 4.5, 2.0))
        ]
        + [{"study": "cfg", "code_dim": 8, "cfg_scale": c, "token_each": 1, "seed": 0, "status": "finished", "fid": f, "rfid": 3.0} for c, f in ((1.0, 9.0), (2.0, 5.0))]
    )
    data = ReportData(
        name="t", studies=[StudyInfo("bits", {"code_dim": [8, 12]}), StudyInfo("cfg", {"cfg_scale": [1.0, 2.0]})],
        baseline=BASELINE, evaluations=rows,
    )
    bits, cfg = (study_table(data, s) for s in data.studies)
    assert [m.column for m in bits.metrics] == ["fid", "rfid"]
    assert [m.column for m in cfg.metrics] == ["fid"]


def test_protocol_note_names_counts_reference_extractor_and_protocol_columns():
    rows = pd.DataFrame(
        [
            {"status": "finished", "num_samples": 200, "samples_per_class": 20, "feature_extractor": "classifier:abc",
             "protocol_reference": "digits/heldout", "protocol_pr_k": 3.0, "protocol_extractor_sha256": "ab" * 32},
            {"status": "finished", "num_samples": 200, "samples_per_class": 20, "feature_extractor": "classifier:abc",
             "protocol_reference": "digits/heldout", "protocol_pr_k": 3.0, "protocol_extractor_sha256": "ab" * 32},
        ]
    )
    assert protocol_note(rows) == [
        "Protocol: 200 generated samples, 20 per class (class-balanced); reference: digits/heldout; "
        "features: classifier:abc; extractor sha256: abababababab; pr k: 3."
    ]
    rows.loc[1, "protocol_reference"] = "imagenet/VIRTUAL_imagenet256_labeled.npz"
    # the note lists both; whether the rows may be compared is reports.protocols' call (test_protocols.py)
    assert protocol_note(rows)[0].startswith(
        "Protocol: 200 generated samples, 20 per class (class-balanced); reference: digits/heldout / imagenet/VIRTUAL_imagenet256_labeled.npz;"
    )
    assert protocol_note(rows.iloc[:0]) == ["No finished evaluations yet."]


def test_study_table_footnote_says_which_interval():
    data = ReportData(name="t", studies=[StudyInfo("cfg", {"cfg_scale": [1.0, 2.0]})], baseline=BASELINE, evaluations=three_seeds())
    std = markdown_study(study_table(data, data.studies[0], "std"))
    t95 = markdown_study(study_table(data, data.studies[0], "t95"))
    assert "| 1.0 | 12.00 ± 2.00 | 3 |" in std and "| 2.0 † | **6.00 ± 1.00** | 3 |" in std
    assert "| 1.0 | 12.00 ± 4.97 | 3 |" in t95 and "| 2.0 † | **6.00 ± 2.48** | 3 |" in t95
    assert "sample standard deviation" in std and "Student-t 95% confidence interval" in t95

"""Ablation tables against hand-computed numbers."""

import math

import pandas as pd
import pytest

from reports.markdown import cell_texts, format_cell, markdown_study, markdown_table
from reports.tables import (
    METRIC_BY_COLUMN,
    Metric,
    ReportData,
    StudyInfo,
    ablation_table,
    available_metrics,
    best_rows,
    csv_frame,
    prepare_evaluations,
    protocol_note,
    protocol_provenance,
    study_table,
    welch_p,
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


def test_nothing_is_bold_with_one_seed_and_kid_shows_times_a_thousand():
    metrics = available_metrics(evaluations())
    study = StudyInfo("vocab", {"token_each": [1, 2]})
    table = ablation_table(evaluations(), study, metrics=metrics, baseline=BASELINE)
    lines = markdown_table(table, ["token_each"], metrics).splitlines()
    assert lines[0] == "| token_each | FID ↓ | KID ×10³ ↓ | class acc. ↑ | n |"
    assert lines[2] == "| 1 † | 11.00 ± 1.41 | 20.00 ± 14.14 | 0.600 ± 0.141 | 2 |"  # kid_mean 0.01, 0.03
    assert lines[3] == "| 2 | 9.00 | 15.00 | 0.400 | 1/2 (1 failed) |"  # the lowest FID, but n = 1: not bold


def test_welch_p_values_of_hand_made_groups():
    # [1, 2, 3] vs [4, 5, 6]: means 2 and 5, s = 1 each, t = -3.674, 4 dof: p = 0.02131 (scipy.stats.ttest_ind, equal_var=False)
    assert welch_p(2.0, 1.0, 3, 5.0, 1.0, 3) == pytest.approx(0.0213116, abs=1e-6)
    assert welch_p(2.0, 1.0, 3, 3.0, 1.0, 3) == pytest.approx(0.2878641, abs=1e-6)  # [1, 2, 3] vs [2, 3, 4]
    # unequal sizes and spreads, [1, 2, 3, 4] vs [3, 5, 7, 9, 11]: Welch-Satterthwaite 5.52 dof, p = 0.03029
    assert welch_p(2.5, 1.2909944, 4, 7.0, 3.1622777, 5) == pytest.approx(0.0302862, abs=1e-6)
    assert math.isnan(welch_p(2.0, 1.0, 3, 5.0, float("nan"), 1))  # one seed: no test
    assert welch_p(1.0, 0.0, 2, 2.0, 0.0, 2) == 0.0 and welch_p(1.0, 0.0, 2, 1.0, 0.0, 2) == 1.0  # no spread at all


def test_bold_only_where_the_best_is_distinguishable_from_every_other_row():
    def table_of(groups):
        rows = [
            {"study": "s", "cfg_scale": c, "seed": i, "status": "finished", "fid": f}
            for c, fids in groups.items() for i, f in enumerate(fids)
        ]
        study = StudyInfo("s", {"cfg_scale": list(groups)})
        return ablation_table(pd.DataFrame(rows), study, metrics=(METRIC_BY_COLUMN["fid"],))

    fid = METRIC_BY_COLUMN["fid"]
    apart = table_of({1.0: [1.0, 2.0, 3.0], 2.0: [4.0, 5.0, 6.0], 3.0: [9.0, 10.0, 11.0]})  # p = 0.021 and less
    assert best_rows(apart, fid) == {0}
    close = table_of({1.0: [1.0, 2.0, 3.0], 2.0: [2.0, 3.0, 4.0], 3.0: [9.0, 10.0, 11.0]})  # best vs runner-up: p = 0.288
    assert best_rows(close, fid) == set()
    single = table_of({1.0: [1.0, 2.0, 3.0], 2.0: [40.0]})  # the other row has n = 1: no test, no bold
    assert best_rows(single, fid) == set()
    tie = table_of({1.0: [1.0, 2.0], 2.0: [2.0, 1.0]})
    assert best_rows(tie, fid) == set()
    higher = table_of({1.0: [4.0, 5.0, 6.0], 2.0: [1.0, 2.0, 3.0]})
    assert best_rows(higher, Metric("fid", "FID as if higher were better", higher_is_better=True, digits=2)) == {0}


def test_rows_follow_numbers_ascending_then_all_and_names_in_spec_order():
    rows = pd.DataFrame(
        [{"study": "s", "top_k": k, "cfg_schedule": sch, "seed": 0, "status": "finished", "fid": 1.0}
         for sch in ("linear", "constant") for k in (4, 0, 16, 1)]
    )
    study = StudyInfo("s", {"cfg_schedule": ["constant", "linear"], "top_k": [4, 0, 16, 1]})
    table = ablation_table(rows, study, metrics=(METRIC_BY_COLUMN["fid"],))
    assert table[["cfg_schedule", "top_k"]].values.tolist() == [
        ["constant", 1], ["constant", 4], ["constant", 16], ["constant", 0],
        ["linear", 1], ["linear", 4], ["linear", 16], ["linear", 0],
    ]
    labels = [labels for labels, _, _ in cell_texts(table, ["cfg_schedule", "top_k"], (METRIC_BY_COLUMN["fid"],))]
    assert [label[1] for label in labels[:4]] == ["1", "4", "16", "all"]


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
        "features: classifier:abc; precision/recall k: 3."
    ]  # no hash, no version: those are the provenance's
    assert protocol_provenance(rows) == [f"Protocol extractor weights sha256: {'ab' * 32}."]
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
    assert "| 1.0 | 12.00 ± 2.00 | 3 |" in std and "| 2.0 † | **6.00 ± 1.00** | 3 |" in std  # Welch p = 0.0196
    assert "| 1.0 | 12.00 ± 4.97 | 3 |" in t95 and "| 2.0 † | **6.00 ± 2.48** | 3 |" in t95
    assert "sample standard deviation" in std and "Student-t 95% confidence interval" in t95


def test_csv_names_the_mean_by_the_metric_and_keeps_raw_units():
    data = ReportData(name="t", studies=[StudyInfo("vocab", {"token_each": [1, 2]})], baseline=BASELINE, evaluations=evaluations())
    std = csv_frame(study_table(data, data.studies[0], "std"))
    assert list(std.columns) == [
        "token_each", "baseline", "searched", "fid", "fid_std", "fid_n", "kid", "kid_std", "kid_n",
        "class_accuracy", "class_accuracy_std", "class_accuracy_n", "n", "trials", "failed", "pruned",
    ]
    assert std["kid"].tolist() == pytest.approx([0.02, 0.015])  # the rows' kid_mean, not x 10^3
    t95 = csv_frame(study_table(data, data.studies[0], "t95"))
    assert t95["fid_ci95"].iloc[0] == pytest.approx(12.7062047, abs=1e-6)  # t(0.975, 1) * sqrt(2) / sqrt(2)
    assert "fid_ci95" not in std and "kid_mean" not in std and "fid_mean" not in t95

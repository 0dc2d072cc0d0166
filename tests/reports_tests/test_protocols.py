"""Reports refuse to compare rows measured under different evaluation protocols unless told to, and say why.

Hand-made rows; one end-to-end `sweep report` on a copy of the fixture run with one row re-labelled.
"""

import shutil
from pathlib import Path

import pandas as pd
import pytest

import reports.figures as figures
from reports.build import build_report
from reports.figures import FigureFile, make_figures
from reports.markdown import markdown_study
from reports.protocols import COMPARABLE_FIELDS, check_protocols
from reports.tables import ReportData, StudyInfo, study_table

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "results"
BASELINE = {"cfg_scale": 2.0, "samples_per_class": 20, "token_each": 1}
PROTOCOL = {
    "protocol_extractor": "classifier-digits", "protocol_extractor_sha256": "ab" * 32, "protocol_samples": 200,
    "protocol_samples_per_class": 20, "protocol_image_size": 16, "protocol_reference": "digits/heldout",
    "protocol_reference_sha256": "cd" * 32, "protocol_pr_k": 3, "protocol_versions": "torch-fidelity=0.3.0;torch=2.4",
    "protocol_id": "aaaaaaaaaaaa",
}
FIFTY = {"protocol_samples": 500, "protocol_samples_per_class": 50, "protocol_id": "bbbbbbbbbbbb"}


def row(study: str, seed: int, fid: float, **values) -> dict:
    settings = {k: values.pop(k) for k in list(values) if k in BASELINE}
    return {"study": study, **BASELINE, **settings, "seed": seed, "status": "finished", "fid": fid,
            "inception_score": 100.0 + fid, **PROTOCOL, "protocol_sampling_seed": 1000 + seed, **values}


def guidance_rows(odd: dict | None = None) -> list[dict]:
    """cfg 1.0 and 2.0, two seeds each; `odd` re-labels the last row's protocol."""
    rows = [row("guidance", seed, fid, cfg_scale=cfg) for cfg, fids in ((1.0, (9.0, 11.0)), (2.0, (5.0, 7.0))) for seed, fid in enumerate(fids)]
    rows[-1].update(odd or {})
    return rows


def data_of(rows: list[dict], *studies: StudyInfo) -> ReportData:
    studies = studies or (StudyInfo("guidance", {"cfg_scale": [1.0, 2.0]}),)
    return ReportData(name="t", studies=list(studies), baseline=BASELINE, evaluations=pd.DataFrame(rows))


def test_the_compared_fields_are_those_protocol_id_hashes():
    from space.protocol import PROTOCOL_KEYS

    assert set(PROTOCOL_KEYS) - set(COMPARABLE_FIELDS) == {"protocol_sampling_seed", "protocol_versions"}
    assert set(COMPARABLE_FIELDS) < set(PROTOCOL_KEYS)


def test_rows_differing_only_in_sampling_seed_or_versions_are_one_protocol():
    rows = pd.DataFrame(guidance_rows({"protocol_versions": "torch-fidelity=0.4.0;torch=2.5"}))
    assert rows["protocol_sampling_seed"].nunique() == 2
    check = check_protocols(rows, "study guidance")
    assert not check.mixed and check.protocols == 1 and check.rows == 4


def test_a_study_mixing_protocols_is_refused_with_the_fields_their_values_and_the_fix():
    data = data_of(guidance_rows(FIFTY))
    table = study_table(data, data.studies[0])
    assert table.refusal == (
        "Study guidance is not compared: its 4 finished rows use 2 evaluation protocols (generated samples 200 (3 rows) "
        "vs 500 (1 row); samples per class 20 (3 rows) vs 50 (1 row)). Numbers measured under different protocols are not "
        "comparable. Fix: evaluate every row under one protocol (re-run the odd rows), or run "
        "`sweep report --mix-protocols` to compare them anyway (marked as mixed)."
    )
    assert [(r.comparison, r.study) for r in data.refusals] == [("study guidance", "guidance")]
    text = markdown_study(table)
    assert text.startswith("**Not compared.** Study guidance is not compared") and "`sweep report --mix-protocols`" in text
    assert "| cfg_scale |" not in text


def test_mix_protocols_draws_the_table_and_marks_it():
    data = data_of(guidance_rows(FIFTY))
    data.mix_protocols = True
    table = study_table(data, data.studies[0])
    assert table.refusal is None and data.refusals == []
    assert table.frame["fid_mean"].tolist() == [10.0, 6.0]
    assert table.footnote[-1] == (
        "⚠ Mixed protocols, compared on request (--mix-protocols): generated samples 200 (3 rows) vs 500 (1 row); "
        "samples per class 20 (3 rows) vs 50 (1 row); numbers under different protocols are not comparable."
    )


def test_without_every_field_the_protocol_id_decides_and_unrecorded_differs():
    rows = pd.DataFrame([{"status": "finished", "protocol_id": i} for i in ("a", "a", "b")] + [{"status": "failed", "protocol_id": "c"}])
    assert check_protocols(rows, "x").details() == "protocol id a (2 rows) vs b (1 row)"  # failed rows have no numbers
    old = pd.DataFrame([{"status": "finished", "num_samples": 200}, {"status": "finished", "protocol_samples": 200.0, "num_samples": 200}])
    assert not check_protocols(old, "x").mixed  # older rows name the count num_samples; 200.0 is 200
    legacy = pd.DataFrame([{"status": "finished", "protocol_pr_k": 3}, {"status": "finished", "protocol_pr_k": None}])
    assert check_protocols(legacy, "x").details() == "precision/recall k 3 (1 row) vs not recorded (1 row)"
    assert not check_protocols(pd.DataFrame([{"status": "finished", "fid": 1.0}] * 2), "x").mixed  # nothing recorded: nothing to refuse


def test_a_study_varying_samples_per_class_compares_protocols_by_design_but_not_within_a_point():
    study = StudyInfo("count", {"samples_per_class": [20, 50]})
    rows = [row("count", seed, 6.0 + seed) for seed in (0, 1)] + [row("count", seed, 5.0 + seed, samples_per_class=50, **FIFTY) for seed in (0, 1)]
    data = data_of(rows, study)
    table = study_table(data, study)
    assert table.refusal is None and table.frame["fid_mean"].tolist() == [6.5, 5.5]
    assert "Protocols differ between grid points by design: this study varies samples_per_class, which sets the evaluation protocol." in table.footnote
    rows[3]["protocol_reference"] = "digits/train"  # another reference is no part of the design
    rows[1]["protocol_samples"] = 180  # nor a different count within one grid point
    check = check_protocols(pd.DataFrame(rows), "study count", study.varied)
    assert check.details() == "reference digits/heldout (3 rows) vs digits/train (1 row); generated samples 180 (1 row) vs 200 (1 row)"


def test_build_report_writes_the_other_studies_and_lists_the_refusals(tmp_path):
    vocab = StudyInfo("vocab", {"token_each": [1, 2]})
    rows = guidance_rows(FIFTY) + [row("vocab", 0, fid, token_each=k) for k, fid in ((1, 6.0), (2, 4.0))]
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "guidance.csv").write_text("stale")  # from an earlier report
    refusals = []
    markdown = build_report(data_of(rows, StudyInfo("guidance", {"cfg_scale": [1.0, 2.0]}), vocab), tmp_path, figures=False, grids=False, refusals=refusals)
    assert [r.comparison for r in refusals] == ["study guidance"]
    assert markdown.index("## Not compared") < markdown.index("## guidance") < markdown.index("## vocab")
    assert "| 2 | 4.00 | 104.0 | 1 |" in markdown  # the other study is compared as usual (n = 1: nothing bold)
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["tables.tex", "vocab.csv", "vocab.tex"]
    assert (tmp_path / "tables" / "tables.tex").read_text().count("\\begin{table}") == 1
    html = (tmp_path / "report.html").read_text()
    assert '<p class="refusal" data-study="guidance">' in html and 'data-study="vocab"' in html
    mixed = build_report(data_of(rows, StudyInfo("guidance", {"cfg_scale": [1.0, 2.0]}), vocab), tmp_path, ("md",), figures=False, grids=False, mix_protocols=True)
    assert "## Not compared" not in mixed and "| 1.0 | 10.00 ± 1.41 |" in mixed and "⚠ Mixed protocols" in mixed


@pytest.fixture
def drawn(monkeypatch):
    """name -> caption of every figure made (no file is rendered)."""
    seen = {}

    def record(figure, out, name, title, caption, study):
        seen[name] = caption
        figures._pyplot().close(figure)
        return FigureFile(name, title, caption, study, out / f"{name}.png", out / f"{name}.pdf")

    monkeypatch.setattr(figures, "_save", record)
    return seen


def test_figures_of_a_refused_study_and_a_mixed_trade_off_are_not_drawn(drawn, tmp_path):
    vocab = StudyInfo("vocab", {"token_each": [1, 2]})
    guidance = StudyInfo("guidance", {"cfg_scale": [1.0, 2.0]})
    data = data_of(guidance_rows(FIFTY) + [row("vocab", 0, fid, token_each=k) for k, fid in ((1, 6.0), (2, 4.0))], guidance, vocab)
    assert sorted(f.name for f in make_figures(data, tmp_path)) == ["tradeoff", "vocab--token_each"]
    assert [r.comparison for r in data.refusals] == ["study guidance"]
    # each study is consistent, but one figure would put both protocols side by side
    data = data_of(guidance_rows() + [row("vocab", 0, fid, token_each=k, **FIFTY) for k, fid in ((1, 6.0), (2, 4.0))], guidance, vocab)
    assert sorted(f.name for f in make_figures(data, tmp_path)) == ["guidance--cfg_scale", "vocab--token_each"]
    assert [r.comparison for r in data.refusals] == ["figure tradeoff (all studies)"]
    assert "generated samples 200 (4 rows) vs 500 (2 rows)" in data.refusals[0].message
    data.refusals.clear()
    data.mix_protocols = True
    assert "tradeoff" in {f.name for f in make_figures(data, tmp_path)} and data.refusals == []
    assert drawn["tradeoff"].endswith("samples per class 20 (4 rows) vs 50 (2 rows); numbers under different protocols are not comparable.")


def test_sweep_report_exits_0_prints_the_refusal_and_compares_on_request(tmp_path, capsys, monkeypatch, drawn):
    from sweep.cli import main

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run, ignore=shutil.ignore_patterns("samples.npz", "losses.parquet"))
    trials = pd.read_parquet(run / "trials.parquet")
    key = trials[(trials["study"] == "guidance") & (trials["cfg_scale"] == 1.0) & (trials["seed"] == 2)]["evaluation_key"].iloc[0]
    path = run / "stages" / "evaluation" / key / "row.parquet"
    pd.read_parquet(path).assign(protocol_samples=50, protocol_samples_per_class=5).to_parquet(path)  # one row, a cheaper protocol
    assert main(["report", str(run), "--out", str(tmp_path / "a"), "--format", "md"]) == 0
    printed = capsys.readouterr().out
    assert "not compared: Study guidance is not compared: its 8 finished rows use 2 evaluation protocols" in " ".join(printed.split())
    markdown = (tmp_path / "a" / "report.md").read_text()
    assert "**Not compared.** Study guidance" in markdown and "| tiny † | 1 | 5.50 ± 0.71 |" in markdown  # scaling still compared
    assert "guidance--cfg_scale" not in drawn and "scaling--size" in drawn  # the trade-off keeps the other studies
    assert main(["report", str(run), "--out", str(tmp_path / "b"), "--format", "md", "--mix-protocols"]) == 0
    assert "not compared" not in capsys.readouterr().out
    markdown = (tmp_path / "b" / "report.md").read_text()
    assert "| 1.0 | 12.00 ± 2.00 |" in markdown and "_⚠ Mixed protocols, compared on request (--mix-protocols): generated samples 20 (7 rows) vs 50 (1 row)" in markdown


def test_rows_before_the_sampling_precision_field_read_fp32_and_bf16_rows_are_another_protocol():
    # PROTOCOL has no protocol_sampling_precision: rows recorded before the field existed (all fp32)
    old_and_new = pd.DataFrame(guidance_rows({"protocol_sampling_precision": "fp32"}))
    check = check_protocols(old_and_new, "study guidance")
    assert not check.mixed and check.protocols == 1 and check.rows == 4
    with_bf16 = pd.DataFrame(guidance_rows({"protocol_sampling_precision": "bf16", "protocol_id": "cccccccccccc"}))
    check = check_protocols(with_bf16, "study guidance")
    assert check.mixed and check.protocols == 2
    # the rows without the field count as fp32
    assert [(d.field, d.counts) for d in check.differences] == [("protocol_sampling_precision", (("fp32", 3), ("bf16", 1)))]

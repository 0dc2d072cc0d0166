"""FID over training per study (Results.intermediate()), searched cells in tables, search traces.

Hand-made frames, no torch; `_save` is replaced by a recorder that keeps what each figure drew.
"""

import math

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest

import reports.figures as figures
from reports.figures import FigureFile, make_figures
from reports.latex import latex_table
from reports.markdown import markdown_study
from reports.palette import colour
from reports.tables import ReportData, StudyInfo, ablation_table, study_table, with_study

BASELINE = {"cfg_scale": 2.0, "temperature": 1.0, "modeling": "ar", "size": "tiny", "samples_per_class": 20}
PROTOCOL = {"protocol_samples_per_class": 20, "protocol_samples": 200, "protocol_reference": "digits/heldout"}


@pytest.fixture
def drawn(monkeypatch):
    """name -> {"lines": {label: (x, y, colour)}, "bands": n, "caption", "study"} of every figure made."""
    seen = {}

    def record(figure, out, name, title, caption, study):
        lines, bands = {}, 0
        for ax in figure.axes:
            for line in ax.get_lines():
                if not line.get_label().startswith("_"):
                    lines[line.get_label()] = (list(line.get_xdata()), list(line.get_ydata()), mcolors.to_hex(line.get_color()))
            for collection in ax.collections:
                label = collection.get_label()
                if label and not label.startswith("_"):  # labelled scatters: their points
                    lines[label] = [tuple(p) for p in collection.get_offsets()]
                elif collection.__class__.__name__ in ("PolyCollection", "FillBetweenPolyCollection"):
                    bands += 1
        seen[name] = {"lines": lines, "bands": bands, "caption": caption, "study": study}
        figures._pyplot().close(figure)
        return FigureFile(name, title, caption, study, out / f"{name}.png", out / f"{name}.pdf")

    monkeypatch.setattr(figures, "_save", record)
    return seen


# ---------------------------------------------------------------- FID over training


def trials() -> pd.DataFrame:
    """Study `modeling` (AR vs MLM, 2 seeds) and study `guidance` (cfg only) sharing the AR generators."""
    rows = [{"study": "modeling", "generator_key": f"g-{m}-{s}", "modeling": m, "seed": s, "cfg_scale": 2.0, "size": "tiny"}
            for m in ("ar", "mlm") for s in (0, 1)]
    rows += [{"study": "guidance", "generator_key": f"g-ar-{s}", "modeling": "ar", "seed": s, "cfg_scale": c, "size": "tiny"}
             for s in (0, 1) for c in (1.0, 2.0)]
    return pd.DataFrame(rows)


def intermediate(protocol_id: str = "p1") -> pd.DataFrame:
    """As Results.intermediate(): key = generator key, its axes (no study), step, metrics, protocol_id."""
    rows = [
        {"key": f"g-{m}-{s}", "modeling": m, "size": "tiny", "step": step, "fid": fid + 1.0 * s, "kid": 0.01, "class_accuracy": 0.5,
         "num_samples": 50, "intermediate": True, "protocol_id": protocol_id}
        for m, fids in (("ar", (9.0, 7.0, 5.0)), ("mlm", (11.0, 9.0, 8.0))) for s in (0, 1) for step, fid in zip((25, 50, 100), fids)
    ]
    rows.append({"key": "g-orphan", "modeling": "ar", "size": "tiny", "step": 25, "fid": 1.0, "intermediate": True, "protocol_id": protocol_id})
    return pd.DataFrame(rows)


def training_data(frame: pd.DataFrame) -> ReportData:
    studies = [StudyInfo("modeling", {"modeling": ["ar", "mlm"]}), StudyInfo("guidance", {"cfg_scale": [1.0, 2.0]})]
    evaluations = pd.DataFrame([{"study": "guidance", **BASELINE, "seed": 0, "status": "finished", "fid": 4.0}])
    return ReportData("t", studies, BASELINE, evaluations, intermediate=with_study(frame, trials()))


def test_intermediate_rows_get_the_study_of_their_generator():
    joined = with_study(intermediate(), trials())
    assert joined.groupby("study").size().to_dict() == {"guidance": 6, "modeling": 12}  # AR generators are in both
    assert joined[joined["key"] == "g-orphan"]["study"].isna().all()  # in no trial of this spec: no study
    assert with_study(None, trials()).empty and with_study(pd.DataFrame(), trials()).empty


def test_fid_over_training_one_line_per_cell_mean_over_seeds_with_a_band(drawn, tmp_path):
    made = make_figures(training_data(intermediate()), tmp_path)
    assert [f.name for f in made] == ["modeling--training-steps"]  # guidance varies sampling only: no figure
    figure = drawn["modeling--training-steps"]
    assert figure["study"] == "modeling" and figure["bands"] == 2
    ar_x, ar_y, ar_colour = figure["lines"]["AR (2 seeds)"]
    assert ar_x == [25, 50, 100] and ar_y == [9.5, 7.5, 5.5]  # (9 + 10) / 2, (7 + 8) / 2, (5 + 6) / 2
    assert figure["lines"]["MLM (2 seeds)"][1] == [11.5, 9.5, 8.5]
    assert (ar_colour, figure["lines"]["MLM (2 seeds)"][2]) == (colour("modeling", "ar"), colour("modeling", "mlm"))
    assert "bands the sample standard deviation" in figure["caption"]


def test_fid_over_training_lines_follow_the_spec_order_of_names(drawn, tmp_path):
    data = training_data(intermediate())
    data.studies[0] = StudyInfo("modeling", {"modeling": ["mlm", "ar"]})  # the rows come AR first
    make_figures(data, tmp_path)
    assert list(drawn["modeling--training-steps"]["lines"]) == ["MLM (2 seeds)", "AR (2 seeds)"]


def test_fid_over_training_refuses_mixed_protocols(drawn, tmp_path):
    frame = intermediate()
    frame.loc[frame["key"] == "g-mlm-1", "protocol_id"] = "p2"
    data = training_data(frame)
    assert make_figures(data, tmp_path) == []
    assert [(r.comparison, r.study) for r in data.refusals] == [("figure modeling--training-steps", "modeling")]
    assert "protocol id p1 (9 rows) vs p2 (3 rows)" in data.refusals[0].message


def test_from_results_takes_results_intermediate_and_keeps_it_out_of_the_tables():
    from sweep.results import load_results

    from .test_fixture_report import FIXTURE

    results = load_results(FIXTURE)
    generators = results.trials[results.trials["study"] == "scaling"].drop_duplicates("generator_key")
    frame = pd.DataFrame([{"key": g, "step": step, "fid": 55.0, "intermediate": True} for g in generators["generator_key"] for step in (10, 20)])
    results.intermediate = lambda: frame
    data = ReportData.from_results(results)
    scaling = data.intermediate[data.intermediate["study"] == "scaling"]
    assert len(scaling) == 16 and {"size", "token_each"} <= set(scaling.columns)  # the trials' generator axes joined
    assert len(data.evaluations) == len(results.trials) and not (data.evaluations["fid"] == 55.0).any()  # never mixed with the final evaluations


# ---------------------------------------------------------------- searched cells


def searched_rows(with_points: bool = True) -> pd.DataFrame:
    """Study `sampling` (modeling ar / mlm): a grid row per seed at the baseline cfg, and per seed the
    row an Optuna search over cfg_scale and temperature chose; plus the AR seed-0 search's points."""
    rows = []
    for m, fid in (("ar", 6.0), ("mlm", 8.0)):
        for seed in (0, 1):
            rows.append({"study": "sampling", **BASELINE, "modeling": m, "seed": seed, "status": "finished", "fid": fid + seed, **PROTOCOL})
            rows.append({"study": "sampling", **BASELINE, "modeling": m, "seed": seed, "status": "finished", "fid": fid - 2 + seed,
                         "cfg_scale": 2.5 + 0.75 * seed, "temperature": 0.9, "searched": True, "search_id": f"s-{m}-{seed}", **PROTOCOL})
    if with_points:  # on the cheap search protocol: 5 per class
        fids = (9.0, 4.0, 7.0, 3.0, 5.0)
        rows += [{"study": "sampling", **BASELINE, "seed": 0, "status": "finished", "fid": f, "cfg_scale": 1.0 + i, "temperature": 0.9,
                  "search_point": True, "search_id": "s-ar-0", "search_index": i, "protocol_samples_per_class": 5}
                 for i, f in enumerate(fids)]
    return pd.DataFrame(rows)


def test_tables_ignore_search_points_and_show_chosen_values_marked():
    data = ReportData("t", [StudyInfo("sampling", {"modeling": ["ar", "mlm"]})], BASELINE, searched_rows())
    table = study_table(data, data.studies[0])
    assert table.refusal is None  # the search points' cheaper protocol is not compared: they are no table rows
    frame = table.frame
    assert frame[["modeling", "searched", "fid_mean", "n"]].values.tolist() == [
        ["ar", False, 6.5, 2], ["ar", True, 4.5, 2], ["mlm", False, 8.5, 2], ["mlm", True, 6.5, 2],
    ]
    assert frame["cfg_scale"].tolist() == [2.0, "2.5 / 3.25", 2.0, "2.5 / 3.25"] and frame["baseline"].tolist() == [True, False, False, False]
    text = markdown_study(table)
    assert "| modeling | cfg_scale | temperature | FID ↓ | n |" in text
    assert "| ar † | 2.0 | 1.0 | 6.50 ± 0.71 | 2 |" in text
    assert "| ar | 2.5 / 3.25 ‡ | 0.9 ‡ | 4.50 ± 0.71 | 2 |" in text  # vs 6.50 ± 0.71: Welch p = 0.106, not bold
    assert (
        "_‡: chosen by Optuna search over cfg\\_scale, temperature, budget 5 points each, 4 searches; re-evaluated on a "
        "fresh sampling seed (the search's own points, on its cheaper protocol, are not table rows)._"
    ) in text
    assert r"ar & 2.5 / 3.25 $^{\ddagger}$ & 0.9 $^{\ddagger}$ & 4.50\,$\pm$\,0.71 & 2 \\" in latex_table(table)


def test_the_study_search_block_names_axes_and_budget_and_old_rows_have_no_search():
    study = StudyInfo("sampling", {"modeling": ["ar", "mlm"]}, search={"axes": ["cfg_scale"], "budget": 12, "metric": "fid"})
    data = ReportData("t", [study], BASELINE, searched_rows(with_points=False))
    table = study_table(data, study)
    assert table.search_axes == ["cfg_scale"]
    assert any(line.startswith("‡: chosen by Optuna search over cfg_scale, budget 12 points each, 4 searches;") for line in table.footnote)
    old = searched_rows(with_points=False).drop(columns=["searched", "search_id"])
    plain = ablation_table(old, "sampling", ["modeling"])
    assert plain["searched"].tolist() == [False, False] and plain["n"].tolist() == [4, 4]
    only = ablation_table(searched_rows(), StudyInfo("sampling", {}), [])  # a search-only study varies nothing
    assert only["searched"].tolist() == [False, True] and only["n"].tolist() == [4, 4]


def test_a_search_trace_has_its_points_the_best_so_far_and_the_chosen_point(drawn, tmp_path):
    data = ReportData("t", [StudyInfo("sampling", {"modeling": ["ar", "mlm"]})], BASELINE, searched_rows())
    made = {f.name: f for f in make_figures(data, tmp_path)}
    assert made["search-s-ar-0"].study == "sampling"
    lines = drawn["search-s-ar-0"]["lines"]
    assert lines["best so far"][1] == [9.0, 4.0, 4.0, 3.0, 3.0]  # FID: lower is better
    assert lines["chosen ‡"] == [(3.0, 3.0)] and len(lines["point"]) == 5
    # the searched axes, read off the points (only cfg_scale moves among them), and the best point's value
    assert "points of Optuna search s-ar-0 over cfg_scale in study sampling" in drawn["search-s-ar-0"]["caption"]
    assert "the star the best point (cfg_scale=4.0)" in drawn["search-s-ar-0"]["caption"]


def test_search_points_from_results_follow_the_metric_direction(drawn, tmp_path):
    points = pd.DataFrame([  # as Results.search_points(): study, search_metric, the point's row
        {"study": "sampling", "search_id": "s1", "search_index": i, "search_point": True, "search_metric": "class_accuracy",
         "status": status, "class_accuracy": acc, "cfg_scale": 1.0 + i}
        for i, (acc, status) in enumerate(((0.5, "finished"), (0.7, "finished"), (math.nan, "pending"), (0.6, "finished")))
    ])
    data = ReportData("t", [StudyInfo("sampling", {"modeling": ["ar"]})], BASELINE, searched_rows(with_points=False).iloc[:0], searches=points)
    assert [f.name for f in make_figures(data, tmp_path)] == ["search-s1"]
    lines = drawn["search-s1"]["lines"]
    assert lines["best so far"][0] == [0, 1, 3] and lines["best so far"][1] == [0.5, 0.7, 0.7]  # higher is better
    assert lines["chosen ‡"] == [(1.0, 0.7)]
    assert np.isclose(lines["point"][2][1], 0.6)

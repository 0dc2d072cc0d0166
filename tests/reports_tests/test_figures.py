"""Figures are made only when their data exists, handle axes the schema does not know yet, and draw
one colour per axis value. `_save` is replaced by a recorder: no file is rendered, so this stays fast."""


import matplotlib.colors as mcolors
import pandas as pd
import pytest

import reports.figures as figures
from reports.figures import FigureFile, make_figures, report_palette
from reports.palette import colour
from reports.tables import ReportData, StudyInfo

BASELINE = {"cfg_scale": 2.0, "size": "tiny", "token_each": 1, "code_dim": 8, "modeling": "ar", "mlm_steps": 8, "cfg_schedule": "constant"}


@pytest.fixture
def drawn(monkeypatch):
    """name -> {"lines": {label: hex colour}, "xlabels": [...], "ylabels": [...]} of every figure made."""
    seen = {}

    def record(figure, out, name, title, caption, study):
        lines = {}
        for ax in figure.axes:
            for line in ax.get_lines():
                if not line.get_label().startswith("_"):
                    lines[line.get_label()] = mcolors.to_hex(line.get_color())
            for container in ax.containers:  # errorbar lines carry their label on the container
                label = container.get_label()
                if label and not label.startswith("_") and hasattr(container, "lines"):
                    lines[label] = mcolors.to_hex(container.lines[0].get_color())
        seen[name] = {
            "lines": lines,
            "xlabels": [ax.get_xlabel() for ax in figure.axes],
            "ylabels": [ax.get_ylabel() for ax in figure.axes],
            "caption": caption,
        }
        figures._pyplot().close(figure)
        return FigureFile(name, title, caption, study, out / f"{name}.png", out / f"{name}.pdf")

    monkeypatch.setattr(figures, "_save", record)
    return seen


def rows(study: str, points: list[dict], fids: dict, **extra) -> list[dict]:
    out = []
    for point in points:
        for seed, fid in enumerate(fids[tuple(point.values())]):
            out.append({"study": study, **BASELINE, **point, "seed": seed, "status": "finished", "fid": fid, **extra})
    return out


def data_of(studies: list[StudyInfo], evaluations: list[dict], **kwargs) -> ReportData:
    return ReportData(name="t", studies=studies, baseline=BASELINE, evaluations=pd.DataFrame(evaluations), **kwargs)


def test_a_guidance_study_makes_no_size_loss_analysis_or_step_figure(drawn, tmp_path):
    study = StudyInfo("guidance", {"cfg_scale": [1.0, 2.0, 4.0]})
    data = data_of([study], rows("guidance", [{"cfg_scale": c} for c in (1.0, 2.0, 4.0)], {(1.0,): [9, 10], (2.0,): [5, 6], (4.0,): [7, 8]}))
    made = make_figures(data, tmp_path)
    assert [f.name for f in made] == ["guidance--cfg_scale"]  # FID only: no IS, no class accuracy, one study
    assert drawn["guidance--cfg_scale"]["xlabels"] == ["CFG scale s"]


def test_nothing_is_drawn_without_two_values_with_results(drawn, tmp_path):
    study = StudyInfo("guidance", {"cfg_scale": [1.0, 2.0]})
    evaluations = rows("guidance", [{"cfg_scale": 1.0}], {(1.0,): [9.0]}) + [
        {"study": "guidance", **BASELINE, "cfg_scale": 2.0, "seed": 0, "status": "failed", "fid": None}
    ]
    assert make_figures(data_of([study], evaluations), tmp_path) == []
    assert drawn == {}


def test_future_axes_and_metrics_are_plotted_with_one_colour_per_value(drawn, tmp_path):
    mlm = StudyInfo("mlm", {"mlm_steps": [4, 8, 16], "modeling": ["ar", "mlm"]})
    schedule = StudyInfo("schedule", {"cfg_scale": [1.5, 3.0], "cfg_schedule": ["linear", "cosine"]})
    fids = {(s, m): [10.0 / s + (1.0 if m == "mlm" else 0.0)] * 2 for s in (4, 8, 16) for m in ("ar", "mlm")}
    evaluations = rows("mlm", [{"mlm_steps": s, "modeling": m} for s in (4, 8, 16) for m in ("ar", "mlm")], fids, inception_score_mean=100.0)
    fids = {(c, k): [4.0 + c, 5.0 + c] for c in (1.5, 3.0) for k in ("linear", "cosine")}
    evaluations += rows("schedule", [{"cfg_scale": c, "cfg_schedule": k} for c in (1.5, 3.0) for k in ("linear", "cosine")], fids)
    for row in evaluations:
        row["inception_score"] = 100.0 + row["cfg_scale"] * 10 + row["mlm_steps"]
    intermediate = pd.DataFrame(
        [{"modeling": m, "size": "tiny", "intermediate": True, "step": step, "fid": 9.0 - step / 100, "status": "finished"}
         for m in ("ar", "mlm") for step in (100, 200)]
    )
    data = data_of([mlm, schedule], evaluations, rows={"evaluation": intermediate})
    made = {f.name for f in make_figures(data, tmp_path)}
    assert made == {"mlm--mlm_steps", "schedule--cfg_scale", "training-steps", "tradeoff"}
    assert drawn["mlm--mlm_steps"]["xlabels"] == ["MLM decoding steps", "MLM decoding steps"]
    assert drawn["mlm--mlm_steps"]["ylabels"] == ["FID ↓", "Inception Score ↑"]
    ar, mlm_colour = colour("modeling", "ar"), colour("modeling", "mlm")
    assert drawn["mlm--mlm_steps"]["lines"] == {"ar": ar, "mlm": mlm_colour}
    assert drawn["training-steps"]["lines"] == {"AR": ar, "MLM": mlm_colour}  # the same value, the same colour
    assert drawn["schedule--cfg_scale"]["lines"] == {"linear": colour("cfg_schedule", "linear"), "cosine": colour("cfg_schedule", "cosine")}


def test_size_figure_only_when_size_varies_and_sizes_follow_the_ladder(drawn, tmp_path):
    study = StudyInfo("scaling", {"size": ["XL", "L"], "token_each": [1, 2]})
    fids = {(s, k): [3.0 if s == "L" else 2.0, 2.5] for s in ("L", "XL") for k in (1, 2)}
    evaluations = rows("scaling", [{"size": s, "token_each": k} for s in ("XL", "L") for k in (1, 2)], fids)
    made = {f.name for f in make_figures(data_of([study], evaluations), tmp_path)}
    assert made == {"scaling--size", "scaling--token_each"}
    assert drawn["scaling--size"]["lines"] == {"1-8": colour("vocabulary", "1-8"), "2-4": colour("vocabulary", "2-4")}
    assert drawn["scaling--token_each"]["lines"] == {"L": colour("size", "L"), "XL": colour("size", "XL")}


def test_analysis_figures_need_their_rows(drawn, tmp_path):
    data = data_of([StudyInfo("g", {"cfg_scale": [1.0]})], rows("g", [{"cfg_scale": 1.0}], {(1.0,): [5.0]}))
    assert make_figures(data, tmp_path) == []
    analysis = pd.DataFrame(
        [{"analysis": "token_randomness", "subject": s, "kl": kl, "uniform_floor_kl": 0.001} for s, kl in (("bae", 0.01), ("text", 3.0))]
        + [{"analysis": "attention_locality", "size": size, "layer": layer, "local_mass": 0.5} for size in ("L", "XL") for layer in range(3)]
    )
    data.rows = {"analysis": analysis}
    made = {f.name for f in make_figures(data, tmp_path)}
    assert made == {"token-randomness", "attention-locality"}
    assert drawn["attention-locality"]["lines"] == {"L": colour("size", "L"), "XL": colour("size", "XL")}


def test_report_palette_covers_every_varied_value():
    data = data_of([StudyInfo("s", {"token_each": [1, 2]})], rows("s", [{"token_each": 1}], {(1,): [1.0]}))
    palette = report_palette(data)
    assert palette("token_each", 2) == colour("token_each", 2)
    two = report_palette(data_of([StudyInfo("b", {"token_each": [1]}), StudyInfo("a", {"token_each": [2]})], []))
    assert (two("study", "b"), two("study", "a")) == ("#1f77b4", "#ff7f0e")  # studies: distinct colours in spec order


def test_layer_ticks_are_whole_numbers_and_the_token_legend_sits_outside_the_bars(monkeypatch, tmp_path):
    seen = {}

    def record(figure, out, name, title, caption, study):
        figure.canvas.draw()
        ticks = [[t for t in ax.get_xticks() if min(ax.get_xlim()) <= t <= max(ax.get_xlim())] for ax in figure.axes]
        legends = [(ax.get_window_extent(), ax.get_legend().get_window_extent()) for ax in figure.axes if ax.get_legend()]
        seen[name] = {"ticks": ticks, "legend_over_axes": [axes.overlaps(legend) for axes, legend in legends]}
        figures._pyplot().close(figure)
        return FigureFile(name, title, caption, study, out / f"{name}.png", out / f"{name}.pdf")

    monkeypatch.setattr(figures, "_save", record)
    analysis = pd.DataFrame(
        [{"analysis": "token_randomness", "subject": s, "order": o, "kl": kl, "uniform_floor_kl": 0.001}
         for s, kls in (("bae", (0.01, 0.02)), ("vq", (0.5, 1.0)), ("text", (3.0, 6.0))) for o, kl in zip(("unigram", "bigram"), kls)]
        + [{"analysis": "attention_locality", "size": "tiny", "layer": layer, "local_mass": 0.8 - 0.1 * layer} for layer in range(4)]
    )
    data = data_of([StudyInfo("g", {"cfg_scale": [1.0]})], rows("g", [{"cfg_scale": 1.0}], {(1.0,): [5.0]}), rows={"analysis": analysis})
    make_figures(data, tmp_path)
    assert seen["attention-locality"]["ticks"] == [[0.0, 1.0, 2.0, 3.0]]  # 4 layers: no 0.5, 1.5, ...
    assert seen["token-randomness"]["legend_over_axes"] == [False]


@pytest.fixture
def axes_of(monkeypatch):
    """name -> the figure's axes (drawn, kept open for the test to read)."""
    seen = {}

    def record(figure, out, name, title, caption, study):
        figure.canvas.draw()
        seen[name] = figure.axes
        return FigureFile(name, title, caption, study, out / f"{name}.png", out / f"{name}.pdf")

    monkeypatch.setattr(figures, "_save", record)
    yield seen
    figures._pyplot().close("all")


def test_top_k_all_is_a_labelled_category_after_the_numbers_and_no_line_reaches_it(axes_of, tmp_path):
    study = StudyInfo("top-k", {"top_k": [4, 0, 1]})  # 0 = all ids, listed in the middle
    fids = {(1,): [9.0, 9.4], (4,): [3.0, 3.2], (0,): [5.0, 6.0]}
    evaluations = rows("top-k", [{"top_k": k} for k in (4, 0, 1)], fids, class_accuracy=0.5)
    make_figures(data_of([study], evaluations, num_classes=10), tmp_path)
    fid, accuracy = axes_of["top-k--top_k"]
    ticks = {tick.get_text(): tick.get_position()[0] for tick in fid.get_xticklabels()}
    assert list(ticks) == ["1", "4", "all"] and ticks["1"] == 1.0 and ticks["4"] == 4.0 and ticks["all"] > 4.0
    drawn_lines = [line for line in fid.get_lines() if len(line.get_xdata()) > 1 and line.get_linestyle() not in ("None", "", " ")]
    numeric = [line for line in drawn_lines if list(line.get_ydata()) == [9.2, 3.1]]
    assert len(numeric) == 1 and list(numeric[0].get_xdata()) == [1.0, 4.0]  # the line joins the numbers only
    assert not any(ticks["all"] in list(line.get_xdata()) for line in drawn_lines if line.get_linestyle() == "-")
    assert all(0.0 not in list(line.get_xdata()) for line in fid.get_lines())  # nothing at x = 0
    # class accuracy: the chance level 1/10 as a dashed line
    (chance,) = [line for line in accuracy.get_lines() if line.get_label() == "chance (1/10)"]
    assert list(chance.get_ydata()) == [0.1, 0.1] and chance.get_linestyle() == "--"


def test_tradeoff_draws_points_without_lines_labelled_axis_equals_value(axes_of, tmp_path):
    guidance = StudyInfo("guidance", {"cfg_scale": [1.0, 2.0, 4.0]})
    top_k = StudyInfo("top-k", {"top_k": [1, 0]})
    evaluations = rows("guidance", [{"cfg_scale": c} for c in (1.0, 2.0, 4.0)], {(1.0,): [9.0], (2.0,): [5.0], (4.0,): [7.0]})
    evaluations += rows("top-k", [{"top_k": k} for k in (1, 0)], {(1,): [8.0], (0,): [6.0]})
    for row in evaluations:
        row["class_accuracy"] = 0.9 - row["fid"] / 100
        row.setdefault("top_k", 0)
    make_figures(data_of([guidance, top_k], evaluations, num_classes=10), tmp_path)
    (ax,) = axes_of["tradeoff"]
    for container in ax.containers:  # each study's points: markers only
        assert container.lines[0].get_linestyle() == "None"
    labels = sorted(text.get_text() for text in ax.texts)
    assert labels == ["baseline", "cfg_scale=1.0", "cfg_scale=4.0", "top_k=1", "top_k=all"]
    (chance,) = [line for line in ax.get_lines() if line.get_label() == "chance (1/10)"]
    assert list(chance.get_xdata()) == [0.1, 0.1]  # class accuracy is the x axis here


def test_names_on_the_x_axis_are_points_without_a_line_and_sizes_keep_theirs(axes_of, tmp_path):
    tokenizer = StudyInfo("tokenizer", {"tokenizer": ["vq", "bae"]})
    scaling = StudyInfo("scaling", {"size": ["XL", "L"]})
    evaluations = rows("tokenizer", [{"tokenizer": t} for t in ("vq", "bae")], {("vq",): [4.0], ("bae",): [2.5]})
    evaluations += rows("scaling", [{"size": s} for s in ("XL", "L")], {("XL",): [2.0], ("L",): [3.0]})
    make_figures(data_of([tokenizer, scaling], evaluations), tmp_path)
    (names,) = axes_of["tokenizer--tokenizer"]
    assert [t.get_text() for t in names.get_xticklabels()] == ["vq", "bae"]  # spec order
    assert [c.lines[0].get_linestyle() for c in names.containers] == ["None"]
    (sizes,) = axes_of["scaling--size"]
    assert [t.get_text() for t in sizes.get_xticklabels()] == ["L", "XL"]  # the ladder
    assert [c.lines[0].get_linestyle() for c in sizes.containers] == ["-"]

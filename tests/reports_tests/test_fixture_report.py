"""The whole report of the hand-made run folder tests/fixtures/results (see make_results_fixture.py):
literal numbers in every renderer, figures and grids where their data exists, a self-contained HTML."""

import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from reports.build import write_report
from sweep.results import load_results
from sweep.store import Store

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "results"


def fixture_results():
    results = load_results(FIXTURE)
    if "analysis" not in results.rows:  # a future stage kind: read it the way the store reads any kind
        results.rows["analysis"] = Store(FIXTURE / "stages").rows("analysis")
    return results


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    markdown = write_report(fixture_results(), out, run_dir=FIXTURE)
    return out, markdown


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.images, self.links, self.rows = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append(attrs.get("data-study"))
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "a":
            self.links.append(attrs.get("href", ""))
        elif tag == "tr":
            self.rows.append(attrs.get("class"))


def test_markdown_tables_hold_the_hand_computed_numbers(report):
    _, markdown = report
    lines = markdown.splitlines()
    # KID x 10^3 (the fixture's kid_mean is FID / 1000); bold where Welch's p < 0.05 against every other row:
    # FID 6 +- 1 (n 3) vs 8.5 +- 0.71 (n 2) gives p = 0.0494, vs 12 +- 2 p = 0.0196; recall 0.640 vs 0.570 p = 0.078
    assert "| cfg_scale | FID ↓ | KID ×10³ ↓ | IS ↑ | Prec. ↑ | Rec. ↑ | class acc. ↑ | n |" in lines
    assert "| 1.0 | 12.00 ± 2.00 | 12.00 ± 2.00 | 110.0 ± 10.0 | 0.780 ± 0.020 | 0.640 ± 0.040 | 0.400 ± 0.100 | 3 |" in lines
    assert "| 2.0 † | **6.00 ± 1.00** | **6.00 ± 1.00** | 160.0 ± 10.0 | **0.840 ± 0.010** | 0.520 ± 0.020 | **0.700 ± 0.050** | 3 |" in lines
    assert "| 4.0 | 8.50 ± 0.71 | 8.50 ± 0.71 | **185.0 ± 7.1** | 0.815 ± 0.007 | 0.570 ± 0.014 | 0.575 ± 0.035 | 2/3 (1 failed) |" in lines
    # scaling: 2.25 +- 0.35 vs 3.25 +- 0.35 (n 2 each) gives p = 0.106: nothing bold
    assert "| tiny † | 1 | 5.50 ± 0.71 | 5.50 ± 0.71 | 155.0 ± 7.1 | 0.845 ± 0.007 | 0.510 ± 0.014 | 0.725 ± 0.035 | 2 |" in lines
    assert "| small | 2 | 2.25 ± 0.35 | 2.25 ± 0.35 | — | 0.877 ± 0.004 | 0.445 ± 0.007 | 0.887 ± 0.018 | 2 |" in lines
    # one seed: no ±, no bold; rFID and PSNR from the tokenizer rows, only in the study that varies the tokenizer
    assert "| 12 | 4.50 | 4.50 | — | 0.855 | 0.490 | 0.775 | 2.00 | 22.50 | 1 |" in lines
    assert sum("rFID" in line for line in lines if line.startswith("| ")) == 1
    # top_k listed 4, 0, 1 in the spec: numbers ascending, then 0 as "all"
    top_k = [line.split(" | ")[0] for line in markdown.split("## top-k")[1].splitlines() if line.startswith("| ") and "---" not in line]
    assert top_k == ["| top_k", "| 1", "| 4", "| all †"]
    assert "_Protocol: 20 generated samples, 2 per class \\(class-balanced\\)" not in markdown  # parentheses are not escaped
    assert "_Protocol: 20 generated samples, 2 per class (class-balanced); reference: digits/heldout; features: classifier-fixture;" in markdown
    assert "Welch's t-test" in markdown.split("## guidance")[1].split("## tokenizer")[0]
    assert "2f37fbbc628a8d22" in markdown.split("## Failures")[1]


def test_hashes_and_versions_only_in_the_provenance(report):
    _, markdown = report
    body, provenance = markdown.split("## Provenance")
    assert "abababababab" not in body and "torch-fidelity" not in body
    assert f"- Protocol extractor weights sha256: {'ab' * 32}." in provenance
    assert "- Protocol versions: torch-fidelity=0.4.0." in provenance


def test_csv_keeps_full_precision(report):
    out, _ = report
    table = pd.read_csv(out / "tables" / "guidance.csv")
    assert table["cfg_scale"].tolist() == [1.0, 2.0, 4.0]
    assert table["fid"].tolist() == [12.0, 6.0, 8.5]
    assert table["fid_std"].tolist() == pytest.approx([2.0, 1.0, 0.70710678])
    assert table["kid"].tolist() == pytest.approx([0.012, 0.006, 0.0085])  # the rows' units (the tables show x 10^3)
    assert table["baseline"].tolist() == [False, True, False] and table["failed"].tolist() == [0, 0, 1]
    assert pd.read_csv(out / "tables" / "top-k.csv")["top_k"].tolist() == [1, 4, 0]  # the tables' order


def test_student_t_interval_option(tmp_path):
    markdown = write_report(fixture_results(), tmp_path, ("md",), interval="t95", figures=False, grids=False)
    # 4.302653 * 2 / sqrt(3) = 4.97; 12.706205 * 0.707107 / sqrt(2) = 6.35
    assert "| 1.0 | 12.00 ± 4.97 |" in markdown and "| 4.0 | 8.50 ± 6.35 |" in markdown
    assert "Student-t 95% confidence interval" in markdown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_figures_and_grids_exist_where_their_data_does(report):
    out, _ = report
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert figures == {
        "scaling--size", "scaling--token_each", "guidance--cfg_scale", "tokenizer--code_dim", "top-k--top_k",
        "training-steps", "training-loss", "token-randomness", "attention-locality", "tradeoff",
    }
    assert {p.stem for p in (out / "figures").glob("*.pdf")} == figures
    grids = sorted(p.name for p in (out / "grids").iterdir())
    # the tokenizer study has samples for one of its two points only: no side-by-side grid
    assert [g for g in grids if g.startswith("compare-")] == ["compare-guidance.png", "compare-scaling.png", "compare-top-k.png"]
    assert len([g for g in grids if g.startswith("trial-")]) == 8


def test_markdown_links_resolve(report):
    out, markdown = report
    links = re.findall(r"\]\(([^)]+)\)", markdown)
    assert {Path(link).parent.as_posix() for link in links} >= {"figures", "grids", "tables"}
    assert {Path(link).suffix for link in links} >= {".png", ".pdf", ".csv", ".tex"}
    assert all((out / link).is_file() for link in links)


def test_html_is_self_contained_with_one_table_per_study(report):
    out, _ = report
    text = (out / "report.html").read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    assert page.tables == ["scaling", "guidance", "tokenizer", "top-k"]
    assert len(page.images) == 10 + 3 + 11  # figures, side-by-side grids, trial grids listed per study
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert all(href.startswith(("#", "data:")) for href in page.links)
    assert not re.search(r"https?://", text)
    assert page.rows.count("baseline") == 4  # the baseline row of each study is shaded
    # each trial grid is titled with the settings its studies vary (the baseline's: all of them)
    assert "<figcaption>top_k=1, training seed 0 (evaluation" in text
    assert "<figcaption>size=tiny, token_each=1, cfg_scale=2.0, code_dim=8, top_k=all (baseline), training seed 0 (evaluation" in text


def test_latex_tables_and_standalone_document(report):
    out, _ = report
    names = sorted(p.name for p in (out / "tables").glob("*.tex"))
    assert names == ["guidance.tex", "scaling.tex", "tables.tex", "tokenizer.tex", "top-k.tex"]
    document = (out / "tables" / "tables.tex").read_text()
    assert document.count("\\begin{table}") == 4 and "\\end{document}" in document
    assert (
        "\\caption{Classifier-free guidance scale. Protocol: 20 generated samples, 2 per class (class-balanced); "
        "reference: digits/heldout; features: classifier-fixture; image size: 16; precision/recall k: 3.}"
    ) in (out / "tables" / "guidance.tex").read_text()
    assert "12.00\\,$\\pm$\\,2.00" in (out / "tables" / "guidance.tex").read_text()

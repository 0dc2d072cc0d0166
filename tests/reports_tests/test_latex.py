"""LaTeX rendering: escaping and a booktabs table with literal cells (compiled outside pytest)."""

import pandas as pd

from reports.latex import latex_document, latex_escape, latex_table
from reports.tables import ReportData, StudyInfo, study_table


def test_specials_are_escaped():
    assert latex_escape("cfg_scale & 50% of #3 {x} $y ~ ^z \\") == (
        r"cfg\_scale \& 50\% of \#3 \{x\} \$y \textasciitilde{} \textasciicircum{}z \textbackslash{}"
    )


def test_unicode_symbols_become_math_and_adjacent_math_merges():
    assert latex_escape("3.20 ± 0.96") == r"3.20 $\pm$ 0.96"
    assert latex_escape("FID ↓, IS ↑, 1 †") == r"FID $\downarrow$, IS $\uparrow$, 1 $^{\dagger}$"
    assert latex_escape("±↓") == r"$\pm \downarrow$"  # not `$\pm$$\downarrow$` (display math)
    assert latex_escape("— KL(p ‖ q) ⚠ 漢") == r"--- KL(p $\|$ q) Warning: ?"


def test_study_table_is_booktabs_with_bold_best_and_dagger_baseline():
    protocol = {"protocol_extractor": "classifier", "protocol_extractor_sha256": "ab" * 32, "protocol_versions": "torch-fidelity=0.4.0"}
    rows = pd.DataFrame(
        [
            {"study": "top_k", "top_k": k, "seed": s, "status": "finished", "fid": f, **protocol}
            for k, fids in ((0, (6.0, 6.2)), (16, (3.0, 3.2)))
            for s, f in enumerate(fids)
        ]
    )
    data = ReportData(name="t", studies=[StudyInfo("top_k", {"top_k": [0, 16]}, "Top-k & more")], baseline={"top_k": 0}, evaluations=rows)
    tex = latex_table(study_table(data, data.studies[0]))
    lines = tex.splitlines()
    # the caption: the study's description, then the protocol in one sentence, no hash, no version
    assert r"\caption{Top-k \& more. Protocol: reference: the held-out split; features: classifier.}" in lines
    assert "abab" not in tex and "fidelity" not in tex
    assert r"top\_k & FID $\downarrow$ & $n$ \\" in lines
    # 3.10 +- 0.14 vs 6.10 +- 0.14 (n = 2 each): Welch p = 0.0022, bold; top_k = 0 is "all", after the numbers
    assert lines.index(r"16 & \textbf{3.10\,$\pm$\,0.14} & 2 \\") + 1 == lines.index(r"all $^{\dagger}$ & 6.10\,$\pm$\,0.14 & 2 \\")
    assert lines.index(r"\toprule") < lines.index(r"\midrule") < lines.index(r"\bottomrule")
    assert tex.count("{") == tex.count("}")
    document = latex_document([study_table(data, data.studies[0])], "run_1")
    assert document.startswith("\\documentclass{article}") and "\\usepackage{booktabs,graphicx}" in document
    assert "\\section*{run\\_1}" in document and document.rstrip().endswith("\\end{document}")


def test_the_kid_header_names_its_scale():
    assert latex_escape("KID ×10³ ↓") == r"KID $\times$10$^{3}$ $\downarrow$"


def test_a_study_without_description_is_captioned_by_what_it_varies():
    rows = pd.DataFrame([{"study": "top-k", "top_k": k, "seed": 0, "status": "finished", "fid": 1.0} for k in (4, 0, 1)])
    data = ReportData(name="t", studies=[StudyInfo("top-k", {"top_k": [4, 0, 1]})], baseline={"top_k": 0}, evaluations=rows)
    assert r"\caption{Study top-k: top\_k over 1, 4, all. Protocol: reference: the held-out split.}" in latex_table(study_table(data, data.studies[0]))

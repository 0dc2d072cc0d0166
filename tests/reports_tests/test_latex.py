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
    rows = pd.DataFrame(
        [
            {"study": "top_k", "top_k": k, "seed": s, "status": "finished", "fid": f}
            for k, fids in ((0, (4.0, 6.0)), (16, (3.0, 3.0)))
            for s, f in enumerate(fids)
        ]
    )
    data = ReportData(name="t", studies=[StudyInfo("top_k", {"top_k": [0, 16]}, "Top-k & more")], baseline={"top_k": 0}, evaluations=rows)
    tex = latex_table(study_table(data, data.studies[0]))
    lines = tex.splitlines()
    assert r"\caption{top\_k: Top-k \& more}" in lines
    assert r"top\_k & FID $\downarrow$ & $n$ \\" in lines
    assert r"0 $^{\dagger}$ & 5.00\,$\pm$\,1.41 & 2 \\" in lines
    assert r"16 & \textbf{3.00\,$\pm$\,0.00} & 2 \\" in lines
    assert lines.index(r"\toprule") < lines.index(r"\midrule") < lines.index(r"\bottomrule")
    assert tex.count("{") == tex.count("}")
    document = latex_document([study_table(data, data.studies[0])], "run_1")
    assert document.startswith("\\documentclass{article}") and "\\usepackage{booktabs,graphicx}" in document
    assert "\\section*{run\\_1}" in document and document.rstrip().endswith("\\end{document}")

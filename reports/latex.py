"""Rendering ablation tables as LaTeX (booktabs) that compiles as is.

Each table is a `table` float needing `booktabs` and `graphicx` (for shrinking a wide table to the
line width); `latex_document` wraps tables into a standalone article that pdflatex compiles.
"""

from __future__ import annotations

from reports.markdown import BASELINE_MARK, cell_texts
from reports.order import ordered, value_text
from reports.tables import SEARCH_MARK, StudyTable

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
_UNICODE = {
    "±": r"$\pm$",
    "↓": r"$\downarrow$",
    "↑": r"$\uparrow$",
    BASELINE_MARK: r"$^{\dagger}$",
    SEARCH_MARK: r"$^{\ddagger}$",
    "—": "---",
    "–": "--",
    "×": r"$\times$",
    "³": r"$^{3}$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "τ": r"$\tau$",
    "·": r"$\cdot$",
    "√": r"$\surd$",
    "‖": r"$\|$",
    "…": r"\ldots{}",
    "⚠": "Warning:",
    "−": "-",
    "“": "``", "”": "''", "’": "'",
}


def latex_escape(text: str) -> str:
    """Plain Unicode text as LaTeX source: specials escaped, known symbols as math, other non-Latin-1
    characters replaced by `?` (pdflatex with T1/utf8 typesets Latin-1 only)."""
    out: list[str] = []
    previous_math = False
    for char in str(text):
        piece = _SPECIAL.get(char) or _UNICODE.get(char)
        if piece is None:
            piece = char if ord(char) < 128 or 0xA0 <= ord(char) <= 0xFF else "?"
        is_math = piece.startswith("$") and piece.endswith("$") and len(piece) > 1
        if is_math and previous_math:  # `$a$$b$` would open display math: merge into `$a b$`
            out[-1] = out[-1][:-1] + " " + piece[1:]
        else:
            out.append(piece)
        previous_math = is_math
    return "".join(out)


def _cell(text: str, best: bool) -> str:
    body = latex_escape(text).replace(r" $\pm$ ", r"\,$\pm$\,")
    return rf"\textbf{{{body}}}" if best and text != "—" else body


def latex_table(table: StudyTable) -> str:
    """A booktabs `table` float: caption from the study's description and protocol, axes left, metrics
    right with arrows, a distinguishable best bold, † baseline, footnote.

    A refused table (mixed protocols) has no float: build_report leaves it out."""
    if table.refusal is not None:
        raise ValueError(f"study {table.study.name} is refused ({table.refusal}); leave it out of the LaTeX")
    name = table.study.name
    varied, metrics = table.label_axes, table.metrics
    spec = "l" * len(varied) + "r" * (len(metrics) + 1)
    header = [latex_escape(a) for a in varied] + [latex_escape(m.header) for m in metrics] + ["$n$"]
    lines = [
        "% needs \\usepackage{booktabs,graphicx}",
        "\\begin{table}[htbp]",
        "\\centering",
        f"\\caption{{{latex_escape(caption(table))}}}",
        f"\\label{{tab:{_label(name)}}}",
        # shrink to the line width only when wider (\width is the natural width inside \resizebox)
        "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(header) + " \\\\",
        "\\midrule",
    ]
    for labels, cells, count in cell_texts(table.frame, varied, metrics, table.search_axes):
        row = [latex_escape(label) for label in labels] + [_cell(text, best) for text, best in cells] + [latex_escape(count)]
        lines.append(" & ".join(row) + " \\\\")
    lines += [
        "\\bottomrule",
        "\\end{tabular}%",
        "}",
        "\\par\\smallskip",
        "\\begin{minipage}{\\linewidth}\\footnotesize",
        " ".join(latex_escape(line) for line in table.footnote if line != table.protocol),  # the protocol is in the caption
        "\\end{minipage}",
        "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


def caption(table: StudyTable) -> str:
    """The caption of a study's table: its description (without one, its name and the values it varies),
    then the evaluation protocol in one short sentence (hashes and versions stay in report.md's provenance)."""
    study = table.study
    varies = "; ".join(f"{a} over {', '.join(value_text(a, v) for v in ordered(a, values, values))}" for a, values in study.vary.items())
    text = " ".join(study.description.split()) or f"Study {study.name}" + (f": {varies}." if varies else ".")
    if not text.endswith((".", "!", "?")):
        text += "."
    return f"{text} {table.protocol}".strip()


def _label(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in name)


def latex_document(tables: list[StudyTable], title: str = "") -> str:
    """A standalone article holding every table not refused (`pdflatex tables.tex` compiles it)."""
    head = [
        "\\documentclass{article}",
        "\\usepackage[T1]{fontenc}",
        "\\usepackage[utf8]{inputenc}",
        "\\usepackage[margin=2cm]{geometry}",
        "\\usepackage{booktabs,graphicx}",
        "\\begin{document}",
    ]
    if title:
        head.append(f"\\section*{{{latex_escape(title)}}}")
    tables = [t for t in tables if t.refusal is None]  # a refused study has no table
    body = ["\\clearpage\n" if i and i % 3 == 0 else "" for i in range(len(tables))]
    parts = [b + latex_table(t) for b, t in zip(body, tables)]
    return "\n".join(head) + "\n" + "\n".join(parts) + "\\end{document}\n"

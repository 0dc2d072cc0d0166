"""One self-contained report.html: tables, figures and grids embedded as base64 data, no external URL.

It opens offline from anywhere (mail it, attach it): styles are inline, every image is a `data:` URI,
the CSV and LaTeX of each table are `data:` download links.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from html import escape
from pathlib import Path

from reports.markdown import cell_texts
from reports.tables import StudyTable

STYLE = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.meta{color:#666;font-size:.9em}
.refusal{background:#fff4e5;border-left:4px solid #e69500;padding:.5em .8em;max-width:900px}
table.ablation{border-collapse:collapse;margin:1em 0;font-variant-numeric:tabular-nums;font-size:.92em}
table.ablation th,table.ablation td{padding:.3em .8em;text-align:right;white-space:nowrap}
table.ablation th.axis,table.ablation td.axis{text-align:left}
table.ablation thead th{border-top:2px solid #222;border-bottom:1px solid #222}
table.ablation tbody tr:last-child td{border-bottom:2px solid #222}
table.ablation tr.baseline td{background:#f3f6fa}
.notes{font-size:.85em;color:#444;max-width:900px}.notes p{margin:.2em 0}
.downloads{font-size:.85em}.downloads a{margin-right:1em}
figure{margin:1.2em 0}figure img{max-width:min(100%,960px);height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#444;max-width:900px}
.grids{display:flex;flex-wrap:wrap;gap:1em}.grids figure{margin:.5em 0}
details summary{cursor:pointer;color:#225;margin:.6em 0}
nav ul{columns:2;font-size:.9em}
code{font-size:.9em;background:#f5f5f5;padding:0 .2em}
"""


@dataclass(frozen=True)
class Picture:
    """An image of the report: file, caption, alt text."""

    path: Path
    caption: str
    alt: str


def data_uri(path: Path, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def text_uri(text: str, mime: str) -> str:
    return f"data:{mime};charset=utf-8;base64,{base64.b64encode(text.encode('utf-8')).decode('ascii')}"


def html_table(table: StudyTable) -> str:
    """A study's table: axes left, metrics right, a distinguishable best bold, the baseline row shaded; a
    refused table is its reason."""
    if table.refusal is not None:
        return f'<p class="refusal" data-study="{escape(table.study.name)}"><strong>Not compared.</strong> {escape(table.refusal)}</p>'
    head = [f'<th class="axis">{escape(a)}</th>' for a in table.label_axes]
    head += [f'<th title="{"higher" if m.higher_is_better else "lower"} is better">{escape(m.header)}</th>' for m in table.metrics]
    head.append("<th><i>n</i></th>")
    body = []
    for (labels, cells, count), baseline in zip(cell_texts(table.frame, table.label_axes, table.metrics, table.search_axes), table.frame["baseline"]):
        tds = [f'<td class="axis">{escape(label)}</td>' for label in labels]
        tds += [f"<td><strong>{escape(text)}</strong></td>" if best and text != "—" else f"<td>{escape(text)}</td>" for text, best in cells]
        tds.append(f"<td>{escape(count)}</td>")
        body.append(f'<tr{" class=baseline" if baseline else ""}>' + "".join(tds) + "</tr>")
    return (
        f'<table class="ablation" data-study="{escape(table.study.name)}">'
        f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


FIGURE_DPI = 150  # reports.figures and reports.grids save PNGs at this resolution
CSS_DPI = 120  # CSS pixels per figure inch: a figure's 9-pt text shows at about the page's text size


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's header."""
    with open(path, "rb") as stream:
        head = stream.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def html_figure(picture: Picture) -> str:
    """A figure at a fixed scale (CSS_DPI px per inch, at most the page width), so every figure's text
    shows at the same size whatever the figure's width."""
    width, height = png_size(picture.path)
    scale = CSS_DPI / FIGURE_DPI
    return (
        f'<figure><img src="{data_uri(picture.path)}" width="{round(width * scale)}" height="{round(height * scale)}" '
        f'alt="{escape(picture.alt)}"><figcaption>{escape(picture.caption)}</figcaption></figure>'
    )


def anchor(name: str) -> str:
    return "study-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


@dataclass
class StudySection:
    """What the HTML shows for one study."""

    table: StudyTable
    csv: str | None  # CSV text (a download link) or None
    latex: str | None  # LaTeX text (a download link) or None
    figures: list[Picture]
    compare: Picture | None
    trial_grids: list[Picture]


def report_html(
    title: str,
    description: str,
    meta: list[str],
    sections: list[StudySection],
    run_figures: list[Picture],
    failures: list[str],
    provenance: list[str],
    refusals: list[str] | tuple[str, ...] = (),
) -> str:
    """The whole page as one string; `refusals` (comparisons not drawn, and why) open the page."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    if description:
        parts.append(f"<p>{escape(description)}</p>")
    parts += [f'<p class="meta">{escape(line)}</p>' for line in meta]
    if refusals:
        parts.append('<section id="not-compared"><h2>Not compared</h2>' + "".join(f'<p class="refusal">{escape(r)}</p>' for r in refusals) + "</section>")
    parts.append("<nav><ul>" + "".join(f'<li><a href="#{anchor(s.table.study.name)}">{escape(s.table.study.name)}</a></li>' for s in sections))
    if run_figures:
        parts.append('<li><a href="#run-figures">across the run</a></li>')
    parts.append("</ul></nav>")
    for section in sections:
        study = section.table.study
        parts.append(f'<section id="{anchor(study.name)}"><h2>{escape(study.name)}</h2>')
        if study.description:
            parts.append(f"<p>{escape(study.description.strip())}</p>")
        parts.append(html_table(section.table))
        if section.table.refusal is None:
            parts.append('<div class="notes">' + "".join(f"<p>{escape(line)}</p>" for line in section.table.footnote) + "</div>")
        links = []
        if section.csv is not None:
            links.append(f'<a download="{escape(study.name)}.csv" href="{text_uri(section.csv, "text/csv")}">table as CSV</a>')
        if section.latex is not None:
            links.append(f'<a download="{escape(study.name)}.tex" href="{text_uri(section.latex, "application/x-tex")}">table as LaTeX</a>')
        if links:
            parts.append('<p class="downloads">' + "".join(links) + "</p>")
        parts += [html_figure(p) for p in section.figures]
        if section.compare is not None:
            parts.append(html_figure(section.compare))
        if section.trial_grids:
            parts.append(f"<details><summary>Samples of each trial ({len(section.trial_grids)})</summary><div class=\"grids\">")
            parts += [html_figure(p) for p in section.trial_grids]
            parts.append("</div></details>")
        parts.append("</section>")
    if run_figures:
        parts.append('<section id="run-figures"><h2>Across the run</h2>')
        parts += [html_figure(p) for p in run_figures]
        parts.append("</section>")
    if failures:
        parts.append("<section><h2>Failures</h2><ul>" + "".join(f"<li>{escape(f)}</li>" for f in failures) + "</ul></section>")
    if provenance:
        parts.append('<footer class="meta"><h2>Provenance</h2>' + "".join(f"<p>{escape(p)}</p>" for p in provenance) + "</footer>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

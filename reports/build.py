"""A run folder's report: one ablation table per study, written as report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reports.markdown import markdown_table
from reports.tables import ablation_table


def report_markdown(results: Any) -> str:
    """The whole report as Markdown (a pure function of the rows and the spec copy)."""
    spec = results.spec
    evaluations = results.evaluations()
    parts = [f"# {spec.name}", ""]
    if spec.description:
        parts += [spec.description.strip(), ""]
    for study in spec.studies:
        varied = list(study.vary)
        table = ablation_table(evaluations, study.name, varied)
        parts += [f"## {study.name}", ""]
        if study.description:
            parts += [study.description.strip(), ""]
        parts += [markdown_table(table, varied), ""]
    parts += [_protocol_note(evaluations), ""]
    failures = evaluations[evaluations["status"].isin(["failed", "skipped"])]
    if len(failures):
        parts += ["## Failures", ""]
        for _, row in failures.drop_duplicates("evaluation_key").iterrows():
            parts.append(f"- `{row['evaluation_key']}` ({row['status']}): {row.get('error', '')}")
        parts.append("")
    return "\n".join(parts)


def _protocol_note(evaluations: Any) -> str:
    done = evaluations[evaluations["status"] == "finished"]
    if done.empty:
        return "_No finished evaluations yet._"
    per_class = sorted(done["samples_per_class"].unique())
    extractor = sorted(done["feature_extractor"].unique()) if "feature_extractor" in done else ["?"]
    return (
        f"Metrics: {', '.join(map(str, per_class))} class-balanced samples per class against the held-out split, "
        f"features of {', '.join(extractor)} (FID and KID via torch-fidelity); mean ± sample std over training "
        "seeds; n = finished seeds; bold = best per column; ↓ lower is better, ↑ higher is better."
    )


def write_report(results: Any, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    markdown = report_markdown(results)
    tmp = out / ".report.md.tmp"
    tmp.write_text(markdown)
    tmp.replace(out / "report.md")
    return markdown

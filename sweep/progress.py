"""Live progress of a run: rich bars per stage kind on a terminal, a plain log elsewhere."""

from __future__ import annotations

import sys
import time
from typing import Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from space.schema import STAGE_KINDS
from sweep.plan import Plan, Stage


class Reporter:
    """Prints what a run does: cache hits, stages as they start and end, failures with reasons."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=False)
        self.live = self.console.is_terminal and sys.stdout.isatty()
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}

    def begin(self, plan: Plan, todo: list[Stage], searches: Sequence[Any] = ()) -> None:
        counts = plan.counts()
        todo_counts = {kind: sum(1 for s in todo if s.kind == kind) for kind in STAGE_KINDS}
        cached = {kind: counts[kind] - todo_counts[kind] for kind in STAGE_KINDS}
        searching = sum(search.remaining() for search in searches)  # evaluations the searches may still hand out
        self.console.print(
            f"[bold]{plan.spec.name}[/]: {len(plan.trials)} trials, {len(plan.stages)} stages "
            f"({', '.join(f'{counts[k]} {k}' for k in STAGE_KINDS)}); "
            f"{sum(cached.values())} found finished, {len(todo)} to run"
            + (f"; {len(searches)} searches with up to {searching} evaluations to go" if searches else "")
        )
        counts["evaluation"] += searching
        if self.live and (todo or searches):
            self.progress = Progress(
                TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=self.console,
            )
            for kind in STAGE_KINDS:
                if counts[kind]:
                    self.tasks[kind] = self.progress.add_task(kind, total=counts[kind], completed=cached[kind], note="")
            self.progress.start()

    def event(self, event: str, stage: Stage, row: dict[str, Any]) -> None:
        label = f"{stage.kind} {stage.key}"
        if event == "started":
            self.started[stage.key] = time.perf_counter()
            if self.progress is None:
                self.console.print(f"start   {label}", highlight=False)
            return
        wall = time.perf_counter() - self.started.pop(stage.key, time.perf_counter())
        if self.progress is not None and stage.kind in self.tasks:
            self.progress.update(self.tasks[stage.kind], advance=1)
        if event == "cached":
            if self.progress is None:
                self.console.print(f"cached  {label} (a search point seen before){_headline(row)}", highlight=False)
            return
        if event == "finished":
            self.console.print(f"done    {label} in {wall:.1f}s{_headline(row)}", highlight=False)
        else:
            self.console.print(f"[red]{event:<7}[/] {label}: {row.get('error', '')}", highlight=False)

    def running(self, stage: Stage, values: dict[str, Any]) -> None:
        """A running stage's latest training loss, on its kind's bar."""
        if self.progress is not None and "loss" in values and stage.kind in self.tasks:
            self.progress.update(self.tasks[stage.kind], note=f"{stage.key[:8]} step {values.get('step')} loss {values['loss']:.4g}")

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def end(self, summary: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
        parts = [f"{n} {status}" for status, n in sorted(summary.counts.items())]
        self.console.print(
            f"{summary.cached} of {summary.planned} stages were already finished; this run: "
            f"{', '.join(parts) or 'nothing to do'} ({summary.wall_s:.1f}s)"
        )


def _headline(row: dict[str, Any]) -> str:
    """The one or two numbers worth seeing as a stage ends."""
    shown = [name for name in ("heldout_accuracy", "reference_images", "psnr_db", "bit_usage", "rfid", "final_loss", "fid",
                               "class_accuracy") if name in row]
    return "".join(f"  {name}={row[name]:.4g}" for name in shown if isinstance(row[name], (int, float)))

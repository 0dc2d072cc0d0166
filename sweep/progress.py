"""Live progress of a run: rich bars per stage kind on a terminal, a plain log elsewhere."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from space.schema import STAGE_KINDS
from sweep.plan import Plan, Stage


NOT_A_TERMINAL_WIDTH = 100_000  # lines are never wrapped when the output is a file or a pipe


def terminal_console(stderr: bool = False, file: TextIO | None = None) -> Console:
    """A rich Console that wraps and styles on a terminal, and writes full lines (full paths, whole table cells)
    everywhere else: logs, pipes, CI."""
    stream = file or (sys.stderr if stderr else sys.stdout)
    if hasattr(stream, "isatty") and stream.isatty():
        return Console(file=file, stderr=stderr)
    return Console(file=file, stderr=stderr, soft_wrap=True, width=NOT_A_TERMINAL_WIDTH)


def varied_columns(stages: Sequence[Stage]) -> list[str]:
    """The columns (axis values, seeds) whose values differ among `stages`: what tells them apart in a line.

    `vocab` restates token_each and code_dim: when it varies it stands for both."""
    names = list(dict.fromkeys(name for stage in stages for name in stage.columns))
    # among the stages that have the column: a stage without it (the text baseline of the token-randomness
    # analysis has no axes) does not make every column of its kind "vary"
    varied = [name for name in names
              if len({repr(stage.columns[name]) for stage in stages if name in stage.columns}) > 1]
    if "vocab" in varied:
        varied = [name for name in varied if name not in ("token_each", "code_dim")]
    return varied


def checkpoint_step(store_root: str | Path | None, stage: Stage) -> int | None:
    """The step of the checkpoint a stage will resume from (None if it starts afresh)."""
    if store_root is None:
        return None
    from runners.checkpoint import CHECKPOINT_STEP_FILE

    path = Path(store_root) / stage.kind / f".ckpt-{stage.key}" / CHECKPOINT_STEP_FILE
    try:
        return int(json.loads(path.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Reporter:
    """Prints what a run does: cache hits, stages as they start and end, failures with reasons.

    A stage is named by its kind and the settings that tell it apart from the other stages of its kind in the
    plan (`evaluation vocab=2-4 seed=1`), then its key's first 8 characters (for `sweep show RUN KEY`). The time
    in a `done` line is the row's `wall_s`, the number `sweep status` adds up.
    """

    def __init__(self, console: Console | None = None, store_root: str | Path | None = None) -> None:
        self.console = console or terminal_console()
        self.live = self.console.is_terminal and sys.stdout.isatty()
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        self.varied: dict[str, list[str]] = {}
        self.store_root = store_root  # where checkpoints of resumed stages are (set by run_sweep through begin)

    def name(self, stage: Stage) -> str:
        """`kind axis=value ... (key prefix)`: the settings of this stage that vary among its kind's stages."""
        columns = stage.columns
        names = list(self.varied.get(stage.kind, []))
        if columns.get("search_point"):  # a point of an Optuna search: its searched values and index
            names = [*names, "search_index"]
        shown = [f"{name}={_value(columns[name])}" for name in dict.fromkeys(names) if name in columns]
        if stage.kind == "analysis":  # which analysis: token randomness (of images or of text), attention locality
            shown.insert(0, str(stage.settings.get("analysis", "")))
        if columns.get("searched"):
            shown.append("(searched best)")
        return escape(" ".join([stage.kind, *shown, f"[{stage.key[:8]}]"]))  # rich would read [..] as markup

    def begin(self, plan: Plan, todo: list[Stage], searches: Sequence[Any] = (), store_root: str | Path | None = None) -> None:
        if store_root is not None:
            self.store_root = store_root
        self.varied = {kind: varied_columns(plan.of_kind(kind)) for kind in STAGE_KINDS}
        for search in searches:  # the axes a search varies are not varied among the planned stages
            self.varied["evaluation"] = list(dict.fromkeys([*self.varied["evaluation"], *search.plan.config.axes]))
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
        label = self.name(stage)
        if event == "started":
            self.started[stage.key] = time.perf_counter()
            step = checkpoint_step(self.store_root, stage)
            resuming = f" (resuming from the checkpoint of step {step})" if step is not None else ""
            if self.progress is None or resuming:
                self.console.print(f"start   {label}{resuming}", highlight=False)
            return
        if event == "retried":  # its worker was lost; it starts again (not a step of the bar)
            self.console.print(f"[yellow]retry[/]   {label}: {row.get('error', '')}; it runs again (runtime.retries)",
                               highlight=False)
            return
        wall = time.perf_counter() - self.started.pop(stage.key, time.perf_counter())
        if isinstance(row.get("wall_s"), (int, float)):
            wall = float(row["wall_s"])  # the stage's own time, as `sweep status` adds it up
        if self.progress is not None and stage.kind in self.tasks:
            self.progress.update(self.tasks[stage.kind], advance=1)
        if event == "cached":
            if self.progress is None:
                self.console.print(f"cached  {label} (a search point seen before){_headline(row)}", highlight=False)
            return
        if event == "finished":
            resumed = row.get("resumed_from_step", -1)
            resumed = f" (resumed from step {int(resumed)})" if isinstance(resumed, (int, float)) and resumed >= 0 else ""
            self.console.print(f"done    {label} in {wall:.1f}s{resumed}{_headline(row)}", highlight=False)
        else:
            self.console.print(f"[red]{event:<7}[/] {label}: {escape(str(row.get('error', '')))}", highlight=False)

    def running(self, stage: Stage, values: dict[str, Any]) -> None:
        """A running stage's latest training loss and throughput, on its kind's bar."""
        if self.progress is not None and "loss" in values and stage.kind in self.tasks:
            self.progress.update(self.tasks[stage.kind], note=running_note(self.name(stage), values))

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
        unfinished = [*summary.failures, *summary.kept]
        if unfinished:
            self.console.print(f"[red]{len(unfinished)} stages did not finish:[/]", highlight=False)
            for kind, key, error in unfinished:
                self.console.print(f"  {kind} {key}: {error}", highlight=False)
            self.console.print("run the same command again to rerun lost work; add --retry-failed to run failed "
                               "stages again (and the stages behind them)", highlight=False)


def running_note(name: str, values: dict[str, Any]) -> str:
    """`name step S loss L` and, where the line carries them, the training throughput and MFU
    (runners/perf.py: tokens_per_s of generators, images_per_s of tokenizers; mfu only on known devices)."""
    note = f"{name} step {values.get('step')} loss {values['loss']:.4g}"
    return note + _speed(values)


def _speed(values: dict[str, Any]) -> str:
    """` 12.3k tok/s 41% MFU`, ` 850 img/s`, or '' when no throughput was measured."""
    text = ""
    for key, unit in (("tokens_per_s", "tok/s"), ("images_per_s", "img/s")):
        rate = values.get(key)
        if isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0:
            text += f" {_si(rate)} {unit}"
    mfu = values.get("mfu")
    if text and isinstance(mfu, (int, float)) and math.isfinite(mfu):
        text += f" {100 * mfu:.0f}% MFU"
    return text


def _si(value: float) -> str:
    """3 significant digits with a k / M suffix: 950, 12.3k, 1.25M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _headline(row: dict[str, Any]) -> str:
    """The one or two numbers worth seeing as a stage ends."""
    shown = [name for name in ("heldout_accuracy", "reference_images", "psnr_db", "bit_usage", "rfid", "final_loss", "fid",
                               "class_accuracy") if name in row]
    return "".join(f" {name}={row[name]:.4g}" for name in shown if isinstance(row[name], (int, float))) + _speed(row)


def _value(value: Any) -> str:
    """A setting as a line shows it: floats to 4 significant digits (a searched 2.6464405117819743 reads 2.646)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)

"""The verbs around a run folder: `results`, `ls`, `show`, `gc` and `export` (no torch, no ray).

    sweep results RUN [--format parquet|csv|json|md] [--study S] [--out FILE]
    sweep ls [DIR]                   runs with their spec, trials by status, last activity
    sweep show RUN KEY               one stage: settings, row, files and sizes, failure reason, log tail
    sweep gc RUN [--yes]             what no current spec of the run, nor of a run sharing its store, needs
    sweep export RUN KEY --to DIR    a trained model (weights + config) or an evaluation's samples.npz

Each returns the command's exit code; bad input raises SpecError (exit 2 in sweep.cli).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from space.schema import STAGE_KINDS, SpecError
from sweep.lock import RunLock
from sweep.run import PLAN_FILE, RUN_FOLDERS_DIR, SPEC_COPY, run_store
from sweep.store import LOSSES_FILE, Store

RESULT_FORMATS: tuple[str, ...] = ("parquet", "csv", "json", "md")
EXPORTS: dict[str, tuple[str, ...]] = {  # stage kind -> the files `sweep export` copies
    "tokenizer": ("model.safetensors", "config.json", "stage.json"),
    "generator": ("model.safetensors", "config.json", "stage.json"),
    "classifier": ("model.safetensors", "config.json", "stage.json"),
    "evaluation": ("samples.npz", "stage.json"),
}
LOG_TAIL_LINES = 20


def check_run_folder(run_dir: Path) -> Path:
    """`run_dir` if it is a folder `sweep run` made, else a SpecError naming the path and the fix."""
    run_dir = Path(run_dir)
    if not (run_dir / SPEC_COPY).is_file() or not (run_dir / PLAN_FILE).is_file():
        raise SpecError(f"RUN must be a run folder made by `sweep run` (holding {SPEC_COPY} and {PLAN_FILE}), but got "
                        f"{str(run_dir)!r}; list the runs with `sweep ls`")
    return run_dir


# ---------------------------------------------------------------------------------------------------------------
# sweep results


def results_command(run_dir: Path, fmt: str | None, study: str | None, out: str | None, console: Console) -> int:
    """Print or write the run's results table (`sweep.results.results_table`), freshly read from the store."""
    from sweep.results import load_results, results_table, write_results_file

    run_dir = check_run_folder(run_dir)
    fmt = fmt or (Path(out).suffix.lstrip(".") if out and Path(out).suffix.lstrip(".") in RESULT_FORMATS else None)
    fmt = fmt or ("parquet" if out else "md")
    if fmt not in RESULT_FORMATS:
        raise SpecError(f"--format takes {', '.join(RESULT_FORMATS)}, but got {fmt!r}; e.g. --format csv")
    if fmt == "parquet" and not out:
        raise SpecError("--format parquet writes a binary file, so it needs --out FILE, but got no --out; e.g. "
                        "--out results.parquet, or --format csv to print")
    results = load_results(run_dir)
    table = results_table(results)
    if study is not None:
        studies = [s.name for s in results.spec.studies]
        if study not in studies:
            raise SpecError(f"--study must name a study of the run ({', '.join(studies)}), but got {study!r}")
        table = table[table["study"] == study].reset_index(drop=True)
    if fmt == "parquet":
        write_results_file(table, out)
    else:
        text = {"csv": lambda: table.to_csv(index=False), "md": lambda: markdown(compact(table, results.spec)),
                "json": lambda: table.to_json(orient="records", date_format="iso", indent=1) + "\n"}[fmt]()
        if out:
            tmp = Path(out).with_name(f".{Path(out).name}.tmp")
            tmp.write_text(text)
            tmp.replace(out)  # never a half-written file
        else:
            sys.stdout.write(text)
            return 0
    console.print(f"wrote {len(table)} trials to {out}", highlight=False)
    return 0


def compact(table: pd.DataFrame, spec: Any) -> pd.DataFrame:
    """The Markdown view: study, the axes some study varies or searches, seed, status, the metrics any trial has,
    the reason."""
    from sweep.results import METRIC_COLUMNS, UPSTREAM_COLUMNS

    varied = list(dict.fromkeys(axis for study in spec.studies
                                for axis in (*study.vary, *(study.search.axes if study.search else ()))))
    metrics = [c for c in (*METRIC_COLUMNS, *UPSTREAM_COLUMNS) if c in table.columns and table[c].notna().any()
               and c != "num_samples"]
    columns = ["study", *varied, "seed", "status", *metrics]
    if table["error"].fillna("").astype(str).str.len().any():
        columns.append("error")
    return table[columns]


def markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table; numbers with 4 significant digits, missing values empty."""

    def cell(value: Any) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# sweep ls


def find_runs(folder: Path) -> list[Path]:
    """Run folders in `folder` (itself, or its children): those holding spec.yaml and plan.json."""
    folder = Path(folder)
    if (folder / SPEC_COPY).is_file() and (folder / PLAN_FILE).is_file():
        return [folder]
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / SPEC_COPY).is_file() and (p / PLAN_FILE).is_file())


def last_activity(run_dir: Path, results: pd.DataFrame) -> dt.datetime:
    """The latest of: a trial's evaluation ending, the run folder's own files changing."""
    times = [dt.datetime.fromtimestamp(p.stat().st_mtime, dt.timezone.utc) for p in Path(run_dir).iterdir() if p.is_file()]
    ended = results["ended_at"].dropna()
    if len(ended):
        times.append(ended.max().to_pydatetime())
    return max(times)


def ls_command(folder: Path, console: Console) -> int:
    from sweep.results import TRIAL_STATUSES, load_results, results_table

    folder = Path(folder)
    if not folder.is_dir():
        raise SpecError(f"DIR must be a folder of runs (default runs/), but got {str(folder)!r}, which does not exist; "
                        "`sweep run SPEC` makes runs/<spec name>")
    runs = find_runs(folder)
    if not runs:
        console.print(f"no runs in {folder} (a run folder holds {SPEC_COPY} and {PLAN_FILE})", highlight=False)
        return 0
    view = Table("run", "spec", "trials", *TRIAL_STATUSES, "last activity", "store", title=str(folder))
    for run_dir in runs:
        results = load_results(run_dir)
        table = results_table(results)
        counts = table["status"].value_counts()
        running = " (running now)" if _locked(run_dir) else ""
        store = run_store(run_dir)
        view.add_row(escape(str(run_dir)), escape(results.spec.name), str(len(table)),
                     *(str(int(counts.get(status, 0))) for status in TRIAL_STATUSES),
                     last_activity(run_dir, table).strftime("%Y-%m-%d %H:%M:%S UTC") + running,
                     "own" if store == Path(run_dir) / "stages" else escape(str(store)))
    console.print(view)
    return 0


def _locked(run_dir: Path) -> bool:
    """Whether a live `sweep run` holds the folder."""
    return RunLock(run_dir).held_by_another()


# ---------------------------------------------------------------------------------------------------------------
# stage lookup (show, export)


@dataclass(frozen=True)
class Found:
    kind: str
    key: str


def run_keys(run_dir: Path, store: Store) -> list[Found]:
    """Every stage of the run: its plan's stages, then its searches' points and chosen evaluations."""
    from sweep.search import read_journal

    plan = json.loads((Path(run_dir) / PLAN_FILE).read_text())
    found = [Found(stage["kind"], stage["key"]) for stage in plan["stages"]]
    for search in plan.get("searches", []):
        points, chosen = read_journal(store.root, search["id"])
        found += [Found("evaluation", point["key"]) for point in points.values()]
        if chosen:
            found.append(Found("evaluation", chosen["key"]))
    return list(dict.fromkeys(found))


def resolve_key(run_dir: Path, key: str, store: Store) -> Found:
    """The stage of the run whose key is `key` or starts with it; a SpecError if none or several."""
    stages = run_keys(run_dir, store)
    matches = list(dict.fromkeys(f for f in stages if f.key.startswith(key)))
    if not key or not matches:
        raise SpecError(f"KEY must be a stage key of the run (or a unique prefix of one), but got {key!r}; the run has "
                        f"{len(stages)} stages: `sweep plan {Path(run_dir) / SPEC_COPY}` or `sweep results {run_dir} "
                        "--format csv` lists their keys")
    if len(matches) > 1:
        raise SpecError(f"KEY {key!r} starts {len(matches)} stage keys ({', '.join(f.kind + ' ' + f.key for f in matches[:4])}"
                        f"{', ...' if len(matches) > 4 else ''}); give more characters")
    return matches[0]


def stage_settings(run_dir: Path, found: Found, store: Store) -> dict[str, Any]:
    """A stage's determining settings, inputs and code versions: from its artifact, else from the run's spec."""
    saved = store.folder(found.kind, found.key) / "stage.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    from sweep.plan import make_plan
    from sweep.results import load_results

    plan = make_plan(load_results(run_dir).spec)
    if found.key in plan.stages:
        return plan.stages[found.key].to_json()
    return {}


# ---------------------------------------------------------------------------------------------------------------
# sweep show


def show_command(run_dir: Path, key: str, console: Console) -> int:
    run_dir = check_run_folder(run_dir)
    store = Store(run_store(run_dir))
    found = resolve_key(run_dir, key, store)
    kind, key = found.kind, found.key
    finished = store.row(kind, key)
    failure = store.failure(kind, key) if finished is None else None
    status = ("finished" if finished is not None else "running" if store.running(kind, key)
              else str(failure["status"]) if failure is not None else "pending")
    say = lambda text: console.print(text, highlight=False)  # noqa: E731
    say(f"[bold]{kind} {key}[/]: {status}")
    stage = stage_settings(run_dir, found, store)
    if stage:
        say("[bold]settings[/]")
        for name, value in stage.get("settings", {}).items():
            say(f"  {name} = {escape(json.dumps(value) if isinstance(value, (dict, list)) else str(value))}")
        for role, input_key in stage.get("inputs", {}).items():
            say(f"  input {role} = {input_key}")
        say("  code " + " ".join(f"{name}={version}" for name, version in stage.get("code", {}).items()))
    row = finished or failure
    if row is not None:
        say("[bold]row[/]")
        settings = set(stage.get("settings", {})) | set(stage.get("columns", {}))
        for name, value in row.items():
            if name not in settings and name not in ("traceback",) and not _empty(value):
                say(f"  {name} = {escape(str(value))}")
    folders = [store.folder(kind, key), store.checkpoint_folder(kind, key),
               *sorted((store.root / kind).glob(f".damaged-{key}-*"))]
    for folder in (f for f in folders if f.is_dir()):
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        say(f"[bold]files[/] {escape(str(folder))} ({_size(sum(p.stat().st_size for p in files))})")
        for path in files:
            say(f"  {_size(path.stat().st_size):>9}  {escape(str(path.relative_to(folder)))}")
    if failure is not None:
        say(f"[bold]failure[/] ({failure.get('failure_kind', '')}): {escape(str(failure.get('error', '')))}")
    lines = log_tail(store, kind, key, row)
    if lines:
        say(f"[bold]log tail[/] (last {len(lines)} lines)")
        for line in lines:
            say(f"  {escape(line)}")
    return 0


def _empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def log_tail(store: Store, kind: str, key: str, row: dict[str, Any] | None, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The end of what a stage logged: its traceback if it failed, else its training log (step and losses)."""
    trace = str((row or {}).get("traceback", "") or "")
    if trace.strip():
        return trace.rstrip().splitlines()[-lines:]
    entries: list[dict[str, Any]] = []
    finished_log = store.folder(kind, key) / LOSSES_FILE
    running_log = store.checkpoint_folder(kind, key) / "losses.jsonl"
    if finished_log.is_file():
        entries = pd.read_parquet(finished_log).tail(lines).to_dict("records")
    elif running_log.is_file():
        for text in running_log.read_text().splitlines()[-lines:]:
            try:
                entries.append(json.loads(text))
            except ValueError:
                continue  # a line cut short by a kill
    return [" ".join(f"{k}={_number(v)}" for k, v in entry.items() if k not in ("key", "kind") and not _empty(v))
            for entry in entries]


def _number(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


# ---------------------------------------------------------------------------------------------------------------
# sweep gc


def sharing_runs(run_dir: Path) -> list[Path]:
    """The run and every run folder sharing its store: those registered in the store, and its sibling folders."""
    store_root = run_store(run_dir).resolve()
    candidates = [Path(run_dir)]
    registry = store_root / RUN_FOLDERS_DIR
    if registry.is_dir():
        for entry in sorted(registry.glob("*.json")):
            try:
                candidates.append(Path(json.loads(entry.read_text())["run"]))
            except (OSError, ValueError, KeyError):
                continue
    candidates += find_runs(Path(run_dir).resolve().parent)
    runs = []
    for candidate in dict.fromkeys(p.resolve() for p in candidates):
        if (candidate / PLAN_FILE).is_file() and run_store(candidate).resolve() == store_root:
            runs.append(candidate)
    return runs


def needed(runs: list[Path], store: Store) -> tuple[set[tuple[str, str]], set[str]]:
    """(kind, key) of every stage the current specs of `runs` use, and the ids of their searches."""
    keys: set[tuple[str, str]] = set()
    searches: set[str] = set()
    for run_dir in runs:
        keys |= {(f.kind, f.key) for f in run_keys(run_dir, store)}
        searches |= {s["id"] for s in json.loads((run_dir / PLAN_FILE).read_text()).get("searches", [])}
    return keys, searches


def garbage(run_dir: Path) -> tuple[list[tuple[Path, str]], list[Path]]:
    """(what `sweep gc` removes with the reason, the runs whose specs were kept): nothing a current spec uses."""
    from sweep.search import JOURNAL_DIR

    store = Store(run_store(run_dir))
    runs = sharing_runs(run_dir)
    keep, searches = needed(runs, store)
    found: list[tuple[Path, str]] = []
    for kind in STAGE_KINDS:
        folder = store.root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            name = path.name
            if name.startswith(".damaged-"):
                found.append((path, "damaged artifact moved aside"))
            elif name.startswith(".stale-"):
                found.append((path, "artifact built from older input bytes, moved aside"))
            elif name.startswith(".ckpt-"):
                key = name.removeprefix(".ckpt-")
                if store.is_finished(kind, key):
                    found.append((path, "checkpoints of a finished stage"))
                elif (kind, key) not in keep:
                    found.append((path, "checkpoints of a stage no current spec uses"))
            elif not name.startswith(".") and path.is_dir() and (kind, name) not in keep:
                found.append((path, "artifact no current spec uses"))
        for path in sorted((store.root / "failed" / kind).glob("*.parquet")):
            if (kind, path.stem) not in keep:
                found.append((path, "failure record of a stage no current spec uses"))
    for path in sorted((store.root / JOURNAL_DIR).glob("*.jsonl")):
        if path.stem not in searches:
            found.append((path, "journal of a search no current spec has"))
    return found, runs


def gc_command(run_dir: Path, yes: bool, console: Console) -> int:
    run_dir = check_run_folder(run_dir)
    say = lambda text: console.print(text, highlight=False)  # noqa: E731
    with RunLock(run_dir):  # no `sweep run` of this folder may plan a new spec meanwhile
        found, runs = garbage(run_dir)
        sizes = [_bytes(path) for path, _ in found]
        say(f"kept everything the current specs of {len(runs)} run(s) sharing {escape(str(run_store(run_dir)))} use: "
            + ", ".join(escape(str(r)) for r in runs))
        for (path, reason), size in zip(found, sizes):
            say(f"  {_size(size):>9}  {escape(str(path))}  ({reason})")
        total = f"{len(found)} items, {_size(sum(sizes))} ({sum(sizes)} bytes)"
        if not found:
            say("nothing to remove")
        elif not yes:
            say(f"would remove {total}; run again with --yes to delete them")
        else:
            for path, _ in found:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            say(f"removed {total}")
    return 0


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------------------------
# sweep export


def export_command(run_dir: Path, key: str, to: Path, console: Console) -> int:
    run_dir = check_run_folder(run_dir)
    store = Store(run_store(run_dir))
    found = resolve_key(run_dir, key, store)
    if found.kind not in EXPORTS:
        raise SpecError(f"KEY must name a {', '.join(EXPORTS)} stage to export, but {found.key} is a {found.kind} "
                        f"stage; its files are listed by `sweep show {run_dir} {found.key}`")
    if not store.is_finished(found.kind, found.key):
        raise SpecError(f"{found.kind} {found.key} has not finished, so there is nothing to export yet; "
                        f"`sweep show {run_dir} {found.key}` says why")
    problem = store.verify(found.kind, found.key)
    if problem:
        raise SpecError(f"{found.kind} {found.key} does not match its manifest ({problem}); `sweep run` will recompute it")
    source = store.folder(found.kind, found.key)
    names = [name for name in EXPORTS[found.kind] if (source / name).is_file()]
    to = Path(to)
    clashes = [str(to / name) for name in names if (to / name).exists()]
    if clashes:
        raise SpecError(f"--to must not hold the exported files already, but {', '.join(clashes)} exist; "
                        "choose another folder or remove them")
    to.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(source / name, to / name)
    console.print(f"exported {found.kind} {found.key} to {escape(str(to))}: {', '.join(names)}", highlight=False)
    return 0

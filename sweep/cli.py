"""The `sweep` command line: validate, plan, run and report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from space.schema import DEFAULT_MAX_TRIALS, STAGE_KINDS, Spec, SpecError, count_trials, load_spec, spec_path
from sweep.executors import ClusterError
from sweep.lock import LockedError

EXIT_BAD_INPUT = 2
SPEC_HELP = "spec YAML file, or the name of a packaged spec (tiny, full)"


def _load(path: str, max_trials: int = DEFAULT_MAX_TRIALS, data: bool = False, files: bool = True) -> Spec:
    from sweep.validate import check_dataset, check_spec

    spec = load_spec(path, max_trials)  # a file or a packaged spec; studies counted before any grid point is composed
    check_spec(spec, str(spec_path(path)), files)
    if data:  # validate and run read the dataset's listing; plan works without the data (provisional keys)
        check_dataset(spec.dataset, str(spec_path(path)))
    return spec


def _folder(option: str, value: str | None) -> None:
    """A folder option (--out, --store) must not name a file, nor lie inside one."""
    if value is None:
        return
    for path in (Path(value), *Path(value).parents):
        if path.exists() and not path.is_dir():
            where = "is a file" if path == Path(value) else f"lies inside {path}, which is a file"
            raise SpecError(f"{option} must name a folder, but {value} {where}; pass a new or existing folder")


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
    spec = _load(args.spec, args.max_trials, data=True)
    if args.deep:  # every image opened: names the first unreadable file
        from sweep.validate import check_dataset

        check_dataset(spec.dataset, str(spec_path(args.spec)), deep=True)
    console.print(f"{spec_path(args.spec)}: valid; {len(spec.studies)} studies, {count_trials(spec)} trials", highlight=False)
    return 0


def cmd_plan(args: argparse.Namespace, console: Console) -> int:
    from sweep.plan import make_plan
    from sweep.validate import describe_stage

    spec = _load(args.spec, args.max_trials, files=False)  # a plan needs no files: absent ones hash as "absent"
    plan = make_plan(spec, missing_ok=True)
    missing = [{"field": field, "path": str(path)} for field, path, _ in spec.missing_files()]
    if args.json:
        stages = [{**stage.to_json(), "depends_on": list(stage.depends_on), **describe_stage(stage, args.tflops)} for stage in plan.stages.values()]
        trials = [
            {"study": t.trial.study, "trial_id": t.trial_id, "seed": t.trial.seed, "keys": t.keys}
            for t in plan.trials
        ]
        searches = [
            {"id": search.id, "study": search.study, "inputs": search.inputs, "budget": search.config.budget,
             "axes": list(search.config.axes), "metric": search.config.metric, "most_evaluations": search.config.budget + 1}
            for search in plan.searches.values()
        ]
        print(json.dumps({"spec": spec.name, "counts": plan.counts(), "stages": stages, "trials": trials,
                          "searches": searches, "missing_files": missing}, indent=2))
        return 0
    counts = plan.counts()
    console.print(
        f"[bold]{spec.name}[/]: {len(plan.trials)} trials -> {len(plan.stages)} stages ("
        + ", ".join(f"{counts[k]} {k}" for k in STAGE_KINDS) + ")"
    )
    table = Table("kind", "key", "needs", "inputs", "settings", title="stages")
    for stage in plan.stages.values():
        shown = {k: v for k, v in stage.settings.items() if k != "dataset"}
        extra = describe_stage(stage, args.tflops)
        if "parameter_count" in extra:
            shown = {"params": f"{extra['parameter_count'] / 1e6:.2f}M", "gpu_h": f"{extra['gpu_hours']:.3g}", **shown}
        needs = f"{stage.resources.cpus:g} CPU" + (f", {stage.resources.gpus:g} GPU" if stage.resources.gpus else "")
        if stage.resources.num_workers > 1:
            needs += f", {stage.resources.num_workers} DDP workers"
        table.add_row(stage.kind, stage.key, needs, " ".join(stage.inputs.values()),
                      _short(shown) if console.is_terminal else _short(shown, width=None))
    console.print(table)
    if missing:
        console.print(f"[yellow]{len(missing)} file(s) not here yet[/] (their stages' keys hash them as \"absent\"; "
                      f"`sweep validate` says what to fix): " + ", ".join(f"{m['field']}={m['path']}" for m in missing),
                      highlight=False)
    for search in plan.searches.values():
        console.print(
            f"search {search.id} ({search.study}): {search.config.metric} over {', '.join(search.config.axes)}, "
            f"budget {search.config.budget} -> up to {search.config.budget + 1} evaluations once generator "
            f"{search.inputs['generator']} is trained", highlight=False,
        )
    return 0


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    """Exit 0 when every stage of the plan is finished, 1 when any failed, 130 when interrupted."""
    from sweep.executors import RayExecutor, SerialExecutor, install_interrupt_handlers
    from sweep.progress import Reporter
    from sweep.run import run_sweep

    install_interrupt_handlers()  # SIGINT and SIGTERM stop the run alike: exit 130, resumable
    _folder("--out", args.out)  # before anything is written or started
    _folder("--store", args.store)
    executor = (
        SerialExecutor()
        if args.executor == "serial"
        else RayExecutor(Path(args.out or "."), address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    )
    executor.connect()  # a dead --address is refused first: before the spec's checks (they import torch), before any write
    spec = _load(args.spec, args.max_trials, data=True)
    out = Path(args.out or Path("runs") / spec.name)
    if isinstance(executor, RayExecutor):
        executor.run_dir = out.resolve()
    store = Path(args.store) if args.store else None
    summary = run_sweep(spec, out, executor, Reporter(console), store_root=store, retry_failed=args.retry_failed)
    console.print(f"results in {out}; tables: `sweep report {out}`")
    return 0 if summary.complete else 1


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from reports.build import FORMATS, write_report
    from reports.protocols import Refusal
    from sweep.results import load_results, write_results

    run_dir = Path(args.run_dir)
    _folder("--out", args.out)
    try:
        results = load_results(run_dir)
    except FileNotFoundError as error:
        raise SpecError(str(error)) from None
    write_results(run_dir)
    out = Path(args.out) if args.out else run_dir
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise SpecError(f"--format takes {', '.join(FORMATS)}, but got {', '.join(unknown)}; e.g. --format md,latex")
    refusals: list[Refusal] = []
    markdown = write_report(
        results, out, formats=formats, interval=args.interval, run_dir=run_dir, mix_protocols=args.mix_protocols, refusals=refusals
    )
    print(markdown)
    written = [run_dir / "results.parquet", *(out / n for n in ("report.md", "report.html") if (out / n).exists())]
    console.print(f"wrote {', '.join(str(path) for path in written)}", highlight=False)
    for refusal in refusals:  # the rest of the report is written: exit 0, but say what was left out
        console.print(f"[yellow]not compared:[/] {escape(refusal.message)}", highlight=False)
    return 0


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    from sweep.status import search_status, stage_status

    try:
        table = stage_status(Path(args.run_dir))
    except FileNotFoundError as error:
        raise SpecError(str(error)) from None
    view = Table("kind", "done", "running", "failed", "pruned", "skipped", "pending", "spent", "left (est.)",
                 title=str(args.run_dir))
    for row in table.to_dict("records"):
        view.add_row(row["kind"], *(str(row[c]) for c in ("finished", "running", "failed", "pruned", "skipped", "pending")),
                     _duration(row["spent_s"]), _duration(row["left_s"]))
    console.print(view)
    for search in search_status(Path(args.run_dir)).to_dict("records"):
        console.print(f"search {search['search_id']} ({search['study']}): {search['scored']} of {search['budget']} points "
                      f"scored, best {search['metric']} {search['best']:.4g}, "
                      f"{'chosen evaluation ' + search['chosen'] if search['chosen'] else 'no chosen evaluation yet'}",
                      highlight=False)
    return 0


def cmd_results(args: argparse.Namespace, console: Console) -> int:
    from sweep.verbs import results_command

    return results_command(Path(args.run_dir), args.format, args.study, args.out, console)


def cmd_ls(args: argparse.Namespace, console: Console) -> int:
    from sweep.verbs import ls_command

    return ls_command(Path(args.dir), console)


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    from sweep.verbs import show_command

    return show_command(Path(args.run_dir), args.key, console)


def cmd_gc(args: argparse.Namespace, console: Console) -> int:
    from sweep.verbs import gc_command

    return gc_command(Path(args.run_dir), args.yes, console)


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from sweep.verbs import export_command

    return export_command(Path(args.run_dir), args.key, Path(args.to), console)


def cmd_import(args: argparse.Namespace, console: Console) -> int:
    from sweep.importing import cmd_import as run_import

    return run_import(args, console)


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing to estimate from
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _short(settings: dict, width: int | None = 90) -> str:
    """`k=v ...`, cut to `width` characters on a terminal (None: whole, for files and pipes)."""
    text = " ".join(f"{k}={v}" for k, v in settings.items())
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep", description="Design-space ablation sweeps for image-generating language models (ELM).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a spec; exit 2 with the reason if it cannot run")
    p.add_argument("spec", help=SPEC_HELP)
    p.add_argument("--max-trials", type=int, default=DEFAULT_MAX_TRIALS,
                   help=f"refuse a spec whose studies expand to more trials (default {DEFAULT_MAX_TRIALS:,})")
    p.add_argument("--deep", action="store_true", help="also open every image of the dataset (slow at scale)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="expand a spec into stages without running anything")
    p.add_argument("spec", help=SPEC_HELP)
    p.add_argument("--json", action="store_true", help="print every stage as JSON")
    p.add_argument("--tflops", type=float, default=400.0, help="sustained TFLOP/s per GPU for the GPU-hours estimate")
    p.add_argument("--max-trials", type=int, default=DEFAULT_MAX_TRIALS,
                   help=f"refuse a spec whose studies expand to more trials (default {DEFAULT_MAX_TRIALS:,})")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="run every unfinished stage of a spec (resumes where it stopped)")
    p.add_argument("spec", help=SPEC_HELP)
    p.add_argument("--out", help="run folder (default runs/<spec name>)")
    p.add_argument("--executor", choices=("ray", "serial"), default="ray", help="ray (default) or serial, in-process for debugging")
    p.add_argument("--address", help="join an existing Ray cluster (host:6379, auto, or ray://host:10001) instead of "
                   "starting a private local one; refused (exit 2) within 30 s if none answers")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs of the local Ray (default: all)")
    p.add_argument("--store", help="artifact store shared by several sweeps (default <out>/stages)")
    p.add_argument("--retry-failed", action="store_true", help="run again the stages that failed in earlier runs")
    p.add_argument("--max-trials", type=int, default=DEFAULT_MAX_TRIALS,
                   help=f"refuse a spec whose studies expand to more trials (default {DEFAULT_MAX_TRIALS:,})")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="per stage kind: done, running, failed, pending, time spent and left")
    p.add_argument("run_dir", metavar="RUN", help="run folder made by `sweep run` (e.g. runs/tiny)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="tables (Markdown) from a run folder's Parquet rows")
    p.add_argument("run_dir", metavar="RUN", help="run folder made by `sweep run` (e.g. runs/tiny)")
    p.add_argument("--out", help="where report files go (default: the run folder)")
    p.add_argument("--format", default="md,html,latex,csv", help="comma-separated: md, html, latex, csv")
    p.add_argument("--interval", choices=("std", "t95"), default="std", help="± sample std, or a Student-t 95%% interval")
    p.add_argument("--mix-protocols", action="store_true",
                   help="compare rows measured under different evaluation protocols (marked) instead of refusing")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("results", help="the run's results table, one row per trial (docs/results.md)")
    p.add_argument("run_dir", metavar="RUN", help="run folder made by `sweep run` (e.g. runs/tiny)")
    p.add_argument("--format", choices=("parquet", "csv", "json", "md"),
                   help="md (default when printing: the varied axes, status and metrics), csv, json, or parquet (needs --out)")
    p.add_argument("--study", help="only the trials of this study")
    p.add_argument("--out", help="write to this file instead of printing (format from its suffix unless --format)")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("ls", help="runs in a folder: their spec, trials by status, last activity")
    p.add_argument("dir", nargs="?", default="runs", metavar="DIR", help="a folder of run folders, or one run folder (default runs)")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", help="one stage of a run: settings, row, files and sizes, failure reason, log tail")
    p.add_argument("run_dir", metavar="RUN", help="run folder made by `sweep run` (e.g. runs/tiny)")
    p.add_argument("key", metavar="KEY", help="stage key, or a prefix of one that is unique in the run")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("gc", help="list (or with --yes delete) store files no current spec of the run or of a run sharing its store needs")
    p.add_argument("run_dir", metavar="RUN", help="run folder made by `sweep run` (e.g. runs/tiny)")
    p.add_argument("--yes", action="store_true", help="delete what is listed (without it: a dry run)")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("export", help="copy a trained model (weights + config) or an evaluation's samples.npz out of the store")
    p.add_argument("run_dir", metavar="RUN", help="run folder made by `sweep run` (e.g. runs/tiny)")
    p.add_argument("key", metavar="KEY", help="key (or unique prefix) of a tokenizer, generator, classifier or evaluation stage")
    p.add_argument("--to", required=True, help="folder to copy the files into (made if missing; existing files are not overwritten)")
    p.set_defaults(func=cmd_export)

    from sweep.importing import add_arguments as import_arguments

    p = sub.add_parser("import", help="a released ELM checkpoint (generator or tokenizer) as a project artifact")
    import_arguments(p)
    p.set_defaults(func=cmd_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sweep.progress import terminal_console

    args = build_parser().parse_args(argv)
    console = terminal_console()  # full lines when stdout is a file or a pipe
    try:
        return args.func(args, console)
    except (SpecError, LockedError, ClusterError) as error:
        terminal_console(stderr=True).print(f"[red]error:[/] {escape(str(error))}", highlight=False)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        terminal_console(stderr=True).print("interrupted; run the same command again to resume (finished stages are kept)")
        return 130


if __name__ == "__main__":
    sys.exit(main())

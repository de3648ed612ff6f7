"""The ``scrub`` command: run one hypothesis file, or every file of a suite, and report."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from . import suite
from .checks import compare_to_baseline, load_baseline
from .errors import ScrubError
from .report import REGIMES, Report
from .run import DEFAULT_BUDGET, DEFAULT_N_REFS, scrub


def _run_files(files: list[Path], args, console: Console) -> Report:
    loaded = [suite.load(f) for f in files]
    if args.ray is not None:
        return _run_on_ray(loaded, args, console)
    runs = []
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True, disable=args.quiet) as bar:
        overall = bar.add_task("hypotheses", total=sum(len(f.hypotheses) for f in loaded))

        @contextmanager
        def search_bar(label: str, total: int):
            job = bar.add_task(label, total=total)
            try:
                yield lambda: bar.advance(job)
            finally:
                bar.remove_task(job)

        for file in loaded:
            for hypothesis in file.hypotheses:
                bar.update(overall, description=f"{file.path.name}: {hypothesis.name}")
                runs.append(scrub(hypothesis, file.task, progress=search_bar, **_options(args)))
                bar.advance(overall)
    return Report(runs)


def _options(args) -> dict:
    return dict(n_refs=args.n_refs, seed=args.seed, regimes=args.regimes, budget=args.budget, device=args.device,
                chunk_refs=args.chunk_refs, batch_size=args.batch_size, pool=args.pool)


def _run_on_ray(loaded, args, console: Console) -> Report:
    """Many hypotheses: one run per worker. Few: candidate evaluations of each search spread over the workers."""
    from . import distributed

    ray = distributed.connect(args.ray or None)
    jobs = [(str(f.path), i, h.name) for f in loaded for i, h in enumerate(f.hypotheses)]
    console.print(f"Ray: {distributed.workers(ray)} workers for {len(jobs)} hypothesis runs", highlight=False)
    if len(jobs) >= distributed.workers(ray):
        return Report(distributed.run_suite(jobs, _options(args)))
    runs = []
    for file in loaded:
        evaluator = distributed.RayEvaluator(file.task, batch_size=args.batch_size, chunk_refs=args.chunk_refs)
        try:
            runs += [scrub(h, file.task, evaluator=evaluator, **_options(args)) for h in file.hypotheses]
        finally:
            evaluator.close()
    return Report(runs)


def _failures(report: Report, baseline: Path | None) -> list[str]:
    """One readable line per failed expectation or pinned figure."""
    lines = []
    for run in report.runs:
        for check in run.expectations:
            if not check["passed"]:
                lines.append(f"{run.hypothesis}: {check['message']}")
        if baseline is not None:
            stored = load_baseline(baseline, run.hypothesis)
            if stored is None:
                lines.append(f"{run.hypothesis}: no pinned run in {baseline}")
                continue
            lines += [f"{run.hypothesis}: {c.message}" for c in compare_to_baseline(run.to_dict(), stored) if not c.passed]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scrub", description="Test mechanistic hypotheses by causal scrubbing.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the hypotheses of one or more files")
    run.add_argument("files", nargs="+", type=Path)
    bench = sub.add_parser("bench", help="run every hypothesis file of a suite directory")
    bench.add_argument("directory", nargs="?", default=Path("hypotheses"), type=Path)
    for p in (run, bench):
        p.add_argument("--json", type=Path, help="write the report as JSON to this path (a pinnable baseline)")
        p.add_argument("--html", type=Path, help="write a self-contained HTML report to this path")
        p.add_argument("--n-refs", type=int, default=DEFAULT_N_REFS, help="reference examples per run")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--regimes", default=",".join(REGIMES),
                       help=f"comma-separated regimes to run (default: all of {', '.join(REGIMES)})")
        p.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="scrub evaluations per adversarial search")
        p.add_argument("--check", action="store_true",
                       help="exit 1 when an expectation (or, with --baseline, a pinned figure) fails")
        p.add_argument("--baseline", type=Path, help="a JSON report to compare against: fail where figures moved "
                                                     "beyond both intervals (implies --check)")
        p.add_argument("--device", help="run the models on this torch device (e.g. cuda); default: where they are")
        p.add_argument("--chunk-refs", type=int, default=2048,
                       help="references held in memory at once: lower it to bound peak memory")
        p.add_argument("--batch-size", type=int, default=1024,
                       help="rows per model call: lower it to bound the memory of one forward pass")
        p.add_argument("--pool", type=int, help="opt-in: draw each class's sources from at most this many members")
        p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                       help="run on Ray: a local cluster, or the one at ADDRESS ('auto': the running local one)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    args.regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    console = Console()
    try:
        files = args.files if args.command == "run" else suite.files_in(args.directory)
        if not files:
            raise ScrubError(f"no hypothesis files in {args.directory}/")
        report = _run_files(files, args, console)
    except ScrubError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 2
    report.print(console)
    if args.json:
        report.to_json(args.json)
        console.print(f"wrote {args.json}")
    if args.html:
        from .html import render_html

        args.html.write_text(render_html(report.to_dict()))
        console.print(f"wrote {args.html}")
    if args.check or args.baseline:
        failures = _failures(report, args.baseline)
        for line in failures:
            console.print(f"[bold red]FAIL[/] {escape(line)}", highlight=False, soft_wrap=True)
        checked = sum(len(r.expectations) for r in report.runs)
        console.print(f"{len(failures)} failed, {checked} expectations checked"
                      + (f", pinned against {args.baseline}" if args.baseline else ""), highlight=False)
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

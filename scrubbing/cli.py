"""The ``scrub`` command: run one hypothesis file, or every file of a suite, and report."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from . import suite
from .checks import failures, judged
from .errors import ScrubError
from .regimes import REGIMES
from .report import Report
from .run import DEFAULT_BUDGET, DEFAULT_MEMORY_BUDGET, DEFAULT_N_REFS, refuse_ray_on, scrub
from .verdict import DEFAULT_TOLERANCE



def _run_files(loaded: list[suite.HypothesisFile], args, console: Console) -> Report:
    if args.ray is not None:
        return _run_on_ray(loaded, args, console)
    if not console.is_terminal:
        return _run_plainly(loaded, args, console)
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


def _run_plainly(loaded: list[suite.HypothesisFile], args, console: Console) -> Report:
    """Off a terminal (a log, CI) a live bar shows nothing: one plain line per hypothesis instead."""
    runs, total = [], sum(len(f.hypotheses) for f in loaded)
    for file in loaded:
        for hypothesis in file.hypotheses:
            if not args.quiet:
                console.print(f"[{len(runs) + 1}/{total}] {file.path.name}: {hypothesis.name}", markup=False,
                              highlight=False, soft_wrap=True)
            start = time.perf_counter()
            runs.append(scrub(hypothesis, file.task, **_options(args)))
            if not args.quiet:
                console.print(f"    {runs[-1].verdict.label()} ({time.perf_counter() - start:.0f} s)", markup=False,
                              highlight=False, soft_wrap=True)
    return Report(runs)


def _bytes(text: str) -> int:
    """A size such as 512M, 8G or 1500000 (bytes), for --memory."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = text.strip().upper().removesuffix("B")
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 512M, 8G or a number of bytes") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the memory budget must be at least one byte")
    return int(value)


def _options(args) -> dict:
    return dict(n_refs=args.n_refs, seed=args.seed, regimes=args.regimes, budget=args.budget, device=args.device,
                chunk_refs=args.chunk_refs, batch_size=args.batch_size, memory_budget=args.memory, pool=args.pool,
                tolerance=args.tolerance)


def _run_on_ray(loaded, args, console: Console) -> Report:
    """Many hypotheses: one run per worker. Few: candidate evaluations of each search spread over the workers."""
    from . import distributed

    refuse_ray_on(args.device)
    ray = distributed.connect(args.ray or None)
    jobs = [(str(f.path), i, h.name) for f in loaded for i, h in enumerate(f.hypotheses)]
    console.print(f"Ray: {distributed.workers(ray)} workers for {len(jobs)} hypothesis runs", highlight=False)
    if len(jobs) >= distributed.workers(ray):
        return Report(distributed.run_suite(jobs, _options(args)))
    runs = []
    for file in loaded:
        evaluator = distributed.RayEvaluator(file.task, batch_size=args.batch_size, chunk_refs=args.chunk_refs,
                                             memory_budget=args.memory)
        try:
            runs += [scrub(h, file.task, evaluator=evaluator, **_options(args)) for h in file.hypotheses]
        finally:
            evaluator.close()
    return Report(runs)


def _failures(report: Report, pinned: list[Path | None], empty: list[Path]) -> list[str]:
    """One readable line per failed expectation or pinned figure (``pinned``: per run, the report it is pinned
    to: --baseline, else the file's ``pinned``), and per file that declares no hypothesis."""
    lines = [f"{path}: declares no hypothesis: nothing was checked" for path in empty]
    for run, baseline in zip(report.runs, pinned):
        lines += [f"{run.hypothesis}: {line}" for line in failures(run.to_dict(), baseline)]
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
        p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                       help="share of the behaviour a hypothesis may miss and still hold, in the mean and per example "
                            f"(default {DEFAULT_TOLERANCE})")
        p.add_argument("--check", action="store_true",
                       help="exit 1 when an expectation (or, with --baseline, a pinned figure) fails")
        p.add_argument("--baseline", type=Path, help="a JSON report to compare against: fail where figures moved "
                                                     "beyond both intervals (implies --check)")
        p.add_argument("--device", help="run the models on this torch device (e.g. cuda); default: where they are")
        p.add_argument("--chunk-refs", type=int, default=2048,
                       help="references held in memory at once: lower it to bound peak memory")
        p.add_argument("--batch-size", type=int, default=1024,
                       help="rows per model call: lower it to bound the memory of one forward pass")
        p.add_argument("--memory", type=_bytes, default=DEFAULT_MEMORY_BUDGET, metavar="SIZE",
                       help="what the engine may hold at once, e.g. 512M or 8G (default 2G): it lowers the "
                            "references per chunk and the rows per call to fit; more memory, fewer repeated clean passes")
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
        loaded = [suite.load(f) for f in files]
        empty = [f.path for f in loaded if not f.hypotheses]
        for path in empty:
            console.print(f"[bold yellow]warning:[/] {escape(str(path))} declares no hypothesis", highlight=False)
        report = _run_files(loaded, args, console)
        hypotheses = [h for f in loaded for h in f.hypotheses]  # the runs come back in this order
        report = Report([judged(run, h.expectations) for run, h in zip(report.runs, hypotheses, strict=True)])
    except ScrubError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: nothing written", highlight=False)
        return 130
    report.print(console)
    if args.json:
        report.to_json(args.json)
        console.print(f"wrote {args.json}")
    if args.html:
        from .report import render_html

        args.html.write_text(render_html(report.to_dict()))
        console.print(f"wrote {args.html}")
    if args.check or args.baseline:
        pinned = [args.baseline or f.pinned for f in loaded for _ in f.hypotheses]
        lines = _failures(report, pinned, empty)
        for line in lines:
            console.print(f"[bold red]FAIL[/] {escape(line)}", highlight=False, soft_wrap=True)
        checked = sum(len(r.expectations) for r in report.runs)
        n_pinned = sum(p is not None for p in pinned)
        console.print(f"{len(lines)} failed, {checked} expectations checked"
                      + (f", {n_pinned} runs compared with their pinned reports" if n_pinned else ""), highlight=False)
        return 1 if lines else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

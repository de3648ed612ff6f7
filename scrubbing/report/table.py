"""The terminal table, 100 columns wide: per hypothesis, its verdict and one row per regime that ran (each figure
with its interval dimmed below it, as ``text.number``/``text.interval`` write them for the HTML page too), then
one line of notes per regime under the rows, where a note can be as long as it needs without widening the table.
"""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from ..stats import Estimate
from ..verdict import Verdict
from .results import RegimeResult, RunResult
from .text import adversary_note, interval, number, tail_text, verdict_detail

WIDTH = 100  # the table's width when the console is not a terminal (a log, a file)
TITLE = "Causal scrubbing: E[loss] gap and E[|Δloss|] gap side by side (95% paired-bootstrap CI)"
_STYLE = {"holds": "bold green", "refuted": "bold red", "cancels": "bold yellow", "inconclusive": "bold"}
_FIGURES = (  # header, metric, number format
    ("scrubbed loss", "scrubbed_loss", {}), ("E[loss] gap", "loss_gap", {"signed": True}),
    ("E[|Δloss|] gap", "abs_gap", {}), ("noise floor", "noise_floor", {}), ("cancel share", "cancellation", None),
    ("% recovered", "recovered", {"percent": True}), ("per-example recovered", "per_example_recovered", {"percent": True}),
)


def table(runs: list[RunResult]) -> Group:
    """Every run, one block each, under one title."""
    blocks: list = [Text(TITLE, style="bold", justify="center")]
    for run in runs:
        blocks += [Text(""), *_block(run)]
    return Group(*blocks)


def _block(run: RunResult) -> list:
    head = _verdict_text(run.verdict)
    head.append("  ").append(run.hypothesis, style="bold")
    sub = Text(f"{run.task} · model {number(run.model_loss.value)} · baseline {number(run.baseline_loss.value)}"
               f" · n={run.n_refs} seed={run.seed}", style="dim")
    ran = {name: r for name, r in run.regimes.items() if r.ok}
    out = [head, sub]
    if ran:
        cells = [[_cell(regime.metrics[key], fmt) for _, key, fmt in _FIGURES] for regime in ran.values()]
        rows = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
        rows.add_column("regime", justify="left", no_wrap=True)
        for i, (header, _, _) in enumerate(_FIGURES):  # as wide as its widest figure or header word, no wider
            width = max([len(w) for w in header.split()] + [len(line) for row in cells for line in row[i].plain.split("\n")])
            rows.add_column(escape(header), justify="right", width=width)
        for name, row in zip(ran, cells):
            rows.add_row(name, *row)
        out.append(rows)
    for name, regime in run.regimes.items():  # the notes: what did not run (other than "not run"), and why not
        line = _notes(name, regime)
        if line is not None:
            out.append(Padding(line, (0, 0, 0, 2)))
    return out


def _verdict_text(verdict: Verdict | None) -> Text:
    if verdict is None:
        return Text("")
    text = Text(verdict.verdict.upper(), style=_STYLE[verdict.verdict])
    detail = verdict_detail(verdict.regimes, verdict.not_run)
    if detail:
        text.append(f" {detail}", style="dim")
    return text


def _notes(name: str, regime: RegimeResult) -> Text | None:
    """``regime: VERDICT · FAIL … · what the adversary chose · the tail of |Δloss|``; None for a regime not run."""
    if not regime.ok:
        return None if regime.status == "not run" else Text(f"{name}: {regime.status}", style="dim")
    line = Text(f"{name}: ", style="dim")
    if regime.verdict is not None:
        line.append(regime.verdict.verdict.upper(), style=_STYLE[regime.verdict.verdict])
    for check in regime.details.get("failed_expectations", []):
        line.append(" · ", style="dim").append(f"FAIL {check}", style="bold red")
    notes = [adversary_note(regime.details)] + ([tail_text(regime.tail)] if regime.tail is not None else [])
    for note in filter(None, notes):
        line.append(f" · {note}", style="dim")
    return line


def _cell(est: Estimate, fmt: dict | None) -> Text:
    """Value on the first line, its interval dimmed below it, one end a line: readable in colour and in a plain log,
    and the column only as wide as one figure."""
    if fmt is None:  # the cancel share: a point figure
        return Text(number(est.value, digits=2))
    text = Text(number(est.value, **fmt))
    if text.plain != "n/a":
        text.append("\n" + interval([est.low, est.high], **fmt).replace(", ", ",\n"), style="dim")
    return text

"""The terminal table: one row per hypothesis × regime, each figure with its interval dimmed below it."""

from __future__ import annotations

import math

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..stats import Estimate
from ..verdict import Verdict
from .results import RegimeResult, RunResult
from .text import adversary_note, tail_text, verdict_detail

_STYLE = {"holds": "bold green", "refuted": "bold red", "cancels": "bold yellow", "inconclusive": "bold"}


def table(runs: list[RunResult]) -> Table:
    out = Table(title=escape("Causal scrubbing: E[loss] gap and E[|Δloss|] gap side by side (95% paired-bootstrap CI)"),
                show_lines=True)
    left = ("verdict", "hypothesis", "regime", "flags and notes")
    for header in ["verdict", "hypothesis", "regime", "scrubbed loss", "E[loss] gap", "E[|Δloss|] gap",
                   "noise floor", "cancel share", "% recovered", "per-example recovered", "flags and notes"]:
        out.add_column(escape(header), justify="left" if header in left else "right",
                       ratio=3 if header == "flags and notes" else None)
    for run in runs:
        title = Text(f"{run.hypothesis}\n", style="bold")
        title.append(f"{run.task}\nmodel {run.model_loss.value:.4f}\nbaseline {run.baseline_loss.value:.4f}\n"
                     f"n={run.n_refs} seed={run.seed}", style="dim")
        verdict = _verdict_text(run.verdict)
        for i, name in enumerate(run.regimes):
            regime = run.regimes[name]
            first = (verdict, title) if i == 0 else ("", "")
            if not regime.ok:
                out.add_row(*first, name, Text(regime.status, style="dim"), *[""] * 7)
                continue
            m = regime.metrics
            flags = Text()
            if regime.verdict is not None:
                flags.append(f"{regime.verdict.verdict.upper()}\n", style=_STYLE[regime.verdict.verdict])
            for check in regime.details.get("failed_expectations", []):
                flags.append(f"FAIL {check}\n", style="bold red")
            flags.append(_notes(regime), style="dim")
            out.add_row(*first, name, _cell(m["scrubbed_loss"]), _cell(m["loss_gap"], signed=True),
                        _cell(m["abs_gap"]), _cell(m["noise_floor"]), f"{m['cancellation'].value:.2f}",
                        _cell(m["recovered"], percent=True), _cell(m["per_example_recovered"], percent=True),
                        flags)
    return out


def _verdict_text(verdict: Verdict | None) -> Text:
    if verdict is None:
        return Text("")
    text = Text(verdict.verdict.upper(), style=_STYLE[verdict.verdict])
    detail = verdict_detail(verdict.regimes, verdict.not_run)
    if detail:
        text.append(f"\n{detail}", style="dim")
    return text


def _notes(regime: RegimeResult) -> str:
    """What an adversary chose, in words; and the tail of |Δloss|."""
    notes = [adversary_note(regime.details)] if adversary_note(regime.details) else []
    if regime.tail is not None:
        notes.append(tail_text(regime.tail))
    return "\n".join(notes)


def _cell(est: Estimate, percent: bool = False, signed: bool = False) -> Text:
    """Value on the first line, its interval dimmed below: readable in colour and in a plain log."""
    scale, fmt = (100, "{:.1f}%") if percent else (1, "{:+.4f}" if signed else "{:.4f}")
    if not math.isfinite(est.value):
        return Text("n/a")
    text = Text(fmt.format(est.value * scale))
    text.append(f"\n[{fmt.format(est.low * scale)}, {fmt.format(est.high * scale)}]", style="dim")
    return text

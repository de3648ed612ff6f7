"""Results of runs, and their renderings: a terminal table and JSON (a stable format other tools read)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .stats import Estimate
from .verdict import DEFAULT_TOLERANCE, RegimeVerdict, Verdict

REGIMES = ("random", "adversarial-join", "worst-swap")
METRICS = ("scrubbed_loss", "loss_gap", "abs_loss_gap", "abs_gap", "noise_floor", "cancellation", "recovered",
           "per_example_recovered")


@dataclass
class RegimeResult:
    """One regime's figures; ``status`` is "ok", or says why the regime was not run."""

    status: str = "ok"
    metrics: dict[str, Estimate] = field(default_factory=dict)
    delta_histogram: dict | None = None
    details: dict = field(default_factory=dict)
    tail: dict | None = None  # upper percentiles of |Δloss| with their distribution-free bounds
    verdict: RegimeVerdict | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def cancels(self) -> bool:
        """The mean is explained while the per-example change is not (``scrubbing.verdict``)."""
        return self.verdict is not None and self.verdict.cancels

    def figures(self) -> dict:
        """The regime's figures as JSON values (what the verdict rule reads)."""
        out: dict = {"status": self.status}
        for name, est in self.metrics.items():
            if name in ("model_loss", "baseline_loss", "baseline_gap"):
                continue  # reported once per run, not per regime
            out[name] = _num(est.value)
            out[f"{name}_ci"] = [_num(est.low), _num(est.high)]
        return out

    def to_dict(self) -> dict:
        out = self.figures()
        if self.verdict is not None:
            out.update(verdict=self.verdict.verdict, cancels=self.verdict.cancels, verdict_reason=self.verdict.reason)
        if self.tail is not None:
            out["tail"] = self.tail
        if self.delta_histogram is not None:
            out["delta_histogram"] = self.delta_histogram
        out.update(self.details)
        return out


@dataclass
class RunResult:
    hypothesis: str
    task: str
    seed: int
    n_refs: int
    model_loss: Estimate
    baseline_loss: Estimate
    regimes: dict[str, RegimeResult]
    description: str = ""
    nodes: list[str] = field(default_factory=list)
    plan_digest: str = ""
    expectations: list[dict] = field(default_factory=list)
    verdict: Verdict | None = None
    tolerance: float = DEFAULT_TOLERANCE

    def to_dict(self) -> dict:
        return {
            "hypothesis": self.hypothesis,
            "task": self.task,
            "verdict": self.verdict.verdict if self.verdict else None,
            "verdict_regimes": list(self.verdict.regimes) if self.verdict else [],
            "verdict_reason": self.verdict.reason if self.verdict else "",
            "verdict_not_run": list(self.verdict.not_run) if self.verdict else [],
            "tolerance": self.tolerance,
            "seed": self.seed,
            "n_refs": self.n_refs,
            "model_loss": _num(self.model_loss.value),
            "model_loss_ci": [_num(self.model_loss.low), _num(self.model_loss.high)],
            "baseline_loss": _num(self.baseline_loss.value),
            "baseline_loss_ci": [_num(self.baseline_loss.low), _num(self.baseline_loss.high)],
            "description": self.description,
            "nodes": self.nodes,
            "plan_digest": self.plan_digest,
            "regimes": {name: self.regimes[name].to_dict() for name in self.regimes},
            "expectations": self.expectations,
        }


@dataclass
class Report:
    runs: list[RunResult]

    def to_dict(self) -> dict:
        return {"runs": [run.to_dict() for run in self.runs]}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def table(self) -> Table:
        table = Table(title=escape("Causal scrubbing: E[loss] gap and E[|Δloss|] gap side by side (95% paired-bootstrap CI)"),
                      show_lines=True)
        left = ("verdict", "hypothesis", "regime", "flags and notes")
        for header in ["verdict", "hypothesis", "regime", "scrubbed loss", "E[loss] gap", "E[|Δloss|] gap",
                       "noise floor", "cancel share", "% recovered", "per-example recovered", "flags and notes"]:
            table.add_column(escape(header), justify="left" if header in left else "right",
                             ratio=3 if header == "flags and notes" else None)
        for run in self.runs:
            title = Text(f"{run.hypothesis}\n", style="bold")
            title.append(f"{run.task}\nmodel {run.model_loss.value:.4f}\nbaseline {run.baseline_loss.value:.4f}\n"
                         f"n={run.n_refs} seed={run.seed}", style="dim")
            verdict = _verdict_text(run.verdict)
            for i, name in enumerate(run.regimes):
                regime = run.regimes[name]
                first = (verdict, title) if i == 0 else ("", "")
                if not regime.ok:
                    table.add_row(*first, name, Text(regime.status, style="dim"), *[""] * 7)
                    continue
                m = regime.metrics
                flags = Text()
                if regime.verdict is not None:
                    flags.append(f"{regime.verdict.verdict.upper()}\n", style=_STYLE[regime.verdict.verdict])
                for check in regime.details.get("failed_expectations", []):
                    flags.append(f"FAIL {check}\n", style="bold red")
                flags.append(_notes(regime), style="dim")
                table.add_row(*first, name, _cell(m["scrubbed_loss"]), _cell(m["loss_gap"], signed=True),
                              _cell(m["abs_gap"]), _cell(m["noise_floor"]), f"{m['cancellation'].value:.2f}",
                              _cell(m["recovered"], percent=True), _cell(m["per_example_recovered"], percent=True),
                              flags)
        return table

    def print(self, console: Console | None = None) -> None:
        console = console or Console()
        if not console.is_terminal:
            console.width = max(console.width, 160)
        console.print(self.table())


_STYLE = {"holds": "bold green", "refuted": "bold red", "cancels": "bold yellow", "inconclusive": "bold"}


def _verdict_text(verdict: Verdict | None) -> Text:
    if verdict is None:
        return Text("")
    text = Text(verdict.verdict.upper(), style=_STYLE[verdict.verdict])
    if verdict.regimes:
        text.append(f"\nby {', '.join(verdict.regimes)}", style="dim")
    elif verdict.not_run:
        text.append(f"\nnot run: {', '.join(verdict.not_run)}", style="dim")
    return text


def _notes(regime: RegimeResult) -> str:
    """What an adversary chose, in words; and the tail of |Δloss|."""
    d = regime.details
    notes = []
    if "refinements" in d:
        chosen = d["refinements"]
        notes.append(("joined: " + "; ".join(chosen)) if chosen else "no refinement moved the loss")
    if "representatives" in d:
        small = d.get("unsplittable_classes") or {}
        text = f"{sum(d['representatives'].values())} classes swapped to their worst representative"
        notes.append(text + (f"; too small to split: {small}" if small else ""))
    if regime.tail is not None:
        notes.append(tail_text(regime.tail))
    return "\n".join(notes)


def tail_text(tail: dict) -> str:
    """``|Δ| p95 ≤ 0.31, p99 ≤ 0.52``: 95%-confidence upper bounds of the percentiles, or the count one needs.
    The one rendering of a regime's ``tail``, for the table and the HTML."""
    parts = []
    for key in ("p95", "p99"):
        bound = tail[f"{key}_upper"]
        parts.append(f"{key} ≤ {bound:.3g}" if bound is not None else f"{key}: n<{tail[key + '_refs_for_bound']}")
    return f"|Δ| {', '.join(parts)}"


def _cell(est: Estimate, percent: bool = False, signed: bool = False) -> Text:
    """Value on the first line, its interval dimmed below: readable in colour and in a plain log."""
    scale, fmt = (100, "{:.1f}%") if percent else (1, "{:+.4f}" if signed else "{:.4f}")
    if not math.isfinite(est.value):
        return Text("n/a")
    text = Text(fmt.format(est.value * scale))
    text.append(f"\n[{fmt.format(est.low * scale)}, {fmt.format(est.high * scale)}]", style="dim")
    return text


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)

"""Results of runs: the model every face reads, and its JSON form (a stable format other tools read)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from ..stats import Estimate
from ..verdict import DEFAULT_TOLERANCE, RegimeVerdict, Verdict

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

    def table(self) -> "Table":
        from .table import table

        return table(self.runs)

    def print(self, console: Console | None = None) -> None:
        console = console or Console()
        if not console.is_terminal:
            console.width = max(console.width, 160)
        console.print(self.table())

    def to_html(self) -> str:
        """The self-contained HTML page (``scrubbing.report.page``)."""
        from .page import render_html

        return render_html(self.to_dict())


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)

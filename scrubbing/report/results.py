"""Results of runs: the model every face reads, and its JSON form (a stable format other tools read)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from ..stats import Estimate
from ..verdict import DEFAULT_TOLERANCE, RegimeVerdict, Verdict, judge_regime, judge_run

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

    @classmethod
    def from_dict(cls, data: dict, tolerance: float = DEFAULT_TOLERANCE) -> "RegimeResult":
        """A regime read back from its JSON form; the verdict is judged again by the one rule, from the same
        rounded figures it was judged from when the report was written."""
        shown = {"status", "verdict", "cancels", "verdict_reason", "tail", "delta_histogram"}
        metrics = {k: _estimate(data, k) for k in data if f"{k}_ci" in data}
        details = {k: v for k, v in data.items() if k not in shown and k not in metrics and not k.endswith("_ci")}
        status = data.get("status", "not run")
        verdict = judge_regime(data, tolerance) if status == "ok" else None
        return cls(status, metrics, data.get("delta_histogram"), details, data.get("tail"), verdict)


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
    graph: dict | None = None  # Hypothesis.to_dict(adapter): the structured nodes the HTML graph draws
    plan_digest: str = ""
    expectations: list[dict] = field(default_factory=list)
    verdict: Verdict | None = None
    tolerance: float = DEFAULT_TOLERANCE

    @classmethod
    def from_dict(cls, data: dict) -> "RunResult":
        tolerance = data.get("tolerance", DEFAULT_TOLERANCE)
        regimes = {k: RegimeResult.from_dict(v, tolerance) for k, v in (data.get("regimes") or {}).items()}
        return cls(data.get("hypothesis", "?"), data.get("task", "?"), data.get("seed", 0), data.get("n_refs", 0),
                   _estimate(data, "model_loss"), _estimate(data, "baseline_loss"), regimes,
                   data.get("description", ""), list(data.get("nodes") or []), data.get("graph"),
                   data.get("plan_digest", ""), list(data.get("expectations") or []),
                   judge_run(data.get("regimes") or {}, tolerance), tolerance)

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
            "graph": self.graph,
            "plan_digest": self.plan_digest,
            "regimes": {name: self.regimes[name].to_dict() for name in self.regimes},
            "expectations": self.expectations,
        }


@dataclass
class Report:
    runs: list[RunResult]

    def to_dict(self) -> dict:
        return {"runs": [run.to_dict() for run in self.runs]}

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        """A report read back from its JSON form (``to_dict``), figures as rounded there: to print a saved report's
        table, or to compare two."""
        return cls([RunResult.from_dict(run) for run in data.get("runs") or []])

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def table(self):
        """The terminal table (``scrubbing.report.table``), a rich renderable."""
        from .table import table

        return table(self.runs)

    def print(self, console: Console | None = None) -> None:
        """The table, at the terminal's width, or 100 columns into a log or a file."""
        from .table import WIDTH

        console = console or Console()
        if not console.is_terminal:
            console.width = WIDTH
        console.print(self.table())

    def to_html(self) -> str:
        """The self-contained HTML page (``scrubbing.report.page``)."""
        from .page import render_html

        return render_html(self.to_dict())


def _estimate(data: dict, key: str) -> Estimate:
    value, ci = data.get(key), data.get(f"{key}_ci") or [None, None]
    return Estimate(*(math.nan if x is None else float(x) for x in (value, *ci)))


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)

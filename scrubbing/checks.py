"""Regression checks: expectations a hypothesis carries, and pinned baselines, judged against intervals.

A check fails only when the data supports the failure: ``recovered >= 0.9`` fails when
the whole 95% interval lies below 0.9, not when the point estimate dips under it. An
interval that straddles the bound is *inconclusive*: it passes, and says so (pass
``strict=True`` to make it fail). That way a re-run with another seed does not flip a
verdict the data cannot support.

    h.expect(expect.verdict("holds"),                      # over every regime: in the mean and per example
             expect.recovered(">=", 0.9),                    # a figure, judged on its interval
             expect.abs_loss_gap("<=", 0.05, regime="adversarial-join"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ScrubError
from .regimes import REGIMES
from .report import METRICS
from .verdict import VERDICTS


_OPS = {">=": "at least", "<=": "at most"}


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    message: str
    inconclusive: bool = False
    regime: str | None = None  # the regime judged; None for the whole run


class _Check:
    """A check on one regime, or on every regime (``regime="*"``)."""

    regime: str
    name: str

    @property
    def regimes(self) -> tuple[str, ...]:
        return REGIMES if self.regime == "*" else (self.regime,)

    def judge(self, run: dict) -> list[CheckResult]:
        out = []
        for regime in self.regimes:
            figures = run["regimes"].get(regime, {})
            if figures.get("status") != "ok":
                out.append(CheckResult(self.name, False, f"{regime}: not measured (regime "
                                       f"{figures.get('status', 'missing')}); run it (--regimes) or drop the "
                                       "expectation", regime=regime))
            else:
                out.append(self._judge(regime, figures))
        return out

    def _judge(self, regime: str, figures: dict) -> CheckResult:
        raise NotImplementedError


@dataclass(frozen=True)
class Expectation(_Check):
    """``metric op bound`` under ``regime`` ("*" for every regime), judged on the metric's interval."""

    metric: str
    op: str
    bound: float
    regime: str = "random"
    strict: bool = False

    def __post_init__(self):
        if self.op not in _OPS:
            raise ValueError(f"op must be '>=' or '<='; got {self.op!r}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose from {METRICS}")
        if self.regime != "*" and self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}; choose from {REGIMES} or '*'")

    @property
    def name(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g} ({self.regime})"

    def _judge(self, regime: str, figures: dict) -> CheckResult:
        value, (low, high) = figures[self.metric], figures[f"{self.metric}_ci"]
        if value is None or low is None or high is None:
            return CheckResult(self.name, False, f"{regime}: {self.metric} is undefined (n/a)", regime=regime)
        if self.op == ">=":
            failed, inconclusive = high < self.bound, low < self.bound <= high
        else:
            failed, inconclusive = low > self.bound, low <= self.bound < high
        verdict = "fails" if failed else ("is inconclusive" if inconclusive else "holds")
        message = (f"{regime}: {self.metric} = {value:.4g} [{low:.4g}, {high:.4g}], expected {_OPS[self.op]} "
                   f"{self.bound:g}: {verdict}")
        return CheckResult(self.name, not failed and not (inconclusive and self.strict), message, inconclusive,
                           regime=regime)


@dataclass(frozen=True)
class VerdictIs:
    """The verdict (``scrubbing.verdict``) is one of ``allowed``: of the whole run (``regime=None``, every regime
    must have run) or of one regime. An inconclusive verdict fails unless it is allowed: "holds" is a claim the
    data must support, so it can never pass a hypothesis that recovers under 1 − tolerance (< 50%)."""

    allowed: tuple[str, ...]
    regime: str | None = None

    def __post_init__(self):
        bad = [v for v in self.allowed if v not in VERDICTS]
        if bad or not self.allowed:
            raise ValueError(f"unknown verdict(s) {bad or '(none)'}; choose from {VERDICTS}")
        if self.regime is not None and self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}; choose from {REGIMES} or None (the whole run)")

    @property
    def regimes(self) -> tuple[str, ...]:
        return REGIMES if self.regime is None else (self.regime,)

    @property
    def name(self) -> str:
        return f"verdict {' or '.join(self.allowed)} ({self.regime or 'all regimes'})"

    def judge(self, run: dict) -> list[CheckResult]:
        missing = [r for r in self.regimes if run["regimes"].get(r, {}).get("status") != "ok"]
        if missing:
            return [CheckResult(self.name, False, f"{', '.join(missing)}: not measured, so the verdict cannot be "
                                                  "judged; run every regime (--regimes) or drop the expectation",
                                regime=self.regime)]
        if self.regime is None:
            verdict, reason = run["verdict"], run["verdict_reason"]
            deciding = run.get("verdict_regimes") or []
            label = verdict + (f" by {', '.join(deciding)}" if deciding else "")
        else:
            figures = run["regimes"][self.regime]
            verdict, reason, label = figures["verdict"], figures["verdict_reason"], figures["verdict"]
        passed = verdict in self.allowed
        where = self.regime or "all regimes"
        return [CheckResult(self.name, passed, f"{where}: verdict {label} ({reason}), expected "
                                               f"{' or '.join(self.allowed)}: {'holds' if passed else 'fails'}",
                            regime=self.regime)]


def _removed_within_noise(*args, **kwargs):
    raise ScrubError("expect.abs_gap_within_noise was removed: a wrong hypothesis raises the noise floor too, so it "
                     "passed hypotheses recovering 34-43%. Use expect.verdict('holds') (in the mean and per example, "
                     "every regime) or expect.per_example_recovered('>=', 0.9).")


class expect:
    """Readable constructors: ``expect.verdict("holds")``, ``expect.recovered(">=", 0.9)``."""

    @staticmethod
    def _make(metric):
        def make(op: str, bound: float, regime: str = "random", strict: bool = False) -> Expectation:
            return Expectation(metric, op, bound, regime, strict)
        make.__name__ = metric
        return staticmethod(make)

    recovered = _make("recovered")
    loss_gap = _make("loss_gap")
    abs_loss_gap = _make("abs_loss_gap")
    abs_gap = _make("abs_gap")
    cancellation = _make("cancellation")
    scrubbed_loss = _make("scrubbed_loss")
    noise_floor = _make("noise_floor")
    per_example_recovered = _make("per_example_recovered")
    abs_gap_within_noise = staticmethod(_removed_within_noise)

    @staticmethod
    def verdict(*allowed: str, regime: str | None = None) -> VerdictIs:
        """``expect.verdict("holds")``; ``expect.verdict("cancels", regime="random")``."""
        return VerdictIs(tuple(allowed), regime)


def regimes_needed(expectations, pinned: str | Path | None = None, hypothesis: str | None = None) -> list[str]:
    """The regimes a check must run: those its expectations judge, and those measured in its pinned run (a pinned
    figure not measured again fails), in the registry's order; at least ``random``."""
    needed = {r for e in expectations for r in e.regimes}
    stored = load_baseline(pinned, hypothesis) if pinned is not None and hypothesis is not None else None
    if stored is not None:
        needed |= {r for r, figures in stored["regimes"].items() if figures.get("status") == "ok"}
    return [r for r in REGIMES if r in needed] or ["random"]


def judge(run: dict, expectations) -> list[CheckResult]:
    return [result for e in expectations for result in e.judge(run)]


def judged(result, expectations):
    """``result`` (a ``RunResult`` from ``scrub``) with ``expectations`` judged on its structured figures and
    recorded: the run's ``expectations`` list, and each failed check's name under its regime's
    ``failed_expectations``. ``scrub`` measures; this judges. An expectation whose regime did not run fails: a check
    that was asked for and not made must not read as passed."""
    checks = judge(result.to_dict(), expectations)
    result.expectations = [{"name": c.name, "regime": c.regime, "passed": c.passed, "inconclusive": c.inconclusive,
                            "message": c.message} for c in checks]
    for c in checks:
        if not c.passed and c.regime in result.regimes:
            result.regimes[c.regime].details.setdefault("failed_expectations", []).append(c.name)
    return result


def compare_to_baseline(run: dict, baseline: dict, metrics=("scrubbed_loss", "loss_gap", "abs_gap", "recovered",
                                                           "per_example_recovered")) -> list[CheckResult]:
    """A pinned result: fail where a figure's new interval and its stored interval do not overlap, where a pinned
    regime or figure is no longer measured, and where the verdict changed."""
    out = []
    if baseline.get("verdict") and run.get("verdict") and baseline["verdict"] != run["verdict"]:
        out.append(CheckResult("pinned verdict", False, f"verdict {run['verdict']}, pinned {baseline['verdict']}: "
                                                        "changed"))
    for regime, stored in baseline["regimes"].items():
        now = run["regimes"].get(regime, {})
        if stored.get("status") != "ok":
            continue
        if now.get("status") != "ok":
            out.append(CheckResult(f"pinned {regime}", False, f"{regime}: pinned, but not measured now (regime "
                                                              f"{now.get('status', 'missing')})", regime=regime))
            continue
        for metric in metrics:
            if f"{metric}_ci" not in stored:
                continue  # pinned before the figure existed
            (a_low, a_high), (b_low, b_high) = now[f"{metric}_ci"], stored[f"{metric}_ci"]
            if None in (b_low, b_high):
                continue
            if None in (a_low, a_high):
                out.append(CheckResult(f"pinned {metric} ({regime})", False, f"{regime}: {metric} is undefined now, "
                                       f"pinned {stored[metric]:.4g} [{b_low:.4g}, {b_high:.4g}]", regime=regime))
                continue
            passed = a_low <= b_high and b_low <= a_high
            out.append(CheckResult(f"pinned {metric} ({regime})", passed,
                                   f"{regime}: {metric} = {now[metric]:.4g} [{a_low:.4g}, {a_high:.4g}], pinned "
                                   f"{stored[metric]:.4g} [{b_low:.4g}, {b_high:.4g}]: "
                                   f"{'overlaps' if passed else 'moved beyond both intervals'}"))
    return out


def load_baseline(path: str | Path, hypothesis: str) -> dict | None:
    """The stored run of one hypothesis from a JSON report (``{"runs": [...]}``), if present."""
    path = Path(path)
    if not path.is_file():
        return None
    for run in json.loads(path.read_text())["runs"]:
        if run["hypothesis"] == hypothesis:
            return run
    return None


def failures(run: dict, pinned: str | Path | None = None) -> list[str]:
    """Every failed check of one run, one readable line each: its expectations, and, with ``pinned`` (a JSON
    report), the figures that moved beyond both intervals. The one rule the CLI and the pytest plugin share."""
    lines = [check["message"] for check in run.get("expectations", []) if not check["passed"]]
    if pinned is not None:
        stored = load_baseline(pinned, run["hypothesis"])
        if stored is None:
            lines.append(f"no pinned run of {run['hypothesis']!r} in {pinned}")
        else:
            lines += [c.message for c in compare_to_baseline(run, stored) if not c.passed]
    return lines

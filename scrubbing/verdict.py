"""The verdict: one word per hypothesis, from one rule, read by every face (table, JSON, HTML, expectations).

Each regime is judged on two intervals, both on the scale of the behaviour being explained:

- in the mean, % recovered = (L_base − L_scrub) / (L_base − L_model);
- per example, per-example recovered = 1 − E|ℓ_scrub − ℓ| / E|ℓ_base − ℓ|: the share of the baseline's
  per-example change that the scrub does *not* cause.

With tolerance τ (default 0.1), a figure *holds* when its whole interval lies within τ of 100% (for the mean, on
either side: a scrub that lowers the loss is as much a change as one that raises it), *moves* when its whole
interval lies beyond, and is *unclear* otherwise. Then, per regime:

    refuted       the mean moves; or, with no measurable behaviour (% recovered undefined), the E[loss] gap's
                  interval excludes 0 while per-example recovered moves: the scrub clearly changes the loss
    cancels       the per-example change moves while the mean holds (or its interval is unclear but its
                  estimate lies within τ): changes of both signs average out
    holds         both hold
    inconclusive  anything else (intervals too wide, or no behaviour to explain)

and ``RUN_RULE`` over the regimes (an adversary's refutation counts). ``reasons`` gives each verdict in words: the
faces print those, never a wording of their own.

Why per-example recovered and not the noise floor: in the canonical cancellation (B = ±C resampled) E[|Δloss|]
*equals* the noise floor, since the clean run is just one more resample; what tells cancellation from a node
that is small noise is scale, the per-example change against the baseline's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_TOLERANCE = 0.1
VERDICTS = ("holds", "refuted", "cancels", "inconclusive")


@dataclass(frozen=True)
class RegimeVerdict:
    verdict: str
    mean: str  # holds / moves / unclear / undefined
    per_example: str
    reason: str

    @property
    def cancels(self) -> bool:
        return self.verdict == "cancels"


@dataclass(frozen=True)
class Verdict:
    verdict: str
    regimes: tuple[str, ...]  # the regimes that decide it (those that refute, or cancel); empty otherwise
    reason: str
    not_run: tuple[str, ...] = ()  # regimes the verdict could not consult

    def label(self) -> str:
        text = self.verdict + (f" ({', '.join(self.regimes)})" if self.regimes else "")
        return text + (f" [not run: {', '.join(self.not_run)}]" if self.not_run and not self.regimes else "")


def check_tolerance(tolerance: float) -> float:
    if not 0 < tolerance < 0.5:
        raise ValueError(f"tolerance must lie in (0, 0.5); got {tolerance!r}. It is the share of the behaviour a "
                         "hypothesis may miss and still hold: 0.1 means 90% recovered, in the mean and per example.")
    return float(tolerance)


def _band(ci, tolerance: float, two_sided: bool) -> str:
    low, high = ci if ci else (None, None)
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "undefined"
    floor, ceiling = 1 - tolerance, 1 + tolerance if two_sided else math.inf
    if floor <= low and high <= ceiling:
        return "holds"
    if high < floor or low > ceiling:
        return "moves"
    return "unclear"


def reasons(tolerance: float = DEFAULT_TOLERANCE) -> dict[str, str]:
    """Each regime verdict in words, as ``judge_regime`` gives it and as the faces explain it."""
    floor, ceiling = f"{round(100 * (1 - tolerance))}%", f"{round(100 * (1 + tolerance))}%"
    return {
        "holds": f"% recovered and per-example recovered both at least {floor}",
        "refuted": f"% recovered lies clearly outside {floor}–{ceiling}",
        "refuted without behaviour": "the scrub clearly moves the loss: the E[loss] gap's interval excludes 0 and "
                                     f"per-example recovered lies clearly below {floor}",
        "cancels": f"the mean looks explained, but per-example recovered lies clearly below {floor}",
        "inconclusive": "an interval straddles the tolerance: more references would decide it",
    }


RUN_RULE = ("over the regimes that ran: refuted if any regime refutes (naming it), else cancels if any regime "
            "cancels, else holds if every regime holds, else inconclusive")


def judge_regime(figures: dict, tolerance: float = DEFAULT_TOLERANCE) -> RegimeVerdict:
    """One regime's verdict from its JSON figures (``recovered_ci``, ``per_example_recovered_ci``)."""
    mean = _band(figures.get("recovered_ci"), tolerance, two_sided=True)
    per_example = _band(figures.get("per_example_recovered_ci"), tolerance, two_sided=False)
    why = reasons(tolerance)
    if mean == "moves":
        return RegimeVerdict("refuted", mean, per_example, why["refuted"])
    estimate = figures.get("recovered")
    looks_fine = mean == "holds" or (mean == "unclear" and estimate is not None and abs(estimate - 1) <= tolerance)
    if looks_fine and per_example == "moves":
        return RegimeVerdict("cancels", mean, per_example, why["cancels"])
    if mean == "holds" and per_example == "holds":
        return RegimeVerdict("holds", mean, per_example, why["holds"])
    if mean == "undefined":
        floor = f"{round(100 * (1 - tolerance))}%"
        text = "% recovered is undefined: the model does no measurably better than the baseline"
        gap = figures.get("loss_gap_ci") or (None, None)
        if per_example == "moves" and None not in gap and (gap[0] > 0 or gap[1] < 0):
            return RegimeVerdict("refuted", mean, per_example, f"{text}, but {why['refuted without behaviour']}")
        if per_example == "moves":
            text += f" (per-example recovered lies clearly below {floor}: each example's loss does move)"
    else:
        text = why["inconclusive"]
    return RegimeVerdict("inconclusive", mean, per_example, text)


def judge_run(regimes: dict[str, dict], tolerance: float = DEFAULT_TOLERANCE) -> Verdict:
    """The hypothesis's verdict over the regimes that ran (``status == "ok"``); those that did not are named, so a
    "holds" from the random regime alone never reads as one from every regime."""
    judged = {name: judge_regime(f, tolerance) for name, f in regimes.items() if f.get("status") == "ok"}
    not_run = tuple(name for name in regimes if name not in judged)
    if not judged:
        return Verdict("inconclusive", (), "no regime ran", not_run)
    for word in ("refuted", "cancels"):
        deciding = tuple(name for name, v in judged.items() if v.verdict == word)
        if deciding:
            return Verdict(word, deciding, "; ".join(f"{n}: {judged[n].reason}" for n in deciding), not_run)
    missing = f"; not run: {', '.join(not_run)}" if not_run else ""
    idle = [name for name in judged if regimes[name].get("searched") is False]
    if idle:  # an adversary with nothing to choose repeats random's experiment: not a second check
        missing += f"; nothing to search for {', '.join(idle)} (the hypothesis leaves it no choice)"
    if all(v.verdict == "holds" for v in judged.values()):
        return Verdict("holds", (), f"holds under {', '.join(judged)}{missing}", not_run)
    unclear = [n for n, v in judged.items() if v.verdict == "inconclusive"]
    return Verdict("inconclusive", (), "; ".join(f"{n}: {judged[n].reason}" for n in unclear) + missing, not_run)

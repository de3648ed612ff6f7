"""The words and numbers both faces print (terminal table and HTML page), written once: figures with their
intervals, the tail of |Δloss|, what an adversary chose, which regimes decide a verdict, what a regime does."""

from __future__ import annotations

import math

from ..regimes import REGISTRY


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def number(x, signed: bool = False, percent: bool = False, digits: int = 4) -> str:
    """A figure as the report writes it: ``0.5010``, ``+0.0037``, ``99.6%``; ``n/a`` when undefined."""
    if not finite(x):
        return "n/a"
    if percent:
        return f"{x * 100:.1f}%"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def interval(ci, **fmt) -> str:
    """``[low, high]`` in the figure's own format; empty when there is no interval."""
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2):
        return ""
    return f"[{number(ci[0], **fmt)}, {number(ci[1], **fmt)}]"


def tail_text(tail: dict) -> str:
    """``|Δ| p95 ≤ 0.31, p99 ≤ 0.52``: 95%-confidence upper bounds of the percentiles, or the count one needs."""
    parts = []
    for key in ("p95", "p99"):
        bound = tail[f"{key}_upper"]
        parts.append(f"{key} ≤ {bound:.3g}" if bound is not None else f"{key}: n<{tail[key + '_refs_for_bound']}")
    return f"|Δ| {', '.join(parts)}"


def adversary_note(regime: dict) -> str:
    """What an adversary chose, in one line, from a regime's JSON figures (empty for the random regime)."""
    if "refinements" in regime:
        chosen = regime.get("refinements") or []
        return ("joined: " + "; ".join(map(str, chosen))) if chosen else "no refinement moved the loss"
    if isinstance(regime.get("representatives"), dict):
        small = regime.get("unsplittable_classes") or {}
        n = sum(v for v in regime["representatives"].values() if isinstance(v, (int, float)))
        return f"worst representative in {n} classes" + (f"; too small to split: {small}" if small else "")
    return ""


def verdict_detail(regimes, not_run) -> str:
    """Under a run's verdict: the regimes that decide it, else those it could not consult."""
    if regimes:
        return f"by {', '.join(regimes)}"
    return f"not run: {', '.join(not_run)}" if not_run else ""


def regime_help(name: str) -> str:
    """What a regime does, in its own words: the first paragraph of its function's docstring (``regimes``)."""
    doc = getattr(REGISTRY.get(name), "__doc__", None) or ""
    return " ".join(doc.split("\n\n")[0].split())


def ok(regime: dict) -> bool:
    """Did the regime run (its JSON ``status``)?"""
    return regime.get("status") == "ok"


def cancels(regime: dict) -> bool:
    """The regime's ``cancels``, as the verdict rule (``scrubbing.verdict``) set it in the report."""
    return ok(regime) and bool(regime.get("cancels"))

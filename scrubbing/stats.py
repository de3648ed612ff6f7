"""Gaps, shares, tails and paired-bootstrap intervals from per-example losses.

All metrics are computed on the same bootstrap resamples of the references, so
their intervals are paired: the model loss, the scrubbed loss and the baseline
of one resample all come from the same references.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import binom


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def ci(self) -> list[float]:
        return [self.low, self.high]


UNDEFINED = Estimate(math.nan, math.nan, math.nan)
FLOAT_TOLERANCE = 1e-6  # per-example changes below this (relative) are float rounding, not evidence


def _metrics(model, base, scrub, scrub2) -> dict[str, np.ndarray]:
    """Each argument is [..., R]; every metric reduces over the last axis."""
    delta = scrub - model
    loss_gap = delta.mean(-1)
    abs_gap = np.abs(delta).mean(-1)
    base_abs = np.abs(base - model).mean(-1)  # how far the baseline moves each example: the per-example 0% point
    model_loss, base_loss, scrubbed = model.mean(-1), base.mean(-1), scrub.mean(-1)
    span = base_loss - model_loss
    with np.errstate(divide="ignore", invalid="ignore"):
        recovered = np.where(span != 0, (base_loss - scrubbed) / span, np.nan)
        per_example = np.where(base_abs != 0, 1 - abs_gap / base_abs, np.nan)
        tiny = FLOAT_TOLERANCE * (1 + np.abs(model).mean(-1))
        cancellation = np.where(abs_gap > tiny, 1 - np.abs(loss_gap) / abs_gap, 0.0)
    return {
        "model_loss": model_loss,
        "baseline_loss": base_loss,
        "baseline_gap": span,
        "scrubbed_loss": scrubbed,
        "loss_gap": loss_gap,
        "abs_loss_gap": np.abs(loss_gap),  # what the two-sided adversary maximises
        "abs_gap": abs_gap,
        "noise_floor": np.abs(scrub - scrub2).mean(-1),
        "recovered": recovered,
        "per_example_recovered": per_example,
        "cancellation": cancellation,
    }


def summarize(model, base, scrub, scrub2, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Estimate]:
    """Point estimates and paired-bootstrap percentile intervals of every metric.

    % recovered is undefined (NaN) when the paired interval of baseline − model contains 0:
    the model does no measurably better than the baseline, so there is nothing to recover and
    the ratio is noise over noise.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (model, base, scrub, scrub2)]
    point = _metrics(*arrays)
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    index = rng.integers(0, n, size=(n_boot, n))
    boot = _metrics(*(a[index] for a in arrays))
    tail = (1 - level) / 2 * 100
    out = {}
    for name, value in point.items():
        samples = boot[name][np.isfinite(boot[name])]
        low, high = (np.percentile(samples, [tail, 100 - tail]) if len(samples) else (np.nan, np.nan))
        out[name] = Estimate(float(value), float(low), float(high))
    if not out["baseline_gap"].low > 0 and not out["baseline_gap"].high < 0:
        out["recovered"] = UNDEFINED
    return out


def delta_histogram(model, scrub, bins: int = 21) -> dict[str, list[float]]:
    """Per-example Δloss distribution, symmetric around zero, for the report."""
    delta = np.asarray(scrub, dtype=np.float64) - np.asarray(model, dtype=np.float64)
    edge = float(np.abs(delta).max()) or 1.0
    counts, edges = np.histogram(delta, bins=bins, range=(-edge, edge))
    return {"edges": edges.tolist(), "counts": counts.tolist(),
            "quantiles": np.quantile(delta, [0.05, 0.25, 0.5, 0.75, 0.95]).tolist()}


# -- the tail ------------------------------------------------------------------------------

TAIL_QUANTILES = (0.95, 0.99)


def quantile_upper_rank(n: int, q: float, confidence: float) -> int:
    """The smallest 1-based rank k with P(Binomial(n, q) <= k - 1) >= confidence: the k-th smallest of n
    draws lies at or above the q-quantile with at least that probability, whatever the distribution.
    Returns n + 1 when n draws are too few for such a bound."""
    return int(binom.ppf(confidence, n, q)) + 1


@lru_cache(maxsize=None)
def refs_needed(q: float, confidence: float = 0.95, within: float = 0.005) -> int:
    """References from which on the upper bound is an order statistic at empirical level at most ``q + within``
    (for every larger count too): what a bound on the q-quantile that is not loose costs."""
    approx = 2.7 * q * (1 - q) / within**2 + 10  # normal approximation, to size the scan
    ns = np.arange(1, int(20 * approx) + 1)
    ranks = binom.ppf(confidence, ns, q) + 1
    bad = ~((ranks <= ns) & ((ranks - 1) / ns <= q + within))
    return int(ns[bad].max()) + 1 if bad.any() else 1


def tail(model, scrub, confidence: float = 0.95, within: float = 0.005) -> dict:
    """The 95th and 99th percentiles of |Δloss| with distribution-free upper confidence bounds (exact binomial
    order statistics, as adversarial circuit evaluation reports them). A bound the references cannot support is
    None, with the count it needs."""
    magnitude = np.sort(np.abs(np.asarray(scrub, dtype=np.float64) - np.asarray(model, dtype=np.float64)))
    n = len(magnitude)
    out: dict = {"confidence": confidence}
    for q in TAIL_QUANTILES:
        rank = quantile_upper_rank(n, q, confidence)
        key = f"p{round(q * 100)}"
        out[key] = float(np.quantile(magnitude, q))
        out[f"{key}_upper"] = float(magnitude[rank - 1]) if rank <= n else None
        out[f"{key}_refs_for_bound"] = math.ceil(math.log(1 - confidence) / math.log(q))  # below this: no bound
        out[f"{key}_refs_needed"] = refs_needed(q, confidence, within)  # for a bound within `within` of q
    out["within"] = within
    return out

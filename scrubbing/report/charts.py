"""The two charts of a run, as inline SVG: the gap chart (E[loss] gap, E[|Δloss|] gap and the noise floor per
regime, with their intervals) and one histogram of per-example Δloss per regime."""

from __future__ import annotations

import math

from .markup import el, f1, join
from .text import cancels, finite, interval, number


def _short(v: float) -> str:
    return "0" if v == 0 else f"{v:.3g}"


# -- gap chart -------------------------------------------------------------------------------

def gap_chart(regimes: dict[str, dict]) -> str:
    """``regimes``: those that ran (the page draws no other)."""
    names = list(regimes)
    label_w, width, right = 150, 560, 18
    row_h, group_gap, top, axis_h = 18, 14, 30, 26
    plot_l, plot_r = label_w, width - right
    values = [0.0]
    for reg in regimes.values():
        for key in ("loss_gap", "abs_gap", "noise_floor"):
            values += [x for x in [reg.get(key), *(reg.get(key + "_ci") or [])] if finite(x)]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        hi = lo + 1.0
    ticks = _nice_ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])
    x = lambda v: plot_l + (v - lo) / (hi - lo) * (plot_r - plot_l)  # noqa: E731
    height = top + len(names) * (2 * row_h + group_gap) + axis_h
    bottom = height - axis_h
    out = [el("g", {"class": "legend", "transform": f"translate({plot_l},12)"},
              el("rect", {"class": "bar mean", "x": 0, "y": -7, "width": 12, "height": 9}),
              el("text", {"x": 16, "y": 1}, "E[loss] gap"),
              el("rect", {"class": "bar abs", "x": 100, "y": -7, "width": 12, "height": 9}),
              el("text", {"x": 116, "y": 1}, "E[|Δloss|] gap"),
              el("line", {"class": "noise", "x1": 228, "y1": -8, "x2": 228, "y2": 3}),
              el("text", {"x": 234, "y": 1}, "noise floor"))]
    for t in ticks:
        out += [el("line", {"class": "grid", "x1": f1(x(t)), "y1": top - 6, "x2": f1(x(t)), "y2": bottom}),
                el("text", {"class": "tick", "x": f1(x(t)), "y": bottom + 14, "text-anchor": "middle"}, _short(t))]
    out.append(el("line", {"class": "zero", "x1": f1(x(0)), "y1": top - 6, "x2": f1(x(0)), "y2": bottom}))
    out.append(el("text", {"class": "axis", "x": f"{(plot_l + plot_r) / 2:.0f}", "y": height - 1,
                           "text-anchor": "middle"}, "loss"))
    y = top
    for name in names:
        reg = regimes[name]
        group = [el("text", {"class": "rlabel", "x": 6, "y": y + row_h - 3}, name)]
        if cancels(reg):
            group.append(el("text", {"class": "cancels-tag", "x": 6, "y": y + 2 * row_h - 5}, "CANCELS"))
        noise, noise_ci = reg.get("noise_floor"), reg.get("noise_floor_ci") or []
        if len(noise_ci) == 2 and all(finite(v) for v in noise_ci):
            a, b = sorted(noise_ci)
            group.append(el("rect", {"class": "noise-band", "x": f1(x(a)), "y": y + row_h,
                                     "width": f1(max(x(b) - x(a), 1)), "height": row_h},
                            el("title", {}, f"noise floor interval {interval([a, b])}")))
        for k, (key, cls, label) in enumerate((("loss_gap", "mean", "E[loss] gap"),
                                               ("abs_gap", "abs", "E[|Δloss|] gap"))):
            group.append(_gap_row(reg, key, cls, label, x, y + k * row_h, row_h))
        if finite(noise):
            group.append(el("line", {"class": "noise", "x1": f1(x(noise)), "y1": y + row_h - 1,
                                     "x2": f1(x(noise)), "y2": y + 2 * row_h + 1},
                            el("title", {}, f"noise floor {number(noise)}")))
        out.append(el("g", {"class": "regime", "data-regime": name}, group))
        y += 2 * row_h + group_gap
        if name != names[-1]:
            sep = f1(y - group_gap / 2)
            out.append(el("line", {"class": "sep", "x1": 4, "y1": sep, "x2": plot_r, "y2": sep}))
    return el("svg", {"class": "gap-chart", "viewBox": f"0 0 {width} {height}", "width": width, "height": height,
                      "role": "img", "aria-label": "E[loss] gap and E[|Δloss|] gap per regime"}, out)


def _gap_row(reg: dict, key: str, cls: str, label: str, x, y: float, h: float) -> str:
    v, ci = reg.get(key), reg.get(key + "_ci") or []
    if not finite(v):
        return el("text", {"class": "not-run", "x": f1(x(0) + 4), "y": y + h - 5}, f"{label}: n/a")
    x0, xv = x(0), x(v)
    text = interval(ci, signed=key == "loss_gap")
    parts = [el("rect", {"class": f"bar {cls}", "x": f1(min(x0, xv)), "y": y + 4, "width": f1(max(abs(xv - x0), 1)),
                         "height": h - 8},
                el("title", {}, f"{label} {number(v, signed=key == 'loss_gap')}" + (f" {text}" if text else "")))]
    if len(ci) == 2 and all(finite(c) for c in ci):
        a, b = x(ci[0]), x(ci[1])
        mid = y + h / 2
        parts.append(el("path", {"class": f"whisker {cls}", "d": f"M{a:.1f},{mid:.1f}H{b:.1f}M{a:.1f},{mid - 4:.1f}"
                                                                   f"V{mid + 4:.1f}M{b:.1f},{mid - 4:.1f}V{mid + 4:.1f}"}))
    parts.append(el("circle", {"class": f"dot {cls}", "cx": f1(xv), "cy": f1(y + h / 2), "r": 3}))
    return join(parts)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 2.5, 5, 10):
        if span / (step * m) <= n:
            step *= m
            break
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi - 1e-12:
        ticks.append(round(t, 12))
    return ticks


# -- Δloss histogram -------------------------------------------------------------------------

def delta_hist(name: str, reg: dict) -> str:
    width, height, pad_l, pad_r, top, plot_h = 380, 178, 40, 10, 22, 96
    svg = {"class": "delta-hist", "data-regime": name, "viewBox": f"0 0 {width} {height}", "width": width,
           "height": height, "role": "img", "aria-label": f"per-example Δloss histogram, {name}"}
    hist = reg.get("delta_histogram")
    edges = (hist or {}).get("edges") or []
    counts = (hist or {}).get("counts") or []
    if not hist or len(edges) != len(counts) + 1 or not counts:
        return el("svg", svg, el("rect", {"class": "frame", "x": pad_l, "y": top, "width": width - pad_l - pad_r,
                                          "height": plot_h}),
                  el("text", {"class": "not-run", "x": width / 2, "y": top + plot_h / 2 + 4, "text-anchor": "middle"},
                     "no histogram"))
    lo, hi = float(edges[0]), float(edges[-1])
    if hi <= lo:
        hi = lo + 1.0
    x = lambda v: pad_l + (v - lo) / (hi - lo) * (width - pad_l - pad_r)  # noqa: E731
    total = sum(counts) or 1
    cmax = max(counts) or 1
    base = top + plot_h
    down = sum(c for c, a, b in zip(counts, edges, edges[1:]) if b <= 0)
    up = sum(c for c, a, b in zip(counts, edges, edges[1:]) if a >= 0)
    mid = total - down - up
    out = [el("text", {"class": "share", "x": pad_l, "y": 13},
              el("tspan", {"class": "down"}, f"↓ {down / total:.0%}"),
              el("tspan", {"dx": 8, "class": "mid"}, f"≈0 {mid / total:.0%}"),
              el("tspan", {"dx": 8, "class": "up"}, f"↑ {up / total:.0%}")),
           el("text", {"class": "tick", "x": width - pad_r, "y": 13, "text-anchor": "end"}, f"n={total}"),
           el("line", {"class": "grid", "x1": pad_l, "y1": top, "x2": width - pad_r, "y2": top}),
           el("text", {"class": "tick", "x": pad_l - 4, "y": top + 4, "text-anchor": "end"}, cmax),
           el("text", {"class": "tick", "x": pad_l - 4, "y": base + 3, "text-anchor": "end"}, "0")]
    for c, a, b in zip(counts, edges, edges[1:]):
        if not c:
            continue
        cls = "down" if b <= 0 else "up" if a >= 0 else "zero"
        h = max(c / cmax * plot_h, 1.5)
        out.append(el("rect", {"class": f"bin {cls}", "x": f1(x(a) + 0.5), "y": f1(base - h),
                               "width": f1(max(x(b) - x(a) - 1, 1)), "height": f1(h)},
                      el("title", {}, f"Δloss in [{_short(a)}, {_short(b)}): {c} examples")))
    out.append(el("line", {"class": "axis-line", "x1": pad_l, "y1": base, "x2": width - pad_r, "y2": base}))
    if lo <= 0 <= hi:
        out.append(el("line", {"class": "zero", "x1": f1(x(0)), "y1": top - 4, "x2": f1(x(0)), "y2": base + 4}))
    for v, anchor in ((lo, "start"), (0.0, "middle"), (hi, "end")):
        if lo <= v <= hi:
            out.append(el("text", {"class": "tick", "x": f1(x(v)), "y": base + 15, "text-anchor": anchor}, _short(v)))
    q = [v for v in (hist.get("quantiles") or []) if finite(v)]
    if len(q) == 5:
        qy = base + 30
        q5, q25, q50, q75, q95 = (max(lo, min(hi, v)) for v in q)
        out.append(el("g", {"class": "quantiles"},
                      el("title", {}, f"Δloss quantiles 5/25/50/75/95%: {', '.join(_short(v) for v in q)}"),
                      el("line", {"class": "whisker q", "x1": f1(x(q5)), "y1": qy, "x2": f1(x(q95)), "y2": qy}),
                      el("rect", {"class": "qbox", "x": f1(x(q25)), "y": qy - 5, "width": f1(max(x(q75) - x(q25), 1)),
                                  "height": 10}),
                      el("line", {"class": "median", "x1": f1(x(q50)), "y1": qy - 6, "x2": f1(x(q50)), "y2": qy + 6}),
                      el("text", {"class": "tick", "x": pad_l - 4, "y": qy + 3, "text-anchor": "end"}, "5–95%")))
    out.append(el("text", {"class": "axis", "x": f"{(pad_l + width - pad_r) / 2:.0f}", "y": height - 4,
                           "text-anchor": "middle"}, "Δloss (← loss fell · loss rose →)"))
    return el("svg", svg, out)

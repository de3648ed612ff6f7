"""The report as one self-contained HTML page: inline CSS and inline SVG, no script, nothing fetched.

    from scrubbing.html import render_html
    Path("report.html").write_text(render_html(report.to_dict()))

``render_html`` is a pure function of the report dict (``Report.to_dict()``, the stable JSON format).
The page carries a Content-Security-Policy that forbids every fetch and every script, so it renders the
same offline, from a mail attachment or from a CI artifact. ``python -m scrubbing.html REPORT.json OUT.html``
renders a JSON report written earlier.

Stable hooks for tests and tools: ``table#summary`` (one ``tr.regime-row`` per hypothesis × regime, with
``data-run`` and ``data-regime``), ``section.hypothesis#run-N``, ``svg.gap-chart``, ``svg.delta-hist``
(``data-regime``), ``svg.hypothesis-graph``, ``div.adversary``, ``span.flag.cancels``, ``.failed-expectation``,
``td.verdict-cell span.verdict`` (classes ``holds``, ``refuted``, ``cancels``, ``inconclusive``).
"""

from __future__ import annotations

import html
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

from .report import tail_text

REGIMES = ("random", "adversarial-join", "worst-swap")
_CI_KEYS = ("scrubbed_loss", "loss_gap", "abs_gap", "noise_floor", "cancellation", "recovered", "per_example_recovered")
_SHOWN_ELSEWHERE = {"status", "delta_histogram", "failed_expectations", "verdict", "cancels", "verdict_reason", "tail",
                    *_CI_KEYS, *(k + "_ci" for k in _CI_KEYS)}
_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'")

_REGIME_HELP = {
    "random": "causal scrubbing as published: resample uniformly within each class",
    "adversarial-join": "an adversary refines the classes (join(H, H′)) to move the loss as far as it can",
    "worst-swap": "every member of a class is swapped for the class's worst representative",
}


def render_html(report: dict) -> str:
    """The whole report as one HTML document (a string). Pure: reads only ``report``; every text is escaped."""
    runs = list(report.get("runs") or [])
    body = [_header(runs), _summary_table(runs)]
    body += [_section(i, run) for i, run in enumerate(runs)]
    if not runs:
        body.append('<p class="empty">This report holds no runs.</p>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(_title(runs))}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )


# -- page parts ------------------------------------------------------------------------------

def _title(runs: list[dict]) -> str:
    if len(runs) == 1:
        return f"Causal scrubbing: {runs[0].get('hypothesis', '?')}"
    return f"Causal scrubbing: {len(runs)} hypotheses"


def _header(runs: list[dict]) -> str:
    tasks = sorted({str(r.get("task", "?")) for r in runs})
    n_cancels = sum(_cancels(reg) for r in runs for reg in _regimes(r).values())
    n_failed = sum(_n_failed(r) for r in runs)
    counts = Counter(r.get("verdict") or "inconclusive" for r in runs)
    verdict = [f'<span class="verdict {_e(v)}">{n} {_e(v)}</span>' for v, n in sorted(counts.items())]
    if n_failed:
        verdict.append(f'<span class="flag failed">{n_failed} failed expectation{"s" * (n_failed != 1)}</span>')
    if n_cancels:
        verdict.append(f'<span class="flag cancels">{n_cancels} regime{"s" * (n_cancels != 1)} CANCEL</span>')
    return f"""<header>
<h1>{_e(_title(runs))}</h1>
<p class="lede">{len(runs)} hypothesis run{"s" * (len(runs) != 1)} on {_e(", ".join(tasks) or "no task")}.
E[loss] gap and E[|Δloss|] gap side by side, each with its 95% paired-bootstrap interval. {" ".join(verdict)}</p>
<details class="help"><summary>How to read this page</summary>
<dl>
<dt>verdict</dt><dd>one per hypothesis, over every regime that ran: <b>holds</b> (every regime within tolerance of
100% recovered, in the mean and per example), <b>refuted</b> (some regime, named, moves the mean clearly),
<b>cancels</b> (the mean looks explained, the per-example change clearly is not), <b>inconclusive</b> (intervals too
wide to say, or no behaviour to explain)</dd>
<dt>scrubbed loss</dt><dd>loss when the model runs on the treeified, resampled inputs</dd>
<dt>E[loss] gap</dt><dd>scrubbed − model, averaged: what causal scrubbing has always reported</dd>
<dt>E[|Δloss|] gap</dt><dd>average of |scrubbed − model| <em>per example</em>: change that averages out is still change</dd>
<dt>noise floor</dt><dd>E|scrub₁ − scrub₂| over two independent scrubs: how far one resample moves an example.
Context for E[|Δloss|], not a pass mark</dd>
<dt>per-example recovered</dt><dd>1 − E[|Δloss|] / E|baseline − model| per example: the per-example analogue
of % recovered; far below it means per-example changes cancel in the mean</dd>
<dt>cancel share</dt><dd>1 − |E[Δloss]| / E[|Δloss|]: near 1, the per-example changes cancel in the mean</dd>
<dt>% recovered</dt><dd>(baseline − scrubbed) / (baseline − model); baseline = every input resampled at random</dd>
<dt><span class="flag cancels">CANCELS</span></dt><dd>cancel share &gt; 0.5 and the E[|Δloss|] gap's interval lies
above the noise floor's: scrubbing helps some inputs and hurts others, and the mean hides it</dd>
<dt>Δloss histograms</dt><dd><span class="key down">■</span> loss fell, <span class="key up">■</span> loss rose,
<span class="key zero">■</span> the bin around zero; mass on both sides of the zero line is cancellation.
The strip below each histogram: 5–95% range, box 25–75%, median</dd>
</dl>
</details>
</header>"""


def _summary_table(runs: list[dict]) -> str:
    head = ("<tr><th>verdict</th><th>hypothesis</th><th>regime</th><th>scrubbed loss</th><th>E[loss] gap</th>"
            "<th>E[|Δloss|] gap</th><th>noise floor</th><th>cancel share</th><th>% recovered</th>"
            "<th>per-example recovered</th><th>flags</th></tr>")
    rows = []
    for i, run in enumerate(runs):
        regimes = _regimes(run)
        names = list(regimes) or ["random"]
        for j, name in enumerate(names):
            reg = regimes.get(name, {"status": "not run"})
            cells = []
            if j == 0:
                cells.append(f'<td rowspan="{len(names)}" class="verdict-cell">{_verdict_badge(run)}</td>')
                cells.append(f'<th scope="rowgroup" rowspan="{len(names)}" class="hyp">'
                             f'<a href="#run-{i}">{_e(run.get("hypothesis", "?"))}</a>'
                             f'<div class="sub">{_e(run.get("task", ""))} · model {_num(run.get("model_loss"))}'
                             f' · baseline {_num(run.get("baseline_loss"))}<br>n={_e(run.get("n_refs", "?"))}'
                             f' seed={_e(run.get("seed", "?"))}</div></th>')
            cells.append(f'<td class="regime">{_e(name)}</td>')
            if not _ok(reg):
                cells.append(f'<td colspan="8" class="not-run">{_e(reg.get("status", "not run"))}</td>')
            else:
                cells += [
                    _cell(reg, "scrubbed_loss"), _cell(reg, "loss_gap", signed=True), _cell(reg, "abs_gap"),
                    _cell(reg, "noise_floor"), _cell(reg, "cancellation", plain=True),
                    _cell(reg, "recovered", percent=True), _cell(reg, "per_example_recovered", percent=True),
                    f'<td class="flags">{_flags(reg)}</td>']
            cls = ("regime-row" + (" first" if j == 0 else "") + ("" if _ok(reg) else " skipped")
                   + (" cancels" if _cancels(reg) else "") + (" failed" if reg.get("failed_expectations") else ""))
            rows.append(f'<tr class="{cls}" data-run="{i}" data-regime="{_e(name)}">{"".join(cells)}</tr>')
    return (f'<section class="card"><h2>Summary</h2><div class="scroll"><table id="summary">'
            f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div></section>")


def _cell(reg: dict, key: str, signed: bool = False, percent: bool = False, plain: bool = False) -> str:
    value, ci = reg.get(key), reg.get(key + "_ci")
    fmt = (lambda x: _num(x, percent=True)) if percent else (lambda x: _num(x, signed=signed, digits=2 if plain else 4))
    extra = ""
    if key == "cancellation" and _finite(value):
        extra = f'<div class="meter"><span style="width:{max(0.0, min(1.0, value)) * 100:.0f}%"></span></div>'
    interval = ""
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        interval = f'<div class="ci">[{fmt(ci[0])}, {fmt(ci[1])}]</div>'
    return f'<td class="num {key}">{fmt(value)}{interval}{extra}</td>'


def _verdict_badge(run: dict, detail: bool = True) -> str:
    verdict = run.get("verdict") or "inconclusive"
    by, not_run = run.get("verdict_regimes") or [], run.get("verdict_not_run") or []
    sub = f"by {', '.join(by)}" if by else (f"not run: {', '.join(not_run)}" if not_run else "")
    return (f'<span class="verdict {_e(verdict)}" title="{_e(run.get("verdict_reason", ""))}">{_e(verdict.upper())}'
            f'</span>' + (f'<div class="sub">{_e(sub)}</div>' if sub and detail else ""))


def _flags(reg: dict) -> str:
    out = []
    if reg.get("verdict"):
        out.append(f'<span class="verdict small {_e(reg["verdict"])}" title="{_e(reg.get("verdict_reason", ""))}">'
                   f'{_e(reg["verdict"])}</span>')
    if _cancels(reg):
        out.append('<span class="flag cancels" title="the mean is explained, the per-example change is not">'
                   "CANCELS</span>")
    for check in reg.get("failed_expectations") or []:
        out.append(f'<div class="failed-expectation">FAIL {_e(check)}</div>')
    note = _adversary_note(reg)
    if note:
        out.append(f'<div class="note">{_e(note)}</div>')
    tail = reg.get("tail")
    if isinstance(tail, dict):
        out.append(f'<div class="note tail">{_e(tail_text(tail))}</div>')
    return "".join(out)


def _section(i: int, run: dict) -> str:
    regimes = _regimes(run)
    meta = [
        ("task", run.get("task")), ("model loss", _interval_text(run, "model_loss")),
        ("baseline loss", _interval_text(run, "baseline_loss")), ("references", run.get("n_refs")),
        ("seed", run.get("seed")), ("plan digest", run.get("plan_digest")),
    ]
    meta_html = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v if v not in (None, '') else '–')}</dd>" for k, v in meta)
    desc = run.get("description") or ""
    columns = []
    for name in (list(regimes) or list(REGIMES)):
        reg = regimes.get(name, {"status": "not run"})
        columns.append(
            f'<div class="regime-col{"" if _ok(reg) else " skipped"}" data-regime="{_e(name)}">'
            f'<h4>{_e(name)}{" " + _flags_short(reg) if _flags_short(reg) else ""}</h4>'
            f'<p class="help">{_e(_REGIME_HELP.get(name, ""))}</p>'
            f'<figure class="hist"><figcaption>per-example Δloss = scrubbed − model</figcaption>'
            f'{_delta_hist(name, reg)}</figure>{_adversary(name, reg)}</div>')
    return f"""<section class="card hypothesis" id="run-{i}" data-run="{i}">
<h2>{_e(run.get("hypothesis", "?"))}{_section_flags(run)}<a class="up" href="#summary">↑ summary</a></h2>
{f'<p class="desc">{_e(desc)}</p>' if desc else ""}
<dl class="meta">{meta_html}</dl>
{_expectations(run)}
<div class="grid">
<figure class="graph"><figcaption>hypothesis graph</figcaption>{_graph(i, run.get("nodes") or [])}</figure>
<figure class="gaps"><figcaption>gaps per regime (whiskers: 95% interval)</figcaption>{_gap_chart(regimes)}</figure>
</div>
<h3>Per regime: how each example's loss moved, and what the adversary chose</h3>
<div class="regimes">{"".join(columns)}</div>
</section>"""


def _flags_short(reg: dict) -> str:
    out = '<span class="flag cancels">CANCELS</span>' if _cancels(reg) else ""
    return out + ('<span class="flag failed">FAIL</span>' if reg.get("failed_expectations") else "")


def _section_flags(run: dict) -> str:
    out = [_verdict_badge(run, detail=False)]
    for name, reg in _regimes(run).items():
        if _cancels(reg):
            out.append(f'<span class="flag cancels">CANCELS · {_e(name)}</span>')
        if reg.get("failed_expectations"):
            out.append(f'<span class="flag failed">FAIL · {_e(name)}</span>')
    return " " + " ".join(out) if out else ""


def _expectations(run: dict) -> str:
    items = [x for x in (run.get("expectations") or []) if isinstance(x, dict)]
    if not items:
        return ""
    lis = []
    for x in items:
        state = "inconclusive" if x.get("inconclusive") else ("passed" if x.get("passed") else "failed")
        cls = "failed-expectation" if state == "failed" else state
        text = x.get("message") or x.get("name") or ""
        mark = {"passed": "✓", "failed": "✗", "inconclusive": "?"}[state]
        lis.append(f'<li class="{cls}"><span class="mark">{mark}</span> {_e(x.get("name", ""))}'
                   f'{f" — {_e(text)}" if text and text != x.get("name") else ""}</li>')
    failed = [li for li in lis if 'class="failed-expectation"' in li]
    others = [li for li in lis if li not in failed]
    out = f'<ul class="expectations">{"".join(failed)}</ul>' if failed else ""
    if others:
        n_ok = sum('class="passed"' in li for li in others)
        label = f"{n_ok} expectation{'s' * (n_ok != 1)} hold" + ("s" if n_ok == 1 else "")
        if len(others) > n_ok:
            label += f", {len(others) - n_ok} inconclusive"
        out += (f'<details class="expectations"><summary>✓ {_e(label)}</summary>'
                f'<ul class="expectations">{"".join(others)}</ul></details>')
    return out


def _adversary(name: str, reg: dict) -> str:
    head = '<h5>what the adversary chose</h5>' if name != "random" else ""
    if not _ok(reg):
        return f'<div class="adversary skipped" data-regime="{_e(name)}">{head}<p class="not-run">{_e(reg.get("status", "not run"))}</p></div>'
    parts = []
    if "refinements" in reg:
        ref = reg.get("refinements") or []
        if ref:
            parts.append("<p>joined refinements:</p><ol class=\"refinements\">"
                         + "".join(f"<li>{_e(r)}</li>" for r in ref) + "</ol>")
        else:
            parts.append('<p class="quiet">no refinement moved the loss</p>')
    if reg.get("representatives") == {}:
        parts.append('<p class="quiet">no resampled node: nothing to swap</p>')
    elif isinstance(reg.get("representatives"), dict):
        reps, classes = reg["representatives"], reg.get("classes") or {}
        small = reg.get("unsplittable_classes") or {}
        rows = "".join(
            f"<tr><td>{_e(node)}</td><td class=\"num\">{_e(n)}"
            f"{(' / ' + _e(classes[node])) if node in classes else ''}</td>"
            f"<td class=\"num\">{_e(small.get(node, 0))}</td></tr>" for node, n in reps.items())
        parts.append('<table class="reps"><thead><tr><th>node</th><th>classes swapped to worst rep.</th>'
                     f"<th>too small to split</th></tr></thead><tbody>{rows}</tbody></table>")
    budget = reg.get("budget")
    if isinstance(budget, dict) and budget:
        limit, used = budget.get("limit"), budget.get("used")
        bar = ""
        if _finite(limit) and _finite(used) and limit > 0:
            bar = f'<div class="meter budget"><span style="width:{min(1.0, used / limit) * 100:.0f}%"></span></div>'
        text = f"budget: {used if used is not None else '?'} of {limit if limit is not None else '?'} evaluations"
        if budget.get("candidates") is not None:
            text += f" · {budget['candidates']} candidate refinements"
        parts.append(f'<p class="budget">{_e(text)}</p>{bar}')
    rest = {k: v for k, v in reg.items()
            if k not in _SHOWN_ELSEWHERE and k not in ("refinements", "representatives", "classes",
                                                        "unsplittable_classes", "budget")}
    if rest:
        parts.append('<dl class="details">' + "".join(
            f"<dt>{_e(k.replace('_', ' '))}</dt><dd>{_e(_detail_text(v))}</dd>" for k, v in rest.items()) + "</dl>")
    for check in reg.get("failed_expectations") or []:
        parts.append(f'<p class="failed-expectation">FAIL {_e(check)}</p>')
    if not parts:
        parts.append('<p class="quiet">no search: classes are resampled uniformly</p>')
    return f'<div class="adversary" data-regime="{_e(name)}">{head}{"".join(parts)}</div>'


def _detail_text(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _adversary_note(reg: dict) -> str:
    if "refinements" in reg:
        ref = reg.get("refinements") or []
        return ("joined: " + "; ".join(map(str, ref))) if ref else "no refinement moved the loss"
    if isinstance(reg.get("representatives"), dict):
        n = sum(v for v in reg["representatives"].values() if isinstance(v, (int, float)))
        return f"{n} classes swapped to their worst representative"
    return ""


# -- gap chart -------------------------------------------------------------------------------

def _gap_chart(regimes: dict) -> str:
    names = list(regimes) or list(REGIMES)
    label_w, width, right = 150, 560, 18
    row_h, group_gap, top, axis_h = 18, 14, 30, 26
    plot_l, plot_r = label_w, width - right
    values = [0.0]
    for reg in regimes.values():
        if _ok(reg):
            for key in ("loss_gap", "abs_gap", "noise_floor"):
                values += [x for x in [reg.get(key), *(reg.get(key + "_ci") or [])] if _finite(x)]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        hi = lo + 1.0
    ticks = _nice_ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])
    x = lambda v: plot_l + (v - lo) / (hi - lo) * (plot_r - plot_l)  # noqa: E731
    height = top + len(names) * (2 * row_h + group_gap) + axis_h
    bottom = height - axis_h
    out = [f'<svg class="gap-chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" aria-label="E[loss] gap and E[|Δloss|] gap per regime">']
    # legend
    out.append(f'<g class="legend" transform="translate({plot_l},12)">'
               '<rect class="bar mean" x="0" y="-7" width="12" height="9"/><text x="16" y="1">E[loss] gap</text>'
               '<rect class="bar abs" x="100" y="-7" width="12" height="9"/><text x="116" y="1">E[|Δloss|] gap</text>'
               '<line class="noise" x1="228" y1="-8" x2="228" y2="3"/><text x="234" y="1">noise floor</text></g>')
    for t in ticks:
        out.append(f'<line class="grid" x1="{x(t):.1f}" y1="{top - 6}" x2="{x(t):.1f}" y2="{bottom}"/>'
                   f'<text class="tick" x="{x(t):.1f}" y="{bottom + 14}" text-anchor="middle">{_e(_short(t))}</text>')
    out.append(f'<line class="zero" x1="{x(0):.1f}" y1="{top - 6}" x2="{x(0):.1f}" y2="{bottom}"/>')
    out.append(f'<text class="axis" x="{(plot_l + plot_r) / 2:.0f}" y="{height - 1}" text-anchor="middle">loss</text>')
    y = top
    for name in names:
        reg = regimes.get(name, {"status": "not run"})
        group_h = 2 * row_h
        out.append(f'<g class="regime" data-regime="{_e(name)}">')
        out.append(f'<text class="rlabel" x="6" y="{y + row_h - 3}">{_e(name)}</text>')
        if _cancels(reg):
            out.append(f'<text class="cancels-tag" x="6" y="{y + 2 * row_h - 5}">CANCELS</text>')
        if not _ok(reg):
            out.append(f'<text class="not-run" x="{plot_l + 8}" y="{y + row_h + 4}">{_e(reg.get("status", "not run"))}</text>')
        else:
            noise, noise_ci = reg.get("noise_floor"), reg.get("noise_floor_ci") or []
            if len(noise_ci) == 2 and all(_finite(v) for v in noise_ci):
                a, b = sorted(noise_ci)
                out.append(f'<rect class="noise-band" x="{x(a):.1f}" y="{y + row_h}" width="{max(x(b) - x(a), 1):.1f}" '
                           f'height="{row_h}"><title>noise floor interval [{_num(a)}, {_num(b)}]</title></rect>')
            for k, (key, cls, label) in enumerate((("loss_gap", "mean", "E[loss] gap"),
                                                   ("abs_gap", "abs", "E[|Δloss|] gap"))):
                out.append(_gap_row(reg, key, cls, label, x, y + k * row_h, row_h))
            if _finite(noise):
                out.append(f'<line class="noise" x1="{x(noise):.1f}" y1="{y + row_h - 1}" x2="{x(noise):.1f}" '
                           f'y2="{y + 2 * row_h + 1}"><title>noise floor {_num(noise)}</title></line>')
        out.append("</g>")
        y += group_h + group_gap
        if name != names[-1]:
            out.append(f'<line class="sep" x1="4" y1="{y - group_gap / 2:.1f}" x2="{plot_r}" y2="{y - group_gap / 2:.1f}"/>')
    out.append("</svg>")
    return "".join(out)


def _gap_row(reg: dict, key: str, cls: str, label: str, x, y: float, h: float) -> str:
    v, ci = reg.get(key), reg.get(key + "_ci") or []
    if not _finite(v):
        return f'<text class="not-run" x="{x(0) + 4:.1f}" y="{y + h - 5}">{_e(label)}: n/a</text>'
    x0, xv = x(0), x(v)
    parts = [f'<rect class="bar {cls}" x="{min(x0, xv):.1f}" y="{y + 4}" width="{max(abs(xv - x0), 1):.1f}" '
             f'height="{h - 8}"><title>{_e(label)} {_num(v, signed=key == "loss_gap")}'
             f'{" [" + _num(ci[0]) + ", " + _num(ci[1]) + "]" if len(ci) == 2 else ""}</title></rect>']
    if len(ci) == 2 and all(_finite(c) for c in ci):
        a, b = x(ci[0]), x(ci[1])
        mid = y + h / 2
        parts.append(f'<path class="whisker {cls}" d="M{a:.1f},{mid:.1f}H{b:.1f}M{a:.1f},{mid - 4:.1f}V{mid + 4:.1f}'
                     f'M{b:.1f},{mid - 4:.1f}V{mid + 4:.1f}"/>')
    parts.append(f'<circle class="dot {cls}" cx="{xv:.1f}" cy="{y + h / 2:.1f}" r="3"/>')
    return "".join(parts)


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

def _delta_hist(name: str, reg: dict) -> str:
    width, height, pad_l, pad_r, top, plot_h = 380, 178, 40, 10, 22, 96
    svg_open = (f'<svg class="delta-hist" data-regime="{_e(name)}" viewBox="0 0 {width} {height}" width="{width}" '
                f'height="{height}" role="img" aria-label="per-example Δloss histogram, {_e(name)}">')
    hist = reg.get("delta_histogram") if _ok(reg) else None
    edges = (hist or {}).get("edges") or []
    counts = (hist or {}).get("counts") or []
    if not hist or len(edges) != len(counts) + 1 or not counts:
        msg = reg.get("status", "not run") if not _ok(reg) else "no histogram"
        return (svg_open + f'<rect class="frame" x="{pad_l}" y="{top}" width="{width - pad_l - pad_r}" height="{plot_h}"/>'
                f'<text class="not-run" x="{width / 2}" y="{top + plot_h / 2 + 4}" text-anchor="middle">{_e(msg)}</text></svg>')
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
    out = [svg_open]
    out.append(f'<text class="share" x="{pad_l}" y="13"><tspan class="down">↓ {down / total:.0%}</tspan>'
               f'<tspan dx="8" class="mid">≈0 {mid / total:.0%}</tspan>'
               f'<tspan dx="8" class="up">↑ {up / total:.0%}</tspan></text>')
    out.append(f'<text class="tick" x="{width - pad_r}" y="13" text-anchor="end">n={_e(total)}</text>')
    out.append(f'<line class="grid" x1="{pad_l}" y1="{top}" x2="{width - pad_r}" y2="{top}"/>')
    out.append(f'<text class="tick" x="{pad_l - 4}" y="{top + 4}" text-anchor="end">{_e(cmax)}</text>'
               f'<text class="tick" x="{pad_l - 4}" y="{base + 3}" text-anchor="end">0</text>')
    for c, a, b in zip(counts, edges, edges[1:]):
        if not c:
            continue
        cls = "down" if b <= 0 else "up" if a >= 0 else "zero"
        h = max(c / cmax * plot_h, 1.5)
        out.append(f'<rect class="bin {cls}" x="{x(a) + 0.5:.1f}" y="{base - h:.1f}" width="{max(x(b) - x(a) - 1, 1):.1f}" '
                   f'height="{h:.1f}"><title>Δloss in [{_short(a)}, {_short(b)}): {_e(c)} examples</title></rect>')
    out.append(f'<line class="axis-line" x1="{pad_l}" y1="{base}" x2="{width - pad_r}" y2="{base}"/>')
    if lo <= 0 <= hi:
        out.append(f'<line class="zero" x1="{x(0):.1f}" y1="{top - 4}" x2="{x(0):.1f}" y2="{base + 4}"/>')
    for v, anchor in ((lo, "start"), (0.0, "middle"), (hi, "end")):
        if lo <= v <= hi:
            out.append(f'<text class="tick" x="{x(v):.1f}" y="{base + 15}" text-anchor="{anchor}">{_e(_short(v))}</text>')
    q = [v for v in (hist.get("quantiles") or []) if _finite(v)]
    if len(q) == 5:
        qy = base + 30
        q5, q25, q50, q75, q95 = (max(lo, min(hi, v)) for v in q)
        out.append(f'<g class="quantiles"><title>Δloss quantiles 5/25/50/75/95%: '
                   f'{", ".join(_short(v) for v in q)}</title>'
                   f'<line class="whisker q" x1="{x(q5):.1f}" y1="{qy}" x2="{x(q95):.1f}" y2="{qy}"/>'
                   f'<rect class="qbox" x="{x(q25):.1f}" y="{qy - 5}" width="{max(x(q75) - x(q25), 1):.1f}" height="10"/>'
                   f'<line class="median" x1="{x(q50):.1f}" y1="{qy - 6}" x2="{x(q50):.1f}" y2="{qy + 6}"/>'
                   f'<text class="tick" x="{pad_l - 4}" y="{qy + 3}" text-anchor="end">5–95%</text></g>')
    out.append(f'<text class="axis" x="{(pad_l + width - pad_r) / 2:.0f}" y="{height - 4}" text-anchor="middle">'
               "Δloss (← loss fell · loss rose →)</text>")
    out.append("</svg>")
    return "".join(out)


# -- hypothesis graph ------------------------------------------------------------------------

_NODE_RE = re.compile(r"^(?P<name>.*?) @ (?P<site>.*?): (?P<what>.*?); parents: (?P<parents>.*)$")


def _split_parents(text: str) -> list[str]:
    """Split "a, b (into q/k, via direct)" at top-level commas only."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return [p for p in out if p and p != "-"]


def parse_nodes(lines: list[str]) -> tuple[dict[str, dict], list[tuple[str, str, str]]]:
    """``nodes`` lines → ({name: {site, feature}}, [(parent, child, edge note)]). Unparsed lines become bare nodes."""
    nodes: dict[str, dict] = {}
    pending: list[tuple[str, str]] = []
    for line in lines:
        m = _NODE_RE.match(str(line))
        if not m:
            nodes.setdefault(str(line), {"site": "", "feature": "", "raw": True})
            continue
        what = m["what"].strip()
        feature = what[len("feature "):] if what.startswith("feature ") else what
        nodes[m["name"]] = {"site": m["site"], "feature": feature}
        pending.append((m["name"], m["parents"]))
    edges: list[tuple[str, str, str]] = []
    for child, text in pending:
        pieces = _split_parents(text)
        i = 0
        while i < len(pieces):  # a name may itself hold ", ": take the longest run of pieces that names a node
            for j in range(len(pieces), i, -1):
                parent, note = _edge_parts(", ".join(pieces[i:j]))
                if parent in nodes or j == i + 1:
                    break
            edges.append((parent, child, note))
            i = j
    for parent, _, _ in edges:
        nodes.setdefault(parent, {"site": "?", "feature": "", "missing": True})
    return nodes, edges


def _edge_parts(text: str) -> tuple[str, str]:
    m = re.match(r"^(.*?)(?: \(((?:into|via) .*)\))?$", text)
    return m[1], m[2] or ""


def _layout(nodes: dict[str, dict], edges: list[tuple[str, str, str]]):
    """A layered drawing: layer = longest path from a source (parents above children, the output alone at the
    bottom); an edge that spans layers passes through one dummy point per layer it crosses; the order within a
    layer comes from barycentre sweeps. Returns (layers: [[node or dummy key]], paths: [[keys from parent to child]])."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from((p, c) for p, c, _ in edges if p != c)
    if not nx.is_directed_acyclic_graph(g):  # the checks refuse cycles; still draw something readable
        g.remove_edges_from([e for cycle in nx.simple_cycles(g) for e in [(cycle[-1], cycle[0])]])
        if not nx.is_directed_acyclic_graph(g):
            g = nx.DiGraph(nx.dfs_tree(g))
            g.add_nodes_from(nodes)
    layer: dict = {}
    for n in nx.topological_sort(g):
        layer[n] = max((layer[p] + 1 for p in g.predecessors(n)), default=0)
    if "output" in layer and len(layer) > 1:
        layer["output"] = max(layer["output"], max(v for k, v in layer.items() if k != "output") + 1)
    expanded = nx.DiGraph()
    expanded.add_nodes_from(nodes)
    paths = []
    for k, (p, c, _) in enumerate(edges):
        if p == c or not g.has_edge(p, c):
            paths.append([p, c] if layer.get(p, 0) < layer.get(c, 0) else [])
            continue
        chain = [p] + [("dummy", k, d) for d in range(layer[p] + 1, layer[c])] + [c]
        for d, key in zip(range(layer[p] + 1, layer[c]), chain[1:-1]):
            layer[key] = d
        nx.add_path(expanded, chain)
        paths.append(chain)
    layers: dict[int, list] = {}
    for n in expanded.nodes:  # declaration order first
        layers.setdefault(layer[n], []).append(n)
    rows = [layers[d] for d in sorted(layers)]
    order = {n: i for row in rows for i, n in enumerate(row)}
    for sweep in range(6):
        down = sweep % 2 == 0
        for row in (rows[1:] if down else rows[-2::-1]):
            nbrs = expanded.predecessors if down else expanded.successors

            def key(n):
                ps = [order[q] for q in nbrs(n)]
                return (sum(ps) / len(ps)) if ps else order[n]
            row.sort(key=key)
            order.update({n: i for i, n in enumerate(row)})
    return rows, paths


def _graph(idx: int, lines: list[str]) -> str:
    if not lines:
        return ('<svg class="hypothesis-graph" viewBox="0 0 300 40" width="300" height="40">'
                '<text class="not-run" x="8" y="24">no nodes</text></svg>')
    nodes, edges = parse_nodes(lines)
    rows, paths = _layout(nodes, edges)
    char_w, box_h, gap_x, gap_y, margin, dummy_w = 6.6, 52, 28, 50, 12, 14

    def texts(n):
        d = nodes[n]
        return n, (f"@ {d['site']}" if d.get("site") else ""), _clip(d.get("feature", ""), 34)

    widths = {n: (max(90, max(len(t) for t in texts(n)) * char_w + 20) if n in nodes else dummy_w)
              for row in rows for n in row}
    row_w = [sum(widths[n] for n in row) + gap_x * (len(row) - 1) for row in rows]
    width = max(row_w) + 2 * margin
    height = len(rows) * box_h + (len(rows) - 1) * gap_y + 2 * margin
    left: dict = {}
    top: dict = {}
    for r, row in enumerate(rows):
        x = margin + (width - 2 * margin - row_w[r]) / 2
        for n in row:
            left[n], top[n] = x, margin + r * (box_h + gap_y)
            x += widths[n] + gap_x
    centre = {n: left[n] + widths[n] / 2 for n in left}

    # Ports: a node's incoming (outgoing) edges meet its top (bottom) side spread out, ordered by the other end.
    port_in: dict = {}
    port_out: dict = {}
    for k, path in enumerate(paths):
        if len(path) >= 2:
            port_out.setdefault(path[0], []).append((centre[path[1]], k))
            port_in.setdefault(path[-1], []).append((centre[path[-2]], k))

    def spread(ports: dict) -> dict:
        out = {}
        for n, items in ports.items():
            items.sort()
            span = min(widths[n] * 0.6, 18 * (len(items) - 1))
            for i, (_, k) in enumerate(items):
                out[k] = centre[n] + (span * (i / (len(items) - 1) - 0.5) if len(items) > 1 else 0)
        return out

    x_out, x_in = spread(port_out), spread(port_in)
    mid = f"arrow-{idx}"
    out = [f'<svg class="hypothesis-graph" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
           f'height="{height:.0f}" role="img" aria-label="hypothesis graph">'
           f'<defs><marker id="{mid}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           f'orient="auto-start-reverse"><path class="arrowhead" d="M0,0L10,5L0,10z"/></marker></defs>']
    notes = []
    for k, path in enumerate(paths):
        if len(path) < 2:
            continue
        p, c, note = edges[k]
        pts = [(x_out[k], top[path[0]] + box_h)]  # (x, y) pairs: leave a box's bottom, pass dummies vertically
        for d in path[1:-1]:
            pts += [(centre[d], top[d]), (centre[d], top[d] + box_h)]
        pts.append((x_in[k], top[path[-1]] - 1))
        d_attr = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"
        for i in range(1, len(pts)):
            (x1, y1), (x2, y2) = pts[i - 1], pts[i]
            if i % 2 == 1:  # between rows: an S-curve
                dy = (y2 - y1) / 2
                d_attr += f" C{x1:.1f},{y1 + dy:.1f} {x2:.1f},{y2 - dy:.1f} {x2:.1f},{y2:.1f}"
            else:  # through a dummy's row: straight down
                d_attr += f" L{x2:.1f},{y2:.1f}"
        label = f"{p} → {c}" + (f" ({note})" if note else "")
        out.append(f'<path class="edge" d="{d_attr}" marker-end="url(#{mid})"><title>{_e(label)}</title></path>')
        if note:
            (x1, y1), (x2, y2) = pts[-2], pts[-1]
            notes.append(f'<text class="edge-note" x="{(x1 + x2) / 2:.1f}" y="{(y1 + y2) / 2 + 3:.1f}" '
                         f'text-anchor="middle">{_e(note)}</text>')
    out += notes
    for n in nodes:
        if n not in left:
            continue
        x, y, w = left[n], top[n], widths[n]
        name, site, feat = texts(n)
        d = nodes[n]
        cls = "node" + (" output" if n == "output" else "") + (" exact" if d.get("feature", "").lower() == "exact" else "") \
            + (" missing" if d.get("missing") else "")
        out.append(f'<g class="{cls}" data-node="{_e(n)}"><title>{_e(n)} @ {_e(d.get("site", ""))}: '
                   f'{_e(d.get("feature", ""))}</title>'
                   f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{box_h}" rx="7"/>'
                   f'<text class="nname" x="{x + w / 2:.1f}" y="{y + 17:.1f}" text-anchor="middle">{_e(name)}</text>'
                   f'<text class="nsite" x="{x + w / 2:.1f}" y="{y + 31:.1f}" text-anchor="middle">{_e(site)}</text>'
                   f'<text class="nfeat" x="{x + w / 2:.1f}" y="{y + 45:.1f}" text-anchor="middle">{_e(feat)}</text></g>')
    out.append("</svg>")
    return "".join(out)


# -- small helpers ---------------------------------------------------------------------------

def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x, signed: bool = False, percent: bool = False, digits: int = 4) -> str:
    if not _finite(x):
        return "n/a"
    if percent:
        return f"{x * 100:.1f}%"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _short(v: float) -> str:
    if v == 0:
        return "0"
    return f"{v:.3g}"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _interval_text(run: dict, key: str) -> str:
    ci = run.get(key + "_ci")
    tail = f" [{_num(ci[0])}, {_num(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
    return _num(run.get(key)) + tail


def _regimes(run: dict) -> dict[str, dict]:
    regs = run.get("regimes") or {}
    ordered = {k: regs[k] for k in REGIMES if k in regs}
    ordered.update({k: v for k, v in regs.items() if k not in ordered})
    return {k: (v if isinstance(v, dict) else {"status": str(v)}) for k, v in ordered.items()}


def _ok(reg: dict) -> bool:
    return reg.get("status") == "ok"


def _cancels(reg: dict) -> bool:
    """The regime's ``cancels``, as the verdict rule (``scrubbing.verdict``) set it in the report."""
    return _ok(reg) and bool(reg.get("cancels"))


def _n_failed(run: dict) -> int:
    """Failed expectations of a run: those listed on its regimes, else those in its ``expectations``."""
    listed = sum(len(reg.get("failed_expectations") or []) for reg in _regimes(run).values())
    return listed or sum(1 for x in (run.get("expectations") or []) if isinstance(x, dict)
                         and x.get("passed") is False and not x.get("inconclusive"))


_CSS = """
:root{--fg:#1d2330;--muted:#667085;--line:#d9dee7;--bg:#f5f6f8;--card:#fff;--accent:#2f5bd3;
--mean:#2f6fd6;--abs:#e07b16;--noise:#6b7280;--down:#1f9e89;--up:#d6453d;--zero:#9aa3b2;
--cancel-bg:#fff3cd;--cancel-fg:#8a5a00;--fail-bg:#fde2e1;--fail-fg:#b42318;--ok-bg:#e3f6ec;--ok-fg:#16794c;--cancel-row:#fffaeb;--fail-row:#fff5f4}
@media (prefers-color-scheme:dark){:root{--fg:#e6e8ee;--muted:#9aa3b2;--line:#343a46;--bg:#14171d;--card:#1c2029;
--accent:#7aa2ff;--cancel-bg:#4a3a10;--cancel-fg:#ffd778;--fail-bg:#4b1d1a;--fail-fg:#ff9c94;--ok-bg:#173b2a;--ok-fg:#7ee2ae;--cancel-row:#2a2412;--fail-row:#2c1816}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1320px;margin:0 auto;padding:20px 24px 60px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0 0 8px}h3{font-size:14px;margin:18px 0 6px;color:var(--muted);
font-weight:600}h4{margin:0 0 2px;font-size:14px}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.lede{margin:0 0 8px;color:var(--muted)}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin:16px 0;
box-shadow:0 1px 2px rgba(0,0,0,.04)}
details.help{margin:6px 0 0;font-size:13px;color:var(--muted)}details.help summary{cursor:pointer}
details.help dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0 0}
details.help dt{font-weight:600;color:var(--fg)}details.help dd{margin:0}
.key{font-size:15px}.key.down{color:var(--down)}.key.up{color:var(--up)}.key.zero{color:var(--zero)}
.scroll{overflow-x:auto}
table#summary{border-collapse:collapse;width:100%;font-size:13px}
#summary th,#summary td{padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top;text-align:left}
#summary thead th{font-weight:600;color:var(--muted);border-bottom:2px solid var(--line);white-space:nowrap}
#summary tr.first>*{border-top:2px solid var(--line)}
#summary th.hyp{min-width:160px;font-weight:600}#summary .sub{font-weight:400;color:var(--muted);font-size:12px}
#summary td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
#summary td.regime{white-space:nowrap}
#summary tr.cancels>td{background:var(--cancel-row)}#summary tr.failed>td{background:var(--fail-row)}
#summary .ci{color:var(--muted);font-size:11.5px}
#summary td.not-run,.not-run{color:var(--muted);font-style:italic}
#summary td.flags{min-width:170px;font-size:12px}
#summary .note{color:var(--muted)}
.meter{height:4px;background:var(--line);border-radius:2px;margin-top:4px;min-width:48px}
.meter span{display:block;height:100%;background:var(--abs);border-radius:2px}
.meter.budget{max-width:240px}.meter.budget span{background:var(--accent)}
.flag{display:inline-block;font-size:11.5px;font-weight:700;letter-spacing:.02em;padding:1px 7px;border-radius:9px;
margin:0 2px 2px 0;vertical-align:middle}
.flag.cancels{background:var(--cancel-bg);color:var(--cancel-fg)}
.flag.failed{background:var(--fail-bg);color:var(--fail-fg)}
.flag.ok{background:var(--ok-bg);color:var(--ok-fg)}
.verdict{display:inline-block;font-size:12px;font-weight:800;letter-spacing:.03em;padding:2px 8px;border-radius:6px;
background:var(--line);color:var(--fg)}.verdict.small{font-size:11px;font-weight:700;padding:0 6px;margin-bottom:2px}
.verdict.holds{background:var(--ok-bg);color:var(--ok-fg)}.verdict.refuted{background:var(--fail-bg);color:var(--fail-fg)}
.verdict.cancels{background:var(--cancel-bg);color:var(--cancel-fg)}
.failed-expectation{color:var(--fail-fg);font-weight:600}
ul.expectations{list-style:none;padding:0;margin:6px 0;font-size:13px}
details.expectations{font-size:13px;margin:4px 0 8px}details.expectations summary{cursor:pointer;color:var(--ok-fg)}
ul.expectations .passed .mark{color:var(--ok-fg)}ul.expectations .inconclusive{color:var(--muted)}
.desc{margin:0 0 6px}
dl.meta{display:flex;flex-wrap:wrap;gap:2px 18px;margin:0 0 8px;font-size:12.5px}
dl.meta dt{color:var(--muted)}dl.meta dt::after{content:":"}dl.meta dd{margin:0 0 0 -14px;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
figure{margin:0}figcaption{font-size:12px;color:var(--muted);margin-bottom:4px}
figure.graph{flex:1 1 360px;overflow-x:auto}figure.gaps{flex:0 1 560px}
.regimes{display:grid;grid-template-columns:repeat(auto-fit,minmax(330px,1fr));gap:12px}
.regime-col{border:1px solid var(--line);border-radius:8px;padding:8px 12px;font-size:13px}
.regime-col.skipped{opacity:.7}
.regime-col h4 .flag{margin-left:4px}
.regime-col .help{color:var(--muted);font-size:12px;margin:0 0 6px}
.hist{margin:0 0 6px}
.adversary h5{margin:6px 0 2px;font-size:12px;color:var(--muted);font-weight:600;text-transform:uppercase;letter-spacing:.03em}
.adversary p{margin:4px 0}
h2 a.up{float:right;font-size:12px;font-weight:400}
.adversary .quiet{color:var(--muted)}
ol.refinements{margin:2px 0 4px;padding-left:20px}
table.reps{border-collapse:collapse;font-size:12.5px}table.reps th,table.reps td{padding:2px 8px 2px 0;text-align:left}
table.reps th{color:var(--muted);font-weight:500}table.reps td.num{text-align:right}
dl.details{display:grid;grid-template-columns:max-content 1fr;gap:0 10px;margin:4px 0 0;font-size:12px}
dl.details dt{color:var(--muted)}dl.details dd{margin:0;word-break:break-all}
svg{display:block;max-width:100%;height:auto;font-family:inherit}
svg text{fill:var(--fg);font-size:11px}
svg .tick,svg .axis{fill:var(--muted);font-size:10px}
svg .grid{stroke:var(--line);stroke-width:1}svg .sep{stroke:var(--line);stroke-dasharray:2 3}
svg .zero{stroke:var(--fg);stroke-width:1.2}svg .axis-line{stroke:var(--muted)}
svg .frame{fill:none;stroke:var(--line);stroke-dasharray:3 3}
svg .rlabel{font-weight:600;font-size:12px}svg .cancels-tag{fill:var(--cancel-fg);font-weight:700;font-size:10px}
svg .not-run{fill:var(--muted);font-style:italic}
.gap-chart .bar{stroke:none}.gap-chart .bar.mean{fill:var(--mean);opacity:.3}.gap-chart .bar.abs{fill:var(--abs);opacity:.3}
.gap-chart .legend .bar.mean,.gap-chart .legend .bar.abs{opacity:.8}
.gap-chart .whisker{stroke-width:1.6;fill:none}.whisker.mean{stroke:var(--mean)}.whisker.abs{stroke:var(--abs)}
.gap-chart .dot.mean{fill:var(--mean)}.gap-chart .dot.abs{fill:var(--abs)}
.gap-chart .noise{stroke:var(--noise);stroke-width:2;stroke-dasharray:3 2}.gap-chart .noise-band{fill:var(--noise);opacity:.15}
.delta-hist .bin.down{fill:var(--down)}.delta-hist .bin.up{fill:var(--up)}.delta-hist .bin.zero{fill:var(--zero)}
.delta-hist .share{font-weight:600;font-size:11.5px}.delta-hist tspan.down{fill:var(--down)}
.delta-hist tspan.up{fill:var(--up)}.delta-hist tspan.mid{fill:var(--muted)}
.delta-hist .whisker.q{stroke:var(--muted);stroke-width:1.3}.delta-hist .qbox{fill:var(--card);stroke:var(--muted)}
.delta-hist .median{stroke:var(--fg);stroke-width:2}
.hypothesis-graph .node rect{fill:var(--card);stroke:var(--accent);stroke-width:1.4}
.hypothesis-graph .node.output rect{fill:var(--accent);fill-opacity:.12}
.hypothesis-graph .node.exact rect{stroke-dasharray:5 3}
.hypothesis-graph .node.missing rect{stroke:var(--fail-fg)}
.hypothesis-graph .nname{font-weight:700;font-size:12px}
.hypothesis-graph .nsite{fill:var(--muted);font-size:11px;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.hypothesis-graph .nfeat{font-size:11px;font-style:italic}
.hypothesis-graph .edge{fill:none;stroke:var(--muted);stroke-width:1.4}
.hypothesis-graph .arrowhead{fill:var(--muted)}
.hypothesis-graph .edge-note{fill:var(--accent);font-size:10px;paint-order:stroke;stroke:var(--card);stroke-width:3px}
.empty{color:var(--muted)}
@media print{body{background:#fff}.card{box-shadow:none;break-inside:avoid}details.help{display:none}}
"""


def main(argv: list[str] | None = None) -> int:
    """``python -m scrubbing.html REPORT.json [OUT.html]``: render a JSON report written by ``--json``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or len(args) > 2 or args[0] in ("-h", "--help"):
        print("usage: python -m scrubbing.html REPORT.json [OUT.html]   (writes to stdout without OUT.html)")
        return 2
    page = render_html(json.loads(Path(args[0]).read_text()))
    if len(args) == 2:
        Path(args[1]).write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

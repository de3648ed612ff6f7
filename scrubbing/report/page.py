"""The report as one self-contained HTML page: inline CSS and inline SVG, no script, nothing fetched.

``render_html`` is a pure function of the report dict (``Report.to_dict()``, the stable JSON format). The page
carries a Content-Security-Policy that forbids every fetch and every script, so it renders the same offline, from
a mail attachment or from a CI artifact. Regimes are drawn as the report lists them: the renderer has no list of
its own. Like the terminal table, the page shows only the regimes that ran; those that did not are named beside
the verdict ("not run: worst-swap").

Stable hooks for tests and tools: ``table#summary`` (one ``tr.regime-row`` per hypothesis × regime, with
``data-run`` and ``data-regime``), ``section.hypothesis#run-N``, ``svg.gap-chart``, ``svg.delta-hist``
(``data-regime``), ``svg.hypothesis-graph``, ``div.adversary``, ``span.flag.cancels``, ``.failed-expectation``,
``td.verdict-cell span.verdict`` (classes ``holds``, ``refuted``, ``cancels``, ``inconclusive``).
"""

from __future__ import annotations

import json
from collections import Counter
from importlib.resources import files

from .charts import delta_hist, gap_chart
from .graph import graph, summary
from ..verdict import DEFAULT_TOLERANCE, RUN_RULE, VERDICTS, reasons
from .markup import Markup, el, join
from .text import adversary_note, cancels, finite, interval, number, ok, regime_help, tail_text, verdict_detail

_CI_KEYS = ("scrubbed_loss", "loss_gap", "abs_gap", "noise_floor", "cancellation", "recovered", "per_example_recovered")
_SHOWN_ELSEWHERE = {"status", "delta_histogram", "failed_expectations", "verdict", "cancels", "verdict_reason", "tail",
                    "refinements", "representatives", "classes", "unsplittable_classes", "budget",
                    *_CI_KEYS, *(k + "_ci" for k in _CI_KEYS)}
_CSP = Markup("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'")

def render_html(report: dict) -> str:
    """The whole report as one HTML document (a string). Pure: reads only ``report``; every text is escaped."""
    runs = list(report.get("runs") or [])
    body = [_header(runs), _summary_table(runs)]
    body += [_section(i, run) for i, run in enumerate(runs)]
    if not runs:
        body.append(el("p", {"class": "empty"}, "This report holds no runs."))
    css = Markup("\n" + files(__package__).joinpath("style.css").read_text(encoding="utf-8"))
    head = [el("meta", {"charset": "utf-8"}), "\n",
            el("meta", {"http-equiv": "Content-Security-Policy", "content": _CSP}), "\n",
            el("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}), "\n",
            el("title", {}, _title(runs)), "\n", el("style", {}, css), "\n"]
    page = el("html", {"lang": "en"}, "\n", el("head", {}, "\n", head), "\n",
              el("body", {}, "\n", el("main", {}, "\n", _lines(body), "\n"), "\n"), "\n")
    return "<!DOCTYPE html>\n" + page + "\n"


def _lines(parts: list) -> list:
    out = []
    for i, part in enumerate(parts):
        out += ["\n", part] if i else [part]
    return out


# -- page parts ------------------------------------------------------------------------------

def _title(runs: list[dict]) -> str:
    if len(runs) == 1:
        return f"Causal scrubbing: {runs[0].get('hypothesis', '?')}"
    return f"Causal scrubbing: {len(runs)} hypotheses"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _help(tolerance: float) -> list:
    """The page's glossary; the verdicts in the verdict rule's own words (``scrubbing.verdict``)."""
    why = reasons(tolerance)
    why["refuted"] += f"; or, with no measurable behaviour to recover, {why['refuted without behaviour']}"
    verdicts = [[el("b", {}, word), f" ({why[word]})", ", " if i < len(VERDICTS) - 1 else ""]
                for i, word in enumerate(VERDICTS)]
    return [
        ("verdict", [f"one per hypothesis, {RUN_RULE}. Per regime: ", verdicts]),
        ("scrubbed loss", ["loss when the model runs on the treeified, resampled inputs"]),
        ("E[loss] gap", ["scrubbed − model, averaged: what causal scrubbing has always reported"]),
        ("E[|Δloss|] gap", ["average of |scrubbed − model| ", el("em", {}, "per example"),
                            ": change that averages out is still change"]),
        ("noise floor", ["E|scrub₁ − scrub₂| over two independent scrubs: how far one resample moves an example.\n"
                         "Context for E[|Δloss|], not a pass mark"]),
        ("per-example recovered", ["1 − E[|Δloss|] / E|baseline − model| per example: the per-example analogue\n"
                                   "of % recovered; far below it means per-example changes cancel in the mean"]),
        ("cancel share", ["1 − |E[Δloss]| / E[|Δloss|]: near 1, the per-example changes cancel in the mean"]),
        ("% recovered", ["(baseline − scrubbed) / (baseline − model); baseline = every input resampled at random"]),
        (el("span", {"class": "flag cancels"}, "CANCELS"),
         [why["cancels"], ": scrubbing helps some inputs and hurts others, and the mean hides it"]),
        ("Δloss histograms", [el("span", {"class": "key down"}, "■"), " loss fell, ",
                          el("span", {"class": "key up"}, "■"),
                              " loss rose,\n", el("span", {"class": "key zero"}, "■"),
                              " the bin around zero; mass on both sides of the zero line is cancellation.\nThe strip below "
                              "each histogram: 5–95% range, box 25–75%, median"]),
    ]


def _header(runs: list[dict]) -> str:
    tasks = sorted({str(r.get("task", "?")) for r in runs})
    n_cancels = sum(cancels(reg) for r in runs for reg in _regimes(r).values())
    n_failed = sum(_n_failed(r) for r in runs)
    counts = Counter(r.get("verdict") or "inconclusive" for r in runs)
    verdict = [el("span", {"class": f"verdict {v}"}, f"{n} {v}") for v, n in sorted(counts.items())]
    if n_failed:
        verdict.append(el("span", {"class": "flag failed"}, f"{_plural(n_failed, 'failed expectation')}"))
    if n_cancels:
        verdict.append(el("span", {"class": "flag cancels"}, f"{_plural(n_cancels, 'regime')} CANCEL"))
    lede = el("p", {"class": "lede"}, f"{_plural(len(runs), 'hypothesis run')} on {', '.join(tasks) or 'no task'}.\n"
              "E[loss] gap and E[|Δloss|] gap side by side, each with its 95% paired-bootstrap interval. ",
              _spaced(verdict))
    tolerance = runs[0].get("tolerance", DEFAULT_TOLERANCE) if runs else DEFAULT_TOLERANCE
    terms = [[el("dt", {}, term), el("dd", {}, *text), "\n"] for term, text in _help(tolerance)]
    help_ = el("details", {"class": "help"}, el("summary", {}, "How to read this page"), "\n",
               el("dl", {}, "\n", terms), "\n")
    return el("header", {}, "\n", el("h1", {}, _title(runs)), "\n", lede, "\n", help_, "\n")


def _spaced(parts: list) -> list:
    out = []
    for i, part in enumerate(parts):
        out += [" ", part] if i else [part]
    return out


def _summary_table(runs: list[dict]) -> str:
    head = el("tr", {}, [el("th", {}, h) for h in (
        "verdict", "hypothesis", "regime", "scrubbed loss", "E[loss] gap", "E[|Δloss|] gap", "noise floor",
        "cancel share", "% recovered", "per-example recovered", "flags")])
    rows = []
    for i, run in enumerate(runs):
        regimes = _ran(run) or {"–": {"status": "no regime ran"}}
        names = list(regimes)
        for j, name in enumerate(names):
            reg = regimes[name]
            cells = []
            if j == 0:
                cells.append(el("td", {"rowspan": len(names), "class": "verdict-cell"}, _verdict_badge(run)))
                cells.append(el("th", {"scope": "rowgroup", "rowspan": len(names), "class": "hyp"},
                                el("a", {"href": f"#run-{i}"}, run.get("hypothesis", "?")),
                                el("div", {"class": "sub"}, f"{run.get('task', '')} · model "
                                   f"{number(run.get('model_loss'))} · baseline {number(run.get('baseline_loss'))}",
                                   el("br"), f"n={run.get('n_refs', '?')} seed={run.get('seed', '?')}")))
            cells.append(el("td", {"class": "regime"}, name))
            if not ok(reg):
                cells.append(el("td", {"colspan": 8, "class": "not-run"}, reg.get("status", "not run")))
            else:
                cells += [
                    _cell(reg, "scrubbed_loss"), _cell(reg, "loss_gap", signed=True), _cell(reg, "abs_gap"),
                    _cell(reg, "noise_floor"), _cell(reg, "cancellation", digits=2),
                    _cell(reg, "recovered", percent=True), _cell(reg, "per_example_recovered", percent=True),
                    el("td", {"class": "flags"}, _flags(reg))]
            cls = ("regime-row" + (" first" if j == 0 else "") + (" cancels" if cancels(reg) else "") + (" failed" if reg.get("failed_expectations") else ""))
            rows.append(el("tr", {"class": cls, "data-run": i, "data-regime": name}, cells))
    return el("section", {"class": "card"}, el("h2", {}, "Summary"),
              el("div", {"class": "scroll"}, el("table", {"id": "summary"}, el("thead", {}, head),
                                                el("tbody", {}, rows))))


def _cell(reg: dict, key: str, **fmt) -> str:
    value = reg.get(key)
    meter = None
    if key == "cancellation" and finite(value):
        meter = el("div", {"class": "meter"}, el("span", {"style": f"width:{max(0.0, min(1.0, value)) * 100:.0f}%"}))
    ci = interval(reg.get(key + "_ci"), **fmt)
    return el("td", {"class": f"num {key}"}, number(value, **fmt), el("div", {"class": "ci"}, ci) if ci else None,
              meter)


def _verdict_badge(run: dict, detail: bool = True) -> str:
    verdict = run.get("verdict") or "inconclusive"
    sub = verdict_detail(run.get("verdict_regimes") or [], run.get("verdict_not_run") or [])
    return join(el("span", {"class": f"verdict {verdict}", "title": run.get("verdict_reason", "")}, verdict.upper()),
                el("div", {"class": "sub"}, sub) if sub and detail else None)


def _flags(reg: dict) -> list:
    out = []
    if reg.get("verdict"):
        out.append(el("span", {"class": f"verdict small {reg['verdict']}", "title": reg.get("verdict_reason", "")},
                      reg["verdict"]))
    if cancels(reg):
        out.append(el("span", {"class": "flag cancels", "title": reg.get("verdict_reason", "")}, "CANCELS"))
    out += [el("div", {"class": "failed-expectation"}, f"FAIL {check}") for check in reg.get("failed_expectations") or []]
    note = adversary_note(reg)
    if note:
        out.append(el("div", {"class": "note"}, note))
    if isinstance(reg.get("tail"), dict):
        out.append(el("div", {"class": "note tail"}, tail_text(reg["tail"])))
    return out


def _section(i: int, run: dict) -> str:
    regimes = _ran(run)
    meta = [
        ("task", run.get("task")), ("model loss", _interval_text(run, "model_loss")),
        ("baseline loss", _interval_text(run, "baseline_loss")), ("references", run.get("n_refs")),
        ("seed", run.get("seed")), ("plan digest", run.get("plan_digest")),
    ]
    meta_html = [[el("dt", {}, k), el("dd", {}, v if v not in (None, "") else "–")] for k, v in meta]
    desc = run.get("description") or ""
    columns = []
    for name, reg in regimes.items():
        short = _flags_short(reg)
        columns.append(el(
            "div", {"class": "regime-col", "data-regime": name},
            el("h4", {}, name, [" ", short] if short else None),
            el("p", {"class": "help"}, regime_help(name)),
            el("figure", {"class": "hist"}, el("figcaption", {}, "per-example Δloss = scrubbed − model"),
               delta_hist(name, reg)),
            _adversary(name, reg)))
    gaps = el("figure", {"class": "gaps"}, el("figcaption", {}, "gaps per regime (whiskers: 95% interval)"),
              gap_chart(regimes)) if regimes else el("p", {"class": "not-run"}, "no regime ran")
    grid = el("div", {"class": "grid"}, "\n", _graph_figure(i, run), "\n", gaps, "\n")
    why_not = [el("p", {"class": "not-run"}, f"{name}: {reg.get('status')}") for name, reg in _regimes(run).items()
               if not ok(reg) and reg.get("status") != "not run"]  # as the terminal table notes them
    return el(
        "section", {"class": "card hypothesis", "id": f"run-{i}", "data-run": i}, "\n",
        el("h2", {}, run.get("hypothesis", "?"), _section_flags(run), el("a", {"class": "up", "href": "#summary"},
                                                                           "↑ summary")), "\n",
        [el("p", {"class": "desc"}, desc), "\n"] if desc else "\n",
        el("dl", {"class": "meta"}, meta_html), "\n",
        _expectations(run), "\n",
        grid, "\n",
        el("h3", {}, "Per regime: how each example's loss moved, and what the adversary chose"), "\n",
        el("div", {"class": "regimes"}, columns), "\n", [[p, "\n"] for p in why_not])


def _graph_figure(i: int, run: dict) -> str:
    """The hypothesis graph at its own size, in a box that scrolls; a large one takes the card's full width and
    folds away (``details``) so the charts below it stay one click from the summary."""
    n_nodes = len((run.get("graph") or {}).get("nodes") or [])
    wide = n_nodes > 12
    return el("figure", {"class": "graph" + (" wide" if wide else "")},
              el("details", {"open": ""}, el("summary", {}, f"hypothesis graph: {summary(run)}"),
                 el("div", {"class": "graph-scroll"}, graph(i, run))))


def _flags_short(reg: dict) -> str:
    return join(el("span", {"class": "flag cancels"}, "CANCELS") if cancels(reg) else None,
                el("span", {"class": "flag failed"}, "FAIL") if reg.get("failed_expectations") else None)


def _section_flags(run: dict) -> list:
    out = [_verdict_badge(run, detail=False)]
    for name, reg in _regimes(run).items():
        if cancels(reg):
            out.append(el("span", {"class": "flag cancels"}, f"CANCELS · {name}"))
        if reg.get("failed_expectations"):
            out.append(el("span", {"class": "flag failed"}, f"FAIL · {name}"))
    return [" ", _spaced(out)]


def _expectations(run: dict) -> str:
    items = [x for x in (run.get("expectations") or []) if isinstance(x, dict)]
    failed, others = [], []
    n_ok = 0
    for x in items:
        state = "inconclusive" if x.get("inconclusive") else ("passed" if x.get("passed") else "failed")
        text = x.get("message") or x.get("name") or ""
        mark = {"passed": "✓", "failed": "✗", "inconclusive": "?"}[state]
        li = el("li", {"class": "failed-expectation" if state == "failed" else state},
                el("span", {"class": "mark"}, mark), f" {x.get('name', '')}",
                f" — {text}" if text and text != x.get("name") else None)
        (failed if state == "failed" else others).append(li)
        n_ok += state == "passed"
    out = [el("ul", {"class": "expectations"}, failed) if failed else None]
    if others:
        label = f"{n_ok} expectation{'s' * (n_ok != 1)} hold" + ("s" if n_ok == 1 else "")
        if len(others) > n_ok:
            label += f", {len(others) - n_ok} inconclusive"
        out.append(el("details", {"class": "expectations"}, el("summary", {}, f"✓ {label}"),
                      el("ul", {"class": "expectations"}, others)))
    return join(out)


def _adversary(name: str, reg: dict) -> str:
    head = el("h5", {}, "what the adversary chose") if name != "random" else None
    note = adversary_note(reg)  # the one note, as the table prints it; then what it is made of
    parts = [el("p", {"class": "note"}, note)] if note else []
    if reg.get("refinements"):
        parts.append(el("ol", {"class": "refinements"}, [el("li", {}, r) for r in reg["refinements"]]))
    if isinstance(reg.get("representatives"), dict) and reg["representatives"]:
        reps, classes = reg["representatives"], reg.get("classes") or {}
        small = reg.get("unsplittable_classes") or {}
        rows = [el("tr", {}, el("td", {}, node), el("td", {"class": "num"}, n,
                                                    f" / {classes[node]}" if node in classes else None),
                   el("td", {"class": "num"}, small.get(node, 0))) for node, n in reps.items()]
        columns = el("tr", {}, el("th", {}, "node"), el("th", {}, "classes swapped to worst rep."),
                     el("th", {}, "too small to split"))
        parts.append(el("table", {"class": "reps"}, el("thead", {}, columns), el("tbody", {}, rows)))
    budget = reg.get("budget")
    if isinstance(budget, dict) and budget:
        limit, used = budget.get("limit"), budget.get("used")
        text = f"budget: {used if used is not None else '?'} of {limit if limit is not None else '?'} evaluations"
        if budget.get("candidates") is not None:
            text += f" · {budget['candidates']} candidate refinements"
        parts.append(el("p", {"class": "budget"}, text))
        if finite(limit) and finite(used) and limit > 0:
            parts.append(el("div", {"class": "meter budget"},
                            el("span", {"style": f"width:{min(1.0, used / limit) * 100:.0f}%"})))
    rest = {k: v for k, v in reg.items() if k not in _SHOWN_ELSEWHERE}
    if rest:
        parts.append(el("dl", {"class": "details"}, [[el("dt", {}, k.replace("_", " ")), el("dd", {}, _detail_text(v))]
                                                     for k, v in rest.items()]))
    parts += [el("p", {"class": "failed-expectation"}, f"FAIL {check}") for check in reg.get("failed_expectations") or []]
    if not parts:
        parts.append(el("p", {"class": "quiet"}, "no search: classes are resampled uniformly"))
    return el("div", {"class": "adversary", "data-regime": name}, head, parts)


def _detail_text(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return number(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


# -- reading the report dict -------------------------------------------------------------------

def _interval_text(run: dict, key: str) -> str:
    ci = interval(run.get(key + "_ci"))
    return number(run.get(key)) + (f" {ci}" if ci else "")


def _regimes(run: dict) -> dict[str, dict]:
    """The run's regimes, in the order the report gives them."""
    return {k: (v if isinstance(v, dict) else {"status": str(v)}) for k, v in (run.get("regimes") or {}).items()}


def _ran(run: dict) -> dict[str, dict]:
    """The regimes that ran, in the report's order: the only ones the page draws."""
    return {k: v for k, v in _regimes(run).items() if ok(v)}


def _n_failed(run: dict) -> int:
    """Failed expectations of a run: those listed on its regimes, else those in its ``expectations``."""
    listed = sum(len(reg.get("failed_expectations") or []) for reg in _regimes(run).values())
    return listed or sum(1 for x in (run.get("expectations") or []) if isinstance(x, dict)
                         and x.get("passed") is False and not x.get("inconclusive"))

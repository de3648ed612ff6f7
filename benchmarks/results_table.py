"""Render a `scrub --json` report as the Markdown table used in benchmarks/RESULTS.md.

    python -m benchmarks.results_table report.json
"""

from __future__ import annotations

import json
import sys

from scrubbing.report import adversary_note


def _ci(regime: dict, key: str, percent: bool = False) -> str:
    value, (low, high) = regime[key], regime[f"{key}_ci"]
    if value is None:
        return "n/a"
    if percent:
        return f"{value * 100:.1f} [{low * 100:.1f}, {high * 100:.1f}]"
    return f"{value:+.4f} [{low:+.4f}, {high:+.4f}]"


def _tail(regime: dict) -> str:
    tail = regime.get("tail") or {}
    bound = lambda key: "n/a" if tail.get(f"{key}_upper") is None else f"{tail[f'{key}_upper']:.3f}"  # noqa: E731
    return f"{bound('p95')} / {bound('p99')}"


def table(report: dict) -> str:
    lines = ["| task | hypothesis | verdict | regime | regime verdict | scrubbed loss | E[loss] gap [95% CI] | "
             "E[\\|Δloss\\|] gap [95% CI] | noise floor | cancel share | % recovered [95% CI] | "
             "per-example recovered [95% CI] | \\|Δloss\\| p95 / p99 (95% UCB) | adversary chose |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        verdict = run["verdict"] + (f" ({', '.join(run['verdict_regimes'])})" if run["verdict_regimes"] else "")
        for name, regime in run["regimes"].items():
            if regime.get("status") != "ok":
                continue
            chose = adversary_note(regime) or "—"
            lines.append(f"| {run['task']} | {run['hypothesis']} | {verdict} | {name} | {regime['verdict']} | "
                         f"{regime['scrubbed_loss']:.4f} | "
                         f"{_ci(regime, 'loss_gap')} | {_ci(regime, 'abs_gap')} | {regime['noise_floor']:.4f} | "
                         f"{regime['cancellation']:.2f} | {_ci(regime, 'recovered', True)} | "
                         f"{_ci(regime, 'per_example_recovered', True)} | {_tail(regime)} | "
                         f"{chose if name != 'random' else ''} |")
    return "\n".join(lines)


def models(report: dict) -> str:
    seen, lines = set(), ["| task | model loss | baseline loss | n refs | seed |", "|---|---|---|---|---|"]
    for run in report["runs"]:
        if run["task"] not in seen:
            seen.add(run["task"])
            lines.append(f"| {run['task']} | {run['model_loss']:.4f} | {run['baseline_loss']:.4f} | {run['n_refs']} | "
                         f"{run['seed']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    report = json.load(open(sys.argv[1]))
    print(models(report))
    print()
    print(table(report))

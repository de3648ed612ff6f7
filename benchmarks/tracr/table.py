"""The tracr table of benchmarks/RESULTS.md from a ``scrub run --json`` report of the tracr hypothesis files.

    scrub run hypotheses/tracr_reverse.py hypotheses/tracr_frac_prevs.py hypotheses/tracr_succ_length.py \\
        --json tracr.json --check
    python benchmarks/tracr/table.py tracr.json
"""

from __future__ import annotations

import json
import sys

from scrubbing.regimes import REGISTRY

REGIMES = tuple(REGISTRY)  # one column per regime, in the registry's order


def _cell(figures: dict) -> str:
    if figures.get("status") != "ok":
        return "—"
    low, high = figures["recovered_ci"]
    return f"{100 * figures['recovered']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def table(report: dict) -> str:
    lines = ["| task | hypothesis | " + " | ".join(f"% recovered, {r}" for r in REGIMES)
             + " | E[\\|Δloss\\|] (random) | checks |",
             "|---|---|" + "---|" * len(REGIMES) + "---|---|"]
    for run in report["runs"]:
        checks = run.get("expectations", [])
        passed = sum(c["passed"] for c in checks)
        abs_gap = run["regimes"]["random"].get("abs_gap")
        lines.append(f"| {run['task']} | {run['hypothesis']} | "
                     + " | ".join(_cell(run["regimes"][r]) for r in REGIMES)
                     + f" | {'—' if abs_gap is None else f'{abs_gap:.3g}'} | {passed}/{len(checks)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(json.load(open(sys.argv[1]))))

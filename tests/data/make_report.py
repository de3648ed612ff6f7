"""Writes ``tests/data/report.json``, the report the renderer tests read (run once, checked in; rerun after a
change to the JSON format): ``PYTHONPATH=. python tests/data/make_report.py``.

Real runs, small: a true circuit, a false one, a cancelling one, one with a single regime, and the refined
induction hypothesis (65 nodes once its edge features are stated as nodes: for the graph layout)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.synthetic.tasks import cancel_hypotheses, cancel_task, logic_hypotheses, logic_task
from scrubbing import Report, scrub
from scrubbing.regimes import REGISTRY


def main() -> None:
    logic, cancel = logic_task(), cancel_task()
    lh, ch = logic_hypotheses(), cancel_hypotheses()
    every = list(REGISTRY)
    runs = [
        scrub(lh["true"], logic, n_refs=200, seed=0, regimes=every, budget=8, n_boot=200),
        scrub(lh["forgets xor"], logic, n_refs=200, seed=0, regimes=every, budget=8, n_boot=200),
        scrub(ch["ignores t"], cancel, n_refs=200, seed=0, regimes=every, budget=8, n_boot=200),
        scrub(ch["true"], cancel, n_refs=200, seed=0, regimes=["random"], n_boot=200),
    ]
    from benchmarks.induction.task import load_task
    from hypotheses.induction import hypotheses

    refined = next(h for h in hypotheses if h.name.startswith("refined"))
    runs.append(scrub(refined, load_task(), n_refs=100, seed=0, regimes=["random"], n_boot=200))
    out = Path(__file__).with_name("report.json")
    out.write_text(json.dumps(Report(runs).to_dict(), indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

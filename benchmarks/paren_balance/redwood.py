"""Redwood's paren claims on both data sets, beside the published figures (random regime).

    PYTHONPATH=. python -m benchmarks.paren_balance.redwood --json paren_both.json   # n_refs=1000, seed 0

Each claim of ``hypotheses/paren_balance.py`` and ``hypotheses/paren_balance_nodes.py`` runs on our generated
evaluation set and on a seeded 3000-row subset of Redwood's own data set (``../shared/data/redwood_parens.csv``,
read in place, never copied into the repository); our model's tokenisation ([BOS] + parens + [PAD], 42
positions) reads Redwood's strings as they are (2 to 40 characters). Without the file the Redwood column is
left out, and the command says so. On each data set phi (claim 2b) is fitted on that set's own rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import hypotheses.paren_balance as claims
import hypotheses.paren_balance_nodes as nodes
from benchmarks.paren_balance.task import accuracy, load_task
from scrubbing.run import scrub

SOURCES = ("generated", "redwood")


def published(name: str) -> str:
    """The writeup's figure (Redwood's later code's in brackets), from the hypothesis files."""
    figure = claims.PUBLISHED.get(name, nodes.PUBLISHED.get(name))
    return "—" if figure is None else f"{figure[0] * 100:.0f} % ({figure[1] * 100:.0f} %)"


def runs(source: str, n_refs: int, seed: int) -> dict | None:
    """Every claim on one data set, random regime; None when that data set is absent."""
    if load_task(source=source) is None:
        return None
    plain, split = claims.task(source=source), nodes.task(source=source)
    out = {"task": plain.name, "accuracy": accuracy(plain), "runs": []}
    for task, hypotheses in ((plain, claims.hypotheses), (split, nodes.hypotheses)):
        for h in hypotheses:
            start = time.time()
            run = scrub(h, task, n_refs=n_refs, seed=seed, regimes=["random"]).to_dict()
            random = run["regimes"]["random"]
            print(f"{source:9s} {h.name:28s} {random['recovered']:7.1%} [{random['recovered_ci'][0]:.1%}, "
                  f"{random['recovered_ci'][1]:.1%}]  ({time.time() - start:.0f} s)", flush=True)
            out["runs"].append(run)
    return out


def table(results: dict[str, dict | None]) -> str:
    """Markdown: one row per claim, % recovered [95% CI] per data set, the published figure."""
    present = [s for s in SOURCES if results.get(s) is not None]
    names = [run["hypothesis"] for run in results[present[0]]["runs"]]
    lines = ["| claim | " + " | ".join(present) + " | published |", "|---" * (len(present) + 2) + "|"]
    for name in names:
        cells = []
        for source in present:
            random = next(r for r in results[source]["runs"] if r["hypothesis"] == name)["regimes"]["random"]
            low, high = random["recovered_ci"]
            cells.append(f"{random['recovered'] * 100:.1f} % [{low * 100:.1f}, {high * 100:.1f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {published(name)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-refs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {source: runs(source, args.n_refs, args.seed) for source in SOURCES}
    if results["redwood"] is None:
        print("Redwood's data set is absent: the table has the generated set only.")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

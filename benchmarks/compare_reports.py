"""Where two `scrub --json` reports differ: the byte-for-byte check behind "same seed, same numbers".

    python -m benchmarks.compare_reports old.json new.json [--ignore graph --ignore plan_digest]

Runs are paired by (task, hypothesis); each difference is a key path inside a run, with both values (for numbers,
how far apart). Values of one list that differ at several indices are one line (``edges[*]``, with the count and
the largest difference). ``--ignore KEY`` leaves out every key of that name, at any depth (a key added on
purpose since the older report). Exit status 0 when nothing but ignored keys differs, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

_MISSING = "<absent>"


def differences(a, b, path: str = "", ignore: frozenset = frozenset()) -> list[tuple[str, object, object]]:
    """(path, value in a, value in b) for every leaf where ``a`` and ``b`` differ; a key in one only is a leaf."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in [*a, *(k for k in b if k not in a)]:
            if key in ignore:
                continue
            where = f"{path}/{key}" if path else key
            if key not in a or key not in b:
                out.append((where, a.get(key, _MISSING), b.get(key, _MISSING)))
            else:
                out += differences(a[key], b[key], where, ignore)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]", ignore)]
    same = type(a) is type(b) and a == b
    return [] if same else [(path, a, b)]


def _gap(a, b) -> float | None:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(a - b)
    return None


def _short(value, width: int = 60) -> str:
    text = json.dumps(value) if value is not _MISSING else value
    return text if len(text) <= width else text[:width - 1] + "…"


def summarised(diffs: list[tuple[str, object, object]]) -> list[str]:
    """One line per difference, the indices of one list that all differ folded into ``[*]``."""
    groups: dict[str, list[tuple[str, object, object]]] = {}
    for path, a, b in diffs:
        groups.setdefault(re.sub(r"\[\d+\]$", "[*]", path), []).append((path, a, b))
    lines = []
    for key, members in groups.items():
        if len(members) == 1:
            path, a, b = members[0]
            gap = _gap(a, b)
            lines.append(f"{path}: {_short(a)} -> {_short(b)}" + (f" (|Δ| {gap:.3g})" if gap is not None else ""))
        else:
            gaps = [g for g in (_gap(a, b) for _, a, b in members) if g is not None]
            lines.append(f"{key}: {len(members)} values differ" + (f", largest |Δ| {max(gaps):.3g}" if gaps else ""))
    return lines


def compare(old: dict, new: dict, ignore=()) -> tuple[list[str], bool]:
    """The report's lines and whether the two reports are the same (apart from ``ignore``d keys)."""
    ignore = frozenset(ignore)
    key = lambda run: (run.get("task"), run.get("hypothesis"))  # noqa: E731
    old_runs, new_runs = {key(r): r for r in old["runs"]}, {key(r): r for r in new["runs"]}
    lines, same = [], True
    for name, runs in (("first", old_runs.keys() - new_runs.keys()), ("second", new_runs.keys() - old_runs.keys())):
        for task, hypothesis in sorted(runs, key=str):
            lines.append(f"only in the {name} report: [{task}] {hypothesis}")
            same = False
    for run_key in (k for k in old_runs if k in new_runs):
        diffs = differences(old_runs[run_key], new_runs[run_key], ignore=ignore)
        if diffs:
            same = False
            lines.append(f"[{run_key[0]}] {run_key[1]}: {len(diffs)} value(s) differ")
            lines += [f"    {line}" for line in summarised(diffs)]
    n = len(old_runs.keys() & new_runs.keys())
    lines.append(f"{n} runs in both; " + ("identical" if same else "they differ")
                 + (f" (ignoring {', '.join(sorted(ignore))})" if ignore else ""))
    return lines, same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY",
                        help="leave out every key of this name, at any depth (repeatable)")
    args = parser.parse_args(argv)
    with open(args.first) as f, open(args.second) as g:
        lines, same = compare(json.load(f), json.load(g), args.ignore)
    print("\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

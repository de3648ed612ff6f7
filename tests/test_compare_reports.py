"""benchmarks/compare_reports.py: where two JSON reports differ, and nothing when they do not."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from benchmarks.compare_reports import compare, main

DATA = Path(__file__).parent / "data" / "report.json"  # real runs, checked in


def test_a_report_equals_itself_and_every_change_is_named(tmp_path):
    old = json.loads(DATA.read_text())
    lines, same = compare(old, copy.deepcopy(old))
    assert same and lines == [f"{len(old['runs'])} runs in both; identical"]

    new = copy.deepcopy(old)
    random = new["runs"][0]["regimes"]["random"]
    random["scrubbed_loss"] += 1e-9  # one ulp-sized change is a difference
    random["delta_histogram"]["edges"] = [e + 0.5 for e in random["delta_histogram"]["edges"]]
    new["runs"][1]["added"] = True
    del new["runs"][2]["graph"]
    new["runs"][3]["hypothesis"] = "renamed"
    lines, same = compare(old, new)
    text = "\n".join(lines)
    assert not same
    assert "regimes/random/scrubbed_loss: " in text and "(|Δ| 1e-09)" in text
    n_edges = len(random["delta_histogram"]["edges"])
    assert f"regimes/random/delta_histogram/edges[*]: {n_edges} values differ, largest |Δ| 0.5" in text
    assert 'added: <absent> -> true' in text and "graph: {" in text and "-> <absent>" in text
    assert f"only in the first report: [{old['runs'][3]['task']}] {old['runs'][3]['hypothesis']}" in text
    assert f"only in the second report: [{old['runs'][3]['task']}] renamed" in text

    del new["runs"][3], old["runs"][3]
    for run in new["runs"]:
        run.pop("graph", None)
    new["runs"][0] = copy.deepcopy(old["runs"][0])
    del new["runs"][1]["added"]
    (tmp_path / "a.json").write_text(json.dumps(old))
    (tmp_path / "b.json").write_text(json.dumps(new))
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 1
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--ignore", "graph"]) == 0

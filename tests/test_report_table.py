"""The terminal table: 100 columns into a log, only the regimes that ran, figures as the HTML page writes them."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from scrubbing.report import Report, render_html
from scrubbing.report.text import interval, number

DATA = Path(__file__).parent / "data" / "report.json"  # real runs (tests/data/make_report.py), checked in


def _printed(data: dict, **console) -> str:
    out = io.StringIO()
    Report.from_dict(data).print(Console(file=out, color_system=None, **console))
    return out.getvalue()


def test_table_fits_100_columns_and_prints_only_regimes_that_ran():
    data = json.loads(DATA.read_text())
    text = _printed(data, width=200)  # not a terminal: 100 columns whatever the console's width
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100 and max(map(len, lines)) >= 90
    single = data["runs"][3]  # only `random` ran
    assert [k for k, v in single["regimes"].items() if v["status"] == "ok"] == ["random"]
    block = text.split(single["hypothesis"])[1].split(data["runs"][4]["hypothesis"])[0]
    assert "random" in block and "not run" in block  # named once, under the verdict
    assert not any(line.lstrip().startswith(("adversarial-join", "worst-swap")) for line in block.splitlines())
    assert "worst-swap: " not in block
    # a terminal narrower than 100 columns gets the table at its width
    narrow = _printed(data, width=80, force_terminal=True)
    assert max(map(len, narrow.splitlines())) <= 80


def test_table_and_page_write_intervals_alike():
    """One formatting function (``text.interval``) for both faces: the same figures, the same strings."""
    data = json.loads(DATA.read_text())
    reg = data["runs"][2]["regimes"]["random"]
    text, page = _printed(data), render_html(data)
    for key, fmt in (("loss_gap", {"signed": True}), ("abs_gap", {}), ("recovered", {"percent": True})):
        low, high = interval(reg[key + "_ci"], **fmt)[1:-1].split(", ")
        assert f"[{low}," in text and f"{high}]" in text
        assert f'<div class="ci">{interval(reg[key + "_ci"], **fmt)}</div>' in page
        assert number(reg[key], **fmt) in text and number(reg[key], **fmt) in page

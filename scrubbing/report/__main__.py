"""``python -m scrubbing.report REPORT.json [-o OUT.html]``: render a JSON report written by ``scrub --json``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .page import render_html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scrubbing.report",
                                     description="Render a JSON report (scrub --json) as a self-contained HTML page.")
    parser.add_argument("report", type=Path, help="the JSON report")
    parser.add_argument("-o", "--output", type=Path, help="write the page here (default: standard output)")
    args = parser.parse_args(argv)
    page = render_html(json.loads(args.report.read_text(encoding="utf-8")))
    if args.output is None:
        sys.stdout.write(page)
    else:
        args.output.write_text(page, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

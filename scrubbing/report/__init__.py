"""Results of runs and their renderings, one module each:

- ``results``: ``RegimeResult``, ``RunResult``, ``Report`` and their JSON form (the stable format);
- ``table``: the terminal table; ``page``: the self-contained HTML page, with ``charts`` (gap chart, Δloss
  histogram) and ``graph`` (the hypothesis graph); ``text``: the wording both faces share; ``markup``: the one
  escaping helper every HTML/SVG element goes through; ``style.css``: the page's stylesheet, inlined.

``python -m scrubbing.report REPORT.json -o REPORT.html`` renders a JSON report written earlier.
"""

from .page import render_html
from .results import METRICS, RegimeResult, Report, RunResult
from .text import adversary_note, tail_text

__all__ = ["METRICS", "RegimeResult", "Report", "RunResult", "adversary_note", "render_html", "tail_text"]

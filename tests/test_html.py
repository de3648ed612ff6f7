"""The HTML report: a self-contained page (no network, no script) with the table, the charts and the graph.

The browser test loads the page in headless Chromium over the DevTools protocol (``--remote-debugging-pipe``,
no Python dependency) and fails on any console error, uncaught exception, CSP violation or non-local request.
"""

from __future__ import annotations

import base64
import copy
import fcntl
import html
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from scrubbing.regimes import REGISTRY
from scrubbing.report import adversary_note, render_html
from scrubbing.report.__main__ import main as render_main
from scrubbing.report.text import regime_help

DATA = Path(__file__).parent / "data" / "report.json"  # real runs (tests/data/make_report.py), checked in


@pytest.fixture(scope="module")
def report() -> dict:
    """A true circuit, a false one, a cancelling one, one run with a single regime, the 70-node induction claim."""
    out = json.loads(DATA.read_text())
    # A failed expectation, as the pytest plugin records it on a regime, and a name that needs escaping.
    out["runs"][1]["regimes"]["random"]["failed_expectations"] = ["recovered >= 0.9 in random: got 41% <sic>"]
    out["runs"][0]["hypothesis"] = "true <circuit> & \"friends\""
    return out


def _rows(run: dict) -> int:
    """The regimes the page draws for a run: those that ran."""
    return sum(reg["status"] == "ok" for reg in run["regimes"].values())


def test_render_html_has_table_charts_and_graph(report):
    page = render_html(report)
    assert render_html(copy.deepcopy(report)) == page  # a pure function of the dict
    assert page.startswith("<!DOCTYPE html>")
    runs = report["runs"]
    n_runs, n_rows = len(runs), sum(_rows(r) for r in runs)

    assert page.count('<table id="summary">') == 1
    assert len(re.findall(r'<tr class="regime-row[^"]*" data-run="\d+" data-regime="', page)) == n_rows
    for header in ("verdict", "scrubbed loss", "E[loss] gap", "E[|Δloss|] gap", "noise floor", "cancel share",
                   "% recovered", "per-example recovered"):
        assert f"<th>{header}</th>" in page
    # One verdict per hypothesis, colour-coded, exactly as the JSON gives it.
    badges = re.findall(r'<td rowspan="\d" class="verdict-cell"><span class="verdict (\w+)"', page)
    assert badges == [run["verdict"] for run in runs]
    assert badges[0] == "holds" and badges[1] == "refuted"
    assert page.count('<svg class="gap-chart"') == n_runs
    assert page.count('<svg class="hypothesis-graph"') == n_runs
    assert page.count('<svg class="delta-hist"') == n_rows
    assert page.count('class="bin ') > n_rows  # the histograms that ran have bars
    assert page.count('class="zero"') >= n_rows  # zero is marked in every histogram and gap chart
    assert page.count('<section class="card hypothesis" id="run-') == n_runs
    assert page.count('<div class="adversary') == n_rows

    for name in REGISTRY:  # each regime explained in its own words
        assert f'<p class="help">{html.escape(regime_help(name))}</p>' in page
    # Cancellation: the cancel task's false claim is flagged, the true logic circuit is not.
    cancels = [i for i, run in enumerate(runs) for reg in run["regimes"].values()
               if reg["status"] == "ok" and reg["cancels"]]
    assert 2 in cancels and 0 not in cancels
    assert page.count('<span class="flag cancels" title=') == len(cancels)
    assert '<div class="failed-expectation">FAIL recovered &gt;= 0.9 in random: got 41% &lt;sic&gt;</div>' in page
    # What the adversaries chose: the budget and the refinements or representatives.
    notes = [adversary_note(reg) for run in runs for name, reg in run["regimes"].items() if reg["status"] == "ok"
             and name != "random"]
    assert notes and all(f'<p class="note">{html.escape(note)}</p>' in page for note in notes)  # the table's words
    assert "budget: " in page and "classes swapped to worst rep." in page
    # Intervals as the table writes them: a signed figure's interval is signed.
    assert re.search(r"<title>E\[loss\] gap [+-]\d\.\d{4} \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\]</title>", page)

    # The graph, from the run's structured `graph`: every node in its site's box, arrows from parents to children.
    graph = page.split('<svg class="hypothesis-graph"')[3].split("</svg>")[0]  # the cancel task's "ignores t"
    for node, site in (("s", "emb_s"), ("agree", "agree"), ("y", "emb_y"), ("output", "output")):
        assert f'data-node="{node}"' in graph and f'data-site="{site}"' in graph
    assert graph.count('class="edge') == 3 and 'marker-end="url(#arrow-2)"' in graph

    # Escaped, self-contained, no script.
    assert "true &lt;circuit&gt; &amp; &quot;friends&quot;" in page and "<circuit>" not in page
    assert not re.search(r"https?://", page.replace("http://www.w3.org/2000/svg", ""))
    assert "<script" not in page.lower() and "@import" not in page and "url(http" not in page
    assert "default-src 'none'" in page


def _boxes(svg: str) -> dict[str, tuple[float, float, float, float]]:
    return {html.unescape(name): tuple(map(float, box)) for name, *box in re.findall(
        r'<g class="node[^"]*" data-node="([^"]+)"><title>[^<]*</title><rect x="([\d.]+)" y="([\d.]+)" '
        r'width="([\d.]+)" height="([\d.]+)"', svg)}


def _overlap(a, b) -> bool:
    (xa, ya, wa, ha), (xb, yb, wb, hb) = a, b
    return not (xa + wa <= xb or xb + wb <= xa or ya + ha <= yb or yb + hb <= ya)



def test_only_regimes_that_ran_are_drawn(report):
    """Like the terminal table: a regime that did not run has no row, chart, histogram or card; the verdict names it."""
    run = report["runs"][3]  # only `random` ran
    assert list(run["regimes"]) == list(REGISTRY) and run["verdict_not_run"] == list(REGISTRY)[1:]
    page = render_html(report)
    summary = page.split('<table id="summary">')[1].split("</table>")[0]
    rows = re.findall(r'<tr class="regime-row[^"]*" data-run="3" data-regime="([^"]+)"', summary)
    assert rows == ["random"]
    badge = summary.split('data-run="3"')[1].split("</td>")[0]
    assert f"not run: {', '.join(list(REGISTRY)[1:])}" in badge
    section = page.split('<section class="card hypothesis" id="run-3"')[1].split("</section>")[0]
    assert set(re.findall(r'data-regime="([^"]+)"', section)) == {"random"}
    assert "not run" not in page.replace(f"not run: {', '.join(list(REGISTRY)[1:])}", "")
    # a regime not run for a stated reason is named with it, as the terminal table names it
    why = copy.deepcopy(report)
    why["runs"][3]["regimes"]["worst-swap"] = {"status": "skipped: every class is a singleton"}
    section = render_html(why).split('id="run-3"')[1].split("</section>")[0]
    assert '<p class="not-run">worst-swap: skipped: every class is a singleton</p>' in section
    assert 'data-regime="worst-swap"' not in section

def test_graph_of_the_refined_induction_claim_is_layered_by_model_depth(report):
    """The refined induction claim (65 nodes, its edge features stated as nodes): columns follow the model
    (embed, layer 0, layer 1, output), the nodes of a site share its box, and the drawing keeps its size."""
    run = report["runs"][4]
    assert len(run["graph"]["nodes"]) == 65
    svg = render_html({"runs": [run]}).split('<svg class="hypothesis-graph"')[1].split("</svg>")[0]
    boxes = _boxes(svg)
    assert len(boxes) == 65
    x = {n: boxes[n][0] for n in boxes}
    assert x["embed->a1.0.q"] < x["a0.0->a1.0.q"] == x["a0.3->a1.2.v"] < x["a1.0"] == x["a1.3"] < x["output"]
    assert not any(_overlap(boxes[a], boxes[b]) for a in boxes for b in boxes if a < b)
    assert len(re.findall(r'<g class="group" data-site=', svg)) == 10  # embed, a0.0-a0.3, a1.0-a1.3, output
    width = float(re.search(r'width="([\d.]+)"', svg)[1])
    assert 600 < width < 1400  # four columns, not 65 boxes side by side
    assert "hypothesis graph: 65 nodes at 10 sites" in render_html({"runs": [run]})


def _seventy_nodes() -> dict:
    """A made-up 70-node graph over five depths: long names and features, q/k/v slots, edges that skip columns,
    a node with many parents, and sites that hold many nodes."""
    nodes, depth_of = [], {}
    for d, (site_count, per_site) in enumerate(((1, 13), (4, 5), (4, 6), (3, 4), (1, 1))):
        for s in range(site_count):
            site = f"L{d}.site_{s}" if d < 4 else "output"
            for k in range(per_site):
                name = "output" if d == 4 else f"{site}/node_{k}" + ("_with_a_long_name" if (s + k) % 3 == 0 else "")
                parents = []
                if d:
                    lower = [n for n in nodes if depth_of[n["name"]] < d]
                    for j in range(3 if d < 4 else 8):
                        p = lower[(7 * len(nodes) + 5 * j) % len(lower)]
                        parents.append({"node": p["name"], "slots": [["q"], ["k"], ["v"], None][j % 4], "via":
                                        "direct" if j % 2 else "all"})
                nodes.append({"name": name, "site": site, "feature": None if d == 4 else f"feature_{d}_{k}" * (1 + k % 2),
                              "exact": k == 3, "parents": parents, "order": d * 10 + s, "depth": d})
                depth_of[name] = d
    assert len(nodes) == 70
    return {"name": "seventy", "nodes": nodes}


def test_graph_of_70_nodes_has_no_overlap_and_its_text_fits():
    """70 nodes: every node inside its site's box, no two nodes or boxes overlapping, each label inside its node
    (at the layout's width per character; the browser test measures the real text), the figure inside its viewBox."""
    from scrubbing.report.graph import CHAR_W

    data = _seventy_nodes()
    svg = render_html({"runs": [{"hypothesis": "seventy", "graph": data, "regimes": {}}]})
    svg = svg.split('<svg class="hypothesis-graph"')[1].split("</svg>")[0]
    boxes = _boxes(svg)
    assert len(boxes) == 70
    assert not [(a, b) for a in boxes for b in boxes if a < b and _overlap(boxes[a], boxes[b])]
    groups = {site: tuple(map(float, box)) for site, *box in re.findall(
        r'<g class="group" data-site="([^"]+)"><rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', svg)}
    assert len(groups) == 13
    assert not [(a, b) for a in groups for b in groups if a < b and _overlap(groups[a], groups[b])]
    site = {n["name"]: n["site"] for n in data["nodes"]}
    for name, (x, y, w, h) in boxes.items():
        gx, gy, gw, gh = groups[site[name]]
        assert gx <= x and x + w <= gx + gw and gy <= y and y + h <= gy + gh, name
    width, height = (float(v) for v in re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg).groups())
    assert all(x + w <= width and y + h <= height for x, y, w, h in [*boxes.values(), *groups.values()])
    for name, feature in re.findall(r'<tspan class="nname">([^<]*)</tspan>(?:<tspan class="nfeat" dx="6">([^<]*))?', svg):
        name, feature = html.unescape(name), html.unescape(feature)
        x, _, w, _ = boxes[name]
        assert (len(name) + (len(feature) + 1 if feature else 0)) * CHAR_W + 7 <= w, name
    assert {d["depth"] for d in data["nodes"]} == {0, 1, 2, 3, 4}
    x = {n["depth"]: boxes[n["name"]][0] for n in data["nodes"]}
    assert x[0] < x[1] < x[2] < x[3] < x[4]  # one column per depth, left to right


def test_render_html_survives_sparse_reports():
    page = render_html({"runs": [{"hypothesis": "bare", "regimes": {"random": {"status": "failed: NaN loss"}}}]})
    assert '<table id="summary">' in page and "failed: NaN loss" in page and "no nodes" in page
    assert '<table id="summary">' in render_html({"runs": []})
    old = render_html({"runs": [{"hypothesis": "old", "nodes": ["a @ embed: feature x; parents: -"], "regimes": {}}]})
    assert "no graph data in this report" in old and "no regime ran" in old


def test_command_line_renders_a_json_report(tmp_path):
    out = tmp_path / "report.html"
    assert render_main([str(DATA), "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render_html(json.loads(DATA.read_text()))
    assert ":root{--fg:" in out.read_text(encoding="utf-8")  # the stylesheet, inlined


# -- in a real browser --------------------------------------------------------------------------

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class _DevTools:
    """Just enough of the Chrome DevTools protocol over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out)."""

    def __init__(self, binary: str, profile: str):
        # Pipe ends at fd numbers >= 10, so the shell's redirections onto 3 and 4 cannot clobber each other.
        to_browser_r, self._w = (_high_fd(fd) for fd in os.pipe())
        self._r, from_browser_w = (_high_fd(fd) for fd in os.pipe())
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        shell = f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self.log = Path(profile) / "chromium.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([shutil.which("bash") or "/bin/bash", "-c", shell, "bash", *args],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         pass_fds=(to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf, self._id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._next(deadline))

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._next(deadline))
        except TimeoutError:
            pass

    def _next(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe; its log ends:\n"
                                   + self.log.read_text(errors="replace")[-2000:])
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


def _problems(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions, failed loads and CSP violations, and every request that left the disk."""
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description")))
                                                                for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            out.append("exception: " + p["exceptionDetails"].get("exception", {}).get("description", "")
                       + p["exceptionDetails"].get("text", ""))
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append("log: " + p["entry"].get("text", ""))
        elif m == "Network.requestWillBeSent" and not p["request"]["url"].startswith(("file:", "data:", "about:")):
            out.append("request: " + p["request"]["url"])
        elif m == "Network.loadingFailed":
            out.append("failed load: " + p.get("errorText", ""))
    return out


_DOM_PROBE = """JSON.stringify({
  title: document.title,
  summary_rows: document.querySelectorAll('table#summary tr.regime-row').length,
  gap_charts: document.querySelectorAll('svg.gap-chart').length,
  hists: document.querySelectorAll('svg.delta-hist').length,
  hist_bars: document.querySelectorAll('svg.delta-hist rect.bin').length,
  graphs: document.querySelectorAll('svg.hypothesis-graph').length,
  graph_nodes: document.querySelectorAll('svg.hypothesis-graph g.node').length,
  cancels: document.querySelectorAll('#summary .flag.cancels').length,
  failed_red: [...document.querySelectorAll('#summary .failed-expectation')].map(
      el => getComputedStyle(el).color),
  drawn: [...document.querySelectorAll('svg.gap-chart, svg.delta-hist, svg.hypothesis-graph')].every(
      el => { const r = el.getBoundingClientRect(); return r.width > 50 && r.height > 30; }),
  table_width: document.querySelector('table#summary').getBoundingClientRect().width,
  // the large graphs (runs 4 and 5): drawn at their own size in a box that scrolls, every label inside its node
  // and no two nodes overlapping, as the browser lays the text out
  big_graphs: ['#run-4', '#run-5'].map(run => {
    const svg = document.querySelector(run + ' svg.hypothesis-graph'), box = svg.closest('.graph-scroll');
    const nodes = [...svg.querySelectorAll('g.node')];
    const clipped = nodes.filter(g => {
      const r = g.querySelector('rect').getBBox(), t = g.querySelector('text').getBBox();
      return t.x < r.x || t.x + t.width > r.x + r.width + 0.5 || t.y < r.y || t.y + t.height > r.y + r.height + 0.5;
    }).map(g => g.dataset.node);
    const rects = nodes.map(g => g.querySelector('rect').getBoundingClientRect());
    const overlapping = [];
    rects.forEach((a, i) => rects.slice(i + 1).forEach((b, j) => {
      if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom)
        overlapping.push([nodes[i].dataset.node, nodes[i + 1 + j].dataset.node]);
    }));
    return {nodes: nodes.length, width: svg.getBoundingClientRect().width, natural: svg.width.baseVal.value,
            scrolls: box.scrollHeight > box.clientHeight, clipped: clipped, overlapping: overlapping};
  }),
})"""


def _load(tools: _DevTools, url: str, shots: dict[str, Path] | None = None) -> tuple[dict, list[str]]:
    target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Log", "Page", "Network"):
        tools.send(f"{domain}.enable", session=session)
    tools.events.clear()
    tools.send("Page.navigate", {"url": url}, session=session)
    tools.wait_for("Page.loadEventFired")
    tools.drain(0.5)
    result = tools.send("Runtime.evaluate", {"expression": _DOM_PROBE, "returnByValue": True}, session=session)
    problems = _problems([e for e in tools.events if e.get("sessionId") in (None, session)])
    if shots is not None:  # the large graphs at their natural size, for a person to judge
        tools.send("Runtime.evaluate", {"expression": "document.querySelectorAll('.graph-scroll').forEach("
                                        "b => { b.style.maxHeight = 'none'; b.style.overflow = 'visible'; })"},
                   session=session)
        for run, shot in shots.items():
            box = json.loads(tools.send("Runtime.evaluate", {"expression": (
                f"(q => JSON.stringify({{x: q.x + scrollX, y: q.y + scrollY, w: q.width, h: q.height}}))("
                f"document.querySelector('{run} svg.hypothesis-graph').getBoundingClientRect())"),
                "returnByValue": True}, session=session)["result"]["value"])
            data = tools.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
                "x": box["x"], "y": box["y"], "width": box["w"], "height": box["h"], "scale": 1}}, session=session)
            shot.write_bytes(base64.b64decode(data["data"]))
    tools.send("Target.closeTarget", {"targetId": target})
    return json.loads(result["result"]["value"]) if "value" in result.get("result", {}) else result, problems


def test_html_report_in_headless_chromium(report, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium); .ci/run installs it")
    report = copy.deepcopy(report)  # run 5: the made-up 70-node graph, on run 3's figures
    report["runs"].append(dict(report["runs"][3], hypothesis="a made-up 70-node graph", graph=_seventy_nodes()))
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    # SCRUB_SCREENSHOT=DIR: keep screenshots of the two large graphs there, to look at
    where = os.environ.get("SCRUB_SCREENSHOT")
    shots = {"#run-4": Path(where) / "graph-induction-refined.png", "#run-5": Path(where) / "graph-70-nodes.png"} \
        if where else None
    canary = tmp_path / "canary.html"  # proves the error capture works: a page that must be caught
    canary.write_text('<!DOCTYPE html><title>c</title><img src="missing.png">'
                      '<script>console.error("canary"); throw new Error("boom")</script>')
    tools = _DevTools(binary, tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path))
    try:
        _, caught = _load(tools, canary.as_uri())
        dom, problems = _load(tools, page.as_uri(), shots)
    finally:
        tools.close()
    assert any("canary" in c for c in caught) and any("boom" in c for c in caught), caught

    assert problems == [], problems
    n_runs, n_rows = len(report["runs"]), sum(_rows(r) for r in report["runs"])
    assert dom["title"].startswith("Causal scrubbing")
    assert dom["summary_rows"] == n_rows and dom["table_width"] > 600
    assert dom["gap_charts"] == n_runs and dom["graphs"] == n_runs and dom["hists"] == n_rows
    assert dom["hist_bars"] > n_rows and dom["graph_nodes"] >= 4 * n_runs
    assert [big["nodes"] for big in dom["big_graphs"]] == [65, 70]
    for big in dom["big_graphs"]:
        assert big["width"] == big["natural"] and big["scrolls"], big
        assert big["clipped"] == [] and big["overlapping"] == [], big
    assert dom["cancels"] >= 1 and dom["drawn"]
    assert dom["failed_red"] and all(_reddish(c) for c in dom["failed_red"]), dom["failed_red"]


def _reddish(css_color: str) -> bool:
    r, g, b = (int(float(v)) for v in re.findall(r"[\d.]+", css_color)[:3])
    return r > 150 and r > 2 * g and r > 2 * b


def test_markup_is_written_only_by_the_escaping_helper():
    """No string in the renderer spells a tag: every element goes through ``markup.el``, which escapes."""
    import ast

    root = Path(__file__).resolve().parents[1] / "scrubbing" / "report"
    found = []
    for path in sorted(root.glob("*.py")):
        if path.name == "markup.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.FunctionDef,
                ast.ClassDef)) and n.body and isinstance(n.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                if re.search(r"<[A-Za-z/]", node.value.replace("<!DOCTYPE html>", "")):
                    found.append(f"{path.name}:{node.lineno}: {node.value[:40]!r}")
    assert found == [], found

"""The hypothesis graph of a run, as inline SVG."""

from __future__ import annotations

import re

from .markup import el, f1

_NODE_RE = re.compile(r"^(?P<name>.*?) @ (?P<site>.*?): (?P<what>.*?); parents: (?P<parents>.*)$")


def _split_parents(text: str) -> list[str]:
    """Split "a, b (into q/k, via direct)" at top-level commas only."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return [p for p in out if p and p != "-"]


def parse_nodes(lines: list[str]) -> tuple[dict[str, dict], list[tuple[str, str, str]]]:
    """``nodes`` lines → ({name: {site, feature}}, [(parent, child, edge note)]). Unparsed lines become bare nodes."""
    nodes: dict[str, dict] = {}
    pending: list[tuple[str, str]] = []
    for line in lines:
        m = _NODE_RE.match(str(line))
        if not m:
            nodes.setdefault(str(line), {"site": "", "feature": "", "raw": True})
            continue
        what = m["what"].strip()
        feature = what[len("feature "):] if what.startswith("feature ") else what
        nodes[m["name"]] = {"site": m["site"], "feature": feature}
        pending.append((m["name"], m["parents"]))
    edges: list[tuple[str, str, str]] = []
    for child, text in pending:
        pieces = _split_parents(text)
        i = 0
        while i < len(pieces):  # a name may itself hold ", ": take the longest run of pieces that names a node
            for j in range(len(pieces), i, -1):
                parent, note = _edge_parts(", ".join(pieces[i:j]))
                if parent in nodes or j == i + 1:
                    break
            edges.append((parent, child, note))
            i = j
    for parent, _, _ in edges:
        nodes.setdefault(parent, {"site": "?", "feature": "", "missing": True})
    return nodes, edges


def _edge_parts(text: str) -> tuple[str, str]:
    m = re.match(r"^(.*?)(?: \(((?:into|via) .*)\))?$", text)
    return m[1], m[2] or ""


def _layout(nodes: dict[str, dict], edges: list[tuple[str, str, str]]):
    """A layered drawing: layer = longest path from a source (parents above children, the output alone at the
    bottom); an edge that spans layers passes through one dummy point per layer it crosses; the order within a
    layer comes from barycentre sweeps. Returns (layers: [[node or dummy key]], paths: [[keys from parent to child]])."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from((p, c) for p, c, _ in edges if p != c)
    if not nx.is_directed_acyclic_graph(g):  # the checks refuse cycles; still draw something readable
        g.remove_edges_from([e for cycle in nx.simple_cycles(g) for e in [(cycle[-1], cycle[0])]])
        if not nx.is_directed_acyclic_graph(g):
            g = nx.DiGraph(nx.dfs_tree(g))
            g.add_nodes_from(nodes)
    layer: dict = {}
    for n in nx.topological_sort(g):
        layer[n] = max((layer[p] + 1 for p in g.predecessors(n)), default=0)
    if "output" in layer and len(layer) > 1:
        layer["output"] = max(layer["output"], max(v for k, v in layer.items() if k != "output") + 1)
    expanded = nx.DiGraph()
    expanded.add_nodes_from(nodes)
    paths = []
    for k, (p, c, _) in enumerate(edges):
        if p == c or not g.has_edge(p, c):
            paths.append([p, c] if layer.get(p, 0) < layer.get(c, 0) else [])
            continue
        chain = [p] + [("dummy", k, d) for d in range(layer[p] + 1, layer[c])] + [c]
        for d, key in zip(range(layer[p] + 1, layer[c]), chain[1:-1]):
            layer[key] = d
        nx.add_path(expanded, chain)
        paths.append(chain)
    layers: dict[int, list] = {}
    for n in expanded.nodes:  # declaration order first
        layers.setdefault(layer[n], []).append(n)
    rows = [layers[d] for d in sorted(layers)]
    order = {n: i for row in rows for i, n in enumerate(row)}
    for sweep in range(6):
        down = sweep % 2 == 0
        for row in (rows[1:] if down else rows[-2::-1]):
            nbrs = expanded.predecessors if down else expanded.successors

            def key(n):
                ps = [order[q] for q in nbrs(n)]
                return (sum(ps) / len(ps)) if ps else order[n]
            row.sort(key=key)
            order.update({n: i for i, n in enumerate(row)})
    return rows, paths


def graph(idx: int, run: dict) -> str:
    """The run's hypothesis graph; ``idx`` keeps the arrowhead's id unique on the page."""
    lines = run.get("nodes") or []
    if not lines:
        return el("svg", {"class": "hypothesis-graph", "viewBox": "0 0 300 40", "width": 300, "height": 40},
                  el("text", {"class": "not-run", "x": 8, "y": 24}, "no nodes"))
    nodes, edges = parse_nodes(lines)
    rows, paths = _layout(nodes, edges)
    char_w, box_h, gap_x, gap_y, margin, dummy_w = 6.6, 52, 28, 50, 12, 14

    def texts(n):
        d = nodes[n]
        return n, (f"@ {d['site']}" if d.get("site") else ""), _clip(d.get("feature", ""), 34)

    widths = {n: (max(90, max(len(t) for t in texts(n)) * char_w + 20) if n in nodes else dummy_w)
              for row in rows for n in row}
    row_w = [sum(widths[n] for n in row) + gap_x * (len(row) - 1) for row in rows]
    width = max(row_w) + 2 * margin
    height = len(rows) * box_h + (len(rows) - 1) * gap_y + 2 * margin
    left: dict = {}
    top: dict = {}
    for r, row in enumerate(rows):
        x = margin + (width - 2 * margin - row_w[r]) / 2
        for n in row:
            left[n], top[n] = x, margin + r * (box_h + gap_y)
            x += widths[n] + gap_x
    centre = {n: left[n] + widths[n] / 2 for n in left}

    # Ports: a node's incoming (outgoing) edges meet its top (bottom) side spread out, ordered by the other end.
    port_in: dict = {}
    port_out: dict = {}
    for k, path in enumerate(paths):
        if len(path) >= 2:
            port_out.setdefault(path[0], []).append((centre[path[1]], k))
            port_in.setdefault(path[-1], []).append((centre[path[-2]], k))

    def spread(ports: dict) -> dict:
        out = {}
        for n, items in ports.items():
            items.sort()
            span = min(widths[n] * 0.6, 18 * (len(items) - 1))
            for i, (_, k) in enumerate(items):
                out[k] = centre[n] + (span * (i / (len(items) - 1) - 0.5) if len(items) > 1 else 0)
        return out

    x_out, x_in = spread(port_out), spread(port_in)
    mid = f"arrow-{idx}"
    out = [el("defs", {}, el("marker", {"id": mid, "viewBox": "0 0 10 10", "refX": 9, "refY": 5, "markerWidth": 7,
                                        "markerHeight": 7, "orient": "auto-start-reverse"},
                             el("path", {"class": "arrowhead", "d": "M0,0L10,5L0,10z"})))]
    notes = []
    for k, path in enumerate(paths):
        if len(path) < 2:
            continue
        p, c, note = edges[k]
        pts = [(x_out[k], top[path[0]] + box_h)]  # (x, y) pairs: leave a box's bottom, pass dummies vertically
        for d in path[1:-1]:
            pts += [(centre[d], top[d]), (centre[d], top[d] + box_h)]
        pts.append((x_in[k], top[path[-1]] - 1))
        d_attr = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"
        for i in range(1, len(pts)):
            (x1, y1), (x2, y2) = pts[i - 1], pts[i]
            if i % 2 == 1:  # between rows: an S-curve
                dy = (y2 - y1) / 2
                d_attr += f" C{x1:.1f},{y1 + dy:.1f} {x2:.1f},{y2 - dy:.1f} {x2:.1f},{y2:.1f}"
            else:  # through a dummy's row: straight down
                d_attr += f" L{x2:.1f},{y2:.1f}"
        label = f"{p} → {c}" + (f" ({note})" if note else "")
        out.append(el("path", {"class": "edge", "d": d_attr, "marker-end": f"url(#{mid})"}, el("title", {}, label)))
        if note:
            (x1, y1), (x2, y2) = pts[-2], pts[-1]
            notes.append(el("text", {"class": "edge-note", "x": f1((x1 + x2) / 2), "y": f1((y1 + y2) / 2 + 3),
                                     "text-anchor": "middle"}, note))
    out += notes
    for n in nodes:
        if n not in left:
            continue
        x, y, w = left[n], top[n], widths[n]
        name, site, feat = texts(n)
        d = nodes[n]
        cls = "node" + (" output" if n == "output" else "") + (" exact" if d.get("feature", "").lower() == "exact" else "") \
            + (" missing" if d.get("missing") else "")
        cx = f1(x + w / 2)
        out.append(el("g", {"class": cls, "data-node": n},
                      el("title", {}, f"{n} @ {d.get('site', '')}: {d.get('feature', '')}"),
                      el("rect", {"x": f1(x), "y": f1(y), "width": f1(w), "height": box_h, "rx": 7}),
                      el("text", {"class": "nname", "x": cx, "y": f1(y + 17), "text-anchor": "middle"}, name),
                      el("text", {"class": "nsite", "x": cx, "y": f1(y + 31), "text-anchor": "middle"}, site),
                      el("text", {"class": "nfeat", "x": cx, "y": f1(y + 45), "text-anchor": "middle"}, feat)))
    return el("svg", {"class": "hypothesis-graph", "viewBox": f"0 0 {width:.0f} {height:.0f}", "width": f"{width:.0f}",
                      "height": f"{height:.0f}", "role": "img", "aria-label": "hypothesis graph"}, out)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"

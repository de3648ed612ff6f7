"""The hypothesis graph of a run, as inline SVG, drawn from the run's ``graph`` (``Hypothesis.to_dict``).

Left to right by model depth: one column per depth (where the model computes a site), the nodes of one site
grouped in a labelled box, one row each (name and feature), so 70 nodes stay legible in a scrollable figure
instead of shrinking into one row. An edge leaves its parent's right side and enters the child's left side; edges
into one slot (q, k, v) share a colour and a labelled cluster of ports; an edge that skips columns runs below the
columns it skips, never across a box. Within a site, nodes are ordered to follow their children (barycentre
sweeps), which keeps edges short and few of them crossing.
"""

from __future__ import annotations

from .markup import el, f1

CHAR_W, _ROW_H, _ROW_GAP, _PORT = 6.7, 20, 4, 7  # px per character, node row, gap between rows, port spacing
_SLOT_GAP = 5  # px between two slots' clusters of ports, so their labels (9.5 px type) do not touch
_HEAD, _PAD, _GROUP_GAP, _COL_GAP, _MARGIN = 17, 5, 12, 96, 10
_SLOTS = ("q", "k", "v")


def graph(idx: int, run: dict) -> str:
    """The run's hypothesis graph; ``idx`` keeps the arrowhead's id unique on the page."""
    nodes = [n for n in ((run.get("graph") or {}).get("nodes") or []) if isinstance(n, dict) and "name" in n]
    if not nodes:
        why = "no graph data in this report" if run.get("nodes") else "no nodes"
        return el("svg", {"class": "hypothesis-graph", "viewBox": "0 0 300 40", "width": 300, "height": 40},
                  el("text", {"class": "not-run", "x": 8, "y": 24}, why))
    return _Drawing(nodes).svg(f"arrow-{idx}")


def summary(run: dict) -> str:
    """``70 nodes at 10 sites``: the caption of the graph's figure."""
    nodes = (run.get("graph") or {}).get("nodes") or []
    sites = {n.get("site") for n in nodes if isinstance(n, dict)}
    return f"{len(nodes)} node{'s' * (len(nodes) != 1)} at {len(sites)} site{'s' * (len(sites) != 1)}"


class _Drawing:
    def __init__(self, nodes: list[dict]):
        self.nodes = {n["name"]: n for n in nodes}
        self.edges = [(str(p.get("node")), n["name"], p) for n in nodes for p in (n.get("parents") or [])]
        for parent, _, _ in self.edges:  # a parent the report does not declare: draw it, marked
            self.nodes.setdefault(parent, {"name": parent, "site": "?", "feature": None, "missing": True})
        self.column = self._columns()
        self._place()

    # -- layout -----------------------------------------------------------------------------
    def _columns(self) -> dict[str, int]:
        """Column = rank of the model depth of the node's site; without depths, the longest chain of parents."""
        names = list(self.nodes)
        if all("depth" in self.nodes[n] for n in names):
            depth = {n: self.nodes[n]["depth"] for n in names}
        else:
            depth = {}
            parents = {n: [p for p, c, _ in self.edges if c == n] for n in names}

            def level(n, seen=()):
                if n not in depth:
                    depth[n] = 1 + max((level(p, seen + (n,)) for p in parents[n] if p not in seen), default=-1)
                return depth[n]
            for n in names:
                level(n)
        rank = {d: i for i, d in enumerate(sorted(set(depth.values())))}
        column = {n: rank[depth[n]] for n in names}
        if "output" in column and len(names) > 1:  # the output alone, last
            column["output"] = max(v for n, v in column.items() if n != "output") + 1
        return column

    def _place(self) -> None:
        n_cols = max(self.column.values()) + 1
        groups: list[dict[str, list[str]]] = [{} for _ in range(n_cols)]  # column -> site -> node names
        for name in sorted(self.nodes, key=lambda n: self.nodes[n].get("order", 0)):  # stable: declaration order
            groups[self.column[name]].setdefault(str(self.nodes[name].get("site", "")), []).append(name)
        self.groups = groups
        # ports: edges into a node, by slot, so a node is tall enough for them
        self.ins: dict[str, list[int]] = {n: [] for n in self.nodes}
        self.outs: dict[str, list[int]] = {n: [] for n in self.nodes}
        for k, (p, c, _) in enumerate(self.edges):
            self.ins[c].append(k)
            self.outs[p].append(k)
        self.height_of = {n: max(_ROW_H, self._ports_h(n) + 6) for n in self.nodes}
        # an edge that skips columns passes each skipped column on a lane of its own, between two sites
        self.lanes: list[list[int]] = [[] for _ in range(n_cols)]
        for k, (p, c, _) in enumerate(self.edges):
            for col in range(self.column[p] + 1, self.column[c]):
                self.lanes[col].append(k)
        self.width_of = {n: self._text_width(n) for n in self.nodes}
        self.col_w = [max([self.width_of[n] + 2 * _PAD for g in groups[c].values() for n in g]
                          + [len(s) * CHAR_W + 2 * _PAD for s in groups[c]] + [40]) for c in range(n_cols)]
        for n in self.nodes:  # one width per column: every edge leaves at the column's right side, past no box
            self.width_of[n] = self.col_w[self.column[n]] - 2 * _PAD
        self.col_x = []
        x = _MARGIN
        for w in self.col_w:
            self.col_x.append(x)
            x += w + _COL_GAP
        self.width = x - _COL_GAP + _MARGIN
        self.col_h = [sum(_HEAD + _PAD + sum(self.height_of[n] + _ROW_GAP for n in g) + _GROUP_GAP
                          for g in groups[c].values()) + 8 * len(self.lanes[c]) for c in range(n_cols)]
        self.height = max(self.col_h) + 2 * _MARGIN
        self.lane_at: dict[tuple[int, int], tuple[int, float]] = {}  # (column, edge) -> (gap between sites, y wanted)
        self._position()
        self._sweeps(4)
        self._route_lanes()
        self._sweeps(2)
        self._route_lanes()

    def _route_lanes(self) -> None:
        """Put each lane in the gap between sites nearest the straight line from the edge's parent to its child."""
        for c, lanes in enumerate(self.lanes):
            mids = [y + h / 2 for site, x, y, w, h in self.group_box if x == self.col_x[c]]
            for k in lanes:
                p, child, _ = self.edges[k]
                (x0, y0), (x1, y1) = (self._x(p, "out"), self._out_y(p)), (self._x(child, "in"), self._in_y(child, k))
                want = y0 + (y1 - y0) * (self.col_x[c] + self.col_w[c] / 2 - x0) / (x1 - x0)
                self.lane_at[(c, k)] = (sum(m < want for m in mids), want)
        self._position()

    def _sweeps(self, n: int) -> None:
        n_cols = len(self.groups)
        for sweep in range(n):  # order each site's nodes by where their children (then their parents) sit
            cols = range(n_cols - 2, -1, -1) if sweep % 2 == 0 else range(1, n_cols)
            for c in cols:
                for names in self.groups[c].values():
                    names.sort(key=lambda n: self._barycentre(n, towards_children=sweep % 2 == 0))
                self._position()

    def _position(self) -> None:
        self.top: dict[str, float] = {}
        self.group_box: list[tuple[str, float, float, float, float]] = []
        self.lane_y: dict[tuple[int, int], float] = {}
        for c, groups in enumerate(self.groups):
            y = _MARGIN + (self.height - 2 * _MARGIN - self.col_h[c]) / 2
            lanes = sorted(self.lanes[c], key=lambda k: self.lane_at.get((c, k), (len(groups), 0.0)))
            for gi, (site, names) in enumerate(groups.items()):
                for k in lanes:
                    if self.lane_at.get((c, k), (len(groups),))[0] == gi:
                        self.lane_y[(c, k)] = y + 2
                        y += 8
                start = y
                y += _HEAD + _PAD
                for n in names:
                    self.top[n] = y
                    y += self.height_of[n] + _ROW_GAP
                self.group_box.append((site, self.col_x[c], start, self.col_w[c], y - start))
                y += _GROUP_GAP
            for k in lanes:
                if (c, k) not in self.lane_y:
                    self.lane_y[(c, k)] = y + 2
                    y += 8

    def _barycentre(self, n: str, towards_children: bool) -> float:
        ends = ([self._in_y(c, k) for k in self.outs[n] for _, c, _ in [self.edges[k]]] if towards_children else
                [self._out_y(p) for k in self.ins[n] for p, _, _ in [self.edges[k]]])
        return sum(ends) / len(ends) if ends else self.top[n]

    def _text_width(self, n: str) -> float:
        d = self.nodes[n]
        feature = _feature(d)
        slots = 9 if len({tuple(self.edges[k][2].get("slots") or ()) for k in self.ins[n]}) > 1 else 0
        return max(60.0, (len(n) + (len(feature) + 2 if feature else 0)) * CHAR_W + 18 + slots)

    def _out_y(self, n: str) -> float:
        return self.top[n] + self.height_of[n] / 2

    def _slot(self, k: int) -> str:
        slots = self.edges[k][2].get("slots") or []
        return slots[0] if len(slots) == 1 else ""

    def _in_order(self, n: str) -> list[int]:
        """Edges into ``n``, grouped by slot (q, k, v first), each group ordered by where its parent sits."""
        def key(k):
            slot = self._slot(k)
            return (_SLOTS.index(slot) if slot in _SLOTS else len(_SLOTS), slot, self._out_y(self.edges[k][0]))
        return sorted(self.ins[n], key=key)

    def _ports_h(self, n: str) -> float:
        """Height of ``n``'s ports: one step per edge, and a gap between slots."""
        return _PORT * len(self.ins[n]) + _SLOT_GAP * (len({self._slot(k) for k in self.ins[n]}) - 1)

    def _in_y(self, n: str, k: int) -> float:
        order = self._in_order(n)
        if len(order) == 1:
            return self._out_y(n)
        i = order.index(k)
        gaps = sum(self._slot(a) != self._slot(b) for a, b in zip(order[:i], order[1:i + 1]))
        return (self.top[n] + 3 + _PORT * (i + 0.5) + _SLOT_GAP * gaps
                + (self.height_of[n] - 6 - self._ports_h(n)) / 2)

    def _x(self, n: str, side: str) -> float:
        c = self.column[n]
        left = self.col_x[c] + _PAD
        return left if side == "in" else left + self.width_of[n]

    # -- drawing ----------------------------------------------------------------------------
    def svg(self, marker: str) -> str:
        out = [el("defs", {}, el("marker", {"id": marker, "viewBox": "0 0 10 10", "refX": 9, "refY": 5,
                                            "markerWidth": 6, "markerHeight": 6, "orient": "auto-start-reverse"},
                                 el("path", {"class": "arrowhead", "d": "M0,0L10,5L0,10z"})))]
        for site, x, y, w, h in self.group_box:
            out.append(el("g", {"class": "group", "data-site": site},
                          el("rect", {"x": f1(x), "y": f1(y), "width": f1(w), "height": f1(h), "rx": 6}),
                          el("text", {"class": "glabel", "x": f1(x + _PAD), "y": f1(y + 12)}, site)))
        for k in range(len(self.edges)):
            out.append(self._edge(k, marker))
        for n in self.nodes:
            out.append(self._node(n))
        return el("svg", {"class": "hypothesis-graph", "viewBox": f"0 0 {self.width:.0f} {self.height:.0f}",
                          "width": f"{self.width:.0f}", "height": f"{self.height:.0f}", "role": "img",
                          "aria-label": "hypothesis graph"}, out)

    def _edge(self, k: int, marker: str) -> str:
        p, c, edge = self.edges[k]
        slots = edge.get("slots")
        via = edge.get("via", "all")
        points = [(self._x(p, "out"), self._out_y(p))]
        for col in range(self.column[p] + 1, self.column[c]):
            y = self.lane_y[(col, k)]
            points += [(self.col_x[col], y), (self.col_x[col] + self.col_w[col], y)]
        points.append((self._x(c, "in") - 1, self._in_y(c, k)))
        d = f"M{points[0][0]:.1f},{points[0][1]:.1f}"
        for i in range(1, len(points)):
            (x1, y1), (x2, y2) = points[i - 1], points[i]
            if i % 2:  # across a gap between columns: an S-curve
                dx = (x2 - x1) / 2
                d += f" C{x1 + dx:.1f},{y1:.1f} {x2 - dx:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
            else:  # along its lane through a skipped column
                d += f" L{x2:.1f},{y2:.1f}"
        slot = slots[0] if slots and len(slots) == 1 and slots[0] in _SLOTS else ""
        notes = ([f"into {'/'.join(map(str, slots))}"] if slots else []) + (
            [f"via {via if isinstance(via, str) else '+'.join(map(str, via))}"] if via != "all" else [])
        label = f"{p} → {c}" + (f" ({', '.join(notes)})" if notes else "")
        return el("path", {"class": "edge" + (f" slot-{slot}" if slot else "") + (" direct" if via == "direct" else ""),
                           "d": d, "marker-end": f"url(#{marker})"}, el("title", {}, label))

    def _node(self, n: str) -> str:
        d = self.nodes[n]
        x, y, w, h = self._x(n, "in"), self.top[n], self.width_of[n], self.height_of[n]
        feature = _feature(d)
        cls = ("node" + (" output" if n == "output" else "") + (" exact" if d.get("exact") else "")
               + (" missing" if d.get("missing") else ""))
        slots = []
        for slot in _SLOTS:  # a label inside the box at each cluster of ports into one slot
            ks = [k for k in self.ins[n] if self._slot(k) == slot]
            if ks and len(self.ins[n]) > 1:
                ys = [self._in_y(n, k) for k in ks]
                slots.append(el("text", {"class": f"slot slot-{slot}", "x": f1(x + 4), "y": f1(sum(ys) / len(ys) + 3)},
                                slot))
        parts = [el("title", {}, f"{n} @ {d.get('site', '')}" + (f": {feature}" if feature else "")),
                 el("rect", {"x": f1(x), "y": f1(y), "width": f1(w), "height": h, "rx": 4}),
                 el("text", {"x": f1(x + (16 if slots else 7)), "y": f1(y + h / 2 + 4)},
                    el("tspan", {"class": "nname"}, n),
                    el("tspan", {"class": "nfeat", "dx": 6}, feature) if feature else None), slots]
        return el("g", {"class": cls, "data-node": n}, parts)


def _feature(d: dict) -> str:
    if d.get("name") == "output" or d.get("missing"):
        return ""
    return "EXACT" if d.get("exact") else str(d.get("feature") or "")

"""Hypotheses: a graph of nodes, each a model site with a feature, and the checks that bind it to a model.

A node says "this site computes this feature": inputs with equal feature values
are interchangeable at that site. An edge ``parent -> child`` says the parent's
value reaches the child along chosen paths of the model graph. ``bind`` checks
everything against a concrete model and dataset and refuses with a message that
names the node and says how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Union

import networkx as nx
import torch

from .errors import HypothesisError
from .sites import Dataset, ModelAdapter, transparent_inputs

FeatureFn = Callable[[Dataset], torch.Tensor]


class Exact:
    """The feature that never resamples: every example is its own class (Redwood's ExactSampler)."""

    name = "exact"

    def __repr__(self) -> str:
        return "EXACT"


EXACT = Exact()


@dataclass(frozen=True)
class Edge:
    """``parent`` feeds the child node.

    ``into``: the child's input slots the claim covers (e.g. ``("k",)`` for "through
    its key only"); None means every slot. ``via``: the intermediate sites recomputed
    on the way: ``"all"`` (every site the hypothesis does not name), ``"direct"``
    (none) or a tuple of site names.
    """

    parent: str
    into: tuple[str, ...] | None = None
    via: Union[str, tuple[str, ...]] = "all"
    feature: "FeatureFn | Exact | None" = None
    """The edge's own feature: what the parent's value fed along this edge (into these slots) is
    claimed to carry. That value is the parent's, computed on an example drawn from those agreeing
    with the child's example on this feature (instead of the parent node's feature), the parent's
    own inputs scrubbed as the parent node says. Exactly as if the edge came from a copy of the
    parent node (same site and parents) with this feature, named ``parent->child.slots``, which is
    how ``bind`` states it; a parent whose every edge has a feature is then used only through its copies."""

    def __post_init__(self):
        if isinstance(self.into, str):
            object.__setattr__(self, "into", (self.into,))
        if isinstance(self.via, list):
            object.__setattr__(self, "via", tuple(self.via))


@dataclass
class Node:
    name: str
    site: str
    feature: FeatureFn | Exact | None
    parents: tuple[Edge, ...] = ()
    feature_name: str = ""
    unclaimed: Unclaimed = None  # None: the hypothesis's default; a str for every slot; {slot: str} per slot


OUTPUT = "output"

DRAW, REFERENCE = "draw", "reference"
UNCLAIMED = (DRAW, REFERENCE)
Unclaimed = Union[str, dict, None]


class Hypothesis:
    """A claim about how the model computes its output.

    >>> h = Hypothesis("count only")
    >>> h.node("tokens", "embed", EXACT)
    >>> h.node("count", "a1.0", lambda d: d.columns["count_ok"], parents=["tokens"])
    >>> h.output(parents=["count"])
    """

    def __init__(self, name: str, description: str = "", allow_singletons: bool = False, unclaimed: str = DRAW):
        """``unclaimed``: where the inputs no edge claims come from, for every node that does not say otherwise.
        ``"draw"`` (the published algorithm, the default): the clean value on the node's random draw r.
        ``"reference"``: the clean value on the example the node's instance runs on (for the output: the
        reference itself), so the parts of the model a claim is not about stay as they were, the
        "frame" of Redwood's induction experiments, in one argument.
        """
        self.name = name
        self.description = description
        self.allow_singletons = allow_singletons
        self.unclaimed = _check_unclaimed(unclaimed, f"hypothesis {name!r}")
        self.nodes: dict[str, Node] = {}
        self.expectations: list = []

    def node(self, name: str, site: str, feature: FeatureFn | Exact, parents: Iterable[str | Edge] = (),
             feature_name: str | None = None, unclaimed: Unclaimed = None) -> "Hypothesis":
        if name in self.nodes:
            raise HypothesisError(f"node {name!r} is declared twice in hypothesis {self.name!r}; give each node its own name.")
        if name == OUTPUT:
            raise HypothesisError(f"{OUTPUT!r} is reserved for the output node; declare it with hypothesis.output(...).")
        if feature is None or not (callable(feature) or isinstance(feature, Exact)):
            raise HypothesisError(
                f"node {name!r}: feature must be a function of the dataset returning class ids, or EXACT; got {feature!r}."
            )
        label = feature_name or getattr(feature, "name", None) or getattr(feature, "__name__", "feature")
        self.nodes[name] = Node(name, site, feature, _edges(parents), label,
                                _check_unclaimed(unclaimed, f"node {name!r}", allow_none=True))
        return self

    def output(self, parents: Iterable[str | Edge] = (), unclaimed: Unclaimed = None) -> "Hypothesis":
        """The output node: runs on the reference itself and is scored against its label."""
        if OUTPUT in self.nodes:
            raise HypothesisError(f"hypothesis {self.name!r} declares its output twice.")
        self.nodes[OUTPUT] = Node(OUTPUT, OUTPUT, None, _edges(parents), "",
                                  _check_unclaimed(unclaimed, "the output", allow_none=True))
        return self

    # -- hypotheses as values: every derivation returns a new hypothesis, the original is untouched ----
    def copy(self, name: str | None = None, description: str | None = None) -> "Hypothesis":
        new = Hypothesis(self.name if name is None else name, self.description if description is None else description,
                         self.allow_singletons, self.unclaimed)
        new.nodes = {n: replace(node) for n, node in self.nodes.items()}
        new.expectations = list(self.expectations)
        return new

    def renamed(self, name: str, description: str | None = None) -> "Hypothesis":
        return self.copy(name, description)

    def with_node(self, name: str, site: str, feature: FeatureFn | Exact, parents: Iterable[str | Edge] = (),
                  feature_name: str | None = None, unclaimed: Unclaimed = None, *, name_as: str | None = None,
                  feeds: Iterable[str | Edge] = ()) -> "Hypothesis":
        """A copy with one more node; ``feeds`` adds an edge from it to each named child (``Edge`` for options)."""
        new = self.copy(name_as)
        new.node(name, site, feature, parents, feature_name, unclaimed)
        for child in _edges(feeds):
            target = new._known(child.parent, "feed")
            target.parents = target.parents + (replace(child, parent=name),)
        new._check_acyclic()
        return new

    def replacing(self, name: str, *, name_as: str | None = None, **changes) -> "Hypothesis":
        """A copy where node ``name`` has new fields (site, feature, parents, feature_name, unclaimed)."""
        new = self.copy(name_as)
        node = new._known(name, "replace")
        unknown = set(changes) - {"site", "feature", "parents", "feature_name", "unclaimed"}
        if unknown:
            raise HypothesisError(f"replacing node {name!r}: no field {sorted(unknown)}; a node has site, feature, "
                                  "parents, feature_name and unclaimed.")
        if "parents" in changes:
            changes["parents"] = _edges(changes["parents"])
        if "feature" in changes and "feature_name" not in changes:
            f = changes["feature"]
            changes["feature_name"] = getattr(f, "name", None) or getattr(f, "__name__", "feature")
        if "unclaimed" in changes:
            changes["unclaimed"] = _check_unclaimed(changes["unclaimed"], f"node {name!r}", allow_none=True)
        new.nodes[name] = replace(node, **changes)
        new._check_acyclic()
        return new

    def without(self, *names: str, name_as: str | None = None) -> "Hypothesis":
        """A copy without these nodes and every edge from them."""
        new = self.copy(name_as)
        for name in names:
            new._known(name, "remove")
            if name == OUTPUT:
                raise HypothesisError("the output node cannot be removed; a hypothesis ends at the output.")
            del new.nodes[name]
        for node in new.nodes.values():
            node.parents = tuple(e for e in node.parents if e.parent not in names)
        return new

    def joined(self, other: "Hypothesis", name: str | None = None) -> "Hypothesis":
        """Both claims at once: the union of the nodes; the output's parents are both outputs' parents.

        A node both declare must be the same claim (same site, feature and parents); otherwise the
        names clash and one side must be renamed first.
        """
        new = self.copy(name or f"{self.name} + {other.name}")
        if other.unclaimed != self.unclaimed:
            raise HypothesisError(f"joining {self.name!r} with {other.name!r}: their unclaimed inputs differ "
                                  f"({self.unclaimed!r} vs {other.unclaimed!r}); make them agree with copy() first.")
        for n, node in other.nodes.items():
            mine = new.nodes.get(n)
            if mine is None:
                new.nodes[n] = replace(node)
            elif n == OUTPUT:
                mine.parents = mine.parents + tuple(e for e in node.parents if e not in mine.parents)
            elif (mine.site, mine.feature, mine.parents, mine.unclaimed) != (node.site, node.feature, node.parents,
                                                                              node.unclaimed):
                raise HypothesisError(f"joining {self.name!r} with {other.name!r}: both declare node {n!r}, as "
                                      "different claims; rename it in one of them (without/with_node) first.")
        new._check_acyclic()
        return new

    def _known(self, name: str, verb: str) -> Node:
        if name not in self.nodes:
            raise HypothesisError(f"cannot {verb} node {name!r} of hypothesis {self.name!r}: no such node; "
                                  f"its nodes are {list(self.nodes)}.")
        return self.nodes[name]

    def _check_acyclic(self) -> None:
        try:
            cycle = nx.find_cycle(self.graph)
        except nx.NetworkXNoCycle:
            return
        raise HypothesisError(f"hypothesis {self.name!r} would have a cycle: "
                              f"{' -> '.join(u for u, _ in cycle)} -> {cycle[0][0]}; remove one of these edges.")

    def expect(self, *expectations) -> "Hypothesis":
        self.expectations.extend(expectations)
        return self

    @property
    def graph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        for node in self.nodes.values():
            g.add_node(node.name, site=node.site)
            for edge in node.parents:
                g.add_edge(edge.parent, node.name, into=edge.into, via=edge.via)
        return g

    def bind(self, adapter: ModelAdapter, data: Dataset) -> "BoundHypothesis":
        return BoundHypothesis(self, adapter, data)

    def describe(self) -> list[str]:
        lines = [] if self.unclaimed == DRAW else [f"unclaimed inputs: {self.unclaimed}"]
        for node in self.nodes.values():
            parents = ", ".join(_edge_text(e) for e in node.parents) or "-"
            what = "(output)" if node.name == OUTPUT else f"feature {node.feature_name}"
            free = "" if node.unclaimed is None else f"; unclaimed: {_unclaimed_text(node.unclaimed)}"
            lines.append(f"{node.name} @ {node.site}: {what}; parents: {parents}{free}")
        return lines

    def to_dict(self, adapter: ModelAdapter | None = None) -> dict:
        """The hypothesis as it is scrubbed, as JSON-safe data: for tools and the report's graph (which must not
        parse ``describe()``).

        Every edge feature is stated as the node ``bind`` makes of it (``lower_edge_features``: a copy of the
        parent, named ``parent->child.slots``, with ``copy_of`` naming the parent). One entry per node, in
        declaration order: ``name``, ``site``, ``feature`` (its name; None for the output), ``exact``, and
        ``parents``: ``{"node", "slots" (the child's input slots the edge feeds; None: all), "via" ("all",
        "direct" or a list of sites)}``. With ``adapter``, each node also gets ``order`` (its site's index in the
        model's site list) and ``depth`` (the longest chain of sites from the raw input to it), so a drawing can
        lay nodes out by where the model computes them."""
        depth: dict[str, int] = {}
        order: dict[str, int] = {}
        if adapter is not None:
            for i, site in enumerate(adapter.sites.values()):  # topologically ordered (ModelAdapter)
                order[site.name] = i
                depth[site.name] = 1 + max((depth[p] for p in site.parents if p in depth), default=-1)
        copy_of = {edge_node_name(e, n.name): e.parent for n in self.nodes.values() for e in n.parents
                   if e.feature is not None}
        nodes = []
        for node in lower_edge_features(self).nodes.values():
            item = {"name": node.name, "site": node.site, "feature": None if node.name == OUTPUT else node.feature_name,
                    "exact": isinstance(node.feature, Exact),
                    "parents": [{"node": e.parent, "slots": None if e.into is None else list(e.into),
                                 "via": e.via if isinstance(e.via, str) else list(e.via)} for e in node.parents]}
            if node.name in copy_of:
                item["copy_of"] = copy_of[node.name]
            site = adapter.output if adapter is not None and node.name == OUTPUT else node.site
            if site in depth:
                item.update(order=order[site], depth=depth[site])
            nodes.append(item)
        return {"name": self.name, "nodes": nodes}

    def __repr__(self) -> str:
        return f"Hypothesis({self.name!r}, nodes={list(self.nodes)})"


def _check_unclaimed(value, where: str, allow_none: bool = False):
    if value is None and allow_none:
        return None
    values = value.values() if isinstance(value, dict) else [value]
    if not all(v in UNCLAIMED for v in values):
        raise HypothesisError(f"{where}: unclaimed must be 'draw' or 'reference'"
                              + (", or a dict slot -> one of them" if allow_none else "") + f"; got {value!r}.")
    return dict(value) if isinstance(value, dict) else value


def _edges(parents: Iterable[str | Edge]) -> tuple[Edge, ...]:
    if isinstance(parents, (str, Edge)):
        parents = [parents]
    return tuple(p if isinstance(p, Edge) else Edge(p) for p in parents)


def _feature_label(feature) -> str:
    return getattr(feature, "name", None) or getattr(feature, "__name__", "feature")


def edge_node_name(edge: Edge, child: str) -> str:
    """The name of the parent's copy that carries an edge's own feature."""
    return f"{edge.parent}->{child}" + ("" if edge.into is None else "." + "/".join(edge.into))


def lower_edge_features(h: "Hypothesis") -> "Hypothesis":
    """The same claim with every edge feature stated as a node: a copy of the parent with that feature."""
    if not any(e.feature is not None for node in h.nodes.values() for e in node.parents):
        return h
    new = h.copy()
    used_plain = {e.parent for node in h.nodes.values() for e in node.parents if e.feature is None}
    lowered: dict[str, Node] = {}
    copies: dict[str, tuple[str, object]] = {}  # copy -> (parent, feature)
    for name, node in h.nodes.items():
        edges = []
        for edge in node.parents:
            if edge.feature is None:
                edges.append(edge)
                continue
            if edge.parent not in h.nodes:
                raise HypothesisError(f"node {name!r} lists parent {edge.parent!r}, which is not declared; "
                                      "declare it with hypothesis.node(...).")
            copy_name = edge_node_name(edge, name)
            if copy_name in h.nodes or copy_name in copies:
                raise HypothesisError(f"edge {edge.parent!r} -> {name!r}: its feature needs a node named {copy_name!r}, "
                                      "which is taken; rename that node.")
            copies[copy_name] = (edge.parent, edge.feature)
            edges.append(replace(edge, parent=copy_name, feature=None))
        lowered[name] = replace(node, parents=tuple(edges))
    new.nodes = {}
    for name, node in lowered.items():
        for edge in node.parents:  # each copy just before the first node that reads it
            if edge.parent in copies and edge.parent not in new.nodes:
                parent, feature = copies[edge.parent]
                new.nodes[edge.parent] = replace(lowered[parent], name=edge.parent, feature=feature,
                                                 feature_name=_feature_label(feature))
        if name == OUTPUT or name in used_plain or not any(name == p for p, _ in copies.values()):
            new.nodes[name] = node  # a parent used only through its copies is left out
    return new


def _unclaimed_text(value) -> str:
    return value if isinstance(value, str) else ", ".join(f"{k} {v}" for k, v in value.items())


def _edge_text(edge: Edge) -> str:
    extra = [] if edge.feature is None else [f"feature {_feature_label(edge.feature)}"]
    if edge.into is not None:
        extra.append("into " + "/".join(edge.into))
    if edge.via != "all":
        extra.append(f"via {edge.via if isinstance(edge.via, str) else '+'.join(edge.via)}")
    return edge.parent + (f" ({', '.join(extra)})" if extra else "")


@dataclass
class BoundHypothesis:
    """A hypothesis checked against one model and one dataset, with its features evaluated."""

    hypothesis: Hypothesis
    adapter: ModelAdapter
    data: Dataset
    classes: dict[str, torch.Tensor | None] = field(init=False)
    order: list[str] = field(init=False)

    def __post_init__(self):
        self.hypothesis = lower_edge_features(self.hypothesis)
        h, adapter = self.hypothesis, self.adapter
        nodes = h.nodes
        if OUTPUT not in nodes:
            raise HypothesisError(
                f"hypothesis {h.name!r} has no output node; add hypothesis.output(parents=[...])."
            )
        for node in nodes.values():
            site = node.site if node.name != OUTPUT else adapter.output
            try:
                adapter.site(site)
            except HypothesisError as err:
                raise HypothesisError(f"node {node.name!r}: {err}") from None
            if node.name != OUTPUT and site == adapter.output:
                raise HypothesisError(f"node {node.name!r} maps to the output site; only hypothesis.output(...) may.")
            for edge in node.parents:
                if edge.parent not in nodes:
                    raise HypothesisError(
                        f"node {node.name!r} lists parent {edge.parent!r}, which is not declared; declare it with hypothesis.node(...)."
                    )
        graph = h.graph
        try:
            cycle = nx.find_cycle(graph)
            raise HypothesisError(
                f"hypothesis {h.name!r} has a cycle: {' -> '.join(u for u, _ in cycle)} -> {cycle[0][0]}; "
                "a hypothesis must be a DAG ending at the output."
            )
        except nx.NetworkXNoCycle:
            pass
        for name in nodes:
            if name != OUTPUT and not nx.has_path(graph, name, OUTPUT):
                raise HypothesisError(
                    f"node {name!r} is not on a path to the output: nothing it computes can matter. "
                    "Make it a parent of a node that reaches the output, or remove it."
                )
        self.order = list(nx.topological_sort(graph))
        self.sites = {n: (nodes[n].site if n != OUTPUT else adapter.output) for n in nodes}
        self._check_edges(graph)
        self.classes = {n: self._evaluate_feature(nodes[n]) for n in nodes}

    # -- structure ----------------------------------------------------------------------
    def edges(self, name: str) -> tuple[Edge, ...]:
        return self.hypothesis.nodes[name].parents

    def is_leaf(self, name: str) -> bool:
        """A non-output node without parents reads its whole input from its own sample."""
        return name != OUTPUT and not self.edges(name)

    def unclaimed(self, name: str, slot: str) -> str:
        """Where the unclaimed inputs of ``slot`` of node ``name`` come from: the slot's, else the node's, else the hypothesis's."""
        own = self.hypothesis.nodes[name].unclaimed
        if isinstance(own, dict):
            own = own.get(slot)
        return own or self.hypothesis.unclaimed

    def is_positional(self, name: str) -> bool:
        classes = self.classes[name]
        return classes is not None and classes.dim() == 2

    @property
    def claimed_sites(self) -> set[str]:
        return set(self.sites.values())

    def model_graph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        for site in self.adapter.sites.values():
            g.add_node(site.name)
            g.add_edges_from((p, site.name) for p in site.parents)
        return g

    def intermediates(self, edge: Edge, child: str) -> frozenset[str]:
        """Sites an edge into node ``child`` may recompute on its way: not named by any node, not raw-input sources.
        ``"direct"``: only the sites that merely form the child's site's input (``transparent_inputs``: the argument
        sites of a wired ``TorchModuleAdapter`` site, a residual stream), so the parent reaches the child through
        the arguments it feeds directly."""
        if edge.via == "direct":
            return transparent_inputs(self.adapter.sites, self.sites[child], self.claimed_sites)
        if edge.via == "all":
            return frozenset(s for s, site in self.adapter.sites.items()
                             if s not in self.claimed_sites and not site.is_source)
        return frozenset(edge.via)

    def _check_edges(self, graph: nx.DiGraph) -> None:
        model = self.model_graph()
        claimed = self.claimed_sites
        for name in self.order:
            child_site = self.adapter.sites[self.sites[name]]
            if child_site.is_source and self.edges(name):
                raise HypothesisError(
                    f"node {name!r} maps to {child_site.name!r}, which reads the raw input; it cannot have parents. "
                    "Make it a leaf (no parents)."
                )
            own = self.hypothesis.nodes[name].unclaimed
            if isinstance(own, dict) and set(own) - set(child_site.slots):
                raise HypothesisError(
                    f"node {name!r}: unclaimed names slot(s) {sorted(set(own) - set(child_site.slots))}, but site "
                    f"{child_site.name!r} has slots {list(child_site.slots)}."
                )
            seen: dict[str, tuple[str, set[str]]] = {}
            for edge in self.edges(name):
                parent_site = self.sites[edge.parent]
                where = f"edge {edge.parent!r} -> {name!r}"
                slots = set(edge.into or child_site.slots)
                unknown = slots - set(child_site.slots)
                if unknown:
                    raise HypothesisError(
                        f"{where}: site {child_site.name!r} has no input slot {sorted(unknown)}; its slots are {list(child_site.slots)}."
                    )
                if isinstance(edge.via, tuple):
                    for site in edge.via:
                        self.adapter.site(site)
                        if site in claimed:
                            raise HypothesisError(
                                f"{where}: via site {site!r} is claimed by a node; the path through it belongs to that node. "
                                "Remove it from via, or make the edge pass through that node."
                            )
                elif edge.via not in ("all", "direct"):
                    raise HypothesisError(f"{where}: via must be 'all', 'direct' or a tuple of site names; got {edge.via!r}.")
                allowed = self.intermediates(edge, name) | {parent_site, child_site.name}
                if not nx.has_path(model.subgraph(allowed), parent_site, child_site.name) or parent_site == child_site.name:
                    raise HypothesisError(
                        f"{where}: the model has no path from site {parent_site!r} to site {child_site.name!r}"
                        + ("" if edge.via == "all" else f" via {edge.via!r}")
                        + ". A parent must be computed before its child; check the sites or the edge's via."
                        + (self._direct_hint(parent_site, child_site.name) if edge.via == "direct" else "")
                    )
                if parent_site in seen and seen[parent_site][1] & slots:
                    raise HypothesisError(
                        f"nodes {seen[parent_site][0]!r} and {edge.parent!r} both claim the path from site {parent_site!r} "
                        f"into {name!r} slot(s) {sorted(seen[parent_site][1] & slots)}; give each its own slots with Edge(into=...)."
                    )
                seen.setdefault(parent_site, (edge.parent, set()))[1].update(slots)

    def _direct_hint(self, parent: str, child: str) -> str:
        """Why ``via="direct"`` found no path into a site whose input is formed by transparent sites, and the fix."""
        sites = self.adapter.sites
        forming = sorted(transparent_inputs(sites, child, frozenset()))
        if not forming:
            return ""
        owner = {site: node for node, site in self.sites.items()}
        taken = [f"{s!r} (node {owner[s]!r})" for s in forming if s in owner and parent in sites[s].parents]
        if taken:
            return (f" Site {child!r} reads {parent!r} through {', '.join(taken)}, claimed by a node: the path belongs "
                    "to that node; draw the edge into it instead.")
        return (f" 'direct' into {child!r} passes only through the sites that form its input ({', '.join(forming)}), "
                f"and none of them reads {parent!r}; use via='all' or name the intermediate sites.")

    # -- features -----------------------------------------------------------------------
    def _evaluate_feature(self, node: Node) -> torch.Tensor | None:
        if node.name == OUTPUT or isinstance(node.feature, Exact):
            return None
        n = len(self.data)
        try:
            values = node.feature(self.data)
        except Exception as exc:
            raise HypothesisError(f"node {node.name!r}: its feature raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(values, torch.Tensor):
            values = torch.as_tensor(values)
        if values.dtype.is_floating_point or values.dtype.is_complex:
            raise HypothesisError(
                f"node {node.name!r}: feature returned dtype {values.dtype}; features are class ids, so return an "
                "integer or bool tensor (e.g. bin a continuous value with torch.bucketize)."
            )
        positions = self.adapter.n_positions
        if values.dim() == 1 and values.shape[0] == n:
            pass
        elif values.dim() == 2 and values.shape[0] == n:
            if positions is None or values.shape[1] != positions:
                raise HypothesisError(
                    f"node {node.name!r}: per-position feature has shape {tuple(values.shape)}, but the model's sites have "
                    f"{positions if positions is not None else 'no'} positions; return shape [{n}] or [{n}, {positions}]."
                )
        else:
            raise HypothesisError(
                f"node {node.name!r}: feature returned shape {tuple(values.shape)}; expected [{n}] (per example) "
                f"or [{n}, n_positions] (per token position) for the {n} examples."
            )
        values = values.long().cpu()  # classes live on the CPU, whatever device the data's columns are on
        if not self.hypothesis.allow_singletons:
            self._check_singletons(node.name, values)
        return values

    def _check_singletons(self, name: str, values: torch.Tensor) -> None:
        shifted = values - values.min()
        flat = shifted if values.dim() == 1 else shifted + (shifted.max() + 1) * torch.arange(values.shape[1])
        _, inverse, counts = torch.unique(flat.reshape(-1), return_inverse=True, return_counts=True)
        alone = (counts[inverse] == 1).reshape(flat.shape)
        if alone.any():
            where = alone if alone.dim() == 1 else alone.any(dim=1)
            first = int(torch.nonzero(where)[0, 0])
            raise HypothesisError(
                f"node {name!r}: {int(where.sum())} of {len(where)} examples are alone in their class "
                f"(e.g. example {first}), so resampling them would silently keep them. Use a coarser feature or a "
                "larger dataset, mark the node EXACT if it should never be resampled, or pass "
                "Hypothesis(..., allow_singletons=True) to accept it."
            )

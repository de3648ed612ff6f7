"""The oracle: DESIGN.md §2's algorithm, one reference at a time, treeified here from the hypothesis.

It shares only the *draws* with a ``Plan``: which example each instance of a tree path runs on,
and its random draw r (``plan.instances[path]``). Which model sites an edge recomputes, which slots
it feeds and where every other input comes from, it derives itself from the hypothesis's edges
and the adapter's sites, so a bug in the plan's routing cannot pass both. It is slow (every value
is a fresh batch-1 forward pass from the input, never an adapter's shortcut) and short enough to
read in one sitting; the batched engine must agree with it on every plan.

Values are memoised per instance by (site, edges whose paths it carries): cost grows with
sites × edges, never with the number of paths (a 12-layer residual stream has astronomically many).
"""

from __future__ import annotations

from functools import cache

import torch

from .hypothesis import OUTPUT, BoundHypothesis, Edge, Hypothesis
from .plan import Plan
from .sites import Dataset, ModelAdapter


def reference_outputs(plan: Plan, adapter: ModelAdapter, data: Dataset, hypothesis: Hypothesis | BoundHypothesis,
                      visits: set | None = None) -> torch.Tensor:
    """The scrubbed output of every reference in the plan, by the algorithm of DESIGN.md §2.

    ``hypothesis`` is the one the plan was drawn for; ``visits``, if given, collects every
    (tree path, instance index) whose draws were read.
    """
    bound = hypothesis if isinstance(hypothesis, BoundHypothesis) else hypothesis.bind(adapter, data)
    sites, site_of = adapter.sites, bound.sites  # model sites; node -> its site
    claimed = set(site_of.values())

    @cache
    def forming(site: str) -> set[str]:
        """The transparent sites no node claims that form ``site``'s input (their own inputs' too)."""
        direct = {p for p in sites[site].parents if sites[p].transparent and p not in claimed}
        return direct.union(*(forming(p) for p in direct))

    def allowed(edge: Edge, child: str) -> set[str]:
        """The sites an edge may recompute on its way from its parent's site to its child's (site ``child``)."""
        if edge.via == "direct":  # only what merely forms the child's input (a wired site's arguments, a stream)
            return forming(child)
        if edge.via == "all":  # every site no node claims and that does not read the raw input
            return {name for name, site in sites.items() if name not in claimed and site.slots}
        return set(edge.via)

    @cache
    def on_path(site: str, edge: Edge, child: str) -> bool:
        """Is ``site`` an allowed intermediate reachable from the edge's source through allowed sites?"""
        return site in allowed(edge, child) and any(
            parent == site_of[edge.parent] or on_path(parent, edge, child) for parent in sites[site].parents)

    @cache  # a pure function of the plan: memoised only to keep the oracle fast enough to use
    def clean(example: int) -> dict[str, torch.Tensor]:
        return {site: value.clone() for site, value in adapter.clean(data.inputs[example:example + 1]).items()}

    @cache
    def run(path: tuple[str, ...], index: tuple[int, ...]) -> torch.Tensor:
        """Output of the node at ``path`` (output, its parent, ...) for its instance at ``index``."""
        node, instance = path[-1], plan.instances[path]
        if visits is not None:
            visits.add((path, index))
        x = int(instance.examples[index])
        if bound.is_leaf(node):  # a leaf reads its whole input from its own sample
            return clean(x)[site_of[node]]
        r = int(instance.draws[index])
        memo: dict[tuple[str, frozenset], torch.Tensor] = {}

        def from_parent(edge: Edge) -> torch.Tensor:
            below = path + (edge.parent,)
            if not bound.is_positional(edge.parent):
                return run(below, index)
            # per position: position t of the input is position t of the parent's instance t
            return torch.stack([run(below, index + (t,))[:, t] for t in range(adapter.n_positions)], dim=1)

        def value(site: str, active: frozenset, left_out: int) -> torch.Tensor:
            """The value of ``site`` feeding an input whose claimed paths are those of the ``active`` edges;
            an input no edge claims is clean on example ``left_out`` (r, or x under unclaimed="reference")."""
            if (site, active, left_out) not in memo:
                sources = [edge for edge in active if site_of[edge.parent] == site]
                assert len(sources) <= 1, f"two edges claim site {site!r} into one slot of {node!r}"
                onward = frozenset(edge for edge in active if on_path(site, edge, site_of[node]))
                if sources:
                    memo[site, active, left_out] = from_parent(sources[0])
                elif onward:  # on a claimed path: recompute it, its inputs routed the same way
                    memo[site, active, left_out] = evaluate(site, {slot: (onward, left_out) for slot in sites[site].slots})
                else:  # left out: the clean value on the node's random draw (or on its own example)
                    memo[site, active, left_out] = clean(left_out)[site]
            return memo[site, active, left_out]

        def evaluate(site: str, active: dict[str, tuple[frozenset, int]]) -> torch.Tensor:
            slots = {slot: adapter.slot_input(site, slot, [value(parent, *active[slot]) for parent in sites[site].parents])
                     for slot in sites[site].slots}
            return adapter.run(site, slots, data.inputs[x:x + 1], shortcut=False).clone()

        edges = bound.edges(node)
        own = sites[site_of[node]]
        def setting(slot: str) -> str:  # the slot's own, else the node's, else the hypothesis's
            given = bound.hypothesis.nodes[node].unclaimed
            given = given.get(slot) if isinstance(given, dict) else given
            return given or bound.hypothesis.unclaimed

        return evaluate(own.name, {slot: (frozenset(e for e in edges if e.into is None or slot in e.into),
                                          x if setting(slot) == "reference" else r) for slot in own.slots})

    refs = plan.instances[(OUTPUT,)].examples
    return torch.cat([run((OUTPUT,), (i,)) for i in range(len(refs))])

"""Treeify a bound hypothesis and draw every sample up front: the plan is plain data.

Two parts:
- a *recipe* per node (independent of the data): for each input slot of the node's
  site and each model site feeding it, where the value comes from — the parent
  node's scrubbed value, the clean value on the node's random draw r, or a
  recomputation of an intermediate site on a claimed path;
- *instances* per tree path (output, parent, grandparent, ...): which example each
  instance runs on, and its draw r. A per-position parent adds a position axis.

The reference implementation and the batched engine both execute this same plan.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

import networkx as nx
import numpy as np
import torch

from .hypothesis import OUTPUT, BoundHypothesis, Edge


@dataclass(frozen=True)
class FromParent:
    """The value the parent node computes on its own sample."""

    node: str


@dataclass(frozen=True)
class FromDraw:
    """The clean value on the node's random draw r: an input the hypothesis leaves out."""


FROM_DRAW = FromDraw()


@dataclass(frozen=True)
class FromOwn:
    """The clean value on the instance's own example: an input left out under ``unclaimed="reference"``."""


FROM_OWN = FromOwn()


@dataclass(frozen=True)
class Recompute:
    """Compute ``site`` afresh; ``slots`` holds, per slot, the term for each parent site."""

    site: str
    slots: tuple[tuple[str, tuple[tuple[str, "Term"], ...]], ...]


Term = Union[FromParent, FromDraw, FromOwn, Recompute]


def route(bound: BoundHypothesis, name: str) -> Recompute | None:
    """The recipe of one node; None for a leaf, which is clean on its own sample."""
    if bound.is_leaf(name):
        return None
    adapter = bound.adapter
    model = bound.model_graph()
    site = adapter.sites[bound.sites[name]]
    edges = bound.edges(name)
    reach = {}
    for edge in edges:
        allowed = bound.intermediates(edge, name)
        source = bound.sites[edge.parent]
        reach[edge] = allowed & nx.descendants(model.subgraph(allowed | {source}), source)

    @lru_cache(maxsize=None)
    def term(parent_site: str, active: frozenset[Edge], left_out: Term) -> Term:
        for edge in active:
            if bound.sites[edge.parent] == parent_site:
                return FromParent(edge.parent)
        onward = frozenset(e for e in active if parent_site in reach[e])
        return on_paths(parent_site, onward, left_out) if onward else left_out

    @lru_cache(maxsize=None)
    def on_paths(site_name: str, onward: frozenset[Edge], left_out: Term) -> Recompute:
        """One term per site and edges whose paths it lies on, whichever later site reads it: the recipe is a
        DAG whose shared terms the engine computes once."""
        return recompute(site_name, lambda slot: onward, lambda slot: left_out)

    def recompute(site_name: str, active_for, left_out_for) -> Recompute:
        s = adapter.sites[site_name]
        return Recompute(site_name, tuple(
            (slot, tuple((p, term(p, active_for(slot), left_out_for(slot))) for p in s.parents)) for slot in s.slots
        ))

    # an unclaimed input anywhere under a slot of the node (recomputed sites included) follows that slot's setting
    return recompute(site.name, lambda slot: frozenset(e for e in edges if e.into is None or slot in e.into),
                     lambda slot: FROM_OWN if bound.unclaimed(name, slot) == "reference" else FROM_DRAW)


@dataclass
class Instances:
    """All instances of one tree path: the example each runs on, and its draw r."""

    examples: torch.Tensor
    draws: torch.Tensor | None


@dataclass
class Plan:
    """Everything a run needs, as data: references, recipes and sampled instances."""

    refs: torch.Tensor
    recipes: dict[str, Recompute | None]
    instances: dict[tuple[str, ...], Instances]
    positional: dict[str, bool]
    sites: dict[str, str]

    @property
    def paths(self) -> list[tuple[str, ...]]:
        """Tree paths, deepest first: the order in which values become available."""
        return sorted(self.instances, key=len, reverse=True)

    def chunk(self, start: int, stop: int) -> "Plan":
        """The plan restricted to references ``start:stop``: every instance array leads with the reference axis."""
        return Plan(
            refs=self.refs[start:stop],
            recipes=self.recipes,
            instances={path: Instances(inst.examples[start:stop], None if inst.draws is None else inst.draws[start:stop])
                       for path, inst in self.instances.items()},
            positional=self.positional,
            sites=self.sites,
        )

    def digest(self) -> str:
        """A short hash of the sampled instances: same seed, same digest."""
        h = hashlib.sha256()
        h.update(self.refs.numpy().tobytes())
        for path in sorted(self.instances):
            inst = self.instances[path]
            h.update("/".join(path).encode())
            h.update(inst.examples.numpy().tobytes())
            if inst.draws is not None:
                h.update(inst.draws.numpy().tobytes())
        return h.hexdigest()[:16]


def make_plan(bound: BoundHypothesis, refs: torch.Tensor, sampler, rng: np.random.Generator) -> Plan:
    """Treeify the hypothesis from the output down and draw every sample, with replacement."""
    n_examples = len(bound.data)
    instances: dict[tuple[str, ...], Instances] = {}

    def visit(path: tuple[str, ...], examples: torch.Tensor) -> None:
        name = path[-1]
        leaf = bound.is_leaf(name)
        # drawn even where every slot keeps its inputs on the example (unclaimed="reference"): the draws of the
        # rest of the tree then do not depend on that setting
        draws = None if leaf else sampler.draw_free(name, examples, n_examples, rng)
        instances[path] = Instances(examples, draws)
        for edge in bound.edges(name):
            visit(path + (edge.parent,), sampler.draw(edge.parent, examples, rng))

    visit((OUTPUT,), refs)
    return Plan(
        refs=refs,
        recipes={name: route(bound, name) for name in bound.order},
        instances=instances,
        positional={name: bound.is_positional(name) for name in bound.order},
        sites=dict(bound.sites),
    )

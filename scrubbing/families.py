"""Candidate refinements for the adversary: partitions it may join onto a hypothesis's nodes.

A family is a plain function ``family(context)`` returning (or yielding) refinements; pass your own
to ``scrub(..., families=[*DEFAULT_FAMILIES, mine])``. Families are consumed lazily, in order, and
only as far as the search budget reaches, so put the most promising candidates first. A refinement names the nodes it
refines (their classes, and the draw r of the inputs they leave out) and the partition
ψ it joins on, as class ids per example ``[N]`` or per token position ``[N, T]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterable

import numpy as np
import torch

from .hypothesis import BoundHypothesis
from .plan import FromDraw, Recompute, route
from .task import Task


@dataclass(frozen=True)
class Refinement:
    description: str
    targets: tuple[str, ...]
    classes: torch.Tensor = field(repr=False)  # on the CPU, as the hypothesis's own classes

    def __post_init__(self):
        object.__setattr__(self, "classes", self.classes.cpu())  # a family may build them from data on a GPU


@dataclass
class SearchContext:
    """What families may look at: the bound hypothesis, per-example losses and clean activations."""

    bound: BoundHypothesis
    task: Task
    clean_loss: np.ndarray  # per example, clean model
    scrub_delta: np.ndarray  # per example, one random scrub under the hypothesis minus clean
    seed: int
    inputs: torch.Tensor | None = None  # the dataset's inputs on the model's device
    _activations: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return len(self.task.data)

    @property
    def resampled(self) -> list[str]:
        """Nodes whose class the adversary may refine (not exact, not the output)."""
        return [n for n in self.bound.order if self.bound.classes[n] is not None]

    @cached_property
    def draws_used(self) -> frozenset[str]:
        """Nodes whose draw r feeds some input (a ``FromDraw`` in the node's recipe). Every other node keeps each
        input on its own example or takes it from a parent (``unclaimed="reference"``, or every input claimed),
        so a refinement of its draw changes nothing."""
        return frozenset(n for n in self.bound.order if not self.bound.is_leaf(n) and _reads_draw(route(self.bound, n)))

    def changes_anything(self, refinement: Refinement) -> bool:
        """Whether joining ``refinement`` can change a scrub: it refines some target's classes, or the draw r of
        a target that uses it (``joined_sampler`` refines the draw only for per-example partitions)."""
        return any(self.bound.classes.get(t) is not None or (refinement.classes.dim() == 1 and t in self.draws_used)
                   for t in refinement.targets)

    def activation(self, site: str) -> torch.Tensor:
        """Clean output of a site on every example (computed once)."""
        if site not in self._activations:
            adapter = self.task.adapter
            inputs = self.task.data.inputs if self.inputs is None else self.inputs
            chunks = [adapter.clean(inputs[i:i + 1024])[site].cpu() for i in range(0, len(inputs), 1024)]
            self._activations[site] = torch.cat(chunks).float()
        return self._activations[site]

    def subtree(self, node: str) -> tuple[str, ...]:
        """The node and every node upstream of it: what decides the node's value."""
        import networkx as nx

        graph = self.bound.hypothesis.graph
        return tuple(n for n in self.bound.order if n == node or n in nx.ancestors(graph, node))


Family = Callable[[SearchContext], Iterable[Refinement]]


def _reads_draw(term) -> bool:
    if isinstance(term, FromDraw):
        return True
    return isinstance(term, Recompute) and any(_reads_draw(sub) for _, entries in term.slots for _, sub in entries)


def _quantile_bins(values: torch.Tensor, k: int) -> torch.Tensor:
    edges = torch.quantile(values.reshape(-1).double(), torch.linspace(0, 1, k + 1, dtype=torch.double)[1:-1])
    return torch.bucketize(values.double(), edges)


def _frozen(mask: np.ndarray) -> torch.Tensor:
    """Examples in ``mask`` each form their own class (never resampled); the rest share one."""
    return torch.where(torch.from_numpy(mask), torch.arange(len(mask)), -1)


def _loss_masks(ctx: SearchContext) -> list[tuple[str, np.ndarray]]:
    return [("scrubbing under the hypothesis lowers the loss", ctx.scrub_delta < 0),
            ("scrubbing under the hypothesis raises the loss", ctx.scrub_delta > 0),
            ("the clean loss is above its mean", ctx.clean_loss > ctx.clean_loss.mean()),
            ("the clean loss is below its mean", ctx.clean_loss < ctx.clean_loss.mean())]


def freeze_by_loss(ctx: SearchContext) -> Iterable[Refinement]:
    """Leave alone the examples scrubbing helps (or hurts) and resample the rest: the cancellation attack.

    If a hypothesis's per-example changes have both signs, freezing one sign moves the mean.
    """
    everything = tuple(ctx.bound.order)
    for words, mask in _loss_masks(ctx):
        if 0 < mask.sum() < len(mask):
            yield Refinement(f"whole hypothesis frozen on the examples where {words}", everything, _frozen(mask))


def freeze_nodes_by_loss(ctx: SearchContext) -> Iterable[Refinement]:
    """The same attack on one node and the nodes upstream of it."""
    for node in ctx.resampled:
        for words, mask in _loss_masks(ctx):
            if 0 < mask.sum() < len(mask):
                yield Refinement(f"node {node!r} and its inputs frozen on the examples where {words}",
                                 ctx.subtree(node), _frozen(mask))


def activation_bins(ctx: SearchContext, n_pcs: int = 2, n_random: int = 2) -> Iterable[Refinement]:
    """Quantile bins of 1-D projections of the node's own activation: top principal directions, random ones."""
    g = torch.Generator().manual_seed(ctx.seed)
    for node in ctx.resampled:
        site = ctx.bound.sites[node]
        acts = ctx.activation(site)
        positional = ctx.bound.is_positional(node)
        if acts.dim() == 3 and not positional:
            acts = acts.mean(dim=1)  # one value per example: average over positions
        flat = acts.reshape(-1, acts.shape[-1])
        centred = flat - flat.mean(0)
        directions = []
        if centred.abs().max() > 0:
            _, _, v = torch.linalg.svd(centred[: min(len(centred), 20000)], full_matrices=False)
            directions += [(f"PC{i + 1}", v[i]) for i in range(min(n_pcs, len(v)))]
        for i in range(n_random):
            d = torch.randn(flat.shape[-1], generator=g)
            directions.append((f"random direction {i + 1}", d / d.norm()))
        for name, direction in directions:
            projection = (acts - flat.mean(0)) @ direction
            for k in ((2, 4) if name.startswith("PC") else (2,)):
                yield Refinement(f"node {node!r} split by {k} bins of {name} at {site}", (node,),
                                 _quantile_bins(projection, k))


def label_columns(ctx: SearchContext, max_classes: int = 16) -> Iterable[Refinement]:
    """The task's own per-example columns with few values (labels, counts...)."""
    for name, column in ctx.task.data.columns.items():
        if column.dim() != 1 or column.dtype.is_floating_point:
            continue
        if 2 <= len(torch.unique(column)) <= max_classes:
            for node in ctx.resampled:
                yield Refinement(f"node {node!r} split by column {name!r}", (node,), column.long())


def token_identity(ctx: SearchContext) -> Iterable[Refinement]:
    """The input token at the first and last position."""
    inputs = ctx.task.data.inputs
    if inputs.dim() != 2 or inputs.dtype.is_floating_point:
        return
    for node in ctx.resampled:
        for p in sorted({0, inputs.shape[1] - 1}):
            yield Refinement(f"node {node!r} split by the token at position {p}", (node,), inputs[:, p].long())


def other_nodes(ctx: SearchContext) -> Iterable[Refinement]:
    """Features the hypothesis itself assigns to its other nodes."""
    for node in ctx.resampled:
        for other in ctx.resampled:
            values = ctx.bound.classes[other]
            if other == node or (values.dim() == 2 and not ctx.bound.is_positional(node)):
                continue
            yield Refinement(f"node {node!r} split by the feature of node {other!r}", (node,), values)


DEFAULT_FAMILIES: list[Family] = [freeze_by_loss, activation_bins, label_columns, token_identity, other_nodes,
                                  freeze_nodes_by_loss]

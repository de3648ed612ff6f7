"""The oracle: the published algorithm, one reference at a time, with no sharing and no cache tricks.

``run(n, x)`` from DESIGN.md §2, executing the draws a ``Plan`` recorded. It is slow
(every instance is a fresh batch-1 forward pass from the input, never an adapter's
shortcut) and short, so it can be read in one
sitting; the batched engine must agree with it on every plan.
"""

from __future__ import annotations

from functools import cache

import torch

from .plan import FromDraw, FromParent, Plan
from .sites import Dataset, ModelAdapter


def reference_outputs(plan: Plan, adapter: ModelAdapter, data: Dataset) -> torch.Tensor:
    """The scrubbed output of every reference in the plan."""

    @cache  # values are cloned: they are kept across later model calls
    def clean_run(example: int) -> dict[str, torch.Tensor]:
        return {site: value.clone() for site, value in adapter.clean(data.inputs[example:example + 1]).items()}

    def clean(example: int, site: str) -> torch.Tensor:
        return clean_run(example)[site]

    @cache  # a pure function of the plan: memoised only to keep the oracle fast enough to use
    def run(path: tuple[str, ...], index: tuple[int, ...]) -> torch.Tensor:
        """Output of the node at ``path``, for its instance at ``index``."""
        node = path[-1]
        instance = plan.instances[path]
        x = int(instance.examples[index])
        recipe = plan.recipes[node]
        if recipe is None:  # a leaf reads its whole input from its own sample
            return clean(x, plan.sites[node])
        r = int(instance.draws[index])

        def value(site: str, term) -> torch.Tensor:
            if isinstance(term, FromParent):
                below = path + (term.node,)
                if not plan.positional[term.node]:
                    return run(below, index)
                positions = [run(below, index + (t,))[:, t] for t in range(adapter.n_positions)]
                return torch.stack(positions, dim=1)
            if isinstance(term, FromDraw):
                return clean(r, site)
            return compute(term)

        def compute(recipe) -> torch.Tensor:
            slots = {
                slot: adapter.slot_input(recipe.site, slot, [value(site, term) for site, term in entries])
                for slot, entries in recipe.slots
            }
            return adapter.run(recipe.site, slots, data.inputs[x:x + 1], shortcut=False).clone()

        return compute(recipe)

    return torch.cat([run(("output",), (i,)) for i in range(len(plan.refs))])

"""Batched, cached execution of a plan.

Every value in a treeified run is a *row* of some site's output bank: either the
clean output on an example (rows ``0..N-1``, read from a cache) or a recomputation
(rows ``N..``). A recomputation is identified by its site, its context example and,
for every slot, the rows of all its parent sites, one per position; identical keys
are computed once, and a key whose inputs are all clean on its own example *is* that
clean row (which is why the identity hypothesis gives exactly zero gap). Sites are
then computed in topological order, each as a few large batched calls.

Only the model work the plan needs is done: the clean pass on an example stops at the
deepest site whose clean value on it is read, and a recomputation runs through the
adapter's shortcut for its site (starting at the site's block) where calibration
verified one.
"""

from __future__ import annotations

import torch

from .plan import FromDraw, FromOwn, FromParent, Plan, Recompute
from .errors import ModelError
from .sites import Dataset, ModelAdapter


class Engine:
    """Execute plans on one model and dataset.

    ``batch_size`` bounds each model call; ``chunk_refs`` bounds how many references are
    compiled and executed at once, so peak memory does not grow with the number of
    references (sharing happens within a chunk).
    """

    def __init__(self, adapter: ModelAdapter, data: Dataset, batch_size: int = 1024, chunk_refs: int = 2048,
                 device: str | torch.device | None = None):
        self.adapter = adapter
        self.data = data
        self.inputs = data.inputs if device is None else data.inputs.to(device)
        self.batch_size = batch_size
        self.chunk_refs = chunk_refs
        self.stats = {"clean_rows": 0, "computed_rows": 0, "requested_rows": 0}

    def outputs(self, plan: Plan) -> torch.Tensor:
        """The scrubbed output of every reference, in plan order."""
        outputs = []
        for start in range(0, len(plan.refs), self.chunk_refs):
            chunk = plan.chunk(start, start + self.chunk_refs)
            compiled = _Compiler(self.adapter, len(self.data), chunk)
            outputs.append(self._execute(compiled, compiled.compile()).cpu())
        return torch.cat(outputs)

    # -- execution ---------------------------------------------------------------------
    def _execute(self, compiled: "_Compiler", output_rows: torch.Tensor) -> torch.Tensor:
        """Index work first (which clean rows, which distinct recomputations, where each lands in its
        site's bank), then the model work: clean passes, then each site's recomputations in order."""
        adapter, n = self.adapter, len(self.data)
        depth, read = self._clean_depth(compiled, output_rows)
        clean_examples = torch.nonzero(depth >= 0)[:, 0]
        where = torch.full((n,), -1, dtype=torch.long)
        where[clean_examples] = torch.arange(len(clean_examples))
        size = {name: len(clean_examples) if name in read else 0 for name in adapter.sites}
        moved: dict[str, torch.Tensor] = {}  # provisional id - n -> bank index, per site

        def locate(site: str, ids: torch.Tensor) -> torch.Tensor:
            out = torch.empty_like(ids)
            clean = ids < n
            out[clean] = where[ids[clean]]
            if (~clean).any():
                out[~clean] = moved[site][ids[~clean] - n]
            return out

        work = []
        base: dict[str, int] = {}  # where each site's `moved` starts in `all_moved`: one lookup for all columns
        all_moved = torch.empty(0, dtype=torch.long)
        for name in (site for site in adapter.sites if site in compiled.pending):  # parents before children
            pending = compiled.pending[name]
            contexts = torch.cat([ctx for ctx, _ in pending])
            keys = torch.cat([k for _, k in pending])  # [M, n_terms, Tr]
            columns = compiled.columns[name]
            located = torch.empty_like(keys)
            clean = keys < n
            located[clean] = where[keys[clean]]
            if not clean.all():
                start = torch.tensor([base.get(parent, 0) for _, parent in columns])
                fresh = ~clean
                located[fresh] = all_moved[(keys - n + start[None, :, None])[fresh]]
            flat = located.reshape(len(located), -1)
            if adapter.uses_context:
                flat = torch.cat([contexts[:, None], flat], dim=1)
            unique, inverse = torch.unique(flat, dim=0, return_inverse=True)
            first = torch.full((len(unique),), len(inverse), dtype=torch.long).scatter_reduce(
                0, inverse, torch.arange(len(inverse)), reduce="amin")
            work.append((name, columns, located[first], contexts[first], size[name]))
            moved[name] = size[name] + inverse
            base[name] = len(all_moved)
            all_moved = torch.cat([all_moved, moved[name]])
            size[name] += len(unique)
            self.stats["computed_rows"] += len(unique)
            self.stats["requested_rows"] += len(inverse)

        bank = self._clean_bank(clean_examples, depth[clean_examples], read, size)
        self.stats["clean_rows"] += len(clean_examples)
        for name, columns, rows, contexts, offset in work:
            self._compute(name, columns, rows, contexts, bank, offset, size)
        out_site = adapter.output
        return bank[out_site][locate(out_site, output_rows).to(bank[out_site].device)]

    def _clean_depth(self, compiled: "_Compiler", output_rows: torch.Tensor) -> tuple[torch.Tensor, set[str]]:
        """Per example, the last site (index in ``adapter.sites``) whose clean value on it is read (-1: none);
        and the sites whose clean values are read at all."""
        n, order = len(self.data), {name: i for i, name in enumerate(self.adapter.sites)}
        depth = torch.full((n,), -1, dtype=torch.long)
        read: set[str] = set()

        def need(site: str, ids: torch.Tensor) -> None:
            ids = ids[ids < n]
            if len(ids):
                read.add(site)
                depth.scatter_reduce_(0, ids, torch.full_like(ids, order[site]), reduce="amax")

        need(self.adapter.output, output_rows)
        for site, requests in compiled.pending.items():  # every column of a request at once
            columns = compiled.columns[site]
            column_order = torch.tensor([order[parent] for _, parent in columns])
            for _, keys in requests:
                clean = keys < n
                if not clean.any():
                    continue
                depth.scatter_reduce_(0, keys[clean], column_order[None, :, None].expand_as(keys)[clean],
                                      reduce="amax")
                for j in torch.nonzero(clean.any(dim=2).any(dim=0))[:, 0].tolist():
                    read.add(columns[j][1])
        return depth, read

    def _clean_bank(self, examples: torch.Tensor, depth: torch.Tensor, read: set[str],
                    size: dict[str, int]) -> dict[str, torch.Tensor]:
        """Clean outputs of the ``read`` sites on ``examples``, row i for example i, each pass run only as
        far as its ``depth`` (rows of deeper sites are left unset: nothing reads them). Each bank holds
        ``size[site]`` rows, the recomputations after the clean rows, so nothing is copied twice."""
        bank: dict[str, torch.Tensor] = {}
        names = list(self.adapter.sites)
        for level in torch.unique(depth).tolist():
            rows = torch.nonzero(depth == level)[:, 0]
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start:start + self.batch_size]
                inputs = self.inputs[examples[batch].to(self.inputs.device)]
                for name, value in self.adapter.clean(inputs, upto=names[level]).items():
                    if name in read:
                        _write(bank, size, name, batch.to(value.device), value)
        return bank

    def _compute(self, site: str, columns, rows: torch.Tensor, contexts: torch.Tensor, bank, offset: int,
                 size: dict[str, int]) -> None:
        """Run ``site`` on each row of gathered parent values, in batches, into its bank from ``offset``."""
        adapter = self.adapter
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            slot_inputs = {}
            for slot in adapter.sites[site].slots:
                parts = [_gather(bank[parent], chunk[:, j]) for j, (s, parent) in enumerate(columns) if s == slot]
                slot_inputs[slot] = adapter.slot_input(site, slot, parts)
            context = contexts[start:start + self.batch_size].to(self.inputs.device)
            value = adapter.run(site, slot_inputs, self.inputs[context])
            _write(bank, size, site, slice(offset + start, offset + start + len(chunk)), value)


def _write(bank: dict[str, torch.Tensor], size: dict[str, int], site: str, where, value: torch.Tensor) -> None:
    """Put ``value`` at rows ``where`` of the site's bank, allocating it (``size[site]`` rows) on first use."""
    if site not in bank:
        bank[site] = value.new_empty((size[site], *value.shape[1:]))
    bank[site][where] = value


def _gather(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of a site's bank; ``rows`` is [B, Tr]: one row per position, or one for all (Tr=1).

    Per position, row ``r`` at position ``t`` is entry ``r * T + t`` of the bank seen as a
    list of position vectors: one ``index_select``, several times faster than 2-D indexing.
    """
    rows = rows.to(values.device)
    if rows.shape[1] == 1:
        return values.index_select(0, rows[:, 0])
    width = rows.shape[1]
    if values.dim() < 2 or values.shape[1] != width:
        raise ModelError(f"a site's output has shape {tuple(values.shape)}, but the plan has {width} positions; "
                         f"inputs of another length than the adapter was calibrated on?")
    flat = (rows * width + torch.arange(width, device=values.device)).reshape(-1)
    picked = values.reshape(-1, *values.shape[2:]).index_select(0, flat)
    return picked.reshape(*rows.shape, *values.shape[2:])


class _Compiler:
    """Turn a plan into row requests per site (data only; nothing runs the model here)."""

    def __init__(self, adapter: ModelAdapter, n_examples: int, plan: Plan):
        self.adapter = adapter
        self.n = n_examples
        self.plan = plan
        positional = any(plan.positional.values())
        self.width = adapter.n_positions if positional else 1
        self.pending: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.count: dict[str, int] = {}
        self.columns = {
            name: [(slot, parent) for slot in site.slots for parent in site.parents]
            for name, site in adapter.sites.items()
        }

    def compile(self) -> torch.Tensor:
        rows: dict[tuple[str, ...], torch.Tensor] = {}
        plan = self.plan
        for path in plan.paths:
            inst = plan.instances[path]
            recipe = plan.recipes[path[-1]]
            if recipe is None:
                rows[path] = inst.examples[..., None].expand(*inst.examples.shape, self.width)
                continue
            parents = {}
            for node in _parents_of(recipe):
                below = rows[path + (node,)]
                parents[node] = below.diagonal(dim1=-2, dim2=-1) if plan.positional[node] else below
            rows[path] = self._recipe(recipe, inst.examples, inst.draws, parents, {})
        return rows[("output",)][:, 0]

    def _recipe(self, recipe: Recompute, contexts, draws, parents, memo) -> torch.Tensor:
        if id(recipe) in memo:
            return memo[id(recipe)]
        shape = (*contexts.shape, self.width)
        terms = []
        for _, entries in recipe.slots:
            for _, term in entries:
                if isinstance(term, FromParent):
                    terms.append(parents[term.node])
                elif isinstance(term, FromDraw):
                    terms.append(draws[..., None].expand(shape))
                elif isinstance(term, FromOwn):
                    terms.append(contexts[..., None].expand(shape))
                else:
                    terms.append(self._recipe(term, contexts, draws, parents, memo))
        keys = torch.stack(terms, dim=-2)
        result = self._request(recipe.site, contexts, keys)[..., None].expand(shape)
        memo[id(recipe)] = result
        return result

    def _request(self, site: str, contexts: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Row ids for these computations: a clean row where the inputs are clean, else a new one."""
        flat_ctx = contexts.reshape(-1)
        flat = keys.reshape(len(flat_ctx), -1)
        if self.adapter.uses_context:
            clean = (flat == flat_ctx[:, None]).all(dim=1)
        else:
            clean = (flat == flat[:, :1]).all(dim=1) & (flat[:, 0] < self.n)
        ids = flat[:, 0].clone()
        fresh = ~clean
        count = int(fresh.sum())
        if count:
            start = self.count.get(site, 0)
            ids[fresh] = self.n + start + torch.arange(count)
            self.count[site] = start + count
            self.pending.setdefault(site, []).append(
                (flat_ctx[fresh], keys.reshape(len(flat_ctx), *keys.shape[-2:])[fresh])
            )
        return ids.reshape(contexts.shape)


def _parents_of(recipe: Recompute) -> frozenset[str]:
    """The parent nodes a recipe reads. A recipe is a DAG (sub-terms are shared objects, one per site
    and set of active edges), so the walk visits each distinct term once: linear in the terms, not in
    the paths through them (which are exponential in a residual model's depth)."""
    memo: dict[int, frozenset[str]] = {}
    order = _terms(recipe)
    for term in order:  # children before parents
        found = set()
        for _, entries in term.slots:
            for _, sub in entries:
                if isinstance(sub, FromParent):
                    found.add(sub.node)
                elif isinstance(sub, Recompute):
                    found |= memo[id(sub)]
        memo[id(term)] = frozenset(found)
    return memo[id(recipe)]


def _terms(recipe: Recompute) -> list[Recompute]:
    """The distinct ``Recompute`` terms of a recipe, each once, every term after the terms it reads
    (iterative: a 12-layer model's recipe nests deeper than a comfortable recursion)."""
    seen: set[int] = set()
    order: list[Recompute] = []
    stack: list[tuple[Recompute, bool]] = [(recipe, False)]
    while stack:
        term, expanded = stack.pop()
        if expanded:
            order.append(term)
            continue
        if id(term) in seen:
            continue
        seen.add(id(term))
        stack.append((term, True))
        for _, entries in term.slots:
            for _, sub in entries:
                if isinstance(sub, Recompute) and id(sub) not in seen:
                    stack.append((sub, False))
    return order

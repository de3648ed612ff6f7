"""Batched, cached execution of a plan.

Every value in a treeified run is a *row* of some site's output bank: either the clean output on an example
(ids ``0..N-1``, computed by clean passes) or a recomputation (ids ``N..``). Per hypothesis node, over all its
tree paths at once:
- its instances are deduplicated by whole-example identity (context where anything reads it, draw r, the row
  of each parent node; a per-position parent's row is first assembled into one row, position t from instance t);
- each recipe term on an instance is the clean row where everything it reads is clean on one example (which
  is why the identity hypothesis gives exactly zero gap), else one fresh row;
- a slot's input is the sum of its parent sites' values plus a constant. Where a site's parents extend an
  earlier site's (a residual stream), the earlier partial sum is reused, so summing costs about one add per
  site per set of active edges, not one per parent per slot. What the hypothesis leaves out (inputs taken on the
  draw r, or on the instance's own example) is read as a *residual state* (``Prefix``: the clean sum of a parent
  list, one row) with the few other entries swapped in, not one clean row per left-out site.
Sites are computed in topological order, in *steps*: the sites calibration verified together (a block's heads)
go through one model call per batch. A bank is dropped after the last step that reads it, and references go in
chunks sized so that the most the banks hold at once fits ``memory_budget`` bytes (model calls get a quarter).

Only the model work the plan needs is done: the clean pass on an example stops at the deepest site read on it,
and a recomputation runs through the adapter's verified shortcut for its site.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable

import torch

from .errors import ModelError, ScrubError
from .plan import FromDraw, FromOwn, FromParent, Plan, Recompute
from .sites import Dataset, ModelAdapter, parent_sum

DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes of recomputed rows held at once: fits a laptop


class Engine:
    """Execute plans on one model and dataset.

    ``batch_size`` bounds the rows of each model call; ``chunk_refs`` bounds how many references are compiled
    and executed at once. ``memory_budget`` (bytes) lowers both: a quarter of it bounds what one model call
    holds (its readings, or its slot inputs and the model's copies of them), the rest a chunk's banks (clean and
    recomputed rows) and its largest step's slot inputs, so peak memory follows the budget, not the number of
    references (sharing happens within a chunk).
    """

    def __init__(self, adapter: ModelAdapter, data: Dataset, batch_size: int = 1024, chunk_refs: int = 2048,
                 device: str | torch.device | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        if memory_budget < 1:
            raise ScrubError(f"memory_budget must be a positive number of bytes; got {memory_budget!r}.")
        self.adapter = adapter
        self.data = data
        self.inputs = data.inputs.to(adapter.device if device is None else device)  # by default where the model is
        self.batch_size = batch_size
        self.chunk_refs = chunk_refs
        self.memory_budget = memory_budget
        # rows: clean examples run, fresh site values computed (``run_rows`` of them went through the model: a
        # step's sites share rows), rows of instances asked for, parent rows gathered into slot sums
        self.stats = {"clean_rows": 0, "computed_rows": 0, "run_rows": 0, "requested_rows": 0, "gathered_rows": 0,
                      "model_calls": 0, "chunks": 0}
        # wall-clock seconds of the two kinds of model work, for profiles (benchmarks/perf/run.py)
        self.seconds: dict = {"clean_bank": 0.0, "sites": {}}
        self._row_bytes: dict[str, int] | None = None
        self._levels: dict[str, list[int]] | None = None
        self.prefixes: dict[tuple[str, ...], Prefix] = {}  # residual states by parent list, shared by chunks

    def outputs(self, plan: Plan) -> torch.Tensor:
        """The scrubbed output of every reference, in plan order."""
        outputs, start, size = [], 0, self.chunk_refs
        while start < len(plan.refs):
            chunk = plan.chunk(start, start + size)
            compiled = _Compiler(self.adapter, len(self.data), chunk, self.levels(), self.prefixes)
            compiled.compile()
            layout = _Layout(compiled, self.adapter, len(self.data))
            schedule = _Schedule(compiled, self.steps(compiled), self.adapter.output)
            fit = self._refs_that_fit(compiled, layout, schedule, len(chunk.refs))
            if fit < len(chunk.refs):
                size = fit
                continue
            outputs.append(self._execute(compiled, layout, schedule).cpu())
            start += len(chunk.refs)
        return torch.cat(outputs)

    def levels(self) -> dict[str, list[int]]:
        """Per site, the parent counts at which its partial slot sum may be taken from an earlier site's:
        the chain of earlier sites whose parent lists are prefixes of this one's (longest first)."""
        if self._levels is None:
            by_parents: dict[tuple[str, ...], str] = {}
            lengths: set[int] = set()
            levels: dict[str, list[int]] = {}
            for name, site in self.adapter.sites.items():
                parents = tuple(site.parents)
                pred = next((by_parents[parents[:k]] for k in sorted(lengths, reverse=True)
                             if 0 < k <= len(parents) and parents[:k] in by_parents), None)
                chain = list(levels[pred]) if pred is not None else []
                if not chain or chain[-1] != len(parents):
                    chain.append(len(parents))
                levels[name] = chain
                by_parents.setdefault(parents, name)
                lengths.add(len(parents))
            self._levels = levels
        return self._levels

    def row_bytes(self) -> dict[str, int]:
        """Bytes of one row of each site's output (measured once, on one example's clean pass)."""
        if self._row_bytes is None:
            clean = self.adapter.clean(self.inputs[:1])
            self._row_bytes = {name: value[0].numel() * value.element_size() for name, value in clean.items()}
        return self._row_bytes

    def call_rows(self, row_bytes: int) -> int:
        """Rows per model call: ``batch_size``, fewer where a call holding ``row_bytes`` per row would not fit a
        quarter of the memory budget."""
        return max(1, min(self.batch_size, self.memory_budget // 4 // max(1, row_bytes)))

    def _refs_that_fit(self, compiled: "_Compiler", layout: "_Layout", schedule: "_Schedule", refs: int) -> int:
        """How many of the chunk's references fit the memory budget left beside one call: the most its banks
        (clean rows, and fresh ones from their step until the last step reading them) and a step's partial sums
        hold at once, at one row's bytes per site."""
        if not compiled.count or refs <= 1:
            return refs
        row = self.row_bytes()
        need = schedule.peak(layout, lambda key: row.get(key.last if isinstance(key, Prefix) else key, 0))
        budget = self.memory_budget - self.memory_budget // 4
        if need <= budget:
            return refs
        return max(1, min(refs - 1, int(refs * budget / need)))

    # -- execution ---------------------------------------------------------------------
    def _execute(self, compiled: "_Compiler", layout: "_Layout", schedule: "_Schedule") -> torch.Tensor:
        bank = self._clean_bank(layout)
        self.stats["clean_rows"] += len(layout.examples)
        self.stats["requested_rows"] += compiled.requested
        self.stats["chunks"] += 1
        for step, frees in zip(schedule.steps, schedule.frees):
            self._compute(step, compiled.requests, layout, bank)
            for name in step:
                for offset, sources in compiled.assemblies.get(name, []):
                    value = _gather(bank[name], layout.locate(name, sources))
                    start = layout.clean_rows(name) + offset
                    _write(bank, layout.size, name, slice(start, start + len(sources)), value)
            for key in frees:  # nothing later reads it
                bank.pop(key, None)
        out_site = self.adapter.output
        return bank[out_site][layout.locate(out_site, compiled.output_rows).to(bank[out_site].device)]

    def steps(self, compiled: "_Compiler") -> list[list[str]]:
        """The sites in order, cut into steps of one model call per batch: consecutive sites that calibration
        verified in the same group call (``ModelAdapter.run_together``: a block's heads), none reading another
        of its step. Sites with nothing to compute ride along (their assemblies follow the step's calls)."""
        adapter = self.adapter
        calibration = adapter.calibration
        together = {} if calibration is None or adapter.uses_context else calibration.together
        steps: list[list[str]] = []
        members: set[str] = set()
        group = None
        for name in adapter.sites:
            if compiled.requests.get(name):
                joins = together.get(name)
                if (not steps or joins is None or joins != group
                        or not members.isdisjoint(adapter.sites[name].parents)):
                    steps.append([])
                    members, group = set(), joins
            elif not steps:
                steps.append([])
            steps[-1].append(name)
            members.add(name)
        return steps

    def _clean_bank(self, layout: "_Layout") -> dict:
        """Clean values read on the layout's examples: site outputs, and residual states (``Prefix``: the sum of
        a parent list's outputs). Each pass runs only as far as the deepest key read on its examples, and each
        key's bank holds the examples it is read on, with room after them for the site's recomputations."""
        bank: dict = {}
        names = list(self.adapter.sites)
        start_s = time.perf_counter()
        depth = layout.depth
        size = self.call_rows(sum(self.row_bytes().values()))  # a clean pass holds every site's reading
        for level in torch.unique(depth).tolist():
            rows = torch.nonzero(depth == level)[:, 0]
            keys = layout.keys_upto(level)
            for start in range(0, len(rows), size):
                examples = layout.examples[rows[start:start + size]]
                outputs = self.adapter.clean(self.inputs[examples.to(self.inputs.device)], upto=names[level])
                states: dict = {(): 0}
                for key in keys:
                    held = layout.held[key]
                    where = torch.searchsorted(held, examples)
                    hit = held[where.clamp(max=len(held) - 1)] == examples
                    if not bool(hit.any()):
                        continue
                    value = parent_sum(key.parents, outputs, states) if isinstance(key, Prefix) else outputs[key]
                    if not bool(hit.all()):
                        value = value[hit.to(value.device)]
                    _write(bank, layout.clean_size, key, where[hit], value)
        self.seconds["clean_bank"] += time.perf_counter() - start_s
        return bank

    def _compute(self, step: list[str], requests_of: dict[str, list["_Request"]], layout: "_Layout", bank) -> None:
        """Run the step's sites on every request's fresh rows, in batches, into their banks; the sites of a step go
        through one call per batch, row i of each site beside row i of the others (a site with fewer rows repeats
        its last: a block computes all its heads anyway). A batch's slot inputs are gathered from the requests'
        partial sums when it runs (sites of a step often share one sum: it is held once, not copied per slot)."""
        adapter = self.adapter
        start_s = time.perf_counter()
        feeds = [_Feed(site, requests_of[site], lambda total: self._sum_value(total, bank, layout.locate),
                       layout.clean_rows(site)) for site in step if requests_of.get(site)]
        if not feeds:
            return
        longest = max(feed.count for feed in feeds)
        row = self.row_bytes()  # a call holds its slot inputs and the model's copies of them
        size = self.call_rows(2 * sum(len(feed.values) * row.get(feed.site, 0) for feed in feeds))
        for start in range(0, longest, size):
            active = [feed for feed in feeds if feed.count > start]
            stop = min(start + size, max(feed.count for feed in active))
            given = {(feed.site, slot): adapter.slot_input(feed.site, slot, [value])
                     for feed in active for slot, value in feed.rows(start, stop).items()}
            context = _rows(active[0].contexts, start, stop)
            out = adapter.run_together([feed.site for feed in active], given,
                                       self.inputs[context.to(self.inputs.device)])
            self.stats["model_calls"] += 1
            self.stats["run_rows"] += stop - start
            for feed in active:
                rows = feed.dest[start:stop]
                value = out[feed.site][:len(rows)]
                _write(bank, layout.size, feed.site, rows, value)
        for feed in feeds:
            for request in feed.requests:
                for total in request.sums.values():
                    _release(total)
        total = sum(feed.count for feed in feeds)
        self.stats["computed_rows"] += total
        seconds = time.perf_counter() - start_s
        for feed in feeds:  # a step's time shared by its sites' rows
            entry = self.seconds["sites"].setdefault(feed.site, {"rows": 0, "seconds": 0.0})
            entry["rows"] += feed.count
            entry["seconds"] += seconds * feed.count / total

    def _sum_value(self, total: "_Sum", bank, locate) -> torch.Tensor:
        """The partial sum's value on every instance of its node, its missing predecessors first."""
        chain = []
        while total is not None and total.value is None:
            chain.append(total)
            total = total.pred
        for node in reversed(chain):
            value, owned = (None, False) if node.pred is None else (node.pred.value, False)
            for key, ids, sign in node.extras:
                picked = bank[key].index_select(0, locate(key, ids).to(bank[key].device))
                self.stats["gathered_rows"] += len(ids)
                if value is None:
                    value, owned = (picked, True) if sign > 0 else (-picked, True)
                elif owned:
                    value.add_(picked, alpha=sign)
                else:  # the predecessor's value is shared: add into a new tensor
                    value, owned = torch.add(value, picked, alpha=sign), True
            node.value = value
            if node.pred is not None:
                _release(node.pred)
        return chain[0].value if chain else total.value


class Prefix:
    """A residual state: the sum of the clean outputs of ``parents`` (a prefix of some site's parent list) on an
    example. What a hypothesis leaves out is read as states (one row, not one per site), interned per engine."""

    __slots__ = ("parents", "last")

    def __init__(self, parents: tuple[str, ...]):
        self.parents, self.last = parents, parents[-1]

    def __repr__(self) -> str:
        return f"Prefix(..{self.last}, {len(self.parents)} sites)"


class _Layout:
    """Where each row of a chunk lives: per key (a site, or a ``Prefix``), a bank of its clean rows, one per
    example it is read on (``held``, sorted), then the site's fresh rows. The examples run cleanly are ordered by
    ``depth`` (the deepest key read on each, as an index into the adapter's sites), so that each clean pass
    stops as early as it can and writes adjacent rows."""

    def __init__(self, compiled: "_Compiler", adapter: ModelAdapter, n_examples: int):
        order = {name: i for i, name in enumerate(adapter.sites)}
        parts: dict = {}
        for key, ids in compiled.reads:
            ids = ids.reshape(-1)
            ids = ids[ids < n_examples]
            if len(ids):
                parts.setdefault(key, []).append(ids)
        self.held = {key: torch.unique(torch.cat(ids)) for key, ids in parts.items()}
        # the deepest site a clean pass must reach to read each key (a parent list need not be in site order)
        self.reach = {key: max(order[p] for p in key.parents) if isinstance(key, Prefix) else order[key]
                      for key in self.held}
        depth = torch.full((n_examples,), -1, dtype=torch.long)
        for key, examples in self.held.items():
            depth.scatter_reduce_(0, examples, torch.full_like(examples, self.reach[key]), reduce="amax")
        examples = torch.nonzero(depth >= 0)[:, 0]
        self.n, self.examples = n_examples, examples[torch.argsort(depth[examples], stable=True)]
        self.depth = depth[self.examples]
        self.clean_size = {key: len(examples) for key, examples in self.held.items()}
        self.size = {key: self.clean_size.get(key, 0) + compiled.count.get(key, 0)
                     for key in {*self.held, *compiled.count}}

    def keys_upto(self, level: int) -> list:
        """The keys a clean pass stopping at site ``level`` writes: sites, then states by length (each sums on the
        longest shorter one)."""
        keys = [key for key in self.held if self.reach[key] <= level]
        return sorted(keys, key=lambda key: (isinstance(key, Prefix), len(key.parents) if isinstance(key, Prefix)
                                             else 0, self.reach[key]))

    def clean_rows(self, key) -> int:
        return len(self.held.get(key, ()))

    def locate(self, key, ids: torch.Tensor) -> torch.Tensor:
        """Bank rows of row ids: an example's clean row, or fresh row ``id - n`` after the clean ones."""
        n, held = self.n, self.held.get(key)
        clean = torch.searchsorted(held, ids.clamp(max=n - 1)) if held is not None else torch.zeros_like(ids)
        return torch.where(ids < n, clean, ids - n + self.clean_rows(key))


class _Schedule:
    """The steps of a chunk and, after each, the banks no later step reads: a partial sum is evaluated at the
    first step whose request needs it, so a key's rows are last read at the latest step evaluating a sum that
    reads them (assemblies read a site's rows at its own step; the output's, after the last)."""

    def __init__(self, compiled: "_Compiler", steps: list[list[str]], output: str):
        step_of = {site: i for i, step in enumerate(steps) for site in step}
        evaluated: dict[int, int] = {}
        for site, requests in compiled.requests.items():
            for request in requests:
                for total in request.sums.values():
                    while total is not None and evaluated.get(id(total), len(steps)) > step_of[site]:
                        evaluated[id(total)] = step_of[site]
                        total = total.pred
        last: dict = {}
        for total in compiled.sums:
            for key, _, _ in total.extras:
                last[key] = max(last.get(key, -1), evaluated[id(total)])
        for site in {*compiled.count, *compiled.assemblies}:  # written at their step
            last[site] = max(last.get(site, -1), step_of[site])
        last[output] = len(steps)
        self.steps, self.count = steps, compiled.count
        self.frees = [[key for key, at in last.items() if at == i] for i in range(len(steps))]
        self.sums_held = []  # per step: (site, rows) of each distinct partial sum its requests read, held while it runs
        for step in steps:
            distinct = {id(total): (site, len(request.node.contexts)) for site in step
                        for request in compiled.requests.get(site, []) for total in request.sums.values()}
            self.sums_held.append(list(distinct.values()))

    def peak(self, layout: "_Layout", row_bytes) -> int:
        """The most bytes the banks hold at once (clean ones from the start, a site's fresh rows from its step,
        each until freed), with the partial sums a step reads while it runs."""
        held = {key: rows * row_bytes(key) for key, rows in layout.clean_size.items()}
        live = most = sum(held.values())
        for step, frees, sums in zip(self.steps, self.frees, self.sums_held):
            for site in step:
                grown = self.count.get(site, 0) * row_bytes(site)
                held[site] = held.get(site, 0) + grown
                live += grown
            most = max(most, live + sum(rows * row_bytes(site) for site, rows in sums))
            for key in frees:
                live -= held.pop(key, 0)
        return most


def _release(total: "_Sum") -> None:
    total.uses -= 1
    if total.uses <= 0:
        total.value = None


def _write(bank: dict, size: dict, key, where, value: torch.Tensor) -> None:
    """Put ``value`` at rows ``where`` (a slice, or row indices on the CPU: checked there, with no device sync) of
    the key's bank, allocating it (``size[key]`` rows) on first use and growing it (clean rows kept) where it was
    allocated smaller (for its clean rows only)."""
    have = bank.get(key)
    if have is None or len(have) < size[key]:
        bank[key] = value.new_empty((size[key], *value.shape[1:]))
        if have is not None:
            bank[key][:len(have)] = have
    if isinstance(where, torch.Tensor) and len(where) > 1 and bool((where[1:] - where[:-1] == 1).all()):
        where = slice(int(where[0]), int(where[-1]) + 1)  # consecutive rows: a copy, not a scatter
    elif isinstance(where, torch.Tensor):
        where = where.to(value.device)
    bank[key][where] = value


class _Feed:
    """One site's fresh rows in a step, in request order: per slot, each request's partial sum (its node's every
    instance) and which of its instances are fresh; ``dest``: their rows in the site's bank."""

    def __init__(self, site: str, requests: list["_Request"], value_of: Callable, clean_rows: int):
        self.site, self.requests = site, requests
        self.values = {slot: [value_of(r.sums[slot]) for r in requests] for slot in requests[0].sums}
        counts = [len(r.fresh) for r in requests]
        self.edges = [0, *itertools.accumulate(counts)]
        self.count = self.edges[-1]
        self.contexts = torch.cat([r.node.contexts[r.fresh] for r in requests])
        self.dest = clean_rows + torch.cat([torch.arange(r.offset, r.offset + len(r.fresh)) for r in requests])

    def rows(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """Each slot's sum on rows ``start:stop`` (past the last row, the last again)."""
        end = min(stop, self.count)
        out = {}
        for slot, values in self.values.items():
            pieces = []
            for i, request in enumerate(self.requests):
                a, b = max(start, self.edges[i]), min(end, self.edges[i + 1])
                if a < b:
                    value = values[i]
                    fresh = request.fresh[a - self.edges[i]:b - self.edges[i]]
                    pieces.append(value.index_select(0, fresh.to(value.device)))
            out[slot] = _rows(pieces[0] if len(pieces) == 1 else torch.cat(pieces), 0, stop - start)
        return out


def _rows(value: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of ``value``; past its end, its last row again (padding a step's shorter sites)."""
    if stop <= len(value):
        return value[start:stop]
    return value[torch.arange(start, stop).clamp(max=len(value) - 1).to(value.device)]


def _gather(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Assembled rows: ``rows`` is [B, T], position t of row b taken from bank row ``rows[b, t]``.

    Row ``r`` at position ``t`` is entry ``r * T + t`` of the bank seen as a list of position vectors:
    one ``index_select``, several times faster than 2-D indexing.
    """
    rows = rows.to(values.device)
    width = rows.shape[1]
    if values.dim() < 2 or values.shape[1] != width:
        raise ModelError(f"a site's output has shape {tuple(values.shape)}, but the plan has {width} positions; "
                         f"inputs of another length than the adapter was calibrated on?")
    flat = (rows * width + torch.arange(width, device=values.device)).reshape(-1)
    picked = values.reshape(-1, *values.shape[2:]).index_select(0, flat)
    return picked.reshape(*rows.shape, *values.shape[2:])


class _Node:
    """One hypothesis node's distinct instances (over all its tree paths) and its terms' rows on them."""

    def __init__(self, contexts: torch.Tensor, draws: torch.Tensor, parents: dict[str, torch.Tensor]):
        self.contexts = contexts
        self.draws = draws
        self.parents = parents
        self.rows: dict[int, torch.Tensor] = {}  # id(term) -> row id per instance


class _Sum:
    """A partial slot sum on every instance of a node: its predecessor's plus ``extras``, bank rows (a site's,
    or a residual state's) each added or subtracted. ``state``: the id column ("draws", "contexts") on which
    the sum is exactly the clean residual state, if it is one."""

    def __init__(self, pred: "_Sum | None", extras: list[tuple[object, torch.Tensor, int]], state: str | None):
        self.pred = pred
        self.extras = extras
        self.state = state
        self.uses = 0
        self.value: torch.Tensor | None = None


class _Request:
    """Fresh rows of one term: which instances of its node, where they land, the sum feeding each slot."""

    def __init__(self, node: _Node, fresh: torch.Tensor, offset: int, sums: dict[str, _Sum]):
        self.node, self.fresh, self.offset, self.sums = node, fresh, offset, sums


class _Compiler:
    """Turn a plan into row requests per site (data only; nothing runs the model here)."""

    def __init__(self, adapter: ModelAdapter, n_examples: int, plan: Plan, levels: dict[str, list[int]],
                 prefixes: dict[tuple[str, ...], Prefix] | None = None):
        self.adapter = adapter
        self.n = n_examples
        self.plan = plan
        self.levels = levels
        self.prefixes = {} if prefixes is None else prefixes
        self.count: dict[str, int] = {}  # fresh rows per site
        self.requests: dict[str, list[_Request]] = {}
        self.assemblies: dict[str, list[tuple[int, torch.Tensor]]] = {}
        self.reads: list[tuple[str, torch.Tensor]] = []  # (site, row ids) read from banks: the clean ones matter
        self.requested = 0
        self.output_rows = torch.empty(0, dtype=torch.long)

    def _fresh(self, site: str, count: int) -> int:
        start = self.count.get(site, 0)
        self.count[site] = start + count
        return start

    def compile(self) -> None:
        plan = self.plan
        paths: dict[str, list[tuple[str, ...]]] = {}
        parents: dict[str, set[str]] = {}
        for path in plan.instances:
            paths.setdefault(path[-1], []).append(path)
            parents.setdefault(path[-1], set())
            if len(path) >= 2:
                parents[path[-2]].add(path[-1])
        rows: dict[tuple[str, ...], torch.Tensor] = {}
        done: set[str] = set()
        while len(done) < len(paths):  # nodes after their parents
            for node in sorted(paths):
                if node not in done and parents[node] <= done:
                    self._node(node, paths[node], sorted(parents[node]), rows)
                    done.add(node)
        self.output_rows = rows[("output",)]
        self.reads.append((self.adapter.output, self.output_rows))
        self.sums = self._reachable()

    def _reachable(self) -> list[_Sum]:
        """The partial sums some request needs (a sum folded into a later state is not), children first; their
        uses (each request's slot, each reachable successor) counted and their rows registered as reads."""
        seen: dict[int, _Sum] = {}
        for requests in self.requests.values():
            for request in requests:
                for total in request.sums.values():
                    total.uses += 1
                    while total is not None and id(total) not in seen:
                        seen[id(total)] = total
                        if total.pred is not None:
                            total.pred.uses += 1
                        self.reads += [(key, ids) for key, ids, _ in total.extras]
                        total = total.pred
        return list(seen.values())

    def _node(self, name: str, paths, parents: list[str], rows) -> None:
        plan, recipe = self.plan, self.plan.recipes[name]
        if recipe is None:  # a leaf: clean on its own sample
            for path in paths:
                rows[path] = plan.instances[path].examples
            return
        contexts = torch.cat([plan.instances[p].examples.reshape(-1) for p in paths])
        draws = torch.cat([plan.instances[p].draws.reshape(-1) for p in paths])
        parent_rows = {q: torch.cat([self._parent_rows(p, q, rows) for p in paths]) for q in parents}
        own = self.adapter.uses_context or any(
            isinstance(sub, FromOwn) for term in _terms(recipe) for _, entries in term.slots for _, sub in entries)
        columns = ([contexts] if own else []) + [draws] + [parent_rows[q] for q in parents]
        unique, inverse = torch.unique(torch.stack(columns, dim=1), dim=0, return_inverse=True)
        first = torch.full((len(unique),), len(inverse), dtype=torch.long).scatter_reduce(
            0, inverse, torch.arange(len(inverse)), reduce="amin")
        node = _Node(contexts[first], draws[first], {q: parent_rows[q][first] for q in parents})
        top = self._terms(node, recipe)
        start = 0
        for path in paths:
            shape = plan.instances[path].examples.shape
            count = plan.instances[path].examples.numel()
            rows[path] = top[inverse[start:start + count]].reshape(shape)
            start += count

    def _parent_rows(self, path, parent: str, rows) -> torch.Tensor:
        """The parent's row for each instance of ``path``; a per-position parent's rows assembled into one."""
        below = rows[path + (parent,)]
        if not self.plan.positional[parent]:
            return below.reshape(-1)
        flat = below.reshape(-1, below.shape[-1])
        out = flat[:, 0].clone()
        mixed = ~(flat == flat[:, :1]).all(dim=1)
        if mixed.any():
            site = self.plan.sites[parent]
            unique, inverse = torch.unique(flat[mixed], dim=0, return_inverse=True)
            offset = self._fresh(site, len(unique))
            self.assemblies.setdefault(site, []).append((offset, unique))
            self.reads.append((site, unique))
            out[mixed] = self.n + offset + inverse
        return out

    def _terms(self, node: _Node, recipe: Recompute) -> torch.Tensor:
        """Row ids of every term of the recipe on the node's instances; returns the recipe's own."""
        closure: dict[int, tuple[frozenset, bool, bool]] = {}
        clean_of: dict[tuple[frozenset, bool, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        sums: dict[tuple, _Sum] = {}
        for term in _terms(recipe):  # children first
            slots = list(term.slots)
            found, draw, own = set(), False, False
            for _, entries in slots:
                for _, sub in entries:
                    if isinstance(sub, FromParent):
                        found.add(sub.node)
                    elif isinstance(sub, FromDraw):
                        draw = True
                    elif isinstance(sub, FromOwn):
                        own = True
                    else:
                        found |= closure[id(sub)][0]
                        draw = draw or closure[id(sub)][1]
                        own = own or closure[id(sub)][2]
            key = (frozenset(found), draw, own)
            closure[id(term)] = key
            if key not in clean_of:  # clean where everything it reads is clean on one example
                cols = ([node.parents[q] for q in sorted(found)] + ([node.draws] if draw else [])
                        + ([node.contexts] if own else []))
                base = node.contexts if self.adapter.uses_context else cols[0]
                clean = (torch.stack(cols) == base).all(dim=0) & (base < self.n)
                clean_of[key] = (clean, base)
            clean, base = clean_of[key]
            ids = base.clone()
            fresh = torch.nonzero(~clean)[:, 0]
            self.requested += len(ids)
            if len(fresh):
                offset = self._fresh(term.site, len(fresh))
                ids[fresh] = self.n + offset + torch.arange(len(fresh))
                request_sums = {slot: self._sum(node, term.site, entries, sums) for slot, entries in slots}
                self.requests.setdefault(term.site, []).append(_Request(node, fresh, offset, request_sums))
            node.rows[id(term)] = ids
        return node.rows[id(recipe)]

    def _sum(self, node: _Node, site: str, entries, sums: dict) -> _Sum:
        """The interned partial sum over ``entries`` (parent, term) in parent order, built level by level."""
        parents = self.adapter.sites[site].parents
        total, start = None, 0
        for stop in self.levels[site]:
            if stop == start:
                continue
            part = entries[start:stop]
            key = (id(total), tuple((p, id(sub) if isinstance(sub, Recompute) else sub) for p, sub in part))
            if key not in sums:
                sums[key] = self._part(node, total, parents[:start], parents[:stop], part)
            total, start = sums[key], stop
        return total

    def _part(self, node: _Node, pred: _Sum | None, before: tuple, upto: tuple, part) -> _Sum:
        """``pred`` plus one level's entries: read entry by entry, or, where most of them are clean on one id column
        (the node's draw r, or its own example: what the hypothesis leaves out), as the clean residual state there
        (a ``Prefix``, one row) with each other entry swapped in (its value less its clean one): fewer reads, and
        states in place of every left-out site's clean output."""
        on = [_column(sub) for _, sub in part]
        column = max(("draws", "contexts"), key=on.count)
        ids = node.draws if column == "draws" else node.contexts
        others = [(p, sub) for (p, sub), c in zip(part, on) if c != column]
        fold = pred is None or pred.state == column  # pred is the state before this level on the same column
        if (1 if fold else 2) + 2 * len(others) <= len(part) and ids is not None:
            extras = [(self.prefix(upto), ids, 1)] + ([] if fold else [(self.prefix(before), ids, -1)])
            for p, sub in others:
                extras += [(p, self._ids(node, sub), 1), (p, ids, -1)]
            made = _Sum(None if fold else pred, extras, column if fold and not others else None)
        else:
            made = _Sum(pred, [(p, self._ids(node, sub), 1) for p, sub in part], None)
        return made

    @staticmethod
    def _ids(node: _Node, sub) -> torch.Tensor:
        """Row ids of one entry's value on every instance of the node."""
        if isinstance(sub, FromParent):
            return node.parents[sub.node]
        if isinstance(sub, FromDraw):
            return node.draws
        if isinstance(sub, FromOwn):
            return node.contexts
        return node.rows[id(sub)]

    def prefix(self, parents: tuple[str, ...]) -> Prefix:
        if parents not in self.prefixes:
            self.prefixes[parents] = Prefix(parents)
        return self.prefixes[parents]


def _column(sub) -> str | None:
    """The id column an entry is clean on, if it is one: the draw r, or the instance's own example."""
    return "draws" if isinstance(sub, FromDraw) else "contexts" if isinstance(sub, FromOwn) else None


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

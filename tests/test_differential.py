"""The batched engine against the oracle, on random models, random hypotheses and every sampler.

The oracle (``scrubbing/reference.py``) treeifies the hypothesis itself and takes only the draws
from the plan, so these tests catch a routing bug in ``plan.route`` as well as one in the engine.
Models: random TinyTransformers (q/k/v slots) and random plain-torch DAGs through
``TorchModuleAdapter`` (several parents per site, paths of several hops). Hypotheses: per-example
and per-position classes, exact and constant nodes, edges with ``via`` ("all", "direct", chosen
intermediates) and ``into``. Samplers: random (with and without ``free_tables``), the adversary's
join, representatives (some -1), pools. ``SCRUB_DIFF_EXAMPLES`` sets the number of cases per model
family (default 110, so 220 in all).
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from torch import nn

from scrubbing import EXACT, Edge, Hypothesis
from scrubbing.adapters import TorchModuleAdapter
from scrubbing.execute import Engine
from scrubbing.families import Refinement
from scrubbing.plan import make_plan
from scrubbing.reference import reference_outputs
from scrubbing.regimes import joined_sampler
from scrubbing.sampling import ClassTable, RandomSampler, RepresentativeSampler, class_tables
from scrubbing.sites import Dataset

from .conftest import adapter_for, bound_and_plan, engine_and_reference, random_tokens, tiny_transformer

CASES = int(os.environ.get("SCRUB_DIFF_EXAMPLES", "110"))
REFS = 16
N_DATA = 48
SETTINGS = settings(max_examples=CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batch-1 passes on tiny models: more threads only add contention on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- models ------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _transformer(seed: int, n_layers: int, n_heads: int, n_ctx: int, mlp: bool, causal: bool):
    model = tiny_transformer(seed=seed, n_layers=n_layers, n_heads=n_heads, n_ctx=n_ctx, mlp=mlp, causal=causal)
    data = random_tokens(N_DATA, n_ctx, 4, seed=seed)
    return adapter_for(model, data), data


class _Source(nn.Module):
    """Reads the raw tokens: an embedding plus a learned position term."""

    def __init__(self, d: int, n_ctx: int, positional: bool):
        super().__init__()
        self.tok, self.pos, self.positional = nn.Embedding(4, d), nn.Parameter(torch.randn(n_ctx, d)), positional

    def forward(self, tokens):
        out = self.tok(tokens) + self.pos
        return out if self.positional else out.mean(dim=1)


class _Block(nn.Module):
    """tanh of a linear map, plus (with positions) a mix across positions: every output position reads every input one."""

    def __init__(self, d: int, positional: bool):
        super().__init__()
        self.lin, self.mix, self.positional = nn.Linear(d, d), nn.Linear(d, d), positional

    def forward(self, h):
        out = torch.tanh(self.lin(h))
        return out + torch.tanh(self.mix(h).mean(dim=1, keepdim=True)) if self.positional else out


class _Graph(nn.Module):
    """A DAG of sites; each non-source site reads the sum of its parents' outputs."""

    def __init__(self, parents: dict[str, tuple[str, ...]], n_ctx: int, positional: bool, d: int = 4):
        super().__init__()
        self.parents = parents
        for name, ps in parents.items():
            setattr(self, name, _Block(d, positional) if ps else _Source(d, n_ctx, positional))

    def forward(self, tokens):
        out = {}
        for name, ps in self.parents.items():
            out[name] = getattr(self, name)(sum(out[p] for p in ps) if ps else tokens)
        return out[name]


@lru_cache(maxsize=32)
def _torch_graph(seed: int, parents: tuple[tuple[str, tuple[str, ...]], ...], n_ctx: int, positional: bool):
    torch.manual_seed(seed)
    sites = dict(parents)
    model = _Graph(sites, n_ctx, positional).eval()
    data = random_tokens(N_DATA, n_ctx, 4, seed=seed)
    adapter = TorchModuleAdapter(model, sites, "readout", positional=positional)
    adapter.calibrate(data.inputs)
    return adapter, data


@st.composite
def transformers(draw):
    return _transformer(draw(st.integers(0, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 4)),
                        draw(st.integers(2, 4)), draw(st.booleans()), draw(st.booleans()))


@st.composite
def torch_graphs(draw):
    n_sources, n_blocks = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    names = [f"s{i}" for i in range(n_sources)]
    parents = [(name, ()) for name in names]
    for i in range(n_blocks):
        chosen = draw(st.sets(st.sampled_from(names), min_size=1, max_size=len(names)))
        parents.append((f"b{i}", tuple(sorted(chosen, key=names.index))))
        names.append(f"b{i}")
    parents.append(("readout", tuple(names)))  # a dense readout: every site feeds the output directly
    return _torch_graph(draw(st.integers(0, 5)), tuple(parents), draw(st.integers(2, 3)), draw(st.booleans()))


# -- hypotheses --------------------------------------------------------------------------------
def _feature(kind: int, modulus: int, column: int):
    """A random feature: per example, per position, exact or constant."""
    if kind == 0:
        return EXACT
    if kind == 1:
        return lambda d: d.inputs[:, column] % modulus
    if kind == 2:
        return lambda d: d.inputs % modulus  # one class per token position
    return lambda d: torch.zeros(len(d), dtype=torch.long)


def _paths(sites, start: str, end: str) -> list[list[str]]:
    """Every path of the model graph from ``start`` to ``end`` (the generated graphs are small)."""
    if start == end:
        return [[end]]
    return [[start, *rest] for child, site in sites.items() if start in site.parents for rest in _paths(sites, child, end)]


def _forming(sites, child: str, claimed: set[str]) -> set[str]:
    """The transparent sites no node claims that form ``child``'s input (a wired site's arguments, a stream)."""
    direct = {p for p in sites[child].parents if sites[p].transparent and p not in claimed}
    return direct.union(*(_forming(sites, p, claimed) for p in direct))


def _vias(draw, sites, parent: str, child: str, claimed: set[str]):
    """The ``via`` values that make a valid edge ``parent -> child``, one drawn at random (None if none is)."""
    free = {name for name, site in sites.items() if site.slots and name not in claimed}
    paths = _paths(sites, parent, child)
    options = []
    if any(set(p[1:-1]) <= free for p in paths):
        options.append("all")
    if any(set(p[1:-1]) <= _forming(sites, child, claimed) for p in paths):  # "direct": through transparent sites only
        options.append("direct")
    inner = [tuple(p[1:-1]) for p in paths if p[1:-1] and set(p[1:-1]) <= free]
    if inner:
        options.append(tuple(sorted(set(draw(st.sampled_from(inner))) | set(draw(st.sets(st.sampled_from(sorted(free)),
                                                                                        max_size=1)) if free else ()))))
    return draw(st.sampled_from(options)) if options else None


def _unclaimed(draw, slots):
    """A node's setting for its unclaimed inputs: the hypothesis's, one for the node, or one per slot (some slots)."""
    choice = st.sampled_from(["draw", "reference"])
    return draw(st.one_of(st.none(), choice, st.dictionaries(st.sampled_from(list(slots)), choice))) if slots else None


@st.composite
def hypotheses(draw, adapter, positional_sites=None):
    """A random hypothesis over the adapter's sites: nodes in site order, edges from earlier nodes upstream.
    Per-position classes on any site when the model has positions, or only on ``positional_sites`` if given."""
    sites = adapter.sites
    names = [s for s in sites if s != adapter.output]
    chosen = sorted(draw(st.sets(st.sampled_from(names), max_size=min(4, len(names)))), key=names.index)
    claimed = set(chosen) | {adapter.output}
    def per_position(site: str) -> bool:
        return adapter.n_positions is not None and (positional_sites is None or site in positional_sites)
    h = Hypothesis("random", allow_singletons=True, unclaimed=draw(st.sampled_from(["draw", "reference"])))
    has_child: set[str] = set()
    for i, site in enumerate(chosen):
        parents = []
        for earlier in chosen[:i] if sites[site].slots else []:
            if not _paths(sites, earlier, site) or not draw(st.booleans()):
                continue
            via = _vias(draw, sites, earlier, site, claimed)
            if via is None:
                continue
            slots = sites[site].slots
            into = draw(st.sampled_from([None, *[(s,) for s in slots], *([tuple(slots[:2])] if len(slots) > 2 else [])]))
            kinds = st.integers(0, 3) if per_position(earlier) else st.sampled_from([0, 1, 3])  # no per-position classes
            # sometimes the edge's own feature: the parent's value on this edge is drawn by it instead
            feature = _feature(draw(kinds), draw(st.integers(2, 3)), draw(st.integers(0, 1))) if draw(st.booleans()) \
                else None
            parents.append(Edge(earlier, into=into, via=via, feature=feature))
            has_child.add(earlier)
        kind = draw(st.integers(0, 3)) if per_position(site) else draw(st.sampled_from([0, 1, 3]))  # no per-position classes
        h.node(site, site, _feature(kind, draw(st.integers(2, 3)), draw(st.integers(0, 1))), parents=parents,
               unclaimed=_unclaimed(draw, sites[site].slots))
    # the output reads every node that has no child, and some that have; a node with no valid path to the output
    # (behind a claimed residual stream, say) and no child is dropped, last nodes first, so a node whose children
    # all went feeds the output or goes too: every hypothesis drawn is valid
    parents_of = {n: {e.parent for e in h.nodes[n].parents} for n in chosen}
    kept, into_output = set(chosen), []
    for n in reversed(chosen):
        fed = any(n in parents_of[c] for c in kept)
        if fed and draw(st.integers(0, 3)) != 0:
            continue
        via = _vias(draw, sites, n, adapter.output, claimed)
        if via is not None:
            into_output.insert(0, Edge(n, via=via))
        elif not fed:
            kept.discard(n)
    h.output(parents=into_output, unclaimed=_unclaimed(draw, sites[adapter.output].slots))
    return h.without(*(n for n in chosen if n not in kept)) if len(kept) < len(chosen) else h


# -- samplers ----------------------------------------------------------------------------------
SAMPLERS = ["random", "random+free", "joined", "representatives", "pool"]


def _partition(draw, data: Dataset, positions: bool) -> torch.Tensor:
    column, modulus = draw(st.integers(0, 1)), draw(st.integers(2, 3))
    if positions and draw(st.booleans()):
        return data.inputs % modulus
    return data.inputs[:, column] % modulus


def _sampler(draw, kind: str, bound, seed: int):
    """One of the samplers the regimes use, with random settings."""
    data, nodes, rng = bound.data, list(bound.order), np.random.default_rng(seed)
    tables = class_tables(bound.classes)
    if kind == "random":
        return RandomSampler(tables)
    if kind == "random+free":
        free = {n: ClassTable(_partition(draw, data, False)) for n in nodes if not bound.is_leaf(n) and draw(st.booleans())}
        return RandomSampler(tables, free)
    if kind == "joined":  # per-position refinements only onto per-position nodes, as the families make them
        refinements = []
        for i in range(draw(st.integers(1, 2))):
            positional = [n for n in nodes if bound.is_positional(n)]
            psi = _partition(draw, data, bool(positional))
            targets = draw(st.sets(st.sampled_from(positional if psi.dim() == 2 else nodes), min_size=1))
            refinements.append(Refinement(f"psi{i}", tuple(targets), psi))
        return joined_sampler(bound, refinements)
    if kind == "representatives":
        representatives = {}
        for node, table in tables.items():
            if table is not None and draw(st.booleans()):
                picks = [int(table.class_members(k)[rng.integers(int(table.counts[k]))]) if rng.random() < 0.7 else -1
                         for k in range(table.n_classes)]
                representatives[node] = torch.tensor(picks)
        return RepresentativeSampler(tables, representatives)
    return RandomSampler(class_tables(bound.classes, pool=draw(st.integers(1, 3)), rng=rng))


def _check(adapter, data, hypothesis, draw, seed):
    """Engine == oracle on one plan, and the oracle read exactly the plan's instances."""
    bound = hypothesis.bind(adapter, data)
    kind = draw(st.sampled_from(SAMPLERS))
    note(f"sites {[(s.name, s.parents) for s in adapter.sites.values()] if len(adapter.sites) < 9 else list(adapter.sites)}")
    note("hypothesis: " + "; ".join(hypothesis.describe()))
    rng = np.random.default_rng(seed)
    refs = torch.from_numpy(rng.integers(0, len(data), REFS))
    sampler = _sampler(draw, kind, bound, seed)
    note(f"sampler {kind}: {vars(sampler)}")
    plan = make_plan(bound, refs, sampler, rng)
    engine = Engine(adapter, data, batch_size=draw(st.sampled_from([5, 64])),
                    chunk_refs=draw(st.sampled_from([6, 64]))).outputs(plan)
    visits: set = set()
    reference = reference_outputs(plan, adapter, data, bound, visits)
    torch.testing.assert_close(engine, reference, atol=1e-4, rtol=1e-4, msg=lambda m: f"sampler {kind}: {m}")
    assert visits == _every_instance(plan)


def _every_instance(plan) -> set:
    return {(path, index) for path, inst in plan.instances.items() for index in np.ndindex(*inst.examples.shape)}


@SETTINGS
@given(adapter_data=transformers(), data=st.data(), seed=st.integers(0, 2**16))
def test_engine_equals_reference_on_transformers(adapter_data, data, seed):
    adapter, dataset = adapter_data
    _check(adapter, dataset, data.draw(hypotheses(adapter)), data.draw, seed)


@SETTINGS
@given(adapter_data=torch_graphs(), data=st.data(), seed=st.integers(0, 2**16))
def test_engine_equals_reference_on_torch_graphs(adapter_data, data, seed):
    adapter, dataset = adapter_data
    _check(adapter, dataset, data.draw(hypotheses(adapter)), data.draw, seed)


# -- fixed cases -------------------------------------------------------------------------------
def _deep() -> Hypothesis:
    """Three levels, per-position classes at two of them, q/k/v restricted edges, a direct edge."""
    h = Hypothesis("deep", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs % 2)
    h.node("prev", "a0.1", lambda d: d.inputs % 3, parents=["tok"])
    h.node("mix", "m0", lambda d: d.inputs[:, 0] % 2, parents=["prev", Edge("tok", via="direct")])
    h.node("reader", "a1.0", lambda d: d.inputs[:, -1] % 2,
           parents=[Edge("mix", into="k"), Edge("prev", into=("q", "v"))])
    h.output(parents=["reader"])
    return h


def test_multilevel_per_position_tree(small):
    model, data, adapter = small
    engine, reference = engine_and_reference(_deep(), adapter, data, torch.arange(4), seed=3)
    torch.testing.assert_close(engine, reference, atol=1e-4, rtol=1e-4)


def test_the_reference_visits_exactly_the_plans_instances(small):
    """The oracle's own treeification reaches every tree path the plan drew, and no other."""
    model, data, adapter = small
    bound, plan = bound_and_plan(_deep(), adapter, data, torch.arange(5), seed=3)
    visits: set = set()
    reference_outputs(plan, adapter, data, bound, visits)
    assert {path for path, _ in visits} == set(plan.instances)
    assert visits == _every_instance(plan)
    assert len(plan.instances) == 8  # output, reader, reader/mix, reader/prev, and below them


def _wrong_routes():
    """Plausible routing bugs, each a wrapper around the real ``plan.route``."""
    from scrubbing.hypothesis import BoundHypothesis

    def via_ignored(route, monkeypatch):  # a "direct" edge recomputes intermediates as if via="all"
        every = BoundHypothesis.intermediates

        def wrong(bound, name):
            with monkeypatch.context() as m:
                m.setattr(BoundHypothesis, "intermediates",
                          lambda self, edge, child: every(self, Edge(edge.parent, edge.into, "all"), child))
                return route(bound, name)
        return wrong

    def into_ignored(route, monkeypatch):  # an edge into one slot feeds every slot
        def wrong(bound, name):
            with monkeypatch.context() as m:
                edges = BoundHypothesis.edges
                m.setattr(BoundHypothesis, "edges",
                          lambda self, n: tuple(Edge(e.parent, None, e.via) for e in edges(self, n)))
                return route(bound, name)
        return wrong

    return {"via ignored": via_ignored, "into ignored": into_ignored}


@pytest.mark.parametrize("bug", sorted(_wrong_routes()))
def test_a_routing_bug_in_the_plan_is_caught(small, monkeypatch, bug):
    """The oracle does not share routing with the plan: with ``plan.route`` wrong, the engine disagrees with it."""
    import scrubbing.plan

    model, data, adapter = small
    engine, reference = engine_and_reference(_deep(), adapter, data, torch.arange(6), seed=3)
    torch.testing.assert_close(engine, reference, atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(scrubbing.plan, "route", _wrong_routes()[bug](scrubbing.plan.route, monkeypatch))
    engine, reference = engine_and_reference(_deep(), adapter, data, torch.arange(6), seed=3)
    assert (engine - reference).abs().max() > 1e-3


def test_reference_cost_is_linear_in_the_model_graph():
    """12 layers of residual stream (about 2^37 paths from the embedding to the output): the oracle's
    model calls per instance stay within sites x edges (it memoises by site and active edges)."""
    model = tiny_transformer(seed=1, n_layers=12, n_heads=2)
    data = random_tokens(24, 4, 5)
    adapter = adapter_for(model, data)
    h = Hypothesis("long edges", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs % 2)
    h.node("early", "a1.0", lambda d: d.inputs[:, 0] % 2, parents=["tok"])
    h.node("late", "a10.1", lambda d: d.inputs % 2, parents=["tok", "early"])  # both edges span many layers
    h.output(parents=["late", "early", Edge("tok", into="in")])
    bound, plan = bound_and_plan(h, adapter, data, torch.arange(2), seed=0)
    calls = []
    run = adapter.run
    adapter.run = lambda *args, **kwargs: calls.append(args[0]) or run(*args, **kwargs)
    try:
        reference = reference_outputs(plan, adapter, data, bound)
    finally:
        del adapter.run
    assert torch.isfinite(reference).all()
    instances = sum(inst.examples.numel() for path, inst in plan.instances.items() if not bound.is_leaf(path[-1]))
    edges = max(len(bound.edges(n)) for n in bound.order)
    assert len(calls) <= instances * len(adapter.sites) * edges
    # ...and the engine, whose recipe walks are linear too, agrees with it at this depth
    torch.testing.assert_close(Engine(adapter, data).outputs(plan), reference, atol=1e-4, rtol=1e-4)


def test_bridge_engine_equals_reference(tmp_path):
    """A Hugging Face GPT-2 booted as a TransformerLens 4 TransformerBridge, through the same adapter."""
    transformers = __import__("transformers")
    from transformer_lens.model_bridge import TransformerBridge

    from scrubbing.adapters import HookedAdapter

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=6, n_positions=4,
                                  bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "bias" in name or "ln" in name:
                param.add_(0.3 * torch.randn_like(param))
    hf.save_pretrained(tmp_path)
    bridge = TransformerBridge.boot_transformers(str(tmp_path), device="cpu")
    data = random_tokens(30, 4, 6)
    adapter = HookedAdapter.for_bridge(bridge)
    adapter.calibrate(data.inputs)
    assert set(adapter.shortcuts) == set(adapter.sites) - {"embed"}  # the engine starts at each site's block
    h = Hypothesis("bridge", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs % 2)
    h.node("head", "a0.1", lambda d: d.inputs[:, 1] % 2, parents=["tok"])
    h.node("reader", "a1.0", lambda d: d.inputs % 2, parents=[Edge("head", into="k"), Edge("tok", into="v")])
    h.output(parents=["reader", Edge("head", via="direct")])
    engine, reference = engine_and_reference(h, adapter, data, torch.arange(4), seed=1)
    torch.testing.assert_close(engine, reference, atol=1e-4, rtol=1e-4)
    assert all(len(hp.fwd_hooks) == 0 for hp in bridge.hook_dict.values())


def test_chunked_execution_equals_one_chunk(small):
    model, data, adapter = small
    h = Hypothesis("chunks", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs % 2)
    h.node("head", "a1.1", lambda d: d.inputs[:, 0] % 3, parents=["tok"])
    h.output(parents=["head"])
    plan = bound_and_plan(h, adapter, data, torch.arange(25), seed=2)[1]
    whole = Engine(adapter, data, chunk_refs=1000).outputs(plan)
    chunked = Engine(adapter, data, chunk_refs=4, batch_size=3).outputs(plan)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_memory_budget_splits_references_into_chunks_with_the_same_outputs(small):
    """A budget too small for every reference's recomputed rows at once makes smaller chunks, same numbers."""
    model, data, adapter = small
    h = Hypothesis("budget", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs % 2)
    h.node("head", "a0.1", lambda d: d.inputs[:, 1] % 2, parents=["tok"])
    h.node("reader", "a1.0", lambda d: d.inputs % 2, parents=[Edge("head", into="k"), Edge("tok", into="v")])
    h.output(parents=["reader"])
    plan = bound_and_plan(h, adapter, data, torch.arange(20), seed=3)[1]
    whole = Engine(adapter, data)
    expected = whole.outputs(plan)
    small_budget = Engine(adapter, data, memory_budget=4096)
    torch.testing.assert_close(small_budget.outputs(plan), expected, atol=1e-5, rtol=1e-5)
    assert whole.stats["chunks"] == 1 < small_budget.stats["chunks"]
    # a quarter of the budget bounds one call's slot inputs and readings: calls of fewer rows than batch_size
    assert small_budget.stats["model_calls"] > whole.stats["model_calls"]
    assert small_budget.call_rows(sum(small_budget.row_bytes().values())) < small_budget.batch_size

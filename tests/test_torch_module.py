"""TorchModuleAdapter: a site that reads the raw input beyond its slots is refused; ordinary models still calibrate;
inputs that are not one sum (a concatenation, named arguments, the raw input) agree with the reference oracle, and
wiring that does not hold on data is refused by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from functools import lru_cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scrubbing import EXACT, Edge, Hypothesis, HypothesisError
from scrubbing.adapters import INPUT, Concat, TorchModuleAdapter
from scrubbing.errors import ModelError, ScrubError
from scrubbing.sites import Dataset

from .conftest import engine_and_reference
from .test_differential import CASES, _check, hypotheses

SITES = {"embed": (), "mix": ("embed",), "readout": ("embed", "mix")}


class _Skip(nn.Module):
    """``mix`` also reads the raw tokens, captured by the parent's forward (a skip connection from the input)."""

    def __init__(self, skip: bool):
        super().__init__()
        self.skip = skip
        self.embed, self.mix, self.readout = nn.Embedding(5, 4), _Mix(), nn.Linear(4, 2)

    def forward(self, tokens):
        self.mix.tokens = tokens if self.skip else None
        x = self.embed(tokens)
        return self.readout(x + self.mix(x)).sum(dim=1)


class _Mix(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.tokens = nn.Linear(4, 4), None

    def forward(self, x):
        out = torch.tanh(self.lin(x))
        return out if self.tokens is None else out + (self.tokens == 0).float()[..., None]


def _data() -> Dataset:
    tokens = torch.randint(0, 5, (40, 3), generator=torch.Generator().manual_seed(1))
    return Dataset(tokens, {"label": tokens[:, 0] % 2})


def test_a_site_that_reads_the_raw_input_is_refused_at_calibration():
    torch.manual_seed(0)
    adapter = TorchModuleAdapter(_Skip(skip=True).eval(), SITES, "readout")
    with pytest.raises(ModelError, match=r"site 'mix' reads the model's raw input.*site with no parents") as err:
        adapter.calibrate(_data().inputs)
    assert isinstance(err.value, ScrubError)


def test_an_ordinary_model_still_calibrates_and_agrees_with_the_reference():
    torch.manual_seed(0)
    data = _data()
    adapter = TorchModuleAdapter(_Skip(skip=False).eval(), SITES, "readout")
    adapter.calibrate(data.inputs)
    assert not adapter.uses_context
    h = Hypothesis("plain", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs[:, 0] % 2)
    h.node("mix", "mix", lambda d: d.inputs[:, 1] % 2, parents=["tok"])
    h.output(parents=["mix"])
    engine, reference = engine_and_reference(h, adapter, data, torch.arange(8), seed=1)
    torch.testing.assert_close(engine, reference, atol=1e-5, rtol=1e-5)


class _Fan(nn.Module):
    """Three sites reading the embedding, and a readout reading all four."""

    def __init__(self):
        super().__init__()
        self.embed, self.readout = nn.Embedding(5, 4), nn.Linear(4, 2)
        self.a, self.b, self.c = _Lin(4, 4), _Lin(4, 4), _Lin(4, 4)

    def forward(self, tokens):
        x = self.embed(tokens)
        return self.readout(self.c(x) + self.b(x) + self.a(x) + x).sum(dim=1)


def test_parents_declared_out_of_site_order_are_read_from_a_deep_enough_pass():
    """The readout's parents listed last site first: what the hypothesis leaves out of them is read as one residual
    state (the clean sum of those parents on the draw), which a clean pass stopped at the list's last entry (the
    embedding) could not give."""
    torch.manual_seed(0)
    data = _data()
    sites = {"embed": (), "a": ("embed",), "b": ("embed",), "c": ("embed",), "readout": ("c", "b", "a", "embed")}
    adapter = TorchModuleAdapter(_Fan().eval(), sites, "readout")
    adapter.calibrate(data.inputs)
    h = Hypothesis("direct only", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs[:, 0] % 2)
    h.output(parents=[Edge("tok", via="direct")])  # c, b and a from the draw
    engine, reference = engine_and_reference(h, adapter, data, torch.arange(8), seed=1)
    torch.testing.assert_close(engine, reference, atol=1e-5, rtol=1e-5)


# -- inputs that are not one sum: a concatenation, named arguments, the raw input ----------------------------------
class _Lin(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x):
        return torch.tanh(self.lin(x))


class _Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, h, g):
        return self.lin(h) * torch.sigmoid(g)


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.table = nn.Linear(4, 2), nn.Embedding(5, 2)

    def forward(self, h, tokens):
        return self.lin(h) + self.table(tokens)


class _Wired(nn.Module):
    """``cat`` reads ``cat([embed, a])``; ``gate`` is called as ``gate(h=embed + cat + 1, g=a)``; ``head`` reads the
    gate's output and the raw tokens (positionally)."""

    def __init__(self, swap: bool = False, bias: float = 1.0):
        super().__init__()
        self.swap, self.bias = swap, bias
        self.embed, self.a, self.cat = nn.Embedding(5, 4), _Lin(4, 4), _Lin(8, 4)
        self.gate, self.head = _Gate(), _Head()

    def forward(self, tokens):
        e = self.embed(tokens)
        a = self.a(e)
        c = self.cat(torch.cat([a, e] if self.swap else [e, a], dim=-1))
        g = self.gate(h=e + c + self.bias, g=a)
        return self.head(g, tokens)


WIRED = {"embed": (), "a": ("embed",), "cat": Concat("embed", "a"), "gate": {"h": ("embed", "cat"), "g": "a"},
         "head": {"h": "gate", "tokens": INPUT}}


def _wired(swap: bool = False, sites=None) -> TorchModuleAdapter:
    torch.manual_seed(0)
    return TorchModuleAdapter(_Wired(swap).eval(), dict(WIRED if sites is None else sites), "head", positional=True)


def test_wired_inputs_become_sites_that_sum():
    adapter = _wired()
    assert list(adapter.sites) == ["input", "embed", "a", "cat:in<embed", "cat:in<a", "cat", "gate:h", "gate:g",
                                   "gate", "head:h", "head:tokens", "head"]
    assert adapter.sites["cat"].parents == ("cat:in<embed", "cat:in<a")
    assert adapter.sites["head:tokens"].parents == ("input",) and adapter.sites["input"].is_source
    data = _data()
    adapter.calibrate(data.inputs)
    assert not adapter.uses_context
    out = adapter.clean(data.inputs)
    with torch.no_grad():
        torch.testing.assert_close(out["head"], adapter.model(data.inputs))
    # the packed input is the sum of its argument sites, and running a wired site on it reproduces its output
    for site in ("cat", "gate", "head"):
        packed = adapter.slot_input(site, "in", [out[p] for p in adapter.sites[site].parents])
        torch.testing.assert_close(adapter.run(site, {"in": packed}, data.inputs, shortcut=False), out[site])
    assert set(adapter.shortcuts) >= {"cat", "gate", "head"}  # each module alone on its declared inputs


def _tok(t: int):
    def feature(d):
        return d.inputs[:, t] % 2
    return feature


def _wired_hypotheses():
    h1 = Hypothesis("concat and gate", allow_singletons=True)
    h1.node("e", "embed", _tok(0))
    h1.node("a", "a", _tok(1), parents=["e"])
    h1.node("cat", "cat", _tok(2), parents=["e", "a"])
    h1.output(parents=["cat", Edge("a", via=("gate:g", "gate", "head:h"))])  # a reaches the output through g only
    h2 = Hypothesis("raw input as a parent", allow_singletons=True)
    h2.node("tok", "input", lambda d: d.inputs[:, 0] % 3)
    h2.node("e", "embed", _tok(1))
    h2.node("gate", "gate", _tok(2), parents=["e"])
    h2.output(parents=["gate", "tok"])
    h3 = Hypothesis("through one slice", allow_singletons=True)
    h3.node("a", "a", _tok(0))
    h3.node("cat", "cat", _tok(1), parents=[Edge("a", via=("cat:in<a",))])  # not "direct": the port is a site
    h3.output(parents=[Edge("cat", via=("gate:h", "gate", "head:h")),
                       Edge("a", via=("gate:g", "gate", "head:h"))])
    h4 = Hypothesis("per position", allow_singletons=True)
    h4.node("e", "embed", lambda d: d.inputs % 2)
    h4.node("tok", "input", lambda d: (d.inputs[:, 0] > 1).long())
    h4.output(parents=["e", "tok"])
    return [h1, h2, h3, h4, _direct()]


def _direct(explicit: bool = False) -> Hypothesis:
    """``via="direct"`` into wired sites: each parent reaches its child only through the arguments it feeds
    directly (``explicit``: the same claim with those argument sites named)."""
    def via(*ports):
        return ports if explicit else "direct"

    h = Hypothesis("direct into wired sites" + (" (ports named)" if explicit else ""), allow_singletons=True)
    h.node("e", "embed", lambda d: d.inputs % 2)  # per position
    h.node("a", "a", _tok(1), parents=["e"])
    h.node("cat", "cat", _tok(2), parents=[Edge("e", via=via("cat:in<embed")), Edge("a", via=via("cat:in<a"))])
    h.node("gate", "gate", _tok(0), parents=[Edge("a", via=via("gate:g")),  # a feeds h only through cat
                                             Edge("cat", into="in", via=via("gate:h"))])
    h.output(parents=[Edge("gate", via=via("head:h"))])
    return h


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("seed", [0, 1])
def test_wired_sites_engine_equals_reference(index, seed):
    data = _data()
    adapter = _wired()
    adapter.calibrate(data.inputs)
    h = _wired_hypotheses()[index]
    engine, reference = engine_and_reference(h, adapter, data, torch.arange(12), seed=seed)
    torch.testing.assert_close(engine, reference, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        clean = adapter.model(data.inputs[:12])
    assert not torch.allclose(engine, clean, atol=1e-3)  # the scrub changed something: the test can fail


def test_direct_into_a_wired_site_passes_through_the_arguments_its_parent_feeds():
    """``via="direct"`` into a wired site is the claim with the argument sites its parent feeds named: the same
    routes, the same numbers; without the wiring's identity sites it would mean the same thing."""
    data = _data()
    adapter = _wired()
    adapter.calibrate(data.inputs)
    refs = torch.arange(12)
    direct, _ = engine_and_reference(_direct(), adapter, data, refs, seed=3)
    named, _ = engine_and_reference(_direct(explicit=True), adapter, data, refs, seed=3)
    torch.testing.assert_close(direct, named, atol=0, rtol=0)
    every = Hypothesis("a through every path", allow_singletons=True)  # a also reaches gate through cat: differs
    every.node("a", "a", _tok(1)).node("gate", "gate", _tok(0), parents=["a"]).output(parents=["gate"])
    through_g = every.replacing("gate", parents=[Edge("a", via="direct")])
    assert (engine_and_reference(every, adapter, data, refs, seed=3)[0]
            - engine_and_reference(through_g, adapter, data, refs, seed=3)[0]).abs().max() > 1e-3


def test_direct_into_a_wired_site_is_refused_where_no_argument_carries_it():
    data = _data()
    adapter = _wired()
    adapter.calibrate(data.inputs)
    h = Hypothesis("embed direct into head", allow_singletons=True)
    h.node("e", "embed", _tok(0)).output(parents=[Edge("e", via="direct")])  # embed reaches head only through gate
    with pytest.raises(HypothesisError, match=r"edge 'e' -> 'output'.*'direct' into 'head' passes only through the "
                                              r"sites that form its input \(head:h, head:tokens\), and none of them "
                                              r"reads 'embed'; use via='all'"):
        h.bind(adapter, data)
    h = Hypothesis("argument claimed", allow_singletons=True)
    h.node("a", "a", _tok(0)).node("g", "gate:g", _tok(1), parents=["a"])
    h.node("gate", "gate", _tok(0), parents=["g", Edge("a", via="direct")]).output(parents=["gate"])
    with pytest.raises(HypothesisError, match=r"edge 'a' -> 'gate'.*Site 'gate' reads 'a' through 'gate:g' \(node "
                                              r"'g'\), claimed by a node.*draw the edge into it instead"):
        h.bind(adapter, data)


@settings(max_examples=max(CASES // 4, 10), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_engine_equals_reference_on_random_hypotheses_over_wired_sites(data, seed):
    """The differential generator over the wired model: direct edges into wired sites, via its argument sites,
    the raw input as a parent. Per-position classes only where a site's output has a position axis."""
    adapter, dataset = _calibrated_wired()
    h = data.draw(hypotheses(adapter, positional_sites={"input", "embed", "a", "cat", "gate", "head"}))
    _check(adapter, dataset, h, data.draw, seed)


@lru_cache(maxsize=1)
def _calibrated_wired():
    data = _data()
    adapter = _wired()
    adapter.calibrate(data.inputs)
    return adapter, data


def test_the_raw_input_as_a_parent_is_resampled():
    """head reads the raw tokens through its own argument: left out, they come from the draw r; claimed by a node
    with the identity class, the reference's own. Neither is the instance's own example by accident."""
    data = _data()
    adapter = _wired()
    adapter.calibrate(data.inputs)
    refs = torch.arange(12)
    kept = Hypothesis("everything but tokens kept", allow_singletons=True)
    kept.node("gate", "gate", EXACT)
    kept.node("tok", "input", EXACT)
    kept.output(parents=["gate", "tok"])
    engine, reference = engine_and_reference(kept, adapter, data, refs)
    with torch.no_grad():
        clean = adapter.model(data.inputs[refs])
    torch.testing.assert_close(engine, clean, atol=1e-5, rtol=1e-5)
    dropped = Hypothesis("tokens left out", allow_singletons=True)
    dropped.node("gate", "gate", EXACT)
    dropped.output(parents=["gate"])
    engine, reference = engine_and_reference(dropped, adapter, data, refs)
    torch.testing.assert_close(engine, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(engine, clean, atol=1e-3)


def test_a_wrong_concatenation_order_is_refused_naming_the_site():
    adapter = _wired(swap=True)
    with pytest.raises(ModelError, match=r"site 'cat:in<embed' slot 'in'.*Concat\('embed', 'a'\).*in its order") as err:
        adapter.calibrate(_data().inputs)
    assert isinstance(err.value, ScrubError)


def test_a_concatenation_of_the_wrong_size_is_refused():
    adapter = _wired(sites={**WIRED, "cat": Concat("embed")})
    with pytest.raises(ModelError, match=r"site 'cat' argument 'in': it has size 8 along dim -1, but its declared "
                                         r"parents \('embed',\) give 4 = 4"):
        adapter.calibrate(_data().inputs)


def test_a_wrong_sum_in_a_named_argument_is_refused():
    adapter = _wired(sites={**WIRED, "gate": {"h": ("embed",), "g": "a"}})  # h is embed + cat + 1
    with pytest.raises(ModelError, match=r"site 'gate:h' slot 'in'.*argument 'h' of 'gate', declared as the sum of "
                                         r"\('embed',\)"):
        adapter.calibrate(_data().inputs)


def test_undeclared_raw_input_is_refused_with_the_fix():
    adapter = _wired(sites={**WIRED, "head": ("gate",)})  # head(h, tokens): tokens not declared
    with pytest.raises(ModelError, match=r"site 'head' reads the model's raw input.*INPUT"):
        adapter.calibrate(_data().inputs)


def test_bad_declarations_are_refused_by_name():
    with pytest.raises(ModelError, match=r"site 'gate': its forward takes no argument 'x'; its arguments are \(h, g\)"):
        _wired(sites={**WIRED, "gate": {"x": "embed", "g": "a"}})
    with pytest.raises(ModelError, match=r"site 'cat': parent 'gate' is not a site declared before it"):
        _wired(sites={**WIRED, "cat": Concat("embed", "gate")})
    with pytest.raises(ModelError, match=r"Concat\(\): give the parent site names"):
        Concat()


class _Skip2(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.lin1 = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.lin1(self.lin0(x) + x)


def test_the_raw_input_in_a_sum():
    """A skip connection from a float input: INPUT as one of the summed parents."""
    torch.manual_seed(0)
    x = torch.randn(40, 3)
    data = Dataset(x, {"label": (x[:, 0] > 0).long()})
    adapter = TorchModuleAdapter(_Skip2().eval(), {"lin0": (), "lin1": ("lin0", INPUT)}, "lin1")
    assert adapter.sites["lin1"].parents == ("lin1:in",) and adapter.sites["lin1:in"].parents == ("lin0", INPUT)
    adapter.calibrate(x)
    h = Hypothesis("sign", allow_singletons=True)
    h.node("x", "input", lambda d: (d.inputs[:, 0] > 0).long())
    h.output(parents=["x"])
    engine, reference = engine_and_reference(h, adapter, data, torch.arange(10))
    torch.testing.assert_close(engine, reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(ModelError, match=r"site 'lin1' slot 'in'.*INPUT if it reads the raw input"):
        TorchModuleAdapter(_Skip2().eval(), {"lin0": (), "lin1": ("lin0",)}, "lin1").calibrate(x)


def test_wired_sites_calibrate_in_chunks_deciding_the_same():
    """No batched pass here: site by site, in chunks under a budget of a few rows, with the same decisions."""
    data = _data()
    whole = _wired().calibrate(data.inputs)
    adapter = _wired()
    chunked = adapter.calibrate(data.inputs, memory_budget=10 * adapter.row_bytes(data.inputs))
    assert chunked.calls["clean"] == whole.calls["clean"] + 3  # 4 chunks where there was 1
    assert (set(chunked.shortcuts), chunked.early_stops, chunked.uses_context, chunked.check_rows) == \
        (set(whole.shortcuts), whole.early_stops, whole.uses_context, whole.check_rows)
    assert set(whole.shortcuts) == {"embed", "a", "cat", "gate", "head"} - {"embed"}
    assert set(chunked.offsets) == set(whole.offsets)
    for key, offset in whole.offsets.items():
        torch.testing.assert_close(chunked.offsets[key], offset, rtol=1e-6, atol=1e-6)

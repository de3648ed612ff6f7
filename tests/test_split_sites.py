"""Nodes beyond sites (``scrubbing/split.py``): subspaces, positions, dictionary latents and the residual stream.

They are sites of a wrapper adapter, so the strongest check is the one every site gets: the engine equals the
oracle on random hypotheses over them. Beside it: the pieces sum back to their site on data (and calibration
refuses a split that does not), the residual stream is the model's own, and bad splits are refused by name.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from torch import nn

from scrubbing import EXACT, Edge, Hypothesis, HypothesisError, ModelError
from scrubbing.adapters import HookedAdapter, TorchModuleAdapter
from scrubbing.sites import ModelAdapter
from scrubbing.split import Dictionary, Positions, ResidualStream, Subspace, Transcoder, split_sites

from .conftest import engine_and_reference, random_tokens, tiny_transformer
from .test_differential import CASES, _check, hypotheses

D_MODEL = 8


def _sae(seed: int, m: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D_MODEL, m, generator=g), "b_enc": 0.1 * torch.randn(m, generator=g),
            "W_dec": torch.randn(m, D_MODEL, generator=g) / 3, "b_dec": 0.1 * torch.randn(D_MODEL, generator=g)}


def _transcoder(seed: int, d_in: int = D_MODEL, d_out: int = D_MODEL, m: int = 10, jump: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed + 100)
    weights = {"W_enc": torch.randn(d_in, m, generator=g), "b_enc": 0.1 * torch.randn(m, generator=g),
               "W_dec": torch.randn(m, d_out, generator=g) / 3, "b_dec": 0.1 * torch.randn(d_out, generator=g)}
    return weights | ({"threshold": 0.3 * torch.rand(m, generator=g)} if jump else {})


# kinds of split: a subspace, a stream read by all, a stream at chosen positions, an SAE, a transcoder on an MLP, a
# JumpReLU transcoder on a head's value input, a transcoder of other input and output widths (plain torch model)
KINDS = 7
TRANSCODED = {4: ("m0", "in"), 5: ("a1.0", "v"), 6: ("up", "in")}  # kind -> (site, the slot its transcoder reads)


def _splits(kind: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    if kind == 0:
        return [Subspace("a0.0", torch.randn(2, D_MODEL, generator=g), name="phi")]
    if kind == 1:
        return [ResidualStream(before="a1.0", readers="all")]
    if kind == 2:
        return [ResidualStream(before="a1.0"), Positions("resid@a1.0", [1])]
    if kind == 3:
        return [Dictionary("a0.1", *_sae(seed).values(), groups={"g": [0, 3, 5], "h": [7]})]
    if kind == 4:
        return [Transcoder("m0", **_transcoder(seed), groups={"g": [0, 3, 5], "h": [7]})]
    if kind == 5:
        return [Transcoder("a1.0", **_transcoder(seed, jump=True), groups={"g": [1, 2]}, slot="v")]
    return [Transcoder("up", **_transcoder(seed, d_in=4, d_out=6), groups={"g": [0, 4], "h": [2, 3, 9]})]


class _Rect(nn.Module):
    """A plain torch model whose site ``up`` widens 4 -> 6: a transcoder on it reads 4 components and writes 6."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(5, 4), nn.Linear(4, 2)
        self.up, self.down = nn.Sequential(nn.Linear(4, 6), nn.ReLU()), nn.Sequential(nn.Linear(6, 4), nn.Tanh())

    def forward(self, tokens):
        e = self.embed(tokens)
        return self.head(e + self.down(self.up(e)))


def _base(kind: int, seed: int) -> ModelAdapter:
    if kind == 6:
        torch.manual_seed(seed)
        sites = {"embed": (), "up": ("embed",), "down": ("up",), "head": ("embed", "down")}
        return TorchModuleAdapter(_Rect().eval(), sites, "head", positional=True)
    return HookedAdapter.for_transformer(tiny_transformer(seed=seed, n_layers=2, n_heads=2, n_ctx=3), 2, 2)


@lru_cache(maxsize=32)
def _wrapped(kind: int, seed: int):
    data = random_tokens(48, 3, 5, seed=seed)
    adapter = split_sites(_base(kind, seed), *_splits(kind, seed))
    adapter.calibrate(data.inputs[:32])
    return adapter, data


@settings(max_examples=max(CASES // 2, 2 * KINDS), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.integers(0, KINDS - 1), model_seed=st.integers(0, 2), data=st.data(), seed=st.integers(0, 2**16))
def test_engine_equals_reference_on_split_sites(kind, model_seed, data, seed):
    adapter, dataset = _wrapped(kind, model_seed)
    _check(adapter, dataset, data.draw(hypotheses(adapter)), data.draw, seed)


@pytest.mark.parametrize("kind", range(KINDS))
def test_pieces_sum_back_and_the_graph_reads_them(kind):
    adapter, data = _wrapped(kind, 0)
    base = adapter
    while hasattr(base, "base"):
        base = base.base
    clean, split = base.clean(data.inputs[:8]), adapter.clean(data.inputs[:8])
    for name in base.sites:  # every site not split keeps its clean value
        if name in split:
            torch.testing.assert_close(split[name], clean[name])
    if kind in (0, 3, *TRANSCODED):
        site = {0: "a0.0", 3: "a0.1"}.get(kind) or TRANSCODED[kind][0]
        pieces = [name for name in adapter.sites if name.startswith(f"{site}[")]
        assert site not in adapter.sites and len(pieces) >= 2
        torch.testing.assert_close(sum(split[p] for p in pieces), clean[site], atol=1e-5, rtol=1e-5)
        readers = [s for s in adapter.sites.values() if set(pieces) <= set(s.parents)]
        assert readers and all(site not in s.parents for s in adapter.sites.values())
        assert all(adapter.sites[p].slots == base.sites[site].slots for p in pieces)  # each reads what its site reads
        if kind in TRANSCODED:  # each latent group's piece by hand, from the clean input slot
            tc, slot = adapter.split, TRANSCODED[kind][1]
            x = base.clean_slots(data.inputs[:8])[(site, slot)]
            pre = x @ tc.W_enc + tc.b_enc
            a = torch.relu(pre) if tc.threshold is None else pre * (pre > tc.threshold)
            for group, latents in tc.groups.items():
                torch.testing.assert_close(split[f"{site}[{group}]"], a[..., latents] @ tc.W_dec[latents])
            error = clean[site] - (a @ tc.W_dec + tc.b_dec)
            torch.testing.assert_close(split[f"{site}[error]"], error, atol=1e-5, rtol=1e-5)
            assert error.abs().max() > 0.1 * clean[site].abs().max()  # random weights: the error carries the rest
    else:
        resid = adapter.sites["resid@a1.0"] if kind == 1 else None
        if kind == 1:
            assert set(resid.parents) == set(base.sites["a1.0"].parents)
            assert adapter.sites["a1.0"].parents == adapter.sites["a1.1"].parents == ("resid@a1.0",)
            assert "resid@a1.0" in adapter.sites["output"].parents
            model = base.model  # the stream is the model's residual stream, up to a constant (the biases)
            _, cache = model.run_with_cache(data.inputs[:8])
            constant = cache["blocks.1.hook_resid_pre"] - split["resid@a1.0"]
            torch.testing.assert_close(constant, constant[:1].expand_as(constant), atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(split["resid@a1.0[pos 1]"][:, [0, 2]], torch.zeros_like(split["resid@a1.0[pos 1]"][:, [0, 2]]))
            torch.testing.assert_close(split["resid@a1.0[pos 1]"] + split["resid@a1.0[rest]"],
                                       sum(clean[p] for p in base.sites["a1.0"].parents), atol=1e-5, rtol=1e-5)


def test_a_claim_through_a_piece_is_scrubbed_like_any_site():
    """A subspace claim: the output reads a0.0 only through phi. Keeping phi exact and resampling the rest gives
    the oracle's numbers, and differs from keeping all of a0.0 (the rest mattered in this random model)."""
    adapter, data = _wrapped(0, 0)
    h = Hypothesis("phi only", allow_singletons=True)
    h.node("phi", "a0.0[phi]", EXACT)
    h.output(parents=[Edge("phi", via="all")])
    engine, reference = engine_and_reference(h, adapter, data, torch.arange(10), seed=2)
    torch.testing.assert_close(engine, reference, atol=1e-4, rtol=1e-4)
    whole = Hypothesis("phi and rest", allow_singletons=True)
    whole.node("phi", "a0.0[phi]", EXACT).node("rest", "a0.0[rest]", EXACT)
    whole.output(parents=[Edge("phi", via="all"), Edge("rest", via="all")])
    both, _ = engine_and_reference(whole, adapter, data, torch.arange(10), seed=2)
    assert (both - engine).abs().max() > 1e-4


def test_calibration_refuses_pieces_that_do_not_sum_back(monkeypatch):
    model = tiny_transformer(seed=0, n_layers=2, n_heads=2, n_ctx=3)
    data = random_tokens(32, 3, 5)
    adapter = split_sites(HookedAdapter.for_transformer(model, 2, 2), Subspace("a0.0", torch.ones(1, D_MODEL)))
    split = Subspace.split
    monkeypatch.setattr(Subspace, "split",
                        lambda self, v, given=None: {k: x * 1.01 for k, x in split(self, v, given).items()})
    with pytest.raises(ModelError, match="pieces of 'a0.0' do not sum back"):
        adapter.calibrate(data.inputs)


def test_by_default_only_the_named_site_reads_the_stream():
    model = tiny_transformer(seed=0, n_layers=2, n_heads=2, n_ctx=3)
    base = HookedAdapter.for_transformer(model, 2, 2)
    adapter = split_sites(base, ResidualStream(before="a1.1"))
    assert adapter.sites["a1.1"].parents == ("resid@a1.1",)
    assert adapter.sites["a1.0"].parents == base.sites["a1.0"].parents
    assert adapter.sites["output"].parents == base.sites["output"].parents
    with pytest.raises(HypothesisError, match="reader 'a0.1' does not read every site"):
        split_sites(base, ResidualStream(before="a1.1", readers=("a0.1",)))


def test_a_direct_edge_passes_through_a_stream_no_node_claims():
    """The stream is transparent (it only forms its readers' input): ``via="direct"`` into a reader means what it
    meant before the split, the same numbers on the same draws; once a node claims the stream, the path is that
    node's and the edge is refused, saying so."""
    model = tiny_transformer(seed=0, n_layers=2, n_heads=2, n_ctx=3)
    data = random_tokens(48, 3, 5)
    base = HookedAdapter.for_transformer(model, 2, 2)
    base.calibrate(data.inputs[:32])
    adapter = split_sites(base, ResidualStream(before="a1.0", readers="all"))
    adapter.calibrate(data.inputs[:32])
    h = Hypothesis("direct", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs % 2).node("prev", "a0.1", lambda d: d.inputs[:, 0] % 2, parents=["tok"])
    h.node("reader", "a1.0", lambda d: d.inputs[:, 1] % 3,
           parents=[Edge("tok", into="q", via="direct"), Edge("prev", into=("k", "v"), via="direct")])
    h.output(parents=["reader", Edge("prev", via="direct")])
    split, reference = engine_and_reference(h, adapter, data, torch.arange(12), seed=4)
    torch.testing.assert_close(split, reference, atol=1e-4, rtol=1e-4)
    whole, _ = engine_and_reference(h, base, data, torch.arange(12), seed=4)
    torch.testing.assert_close(split, whole, atol=1e-4, rtol=1e-4)
    claimed = h.with_node("stream", "resid@a1.0", EXACT, feeds=["reader"])
    with pytest.raises(HypothesisError, match=r"edge 'tok' -> 'reader'.*reads 'embed' through 'resid@a1.0' \(node "
                                              r"'stream'\), claimed by a node"):
        claimed.bind(adapter, data)


def test_bad_splits_are_refused_by_name(tmp_path):
    model = tiny_transformer(seed=0, n_layers=2, n_heads=2, n_ctx=3)
    base = HookedAdapter.for_transformer(model, 2, 2)
    with pytest.raises(HypothesisError, match="unknown site 'a0.9'"):
        split_sites(base, Subspace("a0.9", torch.ones(1, D_MODEL)))
    with pytest.raises(HypothesisError, match="output site cannot be split"):
        split_sites(base, Subspace("output", torch.ones(1, D_MODEL)))
    with pytest.raises(HypothesisError, match="span only 1 dimensions"):
        Subspace("a0.0", torch.ones(2, D_MODEL))
    weights = _sae(0)
    with pytest.raises(HypothesisError, match="latent 12, but there are 12 latents"):
        Dictionary("a0.1", *weights.values(), groups={"g": [12]})
    with pytest.raises(HypothesisError, match="latent 3 is in groups 'g' and 'h'"):
        Dictionary("a0.1", *weights.values(), groups={"g": [3], "h": [3]})
    path = tmp_path / "sae.safetensors"
    save_file({k: v for k, v in weights.items() if k != "b_dec"}, str(path))
    with pytest.raises(HypothesisError, match=r"no tensor \['b_dec'\]"):
        Dictionary.load(path, "a0.1")
    save_file(weights, str(path))
    loaded = Dictionary.load(path, "a0.1", groups={"g": [1]})
    torch.testing.assert_close(loaded.W_enc, weights["W_enc"])


def test_bad_transcoders_are_refused_by_name(tmp_path):
    model = tiny_transformer(seed=0, n_layers=2, n_heads=2, n_ctx=3)
    base = HookedAdapter.for_transformer(model, 2, 2)
    data = random_tokens(32, 3, 5)
    weights = _transcoder(0)
    with pytest.raises(HypothesisError, match=r"Transcoder\('m0'\): W_enc \[d_in, n\], b_enc \[n\], W_dec \[n, "
                                              r"d_out\], b_dec \[d_out\] \(threshold \[n\]\) expected; got .*b_dec \(5,\)"):
        Transcoder("m0", **{**weights, "b_dec": torch.zeros(5)})
    with pytest.raises(HypothesisError, match=r"site 'embed' reads the raw input; it has no input slot for a "
                                              r"transcoder to read.*use a Dictionary"):
        split_sites(base, Transcoder("embed", **weights))
    with pytest.raises(HypothesisError, match=r"site 'a0.0' has input slots \['q', 'k', 'v'\]; say which one the "
                                              r"transcoder reads: Transcoder\(..., slot='v'\)"):
        split_sites(base, Transcoder("a0.0", **weights))
    with pytest.raises(HypothesisError, match=r"site 'm0' has no input slot 'q'; its slots are \['in'\]"):
        split_sites(base, Transcoder("m0", **weights, slot="q"))
    wide_in = split_sites(base, Transcoder("m0", **_transcoder(0, d_in=7)))  # trained on another site
    with pytest.raises(ModelError, match=r"Transcoder\('m0'\): the encoder reads 7 components .* its input here has 8"):
        wide_in.calibrate(data.inputs)
    wide_out = split_sites(base, Transcoder("m0", **_transcoder(0, d_out=6)))
    with pytest.raises(ModelError, match=r"Transcoder\('m0'\): the decoder writes 6 components .* site 'm0' gives 8"):
        wide_out.calibrate(data.inputs)
    path = tmp_path / "tc.safetensors"
    save_file({**weights, "W_skip": torch.zeros(D_MODEL, D_MODEL)}, str(path))
    with pytest.raises(HypothesisError, match=r"tensors \['W_skip'\] are not part of a Transcoder here"):
        Transcoder.load(path, "m0")
    save_file(_transcoder(0, jump=True), str(path))
    loaded = Transcoder.load(path, "a1.0", groups={"g": [1]}, slot="v")
    assert loaded.slot == "v" and loaded.threshold is not None
    torch.testing.assert_close(loaded.W_dec, _transcoder(0, jump=True)["W_dec"])


def test_a_transcoder_that_does_not_reconstruct_leaves_it_to_its_error_piece():
    """Random weights predict nothing of m0: the error piece carries m0's output, the pieces still sum back, and
    a claim that m0 matters only through its latents resamples that error (a different scrub from keeping it)."""
    adapter, data = _wrapped(4, 0)
    latents = Hypothesis("latents only", allow_singletons=True)
    latents.node("g", "m0[g]", EXACT).node("h", "m0[h]", EXACT).node("rest", "m0[rest]", EXACT)
    latents.output(parents=[Edge(n, via="all") for n in ("g", "h", "rest")])
    engine, reference = engine_and_reference(latents, adapter, data, torch.arange(12), seed=5)
    torch.testing.assert_close(engine, reference, atol=1e-4, rtol=1e-4)
    with_error = latents.with_node("error", "m0[error]", EXACT, feeds=[Edge("output", via="all")])
    kept, _ = engine_and_reference(with_error, adapter, data, torch.arange(12), seed=5)
    assert (kept - engine).abs().max() > 1e-3


def test_a_transcoder_far_larger_than_its_site_is_refused_naming_the_piece():
    model = tiny_transformer(seed=0, n_layers=2, n_heads=2, n_ctx=3)
    huge = _transcoder(0)
    huge["W_dec"][:3] *= 1e12
    adapter = split_sites(HookedAdapter.for_transformer(model, 2, 2), Transcoder("m0", **huge, groups={"g": [0, 1, 2]}))
    with pytest.raises(ModelError, match=r"pieces of 'm0' do not sum back .*the largest piece is 'm0\[(g|error)\]'"):
        adapter.calibrate(random_tokens(32, 3, 5).inputs)


def test_fitted_subspaces():
    model = tiny_transformer(seed=0, n_layers=2, n_heads=2, n_ctx=3)
    data = random_tokens(64, 3, 5)
    base = HookedAdapter.for_transformer(model, 2, 2)
    pca = Subspace.fit(base, data, "a0.0", "pca", k=2)
    assert pca.basis.shape == (D_MODEL, 2) and pca.name == "pca2"
    torch.testing.assert_close(pca.basis.T @ pca.basis, torch.eye(2), atol=1e-5, rtol=1e-5)
    reg = Subspace.fit(base, data, "embed", "regression", target="label", position=0, name="label")
    assert reg.basis.shape == (D_MODEL, 1)
    with pytest.raises(HypothesisError, match="needs target"):
        Subspace.fit(base, data, "a0.0", "regression")
    with pytest.raises(HypothesisError, match=r"vary along 4 direction\(s\).*; 5 needed; ask for fewer"):
        Subspace.fit(base, data, "a0.0", "pca", k=5)  # a head writes into d_head = 4 of d_model = 8 dimensions
    with pytest.raises(HypothesisError, match="target does not vary with the site's outputs"):
        Subspace.fit(base, data, "a0.0", "regression", target=torch.ones(len(data)))


def test_a_fitted_direction_lies_where_the_site_varies_and_repeats_exactly():
    """Beyond the d_head dimensions a head writes into, its output is float32 rounding. A least-squares fit over
    every dimension put nearly all its weight there (phi in paren_balance_nodes: 99.99 %), and since torch's default
    CPU lstsq driver pivots by uninitialised memory, that direction changed from call to call and process to process
    (JSON reports differing by 4e-6). The fit must lie in the head's output space and repeat to the bit."""
    model = tiny_transformer(seed=0, n_layers=2, n_heads=2, n_ctx=3)
    data = random_tokens(256, 3, 5)
    base = HookedAdapter.for_transformer(model, 2, 2)

    def fit():
        return Subspace.fit(base, data, "a0.0", "regression", target="label", position=1).basis

    first = fit()
    space, _ = torch.linalg.qr(model.blocks[0].attn.W_O[0].detach().double().T)  # where head 0.0 writes
    direction = first.double()[:, 0]
    assert (direction - space @ (space.T @ direction)).norm() < 1e-5
    for fill in range(1, 8):  # freed small blocks full of nonzero integers, for an uninitialised array to pick up
        junk = [torch.full((n,), fill, dtype=torch.int32) for n in range(1, 65) for _ in range(20)]
        del junk  # (the old fit failed this loop about one run in three; the span check above, every time)
        assert torch.equal(fit(), first)


def _option(fn):
    """A verified shortcut in comparable form: the base adapter's option a split site's wrapper calls."""
    fn = fn.__defaults__[0] if getattr(fn, "__defaults__", None) else fn
    return (fn.func.__name__, fn.keywords) if hasattr(fn, "func") else fn.__name__


def decided(calibration):
    """What a calibration decided, in comparable form."""
    return ({name: _option(fn) for name, fn in calibration.shortcuts.items()}, calibration.early_stops,
            calibration.uses_context, calibration.n_positions, calibration.rows, calibration.check_rows)


@pytest.mark.parametrize("kind", range(6))
def test_a_site_by_site_calibration_in_chunks_decides_the_same(kind):
    """Split sites calibrate site by site; under a budget of a few rows' readings they do so in chunks (memory
    bounded by the budget, not the rows), deciding what one chunk of every row decides, offsets to rounding."""
    model = tiny_transformer(seed=1, n_layers=2, n_heads=2, n_ctx=3)
    inputs = random_tokens(64, 3, 5, seed=1).inputs
    whole = split_sites(HookedAdapter.for_transformer(model, 2, 2), *_splits(kind, 1)).calibrate(inputs)
    adapter = split_sites(HookedAdapter.for_transformer(model, 2, 2), *_splits(kind, 1))
    chunked = adapter.calibrate(inputs, memory_budget=10 * adapter.row_bytes(inputs))
    # the row measure, then 7 chunks, and the determinism check's second pass on 4 rows
    assert whole.calls["clean"] == 3 and chunked.calls["clean"] == 1 + 7 + 1
    assert whole.rows_run["clean"] == chunked.rows_run["clean"] == 65 + 4
    assert decided(chunked) == decided(whole) and whole.check_rows == 8
    assert len(whole.shortcuts) >= 7
    assert set(chunked.offsets) == set(whole.offsets)
    for key, offset in whole.offsets.items():
        torch.testing.assert_close(chunked.offsets[key], offset, rtol=1e-6, atol=1e-6)


def test_a_chunked_site_by_site_calibration_refuses_pieces_that_do_not_sum_back(monkeypatch):
    model = tiny_transformer(seed=1, n_layers=2, n_heads=2, n_ctx=3)
    inputs = random_tokens(64, 3, 5, seed=1).inputs
    split = Subspace.split
    monkeypatch.setattr(Subspace, "split",
                        lambda self, v, given=None: {k: x * 1.01 for k, x in split(self, v, given).items()})
    adapter = split_sites(HookedAdapter.for_transformer(model, 2, 2), Subspace("a0.0", torch.ones(1, D_MODEL)))
    with pytest.raises(ModelError, match="pieces of 'a0.0' do not sum back"):
        adapter.calibrate(inputs, memory_budget=10 * adapter.row_bytes(inputs))


@pytest.mark.parametrize("kind", range(6))
def test_split_sites_calibrate_in_a_few_batched_passes_deciding_what_site_by_site_decides(kind, monkeypatch):
    """Where the base adapter patches every site in one pass, so does the wrapper (a piece stands for its site):
    a fixed number of calls whatever the sites, and the decisions of checking them one by one."""
    model = tiny_transformer(seed=1, n_layers=2, n_heads=2, n_ctx=3)
    inputs = random_tokens(64, 3, 5, seed=1).inputs
    batched = split_sites(HookedAdapter.for_transformer(model, 2, 2), *_splits(kind, 1)).calibrate(inputs)
    assert batched.calls == {"clean": 3, "run_all": 1, "group": 4}  # 3 block starts, all MLPs on their own
    monkeypatch.setattr(type(split_sites(HookedAdapter.for_transformer(model, 2, 2), *_splits(kind, 1))),
                        "_can_run_all", lambda self: False)
    alone = split_sites(HookedAdapter.for_transformer(model, 2, 2), *_splits(kind, 1)).calibrate(inputs)
    assert alone.calls["run"] >= 2 * 6
    assert decided(batched) == decided(alone)
    for key, offset in alone.offsets.items():
        torch.testing.assert_close(batched.offsets[key], offset)

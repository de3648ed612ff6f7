"""Adapters: shortcuts (start the forward pass at the site) are used only where they reproduce the full
pass, and clean readings survive a model that modifies its tensors in place."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from scrubbing import Edge, Hypothesis
from scrubbing.adapters import HookedAdapter, HookedSite, HookRef, TorchModuleAdapter
from scrubbing.errors import ModelError
from scrubbing.models import TinyTransformer
from scrubbing.sites import Dataset

from .conftest import engine_and_reference, random_tokens, tiny_transformer


def _every_site_tree() -> Hypothesis:
    h = Hypothesis("tree", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs % 2)
    h.node("prev", "a0.1", lambda d: d.inputs % 3, parents=["tok"])
    h.node("mix", "m0", lambda d: d.inputs[:, 0] % 2, parents=["prev", Edge("tok", via="direct")])
    h.node("reader", "a1.0", lambda d: d.inputs[:, -1] % 2, parents=[Edge("mix", into="k"), Edge("prev", into="v")])
    h.output(parents=["reader", Edge("mix", via="direct")])
    return h


def test_every_transformer_site_but_the_embedding_has_a_shortcut(small):
    model, data, adapter = small
    assert set(adapter.shortcuts) == set(adapter.sites) - {"embed"}
    x = data.inputs[:16]
    outputs, slots = adapter._clean(x, True)
    for site in adapter.shortcuts:
        given = {slot: slots[(site, slot)] for slot in adapter.sites[site].slots}
        torch.testing.assert_close(adapter.run(site, given, x), outputs[site], atol=1e-5, rtol=1e-5)


class _WrongStart(TinyTransformer):
    """``start_at_layer`` accepted but mishandled: the logits come out doubled. Sites inside the
    blocks are read before the logits, so only the output's shortcuts are wrong."""

    def forward(self, tokens, start_at_layer=None):
        logits = super().forward(tokens, start_at_layer)
        return logits if start_at_layer is None else 2 * logits


def test_a_wrong_shortcut_is_refused_and_the_engine_stays_exact():
    right = tiny_transformer(seed=4)
    wrong = _WrongStart(right.cfg).eval()
    wrong.load_state_dict(right.state_dict())
    data = random_tokens(40, 4, 5)
    adapter = HookedAdapter.for_transformer(wrong, 2, 2)
    adapter.calibrate(data.inputs[:32])
    assert set(adapter.shortcuts) == set(adapter.sites) - {"embed", "output"}
    engine, reference = engine_and_reference(_every_site_tree(), adapter, data, torch.arange(5), seed=2)
    torch.testing.assert_close(engine, reference, atol=1e-4, rtol=1e-4)
    assert all(len(hp.fwd_hooks) == 0 for hp in wrong.hook_dict.values())


class _Masked(nn.Module):
    """A readout that also reads a mask computed from the raw tokens: calling it on its slot alone is wrong."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.mix = nn.Linear(4, 4)
        self.readout = _MaskedReadout()

    def forward(self, tokens):
        x = self.embed(tokens)
        x = x + self.mix(x)
        return self.readout(x, tokens == 0)


class _MaskedReadout(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 2)

    def forward(self, x, mask=None):
        if mask is not None:
            x = x.masked_fill(mask[..., None], 0.0)
        return self.proj(x).sum(dim=1)


def test_a_module_that_reads_the_raw_input_is_refused():
    """Its mask would stay on the instance's own example, where causal scrubbing takes it from r."""
    torch.manual_seed(0)
    model = _Masked().eval()
    tokens = torch.randint(0, 5, (50, 3), generator=torch.Generator().manual_seed(1))
    adapter = TorchModuleAdapter(model, {"embed": (), "mix": ("embed",), "readout": ("embed", "mix")}, "readout")
    with pytest.raises(ModelError, match="site 'readout' reads the model's raw input"):
        adapter.calibrate(tokens)


class _Small(HookedRootModule):
    """embed -> lin -> out, with hook points on each; optionally unkind in one legal way:
    ``in_place`` zeroes the linear layer's output after its hook has run, ``fires_twice`` fires the
    embedding's hook a second time (on the embedding plus one, as a reused module would)."""

    def __init__(self, in_place: bool = False, fires_twice: bool = False):
        super().__init__()
        self.in_place, self.fires_twice = in_place, fires_twice
        self.embed, self.lin, self.out = nn.Embedding(5, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.hook_embed, self.hook_lin_in, self.hook_lin, self.hook_out_in = (HookPoint() for _ in range(4))
        self.setup()

    def forward(self, tokens):
        e = self.hook_embed(self.embed(tokens))
        if self.fires_twice:
            self.hook_embed(e + 1.0)
        h = self.hook_lin(self.lin(self.hook_lin_in(e.clone())))
        logits = self.out(self.hook_out_in(e + h))
        if self.in_place:
            h.mul_(0.0)
        return logits


SMALL_SITES = [HookedSite("embed", HookRef("hook_embed"), {}, ()),
               HookedSite("lin", HookRef("hook_lin"), {"in": HookRef("hook_lin_in")}, ("embed",)),
               HookedSite("output", None, {"in": HookRef("hook_out_in")}, ("embed", "lin"))]


def _small_data() -> Dataset:
    tokens = torch.randint(0, 5, (40, 3), generator=torch.Generator().manual_seed(2))
    return Dataset(tokens, {"label": tokens[:, 0] % 2})


def test_clean_readings_survive_in_place_changes():
    torch.manual_seed(0)
    model = _Small(in_place=True).eval()
    data = _small_data()
    tokens = data.inputs
    adapter = HookedAdapter(model, SMALL_SITES)
    adapter.calibrate(data.inputs)
    with torch.no_grad():
        expected = model.lin(model.embed(tokens))
    torch.testing.assert_close(adapter.clean(tokens)["lin"], expected)
    h = Hypothesis("in place", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs[:, 0] % 2)
    h.node("lin", "lin", lambda d: d.inputs[:, 1] % 2, parents=["tok"])
    h.output(parents=["lin"])
    engine, reference = engine_and_reference(h, adapter, data, torch.arange(6), seed=1)
    torch.testing.assert_close(engine, reference, atol=1e-5, rtol=1e-5)


def test_clean_upto_stops_early_and_matches_the_full_pass(small):
    model, data, adapter = small
    x = data.inputs[:12]
    full = adapter.clean(x)
    names = list(adapter.sites)
    for upto in names:
        part = adapter.clean(x, upto=upto)
        assert set(names[: names.index(upto) + 1]) <= set(part)
        for name, value in part.items():
            torch.testing.assert_close(value, full[name])
    assert "output" not in adapter.clean(x, upto="m0")


class _Branches(nn.Module):
    """Two parallel branches that run in the opposite order to the site list."""

    def __init__(self):
        super().__init__()
        self.embed, self.first, self.second = nn.Embedding(5, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.readout = nn.Linear(4, 2)

    def forward(self, tokens):
        x = self.embed(tokens)
        later = self.second(x)  # runs first, though listed second
        return self.readout(x + self.first(x) + later).sum(dim=1)


def test_sites_listed_out_of_forward_order_still_read_completely():
    torch.manual_seed(0)
    sites = {"embed": (), "first": ("embed",), "second": ("embed",), "readout": ("embed", "first", "second")}
    adapter = TorchModuleAdapter(_Branches().eval(), sites, "readout")
    tokens = torch.randint(0, 5, (40, 3), generator=torch.Generator().manual_seed(3))
    data = Dataset(tokens, {"label": tokens[:, 0] % 2})
    adapter.calibrate(data.inputs)
    full = adapter.clean(tokens)
    part = adapter.clean(tokens, upto="second")  # "second" fires before "first": no early stop possible
    for name in ("embed", "first", "second"):
        torch.testing.assert_close(part[name], full[name])
    h = Hypothesis("branches", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs[:, 0] % 2)
    h.node("second", "second", lambda d: d.inputs[:, 1] % 2, parents=["tok"])
    h.output(parents=["second", Edge("tok", via="direct")])
    engine, reference = engine_and_reference(h, adapter, data, torch.arange(8), seed=4)
    torch.testing.assert_close(engine, reference, atol=1e-5, rtol=1e-5)


class _KeyHookSkipped(TinyTransformer):
    """A ``start_at_layer`` path that forgets the key-input hooks: keys are then computed from the residual
    passed in (the query slot). Right whenever q and k inputs agree, as they do on clean data."""

    def forward(self, tokens, start_at_layer=None):
        if start_at_layer is None:
            return super().forward(tokens)
        hooks = [block.hook_k_input._forward_hooks for block in self.blocks]
        saved = [dict(h) for h in hooks]
        for h in hooks:
            h.clear()
        try:
            return super().forward(tokens, start_at_layer)
        finally:
            for h, kept in zip(hooks, saved):
                h.update(kept)


def test_a_shortcut_that_confuses_its_slots_is_refused():
    right = tiny_transformer(seed=5)
    model = _KeyHookSkipped(right.cfg).eval()
    model.load_state_dict(right.state_dict())
    data = random_tokens(40, 4, 5)
    adapter = HookedAdapter.for_transformer(model, 2, 2)
    adapter.calibrate(data.inputs[:32])
    assert set(adapter.shortcuts) == {"m0", "m1", "output"}
    engine, reference = engine_and_reference(_every_site_tree(), adapter, data, torch.arange(6), seed=5)
    torch.testing.assert_close(engine, reference, atol=1e-4, rtol=1e-4)


def test_early_stop_is_used_only_where_it_reads_what_a_full_pass_reads():
    torch.manual_seed(0)
    data = _small_data()
    tokens = data.inputs
    adapter = HookedAdapter(_Small(fires_twice=True).eval(), SMALL_SITES)
    adapter.calibrate(data.inputs)
    assert "embed" not in adapter.early_stops and "lin" in adapter.early_stops
    torch.testing.assert_close(adapter.clean(tokens, upto="embed")["embed"], adapter.clean(tokens)["embed"])
    h = Hypothesis("twice", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs[:, 0] % 2)
    h.output(parents=["tok"])
    engine, reference = engine_and_reference(h, adapter, data, torch.arange(6), seed=1)
    torch.testing.assert_close(engine, reference, atol=1e-5, rtol=1e-5)


def test_a_site_whose_hook_never_fires_is_named():
    model = _Small().eval()
    model.hook_unused = HookPoint()  # a hook point the forward pass never calls
    model.setup()
    sites = [SMALL_SITES[0], HookedSite("unused", HookRef("hook_unused"), {}, ()),
             HookedSite("output", None, {"in": HookRef("hook_out_in")}, ("embed",))]
    adapter = HookedAdapter(model, sites)
    with pytest.raises(ModelError, match="'unused'"):
        adapter.calibrate(torch.randint(0, 5, (8, 3)))


def test_a_shortcut_wrong_only_on_later_rows_is_refused():
    """Batched calibration checks shortcuts on every calibration row: one that is wrong only on inputs that first
    appear late in the calibration data (padding, masks) must not be kept."""
    from scrubbing.models import TinyTransformer

    right = tiny_transformer(seed=4)
    inputs = random_tokens(256, 4, 5, seed=1).inputs

    class LateBug(TinyTransformer):
        """Starting after the last block (the output site's shortcut) goes wrong on some residuals."""
        bad: torch.Tensor | None = None

        def forward(self, tokens, start_at_layer=None):
            logits = super().forward(tokens, start_at_layer)
            if start_at_layer == self.cfg.n_layers and self.bad is not None:
                hit = torch.isin(torch.round(tokens[:, -1, 0] * 1e4).long(), self.bad)
                logits = torch.where(hit[:, None, None], 2 * logits, logits)
            return logits

    model = LateBug(right.cfg).eval()
    model.load_state_dict(right.state_dict())
    seen = {}
    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.1.hook_resid_post",
                                                  lambda v, hook: seen.__setitem__("resid", v.clone()))]):
        model(inputs)
    keys = torch.round(seen["resid"][:, -1, 0] * 1e4).long()
    model.bad = keys[100:][~torch.isin(keys[100:], keys[:100])]  # only rows from 100 on are affected
    assert len(model.bad) > 50
    adapter = HookedAdapter.for_transformer(model, 2, 2)
    adapter.calibrate(inputs)
    outputs, slots = adapter._clean(inputs, True)
    for site in adapter.shortcuts:  # every kept shortcut reproduces the full pass on every row
        given = {slot: slots[(site, slot)] for slot in adapter.sites[site].slots}
        torch.testing.assert_close(adapter.run(site, given, inputs), outputs[site], atol=1e-4, rtol=1e-4)


class _InPlaceNorm(nn.Module):
    """A norm that scales its input in place first (legal: every pass hands it a fresh tensor). It fails on a
    head input that is a broadcast view (one slot written to every head at once), and works on a real one."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        return self.norm(x.mul_(1.0))


def test_the_shortcut_the_engine_runs_is_the_one_calibration_checked():
    """Calibration checks a block's shortcuts together; the engine runs them one site at a time. Both must be
    the same call (``_from_layer`` is ``_from_block`` for one site), so that a model on which one way of
    writing the slots fails cannot pass calibration and then fail, or differ, in the engine."""
    model = tiny_transformer(seed=6)
    for block in model.blocks:
        block.ln1 = _InPlaceNorm(block.ln1)
    data = random_tokens(40, 4, 5)
    adapter = HookedAdapter.for_transformer(model, 2, 2)
    adapter.calibrate(data.inputs[:32])
    assert set(adapter.shortcuts) == set(adapter.sites) - {"embed"}
    outputs, slots = adapter._clean(data.inputs, True)
    for site in adapter.shortcuts:  # the engine's call on one site gives the clean output
        given = {slot: slots[(site, slot)] for slot in adapter.sites[site].slots}
        torch.testing.assert_close(adapter.run(site, given, data.inputs), outputs[site], atol=1e-5, rtol=1e-5)
    engine, reference = engine_and_reference(_every_site_tree(), adapter, data, torch.arange(6), seed=6)
    torch.testing.assert_close(engine, reference, atol=1e-4, rtol=1e-4)


class _Keeps(_Small):
    """Keeps its last linear output and zeroes it at the start of the next pass (a cache reused in place):
    readings of an earlier pass change under calibration's later ones."""

    last = None

    def forward(self, tokens):
        if self.last is not None:
            self.last.mul_(0.0)
        e = self.hook_embed(self.embed(tokens))
        h = self.hook_lin(self.lin(self.hook_lin_in(e.clone())))
        self.last = h
        return self.out(self.hook_out_in(e + h))


def test_readings_a_model_later_writes_into_are_copied():
    """Calibration holds the clean readings as the model's own tensors; one the model writes into during a later
    pass is noticed (version counters) and calibration redone on copies, deciding what an honest model gets."""
    torch.manual_seed(0)
    honest = _Small().eval()
    keeps = _Keeps().eval()
    keeps.load_state_dict(honest.state_dict())
    data = _small_data()
    expected = HookedAdapter(honest, SMALL_SITES).calibrate(data)
    got = HookedAdapter(keeps, SMALL_SITES).calibrate(data)
    assert got.early_stops == expected.early_stops == {"embed", "lin", "output"}
    assert got.uses_context == expected.uses_context
    for key, offset in expected.offsets.items():
        torch.testing.assert_close(got.offsets[key], offset)


def _decided(calibration):
    """What a calibration decided, in comparable form (shortcuts by the call and option they are)."""
    shortcuts = {name: (fn.func.__name__, fn.keywords) for name, fn in calibration.shortcuts.items()}
    return (shortcuts, calibration.early_stops, calibration.uses_context, calibration.n_positions,
            calibration.rows, calibration.check_rows, calibration.rows_run)


@pytest.mark.parametrize("rows_per_chunk", [10, 25])
def test_calibration_in_chunks_decides_what_calibration_on_every_row_decides(rows_per_chunk):
    """A memory budget that holds only a few rows' readings splits calibration into chunks (memory bounded by
    the budget, not the rows) and changes nothing it decides: the same shortcuts, early stops, context use and
    rows run (chunks add calls, not rows), the offsets to float32 rounding (their mean is summed across
    chunks), and the same one bad row found wherever it lies."""
    model = tiny_transformer(seed=3)
    inputs = random_tokens(64, 4, 5, seed=2).inputs
    whole_adapter = HookedAdapter.for_transformer(model, 2, 2)
    whole = whole_adapter.calibrate(inputs)
    assert whole.calls == {"clean": 3, "run_all": 1, "group": 4}  # one chunk (and the 4-row determinism check)
    chunked_adapter = HookedAdapter.for_transformer(model, 2, 2)
    budget = rows_per_chunk * chunked_adapter.row_bytes(inputs)
    chunked = chunked_adapter.calibrate(inputs, memory_budget=budget)
    n_chunks = -(-64 // rows_per_chunk)
    assert chunked.calls == {"clean": n_chunks + 2, "run_all": 1, "group": 4 * n_chunks}
    assert _decided(chunked) == _decided(whole)
    assert set(chunked.offsets) == set(whole.offsets)
    for key, offset in whole.offsets.items():
        torch.testing.assert_close(chunked.offsets[key], offset, rtol=1e-6, atol=1e-6)


def test_a_chunked_calibration_refuses_a_shortcut_wrong_on_one_late_row():
    """The clean shortcut check keeps its strength across chunks: a shortcut wrong on one row that lies in the
    last chunk only is refused, as on every row at once."""
    right = tiny_transformer(seed=4)
    inputs = random_tokens(64, 4, 5, seed=1).inputs

    class OneBadRow(TinyTransformer):
        """Starting after the last block (the output site's shortcut) goes wrong on one residual."""
        bad: float | None = None

        def forward(self, tokens, start_at_layer=None):
            logits = super().forward(tokens, start_at_layer)
            if start_at_layer == self.cfg.n_layers and self.bad is not None:
                hit = tokens[:, -1, 0] == self.bad
                logits = torch.where(hit[:, None, None], 2 * logits, logits)
            return logits

    model = OneBadRow(right.cfg).eval()
    model.load_state_dict(right.state_dict())
    seen = {}
    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.1.hook_resid_post",
                                                  lambda v, hook: seen.__setitem__("resid", v.clone()))]):
        model(inputs)
    keys = seen["resid"][:, -1, 0]
    assert (keys == keys[60]).sum() == 1
    model.bad = keys[60].item()
    for budget_rows in (None, 8):
        adapter = HookedAdapter.for_transformer(model, 2, 2)
        budget = None if budget_rows is None else budget_rows * adapter.row_bytes(inputs)
        calibration = adapter.calibrate(inputs, memory_budget=budget)
        # in 8 chunks: the first option fails by its values on the last chunk, so the second is checked in
        # a second sweep over every chunk (8 more clean passes of 8 rows); one pass of 4 rows checks determinism
        assert calibration.calls["clean"] == (3 if budget is None else 2 * (64 // 8) + 2)
        assert calibration.shortcuts["output"].keywords["layer"] == 1  # not the start after the last block
    model.bad = None
    assert HookedAdapter.for_transformer(model, 2, 2).calibrate(inputs, memory_budget=budget) \
        .shortcuts["output"].keywords["layer"] == 2  # the start after the last block, where it is right


def test_a_chunked_calibration_refuses_a_slot_that_is_no_sum_with_the_same_figures():
    """The decomposition check keeps its strength across chunks: the largest deviation and the scale it
    reports are those of every row at once."""
    from scrubbing.adapters.hooked import transformer_sites

    model = tiny_transformer()
    inputs = random_tokens(64, 4, 5).inputs
    sites = [s for s in transformer_sites(2, 2) if s.name != "m0"]  # a writer to the residual stream left out
    sites = [HookedSite(s.name, s.output, s.slots, tuple(p for p in s.parents if p != "m0")) for s in sites]
    messages = []
    for budget_rows in (None, 8):
        adapter = HookedAdapter(model, sites)
        budget = None if budget_rows is None else budget_rows * adapter.row_bytes(inputs)
        with pytest.raises(ModelError, match="not the sum of its parents") as raised:
            adapter.calibrate(inputs, memory_budget=budget)
        messages.append(str(raised.value))
    assert messages[0] == messages[1]

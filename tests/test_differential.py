"""The batched engine against the reference implementation, on random models and random hypotheses."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scrubbing import EXACT, Edge, Hypothesis

from .conftest import adapter_for, engine_and_reference, random_tokens, tiny_transformer


def _feature(kind: int, modulus: int, column: int):
    """A random feature: per example, per position, exact or constant."""
    if kind == 0:
        return EXACT
    if kind == 1:
        return lambda d: d.inputs[:, column] % modulus
    if kind == 2:
        return lambda d: d.inputs % modulus  # one class per token position
    return lambda d: torch.zeros(len(d), dtype=torch.long)


@st.composite
def model_and_hypothesis(draw):
    n_layers = draw(st.integers(1, 3))
    n_heads = draw(st.integers(1, 2))
    n_ctx = draw(st.integers(2, 4))
    mlp = draw(st.booleans())
    causal = draw(st.booleans())
    model = tiny_transformer(seed=draw(st.integers(0, 1000)), n_layers=n_layers, n_heads=n_heads, n_ctx=n_ctx,
                             mlp=mlp, causal=causal)
    data = random_tokens(24, n_ctx, 4, seed=draw(st.integers(0, 1000)))
    adapter = adapter_for(model, data)
    sites = [s for s in adapter.sites if s != "output"]
    chosen = sorted(draw(st.sets(st.sampled_from(sites), min_size=0, max_size=min(4, len(sites)))),
                    key=sites.index)
    h = Hypothesis("random", allow_singletons=True)
    has_child: set[str] = set()
    for i, site in enumerate(chosen):
        parents = []
        if not adapter.sites[site].is_source:
            for earlier in chosen[:i]:
                if earlier in adapter.sites[site].parents and draw(st.booleans()):
                    slots = adapter.sites[site].slots
                    into = draw(st.sampled_from([None, *[(s,) for s in slots]]))
                    between = [s for s in adapter.sites[site].parents
                               if earlier in adapter.sites[s].parents and s not in chosen]
                    via = draw(st.sampled_from(["all", "direct", tuple(between[:1])]))
                    parents.append(Edge(earlier, into=into, via=via))
                    has_child.add(earlier)
        kind = draw(st.integers(0, 3))
        h.node(site, site, _feature(kind, draw(st.integers(2, 3)), draw(st.integers(0, n_ctx - 1))), parents=parents)
    outputs = [n for n in chosen if n not in has_child]
    h.output(parents=[Edge(n, via=draw(st.sampled_from(["all", "direct"]))) for n in outputs])
    return adapter, data, h


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=model_and_hypothesis(), seed=st.integers(0, 2**16))
def test_engine_equals_reference(case, seed):
    adapter, data, hypothesis = case
    refs = torch.arange(3)
    engine, reference = engine_and_reference(hypothesis, adapter, data, refs, seed=seed)
    torch.testing.assert_close(engine, reference, atol=1e-4, rtol=1e-4)


def test_multilevel_per_position_tree(small):
    """Three levels, per-position classes at two of them, q/k/v restricted edges."""
    model, data, adapter = small
    h = Hypothesis("deep", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs % 2)
    h.node("prev", "a0.1", lambda d: d.inputs % 3, parents=["tok"])
    h.node("mix", "m0", lambda d: d.inputs[:, 0] % 2, parents=["prev", Edge("tok", via="direct")])
    h.node("reader", "a1.0", lambda d: d.inputs[:, -1] % 2,
           parents=[Edge("mix", into="k"), Edge("prev", into=("q", "v"))])
    h.output(parents=["reader"])
    engine, reference = engine_and_reference(h, adapter, data, torch.arange(4), seed=3)
    torch.testing.assert_close(engine, reference, atol=1e-4, rtol=1e-4)


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
    from scrubbing.execute import Engine

    from .conftest import plan_for

    plan = plan_for(h, adapter, data, torch.arange(25), seed=2)
    whole = Engine(adapter, data, chunk_refs=1000).outputs(plan)
    chunked = Engine(adapter, data, chunk_refs=4, batch_size=3).outputs(plan)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)

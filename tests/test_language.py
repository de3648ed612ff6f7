"""The hypothesis language: unclaimed inputs, edge features, named features, derivations, a custom baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scrubbing import EXACT, Edge, Hypothesis
from scrubbing import features as F
from scrubbing.errors import HypothesisError, ScrubError
from scrubbing.execute import Engine
from scrubbing.reference import reference_outputs

from .conftest import adapter_for, bound_and_plan, random_tokens, tiny_transformer

REFS = torch.arange(20)


@pytest.fixture(scope="module")
def attn():
    """A 2-layer attention-only transformer (the induction model's shape) and 60 random sequences."""
    model = tiny_transformer(seed=3, mlp=False)
    data = random_tokens(60, 4, 5, seed=3)
    return adapter_for(model, data), data


def _run(h, adapter, data, seed=0):
    bound, plan = bound_and_plan(h, adapter, data, REFS, seed)
    return plan, Engine(adapter, data, batch_size=7).outputs(plan), reference_outputs(plan, adapter, data, bound)


def _claim(h: Hypothesis, **unclaimed) -> Hypothesis:
    """a1.0's value reads a0.1 (carrying the token at t-1) and nothing else it claims."""
    h.node("a0.1", "a0.1", F.token_at(1, column="tokens"))
    h.node("a1.0", "a1.0", EXACT, parents=[Edge("a0.1", into="v", via="direct")], **unclaimed)
    return h


@pytest.fixture(scope="module")
def tokens_column(attn):
    adapter, data = attn
    data.columns["tokens"] = data.inputs
    return data


def test_reference_frame_is_one_argument(attn, tokens_column):
    """unclaimed="reference" computes what a frame of EXACT leaves on every other input computes, with the same draws."""
    adapter, data = attn[0], tokens_column
    framed = _claim(Hypothesis("frame"), unclaimed={"q": "reference", "k": "reference", "v": "draw"})
    for site in adapter.sites[adapter.output].parents:
        if site != "a1.0":
            framed.node(f"{site}@out", site, EXACT)
    framed.output(parents=[Edge(n, via="direct") for n in framed.nodes if n.endswith("@out") or n == "a1.0"])
    short = _claim(Hypothesis("short", unclaimed="reference"), unclaimed={"v": "draw"})
    short.output(parents=[Edge("a1.0", via="direct")])
    _, frame_engine, frame_oracle = _run(framed, adapter, data)
    _, engine, oracle = _run(short, adapter, data)
    torch.testing.assert_close(engine, frame_engine, rtol=0, atol=0)
    torch.testing.assert_close(oracle, frame_oracle, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(engine, oracle, rtol=1e-4, atol=1e-4)
    # and it is a different claim from the published algorithm's (everything unclaimed drawn at random)
    drawn = _claim(Hypothesis("drawn")).output(parents=[Edge("a1.0", via="direct")])
    assert not torch.allclose(_run(drawn, adapter, data)[1], engine)


def test_default_setting_leaves_the_plan_unchanged(attn, tokens_column):
    adapter, data = attn[0], tokens_column
    plain = _claim(Hypothesis("plain")).output(parents=["a1.0"])
    spelled = _claim(Hypothesis("spelled", unclaimed="draw"), unclaimed="draw").output(parents=["a1.0"], unclaimed="draw")
    kept = _claim(Hypothesis("kept", unclaimed="reference")).output(parents=["a1.0"])
    (p1, e1, _), (p2, e2, _), (p3, e3, o3) = (_run(h, adapter, data) for h in (plain, spelled, kept))
    assert p1.digest() == p2.digest()
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)
    # the draws are made either way, so every other draw of the tree is the same under "reference"
    assert all(torch.equal(p1.instances[k].examples, p3.instances[k].examples) for k in p1.instances)
    assert not torch.allclose(e1, e3)
    torch.testing.assert_close(e3, o3, rtol=1e-4, atol=1e-4)


def test_edge_feature_is_a_copy_of_the_parent_with_that_feature(attn, tokens_column):
    adapter, data = attn[0], tokens_column
    on_edge = Hypothesis("edge")
    on_edge.node("a0.1", "a0.1", EXACT)
    on_edge.node("a1.0", "a1.0", EXACT, parents=[Edge("a0.1", into="k", feature=F.token_at(1, column="tokens")),
                                                 Edge("a0.1", into="v", feature=F.constant())])
    on_edge.output(parents=["a1.0"])
    explicit = Hypothesis("explicit")
    explicit.node("a0.1->a1.0.k", "a0.1", F.token_at(1, column="tokens"))
    explicit.node("a0.1->a1.0.v", "a0.1", F.constant())
    explicit.node("a1.0", "a1.0", EXACT, parents=[Edge("a0.1->a1.0.k", into="k"), Edge("a0.1->a1.0.v", into="v")])
    explicit.output(parents=["a1.0"])
    (p1, e1, o1), (p2, e2, _) = _run(on_edge, adapter, data), _run(explicit, adapter, data)
    assert p1.digest() == p2.digest()
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)
    torch.testing.assert_close(e1, o1, rtol=1e-4, atol=1e-4)
    assert "a0.1 (feature tokens at t-1, into k)" in on_edge.describe()[1]
    assert "a0.1" in on_edge.nodes  # the hypothesis itself is unchanged; only its bound form has the copies


def test_named_features(tokens_column):
    data = tokens_column
    shifted = F.token_at(2, column="tokens")(data)
    assert torch.equal(shifted[:, 2:], data.inputs[:, :-2]) and (shifted[:, :2] == data.inputs.max() + 1).all()
    assert [f.name for f in (F.token_at(0), F.token_at(3), F.column("label"), F.position(), F.constant())] == \
        ["token", "token at t-3", "label", "position", "constant"]
    both = F.joint(F.column("label"), F.token_at(0, column="tokens"))
    assert both.name == "label & tokens"
    classes = both(data)
    same = classes[:, None, :] == classes[None, :, :]
    assert torch.equal(same, (data.columns["label"][:, None, None] == data.columns["label"][None, :, None])
                       & (data.inputs[:, None, :] == data.inputs[None, :, :]))
    assert torch.equal(F.position()(data)[5], torch.arange(data.inputs.shape[1]))
    named = F.feature("first token")(lambda d: d.inputs[:, 0])
    h = Hypothesis("h").node("n", "embed", named)
    assert h.describe() == ["n @ embed: feature first token; parents: -"]
    assert torch.equal(F.merge_rare(torch.tensor([0, 0, 1, 5, 5, 9])), torch.tensor([0, 0, 5, 5, 5, 5]))


def _small() -> Hypothesis:
    h = Hypothesis("small")
    h.node("e", "embed", EXACT).node("a", "a0.0", F.constant(), parents=["e"])
    return h.output(parents=["a"])


def test_derivations_return_new_hypotheses():
    h = _small()
    before = h.describe()
    bigger = h.with_node("b", "a0.1", F.constant(), parents=["e"], feeds=["output"])
    swapped = h.replacing("a", feature=F.position(), name_as="swapped")
    fewer = bigger.without("b")
    renamed = h.renamed("other", "why")
    both = h.joined(bigger)
    assert h.describe() == before and h.name == "small"
    assert "b" in bigger.nodes and [e.parent for e in bigger.nodes["output"].parents] == ["a", "b"]
    assert swapped.name == "swapped" and swapped.nodes["a"].feature_name == "position"
    assert fewer.describe() == before
    assert (renamed.name, renamed.description, renamed.describe()) == ("other", "why", before)
    assert set(both.nodes) == {"e", "a", "b", "output"} and both.name == "small + small"


def test_bad_derivations_name_the_node_and_the_fix():
    h = _small()
    with pytest.raises(HypothesisError, match="cannot replace node 'nope'.*its nodes are"):
        h.replacing("nope", feature=EXACT)
    with pytest.raises(HypothesisError, match="cannot remove node 'nope'"):
        h.without("nope")
    with pytest.raises(HypothesisError, match="would have a cycle: .*remove one of these edges"):
        h.replacing("e", parents=["a"])
    with pytest.raises(HypothesisError, match="node 'a' is declared twice"):
        h.with_node("a", "a0.1", EXACT)
    with pytest.raises(HypothesisError, match="no field \\['sight'\\]"):
        h.replacing("a", sight="a0.1")
    with pytest.raises(HypothesisError, match="both declare node 'a', as different claims; rename it"):
        h.joined(h.replacing("a", feature=EXACT))
    with pytest.raises(HypothesisError, match="unclaimed must be 'draw' or 'reference'"):
        Hypothesis("x", unclaimed="keep")
    with pytest.raises(HypothesisError, match="the output node cannot be removed"):
        h.without("output")


def test_unclaimed_slot_must_exist(attn):
    adapter, data = attn
    h = Hypothesis("h").node("a", "a1.0", EXACT, parents=["e"], unclaimed={"x": "reference"})
    h.node("e", "embed", EXACT).output(parents=["a"])
    with pytest.raises(HypothesisError, match="node 'a': unclaimed names slot\\(s\\) \\['x'\\]"):
        h.bind(adapter, data)


def test_custom_baseline_sets_the_zero_point():
    from benchmarks.synthetic.tasks import logic_hypotheses, logic_task
    from scrubbing.run import scrub

    task, claims = logic_task(), logic_hypotheses()
    plain = scrub(claims["forgets xor"], task, n_refs=200, regimes=["random"]).to_dict()
    empty = scrub(claims["forgets xor"], task, n_refs=200, regimes=["random"], baseline=claims["empty"]).to_dict()
    own = scrub(claims["forgets xor"], task, n_refs=200, regimes=["random"], baseline=claims["identity"]).to_dict()
    assert empty["baseline_loss"] == pytest.approx(plain["baseline_loss"], abs=0.05)
    assert own["baseline_loss"] == pytest.approx(own["model_loss"], abs=1e-6)
    assert own["regimes"]["random"]["scrubbed_loss"] == plain["regimes"]["random"]["scrubbed_loss"]
    with pytest.raises(ScrubError, match="baseline must be a Hypothesis"):
        scrub(claims["true"], task, n_refs=50, regimes=["random"], baseline="empty")

"""``Hypothesis.to_dict``: the hypothesis as it is scrubbed, as data (what the HTML graph draws)."""

from __future__ import annotations

import json

from benchmarks.synthetic.tasks import logic_hypotheses, logic_task
from scrubbing import EXACT, Edge, Hypothesis
from scrubbing.features import column
from scrubbing.hypothesis import lower_edge_features


def test_to_dict_states_edge_features_as_the_copies_bind_makes():
    h = Hypothesis("edge features")
    h.node("x", "embed", EXACT)
    h.node("and", "and_gate", column("a"), parents=[Edge("x", feature=column("b01"))])
    h.node("xor", "xor_gate", column("b"), parents=[Edge("x", into="k", via="direct", feature=column("b23"))])
    h.output(parents=["and", "xor"])
    data = h.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-safe
    names = [n["name"] for n in data["nodes"]]
    assert names == list(lower_edge_features(h).nodes) == ["x->and", "and", "x->xor.k", "xor", "output"]
    by_name = {n["name"]: n for n in data["nodes"]}
    assert by_name["x->xor.k"] == {"name": "x->xor.k", "site": "embed", "feature": "b23", "exact": False,
                                   "parents": [], "copy_of": "x"}
    assert by_name["xor"]["parents"] == [{"node": "x->xor.k", "slots": ["k"], "via": "direct"}]
    assert by_name["output"]["feature"] is None and "copy_of" not in by_name["and"]
    assert "depth" not in by_name["and"]  # only with an adapter


def test_to_dict_with_an_adapter_gives_model_depth_and_order():
    task = logic_task()
    data = logic_hypotheses()["true"].to_dict(task.adapter)
    nodes = {n["name"]: n for n in data["nodes"]}
    assert all("depth" in n and "order" in n for n in nodes.values())
    for child in nodes.values():  # the model computes a parent's site before its child's
        for edge in child["parents"]:
            assert nodes[edge["node"]]["depth"] < child["depth"], (edge["node"], child["name"])
    assert nodes["output"]["depth"] == max(n["depth"] for n in nodes.values())

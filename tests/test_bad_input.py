"""Every refusal names the node or site and says how to fix it; failures leave the model as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scrubbing import EXACT, Edge, Hypothesis, HypothesisError, LossError, ModelError, ScrubError, Task, scrub


def _task(adapter, data, loss=None):
    loss = loss or (lambda out, d: F.cross_entropy(out[:, -1], d.columns["label"], reduction="none"))
    return Task("tiny", adapter, data, loss)


def _leaf_and_head(site="a1.0", feature=None, allow=True):
    h = Hypothesis("h", allow_singletons=allow)
    h.node("tok", "embed", lambda d: d.inputs[:, 0] % 2)
    h.node("head", site, feature or (lambda d: d.inputs[:, -1] % 2), parents=["tok"])
    h.output(parents=["head"])
    return h


def test_unknown_site_is_named_with_suggestions(small):
    model, data, adapter = small
    with pytest.raises(HypothesisError, match=r"node 'head'.*unknown site 'a1\.9'.*Did you mean"):
        _leaf_and_head("a1.9").bind(adapter, data)


def test_cycle_is_refused(small):
    model, data, adapter = small
    h = Hypothesis("cyclic", allow_singletons=True)
    h.node("a", "a0.0", EXACT, parents=["b"])
    h.node("b", "a1.0", EXACT, parents=["a"])
    h.output(parents=["b"])
    with pytest.raises(HypothesisError, match="cycle"):
        h.bind(adapter, data)


def test_node_off_the_path_to_the_output(small):
    model, data, adapter = small
    h = _leaf_and_head()
    h.node("stray", "a0.1", EXACT)
    with pytest.raises(HypothesisError, match=r"node 'stray' is not on a path to the output"):
        h.bind(adapter, data)


def test_parent_computed_after_child(small):
    model, data, adapter = small
    h = Hypothesis("backwards", allow_singletons=True)
    h.node("late", "a1.0", EXACT)
    h.node("early", "a0.0", EXACT, parents=["late"])
    h.output(parents=["early"])
    with pytest.raises(HypothesisError, match=r"edge 'late' -> 'early': the model has no path"):
        h.bind(adapter, data)


def test_two_nodes_claiming_one_path(small):
    model, data, adapter = small
    h = Hypothesis("double", allow_singletons=True)
    h.node("x", "embed", EXACT)
    h.node("y", "embed", EXACT)
    h.node("head", "a1.0", EXACT, parents=[Edge("x", into=("q", "k")), Edge("y", into="k")])
    h.output(parents=["head"])
    with pytest.raises(HypothesisError, match=r"both claim the path from site 'embed' into 'head' slot\(s\) \['k'\]"):
        h.bind(adapter, data)


def test_unknown_slot_and_missing_parent(small):
    model, data, adapter = small
    h = Hypothesis("slot", allow_singletons=True)
    h.node("tok", "embed", EXACT)
    h.node("head", "a1.0", EXACT, parents=[Edge("tok", into="z")])
    h.output(parents=["head"])
    with pytest.raises(HypothesisError, match=r"no input slot \['z'\]"):
        h.bind(adapter, data)
    h = Hypothesis("ghost")
    h.output(parents=["ghost"])
    with pytest.raises(HypothesisError, match=r"lists parent 'ghost', which is not declared"):
        h.bind(adapter, data)


def test_singleton_class_is_reported(small):
    model, data, adapter = small
    feature = lambda d: torch.arange(len(d))  # every example alone  # noqa: E731
    with pytest.raises(HypothesisError, match=r"node 'head': 60 of 60 examples are alone in their class.*EXACT"):
        _leaf_and_head(feature=feature, allow=False).bind(adapter, data)


@pytest.mark.parametrize("feature, message", [
    (lambda d: d.inputs[:, 0].float(), r"node 'head': feature returned dtype torch.float32"),
    (lambda d: d.inputs[:10, 0], r"node 'head': feature returned shape \(10,\)"),
    (lambda d: d.inputs[:, :2], r"node 'head': per-position feature has shape \(60, 2\)"),
    (lambda d: d.columns["missing"], r"node 'head': its feature raised KeyError"),
])
def test_bad_features(small, feature, message):
    model, data, adapter = small
    with pytest.raises(HypothesisError, match=message):
        _leaf_and_head(feature=feature).bind(adapter, data)


def test_nan_loss_is_refused(small):
    model, data, adapter = small
    def loss(out, d):
        values = F.cross_entropy(out[:, -1], d.columns["label"], reduction="none")
        values[0] = float("nan")
        return values
    with pytest.raises(LossError, match=r"task 'tiny': the loss is NaN or infinite for 1 of 20 references"):
        scrub(_leaf_and_head(), _task(adapter, data, loss), n_refs=20, regimes=['random'])


def test_loss_of_the_wrong_shape(small):
    model, data, adapter = small
    with pytest.raises(LossError, match=r"returned shape \(\) for 20 references"):
        scrub(_leaf_and_head(), _task(adapter, data, lambda out, d: out.sum()), n_refs=20, regimes=['random'])


def _hook_count(model) -> int:
    return sum(len(hp._forward_hooks) for hp in model.hook_dict.values())


def test_model_raising_mid_run_leaves_it_clean(small):
    model, data, adapter = small
    task = _task(adapter, data)
    scrub(_leaf_and_head(), task, n_refs=20, regimes=["random"])  # calibrate while the model still works
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()

    def explode(value, hook):
        raise RuntimeError("boom")

    model.blocks[1].attn.hook_result.add_hook(explode)  # a bug inside the user's model, at head 1.x
    with pytest.raises(ModelError, match=r"the model raised while computing (site 'a1.0'|a clean forward pass).*boom"):
        scrub(_leaf_and_head(), task, n_refs=20, regimes=["random"])
    model.blocks[1].attn.hook_result.remove_hooks()
    assert _hook_count(model) == 0
    assert model.training  # the mode it was found in
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    scrub(_leaf_and_head(), task, n_refs=20, regimes=["random"])  # still usable afterwards
    assert _hook_count(model) == 0


def test_bad_decomposition_is_refused():
    """A site list that misses a writer to the residual stream cannot calibrate."""
    from scrubbing.adapters import HookedAdapter, HookedSite, HookRef

    from .conftest import random_tokens, tiny_transformer

    model = tiny_transformer(n_layers=2)
    full = HookedAdapter.for_transformer(model, 2, 2).spec
    partial = [s for name, s in full.items() if name != "m0"]  # pretend mlp 0 writes nothing
    partial = [HookedSite(s.name, s.output, s.slots, tuple(p for p in s.parents if p != "m0")) for s in partial]
    adapter = HookedAdapter(model, partial)
    with pytest.raises(ModelError, match=r"site 'a1.0' slot 'q': its input is not the sum of its parents"):
        adapter.calibrate(random_tokens(32, 4, 5).inputs)
    assert HookRef("x").head is None


def test_adversarial_regimes_need_a_search_split(small):
    model, data, adapter = small
    with pytest.raises(ScrubError, match=r"need a held-out search split.*lower n_refs to at most 10"):
        scrub(_leaf_and_head(), _task(adapter, data), n_refs=40)


@pytest.mark.parametrize("device", ["bogus", "cuda:7" if torch.cuda.is_available() else "cuda"])
def test_a_device_this_process_cannot_use_is_refused_before_anything_runs(small, device):
    model, data, adapter = small
    with pytest.raises(ScrubError, match=rf"device '{device}' cannot be used here .*devices available: cpu"):
        scrub(_leaf_and_head(), _task(adapter, data), n_refs=20, regimes=["random"], device=device)
    assert next(model.parameters()).device.type == "cpu"


def test_device_with_ray_or_without_a_module_to_move_is_refused(small):
    """Ray's workers get no GPU here, so a GPU run over Ray is refused up front, naming the device; so is a device
    for an adapter with no torch module to move."""
    from scrubbing.run import refuse_ray_on

    model, data, adapter = small
    with pytest.raises(ScrubError, match=r"device 'cuda:1' with Ray.*without --ray"):
        refuse_ray_on("cuda:1")
    refuse_ray_on("cpu")
    refuse_ray_on(None)
    with pytest.raises(ScrubError, match=r"device 'bogus' cannot be used here"):
        refuse_ray_on("bogus")
    adapter.model, kept = object(), adapter.model
    try:
        with pytest.raises(ScrubError, match=r"has no torch module as its `model`.*leave device unset"):
            scrub(_leaf_and_head(), _task(adapter, data), n_refs=20, regimes=["random"], device="cpu")
    finally:
        adapter.model = kept


def test_a_calibration_made_on_another_device_is_made_again(small):
    """What calibration verified on one device is not taken for verified on another: ``calibrate_once`` calibrates
    again when the model has moved since (a task calibrated on the CPU as it loads, run on a GPU)."""
    import dataclasses

    from scrubbing.run import calibrate_once

    model, data, adapter = small
    calibrate_once(adapter, data, 20)
    made = adapter.calibration
    assert made.device == "cpu"
    calibrate_once(adapter, data, 20)
    assert adapter.calibration is made  # same device: kept
    adapter.calibration = dataclasses.replace(made, device="cuda:0")
    calibrate_once(adapter, data, 20)
    assert adapter.calibration is not made and adapter.calibration.device == "cpu"


def test_a_run_moves_the_model_only_when_given_a_device(small, monkeypatch):
    """Without ``device`` the model stays where it is, untouched (a TransformerBridge prints a line on every
    ``to``); with one it goes there for the run and comes back."""
    model, data, adapter = small
    moves = []
    real_to = type(model).to
    monkeypatch.setattr(type(model), "to",
                        lambda self, *args, **kwargs: moves.append(args) or real_to(self, *args, **kwargs))
    scrub(_leaf_and_head(), _task(adapter, data), n_refs=20, regimes=["random"])
    assert moves == []
    scrub(_leaf_and_head(), _task(adapter, data), n_refs=20, regimes=["random"], device="cpu")
    assert [str(args[0]) for args in moves] == ["cpu", "cpu"]

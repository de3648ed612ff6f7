"""The adversarial regimes on hand-built models whose truth is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.synthetic.tasks import (cancel_hypotheses, cancel_task, interaction_hypotheses, interaction_task,
                                        logic_hypotheses, logic_task)
from scrubbing import EXACT, Hypothesis, Task, scrub
from scrubbing.families import Refinement, label_columns
from scrubbing.regimes import REGISTRY

from .conftest import adapter_for, random_tokens, tiny_transformer

ALL = tuple(REGISTRY)


@pytest.fixture(scope="module")
def interaction():
    task, hyps = interaction_task(), interaction_hypotheses()
    return {name: scrub(h, task, n_refs=1000, budget=48) for name, h in hyps.items()}


@pytest.mark.parametrize("make_task, make_hyps", [(logic_task, logic_hypotheses), (cancel_task, cancel_hypotheses),
                                                  (interaction_task, interaction_hypotheses)])
def test_true_hypothesis_survives_every_regime(make_task, make_hyps):
    run = scrub(make_hyps()["true"], make_task(), n_refs=300, budget=16)
    for regime in ALL:
        m = run.regimes[regime].metrics
        assert abs(m["loss_gap"].value) < 1e-5 and m["abs_gap"].value < 1e-5, regime


def test_cancellation_passes_random_and_fails_both_adversaries(interaction):
    run = interaction["ignores m"]
    random, join, swap = (run.regimes[r].metrics for r in ALL)
    assert random["loss_gap"].low < 0 < random["loss_gap"].high  # random scrubbing sees nothing on average
    assert abs(random["abs_gap"].value - random["noise_floor"].value) < 0.1  # nor per example, beyond noise
    assert join["abs_loss_gap"].low > 0.08 and join["abs_loss_gap"].low > abs(random["loss_gap"].value) + 0.05
    assert swap["loss_gap"].low > 0.3
    assert run.regimes["adversarial-join"].details["refinements"]


def test_the_adversary_names_the_refinement_that_exposes_a_coarse_claim(interaction):
    details = interaction["ignores m"].regimes["adversarial-join"].details
    assert all("frozen" in d or "split by" in d for d in details["refinements"])
    from rich.console import Console

    from scrubbing import Report

    console = Console(record=True, width=250, file=open("/dev/null", "w"))
    Report([interaction["ignores m"]]).print(console)
    assert "frozen on the examples" in " ".join(console.export_text().split())


def test_join_exposes_cancellation_hidden_in_left_out_inputs():
    """'agreement ignores t' leaves t to the random draw: only a join that conditions that draw can expose it."""
    run = scrub(cancel_hypotheses()["ignores t"], cancel_task(), n_refs=1000, regimes=["random", "adversarial-join"],
                budget=24)
    assert run.regimes["random"].metrics["loss_gap"].low < 0 < run.regimes["random"].metrics["loss_gap"].high
    assert run.regimes["adversarial-join"].metrics["abs_loss_gap"].low > 0.15


def test_held_out_figure_is_less_optimistic_than_the_fitted_one():
    """Many small classes and an idiosyncratic model: the worst representative on the search split is partly luck."""
    model = tiny_transformer(seed=7, n_layers=1, n_heads=2, n_ctx=4, mlp=True)
    data = random_tokens(600, 4, 5, seed=3)
    task = Task("noise", adapter_for(model, data), data,
                lambda out, d: F.cross_entropy(out[:, -1], d.columns["label"], reduction="none"))
    h = Hypothesis("pair classes")
    h.node("tok", "embed", lambda d: d.inputs[:, 0] * 5 + d.inputs[:, 1])
    h.output(parents=["tok"])
    run = scrub(h, task, n_refs=200, regimes=["worst-swap"], budget=24)
    swap = run.regimes["worst-swap"]
    assert swap.details["fit_loss_gap"] > swap.metrics["loss_gap"].value + 0.02


def test_custom_family_and_determinism():
    def freeze_one_label(ctx):
        mask = ctx.task.data.columns["label"] == 1
        return [Refinement("whole hypothesis frozen on label 1", tuple(ctx.bound.order),
                           torch.where(mask, torch.arange(ctx.n), -1))]

    task, h = interaction_task(), interaction_hypotheses()["ignores m"]
    first = scrub(h, task, n_refs=500, regimes=["adversarial-join"], families=[freeze_one_label], budget=4)
    second = scrub(h, task, n_refs=500, regimes=["adversarial-join"], families=[freeze_one_label], budget=4)
    assert first.to_dict() == second.to_dict()
    assert first.regimes["adversarial-join"].details["budget"]["used"] <= 4


def test_worst_swap_reports_classes_too_small_to_split():
    task = logic_task()
    h = Hypothesis("singletons", allow_singletons=True)
    h.node("bits", "embed", lambda d: torch.where(torch.arange(len(d)) == 0, 99, d.columns["b01"]))
    h.node("and", "and_gate", EXACT, parents=["bits"])
    h.output(parents=["and"])
    run = scrub(h, task, n_refs=200, regimes=["worst-swap"], budget=8)
    assert run.regimes["worst-swap"].details["unsplittable_classes"] == {"bits": 1}


def _draw_only(ctx):
    """Refinements of the output's draw r alone (its class is exact): they matter only if the output reads r."""
    for name in ("a", "b"):
        yield Refinement(f"the output's draw split by column {name!r}", ("output",), ctx.task.data.columns[name].long())


def _coarse_and(unclaimed: str) -> Hypothesis:
    """The and gate claimed to read b0 only (false); the xor path left out: from r, or kept on the reference."""
    h = Hypothesis(f"coarse and, unclaimed {unclaimed}")
    h.node("bits01", "embed", lambda d: d.columns["b0"])
    h.node("and", "and_gate", lambda d: d.columns["b0"], parents=["bits01"])
    h.output(parents=["and"], unclaimed=unclaimed)
    return h


def test_only_nodes_that_read_their_draw_have_draw_refinements():
    import numpy as np

    from scrubbing.families import SearchContext
    from scrubbing.regimes import candidate_list

    task = logic_task()
    task.adapter.calibrate(task.data.inputs[:256])
    lists = {}
    for unclaimed in ("draw", "reference"):
        bound = _coarse_and(unclaimed).bind(task.adapter, task.data)
        n = len(task.data)
        ctx = SearchContext(bound, task, np.zeros(n), np.linspace(-1, 1, n), seed=0)
        # 'and' reads only its claimed parent; the output reads xor_gate (and embed) from r unless kept on the reference
        assert ctx.draws_used == ({"output"} if unclaimed == "draw" else set())
        lists[unclaimed] = candidate_list(ctx, [_draw_only, label_columns], budget=6)
    (kept, none_skipped), (useful, skipped) = lists["draw"], lists["reference"]
    assert not none_skipped and [c.description for c in kept[:2]] == [
        "the output's draw split by column 'a'", "the output's draw split by column 'b'"]
    assert [c.description for c in skipped] == [c.description for c in kept[:2]]
    assert not any("output's draw" in c.description for c in useful) and len(useful) == 6
    assert [c.description for c in useful[:4]] == [c.description for c in kept[2:]]


def test_skipping_draw_refinements_that_cannot_matter_leaves_the_results(monkeypatch):
    """The same seed gives the same losses with the skipped candidates as without them: they were never taken, and
    each evaluation draws with its own seeded generator, so leaving one out moves no other."""
    from scrubbing.families import SearchContext

    task, h = logic_task(), _coarse_and("reference")
    runs = {}
    for skip in (True, False):
        if not skip:
            monkeypatch.setattr(SearchContext, "changes_anything", lambda self, refinement: True)
        runs[skip] = scrub(h, task, n_refs=300, regimes=["adversarial-join"], families=[_draw_only, label_columns],
                           budget=8).regimes["adversarial-join"]
    skipping, evaluating = runs[True], runs[False]
    assert skipping.details["budget"]["skipped"] == 2 and "skipped" not in evaluating.details["budget"]
    assert skipping.details["refinements"] == evaluating.details["refinements"]
    assert skipping.details["fit_abs_loss_gap"] == evaluating.details["fit_abs_loss_gap"]
    for key, metric in skipping.metrics.items():
        assert getattr(metric, "value", metric) == getattr(evaluating.metrics[key], "value", evaluating.metrics[key]), key

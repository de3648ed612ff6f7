"""The verdict: one rule, scale-aware cancellation, the tail, and no silent wrong numbers."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.synthetic.tasks import logic_hypotheses, logic_task, sign_hypotheses, sign_task
from scrubbing import EXACT, Dataset, Hypothesis, ScrubError, Task, expect, scrub
from scrubbing.regimes import REGISTRY
from scrubbing.cli import main
from scrubbing.stats import quantile_upper_rank, refs_needed, tail
from scrubbing.verdict import judge_regime, judge_run

from .conftest import adapter_for, random_tokens, tiny_transformer

ROOT = Path(__file__).resolve().parents[1]


def _figures(recovered, per_example):
    f = {"status": "ok"}
    for name, (value, low, high) in (("recovered", recovered), ("per_example_recovered", per_example)):
        f[name], f[f"{name}_ci"] = value, [low, high]
    return f


def test_the_rule():
    good, close = (1.0, 0.97, 1.03), (0.99, 0.95, 1.0)
    assert judge_regime(_figures(good, close)).verdict == "holds"
    assert judge_regime(_figures((0.6, 0.5, 0.7), close)).verdict == "refuted"
    assert judge_regime(_figures((1.3, 1.2, 1.4), close)).verdict == "refuted"  # lowering the loss is a change too
    assert judge_regime(_figures(good, (0.6, 0.55, 0.65))).verdict == "cancels"
    assert judge_regime(_figures((0.9, 0.7, 1.1), close)).verdict == "inconclusive"
    # a scrub merely noisier than the baseline: the mean is unclear and its estimate off, so not cancellation...
    assert judge_regime(_figures((0.77, 0.36, 1.17), (-1.41, -1.69, -1.14))).verdict == "inconclusive"
    # ...while an unclear mean whose estimate is within tolerance, with a clear per-example move, cancels
    assert judge_regime(_figures((1.06, 0.98, 1.15), (0.57, 0.53, 0.62))).verdict == "cancels"
    undefined = judge_regime(_figures((None, None, None), close))
    assert undefined.verdict == "inconclusive" and "undefined" in undefined.reason
    run = judge_run({"random": _figures(good, close), "adversarial-join": _figures((0.6, 0.5, 0.7), close),
                     "worst-swap": {"status": "not run"}})
    assert run.verdict == "refuted" and run.regimes == ("adversarial-join",)  # an adversary's refutation counts
    assert judge_run({"random": _figures(good, (0.6, 0.55, 0.65)), "worst-swap": _figures(good, close)}).verdict \
        == "cancels"
    assert judge_run({"random": _figures(good, close), "worst-swap": _figures((0.9, 0.7, 1.1), close)}).verdict \
        == "inconclusive"
    partial = judge_run({"random": _figures(good, close), "adversarial-join": {"status": "not run"}})
    assert partial.verdict == "holds" and partial.not_run == ("adversarial-join",)
    assert partial.label() == "holds [not run: adversarial-join]"  # never an unqualified "holds"


def test_canonical_cancellation_is_flagged_although_abs_gap_equals_the_noise_floor():
    run = scrub(sign_hypotheses()["ignores sign"], sign_task(1.0), n_refs=1000, regimes=["random"])
    regime = run.regimes["random"]
    m = regime.metrics
    assert m["loss_gap"].low < 0 < m["loss_gap"].high  # the mean does not move...
    assert m["noise_floor"].low <= m["abs_gap"].value <= m["noise_floor"].high  # ...and no floor can tell
    assert m["per_example_recovered"].high < 0.9 < m["recovered"].low  # scale can
    assert regime.cancels and run.verdict.verdict == "cancels" and run.verdict.regimes == ("random",)
    assert run.to_dict()["regimes"]["random"]["cancels"] is True


def test_a_small_noise_node_is_not_cancellation():
    """Same Δ shape as the canonical case, a fiftieth of its size: harmless, and said to hold."""
    run = scrub(sign_hypotheses()["ignores sign"], sign_task(0.02), n_refs=1000, regimes=["random"])
    assert run.regimes["random"].metrics["abs_gap"].value > 0
    assert run.verdict.verdict == "holds" and not run.regimes["random"].cancels


@pytest.mark.parametrize("name", ["forgets xor", "swapped", "coarse and"])
def test_holds_cannot_pass_a_false_hypothesis(name):
    run = scrub(logic_hypotheses()[name], logic_task(), n_refs=300, regimes=["random"], n_boot=300)
    assert run.regimes["random"].metrics["recovered"].value < 0.8
    check = expect.verdict("holds", regime="random").judge(run.to_dict())[0]
    assert not check.passed and "refuted" in check.message


def test_holds_never_passes_under_half_recovered_even_with_wide_intervals():
    wide = {"status": "ok", "recovered": 0.45, "recovered_ci": [-0.5, 1.4], "per_example_recovered": 0.4,
            "per_example_recovered_ci": [0.0, 1.0], "verdict": "inconclusive", "verdict_reason": "wide"}
    run = {"verdict": "inconclusive", "verdict_reason": "wide", "regimes": {r: wide for r in REGISTRY}}
    assert not expect.verdict("holds").judge(run)[0].passed
    with pytest.raises(ScrubError, match="removed"):
        expect.abs_gap_within_noise(k=2)


def test_recovered_is_undefined_without_a_behaviour():
    """An untrained model does no better than its baseline: % recovered is noise over noise, so it is not given."""
    model = tiny_transformer(seed=3)
    data = random_tokens(400, 4, 5, seed=1)
    data.columns["label"] = torch.randint(0, 5, (400,), generator=torch.Generator().manual_seed(2))  # unlearnable
    adapter = adapter_for(model, data)
    task = Task("untrained", adapter, data, lambda out, d: F.cross_entropy(out[:, -1], d.columns["label"],
                                                                           reduction="none"))
    h = Hypothesis("head", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs[:, 0] % 2)
    h.output(parents=["tok"])
    run = scrub(h, task, n_refs=300, regimes=["random"])
    figures = run.to_dict()["regimes"]["random"]
    assert figures["recovered"] is None and figures["recovered_ci"] == [None, None]
    assert run.verdict.verdict == "inconclusive" and "undefined" in run.verdict.reason


@pytest.mark.parametrize("kwargs, words", [({"n_refs": -5}, "n_refs"), ({"n_refs": 0}, "n_refs"),
                                           ({"budget": 0}, "budget"), ({"tolerance": 0.6}, "tolerance"),
                                           ({"regimes": []}, "no regime")])
def test_bad_sizes_are_refused(kwargs, words):
    with pytest.raises(ScrubError, match=words):
        scrub(logic_hypotheses()["true"], logic_task(), **kwargs)


def test_small_dataset_advice_makes_sense():
    task = sign_task(1.0, n=30)
    with pytest.raises(ScrubError) as err:
        scrub(sign_hypotheses()["true"], task, n_refs=20)
    assert "at least 51 examples" in str(err.value) and "-" not in str(err.value).split("left after")[1][:40]


def test_tail_bounds_are_exact_binomial_order_statistics():
    assert refs_needed(0.99, 0.95, 0.005) == 1049
    assert quantile_upper_rank(299, 0.99, 0.95) == 299 and quantile_upper_rank(298, 0.99, 0.95) == 299
    rng = np.random.default_rng(0)
    covered = [tail(np.zeros(400), rng.exponential(size=400))["p95_upper"] >= -np.log(0.05) for _ in range(400)]
    assert np.mean(covered) >= 0.93  # a 95% upper bound, whatever the distribution
    few = tail(np.zeros(100), np.ones(100))
    assert few["p99_upper"] is None and few["p99_refs_for_bound"] == 299 and few["p95_upper"] == 1.0


def test_check_fails_when_a_regime_did_not_run_or_a_file_declares_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    claims = tmp_path / "claims.py"
    claims.write_text(textwrap.dedent('''
        from benchmarks.synthetic.tasks import logic_hypotheses, logic_task
        from scrubbing import expect
        task = logic_task
        claim = logic_hypotheses()["true"]
        claim.expect(expect.recovered(">=", 0.9, regime="worst-swap"))
        hypotheses = [claim]
    '''))
    empty = tmp_path / "empty.py"
    empty.write_text("from benchmarks.synthetic.tasks import logic_task\ntask = logic_task\nhypotheses = []\n")
    assert main(["run", str(claims), "--n-refs", "100", "--regimes", "random", "--check", "--quiet"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "worst-swap: not measured" in out
    assert main(["run", str(empty), "--check", "--quiet"]) == 1
    assert "declares no hypothesis" in " ".join(capsys.readouterr().out.split())


def test_ctrl_c_ends_with_one_line(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("scrubbing.cli.scrub", interrupted)
    assert main(["run", "hypotheses/sign.py", "--quiet"]) == 130
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["interrupted: nothing written"]


def test_plain_progress_lines_off_a_terminal(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["run", "hypotheses/sign.py", "--n-refs", "200", "--regimes", "random"]) == 0
    out = capsys.readouterr().out
    assert "[1/2] sign.py: ignores the sign" in out and "[2/2] sign.py: A and the sign" in out
    assert "cancels (random)" in out


def test_the_cli_honours_a_files_pinned_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    stored = tmp_path / "stored.json"
    claims = tmp_path / "claims.py"
    claims.write_text("from benchmarks.synthetic.tasks import logic_hypotheses, logic_task\ntask = logic_task\n"
                      "hypotheses = [logic_hypotheses()['coarse and']]\npinned = 'stored.json'\n")
    args = ["run", str(claims), "--n-refs", "200", "--regimes", "random", "--quiet"]
    assert main([*args, "--json", str(stored)]) == 0
    assert main([*args, "--check"]) == 0
    report = json.loads(stored.read_text())
    report["runs"][0]["regimes"]["random"]["scrubbed_loss_ci"] = [50.0, 60.0]
    stored.write_text(json.dumps(report))
    capsys.readouterr()
    assert main([*args, "--check"]) == 1
    assert "pinned" in capsys.readouterr().out

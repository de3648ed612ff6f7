"""Regression checks: expectations judged on intervals, pinned baselines, `scrub --check`, and the pytest plugin."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path


from scrubbing import expect, scrub
from scrubbing.checks import compare_to_baseline, judged, regimes_needed
from scrubbing.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]


def _run(**figures):
    regime = {"status": "ok"}
    for name, (value, low, high) in figures.items():
        regime[name], regime[f"{name}_ci"] = value, [low, high]
    return {"regimes": {"random": regime, "adversarial-join": {"status": "not run"}, "worst-swap": {"status": "not run"}}}


def test_expectations_fail_only_when_the_interval_supports_it():
    check = expect.recovered(">=", 0.9)
    assert check.judge(_run(recovered=(0.95, 0.92, 0.97)))[0].passed
    inconclusive = check.judge(_run(recovered=(0.88, 0.85, 0.93)))[0]
    assert inconclusive.passed and inconclusive.inconclusive
    assert not expect.recovered(">=", 0.9, strict=True).judge(_run(recovered=(0.88, 0.85, 0.93)))[0].passed
    failed = check.judge(_run(recovered=(0.80, 0.75, 0.86)))[0]
    assert not failed.passed
    assert failed.message == "random: recovered = 0.8 [0.75, 0.86], expected at least 0.9: fails"
    assert not expect.loss_gap("<=", 0.0, regime="worst-swap").judge(_run(loss_gap=(0, 0, 0)))[0].passed  # not run


def test_a_verdict_expectation_reads_the_runs_verdict():
    run = _run(recovered=(1.0, 1.0, 1.0))
    run.update(verdict="cancels", verdict_reason="random: ...", verdict_regimes=["random"])
    for name in ("adversarial-join", "worst-swap"):
        run["regimes"][name] = dict(run["regimes"]["random"])
    assert expect.verdict("cancels", "refuted").judge(run)[0].passed
    failed = expect.verdict("holds").judge(run)[0]
    assert not failed.passed and failed.message.startswith("all regimes: verdict cancels by random")


def test_scrub_measures_and_judged_judges():
    """``scrub`` only measures; ``checks.judged`` judges a hypothesis's expectations on the structured result."""
    from benchmarks.synthetic.tasks import logic_hypotheses, logic_task

    claim = logic_hypotheses()["forgets xor"]
    claim.expect(expect.recovered(">=", 0.9), expect.recovered("<=", 1.0), expect.loss_gap("<=", 1, regime="worst-swap"))
    run = scrub(claim, logic_task(), n_refs=200, regimes=["random"])
    assert run.expectations == [] and "failed_expectations" not in run.regimes["random"].details
    assert judged(run, claim.expectations) is run
    assert [(e["regime"], e["passed"]) for e in run.expectations] == [("random", False), ("random", True),
                                                                       ("worst-swap", False)]  # not run: fails
    assert run.regimes["random"].details["failed_expectations"] == ["recovered >= 0.9 (random)"]
    assert run.to_dict()["expectations"][0]["message"].startswith("random: recovered = ")


def test_pinned_figures_fail_when_intervals_separate():
    stored = _run(scrubbed_loss=(1.0, 0.9, 1.1), loss_gap=(0.1, 0.0, 0.2), abs_gap=(0.2, 0.1, 0.3),
                  recovered=(0.8, 0.7, 0.9))
    moved = _run(scrubbed_loss=(1.5, 1.4, 1.6), loss_gap=(0.1, 0.0, 0.2), abs_gap=(0.2, 0.1, 0.3),
                 recovered=(0.85, 0.75, 0.95))
    results = {c.name: c.passed for c in compare_to_baseline(moved, stored)}
    assert results == {"pinned scrubbed_loss (random)": False, "pinned loss_gap (random)": True,
                       "pinned abs_gap (random)": True, "pinned recovered (random)": True}


FAILING = textwrap.dedent('''
    from benchmarks.synthetic.tasks import logic_hypotheses, logic_task
    from scrubbing import expect

    task = logic_task
    claim = logic_hypotheses()["forgets xor"]
    claim.expect(expect.recovered(">=", 0.9))
    hypotheses = [claim]
''')


def test_scrub_check_exits_nonzero_and_says_which(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "claims.py"
    path.write_text(FAILING)
    assert main(["run", str(path), "--n-refs", "200", "--regimes", "random", "--check", "--quiet"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "FAIL forgets the xor path: random: recovered = " in out and "expected at least 0.9: fails" in out


def test_pinned_run_passes_against_itself_and_fails_when_moved(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    baseline = tmp_path / "baseline.json"
    claims = tmp_path / "claims.py"  # the logic claims without their expectations: only the pinned figures count
    claims.write_text("from benchmarks.synthetic.tasks import logic_hypotheses, logic_task\ntask = logic_task\n"
                      "hypotheses = list(logic_hypotheses().values())\n")
    args = ["run", str(claims), "--n-refs", "200", "--regimes", "random", "--quiet"]
    assert main([*args, "--json", str(baseline)]) == 0
    assert main([*args, "--seed", "1", "--baseline", str(baseline)]) == 0  # another seed: within the intervals
    report = json.loads(baseline.read_text())
    coarse = next(r for r in report["runs"] if r["hypothesis"] == "and reads b0 only")
    coarse["regimes"]["random"]["scrubbed_loss_ci"] = [5.0, 6.0]
    baseline.write_text(json.dumps(report))
    capsys.readouterr()
    assert main([*args, "--baseline", str(baseline)]) == 1
    assert "and reads b0 only: random: scrubbed_loss" in " ".join(capsys.readouterr().out.split())


def test_pytest_collects_hypothesis_files(pytester, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    pytester.makeini("[pytest]\nscrub_paths = hypotheses\nscrub_n_refs = 200\n")
    (pytester.path / "hypotheses").mkdir()
    (pytester.path / "hypotheses" / "claims.py").write_text(FAILING)
    result = pytester.runpytest_inprocess("hypotheses")  # the plugin loads through its entry point
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*hypothesis 'forgets the xor path' failed its checks:*",
                                 "*random: recovered = * expected at least 0.9: fails*"])


def test_pinned_verdict_regime_and_defined_figures_must_stay():
    stored = _run(recovered=(0.8, 0.7, 0.9))
    stored.update(verdict="holds")
    stored["regimes"]["worst-swap"] = dict(stored["regimes"]["random"])
    now = _run(recovered=(None, None, None))
    now.update(verdict="inconclusive")
    failed = {c.name for c in compare_to_baseline(now, stored) if not c.passed}
    assert failed == {"pinned verdict", "pinned recovered (random)", "pinned worst-swap"}


def test_a_pinned_check_runs_the_regimes_its_pinned_run_measured(tmp_path):
    """pytest and the CLI judge a pinned file alike: regimes measured in the pinned run are run again."""
    stored = {**_run(recovered=(0.8, 0.7, 0.9)), "hypothesis": "a claim"}
    stored["regimes"]["worst-swap"] = dict(stored["regimes"]["random"])
    pinned = tmp_path / "pinned.json"
    pinned.write_text(json.dumps({"runs": [stored]}))
    assert regimes_needed([], pinned, stored["hypothesis"]) == ["random", "worst-swap"]
    assert regimes_needed([], pinned, "another claim") == ["random"]
    assert regimes_needed([expect.abs_gap("<=", 0.1, regime="adversarial-join")]) == ["adversarial-join"]

"""Ray: a suite and an adversarial search give the same report both ways; a killed worker changes nothing;
search workers use the driver's calibration (in process, without Ray, and on a cluster)."""

from __future__ import annotations

import copy
import json
import os
import pickle
import signal
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.synthetic.tasks import cancel_hypotheses, cancel_task
from scrubbing import ScrubError, distributed, scrub
from scrubbing.cli import main
from scrubbing.execute import Engine
from scrubbing.plan import make_plan
from scrubbing.regimes import Scorer
from scrubbing.run import calibrate_once
from scrubbing.sampling import RandomSampler, class_tables

from .conftest import plan_for

ROOT = Path(__file__).resolve().parents[1]


def _bound_to(fn):
    return (fn.func if isinstance(fn, partial) else fn).__self__


def test_a_search_worker_uses_the_drivers_calibration_and_never_its_own():
    """The worker gets the task as Ray ships it (before the run calibrates), then the driver's calibration
    (100 rows, as ``scrub(n_refs=100)`` makes it, not the 256 a worker calibrating alone would use): the same
    decisions, shortcuts bound to the worker's own adapter, and the same losses as the driver's engine."""
    task = cancel_task()
    worker = distributed._SearchWorker(copy.deepcopy(task), 1024, 2048)  # Ray's copy (its model holds lambdas)
    alone = copy.deepcopy(task)
    calibrate_once(alone.adapter, alone.data)
    calibrate_once(task.adapter, task.data, n_refs=100)
    assert (task.adapter.calibration.rows, alone.adapter.calibration.rows) == (100, 256)

    hypothesis = cancel_hypotheses()["ignores t"]
    bound = hypothesis.bind(task.adapter, task.data)
    sampler, refs = RandomSampler(class_tables(bound.classes)), torch.arange(100, 200)
    shipped = pickle.loads(pickle.dumps(distributed.PortableCalibration.of(task.adapter)))
    losses = worker.losses(hypothesis, sampler, refs, 3, ("driver", shipped))
    engine = worker.engine
    local = Scorer(Engine(task.adapter, task.data), task, bound).scrub(
        make_plan(bound, refs, sampler, np.random.default_rng(3)))
    assert np.array_equal(losses, local)

    mine, theirs = worker.task.adapter.calibration, task.adapter.calibration
    assert mine.rows == 100 and worker.calibration_rows() == 100
    assert (mine.early_stops, mine.uses_context, mine.n_positions) == \
        (theirs.early_stops, theirs.uses_context, theirs.n_positions)
    assert set(mine.offsets) == set(theirs.offsets)
    assert all(torch.equal(mine.offsets[key], theirs.offsets[key]) for key in theirs.offsets)
    assert set(mine.shortcuts) == set(theirs.shortcuts) and mine.shortcuts
    assert all(_bound_to(fn) is worker.task.adapter for fn in mine.shortcuts.values())
    worker.losses(hypothesis, sampler, refs, 3, ("driver", shipped))
    assert worker.engine is engine  # the same key: nothing installed again


def test_a_portable_calibration_rebinds_keyword_shortcuts(small):
    """A TransformerLens adapter's shortcuts are partials of its methods with keywords (start block, entry slot):
    installed on a copy, they are the copy's methods with the same keywords, and the copy's engine gives the
    driver's outputs."""
    from scrubbing import Edge, Hypothesis

    model, data, adapter = small
    other = pickle.loads(pickle.dumps(adapter))
    other.calibration = None
    pickle.loads(pickle.dumps(distributed.PortableCalibration.of(adapter))).install(other)
    for site, fn in adapter.shortcuts.items():
        mine = other.shortcuts[site]
        assert _bound_to(mine) is other and mine.keywords == fn.keywords
    h = Hypothesis("chain", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs % 2)
    h.node("head", "a1.0", lambda d: d.inputs[:, 0] % 2, parents=[Edge("tok", into="k")])
    h.output(parents=["head"])
    plan = plan_for(h, adapter, data, torch.arange(8))
    torch.testing.assert_close(Engine(other, data).outputs(plan), Engine(adapter, data).outputs(plan), atol=0, rtol=0)


def test_an_uncalibrated_adapter_has_no_portable_calibration():
    with pytest.raises(ScrubError, match="no calibration to send"):
        distributed.PortableCalibration.of(cancel_task().adapter)


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    distributed.connect(num_cpus=2)  # a local two-worker cluster on this machine
    yield
    ray.shutdown()


def test_suite_on_ray_equals_in_process(cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = ["run", "hypotheses/interaction.py", "--n-refs", "300", "--budget", "8", "--quiet"]
    assert main([*args, "--json", str(tmp_path / "local.json")]) == 0
    assert main([*args, "--ray", "--json", str(tmp_path / "ray.json")]) == 0
    assert json.loads((tmp_path / "local.json").read_text()) == json.loads((tmp_path / "ray.json").read_text())


def _search(evaluator=None):
    return scrub(cancel_hypotheses()["ignores t"], cancel_task(), n_refs=400, budget=16,
                 regimes=["adversarial-join", "worst-swap"], evaluator=evaluator).to_dict()


def test_adversarial_search_on_ray_equals_in_process(cluster):
    evaluator = distributed.RayEvaluator(cancel_task())
    try:
        assert _search(evaluator) == _search()
    finally:
        evaluator.close()


def test_a_killed_worker_is_retried_with_the_same_result(cluster):
    evaluator = distributed.RayEvaluator(cancel_task())
    victim = evaluator.pids()[0]
    killer = threading.Thread(target=lambda: (time.sleep(2.0), os.kill(victim, signal.SIGKILL)))
    try:
        killer.start()
        on_ray = _search(evaluator)
        killer.join()
        assert victim not in evaluator.pids()  # the actor was restarted in a new process
        assert on_ray == _search()
    finally:
        evaluator.close()


def test_a_lost_worker_fails_loudly_naming_what_was_lost(cluster):
    evaluator = distributed.RayEvaluator(cancel_task(), n_workers=1, retries=0)
    os.kill(evaluator.pids()[0], signal.SIGKILL)
    time.sleep(0.5)
    with pytest.raises(ScrubError, match=r"Ray lost candidate evaluations of hypothesis 'agreement ignores t' on task "
                                         r"'cancel' after 0 retries"):
        _search(evaluator)


def test_search_workers_on_ray_calibrate_as_the_driver_does(cluster):
    """As ``scrub --ray`` does it: the evaluator is built on the task before the run, which calibrates that task
    on 100 rows (its references); the workers use those 100 rows, not 256 of their own, and the report equals
    an in-process run's."""
    def run(task, evaluator=None):
        return scrub(cancel_hypotheses()["ignores t"], task, n_refs=100, budget=8, regimes=["adversarial-join"],
                     evaluator=evaluator).to_dict()

    task = cancel_task()
    evaluator = distributed.RayEvaluator(task)
    try:
        on_ray = run(task, evaluator)
        rows = evaluator.calibration_rows()
    finally:
        evaluator.close()
    assert 100 in rows and set(rows) <= {100, None}, rows
    assert on_ray == run(cancel_task())

"""Scale out on Ray: hypothesis runs of a suite, and the candidate evaluations of adversarial searches.

Same seed, same numbers: a plan is data, every evaluation is seeded, and results are
taken in the order an in-process run takes them. Ray is an optional extra
(``pip install scrubbing[ray]``); nothing here is imported unless ``--ray`` is asked for.

Models and datasets reach each worker once: a suite worker loads a hypothesis file at
most once per process, and a search worker receives the task through the object store
when it starts. A worker that dies is restarted and its task retried; if retries run
out, the run fails naming what was lost — never a silently partial report.
"""

from __future__ import annotations

import numpy as np

from .errors import ScrubError

_RETRIES = 3


def _ray():
    try:
        import ray
    except ImportError as err:
        raise ScrubError("--ray needs Ray: pip install 'scrubbing[ray]' (or pip install 'ray>=2.40,<3').") from err
    return ray


def connect(address: str | None = None, num_cpus: int | None = None):
    """Join the cluster at ``address`` ("auto" for a running local one), or start a local one."""
    ray = _ray()
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    return ray


def workers(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# -- candidate evaluations of one search ------------------------------------------------------
class _SearchWorker:
    """Holds one task; scores plans for any hypothesis on it."""

    def __init__(self, task, batch_size: int, chunk_refs: int):
        import torch

        torch.set_num_threads(1)
        from .execute import Engine
        from .run import calibrate_once

        self.task = task
        calibrate_once(task.adapter, task.data)
        self.engine = Engine(task.adapter, task.data, batch_size=batch_size, chunk_refs=chunk_refs)
        self.bound = {}

    def pid(self) -> int:
        import os

        return os.getpid()

    def losses(self, hypothesis, sampler, refs, seed: int) -> np.ndarray:
        from .plan import make_plan
        from .regimes import Scorer

        if hypothesis.name not in self.bound:  # bind (evaluate features) once per hypothesis
            self.bound[hypothesis.name] = hypothesis.bind(self.task.adapter, self.task.data)
        bound = self.bound[hypothesis.name]
        return Scorer(self.engine, self.task, bound).scrub(make_plan(bound, refs, sampler, np.random.default_rng(seed)))


class RayEvaluator:
    """Evaluates a search's candidates on a pool of Ray actors that each hold the task."""

    def __init__(self, task, n_workers: int | None = None, batch_size: int = 1024, chunk_refs: int = 2048,
                 retries: int = _RETRIES):
        ray = _ray()
        self.ray = ray
        self.retries = retries
        self.task_ref = ray.put(task)  # the model and data enter the object store once (kept alive for restarts)
        actor = ray.remote(max_restarts=retries, max_task_retries=retries)(_SearchWorker)
        self.actors = [actor.remote(self.task_ref, batch_size, chunk_refs) for _ in range(n_workers or workers(ray))]
        self.width = len(self.actors)
        self.task_name = task.name

    def losses(self, hypothesis, samplers: list, refs, seed: int) -> list[np.ndarray]:
        hyp_ref = self.ray.put(hypothesis)
        futures = [self.actors[i % self.width].losses.remote(hyp_ref, s, refs, seed) for i, s in enumerate(samplers)]
        try:
            return self.ray.get(futures)
        except self.ray.exceptions.RayError as err:
            raise ScrubError(
                f"Ray lost candidate evaluations of hypothesis {hypothesis.name!r} on task {self.task_name!r} "
                f"after {self.retries} retries: {type(err).__name__}. No partial result was reported."
            ) from err

    def pids(self) -> list[int]:
        return self.ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


# -- whole hypothesis runs of a suite -------------------------------------------------------------
_LOADED: dict = {}


def _run_hypothesis(path: str, index: int, kwargs: dict):
    """Run one hypothesis of a file in a worker; the file (and its task) is loaded once per worker process."""
    import torch

    from . import suite
    from .run import scrub

    torch.set_num_threads(1)
    if path not in _LOADED:
        _LOADED[path] = suite.load(path)
    file = _LOADED[path]
    return scrub(file.hypotheses[index], file.task, **kwargs)


def run_suite(jobs: list[tuple[str, int, str]], kwargs: dict, on_done=None) -> list:
    """``jobs`` are (file path, hypothesis index, hypothesis name); results come back in job order."""
    ray = _ray()
    remote = ray.remote(max_retries=_RETRIES)(_run_hypothesis)
    futures = [remote.remote(path, index, kwargs) for path, index, _ in jobs]
    results = [None] * len(futures)
    pending = {f: i for i, f in enumerate(futures)}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done[0])
        try:
            results[i] = ray.get(done[0])
        except ray.exceptions.RayError as err:
            path, _, name = jobs[i]
            raise ScrubError(f"Ray lost the run of hypothesis {name!r} ({path}) after {_RETRIES} retries: "
                             f"{type(err).__name__}: {err}. No partial report was written.") from err
        if on_done:
            on_done(jobs[i][2])
    return results

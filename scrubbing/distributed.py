"""Scale out on Ray: hypothesis runs of a suite, and the candidate evaluations of adversarial searches.

Same seed, same numbers: a plan is data, every evaluation is seeded, and results are
taken in the order an in-process run takes them. Ray is an optional extra
(``pip install scrubbing[ray]``); nothing here is imported unless ``--ray`` is asked for.

Models and datasets reach each worker once: a suite worker loads a hypothesis file at
most once per process, and a search worker receives the task through the object store
when it starts. A worker that dies is restarted and its task retried; if retries run
out, the run fails naming what was lost — never a silently partial report. Search workers never
calibrate: they use the driver's calibration (``PortableCalibration``), so their decisions are a local run's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from .errors import ScrubError
from .execute import DEFAULT_MEMORY_BUDGET
from .sites import Calibration

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
@dataclass(frozen=True)
class PortableCalibration:
    """A ``Calibration`` made ready to travel to another process without its adapter.

    A calibration's shortcuts are methods of the adapter that verified them (``functools.partial`` of a
    bound method, or a bound method): pickled as they are, they would drag the driver's adapter and model
    along and run on that copy. Here each is (method name, args, keywords), bound again to the receiving
    process's adapter by ``install``; offsets travel on the CPU. Everything else is the calibration as made.
    """

    calibration: Calibration  # with no shortcuts; offsets on the CPU
    shortcuts: dict[str, tuple]  # site -> ("method", name, args, keywords) or ("callable", function)

    @classmethod
    def of(cls, adapter) -> "PortableCalibration":
        calibration = adapter.calibration
        if calibration is None:
            raise ScrubError("the task's adapter has no calibration to send to the workers; calibrate it first "
                             "(scrub() does, on as many rows as the references).")
        shortcuts = {}
        for site, fn in calibration.shortcuts.items():
            args, keywords = (), {}
            if isinstance(fn, partial):
                fn, args, keywords = fn.func, fn.args, dict(fn.keywords)
            if getattr(fn, "__self__", None) is adapter:
                shortcuts[site] = ("method", fn.__func__.__name__, args, keywords)
            else:  # not bound to the adapter: travels as it is (a function pickles by name)
                shortcuts[site] = ("callable", calibration.shortcuts[site])
        offsets = {key: value.cpu() for key, value in calibration.offsets.items()}
        return cls(replace(calibration, offsets=offsets, shortcuts={}), shortcuts)

    def install(self, adapter) -> Calibration:
        """Set this calibration on ``adapter`` (a copy of the one it was made on), its shortcuts bound to it."""
        shortcuts = {}
        for site, entry in self.shortcuts.items():
            if entry[0] == "method":
                _, name, args, keywords = entry
                shortcuts[site] = partial(getattr(adapter, name), *args, **keywords)
            else:
                shortcuts[site] = entry[1]
        adapter.calibration = replace(self.calibration, shortcuts=shortcuts)
        return adapter.calibration


class _SearchWorker:
    """Holds one task; scores plans for any hypothesis on it, with the driver's calibration.

    The worker never calibrates: each call carries the driver's calibration (a key, and the
    ``PortableCalibration`` or a one-element list holding its object-store reference), installed when the
    key changes, so the decisions (shortcuts, offsets, early stops) are exactly those of a local run, a
    restarted worker included.
    """

    def __init__(self, task, batch_size: int, chunk_refs: int, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        import torch

        torch.set_num_threads(1)
        self.task = task
        self.batch_size, self.chunk_refs, self.memory_budget = batch_size, chunk_refs, memory_budget
        self.calibration_key = None
        self.engine = None
        self.bound = {}

    def pid(self) -> int:
        import os

        return os.getpid()

    def use_calibration(self, key: str, shipped) -> None:
        if key == self.calibration_key:
            return
        from .execute import Engine

        if isinstance(shipped, list):  # [object-store reference]: fetched only when the key is new
            shipped = _ray().get(shipped[0])
        shipped.install(self.task.adapter)
        self.engine = Engine(self.task.adapter, self.task.data, batch_size=self.batch_size, chunk_refs=self.chunk_refs,
                             memory_budget=self.memory_budget)
        self.bound = {}
        self.calibration_key = key

    def calibration_rows(self) -> int | None:
        calibration = self.task.adapter.calibration
        return None if calibration is None else calibration.rows

    def losses(self, hypothesis, sampler, refs, seed: int, calibration: tuple) -> np.ndarray:
        from .plan import make_plan
        from .regimes import Scorer

        self.use_calibration(*calibration)
        if hypothesis.name not in self.bound:  # bind (evaluate features) once per hypothesis
            self.bound[hypothesis.name] = hypothesis.bind(self.task.adapter, self.task.data)
        bound = self.bound[hypothesis.name]
        return Scorer(self.engine, self.task, bound).scrub(make_plan(bound, refs, sampler, np.random.default_rng(seed)))


class RayEvaluator:
    """Evaluates a search's candidates on a pool of Ray actors that each hold the task.

    The workers use the calibration of ``task``'s adapter as it is when candidates are evaluated: pass the
    task you scrub (``scrub`` calibrates it on as many rows as the references before any search), and the
    workers decide exactly what a local run decides. Should that adapter still be uncalibrated then (a
    different task object), it is calibrated here once, on the default rows (``run.calibrate_once``).
    """

    def __init__(self, task, n_workers: int | None = None, batch_size: int = 1024, chunk_refs: int = 2048,
                 retries: int = _RETRIES, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        ray = _ray()
        self.ray = ray
        self.retries = retries
        self.task = task
        self.task_ref = ray.put(task)  # the model and data enter the object store once (kept alive for restarts)
        actor = ray.remote(max_restarts=retries, max_task_retries=retries)(_SearchWorker)
        self.actors = [actor.remote(self.task_ref, batch_size, chunk_refs, memory_budget)
                       for _ in range(n_workers or workers(ray))]
        self.width = len(self.actors)
        self.task_name = task.name
        self._shipped: tuple = (None, None, None)  # (calibration object, key, [object-store reference])

    def _calibration(self) -> tuple[str, list]:
        """The driver's calibration as (key, [reference]); put in the object store once per calibration."""
        from .run import calibrate_once

        calibrate_once(self.task.adapter, self.task.data)  # a no-op when already calibrated (scrub did)
        current = self.task.adapter.calibration
        if current is not self._shipped[0]:
            ref = self.ray.put(PortableCalibration.of(self.task.adapter))
            self._shipped = (current, ref.hex(), [ref])
        return self._shipped[1], self._shipped[2]

    def losses(self, hypothesis, samplers: list, refs, seed: int) -> list[np.ndarray]:
        hyp_ref = self.ray.put(hypothesis)
        calibration = self._calibration()
        futures = [self.actors[i % self.width].losses.remote(hyp_ref, s, refs, seed, calibration)
                   for i, s in enumerate(samplers)]
        try:
            return self.ray.get(futures)
        except self.ray.exceptions.RayError as err:
            raise ScrubError(
                f"Ray lost candidate evaluations of hypothesis {hypothesis.name!r} on task {self.task_name!r} "
                f"after {self.retries} retries: {type(err).__name__}. No partial result was reported."
            ) from err

    def pids(self) -> list[int]:
        return self.ray.get([a.pid.remote() for a in self.actors])

    def calibration_rows(self) -> list[int | None]:
        """Rows of each worker's calibration (None before its first evaluation)."""
        return self.ray.get([a.calibration_rows.remote() for a in self.actors])

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

"""One hypothesis × regimes → a ``RunResult``: the only place the flow is wired together.

hypothesis → bind (checks, features) → plan (draws) → engine (outputs) → loss → stats.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import numpy as np
import torch

from .errors import ScrubError
from .execute import DEFAULT_MEMORY_BUDGET, Engine
from .hypothesis import Hypothesis
from .plan import make_plan
from .families import DEFAULT_FAMILIES, Family
from .regimes import REGIMES, REGISTRY, Scorer, Search, SharedContext
from .report import RegimeResult, RunResult
from .sampling import RandomSampler, class_tables
from .stats import delta_histogram, summarize, tail
from .task import Task
from .verdict import DEFAULT_TOLERANCE, check_tolerance, judge_regime, judge_run


DEFAULT_N_REFS = 1000
DEFAULT_BUDGET = 32
MIN_SEARCH_REFS = 50
MIN_REFS = 20  # below this a percentile bootstrap collapses: a claim recovering 70 % held on 1 of 2 refs


def scrub(
    hypothesis: Hypothesis,
    task: Task,
    *,
    n_refs: int = DEFAULT_N_REFS,
    seed: int = 0,
    regimes: Iterable[str] = REGIMES,
    budget: int = DEFAULT_BUDGET,
    families: list[Family] | None = None,
    n_boot: int = 1000,
    batch_size: int = 1024,
    chunk_refs: int = 2048,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    device: str | None = None,
    pool: int | None = None,
    evaluator=None,
    progress=None,
    tolerance: float = DEFAULT_TOLERANCE,
    baseline: Hypothesis | None = None,
) -> RunResult:
    """Scrub ``hypothesis`` on ``task`` and measure every requested regime on the same references.

    References are ``n_refs`` examples drawn without replacement; the adversarial
    regimes fit on a disjoint search split (up to ``n_refs`` other examples)
    and are measured on the references, like ``random``. ``budget`` bounds each
    search's scrub evaluations; ``families`` are the adversary's candidate refinements.
    ``progress(label, total)``, if given, is a context manager yielding a step function.
    ``batch_size`` bounds one model call and ``chunk_refs`` the references held in memory
    at once; ``memory_budget`` (bytes) bounds what the engine holds, lowering both (``Engine``); ``device`` runs the model there for the run (and moves it back afterwards).
    ``pool`` (opt-in) draws each class's sources from at most that many members: faster
    through sharing, at a statistical cost (see README). ``evaluator`` spreads the adversarial
    searches' candidate evaluations (``distributed.RayEvaluator``); results do not change.
    ``tolerance`` is the share of the behaviour a hypothesis may miss and still hold (``scrubbing.verdict``).
    ``baseline`` sets the 0 % point: the scrubbed loss of that hypothesis (random regime, its own draws)
    instead of the empty hypothesis's (the whole model on an unrelated input).
    """
    regimes = list(regimes)
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        raise ScrubError(f"unknown regime(s) {unknown}; choose from {list(REGIMES)}.")
    if not regimes:
        raise ScrubError(f"no regime to run; choose from {list(REGIMES)}.")
    for name, value in (("n_refs", n_refs), ("budget", budget), ("n_boot", n_boot), ("batch_size", batch_size),
                        ("chunk_refs", chunk_refs), ("memory_budget", memory_budget)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ScrubError(f"{name} must be a whole number of at least 1; got {value!r}.")
    if n_refs < MIN_REFS:
        raise ScrubError(f"n_refs={n_refs}: a run needs at least {MIN_REFS} references; with fewer, the bootstrap "
                         "interval of every figure collapses towards a point and a verdict would be decided by chance.")
    if pool is not None and (not isinstance(pool, (int, np.integer)) or pool < 1):
        raise ScrubError(f"pool must be a whole number of at least 1, or None; got {pool!r}.")
    try:
        tolerance = check_tolerance(tolerance)
    except ValueError as err:
        raise ScrubError(str(err)) from None
    device = _usable_device(device)
    adapter, data = task.adapter, task.data
    if evaluator is not None:
        refuse_ray_on(device or adapter.device)
    if len(data) < MIN_REFS:
        raise ScrubError(f"task {task.name!r} has only {len(data)} examples; a run needs at least {MIN_REFS} "
                         "references for its intervals to mean anything. Use a larger dataset.")
    with _evaluation_mode(adapter, device):
        calibrate_once(adapter, data, n_refs)
        bound = hypothesis.bind(adapter, data)
        root = np.random.SeedSequence(seed)
        split_seed, base_seed, boot_seed, *regime_seeds = root.spawn(3 + len(REGIMES))
        n = len(data)
        order = torch.from_numpy(np.random.default_rng(split_seed).permutation(n))
        n_refs = min(n_refs, n)
        refs, search_refs = order[:n_refs], order[n_refs:][:n_refs]
        adversarial = [r for r in regimes if r != "random"]
        if adversarial and len(search_refs) < MIN_SEARCH_REFS:
            fix = (f"lower n_refs to at most {n - MIN_SEARCH_REFS}" if n - MIN_SEARCH_REFS >= 1 else
                   f"use a dataset of at least {MIN_SEARCH_REFS + 1} examples")
            raise ScrubError(
                f"{', '.join(adversarial)} need a held-out search split of at least {MIN_SEARCH_REFS} examples, but "
                f"only {len(search_refs)} of the {n} examples are left after {n_refs} references; {fix}, or run "
                "only the random regime (regimes=['random'], --regimes random)."
            )
        engine = Engine(adapter, data, batch_size=batch_size, chunk_refs=chunk_refs, memory_budget=memory_budget)
        scorer = Scorer(engine, task, bound, progress)

        model = scorer.clean(refs)
        if baseline is None:
            baseline = Hypothesis("(empty)")
            baseline.output()
        elif not isinstance(baseline, Hypothesis):
            raise ScrubError(f"baseline must be a Hypothesis (the claim whose loss is 0 % recovered); got {baseline!r}.")
        zero = baseline.bind(adapter, data)
        baseline = scorer.scrub(make_plan(zero, refs, RandomSampler(class_tables(zero.classes)),
                                          np.random.default_rng(base_seed)))

        tables = class_tables(bound.classes, pool, np.random.default_rng(split_seed.spawn(1)[0]))
        results: dict[str, RegimeResult] = {}
        digest = ""
        shared = SharedContext()
        for name in REGIMES:
            if name not in regimes:
                results[name] = RegimeResult(status="not run")
                continue
            regime_seed = regime_seeds[REGIMES.index(name)]
            rng = np.random.default_rng(regime_seed)
            search = Search(scorer, tables, search_refs, rng, budget, families or DEFAULT_FAMILIES,
                            seed=int(regime_seed.generate_state(1)[0]) % 2**31, shared=shared,
                            evaluator=evaluator)
            sampler, details = REGISTRY[name](search)
            plan = make_plan(bound, refs, sampler, rng)
            digest = digest or plan.digest()
            first = scorer.scrub(plan)
            second = scorer.scrub(make_plan(bound, refs, sampler, rng))
            metrics = summarize(model, baseline, first, second, n_boot=n_boot, seed=int(boot_seed.generate_state(1)[0]))
            result = RegimeResult("ok", metrics, delta_histogram(model, first), details, tail(model, first))
            result.verdict = judge_regime(result.figures(), tolerance)
            results[name] = result
        boot = summarize(model, baseline, model, model, n_boot=n_boot, seed=int(boot_seed.generate_state(1)[0]))

    result = RunResult(
        hypothesis=hypothesis.name,
        task=task.name,
        seed=seed,
        n_refs=n_refs,
        model_loss=boot["model_loss"],
        baseline_loss=boot["baseline_loss"],
        regimes=results,
        description=hypothesis.description,
        nodes=hypothesis.describe(),
        graph=hypothesis.to_dict(adapter),
        plan_digest=digest,
        verdict=judge_run({name: r.to_dict() for name, r in results.items()}, tolerance),
        tolerance=tolerance,
    )
    return result


def calibrate_once(adapter, data, n_refs: int | None = None) -> None:
    """Calibrate once, on as many examples as the references (``sites.calibration_rows``), and again should the
    model now be on another device than the one its calibration verified it on (a task calibrated on the CPU
    when it loaded, run with ``device="cuda"``)."""
    calibration = getattr(adapter, "calibration", None)
    if calibration is None or calibration.device != str(adapter.device):
        from .sites import calibration_rows

        adapter.calibrate(data.inputs[: calibration_rows(len(data), n_refs)].to(adapter.device))


def refuse_ray_on(device) -> None:
    """Ray runs stay on the CPU: its workers see no GPU unless asked for one, and nothing here asks yet."""
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        _usable_device(device)  # raises, naming the device
        raise
    if kind != "cpu":
        raise ScrubError(f"device {str(device)!r} with Ray: Ray's workers are given no GPU here, so they would run "
                         "on the CPU or fail; run on one machine without --ray (or with --device cpu).")


def _usable_device(device) -> torch.device | None:
    """``device`` as a torch device this process can allocate on; a ``ScrubError`` saying why not otherwise."""
    if device is None:
        return None
    try:
        device = torch.device(device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError, ValueError) as err:
        available = ", ".join(["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
        raise ScrubError(f"device {str(device)!r} cannot be used here ({err}); devices available: {available}.") from None
    return device


@contextmanager
def _evaluation_mode(adapter, device=None):
    """Run in eval mode (no dropout), on ``device`` if given, and leave the model exactly as it was found."""
    module = getattr(adapter, "model", None)
    if device is not None and not isinstance(module, torch.nn.Module):
        raise ScrubError(f"device={str(device)!r}: the adapter ({type(adapter).__name__}) has no torch module as its "
                         "`model` to move there; move the model yourself and leave device unset.")
    was_training = getattr(module, "training", None)
    home = adapter.device
    if module is not None:
        module.eval()
        if device is not None:
            module.to(device)
    try:
        yield
    finally:
        adapter.restore()
        if module is not None:
            if device is not None:  # only a model that was moved goes back (a bridge's ``to`` prints a line)
                module.to(home)
            if was_training:
                module.train()


"""Ablation regimes: each turns a bound hypothesis into the sampler its plans draw with.

A regime is a function ``(search: Search) -> (sampler, details)``.
``random`` is the published algorithm. The adversarial regimes fit their sampler on
the search references only; the run then measures it on the held-out references.
"""

from __future__ import annotations

from contextlib import contextmanager
from itertools import chain, islice
from typing import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from .errors import LossError
from .execute import Engine
from .families import Family, Refinement, SearchContext
from .hypothesis import BoundHypothesis
from .plan import Plan, make_plan
from .sampling import ClassTable, RandomSampler, RepresentativeSampler, class_tables, refine
from .task import Task


class Scorer:
    """Per-example losses of clean runs and of plans, checked before anyone averages them."""

    def __init__(self, engine: Engine, task: Task, bound: BoundHypothesis, progress=None):
        self.engine = engine
        self.task = task
        self.bound = bound
        self.progress = progress

    @contextmanager
    def progress_bar(self, label: str, total: int):
        """A step function for long searches; ``progress(label, total)`` makes the bar, if any."""
        if self.progress is None:
            yield lambda: None
        else:
            with self.progress(f"{self.bound.hypothesis.name}: {label}", total) as step:
                yield step

    def clean(self, refs: torch.Tensor) -> np.ndarray:
        adapter, size = self.task.adapter, self.engine.batch_size
        inputs = self.engine.inputs
        outputs = torch.cat([adapter.clean(inputs[refs[i:i + size].to(inputs.device)])[adapter.output].cpu()
                             for i in range(0, len(refs), size)])
        return self._loss(outputs, refs, "the clean model")

    def scrub(self, plan: Plan) -> np.ndarray:
        return self._loss(self.engine.outputs(plan), plan.refs, f"hypothesis {self.bound.hypothesis.name!r}")

    def _loss(self, outputs: torch.Tensor, refs: torch.Tensor, what: str) -> np.ndarray:
        try:
            with torch.no_grad():
                values = self.task.loss(outputs, self.task.data.subset(refs))
        except Exception as exc:
            raise LossError(f"task {self.task.name!r}: the loss raised {type(exc).__name__}: {exc}") from exc
        values = torch.as_tensor(values).detach().double().cpu()
        if values.shape != (len(refs),):
            raise LossError(
                f"task {self.task.name!r}: the loss returned shape {tuple(values.shape)} for {len(refs)} references; "
                "return one loss per reference (reduction='none')."
            )
        bad = ~torch.isfinite(values)
        if bad.any():
            first = int(refs[torch.nonzero(bad)[0, 0]])
            raise LossError(
                f"task {self.task.name!r}: the loss is NaN or infinite for {int(bad.sum())} of {len(refs)} references "
                f"under {what} (e.g. example {first}). Check the loss for log(0) or empty masks."
            )
        return values.numpy()


@dataclass
class Search:
    """Everything a regime may use to choose its sampler. It sees only the search references."""

    scorer: Scorer
    tables: dict[str, ClassTable | None]
    refs: torch.Tensor
    rng: np.random.Generator
    budget: int
    families: list[Family]
    candidates: int = 4  # representatives tried per class by worst-swap
    seed: int = 0
    used: int = 0
    shared: SharedContext = field(default_factory=lambda: SharedContext())
    evaluator: object = None  # None: evaluate in this process; else e.g. distributed.RayEvaluator

    @property
    def bound(self) -> BoundHypothesis:
        return self.scorer.bound

    @property
    def width(self) -> int:
        """How many evaluations are worth requesting at once."""
        return 1 if self.evaluator is None else self.evaluator.width

    def evaluate(self, sampler) -> np.ndarray:
        """Per-reference scrubbed loss on the search split, with the same draws every time
        (common random numbers: candidates differ only by what they change)."""
        return self.evaluate_many([sampler])[0]

    def evaluate_many(self, samplers: list) -> list[np.ndarray]:
        """Evaluate several samplers (in parallel when an evaluator is set); each one counts against the budget."""
        return list(self.stream(samplers))

    def stream(self, samplers: list) -> Iterator[np.ndarray]:
        """Evaluate ``samplers`` at once, and yield their losses in order, counting each against the budget as it is
        taken: speculative evaluations a search drops unread are not counted, so its figures do not depend on the
        width. The one place the budget is counted."""
        for losses in self._losses(samplers):
            self.used += 1
            yield losses

    def _losses(self, samplers: list) -> list[np.ndarray]:
        if self.evaluator is not None:
            return self.evaluator.losses(self.bound.hypothesis, samplers, self.refs, self.seed)
        return [self.scorer.scrub(self.plan(s)) for s in samplers]

    def plan(self, sampler) -> Plan:
        """The plan every evaluation of ``sampler`` runs (the same draws as ``evaluate``)."""
        return make_plan(self.bound, self.refs, sampler, np.random.default_rng(self.seed))

    @cached_property
    def clean(self) -> np.ndarray:
        return self.scorer.clean(self.refs)

    def context(self) -> SearchContext:
        """What the adversary's families may look at, built once per run (``shared``) by the first search that asks."""
        if self.shared.context is None:
            everything = torch.arange(len(self.scorer.task.data))
            clean = self.scorer.clean(everything)
            pilot = make_plan(self.bound, everything, RandomSampler(self.tables), np.random.default_rng(self.seed + 1))
            self.shared.context = SearchContext(self.bound, self.scorer.task, clean, self.scorer.scrub(pilot) - clean,
                                                self.seed, inputs=self.scorer.engine.inputs)
        return self.shared.context


@dataclass
class SharedContext:
    """The adversary's view of the whole dataset (clean losses, a pilot scrub, activations): costly, so the run makes
    one and hands it to each regime's ``Search``; the first search that needs it fills it in."""

    context: SearchContext | None = None


def random_regime(search: Search):
    """The published algorithm: resample uniformly within each class."""
    return RandomSampler(search.tables), {}


def joined_sampler(bound: BoundHypothesis, refinements: list[Refinement]) -> RandomSampler:
    """join(H, H'): every target node's classes, and the draw r of the inputs it leaves out, refined by ψ."""
    classes = dict(bound.classes)
    free: dict[str, torch.Tensor] = {}
    for refinement in refinements:
        for node in refinement.targets:
            if classes.get(node) is not None:
                classes[node] = refine(classes[node], refinement.classes)
            if refinement.classes.dim() == 1 and not bound.is_leaf(node):
                free[node] = refinement.classes if node not in free else refine(free[node], refinement.classes)
    return RandomSampler(class_tables(classes), {n: ClassTable(v) for n, v in free.items()})


def candidate_list(context: SearchContext, families: list[Family], budget: int
                   ) -> tuple[list[Refinement], list[Refinement]]:
    """The first ``budget`` candidates of the families, in order (a sweep evaluates no more), and those skipped on
    the way because they cannot change a scrub (e.g. a refinement of only the draw r of a node that reads none of
    it): no budget is spent on them."""
    skipped: list[Refinement] = []

    def useful() -> Iterator[Refinement]:
        for candidate in chain.from_iterable(family(context) for family in families):
            if context.changes_anything(candidate):
                yield candidate
            else:
                skipped.append(candidate)

    return list(islice(useful(), budget)), skipped


def adversarial_join(search: Search, z: float = 2.0):
    """Greedy forward selection over refinements, maximising |E[scrubbed loss] - E[model loss]| on the search split.

    Sweeps the candidates in order and keeps each one that raises the objective on top of
    those already kept by more than ``z`` paired standard errors (every evaluation uses the
    same draws, so the difference is paired per reference); sweeps again while the budget
    lasts and a sweep kept something.
    """
    candidates, skipped = candidate_list(search.context(), search.families, search.budget)
    clean = search.clean.mean()

    def losses(refinements: list[Refinement]) -> np.ndarray:
        return search.evaluate(joined_sampler(search.bound, refinements))

    def accepts(trial: np.ndarray, current: np.ndarray) -> bool:
        gain = abs(trial.mean() - clean) - abs(current.mean() - clean)
        noise = np.std(trial - current) / np.sqrt(len(trial))
        return gain > z * noise and gain > 1e-9 * (1 + abs(clean))

    chosen: list[Refinement] = []
    with search.scorer.progress_bar("adversarial-join", min(search.budget, len(candidates) + 1)) as step:
        current = losses(chosen)
        step()
        changed = True
        while changed and search.used < search.budget:
            changed = False
            queue = [c for c in candidates if c not in chosen]
            while queue and search.used < search.budget:
                # Speculatively evaluate the next few candidates on top of the current choice, then take
                # them in order exactly as a one-at-a-time sweep would: results do not depend on the width.
                batch = queue[: min(search.width, search.budget - search.used)]
                trials = search.stream([joined_sampler(search.bound, chosen + [c]) for c in batch])
                queue = queue[len(batch):]
                for i, (candidate, trial) in enumerate(zip(batch, trials)):
                    step()
                    if accepts(trial, current):
                        chosen.append(candidate)
                        current, changed = trial, True
                        queue = batch[i + 1:] + queue
                        break
    details = {
        "refinements": [c.description for c in chosen],
        "budget": {"limit": search.budget, "used": search.used, "candidates": len(candidates),
                   **({"skipped": len(skipped)} if skipped else {})},
        "searched": bool(candidates),  # False: no refinement to try; the regime repeats random's experiment
        "search_refs": len(search.refs),
        "fit_abs_loss_gap": round(float(abs(current.mean() - clean)), 6),
    }
    return joined_sampler(search.bound, chosen), details


def meetings(plan: Plan, tables: dict[str, ClassTable | None], nodes: list[str]) -> dict[str, torch.Tensor]:
    """Per node, the (reference, class) pairs its instances meet in ``plan``, once each, as ``ref * classes + class``.

    An instance at tree path P runs on an example drawn by the class of the example of the
    instance at P[:-1] (its child): that class, not the reference's own, is the one whose
    representative it takes. Below the first level the child runs on a drawn example.
    """
    met: dict[str, list[torch.Tensor]] = {n: [] for n in nodes}
    n_refs = len(plan.refs)
    for path, inst in plan.instances.items():
        node = path[-1]
        if node not in met or len(path) < 2:
            continue
        table = tables[node]
        keys = table.key(plan.instances[path[:-1]].examples).reshape(n_refs, -1)
        met[node].append((torch.arange(n_refs)[:, None] * table.n_classes + keys).reshape(-1))
    return {n: torch.unique(torch.cat(v)) if v else torch.zeros(0, dtype=torch.long) for n, v in met.items()}


def _credit(pairs: torch.Tensor, n_classes: int, gain: torch.Tensor) -> torch.Tensor:
    """Per class, the summed loss change of the references that meet it."""
    return torch.zeros(n_classes, dtype=torch.double).index_add_(0, pairs % n_classes, gain[pairs // n_classes])


class _Pool:
    """A node's candidate representatives, grouped by what a representative changes.

    A node that is not a leaf, and whose parents are all resampled, passes nothing of its own
    example on but the classes its parents are drawn from: members of a class that agree on those
    are interchangeable, so a candidate is drawn from a uniform group, then a uniform member of it.
    Elsewhere every member is its own group.
    """

    def __init__(self, bound: BoundHypothesis, tables: dict[str, ClassTable | None], node: str):
        table = tables[node]
        members = table.members
        n_classes = table.n_classes
        of_class = torch.repeat_interleave(torch.arange(n_classes), table.counts)
        parents = [tables.get(e.parent) for e in bound.edges(node)]
        if bound.is_leaf(node) or any(t is None for t in parents):
            signature = torch.arange(len(bound.data))
        else:
            keys = torch.cat([t.keys.reshape(len(bound.data), -1) for t in parents], 1)
            signature = torch.unique(keys, dim=0, return_inverse=True)[1]
        self.signature, self.span = signature, int(signature.max()) + 1
        codes, group = torch.unique(of_class * self.span + signature[members], return_inverse=True)
        self.codes = codes  # sorted: groups of one class are contiguous
        order = torch.argsort(group, stable=True)
        self.members = members[order]  # members sorted by group
        self.group_counts = torch.bincount(group, minlength=len(codes))
        self.group_starts = torch.cumsum(self.group_counts, 0) - self.group_counts
        self.class_groups = torch.bincount(codes // self.span, minlength=n_classes)
        self.class_starts = torch.cumsum(self.class_groups, 0) - self.class_groups

    def draw(self, size: int, rng: np.random.Generator) -> torch.Tensor:
        """``size`` members of every class, each from a uniform group of the class, independently: [classes, size]."""
        u = torch.from_numpy(rng.random((len(self.class_groups), size)))
        per_class = self.class_groups[:, None]
        groups = self.class_starts[:, None] + (u * per_class).long().clamp_max(per_class - 1)
        offset = (torch.from_numpy(rng.random(tuple(groups.shape))) * self.group_counts[groups]).long()
        return self.members[self.group_starts[groups] + offset.clamp_max(self.group_counts[groups] - 1)]


def _same_below(a: Plan, b: Plan, path: tuple[str, ...]) -> torch.Tensor:
    """Per reference: do the instance at ``path`` and every instance below it run on the same examples in both
    plans? (Then, with the same draws, that branch computes the same value in both.)"""
    same = torch.ones(len(a.refs), dtype=torch.bool)
    for p, inst in a.instances.items():
        if p[:len(path)] == path:
            same &= (inst.examples == b.instances[p].examples).reshape(len(a.refs), -1).all(1)
    return same


def worst_swap(search: Search):
    """Per node and class, the representative that maximises the loss of the references whose instances meet the class;
    coordinate ascent over every node's classes at once, until the budget is spent.

    A round draws K candidates per class of every node (``_Pool``: distinct in what they change) and
    evaluates candidate column j (candidate j for every class of every node) once each. The incumbent
    is the choice so far; in the first round, the best column. From the output down, each class is
    credited with a column's loss change on the references whose trees contain an instance of the node
    keyed in that class (the class of the example drawn for the instance below it, not the reference's
    own), and takes the column that gains most, if one gains and its run met all those references there;
    a change is undone while a reference meeting the class would not run that branch exactly as in the
    column's run. That combination is evaluated, and the round moves to the best evaluated choice (the
    combination or a column) only if the fitted loss does not fall, so ``fit_history`` never falls.
    Every node is visited in the first round (any budget of 2 or more); ``unvisited`` names any that was not.
    """
    bound, tables = search.bound, search.tables
    nodes = [n for n in bound.order if tables.get(n) is not None]
    k = max(1, search.candidates)
    unsplittable = {n: int((tables[n].counts == 1).sum()) for n in nodes}
    classes = {n: tables[n].n_classes for n in nodes}
    pools = {n: _Pool(bound, tables, n) for n in nodes}
    visits = {n: 0 for n in nodes}
    level = {}  # the longest path from a node to the output: the choices above a node decide who meets it
    for n in reversed(bound.order):
        children = [c for c in bound.order if any(e.parent == n for e in bound.edges(c))]
        level[n] = max((level[c] + 1 for c in children), default=0)
    clean = search.clean.mean()
    history: list[float] = []

    def sampler(reps: dict[str, torch.Tensor]) -> RepresentativeSampler:
        return RepresentativeSampler(tables, reps)

    def combine(block, base, losses, candidates, trials, plans):
        """The per-class combination of a round's candidates, and whether it changes a class any reference meets."""
        met = [meetings(p, tables, block) for p in plans]
        combined = dict(base)
        source = {}  # per node and class: the candidate it took, or -1 (the incumbent)
        for lv in sorted({level[n] for n in block}):
            at = [n for n in block if level[n] == lv]
            now = meetings(search.plan(sampler(combined)), tables, at)
            for n in at:
                c = classes[n]
                gains = [torch.zeros(c, dtype=torch.double)]  # column 0: the incumbent, no change
                covered = [torch.ones(c, dtype=torch.bool)]
                means = [torch.zeros(c, dtype=torch.double)]
                for j, trial in enumerate(trials):
                    gain = torch.from_numpy(trial - losses)
                    inside = torch.isin(now[n], met[j][n])
                    gains.append(_credit(now[n][inside], c, gain))
                    covered.append(torch.bincount(now[n][~inside] % c, minlength=c) == 0)
                    seen = torch.bincount(met[j][n] % c, minlength=c)
                    means.append(torch.where(seen > 0, _credit(met[j][n], c, gain) / seen.clamp_min(1), -torch.inf))
                gains, covered = torch.stack(gains, 1), torch.stack(covered, 1)
                choice = torch.where(covered, gains, -torch.inf).argmax(1)  # the first of equals: the incumbent
                # A class no reference meets under the combination does not move the fit: it takes the candidate
                # whose references gained most on average where they met it, for a later round to route through.
                unmet = torch.bincount(now[n] % c, minlength=c) == 0
                choice = torch.where(unmet, torch.stack(means, 1).argmax(1), choice) - 1
                source[n] = choice
                pick = candidates[n][torch.arange(c), choice.clamp_min(0)]
                combined[n] = torch.where(choice >= 0, pick, base[n])
        while True:  # undo changes whose branches would not run as in the candidate's run that credited them
            plan = search.plan(sampler(combined))
            undone = False
            for path in plan.instances:
                n = path[-1]
                if n not in source or len(path) < 2:
                    continue
                c = classes[n]
                keys = tables[n].key(plan.instances[path[:-1]].examples).reshape(len(plan.refs), -1)
                j = source[n][keys]  # [refs, positions]
                changed = j >= 0
                if not changed.any():
                    continue
                same = torch.stack([_same_below(plan, p, path) for p in plans], 1)  # [refs, candidates]
                bad = changed & ~same.gather(1, j.clamp_min(0))
                if bad.any():
                    worse = torch.unique(keys[bad])
                    source[n][worse] = -1
                    combined[n] = torch.where(source[n] >= 0, combined[n], base[n])
                    undone = True
            if not undone:
                break
        now = meetings(plan, tables, block)
        moved = any(bool((source[n][torch.unique(now[n] % classes[n])] >= 0).any()) for n in block)
        return combined, moved

    def one_round(block: list[str], incumbent, step):
        """One round over the nodes of ``block``: candidates and their combination.

        Returns the (losses, representatives) the search keeps."""
        left = search.budget - search.used
        width = min(k, left - 1) if left >= 2 else 1  # keep one evaluation for the combination
        base = {} if incumbent is None else incumbent[1]
        candidates = {n: pools[n].draw(width, search.rng) for n in block}
        columns = [{**base, **{n: candidates[n][:, j] for n in block}} for j in range(width)]
        trials = []
        for trial in search.stream([sampler(c) for c in columns]):
            step()
            trials.append(trial)
        options = list(zip(trials, columns))  # (fitted losses, representatives)
        for n in block:
            visits[n] += width > 1 or incumbent is not None
        if incumbent is None:  # the first round: the best candidate is the incumbent the others are measured from
            incumbent = max(options, key=lambda o: o[0].mean())
        plans = [search.plan(sampler(c)) for c in columns]
        combined, moved = combine(block, incumbent[1], incumbent[0], candidates, trials, plans)
        if not moved:  # only classes no reference meets changed: the fit is the incumbent's
            return incumbent[0], combined
        same = [o for o in options if all(torch.equal(o[1][n], combined[n]) for n in block)]
        if same:
            options.insert(0, (same[0][0], combined))
        elif search.used < search.budget:
            options.insert(0, (search.evaluate(sampler(combined)), combined))
            step()
        best = max(options, key=lambda o: o[0].mean())  # the first of equals: the combination, if evaluated
        if best[0].mean() < incumbent[0].mean() or (best[1] is not combined and best[0].mean() == incumbent[0].mean()):
            return incumbent  # a candidate that only ties the incumbent does not replace it
        return best

    current = None
    with search.scorer.progress_bar("worst-swap", max(1, search.budget)) as step:
        if nodes:
            current = one_round(nodes, None, step)
            history.append(float(current[0].mean() - clean))
            while search.used < search.budget:
                current = one_round(nodes, current, step)
                history.append(float(current[0].mean() - clean))
    reps = {} if current is None else dict(current[1])
    if nodes:  # a class no instance meets under the fitted choice keeps random draws (its choice was never scored)
        final = meetings(search.plan(sampler(reps)), tables, nodes)
        for n in nodes:
            seen = torch.zeros(classes[n], dtype=torch.bool)
            seen[final[n] % classes[n]] = True
            reps[n] = torch.where(seen, reps[n], torch.full_like(reps[n], -1))
    details = {
        "searched": bool(nodes),  # False: no node has classes to swap; the regime repeats random's experiment
        "representatives": {n: int((reps[n] >= 0).sum()) for n in nodes},
        "classes": classes,
        "unsplittable_classes": {n: c for n, c in unsplittable.items() if c},
        "budget": {"limit": search.budget, "used": search.used},
        "search_refs": len(search.refs),
        "fit_loss_gap": round(history[-1], 6) if history else None,
        "fit_history": [round(h, 6) for h in history],
    }
    unvisited = [n for n in nodes if not visits[n]]
    if unvisited:
        details["unvisited"] = unvisited
    return sampler(reps), details


REGISTRY = {"random": random_regime, "adversarial-join": adversarial_join, "worst-swap": worst_swap}
REGIMES = tuple(REGISTRY)  # their names, in the order every face shows them

"""Redwood's paren claims 2b and 3 as they wrote them, with nodes beyond sites (scrubbing.split).

2b (the phi rewrite): the count head a1.0 reads a0.0 only through phi, the projection of a0.0's output onto the
direction that predicts opens-minus-closes at position 1 (least squares on the task's data); a0.0's orthogonal
remainder, at every position, is resampled. 3: the horizon head a1.1 reads its residual stream at each position
only through horizon_t there: one node, one draw per position (paren_balance.py approximates it with one
independently drawn node per upstream site). Claims 1 and 2 come from paren_balance.py unchanged.
"""
from functools import cache

from hypotheses.paren_balance import EMB, HORIZON, HORIZON_HEAD, SRC, claim1, count_source_at_first_paren, \
    horizon_at_each_position, starts_open
from scrubbing.hypothesis import Edge
from scrubbing.split import ResidualStream, Subspace, split_sites
from scrubbing.task import Task

PHI, STREAM = "a0.0[phi]", f"resid@{HORIZON_HEAD}"


@cache
def task(**kwargs) -> Task:
    """The paren task, its adapter given phi (fitted on the task's own data) and a1.1's residual stream."""
    from benchmarks.paren_balance.task import load_task

    base = load_task(**kwargs)
    elevation = base.data.columns["elevation"][:, -1].float()
    phi = Subspace.fit(base.adapter, base.data, "a0.0", "regression", target=elevation, position=1, name="phi")
    adapter = split_sites(base.adapter, phi, ResidualStream(before=HORIZON_HEAD))
    return Task(base.name.replace("paren_balance", "paren_balance+phi+stream"), adapter, base.data, base.loss,
                base.description)


def _claim2b(h):
    h = h.with_node(SRC, PHI, count_source_at_first_paren).with_node(EMB, "embed", starts_open)
    return h.replacing("count@a1.0", parents=[SRC, EMB])


def _claim3(h):
    h = h.with_node(f"{STREAM}@t", STREAM, horizon_at_each_position)
    return h.replacing(HORIZON, parents=[Edge(f"{STREAM}@t", via="direct")])


hypotheses = [
    _claim2b(claim1).renamed("claims 1+2b (phi)", claim1.description + " a1.0 reads a0.0 only through phi, its "
                             "opens-minus-closes direction, at position 1 (Redwood 2b)."),
    _claim3(claim1).renamed("claims 1+3 (one stream)", claim1.description + f" {HORIZON_HEAD}'s residual stream at "
                            "each position matters only through horizon_t there (Redwood 3)."),
    _claim3(_claim2b(claim1)).renamed("claims 1+2b+3", "Claims 1, 2b and 3 together (Redwood 4)."),
]
PUBLISHED = {"claims 1+2b (phi)": (0.88, 0.88), "claims 1+3 (one stream)": (0.84, 0.73),  # writeup (Redwood's code)
             "claims 1+2b+3": (0.72, 0.61)}

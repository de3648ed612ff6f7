"""Redwood's paren-balance claims for the heads of OUR checker (evidence: benchmarks/paren_balance/FINDINGS.md):
count heads a1.0, a2.1 (Redwood's 1.0, 2.0), horizon head a1.1 (2.1, our weakest assignment); a0.0 writes
opens-minus-closes at position 1. Claim 2 has no site for Redwood's phi rewrite; claim 3 draws each upstream site
of a1.1 on its own (stricter than Redwood's one residual-stream draw). Redwood's names: 1a, 1b, 2a, 3, 4.
"""
import torch

from scrubbing.features import column, feature, joint, merge_rare
from scrubbing.hypothesis import Edge, Hypothesis

COUNT_HEADS, HORIZON_HEAD, COUNT_SOURCE, FIRST_PAREN = ("a1.0", "a2.1"), "a1.1", "a0.0", 1
HORIZON_UPSTREAM = ("embed", "a0.0", "a0.1", "m0")  # every site feeding the horizon head
count_ok, horizon_ok, starts_open = column("count_ok"), column("horizon_ok"), column("starts_open")
count_and_start = joint(count_ok, starts_open, name="count_and_start")
HORIZON, SRC, EMB = f"horizon@{HORIZON_HEAD}", f"a1.0<-{COUNT_SOURCE}@pos1", "a1.0<-embed"  # claim 2: a1.0 only


def task(**kwargs):  # 3000 generated strings by default; source="redwood" for Redwood's CSV
    return __import__("benchmarks.paren_balance.task", fromlist=["load_task"]).load_task(**kwargs)


@feature("opens-closes at pos 1 if starts open")
def count_source_at_first_paren(d):
    """Per position: at position 1, opens minus closes if the string starts open (else one class); elsewhere one class."""
    diff, start = d.columns["elevation"][:, -1], d.columns["starts_open"].bool()
    out = torch.zeros(len(diff), d.inputs.shape[1], dtype=torch.long)
    out[:, FIRST_PAREN] = torch.full_like(diff, -1000).masked_scatter(start, merge_rare(diff[start]))
    return out


@feature("horizon_t")
def horizon_at_each_position(d):
    """Per position: 0 on [BOS]/PAD, 1 where the prefix elevation is >= 0, 2 where negative (singletons merged)."""
    cls = torch.where(d.columns["is_paren"].bool(), torch.where(d.columns["elevation"] < 0, 2, 1), 0)
    for t, (uniq, counts) in enumerate(c.unique(return_counts=True) for c in cls.T):
        for u in uniq[counts == 1]:
            cls[cls[:, t] == u, t] = uniq[counts.argmax()]
    return cls


def _claim2(h: Hypothesis) -> Hypothesis:
    h = h.with_node(SRC, COUNT_SOURCE, count_source_at_first_paren).with_node(EMB, "embed", starts_open)
    return h.replacing("count@a1.0", parents=[SRC, EMB])


def _claim3(h: Hypothesis) -> Hypothesis:
    for site in HORIZON_UPSTREAM:
        h = h.with_node(f"{HORIZON_HEAD}<-{site}@t", site, horizon_at_each_position)
    return h.replacing(HORIZON, parents=[Edge(f"{HORIZON_HEAD}<-{s}@t", via="direct") for s in HORIZON_UPSTREAM])


claim1 = Hypothesis("claim 1", f"{(heads := '/'.join(COUNT_HEADS))} compute (count test, starts open), {HORIZON_HEAD} the horizon test (Redwood 1b).")
for _head in COUNT_HEADS:
    claim1.node(f"count@{_head}", _head, count_and_start)
claim1.node(HORIZON, HORIZON_HEAD, horizon_ok).output(parents=[*(f"count@{h}" for h in COUNT_HEADS), HORIZON])
count_only = claim1.renamed("count only", f"{heads} compute the count test, {HORIZON_HEAD} the horizon test (Redwood 1a).")
for _head in COUNT_HEADS:
    count_only = count_only.replacing(f"count@{_head}", feature=count_ok)
hypotheses = [count_only, claim1,
              _claim2(claim1).renamed("claims 1+2", claim1.description + f" The count heads read only {COUNT_SOURCE}'s "
                                      "opens-minus-closes at position 1 and the first paren (Redwood 2a)."),
              _claim3(claim1).renamed("claims 1+3", claim1.description + f" {HORIZON_HEAD}'s input at each position "
                                      "matters only through horizon_t there (Redwood 3)."),
              _claim3(_claim2(claim1)).renamed("claims 1+2+3", "Claims 1, 2 and 3 together (Redwood 4).")]
PUBLISHED = {"count only": None, "claim 1": (0.93, 0.93), "claims 1+2": (0.88, 0.88),  # writeup (Redwood's code)
             "claims 1+3": (0.84, 0.73), "claims 1+2+3": (0.72, 0.61)}

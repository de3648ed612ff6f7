"""Latent-level claims on the compiled ``reverse`` program: m2 (the MLP writing ``opp_idx-1``) read through a
dictionary, an SAE on its output (``train_sae.py``) or a transcoder from its input (``train_transcoder.py``).

Each checkpoint labels its live latents with the ``opp_idx-1`` value they fire for most (its metadata); the
latents of one value form one piece of m2, and a claim replaces the program's node at m2 by one node per piece.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from safetensors import safe_open

from benchmarks.tracr.task import load, load_task
from scrubbing import Edge, Hypothesis
from scrubbing.split import Dictionary, split_sites
from scrubbing.task import Task
from scrubbing.tracr import true_hypothesis

SITE, NODE, READER = "m2", "opp_idx-1", "reverse"  # the split site, the program's node there, the node reading it
CHECKPOINTS = Path(__file__).resolve().parent / "sae"


def value_groups(path: Path) -> dict[str, list[int]]:
    """``{"value v": [latents labelled v]}``, the values with most latents first (ties by value)."""
    with safe_open(str(path), "pt") as f:
        labels = {int(k): v for k, v in json.loads(f.metadata()["labels"]).items()}
    values = sorted(set(labels.values()), key=lambda v: (-list(labels.values()).count(v), v))
    return {f"value {v}": sorted(k for k, label in labels.items() if label == v) for v in values}


def split_task(kind: type[Dictionary], path: Path, what: str) -> Task:
    """The reverse task with m2 split by ``kind`` (``Dictionary`` or ``Transcoder``) into one piece per value group,
    ``m2[error]`` and ``m2[rest]``."""
    base = load_task("reverse")
    adapter = split_sites(base.adapter, kind.load(path, SITE, groups=value_groups(path)))
    return Task(f"{base.name} + {what} on {SITE}", adapter, base.data, base.loss, base.description)


PROGRAM = true_hypothesis(load("reverse"))


def through_pieces(pieces: list[str], name: str, description: str,
                   parents: "list[str | Edge] | None" = None) -> Hypothesis:
    """The program's hypothesis with its node at m2 replaced by one node per piece: the same feature and the same
    edge into the reversing head's query; the node's own parents, or ``parents``. A node left with no child goes."""
    node = PROGRAM.nodes[NODE]
    edge = next(e for e in PROGRAM.nodes[READER].parents if e.parent == NODE)
    h = PROGRAM.copy(name, description).without(NODE)
    for piece in pieces:
        h = h.with_node(f"{NODE} @ {piece}", f"{SITE}[{piece}]", node.feature,
                        node.parents if parents is None else parents, node.feature_name,
                        feeds=[replace(edge, parent=READER)])
    while unread := [n for n in h.nodes if n != "output" and not any(e.parent == n for m in h.nodes.values()
                                                                        for e in m.parents)]:
        h = h.without(*unread)
    return h

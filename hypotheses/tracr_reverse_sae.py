"""Latent-level claims on the compiled ``reverse`` program: its MLP m2 read through a sparse autoencoder.

The autoencoder (``benchmarks/tracr/train_sae.py``, shipped in ``benchmarks/tracr/sae/``) has 16 latents on m2's
output; each is labelled with the ``opp_idx-1`` value it fires for most. The claims replace the program's node at
m2 by a node at a group of latents (``scrubbing.split.Dictionary``), with the same feature; what the group leaves
(the reconstruction error ``m2[error]``, the other latents and the decoder bias ``m2[rest]``) is claimed not to
matter and comes from the random draw.

- "every live latent": all 16 carry opp_idx-1, the error is noise: holds (the error is at most 3.5 % of m2's
  output, below what the reversing head's query can see).
- "latents of one value only": only the latents of the most common value carry it; the others are
  resampled, so the query is wrong wherever they matter: refuted.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path

from safetensors import safe_open

from benchmarks.tracr.task import load, load_task
from scrubbing import Hypothesis, expect
from scrubbing.split import Dictionary, split_sites
from scrubbing.task import Task
from scrubbing.tracr import true_hypothesis

SAE = Path(__file__).resolve().parents[1] / "benchmarks" / "tracr" / "sae" / "reverse_m2.safetensors"
with safe_open(str(SAE), "pt") as _f:
    LABELS = {int(k): v for k, v in json.loads(_f.metadata()["labels"]).items()}  # latent -> opp_idx-1 value
VALUES = sorted(set(LABELS.values()), key=lambda v: (-list(LABELS.values()).count(v), v))  # most latents first
PIECES = {f"value {v}": sorted(k for k, label in LABELS.items() if label == v) for v in VALUES}


@cache
def task() -> Task:
    """The reverse task with m2 split into one piece per opp_idx-1 value's latents, m2[error] and m2[rest]."""
    base = load_task("reverse")
    adapter = split_sites(base.adapter, Dictionary.load(SAE, "m2", groups=PIECES))
    return Task(f"{base.name} + SAE on m2", adapter, base.data, base.loss, base.description)


TRUE = true_hypothesis(load("reverse"))


def through_latents(pieces: list[str], name: str, description: str) -> Hypothesis:
    """The program's hypothesis with its m2 node replaced by one node per latent piece (same feature, parents and
    edge into the reversing head's query); the error and the other latents are left to the random draw."""
    h = TRUE.copy(name, description)
    node = h.nodes["opp_idx-1"]
    edge = next(e for e in h.nodes["reverse"].parents if e.parent == "opp_idx-1")
    h = h.without("opp_idx-1")
    for piece in pieces:
        h = h.with_node(f"opp_idx-1 @ {piece}", f"m2[{piece}]", node.feature, node.parents, node.feature_name,
                        feeds=[replace(edge, parent="reverse")])
    return h


every_latent = through_latents(list(PIECES), "reverse via SAE: every live latent",
                               "m2 matters only through its 16 latents, each carrying opp_idx-1; the reconstruction "
                               "error is noise.").expect(expect.verdict("holds"))
one_value = through_latents(list(PIECES)[:1], "reverse via SAE: latents of one value only",
                            f"m2 matters only through the latents of opp_idx-1 = {VALUES[0]}; the other latents and "
                            "the error are noise.").expect(expect.recovered("<=", 0.9), expect.verdict("refuted"))
hypotheses = [every_latent, one_value]

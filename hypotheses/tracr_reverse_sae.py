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

from functools import cache

from benchmarks.tracr.latents import CHECKPOINTS, split_task, through_pieces, value_groups
from scrubbing import expect
from scrubbing.split import Dictionary
from scrubbing.task import Task

SAE = CHECKPOINTS / "reverse_m2.safetensors"
PIECES = value_groups(SAE)  # "value v" -> the latents labelled v, the values with most latents first
VALUES = [int(name.split()[-1]) for name in PIECES]


@cache
def task() -> Task:
    """The reverse task with m2 split into one piece per opp_idx-1 value's latents, m2[error] and m2[rest]."""
    return split_task(Dictionary, SAE, "SAE")


every_latent = through_pieces(list(PIECES), "reverse via SAE: every live latent",
                              "m2 matters only through its 16 latents, each carrying opp_idx-1; the reconstruction "
                              "error is noise.").expect(expect.verdict("holds"))
one_value = through_pieces(list(PIECES)[:1], "reverse via SAE: latents of one value only",
                           f"m2 matters only through the latents of opp_idx-1 = {VALUES[0]}; the other latents and "
                           "the error are noise.").expect(expect.recovered("<=", 0.9), expect.verdict("refuted"))
hypotheses = [every_latent, one_value]

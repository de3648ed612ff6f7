"""Latent-level claims about what a transcoder's latents read: MLP m2 of the compiled ``reverse`` program.

The transcoder (``benchmarks/tracr/train_transcoder.py``, shipped in ``benchmarks/tracr/sae/``) has 16 latents
computed from m2's input; their decoded sum predicts m2's output (largest error 1e-7 of m2's output norm). Its
encoder was trained sparse (an L1 penalty on its weights, small weights pruned), so each latent reads few residual
directions. Each live latent is labelled with the ``opp_idx-1`` value it fires for most, and the latents of one
value form one piece (``scrubbing.split.Transcoder``): a site that reads m2's input, so a claim can say which
upstream node a group of latents reads. The claims replace the program's node at m2 by one node per piece, with
the program's feature; the reconstruction error ``m2[error]`` and ``m2[rest]`` (dead latents, the decoder bias)
are claimed not to matter and come from the random draw.

- "latents read opp_idx": every piece reads only m1's output, the opp_idx node, directly (``via="direct"``): the
  rest of m2's input (tokens, indices, length) comes from the draw. Holds: the live latents read opp_idx's
  directions and otherwise only the BOS and PAD token directions (the same at a position, or never scored).
- "latents read length": every piece reads only m0's output, the length node, directly; m1's opp_idx is claimed
  not to matter and comes from the draw. Refuted: the latents fire by opp_idx, which the draw gets wrong wherever
  its length differs from the reference's.

Trained without the encoder's penalty (``--encoder-l1 0 --prune 0``), the latents also read length, indices and
tokens (directions correlated with opp_idx on this data), and "latents read opp_idx" loses a few points
(``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from functools import cache

from benchmarks.tracr.latents import CHECKPOINTS, split_task, through_pieces, value_groups
from scrubbing import Edge, expect
from scrubbing.split import Transcoder
from scrubbing.task import Task

TRANSCODER = CHECKPOINTS / "reverse_m2_transcoder.safetensors"
PIECES = list(value_groups(TRANSCODER))  # one piece per opp_idx-1 value: "value v"


@cache
def task() -> Task:
    """The reverse task with m2 split into one piece per opp_idx-1 value's latents, m2[error] and m2[rest]."""
    return split_task(Transcoder, TRANSCODER, "transcoder")


reads_opp_idx = through_pieces(
    PIECES, "reverse via transcoder: latents read opp_idx",
    "Each group of m2's transcoder latents reads only opp_idx (m1's output, directly) and carries opp_idx-1; the "
    "rest of m2's input and the reconstruction error are noise.", parents=[Edge("opp_idx", via="direct")],
).expect(expect.verdict("holds"))
reads_length = through_pieces(
    PIECES, "reverse via transcoder: latents read length",
    "Each group of m2's transcoder latents reads only length (m0's output, directly) and carries opp_idx-1; "
    "opp_idx (m1) and the reconstruction error are noise.", parents=[Edge("length", via="direct")],
).expect(expect.recovered("<=", 0.9), expect.verdict("refuted"))
hypotheses = [reads_opp_idx, reads_length]

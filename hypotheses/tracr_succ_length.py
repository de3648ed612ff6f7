"""A tracr program built on categorical MLPs: succ = (token + 1) mod 4, then (succ + length) mod 4.

The program (``benchmarks/tracr/compile.py``; vocabulary 0..3, lengths 1..5, every input):

    length      = SelectorWidth(Select(tokens, tokens, TRUE))   head a0.0 + MLP m0
    succ        = Map((token + 1) mod 4, tokens)                MLP m1
    succ_length = SequenceMap((succ + length) mod 4)            MLP m2

tracr puts the length and succ MLPs side by side in one MLP layer; the converted model
gives each its own layer (exact: they read and write disjoint directions), so each
operation has a site of its own. The loss is cross-entropy against tracr's own output.

False claims:

- "skips an MLP": succ_length reads the tokens straight from the embedding
  (``via="direct"``) where the program reads succ, so m1's output comes from the draw;
- "reads tokens": succ_length reads the tokens where the program reads length, so the
  selector width's output comes from the draw (wrong only when the draw has another
  length: a partial failure);
- "coarser feature": succ is claimed only up to its parity.
"""

from __future__ import annotations

from benchmarks.tracr.task import load, load_task
from scrubbing import expect
from scrubbing.tracr import mapped_feature, program_hypothesis, true_hypothesis

NAME = "succ_length"


def task():
    return load_task(NAME)


FIXTURE = load(NAME)

true = true_hypothesis(FIXTURE, name="succ_length: the compiled program").expect(
    expect.recovered(">=", 0.99, regime="*"), expect.abs_gap("<=", 1e-3, regime="*"), expect.verdict("holds"))

skips_mlp = program_hypothesis(
    FIXTURE, "succ_length, false: skips the succ MLP",
    "The last MLP reads the token directly from the embedding (direct path) where the program reads succ; the "
    "MLP m1 that computes succ is claimed to do nothing, so its output comes from the random draw.",
    reads={"succ_length": {"in": ["tokens", "length"]}}, direct=[("succ_length", "tokens")],
).expect(expect.recovered("<=", 0.9))

reads_tokens = program_hypothesis(
    FIXTURE, "succ_length, false: reads the tokens, not length",
    "The last MLP reads succ and the embedding (direct path) where the program reads length; the selector "
    "width's head and MLP write from the random draw.",
    reads={"succ_length": {"in": ["succ", "tokens"]}}, direct=[("succ_length", "tokens")],
).expect(expect.recovered("<=", 0.9))

coarser = program_hypothesis(
    FIXTURE, "succ_length, false: succ only up to parity",
    "The program's graph, but succ is only claimed up to its parity: the last MLP's succ input is resampled "
    "from inputs whose succ has the same parity at that position.",
    features={"succ": mapped_feature(FIXTURE, "succ", lambda v: v % 2, "succ mod 2")},
).expect(expect.recovered("<=", 0.9))

hypotheses = [true, skips_mlp, reads_tokens, coarser]

"""tracr's ``make_frac_prevs``, compiled: a numerical MLP and a numerical mean; true and false hypotheses.

The program (``benchmarks/tracr/compile.py``; vocabulary a, b, c, x, lengths 1..5, every input):

    is_x       = numerical(Map(tokens == "x"))                                  MLP m0
    frac_prevs = numerical(Aggregate(Select(indices, indices, LEQ), is_x))      head a1.0 (q, k: indices; v: is_x)

The loss is the squared error against tracr's own (numerical) output at every token.

False claims:

- "skips an MLP": the head's value reads the tokens straight from the embedding
  (``via="direct"``) where the program reads is_x, so m0's output comes from the random draw;
- "coarser feature": frac_prevs is claimed only up to whether it is positive (an x came
  so far), so the output is resampled from inputs with any other positive fraction there.
"""

from __future__ import annotations

from benchmarks.tracr.task import load, load_task
from scrubbing import expect
from scrubbing.tracr import mapped_feature, program_hypothesis, true_hypothesis

NAME = "frac_prevs"


def task():
    return load_task(NAME)


FIXTURE = load(NAME)

true = true_hypothesis(FIXTURE, name="frac_prevs: the compiled program").expect(
    expect.recovered(">=", 0.99, regime="*"), expect.abs_gap("<=", 1e-3, regime="*"), expect.verdict("holds"))

skips_mlp = program_hypothesis(
    FIXTURE, "frac_prevs, false: skips the is_x MLP",
    "The averaging head's value reads the token directly from the embedding (direct path); the MLP m0 that "
    "computes is_x is claimed to do nothing, so its output comes from the random draw.",
    reads={"frac_prevs": {"v": ["tokens"]}}, direct=[("frac_prevs", "tokens")],
).expect(expect.recovered("<=", 0.9))

coarser = program_hypothesis(
    FIXTURE, "frac_prevs, false: only whether any x came so far",
    "The program's graph, but the head's output is only claimed up to whether the fraction is positive (an x "
    "came so far).",
    features={"frac_prevs": mapped_feature(FIXTURE, "frac_prevs", lambda v: v > 0, "frac_prevs > 0")},
).expect(expect.recovered("<=", 0.9))

hypotheses = [true, skips_mlp, coarser]

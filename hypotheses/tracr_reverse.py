"""tracr's ``make_reverse``, compiled: the true hypothesis follows from the program, and three false ones fail.

The program (``benchmarks/tracr/compile.py``; vocabulary 1..6, lengths 1..4, every input):

    length    = SelectorWidth(Select(tokens, tokens, TRUE))      head a0.0 + MLP m0
    opp_idx   = length - indices                                  MLP m1
    opp_idx-1 = opp_idx - 1                                       MLP m2
    reverse   = Aggregate(Select(indices, opp_idx-1, EQ), tokens) head a3.0 (q: opp_idx-1, k: indices, v: tokens)

The loss is cross-entropy against tracr's own output at every token, so the clean
model's loss is 0. ``length``, ``opp_idx`` and ``opp_idx-1`` are fixed, row and all, by
their value at any one token (given the position), so their features are per input
(``true_hypothesis``'s ``per_input="auto"``: the same swaps, one draw per row); the
head's feature and the ``tokens``/``indices`` leaves are per position.

False claims:

- "skips an MLP": the head's query reads opp_idx straight from m1 (``via="direct"``), so
  the output of m2 (opp_idx - 1) comes from the random draw;
- "reads tokens": opp_idx is computed from the tokens (direct path from the embedding)
  where the program reads ``length``, so the selector width's output comes from the draw;
- "coarser feature": the head's value is claimed to carry only the token's parity.

The first two are wrong only where the random draw has another length than the
reference; most inputs have length 4 (1296 of 1554), so they fail partially (about 83%
recovered), while the coarser value fails on most tokens.
"""

from __future__ import annotations

from benchmarks.tracr.task import load, load_task
from scrubbing import expect
from scrubbing.tracr import mapped_feature, program_hypothesis, true_hypothesis

NAME = "reverse"


def task():
    return load_task(NAME)


FIXTURE = load(NAME)

true = true_hypothesis(FIXTURE, name="reverse: the compiled program").expect(
    expect.recovered(">=", 0.99, regime="*"), expect.abs_gap("<=", 1e-3, regime="*"), expect.verdict("holds"))

skips_mlp = program_hypothesis(
    FIXTURE, "reverse, false: skips the opp_idx-1 MLP",
    "The reversing head's query reads opp_idx straight from m1 (direct path); the MLP m2 that subtracts one is "
    "claimed to do nothing, so its output comes from the random draw.",
    reads={"reverse": {"q": ["opp_idx"]}}, direct=[("reverse", "opp_idx")],
).expect(expect.recovered("<=", 0.9))

reads_tokens = program_hypothesis(
    FIXTURE, "reverse, false: opp_idx reads the tokens, not length",
    "The MLP computing opp_idx reads the embedding directly (tokens at each position, direct path) where the "
    "program reads the intermediate length; the selector width's head and MLP write from the random draw.",
    reads={"opp_idx": {"in": ["tokens"]}}, direct=[("opp_idx", "tokens")],
).expect(expect.recovered("<=", 0.9))

coarser = program_hypothesis(
    FIXTURE, "reverse, false: the value carries only the token's parity",
    "The program's graph, but the tokens leaf (read by the head's value, and by length) is claimed to carry only "
    "whether each token is odd: it is resampled from inputs with a token of the same parity at that position.",
    features={"tokens": mapped_feature(FIXTURE, "tokens", lambda v: v % 2, "token parity")},
).expect(expect.recovered("<=", 0.9))

hypotheses = [true, skips_mlp, reads_tokens, coarser]

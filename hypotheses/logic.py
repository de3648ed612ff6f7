"""The hand-built logic circuit (a = b0 AND b1, b = b2 XOR b3, label = a OR b): its true circuit and the ways to be wrong.

The expectations pin what must stay true: the true circuit recovers everything under every
regime, and each wrong claim keeps being caught.
"""

from benchmarks.synthetic.tasks import logic_hypotheses, logic_task
from scrubbing import expect

task = logic_task
claims = logic_hypotheses()
claims["true"].expect(expect.verdict("holds"), expect.recovered(">=", 0.99, regime="*"),
                      expect.abs_gap("<=", 1e-4, regime="*"))
claims["identity"].expect(expect.abs_gap("<=", 0.0), expect.loss_gap("<=", 0.0))
claims["empty"].expect(expect.recovered("<=", 0.1))
claims["forgets xor"].expect(expect.recovered("<=", 0.6), expect.verdict("refuted", regime="random"))
claims["swapped"].expect(expect.recovered("<=", 0.3), expect.verdict("refuted", regime="random"))
claims["coarse and"].expect(expect.recovered("<=", 0.9), expect.loss_gap(">=", 0.1, regime="worst-swap"))
hypotheses = list(claims.values())

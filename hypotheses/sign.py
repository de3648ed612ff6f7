"""The canonical cancellation: out = A + B, B = ±c with an independent sign; claiming B irrelevant.

With c = 1 the mean does not move while every example's loss jumps by 4 half the time: CANCELS, although
E[|Δloss|] equals the noise floor. It never holds (cancels, or refuted where the adversary's freeze moves
the mean); the true claim holds everywhere.
"""

from benchmarks.synthetic.tasks import sign_hypotheses, sign_task
from scrubbing import expect

task = sign_task
claims = sign_hypotheses()
claims["ignores sign"].expect(expect.verdict("cancels", regime="random"), expect.verdict("refuted", "cancels"))
claims["true"].expect(expect.verdict("holds"))
hypotheses = list(claims.values())

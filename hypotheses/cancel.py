"""Cancellation: a claim whose E[loss] gap is ~0 while its E[|Δloss|] gap is far above the noise floor."""

from benchmarks.synthetic.tasks import cancel_hypotheses, cancel_task
from scrubbing import expect

task = cancel_task
claims = cancel_hypotheses()
claims["ignores t"].expect(
    expect.cancellation(">=", 0.5),                               # random: the mean hides the change...
    expect.verdict("cancels", regime="random"),                   # per example, at the baseline's scale
    expect.abs_loss_gap(">=", 0.1, regime="adversarial-join"),    # ...which the adversary exposes
    expect.verdict("refuted"),
)
claims["true"].expect(expect.abs_gap("<=", 1e-4, regime="*"), expect.verdict("holds"))
hypotheses = list(claims.values())

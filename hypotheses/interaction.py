"""Cancellation both adversaries expose: the gate's m input, claimed irrelevant, helps some examples and hurts others."""

from benchmarks.synthetic.tasks import interaction_hypotheses, interaction_task
from scrubbing import expect

task = interaction_task
claims = interaction_hypotheses()
claims["ignores m"].expect(
    expect.loss_gap("<=", 0.05),                                  # passes random scrubbing...
    expect.abs_loss_gap(">=", 0.05, regime="adversarial-join"),   # ...fails both adversaries (a join may push
                                                                  # the loss either way: both refute the claim)
    expect.loss_gap(">=", 0.3, regime="worst-swap"),
    expect.verdict("refuted"),
)
claims["true"].expect(expect.recovered(">=", 0.99, regime="*"), expect.verdict("holds"))
hypotheses = list(claims.values())

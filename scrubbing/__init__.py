"""Causal scrubbing: test a mechanistic hypothesis by resampling what it calls irrelevant.

    from scrubbing import Hypothesis, EXACT, Edge, Task, scrub, expect
    from scrubbing.features import column, token_at, position, constant, joint, feature
"""

from . import features
from .checks import expect
from .errors import HypothesisError, LossError, ModelError, ScrubError
from .hypothesis import EXACT, Edge, Hypothesis
from .report import Report, RunResult
from .run import scrub
from .sites import Dataset, ModelAdapter, Site
from .task import Task
from . import distributed  # noqa: E402,F401  (imports Ray only when used)

__all__ = [
    "EXACT", "Dataset", "expect", "Edge", "Hypothesis", "HypothesisError", "LossError", "ModelAdapter", "ModelError",
    "Report", "RunResult", "ScrubError", "Site", "Task", "features", "scrub",
]

"""What the performance suite runs: tasks, hypotheses and plans.

- ``paren``: ``benchmarks/paren_balance/task.py`` with the hypotheses of ``hypotheses/paren_balance.py``;
- ``induction``: ``benchmarks/induction/task.py`` with the hypotheses of ``hypotheses/induction.py``;
- ``synthetic``: a random 4-layer ``TinyTransformer`` (2 heads, MLPs) on random tokens, with a chain
  hypothesis embed -> a0.0 -> a1.0 -> a2.0 -> a3.0 -> output, every node with a per-example feature.

The bundled tasks are written by other people and may be missing or broken at any moment: every
loader returns ``(value, None)`` or ``(None, note)`` so the suite can skip a case and say why.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import numpy as np
import torch

from scrubbing import Edge, Hypothesis
from scrubbing.adapters import HookedAdapter
from scrubbing.models import TinyConfig, TinyTransformer
from scrubbing.plan import Plan, make_plan
from scrubbing.sampling import RandomSampler, class_tables
from scrubbing.sites import calibration_rows
from scrubbing.sites import Dataset
from scrubbing.task import Task

SYNTHETIC_N = 4000
SYNTHETIC_CTX = 10
SYNTHETIC_VOCAB = 8


@dataclass
class Case:
    """One hypothesis on one task."""

    key: str  # e.g. "paren/claims 1+2"
    task: Task
    hypothesis: Hypothesis
    notes: list[str] = field(default_factory=list)


def failure_line(what: str, exc: BaseException) -> str:
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return f"{what} skipped: {last}"


def calibrated(task: Task) -> Task:
    """Calibrate the adapter once (as ``scrub`` does) and put the model in eval mode."""
    adapter = task.adapter
    model = getattr(adapter, "model", None)
    if model is not None:
        model.eval()
    if getattr(adapter, "calibration", None) is None:
        adapter.calibrate(task.data.inputs[: calibration_rows(len(task.data))])
    return task


# -- bundled tasks -------------------------------------------------------------------------------
def paren_task():
    try:
        from benchmarks.paren_balance.task import load_task

        task = load_task()
        if task is None:
            return None, "paren task skipped: load_task() returned None"
        return calibrated(task), None
    except Exception as exc:  # noqa: BLE001 - someone else's file: report, do not crash
        return None, failure_line("paren task (benchmarks/paren_balance/task.py)", exc)


def induction_task():
    try:
        from benchmarks.induction.task import load_task

        return calibrated(load_task()), None
    except Exception as exc:  # noqa: BLE001
        return None, failure_line("induction task (benchmarks/induction/task.py)", exc)


def hypotheses_from(path: str):
    """The ``hypotheses`` list of a hypothesis file, or (None, note)."""
    try:
        from scrubbing.suite import load

        return list(load(path).hypotheses), None
    except Exception as exc:  # noqa: BLE001
        return None, failure_line(f"hypotheses of {path}", exc)


# -- synthetic ---------------------------------------------------------------------------------------
def synthetic_model(n_layers: int = 4, seed: int = 0) -> TinyTransformer:
    """A random TinyTransformer with non-trivial biases and norms (as in the tests)."""
    torch.manual_seed(seed)
    cfg = TinyConfig(n_layers=n_layers, n_heads=2, d_model=32, d_head=8, d_vocab=SYNTHETIC_VOCAB,
                     n_ctx=SYNTHETIC_CTX, d_mlp=64)
    model = TinyTransformer(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "b_O" in name or "ln" in name or "bias" in name:
                param.add_(0.3 * torch.randn_like(param))
    return model


def synthetic_data(n: int = SYNTHETIC_N, seed: int = 0) -> Dataset:
    tokens = torch.randint(0, SYNTHETIC_VOCAB, (n, SYNTHETIC_CTX), generator=torch.Generator().manual_seed(seed))
    return Dataset(tokens, {"label": tokens[:, 0] % 2})


def synthetic_loss(outputs: torch.Tensor, data: Dataset) -> torch.Tensor:
    """Cross-entropy of the last position's logits against a parity label: one value per reference."""
    logits = outputs[:, -1, :2].float()
    return torch.nn.functional.cross_entropy(logits, data.columns["label"].to(logits.device), reduction="none")


def synthetic_task(n_layers: int = 4, n: int = SYNTHETIC_N) -> Task:
    model = synthetic_model(n_layers)
    data = synthetic_data(n)
    adapter = HookedAdapter.for_transformer(model, n_layers, model.cfg.n_heads)
    return calibrated(Task(f"synthetic[{n_layers} layers, n={n}]", adapter, data, synthetic_loss))


def _token_mod(position: int, modulus: int):
    def feature(d):
        return d.inputs[:, position] % modulus

    feature.__name__ = f"token[{position}] % {modulus}"
    return feature


def chain_hypothesis(heads: list[str], embed: bool = True, name: str | None = None) -> Hypothesis:
    """embed -> heads[0] -> ... -> heads[-1] -> output; each node's feature: one token mod 2 (embed: mod 4)."""
    h = Hypothesis(name or f"chain of {len(heads) + int(embed)}")
    parent = None
    if embed:
        h.node("embed", "embed", _token_mod(0, 4))
        parent = "embed"
    for i, site in enumerate(heads):
        h.node(site, site, _token_mod(1 + i, 2), parents=[parent] if parent else [])
        parent = site
    h.output(parents=[parent])
    return h


def deep_chain(n_layers: int = 4) -> Hypothesis:
    """Case (c): embed -> a0.0 -> a1.0 -> ... -> a{L-1}.0 -> output."""
    return chain_hypothesis([f"a{layer}.0" for layer in range(n_layers)], embed=True,
                            name="chain embed->" + "->".join(f"a{l}.0" for l in range(n_layers)))


def one_head(task: Task) -> Hypothesis:
    """For the TransformerLens comparison: output <- the last layer's head 0 (a leaf: computed cleanly on a
    source with the same token[1] mod 2), on the direct path; every other input of the output comes from
    the output's random draw r."""
    n_layers = sum(1 for s in task.adapter.sites if s.endswith(".0") and s.startswith("a"))
    site = f"a{n_layers - 1}.0"
    h = Hypothesis(f"output <- {site} (token[1] % 2), direct")
    h.node("head", site, _token_mod(1, 2))
    h.output(parents=[Edge("head", via="direct")])
    return h


# -- plans -------------------------------------------------------------------------------------------
def plan_for(task: Task, hypothesis: Hypothesis, n_refs: int, seed: int = 0, replace: bool = False) -> Plan:
    """References as ``scrub`` takes them (a seeded permutation, without replacement), or sampled with
    replacement when ``replace`` (to go beyond the data set's size)."""
    bound = hypothesis.bind(task.adapter, task.data)
    rng = np.random.default_rng(seed)
    n = len(task.data)
    if replace:
        refs = torch.from_numpy(rng.integers(0, n, size=n_refs))
    else:
        refs = torch.from_numpy(rng.permutation(n)[: min(n_refs, n)])
    return make_plan(bound, refs, RandomSampler(class_tables(bound.classes)), np.random.default_rng(seed + 1))

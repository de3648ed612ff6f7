"""Tasks on the compiled tracr fixtures: the converted model on every input, scored against tracr's own output.

    from benchmarks.tracr.task import load_task, load
    task = load_task("reverse")           # or "frac_prevs", "succ_length"
    fixture = load("reverse")             # model, data, ops (and meta)

    PYTHONPATH=. python benchmarks/tracr/task.py     # check every fixture against tracr's recorded outputs

The dataset is every input of length 1 .. max_seq_len over the program's vocabulary,
padded to max_seq_len + 1 positions (BOS first). Per-example loss, averaged over the
positions that hold a token (BOS and padding are never scored):

- categorical output: cross-entropy of the model's logits (tracr's one-hot output
  directions times the fixture's ``logit_scale``) against tracr's own decoded output;
- numerical output: squared error against tracr's own output value.

On the clean model both are ~0 (the converted model reproduces tracr), so every
hypothesis's figures are measured against an exact zero. Sites
(``HookedAdapter.for_transformer``): ``embed``, ``a{L}.{H}`` (slots q/k/v), ``m{L}``
(slot ``in``), ``output``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from scrubbing.adapters import HookedAdapter
from scrubbing.errors import ScrubError
from scrubbing.sites import Dataset
from scrubbing.task import Task
from scrubbing.tracr import TracrFixture, check_fixture, load_fixture

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NAMES = ("reverse", "frac_prevs", "succ_length")


def load(name: str) -> TracrFixture:
    """A shipped fixture by name (``benchmarks/tracr/fixtures/<name>``)."""
    path = FIXTURES / name
    if not path.is_dir():
        known = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
        raise ScrubError(f"no tracr fixture {name!r} in {FIXTURES}; use one of {known} (or compile it: "
                         "benchmarks/tracr/compile.py).")
    return load_fixture(path)


def categorical_loss(logits: torch.Tensor, data: Dataset) -> torch.Tensor:
    """Mean cross-entropy against tracr's output over the token positions: one loss per example, [B]."""
    mask = data.columns["mask"].to(logits.device)
    target = data.columns["target"].to(logits.device).long()
    nll = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    return (nll * mask).sum(-1) / mask.sum(-1)


def numerical_loss(outputs: torch.Tensor, data: Dataset) -> torch.Tensor:
    """Mean squared error against tracr's output over the token positions: one loss per example, [B]."""
    mask = data.columns["mask"].to(outputs.device)
    target = data.columns["target"].to(outputs.device)
    return (((outputs[..., 0] - target) ** 2) * mask).sum(-1) / mask.sum(-1)


def task_for(fixture: TracrFixture) -> Task:
    model, data = fixture.model, fixture.data
    cfg = model.cfg
    adapter = HookedAdapter.for_transformer(model, cfg.n_layers, cfg.n_heads)
    adapter.calibrate(data.inputs[: min(len(data), 256)])
    kind = fixture.meta["output_encoding"]
    loss = categorical_loss if fixture.categorical else numerical_loss
    what = "cross-entropy" if fixture.categorical else "squared error"
    return Task(
        name=f"tracr-{fixture.name}",
        adapter=adapter,
        data=data,
        loss=loss,
        description=(f"tracr-compiled {fixture.name!r} ({kind} output, vocab {fixture.meta['vocab']}, lengths 1.."
                     f"{fixture.meta['max_seq_len']}): {len(data)} inputs (all of them); {cfg.n_layers} layers x "
                     f"{cfg.n_heads} heads, d_model {cfg.d_model}; {what} against tracr's own output per token."),
    )


@lru_cache(maxsize=None)
def _cached(name: str) -> Task:
    return task_for(load(name))


def load_task(name: str) -> Task:
    """The task of one shipped fixture (loaded once per process)."""
    return _cached(name)


def main() -> None:
    for name in NAMES:
        fixture = load(name)
        worst = check_fixture(fixture)
        task = task_for(fixture)
        with torch.no_grad():
            losses = task.loss(fixture.model(fixture.data.inputs), fixture.data)
        print(f"{name}: {len(fixture.data)} inputs; max |model - tracr| {worst['max_abs_diff']:.2g}; "
              f"mean loss {losses.mean():.3g}; ops: " + ", ".join(f"{k}@{v['site']}" for k, v in fixture.ops.items()))


if __name__ == "__main__":
    main()

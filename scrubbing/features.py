"""The common features, named: what reports and ``describe()`` show instead of ``<lambda>``.

A feature maps a dataset to class ids, per example ``[N]`` or per token position ``[N, T]``.
Each one here is a small callable object with a readable ``name``; combine them with ``joint``.
"""

from __future__ import annotations

from typing import Callable

import torch

from .sampling import refine
from .sites import Dataset


class Feature:
    """A named feature: ``feature(data)`` returns class ids."""

    def __init__(self, name: str, fn: Callable[[Dataset], torch.Tensor]):
        self.name = name
        self._fn = fn

    def __call__(self, data: Dataset) -> torch.Tensor:
        return self._fn(data)

    def __repr__(self) -> str:
        return self.name


def feature(name: str):
    """Decorator: name a feature function for reports (``@feature("count test")``)."""
    return lambda fn: Feature(name, fn)


def column(name: str) -> Feature:
    """The dataset column ``name`` as it is (per example or per position)."""
    return Feature(name, lambda d: d.columns[name])


def token_at(offset: int, column: str = "token") -> Feature:
    """Per position: the token at position t - ``offset`` (one shared class where that lies before position 0).

    ``column`` names the per-position token column; the shared class sorts after every token.
    """
    if offset < 0:
        raise ValueError(f"token_at: offset must be >= 0 (a position at or before t); got {offset}.")

    def fn(d: Dataset) -> torch.Tensor:
        tokens = d.columns[column]
        if offset == 0:
            return tokens
        out = torch.full_like(tokens, int(tokens.max()) + 1)
        out[:, offset:] = tokens[:, :-offset]
        return out

    return Feature(column if offset == 0 else f"{column} at t-{offset}", fn)


def position() -> Feature:
    """Per position: the position index (examples agree at t only with themselves' position t)."""
    return Feature("position", lambda d: torch.arange(d.inputs.shape[1]).expand(len(d), -1).clone())


def constant() -> Feature:
    """Every example in one class: resampled from the whole dataset."""
    return Feature("constant", lambda d: torch.zeros(len(d), dtype=torch.long))


def joint(*features: Callable[[Dataset], torch.Tensor], name: str | None = None) -> Feature:
    """Examples agree iff they agree on every one of ``features`` (the join of the partitions)."""
    label = name or " & ".join(getattr(f, "name", None) or getattr(f, "__name__", "feature") for f in features)

    def fn(d: Dataset) -> torch.Tensor:
        out = torch.as_tensor(features[0](d)).long()
        for f in features[1:]:
            out = refine(out, torch.as_tensor(f(d)).long())
        return out

    return Feature(label, fn)


def merge_rare(values: torch.Tensor, min_size: int = 2) -> torch.Tensor:
    """1-D ordinal class ids with every class of fewer than ``min_size`` members merged one step towards the
    median, until none is left (extreme values become "this far or further"): a binning with no singleton."""
    values, median = values.clone(), values.median()
    while True:
        uniq, counts = values.unique(return_counts=True)
        rare = uniq[counts < min_size]
        if len(rare) == 0 or len(uniq) == 1:
            return values
        v = rare[(rare - median).abs().argmax()]
        step = torch.where(v > median, -1, 1)
        target = uniq[(uniq - v) * step > 0]
        values[values == v] = target[((target - v) * step).argmin()] if len(target) else v

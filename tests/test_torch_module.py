"""TorchModuleAdapter refuses a site that reads the raw input beyond its slot; ordinary models still calibrate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scrubbing import Hypothesis
from scrubbing.adapters import TorchModuleAdapter
from scrubbing.errors import ModelError, ScrubError
from scrubbing.sites import Dataset

from .conftest import engine_and_reference

SITES = {"embed": (), "mix": ("embed",), "readout": ("embed", "mix")}


class _Skip(nn.Module):
    """``mix`` also reads the raw tokens, captured by the parent's forward (a skip connection from the input)."""

    def __init__(self, skip: bool):
        super().__init__()
        self.skip = skip
        self.embed, self.mix, self.readout = nn.Embedding(5, 4), _Mix(), nn.Linear(4, 2)

    def forward(self, tokens):
        self.mix.tokens = tokens if self.skip else None
        x = self.embed(tokens)
        return self.readout(x + self.mix(x)).sum(dim=1)


class _Mix(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.tokens = nn.Linear(4, 4), None

    def forward(self, x):
        out = torch.tanh(self.lin(x))
        return out if self.tokens is None else out + (self.tokens == 0).float()[..., None]


def _data() -> Dataset:
    tokens = torch.randint(0, 5, (40, 3), generator=torch.Generator().manual_seed(1))
    return Dataset(tokens, {"label": tokens[:, 0] % 2})


def test_a_site_that_reads_the_raw_input_is_refused_at_calibration():
    torch.manual_seed(0)
    adapter = TorchModuleAdapter(_Skip(skip=True).eval(), SITES, "readout")
    with pytest.raises(ModelError, match=r"site 'mix' reads the model's raw input.*site with no parents") as err:
        adapter.calibrate(_data().inputs)
    assert isinstance(err.value, ScrubError)


def test_an_ordinary_model_still_calibrates_and_agrees_with_the_reference():
    torch.manual_seed(0)
    data = _data()
    adapter = TorchModuleAdapter(_Skip(skip=False).eval(), SITES, "readout")
    adapter.calibrate(data.inputs)
    assert not adapter.uses_context
    h = Hypothesis("plain", allow_singletons=True)
    h.node("tok", "embed", lambda d: d.inputs[:, 0] % 2)
    h.node("mix", "mix", lambda d: d.inputs[:, 1] % 2, parents=["tok"])
    h.output(parents=["mix"])
    engine, reference = engine_and_reference(h, adapter, data, torch.arange(8), seed=1)
    torch.testing.assert_close(engine, reference, atol=1e-5, rtol=1e-5)

"""Shared builders: small random transformers, datasets and the plan/execute round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scrubbing.adapters import HookedAdapter
from scrubbing.execute import Engine
from scrubbing.models import TinyConfig, TinyTransformer
from scrubbing.plan import make_plan
from scrubbing.reference import reference_outputs
from scrubbing.sampling import RandomSampler, class_tables
from scrubbing.sites import Dataset


def tiny_transformer(seed: int = 0, n_layers: int = 2, n_heads: int = 2, n_ctx: int = 4, d_vocab: int = 5,
                     mlp: bool = True, causal: bool = True) -> TinyTransformer:
    torch.manual_seed(seed)
    cfg = TinyConfig(n_layers=n_layers, n_heads=n_heads, d_model=8, d_head=4, d_vocab=d_vocab, n_ctx=n_ctx,
                     d_mlp=8 if mlp else None, causal=causal)
    model = TinyTransformer(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms, so the calibration has something to find
        for name, param in model.named_parameters():
            if "b_O" in name or "ln" in name or "bias" in name:
                param.add_(0.3 * torch.randn_like(param))
    return model


def random_tokens(n: int, n_ctx: int, d_vocab: int, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, d_vocab, (n, n_ctx), generator=g)
    return Dataset(tokens, {"label": tokens[:, 0]})


def adapter_for(model: TinyTransformer, data: Dataset) -> HookedAdapter:
    cfg = model.cfg
    adapter = HookedAdapter.for_transformer(model, cfg.n_layers, cfg.n_heads, attn_only=cfg.d_mlp is None)
    adapter.calibrate(data.inputs[:32])
    return adapter


def bound_and_plan(hypothesis, adapter, data, refs, seed: int = 0, sampler=None):
    """The bound hypothesis and a plan drawn for it (by default with the random sampler)."""
    bound = hypothesis.bind(adapter, data)
    sampler = sampler or RandomSampler(class_tables(bound.classes))
    return bound, make_plan(bound, refs, sampler, np.random.default_rng(seed))


def plan_for(hypothesis, adapter, data, refs, seed: int = 0):
    return bound_and_plan(hypothesis, adapter, data, refs, seed)[1]


def engine_and_reference(hypothesis, adapter, data, refs, seed: int = 0, batch_size: int = 7, sampler=None):
    bound, plan = bound_and_plan(hypothesis, adapter, data, refs, seed, sampler)
    return Engine(adapter, data, batch_size=batch_size).outputs(plan), reference_outputs(plan, adapter, data, bound)


@pytest.fixture
def small():
    """A 2-layer transformer with MLPs and 60 random sequences."""
    model = tiny_transformer()
    data = random_tokens(60, 4, 5)
    return model, data, adapter_for(model, data)

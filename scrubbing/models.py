"""A small transformer built on TransformerLens's ``HookedRootModule``, with TransformerLens hook names.

Every head's q/k/v input and result is a hook point, so path-level hypotheses work
on it with ``HookedAdapter.for_transformer``. The bundled tasks train it, and the
tests build random ones; weights load and save with safetensors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import einops
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint


@dataclass(frozen=True)
class TinyConfig:
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_mlp: int | None = None  # None: attention only
    n_out: int | None = None  # output classes; None: d_vocab
    causal: bool = True
    layer_norm: bool = True


class _Attention(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q, self.W_K, self.W_V = (nn.Parameter(torch.randn(h, d, e) / d**0.5) for _ in range(3))
        self.W_O = nn.Parameter(torch.randn(h, e, d) / e**0.5)
        self.b_O = nn.Parameter(torch.zeros(d))
        self.causal = cfg.causal
        self.hook_pattern = HookPoint()
        self.hook_result = HookPoint()

    def forward(self, q_in, k_in, v_in):
        """Inputs are per head ``[b, p, h, d]``, or ``[b, p, d]`` when every head reads the same stream."""
        q, k, v = (_project(x, w) for x, w in ((q_in, self.W_Q), (k_in, self.W_K), (v_in, self.W_V)))
        scores = einops.einsum(q, k, "b q h e, b k h e -> b h q k") / q.shape[-1] ** 0.5
        if self.causal:
            n = scores.shape[-1]
            mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=scores.device), 1)
            scores = scores.masked_fill(mask, float("-inf"))
        pattern = self.hook_pattern(scores.softmax(-1))
        z = einops.einsum(pattern, v, "b h q k, b k h e -> b q h e")
        result = self.hook_result(einops.einsum(z, self.W_O, "b q h e, h e d -> b q h d"))
        return result.sum(dim=2) + self.b_O


def _project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        return einops.einsum(x, weight, "b p d, h d e -> b p h e")
    return einops.einsum(x, weight, "b p h d, h d e -> b p h e")


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


class _Block(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        norm = (lambda: nn.LayerNorm(cfg.d_model)) if cfg.layer_norm else nn.Identity
        self.ln1, self.attn = norm(), _Attention(cfg)
        self.n_heads = cfg.n_heads
        for name in ["resid_pre", "q_input", "k_input", "v_input", "attn_out", "resid_post"]:
            setattr(self, f"hook_{name}", HookPoint())
        self.mlp = None
        if cfg.d_mlp:
            self.ln2 = norm()
            self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_mlp), nn.ReLU(), nn.Linear(cfg.d_mlp, cfg.d_model))
            self.hook_resid_mid, self.hook_mlp_in, self.hook_mlp_out = HookPoint(), HookPoint(), HookPoint()

    def forward(self, resid):
        resid = self.hook_resid_pre(resid)
        head_inputs = (self.hook_q_input, self.hook_k_input, self.hook_v_input)
        if any(_has_hooks(hook) for hook in head_inputs):  # someone reads or patches one head's input
            per_head = einops.repeat(resid, "b p d -> b p h d", h=self.n_heads)
            q, k, v = (self.ln1(hook(per_head.clone())) for hook in head_inputs)
        else:  # every head reads the same stream: normalise it once (same values, a fraction of the work)
            q = k = v = self.ln1(resid)
        resid = resid + self.hook_attn_out(self.attn(q, k, v))
        if self.mlp is not None:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(self.hook_mlp_in(resid.clone()))))
        return self.hook_resid_post(resid)


class TinyTransformer(HookedRootModule):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_embed = nn.Parameter(torch.randn(cfg.n_ctx, cfg.d_model) * 0.1)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()
        self.unembed = nn.Linear(cfg.d_model, cfg.n_out or cfg.d_vocab)
        self.setup()

    def forward(self, tokens: torch.Tensor, start_at_layer: int | None = None) -> torch.Tensor:
        """Logits; with ``start_at_layer`` (TransformerLens's convention) ``tokens`` is the residual
        stream entering that block, and the blocks before it are skipped."""
        if start_at_layer is None:
            positions = self.pos_embed[: tokens.shape[1]]
            resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(positions.expand(tokens.shape[0], -1, -1))
        else:
            resid = tokens
        for block in self.blocks[start_at_layer or 0:]:
            resid = block(resid)
        return self.unembed(self.ln_final(resid))

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        meta = {"config": json.dumps(asdict(self.cfg))}
        meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "TinyTransformer":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            cfg = TinyConfig(**json.loads(f.metadata()["config"]))
        model = cls(cfg)
        model.load_state_dict(load_file(str(path)))
        return model.eval()

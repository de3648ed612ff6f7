"""Hand-built residual models whose true circuits are known, as tasks.

``logic_task``: four input bits; one gate computes ``a = b0 AND b1``, another
``b = b2 XOR b3``; the readout predicts ``a OR b``. With ``spread=True`` every site
writes through a random rotation of the residual stream, so no node's effect
lives in its own coordinates.

``cancel_task``: the readout's confidence is scaled by the agreement between two
32-bit words ``s`` and ``t`` (+1 when t = s, -1 when t = not s, half of each).
A hypothesis claiming the agreement ignores ``t`` replaces it by a near-zero
value: confident-correct examples lose confidence, unconfident ones gain it, and
the average change nearly cancels while the per-example change does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scrubbing import EXACT, Edge, Hypothesis
from scrubbing.adapters import TorchModuleAdapter
from scrubbing.features import column
from scrubbing.sites import Dataset
from scrubbing.task import Task

D_LOGIC = 8


def _rotation(dim: int, spread: bool, seed: int) -> torch.Tensor:
    if not spread:
        return torch.eye(dim)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))
    return q


class _Write(nn.Module):
    """Write ``fn(read coordinates)`` into chosen residual coordinates, through the rotation."""

    def __init__(self, fn, dims: list[int], rotation: torch.Tensor):
        super().__init__()
        self.fn, self.dims = fn, dims
        self.register_buffer("rotation", rotation)

    def forward(self, resid):
        values = self.fn(resid @ self.rotation.T)
        out = torch.zeros(*values.shape[:-1], self.rotation.shape[0])
        out[..., self.dims] = values
        return out @ self.rotation


class _Readout(nn.Module):
    """The output site: logits ``[0, fn(read coordinates)]`` for the two classes."""

    def __init__(self, fn, rotation: torch.Tensor):
        super().__init__()
        self.fn = fn
        self.register_buffer("rotation", rotation)

    def forward(self, resid):
        logit = self.fn(resid @ self.rotation.T)
        return torch.stack([torch.zeros_like(logit), logit], -1)


class _Embed(nn.Module):
    def __init__(self, columns: slice, dims: list[int], rotation: torch.Tensor):
        super().__init__()
        self.columns, self.dims = columns, dims
        self.register_buffer("rotation", rotation)

    def forward(self, bits):
        out = torch.zeros(bits.shape[0], self.rotation.shape[0])
        out[:, self.dims] = 2.0 * bits[:, self.columns].float() - 1
        return out @ self.rotation


class LogicModel(nn.Module):
    def __init__(self, spread: bool = False, seed: int = 0):
        super().__init__()
        rot = _rotation(D_LOGIC, spread, seed)
        self.embed = _Embed(slice(0, 4), [0, 1, 2, 3], rot)
        self.and_gate = _Write(lambda u: torch.relu(u[..., 0:1] + u[..., 1:2] - 1), [4], rot)
        self.xor_gate = _Write(lambda u: (1 - u[..., 2:3] * u[..., 3:4]) / 2, [5], rot)
        self.readout = _Readout(lambda u: 6 * (u[..., 4] + u[..., 5] - 0.5), rot)

    def forward(self, bits):
        resid = self.embed(bits)
        resid = resid + self.and_gate(resid) + self.xor_gate(resid)
        return self.readout(resid)


def logic_data(copies: int = 100) -> Dataset:
    combos = torch.tensor([[(i >> k) & 1 for k in range(4)] for i in range(16)])
    bits = combos.repeat(copies, 1)
    a = bits[:, 0] & bits[:, 1]
    b = bits[:, 2] ^ bits[:, 3]
    return Dataset(bits, {"a": a, "b": b, "label": a | b, "b01": bits[:, 0] * 2 + bits[:, 1],
                          "b23": bits[:, 2] * 2 + bits[:, 3], "b0": bits[:, 0]})


def _ce(outputs: torch.Tensor, data: Dataset) -> torch.Tensor:
    return F.cross_entropy(outputs, data.columns["label"], reduction="none")


def logic_task(spread: bool = False) -> Task:
    model = LogicModel(spread=spread).eval()
    sites = {"embed": (), "and_gate": ("embed",), "xor_gate": ("embed",), "readout": ("embed", "and_gate", "xor_gate")}
    adapter = TorchModuleAdapter(model, sites, output="readout")
    name = "logic-spread" if spread else "logic"
    return Task(name, adapter, logic_data(), _ce, "a = b0 AND b1, b = b2 XOR b3, label = a OR b")


def logic_hypotheses() -> dict[str, Hypothesis]:
    """The true circuit and the ways to get it wrong, keyed by a short name."""
    def circuit(name, and_feature, xor_feature, with_xor=True, emb_and="b01", emb_xor="b23"):
        h = Hypothesis(name)
        h.node("bits01", "embed", column(emb_and))
        h.node("and", "and_gate", column(and_feature), parents=["bits01"])
        parents = ["and"]
        if with_xor:
            h.node("bits23", "embed", column(emb_xor))
            h.node("xor", "xor_gate", column(xor_feature), parents=["bits23"])
            parents.append("xor")
        h.output(parents=parents)
        return h

    identity = Hypothesis("identity")
    identity.node("embed", "embed", EXACT)
    identity.node("and", "and_gate", EXACT, parents=["embed"])
    identity.node("xor", "xor_gate", EXACT, parents=["embed"])
    identity.output(parents=[Edge("embed", via="direct"), "and", "xor"])
    empty = Hypothesis("empty")
    empty.output()
    swapped = circuit("swapped gate features", "b", "a", emb_and="b23", emb_xor="b01")
    return {
        "true": circuit("true circuit", "a", "b"),
        "identity": identity,
        "empty": empty,
        "forgets xor": circuit("forgets the xor path", "a", "b", with_xor=False),
        "swapped": swapped,
        "coarse and": circuit("and reads b0 only", "b0", "b", emb_and="b0"),
    }


# -- cancellation -----------------------------------------------------------------------
N_BITS = 32


class CancelModel(nn.Module):
    """Logit for the label = beta * (2y - 1) * (1 + kappa * agreement(s, t))."""

    def __init__(self, beta: float = 1.0, kappa: float = 0.5):
        super().__init__()
        d = 2 * N_BITS + 2
        eye = torch.eye(d)
        self.emb_s = _Embed(slice(0, N_BITS), list(range(N_BITS)), eye)
        self.emb_t = _Embed(slice(N_BITS, 2 * N_BITS), list(range(N_BITS, 2 * N_BITS)), eye)
        self.emb_y = _Embed(slice(2 * N_BITS, 2 * N_BITS + 1), [2 * N_BITS], eye)
        self.agree = _Write(lambda u: (u[..., :N_BITS] * u[..., N_BITS:2 * N_BITS]).mean(-1, keepdim=True),
                            [2 * N_BITS + 1], eye)
        self.readout = _Readout(lambda u: beta * u[..., 2 * N_BITS] * (1 + kappa * u[..., 2 * N_BITS + 1]), eye)

    def forward(self, tokens):
        resid = self.emb_s(tokens) + self.emb_t(tokens) + self.emb_y(tokens)
        resid = resid + self.agree(resid)
        return self.readout(resid)


def cancel_data(n: int = 2000, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 2, (n, N_BITS), generator=g)
    same = torch.randint(0, 2, (n,), generator=g)
    t = torch.where(same[:, None] == 1, s, 1 - s)
    y = torch.randint(0, 2, (n,), generator=g)
    return Dataset(torch.cat([s, t, y[:, None]], 1), {"label": y, "agree": same, "const": torch.zeros(n, dtype=torch.long)})


def _negative_logit_difference(outputs: torch.Tensor, data: Dataset) -> torch.Tensor:
    """Linear in the logits, so a symmetric change in confidence averages out exactly."""
    correct = outputs.gather(1, data.columns["label"][:, None])[:, 0]
    return outputs.sum(1) - 2 * correct


def cancel_task() -> Task:
    sites = {"emb_s": (), "emb_t": (), "emb_y": (), "agree": ("emb_s", "emb_t", "emb_y"),
             "readout": ("emb_s", "emb_t", "emb_y", "agree")}
    adapter = TorchModuleAdapter(CancelModel().eval(), sites, output="readout")
    return Task("cancel", adapter, cancel_data(), _negative_logit_difference,
                "confidence scaled by the agreement of s and t; loss = -(logit difference)")


def cancel_hypotheses() -> dict[str, Hypothesis]:
    ignores_t = Hypothesis("agreement ignores t", "claims the agreement is computed from s alone")
    ignores_t.node("s", "emb_s", EXACT)
    ignores_t.node("agree", "agree", column("const"), parents=["s"])
    ignores_t.node("y", "emb_y", column("label"))
    ignores_t.output(parents=["agree", "y"])
    true = Hypothesis("agreement of s and t", "the agreement is a function of whether t equals s")
    true.node("s", "emb_s", EXACT)
    true.node("t", "emb_t", EXACT)
    true.node("agree", "agree", column("agree"), parents=["s", "t"])
    true.node("y", "emb_y", column("label"))
    true.output(parents=["agree", "y"])
    return {"ignores t": ignores_t, "true": true}


# -- interaction: a cancellation both adversaries can expose ---------------------------------
class InteractionModel(nn.Module):
    """Logit for the label = beta * (2y - 1) * (1 + kappa * m * c), with m, c, y as ±1.

    In the data c agrees with the label 80% of the time and m is independent of both,
    so E[m c] = 0: resampling m leaves the mean loss where it was, while every example
    whose m flips moves by 2 * beta * kappa, up or down.
    """

    def __init__(self, beta: float = 1.0, kappa: float = 0.5):
        super().__init__()
        eye = torch.eye(4)
        self.emb_y = _Embed(slice(0, 1), [0], eye)
        self.emb_c = _Embed(slice(1, 2), [1], eye)
        self.emb_m = _Embed(slice(2, 3), [2], eye)
        self.gate = _Write(lambda u: u[..., 1:2] * u[..., 2:3], [3], eye)
        self.readout = _Readout(lambda u: beta * u[..., 0] * (1 + kappa * u[..., 3]), eye)

    def forward(self, tokens):
        resid = self.emb_y(tokens) + self.emb_c(tokens) + self.emb_m(tokens)
        return self.readout(resid + self.gate(resid))


def interaction_data(n: int = 3000, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    agrees = torch.rand(n, generator=g) < 0.8
    c = torch.where(agrees, y, 1 - y)
    m = torch.randint(0, 2, (n,), generator=g)
    return Dataset(torch.stack([y, c, m], 1), {"label": y, "c": c, "m": m, "gate": (c == m).long()})


def interaction_task() -> Task:
    sites = {"emb_y": (), "emb_c": (), "emb_m": (), "gate": ("emb_y", "emb_c", "emb_m"),
             "readout": ("emb_y", "emb_c", "emb_m", "gate")}
    adapter = TorchModuleAdapter(InteractionModel().eval(), sites, output="readout")
    return Task("interaction", adapter, interaction_data(), _negative_logit_difference,
                "confidence scaled by m*c; c agrees with the label 80% of the time; loss = -(logit difference)")


def interaction_hypotheses() -> dict[str, Hypothesis]:
    def claim(name, gate_feature, m_feature, description):
        h = Hypothesis(name, description)
        h.node("y", "emb_y", column("label"))
        h.node("c", "emb_c", column("c"))
        h.node("m", "emb_m", m_feature)
        h.node("gate", "gate", column(gate_feature), parents=["c", "m"])
        h.output(parents=["y", "gate"])
        return h

    return {
        "ignores m": claim("gate ignores m", "c", column("label"),
                           "claims the gate reads c, and m carries nothing beyond the label"),
        "true": claim("gate computes m*c", "gate", column("m"), "the gate is the product of m and c"),
    }


class SignModel(nn.Module):
    """The canonical cancellation: out = A + B with B = ±c, the sign an independent bit; the label is A + c.

    Claiming B irrelevant resamples the sign: each example's loss jumps between 0 and (2c)² with equal odds, so
    the mean does not move while every example's loss moves by (2c)² half the time. E[|Δloss|] then *equals* the
    noise floor (the clean run is just one more resample): only scale, the per-example change against the
    baseline's, tells it from a harmless node. With c small, B is exactly that harmless node.
    """

    def __init__(self, c: float = 1.0):
        super().__init__()
        self.a, self.b, self.out = _Column(0, 1.0), _Column(1, c), nn.Identity()

    def forward(self, x):
        return self.out(self.a(x) + self.b(x))


class _Column(nn.Module):
    def __init__(self, index: int, scale: float):
        super().__init__()
        self.index, self.scale = index, scale

    def forward(self, x):
        return self.scale * x[:, self.index:self.index + 1]


def sign_data(n: int = 3000, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-3, 4, (n,), generator=g).float()
    sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    return Dataset(torch.stack([a, sign], dim=1), {"a": a.long() + 3, "sign": (sign > 0).long()})


def sign_task(c: float = 1.0, n: int = 3000) -> Task:
    def squared_error(outputs: torch.Tensor, data: Dataset) -> torch.Tensor:
        return (outputs[:, 0] - (data.inputs[:, 0] + c)) ** 2

    adapter = TorchModuleAdapter(SignModel(c), {"a": (), "b": (), "out": ("a", "b")}, output="out")
    return Task(f"sign (c={c:g})", adapter, sign_data(n), squared_error)


def sign_hypotheses() -> dict[str, Hypothesis]:
    ignores = Hypothesis("ignores the sign", "out reads A alone: B = ±c is left to the random draw")
    ignores.node("A", "a", column("a"))
    ignores.output(parents=["A"])
    true = Hypothesis("A and the sign", "out reads A and the sign of B")
    true.node("A", "a", column("a"))
    true.node("sign", "b", column("sign"))
    true.output(parents=["A", "sign"])
    return {"ignores sign": ignores, "true": true}

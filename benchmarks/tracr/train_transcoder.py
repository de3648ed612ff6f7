"""Train the transcoder shipped for the latent-level claims (``hypotheses/tracr_reverse_transcoder.py``).

A ReLU transcoder for MLP ``m2`` of the compiled ``reverse`` program (the MLP that writes ``opp_idx-1`` from
``opp_idx``): its latents read m2's input (the slot ``in``: the residual stream before m2) and their decoded sum
predicts m2's output, on every position of every example. A seeded full-batch Adam run with an L1 penalty on
the latents (weighted by their decoder norms), then the decoder refitted by least squares with the latents fixed
(less shrinkage). Each live latent is labelled with the ``opp_idx-1`` value it fires for most; the labels ship in
the checkpoint's metadata (``scrubbing.split.Transcoder.load`` reads the tensors ``W_enc [41, 16]``, ``b_enc``,
``W_dec [16, 41]``, ``b_dec``).

    PYTHONPATH=. python benchmarks/tracr/train_transcoder.py    # writes sae/reverse_m2_transcoder.safetensors here
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks.tracr.task import load_task
from benchmarks.tracr.train_sae import labels, refit_decoder

SITE, SLOT, OP, N_LATENTS, SEED = "m2", "in", "op:opp_idx-1", 16, 0
ENCODER_L1, PRUNE = 1e-3, 0.2
OUT = Path(__file__).with_name("sae") / "reverse_m2_transcoder.safetensors"


def activations(task) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The site's clean input and output and the op's value, one row per (example, position)."""
    with torch.no_grad():
        x = task.adapter.clean_slots(task.data.inputs)[(SITE, SLOT)]
        y = task.adapter.clean(task.data.inputs)[SITE]
    return (x.reshape(-1, x.shape[-1]).float(), y.reshape(-1, y.shape[-1]).float(),
            task.data.columns[OP].reshape(-1))


def encode(weights: dict, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x @ weights["W_enc"] + weights["b_enc"])


def train(x: torch.Tensor, y: torch.Tensor, n_latents: int = N_LATENTS, seed: int = SEED, steps: int = 3000,
          l1: float = 1e-3, encoder_l1: float = ENCODER_L1, prune: float = PRUNE) -> dict[str, torch.Tensor]:
    """Adam on reconstruction + ``l1`` x the latents (weighted by their decoder norms) + ``encoder_l1`` x the
    encoder's weights; then each latent's encoder weights under ``prune`` x its largest are set to zero (so a
    latent reads few directions) and the decoder is refitted."""
    g = torch.Generator().manual_seed(seed)
    d_in, d_out = x.shape[1], y.shape[1]
    W_enc = torch.nn.Parameter(torch.randn(d_in, n_latents, generator=g) / d_in ** 0.5)
    b_enc = torch.nn.Parameter(torch.zeros(n_latents))
    W_dec = torch.nn.Parameter(torch.randn(n_latents, d_out, generator=g) / n_latents ** 0.5)
    b_dec = torch.nn.Parameter(y.mean(0).clone())
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=3e-3)
    for _ in range(steps):
        a = torch.relu(x @ W_enc + b_enc)
        loss = ((a @ W_dec + b_dec - y) ** 2).sum(1).mean() + l1 * (a * W_dec.norm(dim=1)).sum(1).mean() \
            + encoder_l1 * W_enc.abs().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # prune the encoder, then refit the decoder on the final latents: least squares
        W_enc[W_enc.abs() < prune * W_enc.abs().amax(0, keepdim=True)] = 0
        W_dec_new, b_dec_new = refit_decoder(torch.relu(x @ W_enc + b_enc), y)
        W_dec.copy_(W_dec_new)
        b_dec.copy_(b_dec_new)
    return {name: p.detach().clone().contiguous() for name, p in zip(("W_enc", "b_enc", "W_dec", "b_dec"), params)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder-l1", type=float, default=ENCODER_L1, help="penalty on the encoder's weights")
    parser.add_argument("--prune", type=float, default=PRUNE, help="encoder weights under this share of a "
                        "latent's largest are set to zero (0: none)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the same floating-point reductions on every machine size: the same weights
    torch.manual_seed(SEED)
    x, y, op = activations(load_task("reverse"))
    weights = train(x, y, encoder_l1=args.encoder_l1, prune=args.prune)
    a = encode(weights, x)
    recon = a @ weights["W_dec"] + weights["b_dec"]
    error = ((recon - y).norm(dim=1).max() / y.norm(dim=1).max()).item()  # (m2 writes 0 at BOS: no per-row ratio)
    latent_labels = labels(a, op)
    args.out.parent.mkdir(exist_ok=True)
    save_file(weights, str(args.out), metadata={
        "site": SITE, "slot": SLOT, "op": OP, "seed": str(SEED), "encoder_l1": str(args.encoder_l1),
        "prune": str(args.prune), "labels": json.dumps(latent_labels), "max_error_over_max_norm": f"{error:.3g}"})
    print(f"wrote {args.out}: {len(latent_labels)} live latents of {N_LATENTS}, labels {latent_labels}, "
          f"largest reconstruction error {error:.3g} of m2's largest output norm")


if __name__ == "__main__":
    main()

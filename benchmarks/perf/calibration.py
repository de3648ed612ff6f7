"""Calibration's cost on the GPT-2-small shape, in clean passes over the references, and its peak memory (issue 13).

Each number of references runs in a fresh process (so each peak RSS is its own), torch on one thread: a random
GPT-2 (12 layers x 12 heads) booted as a TransformerLens bridge (``realsize.boot``), random tokens; one clean
forward pass of the bridge over the references (the unit), then ``calibrate`` on ``calibration_rows``
examples (as ``scrub`` does) with a fresh adapter and the default memory budget (or ``--budget-mb``). Reports
the ratio, calibration's model calls and the rows they ran, the chunks, and the process's peak RSS (VmHWM)
before calibration (model, data and the clean pass) and after it.

    python -m benchmarks.perf.calibration                 # d_model 768, 16 tokens, vocab 1000; 64 and 256 refs
    python -m benchmarks.perf.calibration --d-model 96 --sizes 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from benchmarks.perf.realsize import peak_rss_mb, boot, tokens
from scrubbing.adapters import HookedAdapter
from scrubbing.sites import CALIBRATION_MEMORY_BUDGET, calibration_rows


def measure(bridge, data, n_refs: int, budget: int | None) -> dict:
    refs = data.inputs[:n_refs]
    adapter = HookedAdapter.for_bridge(bridge)  # its settings (per-head inputs and results) apply to the unit too
    with torch.no_grad():
        bridge(refs[:8])  # warm-up
        start = time.perf_counter()
        bridge(refs)
        clean_s = time.perf_counter() - start
    before = peak_rss_mb()
    rows = calibration_rows(len(data), n_refs)
    start = time.perf_counter()
    calibration = adapter.calibrate(data.inputs[:rows], memory_budget=budget)
    calibrate_s = time.perf_counter() - start
    per_row = adapter.row_bytes(data.inputs[:rows])
    return {"n_refs": n_refs, "calibration_rows": rows, "check_rows": calibration.check_rows,
            "budget_mb": None if budget is None else round(budget / 2**20),
            "rows_per_chunk": adapter.calibration_chunk_rows(data.inputs[:rows], budget, calibration.check_rows),
            "readings_mb_per_row": round(per_row / 2**20, 2) if per_row else None,
            "clean_pass_s": round(clean_s, 3), "calibrate_s": round(calibrate_s, 3),
            "calibration_over_clean": round(calibrate_s / clean_s, 2), "calls": calibration.calls,
            "rows_run": calibration.rows_run, "shortcuts": len(calibration.shortcuts),
            "sites": len(adapter.sites), "uses_context": calibration.uses_context,
            "peak_rss_mb_before_calibration": round(before), "peak_rss_mb": round(peak_rss_mb())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--ctx", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--budget-mb", type=float, default=CALIBRATION_MEMORY_BUDGET / 2**20,
                        help="calibrate's memory_budget in MiB (0: every row at once)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # this process measures one size
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    if not args.one:  # a fresh process per size: each peak RSS is that size's alone
        for n in sizes:
            command = [sys.executable, "-m", "benchmarks.perf.calibration", "--one", "--sizes", str(n),
                       "--d-model", str(args.d_model), "--ctx", str(args.ctx), "--vocab", str(args.vocab),
                       "--budget-mb", str(args.budget_mb)]
            subprocess.run(command, check=True)
        print(f"gpt2 12x12 d_model {args.d_model}, {args.ctx} tokens, vocab {args.vocab}, one thread, "
              f"memory budget {args.budget_mb:g} MiB", file=sys.stderr)
        return
    torch.set_num_threads(1)
    bridge = boot("gpt2", 12, 12, args.d_model, vocab=args.vocab, n_ctx=args.ctx)
    data = tokens(512, args.ctx, args.vocab)
    budget = int(args.budget_mb * 2**20) or None
    print(json.dumps(measure(bridge, data, sizes[0], budget)), flush=True)


if __name__ == "__main__":
    main()

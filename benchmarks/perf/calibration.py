"""Calibration's cost on the GPT-2-small shape, in clean passes over the references (issue 13).

One process, torch on one thread: a random GPT-2 (12 layers x 12 heads) booted as a TransformerLens bridge
(``realsize.boot``), random tokens; per number of references, one clean forward pass of the bridge over
them (the unit), then ``calibrate`` on ``calibration_rows`` examples (as ``scrub`` does) with a fresh
adapter. Reports the ratio, calibration's model calls and the rows they ran, and the process's peak RSS.

    python -m benchmarks.perf.calibration                 # d_model 768, 16 tokens, vocab 1000; 64 and 256 refs
    python -m benchmarks.perf.calibration --d-model 96 --sizes 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks.perf.realsize import _vm_hwm_mb, boot, tokens
from scrubbing.adapters import HookedAdapter
from scrubbing.sites import calibration_rows


def measure(bridge, data, n_refs: int) -> dict:
    refs = data.inputs[:n_refs]
    adapter = HookedAdapter.for_bridge(bridge)  # its settings (per-head inputs and results) apply to the unit too
    with torch.no_grad():
        bridge(refs[:8])  # warm-up
        start = time.perf_counter()
        bridge(refs)
        clean_s = time.perf_counter() - start
    rows = calibration_rows(len(data), n_refs)
    start = time.perf_counter()
    calibration = adapter.calibrate(data.inputs[:rows])
    calibrate_s = time.perf_counter() - start
    return {"n_refs": n_refs, "calibration_rows": rows, "check_rows": calibration.check_rows,
            "clean_pass_s": round(clean_s, 3), "calibrate_s": round(calibrate_s, 3),
            "calibration_over_clean": round(calibrate_s / clean_s, 2), "calls": calibration.calls,
            "rows_run": calibration.rows_run, "shortcuts": len(calibration.shortcuts),
            "sites": len(adapter.sites), "uses_context": calibration.uses_context,
            "peak_rss_mb_so_far": round(_vm_hwm_mb())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--ctx", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bridge = boot("gpt2", 12, 12, args.d_model, vocab=args.vocab, n_ctx=args.ctx)
    data = tokens(512, args.ctx, args.vocab)
    for n in (int(x) for x in args.sizes.split(",")):
        print(json.dumps(measure(bridge, data, n)), flush=True)
    print(f"gpt2 12x12 d_model {args.d_model}, {args.ctx} tokens, vocab {args.vocab}", file=sys.stderr)


if __name__ == "__main__":
    main()

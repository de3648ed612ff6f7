"""The performance suite: one command, one process (plus one fresh process per memory size).

    python -m benchmarks.perf.run            # ~3 minutes on the 2-core CPU machine
    python -m benchmarks.perf.run --quick    # a smoke test (~1 minute); its figures are not the reported ones

Writes ``benchmarks/perf/results.json`` and prints a summary. What each figure means is in
``benchmarks/perf/README.md``. Every comparison is a ratio of two timings taken in the same
process, interleaved (engine, other, engine, other, ...), each the best of ``--reps`` runs:
the machine is shared, so absolute seconds are only context.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import gc
import io
import json
import os
import platform
import pstats
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scrubbing.execute import Engine
from scrubbing.reference import reference_outputs

from . import cases
from .tl_loop import tl_outputs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
COMMAND = "python -m benchmarks.perf.run"
HEADLINE_PAREN = "claims 1+2"  # DESIGN.md §4's published paren claim; every paren hypothesis is in the breakdown
GOALS = {"speedup_vs_reference": (">=", 50.0), "efficiency_vs_limit": (">=", 0.7),
         "ratio_vs_tl_loop": ("<=", 1.0), "memory_ratio_64k_4k": ("<=", 1.5)}


# -- timing helpers -------------------------------------------------------------------------------------
def timed(fn):
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved(reps: int, **fns):
    """Run each function ``reps`` times, alternating; per name: (best seconds, all seconds, last output)."""
    times = {name: [] for name in fns}
    outs = {}
    for _ in range(reps):
        for name, fn in fns.items():
            seconds, outs[name] = timed(fn)
            times[name].append(seconds)
    return {name: (min(ts), ts, outs[name]) for name, ts in times.items()}


def plain_forward(model, inputs: torch.Tensor, rows: int, batch_size: int) -> None:
    """The limit: ``rows`` full forward passes of the model itself (no hooks), batched like the engine."""
    index = torch.arange(rows) % len(inputs)
    with torch.no_grad():
        for start in range(0, rows, batch_size):
            model(inputs[index[start:start + batch_size]])


class MemoClean:
    """The task's adapter with ``clean`` memoised across calls (by input bytes).

    Used only to *estimate* what the reference would cost on all of the engine's references:
    its own memo of clean runs lives inside one ``reference_outputs`` call, so a short run pays
    for clean runs that a long run would share. Everything else is delegated unchanged.
    """

    def __init__(self, adapter):
        self._adapter = adapter
        self.memo: dict[bytes, dict] = {}

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def clean(self, inputs):
        key = inputs.cpu().numpy().tobytes()
        if key not in self.memo:
            self.memo[key] = self._adapter.clean(inputs)
        return self.memo[key]


def reference_clean_examples(plan) -> torch.Tensor:
    """The examples the reference runs cleanly: every leaf instance's example and every other instance's draw r."""
    found = [plan.refs[:0]]
    for path, inst in plan.instances.items():
        found.append((inst.examples if plan.recipes[path[-1]] is None else inst.draws).reshape(-1))
    return torch.unique(torch.cat(found))


def projected_reference(task, hypothesis, plan, k: int) -> dict:
    """Reference seconds for all of ``plan``'s references: distinct clean runs x their batch-1 cost + references x
    the per-reference cost with clean runs already cached (both measured on the first ``k`` references)."""
    chunk = plan.chunk(0, k)
    memo = MemoClean(task.adapter)
    needed = reference_clean_examples(chunk)
    inputs = task.data.inputs
    warm_s, _ = timed(lambda: [memo.clean(inputs[e:e + 1]) for e in needed.tolist()])
    before = len(memo.memo)
    bound = hypothesis.bind(task.adapter, task.data)
    cached_s, _ = timed(lambda: reference_outputs(chunk, memo, task.data, bound))
    per_clean, per_ref = warm_s / max(len(needed), 1), cached_s / k
    distinct = len(reference_clean_examples(plan))
    return {"clean_run_s": per_clean, "per_ref_s_with_clean_cached": per_ref, "distinct_clean_examples": distinct,
            "memo_misses": len(memo.memo) - before,
            "projected_s": distinct * per_clean + len(plan.refs) * per_ref}


def warm_up(task, plan) -> None:
    Engine(task.adapter, task.data).outputs(plan.chunk(0, 32))


# -- 1 + 2: engine vs reference, engine vs the limit ----------------------------------------------------------
def engine_case(case: cases.Case, n_refs: int, k_ref: int, reps: int, log) -> dict:
    task, hyp = case.task, case.hypothesis
    plan_s, plan = timed(lambda: cases.plan_for(task, hyp, n_refs, seed=0))
    warm_up(task, plan)
    model = task.adapter.model
    engines = []

    def run_engine():
        engine = Engine(task.adapter, task.data)
        engines.append(engine)
        return engine.outputs(plan)

    # the limit's row count comes from the engine's counters, so the engine runs first: engine, limit, engine, ...
    first_s, outputs = timed(run_engine)
    stats = dict(engines[-1].stats)
    rows = stats["clean_rows"] + stats["computed_rows"]
    batch = engines[-1].batch_size
    limit = lambda: plain_forward(model, task.data.inputs, rows, batch)  # noqa: E731
    measured = interleaved(reps - 1, limit=limit, engine=run_engine) if reps > 1 else None
    engine_times = [first_s] + (measured["engine"][1] if measured else [])
    limit_times = (measured["limit"][1] if measured else []) + [timed(limit)[0]]
    engine_s, limit_s = min(engine_times), min(limit_times)
    assert all(e.stats == stats for e in engines), "the engine's row counts changed between identical runs"

    # the reference: k and 2k references of the same plan (its memo cache warms up with more references)
    # (best of ``reps`` too, like the engine: each call starts with an empty memo, so the runs are alike)
    ref = interleaved(reps, k=lambda: reference_outputs(plan.chunk(0, k_ref), task.adapter, task.data, hyp),
                      two_k=lambda: reference_outputs(plan.chunk(0, 2 * k_ref), task.adapter, task.data, hyp))
    (ref_k_s, _, _), (ref_2k_s, ref_2k_all, ref_2k) = ref["k"], ref["two_k"]
    diff = float((ref_2k - outputs[: 2 * k_ref]).abs().max())
    engine_rate = len(plan.refs) / engine_s
    ref_rate = 2 * k_ref / ref_2k_s
    projected = projected_reference(task, hyp, plan, 2 * k_ref)
    result = {
        "task": task.name, "hypothesis": hyp.name, "n_refs": len(plan.refs), "plan_s": plan_s,
        "engine_s": engine_s, "engine_s_all": engine_times, "engine_refs_per_s": engine_rate,
        "engine_batch_size": batch, "engine_chunk_refs": engines[-1].chunk_refs, "engine_stats": stats,
        "reference": {"refs": [k_ref, 2 * k_ref], "seconds": [ref_k_s, ref_2k_s], "seconds_2k_all": ref_2k_all,
                      "refs_per_s": ref_rate,
                      "refs_per_s_at_k": k_ref / ref_k_s, "max_abs_diff_vs_engine": diff,
                      "agrees": diff <= 1e-4 * max(1.0, float(outputs.abs().max()))},
        "speedup_vs_reference": engine_rate / ref_rate,
        "speedup_vs_reference_at_k": engine_rate / (k_ref / ref_k_s),
        "reference_projected": projected,
        "speedup_vs_reference_projected": projected["projected_s"] / engine_s,
        "reps": reps, "limit_rows": rows, "limit_s": limit_s, "limit_s_all": limit_times,
        "efficiency_vs_limit": limit_s / engine_s,
        "notes": case.notes,
    }
    log(f"  {case.key}: engine {engine_s:.2f}s/{len(plan.refs)} refs, reference {ref_2k_s:.2f}s/{2 * k_ref} refs "
        f"-> {result['speedup_vs_reference']:.1f}x (projected to {len(plan.refs)} refs: "
        f"{result['speedup_vs_reference_projected']:.1f}x); limit {limit_s:.2f}s/{rows} rows -> eff "
        f"{result['efficiency_vs_limit']:.2f}")
    return result


# -- 3: engine vs a hand-written TransformerLens loop --------------------------------------------------------
def tl_case(key: str, task, n_refs: int, reps: int, log) -> dict:
    hyp = cases.one_head(task)
    plan = cases.plan_for(task, hyp, n_refs, seed=0)
    warm_up(task, plan)
    model = task.adapter.model
    site = task.adapter.spec[hyp.nodes["head"].site] if hasattr(task.adapter, "spec") else None
    layer, head = int(site.output.hook.split(".")[1]), site.output.head
    batch = Engine(task.adapter, task.data).batch_size
    engines = []

    def run_engine():
        engine = Engine(task.adapter, task.data)
        engines.append(engine)
        return engine.outputs(plan)

    measured = interleaved(reps, engine=run_engine,
                           tl=lambda: tl_outputs(model, task.data.inputs, plan, layer, head, batch))
    data = task.data.subset(plan.refs)
    with torch.no_grad():
        ours, theirs = task.loss(measured["engine"][2], data), task.loss(measured["tl"][2], data)
    diff = float((ours - theirs).abs().max())
    result = {
        "task": task.name, "hypothesis": hyp.name, "n_refs": len(plan.refs), "batch_size": batch,
        "engine_s": measured["engine"][0], "engine_s_all": measured["engine"][1],
        "tl_loop_s": measured["tl"][0], "tl_loop_s_all": measured["tl"][1],
        "ratio_vs_tl_loop": measured["engine"][0] / measured["tl"][0],
        "engine_stats": engines[-1].stats, "tl_loop_forward_rows": 3 * len(plan.refs),
        "max_abs_loss_diff": diff, "agrees": diff <= 1e-4,
    }
    log(f"  {key}: engine {result['engine_s']:.2f}s, TL loop {result['tl_loop_s']:.2f}s -> ratio "
        f"{result['ratio_vs_tl_loop']:.2f} (loss diff {diff:.1e})")
    return result


# -- 4: memory -----------------------------------------------------------------------------------------------
def memory_case(case: str, sizes: list[int], threads: int, log) -> dict:
    runs = {}
    for refs in sizes:
        cmd = [sys.executable, "-m", "benchmarks.perf.memory", "--refs", str(refs), "--case", case,
               "--threads", str(threads)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            return {"error": f"{' '.join(cmd)} failed (rc {proc.returncode}): {proc.stderr[-2000:]}"}
        runs[refs] = json.loads(lines[-1])
        if "error" in runs[refs]:
            return {"error": runs[refs]["error"]}
        log(f"  {case} {refs} refs: peak RSS {runs[refs]['peak_rss_kib'] / 1024:.0f} MiB "
            f"({runs[refs]['seconds']:.1f}s)")
    small, big = runs[sizes[0]], runs[sizes[-1]]
    inc = lambda r: r["peak_rss_kib"] - r["rss_before_run_kib"]  # noqa: E731
    return {
        "runs": {str(k): v for k, v in runs.items()},
        "memory_ratio": big["peak_rss_kib"] / small["peak_rss_kib"],
        "increment_ratio": inc(big) / max(inc(small), 1),
        "how": (f"one fresh process per size (python -m benchmarks.perf.memory); references sampled with replacement "
                f"from the {small['data_size']}-example data set; default chunk_refs={small['chunk_refs']}, "
                f"batch_size={small['batch_size']}; peak = VmHWM, the kernel's high-water mark (whole process); increment = peak - RSS just "
                "before the plan is made (after imports, model, data and a 64-reference warm-up run)."),
    }


# -- 5: scaling --------------------------------------------------------------------------------------------------
def scaling(reps: int, quick: bool, log) -> dict:
    out = {}
    task = cases.synthetic_task(4)
    hyp = cases.deep_chain(4)
    sizes = [200, 800] if quick else [500, 2000, 8000]
    rows = {}
    for n in sizes:
        plan = cases.plan_for(task, hyp, n, seed=0, replace=True)
        warm_up(task, plan)
        seconds = interleaved(reps if n < 8000 else 1, e=lambda: Engine(task.adapter, task.data).outputs(plan))["e"][0]
        rows[str(n)] = {"seconds": seconds, "seconds_per_1k_refs": 1000 * seconds / n}
        log(f"  refs {n}: {seconds:.2f}s")
    base = rows[str(sizes[0])]["seconds"]
    for n in sizes:
        rows[str(n)]["time_ratio_vs_smallest"] = rows[str(n)]["seconds"] / base
        rows[str(n)]["refs_ratio_vs_smallest"] = n / sizes[0]
    out["refs"] = {"task": task.name, "hypothesis": hyp.name, "cases": rows,
                   "note": "references sampled with replacement (the 8000 case exceeds the 4000-example data set)"}

    n_refs, k = (300, 3) if quick else (1000, 5)
    depth_rows = {}
    for depth in range(1, 5):
        heads = [f"a{layer}.0" for layer in range(4 - depth, 4)]
        h = cases.chain_hypothesis(heads, embed=False, name=f"depth {depth}: " + "->".join(heads))
        depth_rows[str(depth)] = _scaling_point(task, h, n_refs, k, reps)
        log(f"  hypothesis depth {depth}: {depth_rows[str(depth)]['engine_s']:.2f}s, "
            f"{depth_rows[str(depth)]['speedup_vs_reference']:.0f}x the reference")
    _ratios(depth_rows)
    out["hypothesis_depth"] = {"task": task.name, "n_refs": n_refs, "cases": depth_rows,
                               "note": "a chain of d heads ending at a3.0 (top) with the lowest head a leaf; "
                                       "one token mod 2 per node"}

    layer_rows = {}
    for n_layers in range(1, 5):
        t = cases.synthetic_task(n_layers)
        h = cases.chain_hypothesis([f"a{n_layers - 1}.0"], embed=True, name=f"embed->a{n_layers - 1}.0->output")
        layer_rows[str(n_layers)] = _scaling_point(t, h, n_refs, k, reps)
        log(f"  model depth {n_layers}: {layer_rows[str(n_layers)]['engine_s']:.2f}s")
    _ratios(layer_rows)
    out["model_depth"] = {"n_refs": n_refs, "cases": layer_rows,
                          "note": "random TinyTransformer with 1..4 layers (2 heads, MLPs); hypothesis "
                                  "embed -> last layer's head 0 -> output"}
    return out


def _scaling_point(task, hypothesis, n_refs: int, k: int, reps: int) -> dict:
    plan = cases.plan_for(task, hypothesis, n_refs, seed=0)
    warm_up(task, plan)
    engines = []

    def run_engine():
        engines.append(Engine(task.adapter, task.data))
        return engines[-1].outputs(plan)

    run_engine()
    stats = engines[-1].stats
    rows = stats["clean_rows"] + stats["computed_rows"]
    m = interleaved(reps, engine=run_engine,
                    limit=lambda: plain_forward(task.adapter.model, task.data.inputs, rows, engines[-1].batch_size))
    ref_s, _ = timed(lambda: reference_outputs(plan.chunk(0, k), task.adapter, task.data, hypothesis))
    return {"hypothesis": hypothesis.name, "engine_s": m["engine"][0], "engine_stats": stats,
            "limit_s": m["limit"][0], "efficiency_vs_limit": m["limit"][0] / m["engine"][0],
            "reference_s_per_ref": ref_s / k,
            "speedup_vs_reference": (len(plan.refs) / m["engine"][0]) / (k / ref_s)}


def _ratios(rows: dict) -> None:
    base = rows[min(rows, key=int)]["engine_s"]
    for row in rows.values():
        row["time_ratio_vs_smallest"] = row["engine_s"] / base


# -- profile -------------------------------------------------------------------------------------------------------
class TimedAdapter:
    """The task's adapter with a stopwatch on the model calls (``clean`` and ``run``); all else delegated."""

    def __init__(self, adapter):
        self._adapter = adapter
        self.model_s = 0.0

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.model_s += time.perf_counter() - start

    def clean(self, *args, **kwargs):
        return self._timed(self._adapter.clean, *args, **kwargs)

    def run(self, *args, **kwargs):
        return self._timed(self._adapter.run, *args, **kwargs)


def timed_engine(adapter, data) -> Engine:
    """The engine on a timed adapter: its own ``seconds`` split the phases, the adapter times the model calls."""
    return Engine(TimedAdapter(adapter), data)


def profile_case(case: cases.Case, n_refs: int, log) -> dict:
    task = case.task
    plan = cases.plan_for(task, case.hypothesis, n_refs, seed=0)
    warm_up(task, plan)
    engine = timed_engine(task.adapter, task.data)
    total, _ = timed(lambda: engine.outputs(plan))
    computed = sum(s["seconds"] for s in engine.seconds["sites"].values())
    phases = {"total_s": total, "clean_bank_s": engine.seconds["clean_bank"], "site_compute_s": computed,
              "compile_and_bookkeeping_s": total - computed - engine.seconds["clean_bank"],
              "model_calls_s": engine.adapter.model_s}
    phases["fractions"] = {k[:-2]: v / total for k, v in phases.items() if k != "total_s" and k.endswith("_s")}
    sites = {name: {**v, "fraction": v["seconds"] / total, "ms_per_row": 1000 * v["seconds"] / max(v["rows"], 1)}
             for name, v in engine.seconds["sites"].items()}

    profiler = cProfile.Profile()
    profiler.enable()
    Engine(task.adapter, task.data).outputs(plan)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    total_tt = sum(v[2] for v in stats.stats.values())
    top = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:12]
    tottime = [{"function": f"{Path(f).name}:{line}({name})", "calls": v[1], "tottime_s": v[2],
                "fraction": v[2] / total_tt} for (f, line, name), v in top]
    log(f"  profile of {case.key}: clean bank {phases['fractions']['clean_bank']:.0%}, site computations "
        f"{phases['fractions']['site_compute']:.0%}, compile/bookkeeping {phases['fractions']['compile_and_bookkeeping']:.0%}; "
        f"inside model calls {phases['fractions']['model_calls']:.0%}")
    return {"case": case.key, "hypothesis": case.hypothesis.name, "n_refs": len(plan.refs), "phases": phases,
            "sites": sites, "engine_stats": engine.stats, "cprofile_top_tottime": tottime}


def adapter_probe(task, batch_size: int, reps: int = 3) -> dict:
    """What the adapter's calls cost against the bare model, on one batch (seconds, best of ``reps``).

    - ``plain_forward``: ``model(x)``, no hooks (the unit of the limit);
    - ``adapter_clean``: ``adapter.clean(x)``, the engine's clean pass (reads every site's output);
    - ``adapter_run_output``: ``adapter.run("output", ...)``, the output site recomputed through the adapter
      (its verified shortcut, if any); ``adapter_run_output_full``: the same from the input, as the reference
      does; ``ln_final_unembed``: the model's head applied to the same input directly.
    """
    adapter, model = task.adapter, task.adapter.model
    x = task.data.inputs[:batch_size]
    slots = adapter.clean_slots(x)
    slot = {"in": slots[(adapter.output, "in")]}
    ones = [task.data.inputs[i:i + 1] for i in range(64)]
    with torch.no_grad():
        one = interleaved(reps, plain_forward_batch1=lambda: [model(o) for o in ones],
                          adapter_clean_batch1=lambda: [adapter.clean(o) for o in ones])
        m = interleaved(reps, plain_forward=lambda: model(x), adapter_clean=lambda: adapter.clean(x),
                        adapter_run_output=lambda: adapter.run(adapter.output, slot, x),
                        adapter_run_output_full=lambda: adapter.run(adapter.output, slot, x, shortcut=False),
                        ln_final_unembed=lambda: model.unembed(model.ln_final(slot["in"])))
    out = {name: v[0] for name, v in m.items()}
    out["rows"] = len(x)
    out.update({f"{name}_ms_per_row": 1000 * v[0] / len(ones) for name, v in one.items()})
    out["plain_forward_batched_ms_per_row"] = 1000 * out["plain_forward"] / len(x)
    out["batching_gain_plain_forward"] = out["plain_forward_batch1_ms_per_row"] / out["plain_forward_batched_ms_per_row"]
    out["shortcuts"] = sorted(adapter.shortcuts)
    return out


# -- the command ----------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Measure the engine: vs the reference, the limit, a TransformerLens "
                                                 "loop; memory and scaling. Writes benchmarks/perf/results.json.")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not the reported figures")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement (best is kept)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the machine is shared; more threads oversubscribe it)")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: engine,tl,memory,scaling,profile")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    skip = set(filter(None, args.skip.split(",")))
    n_refs = 300 if quick else 1000
    started = time.perf_counter()
    load_start = os.getloadavg()
    notes: list[str] = []

    from rich.console import Console
    console = Console(width=max(Console().width, 150))
    log = console.print

    # tasks (re-checked every run: the bundled tasks are being written by others)
    paren, note = cases.paren_task()
    notes += [note] if note else []
    induction, note = cases.induction_task()
    notes += [note] if note else []
    synthetic = cases.synthetic_task(4)
    engine_cases: list[tuple[cases.Case, int]] = []
    if paren is not None:
        hyps, note = cases.hypotheses_from("hypotheses/paren_balance.py")
        if hyps is None:
            notes.append(note)
        else:
            chosen = hyps if not quick else [h for h in hyps if h.name == HEADLINE_PAREN][:1] or hyps[:1]
            engine_cases += [(cases.Case(f"paren/{h.name}", paren, h),
                              3 if quick else (8 if h.name == HEADLINE_PAREN else 4)) for h in chosen]
    if induction is not None:
        hyps, note = cases.hypotheses_from("hypotheses/induction.py")
        if hyps is None:
            notes.append(note)
        else:
            chosen = hyps[:1] if quick else hyps
            engine_cases += [(cases.Case(f"induction/{h.name}", induction, h), 2 if quick else 3) for h in chosen]
    engine_cases.append((cases.Case("synthetic/deep chain", synthetic, cases.deep_chain(4)), 3 if quick else 10))
    for n in notes:
        log(f"[yellow]note:[/yellow] {n}")

    results: dict = {}
    if "engine" not in skip:
        log("[bold]1-2. engine vs the reference and vs plain forward passes[/bold]")
        by_case = {}
        for case, k in engine_cases:
            try:
                by_case[case.key] = engine_case(case, n_refs, k, reps, log)
            except Exception as exc:  # noqa: BLE001 - a broken hypothesis file must not sink the suite
                msg = cases.failure_line(f"case {case.key}", exc)
                notes.append(msg)
                log(f"[yellow]note:[/yellow] {msg}")
        results["engine_cases"] = by_case
        headline = _headline(by_case)
        results["headline_case"] = headline
        for metric in ("speedup_vs_reference", "efficiency_vs_limit"):
            results[metric] = by_case[headline][metric] if headline else None
            results[f"{metric}_by_case"] = {k: v[metric] for k, v in by_case.items()}
        results["speedup_vs_reference_projected_by_case"] = {k: v["speedup_vs_reference_projected"]
                                                             for k, v in by_case.items()}

    if "tl" not in skip:
        log("[bold]3. engine vs a hand-written TransformerLens hook loop[/bold]")
        tl = {}
        for key, task in (("paren", paren), ("induction", induction), ("synthetic", synthetic)):
            if task is None:
                continue
            try:
                tl[key] = tl_case(key, task, n_refs, reps, log)
            except Exception as exc:  # noqa: BLE001
                msg = cases.failure_line(f"TL comparison on {key}", exc)
                notes.append(msg)
                log(f"[yellow]note:[/yellow] {msg}")
        results["tl_cases"] = tl
        key = "paren" if "paren" in tl else "synthetic"
        results["ratio_vs_tl_loop"] = tl[key]["ratio_vs_tl_loop"] if key in tl else None
        results["ratio_vs_tl_loop_case"] = key
        results["ratio_vs_tl_loop_by_case"] = {k: v["ratio_vs_tl_loop"] for k, v in tl.items()}

    if "memory" not in skip:
        log("[bold]4. peak memory[/bold]")
        sizes = [1024, 16384] if quick else [4096, 65536]
        mem = memory_case("synthetic", sizes, args.threads, log)
        results["memory"] = {"synthetic": mem, "sizes": sizes}
        results["memory_ratio_64k_4k"] = mem.get("memory_ratio")
        results["memory_increment_ratio_64k_4k"] = mem.get("increment_ratio")
        if "error" in mem:
            notes.append(f"memory: {mem['error']}")

    if "scaling" not in skip:
        log("[bold]5. scaling (synthetic)[/bold]")
        results["scaling"] = scaling(reps, quick, log)

    if "profile" not in skip and "engine_cases" in results and results.get("headline_case"):
        log("[bold]profile of the headline case[/bold]")
        case = next(c for c, _ in engine_cases if c.key == results["headline_case"])
        prof = {"headline": profile_case(case, n_refs, log)}
        worst = min(results["engine_cases"], key=lambda k: results["engine_cases"][k]["efficiency_vs_limit"])
        if worst != case.key:
            prof["lowest_efficiency"] = profile_case(next(c for c, _ in engine_cases if c.key == worst), n_refs, log)
        tl_task = paren if paren is not None else synthetic
        tl_key = "paren" if paren is not None else "synthetic"
        prof["tl_case"] = profile_case(cases.Case(f"{tl_key}/one head", tl_task, cases.one_head(tl_task)), n_refs, log)
        batch = Engine(case.task.adapter, case.task.data).batch_size
        prof["adapter_probe"] = {key: adapter_probe(t, batch) for key, t in
                                 (("paren", paren), ("induction", induction), ("synthetic", synthetic)) if t is not None}
        for key, pr in prof["adapter_probe"].items():
            log(f"  {key}: batching gain of a plain forward (batch 1 vs {pr['rows']}, per row) "
                f"{pr['batching_gain_plain_forward']:.1f}x; per {pr['rows']} rows: plain forward {pr['plain_forward']:.3f}s, adapter.clean "
                f"{pr['adapter_clean']:.3f}s, adapter.run(output) {pr['adapter_run_output']:.4f}s (from the input: "
                f"{pr['adapter_run_output_full']:.3f}s) vs ln_final+unembed {pr['ln_final_unembed']:.4f}s")
        results["profile"] = prof

    results["goals"] = {name: _goal(results.get(name), *goal) for name, goal in GOALS.items()}
    results.update({
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": COMMAND + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "settings": {"n_refs": n_refs, "reps": reps, "quick": quick, "timing": "best of reps, interleaved"},
        "notes": notes,
        "wall_s": time.perf_counter() - started,
    })
    Path(args.out).write_text(json.dumps(_clean_json(results), indent=1) + "\n")
    _print_summary(console, results)
    log(f"wrote {args.out} in {results['wall_s']:.0f}s")
    return 0


def _headline(by_case: dict) -> str | None:
    preferred = f"paren/{HEADLINE_PAREN}"
    if preferred in by_case:
        return preferred
    paren = [k for k in by_case if k.startswith("paren/")]
    if paren:
        return paren[0]
    return "synthetic/deep chain" if "synthetic/deep chain" in by_case else next(iter(by_case), None)


def _goal(value, op: str, bound: float) -> dict:
    met = None if value is None else (value >= bound if op == ">=" else value <= bound)
    return {"value": value, "goal": f"{op} {bound}", "met": met}


def _clean_json(value):
    if isinstance(value, dict):
        return {str(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_json(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float):
        return round(value, 6)
    return value


def _print_summary(console, results: dict) -> None:
    from rich.table import Table

    goals = Table(title="Performance goals (headline cases)")
    for col in ("figure", "value", "goal", "met", "case"):
        goals.add_column(col)
    cases_of = {"speedup_vs_reference": results.get("headline_case"),
                "efficiency_vs_limit": results.get("headline_case"),
                "ratio_vs_tl_loop": results.get("ratio_vs_tl_loop_case"),
                "memory_ratio_64k_4k": "synthetic/deep chain"}
    for name, g in results["goals"].items():
        value = "-" if g["value"] is None else f"{g['value']:.3g}"
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[g["met"]]
        goals.add_row(name, value, g["goal"], met, str(cases_of[name]))
    console.print(goals)

    if results.get("engine_cases"):
        t = Table(title="Engine vs reference and vs plain forward passes (per case)")
        for col in ("case", "refs", "engine s", "ref refs/s (k / 2k refs)", "speedup", "speedup (projected)", "rows",
                    "limit s", "efficiency", "agrees"):
            t.add_column(col)
        for key, c in results["engine_cases"].items():
            t.add_row(key, str(c["n_refs"]), f"{c['engine_s']:.2f}",
                      f"{c['reference']['refs_per_s_at_k']:.1f} / {c['reference']['refs_per_s']:.1f}",
                      f"{c['speedup_vs_reference']:.1f}x", f"{c['speedup_vs_reference_projected']:.1f}x",
                      str(c["limit_rows"]), f"{c['limit_s']:.2f}", f"{c['efficiency_vs_limit']:.2f}",
                      str(c["reference"]["agrees"]))
        console.print(t)
    if results.get("tl_cases"):
        t = Table(title="Engine vs hand-written TransformerLens loop (one-head hypothesis)")
        for col in ("task", "refs", "engine s", "TL loop s", "ratio (ours/theirs)", "engine rows", "TL rows",
                    "max |Δloss|"):
            t.add_column(col)
        for key, c in results["tl_cases"].items():
            s = c["engine_stats"]
            t.add_row(key, str(c["n_refs"]), f"{c['engine_s']:.2f}", f"{c['tl_loop_s']:.2f}",
                      f"{c['ratio_vs_tl_loop']:.2f}", str(s["clean_rows"] + s["computed_rows"]),
                      str(c["tl_loop_forward_rows"]), f"{c['max_abs_loss_diff']:.1e}")
        console.print(t)
    mem = results.get("memory", {}).get("synthetic")
    if mem and "runs" in mem:
        t = Table(title="Peak memory (synthetic deep chain, fresh process per size)")
        for col in ("refs", "peak RSS MiB", "increment MiB", "outputs MiB", "seconds"):
            t.add_column(col)
        for refs, r in mem["runs"].items():
            t.add_row(refs, f"{r['peak_rss_kib'] / 1024:.0f}", f"{(r['peak_rss_kib'] - r['rss_before_run_kib']) / 1024:.0f}",
                      f"{r['outputs_kib'] / 1024:.1f}", f"{r['seconds']:.1f}")
        console.print(t)
    sc = results.get("scaling")
    if sc:
        t = Table(title="Scaling (synthetic): seconds and ratio to the smallest case")
        for col in ("axis", "case", "engine s", "time ratio", "efficiency", "speedup vs ref"):
            t.add_column(col)
        for n, r in sc["refs"]["cases"].items():
            t.add_row("references", n, f"{r['seconds']:.2f}", f"{r['time_ratio_vs_smallest']:.2f}", "-", "-")
        for axis, label in (("hypothesis_depth", "hypothesis depth"), ("model_depth", "model layers")):
            for n, r in sc[axis]["cases"].items():
                t.add_row(label, n, f"{r['engine_s']:.2f}", f"{r['time_ratio_vs_smallest']:.2f}",
                          f"{r['efficiency_vs_limit']:.2f}", f"{r['speedup_vs_reference']:.0f}x")
        console.print(t)
    for prof in (results.get("profile") or {}).values():
        if "phases" not in prof:
            continue
        t = Table(title=f"Where the engine's time goes ({prof['case']}, {prof['n_refs']} refs)")
        for col in ("part", "rows", "seconds", "fraction", "ms/row"):
            t.add_column(col)
        ph = prof["phases"]
        t.add_row("clean bank (adapter.clean)", str(prof["engine_stats"]["clean_rows"]), f"{ph['clean_bank_s']:.2f}", f"{ph['fractions']['clean_bank']:.0%}", "-")
        for site, s in prof["sites"].items():
            t.add_row(f"compute {site}", str(s["rows"]), f"{s['seconds']:.2f}", f"{s['fraction']:.0%}",
                      f"{s['ms_per_row']:.3f}")
        t.add_row("compile + bookkeeping", "-", f"{ph['compile_and_bookkeeping_s']:.2f}",
                  f"{ph['fractions']['compile_and_bookkeeping']:.0%}", "-")
        t.add_row("of the total: inside model calls", "-", f"{ph['model_calls_s']:.2f}",
                  f"{ph['fractions']['model_calls']:.0%}", "-")
        console.print(t)
    for n in results.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {n}")


if __name__ == "__main__":
    sys.exit(main())

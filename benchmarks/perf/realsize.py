"""Real-size models: a GPT-2-small-shaped bridge and an IOI-shaped hypothesis (issue 13).

Builders shared by the real-size benchmark (``python -m benchmarks.perf.realsize``) and its tests:
a randomly initialised Hugging Face model saved to a local folder and booted with
``TransformerBridge.boot_transformers`` (no hub access), random tokens, and a hypothesis
shaped like the IOI circuit: per-position token classes at the embedding, heads across
several layers linked by q/k/v edges with the default ``via="all"``.
"""

from __future__ import annotations

import tempfile

import torch
import torch.nn.functional as F

from scrubbing import Edge, Hypothesis
from scrubbing.sites import Dataset
from scrubbing.task import Task


def boot(kind: str = "gpt2", n_layers: int = 12, n_heads: int = 12, d_model: int = 768, vocab: int = 1000,
         n_ctx: int = 16, seed: int = 0, **extra):
    """A random ``kind`` model (gpt2, neox, llama) saved locally and booted as a TransformerLens 4 bridge."""
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    torch.manual_seed(seed)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=n_layers, n_head=n_heads, n_embd=d_model, vocab_size=vocab,
                                         n_positions=max(n_ctx, 8), **extra)
        model = transformers.GPT2LMHeadModel(config)
    elif kind == "neox":
        config = transformers.GPTNeoXConfig(num_hidden_layers=n_layers, num_attention_heads=n_heads,
                                            hidden_size=d_model, intermediate_size=4 * d_model, vocab_size=vocab,
                                            max_position_embeddings=max(n_ctx, 8), **extra)
        model = transformers.GPTNeoXForCausalLM(config)
    elif kind == "llama":
        extra.setdefault("num_key_value_heads", max(1, n_heads // 2))
        config = transformers.LlamaConfig(num_hidden_layers=n_layers, num_attention_heads=n_heads,
                                          hidden_size=d_model, intermediate_size=2 * d_model, vocab_size=vocab,
                                          max_position_embeddings=max(n_ctx, 8), **extra)
        model = transformers.LlamaForCausalLM(config)
    else:
        raise ValueError(f"unknown kind {kind!r}: gpt2, neox or llama")
    with tempfile.TemporaryDirectory(prefix=f"scrub-{kind}-") as path:  # booted, the bridge holds every weight
        model.save_pretrained(path)
        _local_tokenizer(vocab).save_pretrained(path)  # the bridge loads a tokenizer; never from the hub
        bridge = TransformerBridge.boot_transformers(path, device="cpu")
    bridge.eval()
    return bridge


def _local_tokenizer(vocab: int):
    """A word-level tokenizer over ``t0 .. t{vocab-1}``, built here (the bridge insists on one)."""
    import tokenizers
    import transformers

    words = {f"t{i}": i for i in range(vocab)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="t0"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0", bos_token="t0",
                                                eos_token="t0", pad_token="t0")


def tokens(n: int, n_ctx: int, vocab: int, seed: int = 0) -> Dataset:
    x = torch.randint(0, vocab, (n, n_ctx), generator=torch.Generator().manual_seed(seed))
    return Dataset(x, {"target": x[:, 0]})


def loss(logits: torch.Tensor, batch: Dataset) -> torch.Tensor:
    """Predict the first token at the last position: one loss per reference."""
    return F.cross_entropy(logits[:, -1].float(), batch.columns["target"].to(logits.device), reduction="none")


def task(bridge, data: Dataset, name: str = "realsize") -> Task:
    from scrubbing.adapters import HookedAdapter

    return Task(name, HookedAdapter.for_bridge(bridge), data, loss)


def _per_position(modulus: int):
    def feature(d):
        return d.inputs % modulus

    feature.__name__ = f"token % {modulus} (per position)"
    return feature


def _token_mod(position: int, modulus: int):
    def feature(d):
        return d.inputs[:, position] % modulus

    feature.__name__ = f"token[{position}] % {modulus}"
    return feature


def ioi_small() -> Hypothesis:
    """The 7-node IOI shape of the issue: embedding by a per-position token class, heads in layers 3, 5, 7,
    9, 10 linked by q/k/v edges (default ``via="all"``)."""
    h = Hypothesis("IOI-shaped, 7 nodes")
    h.node("tokens", "embed", _per_position(4))
    h.node("duplicate", "a3.0", _token_mod(0, 2), parents=["tokens"])
    h.node("induction", "a5.5", _token_mod(1, 2), parents=[Edge("duplicate", into="k"), Edge("tokens", into="v")])
    h.node("s-inhibition", "a7.3", _token_mod(0, 2), parents=[Edge("induction", into="v"), Edge("duplicate", into="v")])
    h.node("name mover", "a9.9", _token_mod(0, 2), parents=[Edge("s-inhibition", into="q"), Edge("tokens", into=("k", "v"))])
    h.node("backup", "a10.7", _token_mod(0, 2), parents=[Edge("s-inhibition", into="q"), Edge("tokens", into="v")])
    h.output(parents=["name mover", "backup"])
    return h


def ioi_large() -> Hypothesis:
    """The benchmark's IOI shape: 12 heads across 7 layers (previous-token, duplicate, induction,
    S-inhibition, name movers), per-position token classes at the embedding, q/k/v edges, default ``via``."""
    h = Hypothesis("IOI-shaped, 12 heads in 7 layers")
    h.node("tokens", "embed", _per_position(4))
    h.node("previous 2.2", "a2.2", _token_mod(1, 2), parents=["tokens"])
    h.node("duplicate 0.1", "a0.1", _token_mod(0, 2), parents=[Edge("tokens", into=("k", "v"))])
    h.node("duplicate 3.0", "a3.0", _token_mod(0, 2), parents=[Edge("tokens", into="v")])
    h.node("induction 5.5", "a5.5", _token_mod(0, 2),
           parents=[Edge("previous 2.2", into="k"), Edge("tokens", into="v")])
    h.node("induction 6.9", "a6.9", _token_mod(0, 2), parents=[Edge("previous 2.2", into="k")])
    h.node("s-inhibition 7.3", "a7.3", _token_mod(0, 2),
           parents=[Edge("induction 5.5", into="v"), Edge("duplicate 3.0", into="v"), Edge("duplicate 0.1", into="v")])
    h.node("s-inhibition 8.6", "a8.6", _token_mod(0, 2), parents=[Edge("induction 6.9", into="v")])
    h.node("name mover 9.6", "a9.6", _token_mod(0, 2),
           parents=[Edge("s-inhibition 7.3", into="q"), Edge("s-inhibition 8.6", into="q"), Edge("tokens", into="v")])
    h.node("name mover 9.9", "a9.9", _token_mod(0, 2),
           parents=[Edge("s-inhibition 7.3", into="q"), Edge("tokens", into="v")])
    h.node("name mover 10.0", "a10.0", _token_mod(0, 2), parents=[Edge("s-inhibition 8.6", into="q")])
    h.node("backup 10.7", "a10.7", _token_mod(0, 2), parents=[Edge("tokens", into=("k", "v"))])
    h.node("negative 11.10", "a11.10", _token_mod(0, 2), parents=[Edge("s-inhibition 7.3", into="q")])
    h.output(parents=["name mover 9.6", "name mover 9.9", "name mover 10.0", "backup 10.7", "negative 11.10"])
    return h


# -- the benchmark ------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS, so the next phase's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(n_refs: int, n_data: int = 512, seed: int = 0, d_model: int = 768, n_ctx: int = 16,
            vocab: int = 1000, hypothesis: str = "large", hand_batch: int = 64, calibration_only: bool = False) -> dict:
    """One size, in this process: a clean pass over the references (the unit, median of 3), the engine
    (calibration on ``calibration_rows`` rows as ``scrub`` does, median of 3; plan; execution) and the hand-written hook loop
    (``hand_loop.hand_outputs``) on the same plan, whose outputs must equal the engine's; peak RSS of each."""
    import statistics
    import sys
    import time

    import numpy as np

    from benchmarks.perf.hand_loop import hand_outputs, passes
    from scrubbing.execute import Engine
    from scrubbing.plan import make_plan
    from scrubbing.sampling import RandomSampler, class_tables
    from scrubbing.sites import calibration_rows

    torch.set_num_threads(1)
    bridge = boot("gpt2", 12, 12, d_model, vocab=vocab, n_ctx=n_ctx, seed=seed)
    data = tokens(n_data, n_ctx, vocab, seed=seed)
    refs = torch.arange(n_refs)

    def clean_passes(times: int) -> list[float]:
        seconds = []
        with torch.no_grad():
            bridge(data.inputs[refs[:8]])  # warm-up
            for _ in range(times):
                start = time.perf_counter()
                bridge(data.inputs[refs])
                seconds.append(time.perf_counter() - start)
        return seconds

    clean = clean_passes(3)  # the unit: the bridge as booted, before the adapter turns on per-head hooks
    clean_s = statistics.median(clean)
    t = task(bridge, data)  # split q/k/v inputs, per-head results, hook_mlp_in: both loops need them
    hooked_s = min(clean_passes(1))
    setup_rss = peak_rss_mb()

    rows = calibration_rows(len(data), n_refs)
    calibrations = []
    for _ in range(3):  # each from scratch, as ``scrub`` does once; the median, as for the unit
        start = time.perf_counter()
        t.adapter.calibrate(data.inputs[:rows])
        calibrations.append(time.perf_counter() - start)
    calibrate_s = statistics.median(calibrations)
    print(f"{n_refs} refs: clean pass {clean_s:.2f}s, calibration ({rows} rows) {calibrate_s:.2f}s",
          file=sys.stderr, flush=True)
    if calibration_only:
        return {"n_refs": n_refs, "clean_pass_s": clean_s, "clean_pass_runs_s": clean, "calibrate_s": calibrate_s,
                "calibrate_runs_s": calibrations, "calibration_over_clean": calibrate_s / clean_s}
    bound = (ioi_large() if hypothesis == "large" else ioi_small()).bind(t.adapter, data)
    start = time.perf_counter()
    plan = make_plan(bound, refs, RandomSampler(class_tables(bound.classes)), np.random.default_rng(seed))
    plan_s = time.perf_counter() - start
    engine = Engine(t.adapter, data)
    start = time.perf_counter()
    scrubbed = engine.outputs(plan)
    execute_s = time.perf_counter() - start
    engine_rss = peak_rss_mb()
    engine_s = calibrate_s + plan_s + execute_s
    print(f"{n_refs} refs: plan {plan_s:.2f}s, execution {execute_s:.2f}s", file=sys.stderr, flush=True)

    reset = _reset_peak_rss()
    start = time.perf_counter()
    by_hand = hand_outputs(bridge, data.inputs, bound, plan, batch_size=hand_batch)
    hand_s = time.perf_counter() - start
    hand_rss = peak_rss_mb() if reset else float("nan")
    print(f"{n_refs} refs: hand loop {hand_s:.2f}s", file=sys.stderr, flush=True)
    return {"n_refs": n_refs, "shape": f"gpt2 12x12 d_model {d_model}, {n_ctx} tokens, vocab {vocab}",
            "hypothesis": hypothesis, "n_data": n_data, "calibration_rows": rows, "hand_batch": hand_batch,
            "clean_pass_s": clean_s, "clean_pass_runs_s": clean,
            "clean_pass_with_head_hooks_s": hooked_s, "calibrate_s": calibrate_s, "calibrate_runs_s": calibrations,
            "plan_s": plan_s,
            "execute_s": execute_s, "engine_s": engine_s, "hand_loop_s": hand_s,
            "calibration_calls": dict(t.adapter.calls), "calibration_rows_run": dict(t.adapter.calibration.rows_run),
            "engine_stats": engine.stats, "tree_paths": len(plan.instances),
            "hand_loop_calls_per_batch": passes(bound, plan),
            "hand_loop_max_abs_diff": (scrubbed - by_hand).abs().max().item(),
            "engine_over_clean": engine_s / clean_s,
            "calibration_over_clean": calibrate_s / clean_s,
            "execution_over_clean": (plan_s + execute_s) / clean_s,
            "hand_loop_over_clean": hand_s / clean_s,
            "engine_over_hand_loop": engine_s / hand_s,
            "peak_rss_mb_setup": setup_rss, "peak_rss_mb": engine_rss, "peak_rss_mb_hand_loop": hand_rss}


def table(results: list[dict]) -> str:
    """The benchmark's table (markdown), one row per size."""
    lines = ["| refs | engine/clean | calibration/clean | plan+execution/clean | hand loop/clean | engine/hand loop "
             "| peak RSS engine (MB) | peak RSS hand loop (MB) | chunks | model calls | clean pass (s) | max abs diff |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        stats = r["engine_stats"]
        lines.append(f"| {r['n_refs']} | {r['engine_over_clean']:.1f} | {r['calibration_over_clean']:.1f} "
                     f"| {r['execution_over_clean']:.1f} | {r['hand_loop_over_clean']:.1f} "
                     f"| {r['engine_over_hand_loop']:.2f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb_hand_loop']:.0f} "
                     f"| {stats['chunks']} | {stats['model_calls']} | {r['clean_pass_s']:.2f} "
                     f"| {r['hand_loop_max_abs_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    import argparse
    import json
    import subprocess
    import sys

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--refs", type=int, help="measure one size in this process (used by the driver)")
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--ctx", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--hypothesis", default="large", choices=["large", "small"])
    parser.add_argument("--out", help="where to write the results as JSON; default: benchmarks/perf/realsize.json "
                                      "for the issue's shape and sizes (the defaults), nowhere for any other")
    parser.add_argument("--calibration-only", action="store_true",
                        help="in this process, at --refs references: the clean pass and calibration only")
    args = parser.parse_args()
    if args.refs:
        print(json.dumps(measure(args.refs, d_model=args.d_model, n_ctx=args.ctx, vocab=args.vocab,
                                 hypothesis=args.hypothesis, calibration_only=args.calibration_only)), flush=True)
        return
    results = []
    for n in (int(x) for x in args.sizes.split(",")):  # one fresh process per size: peak memory is its own
        done = subprocess.run([sys.executable, "-m", "benchmarks.perf.realsize", "--refs", str(n),
                               "--d-model", str(args.d_model), "--ctx", str(args.ctx), "--vocab", str(args.vocab),
                               "--hypothesis", args.hypothesis],
                              capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    print(table(results), flush=True)
    if len(results) == 2:
        ratio = results[1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
        print(f"peak RSS {results[1]['n_refs']}/{results[0]['n_refs']}: {ratio:.2f}", flush=True)
        results.append({"memory_ratio": ratio})
    issue_shape = all(getattr(args, key) == parser.get_default(key)
                      for key in ("sizes", "d_model", "ctx", "vocab", "hypothesis"))
    out = args.out or ("benchmarks/perf/realsize.json" if issue_shape else None)
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

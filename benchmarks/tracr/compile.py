"""Compile the tracr fixtures: RASP programs → ``benchmarks/tracr/fixtures/<name>/``.

Needs tracr, jax and dm-haiku, which the main environment does not have: run it from
a separate environment with the ``tracr`` extra (see ``benchmarks/tracr/README.md``):

    python3 -m venv .venv-tracr && . .venv-tracr/bin/activate
    pip install torch==2.13.0 && pip install -e ".[tracr]"
    python benchmarks/tracr/compile.py            # every program; or name some: reverse frac_prevs

Each fixture is the converted ``TinyTransformer`` (``model.safetensors``), every input
with tracr's own outputs and each operation's value (``data.safetensors``) and the
operations metadata (``fixture.json``); ``compiler.compile_program`` checks that the converted
model reproduces tracr's outputs on every input before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def reverse():
    """lib.make_reverse(tokens): length (selector width), opp_idx = length - indices, opp_idx - 1, then a head
    that reads the token at position opp_idx - 1."""
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return lib.make_reverse(rasp.tokens).named("reverse"), {1, 2, 3, 4, 5, 6}, 4


def frac_prevs():
    """lib.make_frac_prevs(tokens == "x"): a numerical MLP (is_x) and a numerical mean over the prefix."""
    from tracr.compiler import lib
    from tracr.rasp import rasp

    is_x = rasp.numerical(rasp.Map(lambda t: t == "x", rasp.tokens)).named("is_x")
    return lib.make_frac_prevs(is_x).named("frac_prevs"), {"a", "b", "c", "x"}, 5


def succ_length():
    """Categorical MLPs: succ = (token + 1) mod 4 (a Map), length (a selector width), and
    succ_length = (succ + length) mod 4 (a SequenceMap reading both)."""
    from tracr.compiler import lib
    from tracr.rasp import rasp

    succ = rasp.Map(lambda t: (t + 1) % 4, rasp.tokens).named("succ")
    length = lib.make_length().named("length")
    out = rasp.SequenceMap(lambda s, n: (s + n) % 4, succ, length).named("succ_length")
    return out, {0, 1, 2, 3}, 5


PROGRAMS = {"reverse": reverse, "frac_prevs": frac_prevs, "succ_length": succ_length}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(PROGRAMS), help=f"programs to compile: {list(PROGRAMS)}")
    parser.add_argument("--out", default=str(FIXTURES))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.tracr.compiler import compile_program, save_fixture

    for name in args.names:
        program, vocab, max_seq_len = PROGRAMS[name]()
        fixture = compile_program(program, vocab, max_seq_len, compiler_bos="BOS", name=name)
        path = save_fixture(fixture, Path(args.out) / name)
        size = sum(f.stat().st_size for f in path.iterdir())
        layers = ", ".join(f"{op} @ {rec['site']}" for op, rec in fixture.ops.items())
        print(f"{name}: {fixture.meta['n_examples']} inputs, {fixture.model.cfg.n_layers} layers, "
              f"{size / 1024:.0f} KiB -> {path}\n  {layers}")


if __name__ == "__main__":
    main()

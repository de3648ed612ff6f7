"""tracr fixtures: the shipped models reproduce tracr, the derived hypotheses are exactly true, false ones fail.

None of this needs jax: the fixtures are plain safetensors + json. The compile-from-source
tests (``benchmarks/tracr/compiler.py``) run only where tracr is importable (the ``tracr``
extra, in its own environment); nothing else here imports the compiler.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from benchmarks.tracr.task import NAMES, load, load_task
from scrubbing import scrub, suite
from scrubbing.regimes import REGISTRY
from scrubbing.tracr import check_fixture, is_row_determined, true_hypothesis

ROOT = Path(__file__).resolve().parents[1]
REGIMES = tuple(REGISTRY)
HYPOTHESIS_FILES = {name: ROOT / "hypotheses" / f"tracr_{name}.py" for name in NAMES}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_reproduces_tracr_on_every_input(name):
    fixture = load(name)
    model, data, ops = fixture
    meta = fixture.meta
    n, T = data.inputs.shape
    vocab, L = len(meta["vocab"]), meta["max_seq_len"]
    assert T == L + 1 and n == sum(vocab**k for k in range(1, L + 1)) == meta["n_examples"]
    with torch.no_grad():
        out = model(data.inputs)
    mask = data.columns["mask"].bool()
    assert mask.sum(1).tolist() == data.columns["length"].tolist()
    scale = meta["logit_scale"] or 1.0
    assert ((out / scale - data.columns["tracr_out"]).abs().amax(-1)[mask]).max() < 1e-4
    if fixture.categorical:
        assert torch.equal(out.argmax(-1)[mask], data.columns["target"][mask])
        decoded = fixture.decode_output(out[:3])
        assert all(v in meta["output_values"] for row in decoded for v in row)
    else:
        assert ((out[..., 0] - data.columns["target"]).abs()[mask]).max() < 1e-4
    assert check_fixture(fixture)["wrong_positions"] == 0
    task = load_task(name)
    with torch.no_grad():
        assert task.loss(out, data).max() < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_operations_metadata(name):
    fixture = load(name)
    task = load_task(name)
    ops = fixture.ops
    assert fixture.meta["output_op"] in ops
    assert ops["tokens"]["site"] == "embed"
    for op_name, op in ops.items():
        for site in op["sites"]:
            assert site in task.adapter.sites, (op_name, site)
        assert set(op["parents"]) <= set(ops)
        table = fixture.data.columns[f"op:{op_name}"]
        assert table.shape == fixture.data.inputs.shape
        assert int(table.max()) < len(op["classes"])
        pad = op["classes"].index("PAD")
        assert torch.equal(table == pad, fixture.data.inputs == fixture.meta["token_ids"]["PAD"])
    # no two operations share a site (tracr's parallel MLPs get a layer each)
    sites = [op["site"] for op in ops.values() if op["site"] != "embed"]
    assert len(sites) == len(set(sites))


def test_reverse_metadata_follows_the_program():
    ops = load("reverse").ops
    assert ops["reverse"]["reads"] == {"q": ["opp_idx-1"], "k": ["indices"], "v": ["tokens"]}
    assert ops["reverse"]["site"].startswith("a")
    assert ops["length"]["sites"][0].startswith("a") and ops["length"]["site"].startswith("m")
    assert ops["opp_idx"]["parents"] == ["length", "indices"]
    fixture = load("reverse")
    assert all(is_row_determined(fixture, op) for op in ("length", "opp_idx", "opp_idx-1"))
    assert not any(is_row_determined(fixture, op) for op in ("reverse", "tokens", "indices"))
    h = true_hypothesis(load("reverse"))
    edges = {e.parent: e.into for e in h.nodes["reverse"].parents}
    assert edges == {"opp_idx-1": ("q",), "indices": ("k",), "tokens": ("v",)}
    assert [e.parent for e in h.nodes["output"].parents] == ["reverse"]


@pytest.mark.parametrize("name", NAMES)
def test_true_hypothesis_recovers_everything_under_every_regime(name):
    result = scrub(true_hypothesis(load(name)), load_task(name), n_refs=60, budget=3, regimes=REGIMES, n_boot=200)
    for regime in REGIMES:
        figures = result.to_dict()["regimes"][regime]
        assert figures["status"] == "ok"
        assert figures["recovered"] >= 0.99, (regime, figures["recovered"])
        assert figures["abs_gap"] <= 1e-3, (regime, figures["abs_gap"])


def test_per_position_features_everywhere_are_exactly_true_too():
    """``per_input="never"``: every feature per position (slower: the tree multiplies by T at each node)."""
    fixture = load("reverse")
    hypothesis = true_hypothesis(fixture, per_input="never")
    assert all(hypothesis.nodes[op].feature.__name__ == op for op in ("length", "opp_idx", "opp_idx-1"))
    result = scrub(hypothesis, load_task("reverse"), n_refs=30, regimes=["random"], n_boot=100).to_dict()
    assert result["regimes"]["random"]["abs_gap"] <= 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_false_hypotheses_fail(name):
    loaded = suite.load(HYPOTHESIS_FILES[name])
    false = [h for h in loaded.hypotheses if ", false:" in h.name]
    assert len(false) >= 2
    for hypothesis in false:
        result = scrub(hypothesis, loaded.task, n_refs=200, regimes=["random"], n_boot=200).to_dict()
        assert result["regimes"]["random"]["recovered"] <= 0.9, (hypothesis.name, result["regimes"]["random"])


def test_hypothesis_files_carry_the_expected_checks():
    for path in HYPOTHESIS_FILES.values():
        loaded = suite.load(path)
        true, *false = loaded.hypotheses
        names = {e.name for e in true.expectations}
        assert {"recovered >= 0.99 (*)", "abs_gap <= 0.001 (*)"} <= names
        assert all(any(e.name == "recovered <= 0.9 (random)" for e in h.expectations) for h in false)


def test_fixtures_load_without_jax():
    code = ("import sys\n"
            "from benchmarks.tracr.task import load_task\n"
            "from scrubbing import suite\n"
            "load_task('frac_prevs'); suite.load('hypotheses/tracr_frac_prevs.py')\n"
            "assert not {'jax', 'haiku', 'tracr', 'benchmarks.tracr.compiler'} & set(sys.modules), "
            "'imported jax, tracr or the compiler'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


needs_tracr = pytest.mark.skipif(importlib.util.find_spec("tracr") is None,
                                 reason="compiling from source needs tracr and jax (the tracr extra, in an environment "
                                        "of its own: benchmarks/tracr/README.md); the shipped fixtures do not")


@needs_tracr
def test_compile_from_source_matches_tracr_and_the_shipped_fixture(tmp_path):
    from benchmarks.tracr import compile as programs
    from benchmarks.tracr.compiler import compile_program, save_fixture
    from scrubbing.tracr import load_fixture

    program, vocab, max_seq_len = programs.PROGRAMS["succ_length"]()
    fresh = compile_program(program, vocab, max_seq_len, name="succ_length")  # checks against tracr itself
    again = load_fixture(save_fixture(fresh, tmp_path / "succ_length"))
    shipped = load("succ_length")
    assert torch.equal(again.data.inputs, shipped.data.inputs)
    for key, value in shipped.model.state_dict().items():
        assert torch.allclose(again.model.state_dict()[key], value), key
    assert torch.allclose(again.data.columns["tracr_out"], shipped.data.columns["tracr_out"], atol=1e-6)
    assert {k: v["site"] for k, v in again.ops.items()} == {k: v["site"] for k, v in shipped.ops.items()}


@needs_tracr
def test_padded_keys_are_masked():
    """tracr runs each input at its own length; our model pads, and masks padded keys in every head through one
    extra head dimension. A suffix mean (keys at or after the query) would read the padding without it."""
    from tracr.rasp import rasp

    from benchmarks.tracr.compiler import compile_program

    is_one = rasp.numerical(rasp.Map(lambda t: t == 1, rasp.tokens)).named("is_one")
    suffix = rasp.numerical(rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.GEQ), is_one,
                                           default=0)).named("suffix_ones")
    fixture = compile_program(suffix, {0, 1}, 4, name="suffix_ones")  # raises unless it reproduces tracr
    model, data, ops = fixture
    assert ops["suffix_ones"]["reads"]["k"] == ["indices"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_K[..., -1] = 0
        error = ((model(data.inputs)[..., 0] - data.columns["target"]).abs() * data.columns["mask"]).amax(1)
    short = data.columns["length"] < 4
    assert (error[short] > 0.1).any() and (error[~short] < 1e-4).all()
    model.load_state_dict(state)
    from benchmarks.tracr.task import task_for

    result = scrub(true_hypothesis(fixture), task_for(fixture), n_refs=20, regimes=["random"], n_boot=100).to_dict()
    assert result["regimes"]["random"]["abs_gap"] <= 1e-6


def test_the_shipped_transcoder_predicts_m2_from_its_input_and_reads_opp_idx_only():
    """benchmarks/tracr/train_transcoder.py's checkpoint: from m2's input slot it reconstructs m2's output, its
    labels are what its latents fire for, and its live latents read opp_idx's directions and no other that varies
    (but where the padding starts); the training is deterministic (a short run, twice)."""
    from benchmarks.tracr.train_sae import labels
    from benchmarks.tracr.train_transcoder import activations, encode, train
    from scrubbing.split import Transcoder

    path = ROOT / "benchmarks" / "tracr" / "sae" / "reverse_m2_transcoder.safetensors"
    tc = Transcoder.load(path, "m2")
    x, y, op = activations(load_task("reverse"))
    a = tc.latents(x)
    assert ((tc.decode(a) - y).norm(dim=1).max() / y.norm(dim=1).max()) < 1e-4
    with safe_open(str(path), "pt") as f:
        assert {int(k): v for k, v in json.loads(f.metadata()["labels"]).items()} == labels(a, op)
    live = a.amax(0) > 0
    read = tc.W_enc[:, live].abs().sum(1) > 0  # the residual directions some live latent reads
    names = load("reverse").meta["residual_labels"]
    reads = {names[i] for i in range(len(names)) if read[i] and x[:, i].std() > 0} - {"tokens:BOS", "tokens:PAD"}
    assert reads and all(name.startswith("opp_idx_4:") for name in reads), reads
    first, second = train(x[:500], y[:500], steps=50), train(x[:500], y[:500], steps=50)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert torch.equal(encode(first, x), torch.relu(x @ first["W_enc"] + first["b_enc"]))

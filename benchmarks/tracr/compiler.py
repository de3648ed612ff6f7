"""The tracr compiler: a RASP program → tracr's weights → a ``TracrFixture`` (``TinyTransformer``, every input,
what each operation computes). Needs tracr, jax and dm-haiku (the ``tracr`` extra, in an environment of its own);
``benchmarks/tracr/compile.py`` is the command that runs it. The library (``scrubbing.tracr``) only loads the
fixtures it writes and derives hypotheses from them.

    fixture = compile_program(make_reverse(rasp.tokens), vocab={1, 2, 3, 4}, max_seq_len=4)
    save_fixture(fixture, "benchmarks/tracr/fixtures/reverse")

The converted model (``TinyTransformer``, ``layer_norm=False``, non-causal):

- tracr's embeddings, attention and MLP weights, unchanged; positions are
  ``[BOS, x1 .. xn, PAD ...]`` with ``T = max_seq_len + 1`` positions.
- The dataset is every input of length 1 .. ``max_seq_len`` over the vocabulary,
  padded to ``T``. tracr runs each input unpadded; our model masks padded keys out of
  every real head through one extra head dimension (the query reads tracr's ``one``
  direction, the key the ``tokens:PAD`` direction: a logit of -1e4 on padding), and
  scales the query by ``sqrt((K + 1) / K)`` so the other logits are tracr's exactly.
- MLP operations that tracr lays out in parallel in one MLP layer get a layer each
  (the extra layers have zero attention): they read disjoint inputs and write disjoint
  outputs, so running them one after the other is exact, and every operation has a
  site of its own. Attention operations are heads ``a{L}.{H}``; unused heads and
  empty MLPs are all-zero sites.
- Categorical outputs: the unembedding projects onto the output operation's one-hot
  directions times ``logit_scale`` (its argmax is tracr's decoding); numerical
  outputs: one output unit, the value itself.

The operations metadata it records is described in ``scrubbing/tracr.py``.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, Iterable

import torch

from scrubbing.models import TinyConfig, TinyTransformer
from scrubbing.sites import Dataset
from scrubbing.tracr import DATA_FILE, FORMAT, META_FILE, MODEL_FILE, TracrFixture, check_fixture

PAD_LOGIT = 1e4  # the mask logit our heads put on padded keys (tracr: exclude them)
SOURCES = ("tokens", "indices")  # the embedding's operations
BOS_CLASS, PAD_CLASS = "BOS", "PAD"  # the classes of position 0 and of padding in every operation's table


def save_fixture(fixture: TracrFixture, directory: str | Path) -> Path:
    """Write ``fixture`` in the format ``scrubbing.tracr.load_fixture`` reads (model, data, ``fixture.json``)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fixture.model.save(directory / MODEL_FILE)
    tensors = {"inputs": fixture.data.inputs, **fixture.data.columns}
    save_file({k: _compact(v).contiguous() for k, v in tensors.items()}, str(directory / DATA_FILE))
    meta = {**fixture.meta, "format": FORMAT, "ops": fixture.ops}
    (directory / META_FILE).write_text(json.dumps(meta, indent=1, default=_json_value) + "\n")
    return directory


def _compact(values: torch.Tensor) -> torch.Tensor:
    """Integer tables are stored as int16 (loaded back as int64): the fixtures stay small."""
    if values.dtype.is_floating_point or values.numel() == 0:
        return values
    if values.min() >= -(2**15) and values.max() < 2**15:
        return values.to(torch.int16)
    return values


def compile_program(program, vocab: Iterable, max_seq_len: int, compiler_bos: str = "BOS", *,
                    compiler_pad: str = "PAD", name: str | None = None, mlp_exactness: int = 100,
                    logit_scale: float = 20.0, check: bool = True) -> TracrFixture:
    """Compile a RASP ``program`` with tracr and convert it to a ``TracrFixture``.

    Runs tracr's own pipeline (``compile_rasp_to_model``'s steps, kept apart so the
    graph that says which head or MLP implements which operation is at hand), converts
    the weights, runs tracr on every input of length 1 .. ``max_seq_len`` and records its
    outputs, and (``check``) verifies that the converted model reproduces them.
    """
    try:
        from tracr.compiler import (assemble, basis_inference, craft_graph_to_model, craft_model_to_transformer,
                                    expr_to_craft_graph, nodes, rasp_to_graph, validating)
        from tracr.craft import bases
        from tracr.rasp import rasp
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("compile_program needs tracr, jax and dm-haiku: pip install -e '.[tracr]' "
                          f"(in a separate environment; see benchmarks/tracr/README.md). ({err})") from err

    vocab = sorted(set(vocab))
    for special in (compiler_bos, compiler_pad):
        if special in vocab:
            raise ValueError(f"compiler token {special!r} must not be in the vocabulary {vocab}.")
    unsupported = validating.static_validate(program)
    if unsupported:
        reasons = "; ".join(f"{e.expr.name}: {e.reason}" for e in unsupported)
        raise NotImplementedError(f"tracr cannot compile: {reasons}")

    extracted = rasp_to_graph.extract_rasp_graph(program)
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    basis_inference.infer_bases(graph, sink, set(vocab), max_seq_len)
    expr_to_craft_graph.add_craft_components_to_rasp_graph(
        graph, bos_dir=bases.BasisDirection(rasp.tokens.label, compiler_bos), mlp_exactness=mlp_exactness)
    craft_model = craft_graph_to_model.craft_graph_to_model(graph, sources)
    assembled = craft_model_to_transformer.craft_model_to_transformer(
        craft_model=craft_model, graph=graph, sink=sink, max_seq_len=max_seq_len, causal=False,
        compiler_bos=compiler_bos, compiler_pad=compiler_pad)
    _, module_names = assemble._get_model_config_and_module_names(craft_model)

    ops, label_to_name = _describe_ops(graph, nodes, rasp)
    layout = _layout(craft_model, module_names, graph, nodes)
    output_label = sink[nodes.EXPR].label
    output_op = label_to_name[output_label]
    categorical = rasp.is_categorical(sink[nodes.EXPR])
    out_index, output_values = _output_basis(assembled, output_label, categorical)
    model, sites = _convert(assembled, layout, compiler_pad, out_index, logit_scale if categorical else 1.0)
    for op_name, op in ops.items():
        if op["kind"] != "source" and op["label"] not in sites:
            raise NotImplementedError(f"operation {op_name!r} has no head or MLP in the compiled model.")
        op["sites"] = sites.get(op["label"], ["embed"])
        op["site"] = op["sites"][-1]

    encode = assembled.input_encoder.encoding_map
    T = max_seq_len + 1
    inputs, rows, lengths = [], [], []
    for n in range(1, max_seq_len + 1):
        for xs in itertools.product(vocab, repeat=n):
            rows.append(list(xs))
            lengths.append(n)
            inputs.append([encode[compiler_bos]] + [encode[x] for x in xs] + [encode[compiler_pad]] * (max_seq_len - n))
    inputs = torch.tensor(inputs, dtype=torch.long)

    tracr_out, bos_values = _run_tracr(assembled, rows, compiler_bos, out_index, ops)
    tables = _op_tables(ops, graph, nodes, label_to_name, rows, T, bos_values, rasp)

    mask = torch.zeros(len(rows), T)
    for i, n in enumerate(lengths):
        mask[i, 1:n + 1] = 1
    if categorical:
        target = tracr_out.argmax(-1)
    else:
        target = tracr_out[..., 0].clone()
    target = target * mask.to(target.dtype)  # padding and BOS: 0, never scored
    columns = {"target": target, "mask": mask, "tracr_out": tracr_out, "length": torch.tensor(lengths),
               **{f"op:{k}": v for k, v in tables.items()}}
    meta = {
        "name": name or program.name,
        "vocab": vocab,
        "max_seq_len": max_seq_len,
        "compiler_bos": compiler_bos,
        "compiler_pad": compiler_pad,
        "token_ids": {str(k): v for k, v in encode.items()},
        "output_op": output_op,
        "output_encoding": "categorical" if categorical else "numerical",
        "output_values": output_values,
        "logit_scale": logit_scale if categorical else None,
        "residual_labels": list(assembled.residual_labels),
        "tracr_layout": [{"module": m, "ops": sorted({label_to_name[lbl] for lbl in entry["labels"]})}
                         for m, entry in zip(module_names, layout["tracr"])],
        "n_examples": len(rows),
    }
    fixture = TracrFixture(model.eval(), Dataset(inputs, columns), ops, meta)
    if check:
        check_fixture(fixture)
    return fixture


def _describe_ops(graph, nodes, rasp) -> tuple[dict, dict]:
    """Every SOp of the graph (selectors folded into their users): kind, reads, parents."""
    label_to_name: dict[str, str] = {}
    for node_id in graph.nodes:
        expr = graph.nodes[node_id][nodes.EXPR]
        if isinstance(expr, rasp.SOp):
            base = expr.name
            candidate = base if base not in label_to_name.values() else expr.label
            label_to_name[expr.label] = candidate
    ops: dict[str, dict] = {}
    for node_id in graph.nodes:
        expr = graph.nodes[node_id][nodes.EXPR]
        if not isinstance(expr, rasp.SOp):
            continue
        name = label_to_name[expr.label]
        record: dict[str, Any] = {"label": expr.label, "type": type(expr).__name__,
                                  "encoding": "numerical" if rasp.is_numerical(expr) else "categorical"}
        n = lambda e: label_to_name[e.label]  # noqa: E731
        if isinstance(expr, (rasp.TokensType, rasp.IndicesType)):
            record.update(kind="source", reads={})
        elif isinstance(expr, rasp.Aggregate):
            sel = _plain_select(expr.selector, rasp, name)
            record.update(kind="attention", reads={"q": [n(sel.queries)], "k": [n(sel.keys)], "v": [n(expr.sop)]},
                          predicate=sel.predicate.name)
        elif isinstance(expr, rasp.SelectorWidth):
            sel = _plain_select(expr.selector, rasp, name)
            record.update(kind="selector_width", reads={"in": _unique([n(sel.queries), n(sel.keys)])},
                          predicate=sel.predicate.name)
        elif isinstance(expr, (rasp.Map, rasp.SequenceMap)):
            record.update(kind="mlp", reads={"in": _unique([n(c) for c in expr.children])})
        else:
            raise NotImplementedError(f"operation {name!r} ({type(expr).__name__}) is not supported by the converter.")
        ops[name] = record
    for record in ops.values():
        _add_padding_reads(record)
        record["parents"] = _unique([p for slot in record["reads"].values() for p in slot])
    return ops, label_to_name


def _add_padding_reads(record: dict) -> None:
    """Heads mask padded keys: a key slot (or a selector width, whose head is recomputed) that reads
    nothing from the embedding also reads ``indices`` (which positions hold tokens)."""
    if record["kind"] == "attention":
        keys = record["reads"]["k"]
        if not set(keys) & set(SOURCES):
            keys.append("indices")
    elif record["kind"] == "selector_width":
        reads = record["reads"]["in"]
        if not set(reads) & set(SOURCES):
            reads.append("indices")
    # two embed leaves cannot feed one slot; tokens carries the padding (and, per position, the index)
    for parents in record["reads"].values():
        if "tokens" in parents and "indices" in parents:
            parents.remove("indices")


def _plain_select(selector, rasp, name):
    if not isinstance(selector, rasp.Select):
        raise NotImplementedError(f"operation {name!r}: only plain Select selectors are supported by the converter, "
                                  f"got {type(selector).__name__}.")
    return selector


def _unique(items):
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _layout(craft_model, module_names, graph, nodes) -> dict:
    """Which tracr module, head and hidden units implement each operation."""
    from tracr.craft import transformers

    head_owner: dict[int, str] = {}
    mlp_owner: dict[Any, str] = {}  # hidden basis direction -> op label
    for node_id in graph.nodes:
        block = graph.nodes[node_id].get(nodes.MODEL_BLOCK)
        if block is None:
            continue
        label = graph.nodes[node_id][nodes.EXPR].label
        parts = block.blocks if isinstance(block, transformers.SeriesWithResiduals) else [block]
        for part in parts:
            if isinstance(part, transformers.MLP):
                for direction in part.fst.output_space.basis:
                    if direction in mlp_owner and mlp_owner[direction] != label:
                        raise NotImplementedError(f"hidden unit {direction} is shared by {mlp_owner[direction]} and "
                                                  f"{label}; the converter cannot split that MLP.")
                    mlp_owner[direction] = label
            else:
                for head in part.as_multi().heads():
                    head_owner[id(head)] = label
    entries = []
    for module_name, block in zip(module_names, craft_model.blocks):
        layer = int(module_name.split("/")[1].split("_")[1])
        if isinstance(block, transformers.MLP):
            groups: dict[str, list[int]] = {}
            for j, direction in enumerate(block.fst.output_space.basis):
                groups.setdefault(mlp_owner[direction], []).append(j)
            entries.append({"layer": layer, "type": "mlp", "groups": groups, "labels": list(groups)})
        else:
            heads = [head_owner[id(h)] for h in block.as_multi().heads()]
            entries.append({"layer": layer, "type": "attn", "heads": heads, "labels": heads})
    return {"tracr": entries}


def _param(assembled, module, name):
    import numpy as np

    return torch.tensor(np.asarray(assembled.params[module][name]), dtype=torch.float32)


def _convert(assembled, layout, compiler_pad, out_index, scale) -> tuple[TinyTransformer, dict[str, list[str]]]:
    """tracr's weights in a TinyTransformer; returns it and each operation's sites (by label)."""
    cfg_t = assembled.model_config
    labels = list(assembled.residual_labels)
    D, K, H = len(labels), cfg_t.key_size, cfg_t.num_heads
    by_layer: dict[int, dict] = {}
    for entry in layout["tracr"]:
        by_layer.setdefault(entry["layer"], {})[entry["type"]] = entry
    # our layers: tracr layer l's attention with its first MLP operation, then one layer per further MLP operation
    plan = []
    for layer in range(cfg_t.num_layers):
        attn = by_layer.get(layer, {}).get("attn")
        mlp = by_layer.get(layer, {}).get("mlp")
        groups = sorted(mlp["groups"].items(), key=lambda kv: kv[1][0]) if mlp else []
        plan.append((layer, attn, groups[0] if groups else None))
        plan += [(layer, None, group) for group in groups[1:]]
    d_mlp = max([len(g[1]) for _, _, g in plan if g] + [1])
    token = _param(assembled, "token_embed", "embeddings")
    cfg = TinyConfig(n_layers=len(plan), n_heads=H, d_model=D, d_head=K + 1, d_vocab=token.shape[0],
                     n_ctx=_param(assembled, "pos_embed", "embeddings").shape[0], d_mlp=d_mlp, n_out=len(out_index),
                     causal=False, layer_norm=False)
    one, pad = labels.index("one"), labels.index(f"tokens:{compiler_pad}")
    sites: dict[str, list[str]] = {}
    state: dict[str, torch.Tensor] = {"embed.weight": token, "pos_embed": _param(assembled, "pos_embed", "embeddings")}
    mask_weight = math.sqrt(PAD_LOGIT * math.sqrt(K + 1))
    for i, (layer, attn, group) in enumerate(plan):
        prefix, tracr = f"blocks.{i}", f"transformer/layer_{layer}"
        W = {x: torch.zeros(H, D, K + 1) for x in "QKV"}
        W_O = torch.zeros(H, K + 1, D)
        b_O = torch.zeros(D)
        if attn is not None:
            for part in ("query", "key", "value"):
                if _param(assembled, f"{tracr}/attn/{part}", "b").abs().max() > 0:
                    raise NotImplementedError("tracr attention with biases is not supported by the converter.")
            q, k, v = (_param(assembled, f"{tracr}/attn/{p}", "w").reshape(D, H, K).permute(1, 0, 2)
                       for p in ("query", "key", "value"))
            o = _param(assembled, f"{tracr}/attn/linear", "w").reshape(H, K, D)
            W["Q"][:, :, :K] = q * math.sqrt((K + 1) / K)
            W["K"][:, :, :K], W["V"][:, :, :K], W_O[:, :K] = k, v, o
            b_O = _param(assembled, f"{tracr}/attn/linear", "b")
            for h, label in enumerate(attn["heads"]):
                W["Q"][h, one, K] = mask_weight
                W["K"][h, pad, K] = -mask_weight
                sites.setdefault(label, []).append(f"a{i}.{h}")
        state.update({f"{prefix}.attn.W_Q": W["Q"], f"{prefix}.attn.W_K": W["K"], f"{prefix}.attn.W_V": W["V"],
                      f"{prefix}.attn.W_O": W_O, f"{prefix}.attn.b_O": b_O})
        w1, b1, w2 = torch.zeros(d_mlp, D), torch.zeros(d_mlp), torch.zeros(D, d_mlp)
        b2 = torch.zeros(D)
        if group is not None:
            label, units = group
            idx = torch.tensor(units)
            n = len(units)
            w1[:n] = _param(assembled, f"{tracr}/mlp/linear_1", "w")[:, idx].T
            b1[:n] = _param(assembled, f"{tracr}/mlp/linear_1", "b")[idx]
            w2[:, :n] = _param(assembled, f"{tracr}/mlp/linear_2", "w")[idx].T
            if _param(assembled, f"{tracr}/mlp/linear_2", "b").abs().max() > 0:
                raise NotImplementedError("tracr MLP output biases are not supported by the converter.")
            sites.setdefault(label, []).append(f"m{i}")
        state.update({f"{prefix}.mlp.0.weight": w1, f"{prefix}.mlp.0.bias": b1,
                      f"{prefix}.mlp.2.weight": w2, f"{prefix}.mlp.2.bias": b2})
    unembed = torch.zeros(len(out_index), D)
    unembed[torch.arange(len(out_index)), torch.tensor(out_index)] = scale
    state.update({"unembed.weight": unembed, "unembed.bias": torch.zeros(len(out_index))})
    model = TinyTransformer(cfg)
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise RuntimeError(f"converter left parameters unset: {sorted(missing)}")
    model.load_state_dict(state)
    return model, sites


def _output_basis(assembled, output_label, categorical) -> tuple[list[int], list]:
    labels = list(assembled.residual_labels)
    if not categorical:
        return [labels.index(output_label)], []
    encoding = assembled.output_encoder.encoding_map  # value -> output id
    values = sorted(encoding, key=lambda v: encoding[v])
    return [labels.index(f"{output_label}:{v}") for v in values], values


def _run_tracr(assembled, rows, bos, out_index, ops):
    """tracr's own output-space values on every input (unpadded), and each operation's value at BOS."""
    import jax
    import numpy as np

    forward = jax.jit(assembled.forward)
    encode = assembled.input_encoder.encoding_map
    labels = list(assembled.residual_labels)
    T = max(len(r) for r in rows) + 1
    out = torch.zeros(len(rows), T, len(out_index))
    bos_values: dict[str, list] = {name: [] for name in ops}
    for i, xs in enumerate(rows):
        tokens = np.array([[encode[bos]] + [encode[x] for x in xs]])
        residual = np.asarray(forward(assembled.params, tokens).transformer_output.output)[0]
        out[i, :len(xs) + 1] = torch.from_numpy(residual[:, out_index].astype(np.float32))
        for name, op in ops.items():
            dims = [j for j, lbl in enumerate(labels) if lbl == op["label"] or lbl.startswith(op["label"] + ":")]
            bos_values[name].append(tuple(np.round(residual[0, dims], 3).tolist()) if dims else ())
    return out, bos_values


def _op_tables(ops, graph, nodes, label_to_name, rows, T, bos_values, rasp) -> dict[str, torch.Tensor]:
    """Each operation's value on every input and position, as class ids; fills ``ops[name]['values']``."""
    exprs = {label_to_name[graph.nodes[i][nodes.EXPR].label]: graph.nodes[i][nodes.EXPR]
             for i in graph.nodes if isinstance(graph.nodes[i][nodes.EXPR], rasp.SOp)}
    tables = {}
    for name, op in ops.items():
        bos_classes = sorted(set(bos_values[name]))
        values: list = []
        index: dict = {}
        table = torch.zeros(len(rows), T, dtype=torch.long)
        n_bos = len(bos_classes) if len(bos_classes) > 1 else 1
        for i, xs in enumerate(rows):
            got = rasp.evaluate(exprs[name], list(xs))
            table[i, 0] = bos_classes.index(bos_values[name][i]) if len(bos_classes) > 1 else 0
            for t, value in enumerate(got, start=1):
                key = _value_key(value)
                if key not in index:
                    index[key] = len(values)
                    values.append(_json_value(value))
                table[i, t] = n_bos + 1 + index[key]
            table[i, len(xs) + 1:] = n_bos  # PAD
        op["values"] = values
        op["classes"] = ([BOS_CLASS] if n_bos == 1 else [f"{BOS_CLASS}{c}" for c in bos_classes]) + [PAD_CLASS] + \
            [str(v) for v in values]
        tables[name] = table
    return tables


def _value_key(value):
    if isinstance(value, float):
        return round(value, 9)
    return value


def _json_value(value):
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return round(value, 9)
    try:
        return value.item()
    except AttributeError:
        return str(value)

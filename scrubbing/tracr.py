"""Compiled ground truth: load the tracr fixtures and derive the hypothesis each program implies.

tracr (DeepMind) compiles a RASP program into transformer weights in which every
attention head and MLP implements one known RASP operation, so the true hypothesis
follows from the program. The compiler (tracr's weights → a ``TinyTransformer``) lives
with the fixtures it writes, in ``benchmarks/tracr/compiler.py``, and needs jax; this
module needs only torch, safetensors and json:

    model, data, ops = load_fixture("benchmarks/tracr/fixtures/reverse")
    hypothesis = true_hypothesis(load_fixture("benchmarks/tracr/fixtures/reverse"))

A fixture directory holds the converted model (``model.safetensors``, a non-causal
``TinyTransformer`` on positions ``[BOS, x1 .. xn, PAD ...]``), every input of length
1 .. ``max_seq_len`` with tracr's own outputs (``data.safetensors``) and the operations
metadata (``fixture.json``): for every RASP operation, by name, ``site`` (the site that
writes it: ``embed``, ``a{L}.{H}`` or ``m{L}``; a selector width is an attention head
followed by an MLP, listed in ``sites``, with ``site`` the MLP), ``reads`` (the
operations each input slot reads: ``q``/``k``/``v`` for heads, ``in`` for MLPs),
``parents``, ``encoding``, ``values`` (its distinct values) and ``classes``; its value on
every input is the dataset column ``op:<name>``, class ids per position into ``classes``
(``BOS`` at position 0, ``PAD`` on padding, else an index into ``values``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import networkx as nx
import torch

from .errors import HypothesisError, ScrubError
from .hypothesis import Edge, Hypothesis
from .models import TinyTransformer
from .sites import Dataset

MODEL_FILE = "model.safetensors"
DATA_FILE = "data.safetensors"
META_FILE = "fixture.json"
FORMAT = 1
REGENERATE = "regenerate it with benchmarks/tracr/compile.py"
META_KEYS = ("output_op", "output_encoding", "output_values", "logit_scale", "vocab", "max_seq_len")  # what is read
OP_KEYS = ("kind", "site", "reads", "values", "classes")
COLUMNS = ("target", "mask", "tracr_out")


# -- the fixture ----------------------------------------------------------------------------------
@dataclass
class TracrFixture:
    """A compiled program: the converted model, every input, and what each operation computes.

    Unpacks as ``model, data, ops = fixture``. ``data.columns``: ``target`` (tracr's own
    output per position: class ids into ``meta["output_values"]``, or floats), ``mask``
    (1 on the positions that hold a token), ``tracr_out`` (tracr's raw output-space values,
    ``[N, T, n_out]``), ``length`` and one ``op:<name>`` table per operation.
    """

    model: TinyTransformer
    data: Dataset
    ops: dict[str, dict]
    meta: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.model, self.data, self.ops))

    @property
    def name(self) -> str:
        return self.meta.get("name", "tracr")

    @property
    def categorical(self) -> bool:
        return self.meta["output_encoding"] == "categorical"

    def op(self, name: str) -> dict:
        """The metadata of one operation; refuses an unknown name, listing the known ones."""
        if name not in self.ops:
            raise HypothesisError(f"no operation {name!r} in tracr fixture {self.name!r}; use one of "
                                  f"{sorted(self.ops)}.")
        return self.ops[name]

    def decode_output(self, outputs: torch.Tensor) -> list[list[Any]]:
        """Model outputs ``[N, T, n_out]`` decoded like tracr: argmax values (categorical) or floats."""
        if self.categorical:
            values = self.meta["output_values"]
            return [[values[i] for i in row] for row in outputs.argmax(-1).tolist()]
        return outputs[..., 0].tolist()


def load_fixture(directory: str | Path) -> TracrFixture:
    """Load a fixture written by ``benchmarks/tracr/compiler.py``; refuses (``ScrubError``) one that is incomplete."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (META_FILE, DATA_FILE, MODEL_FILE):
        if not (directory / name).is_file():
            raise ScrubError(f"tracr fixture {directory}: no {name}; {REGENERATE}.")
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ScrubError(f"tracr fixture {directory}: {META_FILE} is not valid JSON ({err}); {REGENERATE}.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ScrubError(f"tracr fixture {directory}: format {found!r}, expected {FORMAT}; {REGENERATE}.")
    ops = meta.pop("ops", None)
    try:
        tensors = {k: v.long() if not v.dtype.is_floating_point else v
                   for k, v in load_file(str(directory / DATA_FILE)).items()}
        model = TinyTransformer.load(directory / MODEL_FILE)
    except Exception as err:
        raise ScrubError(f"tracr fixture {directory}: cannot read its tensors ({type(err).__name__}: {err}); "
                         f"{REGENERATE}.") from None
    if "inputs" not in tensors:
        raise ScrubError(f"tracr fixture {directory}: {DATA_FILE} holds no 'inputs'; {REGENERATE}.")
    inputs = tensors.pop("inputs")
    _check_format(directory, meta, ops, tensors, inputs.shape)
    return TracrFixture(model, Dataset(inputs, tensors), ops, meta)


def _check_format(directory: Path, meta: dict, ops, columns: dict, shape) -> None:
    """Every field the hypotheses and tasks read is there, and every table fits the inputs ``[N, T]``."""
    where = f"tracr fixture {directory}"
    missing = [k for k in META_KEYS if k not in meta] + ([] if isinstance(ops, dict) and ops else ["ops"])
    if missing:
        raise ScrubError(f"{where}: {META_FILE} has no {', '.join(missing)}; {REGENERATE}.")
    if meta["output_encoding"] not in ("categorical", "numerical"):
        raise ScrubError(f"{where}: output_encoding must be 'categorical' or 'numerical', got "
                         f"{meta['output_encoding']!r}; {REGENERATE}.")
    if meta["output_op"] not in ops:
        raise ScrubError(f"{where}: the output operation {meta['output_op']!r} is not among the operations "
                         f"{sorted(ops)}; {REGENERATE}.")
    for name, op in ops.items():
        absent = [k for k in OP_KEYS if k not in op] if isinstance(op, dict) else list(OP_KEYS)
        if absent:
            raise ScrubError(f"{where}: operation {name!r} has no {', '.join(absent)}; {REGENERATE}.")
        if not isinstance(op["reads"], dict) or not all(isinstance(ps, list) for ps in op["reads"].values()):
            raise ScrubError(f"{where}: operation {name!r}: reads must map each slot to a list of operations, got "
                             f"{op['reads']!r}; {REGENERATE}.")
        unknown = sorted({p for ps in op["reads"].values() for p in ps if p not in ops})
        if unknown:
            raise ScrubError(f"{where}: operation {name!r} reads unknown operation(s) {unknown}; {REGENERATE}.")
    for column in [*COLUMNS, *(f"op:{name}" for name in ops)]:
        if column not in columns:
            raise ScrubError(f"{where}: {DATA_FILE} has no column {column!r}; {REGENERATE}.")
        if tuple(columns[column].shape[:2]) != tuple(shape):
            raise ScrubError(f"{where}: column {column!r} has shape {tuple(columns[column].shape)}, but the inputs "
                             f"are {tuple(shape)}; {REGENERATE}.")
    for name, op in ops.items():
        table = columns[f"op:{name}"]
        if table.dim() != 2 or table.dtype.is_floating_point:
            raise ScrubError(f"{where}: column 'op:{name}' must hold class ids [N, T], got {table.dtype} of shape "
                             f"{tuple(table.shape)}; {REGENERATE}.")
        if len(table) and (int(table.min()) < 0 or int(table.max()) >= len(op["classes"])):
            raise ScrubError(f"{where}: column 'op:{name}' has class ids outside the {len(op['classes'])} classes "
                             f"of operation {name!r}; {REGENERATE}.")


def check_fixture(fixture: TracrFixture, atol: float = 1e-4) -> dict:
    """Does the model reproduce tracr's recorded outputs on every input? Refuses if not; returns the worst errors."""
    model, data = fixture.model, fixture.data
    with torch.no_grad():
        out = model(data.inputs)
    mask = data.columns["mask"].bool()
    recorded = data.columns["tracr_out"]
    scale = fixture.meta["logit_scale"] or 1.0
    err = ((out / scale - recorded).abs().amax(-1) * mask).max().item()
    if fixture.categorical:
        wrong = int(((out.argmax(-1) != data.columns["target"]) & mask).sum())
    else:
        wrong = int((((out[..., 0] - data.columns["target"]).abs() > atol) & mask).sum())
    if wrong or err > atol:
        raise ScrubError(f"tracr fixture {fixture.name!r}: the converted model differs from tracr on {wrong} positions "
                         f"(largest output difference {err:.3g}); {REGENERATE}.")
    return {"max_abs_diff": err, "wrong_positions": wrong}


# -- the hypothesis the program implies -------------------------------------------------------
def op_feature(name: str):
    """Feature: the operation's value at every position (class ids ``[N, T]``, from the dataset column)."""

    def feature(data: Dataset) -> torch.Tensor:
        return data.columns[f"op:{name}"]

    feature.__name__ = name
    return feature


def row_feature(name: str):
    """Feature: the operation's whole row of values, one class per distinct row (``[N]``): a sample
    carries every position of the operation's site at once."""

    def feature(data: Dataset) -> torch.Tensor:
        return torch.unique(data.columns[f"op:{name}"], dim=0, return_inverse=True)[1]

    feature.__name__ = f"{name} (whole row)"
    return feature


def mapped_feature(fixture: TracrFixture, name: str, fn, label: str | None = None):
    """Feature: ``fn`` of the operation's value at every token position (BOS and padding keep their classes).

    ``mapped_feature(fixture, "length", lambda n: n >= 3)`` is a coarser claim than ``length`` itself.
    """
    op = fixture.op(name)
    n_special = len(op["classes"]) - len(op["values"])
    images: dict = {}
    lookup = list(range(n_special))
    for value in op["values"]:
        image = fn(value)
        images.setdefault(image, len(images))
        lookup.append(n_special + images[image])
    table = torch.tensor(lookup)

    def feature(data: Dataset) -> torch.Tensor:
        return table[data.columns[f"op:{name}"]]

    feature.__name__ = label or f"f({name})"
    return feature


def is_row_determined(fixture: TracrFixture, name: str) -> bool:
    """Does the operation's value at any one token position fix its whole row (like ``length``, or
    ``length - indices``)? Then the per-position classes at every token position are the classes of
    the whole row, and a per-input feature (``row_feature``) allows exactly the same swaps."""
    if fixture.op(name)["kind"] == "source":
        return False
    table, mask = fixture.data.columns[f"op:{name}"], fixture.data.columns["mask"].bool()
    rows = torch.unique(table, dim=0, return_inverse=True)[1]
    for t in range(1, table.shape[1]):
        present = mask[:, t]
        value, row = table[present, t], rows[present]
        pairs = torch.unique(torch.stack([value, row]), dim=1)
        if pairs.shape[1] != torch.unique(value).numel():  # one value at t, several rows
            return False
    return True


def true_hypothesis(fixture: TracrFixture, name: str | None = None, per_input: str = "auto",
                    allow_singletons: bool = True) -> Hypothesis:
    """The hypothesis the program implies, derived from the operations metadata.

    One node per RASP operation, at the site that computes it, with the operation's
    value per position as its feature. ``tokens`` and ``indices`` are ``embed`` leaves
    (per position: the token; whether the position holds a token). A head's edges go
    into the slots the program names (the select's queries into ``q``, its keys into
    ``k``, the aggregated operation into ``v``); a head whose keys are not read from the
    embedding also reads ``indices`` into ``k``: which positions hold tokens (the
    compiled model's padding mask). A selector width (head + MLP) is one node at its MLP;
    its head is recomputed on the way. The output reads the program's output operation.

    ``per_input="auto"``: an operation whose value at any one token position fixes its
    whole row (``is_row_determined``: ``length``, ``length - indices``) gets a per-input
    feature (``row_feature``), which allows exactly the swaps the per-position feature
    allows at every token position, but draws one sample for the whole row: the treeified
    run no longer multiplies by the number of positions at that node (for ``reverse``,
    ~16x fewer recomputations). ``"never"`` keeps every feature per position.

    Singleton classes are allowed by default: the dataset is every input, so an operation
    value that only one input has is a fact of the program, not a hypothesis too fine.
    """
    return program_hypothesis(
        fixture, name or f"{fixture.name}: the compiled program",
        f"tracr's program {fixture.name!r}: every RASP operation at the site tracr compiled it to, reading exactly "
        "the operations the program says, with its value per position as its feature.",
        per_input=per_input, allow_singletons=allow_singletons)


def program_hypothesis(fixture: TracrFixture, name: str, description: str = "", *,
                       reads: dict[str, dict[str, list[str]]] | None = None,
                       features: dict[str, Any] | None = None,
                       direct: Iterable[tuple[str, str]] = (),
                       per_input: str = "auto", allow_singletons: bool = True) -> Hypothesis:
    """A hypothesis built like ``true_hypothesis`` from the program, with some claims changed.

    ``reads``: per operation, the slots whose parents the claim replaces, e.g.
    ``{"reverse": {"q": ["tokens"]}}`` ("the query reads the token"); ``features``: per
    operation, a feature function replacing its value (e.g. a coarser one); ``direct``:
    ``(child, parent)`` edges that claim only the direct path (``Edge(via="direct")``), so
    what the program computes in between is left to the random draw. Operations no longer
    on a path to the output are dropped.
    """
    if per_input not in ("auto", "never"):
        raise HypothesisError(f"per_input must be 'auto' or 'never'; got {per_input!r}.")
    ops = {k: {**v, "reads": {slot: list(ps) for slot, ps in v["reads"].items()}} for k, v in fixture.ops.items()}
    for op_name, slots in (reads or {}).items():
        unknown = set(slots) - set(fixture.op(op_name)["reads"])
        if unknown:
            raise HypothesisError(f"operation {op_name!r} of {fixture.name!r} has no slot {sorted(unknown)}; its "
                                  f"slots: {list(ops[op_name]['reads'])}.")
        ops[op_name]["reads"].update({slot: list(parents) for slot, parents in slots.items()})
    for op in ops.values():
        op["parents"] = list(dict.fromkeys(p for ps in op["reads"].values() for p in ps))
    features, direct = dict(features or {}), set(direct)
    for op_name in [*features, *(child for child, _ in direct)]:
        fixture.op(op_name)
    for child, parent in direct:
        if parent not in ops[child]["parents"]:
            raise HypothesisError(f"direct edge ({child!r}, {parent!r}): operation {child!r} of {fixture.name!r} does "
                                  f"not read {parent!r}; it reads {ops[child]['parents']}.")
    output_op = fixture.meta["output_op"]
    graph = _reads_graph(fixture, ops)
    keep = nx.descendants(graph, output_op) | {output_op}  # what the output reads, directly or not
    hyp = Hypothesis(name, description, allow_singletons=allow_singletons)
    for op_name in nx.dfs_postorder_nodes(graph):  # every operation after the ones it reads
        if op_name not in keep:
            continue
        if op_name in features:
            feature = features[op_name]
        elif per_input == "auto" and is_row_determined(fixture, op_name):
            feature = row_feature(op_name)
        else:
            feature = op_feature(op_name)
        hyp.node(op_name, ops[op_name]["site"], feature, parents=_edges(op_name, ops[op_name], direct))
    hyp.output(parents=[output_op])
    return hyp


def _reads_graph(fixture: TracrFixture, ops: dict) -> nx.DiGraph:
    """Operation -> each operation it reads (in the order it reads them), operations in sorted order; refuses
    a read of an unknown operation and a cycle."""
    graph = nx.DiGraph()
    graph.add_nodes_from(sorted(ops))
    for name in sorted(ops):
        for parent in ops[name]["parents"]:
            if parent not in ops:
                raise HypothesisError(f"operation {name!r} of {fixture.name!r} reads unknown operation {parent!r}; "
                                      f"use one of {sorted(ops)}.")
            graph.add_edge(name, parent)
    if not nx.is_directed_acyclic_graph(graph):
        edges = nx.find_cycle(graph)
        cycle = " -> ".join([a for a, _ in edges] + [edges[0][0]])
        raise HypothesisError(f"the reads of {fixture.name!r} form a cycle ({cycle}): an operation cannot read its "
                              "own output; change `reads`.")
    return graph


def _edges(name: str, op: dict, direct: set) -> list[Edge]:
    """Edges of one operation: one per parent, into the slots it feeds (every slot of an MLP)."""
    if op["kind"] == "source":
        return []
    slots_of: dict[str, list[str]] = {}
    for slot, parents in op["reads"].items():
        for parent in parents:
            slots_of.setdefault(parent, [])
            if slot not in slots_of[parent]:
                slots_of[parent].append(slot)
    edges = []
    for parent, slots in slots_of.items():
        into = None if op["kind"] != "attention" else tuple(slots)
        edges.append(Edge(parent, into=into, via="direct" if (name, parent) in direct else "all"))
    return edges


__all__ = ["TracrFixture", "load_fixture", "check_fixture", "true_hypothesis", "program_hypothesis", "op_feature",
           "row_feature", "mapped_feature", "is_row_determined"]

"""A damaged tracr fixture, or a derivation that asks for what the program lacks, is refused with a ``ScrubError``
that names the field (or operation) and the fix; the shipped fixtures load untouched."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmarks.tracr.task import FIXTURES, load
from scrubbing.errors import HypothesisError, ScrubError
from scrubbing.tracr import (DATA_FILE, META_FILE, MODEL_FILE, check_fixture, load_fixture, mapped_feature,
                             program_hypothesis)

FIX = "regenerate it with benchmarks/tracr/compile.py"


@pytest.fixture
def copy(tmp_path):
    """A private copy of the shipped ``succ_length`` fixture, to damage."""
    return shutil.copytree(FIXTURES / "succ_length", tmp_path / "succ_length")


def edit_meta(directory, change):
    meta = json.loads((directory / META_FILE).read_text())
    change(meta)
    (directory / META_FILE).write_text(json.dumps(meta))


def edit_data(directory, change):
    tensors = load_file(str(directory / DATA_FILE))
    change(tensors)
    save_file(tensors, str(directory / DATA_FILE))


def refused(directory, *words):
    with pytest.raises(ScrubError) as err:
        load_fixture(directory)
    message = str(err.value)
    for word in (*words, str(directory), FIX):
        assert word in message, (word, message)
    return message


def test_an_unknown_fixture_name_lists_the_shipped_ones():
    with pytest.raises(ScrubError, match=r"no tracr fixture 'ghost'.*\['frac_prevs', 'reverse', 'succ_length'\]"):
        load("ghost")


def test_an_untouched_copy_loads_like_the_shipped_fixture(copy):
    fixture, shipped = load_fixture(copy), load("succ_length")
    assert fixture.ops == shipped.ops and torch.equal(fixture.data.inputs, shipped.data.inputs)


@pytest.mark.parametrize("key", ["output_op", "output_encoding", "output_values", "logit_scale", "vocab",
                                 "max_seq_len", "ops"])
def test_a_missing_metadata_key_is_named(copy, key):
    edit_meta(copy, lambda meta: meta.pop(key))
    refused(copy, META_FILE, f"has no {key}")


@pytest.mark.parametrize("key", ["kind", "site", "reads", "values", "classes"])
def test_a_missing_operation_field_names_the_operation_and_the_field(copy, key):
    edit_meta(copy, lambda meta: meta["ops"]["length"].pop(key))
    refused(copy, "operation 'length'", f"has no {key}")


def test_a_wrong_format_an_unknown_output_or_read_and_a_bad_encoding_are_named(copy):
    edit_meta(copy, lambda meta: meta.update(format=0))
    refused(copy, "format 0, expected 1")
    edit_meta(copy, lambda meta: meta.update(format=1, output_op="nothing"))
    refused(copy, "output operation 'nothing'")
    edit_meta(copy, lambda meta: meta.update(output_op="succ_length", output_encoding="binary"))
    refused(copy, "output_encoding", "'binary'")
    edit_meta(copy, lambda meta: (meta.update(output_encoding="categorical"),
                                  meta["ops"]["succ_length"]["reads"]["in"].append("ghost")))
    refused(copy, "operation 'succ_length'", "unknown operation(s) ['ghost']")
    edit_meta(copy, lambda meta: meta["ops"]["succ_length"]["reads"].update(**{"in": "succ"}))
    refused(copy, "operation 'succ_length'", "reads must map each slot to a list")


def test_missing_files_and_unreadable_json_are_named(copy):
    (copy / META_FILE).write_text("{not json")
    refused(copy, META_FILE, "not valid JSON")
    (copy / MODEL_FILE).unlink()
    refused(copy, f"no {MODEL_FILE}")


@pytest.mark.parametrize("column", ["target", "mask", "tracr_out", "op:length"])
def test_a_missing_column_is_named(copy, column):
    edit_data(copy, lambda tensors: tensors.pop(column))
    refused(copy, DATA_FILE, f"no column {column!r}")


def test_a_table_of_the_wrong_shape_is_named_with_both_shapes(copy):
    n, t = load("succ_length").data.inputs.shape
    edit_data(copy, lambda tensors: tensors.update({"op:succ": tensors["op:succ"][:, :-1].contiguous()}))
    refused(copy, "column 'op:succ'", f"shape {(n, t - 1)}", f"inputs are {(n, t)}")
    edit_data(copy, lambda tensors: tensors.update({"op:succ": tensors["mask"][:, :, None].repeat(1, 1, 2).long()
                                                    .contiguous()}))
    refused(copy, "column 'op:succ'", "class ids [N, T]")
    edit_data(copy, lambda tensors: tensors.update({"op:succ": tensors["mask"].long() + 99}))
    refused(copy, "column 'op:succ'", "class ids outside", "operation 'succ'")


def test_a_model_that_no_longer_reproduces_tracr_is_refused(copy):
    fixture = load_fixture(copy)
    with torch.no_grad():
        fixture.model.unembed.weight.mul_(-1)
    with pytest.raises(ScrubError, match="differs from tracr on [1-9][0-9]* positions"):
        check_fixture(fixture)


def test_derivations_name_the_unknown_operation_slot_or_edge():
    fixture = load("succ_length")
    cases = [
        (dict(reads={"ghost": {"in": ["tokens"]}}), "no operation 'ghost'"),
        (dict(reads={"succ": {"q": ["tokens"]}}), "operation 'succ' of 'succ_length' has no slot ['q']"),
        (dict(reads={"succ": {"in": ["ghost"]}}), "reads unknown operation 'ghost'"),
        (dict(reads={"succ": {"in": ["succ_length"]}}), "form a cycle"),
        (dict(features={"ghost": None}), "no operation 'ghost'"),
        (dict(direct=[("succ", "length")]), "direct edge ('succ', 'length')"),
        (dict(per_input="sometimes"), "per_input must be 'auto' or 'never'"),
    ]
    for kwargs, words in cases:
        with pytest.raises(HypothesisError) as err:
            program_hypothesis(fixture, "broken", **kwargs)
        assert words in str(err.value), (kwargs, str(err.value))
    with pytest.raises(HypothesisError, match="no operation 'ghost'.*use one of"):
        mapped_feature(fixture, "ghost", lambda v: v)

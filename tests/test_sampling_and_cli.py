"""Class-conditional draws, and the `scrub` command end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scrubbing.cli import main
from scrubbing.sampling import ClassTable

ROOT = Path(__file__).resolve().parents[1]


def test_draws_stay_in_class_with_replacement_and_uniformly():
    classes = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    table = ClassTable(classes)
    examples = torch.arange(10).repeat(4000)
    drawn = table.draw(table.key(examples), np.random.default_rng(0))
    assert torch.equal(classes[drawn], classes[examples])
    assert (drawn == examples).any()  # with replacement: an example may draw itself
    counts = torch.bincount(drawn[examples == 5], minlength=10)[5:9].double()
    assert (counts / counts.sum() - 0.25).abs().max() < 0.03  # uniform within class 2


def test_pools_cap_the_sources_of_each_class():
    classes = torch.arange(100) % 2
    pooled = ClassTable(classes).pooled(3, np.random.default_rng(0))
    drawn = pooled.draw(pooled.key(torch.arange(100).repeat(20)), np.random.default_rng(1))
    assert torch.equal(classes[drawn], classes[torch.arange(100).repeat(20)])
    assert len(torch.unique(drawn)) == 6  # three per class


def test_per_position_draws_match_each_position():
    classes = torch.tensor([[0, 1], [0, 0], [1, 1], [1, 0]])
    table = ClassTable(classes)
    examples = torch.tensor([0, 1, 2, 3]).repeat(50)
    drawn = table.draw(table.key(examples), np.random.default_rng(1))  # [200, 2]: one draw per position
    assert drawn.shape == (200, 2)
    for t in range(2):
        assert torch.equal(classes[drawn[:, t], t], classes[examples, t])


def test_scrub_run_writes_the_stable_json(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "report.json"
    assert main(["run", "hypotheses/logic.py", "--n-refs", "100", "--regimes", "random", "--json", str(out),
                 "--quiet"]) == 0
    report = json.loads(out.read_text())
    run = report["runs"][0]
    for key in ["hypothesis", "task", "seed", "n_refs", "model_loss", "baseline_loss", "regimes"]:
        assert key in run
    assert set(run["regimes"]) == {"random", "adversarial-join", "worst-swap"}
    random = run["regimes"]["random"]
    for key in ["scrubbed_loss", "loss_gap", "loss_gap_ci", "abs_gap", "abs_gap_ci", "noise_floor", "recovered",
                "recovered_ci"]:
        assert key in random, key
    assert len(random["loss_gap_ci"]) == 2


def test_scrub_reports_bad_files(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("hypotheses = []\n")
    assert main(["run", str(bad), "--quiet"]) == 2
    assert "defines no 'task'" in capsys.readouterr().out


def test_memory_sizes_on_the_command_line():
    from scrubbing.cli import _bytes

    assert _bytes("512M") == 512 * 2**20 and _bytes("8g") == 8 * 2**30 and _bytes("1.5GB") == 3 * 2**29
    assert _bytes("4096") == 4096
    for bad in ("3X", "", "0", "-1G"):
        with pytest.raises(argparse.ArgumentTypeError):
            _bytes(bad)

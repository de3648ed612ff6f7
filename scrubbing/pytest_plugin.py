"""pytest collects hypothesis files as test items: one per hypothesis that carries expectations or is pinned.

Enable it for directories in ``pyproject.toml``::

    [tool.pytest.ini_options]
    testpaths = ["tests", "hypotheses"]
    scrub_paths = ["hypotheses"]

Sizes: ``scrub_n_refs`` (default 500), ``scrub_budget`` (16), ``scrub_seed`` (0), as ini options or
``--scrub-n-refs`` / ``--scrub-budget`` / ``--scrub-seed``. A failure prints one line per failed
check: regime, figure, interval and bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import suite
from .checks import failures, judged, regimes_needed
from .run import scrub

_DEFAULTS = {"n_refs": 500, "budget": 16, "seed": 0}


def pytest_addoption(parser):
    parser.addini("scrub_paths", "directories whose hypothesis files pytest collects", type="paths", default=[])
    for name, default in _DEFAULTS.items():
        parser.addini(f"scrub_{name}", f"{name} for hypothesis checks (default {default})", default=str(default))
        parser.addoption(f"--scrub-{name.replace('_', '-')}", type=int, default=None,
                         help=f"{name} for hypothesis checks (overrides the ini option)")


def _setting(config, name: str) -> int:
    value = config.getoption(f"--scrub-{name.replace('_', '-')}")
    return int(value if value is not None else config.getini(f"scrub_{name}"))


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix != ".py" or file_path.name.startswith("_"):
        return None
    roots = [Path(p).resolve() for p in parent.config.getini("scrub_paths")]
    if any(file_path.resolve().parent == root for root in roots):
        return HypothesisFileCollector.from_parent(parent, path=file_path)
    return None


class ExpectationFailed(Exception):
    pass


class HypothesisFileCollector(pytest.File):
    def collect(self):
        self.loaded = suite.load(self.path)
        for hypothesis in self.loaded.hypotheses:
            if hypothesis.expectations or self.loaded.pinned:
                yield HypothesisItem.from_parent(self, name=hypothesis.name, hypothesis=hypothesis)


class HypothesisItem(pytest.Item):
    def __init__(self, *, hypothesis, **kwargs):
        super().__init__(**kwargs)
        self.hypothesis = hypothesis

    def runtest(self):
        config, loaded = self.config, self.parent.loaded
        run = scrub(self.hypothesis, loaded.task, n_refs=_setting(config, "n_refs"), seed=_setting(config, "seed"),
                    budget=_setting(config, "budget"),
                    regimes=regimes_needed(self.hypothesis.expectations, loaded.pinned, self.hypothesis.name))
        lines = failures(judged(run, self.hypothesis.expectations).to_dict(), loaded.pinned)
        if lines:
            raise ExpectationFailed("\n".join(lines))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ExpectationFailed):
            return f"hypothesis {self.hypothesis.name!r} failed its checks:\n{excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"hypothesis: {self.name}"

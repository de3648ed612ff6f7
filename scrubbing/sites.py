"""What a site is, and the one interface the engine uses to reach a model.

A *site* is a component of the model graph G: it reads one or more input *slots*
(an attention head reads q, k and v; an MLP reads ``in``) and writes one output.
Every slot's value is the sum of its parent sites' outputs plus a constant — the
residual-stream view of a transformer. ``ModelAdapter.calibrate`` checks that
decomposition on real data, so a wrongly declared site list is refused instead of
giving silently wrong numbers.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import HypothesisError, ModelError


@dataclass(frozen=True)
class Site:
    """A model component: its name, its input slots and the sites that feed them."""

    name: str
    slots: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()

    @property
    def is_source(self) -> bool:
        """A source (the embedding) reads the raw input, not other sites."""
        return not self.slots


class ModelAdapter:
    """The engine's only view of a model.

    Subclasses provide ``sites`` (topologically ordered), ``output`` (the name of
    the output site), ``n_positions`` (length of the position axis of every site
    output, or None when outputs have no position axis) and two methods:

    - ``_clean(inputs, slots, upto)`` -> (site outputs, slot inputs if ``slots`` else {}) on a batch of raw
      inputs; with ``upto`` (a site name) the pass may stop once that site's output is read;
    - ``_run(site, slot_inputs, inputs)`` -> the site's output when its slots are
      given; ``inputs`` supplies anything that is not a site (e.g. attention masks).

    and optionally ``_shortcuts(site)``: cheaper ways to compute the same value (start the
    forward pass at the site's layer, call its module directly), each a function with
    ``_run``'s signature, best first. ``calibrate`` keeps, per site, the first one that
    reproduces ``_run`` on real data; ``_run`` stays the obviously correct path the
    reference implementation takes.
    """

    sites: dict[str, Site]
    output: str
    n_positions: int | None

    def __init__(self) -> None:
        self._offsets: dict[tuple[str, str], torch.Tensor] | None = None
        self.uses_context = True
        self.shortcuts: dict[str, Callable] = {}  # site -> the shortcut calibrate() verified for it
        self.early_stops: frozenset[str] = frozenset()  # sites a clean pass may stop at (verified by calibrate())
        self.calls: dict[str, int] = {}  # model calls of the last calibrate(), by kind

    # -- what subclasses implement -------------------------------------------------
    def _clean(self, inputs: torch.Tensor, slots: bool, upto: str | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[tuple[str, str], torch.Tensor]]:
        raise NotImplementedError

    def _run(self, site: str, slot_inputs: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _shortcuts(self, site: str) -> list[Callable]:
        return []

    def restore(self) -> None:
        """Undo any state a failed run may have left on the model (hooks)."""

    # -- what the engine calls ----------------------------------------------------------
    def site(self, name: str) -> Site:
        try:
            return self.sites[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.sites), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise HypothesisError(
                f"unknown site {name!r}.{hint} Known sites: {', '.join(self.sites)}."
            ) from None

    def clean(self, inputs: torch.Tensor, upto: str | None = None) -> dict[str, torch.Tensor]:
        """Outputs of every site on a batch of inputs (no scrubbing); with ``upto``, of the sites up to
        that one (in ``sites`` order), stopping the pass there where calibration showed that is safe."""
        stop = upto if upto in self.early_stops else None
        outputs, _ = self._guarded(self._clean, inputs, False, stop)
        names = list(self.sites)
        self._require(outputs, names if upto is None else names[: names.index(upto) + 1])
        return outputs

    def _require(self, outputs: dict, names: list[str]) -> None:
        missing = [name for name in names if name not in outputs]
        if missing:
            raise ModelError(
                f"site {missing[0]!r} produced no output in a forward pass (its hook never fired). "
                f"Check that the site list matches the model's forward pass."
            )

    def run(self, site: str, slot_inputs: dict[str, torch.Tensor], inputs: torch.Tensor,
            shortcut: bool = True) -> torch.Tensor:
        """The site's output given its slots; through its verified shortcut unless ``shortcut=False``."""
        fn = self.shortcuts.get(site, self._run) if shortcut else self._run
        return self._guarded(fn, site, slot_inputs, inputs)

    def slot_input(self, site: str, slot: str, parent_outputs: list[torch.Tensor]) -> torch.Tensor:
        """A slot's value from its parents' outputs: their sum plus the calibrated constant."""
        if self._offsets is None:
            raise ModelError("adapter used before calibrate(); call adapter.calibrate(inputs) first.")
        total = self._offsets[(site, slot)].to(parent_outputs[0].device) if parent_outputs else self._offsets[(site, slot)]
        for value in parent_outputs:
            total = total + value
        return total

    def calibrate(self, inputs: torch.Tensor, rtol: float = 1e-4) -> None:
        """Measure each slot's constant offset and check the sum decomposition holds.

        Also detects whether sites read anything from the raw input beyond the
        source sites (``uses_context``): if not, the engine may share computations
        across contexts; and verifies what the engine may skip: each site's
        shortcut (``shortcuts``) and where a clean pass may stop (``early_stops``).

        Cost, for an adapter that patches every site in one pass (``_run_all``) and checks
        shortcuts by block (``_shortcut_groups``), such as ``HookedAdapter``: a constant
        number of forward passes whatever the number of sites — one clean pass with slots
        and one shuffled-context pass on ``inputs``, two patched passes on the first ``CHECK_ROWS``
        rows, three or four calls per shortcut group (each about one block; the clean check on every
        row of ``inputs``, the structural ones on ``CHECK_ROWS``), and one traced pass on 16 rows for
        the early stops. ``calls`` counts them.
        """
        self.calls = {}
        outputs, slots = self._counted("clean", self._guarded, self._clean, inputs, True)
        self._require(outputs, list(self.sites))
        outputs = {key: value.clone() for key, value in outputs.items()}  # held across many later passes
        slots = {key: value.clone() for key, value in slots.items()}
        offsets = {}
        for site in self.sites.values():
            for slot in site.slots:
                actual = slots[(site.name, slot)]
                residual = actual - sum(outputs[p] for p in site.parents)
                offset = residual.mean(dim=0, keepdim=True)
                spread = (residual - offset).abs().max().item()
                scale = actual.abs().max().item() + 1e-6
                if spread > rtol * scale * 10 + 1e-5:
                    raise ModelError(
                        f"site {site.name!r} slot {slot!r}: its input is not the sum of its parents' "
                        f"outputs plus a constant (deviation {spread:.3g} vs scale {scale:.3g}). "
                        f"Declare the missing parent sites, or split the site so each slot reads a sum."
                    )
                offsets[(site.name, slot)] = offset[0]
        self._offsets = offsets
        self._batched = type(self)._run_all is not ModelAdapter._run_all
        # The clean check runs on every row (a shortcut wrong only on rarer inputs must not pass); the mixed and
        # shuffled checks, which test structure (slots confused, context read), on the first CHECK_ROWS.
        rows = min(len(inputs), self.CHECK_ROWS) if self._batched else len(inputs)
        given = {key: value[:rows] for key, value in slots.items()}
        mixed = self._mixed(given) if rows >= 2 else {}
        expected_mixed = self._independent_runs(inputs[:rows], outputs, given, mixed, rtol)
        if expected_mixed is None:  # a site's output moved with other sites' slots: check site by site
            self._batched = False
            mixed = self._mixed(slots) if len(inputs) >= 2 else {}
            expected_mixed = self._all_runs(mixed, inputs) if mixed else {}
            rows, given = len(inputs), slots
        shuffled = self._shuffled_runs(inputs, slots)
        self.uses_context = inputs.shape[0] < 2 or any(
            not torch.allclose(value, outputs[site], atol=1e-5, rtol=1e-4) for site, value in shuffled.items())
        flipped = inputs.flip(0)[:rows]
        checks = {
            "clean": (slots, inputs, outputs),
            "mixed": (mixed, inputs[:rows], expected_mixed),
            "shuffled": (given, flipped, {site: value[:rows] for site, value in shuffled.items()}),
        }
        if not mixed:
            del checks["mixed"]
        if not self.uses_context or not shuffled:
            del checks["shuffled"]
        self.shortcuts = self._verify_shortcuts(checks, rtol)
        self.early_stops = self._verify_early_stops(inputs[:16], rtol)

    CHECK_ROWS = 64  # rows of the structural shortcut checks (mixed slots, shuffled context); the clean one uses all
    _batched = False  # True while calibrate() checks many sites per pass (the adapter has ``_run_all``)

    def _counted(self, what: str, fn, *args):
        self.calls[what] = self.calls.get(what, 0) + 1
        return fn(*args)

    def _mixed(self, slots) -> dict[tuple[str, str], torch.Tensor]:
        """Every slot's values taken from other examples, each slot of a site shifted differently
        (so a shortcut that confuses its slots shows)."""
        mixed = {}
        for site in self.sites.values():
            for i, slot in enumerate(site.slots):
                mixed[(site.name, slot)] = slots[(site.name, slot)].roll(i + 1, dims=0)
        return mixed

    def _all_runs(self, slot_inputs, inputs) -> dict[str, torch.Tensor]:
        """Every non-source site's output from its given slots: one patched pass (``_run_all``) where the
        adapter has one, else one ``_run`` per site."""
        names = [site.name for site in self.sites.values() if not site.is_source]
        if self._batched:
            return self._counted("run_all", self._guarded_all, slot_inputs, inputs, names)
        return {name: self._counted("run", self.run, name, {slot: slot_inputs[(name, slot)]
                                                           for slot in self.sites[name].slots}, inputs, False)
                for name in names}

    def _guarded_all(self, slot_inputs, inputs, names):
        try:
            return self._run_all(slot_inputs, inputs, names)
        except ModelError:
            self.restore()
            raise
        except Exception as exc:  # noqa: BLE001
            self.restore()
            raise ModelError(f"the model raised in a pass with every site patched: {type(exc).__name__}: {exc}") from exc

    def _independent_runs(self, inputs, outputs, given, mixed, rtol):
        """Every site's ``_run`` on the mixed slots, from one pass with every site patched; checked by a
        second pass that patches alternate sites with mixed slots and the rest with clean ones: each
        site's output must follow its own slots only. None if some site's does not (then the caller
        checks site by site)."""
        if not mixed:
            return {}
        if not self._batched:
            return self._all_runs(mixed, inputs)
        everything = self._all_runs(mixed, inputs)
        names = [site.name for site in self.sites.values() if not site.is_source]
        alternate = {name: i % 2 == 0 for i, name in enumerate(names)}
        half = {(name, slot): (mixed if alternate[name] else given)[(name, slot)]
                for name in names for slot in self.sites[name].slots}
        partial = self._all_runs(half, inputs)
        rows = len(inputs)
        for name in names:
            expected = everything[name] if alternate[name] else outputs[name][:rows]
            if not _close(partial[name], expected, rtol):
                return None
        return everything

    def _run_all(self, slot_inputs: dict[tuple[str, str], torch.Tensor], inputs: torch.Tensor,
                 names: list[str]) -> dict[str, torch.Tensor]:
        """The outputs of the sites ``names``, each computed from its own slots in ``slot_inputs``, with
        every one of those sites patched in the same forward pass. Optional: adapters that can patch many
        sites at once override it; calibration checks the result follows each site's own slots only."""
        raise NotImplementedError

    def _shortcut_groups(self) -> list[tuple[Callable, dict[str, int]]]:
        """Shortcuts checked many sites per call: ``(call, {site: k})`` where ``call(slot_inputs, inputs,
        names)`` returns, for the listed sites ``names``, what option ``k`` of ``_shortcuts(site)``
        computes, in one model call. Optional; sites in no group are checked one by one."""
        return []

    def _shuffled_runs(self, inputs, slots) -> dict[str, torch.Tensor]:
        """Each non-source site run on its clean slots in a shuffled context (the raw inputs flipped):
        where that changes a site's output, sites read the raw input beyond their slots."""
        if inputs.shape[0] < 2:
            return {}
        return self._all_runs(slots, inputs.flip(0))

    def _verify_shortcuts(self, checks, rtol: float) -> dict[str, Callable]:
        """Per site, the first shortcut that gives ``_run``'s output: on the clean slots, on slots taken
        from different examples (``mixed``), and in the shuffled contexts (checked where sites read the raw
        input). A shortcut that raises or differs is not used. Group shortcuts are checked on every site
        of the group in one call per check, and once more with alternate sites given mixed slots and the
        others clean ones (so a site's shortcut output must follow its own slots only)."""
        passed: dict[tuple[str, int], bool] = {}
        if self._batched:
            for call, members in self._shortcut_groups():
                names = [name for name in members if not self.sites[name].is_source]
                ok = {name: True for name in names}
                runs = list(checks.values())
                if "mixed" in checks:
                    given, _, clean = checks["clean"]
                    mixed, context, expected = checks["mixed"]
                    n = len(context)  # the structural checks' rows
                    alternate = {name: i % 2 == 0 for i, name in enumerate(names)}
                    half = {key: mixed[key] if alternate[key[0]] else given[key][:n] for key in mixed if key[0] in ok}
                    runs.append((half, context, {name: expected[name] if alternate[name] else clean[name][:n]
                                                 for name in names}))
                for slot_inputs, context, expected in runs:
                    got = self._group_matches(call, slot_inputs, context, names)
                    for name in names:
                        ok[name] = ok[name] and got is not None and _close(got[name], expected[name], rtol)
                for name in names:
                    passed[(name, members[name])] = ok[name]
        verified = {}
        for site in self.sites.values():
            options = self._shortcuts(site.name)
            if site.is_source or not options:
                continue
            for k, option in enumerate(options):
                if (site.name, k) not in passed:
                    passed[(site.name, k)] = all(
                        self._matches(option, site.name, {slot: slot_inputs[(site.name, slot)] for slot in site.slots},
                                      context, expected[site.name], rtol)
                        for slot_inputs, context, expected in checks.values())
                if passed[(site.name, k)]:
                    verified[site.name] = option
                    break
        return verified

    def _group_matches(self, call, slot_inputs, context, names):
        self.calls["group"] = self.calls.get("group", 0) + 1
        try:
            with torch.no_grad():
                return call(slot_inputs, context, names)
        except Exception:  # noqa: BLE001 - a shortcut that fails is simply not used
            self.restore()
            return None

    def _verify_early_stops(self, inputs, rtol: float) -> frozenset[str]:
        """The sites at which a clean pass may stop: stopping there still reads every site up to it, with
        the values of a full pass (not so if hooks fire out of site order, or more than once)."""
        full, _ = self._counted("clean", self._guarded, self._clean, inputs, False, None)
        names = list(self.sites)
        safe = set()
        for i, name in enumerate(names):
            try:
                part, _ = self._counted("clean", self._clean, inputs, False, name)
            except Exception:  # noqa: BLE001 - a stop that fails is simply not used
                self.restore()
                continue
            if all(n in part and _close(part[n], full[n], rtol) for n in names[: i + 1]):
                safe.add(name)
        return frozenset(safe)

    def _matches(self, option, site, given, context, expected, rtol) -> bool:
        self.calls["shortcut"] = self.calls.get("shortcut", 0) + 1
        try:
            with torch.no_grad():
                got = option(site, given, context)
        except Exception:  # noqa: BLE001 - a shortcut that fails is simply not used
            self.restore()
            return False
        return _close(got, expected, rtol)

    def _guarded(self, fn, *args):
        try:
            return fn(*args)
        except ModelError:
            self.restore()
            raise
        except Exception as exc:  # the user's model raised: say where, leave it clean
            self.restore()
            what = f"site {args[0]!r}" if isinstance(args[0], str) else "a clean forward pass"
            raise ModelError(f"the model raised while computing {what}: {type(exc).__name__}: {exc}") from exc


def _close(got: torch.Tensor, expected: torch.Tensor, rtol: float) -> bool:
    if got.shape != expected.shape:
        return False
    scale = expected.abs().max().item() + 1e-6
    return (got - expected).abs().max().item() <= rtol * scale + 1e-5


@dataclass
class Dataset:
    """Raw model inputs plus named per-example columns (labels, counts...)."""

    inputs: torch.Tensor
    columns: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def subset(self, index: torch.Tensor) -> "Dataset":
        return Dataset(self.inputs[index], {k: v[index] for k, v in self.columns.items()})

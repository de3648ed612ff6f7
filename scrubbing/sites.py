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
        """
        outputs, slots = self._guarded(self._clean, inputs, True)
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
        shuffled = self._shuffled_runs(inputs, slots)
        self.uses_context = inputs.shape[0] < 2 or any(
            not torch.allclose(value, outputs[site], atol=1e-5, rtol=1e-4) for site, value in shuffled.items())
        self.shortcuts = self._verify_shortcuts(inputs, outputs, slots, shuffled if self.uses_context else {}, rtol)
        self.early_stops = self._verify_early_stops(inputs[:16], rtol)

    def _shuffled_runs(self, inputs, slots) -> dict[str, torch.Tensor]:
        """Each non-source site run on its clean slots in a shuffled context (the raw inputs flipped):
        where that changes a site's output, sites read the raw input beyond their slots."""
        if inputs.shape[0] < 2:
            return {}
        return {site.name: self.run(site.name, {slot: slots[(site.name, slot)] for slot in site.slots},
                                    inputs.flip(0), shortcut=False)
                for site in self.sites.values() if not site.is_source}

    def _verify_shortcuts(self, inputs, outputs, slots, shuffled, rtol: float) -> dict[str, Callable]:
        """Per site, the first shortcut that gives ``_run``'s output: on the clean slots, on slots taken
        from different examples (so a shortcut that confuses its slots shows), and in the ``shuffled``
        contexts (given where sites read the raw input). A shortcut that raises or differs is not used."""
        verified = {}
        for site in self.sites.values():
            options = self._shortcuts(site.name)
            if site.is_source or not options:
                continue
            given = {slot: slots[(site.name, slot)] for slot in site.slots}
            checks = [(given, inputs, outputs[site.name])]
            if inputs.shape[0] >= 2:
                mixed = {slot: value.roll(i + 1, dims=0) for i, (slot, value) in enumerate(given.items())}
                checks.append((mixed, inputs, self.run(site.name, mixed, inputs, shortcut=False)))
            if site.name in shuffled:
                checks.append((given, inputs.flip(0), shuffled[site.name]))
            for option in options:
                if all(self._matches(option, site.name, *check, rtol) for check in checks):
                    verified[site.name] = option
                    break
        return verified

    def _verify_early_stops(self, inputs, rtol: float) -> frozenset[str]:
        """The sites at which a clean pass may stop: stopping there still reads every site up to it, with
        the values of a full pass (not so if hooks fire out of site order, or more than once)."""
        full, _ = self._guarded(self._clean, inputs, False, None)
        names = list(self.sites)
        safe = set()
        for i, name in enumerate(names):
            try:
                part, _ = self._clean(inputs, False, name)
            except Exception:  # noqa: BLE001 - a stop that fails is simply not used
                self.restore()
                continue
            if all(n in part and _close(part[n], full[n], rtol) for n in names[: i + 1]):
                safe.add(name)
        return frozenset(safe)

    def _matches(self, option, site, given, context, expected, rtol) -> bool:
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

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
from typing import Callable, Mapping

import torch

from .errors import HypothesisError, ModelError


@dataclass(frozen=True)
class Site:
    """A model component: its name, its input slots and the sites that feed them."""

    name: str
    slots: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()
    transparent: bool = False
    """A site that only forms the input of the sites reading it (an argument of a wired ``TorchModuleAdapter``
    site, a residual stream, a piece of one): an edge ``via="direct"`` into a reader passes through it,
    recomputed, where no node claims it (``transparent_inputs``)."""

    @property
    def is_source(self) -> bool:
        """A source (the embedding) reads the raw input, not other sites."""
        return not self.slots


def transparent_inputs(sites: Mapping[str, Site], name: str, claimed: "set[str] | frozenset[str]") -> frozenset[str]:
    """The transparent sites no node claims through which the input of site ``name`` is formed: its transparent
    parents, theirs, and so on. What ``via="direct"`` into ``name`` recomputes."""
    out: set[str] = set()
    todo = [name]
    while todo:
        for parent in sites[todo.pop()].parents:
            if sites[parent].transparent and parent not in claimed and parent not in out:
                out.add(parent)
                todo.append(parent)
    return frozenset(out)


@dataclass(frozen=True)
class Calibration:
    """What ``ModelAdapter.calibrate`` measured and verified on real data: all the engine relies on.

    ``offsets``: each slot's constant (its value minus its parents' outputs); ``shortcuts``: per site, the
    verified cheaper way to run it; ``together``: per site whose shortcut was verified in a group call (the adapter's
    ``_shortcut_groups``), that group's index: sites with the same index may run in one call (``run_together``);
    ``early_stops``: sites a clean pass may stop at; ``uses_context``: whether
    a site's output depends on the raw input beyond its slots; ``n_positions``: length of the position axis
    (None without one); ``rows``: calibration rows (the decomposition and the clean shortcut check use all);
    ``check_rows``: rows of the structural checks (mixed slots, shuffled context); ``calls`` and ``rows_run``:
    model calls made, by kind, and the rows they ran; ``device``: where the model was (what was verified there
    is not taken for verified on another device: ``run.calibrate_once`` calibrates again). Read-only by
    convention (plain dicts so it pickles).
    """

    offsets: dict[tuple[str, str], torch.Tensor]
    shortcuts: dict[str, Callable]
    early_stops: frozenset[str]
    uses_context: bool
    n_positions: int | None
    rows: int
    check_rows: int
    calls: dict[str, int]
    rows_run: dict[str, int]
    together: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"


def calibration_rows(n_examples: int, n_refs: int | None = None) -> int:
    """How many examples to calibrate on: as many as the references (the checks then cost a few passes over
    them), at least ``MIN_CALIBRATION_ROWS`` (so the structural checks see enough rows), at most
    ``MAX_CALIBRATION_ROWS``, and never more than there are."""
    wanted = MAX_CALIBRATION_ROWS if n_refs is None else max(MIN_CALIBRATION_ROWS, n_refs)
    return min(n_examples, wanted, MAX_CALIBRATION_ROWS)


MIN_CALIBRATION_ROWS = 64
MAX_CALIBRATION_ROWS = 256
CALIBRATION_MEMORY_BUDGET = 1 << 30  # bytes of clean readings calibration holds at once (``calibrate``)


class ModelAdapter:
    """The engine's only view of a model.

    Subclasses provide ``sites`` (topologically ordered), ``output`` (the name of
    the output site) and two methods:

    - ``_clean(inputs, slots, upto)`` -> (site outputs, slot inputs if ``slots`` else {}) on a batch of raw
      inputs; with ``upto`` (a site name) the pass may stop once that site's output is read;
    - ``_run(site, slot_inputs, inputs)`` -> the site's output when its slots are
      given; ``inputs`` supplies anything that is not a site (e.g. attention masks).

    and optionally ``_positions(outputs)`` (the position axis's length, None by default), ``_shortcuts(site)``:
    cheaper ways to compute the same value (start the forward pass at the site's layer, call its module
    directly), each a function with ``_run``'s signature, best first. ``calibrate`` keeps, per site, the first
    one that reproduces ``_run`` on real data; ``_run`` stays the obviously correct path the reference
    implementation takes. Everything calibration decides is in ``calibration`` (a ``Calibration``).
    """

    sites: dict[str, Site]
    output: str

    def __init__(self) -> None:
        self.calibration: Calibration | None = None
        self._groups_of: Calibration | None = None  # the calibration ``_groups_cache`` was built for
        self._groups_cache: list = []
        self._calls: dict[str, int] = {}
        self._rows: dict[str, int] = {}

    # -- what calibration decided (read by the engine) ------------------------------------------------------
    @property
    def uses_context(self) -> bool:
        return True if self.calibration is None else self.calibration.uses_context

    @property
    def n_positions(self) -> int | None:
        return None if self.calibration is None else self.calibration.n_positions

    @property
    def shortcuts(self) -> dict[str, Callable]:
        return {} if self.calibration is None else self.calibration.shortcuts

    @property
    def early_stops(self) -> frozenset[str]:
        return frozenset() if self.calibration is None else self.calibration.early_stops

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (cpu for an adapter without a ``model``, or a model without any)."""
        try:
            return next(self.model.parameters()).device
        except (AttributeError, StopIteration):
            return torch.device("cpu")

    @property
    def calls(self) -> dict[str, int]:
        """Model calls of the last ``calibrate()``, by kind."""
        return {} if self.calibration is None else dict(self.calibration.calls)

    # -- what subclasses implement -------------------------------------------------
    def _clean(self, inputs: torch.Tensor, slots: bool, upto: str | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[tuple[str, str], torch.Tensor]]:
        raise NotImplementedError

    def _run(self, site: str, slot_inputs: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _shortcuts(self, site: str) -> list[Callable]:
        return []

    def _positions(self, outputs: dict[str, torch.Tensor]) -> int | None:
        """The length of every site output's position axis, from a clean pass's outputs; None without one."""
        return None

    def restore(self) -> None:
        """Undo any state a failed run may have left on the model (hooks)."""

    def _wiring_hint(self, site: str, slot: str) -> str:
        """How to fix a slot that is not the sum of its parents' outputs plus a constant (calibration's refusal)."""
        return "Declare the missing parent sites, or split the site so each slot reads a sum."

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

    def clean_slots(self, inputs: torch.Tensor) -> dict[tuple[str, str], torch.Tensor]:
        """Every slot's clean input on a batch, keyed (site, slot): what a recomputation from clean parents gets."""
        _, slots = self._guarded(self._clean, inputs, True, None)
        return slots

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

    def run_together(self, names: list[str], slot_inputs: Mapping, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Several sites' outputs, each from its own slots (``slot_inputs`` keyed (site, slot), the same rows for
        all): in one model call where calibration verified them in one group call (``together``: the heads of
        a block, say, cost one block instead of one each), else one ``run`` per site. Rows of different sites
        may come from different examples: a group call's outputs follow each site's own slots only, which
        calibration checked (with ``uses_context`` False, ``inputs`` then matters to none of them)."""
        together = self.calibration.together if self.calibration is not None else {}
        groups = {together.get(name) for name in names}
        if len(names) > 1 and len(groups) == 1 and None not in groups and not self.uses_context:
            call, _ = self._groups()[groups.pop()]
            return self._guarded_many(call, slot_inputs, inputs, list(names), f"sites {', '.join(names)} together")
        return {name: self.run(name, {slot: slot_inputs[(name, slot)] for slot in self.sites[name].slots}, inputs)
                for name in names}

    def _groups(self) -> list[tuple[Callable, dict[str, int]]]:
        """``_shortcut_groups()`` of the current calibration (rebuilt when it changes: a calibration installed
        from another process names groups by index)."""
        if self._groups_of is not self.calibration:
            self._groups_cache, self._groups_of = self._shortcut_groups(), self.calibration
        return self._groups_cache

    def slot_input(self, site: str, slot: str, parent_outputs: list[torch.Tensor]) -> torch.Tensor:
        """A slot's value from its parents' outputs: their sum plus the calibrated constant."""
        if self.calibration is None:
            raise ModelError("adapter used before calibrate(); call adapter.calibrate(inputs) first.")
        offset = self.calibration.offsets[(site, slot)]
        total = offset.to(parent_outputs[0].device) if parent_outputs else offset
        for value in parent_outputs:
            total = total + value
        return total

    # -- calibration ----------------------------------------------------------------------
    def calibrate(self, data: "Dataset | torch.Tensor", rtol: float = 1e-4,
                  memory_budget: int | None = CALIBRATION_MEMORY_BUDGET) -> Calibration:
        """Measure each slot's constant offset and check the sum decomposition holds; sets and returns
        ``calibration``.

        Also detects whether sites read anything from the raw input beyond the source sites
        (``uses_context``): if not, the engine may share computations across contexts; and verifies what the
        engine may skip: each site's shortcut and where a clean pass may stop.

        Every row given is used (``calibration_rows`` sizes them to the references). Memory: the clean readings
        (every site's output and slot) are held for one chunk of rows at a time, as many as ``memory_budget``
        bytes hold (``row_bytes``; at least the check rows; None: every row at once); what the checks keep
        across chunks is per-slot and per-site running sums and maxima, so peak memory follows the budget,
        not the number of rows. The decisions are those of holding every row at once (same rows, same
        tolerances). Cost, for an adapter that patches every site in one pass (``_run_all``) and checks
        shortcuts by block (``_shortcut_groups``), such as ``HookedAdapter``, whatever the number of sites,
        with R rows in c chunks and m = ``check_rows`` (R/8, 8 to 64):

        - one clean pass with slots per chunk (R rows in all): offsets, the clean expectations, the hook order
          (where the adapter reads slots through aliases, ``HookedAdapter.slot_aliases``, one more pass on 4 rows
          reads the slots themselves and must agree);
        - one pass with every site patched on 2m rows: two halves in a shuffled context, each with half the
          sites given mixed slots (each site's output must follow its own slots only, not the raw input);
        - one block call per block start and chunk, on R + 2m rows in all: every site's shortcut from that
          block on the clean rows and both halves (with the first chunk); each call runs about one block, so
          together about one pass. Where the adapter has a cheaper call for the clean rows alone
          (``_clean_rows_call``; ``HookedAdapter.for_bridge`` runs them unsplit), the clean rows go in that call
          and the halves in the engine's call: two calls per block start. A second option is tried only for
          the sites whose first failed;
        - one clean pass on ``EARLY_STOP_ROWS`` (4) rows stopping at the deepest early stop, and one full one on
          them that must repeat the first chunk's readings (a model with noise in eval mode is refused).

        About 3 clean passes of R rows in all (each pass that reads or writes every head's input costs more
        than a bare forward pass; an adapter may read such inputs through an alias in a cheaper pass, as
        ``HookedAdapter.for_bridge`` does), whatever c: chunks add calls, not rows. Only should a shortcut fail by its
        values (not by raising) is a chunked calibration's sweep repeated, for the sites whose next option then
        needs every chunk. Should a site's output follow other sites' slots or the raw input, or for adapters
        without ``_run_all``, sites are checked one by one: the same chunks and running sums, the structural
        checks a ``_run`` per site on the m check rows (twice), the shortcuts a call per site and block.

        What the sizes catch: the decomposition and the clean shortcut check see every row, so a shortcut
        wrong only on some inputs is refused if one of the R rows is such an input; confused slots and reads
        of the raw input are structural and show on the m check rows, unless they matter only for inputs
        absent from those rows.
        """
        inputs = data.inputs if isinstance(data, Dataset) else data
        self.calibration = None
        self._calls, self._rows = {}, {}
        self._batched = self._can_run_all()
        try:
            calibration = self._calibrate(inputs, rtol, memory_budget)
        except _Rewritten:  # readings are views of the model's tensors, and it wrote into one in a later pass:
            self._copy_readings = True  # calibrate again on copies
            try:
                return self.calibrate(inputs, rtol, memory_budget)
            finally:
                self._copy_readings = False
        self.calibration = calibration
        return calibration

    _batched = False  # True while calibrate() checks many sites per pass (the adapter has ``_run_all``)
    _copy_readings = False  # True: hold copies of the clean readings, not the model's tensors

    def _calibrate(self, inputs, rtol, budget) -> Calibration:
        n = len(inputs)
        m = self._check_rows(n) if n >= 2 else 0
        size = self.calibration_chunk_rows(inputs, budget, m)
        chunks = [(a, min(a + size, n)) for a in range(0, n, size)] or [(0, 0)]
        whole = len(chunks) == 1
        sums = _OffsetSums(self._wiring_hint)
        checks = _ShortcutChecks(self, rtol, last=len(chunks) - 1)
        offsets = early = positions = None
        uses_context = check_rows = None
        for index, (a, b) in enumerate(chunks):
            chunk = inputs[a:b]
            readings = self._read(chunk)
            outputs, slots, trace, _ = readings
            sums.add(self.sites, outputs, slots)
            if whole:
                offsets = sums.offsets(rtol)
            if index == 0:
                self._check_deterministic(chunk, readings)
                positions = self._positions(outputs)
                checked = self._first_checks(chunk, outputs, slots, rtol, m)
                if checked is None:  # a site's output moved with other sites' slots: tell them apart site by site
                    self._batched = False
                    return self._calibrate(inputs, rtol, budget)
                blocks, uses_context, check_rows = checked
                checked = None
            else:
                blocks = [("clean", slots, chunk, outputs)]
            checks.run(blocks, index)
            if index == 0:
                early = self._early_stops(chunk, outputs, trace, rtol)
            self._unchanged(readings)
            del readings, outputs, slots, trace, blocks  # this chunk's readings go before the next is read
        if offsets is None:
            offsets = sums.offsets(rtol)
        while checks.pending():  # options taken up after the first chunk: checked again on every chunk
            for index, (a, b) in enumerate(chunks):
                chunk = inputs[a:b]
                readings = self._read(chunk)
                outputs, slots, _, _ = readings
                blocks = (self._first_checks(chunk, outputs, slots, rtol, m)[0] if index == 0
                          else [("clean", slots, chunk, outputs)])
                checks.run(blocks, index)
                self._unchanged(readings)
                del readings, outputs, slots, blocks
        return Calibration(offsets, checks.verified, early, uses_context, positions, n, check_rows,
                           dict(self._calls), dict(self._rows), dict(checks.together), str(self.device))

    def _check_deterministic(self, inputs, readings) -> None:
        """Read the first rows again: a model that gives other values on the same input (noise in eval mode) would
        make every figure partly that noise, and a true claim read as changed."""
        e = self.EARLY_STOP_ROWS
        again = self._read(inputs[:e])[0]
        self._unchanged(readings)  # the second pass wrote into the first's readings: calibrate on copies
        outputs = readings[0]
        for name, value in outputs.items():
            if name in again and not close_enough(again[name], value[:e], 1e-4):
                deviation = (again[name] - value[:e]).abs().max().item()
                raise ModelError(
                    f"the model is not deterministic: site {name!r} gave other values on a second clean pass over "
                    f"the same rows (largest difference {deviation:.3g}). Scrubbing compares runs of the model, so "
                    "remove the randomness from its forward pass (dropout and noise off in eval mode).")

    def _first_checks(self, inputs, outputs, slots, rtol, m: int):
        """(the first chunk's check blocks, uses_context, check rows): from one patched pass where the adapter
        has ``_run_all`` (None if that cannot tell), else site by site; the structural checks on the first m rows."""
        if self._batched:
            return self._batched_checks(inputs, outputs, slots, rtol, m)
        return self._site_checks(inputs, outputs, slots, m)

    def _read(self, inputs):
        """Calibration's clean pass on these rows: (outputs, slots, trace, the readings' version counters)."""
        outputs, slots, trace = self._counted("clean", len(inputs), self._guarded, self._calibration_pass, inputs)
        self._require(outputs, list(self.sites))
        if self._copy_readings:
            outputs, slots = _copied(outputs), _copied(slots)
        return outputs, slots, trace, _versions(outputs, slots)

    @staticmethod
    def _unchanged(readings) -> None:
        outputs, slots, _, versions = readings
        if _versions(outputs, slots) != versions:
            raise _Rewritten

    def _early_stops(self, inputs, outputs, trace, rtol) -> frozenset[str]:
        e = self.EARLY_STOP_ROWS
        return self._verify_early_stops(inputs[:e], {k: v[:e] for k, v in outputs.items()}, trace, rtol)

    def calibration_chunk_rows(self, inputs, budget: int | None, m: int) -> int:
        """Rows per chunk: as many as ``budget`` bytes of readings hold, at least the check rows (the first
        chunk holds them) and one; every row where the adapter cannot say what a row's readings take."""
        n = max(len(inputs), 1)
        per_row = self.row_bytes(inputs) if budget is not None else None
        if not per_row:
            return n
        return max(m, 1, min(n, budget // per_row))

    def row_bytes(self, inputs) -> int | None:
        """About the bytes one row's clean readings (every site's output and slot) take: measured on one row's
        clean pass (None without rows; calibration then holds every row at once). Adapters that can tell without
        a pass override it."""
        if len(inputs) == 0:
            return None
        outputs, slots = self._counted("clean", 1, self._guarded, self._clean, inputs[:1], True, None)
        return sum(value.numel() * value.element_size() for value in (*outputs.values(), *slots.values()))

    def _calibration_pass(self, inputs):
        """The clean pass calibration starts from: (outputs, slots, what else the adapter records)."""
        outputs, slots = self._clean(inputs, True)
        return outputs, slots, None

    def _counted(self, what: str, rows: int, fn, *args):
        self._calls[what] = self._calls.get(what, 0) + 1
        self._rows[what] = self._rows.get(what, 0) + rows
        return fn(*args)

    @staticmethod
    def _check_rows(n: int) -> int:
        """Rows of the structural checks: an eighth of the calibration rows, 8 to 64 (structural faults,
        confused slots or a read of the raw input, show on almost any row)."""
        return min(n, max(8, n // 8), 64)

    EARLY_STOP_ROWS = 4  # rows of the early-stop check (hook order: the same on every row)

    def _batched_checks(self, inputs, outputs, slots, rtol, m: int):
        """The check blocks from one pass with every site patched, on the first m rows twice, both in a
        shuffled context (those rows flipped): once with even sites given mixed slots and odd ones their clean
        slots, once the other way round. A site given its clean slots must give its clean output whatever the
        other sites get and whatever the raw input: its output follows its own slots only (so the engine may
        share computations across contexts). None if some site's does not: then the caller checks site by
        site, which tells the two apart. ``inputs`` may be the first chunk of the calibration rows."""
        if m == 0:
            return [("clean", slots, inputs, outputs)], True, 0
        names = [site.name for site in self.sites.values() if not site.is_source]
        first = {key: value[:m] for key, value in slots.items()}
        mixed = self._mixed(first)
        even = {name: i % 2 == 0 for i, name in enumerate(names)}
        keys = [key for key in slots if key[0] in even]
        halves = [_Lazy(keys, lambda key, parity=parity: (mixed if even[key[0]] == parity else first)[key])
                  for parity in (True, False)]
        context = inputs[:m].flip(0)
        got = self._all_runs(_Joined(halves, keys), torch.cat([context, context]))
        split = [{name: value[a:b] for name, value in got.items()} for a, b in ((0, m), (m, 2 * m))]
        for name in names:  # its clean slots, the others' mixed, another example's raw input
            if not close_enough(split[1 if even[name] else 0][name], outputs[name][:m], rtol):
                return None
        blocks = [("clean", slots, inputs, outputs)] + [(f"mixed {i}", half, context, split[i])
                                                        for i, half in enumerate(halves)]
        return blocks, False, m

    def _site_checks(self, inputs, outputs, slots, m: int):
        """The check blocks site by site (a ``_run`` per site and check): the clean block on these rows, the
        structural ones (slots from other examples; a shuffled context, where that moves a site's output) on
        the first m."""
        blocks = [("clean", slots, inputs, outputs)]
        if m < 2:
            return blocks, True, m
        first = {key: value[:m] for key, value in slots.items()}
        context = inputs[:m]
        mixed = self._mixed(first)
        blocks.append(("mixed", mixed, context, self._all_runs(mixed, context)))
        shuffled = self._shuffled_runs(context, first)
        uses_context = any(not torch.allclose(value, outputs[site][:m], atol=1e-5, rtol=1e-4)
                           for site, value in shuffled.items())
        if uses_context and shuffled:
            blocks.append(("shuffled", first, context.flip(0), shuffled))
        return blocks, uses_context, m

    def _mixed(self, slots) -> Mapping:
        """Every slot's values taken from other examples, each slot of a site shifted differently
        (so a shortcut that confuses its slots shows); each made when read (no copy of every slot at once)."""
        shifts = {(site.name, slot): i + 1 for site in self.sites.values() for i, slot in enumerate(site.slots)}
        return _Lazy(list(shifts), lambda key: slots[key].roll(shifts[key], dims=0))

    def _all_runs(self, slot_inputs, inputs) -> dict[str, torch.Tensor]:
        """Every non-source site's output from its given slots: one patched pass (``_run_all``) where the
        adapter has one, else one ``_run`` per site."""
        names = [site.name for site in self.sites.values() if not site.is_source]
        if self._batched:
            return self._counted("run_all", len(inputs), self._guarded_all, slot_inputs, inputs, names)
        return {name: self._counted("run", len(inputs), self.run, name,
                                    {slot: slot_inputs[(name, slot)] for slot in self.sites[name].slots},
                                    inputs, False)
                for name in names}

    def _guarded_all(self, slot_inputs, inputs, names):
        return self._guarded_many(self._run_all, slot_inputs, inputs, names, "a pass with every site patched")

    def _guarded_many(self, call, slot_inputs, inputs, names, what: str):
        try:
            return call(slot_inputs, inputs, names)
        except ModelError:
            self.restore()
            raise
        except Exception as exc:  # noqa: BLE001
            self.restore()
            raise ModelError(f"the model raised in {what}: {type(exc).__name__}: {exc}") from exc

    def _run_all(self, slot_inputs: dict[tuple[str, str], torch.Tensor], inputs: torch.Tensor,
                 names: list[str]) -> dict[str, torch.Tensor]:
        """The outputs of the sites ``names``, each computed from its own slots in ``slot_inputs``, with
        every one of those sites patched in the same forward pass. Optional: adapters that can patch many
        sites at once override it; calibration checks the result follows each site's own slots only."""
        raise NotImplementedError

    def _can_run_all(self) -> bool:
        """Whether ``_run_all`` is there to use (by default: whether the adapter overrides it)."""
        return type(self)._run_all is not ModelAdapter._run_all

    def _shortcut_groups(self) -> list[tuple[Callable, dict[str, int]]]:
        """Shortcuts checked many sites per call: ``(call, {site: k})`` where ``call(slot_inputs, inputs,
        names)`` returns, for the listed sites ``names``, what option ``k`` of ``_shortcuts(site)``
        computes, in one model call; ``_shortcuts(site)[k]`` must be that same call for ``[site]`` alone
        (so what is checked is what the engine runs). Optional; sites in no group are checked one by one."""
        return []

    def _shuffled_runs(self, inputs, slots) -> dict[str, torch.Tensor]:
        """Each non-source site run on its clean slots in a shuffled context (the raw inputs flipped):
        where that changes a site's output, sites read the raw input beyond their slots."""
        if inputs.shape[0] < 2:
            return {}
        return self._all_runs(slots, inputs.flip(0))

    def _clean_rows_call(self, call, names) -> Callable | None:
        """A cheaper call checking a group's shortcut (``_shortcut_groups``) on the clean block alone, whose
        slots are those the clean pass read; None (the default): the clean rows join the other blocks in
        ``call``. The call the engine runs is still checked, as it is, on the structural blocks."""
        return None

    def _group_matches(self, call, slot_inputs, context, names, what: str = "group"):
        self._calls[what] = self._calls.get(what, 0) + 1
        self._rows[what] = self._rows.get(what, 0) + len(context)
        try:
            with torch.no_grad():
                return call(slot_inputs, context, names)
        except Exception:  # noqa: BLE001 - a shortcut that fails is simply not used
            self.restore()
            return None

    def _verify_early_stops(self, inputs, full, trace, rtol: float) -> frozenset[str]:
        """The sites at which a clean pass may stop: stopping there still reads every site up to it, with
        the values of a full pass (``full``, on these ``inputs``); not so if hooks fire out of site order,
        or more than once. Here one stopped pass per site; adapters may decide from ``trace``."""
        names = list(self.sites)
        safe = set()
        for i, name in enumerate(names):
            try:
                part, _ = self._counted("clean", len(inputs), self._clean, inputs, False, name)
            except Exception:  # noqa: BLE001 - a stop that fails is simply not used
                self.restore()
                continue
            if all(n in part and close_enough(part[n], full[n], rtol) for n in names[: i + 1]):
                safe.add(name)
        return frozenset(safe)

    def _alone(self, option, site, given, context):
        """One site's shortcut on one block; None if it raises."""
        self._calls["shortcut"] = self._calls.get("shortcut", 0) + 1
        self._rows["shortcut"] = self._rows.get("shortcut", 0) + len(context)
        try:
            with torch.no_grad():
                return option(site, given, context)
        except Exception:  # noqa: BLE001 - a shortcut that fails is simply not used
            self.restore()
            return None

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


class _Rewritten(Exception):
    """A reading (a view of the model's tensor) changed under a later pass: calibrate again on copies."""


class _Lazy(Mapping):
    """Slot values made when read (``make(key)``), so that a derived set of every slot is never held at once."""

    def __init__(self, keys: list, make: Callable):
        self.keys_, self.make = list(keys), make

    def __getitem__(self, key):
        return self.make(key)

    def __iter__(self):
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)


class _OffsetSums:
    """Each slot's residual (its value minus the sum of its parents' outputs), summed up over chunks of rows:
    its sum, its elementwise least and greatest values and the slot's largest magnitude. That gives the mean
    (the offset) and the largest deviation from it exactly as from every row at once (x - mean, rounded, is
    monotone in x), the mean to rounding (chunks summed in float64), in a few reads of each slot. Parent sums are built
    on the longest parent list already summed (in a residual stream each site's parents extend an earlier
    site's), so the work is linear in the sites."""

    def __init__(self, hint: Callable[[str, str], str]):
        self.rows, self.seen, self.hint = 0, {}, hint

    def add(self, sites: dict, outputs, slots) -> None:
        sums: dict[tuple[str, ...], object] = {(): 0}
        buffers: dict = {}  # one scratch tensor per shape, reused by every slot (no fresh memory per slot)
        measured: dict = {}  # (slot tensor, parents) -> its figures: slots read as one tensor are measured once
        for site in sites.values():
            if not site.slots:
                continue
            total = parent_sum(site.parents, outputs, sums)
            for slot in site.slots:
                actual = slots[(site.name, slot)]
                same = (id(actual), site.parents)
                if same not in measured:
                    measured[same] = self._measure(actual, total, buffers)
                total_rows, least, most, scale = measured[same]
                key = (site.name, slot)
                if key in self.seen:
                    was_sum, was_least, was_most, was_scale = self.seen[key]
                    total_rows = total_rows + was_sum  # not in place: ``measured`` may share it with other slots
                    least, most, scale = torch.minimum(least, was_least), torch.maximum(most, was_most), \
                        torch.maximum(scale, was_scale)
                self.seen[key] = (total_rows, least, most, scale)
        self.rows += len(next(iter(outputs.values())))

    @staticmethod
    def _measure(actual, total, buffers):
        """One slot's chunk figures: its residual's sum (float64) and elementwise least and greatest values, and
        the slot's largest magnitude per coordinate (``tolerance``)."""
        if not actual.is_floating_point():  # integer inputs (token ids read as a slot): exact in float64
            actual, total = actual.double(), total.double() if isinstance(total, torch.Tensor) else total
        residual = torch.sub(actual, total, out=_scratch(buffers, actual))
        # amax and amin: each several times faster than one aminmax on the CPU
        scale = torch.maximum(actual.amax(dim=0), -actual.amin(dim=0))
        return residual.sum(dim=0).double(), residual.amin(dim=0), residual.amax(dim=0), scale

    def offsets(self, rtol: float) -> dict[tuple[str, str], torch.Tensor]:
        """Each slot's mean residual, refused unless constant."""
        offsets = {}
        for (site, slot), (total, least, most, scale) in self.seen.items():
            offset = (total / self.rows).to(least.dtype)
            spread = torch.maximum(most - offset, offset - least)
            excess = spread.double() / tolerance(scale, rtol * 10)
            if excess.max().item() > 1:
                worst = int(excess.flatten().argmax())
                coordinate = list(torch.unravel_index(torch.tensor(worst), excess.shape)) if excess.dim() else []
                raise ModelError(
                    f"site {site!r} slot {slot!r}: its input is not the sum of its parents' outputs plus a "
                    f"constant (at coordinate {[int(c) for c in coordinate]}: deviation "
                    f"{spread.flatten()[worst].item():.3g} vs scale {scale.flatten()[worst].item():.3g} there). "
                    + self.hint(site, slot)
                )
            offsets[(site, slot)] = offset
        return offsets


class _ShortcutChecks:
    """Which shortcut each site may use: the first option that gives ``_run``'s output on every check block
    (clean slots; slots from other examples; shuffled contexts where sites read the raw input), decided chunk
    by chunk of the calibration rows as if every row were checked at once.

    A site's options are tried in order: those in a group by rank (each group checked for all its sites in
    one call, the blocks' rows concatenated), then the others one by one. Per site the current option's
    largest deviation and scale per block are kept; it is decided on the last chunk. An option whose call
    raises or gives the wrong shape fails at once and the next is tried on the same chunk; one taken up
    after the first chunk (or after the last) is ``pending``: checked again on every chunk, in another sweep."""

    def __init__(self, adapter: ModelAdapter, rtol: float, last: int):
        self.adapter, self.rtol, self.last = adapter, rtol, last
        self.groups = adapter._shortcut_groups() if adapter._batched else []
        grouped: dict[str, list[tuple[int, int]]] = {}
        for index, (_, members) in enumerate(self.groups):
            for name, k in members.items():
                grouped.setdefault(name, []).append((k, index))
        self.options: dict[str, list[tuple]] = {}
        for site in adapter.sites.values():
            if site.is_source:
                continue
            ranks = sorted(grouped.get(site.name, []))
            taken = {k for k, _ in ranks}
            alone = [k for k in range(len(adapter._shortcuts(site.name))) if k not in taken]
            self.options[site.name] = [("group", k, g) for k, g in ranks] + [("alone", k) for k in alone]
        self.at = {name: 0 for name in self.options}
        self.since = {name: 0 for name in self.options}
        self.deferred: set[str] = set()
        self.seen: dict[str, dict] = {name: {} for name in self.options}
        self.verified: dict[str, Callable] = {}
        self.together: dict[str, int] = {}  # site -> the group whose call verified its shortcut
        self.depth = max((k for _, members in self.groups for k in members.values()), default=-1)

    def current(self, name: str):
        if name in self.deferred or self.at[name] >= len(self.options[name]):
            return None
        return self.options[name][self.at[name]]

    def run(self, blocks, index: int) -> None:
        """Check every site's current option on these blocks (chunk ``index``)."""
        adapter = self.adapter
        contexts: dict[tuple, torch.Tensor] = {}  # each run's rows, concatenated once for every group
        clean = [block for block in blocks if block[0] == "clean"]
        others = [block for block in blocks if block[0] != "clean"]
        for k in range(self.depth + 1):
            for g, (call, members) in enumerate(self.groups):
                names = [name for name in members if name in self.options and self.current(name) == ("group", k, g)]
                if not names:
                    continue
                cheaper = adapter._clean_rows_call(call, names)
                runs = ([(call, blocks, "group")] if cheaper is None else
                        [(cheaper, clean, "group clean"), (call, others, "group")])
                pieces: list | None = []
                for fn, part, what in (run for run in runs if run[1]):
                    got = self._group_call(fn, part, names, what, contexts)
                    if got is None:
                        pieces = None
                        break
                    pieces += got
                for name in names:
                    self._record(name, index, None if pieces is None else
                                 [(label, outputs[name], expected[name]) for label, outputs, expected in pieces])
        for name in self.options:
            while (option := self.current(name)) is not None and option[0] == "alone":
                fn = adapter._shortcuts(name)[option[1]]
                final = index == self.last and self.since[name] == 0
                pieces = []
                for label, given, context, expected in blocks:
                    got = adapter._alone(fn, name, {slot: given[(name, slot)] for slot in adapter.sites[name].slots},
                                         context)
                    if got is None:
                        pieces = None
                        break
                    pieces.append((label, got, expected[name]))
                    if final and not close_enough(got, expected[name], self.rtol):
                        break  # decided: it fails
                self._record(name, index, pieces)
                if self.current(name) == option:
                    break

    def _group_call(self, call, blocks, names, what: str, contexts: dict):
        """One group call on these blocks' rows: (label, outputs, expected outputs) per block; None if it raised."""
        key = tuple(block[0] for block in blocks)
        if key not in contexts:
            contexts[key] = torch.cat([block[2] for block in blocks])
        given = _Joined([block[1] for block in blocks],
                        [(name, slot) for name in names for slot in self.adapter.sites[name].slots])
        got = self.adapter._group_matches(call, given, contexts[key], names, what)
        if got is None:
            return None
        return [(label, {name: got[name][a:b] for name in names}, expected)
                for (label, _, _, expected), (a, b) in zip(blocks, _bounds([block[2] for block in blocks]))]

    def _record(self, name: str, index: int, pieces) -> None:
        if pieces is None or any(got.shape != expected.shape for _, got, expected in pieces):
            return self._advance(name, index)
        seen = self.seen[name]
        for label, got, expected in pieces:  # per coordinate, as ``close_enough``
            dev, scale = (got - expected).abs().amax(dim=0), expected.abs().amax(dim=0)
            if label in seen:
                dev, scale = torch.maximum(dev, seen[label][0]), torch.maximum(scale, seen[label][1])
            seen[label] = (dev, scale)
        if index != self.last or self.since[name] > 0:
            return None
        if all(bool((dev <= tolerance(scale, self.rtol)).all()) for dev, scale in seen.values()):
            option = self.options[name][self.at[name]]
            self.verified[name] = self.adapter._shortcuts(name)[option[1]]
            if option[0] == "group":
                self.together[name] = option[2]
            self.at[name] = len(self.options[name])
        else:
            self._advance(name, index)
        return None

    def _advance(self, name: str, index: int) -> None:
        self.at[name] += 1
        self.seen[name] = {}
        self.since[name] = index
        if index == self.last and index > 0:
            self.deferred.add(name)  # no rows of this sweep left to check it on

    def pending(self) -> bool:
        """Whether another sweep is needed; if so, its sites start over from the first chunk."""
        todo = [name for name in self.options if self.at[name] < len(self.options[name])
                and (name in self.deferred or self.since[name] > 0)]
        for name in todo:
            self.since[name], self.seen[name] = 0, {}
        self.deferred.clear()
        return bool(todo)


class _Joined(Mapping):
    """Slot values of several row blocks, each key's blocks concatenated only when it is read (a patched pass
    reads one hook's slots at a time), so that no copy of every slot is made at once."""

    def __init__(self, parts: list[dict], keys: list):
        self.parts, self.keys_ = parts, list(keys)

    def __getitem__(self, key):
        return torch.cat([part[key] for part in self.parts])

    def __iter__(self):
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)


def _bounds(pieces) -> list[tuple[int, int]]:
    """(start, stop) rows of each piece once they are concatenated."""
    out, start = [], 0
    for piece in pieces:
        out.append((start, start + len(piece)))
        start += len(piece)
    return out


def _scratch(buffers: dict, like: torch.Tensor) -> torch.Tensor:
    key = (tuple(like.shape), like.dtype, like.device)
    if key not in buffers:
        buffers[key] = torch.empty_like(like, memory_format=torch.contiguous_format)
    return buffers[key]


def _copied(values: dict) -> dict:
    """The readings as tensors of their own, replaced one at a time (peak memory near one copy)."""
    for key in list(values):
        values[key] = values[key].clone()
    return values


def _versions(*readings: dict) -> list:
    """The version counters of the readings (views share their base's): they move if anything writes into
    a reading in place."""
    return [value._version for values in readings for value in values.values() if not value.is_inference()]


def parent_sum(parents: tuple[str, ...], outputs, sums: dict):
    """The sum of the parents' outputs, left to right (the same additions as summing them afresh), from
    the longest prefix already in ``sums``; remembered there."""
    if parents in sums:
        return sums[parents]
    start = next(i for i in range(len(parents), -1, -1) if parents[:i] in sums)
    total = sums[parents[:start]]
    for parent in parents[start:]:
        total = total + outputs[parent]
    sums[parents] = total
    return total


def close_enough(got: torch.Tensor, expected: torch.Tensor, rtol: float) -> bool:
    """Equal to rounding, coordinate by coordinate (``tolerance``)."""
    if got.shape != expected.shape:
        return False
    if expected.dim() == 0:
        return (got - expected).abs().item() <= rtol * (expected.abs().item() + 1e-6) + 1e-5
    deviation = (got - expected).abs().amax(dim=0)
    return bool((deviation <= tolerance(expected.abs().amax(dim=0), rtol)).all())


def tolerance(scale: torch.Tensor, rtol: float) -> torch.Tensor:
    """The rounding a reading may carry, per coordinate: relative to that coordinate's largest magnitude over the
    rows, not the whole tensor's, so one large coordinate (a massive activation) cannot hide a real difference in
    the others; floored at 1e-3 of the largest, for coordinates computed as a difference of large terms."""
    scale = scale.double()
    return rtol * (scale + 1e-3 * scale.max() + 1e-6) + 1e-5


@dataclass
class Dataset:
    """Raw model inputs plus named per-example columns (labels, counts...)."""

    inputs: torch.Tensor
    columns: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def subset(self, index: torch.Tensor) -> "Dataset":
        return Dataset(self.inputs[index], {k: v[index] for k, v in self.columns.items()})

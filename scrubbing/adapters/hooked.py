"""Adapter for TransformerLens models: any ``HookedRootModule``, TransformerBridge included.

Sites are read and patched only through TransformerLens's own hook API
(``model.hooks(...)``), which reshapes bridge tensors for us and removes every
hook on exit, even after an exception.
"""

from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch

from ..errors import ModelError
from ..sites import ModelAdapter, Site, close_enough


class _Captured(Exception):
    """Raised inside a hook to stop the forward pass once the wanted output is read."""


class _AliasesDiffer(Exception):
    """Raised when a slot read through its alias differs from the slot itself: calibrate again without aliases."""


@dataclass(frozen=True)
class HookRef:
    """A hook point, optionally one head of a ``[batch, pos, head, d]`` hook."""

    hook: str
    head: int | None = None

    def read(self, value: torch.Tensor) -> torch.Tensor:
        return value if self.head is None else value[:, :, self.head]

    def write(self, value: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """``value`` with this ref's part replaced by ``new``."""
        if self.head is None:
            return new.to(value.dtype)
        value = value.clone()
        value[:, :, self.head] = new.to(value.dtype)
        return value

    @property
    def layer(self) -> int | None:
        """The block a ``blocks.{L}.`` hook belongs to."""
        match = re.match(r"blocks\.(\d+)\.", self.hook)
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class HookedSite:
    """How a site maps onto hook points: where its output is read, where each slot is written."""

    name: str
    output: HookRef | None  # None: the model's return value (the output site)
    slots: dict[str, HookRef]
    parents: tuple[str, ...]

    def __hash__(self) -> int:
        return hash(self.name)


def transformer_sites(n_layers: int, n_heads: int, attn_only: bool = False, parallel: bool = False,
                      n_kv_heads: int | None = None) -> list[HookedSite]:
    """The standard site list of a TransformerLens-style transformer.

    ``embed`` (token + position embedding), one site per head ``a{L}.{H}`` with
    slots q/k/v, one per MLP ``m{L}``, and ``output`` (the logits, read from the
    final residual stream). Every slot reads the sum of everything written before it;
    with ``parallel`` (GPT-NeoX/Pythia, GPT-J: attention and MLP read the same residual),
    an MLP does not read its own block's heads.
    """
    sites: list[HookedSite] = [HookedSite("embed", HookRef("blocks.0.hook_resid_pre"), {}, ())]
    written: list[str] = ["embed"]
    for layer in range(n_layers):
        heads = []
        for head in range(n_heads):
            kv = head // (n_heads // n_kv_heads) if n_kv_heads else head  # grouped-query: heads share k/v
            slots = {s: HookRef(f"blocks.{layer}.hook_{s}_input", head if s == "q" else kv) for s in "qkv"}
            name = f"a{layer}.{head}"
            sites.append(HookedSite(name, HookRef(f"blocks.{layer}.attn.hook_result", head), slots, tuple(written)))
            heads.append(name)
        before = tuple(written)
        written += heads
        if not attn_only:
            slots = {"in": HookRef(f"blocks.{layer}.hook_mlp_in")}
            sites.append(HookedSite(f"m{layer}", HookRef(f"blocks.{layer}.hook_mlp_out"), slots,
                                    before if parallel else tuple(written)))
            written.append(f"m{layer}")
    final = HookRef(f"blocks.{n_layers - 1}.hook_resid_post")
    sites.append(HookedSite("output", None, {"in": final}, tuple(written)))
    return sites


class HookedAdapter(ModelAdapter):
    """Reach a ``HookedRootModule`` through named hook points."""

    def __init__(self, model, sites: list[HookedSite], output: str = "output", positional: bool = True):
        super().__init__()
        self.model = model
        self.spec = {s.name: s for s in sites}
        self.sites = {s.name: Site(s.name, tuple(s.slots), s.parents) for s in sites}
        self.output = output
        self._positional = positional
        can_start = "start_at_layer" in inspect.signature(model.forward).parameters
        self._skippable = _skippable_blocks(model) if can_start else []
        starts = {s.name: _starts(s) for s in sites} if can_start else {}
        # (block, entry slot, skip): with ``skip``, the blocks before the start are not run at all (a
        # TransformerBridge's ``start_at_layer`` runs them and discards their output); best first
        self._starts = {name: [(layer, entry, skip) for layer, entry in options
                               for skip in ((True, False) if self._skippable else (False,))]
                        for name, options in starts.items()}
        missing = {ref.hook for s in sites for ref in [s.output, *s.slots.values()] if ref} - set(model.hook_dict)
        if missing:
            raise ValueError(f"the model has no hook points named {sorted(missing)}; check the site list.")

    @classmethod
    def for_transformer(cls, model, n_layers: int, n_heads: int, attn_only: bool = False) -> "HookedAdapter":
        return cls(model, transformer_sites(n_layers, n_heads, attn_only))

    @classmethod
    def for_bridge(cls, bridge) -> "HookedAdapter":
        """A TransformerLens 4 ``TransformerBridge`` (e.g. a local Hugging Face GPT-2 booted with
        ``TransformerBridge.boot_transformers(path)``): turns on per-head q/k/v inputs, per-head
        results and ``hook_mlp_in``, which bridges gate off by default."""
        bridge.set_use_split_qkv_input(True)
        bridge.set_use_attn_result(True)
        bridge.set_use_hook_mlp_in(True)
        cfg = bridge.cfg
        adapter = cls(bridge, transformer_sites(cfg.n_layers, cfg.n_heads, attn_only=getattr(cfg, "attn_only", False),
                                                parallel=bool(getattr(cfg, "parallel_attn_mlp", False)),
                                                n_kv_heads=getattr(cfg, "n_key_value_heads", None)))
        adapter.headless_unsplit = True
        # a bridge's per-head q/k/v inputs are copies of the block's residual stream (before the layer norm)
        adapter.slot_aliases = {f"blocks.{layer}.hook_{s}_input": f"blocks.{layer}.hook_resid_pre"
                                for layer in range(cfg.n_layers) for s in "qkv"
                                if f"blocks.{layer}.hook_resid_pre" in bridge.hook_dict}
        return adapter

    headless_unsplit = False  # passes that read or write no head's input run the bridge's attention unsplit (``for_bridge``)
    # per-head hook -> a hook whose value every head's slot equals (``for_bridge``): calibration's clean pass reads
    # the alias in an unsplit pass (one tensor per block instead of three per-head copies), and checks it against
    # the slots themselves on its first rows; should one differ, it calibrates again reading every slot
    slot_aliases: dict[str, str] = {}

    def calibrate(self, data, *args, **kwargs):
        self._aliases_checked = False
        try:
            return super().calibrate(data, *args, **kwargs)
        except _AliasesDiffer:
            self.slot_aliases = {}
            return super().calibrate(data, *args, **kwargs)

    @contextmanager
    def _unsplit(self, split: bool):
        """A pass that reads or writes no head's input (``split`` False) runs attention unsplit: the bridge's
        per-head q/k/v copies (each head's own layer norm and projection) cost about as much again as the rest
        of the pass, and only a pass that reads or writes one head's input needs them. Same values to rounding
        (about 1e-6 relative). The rule is the same in calibration and in the engine, so a patched call is
        checked in the mode the engine runs it."""
        if split or not self.headless_unsplit:
            yield
            return
        self.model.set_use_split_qkv_input(False)
        try:
            yield
        finally:
            self.model.set_use_split_qkv_input(True)

    def _positions(self, outputs):
        return outputs[self.output].shape[1] if self._positional else None

    def row_bytes(self, inputs):
        """About the bytes one row's clean readings take (calibration sizes its chunks by it): each output and
        slot read is ``d_model`` wide per position (attention hooks per head; slots read through one alias count
        once), the logits ``d_vocab``; None for a model without a TransformerLens-style ``cfg``."""
        cfg = getattr(self.model, "cfg", None)
        d_model = getattr(cfg, "d_model", None)
        if not d_model:
            return None
        d_vocab = getattr(cfg, "d_vocab_out", -1) or -1
        d_vocab = d_vocab if d_vocab > 0 else getattr(cfg, "d_vocab", d_model)
        slots = [ref.hook for spec in self.spec.values() for ref in spec.slots.values()]
        reads = (sum(spec.output is not None for spec in self.spec.values())
                 + sum(hook not in self.slot_aliases for hook in slots)
                 + len({self.slot_aliases[hook] for hook in slots if hook in self.slot_aliases}))
        size = next((p.element_size() for p in self.model.parameters()), 4)
        positions = inputs.shape[1] if inputs.dim() > 1 else 1
        return positions * size * (reads * d_model + d_vocab)

    def _calibration_pass(self, inputs):
        """The clean pass with slots, also recording the order in which the output hooks fire; slots read
        through their aliases where the adapter has them (checked once per calibration)."""
        trace: list[str] = []
        outputs, slots = self._clean(inputs, True, trace=trace, aliased=bool(self.slot_aliases))
        return outputs, slots, trace

    _aliases_checked = False

    def _read(self, inputs):
        readings = super()._read(inputs)
        if self.slot_aliases and not self._aliases_checked:
            self._check_aliases(inputs[:self.EARLY_STOP_ROWS], readings[1])
        return readings

    def _check_aliases(self, inputs, slots) -> None:
        """Every slot read through its alias equals the slot itself, read in a split pass on these rows."""
        _, real = self._counted("clean", len(inputs), self._guarded, self._clean, inputs, True)
        if any(not close_enough(slots[key][:len(inputs)], value, 1e-4) for key, value in real.items()):
            raise _AliasesDiffer
        self._aliases_checked = True

    def _clean(self, inputs, slots_too, upto=None, copy=False, trace=None, aliased=False):
        """Readings are views of the model's tensors (no copy, as in TransformerLens's caches);
        should the model modify one in place after its hook, the pass is redone with copies.
        With ``upto``, only the sites up to it are read and the pass stops at its output. With ``trace``
        (a list), the names of the output hooks are appended to it as they fire. With ``aliased``, slots
        with an alias (``slot_aliases``) are read there, once per alias, in an unsplit pass."""
        names = list(self.spec)
        wanted = names if upto is None else names[: names.index(upto) + 1]
        readings: dict = {}
        hooks = []
        aliases = self.slot_aliases if aliased else {}
        shared: dict[str, str] = {}  # slot hook -> its alias, read once into ``by_alias``
        by_alias: dict = {}
        split = False  # whether a per-head slot is read itself: only a split pass has per-head inputs
        for spec in (self.spec[name] for name in wanted):
            if spec.output is not None:
                hooks.append((spec.output.hook, self._reader(readings, spec.name, spec.output, copy)))
            for slot, ref in spec.slots.items() if slots_too else ():
                if ref.hook in aliases:
                    shared[ref.hook] = aliases[ref.hook]
                else:
                    split = split or ref.head is not None
                    hooks.append((ref.hook, self._reader(readings, (spec.name, slot), ref, copy)))
        for alias in dict.fromkeys(shared.values()):
            hooks.append((alias, self._reader(by_alias, alias, HookRef(alias), copy)))
        stop = self.spec[upto].output if upto is not None else None
        if stop is not None:
            hooks.append((stop.hook, self._raiser))
        if trace is not None:
            hooks += [(hook, partial(self._tracer, trace, hook)) for hook in
                      dict.fromkeys(self.spec[name].output.hook for name in names if self.spec[name].output)]
        result = None
        with torch.no_grad(), self._unsplit(split), self.model.hooks(fwd_hooks=hooks):
            try:
                result = self.model(inputs)
            except _Captured:
                pass
        if any(version is not None and value._version != version
               for value, version in [*readings.values(), *by_alias.values()]):
            if trace is not None:
                trace.clear()
            return self._clean(inputs, slots_too, upto, copy=True, trace=trace, aliased=aliased)
        outputs = {key: value for key, (value, _) in readings.items() if isinstance(key, str)}
        slots = {key: value for key, (value, _) in readings.items() if isinstance(key, tuple)}
        for spec in (self.spec[name] for name in wanted) if shared else ():
            for slot, ref in spec.slots.items():
                if ref.hook in shared:
                    slots[(spec.name, slot)] = by_alias[shared[ref.hook]][0]
        if result is not None:
            outputs[self.output] = result
        return outputs, slots

    def _run(self, site, slot_inputs, inputs):
        return self._patched(site, slot_inputs, lambda: self.model(inputs))

    def _shortcuts(self, site):
        direct = [partial(self._mlp_alone, layer=layer) for layer in self._mlp_layer(site)]
        return direct + [partial(self._from_layer, layer=layer, entry=entry, skip=skip)
                         for layer, entry, skip in self._starts.get(site, [])]

    def _mlp_layer(self, site) -> list[int]:
        """[L] where the site is block L's MLP (its one slot ``hook_mlp_in``, its output ``hook_mlp_out``) and the
        block has ``ln2`` and ``mlp`` modules to call; else []."""
        spec = self.spec[site]
        slot = next(iter(spec.slots.values()), None)
        if len(spec.slots) != 1 or spec.output is None or slot.layer is None or slot.head is not None:
            return []
        layer = slot.layer
        blocks = getattr(self.model, "blocks", None)
        block = blocks[layer] if blocks is not None and layer < len(blocks) else None
        if (slot.hook != f"blocks.{layer}.hook_mlp_in" or spec.output.hook != f"blocks.{layer}.hook_mlp_out"
                or not all(isinstance(getattr(block, name, None), torch.nn.Module) for name in ("ln2", "mlp"))):
            return []
        return [layer]

    def _mlp_alone(self, site, slot_inputs, inputs, layer: int):
        """Block ``layer``'s MLP on its slot: ``_mlps`` for this one site."""
        return self._mlps({(site, "in"): slot_inputs["in"]}, inputs, [site])[site]

    def _mlps(self, slot_inputs, inputs, names):
        """MLP sites on their slots, each block's modules called directly (``mlp(ln2(in))``): no attention runs
        before them, as in a pass started at the block. Used only where calibration verified it."""
        out = {}
        with torch.no_grad():
            for name in names:
                block = self.model.blocks[self._mlp_layer(name)[0]]
                out[name] = block.mlp(block.ln2(slot_inputs[(name, "in")]))
        return out

    def _from_layer(self, site, slot_inputs, inputs, layer: int, entry: str, skip: bool = False):
        """Start the forward pass at block ``layer`` (TransformerLens's ``start_at_layer``) with the ``entry``
        slot as the residual, the slot hooks overwriting everything the site reads: ``_from_block`` for this
        one site, the very call calibration checks for a block's sites together."""
        given = {(site, slot): value for slot, value in slot_inputs.items()}
        return self._from_block(given, inputs, [site], layer=layer, entries={site: entry}, skip=skip)[site]

    def _shortcut_groups(self):
        """The shortcuts of every site that starts at the same block, checked in one call: option ``k`` of
        each site's ``_shortcuts`` is ``_from_layer`` at ``_starts(site)[k]``, which is ``_from_block`` for
        that site alone; ``_from_block`` computes it for many sites at once (the block's heads and MLP in one
        block call)."""
        groups: dict[tuple[int, bool], dict[str, int]] = {}
        entries: dict[tuple[int, bool], dict[str, str]] = {}
        for name, starts in self._starts.items():
            before = len(self._mlp_layer(name))  # options ahead of the block starts
            for k, (layer, entry, skip) in enumerate(starts, start=before):
                groups.setdefault((layer, skip), {})[name] = k
                entries.setdefault((layer, skip), {})[name] = entry
        mlps = {name: 0 for name in self.spec if self._mlp_layer(name)}  # every MLP called directly: option 0
        return ([(self._mlps, mlps)] if mlps else []) + [
            (partial(self._from_block, layer=layer, entries=entries[(layer, skip)], skip=skip), members)
            for (layer, skip), members in sorted(groups.items())]

    def _from_block(self, slot_inputs, inputs, names, layer: int, entries: dict[str, str], skip: bool = False):
        """Many sites' ``_from_layer`` in one call: start at block ``layer`` with the first site's entry slot
        as the residual, write every listed site's slots, read every output, stop once all are read."""
        first = names[0]

        def call():
            with self._skipping(layer if skip else 0):
                return self.model(slot_inputs[(first, entries[first])], start_at_layer=layer)
        return self._many(slot_inputs, names, call)

    def _clean_rows_call(self, call, names):
        """On the clean rows, a group whose per-head slots were read through their aliases (checked) writes none
        of them, and so runs unsplit (``_unsplit``): each such slot there is the block's residual stream, which
        the unsplit block reads anyway, so the call computes the same shortcut (same start, same skipped blocks)
        without the per-head copies (the same values to rounding, about 1e-6 relative). Every clean row still
        checks where the shortcut starts and which blocks it skips; the split call the engine runs, per-head
        writes and all, is checked on the structural rows only (2m rows of the first chunk, their slots from
        other examples: the per-head write path does not depend on the row)."""
        if not (self.headless_unsplit and self._aliases_checked
                and any(ref.hook in self.slot_aliases for name in names for ref in self.spec[name].slots.values())):
            return None

        def through_aliases(slot_inputs, inputs, names):
            self._unwritten = self.slot_aliases  # so ``_many_once`` writes no head's input: the pass runs unsplit
            try:
                return call(slot_inputs, inputs, names)
            finally:
                self._unwritten = {}
        return through_aliases

    _unwritten: dict[str, str] = {}  # per-head hooks ``_many_once`` leaves alone (``_clean_rows_call``)

    @contextmanager
    def _skipping(self, layer: int):
        """Blocks before ``layer`` pass their input through unchanged (their output is discarded anyway:
        the start block swaps in the given residual). Used only where calibration verified it."""
        skipped = self._skippable[:layer]
        saved = [vars(module).get("forward") for module in skipped]
        for module in skipped:
            module.forward = _passthrough
        try:
            yield
        finally:
            for module, before in zip(skipped, saved):
                if before is None:
                    del module.forward
                else:
                    module.forward = before

    def _run_all(self, slot_inputs, inputs, names):
        """Every listed site's output in one full forward pass with all of their slots written."""
        return self._many(slot_inputs, names, lambda: self.model(inputs))

    def _many(self, slot_inputs, names, call):
        """Run ``call`` with the slots of every site in ``names`` overwritten (one writer per hook point,
        putting each head's value in its place), reading each site's output (a copy: the pass goes on
        after the read); the pass stops once every output is read unless one is the return value.
        Sites whose slots share a place (grouped-query heads share their k/v input) go in separate
        calls: as many as the most sites sharing one place."""
        rounds: list[tuple[list[str], set]] = []
        for name in names:
            places = {(ref.hook, ref.head) for ref in self.spec[name].slots.values() if ref.hook not in self._unwritten}
            for members, used in rounds:
                if not places & used:
                    members.append(name)
                    used |= places
                    break
            else:
                rounds.append(([name], set(places)))
        out: dict[str, torch.Tensor] = {}
        for members, _ in rounds:
            out.update(self._many_once(slot_inputs, members, call))
        return {name: out[name] for name in names}

    def _many_once(self, slot_inputs, names, call):
        parts: dict[str, list] = {}
        for name in names:
            for slot, ref in self.spec[name].slots.items():
                if ref.hook not in self._unwritten:
                    parts.setdefault(ref.hook, []).append((ref, (name, slot)))
        split = any(ref.head is not None for refs in parts.values() for ref, _ in refs)  # a head's input written
        read = [name for name in names if self.spec[name].output is not None]
        returns = len(read) < len(names)
        store: dict[str, torch.Tensor] = {}
        hooks = [(self.spec[name].output.hook, self._collector(store, name, self.spec[name].output,
                                                               None if returns else len(read)))
                 for name in read]
        hooks += [(hook, self._multi_writer(refs, slot_inputs)) for hook, refs in parts.items()]
        result = None
        with torch.no_grad(), self._unsplit(split), self.model.hooks(fwd_hooks=hooks):
            try:
                result = call()
            except _Captured:
                pass
        missing = [name for name in read if name not in store]
        if missing:
            raise ModelError(f"site {missing[0]!r} produced no output in a patched pass (its hook never fired).")
        out = {name: store[name] for name in read}
        for name in names:
            if self.spec[name].output is None:
                out[name] = result
        return out

    def _verify_early_stops(self, inputs, full, trace, rtol: float) -> frozenset[str]:
        """Where a clean pass may stop, from the order the output hooks fired in calibration's clean pass
        (``trace``): stopping at a site's output hook (its first firing) reads every site up to it with a
        full pass's values iff each of their hooks has fired for the last time by then. The deepest such
        stop is then run once and compared with the full pass; should it differ, every stop is checked by
        running it (the generic check)."""
        names = list(self.spec)
        events = trace
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for i, hook in enumerate(events):
            first.setdefault(hook, i)
            last[hook] = i
        safe = set()
        for i, name in enumerate(names):
            out = self.spec[name].output
            if out is None:
                stop = len(events)
            elif out.hook in first:
                stop = first[out.hook]
            else:
                continue
            before = [self.spec[n].output for n in names[: i + 1]]
            if all((ref is None and n == name) or (ref is not None and ref.hook in last and last[ref.hook] <= stop)
                   for n, ref in zip(names[: i + 1], before)):
                safe.add(name)
        deepest = [name for name in names if name in safe and self.spec[name].output is not None]
        if deepest:
            part, _ = self._counted("clean", len(inputs), self._guarded, self._clean, inputs, False, deepest[-1])
            upto = names[: names.index(deepest[-1]) + 1]
            if not all(n in part and close_enough(part[n], full[n], rtol) for n in upto):
                return super()._verify_early_stops(inputs, full, trace, rtol)
        return frozenset(safe)

    @staticmethod
    def _tracer(events, name, value, hook):
        events.append(name)

    @staticmethod
    def _collector(store, key, ref: HookRef, stop_after: int | None):
        def hook(value, hook):
            store[key] = ref.read(value).detach().clone()
            if stop_after is not None and len(store) == stop_after:
                raise _Captured
        return hook

    @staticmethod
    def _multi_writer(keyed: list, slot_inputs):
        """One hook writing several refs' values: per head in place, or the whole tensor at once. Values are
        looked up in ``slot_inputs`` when the hook fires (it may build them then: ``sites._Joined``)."""
        def hook(value, hook):
            refs = [(ref, slot_inputs[key]) for ref, key in keyed]
            heads = [ref.head for ref, _ in refs]
            if None not in heads and sorted(heads) == list(range(value.shape[2])):
                ordered = sorted(refs, key=lambda item: item[0].head)
                return torch.stack([new.to(value.dtype) for _, new in ordered], dim=2)
            if None not in heads:  # some heads: one copy, each written into it
                value = value.clone()
                for ref, new in refs:
                    value[:, :, ref.head] = new.to(value.dtype)
                return value
            for ref, new in refs:
                value = ref.write(value, new)
            return value
        return hook

    def _patched(self, site, slot_inputs, call):
        """Run ``call`` with the site's slots overwritten, stopping once its output is read."""
        spec = self.spec[site]
        hooks = [(ref.hook, self._writer(ref, slot_inputs[slot])) for slot, ref in spec.slots.items()]
        captured: dict[str, torch.Tensor] = {}
        if spec.output is not None:
            hooks.append((spec.output.hook, self._stopper(captured, spec.output)))
        with torch.no_grad(), self.model.hooks(fwd_hooks=hooks):
            try:
                return call()
            except _Captured:
                return captured["value"]

    def restore(self) -> None:
        self.model.reset_hooks(including_permanent=False)

    @staticmethod
    def _reader(store, key, ref: HookRef, copy: bool):
        def hook(value, hook):
            value = ref.read(value).detach()
            if value.is_inference():  # inference tensors keep no version counter: always copy
                store[key] = (value.clone(), None)
            else:
                value = value.clone() if copy else value
                store[key] = (value, value._version)
        return hook

    @staticmethod
    def _writer(ref: HookRef, new: torch.Tensor):
        def hook(value, hook):
            return ref.write(value, new)
        return hook

    @staticmethod
    def _raiser(value, hook):
        raise _Captured

    @staticmethod
    def _stopper(store, ref: HookRef):
        def hook(value, hook):
            store["value"] = ref.read(value).detach()  # the pass ends here: nothing can change it after
            raise _Captured
        return hook


def _passthrough(*args, **kwargs):
    """A skipped block's forward: its hidden states, unchanged."""
    return args[0] if args else kwargs["hidden_states"]


def _skippable_blocks(model) -> list:
    """The modules a TransformerBridge's blocks wrap (``blocks[i].original_component``), whose forward may
    be skipped before a ``start_at_layer``; [] for other models (their ``start_at_layer`` already skips)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "_setup_start_at_layer"):
        return []
    inner = [getattr(block, "original_component", None) for block in blocks]
    return inner if all(isinstance(module, torch.nn.Module) for module in inner) else []


def _starts(site: HookedSite) -> list[tuple[int, str]]:
    """Where a forward pass may start for this site, best first: (block, slot whose value enters it).

    The earliest block any slot is written in; a site whose one slot is the residual stream
    after block L (the output) may start after it, with that residual as the input (not every
    model accepts ``start_at_layer=n_layers``), else at block L, whose output the slot overwrites.
    """
    layers = [ref.layer for ref in site.slots.values()]
    if not layers or any(layer is None for layer in layers):
        return []
    (entry, ref), *rest = site.slots.items()
    if not rest and ref.hook.endswith(".hook_resid_post"):
        return [(ref.layer + 1, entry), (ref.layer, entry)]
    return [(min(layers), entry)]

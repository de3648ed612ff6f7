"""Adapter for a plain torch module whose sites are named submodules.

A site's output is its submodule's output. A site declared with a tuple of parents has one slot, ``in``: the
submodule's first positional input, the sum of those parents' outputs plus a constant. Inputs that are not one
sum are declared too (``Concat``, named arguments, the raw input as ``INPUT``); see ``TorchModuleAdapter``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelError
from ..sites import ModelAdapter, Site

INPUT = "input"  # the site whose output is the model's raw input: declare it as a parent to read that input


@dataclass(frozen=True, init=False)
class Concat:
    """An input that is the concatenation of its parents' outputs along ``dim``, in this order."""

    parents: tuple[str, ...]
    dim: int

    def __init__(self, *parents: str, dim: int = -1):
        if not parents or not all(isinstance(p, str) for p in parents):
            raise ModelError(f"Concat{parents}: give the parent site names, e.g. Concat('embed', 'mlp0', dim=-1).")
        object.__setattr__(self, "parents", tuple(parents))
        object.__setattr__(self, "dim", int(dim))


class _Captured(Exception):
    pass


FIRST = 0  # the key of the first positional argument (a site declared with one tuple or one Concat)


@dataclass(frozen=True)
class _Port:
    """A site that forms one argument (or one parent's part of a concatenated argument) of a wired site: an
    identity on its slot ``in``, its output placed in that argument's segment of the wired site's packed input."""

    site: str  # the wired site
    arg: "str | int"
    parent: str | None = None  # set for the part of a Concat argument that this parent fills


class TorchModuleAdapter(ModelAdapter):
    """``sites`` maps each submodule name to how its input is formed, in forward order.

    - a tuple of parent sites: the first positional input is their sum plus a constant (a residual stream).
      ``{"embed": (), "mlp0": ("embed",), "unembed": ("embed", "mlp0")}`` is a residual MLP; a site with no
      parents reads the raw input.
    - ``Concat("a", "b", dim=-1)``: the first positional input is ``torch.cat([a, b], dim)``.
    - a dict, argument name -> a tuple (a sum), ``Concat(...)`` or one parent name: a module called as
      ``f(x=..., y=...)`` (or positionally: names are those of its ``forward``).
    - ``INPUT`` (``"input"``) as a parent anywhere: the model's raw input, a site of its own (a leaf's site).

    The sum, concatenation and named-argument forms become sums of new sites, so the plan, the engine and the
    oracle need nothing else: each argument of a wired site ``f`` is an identity site ``f:x`` (its slot is the
    sum of the argument's parents; a concatenated argument has one site ``f:x<p`` per parent, its slice), and
    ``f`` reads one slot ``in``, the sum of those sites, every argument packed into one flat vector per example.
    The argument sites are transparent (``Site.transparent``): ``Edge(p, via="direct")`` into ``f`` means ``p``
    reaches ``f`` only through the arguments it feeds directly (each recomputed, its other parents from the draw),
    as it would without the wiring; ``via=("f:x",)`` restricts it to argument ``x``. ``calibrate``
    checks the declared wiring on data (every sum, every slice of every concatenation) and refuses it, naming
    the site and the fix, where it does not hold.

    A site with parents must read nothing but its declared inputs: a submodule that also reads the raw input
    (a mask or a skip connection computed from ``x`` in the parent's forward, passed as an undeclared argument
    or captured) would keep that input from the instance's own example, where causal scrubbing takes every
    input no edge claims from the random draw r. ``calibrate`` runs each site on its clean slots in shuffled
    contexts and refuses such a site (a ``ModelError`` naming it): declare the argument, with ``INPUT`` or the
    site computing it as its parent.

    Wired arguments must have the same shape per example on every batch (the packing is fixed at the first
    pass), and a wired site's own output should not be a node with per-position classes (its input is packed).
    """

    def __init__(self, model: nn.Module, sites: dict, output: str, positional: bool = False):
        super().__init__()
        self.model = model
        modules = dict(model.named_modules())
        unknown = [name for name in sites if name not in modules]
        if unknown:
            raise ValueError(f"the model has no submodules named {unknown}; known: {[m for m in modules if m]}")
        if INPUT in sites:
            raise ModelError(f"{INPUT!r} names the model's raw input here; a submodule of that name cannot be a "
                             "site. Wrap it in a submodule of another name.")
        self.modules = {name: modules[name] for name in sites}
        self.output = output
        self._positional = positional
        self._handles: list = []
        self.wiring: dict[str, dict] = {}  # wired site -> {argument key: tuple of parents | Concat}
        self.ports: dict[str, _Port] = {}
        self._layout: dict[str, dict] = {}  # wired site -> {arg: (shape, dtype, start, numel)}, set by a clean pass
        self._parts: dict[tuple[str, "str | int"], list[tuple[str, int, int]]] = {}  # Concat arg -> (parent, start, size)
        self.sites = self._declare(sites)

    # -- the site graph -----------------------------------------------------------------------------------------
    def _declare(self, spec: dict) -> dict[str, Site]:
        uses_input = any(INPUT in _parents_of(value) for value in spec.values())
        out: dict[str, Site] = {INPUT: Site(INPUT)} if uses_input else {}
        for name, value in spec.items():
            wiring = self._wiring_of(name, value)
            for parent in {p for w in wiring.values() for p in _parents_of(w)} if wiring else _parents_of(value):
                if parent not in out:
                    raise ModelError(f"site {name!r}: parent {parent!r} is not a site declared before it (sites "
                                     f"are declared in forward order; declared so far: {list(out)}).")
            if not wiring:
                out[name] = Site(name, ("in",) if value else (), tuple(value))
                continue
            self.wiring[name] = wiring
            ports = []
            for arg, how in wiring.items():
                label = "in" if arg == FIRST else arg
                if isinstance(how, Concat):
                    for parent in how.parents:
                        port = f"{name}:{label}<{parent}"
                        if port in out:
                            raise ModelError(f"site {name!r}: Concat names parent {parent!r} twice; each parent "
                                             "fills one slice.")
                        self.ports[port] = _Port(name, arg, parent)
                        out[port] = Site(port, ("in",), (parent,), transparent=True)
                        ports.append(port)
                else:
                    port = f"{name}:{label}"
                    self.ports[port] = _Port(name, arg)
                    out[port] = Site(port, ("in",), tuple(how), transparent=True)
                    ports.append(port)
            out[name] = Site(name, ("in",), tuple(ports))
        return out

    def _wiring_of(self, name: str, value) -> dict:
        """{argument: tuple | Concat} for a site whose input is not one plain sum; {} for one that is."""
        if isinstance(value, Concat):
            return {FIRST: value}
        if not isinstance(value, dict):
            if INPUT in value:
                return {FIRST: tuple(value)}  # the raw input in a sum: through a port, so INPUT stays a source
            return {}
        if not value:
            raise ModelError(f"site {name!r}: an empty dict declares no input; give () for a site reading the raw "
                             "input, or name its arguments.")
        params = inspect.signature(self.modules[name].forward).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        wiring = {}
        for arg, how in value.items():
            if arg not in params and not takes_any:
                raise ModelError(f"site {name!r}: its forward takes no argument {arg!r}; its arguments are "
                                 f"({', '.join(params)}).")
            wiring[arg] = (how,) if isinstance(how, str) else how if isinstance(how, Concat) else tuple(how)
            if not isinstance(wiring[arg], Concat) and not wiring[arg]:
                raise ModelError(f"site {name!r} argument {arg!r}: no parents; name the sites (or INPUT) it reads.")
        return wiring

    # -- packing a wired site's arguments into its one slot ---------------------------------------------------------
    def _learn(self, site: str, args: dict, outputs: dict) -> None:
        """The packed layout of a wired site's arguments, from the first batch that reaches it."""
        if site in self._layout:
            layout = self._layout[site]
            for arg, (shape, _, _, _) in layout.items():
                if tuple(args[arg].shape[1:]) != shape:
                    raise ModelError(f"site {site!r}: argument {_label(arg)!r} has shape {tuple(args[arg].shape[1:])} "
                                     f"per example here, {shape} before; wired arguments need a fixed shape.")
            return
        layout, start = {}, 0
        for arg in self.wiring[site]:
            shape = tuple(args[arg].shape[1:])
            layout[arg] = (shape, args[arg].dtype, start, math.prod(shape))
            start += math.prod(shape)
        for arg, how in self.wiring[site].items():
            if not isinstance(how, Concat):
                continue
            value, dim = args[arg], how.dim % args[arg].dim()
            sizes = []
            for parent in how.parents:
                got = outputs[parent]
                if got.dim() != value.dim() or dim == 0:
                    raise ModelError(f"site {site!r} argument {_label(arg)!r}: Concat{how.parents} along dim "
                                     f"{how.dim} does not fit: the argument has shape {tuple(value.shape)}, parent "
                                     f"{parent!r} gives {tuple(got.shape)}. Declare the dim the module concatenates "
                                     "along (not the batch axis).")
                sizes.append(got.shape[dim])
            if sum(sizes) != value.shape[dim]:
                raise ModelError(f"site {site!r} argument {_label(arg)!r}: it has size {value.shape[dim]} along dim "
                                 f"{how.dim}, but its declared parents {how.parents} give {' + '.join(map(str, sizes))}"
                                 f" = {sum(sizes)}. Declare every site the module concatenates, in order.")
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            self._parts[(site, arg)] = [(p, a, s) for p, a, s in zip(how.parents, starts, sizes)]
        self._layout[site] = layout

    def _dtype(self, site: str) -> torch.dtype:
        dtypes = [dtype for _, dtype, _, _ in self._layout[site].values()]
        if any(not d.is_floating_point or d == torch.float64 for d in dtypes):
            return torch.float64  # exact for integer inputs (token ids)
        out = dtypes[0]
        for d in dtypes[1:]:
            out = torch.promote_types(out, d)
        return out

    def _pack(self, site: str, args: dict) -> torch.Tensor:
        """One flat vector per example holding every argument, in the layout's order."""
        dtype = self._dtype(site)
        return torch.cat([args[arg].reshape(len(args[arg]), -1).to(dtype) for arg in self._layout[site]], dim=1)

    def _unpack(self, site: str, packed: torch.Tensor) -> dict:
        return {arg: packed[:, start:start + numel].reshape(len(packed), *shape).to(dtype)
                for arg, (shape, dtype, start, numel) in self._layout[site].items()}

    def _place(self, port: str, value: torch.Tensor) -> torch.Tensor:
        """A port's output: its argument (or its slice of it) in the wired site's packed vector, zero elsewhere."""
        p = self.ports[port]
        shape, _, start, numel = self._layout[p.site][p.arg]
        out = torch.zeros(len(value), sum(n for *_, n in self._layout[p.site].values()), dtype=self._dtype(p.site),
                          device=value.device)
        if p.parent is None:
            out[:, start:start + numel] = value.reshape(len(value), -1).to(out.dtype)
            return out
        how = self.wiring[p.site][p.arg]
        dim = how.dim % (len(shape) + 1)
        _, at, size = next(part for part in self._parts[(p.site, p.arg)] if part[0] == p.parent)
        full = torch.zeros(len(value), *shape, dtype=out.dtype, device=value.device)
        full.narrow(dim, at, size).copy_(value)
        out[:, start:start + numel] = full.reshape(len(value), -1)
        return out

    def _slice(self, port: str, arg_value: torch.Tensor) -> torch.Tensor:
        """What a Concat part's slot reads on a clean pass: its slice of the argument."""
        p = self.ports[port]
        how = self.wiring[p.site][p.arg]
        _, at, size = next(part for part in self._parts[(p.site, p.arg)] if part[0] == p.parent)
        return arg_value.narrow(how.dim % arg_value.dim(), at, size)

    # -- the model ----------------------------------------------------------------------------------------------
    def _clean(self, inputs, slots_too, upto=None):
        outputs, slots, args = {}, {}, {}
        names = list(self.modules)
        stop_at = self.ports[upto].site if upto in self.ports else upto
        wanted = names if stop_at is None else names[: names.index(stop_at) + 1] if stop_at in names else []
        for name in wanted:
            module = self.modules[name]
            self._hook(module.register_forward_hook(self._reader(outputs, name)))
            if name in self.wiring:
                self._hook(module.register_forward_pre_hook(self._args_reader(args, name), with_kwargs=True))
            elif slots_too and self.sites[name].slots:
                self._hook(module.register_forward_pre_hook(self._slot_reader(slots, (name, "in"))))
        if stop_at in self.modules:
            self._hook(self.modules[stop_at].register_forward_hook(self._raiser))
        try:
            if wanted or upto is None:  # (a pass stopping at INPUT reads nothing of the model)
                with torch.no_grad():
                    self.model(inputs)
        except _Captured:
            pass
        finally:
            self.restore()
        if INPUT in self.sites:
            outputs[INPUT] = inputs
        for site, given in args.items():
            self._learn(site, given, outputs)
            for port, p in self.ports.items():
                if p.site != site:
                    continue
                value = given[p.arg] if p.parent is None else self._slice(port, given[p.arg])
                outputs[port] = self._place(port, value)
                if slots_too:
                    slots[(port, "in")] = value
            if slots_too:
                slots[(site, "in")] = self._pack(site, given)
        return outputs, slots

    def _positions(self, outputs):
        return outputs[self.output].shape[1] if self._positional else None

    def _run(self, site, slot_inputs, inputs):
        if site in self.ports:
            return self._place(site, slot_inputs["in"])
        module = self.modules[site]
        captured = {}
        if site in self.wiring:
            given = self._unpack(site, slot_inputs["in"])
            self._hook(module.register_forward_pre_hook(self._args_writer(site, given), with_kwargs=True))
        else:
            self._hook(module.register_forward_pre_hook(lambda mod, args: (slot_inputs["in"], *args[1:])))

        def stop(mod, args, out):
            captured["value"] = out.detach().clone()
            raise _Captured

        self._hook(module.register_forward_hook(stop))
        try:
            with torch.no_grad():
                self.model(inputs)
        except _Captured:
            return captured["value"]
        finally:
            self.restore()
        raise RuntimeError(f"site {site!r} was never reached by the forward pass")

    def _wiring_hint(self, site: str, slot: str) -> str:
        if site not in self.ports:
            return ("Declare the missing parent sites; Concat(...) if the module concatenates its inputs; a dict "
                    "of named arguments if it takes several; INPUT if it reads the raw input.")
        p = self.ports[site]
        how = self.wiring[p.site][p.arg]
        if p.parent is not None:
            return (f"It is {p.parent!r}'s slice of argument {_label(p.arg)!r} of {p.site!r}, declared as "
                    f"Concat{how.parents} along dim {how.dim}: declare the sites the module concatenates, in its "
                    "order and along its dim.")
        return (f"It is argument {_label(p.arg)!r} of {p.site!r}, declared as the sum of {how}: declare the sites "
                "the module adds into it, Concat(...) if it concatenates them, INPUT if it is the raw input.")

    def _shuffled_runs(self, inputs, slots):
        """As ``ModelAdapter._shuffled_runs``, and refuse a site whose output moves with the raw input alone."""
        shuffled = super()._shuffled_runs(inputs, slots)
        for site, value in shuffled.items():
            given = {slot: slots[(site, slot)] for slot in self.sites[site].slots}
            same = self.run(site, given, inputs, shortcut=False)
            if not torch.allclose(value, same, atol=1e-5, rtol=1e-4):
                raise ModelError(
                    f"site {site!r} reads the model's raw input beyond its slot: given the same slot, its output "
                    "changes when only the raw input changes (e.g. a mask or a skip connection computed from the input "
                    "in the parent module's forward). Causal scrubbing takes every input no edge claims from the "
                    "random draw r; this one would silently stay on the instance's own example. Declare what it reads: "
                    f"the argument that carries it (sites={{{site!r}: {{'arg': INPUT, ...}}}} for the raw input itself), "
                    "or move what reads the raw input into a submodule of its own and declare it as a site with no "
                    f"parents (a source) that feeds {site!r}'s input, so it is resampled like any other parent."
                )
        return shuffled

    def _shortcuts(self, site):
        return [] if site in self.ports else [self._module_alone]

    def _module_alone(self, site, slot_inputs, inputs):
        """Call the site's submodule on its declared inputs alone (used where calibration shows that is all it reads)."""
        with torch.no_grad():
            if site not in self.wiring:
                return self.modules[site](slot_inputs["in"])
            given = self._unpack(site, slot_inputs["in"])
            return self.modules[site](*[given[FIRST]] if FIRST in given else [],
                                      **{k: v for k, v in given.items() if k != FIRST})

    def restore(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _hook(self, handle) -> None:
        self._handles.append(handle)

    @staticmethod
    def _raiser(mod, args, out):
        raise _Captured

    @staticmethod
    def _reader(store, key):
        def hook(mod, args, out):
            store[key] = out.detach().clone()
        return hook

    @staticmethod
    def _slot_reader(store, key):
        def hook(mod, args):
            store[key] = args[0].detach().clone()
        return hook

    def _args_reader(self, store, site):
        def hook(mod, args, kwargs):
            bound = _bind(mod, site, args, kwargs)
            store[site] = {}
            for arg in self.wiring[site]:
                if arg not in bound:
                    raise ModelError(f"site {site!r}: argument {_label(arg)!r} was not passed in the forward pass (its "
                                     "default was used), so it cannot be declared as an input; remove it from the "
                                     "site's dict.")
                if not isinstance(bound[arg], torch.Tensor):
                    raise ModelError(f"site {site!r}: argument {_label(arg)!r} is a {type(bound[arg]).__name__}, not a "
                                     "tensor; only tensor arguments can be declared as inputs.")
                store[site][arg] = bound[arg].detach().clone()
        return hook

    @staticmethod
    def _args_writer(site, given):
        def hook(mod, args, kwargs):
            args, kwargs = list(args), dict(kwargs)
            names = _positional_names(mod)
            for arg, value in given.items():
                index = 0 if arg == FIRST else names.index(arg) if arg in names and names.index(arg) < len(args) \
                    else None
                if index is not None:
                    args[index] = value
                else:
                    kwargs[arg] = value
            return tuple(args), kwargs
        return hook


def _parents_of(value) -> tuple[str, ...]:
    if isinstance(value, Concat):
        return value.parents
    if isinstance(value, str):
        return (value,)
    if isinstance(value, dict):
        return tuple(p for v in value.values() for p in _parents_of(v))
    return tuple(value)


def _label(arg) -> str:
    return "in" if arg == FIRST else arg


def _positional_names(module) -> list[str]:
    return [name for name, p in inspect.signature(module.forward).parameters.items()
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def _bind(module, site, args, kwargs) -> dict:
    """The call's arguments by name (the first positional one also under ``FIRST``)."""
    try:
        bound = dict(inspect.signature(module.forward).bind(*args, **kwargs).arguments)
    except TypeError as exc:
        raise ModelError(f"site {site!r}: its call does not match its forward's signature: {exc}") from exc
    for name, p in inspect.signature(module.forward).parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            bound.update(bound.pop(name, {}))
    if args:
        bound[FIRST] = args[0]
    return bound

"""Adapter for a plain torch module whose sites are named submodules.

A site's output is its submodule's output; its one slot, ``in``, is the
submodule's first positional input. Sites with no parents read the raw input;
no other site may (calibration refuses one that does, see ``TorchModuleAdapter``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from ..sites import ModelAdapter, Site


class _Captured(Exception):
    pass


class TorchModuleAdapter(ModelAdapter):
    """``sites`` maps each submodule name to its parent sites, in forward order.

    Example: ``{"embed": (), "mlp0": ("embed",), "unembed": ("embed", "mlp0")}``
    for a residual MLP whose stream after ``mlp0`` feeds ``unembed``.

    A site with parents must read nothing but its slot: a submodule that also reads the raw
    input (a mask or a skip connection computed from ``x`` in the parent's forward, passed as a
    second argument or captured) would keep that input from the instance's own example, where
    causal scrubbing takes every input no edge claims from the random draw r. ``calibrate``
    runs each site on its clean slot in shuffled contexts and refuses such a site (a
    ``ModelError`` naming it); declare the submodule that reads the input as a site of its own
    (a parent, with no parents itself) instead.
    """

    def __init__(self, model: nn.Module, sites: dict[str, tuple[str, ...]], output: str, positional: bool = False):
        super().__init__()
        self.model = model
        modules = dict(model.named_modules())
        unknown = [name for name in sites if name not in modules]
        if unknown:
            raise ValueError(f"the model has no submodules named {unknown}; known: {[m for m in modules if m]}")
        self.modules = {name: modules[name] for name in sites}
        self.sites = {name: Site(name, ("in",) if parents else (), tuple(parents)) for name, parents in sites.items()}
        self.output = output
        self._positional = positional
        self._handles: list = []

    def _clean(self, inputs, slots_too, upto=None):
        outputs, slots = {}, {}
        names = list(self.modules)
        wanted = names if upto is None else names[: names.index(upto) + 1]
        for name in wanted:
            module = self.modules[name]
            self._hook(module.register_forward_hook(self._reader(outputs, name)))
            if slots_too and self.sites[name].slots:
                self._hook(module.register_forward_pre_hook(self._slot_reader(slots, (name, "in"))))
        if upto is not None:
            self._hook(self.modules[upto].register_forward_hook(self._raiser))
        try:
            with torch.no_grad():
                self.model(inputs)
        except _Captured:
            pass
        finally:
            self.restore()
        return outputs, slots

    def _positions(self, outputs):
        return outputs[self.output].shape[1] if self._positional else None

    def _run(self, site, slot_inputs, inputs):
        module = self.modules[site]
        captured = {}

        def replace(mod, args):
            return (slot_inputs["in"], *args[1:])

        def stop(mod, args, out):
            captured["value"] = out.detach().clone()
            raise _Captured

        self._hook(module.register_forward_pre_hook(replace))
        self._hook(module.register_forward_hook(stop))
        try:
            with torch.no_grad():
                self.model(inputs)
        except _Captured:
            return captured["value"]
        finally:
            self.restore()
        raise RuntimeError(f"site {site!r} was never reached by the forward pass")

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
                    "random draw r; this one would silently stay on the instance's own example. Move what reads the "
                    "raw input into a submodule of its own and declare it as a site with no parents (a source) that "
                    f"feeds {site!r}'s input, so it is resampled like any other parent."
                )
        return shuffled

    def _shortcuts(self, site):
        return [self._module_alone]

    def _module_alone(self, site, slot_inputs, inputs):
        """Call the site's submodule on its slot alone (used where calibration shows that is all it reads)."""
        with torch.no_grad():
            return self.modules[site](slot_inputs["in"])

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

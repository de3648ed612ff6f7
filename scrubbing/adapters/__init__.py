"""Adapters: the ways a model can be reached. The engine sees only ``ModelAdapter``."""

from .hooked import HookedAdapter, HookedSite, HookRef, transformer_sites
from .torch_module import INPUT, Concat, TorchModuleAdapter

__all__ = ["INPUT", "Concat", "HookedAdapter", "HookedSite", "HookRef", "TorchModuleAdapter", "transformer_sites"]

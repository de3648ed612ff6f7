"""The scrub of a plan written by hand with TransformerLens 4 bridge hooks: what the engine is measured against.

This is the loop a researcher writes without our library for a hypothesis on a TransformerBridge
(``embed``, heads ``a{L}.{H}``, MLPs ``m{L}``, the logits) whose edges all take the default
``via="all"``. It reads only the hypothesis and the plan's draws (``plan.instances``), so its
per-example outputs can be compared one to one with ``Engine.outputs(plan)``; none of the engine,
the recipes or the adapter is used.

Why one patched forward pass per node instance is the whole of ``via="all"``: an edge p -> n
recomputes every site no node claims on the way from c(p) to c(n), each reading, off those paths,
the clean value on n's draw r (DESIGN.md §2). In a residual stream every later site reads every
earlier one, so the slot's input is exactly the residual stream of a forward pass on r in which
c(p) is overwritten with p's scrubbed value and every *other* claimed site is held at its clean
value on r (no claimed path runs through it); unclaimed heads and MLPs recompute themselves.
A slot no edge feeds is that pass with nothing overwritten: the clean stream on r. Slots fed by
different sets of edges see different streams, so a node's distinct slot sets run side by side in
one batch, and at the node's own layer its k and v inputs are copied into the query stream's rows,
whose head output is the node's value. Per node instance: one clean pass on r (the values to hold)
and one batched patched pass, both stopped after the node's layer; a leaf is one clean pass on its
sample. A per-position leaf (position t from its instance t) that is the embedding needs one pass
too: position t of the embedding reads only token t, so the tokens are gathered first.
"""

from __future__ import annotations

import torch

from scrubbing.hypothesis import OUTPUT
from scrubbing.plan import Plan


def _where(site: str) -> tuple[str, int | None, float]:
    """A site's hook point, its head (None for a whole tensor) and its place in the forward pass."""
    if site == "embed":
        return "blocks.0.hook_resid_pre", None, -1.0
    if site.startswith("a"):
        layer, head = (int(part) for part in site[1:].split("."))
        return f"blocks.{layer}.attn.hook_result", head, layer
    if site.startswith("m"):
        layer = int(site[1:])
        return f"blocks.{layer}.hook_mlp_out", None, layer + 0.5
    if site == "output":
        return "", None, float("inf")
    raise ValueError(f"the hand loop knows embed, a{{L}}.{{H}}, m{{L}} and output sites, not {site!r}")


def _stop(place: float, n_layers: int) -> int | None:
    """``stop_at_layer`` for a pass that must run up to (and including) the site at ``place``."""
    return None if place == float("inf") else min(n_layers, int(place) + 1)


def _read(bridge, tokens: torch.Tensor, sites: list[str]) -> dict[str, torch.Tensor]:
    """Clean values of ``sites`` on ``tokens``: one cached pass, stopped after the deepest."""
    if not sites:
        return {}
    where = {site: _where(site) for site in sites}
    hooks = {hook for hook, _, _ in where.values()}
    deepest = max(place for _, _, place in where.values())
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name in hooks,
                                     stop_at_layer=_stop(deepest, bridge.cfg.n_layers) if deepest >= 0 else 1)
    return {site: cache[hook] if head is None else cache[hook][:, :, head] for site, (hook, head, _) in where.items()}


def _leaf(bridge, inputs: torch.Tensor, site: str, examples: torch.Tensor) -> torch.Tensor:
    """A leaf's value: clean on its own sample; per position (``examples`` [B, T]), position t from example t."""
    if examples.dim() == 1:
        return _read(bridge, inputs[examples], [site])[site]
    positions = torch.arange(examples.shape[1])
    if site == "embed":  # the embedding at position t reads token t only: one pass on the gathered tokens
        return _read(bridge, inputs[examples, positions], [site])[site]
    batch, n_pos = examples.shape
    value = _read(bridge, inputs[examples.reshape(-1)], [site])[site].reshape(batch, n_pos, n_pos, -1)
    return value[:, positions, positions]


def _node(bridge, inputs, bound, path, instance, values) -> torch.Tensor:
    """The scrubbed value of the node at ``path`` for every instance: one batched patched forward pass."""
    node = path[-1]
    own, own_head, own_place = _where(bound.sites[node])
    edges = bound.edges(node)
    for edge in edges:
        if edge.via != "all":
            raise NotImplementedError(f"the hand loop implements via='all' only; edge {edge.parent!r} -> {node!r} "
                                      f"has via={edge.via!r}")
    slots = ("q", "k", "v") if own_head is not None else ("in",)
    groups: dict[tuple[frozenset, str], list[str]] = {}  # (edges feeding the slot, where the rest comes from)
    for slot in slots:
        active = frozenset(e for e in edges if e.into is None or slot in e.into)
        groups.setdefault((active, bound.unclaimed(node, slot)), []).append(slot)
    batch = len(instance.examples)
    chunk_of = {slot: j for j, members in enumerate(groups.values()) for slot in members}
    rows = [slice(j * batch, (j + 1) * batch) for j in range(len(groups))]
    left_out = {"reference": instance.examples, "draw": instance.draws}
    tokens = torch.cat([inputs[left_out[kind]] for _, kind in groups])

    # every claimed site before the node: its parent's value where an edge of the chunk starts there,
    # else held at its clean value on the chunk's own left-out examples
    upstream = sorted({site for site in bound.sites.values() if _where(site)[2] < own_place},
                      key=lambda s: _where(s)[2])
    kinds = {kind for active, kind in groups if active}
    held = {kind: _read(bridge, inputs[left_out[kind]], upstream) for kind in kinds}
    writes: dict[str, list[tuple[int | None, slice, torch.Tensor]]] = {}
    for j, (active, kind) in enumerate(groups):
        if not active:
            continue  # nothing overwritten: the clean stream on the left-out examples
        sources = {bound.sites[e.parent]: values[path + (e.parent,)] for e in active}
        for site in upstream:
            hook, head, _ = _where(site)
            writes.setdefault(hook, []).append((head, rows[j], sources[site] if site in sources else held[kind][site]))

    def overwrite(parts):  # one hook function per hook point (a bridge reports aliases under their own names)
        def hook(value, hook):
            value = value.clone()
            for head, where, new in parts:
                if head is None:
                    value[where] = new
                else:
                    value[where, :, head] = new
            return value
        return hook

    hooks = [(hook, overwrite(parts)) for hook, parts in writes.items()]
    out: dict[str, torch.Tensor] = {}
    if own_head is not None:  # the node's head reads q, k and v from its own streams
        layer = int(own_place)
        main = rows[chunk_of["q"]]

        def route(slot):
            def hook(value, hook):
                value = value.clone()
                value[main, :, own_head] = value[rows[chunk_of[slot]], :, own_head]
                return value
            return hook

        def take(value, hook):
            out["value"] = value[main, :, own_head].clone()

        hooks += [(f"blocks.{layer}.hook_{slot}_input", route(slot)) for slot in ("k", "v")
                  if chunk_of[slot] != chunk_of["q"]]
        hooks.append((own, take))
    elif own:
        def take(value, hook):
            out["value"] = value.clone()

        hooks.append((own, take))
    logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=_stop(own_place, bridge.cfg.n_layers))
    return out["value"] if own else logits


def hand_outputs(bridge, inputs: torch.Tensor, bound, plan: Plan, batch_size: int = 256) -> torch.Tensor:
    """Scrubbed logits of every reference of ``plan``, computed bottom-up over the tree paths with hooks."""
    for name in bound.order:
        if bound.is_positional(name) and not bound.is_leaf(name):
            raise NotImplementedError(f"the hand loop takes per-position classes at leaves only; {name!r} has parents")
    outputs = []
    with torch.no_grad():
        for start in range(0, len(plan.refs), batch_size):
            chunk = plan.chunk(start, start + batch_size)
            values: dict = {}
            for path in chunk.paths:  # deepest first: every parent's value is ready before its child's pass
                node, instance = path[-1], chunk.instances[path]
                if bound.is_leaf(node):
                    values[path] = _leaf(bridge, inputs, bound.sites[node], instance.examples)
                else:
                    values[path] = _node(bridge, inputs, bound, path, instance, values)
            outputs.append(values[(OUTPUT,)])
    return torch.cat(outputs)


def passes(bound, plan: Plan) -> dict[str, int]:
    """Model calls per reference batch of ``hand_outputs``: leaves' clean passes, clean passes on the draws,
    patched passes (each stopped after its node's layer, so most run part of the model)."""
    leaves = sum(bound.is_leaf(path[-1]) for path in plan.instances)
    fed = sum(bool(bound.edges(path[-1])) for path in plan.instances if not bound.is_leaf(path[-1]))
    return {"leaf": leaves, "held": fed, "patched": len(plan.instances) - leaves}

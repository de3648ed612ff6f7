"""Nodes the model has no site for: pieces of a site's output, and the residual stream at a boundary.

Claims are often about less than a site (a direction of a head's output, a dictionary latent, one position) or
more than one (everything upstream of a layer, read as one residual stream). Each becomes a site of its own here,
on a wrapper adapter, so the plan, the engine, the oracle and calibration treat it like any other site:

    adapter = split_sites(task.adapter,
                          Subspace("a0.0", directions, name="phi"),     # sites a0.0[phi] and a0.0[rest]
                          Dictionary.load("sae.safetensors", "a1.0", groups={"count": [3, 17]}),
                          ResidualStream(before="a1.1"))                 # site resid@a1.1

A split site's pieces sum back to its output (the remainder ``[rest]`` is what the named pieces leave), and every
site that read the site reads the pieces instead; a ``ResidualStream`` is an identity site whose input is the sum
of the sites feeding ``before``, and the sites that read that whole sum read it instead. Calibration checks both
on data (``SplitSites.calibrate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import HypothesisError, ModelError
from .sites import Dataset, ModelAdapter, Site

REST = "rest"


# -- how one site splits ------------------------------------------------------------------------------------------
class Pieces:
    """Named pieces of one site's output; the remainder (``site[rest]``) is the output minus their sum."""

    site: str

    def parts(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def names(self) -> list[str]:
        raise NotImplementedError

    def piece(self, name: str) -> str:
        return f"{self.site}[{name}]"

    @property
    def pieces(self) -> list[str]:
        return [self.piece(n) for n in self.names] + [self.piece(REST)]

    def split(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every piece's value, the remainder included (so they sum back to ``value``)."""
        parts = self.parts(value)
        rest = value
        for name in self.names:
            if parts[name].shape != value.shape:
                raise ModelError(f"piece {self.piece(name)!r} has shape {tuple(parts[name].shape)}, but site "
                                 f"{self.site!r} gives {tuple(value.shape)}: a piece must have its site's shape.")
            rest = rest - parts[name]
        return {self.piece(n): parts[n] for n in self.names} | {self.piece(REST): rest}


class Subspace(Pieces):
    """The projection of a site's output onto the span of ``directions`` (``[k, d]``, along the last axis), named
    ``site[name]``; its orthogonal remainder is ``site[rest]``. ``fit`` finds directions by a named method."""

    def __init__(self, site: str, directions: torch.Tensor, name: str = "subspace"):
        directions = torch.as_tensor(directions, dtype=torch.float32)
        if directions.dim() == 1:
            directions = directions[None]
        if directions.dim() != 2 or directions.shape[0] == 0 or not torch.isfinite(directions).all():
            raise HypothesisError(f"Subspace({site!r}): directions must be a finite [k, d] tensor with k >= 1; got "
                                  f"shape {tuple(directions.shape)}.")
        basis, _ = torch.linalg.qr(directions.T.double())  # orthonormal columns spanning the directions
        rank = int(torch.linalg.matrix_rank(directions.double()))
        if rank < directions.shape[0]:
            raise HypothesisError(f"Subspace({site!r}, name={name!r}): the {directions.shape[0]} directions span only "
                                  f"{rank} dimensions; drop the dependent ones.")
        self.site, self.name, self.basis = site, name, basis.float()

    @property
    def names(self) -> list[str]:
        return [self.name]

    def parts(self, value):
        basis = self.basis.to(value.device, value.dtype)
        if value.shape[-1] != basis.shape[0]:
            raise ModelError(f"Subspace({self.site!r}): directions have {basis.shape[0]} components, the site's "
                             f"output has {value.shape[-1]} on its last axis.")
        return {self.name: (value @ basis) @ basis.T}

    @classmethod
    def fit(cls, adapter: ModelAdapter, data: Dataset, site: str, method: str = "pca", k: int = 1,
            name: str | None = None, target: "str | torch.Tensor | None" = None,
            position: int | None = None) -> "Subspace":
        """Directions fitted on the site's clean outputs over ``data``: ``"pca"`` (the top ``k`` principal
        directions) or ``"regression"`` (the least-squares direction that predicts ``target``: a dataset column,
        or a tensor with a value per example or per position). ``position`` fits on that position's output only.

        Both fit within the span the outputs vary in: directions whose singular value is below the outputs' own
        precision (their dtype's epsilon times the largest) are rounding, not variation. A head writes into d_head
        of d_model dimensions; a least-squares fit over all of them puts almost all of its weight on the rounding
        (it is then neither meaningful nor reproducible: rounding-level differences in the solver scale up by the
        condition number)."""
        if method not in ("pca", "regression"):
            raise HypothesisError(f"Subspace.fit: unknown method {method!r}; choose 'pca' or 'regression'.")
        if method == "regression" and not isinstance(target, torch.Tensor) and target not in data.columns:
            raise HypothesisError(f"Subspace.fit(method='regression') needs target=<a dataset column or a "
                                  f"tensor>; got {target!r}; columns: {sorted(data.columns)}.")
        values = adapter.clean(data.inputs, upto=site)[site].detach()
        precision = torch.finfo(values.dtype).eps
        values = values.double()
        if position is not None:
            values = values[:, position]
        flat = values.reshape(-1, values.shape[-1])
        u, s, vh = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)
        span = int((s > s[0] * precision).sum())  # s[0] == 0: the outputs do not vary, span 0
        wanted = k if method == "pca" else 1
        if span < wanted:
            raise HypothesisError(f"Subspace.fit({site!r}, {method!r}): the site's outputs vary along {span} "
                                  f"direction(s) over this data (beyond rounding); {wanted} needed"
                                  + ("; ask for fewer (k)." if method == "pca" else "."))
        if method == "pca":
            directions = vh[:k]
        else:
            # least squares restricted to the span (the minimum-norm solution): an explicit SVD, not
            # torch.linalg.lstsq, whose default CPU driver (gelsy) pivots by an uninitialised array (pytorch#71222)
            y = (target if isinstance(target, torch.Tensor) else data.columns[target]).double()
            if position is not None and y.dim() == 2:
                y = y[:, position]
            y = y.reshape(-1) if y.numel() == len(flat) else y.repeat_interleave(len(flat) // len(y))
            u, s, vh = u[:, :span], s[:span], vh[:span]
            directions = ((u.T @ (y - y.mean())) / s @ vh)[None]
            if not directions.abs().max() > 0:
                raise HypothesisError(f"Subspace.fit({site!r}, 'regression'): the target does not vary with the "
                                      "site's outputs over this data (its least-squares direction is zero).")
        return cls(site, directions.float(), name or f"{method}{k if method == 'pca' else ''}")


class Positions(Pieces):
    """The site's output at ``positions`` (zero elsewhere), named ``site[name]``; the other positions are
    ``site[rest]``. With a ``ResidualStream`` it states a claim about the residual stream at chosen positions."""

    def __init__(self, site: str, positions, name: str | None = None):
        self.site, self.positions = site, sorted({int(p) for p in positions})
        if not self.positions:
            raise HypothesisError(f"Positions({site!r}): give at least one position.")
        self.name = name or "pos " + ",".join(map(str, self.positions))

    @property
    def names(self) -> list[str]:
        return [self.name]

    def parts(self, value):
        if value.dim() < 3 or max(self.positions) >= value.shape[1]:
            raise ModelError(f"Positions({self.site!r}, {self.positions}): the site's output has shape "
                             f"{tuple(value.shape)}, with no position axis holding those positions.")
        mask = torch.zeros(value.shape[1], dtype=value.dtype, device=value.device)
        mask[self.positions] = 1
        return {self.name: value * mask.view(1, -1, *([1] * (value.dim() - 2)))}


@dataclass
class Dictionary(Pieces):
    """A sparse autoencoder on a site's output: latents ``a = relu((x - b_dec) @ W_enc + b_enc)``, reconstruction
    ``a @ W_dec + b_dec``. Each group of latents is a piece (``site[group]``, their decoded contribution), the
    reconstruction error another (``site[error]``); ``site[rest]`` holds the other latents and the decoder bias."""

    site: str
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    groups: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self):
        d, m = self.W_enc.shape
        if self.W_dec.shape != (m, d) or self.b_enc.shape != (m,) or self.b_dec.shape != (d,):
            raise HypothesisError(f"Dictionary({self.site!r}): W_enc [d, m], b_enc [m], W_dec [m, d], b_dec [d] "
                                  f"expected; got {tuple(self.W_enc.shape)}, {tuple(self.b_enc.shape)}, "
                                  f"{tuple(self.W_dec.shape)}, {tuple(self.b_dec.shape)}.")
        seen: dict[int, str] = {}
        for group, latents in self.groups.items():
            if group in ("error", REST):
                raise HypothesisError(f"Dictionary({self.site!r}): {group!r} names a piece of its own; rename the group.")
            for k in latents:
                if not 0 <= k < m:
                    raise HypothesisError(f"Dictionary({self.site!r}): group {group!r} names latent {k}, but there "
                                          f"are {m} latents (0..{m - 1}).")
                if k in seen:
                    raise HypothesisError(f"Dictionary({self.site!r}): latent {k} is in groups {seen[k]!r} and "
                                          f"{group!r}; a latent belongs to one piece.")
                seen[k] = group

    @classmethod
    def load(cls, path, site: str, groups: dict[str, list[int]] | None = None) -> "Dictionary":
        """From a safetensors file holding ``W_enc``, ``b_enc``, ``W_dec`` and ``b_dec``."""
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in tensors]
        if missing:
            raise HypothesisError(f"{path}: no tensor {missing} in this dictionary file; it needs W_enc, b_enc, "
                                  f"W_dec and b_dec (found {sorted(tensors)}).")
        return cls(site, *(tensors[k].float() for k in ("W_enc", "b_enc", "W_dec", "b_dec")), groups=dict(groups or {}))

    def latents(self, value: torch.Tensor) -> torch.Tensor:
        w = self.W_enc.to(value.device, value.dtype)
        return torch.relu((value - self.b_dec.to(value)) @ w + self.b_enc.to(value))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents @ self.W_dec.to(latents) + self.b_dec.to(latents)

    @property
    def names(self) -> list[str]:
        return [*self.groups, "error"]

    def parts(self, value):
        a = self.latents(value)
        w = self.W_dec.to(a)
        out = {group: a[..., latents] @ w[latents] for group, latents in self.groups.items()}
        out["error"] = value - self.decode(a)
        return out


@dataclass(frozen=True)
class ResidualStream:
    """The residual stream that feeds site ``before``: one node for the sum of every site feeding it.

    ``readers``: the sites that read the stream instead of those sites: ``before`` alone by default (other sites
    keep their own inputs, so claims about them are unchanged), or ``"all"``: every site reading that whole sum
    (the stream at a layer boundary, as every later site sees it)."""

    before: str
    readers: "tuple[str, ...] | str" = ()

    @property
    def name(self) -> str:
        return f"resid@{self.before}"


# -- the wrapper ---------------------------------------------------------------------------------------------------
def split_sites(adapter: ModelAdapter, *splits: "Pieces | ResidualStream") -> "SplitSites":
    """``adapter`` with the extra sites of each split, applied in order (a later split may split an earlier piece)."""
    if not splits:
        raise HypothesisError("split_sites needs at least one Subspace, Positions, Dictionary or ResidualStream.")
    for split in splits:
        adapter = SplitSites(adapter, split)
    return adapter


class SplitSites(ModelAdapter):
    """A model adapter with one split applied: the base adapter runs the model, this one renames what it reads."""

    def __init__(self, base: ModelAdapter, split: "Pieces | ResidualStream"):
        super().__init__()
        self.base, self.split, self.output = base, split, base.output
        self.model = getattr(base, "model", None)
        target = split.before if isinstance(split, ResidualStream) else split.site
        if target not in base.sites:
            base.site(target)  # raises, naming the close matches
        if target == base.output and not isinstance(split, ResidualStream):
            raise HypothesisError(f"{type(split).__name__}({target!r}): the output site cannot be split; split a "
                                  f"site feeding it, or its residual stream (ResidualStream(before={target!r})).")
        self.sites = self._resid_sites() if isinstance(split, ResidualStream) else self._piece_sites()

    # -- the site graph -------------------------------------------------------------------------------------------
    def _piece_sites(self) -> dict[str, Site]:
        split, sites = self.split, {}
        pieces = tuple(split.pieces)
        for site in self.base.sites.values():
            if site.name == split.site:
                sites |= {p: Site(p, site.slots, site.parents) for p in pieces}
            else:
                parents = tuple(q for p in site.parents for q in (pieces if p == split.site else (p,)))
                sites[site.name] = Site(site.name, site.slots, parents)
        return sites

    def _resid_sites(self) -> dict[str, Site]:
        name, feeding = self.split.name, self.base.sites[self.split.before].parents
        if not feeding:
            raise HypothesisError(f"ResidualStream(before={self.split.before!r}): that site reads no other site.")
        readers = self.split.readers or (self.split.before,)
        if readers != "all":
            for reader in readers:
                self.base.site(reader)
                if not set(feeding) <= set(self.base.sites[reader].parents):
                    raise HypothesisError(f"ResidualStream(before={self.split.before!r}): reader {reader!r} does not "
                                          "read every site that stream sums; it cannot read the stream instead.")
        sites, placed = {}, False
        for site in self.base.sites.values():
            reads_all = bool(site.slots) and set(feeding) <= set(site.parents) and (readers == "all"
                                                                                      or site.name in readers)
            if reads_all and not placed:
                sites[name] = Site(name, ("in",), feeding)
                placed = True
            parents = (name, *(p for p in site.parents if p not in feeding)) if reads_all else site.parents
            sites[site.name] = Site(site.name, site.slots, parents)
        return sites

    # -- values -------------------------------------------------------------------------------------------------------
    def _rename(self, outputs: dict, slots: dict) -> tuple[dict, dict]:
        split = self.split
        if isinstance(split, ResidualStream):
            total = sum(outputs[p] for p in self.base.sites[split.before].parents)
            outputs = {**outputs, split.name: total}
            if slots:
                slots = {**slots, (split.name, "in"): total}
            return outputs, slots
        outputs = dict(outputs)
        outputs |= split.split(outputs.pop(split.site))
        if slots:
            slots = dict(slots)
            for slot in self.base.sites[split.site].slots:
                value = slots.pop((split.site, slot))
                slots |= {(p, slot): value for p in split.pieces}
        return outputs, slots

    def _clean(self, inputs, slots, upto=None):
        return self._rename(*self.base._clean(inputs, slots, None))

    def _run(self, site, slot_inputs, inputs):
        return self._through(self.base._run, site, slot_inputs, inputs)

    def _through(self, run: Callable, site: str, slot_inputs, inputs) -> torch.Tensor:
        split = self.split
        if isinstance(split, ResidualStream):
            return slot_inputs["in"] if site == split.name else run(site, slot_inputs, inputs)
        if site in split.pieces:
            return split.split(run(split.site, slot_inputs, inputs))[site]
        return run(site, slot_inputs, inputs)

    def _shortcuts(self, site):
        if isinstance(self.split, ResidualStream):
            return [] if site == self.split.name else self.base._shortcuts(site)
        base_site = self.split.site if site in self.split.pieces else site
        return [lambda s, slots, inputs, option=option: self._through(lambda _, sl, x: option(base_site, sl, x), s,
                                                                       slots, inputs)
                for option in self.base._shortcuts(base_site)]

    def _positions(self, outputs):
        return self.base._positions(outputs)

    # -- many sites per call (calibration's batched checks), where the base adapter has them -----------------------
    def _can_run_all(self) -> bool:
        return self.base._can_run_all()

    def _run_all(self, slot_inputs, inputs, names):
        return self._many(self.base._run_all, slot_inputs, inputs, names)

    def _shortcut_groups(self):
        """The base's groups, a piece standing for its site (option k of a piece is option k of its site)."""
        split, out = self.split, []
        for call, members in self.base._shortcut_groups():
            mine = {}
            for name, k in members.items():
                for site in (split.pieces if isinstance(split, Pieces) and name == split.site else (name,)):
                    mine[site] = k
            out.append((lambda slot_inputs, inputs, names, call=call: self._many(call, slot_inputs, inputs, names),
                        mine))
        return out

    def _many(self, call: Callable, slot_inputs, inputs, names) -> dict[str, torch.Tensor]:
        """``call`` (the base's: many base sites, each from its own slots, in one model call) for this adapter's
        sites: a residual stream is its slot; the pieces of the split site are that site's output split, one
        call per distinct value of its slots among them (the first call also computes every other site)."""
        split = self.split
        if isinstance(split, ResidualStream):
            base_names = [name for name in names if name != split.name]
            out = dict(call(slot_inputs, inputs, base_names)) if base_names else {}
            if split.name in names:
                out[split.name] = slot_inputs[(split.name, "in")]
            return {name: out[name] for name in names}
        slots = self.base.sites[split.site].slots
        others = [name for name in names if name not in split.pieces]
        rounds: list[tuple[list, list[str]]] = []  # (the split site's slot values, the pieces given them)
        for piece in (name for name in names if name in split.pieces):
            values = [slot_inputs[(piece, slot)] for slot in slots]
            same = next((r for r in rounds if all(torch.equal(a, b) for a, b in zip(r[0], values))), None)
            if same is None:
                rounds.append((values, [piece]))
            else:
                same[1].append(piece)
        out: dict[str, torch.Tensor] = {}
        for i, (values, pieces) in enumerate(rounds or [(None, [])]):
            given = _Given(slot_inputs, {} if values is None else dict(zip(((split.site, s) for s in slots), values)))
            base_names = (others if i == 0 else []) + ([] if values is None else [split.site])
            if not base_names:
                continue
            got = call(given, inputs, base_names)
            out.update({name: got[name] for name in others} if i == 0 else {})
            if values is not None:
                parts = split.split(got[split.site])
                out.update({piece: parts[piece] for piece in pieces})
        return {name: out[name] for name in names}

    def _wiring_hint(self, site, slot):
        split = self.split
        if isinstance(split, ResidualStream):
            return self.base._wiring_hint(split.before if site == split.name else site, slot)
        return self.base._wiring_hint(split.site if site in split.pieces else site, slot)

    def restore(self) -> None:
        self.base.restore()

    def _verify_early_stops(self, inputs, full, trace, rtol):
        """None: this adapter's clean pass always runs the whole model (the base's stops are in base names)."""
        return frozenset()

    def _calibration_pass(self, inputs):
        """The clean pass, checking on these rows that the pieces sum back to the site (or the stream to its sites)."""
        raw, raw_slots = self.base._clean(inputs, True, None)
        outputs, slots = self._rename(raw, raw_slots)
        split = self.split
        if isinstance(split, ResidualStream):
            parts, whole = [outputs[split.name]], sum(raw[p] for p in self.base.sites[split.before].parents)
            what = f"{split.name} and the sites feeding {split.before!r}"
        else:
            parts, whole, what = [outputs[p] for p in split.pieces], raw[split.site], f"the pieces of {split.site!r}"
        error = (sum(parts) - whole).abs().max().item()
        scale = whole.abs().max().item() + 1e-6
        if not error <= 1e-4 * scale + 1e-5:
            raise ModelError(f"{what} do not sum back to its value on the calibration data (off by {error:.3g} at "
                             f"scale {scale:.3g}); check the split's tensors (dtype, shape, device).")
        return outputs, slots, None



class _Given(Mapping):
    """Slot values keyed for the base adapter: the split site's from ``overrides``, every other site's as given."""

    def __init__(self, given: Mapping, overrides: dict):
        self.given, self.overrides = given, overrides

    def __getitem__(self, key):
        return self.overrides[key] if key in self.overrides else self.given[key]

    def __iter__(self):
        return iter([*self.overrides, *(key for key in self.given if key not in self.overrides)])

    def __len__(self) -> int:
        return len(list(iter(self)))

"""Nodes the model has no site for: pieces of a site's output, and the residual stream at a boundary.

Claims are often about less than a site (a direction of a head's output, a dictionary latent, one position) or
more than one (everything upstream of a layer, read as one residual stream). Each becomes a site of its own here,
on a wrapper adapter, so the plan, the engine, the oracle and calibration treat it like any other site:

    adapter = split_sites(task.adapter,
                          Subspace("a0.0", directions, name="phi"),     # sites a0.0[phi] and a0.0[rest]
                          Dictionary.load("sae.safetensors", "a1.0", groups={"count": [3, 17]}),
                          Transcoder.load("tc.safetensors", "m1", groups={"g": [0, 4]}),  # from m1's input
                          ResidualStream(before="a1.1"))                 # site resid@a1.1

A split site's pieces sum back to its output (the remainder ``[rest]`` is what the named pieces leave), and every
site that read the site reads the pieces instead. A piece reads the site's input slots: its value is a function of
the site's output on them (a subspace, an autoencoder's latents) and, for a transcoder, of the input itself. A
``ResidualStream`` is an identity site whose input is the sum of the sites feeding ``before``, and the sites that
read that whole sum read it instead. Calibration checks both on data (``SplitSites.calibrate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .errors import HypothesisError, ModelError
from .sites import Dataset, ModelAdapter, Site

REST = "rest"


# -- how one site splits ------------------------------------------------------------------------------------------
class Pieces:
    """Named pieces of one site's output; the remainder (``site[rest]``) is the output minus their sum.

    A piece is a function of the site's output and, where ``reads`` names one of the site's input slots, of that
    slot's value too (a transcoder's latents are computed from the site's input). Each piece is a site reading the
    site's slots, so pieces given the same slot values sum back to the site's output on them."""

    site: str
    reads: str | None = None  # the input slot the pieces are computed from, besides the output (None: the output only)

    def parts(self, value: torch.Tensor, given: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The named pieces of ``value`` (the site's output); ``given``: the site's slot values on the same rows
        (read only where ``reads`` is set)."""
        raise NotImplementedError

    def bound_to(self, site: Site) -> "Pieces":
        """These pieces for the site as the adapter declares it (checked; ``reads`` resolved)."""
        return self

    @property
    def names(self) -> list[str]:
        raise NotImplementedError

    def piece(self, name: str) -> str:
        return f"{self.site}[{name}]"

    @property
    def pieces(self) -> list[str]:
        return [self.piece(n) for n in self.names] + [self.piece(REST)]

    def split(self, value: torch.Tensor, given: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Every piece's value, the remainder included (so they sum back to ``value``)."""
        parts = self.parts(value, given or {})
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

    def parts(self, value, given):
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
        values = adapter.clean(data.inputs.to(adapter.device), upto=site)[site].detach().cpu()  # fitted on the CPU
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
            y = (target if isinstance(target, torch.Tensor) else data.columns[target]).double().cpu()
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

    def parts(self, value, given):
        if value.dim() < 3 or max(self.positions) >= value.shape[1]:
            raise ModelError(f"Positions({self.site!r}, {self.positions}): the site's output has shape "
                             f"{tuple(value.shape)}, with no position axis holding those positions.")
        mask = torch.zeros(value.shape[1], dtype=value.dtype, device=value.device)
        mask[self.positions] = 1
        return {self.name: value * mask.view(1, -1, *([1] * (value.dim() - 2)))}


@dataclass
class Dictionary(Pieces):
    """A sparse autoencoder on a site's output: latents ``a = act((x - b_dec) @ W_enc + b_enc)``, reconstruction
    ``a @ W_dec + b_dec``. Each group of latents is a piece (``site[group]``, their decoded contribution), the
    reconstruction error another (``site[error]``); ``site[rest]`` holds the other latents and the decoder bias.

    ``act`` is ReLU, or JumpReLU where ``threshold`` ([n]) is given: a latent is kept where its pre-activation
    exceeds its threshold. ``Transcoder`` is the same dictionary read from the site's input."""

    site: str
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    groups: dict[str, list[int]] = field(default_factory=dict)
    threshold: torch.Tensor | None = None

    KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")  # the tensors a file must hold; ``threshold`` may be there too

    def __post_init__(self):
        if self.W_enc.dim() != 2 or self.W_dec.dim() != 2:
            raise HypothesisError(f"{self._what()}: {self._layout()} expected; got W_enc {tuple(self.W_enc.shape)}, "
                                  f"W_dec {tuple(self.W_dec.shape)}.")
        (d_in, n), (m, d_out) = self.W_enc.shape, self.W_dec.shape
        shapes = m == n and self.b_enc.shape == (n,) and self.b_dec.shape == (d_out,) and (
            self.threshold is None or self.threshold.shape == (n,))
        if not shapes or not self._dims_fit(d_in, d_out):
            raise HypothesisError(f"{self._what()}: {self._layout()} expected; got W_enc {tuple(self.W_enc.shape)}, "
                                  f"b_enc {tuple(self.b_enc.shape)}, W_dec {tuple(self.W_dec.shape)}, b_dec "
                                  f"{tuple(self.b_dec.shape)}"
                                  + ("" if self.threshold is None else f", threshold {tuple(self.threshold.shape)}")
                                  + ".")
        seen: dict[int, str] = {}
        for group, latents in self.groups.items():
            if group in ("error", REST):
                raise HypothesisError(f"{self._what()}: {group!r} names a piece of its own; rename the group.")
            for k in latents:
                if not 0 <= k < n:
                    raise HypothesisError(f"{self._what()}: group {group!r} names latent {k}, but there "
                                          f"are {n} latents (0..{n - 1}).")
                if k in seen:
                    raise HypothesisError(f"{self._what()}: latent {k} is in groups {seen[k]!r} and "
                                          f"{group!r}; a latent belongs to one piece.")
                seen[k] = group

    def _what(self) -> str:
        return f"{type(self).__name__}({self.site!r})"

    @staticmethod
    def _dims_fit(d_in: int, d_out: int) -> bool:
        return d_in == d_out  # an autoencoder reads what it writes

    @staticmethod
    def _layout() -> str:
        return "W_enc [d, n], b_enc [n], W_dec [n, d], b_dec [d] (threshold [n])"

    @classmethod
    def load(cls, path, site: str, groups: dict[str, list[int]] | None = None, **options) -> "Dictionary":
        """From a safetensors file holding ``W_enc``, ``b_enc``, ``W_dec`` and ``b_dec`` (and optionally
        ``threshold``, for JumpReLU); any other tensor is refused, naming it, rather than left out unseen."""
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        missing = [k for k in cls.KEYS if k not in tensors]
        if missing:
            raise HypothesisError(f"{path}: no tensor {missing} in this dictionary file; it needs W_enc, b_enc, "
                                  f"W_dec and b_dec (found {sorted(tensors)}).")
        unknown = sorted(set(tensors) - {*cls.KEYS, "threshold"})
        if unknown:
            raise HypothesisError(f"{path}: tensors {unknown} are not part of a {cls.__name__} here ({cls._layout()}; "
                                  "a skip connection or an input bias has no piece of its own); remove them from the "
                                  "file, or fold them into the weights.")
        threshold = tensors["threshold"].float() if "threshold" in tensors else None
        return cls(site, *(tensors[k].float() for k in cls.KEYS), groups=dict(groups or {}), threshold=threshold,
                   **options)

    def encoder_input(self, value: torch.Tensor, given: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """What the encoder reads: the site's output, less the decoder bias."""
        return value - self.b_dec.to(value)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """The latents of an encoder input ``x`` (``encoder_input``)."""
        if x.shape[-1] != self.W_enc.shape[0]:
            raise ModelError(f"{self._what()}: the encoder reads {self.W_enc.shape[0]} components (W_enc "
                             f"{tuple(self.W_enc.shape)}), but its input here has {x.shape[-1]} on its last axis; "
                             "check that the weights were trained on this site.")
        pre = x @ self.W_enc.to(x) + self.b_enc.to(x)
        return torch.relu(pre) if self.threshold is None else pre * (pre > self.threshold.to(x))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents @ self.W_dec.to(latents) + self.b_dec.to(latents)

    @property
    def names(self) -> list[str]:
        return [*self.groups, "error"]

    def parts(self, value, given):
        if value.shape[-1] != self.W_dec.shape[1]:
            raise ModelError(f"{self._what()}: the decoder writes {self.W_dec.shape[1]} components (W_dec "
                             f"{tuple(self.W_dec.shape)}), but site {self.site!r} gives {value.shape[-1]}; check that "
                             "the weights were trained on this site.")
        a = self.latents(self.encoder_input(value, given))
        w = self.W_dec.to(a)
        out = {group: a[..., latents] @ w[latents] for group, latents in self.groups.items()}
        out["error"] = value - self.decode(a)
        return out


@dataclass
class Transcoder(Dictionary):
    """A transcoder: a dictionary that reads the site's input and predicts its output. Latents
    ``a = act(x @ W_enc + b_enc)`` of the input slot's value ``x`` (``slot``: the site's only slot by default, e.g. an
    MLP's ``in``); latent i contributes ``a_i W_dec[i]`` to the output. As for ``Dictionary``, each group of latents
    is a piece (``site[group]``), ``site[error]`` is the site's output minus the reconstruction ``a @ W_dec + b_dec``,
    and ``site[rest]`` the other latents and ``b_dec``. Each piece reads the site's slots, so a claim can say which
    upstream nodes a group of latents reads; the pieces on the same inputs sum back to the site's output."""

    slot: str | None = None

    @staticmethod
    def _dims_fit(d_in: int, d_out: int) -> bool:
        return True

    @staticmethod
    def _layout() -> str:
        return "W_enc [d_in, n], b_enc [n], W_dec [n, d_out], b_dec [d_out] (threshold [n])"

    def bound_to(self, site: Site) -> "Transcoder":
        if not site.slots:
            raise HypothesisError(f"{self._what()}: site {site.name!r} reads the raw input; it has no input slot for a "
                                  "transcoder to read. Split a site with an input (an MLP), or use a Dictionary (an "
                                  f"autoencoder on {site.name!r}'s output).")
        if self.slot is None and len(site.slots) > 1:
            raise HypothesisError(f"{self._what()}: site {site.name!r} has input slots {list(site.slots)}; say which "
                                  f"one the transcoder reads: Transcoder(..., slot={site.slots[-1]!r}).")
        if self.slot is not None and self.slot not in site.slots:
            raise HypothesisError(f"{self._what()}: site {site.name!r} has no input slot {self.slot!r}; its slots "
                                  f"are {list(site.slots)}.")
        return replace(self, slot=self.slot or site.slots[0])

    @property
    def reads(self) -> str | None:
        return self.slot

    def encoder_input(self, value, given):
        if self.slot not in given:
            raise ModelError(f"{self._what()}: the value of its input slot {self.slot!r} was not given; split the "
                             "site with split_sites, which passes it.")
        return given[self.slot].to(value.dtype)


@dataclass(frozen=True)
class ResidualStream:
    """The residual stream that feeds site ``before``: one node for the sum of every site feeding it.

    It is transparent (``Site.transparent``): where no node claims it, an edge ``via="direct"`` into a reader passes
    through it, so a claim that does not name the stream means what it meant before the split.

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
        raise HypothesisError("split_sites needs at least one Subspace, Positions, Dictionary, Transcoder or ResidualStream.")
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
        if isinstance(split, Pieces):
            self.split = split = split.bound_to(base.sites[target])
        self.sites = self._resid_sites() if isinstance(split, ResidualStream) else self._piece_sites()

    # -- the site graph -------------------------------------------------------------------------------------------
    def _piece_sites(self) -> dict[str, Site]:
        split, sites = self.split, {}
        pieces = tuple(split.pieces)
        for site in self.base.sites.values():
            if site.name == split.site:
                sites |= {p: replace(site, name=p) for p in pieces}
            else:
                parents = tuple(q for p in site.parents for q in (pieces if p == split.site else (p,)))
                sites[site.name] = replace(site, parents=parents)
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
                sites[name] = Site(name, ("in",), feeding, transparent=True)
                placed = True
            parents = (name, *(p for p in site.parents if p not in feeding)) if reads_all else site.parents
            sites[site.name] = replace(site, parents=parents)
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
        given = {slot: slots[(split.site, slot)] for slot in self.base.sites[split.site].slots} if slots else {}
        outputs |= split.split(outputs.pop(split.site), given)
        if slots:
            slots = dict(slots)
            for slot in self.base.sites[split.site].slots:
                value = slots.pop((split.site, slot))
                slots |= {(p, slot): value for p in split.pieces}
        return outputs, slots

    def _clean(self, inputs, slots, upto=None):
        reads = isinstance(self.split, Pieces) and self.split.reads is not None  # the pieces need the site's input
        outputs, renamed = self._rename(*self.base._clean(inputs, slots or reads, None))
        return outputs, renamed if slots else {}

    def _run(self, site, slot_inputs, inputs):
        return self._through(self.base._run, site, slot_inputs, inputs)

    def _through(self, run: Callable, site: str, slot_inputs, inputs) -> torch.Tensor:
        split = self.split
        if isinstance(split, ResidualStream):
            return slot_inputs["in"] if site == split.name else run(site, slot_inputs, inputs)
        if site in split.pieces:
            return split.split(run(split.site, slot_inputs, inputs), slot_inputs)[site]
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
                parts = split.split(got[split.site], dict(zip(slots, values)))
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
            names, whole = [split.name], sum(raw[p] for p in self.base.sites[split.before].parents)
            what = f"{split.name} and the sites feeding {split.before!r}"
        else:
            names, whole, what = split.pieces, raw[split.site], f"the pieces of {split.site!r}"
        for name in names:
            if not torch.isfinite(outputs[name]).all() and torch.isfinite(whole).all():
                raise ModelError(f"piece {name!r} is not finite on the calibration data, where the value it splits "
                                 "is; check the split's tensors (their scale, NaNs).")
        error = (sum(outputs[name] for name in names) - whole).abs().max().item()
        scale = whole.abs().max().item() + 1e-6
        if not error <= 1e-4 * scale + 1e-5:
            size = {name: outputs[name].abs().max().item() for name in names}
            worst = max(names, key=size.get)
            raise ModelError(f"{what} do not sum back to its value on the calibration data (off by {error:.3g} at "
                             f"scale {scale:.3g}); the largest piece is {worst!r} (up to {size[worst]:.3g}): a piece "
                             "far larger than its site loses the site's value to rounding. Check the split's tensors "
                             "(dtype, shape, device, scale).")
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

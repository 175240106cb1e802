"""Statistics of the partition: how dense it is around data, and how it bends.

* :func:`local_complexity` -- Humayun, Balestriero & Baraniuk, "Deep Networks
  Always Grok and Here is Why" (ICML 2024), sec. 3: the number of neurons whose
  boundary crosses a cross-polytope of radius ``r`` around ``x``, counted from the
  codes at the polytope's vertices propagated through the network.
* :func:`boundary_distance` -- per layer, the distance from ``x`` to the nearest
  boundary of that layer's units, ``min_k |z_k| / ||grad_x z_k||``, with the
  pre-activations affine on x's region (Balestriero & Baraniuk, ICML 2018, sec. 5).
* :func:`region_density` -- regions crossed per unit length on the segment between
  two inputs, from the exact :func:`maxaffine.partition_segment`.
* :func:`region_sharing` -- how many distinct regions a dataset occupies, per depth.
* :func:`boundary_curvature` -- the decision boundary on a 2-D slice is a polyline,
  straight inside a region; the turning angle where it crosses from one region
  into the next ("Mad Max", Proc. IEEE 2021, sec. 6) is its curvature.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from . import _arguments as arg
from ._arguments import check_tensor
from ._autodiff import basis, pullback, pushforward
from .errors import MaxAffineError, MaxAffineTypeError
from .graph import Layer, SplineGraph, check_input
from .partition import Partition, partition_segment
from .partition.plane import _graph_in
from .vq import codes_of, evaluate_codes, graph_for

DEFAULT_DIRECTIONS = 25
"""``local_complexity``'s default number of directions (capped at the input dimension)."""
ORTHONORMAL_TOL = 1e-5
"""``directions=`` must satisfy ``max |D D^T - I| <= ORTHONORMAL_TOL``."""

_POINTS = 4096  # forward-pass batch bound (points) for chunked evaluations


def _describe(t: Tensor) -> dict[str, Any]:
    """Mean, median, min, max of the finite entries of ``t`` (None when there are
    none), and how many entries are not finite."""
    v = t.detach().double().flatten()
    finite = v[torch.isfinite(v)]
    if finite.numel() == 0:
        stats: dict[str, Any] = dict.fromkeys(("mean", "median", "min", "max"))
    else:
        stats = {"mean": float(finite.mean()), "median": float(finite.median()),
                 "min": float(finite.min()), "max": float(finite.max())}
    return {**stats, "nonfinite": int(v.numel() - finite.numel())}


@dataclass(frozen=True)
class LayerStat:
    """One number per input and layer: ``values`` (N, L) for the layers ``names``
    (index it by a layer's name or index: ``stat["2"]``, ``stat[-1]`` -> (N,))."""

    names: tuple[str, ...]
    values: Tensor

    def __getitem__(self, layer: str | int) -> Tensor:
        return self.values[:, self._index(layer)]

    def _index(self, layer: str | int) -> int:
        return arg.layer_index(layer, self.names)

    def as_dict(self) -> dict[str, Tensor]:
        return {n: self.values[:, i] for i, n in enumerate(self.names)}

    def summary(self) -> dict[str, Any]:
        """Samples, and per layer the mean, median, min and max over the inputs (of
        the finite values; ``nonfinite`` counts the others)."""
        out: dict[str, Any] = {"samples": int(self.values.shape[0])}
        for f in fields(self):  # the settings of a subclass (radius, ...)
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f.name] = value
        out["layers"] = {n: _describe(self.values[:, i]) for i, n in enumerate(self.names)}
        total = getattr(self, "total", None)
        if isinstance(total, Tensor):
            out["total"] = _describe(total)
        return out

    def to_json(self) -> str:
        return json.dumps({"names": list(self.names), "values": self.values.tolist()})

    def plot(self, ax=None):
        """Per layer, the values' spread over the inputs (range, quartiles, median)."""
        from ._plotting import plot_layer_values

        return plot_layer_values(self.names, self.values, ax=ax)


@dataclass(frozen=True)
class LocalComplexity(LayerStat):
    """``values`` (N, L) int64: per layer, the units whose code is not constant over
    the cross-polytope of ``radius`` spanned by ``n_directions`` directions."""

    radius: float = 0.0
    n_directions: int = 0

    @property
    def total(self) -> Tensor:
        """(N,) all layers together."""
        return self.values.sum(1)

    def plot(self, ax=None, **kwargs):
        """Histogram of the total local complexity (``bins``: 30 by default; other
        keywords go to ``ax.hist``)."""
        import matplotlib.pyplot as plt

        bins = _bins(kwargs.pop("bins", 30))
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3))
        ax.hist(self.total.numpy(), bins=bins, **kwargs)
        ax.set_xlabel(f"units crossing the neighbourhood (radius {self.radius:g})")
        ax.set_ylabel("inputs")
        return ax


@dataclass(frozen=True)
class BoundaryDistance(LayerStat):
    """``values`` (N, L): distance from each input to the nearest boundary of each
    layer's units, linearised on the input's region (``inf`` if none); ``direction``
    (N, *input_shape): unit vector from ``x`` towards the nearest boundary overall."""

    direction: Tensor | None = None

    def plot(self, ax=None):
        """Per layer, the distances' spread over the inputs (range, quartiles, median;
        log scale)."""
        from ._plotting import plot_layer_values

        return plot_layer_values(self.names, self.values, ax=ax, log=True,
                                 xlabel="distance to the nearest boundary of the layer")

    @property
    def total(self) -> Tensor:
        """(N,) the distance to the boundary of the input's region (min over layers)."""
        return self.values.amin(1)


@dataclass(frozen=True)
class RegionDensity(LayerStat):
    """``values`` (N, L) int64: regions on each segment counting layers 1..l (depth
    l); ``lengths`` (N,) the segments' lengths in input space."""

    lengths: Tensor | None = None

    def plot(self, ax=None):
        """Per depth, the spread of the regions per unit length over the segments."""
        from ._plotting import plot_layer_values

        return plot_layer_values(self.names, self.density, ax=ax,
                                 xlabel="regions per unit length (layers 1..l)")

    @property
    def density(self) -> Tensor:
        """(N, L) regions per unit length."""
        return self.values / self.lengths.unsqueeze(1)

    @property
    def total(self) -> Tensor:
        """(N,) regions per unit length, all layers."""
        return self.density[:, -1]


@dataclass(frozen=True)
class RegionSharing:
    """Regions occupied by a dataset. Per layer ``names[l]``: ``regions`` the distinct
    regions of layers 1..l, ``layer_regions`` the distinct codes of layer l alone,
    ``shared`` the fraction of samples whose region (layers 1..l) holds another
    sample; ``region_ids`` (N,) numbers the full-depth regions."""

    names: tuple[str, ...]
    regions: Tensor
    layer_regions: Tensor
    shared: Tensor
    region_ids: Tensor
    num_samples: int

    def summary(self) -> dict[str, Any]:
        """Per layer: distinct regions (layers 1..l), distinct codes of the layer alone,
        and the fraction of samples sharing their region (None without samples)."""
        return {"samples": self.num_samples, "layers": {
            n: {"regions": int(self.regions[i]), "layer_regions": int(self.layer_regions[i]),
                "shared": float(self.shared[i]) if self.num_samples else None}
            for i, n in enumerate(self.names)}}

    def to_json(self) -> str:
        """The summary and each sample's full-depth region id."""
        return json.dumps({**self.summary(), "region_ids": self.region_ids.tolist()})

    def plot(self, ax=None):
        """Distinct regions per depth and per layer alone, as bars."""
        from ._plotting import plot_region_sharing

        return plot_region_sharing(self, ax=ax)


@dataclass(frozen=True)
class BoundaryCurvature:
    """Turning angles of a 2-D slice's decision boundary between neighbouring faces.

    ``angles`` (J,): radians in [0, pi] (0: the boundary goes on straight);
    ``joints`` (J, 2): where, in slice coordinates; ``faces`` (J, 2): the two faces;
    ``classes`` (J, 2): the class pair the boundary separates in the first face.
    """

    angles: Tensor
    joints: Tensor
    faces: Tensor
    classes: Tensor

    def summary(self) -> dict[str, float]:
        """Joints, and the mean, median and largest turning angle in degrees with the
        fraction of joints where the boundary goes on (nearly, < 1 degree) straight."""
        deg = torch.rad2deg(self.angles)
        if deg.numel() == 0:
            return {"joints": 0}
        return {"joints": int(deg.numel()), "mean_deg": float(deg.mean()),
                "median_deg": float(deg.median()), "max_deg": float(deg.max()),
                "straight_fraction": float((deg < 1.0).double().mean())}

    def to_json(self) -> str:
        """The summary and every joint: angle (radians), position, faces, classes."""
        return json.dumps({**self.summary(), "angles": self.angles.tolist(),
                           "joints": self.joints.tolist(), "faces": self.faces.tolist(),
                           "classes": self.classes.tolist()})

    def plot(self, ax=None, bins: int = 36):
        """Histogram of the turning angles in degrees."""
        import matplotlib.pyplot as plt

        bins = _bins(bins)
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3))
        ax.hist(torch.rad2deg(self.angles).numpy(), bins=bins, range=(0, 180))
        ax.set_xlabel("turning angle of the decision boundary (degrees)")
        ax.set_ylabel("joints")
        return ax


def _bins(bins: int) -> int:
    """A histogram's number of bins, validated (None: matplotlib's default 10)."""
    return 10 if bins is None else arg.integer(bins, "bins", minimum=1, maximum=100_000,
                                                meaning="histogram bins")


# ------------------------------------------------------------------- local complexity


def local_complexity(model: nn.Module | SplineGraph, x: Tensor, radius: float,
                     n_directions: int | None = None, *, directions: Tensor | None = None,
                     seed: int = 0) -> LocalComplexity:
    """Per layer, the units whose code changes over the cross-polytope around ``x``.

    Humayun et al. (ICML 2024): the neighbourhood of ``x`` is the cross-polytope with
    vertices ``x +- radius d_j`` for ``n_directions`` orthonormal directions ``d_j``,
    random (from ``seed``, shared by all inputs; default ``min(25, input_dim)``, 25
    as in ``maxaffine reproduce training-dynamics``), or given as ``directions``
    (P, *input_shape) or (P, input_dim): their rows must be orthonormal (within
    ``ORTHONORMAL_TOL``), so that the polytope is the one asked for; they are not
    changed here (orthonormalise with ``torch.linalg.qr(D.flatten(1).T).Q.T``).
    ``x`` and the vertices go through the network in one batched pass, and a unit
    counts when its code is not the same at all of them (for ReLU: its
    pre-activation changes sign). In the first layer this is exactly the number of
    units whose hyperplane meets the polytope; deeper, the polytope is represented
    by its propagated vertices. Returns (N, L) counts (N may be 0).
    """
    graph = graph_for(model, x)
    check_input(graph, x)
    radius = arg.number(radius, "radius", minimum=0.0, strict=True,
                        meaning="the cross-polytope's half-diagonal, in input units")
    seed = arg.integer(seed, "seed", minimum=0)
    d = graph.input_dim
    if n_directions is not None:
        n_directions = arg.integer(n_directions, "n_directions", minimum=1, maximum=d,
                                   meaning=f"random directions, at most the input dimension {d}")
    if directions is None:
        p = min(DEFAULT_DIRECTIONS, d) if n_directions is None else n_directions
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, p, generator=gen, dtype=torch.float64))
        dirs = q.T
    else:
        dirs = _check_directions(directions, graph, n_directions)
    p = dirs.shape[0]
    if x.shape[0] == 0:
        return LocalComplexity(graph.layer_names, torch.zeros((0, len(graph.layers)),
                                                             dtype=torch.int64), radius, p)
    steps = torch.cat([torch.zeros(1, d, dtype=torch.float64), dirs, -dirs]) * radius
    steps = steps.to(x.dtype).reshape(2 * p + 1, *graph.input_shape)
    per = 2 * p + 1
    chunk = max(1, _POINTS // per)
    counts = []
    with torch.no_grad():
        for s in range(0, x.shape[0], chunk):
            xs = x[s:s + chunk]
            pts = (xs.unsqueeze(1) + steps.unsqueeze(0)).reshape(-1, *graph.input_shape)
            if not math.isfinite(float(pts.sum())) and not bool(torch.isfinite(pts).all()):
                raise MaxAffineError(
                    f"the cross-polytope's vertices x +- radius d_j overflow {x.dtype} "
                    f"(radius={radius:g}, max |x| = {float(x.abs().max()):g}): use a "
                    "smaller radius, or x and the model in float64")
            found = graph.run(pts).codes
            row = []
            for layer in graph.layers:
                c = found[layer.name].reshape(xs.shape[0], per, -1)
                row.append((c != c[:, :1]).any(1).sum(1))
            counts.append(torch.stack(row, 1) if row else torch.zeros(xs.shape[0], 0,
                                                                      dtype=torch.int64))
    return LocalComplexity(graph.layer_names, torch.cat(counts), float(radius), p)


def _check_directions(directions: Tensor, graph: SplineGraph, n_directions: int | None
                      ) -> Tensor:
    """``directions`` as float64 (P, input_dim) rows, checked orthonormal."""
    if not isinstance(directions, Tensor):
        raise MaxAffineTypeError(f"directions must be a torch.Tensor (P, *input_shape), got "
                                 f"{type(directions).__name__}")
    check_tensor(directions, "directions")
    d, shape = graph.input_dim, graph.input_shape
    flat = tuple(directions.shape[1:]) in (shape, (d,))
    if directions.dim() < 2 or not flat or directions.shape[0] == 0:
        hint = ""
        if tuple(directions.shape) in (shape, (d,)):
            hint = ": for a single direction use directions.unsqueeze(0)"
        want = f"(P, {', '.join(map(str, shape))})" + (f" or (P, {d})" if len(shape) > 1
                                                        else "")
        raise MaxAffineError(f"directions must have shape {want} with P >= 1 (one direction "
                             f"per row), got {tuple(directions.shape)}{hint}")
    dirs = directions.detach().reshape(directions.shape[0], d).double()
    p = dirs.shape[0]
    if n_directions is not None and n_directions != p:
        raise MaxAffineError(f"n_directions={n_directions} but directions has {p} rows: pass "
                             "one of them only")
    error = float((dirs @ dirs.T - torch.eye(p, dtype=torch.float64)).abs().max())
    if p > d or error > ORTHONORMAL_TOL:
        why = (f"{p} directions in {d} dimensions cannot be orthonormal" if p > d else
               f"max |D D^T - I| is {error:.3g} > {ORTHONORMAL_TOL:g}")
        raise MaxAffineError(f"directions must be orthonormal rows (the cross-polytope x +- "
                             f"radius d_j), but {why}: orthonormalise them with "
                             "torch.linalg.qr(directions.flatten(1).T).Q.T (which keeps their "
                             "span), or pass n_directions for random ones")
    return dirs


# ------------------------------------------------------------------- boundary distance


def _layer_margins(layer: Layer, inputs: tuple[Tensor, ...], code: Tensor) -> Tensor:
    """(N, cols) non-negative margins of one layer's units on x's region: for the
    selected piece c of each unit, ``p_c - p_j`` against its other pieces
    (:meth:`maxaffine.ops.Nonlinearity.pieces`; ``inf`` for c itself and absent
    pieces). Each is affine on the region and its zero set is where piece j would
    take over (ReLU: ``|z|``; Hardtanh: ``z - lo`` and ``hi - z``; max-pool: the
    selected entry against the window's others); margins between pieces that are
    not neighbours are only farther."""
    n = code.shape[0]
    pieces, _ = layer.rule.pieces(*inputs)
    flat = pieces.reshape(n, -1, pieces.shape[-1])
    c = code.reshape(n, -1, 1).long()
    own = torch.arange(flat.shape[-1], device=flat.device) == c
    return torch.where(own | ~torch.isfinite(flat), math.inf,
                       flat.gather(2, c) - flat).flatten(1)


def boundary_distance(model: nn.Module | SplineGraph, x: Tensor, *,
                      directions_per_pass: int = 64) -> BoundaryDistance:
    """Per layer, the distance from ``x`` to the nearest boundary of that layer's units.

    On x's region every unit's pre-activation is affine, so the distance to where
    its code changes is ``|z_k - b| / ||grad_x z_k||`` (ReLU: ``|z_k| / ||grad z_k||``;
    Hardtanh: both bounds b; ``torch.maximum(a, b)``: ``|b - a| / ||grad (b - a)||``;
    max-pool: ``(z_c - z_j) / ||grad (z_c - z_j)||`` for the selected entry c and the
    window's other entries j); a layer's value is the minimum over its units
    (``inf`` if no unit depends on x). ``.total``, the minimum over layers, is the
    exact distance to the boundary of x's region; a single layer's value measures
    its boundaries as extended linearly from x's region. ``.direction`` is the unit
    vector from x towards the nearest boundary. Gradient norms are accumulated from
    forward-mode products, ``directions_per_pass`` input directions (basis vectors of
    input space) per pass, never storing a Jacobian. An empty batch gives empty
    results.
    """
    graph = graph_for(model, x)
    check_input(graph, x)
    per_pass = arg.integer(directions_per_pass, "directions_per_pass", minimum=1,
                           meaning="input directions per forward-mode pass")
    if not graph.layers:
        raise MaxAffineError("the model has no nonlinearity, so its one region has no "
                             "boundary: boundary_distance needs a ReLU, max-pool, ...")
    if x.shape[0] == 0:
        return BoundaryDistance(graph.layer_names, x.new_zeros((0, len(graph.layers))),
                                x.new_zeros((0, *graph.input_shape)))
    d = graph.input_dim
    last = graph.layers[-1].name
    with torch.no_grad():
        x_codes = graph.run(x).codes
    per_sample = max(1, 3 * sum(u.num_units * u.num_pieces for u in graph.layers))
    n_chunk = max(1, int(2e7 // (per_sample * per_pass)))
    values, directions = [], []
    for s in range(0, x.shape[0], n_chunk):
        xs = x[s:s + n_chunk].detach().clone()  # own storage: a view would make its whole base dual
        codes_s = {k: v[s:s + n_chunk] for k, v in x_codes.items()}

        def fn(v: Tensor, codes_s: dict = codes_s) -> tuple[Tensor, ...]:
            ev = graph.run(v, codes=codes_s, record=True, until=last)
            return tuple(_layer_margins(layer, ev.inputs[layer.name], codes_s[layer.name])
                         for layer in graph.layers)

        with torch.no_grad():
            margins = tuple(m.detach() for m in fn(xs))
        sq = [torch.zeros_like(m) for m in margins]
        for start in range(0, d, per_pass):
            _, tangents = pushforward(fn, xs, basis(d, start, min(d, start + per_pass), xs))
            for acc, m, t in zip(sq, margins, tangents, strict=True):
                acc += torch.where(torch.isfinite(m), t.detach(), 0.0).pow(2).sum(0)
        ratios = []
        for m, q in zip(margins, sq, strict=True):
            norm = q.sqrt()
            live = torch.isfinite(m) & (norm > 1e-12 * (1.0 + norm.amax(1, keepdim=True)))
            ratios.append(torch.where(live, m / norm.clamp(min=1e-300), math.inf))
        per_layer = torch.stack([r.amin(1) if r.shape[1] else torch.full(
            (xs.shape[0],), math.inf, dtype=x.dtype) for r in ratios], 1)
        values.append(per_layer)
        directions.append(_towards(fn, xs, ratios, per_layer))
    return BoundaryDistance(graph.layer_names, torch.cat(values), torch.cat(directions))


def _towards(fn, xs: Tensor, ratios: list[Tensor], per_layer: Tensor) -> Tensor:
    """Layer vectors (N, *in) along minus the gradient of each input's nearest margin."""
    layer = per_layer.argmin(1)
    v = xs.clone().requires_grad_(True)
    with torch.enable_grad():
        margins = fn(v)
        picked = v.new_zeros(())
        for i, (m, r) in enumerate(zip(margins, ratios, strict=True)):
            rows = torch.nonzero((layer == i) & torch.isfinite(per_layer[:, i])).flatten()
            if rows.numel():
                cols = r[rows].argmin(1)
                picked = picked + m[rows, cols].sum()
        if not picked.requires_grad:
            return torch.zeros_like(xs)
        g = pullback(picked, v, torch.ones_like(picked), retain=False, differentiable=False)
    norm = g.flatten(1).norm(dim=1).reshape(-1, *[1] * (g.dim() - 1))
    return torch.where(norm > 0, -g / norm.clamp(min=1e-300), 0.0).detach()


# ------------------------------------------------------------------- density, sharing


def region_density(model: nn.Module | SplineGraph, x0: Tensor, x1: Tensor) -> RegionDensity:
    """Regions per unit length on the segments from ``x0`` to ``x1`` (N pairs, or a
    single pair without batch axis), from the exact segment partition
    (:func:`maxaffine.partition_segment`, float64). ``values[:, l]`` counts the
    regions of layers 1..l (depth l); ``.total`` is the density of all layers.
    Every segment needs ``x0 != x1`` (a density per unit length); N may be 0."""
    for what, v in (("x0", x0), ("x1", x1)):
        if not isinstance(v, Tensor):
            raise MaxAffineTypeError(f"{what} must be a torch.Tensor, got {type(v).__name__}")
        check_tensor(v, what)
    if x0.shape != x1.shape:
        raise MaxAffineError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} "
                             f"and {tuple(x1.shape)}: pass N segment ends each, or one pair")
    base = model.model if isinstance(model, SplineGraph) else model
    probe = graph_for(model, x0 if x0.dim() > 1 else x0.unsqueeze(0), "x0")
    single = tuple(x0.shape) == probe.input_shape
    a = (x0.unsqueeze(0) if single else x0).double()
    b = (x1.unsqueeze(0) if single else x1).double()
    check_input(probe, x0.unsqueeze(0) if single else x0, "x0")
    lengths = (b - a).flatten(1).norm(dim=1)
    if bool((lengths == 0).any()):
        i = int(torch.nonzero(lengths == 0)[0])
        raise MaxAffineError(f"segment {i} has x0 == x1 (length 0), so it has no density of "
                             "regions per unit length: pass distinct end points")
    if a.shape[0] == 0:
        return RegionDensity(probe.layer_names, torch.zeros((0, len(probe.layers)),
                                                           dtype=torch.int64), lengths)
    graph = _graph_in(base, a[:1], torch.float64)
    counts = []
    for i in range(a.shape[0]):
        seg = partition_segment(graph, a[i], b[i])
        row = []
        slices = list(seg.codes.byte_slices().values())
        packed = seg.codes.packed()
        for s in slices:
            prefix = packed[:, : s.stop]
            changes = (prefix[1:] != prefix[:-1]).any(1).sum() if len(prefix) > 1 else 0
            row.append(1 + int(changes))
        counts.append(row)
    return RegionDensity(graph.layer_names, torch.tensor(counts, dtype=torch.int64).reshape(
        a.shape[0], len(graph.layers)), lengths)


def region_sharing(model: nn.Module | SplineGraph, x: Tensor, *,
                   batch_size: int = 1024) -> RegionSharing:
    """How many distinct regions the samples ``x`` occupy, per layer depth (codes
    computed ``batch_size`` samples per forward pass). An empty ``x`` occupies 0
    regions; its ``shared`` fractions are NaN (a mean over no samples)."""
    graph = graph_for(model, x)
    check_input(graph, x)
    batch_size = arg.integer(batch_size, "batch_size", minimum=1,
                             meaning="samples per forward pass")
    if not graph.layers:
        raise MaxAffineError("the model has no nonlinearity: all of input space is one "
                             "region, so there are no regions to share")
    parts = []
    for s in range(0, max(1, x.shape[0]), batch_size):
        c = codes_of(graph, evaluate_codes(graph, x[s:s + batch_size]))
        parts.append(c.packed())
        slices = list(c.byte_slices().values())
    packed = torch.cat(parts)
    if x.shape[0] == 0:
        zeros = torch.zeros(len(slices), dtype=torch.int64)
        return RegionSharing(graph.layer_names, zeros, zeros.clone(),
                             torch.full((len(slices),), math.nan, dtype=torch.float64),
                             torch.zeros(0, dtype=torch.int64), 0)
    regions, alone, shared = [], [], []
    ids = torch.zeros(x.shape[0], dtype=torch.int64)
    for s in slices:
        _, inv, cnt = torch.unique(packed[:, : s.stop], dim=0, return_inverse=True,
                                   return_counts=True)
        regions.append(cnt.numel())
        shared.append(float((cnt[inv] > 1).double().mean()))
        alone.append(torch.unique(packed[:, s], dim=0).shape[0])
        ids = inv
    return RegionSharing(graph.layer_names, torch.tensor(regions), torch.tensor(alone),
                         torch.tensor(shared, dtype=torch.float64), ids, x.shape[0])


# ------------------------------------------------------------------- curvature


def boundary_curvature(partition: Partition) -> BoundaryCurvature:
    """Turning angles of the decision boundary where it passes between faces.

    The boundary of a 2-D slice partition is straight inside each face (the output
    is affine there); at a point shared by exactly two boundary pieces of two
    different faces it turns by the angle between their directions (0: straight
    on). Junctions of three or more classes and the domain's edge are skipped.
    """
    if not isinstance(partition, Partition):
        raise MaxAffineTypeError(f"boundary_curvature takes a maxaffine.Partition (from "
                                 f"maxaffine.partition_plane), got {type(partition).__name__}")
    p = partition
    segs, faces, pairs = _boundary_pieces(p)
    empty = BoundaryCurvature(torch.zeros(0, dtype=torch.float64), torch.zeros(0, 2),
                              torch.zeros(0, 2, dtype=torch.int64),
                              torch.zeros(0, 2, dtype=torch.int64))
    if segs.shape[0] < 2:
        return empty
    extent = float((p.vertices.max(0).values - p.vertices.min(0).values).max())
    ends = segs.reshape(-1, 2)  # (2S, 2): start, end of each piece
    key = torch.round(ends / (1e-8 * extent)).long()
    _, inv, cnt = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(inv, stable=True)
    first = torch.zeros(cnt.numel() + 1, dtype=torch.int64)
    first[1:] = cnt.cumsum(0)
    pair_groups = torch.nonzero(cnt == 2).flatten()
    e1, e2 = order[first[pair_groups]], order[first[pair_groups] + 1]
    s1, s2 = e1 // 2, e2 // 2
    keep = faces[s1] != faces[s2]
    e1, e2, s1, s2 = e1[keep], e2[keep], s1[keep], s2[keep]
    joint = (ends[e1] + ends[e2]) / 2
    d1 = ends[e1 ^ 1] - ends[e1]  # away from the joint along each piece
    d2 = ends[e2 ^ 1] - ends[e2]
    cos = (d1 * d2).sum(1) / (d1.norm(dim=1) * d2.norm(dim=1))
    angles = math.pi - torch.arccos(cos.clamp(-1.0, 1.0))
    return BoundaryCurvature(angles, joint, torch.stack([faces[s1], faces[s2]], 1),
                             pairs[s1])


def _boundary_pieces(p: Partition) -> tuple[Tensor, Tensor, Tensor]:
    """The decision boundary's pieces (S, 2, 2) with their face (S,) and class pair."""
    return p.decision_boundary, p.boundary_faces, p.boundary_classes


__all__ = ["BoundaryCurvature", "BoundaryDistance", "LayerStat", "LocalComplexity",
           "RegionDensity", "RegionSharing", "boundary_curvature", "boundary_distance",
           "local_complexity", "region_density", "region_sharing"]

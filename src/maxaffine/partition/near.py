"""The exact linear regions of a network within a ball around one input, at the
input's full dimension (:func:`regions_near`).

With its codes frozen, a max-affine spline network is one affine map, and every
unit's boundary (the rule's :meth:`~maxaffine.ops.Nonlinearity.boundary`: lines
over its columns, or the ties of window entries) is an affine function ``g(y)``
of the input; the region of code ``q`` is the polytope
``{y : s_l g_l(y) >= 0 for every line l}``, ``s_l`` the side ``q`` selects
(Balestriero & Baraniuk, "A Spline Theory of Deep Networks", ICML 2018, sec. 5;
DESIGN.md sec. 5). Crossing a facet of a region through its relative interior
changes exactly one unit's code: the other units' pre-activations are continuous
and nonzero there. So the regions meeting the ball {y : ||y - x|| <= r} form a
graph that a breadth-first walk explores from the region of ``x``, one facet at
a time. Per region:

1. Every line and its gradient at ``x`` from one batched Jacobian of the frozen
   graph (:mod:`maxaffine._autodiff`), in ball coordinates ``y = x + r u``: each
   row is scaled to unit dual norm (L1 for the L-inf ball, L2 for the L2 ball),
   so that ``s (a.u + b)`` is the distance to its hyperplane in the ball's norm.
   A hyperplane with ``|b| >= 1`` misses the open ball and is dropped (exactly).
2. An interior point: the Chebyshev centre of the region within the ball's
   bounding box (one linear program), then the best point on the segment from a
   point of the region's closure inside the ball (``x``, or where the walk
   crossed in) to that centre: the smallest of the distances to the region's
   hyperplanes and to the sphere is concave along it (golden-section search).
3. Facets: a hyperplane is a facet of region ∩ ball when some point of it inside
   the open ball has every other constraint strictly satisfied. Cheap witnesses
   first (on each hyperplane, the best point of the segment from the interior
   point's projection to the hyperplane's point nearest to x, all rows at once,
   checked exactly in float64); the rest are linear programs (HiGHS dual simplex,
   warm-started from the centre's basis: the hyperplane's row becomes an
   equality and the others keep the largest common slack ``t``). With ``t > 0``,
   L-inf: the box is exact; L2: the exact distance from ``x`` to the facet is a
   least-distance program solved by non-negative least squares (Lawson & Hanson,
   "Solving Least Squares Problems", 1974, ch. 23: a finite active-set method),
   so no quadratic-programming solver is needed; L2 programs run in the span of
   the region's hyperplane normals, where the L2 ball stays a ball of radius r.
4. The neighbour across each facet: the codes of a forward pass just across it
   (from a point of its relative interior, by less than the other constraints'
   slack, confirmed by a shorter step), deduplicated by code; generically only the
   crossed unit changes, but a forward pass also gets ties right (a max-pooling
   window whose entries all died). A facet shared with a region whose facets were
   already searched is not tested again: it is the same hyperplane piece.
   Identical halfspaces of several units (a pooled ReLU's line and its window's
   ties against dead entries) are one constraint.

Facets whose largest slack is below ``TOL`` (relative to the radius) but above
``_ZERO`` cannot be resolved by the solver's tolerances (a slack of zero is a
hyperplane that only touches the region along a lower-dimensional face, common
where a pooled ReLU and its window tie): they are not followed, counted in
``RegionSet.unresolved``, and reported with a :class:`~maxaffine.MaxAffineWarning`.
Every interior point is checked against its region's code by a forward pass.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import _arguments as arg
from .. import ops
from .._autodiff import jacobian
from ..affine import AffineMap, affine_map
from ..errors import MaxAffineError, MaxAffineTypeError, MaxAffineWarning
from ..graph import SplineGraph, check_input, check_parameters
from ..vq import Codes, pack, unpack
from .plane import _graph_in, _refuse_batch

NORMS = ("linf", "l2")
TOL = 1e-7  # slack (relative to the radius) below which a facet counts as unresolved
_ZERO = 1e-9  # slack (relative) at or below which a hyperplane only touches the region
_WITNESS = 1e-10  # smallest slack (relative) of a point accepted as a witness
_RADIUS_FLOOR = 1e-10  # radius relative to max(1, |x|_inf) that float64 can still resolve
_GOLDEN = 0.5 * (math.sqrt(5.0) - 1.0)


# ------------------------------------------------------------------------ results


@dataclass(frozen=True)
class RegionSet:
    """The linear regions of a network that meet the ball ``{y : ||y - x|| <= radius}``
    (``norm`` ``"linf"`` or ``"l2"``), found by :func:`regions_near`.

    Per region (R of them, in the order the walk found them; region 0 holds ``x``):
    ``packed`` (R, bytes) uint8, its codes packed (the convention of
    :meth:`maxaffine.Codes.packed`, layers as ``code_layout``), ``codes`` the same as
    a :class:`maxaffine.Codes`; ``interior_points`` (R, *input_shape), each strictly
    inside its region and the ball, with ``margins`` (R,) the radius of a ball (of
    ``norm``) around it that stays inside both. ``edges`` (E, 2) pairs of regions
    sharing a facet inside the ball (i < j), ``edge_layer`` (E,) the index of the
    layer whose unit changes across it; ``adjacency`` the same as a symmetric
    ``scipy.sparse`` matrix. ``complete``: False when ``max_regions`` stopped the
    walk (neighbours were left out). ``unresolved``: facets too thin to resolve
    (slack below ``TOL * radius``), not followed. ``linear_programs``: how many were
    solved; ``seconds``: the time it took (``regions_per_second``).
    """

    x: Tensor
    radius: float
    norm: str
    packed: Tensor
    code_layout: tuple[tuple[str, tuple[int, ...], int, int], ...]  # name, shape, R, bits
    interior_points: Tensor
    margins: Tensor
    edges: Tensor
    edge_layer: Tensor
    complete: bool = True
    unresolved: int = 0
    linear_programs: int = 0
    seconds: float = 0.0
    graph: SplineGraph | None = field(default=None, repr=False)

    @property
    def num_regions(self) -> int:
        return self.packed.shape[0]

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(name for name, *_ in self.code_layout)

    @cached_property
    def codes(self) -> Codes:
        """The regions' codes (one row per region) as a :class:`maxaffine.Codes`."""
        names, shapes, pieces, bits = (tuple(x[i] for x in self.code_layout)
                                       for i in range(4))
        return Codes(names, unpack(self.packed, shapes, bits), pieces, bits,
                     self.num_regions)

    @property
    def counts_per_layer(self) -> Tensor:
        """(L,) how many distinct codes each layer alone takes over the regions."""
        c = self.codes
        return torch.tensor([int(torch.unique(c.packed([i]), dim=0).shape[0])
                             if self.num_regions else 0 for i in range(len(c.names))],
                            dtype=torch.int64)

    @property
    def counts_up_to_layer(self) -> Tensor:
        """(L,) how many distinct codes layers 1..l take together (the regions of the
        network cut after layer l; the last entry is ``num_regions``)."""
        c = self.codes
        return torch.tensor([int(torch.unique(c.packed(list(range(i + 1))), dim=0).shape[0])
                             if self.num_regions else 0 for i in range(len(c.names))],
                            dtype=torch.int64)

    @property
    def regions_per_second(self) -> float:
        return self.num_regions / self.seconds if self.seconds > 0 else 0.0

    @property
    def adjacency(self) -> Any:  # scipy.sparse.csr_array
        """(R, R) symmetric 0/1 matrix: 1 where two regions share a facet in the ball."""
        import scipy.sparse

        n = self.num_regions
        e = self.edges.numpy()
        rows = np.concatenate([e[:, 0], e[:, 1]])
        cols = np.concatenate([e[:, 1], e[:, 0]])
        return scipy.sparse.csr_array((np.ones(rows.shape[0], dtype=np.int8), (rows, cols)),
                                      shape=(n, n))

    def _graph(self) -> SplineGraph:
        if self.graph is None:
            raise MaxAffineError("this RegionSet holds no graph (it was built by hand): "
                                 "compute it with maxaffine.regions_near")
        return self.graph

    def halfspaces(self, i: int) -> tuple[Tensor, Tensor]:
        """The H-representation of region ``i``: ``(A, b)`` with the region
        ``{y : A y <= b}`` (y flattened), one row per unit boundary that is not
        constant on it (``A`` (L', input_dim), ``b`` (L',), float64); the ball is not
        included. Recomputed from the codes by one frozen evaluation."""
        i = arg.integer(i, "i", minimum=-self.num_regions, maximum=self.num_regions - 1,
                        meaning=f"a region index; the set has {self.num_regions} regions")
        graph = self._graph()
        lines = _Lines(graph, self.x.to(torch.float64))
        grad, value, valid, sign = lines.evaluate(lines.flat(self.codes.select([i]).as_dict()))
        keep = valid[0] & (grad[0].abs().amax(1) > 0)
        a, v, s = grad[0][keep], value[0][keep], sign[0][keep].to(torch.float64)
        x = self.x.reshape(-1).to(torch.float64)
        return -s[:, None] * a, s * (v - a @ x)

    def maps(self, indices: Sequence[int] | Tensor | None = None) -> AffineMap:
        """The output's affine map on the regions ``indices`` (default all), from
        :func:`maxaffine.affine_map` at their interior points."""
        idx = (torch.arange(self.num_regions) if indices is None
               else arg.indices(indices, self.num_regions, "indices"))
        return affine_map(self._graph(), self.interior_points[idx])

    def summary(self) -> dict[str, Any]:
        """Regions, the ball, completeness, facets, and per layer the distinct codes."""
        degree = torch.bincount(self.edges.flatten(), minlength=self.num_regions)
        return {
            "regions": self.num_regions, "radius": self.radius, "norm": self.norm,
            "input_dim": int(self.x.numel()), "complete": self.complete,
            "shared_facets": int(self.edges.shape[0]),
            "mean_neighbours": float(degree.double().mean()) if self.num_regions else 0.0,
            "unresolved_facets": self.unresolved, "linear_programs": self.linear_programs,
            "min_margin": float(self.margins.min()) if self.num_regions else 0.0,
            "seconds": self.seconds, "regions_per_second": self.regions_per_second,
            "layers": {name: {"distinct_codes": int(a), "distinct_up_to_here": int(b)}
                       for name, a, b in zip(self.layer_names, self.counts_per_layer.tolist(),
                                             self.counts_up_to_layer.tolist(), strict=True)},
        }

    def to_json(self) -> str:
        """The summary, each region's packed codes (hex) and margin, and the edges."""
        return json.dumps({
            **self.summary(),
            "packed": [bytes(r.tolist()).hex() for r in self.packed],
            "margins": self.margins.tolist(),
            "edges": self.edges.tolist(), "edge_layer": self.edge_layer.tolist(),
        })

    def plot(self, ax=None):
        """2-D inputs: the interior points joined along shared facets, and the ball;
        otherwise, per layer, the distinct codes of that layer and of layers 1..l."""
        from .._plotting import _axes

        if self.x.numel() == 2:
            ax = _axes(ax, (5, 5))
            p = self.interior_points.reshape(-1, 2).double().numpy()
            for i, j in self.edges.tolist():
                ax.plot(p[[i, j], 0], p[[i, j], 1], color="0.6", lw=0.7, zorder=1)
            ax.scatter(p[:, 0], p[:, 1], s=12, c=np.arange(len(p)), cmap="viridis", zorder=2)
            c, r = self.x.reshape(2).double().tolist(), self.radius
            t = np.linspace(0, 2 * np.pi, 200)
            if self.norm == "l2":
                ax.plot(c[0] + r * np.cos(t), c[1] + r * np.sin(t), color="k", lw=1)
            else:
                ax.plot(c[0] + r * np.array([-1, 1, 1, -1, -1]),
                        c[1] + r * np.array([-1, -1, 1, 1, -1]), color="k", lw=1)
            ax.set_aspect("equal")
        else:
            ax = _axes(ax, (6, 3))
            k = range(len(self.layer_names))
            ax.bar([i - 0.2 for i in k], self.counts_per_layer.tolist(), width=0.4,
                   label="layer alone")
            ax.bar([i + 0.2 for i in k], self.counts_up_to_layer.tolist(), width=0.4,
                   label="layers 1..l")
            ax.set_xticks(list(k), [str(n) for n in self.layer_names], fontsize=8)
            ax.set_ylabel("distinct codes")
            ax.legend(fontsize=7)
        more = "" if self.complete else " (incomplete)"
        ax.set_title(f"{self.num_regions} regions{more} within {self.norm} radius "
                     f"{self.radius:g}", fontsize=10)
        return ax


# ------------------------------------------------------------------------ the walk


def regions_near(
    model: nn.Module | SplineGraph,
    x: Tensor,
    radius: float,
    *,
    norm: str = "linf",
    max_regions: int = 10_000,
    progress: bool = True,
) -> RegionSet:
    """Every linear region of a piecewise-affine network that meets the ball
    ``{y : ||y - x|| <= radius}`` around one input ``x`` (shape: the model's
    per-sample input shape, no batch axis), exactly and at the input's full
    dimension: a breadth-first walk over neighbouring regions through their facets
    inside the ball, with the facet and ball tests as linear programs (HiGHS).
    ``norm``: ``"linf"`` (a box) or ``"l2"``. Geometry runs in float64 (a model of
    another dtype goes through a converted copy). ``max_regions``: stop after that
    many regions (``RegionSet.complete`` False, and a :class:`MaxAffineWarning`).

    The module docstring of :mod:`maxaffine.partition.near` gives the method; regions
    are told apart by their codes, as :func:`maxaffine.codes` computes them.

    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
    ...                           torch.nn.Linear(8, 2)).double()
    >>> found = regions_near(net, torch.zeros(4, dtype=torch.float64), 0.5, progress=False)
    >>> found.num_regions >= 1 and found.complete
    True
    """
    t0 = time.perf_counter()
    graph, x64, radius, norm, max_regions, progress = _arguments(
        model, x, radius, norm, max_regions, progress)
    walk = _Walk(graph, x64, radius, norm, max_regions)
    found = walk.run(progress)
    found = replace(found, seconds=time.perf_counter() - t0)
    if not found.complete:
        warnings.warn(
            f"regions_near stopped at max_regions={max_regions}: more regions meet the "
            f"{norm} ball of radius {radius:g} (RegionSet.complete is False); raise "
            "max_regions or use a smaller radius", MaxAffineWarning, stacklevel=2)
    if found.unresolved:
        warnings.warn(
            f"regions_near: {found.unresolved} facet(s) inside the ball are thinner than "
            f"{TOL:g} x radius, below what the linear programs resolve; the regions "
            "beyond them were not followed (RegionSet.unresolved)", MaxAffineWarning,
            stacklevel=2)
    return found


def _arguments(model: Any, x: Any, radius: Any, norm: Any, max_regions: Any, progress: Any
               ) -> tuple[SplineGraph, Tensor, float, str, int, bool]:
    """Checked arguments: the graph in float64, ``x`` as float64, the rest."""
    norm = arg.choice(norm, "norm", NORMS)
    radius = arg.number(radius, "radius", minimum=0.0, strict=True,
                        meaning="the ball's radius, in input units")
    max_regions = arg.integer(max_regions, "max_regions", minimum=1,
                              meaning="regions to find at most")
    progress = arg.flag(progress, "progress")
    if not isinstance(model, nn.Module | SplineGraph):
        raise MaxAffineTypeError(f"model must be a torch.nn.Module or a maxaffine.SplineGraph, "
                                 f"got {type(model).__name__}")
    arg.check_tensor(x, "x")
    if x.dim() == 0 or x.numel() == 0:
        raise MaxAffineError(f"x must be one input of the model's per-sample shape, got "
                             f"shape {tuple(x.shape)}")
    x64 = x.detach().to(torch.float64).contiguous()
    graph = _graph_in(model, x64.unsqueeze(0), torch.float64)
    _refuse_batch(graph, x64, "x")
    if tuple(x64.shape) != graph.input_shape:
        raise MaxAffineError(f"x has shape {tuple(x64.shape)}; the model takes inputs of "
                             f"shape {graph.input_shape} (one input, no batch axis)")
    check_input(graph, x64.unsqueeze(0))
    scale = max(1.0, float(x64.abs().max()))
    if radius < _RADIUS_FLOOR * scale:
        raise MaxAffineError(
            f"radius={radius:g} is below what float64 resolves around x (max |x| = "
            f"{scale:g}): points x + radius * u would round to x; use a radius of at least "
            f"{_RADIUS_FLOOR * scale:g}")
    if not math.isfinite(radius * scale):
        raise MaxAffineError(f"radius={radius:g} with max |x| = {scale:g} overflows float64")
    return graph, x64, radius, norm, max_regions, progress


class _Lines:
    """The unit boundaries of a graph as affine functions of the input, per region.

    Line slots, in graph order: every line of a :class:`~maxaffine.ops.Lines` layer,
    and for a :class:`~maxaffine.ops.Windows` layer every (unit, entry) pair, the
    tie ``e_code - e_entry`` (void where the entry is the code's own, or padding).
    Codes are flat: one entry per unit, the layers concatenated in graph order."""

    def __init__(self, graph: SplineGraph, x: Tensor):
        self.graph, self.x = graph, x
        with torch.no_grad():
            ev = graph.evaluate(x.unsqueeze(0), record=True)
        self.layers: list[tuple[str, ops.Lines | ops.Windows, torch.dtype, int]] = []
        unit, piece, window, base, present, unit_layer = [], [], [], [], [], []
        offset = 0
        for index, layer in enumerate(graph.layers):
            desc = layer.rule.boundary(*ev.inputs[layer.name])
            self.layers.append((layer.name, desc, ev.codes[layer.name].dtype, offset))
            if isinstance(desc, ops.Lines):
                n = desc.pos.shape[0]
                unit.append(desc.unit.long() + offset)
                piece.append(torch.arange(n) - desc.unit.long() * desc.per_unit)
                window.append(torch.zeros(n, dtype=torch.bool))
                base.append(torch.full((n,), desc.base, dtype=torch.int64))
                present.append(torch.ones(n, dtype=torch.bool))
            else:
                k, r = desc.table.shape
                unit.append(torch.arange(k).repeat_interleave(r) + offset)
                piece.append(torch.arange(r).repeat(k))
                window.append(torch.ones(k * r, dtype=torch.bool))
                base.append(torch.zeros(k * r, dtype=torch.int64))
                present.append(desc.table.flatten() >= 0)
            unit_layer.append(torch.full((layer.num_units,), index, dtype=torch.int64))
            offset += layer.num_units
        self.num_units = offset

        def cat(parts: list[Tensor], dtype: torch.dtype = torch.int64) -> Tensor:
            return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)

        self.unit, self.piece, self.base = cat(unit), cat(piece), cat(base)
        self.window, self.present = cat(window, torch.bool), cat(present, torch.bool)
        self.unit_layer = cat(unit_layer)
        self.num_slots = self.unit.shape[0]

    def flat(self, found: dict[str, Tensor]) -> Tensor:
        """(N, units) int64 flat codes of an evaluation's name -> code dict."""
        layers = self.graph.layers
        if not layers:
            n = next(iter(found.values())).shape[0] if found else 1
            return torch.zeros((n, 0), dtype=torch.int64)
        return torch.cat([found[u.name].reshape(found[u.name].shape[0], -1).long()
                          for u in layers], 1)

    def codes_at(self, y: Tensor) -> Tensor:
        """(N, units) flat codes of the inputs ``y`` (N, *input_shape)."""
        with torch.no_grad():
            found = self.graph.run(y).codes
        if not self.graph.layers:
            return torch.zeros((y.shape[0], 0), dtype=torch.int64)
        return self.flat(found)

    def frozen(self, flat: Tensor) -> dict[str, Tensor]:
        """Flat codes (N, units) as the name -> code dict that freezes them."""
        out = {}
        for (name, _, dtype, offset), layer in zip(self.layers, self.graph.layers, strict=True):
            part = flat[:, offset: offset + layer.num_units]
            out[name] = part.to(dtype).reshape(flat.shape[0], *layer.code_shape)
        return out

    def evaluate(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """For regions of flat codes (B, units): every slot's gradient (B, L, d) and
        value at ``x`` (B, L), whether it is a constraint (B, L), and the side the
        region takes (B, L), +1 or -1 (the region is ``side * line >= 0``)."""
        graph, b = self.graph, flat.shape[0]
        frozen = self.frozen(flat)
        xb = self.x.unsqueeze(0).expand(b, *self.x.shape).contiguous()
        last = graph.layers[-1].name if graph.layers else None

        def fn(v: Tensor) -> Tensor:
            ev = graph.run(v, codes=frozen, record=True, until=last)
            parts = []
            for (name, desc, _, offset), layer in zip(self.layers, graph.layers, strict=True):
                cols = layer.rule.columns(*ev.inputs[name])
                if isinstance(desc, ops.Lines):
                    neg = cols[:, desc.neg.clamp(min=0)] * (desc.neg >= 0).to(cols.dtype)
                    parts.append(cols[:, desc.pos] - neg - desc.level.to(cols.dtype))
                else:  # e_code - e_entry for every entry of every window
                    code = flat[:, offset: offset + layer.num_units]
                    table = desc.table.clamp(min=0)
                    chosen = torch.gather(table.expand(b, *table.shape), 2,
                                          code.unsqueeze(-1)).squeeze(-1)
                    entries = cols[:, table.flatten()].reshape(b, *table.shape)
                    parts.append((torch.gather(cols, 1, chosen).unsqueeze(-1)
                                  - entries).reshape(b, -1))
            return torch.cat(parts, 1) if parts else v.new_zeros((v.shape[0], 0))

        d, n = graph.input_dim, self.num_slots
        if n:
            widest = max([u.num_units for u in graph.layers] + [d])
            per_pass = max(1, min(n, (1 << 22) // max(1, b * widest)))
            with torch.no_grad():
                grad, value, _ = jacobian(fn, xb, mode="reverse", products_per_pass=per_pass,
                                          num_outputs=n)
            grad = grad.reshape(b, n, d)
        else:
            grad, value = xb.new_zeros((b, 0, d)), xb.new_zeros((b, 0))
        if not (bool(torch.isfinite(grad).all()) and bool(torch.isfinite(value).all())):
            raise MaxAffineError(
                "the unit boundaries overflow float64 near x (the network's values there "
                "exceed the largest float): scale the model's weights or x down")
        code = flat[:, self.unit]
        valid = self.present.unsqueeze(0) & ~(self.window & (self.piece == code))
        side = torch.where(self.window | (self.piece < code - self.base), 1, -1)
        return grad, value, valid, side


    def flip(self, code: np.ndarray, slots: list[int], side: np.ndarray) -> np.ndarray:
        """The flat code with the lines ``slots`` crossed (from their ``side``): what
        the neighbour across a facet of those lines has, generically."""
        out = code.copy()
        for slot in slots:
            u = int(self.unit[slot])
            if bool(self.window[slot]):
                out[u] = int(self.piece[slot])
            else:
                out[u] += -1 if side[slot] > 0 else 1
        return out


@dataclass
class _Region:
    code: np.ndarray  # flat codes
    start: np.ndarray  # a point of its closure inside the ball (ball coordinates u)
    point: np.ndarray | None = None  # its interior point (ball coordinates)
    margin: float = 0.0  # the slack of that point (a fraction of the radius)
    done: bool = False  # its facets have been searched


class _Polytope:
    """One region's constraints that can bind inside the ball, in ball coordinates
    ``y = x + radius * u`` (the ball is ``||u|| <= 1``): rows ``w`` of unit dual norm,
    offsets ``beta``, sides ``side`` (the region is ``side * (w z + beta) >= 0``),
    ``slots`` (the line slots each row stands for: identical hyperplanes of several
    units are one row). For the L2 ball the rows live in the span of their normals
    (``basis``, orthonormal columns), where the ball stays the unit ball."""

    def __init__(self, w: np.ndarray, beta: np.ndarray, side: np.ndarray, slots: np.ndarray,
                 norm: str):
        w, beta, side, groups = _merge_identical(w, beta, side, slots)
        self.norm, self.beta, self.side, self.slots = norm, beta, side, groups
        self.basis: np.ndarray | None = None
        if norm == "l2":
            if w.shape[0]:
                _, sv, vt = np.linalg.svd(w, full_matrices=False)
                rank = int((sv > sv[0] * 1e-12).sum())
                self.basis = vt[:rank].T
            else:
                self.basis = np.zeros((w.shape[1], 0))
            w = w @ self.basis
        self.w = w

    @property
    def rows(self) -> int:
        return self.w.shape[0]

    @property
    def dim(self) -> int:
        return self.w.shape[1]

    def reduce(self, u: np.ndarray) -> np.ndarray:
        return u if self.basis is None else self.basis.T @ u

    def to_ball(self, z: np.ndarray) -> np.ndarray:
        return z if self.basis is None else self.basis @ z

    def size(self, z: np.ndarray) -> np.ndarray:
        """The ball's norm over the last axis."""
        if z.shape[-1] == 0:
            return np.zeros(z.shape[:-1])
        return np.abs(z).max(-1) if self.norm == "linf" else np.linalg.norm(z, axis=-1)

    def values(self, z: np.ndarray) -> np.ndarray:
        """(..., rows) each constraint's slack at points ``z`` (..., dim)."""
        return self.side * (z @ self.w.T + self.beta)

    def slack(self, z: np.ndarray, skip: int = -1) -> float:
        """The smallest slack of the constraints (but row ``skip``) and the sphere."""
        v = self.values(z)
        if skip >= 0:
            v[skip] = np.inf
        inner = float(v.min()) if v.shape[0] else np.inf
        return min(inner, 1.0 - float(self.size(z)))

    def witnesses(self, p: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Facets shown by a cheap witness: on each hyperplane, the segment from the
        projection of the interior point ``p`` (L-inf: its projection in the L-inf
        norm) to the hyperplane's point nearest to x (inside the open ball) is
        searched, all rows at once, for a point where every other constraint and
        the sphere keep a slack above ``_ROBUST`` (checked exactly in float64)."""
        k = self.rows
        if not k:
            return
        w = self.w
        res = w @ p + self.beta
        if self.norm == "linf":
            head = p - res[:, None] * np.sign(w)  # the L-inf projections (||w||_1 = 1)
            tail = -self.beta[:, None] * np.sign(w)
        else:
            head = p - res[:, None] * w  # ||w||_2 = 1
            tail = -self.beta[:, None] * w
        span = tail - head
        eye = np.eye(k, dtype=bool)

        def slack(lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            z = head + lam[:, None] * span
            v = self.side * (z @ w.T + self.beta)
            v[eye] = np.inf
            return np.minimum(v.min(1), 1.0 - self.size(z)), z

        a, b = np.zeros(k), np.ones(k)
        c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
        fc, fd = slack(c)[0], slack(d)[0]
        for _ in range(24):  # the slack is concave along each segment
            left = fc >= fd
            b = np.where(left, d, b)
            a = np.where(left, a, c)
            c_new, d_new = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
            moved = np.where(left, c_new, d_new)
            fm = slack(moved)[0]
            c, d = np.where(left, c_new, d), np.where(left, c, d_new)
            fc, fd = np.where(left, fm, fd), np.where(left, fc, fm)
        best = np.where(fc >= fd, c, d)
        done = np.zeros(k, dtype=bool)
        for lam in (np.zeros(k), best):
            f, z = slack(lam)
            for row in np.flatnonzero((f > _ROBUST) & ~done):
                done[row] = True
                yield int(row), z[row]

    def across(self, row: int) -> np.ndarray:
        """The direction leaving the region through ``row``, of unit ball norm,
        along which the row's value falls by one per unit step."""
        w = self.w[row]
        step = np.sign(w) if self.norm == "linf" else w / float(np.linalg.norm(w))
        return -self.side[row] * step / float(w @ step)


def _merge_identical(w: np.ndarray, beta: np.ndarray, side: np.ndarray, slots: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int]]]:
    """Rows that are the same halfspace (e.g. a max-pool tie against a dead entry and
    the ReLU line of the live one) as one row: on their common hyperplane the other
    would have zero slack, so neither would look like a facet."""
    k = w.shape[0]
    if k < 2:
        return w, beta, side, [[int(s)] for s in slots]
    rows = np.concatenate([side[:, None] * w, (side * beta)[:, None]], 1)
    key = rows @ np.random.default_rng(0).standard_normal(rows.shape[1])
    order = np.argsort(key)
    keep = np.ones(k, dtype=bool)
    groups: dict[int, list[int]] = {int(i): [int(slots[i])] for i in range(k)}
    for a in range(k):
        i = order[a]
        if not keep[i]:
            continue
        for b in range(a + 1, k):
            j = order[b]
            if key[j] - key[i] > 1e-9:
                break
            if keep[j] and float(np.abs(rows[i] - rows[j]).max()) <= 1e-12:
                keep[j] = False
                groups[int(i)] += groups.pop(int(j))
    idx = np.flatnonzero(keep)
    return w[idx], beta[idx], side[idx], [groups[int(i)] for i in idx]


_ROBUST = 1e-6  # slack (relative) a cheap witness must keep to be accepted


def _golden(f: Callable[[float], float], iters: int = 56) -> tuple[float, float]:
    """The maximiser in [0, 1] of a concave ``f`` and its value (golden sections)."""
    a, b = 0.0, 1.0
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    best = max((fc, c), (fd, d), (f(1.0), 1.0))
    return best[1], best[0]


_QUIET: list[bool] = []  # whether HiGHS has printed its banner (on its first solver)


@contextlib.contextmanager
def _silenced_stdout() -> Iterator[None]:
    """Send the process's standard output to /dev/null for the block (the banner
    HiGHS's first solver prints from C++)."""
    import sys

    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _highs() -> Any:
    """A quiet HiGHS solver with tight tolerances."""
    import highspy

    if _QUIET:
        h = highspy.Highs()
    else:
        with _silenced_stdout():
            h = highspy.Highs()
        _QUIET.append(True)
    h.setOptionValue("output_flag", False)
    h.setOptionValue("primal_feasibility_tolerance", 1e-10)
    h.setOptionValue("dual_feasibility_tolerance", 1e-10)
    return h


class _Solver:
    """The linear programs of one region (HiGHS): the Chebyshev centre within the
    ball's bounding box, ``max t : side (w z + beta) >= t, z in box, t <= 1``, and
    per candidate facet the same with its row an equality (warm-started from the
    centre's basis, or, ``warm=False``, a cold model per program)."""

    def __init__(self, poly: _Polytope, warm: bool):
        self.poly, self.warm = poly, warm
        self.h: Any = None
        self.count = 0

    def _model(self, box: float, equal: int = -1) -> Any:
        import highspy

        poly = self.poly
        k, m = poly.rows, poly.dim
        inf = highspy.kHighsInf
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = m + 1, k
        lp.col_cost_ = np.r_[np.zeros(m), -1.0]
        lp.col_lower_ = np.r_[np.full(m, -box), -inf]
        lp.col_upper_ = np.r_[np.full(m, box), 1.0]
        matrix = np.concatenate([poly.side[:, None] * poly.w, -np.ones((k, 1))], 1)
        lower = -poly.side * poly.beta
        upper = np.full(k, inf)
        if equal >= 0:
            matrix[equal, m] = 0.0
            upper[equal] = lower[equal]
        lp.row_lower_, lp.row_upper_ = lower, upper
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = m + 1, k
        lp.a_matrix_.start_ = np.arange(0, k * (m + 1) + 1, m + 1, dtype=np.int32)
        lp.a_matrix_.index_ = np.tile(np.arange(m + 1, dtype=np.int32), k)
        lp.a_matrix_.value_ = matrix.ravel()
        h = _highs()
        h.passModel(lp)
        return h

    def _solve(self, h: Any) -> tuple[np.ndarray, float] | None:
        import highspy

        h.run()
        self.count += 1
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        value = np.asarray(h.getSolution().col_value)
        return value[:-1], float(value[-1])

    def _box(self, h: Any, box: float) -> None:
        m = self.poly.dim
        h.changeColsBounds(m, np.arange(m, dtype=np.int32), np.full(m, -box), np.full(m, box))

    def centre(self) -> np.ndarray:
        """The Chebyshev centre of the region within the box, tried first in an inner
        box (half the L-inf ball; the cube inscribed in the L2 ball), so that the
        centre lies well inside the ball where the region reaches there."""
        poly = self.poly
        if not poly.rows:
            return np.zeros(poly.dim)
        inner = 0.5 if poly.norm == "linf" else 1.0 / math.sqrt(poly.dim)
        self.h = self._model(inner)
        found = self._solve(self.h)
        self._box(self.h, 1.0)
        if found is None or found[1] <= _ROBUST:
            found = self._solve(self.h) or (np.zeros(poly.dim), 0.0)
        return found[0]

    def facet(self, row: int) -> np.ndarray | float | None:
        """A point in the relative interior of facet ``row`` inside the open ball, with
        the largest common slack found along a segment (None: not a facet; a float:
        a facet too thin to resolve, its slack)."""
        poly = self.poly
        m = poly.dim
        bound = -poly.side[row] * poly.beta[row]
        if self.warm:
            h = self.h
            h.changeCoeff(row, m, 0.0)
            h.changeRowBounds(row, bound, bound)
            found = self._solve(h)
            h.changeCoeff(row, m, -1.0)
            h.changeRowBounds(row, bound, np.inf)
        else:
            found = self._solve(self._model(1.0, equal=row))
        if found is None:
            return None
        z, t = found
        if t <= TOL:  # at most touching (e.g. where a pooled ReLU and its window tie)
            return t if t > _ZERO else None
        target = self._nearest(row)
        if target is None:
            return None
        lam, slack = _golden(lambda s: poly.slack(z + s * (target - z), skip=row))
        if slack <= TOL:
            return slack if slack > _ZERO else None
        point = z + lam * (target - z)
        w = poly.w[row]
        return point - (w @ point + poly.beta[row]) / float(w @ w) * w  # onto the plane

    def _nearest(self, row: int) -> np.ndarray | None:
        """A point of the facet's hyperplane inside the open ball, and for L2 of the
        facet's closure (its point nearest to x), or None when that is outside the
        ball: L-inf, the hyperplane's nearest point to x; L2, the least-distance
        program ``min ||z|| : G z >= h`` by non-negative least squares (Lawson &
        Hanson 1974, ch. 23: ``min ||E v - f||, v >= 0`` with ``E = [G^T; h^T]``,
        ``f = e_last``; then ``z = -r[:-1] / r[-1]`` for the residual r)."""
        from scipy.optimize import nnls

        poly = self.poly
        w, beta = poly.w[row], poly.beta[row]
        if poly.norm == "linf":
            return -beta * np.sign(w)
        others = np.flatnonzero(np.arange(poly.rows) != row)
        g = np.concatenate([poly.side[others, None] * poly.w[others], w[None], -w[None]])
        h = np.concatenate([-poly.side[others] * poly.beta[others], [-beta, beta]])
        e = np.concatenate([g.T, h[None]], 0)
        f = np.zeros(e.shape[0])
        f[-1] = 1.0
        v, _ = nnls(e, f, maxiter=50 * e.shape[1])
        r = e @ v - f
        if abs(r[-1]) < 1e-14:  # infeasible (cannot be: the program above found a point)
            return None
        z = -r[:-1] / r[-1]
        return z if float(np.linalg.norm(z)) < 1.0 else None


class _Walk:
    """The breadth-first walk of :func:`regions_near`. ``prune=False,
    witnesses=False, warm=False`` is the naive baseline: every line a candidate,
    one cold linear program each."""

    def __init__(self, graph: SplineGraph, x: Tensor, radius: float, norm: str,
                 max_regions: int, *, prune: bool = True, witnesses: bool = True,
                 warm: bool = True):
        check_parameters(graph)
        self.graph, self.x, self.radius, self.norm = graph, x, radius, norm
        self.max_regions = max_regions
        self.prune, self.witnesses, self.warm = prune, witnesses, warm
        self.lines = _Lines(graph, x)
        self.d = graph.input_dim
        self.regions: list[_Region] = []
        self.index: dict[bytes, int] = {}
        self.edges: set[tuple[int, int]] = set()
        self.complete = True
        self.unresolved = 0
        self.lps = 0

    def _inputs(self, u: np.ndarray) -> Tensor:
        """Ball coordinates (N, d) as inputs (N, *input_shape)."""
        y = self.x.reshape(1, -1) + self.radius * torch.from_numpy(np.asarray(u))
        if not bool(torch.isfinite(y).all()):
            raise MaxAffineError("points of the ball overflow float64: use a smaller radius")
        return y.reshape(-1, *self.graph.input_shape)

    def run(self, progress: bool) -> RegionSet:
        code0 = self.lines.codes_at(self.x.unsqueeze(0))[0].numpy()
        self._add(code0, np.zeros(self.d))
        queue = deque([0])
        per_wave = max(1, min(32, (1 << 24) // max(1, self.lines.num_slots * self.d)))
        bar = tqdm(desc="regions near x", disable=not progress, leave=False, unit="region")
        while queue:
            wave = [queue.popleft() for _ in range(min(per_wave, len(queue)))]
            flat = torch.from_numpy(np.stack([self.regions[i].code for i in wave]))
            grad, value, valid, side = self.lines.evaluate(flat)
            crossings: list[tuple[int, np.ndarray, np.ndarray]] = []  # region, point, step
            for k, i in enumerate(wave):
                poly = self._polytope(grad[k], value[k], valid[k], side[k])
                solver = _Solver(poly, self.warm)
                self._interior(i, poly, solver)
                self.lps += solver.count
                region = self.regions[i]
                if not self.complete:
                    # max_regions refused a region: the rest get interior points only
                    continue
                # a facet shared with a region whose facets were searched is known
                # from that side already (the same hyperplane piece)
                sides = side[k].numpy()
                skip = np.array([self._searched(self.lines.flip(region.code, slots, sides))
                                 for slots in poly.slots], dtype=bool)
                region.done = True
                lps = solver.count
                for row, point in self._facets(poly, solver, poly.reduce(region.point), skip):
                    step = 0.5 * poly.slack(point, skip=row)
                    crossings.append((i, poly.to_ball(point),
                                      poly.to_ball(step * poly.across(row))))
                self.lps += solver.count - lps
            self._check(wave)
            for i, code, start in self._cross(crossings):
                j = self.index.get(code.tobytes())
                if j is None:
                    if len(self.regions) >= self.max_regions:
                        self.complete = False
                        continue
                    j = self._add(code, start)
                    queue.append(j)
                if j != i:
                    self.edges.add((min(i, j), max(i, j)))
            bar.update(len(wave))
            bar.set_postfix(found=len(self.regions), queued=len(queue))
        bar.close()
        return self._result()

    def _searched(self, code: np.ndarray) -> bool:
        j = self.index.get(code.tobytes())
        return j is not None and self.regions[j].done

    def _add(self, code: np.ndarray, start: np.ndarray) -> int:
        self.index[code.tobytes()] = len(self.regions)
        self.regions.append(_Region(code, start))
        return len(self.regions) - 1

    def _polytope(self, grad: Tensor, value: Tensor, valid: Tensor, side: Tensor) -> _Polytope:
        """The region's constraints that can bind inside the ball, in ball coordinates
        ``y = x + radius * u``, each scaled to unit dual norm."""
        a, v = grad.numpy(), value.numpy()
        top = np.abs(a).max(1, initial=0.0)  # rows scaled first: no overflow in the norms
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            scaled = a / np.where(top > 0, top, 1.0)[:, None]
            dual = top * (np.abs(scaled).sum(1) if self.norm == "linf"
                          else np.linalg.norm(scaled, axis=1))
            beta = v / self.radius / dual
        keep = valid.numpy() & (top > 0)
        if not np.isfinite(dual[keep]).all():
            raise MaxAffineError(
                "the unit boundaries' gradients overflow float64 near x: scale the model's "
                "weights down")
        if self.prune:
            keep &= np.abs(beta) < 1.0  # else the hyperplane misses the open ball
        rows = np.flatnonzero(keep)
        return _Polytope(a[rows] / dual[rows, None], beta[rows],
                         side.numpy()[rows].astype(np.float64), rows, self.norm)

    def _interior(self, i: int, poly: _Polytope, solver: _Solver) -> None:
        """The region's interior point: the best point between its start (in its
        closure, inside the ball) and its Chebyshev centre within the bounding box."""
        region = self.regions[i]
        start = poly.reduce(region.start)
        centre = solver.centre()
        lam, margin = _golden(lambda t: poly.slack(start + t * (centre - start)))
        if margin <= 0:
            raise MaxAffineError(
                f"region {i} shows no interior inside the ball at float64 resolution (its "
                f"best inner margin is {margin * self.radius:.3g}): x may lie where "
                "boundaries meet degenerately; move x slightly or change the radius")
        region.point = poly.to_ball(start + lam * (centre - start))
        region.margin = margin

    def _facets(self, poly: _Polytope, solver: _Solver, p: np.ndarray, skip: np.ndarray
                ) -> Iterator[tuple[int, np.ndarray]]:
        """(row, a point in the facet's relative interior inside the open ball) for
        every facet of the region inside the ball but the rows ``skip``."""
        todo = ~skip if self.prune else np.ones(poly.rows, dtype=bool)
        if self.witnesses and todo.any():
            for row, point in poly.witnesses(p):
                if todo[row]:
                    todo[row] = False
                    yield row, point
        for row in np.flatnonzero(todo):
            found = solver.facet(int(row))
            if isinstance(found, np.ndarray):
                yield int(row), found
            elif found is not None:
                self.unresolved += 1

    def _cross(self, crossings: list[tuple[int, np.ndarray, np.ndarray]]
               ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(region, the neighbour's code, a point of it inside the ball) across each
        facet: the codes of a forward pass at the crossing point stepped across the
        facet, confirmed by a step 8 times shorter (else shortened 8 times again, up to
        4 times; a crossing never confirmed counts as unresolved)."""
        if not crossings:
            return
        owner = np.array([i for i, _, _ in crossings])
        point = np.stack([p for _, p, _ in crossings])
        step = np.stack([s for _, _, s in crossings])
        pending = np.arange(len(crossings))
        far = self.lines.codes_at(self._inputs(point + step)).numpy()
        for _ in range(4):
            near = self.lines.codes_at(self._inputs(point[pending] + step[pending] / 8)).numpy()
            same = (near == far).all(1)
            for k in np.flatnonzero(same):
                c = pending[k]
                code = near[k]
                if not (code == self.regions[owner[c]].code).all():
                    yield int(owner[c]), code, point[c] + step[c] / 8
                else:
                    self.unresolved += 1  # the step did not leave the region (rounding)
            pending, far = pending[~same], near[~same]
            step[pending] /= 8
            if not pending.shape[0]:
                return
        self.unresolved += int(pending.shape[0])

    def _check(self, wave: list[int]) -> None:
        """Every interior point of the wave has its region's code."""
        points = np.stack([self.regions[i].point for i in wave])  # type: ignore[misc]
        found = self.lines.codes_at(self._inputs(points)).numpy()
        want = np.stack([self.regions[i].code for i in wave])
        bad = (found != want).any(1)
        if bad.any():
            raise MaxAffineError(
                f"{int(bad.sum())} interior point(s) do not have their region's code "
                "(boundaries nearly parallel, or values near float64's limits); try "
                "another radius or rescale the model")

    def _result(self) -> RegionSet:
        graph = self.graph
        n = len(self.regions)
        flat = torch.from_numpy(np.stack([r.code for r in self.regions]))
        frozen = self.lines.frozen(flat)
        values = [frozen[layer.name] for layer in graph.layers]
        bits = [layer.bits_per_unit for layer in graph.layers]
        packed = pack(values, bits) if values else torch.zeros((n, 0), dtype=torch.uint8)
        layout = tuple((layer.name, tuple(layer.code_shape), layer.num_pieces,
                        layer.bits_per_unit) for layer in graph.layers)
        points = self._inputs(np.stack([r.point for r in self.regions]))  # type: ignore[misc]
        edges = torch.tensor(sorted(self.edges), dtype=torch.int64).reshape(-1, 2)
        # the first layer whose codes differ across each shared facet
        if edges.shape[0] and flat.shape[1]:
            first = (flat[edges[:, 0]] != flat[edges[:, 1]]).to(torch.int8).argmax(1)
            edge_layer = self.lines.unit_layer[first]
        else:
            edge_layer = torch.zeros(0, dtype=torch.int64)
        return RegionSet(
            x=self.x, radius=self.radius, norm=self.norm, packed=packed, code_layout=layout,
            interior_points=points,
            margins=torch.tensor([r.margin * self.radius for r in self.regions],
                                 dtype=torch.float64),
            edges=edges, edge_layer=edge_layer, complete=self.complete,
            unresolved=self.unresolved, linear_programs=self.lps, graph=graph)

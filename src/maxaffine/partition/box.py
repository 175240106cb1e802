"""Exact partitions at full input dimension (:func:`partition_box`,
:func:`partition_polytope`): the whole polyhedral complex of a network with a
low-dimensional input, layer by layer, every unit's boundary a hyperplane inside
each cell of the earlier layers (Balestriero et al., "The Geometry of Deep
Networks: Power Diagram Subdivision", NeurIPS 2019, Thm. 3), cut through the face
lattice (:mod:`maxaffine.partition.lattice`)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import ops
from .._arguments import integer
from ..errors import MaxAffineError, MaxAffineTypeError
from ..graph import Layer, SplineGraph, check_parameters
from ..vq import pack
from .complex import Complex
from .lattice import Lattice
from .plane import _graph_in, _tolerance
from .values import _line_values

_VALUES_BUDGET = 1 << 24  # line values held at the vertices at once (floats)


def partition_box(
    model: nn.Module | SplineGraph,
    lower: Tensor | Any,
    upper: Tensor | Any,
    *,
    dtype: torch.dtype = torch.float64,
    tol: float | None = None,
    max_regions: int = 1_000_000,
    progress: bool = True,
) -> Complex:
    """The exact polyhedral complex of the network's regions in the box
    ``[lower, upper]`` of its d-dimensional input space (d >= 1; d = 2..6 are the
    use cases).

    Layer by layer, every cell is cut along each unit's boundary (the rule's
    :meth:`~maxaffine.ops.Nonlinearity.boundary`: a hyperplane in every cell of the
    earlier layers, since the unit's pre-activation is affine there), reading
    only the signs of its values at the vertices, which come from plain forward
    passes (the network is continuous) and are interpolated along cut edges (exact:
    affine on every edge). Values within ``tol`` (relative to each unit's range on
    the box; default 1e-13 in float64, 1e-5 in float32) count as on the hyperplane,
    so a hyperplane through an existing vertex, or two coincident ones, add no
    sliver. Returns a :class:`Complex`: vertices, edges, every k-face, and per
    region its code, volume, interior point and affine map.
    """
    t0 = time.perf_counter()
    rel_tol = _tolerance(tol, dtype)
    max_regions = integer(max_regions, "max_regions", minimum=1)
    lo = _vector(lower, "lower")
    hi = _vector(upper, "upper")
    if lo.shape != hi.shape:
        raise MaxAffineError(f"lower has {lo.shape[0]} coordinates and upper "
                             f"{hi.shape[0]}: give both corners of the same box")
    bad = np.flatnonzero(lo >= hi)
    if bad.size:
        i = int(bad[0])
        raise MaxAffineError(f"lower >= upper in coordinate {i} ({lo[i]!r} >= {hi[i]!r}): "
                             "the box is empty; each lower bound must be below its upper")
    graph = _graph_for(model, lo.shape[0], dtype)
    lattice = Lattice.box(lo, hi)
    return _complex(graph, lattice, dtype, rel_tol, max_regions, progress, t0, None)


def partition_polytope(
    model: nn.Module | SplineGraph,
    A: Tensor | Any,
    b: Tensor | Any,
    *,
    dtype: torch.dtype = torch.float64,
    tol: float | None = None,
    max_regions: int = 1_000_000,
    progress: bool = True,
) -> Complex:
    """:func:`partition_box` on the convex polytope ``{x : A x <= b}`` (A (m, d),
    b (m,)); it must be bounded and have an interior (checked with linear
    programs: HiGHS finds its bounding box and its largest inscribed ball)."""
    t0 = time.perf_counter()
    rel_tol = _tolerance(tol, dtype)
    max_regions = integer(max_regions, "max_regions", minimum=1)
    a = _array(A, "A", 2)
    bb = _vector(b, "b")
    if a.shape[0] != bb.shape[0] or a.shape[0] == 0:
        raise MaxAffineError(f"A has {a.shape[0]} rows and b {bb.shape[0]} entries: "
                             "one bound per constraint row a_i . x <= b_i (at least one)")
    d = a.shape[1]
    lo, hi = _bounding_box(a, bb)
    graph = _graph_for(model, d, dtype)
    lattice = Lattice.box(lo, hi)
    # cut the box by each constraint and keep the cells inside
    inside = np.ones(1, dtype=np.bool_)
    scale = np.abs(a) @ np.maximum(np.abs(lo), np.abs(hi)) + np.abs(bb)
    for i in range(a.shape[0]):
        vals = lattice.x @ a[i] - bb[i]
        pos, minus = lattice.cut(vals, rel_tol * scale[i])
        # the negative parts are inside when their cell was
        inside = np.concatenate([inside & ~pos, inside[minus >= 0]])
    lattice.restrict(inside)
    return _complex(graph, lattice, dtype, rel_tol, max_regions, progress, t0, (a, bb))


def _array(v: Any, name: str, ndim: int) -> np.ndarray:
    """``v`` (a tensor, array or nested list of reals) as a finite float64 array."""
    if isinstance(v, Tensor):
        v = v.detach().cpu().double().numpy()
    try:
        arr = np.array(v, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MaxAffineTypeError(f"{name} must be real numbers (a tensor, array or list), "
                                 f"got {type(v).__name__}") from err
    if arr.ndim != ndim:
        raise MaxAffineError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise MaxAffineError(f"{name} has NaN or infinite entries: give finite bounds")
    return arr


def _vector(v: Any, name: str) -> np.ndarray:
    arr = _array(v, name, 1)
    if arr.shape[0] == 0:
        raise MaxAffineError(f"{name} is empty: give one value per input coordinate")
    return arr


def _bounding_box(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The polytope's bounding box by 2d linear programs; errors if it is empty, has no
    interior, or is unbounded."""
    from scipy.optimize import linprog

    d = a.shape[1]
    norms = np.linalg.norm(a, axis=1)
    if np.any(norms == 0):
        i = int(np.flatnonzero(norms == 0)[0])
        raise MaxAffineError(f"A's row {i} is zero: a constraint 0 <= b_i constrains nothing")
    # the largest inscribed ball: max r s.t. a_i . c + r |a_i| <= b_i
    cheb = linprog(np.r_[np.zeros(d), -1.0], A_ub=np.c_[a, norms], b_ub=b,
                   bounds=[(None, None)] * d + [(0, None)], method="highs")
    if cheb.status == 2:
        raise MaxAffineError("the polytope {x : A x <= b} is empty (no x satisfies all "
                             "constraints)")
    if cheb.status == 0 and cheb.x[-1] <= 1e-12 * max(1.0, float(np.abs(b).max())):
        raise MaxAffineError("the polytope {x : A x <= b} has no interior (it is flat: "
                             "some constraints force equalities); partition a lower-"
                             "dimensional slice instead")
    lo, hi = np.empty(d), np.empty(d)
    for i in range(d):
        for sign, out in ((1.0, lo), (-1.0, hi)):
            c = np.zeros(d)
            c[i] = sign
            res = linprog(c, A_ub=a, b_ub=b, bounds=[(None, None)] * d, method="highs")
            if res.status == 3 or cheb.status == 3:
                raise MaxAffineError(f"the polytope {{x : A x <= b}} is unbounded (in "
                                     f"coordinate {i}); add constraints that bound it")
            if res.status != 0:
                raise MaxAffineError(f"the polytope's bounds could not be found: "
                                     f"{res.message}")
            out[i] = res.x[i]
    pad = 1e-9 * np.maximum(1.0, hi - lo)  # the box strictly contains the polytope
    return lo - pad, hi + pad


def _graph_for(model: nn.Module | SplineGraph, d: int, dtype: torch.dtype) -> SplineGraph:
    try:
        graph = _graph_in(model, torch.zeros((1, d), dtype=dtype), dtype)
    except MaxAffineError as err:
        if type(err) is not MaxAffineError:
            raise
        raise MaxAffineError(f"the domain has {d} coordinates but the model does not take "
                             f"inputs of shape ({d},) ({err}); give lower and upper with one "
                             "value per input coordinate") from err
    if graph.input_dim != d:
        raise MaxAffineError(f"the domain has {d} coordinates but the model's inputs have "
                             f"{graph.input_dim}")
    check_parameters(graph)
    return graph


def _complex(graph: SplineGraph, lattice: Lattice, dtype: torch.dtype, rel_tol: float,
             max_regions: int, progress: bool, t0: float,
             constraints: tuple[np.ndarray, np.ndarray] | None) -> Complex:
    packed = [np.zeros((lattice.num_cells, 0), dtype=np.uint8)]
    upstream = 0.0
    bar = tqdm(total=len(graph.layers), desc="partition_box", disable=not progress,
               leave=False)
    for layer in graph.layers:
        upstream = _cut_layer(graph, layer, lattice, packed, dtype, rel_tol, upstream,
                              max_regions)
        bar.update(1)
        bar.set_postfix(regions=lattice.num_cells, vertices=lattice.nv)
    bar.close()
    layout = tuple((layer.name, tuple(layer.code_shape), layer.num_pieces, layer.bits_per_unit)
                   for layer in graph.layers)
    lattice.carry = np.zeros((lattice.nv, 0))
    cx = Complex(
        _lattice=lattice, packed=torch.from_numpy(np.concatenate(packed, 1)),
        code_layout=layout, graph=graph,
        tol=rel_tol, constraints=constraints, seconds=time.perf_counter() - t0)
    _ = cx.vertex_outputs  # the outputs at the vertices, checked for overflow now
    return cx


def _cut_layer(graph: SplineGraph, layer: Layer, lattice: Lattice, packed: list[np.ndarray],
               dtype: torch.dtype, rel_tol: float, upstream: float, max_regions: int) -> float:
    """Cut every cell along the layer's boundaries and append its units' codes to
    ``packed``; returns the largest |value| of the layer's inputs so far."""
    with torch.no_grad():
        ev = graph.run(torch.from_numpy(lattice.x[:1]).to(dtype).reshape(-1, *graph.input_shape),
                       record=True, until=layer.name)
        desc = layer.rule.boundary(*ev.inputs[layer.name])
    if isinstance(desc, ops.Windows):
        raise MaxAffineError(
            f"{layer.name}: partition_box cuts along hyperplanes (ReLU, leaky ReLU, abs, "
            "hardtanh, elementwise splines, maximum/minimum of two); the maxima over "
            "windows of this layer (max-pooling) are not supported at full dimension yet: "
            "use partition_plane on a 2-D slice")
    pos, neg = desc.pos.numpy(), desc.neg.numpy()
    level = desc.level.double().numpy()
    n_lines = pos.shape[0]
    units = layer.num_units
    per = n_lines // max(1, units)  # lines per unit (unit-major)
    # lines cut per batch: as many as a budget of values at the vertices allows, whole
    # units, 8 of them at least (so each batch's packed codes fill whole bytes)
    group = 8 * max(1, per)
    per_chunk = max(group, int(_VALUES_BUDGET // max(1, lattice.nv)) // group * group)
    origin = np.arange(lattice.num_cells)  # each cell's cell at the layer's start
    codes = np.zeros((lattice.num_cells, 0), dtype=np.uint8)  # this layer's, packed
    col_max: np.ndarray | None = None
    start = 0
    while start < n_lines:
        # the lines' values at the vertices, written straight into the lattice's buffer
        # (interpolated there at the vertices the cuts make); the next batch's are
        # computed afresh at all vertices (exact: the network is continuous). The first
        # pass also reads each column's range on the domain: the tolerances' scale.
        stop = min(n_lines, start + per_chunk)
        sel = np.arange(start, stop)
        first = col_max is None
        if first:
            col_max = np.zeros(layer.rule.columns(*ev.inputs[layer.name]).shape[1])
        _line_values(graph, lattice.x, dtype, layer, pos[sel], neg[sel], level[sel],
                     lattice.line_buffer(sel.shape[0]), col_max if first else None)
        if first:
            if not np.isfinite(col_max).all():
                raise MaxAffineError(f"values of {layer.name} overflow on this domain: "
                                     "scale the model's weights or the domain down")
            scale = np.maximum(col_max, upstream)
            tol = rel_tol * (scale[pos] + np.where(neg >= 0, scale[np.maximum(neg, 0)], 0.0)
                             + np.abs(level))
        lattice.begin_bits(tol[sel])
        chunk_origin = np.arange(lattice.num_cells)
        done = sel.shape[0]
        for j in range(sel.shape[0]):
            _, minus = lattice.cut_line(j)
            cut = np.flatnonzero(minus >= 0)
            if cut.shape[0]:
                chunk_origin = np.concatenate([chunk_origin, chunk_origin[cut]])
            if j % 16 == 15:
                lattice.compact()
            if lattice.num_cells > max_regions:
                raise MaxAffineError(f"more than max_regions={max_regions} regions at "
                                     f"{layer.name}; shrink the domain or raise max_regions")
            if ((j + 1) % group == 0 and j + 1 < done
                    and lattice.nv * sel.shape[0] > 2 * _VALUES_BUDGET):
                done = j + 1  # the cuts multiplied the vertices: end the batch here
                break
        stop = start + done
        origin = origin[chunk_origin]
        # each cell lies on one side of each line: its side is whether it has a vertex
        # strictly on the positive side; a unit's code counts its positive lines
        code = lattice.positive()[:, :done].reshape(lattice.num_cells, -1, per).sum(2) \
            + desc.base
        code_t = torch.from_numpy(code.astype(np.uint8 if layer.num_pieces <= 256
                                              else np.int64))
        codes = np.concatenate([codes[chunk_origin],
                                pack([code_t], [layer.bits_per_unit]).numpy()], 1)
        start = stop
    for i, p in enumerate(packed):
        packed[i] = p[origin]
    packed.append(codes)
    return max(upstream, float(col_max.max()) if col_max is not None and col_max.size
               else upstream)

"""Exact partitions of input space into the regions of a max-affine spline network.

The VQ codes of a MASO network partition input space into convex regions
(Balestriero & Baraniuk, "A Spline Theory of Deep Networks", ICML 2018, sec. 5;
Balestriero et al., "The Geometry of Deep Networks: Power Diagram
Subdivision", NeurIPS 2019, Thm. 3: layer by layer, each region of layers
1..l-1 is subdivided by layer l).  We compute that partition exactly on a
segment (:func:`partition_segment`) and on a convex polygon of a 2-D plane
(:func:`partition_plane`), layer by layer:

1. The network is continuous, so each nonlinearity's pre-activation at every
   vertex of the current partition comes from one plain batched forward pass.
2. Inside a face (of the layer's start) the pre-activation is affine, so the
   face's boundaries of this layer are lines: ``z_k = breakpoint`` (ReLU, leaky
   ReLU, PReLU, abs: 0; Hardtanh: both bounds), ``a = b`` (``torch.maximum``), or,
   for max-pooling, the ties ``e_a = e_b`` of two window entries that can both be
   the window's maximum in the face; pieces of one region split by ties of
   non-maximal entries are merged at the end of the layer.
3. Every face is cut by the lines crossing it, all faces in lockstep (step i
   cuts each face by its own i-th line; no Python loop over faces or units:
   the batch's step loop is compiled, :mod:`maxaffine._kernels`).
   A new vertex is keyed by (the layer-start edge or chord it splits, the line),
   so the faces on both sides of an edge share it whatever order they are cut
   in: the subdivision stays conforming (:mod:`maxaffine._planar`).

Each face's codes are read off the sides of the lines at its vertices; the
output's affine map on a face is fit through the outputs at its vertices (exact:
the output is affine there).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import ops
from ._arguments import check_tensor, integer, number
from ._autodiff import jacobian
from ._planar import Mesh, _Prefault, clip_halfplanes, unpack_bits
from .errors import MaxAffineError, MaxAffineTypeError, MaxAffineWarning, UnsupportedOperation
from .graph import SplineGraph, Unit, as_graph
from .vq import Codes, codes_of, pack, unpack

# ------------------------------------------------------------------------ slices


@dataclass
class Slice:
    """A convex polygon of a 2-D plane of input space: ``x(s, t) = origin + s u + t v``.

    ``bounds`` (K, 2): the polygon's corners in slice coordinates (s, t), any
    orientation (stored counter-clockwise); ``anchors`` (A, 2): slice coordinates
    of the inputs the slice was built from (marked in plots).
    """

    origin: Tensor
    u: Tensor
    v: Tensor
    bounds: Tensor
    anchors: Tensor = field(default_factory=lambda: torch.zeros(0, 2))

    def __post_init__(self) -> None:
        for name in ("origin", "u", "v"):
            check_tensor(getattr(self, name), name)
        if not (self.origin.shape == self.u.shape == self.v.shape):
            raise MaxAffineError(
                f"origin, u, v must have the same shape (one input), got "
                f"{tuple(self.origin.shape)}, {tuple(self.u.shape)}, {tuple(self.v.shape)}"
            )
        u, v = self.u.flatten().double(), self.v.flatten().double()
        gram = torch.stack([torch.stack([u @ u, u @ v]), torch.stack([u @ v, v @ v])])
        # sin^2 of the angle between u and v, against the inputs' own precision
        limit = max(1e-12, (64 * _eps(self.u, self.v)) ** 2)
        if float(torch.linalg.det(gram)) <= limit * float(u @ u) * float(v @ v):
            raise MaxAffineError(
                "u and v are (nearly) parallel at the precision of their dtype "
                f"({self.u.dtype}): they do not span a plane")
        b = _polygon(self.bounds, "bounds")
        # shape tests on the polygon scaled to unit size (no overflow, no cancellation)
        unit = (b - b[0]) / _extent(b)
        area = _shoelace(unit)
        if area < 0:
            b, unit, area = b.flip(0), unit.flip(0), -area
        if area <= 1e-12:
            raise MaxAffineError("the domain polygon has zero area")
        nxt, nxt2 = unit.roll(-1, 0), unit.roll(-2, 0)
        turn = ((nxt - unit)[:, 0] * (nxt2 - nxt)[:, 1]
                - (nxt - unit)[:, 1] * (nxt2 - nxt)[:, 0])
        if bool((turn < -1e-12).any()):
            raise MaxAffineError("the domain polygon must be convex (split a non-convex one)")
        self.bounds = b
        self.anchors = torch.as_tensor(self.anchors, dtype=torch.float64).reshape(-1, 2)

    @classmethod
    def through(cls, x1: Tensor, x2: Tensor, x3: Tensor, *, shape: str = "box",
                pad: float = 0.15) -> Slice:
        """The plane through three inputs, with an orthonormal basis (so areas and
        angles are those of input space). ``shape``: ``"triangle"`` (the three
        inputs' triangle) or ``"box"`` (their bounding rectangle, padded by ``pad``
        times its size on each side)."""
        for name, x in (("x1", x1), ("x2", x2), ("x3", x3)):
            check_tensor(x, name)
        if not (x1.shape == x2.shape == x3.shape):
            raise MaxAffineError("x1, x2, x3 must have the same shape (single inputs, no batch)")
        if isinstance(pad, bool) or not isinstance(pad, int | float):
            raise MaxAffineTypeError(f"pad must be a number, got {type(pad).__name__}")
        if not (math.isfinite(pad) and pad >= 0):
            raise MaxAffineError(f"pad must be a finite number >= 0 (a fraction of the box's "
                                 f"size added on each side), got {pad!r}")
        x1d, x2d, x3d = x1.double(), x2.double(), x3.double()
        a, w = x2d - x1d, x3d - x1d
        na = float(a.norm())
        if na == 0:
            raise MaxAffineError("x1 and x2 are equal: the three points span no plane")
        u = a / na
        proj = float((w * u).sum())
        vv = w - proj * u
        nv = float(vv.norm())
        # rounding of the inputs themselves (e.g. a float32 midpoint) is not a plane
        size = max(float(x.abs().max()) for x in (x1d, x2d, x3d))
        if nv <= max(1e-9 * max(na, float(w.norm())), 64 * _eps(x1, x2, x3) * size):
            raise MaxAffineError(
                "x1, x2, x3 are collinear at the precision of their dtype "
                f"({x1.dtype}): they span no plane")
        anchors = torch.tensor([[0.0, 0.0], [na, 0.0], [proj, nv]], dtype=torch.float64)
        if shape == "triangle":
            bounds = anchors.clone()
        elif shape == "box":
            lo, hi = anchors.min(0).values, anchors.max(0).values
            m = pad * (hi - lo).max()
            lo, hi = lo - m, hi + m
            bounds = torch.tensor([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]],
                                   [lo[0], hi[1]]], dtype=torch.float64)
        else:
            raise MaxAffineError(f"shape must be 'triangle' or 'box', got {shape!r}")
        return cls(x1d, u, vv / nv, bounds, anchors)

    @classmethod
    def square(cls, low: float = -1.0, high: float = 1.0) -> Slice:
        """The square [low, high]^2 of a model with 2-D inputs."""
        low, high = number(low, "low"), number(high, "high")
        if not low < high:
            raise MaxAffineError(f"the square [low, high]^2 needs low < high, got {low!r}, "
                                 f"{high!r}")
        e = torch.eye(2, dtype=torch.float64)
        b = torch.tensor([[low, low], [high, low], [high, high], [low, high]],
                         dtype=torch.float64)
        return cls(torch.zeros(2, dtype=torch.float64), e[0], e[1], b)

    def zoom(self, center: int | tuple[float, float], radius: float) -> Slice:
        """The same plane restricted to the square of half-width ``radius`` around
        ``center``: an anchor's index, or slice coordinates (s, t)."""
        if isinstance(radius, bool) or not isinstance(radius, int | float):
            raise MaxAffineTypeError(f"radius must be a number, got {type(radius).__name__}")
        if not (math.isfinite(radius) and radius > 0):
            raise MaxAffineError(f"radius must be a positive finite number, got {radius!r}")
        if isinstance(center, int) and not isinstance(center, bool):
            if not -len(self.anchors) <= center < len(self.anchors):
                raise MaxAffineError(
                    f"center={center} is not an anchor of this slice: it has "
                    f"{len(self.anchors)} anchor(s); pass an index below that or slice "
                    "coordinates (s, t)")
            c = self.anchors[center]
        else:
            try:
                c = torch.as_tensor(center, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as err:
                raise MaxAffineTypeError(
                    f"center must be an anchor index or slice coordinates (s, t), got "
                    f"{center!r}") from err
            if c.shape != (2,) or not bool(torch.isfinite(c).all()):
                raise MaxAffineError(
                    f"center must be an anchor index or finite slice coordinates (s, t), got "
                    f"{center!r}")
        sq = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]],
                          dtype=torch.float64)
        return Slice(self.origin, self.u, self.v, c + radius * sq, self.anchors)

    @property
    def area(self) -> float:
        return _shoelace(self.bounds)

    def to_input(self, st: Tensor) -> Tensor:
        """Points (N, 2) of slice coordinates as inputs (N, *input_shape)."""
        check_tensor(st, "st")
        if st.dim() != 2 or st.shape[1] != 2:
            raise MaxAffineError(f"st must be points (N, 2) of slice coordinates, got shape "
                                 f"{tuple(st.shape)}")
        o, u, v = (t.to(st.dtype) for t in (self.origin, self.u, self.v))
        shape = (st.shape[0], *o.shape)
        return (o.reshape(1, -1) + st[:, :1] * u.reshape(1, -1)
                + st[:, 1:] * v.reshape(1, -1)).reshape(shape)


def _shoelace(p: Tensor) -> float:
    """Signed area of a polygon (K, 2), from its first corner (exact far from 0)."""
    p = p - p[:1]
    q = p.roll(-1, 0)
    return 0.5 * float((p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]).sum())


def _eps(*xs: Tensor) -> float:
    """Machine epsilon of the least precise of the tensors' dtypes."""
    return max(torch.finfo(x.dtype).eps for x in xs)


def _polygon(corners: Any, what: str) -> Tensor:
    """``corners`` as a float64 polygon (K >= 3, 2), finite, of a size float64
    geometry can handle (its areas must not overflow)."""
    try:
        b = torch.as_tensor(corners, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise MaxAffineTypeError(
            f"{what} must be the polygon's corners (K, 2): a tensor or nested lists of "
            f"numbers, got {type(corners).__name__} {corners!r}") from err
    check_tensor(b, what)
    if b.dim() != 2 or b.shape[1] != 2 or b.shape[0] < 3:
        raise MaxAffineError(f"{what} must be (K >= 3, 2) corners, got {tuple(b.shape)}")
    if float(b.abs().max()) > 1e150:
        raise MaxAffineError(
            f"{what} reach {float(b.abs().max()):.3g}: areas and cross products of "
            "coordinates beyond 1e150 overflow float64; rescale the plane (e.g. a slice "
            "with a longer u, v) or partition a smaller domain")
    return b


def _extent(b: Tensor) -> float:
    """The polygon's largest side of its bounding box (> 0)."""
    extent = float((b.max(0).values - b.min(0).values).max())
    if extent == 0:
        raise MaxAffineError("the domain polygon has zero area")
    if extent < 1e-150:
        raise MaxAffineError(
            f"the domain polygon is {extent:.3g} wide: its areas underflow float64 "
            "(below 1e-150); scale the plane (e.g. a slice with a shorter u, v) or zoom less")
    return extent


def _indices(values: Any, n: int, what: str) -> Tensor:
    """``values`` as (k,) int64 indices into ``n`` items (negative from the end)."""
    try:
        idx = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as err:
        raise MaxAffineTypeError(f"{what} must be a list or tensor of indices, got "
                                 f"{type(values).__name__} {values!r}") from err
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise MaxAffineTypeError(f"{what} must be integer indices, got dtype {idx.dtype}")
    if idx.dim() > 1:
        raise MaxAffineError(f"{what} must be a flat list of indices, got shape "
                             f"{tuple(idx.shape)}")
    idx = idx.reshape(-1).long()
    bad = (idx < -n) | (idx >= n)
    if bool(bad.any()):
        raise MaxAffineError(f"{what}: index {int(idx[bad][0])} is out of range for {n} "
                             f"item(s) (valid: -{n} .. {n - 1})")
    return idx % max(n, 1)


def _as_slice(domain: Any, graph: SplineGraph) -> Slice:
    if isinstance(domain, Slice):
        if tuple(domain.origin.shape) != graph.input_shape:
            raise MaxAffineError(f"slice lives in inputs of shape {tuple(domain.origin.shape)} "
                                 f"but the model takes {graph.input_shape}")
        return domain
    poly = _polygon(domain, "domain")
    if graph.input_shape != (2,):
        raise MaxAffineError(
            f"a bare polygon is a domain only for models with 2-D inputs; this model takes "
            f"{graph.input_shape}: use Slice.through(x1, x2, x3) or Slice(origin, u, v, bounds)"
        )
    e = torch.eye(2, dtype=torch.float64)
    return Slice(torch.zeros(2, dtype=torch.float64), e[0], e[1], poly)


# --------------------------------------------------------------------- results


@dataclass
class Partition:
    """The exact partition of a 2-D slice into the network's regions.

    Geometry in slice coordinates (s, t): ``vertices`` (V, 2); ``faces`` (F, W)
    vertex ids counter-clockwise, -1 padded, with ``face_sizes``; ``edges`` (E, 2)
    with ``edge_faces`` (E, 2) (-1: the domain's boundary) and ``edge_layer`` (E,)
    (index into ``unit_names`` of the first layer whose codes differ across the
    edge: the layer that created it; -1 on the domain boundary).
    Per face: ``codes`` (packed, the :class:`maxaffine.Codes` convention; the
    unpacked ones in ``face_codes``, made on first use: they take a byte per
    unit and face), ``areas``, ``interior`` points, and the
    output's affine map ``f(s, t) = slopes @ (s, t) + offsets`` with ``slopes``
    (F, C, 2), ``offsets`` (F, C). ``decision_boundary`` (S, 2, 2) segments where
    the argmax class changes (or the scalar output is zero) with
    ``boundary_classes`` (S, 2) and ``boundary_faces`` (S,), the face of each,
    computed on first use. ``tol``: the relative tolerance used; ``unresolved``
    (F,) bools: faces that hold regions narrower than it (merged in; the face
    carries its interior point's code and map), ``lost_regions`` how many such
    regions were found (see :func:`partition_plane`).
    """

    domain: Slice
    vertices: Tensor
    faces: Tensor
    face_sizes: Tensor
    edges: Tensor
    edge_faces: Tensor
    edge_layer: Tensor
    codes: Tensor
    code_layout: tuple[tuple[str, tuple[int, ...], int, int], ...]  # name, shape, pieces, bits
    areas: Tensor
    interior: Tensor
    slopes: Tensor
    offsets: Tensor
    seconds: float = 0.0
    graph: SplineGraph | None = field(default=None, repr=False)
    tol: float = 0.0
    unresolved: Tensor | None = None
    lost_regions: int = 0

    def __post_init__(self) -> None:
        if self.unresolved is None:
            self.unresolved = torch.zeros(self.num_regions, dtype=torch.bool)

    @cached_property
    def _boundary(self) -> tuple[Tensor, Tensor, Tensor]:
        return _decision_boundary(self.vertices, self.faces, self.face_sizes, self.slopes,
                                  self.offsets)

    @property
    def decision_boundary(self) -> Tensor:
        """(S, 2, 2) segments where the argmax output changes (or the scalar output is
        zero); computed on first use."""
        return self._boundary[0]

    @property
    def boundary_classes(self) -> Tensor:
        """(S, 2) the two classes (low, high) on either side of each segment."""
        return self._boundary[1]

    @property
    def boundary_faces(self) -> Tensor:
        """(S,) the face each decision-boundary segment lies in."""
        return self._boundary[2]

    @property
    def num_regions(self) -> int:
        return self.faces.shape[0]

    @cached_property
    def face_codes(self) -> Codes:
        """The faces' codes unpacked, as a :class:`maxaffine.Codes`."""
        layout = self.code_layout
        names, shapes, pieces, bits = (tuple(x[i] for x in layout) for i in range(4))
        return Codes(names, unpack(self.codes, shapes, bits), pieces, bits, self.num_regions)

    @property
    def unit_names(self) -> tuple[str, ...]:
        return tuple(name for name, *_ in self.code_layout)

    def polygon(self, i: int) -> Tensor:
        """Corners (k, 2) of face ``i``, counter-clockwise."""
        i = integer(i, "i", minimum=-self.num_regions, maximum=self.num_regions - 1,
                    meaning=f"a face index; the partition has {self.num_regions} faces")
        return self.vertices[self.faces[i, : int(self.face_sizes[i])]]

    def predicted(self) -> Tensor:
        """(F,) argmax output on each face's interior point."""
        out = torch.einsum("fcd,fd->fc", self.slopes, self.interior) + self.offsets
        return out.argmax(1) if out.shape[1] > 1 else (out[:, 0] > 0).long()

    def class_cells(self) -> tuple[list[Tensor], Tensor]:
        """Regions split further by the decision boundary: polygons (list of (k, 2))
        and their class. Faces without a boundary inside are returned whole."""
        cells = _class_cells(self.vertices, self.faces, self.face_sizes, self.slopes,
                             self.offsets)
        whole = torch.ones(self.num_regions, dtype=torch.bool)
        whole[cells.face] = False
        idx = torch.nonzero(whole).flatten()
        bounds = cells.start.tolist()
        polys = [self.polygon(int(i)) for i in idx] + [
            cells.xy[bounds[m]: bounds[m + 1]].to(self.vertices.dtype)
            for m in range(cells.face.shape[0])]
        return polys, torch.cat([self.predicted()[idx], cells.cls])

    def layer_boundaries(self, layer: int | str) -> Tensor:
        """Segments (S, 2, 2) of the edges created by ``layer`` (index or name)."""
        names = self.unit_names
        if isinstance(layer, int) and not isinstance(layer, bool):
            if not -len(names) <= layer < len(names):
                raise MaxAffineError(f"layer {layer} out of range: the partition has "
                                     f"{len(names)} nonlinearities {names}")
            i = layer % len(names)
        elif layer in names:
            i = names.index(layer)
        else:
            raise MaxAffineError(f"no nonlinearity {layer!r}; the partition's are {names}")
        return self.vertices[self.edges[self.edge_layer == i]]

    def input_space_maps(self, faces: Tensor | None = None):
        """The output's affine map in *input space* on the given faces (default all):
        a :class:`maxaffine.AffineMap` at their interior points."""
        from .affine import affine_map

        if self.graph is None:
            raise MaxAffineError("this partition was loaded without its model")
        idx = (torch.arange(self.num_regions) if faces is None
               else _indices(faces, self.num_regions, "faces"))
        return affine_map(self.graph, self.domain.to_input(self.interior[idx]))

    def summary(self) -> dict[str, Any]:
        per_layer = torch.bincount(self.edge_layer + 1, minlength=len(self.unit_names) + 1)
        return {
            "regions": self.num_regions,
            "vertices": int(self.vertices.shape[0]),
            "edges": int(self.edges.shape[0]),
            "domain_area": self.domain.area,
            "area_sum": float(self.areas.sum()),
            "mean_area": float(self.areas.mean()),
            "decision_boundary_segments": int(self.decision_boundary.shape[0]),
            "decision_boundary_length": float(
                (self.decision_boundary[:, 1] - self.decision_boundary[:, 0]).norm(dim=1).sum()),
            "edges_per_layer": {n: int(per_layer[i + 1])
                                for i, n in enumerate(self.unit_names)},
            "tol": self.tol,
            "unresolved_faces": int(self.unresolved.sum()),
            "lost_regions": self.lost_regions,
            "seconds": self.seconds,
        }

    def plot(self, ax=None, color_by: str = "region", **kwargs: Any):
        """Draw the faces coloured by ``'region'``, ``'layer'`` (edges coloured by the
        layer that created them), ``'class'`` (predicted class) or ``'output'``
        (max output), with the decision boundary bold and the anchors marked;
        ``power=True`` adds each face's power-diagram centroid (projected)."""
        from ._plotting import plot_partition

        return plot_partition(self, ax=ax, color_by=color_by, **kwargs)

    def to_json(self) -> str:
        faces = [self.faces[i, : int(self.face_sizes[i])].tolist()
                 for i in range(self.num_regions)]
        return json.dumps({
            "summary": self.summary(),
            "unit_names": list(self.unit_names),
            "vertices": self.vertices.tolist(),
            "faces": faces,
            "codes": [bytes(r.tolist()).hex() for r in self.codes],
            "areas": self.areas.tolist(),
            "edges": self.edges.tolist(),
            "edge_layer": self.edge_layer.tolist(),
            "decision_boundary": self.decision_boundary.tolist(),
            "boundary_classes": self.boundary_classes.tolist(),
        })

    def save(self, path: str | Path) -> None:
        """Write JSON (``.json``), all tensors with torch (``.pt``) or numpy arrays
        (``.npz``, with the code layout as a JSON string)."""
        if not isinstance(path, str | os.PathLike):
            raise MaxAffineTypeError(f"path must be a str or a path, got "
                                     f"{type(path).__name__} {path!r}")
        path = Path(path)
        state = {k: v for k, v in self.__dict__.items()
                 if isinstance(v, Tensor) and not k.startswith("_")}
        if path.suffix == ".json":
            path.write_text(self.to_json())
        elif path.suffix == ".pt":
            state["code_layout"] = self.code_layout
            torch.save(state, path)
        elif path.suffix == ".npz":
            import numpy as np

            np.savez_compressed(path, code_layout=json.dumps(self.code_layout),
                                **{k: v.detach().numpy() for k, v in state.items()})
        else:
            raise MaxAffineError(f"save: unknown format {path.suffix!r} of {str(path)!r}; use "
                                 ".json, .pt or .npz")


@dataclass
class SegmentPartition:
    """The exact partition of the segment ``x0 + t (x1 - x0)``, t in [0, 1].

    ``breakpoints`` (P + 1,): 0 = t_0 < ... < t_P = 1; piece ``i`` is
    [t_i, t_{i+1}] with codes ``codes`` (per piece) and output
    ``f = offsets[i] + slopes[i] * t`` (both (P, C)).
    """

    x0: Tensor
    x1: Tensor
    breakpoints: Tensor
    codes: Codes
    slopes: Tensor
    offsets: Tensor

    @property
    def num_regions(self) -> int:
        return self.breakpoints.shape[0] - 1

    @property
    def lengths(self) -> Tensor:
        """Length of each piece in input space."""
        return self.breakpoints.diff() * float((self.x1 - self.x0).double().norm())

    def plot(self, ax=None, outputs: list[int] | None = None):
        """The outputs along the segment, with the region breakpoints."""
        import matplotlib.pyplot as plt

        n_out = self.slopes.shape[1]
        cols = (range(n_out) if outputs is None
                else _indices(outputs, n_out, "outputs").tolist())
        if ax is None:
            _, ax = plt.subplots(figsize=(7, 3))
        t = self.breakpoints.double()
        for c in cols:
            left = self.offsets[:, c] + self.slopes[:, c] * t[:-1]
            right = self.offsets[:, c] + self.slopes[:, c] * t[1:]
            ys = torch.cat([left[:1], right])
            ax.plot(t.numpy(), ys.detach().numpy(), lw=1, label=f"output {c}")
        for b in t[1:-1]:
            ax.axvline(float(b), color="0.85", lw=0.5, zorder=0)
        ax.set_xlabel("t")
        ax.set_title(f"{self.num_regions} regions along the segment")
        return ax


# ------------------------------------------------------------------ the planes


def partition_plane(
    model: nn.Module | SplineGraph,
    domain: Slice | Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    tol: float | None = None,
    progress: bool = True,
    max_regions: int = 5_000_000,
) -> Partition:
    """The exact partition of a 2-D slice of input space into the network's regions.

    ``domain``: a :class:`Slice` (e.g. ``Slice.through(x1, x2, x3)``), or a convex
    polygon (K, 2) for a model with 2-D inputs. Geometry runs in ``dtype``
    (float64 by default, or float32; a model of another dtype is evaluated through
    a converted copy), in coordinates centred on the domain when it lies far from
    the slice's origin. ``tol``: values within ``tol`` (relative to each unit's
    range on the domain) of a boundary count as on it (default 1e-13 in float64,
    1e-5 in float32; at least 32 machine epsilons, at most 1e-3).

    Regions thinner than the tolerance (about ``tol`` times the domain's size)
    cannot be separated: where a boundary passes that close to a vertex without
    cutting, the faces there are re-evaluated at their interior points (so every
    face's code and map are its interior point's), the places are re-partitioned
    in small windows to count what was merged, and a :class:`MaxAffineWarning`
    says how many regions, where, and how to resolve them (``Partition.unresolved``
    marks the faces that hold them).
    """
    t0 = time.perf_counter()
    rel_tol = _tolerance(tol, dtype)
    if isinstance(max_regions, bool) or not isinstance(max_regions, int) or max_regions < 1:
        raise MaxAffineError(f"max_regions must be a positive int, got {max_regions!r}")
    graph, sl = _graph_and_slice(model, domain, dtype)
    part = _partition(graph, sl, dtype, rel_tol, max_regions, progress, check=True)
    part.seconds = time.perf_counter() - t0
    return part


def _tolerance(tol: Any, dtype: torch.dtype) -> float:
    """The relative tolerance of a partition in ``dtype``, validated."""
    if dtype not in (torch.float64, torch.float32):
        raise MaxAffineError(
            f"dtype={dtype}: partition geometry runs in torch.float64 (default, exact to "
            "~1e-13 of the domain) or torch.float32 (faster, ~1e-5); half precision "
            "cannot separate regions reliably")
    default = 1e-13 if dtype == torch.float64 else 1e-5
    if tol is None:
        return default
    if isinstance(tol, bool) or not isinstance(tol, int | float):
        raise MaxAffineTypeError(f"tol must be a float, got {type(tol).__name__} {tol!r}")
    low, high = 32 * torch.finfo(dtype).eps, 1e-3
    if not low <= float(tol) <= high:  # also refuses NaN
        raise MaxAffineError(
            f"tol={tol!r} is outside [{low:.2g}, {high:g}] for {dtype}: it is relative to "
            "each unit's range on the domain; below 32 machine epsilons rounding errors "
            "re-cross the boundaries they were cut along (the cuts would not end), above "
            f"1e-3 whole regions are merged. The default is {default:g}")
    return float(tol)


def _graph_and_slice(model: nn.Module | SplineGraph, domain: Any, dtype: torch.dtype
                     ) -> tuple[SplineGraph, Slice]:
    """The model's graph in ``dtype`` and the domain as a :class:`Slice` of its inputs."""
    if isinstance(domain, Slice):
        example = domain.origin.to(dtype).unsqueeze(0)
        try:
            graph = _graph_in(model, example, dtype)
        except MaxAffineError as err:
            if isinstance(err, UnsupportedOperation):
                raise
            raise MaxAffineError(
                f"domain: the slice lives in inputs of shape {tuple(domain.origin.shape)}, "
                f"which the model does not take ({err}); build the slice from inputs of "
                "the model's own shape, e.g. Slice.through(x[0], x[1], x[2])") from err
    else:
        _polygon(domain, "domain")  # a clear error before any tracing
        try:
            graph = _graph_in(model, torch.zeros((1, 2), dtype=dtype), dtype)
        except MaxAffineError as err:
            if isinstance(err, UnsupportedOperation):
                raise
            raise MaxAffineError(
                "a bare polygon is a domain only for models with 2-D inputs; use "
                "Slice.through(x1, x2, x3) or Slice(origin, u, v, bounds)") from err
    sl = _as_slice(domain, graph)
    _refuse_batch(graph, sl.origin, "the slice's points (Slice.through's x1, x2, x3)")
    return graph, sl


def _refuse_batch(graph: SplineGraph, x: Tensor, what: str) -> None:
    """A batch passed where single inputs are expected (``x[:1]`` instead of ``x[0]``)
    shows as a per-sample input and output that share a leading axis the model
    only broadcasts over (Linear layers on (N, d) rows)."""
    ins, outs = graph.input_shape, graph.output_shape
    if len(ins) >= 2 and len(outs) >= 2 and ins[0] == outs[0]:
        raise MaxAffineError(
            f"{what} have shape {tuple(x.shape)}, which the model treats as {ins[0]} "
            f"separate rows (its output per point is {outs}): that looks like a batch. "
            "Pass single inputs, e.g. x[0] rather than x[:1]")


def _partition(graph: SplineGraph, sl: Slice, dtype: torch.dtype, rel_tol: float,
               max_regions: int, progress: bool, check: bool) -> Partition:
    """:func:`partition_plane` on a traced graph; ``check``: look for regions below
    the tolerance (not inside those checks' own windows)."""
    _check_parameters(graph)
    shift, local = _centred(sl)
    mesh = Mesh(local.bounds.to(dtype))
    mesh.add_payload(torch.zeros((1, 1), dtype=torch.uint8))  # column 0: flags (_FLAG)
    values = _VertexValues(graph, local, mesh)
    suspects: list[Tensor] = []  # vertices a boundary passed within the tolerance of
    bar = tqdm(total=len(graph.units), desc="partition", disable=not progress, leave=False)
    extent = float((local.bounds.max(0).values - local.bounds.min(0).values).max())
    for index, unit in enumerate(graph.units):
        mesh.mark_layer()
        if _cut_unit(mesh, values, index, unit, rel_tol, max_regions, suspects):
            # windows: ties of different pairs of entries can be the same line in a
            # face (two dead entries, both 0; padding of equal constants): vertices
            # made for it on the two sides of an edge then coincide (to rounding).
            # Weld them (within rel_tol of the domain's size), then merge the pieces
            # of regions that ties of non-maximal entries split.
            mesh.weld(rel_tol * extent)
            _merge_regions(mesh, graph, unit)
        bar.update(1)
        bar.set_postfix(regions=mesh.nf)
    bar.close()
    outputs = values.outputs()
    _check_finite(_abs_max(outputs), "the output", mesh.xy.dtype)
    mesh.drop_vals()  # the last layer's values are not needed any more
    near = torch.cat(suspects) if suspects else torch.zeros((0, 2), dtype=mesh.xy.dtype)
    part, places = _finish(mesh, graph, sl, local, shift, outputs, rel_tol,
                           near if check else None)
    if places is not None:
        _warn_unresolved(part, places, shift, rel_tol, dtype, stacklevel=4)
    return part


def _check_parameters(graph: SplineGraph) -> None:
    from . import graph as graph_module

    checker = getattr(graph_module, "check_parameters", None)
    if checker is not None:
        checker(graph)


def _centred(sl: Slice) -> tuple[Tensor, Slice]:
    """The slice with coordinates centred on its domain when that lies far from the
    slice's origin (a small window at 1e8: vertices, values and areas then keep
    their precision); returns the shift (2,) and the slice to compute in."""
    b = sl.bounds
    extent = float((b.max(0).values - b.min(0).values).max())
    if float(b.mean(0).abs().max()) <= extent:
        return torch.zeros(2, dtype=b.dtype), sl
    shift = b[0].clone()  # bounds - b[0] are exact (Sterbenz) for a far, small window
    origin = (sl.origin.double() + float(shift[0]) * sl.u.double()
              + float(shift[1]) * sl.v.double())
    return shift, Slice(origin, sl.u, sl.v, b - shift, sl.anchors - shift)


def _graph_in(model: nn.Module | SplineGraph, example: Tensor, dtype: torch.dtype
              ) -> SplineGraph:
    """The spline graph of ``model`` evaluated in ``dtype`` (a converted copy if needed)."""
    base = model.model if isinstance(model, SplineGraph) else model
    if not isinstance(base, nn.Module):
        raise MaxAffineError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    param = next((p for p in base.parameters() if p.is_floating_point()), None)
    if param is not None and param.dtype != dtype:
        base = copy.deepcopy(base).to(dtype)
    elif isinstance(model, SplineGraph):
        return model
    return as_graph(base, example)


_RESUME_LIMIT = 32768  # values per vertex a paused evaluation may keep (else recompute)
_RESUME_BUDGET = 8e7  # values a paused evaluation may hold (est.); beyond: recompute
_CHUNK_VALUES = 1 << 20  # values per vertex x vertices of one chunk of a resumed evaluation


class _VertexValues:
    """The network's values at the mesh's vertices, as each unit's cuts need them.

    Two strategies, same results. *Resume* (small layers, e.g. MLPs): keep the
    values of the nodes a paused evaluation needs as extra columns of the mesh
    (interpolated at new vertices, which is exact since those nodes are affine
    on every face so far) and run only the steps between consecutive units.
    *Recompute* (wide layers, e.g. CNN feature maps): a chunked forward pass
    from the input at all vertices, per chunk of units.
    """

    def __init__(self, graph: SplineGraph, sl: Slice, mesh: Mesh):
        self.graph, self.sl, self.mesh = graph, sl, mesh
        self.pauses = graph.pauses
        self.sizes = [p.size for p in self.pauses]
        self.resume = bool(self.sizes) and max(self.sizes) <= _RESUME_LIMIT
        self.start_nv = mesh.nv  # vertices at the current layer's start
        # (name, per-sample shape) of the live columns
        self.live: tuple[tuple[str, tuple[int, ...]], ...] = ()
        self.ncols = 0  # the first ncols columns are the current cut-function inputs
        self._resumed_scale: Tensor | None = None  # per column of the last resume: max |v|
        self._scale: Tensor | None = None  # the same, while those are the cut columns
        # the largest |value| of any earlier unit's inputs: values computed from them
        # (interpolated, or through forward passes) are rounded to ~eps of it, however
        # small their own range (e.g. after a clamp)
        self.upstream = 0.0
        self.offset = 0  # where the live columns start
        self.output: Tensor | None = None
        if self.resume:
            self._resume({"": sl.to_input(mesh.xy)}, None, 0)

    def _resume(self, env: dict[str, Tensor], start: str | None, pause: int | None) -> None:
        """Run the evaluation paused before nonlinearity ``start`` (live values ``env``
        by name; ``start`` None: ``env[""]`` is the input) to the pause before unit
        ``pause`` (``None``: to the output) at every vertex, and keep the live values
        there as the mesh's columns, the unit's own inputs first (so they double as
        its cut-function inputs). Runs in chunks of vertices, each written straight
        into the new columns: temporaries stay small (reused, in cache) instead of
        a fresh (V, width) tensor per op, whose first touch costs as much as the
        arithmetic here."""
        nv, graph = self.mesh.nv, self.graph
        if pause is None:
            live: tuple = ()
            dest = torch.empty((nv, graph.num_outputs), dtype=self.mesh.xy.dtype)
            width = graph.num_outputs
        else:
            live = self.live = self.pauses[pause].live
            width = self.sizes[pause]
            # the new values may replace the old ones in the same buffer: a chunk's
            # rows are read (into the walk's temporaries) before they are written
            dest = self.mesh.fresh_vals(width, reuse=True)
        widest = max([width] + [v[:1].numel() for v in env.values()])
        rows = max(256, _CHUNK_VALUES // max(1, widest))
        stop = None if pause is None else self.pauses[pause].layer
        scale = torch.zeros(width, dtype=dest.dtype)
        with torch.no_grad():
            for a in range(0, nv, rows):
                b = min(nv, a + rows)
                part = {n: v[a:b] for n, v in env.items()}
                ev = graph.run(part[""] if start is None else part, start=start, stop=stop,
                               keep_codes=False, in_place=True)
                if pause is None:
                    dest[a:b] = ev.output.reshape(b - a, -1)
                    continue
                flat = [ev.values[n].reshape(b - a, -1) for n, _ in live]
                if any(_same_memory(f, dest) for f in flat):
                    # a value kept from the last pause, in the buffer being rewritten:
                    # read them all before writing any
                    dest[a:b] = torch.cat(flat, 1)
                else:
                    at = 0
                    for f in flat:
                        dest[a:b, at: at + f.shape[1]] = f
                        at += f.shape[1]
                # the cuts' tolerances scale with each column's range: read it while
                # the chunk is in cache
                torch.maximum(scale, _abs_max(dest[a:b]), out=scale)
        if pause is None:
            self.output = dest
        self._resumed_scale = None if pause is None else scale
        self.ncols = self.offset = 0

    def _env(self) -> dict[str, Tensor]:
        vals, env, at = self.mesh.vals[:, self.offset:], {}, 0
        for name, shape in self.live:
            k = math.prod(shape)
            env[name] = vals[:, at: at + k].reshape((-1, *shape))
            at += k
        return env

    def columns(self, index: int, unit: Unit, sel: Tensor, desc: ops.Lines | ops.Windows
                ) -> ops.Lines | ops.Windows:
        """Put the columns the boundaries of units ``sel`` read (the rule's
        :meth:`~maxaffine.ops.Nonlinearity.columns`) first in the mesh, and return
        those boundaries in terms of them (``desc`` restricted to ``sel``)."""
        mesh, graph = self.mesh, self.graph
        self._scale = None
        if self.resume and desc.direct:
            env = self._env()
            nodes = list(self.pauses[index].inputs)
            ins = tuple(env[n] for n in nodes)
            shapes = {tuple(t.shape) for t in ins}
            in_place = (len(shapes) == 1 and len(set(nodes)) == len(nodes)
                        and [n for n, _ in self.live[: len(nodes)]] == nodes
                        and sel.shape[0] == unit.num_units)
            if in_place:  # the columns are the first live columns already: read them
                self.ncols, self.offset = sum(t[:1].numel() for t in ins), 0  # there
                self._scale = self._resumed_scale
                return desc
            local, used = _restrict(desc, sel)
            cols = torch.cat([t.reshape(t.shape[0], -1) for t in ins], 1)[:, used]
            mesh.set_vals(torch.cat([cols, mesh.vals[:, self.offset:]], 1))
            self.ncols = self.offset = cols.shape[1]
            return local
        # columns that are not the op's inputs, or recompute mode: forward passes
        local, used = _restrict(desc, sel)
        if self.resume:  # the live values stay, after the new columns
            cols = torch.empty((mesh.nv, used.shape[0]), dtype=mesh.xy.dtype)
            for part, ev in _evaluate(graph, self.sl, mesh.xy, unit.name):
                cols[part] = unit.rule.columns(*ev.inputs[unit.name])[:, used]
            mesh.set_vals(torch.cat([cols, mesh.vals[:, self.offset:]], 1))
            self.ncols = self.offset = cols.shape[1]
            return local
        vals = mesh.fresh_vals(used.shape[0])  # written in place: one copy of the values
        for part, ev in _evaluate(graph, self.sl, mesh.xy, unit.name):
            vals[part] = unit.rule.columns(*ev.inputs[unit.name])[:, used]
        self.ncols = used.shape[0]
        return local

    def scale(self) -> Tensor:
        """(ncols,) the largest absolute value of each cut-function input column at
        the vertices (kept from the last resume when those are its columns)."""
        if self._scale is not None and self.offset == 0:
            return self._scale[: self.ncols].clone()
        return _abs_max(self.mesh.vals[:, : self.ncols])

    def advance(self, index: int) -> None:
        """After unit ``index`` is cut: move the paused evaluation to the next unit."""
        if not self.resume:
            return
        growth = min(4.0, self.mesh.nv / max(1, self.start_nv))
        self.start_nv = self.mesh.nv
        if index + 1 < len(self.pauses) and (
                growth * self.mesh.nv * self.sizes[index + 1] > _RESUME_BUDGET):
            # the next layer's values at all vertices (whose number its cuts multiply,
            # as the last layer's did, up to 4x) would outgrow the budget: recompute
            # them in chunks from the input
            self.resume = False
            self.mesh.drop_vals()
            return
        self._resume(self._env(), self.pauses[index].layer,
                     index + 1 if index + 1 < len(self.pauses) else None)

    def outputs(self) -> Tensor:
        """(V, C) network outputs at every vertex."""
        if self.resume and self.pauses:
            assert self.output is not None
            return self.output
        out = torch.empty((self.mesh.nv, self.graph.num_outputs), dtype=self.mesh.xy.dtype)
        for part, ev in _evaluate(self.graph, self.sl, self.mesh.xy, None, record=False):
            out[part] = ev.output.reshape(ev.output.shape[0], -1)
        return out


def _same_memory(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _evaluate(graph: SplineGraph, sl: Slice, st: Tensor, until: str | None,
              record: bool = True):
    """Forward passes at slice points, chunked so activations fit in memory.
    Yields ``(slice of st, Evaluation)``."""
    per = max(1, graph.input_dim + sum(u.num_units for u in graph.units) * 3)
    chunk = max(256, int(1e7 // per))
    with torch.no_grad():
        for i in range(0, st.shape[0], chunk):
            yield slice(i, i + chunk), graph.run(sl.to_input(st[i:i + chunk]),
                                                 record=record, until=until)


def _restrict(desc: ops.Lines | ops.Windows, sel: Tensor
              ) -> tuple[ops.Lines | ops.Windows, Tensor]:
    """The boundaries of units ``sel`` (consecutive) over the columns they read:
    returns them in terms of those columns, and which of the rule's columns they
    are (``used``, in order). Windows read their entries unit-major (an absent
    entry reads column 0, never compared)."""
    if isinstance(desc, ops.Windows):
        t = desc.table[sel]
        k, r = t.shape
        local = torch.where(t >= 0, torch.arange(k * r).reshape(k, r), -1)
        return ops.Windows(local), t.clamp(min=0).flatten()
    per = desc.per_unit
    lo, hi = int(sel[0]) * per, (int(sel[-1]) + 1) * per
    pos, neg = desc.pos[lo:hi], desc.neg[lo:hi]
    used = torch.unique(torch.cat([pos, neg[neg >= 0]]))
    local_neg = torch.where(neg >= 0, torch.searchsorted(used, neg.clamp(min=0)), -1)
    return ops.Lines(torch.searchsorted(used, pos), local_neg, desc.level[lo:hi],
                     desc.unit[lo:hi] - int(sel[0]), desc.base), used


def _columns_per_unit(desc: ops.Lines | ops.Windows, n_units: int) -> int:
    """Columns one unit's boundaries read (for the values budget)."""
    if isinstance(desc, ops.Windows):
        return desc.table.shape[1]
    used = torch.unique(torch.cat([desc.pos, desc.neg[desc.neg >= 0]]))
    return max(1, -(-used.shape[0] // max(1, n_units)))


_VALUES_BUDGET = 2e7  # per-vertex values held at once in recompute mode (floats)
_REROOT = 4  # a new phase of cuts starts when the faces have multiplied this much


def _cut_unit(mesh: Mesh, values: _VertexValues, index: int, unit: Unit,
              rel_tol: float, max_regions: int, suspects: list[Tensor]) -> bool:
    """Cut every face along the boundaries of one nonlinearity's units (the rule's
    :meth:`~maxaffine.ops.Nonlinearity.boundary`: lines, or ties of window entries),
    and record the units' codes on every face (packed, in the mesh's payload);
    vertices that a boundary passed within the tolerance of (without being made on
    it) are appended to ``suspects`` (their coordinates) and their faces flagged.
    Returns whether the boundaries were windows (whose pieces need merging)."""
    graph = values.graph
    _, ev = next(_evaluate(graph, values.sl, values.sl.bounds[:1].to(mesh.xy.dtype),
                           unit.name))
    desc = unit.rule.boundary(*ev.inputs[unit.name])
    windows = isinstance(desc, ops.Windows)
    n_units = unit.num_units
    per_unit = _columns_per_unit(desc, n_units)
    # line identities of the whole layer: vertices are keyed by (edge, line) across
    # all chunks of units, so a line cut partly in one chunk and finished in the
    # next still makes one vertex per edge
    ident = _line_identities(desc)
    n_ident = int(ident.max()) + 1 if ident.numel() else 0
    mesh.begin_lines(n_ident)
    per_line = ident.shape[0] // max(1, n_units)
    # the unit that owns each line identity (windows: the first comparing the pair):
    # lines of one window may meet at a vertex (ties of three entries)
    owner = torch.full((max(1, n_ident),), -2, dtype=torch.int64)
    if windows and n_ident:
        owner.fill_(n_units).scatter_reduce_(
            0, ident, torch.arange(n_units).repeat_interleave(per_line), reduce="amin")
    start, upstream = 0, 0.0
    while start < n_units:
        # recompute mode holds (vertices x columns) values: chunks of units sized to
        # a budget, ended early (at a multiple of 64 units, to keep the packed codes
        # byte-aligned) when the cuts have multiplied the vertices
        limit = None if values.resume else _VALUES_BUDGET
        chunk = n_units if values.resume else max(
            64, int(_VALUES_BUDGET // max(1, mesh.nv * per_unit)) // 64 * 64)
        sel = torch.arange(start, min(n_units, start + chunk))
        local = values.columns(index, unit, sel, desc)
        k = sel.shape[0]
        own = values.scale()
        _check_finite(own, unit.name, mesh.xy.dtype)
        # tolerances scale with each column's range, and at least with the values it
        # was computed from (its rounding)
        scale = own.clamp(min=values.upstream)
        upstream = max(upstream, float(own.max()) if own.numel() else 0.0)
        lines = _Lines.of(local, scale, rel_tol, ident[start * per_line: (start + k) * per_line])
        done, hit = _cut_lines(mesh, lines, limit, max_regions, unit.name, start, owner,
                               rel_tol, suspects)
        if lines.window is not None:
            code = lines.window_codes(mesh, done)
        else:
            # each face lies on one side of each line (up to the tolerance): a unit's
            # code is the base plus the count of its lines positive at the face's
            # interior point
            nb = lines.unit.shape[0] // k
            if nb == 1 and local.base == 0 and unit.bits == 1:  # the packed codes
                mesh.add_payload(hit.view(torch.uint8)[:, : (done + 7) // 8])
                start += done
                continue
            hit = unpack_bits(hit, lines.unit.shape[0])
            code = (hit.reshape(mesh.nf, k, nb).sum(2, dtype=torch.uint8)
                    + local.base)[:, :done]
        # these units' codes are final on every face: later cuts copy them to both halves
        mesh.add_payload(pack([code.to(torch.uint8 if unit.num_pieces <= 256
                                       else torch.int64)], [unit.bits]))
        start += done
    values.upstream = max(values.upstream, upstream)
    values.advance(index)
    return windows


def _check_finite(scale: Tensor, where: str, dtype: torch.dtype) -> None:
    """Values that overflowed (inf, or NaN from inf - inf) have no geometry."""
    if scale.numel() and not bool(torch.isfinite(scale).all()):
        raise MaxAffineError(
            f"values of {where} overflow {dtype} on this domain (the network's values "
            "there exceed the largest float): scale the model's weights or the domain down")


def _abs_max(cols: Tensor) -> Tensor:
    """Per column, the largest absolute value (no (V, cols) temporary; and no
    reference to the mesh's buffer outlives the call, so cuts can replace it)."""
    return torch.maximum(cols.amax(0), -cols.amin(0))


def _line_identities(desc: ops.Lines | ops.Windows) -> Tensor:
    """Ids of every line of a layer (the order of :meth:`_Lines.of`), equal for the
    same line of two units: windows that compare the same two columns (overlapping
    max-pool windows). (Identical lines of other units are candidates in the same
    faces: the first cuts, and the second finds its vertices on the line already.)"""
    if isinstance(desc, ops.Windows):
        table = desc.table
        r = table.shape[1]
        a, b = torch.triu_indices(r, r, 1)
        p, q = table[:, a].flatten(), table[:, b].flatten()
        pair = torch.minimum(p, q) * (int(table.max()) + 2) + torch.maximum(p, q)
        return torch.unique(pair, return_inverse=True)[1]
    return torch.arange(desc.pos.shape[0])


@dataclass
class _Lines:
    """The cut lines of a chunk of ``k`` units, each the zero set of
    ``vals[:, pos] - vals[:, neg] - level`` (``neg`` -1: no second term), affine
    on every face of the layer; ``unit`` (L,) owns each line, ``tol`` (L,).

    Elementwise splines: one line per finite breakpoint (``z = b``);
    ``torch.maximum`` / ``minimum``: ``a = b``; max-pooling: ``e_a = e_b`` for
    every pair of valid entries of a window (``window`` (k, R): valid entries),
    cut only in the layer-start faces where both entries can be the maximum
    (:meth:`possible_max`); the pieces that ties of two non-maximal entries still
    split off are merged afterwards.
    """

    pos: Tensor
    neg: Tensor
    level: Tensor
    tol: Tensor
    unit: Tensor
    window: Tensor | None = None
    unit_tol: Tensor | None = None
    entries: tuple[Tensor, Tensor] | None = None  # max-pooling: (j * R + a) of each pair
    ident: Tensor | None = None  # (L,) equal for lines that are the same function
    cols: Tensor | None = None  # max-pooling (k, R): value column of each window entry
    _near: Tensor | None = field(default=None, repr=False)  # bits at the layer's start

    @classmethod
    def of(cls, local: ops.Lines | ops.Windows, scale: Tensor, rel_tol: float,
           ident: Tensor) -> _Lines:
        """The lines of a chunk of units from their boundaries over the mesh's columns
        (:func:`_restrict`); ``scale`` (columns,): each column's largest |value|;
        ``ident``: the lines' identities (:func:`_line_identities`)."""
        if isinstance(local, ops.Windows):
            window = local.table >= 0
            k, r = window.shape
            cols = torch.where(window, local.table, 0)  # absent: any column, never read
            unit_tol = rel_tol * torch.where(window, scale[cols], 0.0).amax(1)
            a, b = torch.triu_indices(r, r, 1)
            # every pair of every window (unit-major); a pair with an absent entry
            # gets an infinite tolerance: never cut
            ok = (window[:, a] & window[:, b]).flatten()
            j = torch.arange(k).repeat_interleave(a.shape[0])
            tol = torch.where(ok, unit_tol[j], math.inf)
            zero = torch.zeros(j.shape[0], dtype=scale.dtype)
            ea, eb = j * r + a.repeat(k), j * r + b.repeat(k)
            return cls(cols.flatten()[ea], cols.flatten()[eb], zero, tol, j, window,
                       unit_tol, (ea, eb), ident, cols.contiguous())
        neg = local.neg
        level = local.level.to(scale.dtype)
        tol = rel_tol * (scale[local.pos] + torch.where(neg >= 0, scale[neg.clamp(min=0)], 0.0)
                         + level.abs())
        return cls(local.pos, neg, level, tol, local.unit, ident=ident)

    def __post_init__(self) -> None:
        n = self.pos.shape[0]
        if self.ident is None:
            self.ident = torch.arange(n)
        if n and bool((self.neg >= 0).any()) != bool((self.neg >= 0).all()):
            raise ValueError("lines have a second term all or none (the compiled loops "
                             "read one flag)")

    def subset(self, keep: Tensor) -> _Lines:
        """The lines ``keep`` (bools (L,)), same units and windows."""
        pick = torch.nonzero(keep).flatten()
        entries = None if self.entries is None else (self.entries[0][pick],
                                                     self.entries[1][pick])
        return _Lines(self.pos[pick], self.neg[pick], self.level[pick], self.tol[pick],
                      self.unit[pick], self.window, self.unit_tol, entries,
                      self.ident[pick], self.cols, self._near)

    def possible_max(self, mesh: Mesh, k: int) -> Tensor:
        """Max-pooling: (layer-start faces, k * R) bools, window entry ``a`` can be
        the maximum somewhere in the face: no entry ``c`` exceeds it by more than
        the tolerance at every vertex (differences are affine on the face, which
        is convex, so such a ``c`` exceeds it everywhere)."""
        from . import _kernels as kern

        r = self.window.shape[1]
        near, top = self._bits(mesh, k, top=True)
        self._near = near  # these vertices' values stay: window_codes reuses them
        dominated = torch.ones((int(mesh.origin_layer.max()) + 1, k, r), dtype=torch.int8)
        kern.window_dominated(mesh.faces.contiguous().numpy(), mesh.sizes.numpy(),
                              mesh.origin_layer.numpy(), mesh.vals.numpy(),
                              self.window[:k].contiguous().numpy(), self.cols[:k].numpy(),
                              self.unit_tol[:k].contiguous().numpy(), near.numpy(),
                              top.numpy(), dominated.numpy())
        return (dominated == 0).reshape(-1, k * r)

    def window_codes(self, mesh: Mesh, k: int) -> Tensor:
        """Max-pooling, once every face has one maximal entry per window (up to
        the tolerance): (F, k) the entry that is maximal at the face's interior
        point (its vertex mean; ties, e.g. zeros after a ReLU, go to the first, as
        in ``F.max_pool``): the one entry within the tolerance of the window's
        maximum at the face's vertices, or where several are, the largest mean."""
        from . import _kernels as kern

        near, _ = self._bits(mesh, k, top=False, reuse=self._near)
        code = torch.empty((mesh.nf, k), dtype=torch.int64)
        kern.window_codes(mesh.faces.contiguous().numpy(), mesh.sizes.numpy(),
                          mesh.vals.numpy(), self.window[:k].contiguous().numpy(),
                          self.cols[:k].numpy(), self.unit_tol[:k].contiguous().numpy(),
                          near.numpy(), code.numpy())
        return code

    def _bits(self, mesh: Mesh, k: int, top: bool, reuse: Tensor | None = None
              ) -> tuple[Tensor, Tensor]:
        """Per vertex, packed bits of the entries near (and equal to) their window's
        maximum (:func:`maxaffine._kernels.window_bits`); ``reuse``: the near bits
        of the first vertices, computed before (for at least ``k`` windows)."""
        from . import _kernels as kern

        words = (k * self.window.shape[1] + 63) // 64
        near = torch.empty((mesh.nv, words), dtype=torch.int64)
        tops = torch.empty((mesh.nv, words if top else 0), dtype=torch.int64)
        start = 0
        if reuse is not None:
            start = reuse.shape[0]
            near[:start] = reuse[:, :words]
        kern.window_bits(mesh.vals[start:].numpy(), self.window[:k].contiguous().numpy(),
                         self.cols[:k].numpy(), self.unit_tol[:k].contiguous().numpy(),
                         near[start:].numpy(), tops[start:].numpy())
        return near, tops


_FLAG = 0  # payload column of the faces' flags: a line passed a vertex within the tolerance
_MAX_PHASES = 200  # a layer's cuts end in a few phases; more means they cannot end


def _cut_lines(mesh: Mesh, lines: _Lines, limit: float | None, max_regions: int,
               name: str, first_unit: int, owner: Tensor, rel_tol: float,
               suspects: list[Tensor]) -> tuple[int, Tensor | None]:
    """Cut every face by every line crossing it (no loop over units or faces).

    Flags faces that a line may cross in a sliver below the tolerance (and appends
    the vertices it passed to ``suspects``; :meth:`Mesh.read_lines`), and returns
    how many units were processed (all unless ``limit``, values held, stopped the
    chunk early, at a multiple of 64 units) and, unless max-pooling, the packed
    bits (F, words) of the lines positive at each face's interior point.
    """
    n_lines = lines.pos.shape[0]
    k = int(lines.unit[-1]) + 1 if n_lines else 0
    if lines.window is not None:
        k = lines.window.shape[0]
    done = k
    possible = None
    if lines.window is not None:
        # max-pooling: a pair's line is cut only in the layer-start faces where both
        # entries can be the window's maximum (all their pieces, so that regions
        # merged afterwards lie within one layer-start face); the lines of pairs
        # that never both can (most, in a small domain) are dropped here
        possible = lines.possible_max(mesh, k)  # (layer faces, entries)
        somewhere = possible.any(0)
        lines = lines.subset(somewhere[lines.entries[0]] & somewhere[lines.entries[1]]
                             & torch.isfinite(lines.tol))
        n_lines = lines.pos.shape[0]
    # each vertex's side of every line, as packed bits (computed once per vertex:
    # values never change within a layer; the cuts add new vertices' bits)
    mesh.set_lines(lines.pos, lines.neg, lines.level, lines.tol, lines.ident)
    phases = 0
    while n_lines:
        # a phase: the current faces are roots; each root is cut by the lines that
        # cross it, in line order, all roots in lockstep (iteration i cuts every
        # piece of every root by that root's i-th line). A new phase starts when the
        # faces have multiplied, so that roots (and their line lists) stay small.
        mesh.mark()
        # (root, line) pairs where the line crosses the root, sorted by root then line
        root, line = mesh.crossings(n_lines)
        if possible is not None:
            at = mesh.origin_layer[root]
            keep = possible[at, lines.entries[0][line]] & possible[at, lines.entries[1][line]]
            root, line = root[keep], line[keep]
        if limit is not None and done == k and mesh.nv * mesh.vals.shape[1] > limit:
            # over the values budget: end this chunk at the first 64-unit boundary
            # past the earliest unfinished unit (packed codes stay byte-aligned)
            first = int(lines.unit[line].min()) if line.numel() else k
            done = min(k, (first // 64 + 1) * 64)
        if done < k:
            keep = lines.unit[line] < done
            root, line = root[keep], line[keep]
        if root.numel() == 0:
            break
        phases += 1
        if phases > _MAX_PHASES:
            raise MaxAffineError(
                f"the cuts along {name} do not end ({root.numel()} crossings left after "
                f"{_MAX_PHASES} passes): rounding errors exceed the tolerance; pass a "
                "larger tol or use dtype=torch.float64")
        # re-root when the faces have multiplied: the next phase starts from them
        mesh.lockstep(root, line, _REROOT * mesh.nf)
        if mesh.nf > max_regions:
            raise MaxAffineError(f"more than max_regions={max_regions} regions at {name}; "
                                 "shrink the domain or raise max_regions")
    # lines of units past ``done`` are cut with the next chunk
    n_done = int((lines.unit < done).sum())
    # beyond rounding: a few machine epsilons of the lines' ranges (tol = rel_tol * range)
    floor = min(1.0, 16 * torch.finfo(mesh.xy.dtype).eps / rel_tol)
    signs, flagged, near = mesh.read_lines(
        n_done, owner, None if lines.window is None else lines.unit + first_unit,
        possible, lines.entries, floor, signs=lines.window is None)
    if near.numel():
        mesh.payload[:, _FLAG] |= flagged.to(torch.uint8)
        suspects.append(mesh.xy[near].clone())
    return done, signs


def _merge_regions(mesh: Mesh, graph: SplineGraph, unit: Unit) -> None:
    """Merge faces of one region (same face at layer start, same codes of this
    layer): comparisons with the running maximum split regions in pieces."""
    nbytes = (unit.num_units * unit.bits + 7) // 8
    layer = mesh.payload[:, mesh.payload.shape[1] - nbytes:]
    key = torch.cat([mesh.origin_layer.unsqueeze(1), layer.long()], 1)
    _, group = torch.unique(key, dim=0, return_inverse=True)
    # a merged region is flagged when any of its pieces is
    flag = mesh.payload[:, _FLAG]
    merged = torch.zeros(int(group.max()) + 1, dtype=flag.dtype).scatter_reduce_(
        0, group, flag, reduce="amax")
    mesh.payload[:, _FLAG] = merged[group]
    mesh.merge(group)


def _finish(mesh: Mesh, graph: SplineGraph, sl: Slice, local: Slice, shift: Tensor,
            outputs: Tensor, rel_tol: float, check: Tensor | None
            ) -> tuple[Partition, tuple[int, Tensor] | None]:
    """Codes (from the payload), areas, interior points, the output's affine map on
    each face (least squares through its vertices, exact for an affine function;
    at the interior point itself for flagged faces), edges. Geometry is computed in
    the ``local`` slice's coordinates and returned in ``sl``'s (``shift`` apart).
    ``check``: suspect vertices (local coordinates) around which to look for
    regions below the tolerance (:func:`_check_resolution`); returns the places
    checked (count, first centre in ``sl``'s coordinates) with the partition."""
    areas = mesh.areas()
    keep = torch.nonzero(areas > 0).flatten()
    faces, sizes, payload = mesh.faces[keep], mesh.sizes[keep], mesh.payload[keep]
    areas = areas[keep]
    codes = payload[:, _FLAG + 1:].contiguous()
    # only the vertices some face uses (max-pool merges weld and drop some)
    used = torch.zeros(mesh.nv, dtype=torch.bool)
    used[faces[faces >= 0]] = True
    renumber = torch.cumsum(used, 0) - 1
    faces = torch.where(faces >= 0, renumber[faces.clamp(min=0)], -1)
    vertices, outputs = mesh.xy[used].clone(), outputs[used].contiguous()
    mesh.release()  # its buffers are copied: free them before the heavy steps
    # vertex means, and the least-squares plane through the vertices' outputs
    from . import _kernels as kern

    interior = torch.empty((faces.shape[0], 2), dtype=vertices.dtype)
    slopes = torch.empty((faces.shape[0], outputs.shape[1], 2), dtype=outputs.dtype)
    offsets = torch.empty((faces.shape[0], outputs.shape[1]), dtype=outputs.dtype)
    # many outputs make these the largest buffers: the idle core faults them in
    spread = torch.empty(faces.shape[0], dtype=vertices.dtype)
    helper = _Prefault([(slopes, 0), (offsets, 0)], faces.shape[0])
    kern.face_fits(faces.contiguous().numpy(), sizes.contiguous().numpy(), vertices.numpy(),
                   outputs.numpy(), interior.numpy(), slopes.numpy(), offsets.numpy(),
                   spread.numpy())
    helper.stop()
    corrected = torch.zeros(faces.shape[0], dtype=torch.bool)
    # faces narrower than ~2^-22 of the domain: rounding of their vertices' positions
    # and values (~eps of the domain) shows in a fitted slope across them
    extent = float((vertices.max(0).values - vertices.min(0).values).max())
    thin = spread < 2.0 ** -22 * extent
    redo = torch.nonzero(thin | (payload[:, _FLAG] > 0)).flatten()
    if redo.numel():
        # where a boundary passed within the tolerance of a face's vertices, values
        # interpolated across it may be off by up to the tolerance: the codes and
        # maps of those faces (and the maps of thin ones) are those of a forward pass
        # at their interior points
        exact_codes, exact_slopes, exact_offsets = _exact_at(graph, local, interior[redo])
        out = torch.einsum("fcd,fd->fc", slopes[redo], interior[redo]) + offsets[redo]
        exact_out = torch.einsum("fcd,fd->fc", exact_slopes, interior[redo]) + exact_offsets
        scale = 1e-9 * (1.0 + float(_abs_max(outputs).max()))
        corrected[redo] = ((exact_codes != codes[redo]).any(1)
                           | ((out - exact_out).abs().amax(1) > scale)) & ~thin[redo]
        codes[redo] = exact_codes
        slopes[redo] = exact_slopes
        offsets[redo] = exact_offsets
    lost, places = 0, None
    if check is not None:
        lost, places = _check_resolution(check, graph, local, rel_tol, vertices, faces, sizes,
                                         codes, interior, corrected)
    if bool(shift.any()):
        vertices += shift.to(vertices.dtype)
        interior += shift.to(interior.dtype)
        offsets -= torch.einsum("fcd,d->fc", slopes, shift.to(slopes.dtype))
    layout = tuple((u.name, tuple(u.code_shape), u.num_pieces, u.bits) for u in graph.units)
    view = _FaceView(faces, sizes, vertices.shape[0])
    edges, edge_faces = view.edges()
    edge_layer = _edge_layers(codes, layout, edge_faces)
    return Partition(
        domain=sl, vertices=vertices, faces=faces, face_sizes=sizes, edges=edges,
        edge_faces=edge_faces, edge_layer=edge_layer, codes=codes, code_layout=layout,
        areas=areas, interior=interior, slopes=slopes, offsets=offsets, graph=graph,
        tol=rel_tol, unresolved=corrected, lost_regions=lost,
    ), places


_MAX_WINDOWS = 16  # places re-partitioned to count regions below the tolerance


def _check_resolution(near: Tensor, graph: SplineGraph, local: Slice, rel_tol: float,
                      vertices: Tensor, faces: Tensor, sizes: Tensor, codes: Tensor,
                      interior: Tensor, unresolved: Tensor
                      ) -> tuple[int, tuple[int, Tensor] | None]:
    """Count the regions merged away below the tolerance around vertices ``near``
    (where a boundary passed within the tolerance without cutting; all in local
    coordinates): each place is re-partitioned in a window a few tolerances wide
    (whose own tolerance is that much finer), and every window region whose
    interior lies in a face of another code is a region the partition could not
    separate; those faces are marked in ``unresolved`` (in place). Returns the
    number of such regions (distinct codes) and (places, first place's centre),
    or ``(0, None)`` when nothing was found."""
    if near.shape[0] == 0:
        return 0, ((0, interior[unresolved][0]) if bool(unresolved.any()) else None)
    b = local.bounds.to(vertices.dtype)
    extent = float((b.max(0).values - b.min(0).values).max())
    # a boundary within the tolerance of a vertex is within ~1.5 rel_tol * extent of it
    cell = 8 * rel_tol * extent
    key = torch.floor((near - b.min(0).values) / cell).long()
    _, group, count = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
    centres = torch.zeros((count.shape[0], 2), dtype=near.dtype).index_add_(0, group, near)
    centres /= count.unsqueeze(1).to(near.dtype)
    order = torch.argsort(count, descending=True, stable=True)
    lost: set[bytes] = set()
    found: list[Tensor] = []
    square = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]],
                          dtype=b.dtype)
    for i in order[:_MAX_WINDOWS].tolist():
        window = _clip_polygon(centres[i] + 2 * cell * square, b)
        if window.shape[0] < 3 or _shoelace(window) <= (1e-3 * cell) ** 2:
            continue
        sub = _partition(graph, Slice(local.origin, local.u, local.v, window),
                         vertices.dtype, rel_tol, 1_000_000, False, check=False)
        home = _locate(vertices, faces, sizes, sub.interior.to(vertices.dtype))
        ok = home >= 0
        differ = ok.clone()
        differ[ok] = (sub.codes[ok] != codes[home[ok]]).any(1)
        if bool(differ.any()):
            unresolved[home[differ]] = True
            lost.update(bytes(c.tolist()) for c in sub.codes[differ])
            found.append(centres[i])
    if not lost and not bool(unresolved.any()):
        return 0, None
    first = found[0] if found else interior[unresolved][0]
    return len(lost), (len(found), first)


def _clip_polygon(poly: Tensor, domain: Tensor) -> Tensor:
    """The convex polygon ``poly`` (K, 2) clipped to the convex, counter-clockwise
    polygon ``domain`` (M, 2)."""
    p, q = domain, domain.roll(-1, 0)
    d = q - p
    normals = torch.stack([-d[:, 1], d[:, 0]], 1)  # inside: left of each edge
    offsets = -(normals * p).sum(1)
    out, size, _ = clip_halfplanes(poly.unsqueeze(0), torch.tensor([poly.shape[0]]),
                                   normals.unsqueeze(0), offsets.unsqueeze(0),
                                   torch.zeros((1, p.shape[0]), dtype=torch.int64))
    return out[0, : int(size[0])]


def _locate(vertices: Tensor, faces: Tensor, sizes: Tensor, pts: Tensor) -> Tensor:
    """(P,) the face containing each point (-1: none), among the faces whose
    bounding box holds some of the points."""
    home = torch.full((pts.shape[0],), -1, dtype=torch.int64)
    if pts.shape[0] == 0:
        return home
    w = faces.shape[1]
    valid = torch.arange(w) < sizes[:, None]
    corners = vertices[faces.clamp(min=0)]  # (F, W, 2)
    big = torch.where(valid[..., None], corners, math.inf)
    small = torch.where(valid[..., None], corners, -math.inf)
    lo, hi = big.amin(1), small.amax(1)
    plo, phi = pts.amin(0), pts.amax(0)
    cand = torch.nonzero(((lo <= phi) & (hi >= plo)).all(1)).flatten()
    if cand.numel() == 0:
        return home
    poly = corners[cand]  # (K, W, 2); padding repeats the first corner: no constraint
    poly = torch.where(valid[cand][..., None], poly, poly[:, :1])
    nxt = torch.where(torch.arange(1, w + 1) < sizes[cand][:, None],
                      torch.arange(1, w + 1), 0)
    a, e = poly, poly.gather(1, nxt.unsqueeze(-1).expand_as(poly)) - poly  # edges a -> a + e
    rel = pts[None, None, :, :] - a[:, :, None, :]  # (K, W, P, 2)
    cross = e[..., None, 0] * rel[..., 1] - e[..., None, 1] * rel[..., 0]
    slack = 1e-12 * e.norm(dim=-1, keepdim=True) * float((phi - plo).max() + 1e-300)
    inside = (cross >= -slack).all(1)  # (K, P)
    hit = inside.any(0)
    home[hit] = cand[inside.int().argmax(0)[hit]]
    return home


def _warn_unresolved(part: Partition, places: tuple[int, Tensor], shift: Tensor,
                     rel_tol: float, dtype: torch.dtype, stacklevel: int) -> None:
    """The :class:`MaxAffineWarning` of a partition with regions below its tolerance."""
    n_places, where = places
    b = part.domain.bounds
    extent = float((b.max(0).values - b.min(0).values).max())
    width = rel_tol * extent
    s_, t_ = (float(x) for x in (where.to(torch.float64) + shift))
    faces = int(part.unresolved.sum())
    lost = (f"{part.lost_regions} region(s) narrower than the tolerance were merged into "
            f"{faces} face(s)" + (f" at {n_places} place(s) (checked at most {_MAX_WINDOWS})"
                                  if n_places else ""))
    warnings.warn(MaxAffineWarning(
        f"{lost}, e.g. around slice coordinates ({s_:.12g}, {t_:.12g}): tol={rel_tol:g} of "
        f"each unit's range on the domain is about {width:.3g} in slice units here. Those "
        "faces carry the code and map of their interior points (Partition.unresolved "
        "marks them). To separate those regions, partition a window around them, e.g. "
        f"partition_plane(model, domain.zoom(({s_:.12g}, {t_:.12g}), {1e3 * width:.3g})), "
        f"or lower tol (down to {32 * torch.finfo(dtype).eps:.2g})"), stacklevel=stacklevel)


def _exact_at(graph: SplineGraph, sl: Slice, st: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Packed codes (N, bytes) and the output's affine map in slice coordinates,
    slopes (N, C, 2) and offsets (N, C), at points ``st`` (N, 2) of ``sl``: codes
    from a forward pass, the map from the network with those codes frozen (one
    affine map, extended to the whole plane) at the point and one step along s
    and t."""
    n = st.shape[0]
    b = sl.bounds.to(st.dtype)
    step = float((b.max(0).values - b.min(0).values).max())
    with torch.no_grad():
        ev = graph.run(sl.to_input(st))
        frozen = {k: v.repeat((3,) + (1,) * (v.dim() - 1)) for k, v in ev.codes.items()}
        pts = torch.cat([st, st + st.new_tensor([step, 0.0]), st + st.new_tensor([0.0, step])])
        out = graph.run(sl.to_input(pts), codes=frozen).output.reshape(3, n, -1)
    slopes = torch.stack([out[1] - out[0], out[2] - out[0]], -1) / step
    offsets = out[0] - torch.einsum("fcd,fd->fc", slopes, st)
    return codes_of(graph, ev.codes, n).bits, slopes, offsets


class _FaceView(Mesh):
    """A read-only mesh over finished faces (for edge extraction)."""

    def __init__(self, faces: Tensor, sizes: Tensor, nv: int):
        self._faces, self._sizes = faces, sizes
        self.nf, self.width, self.nv = faces.shape[0], faces.shape[1], nv


def _edge_layers(bits: Tensor, layout: tuple, edge_faces: Tensor) -> Tensor:
    """First layer whose codes differ across each edge (-1 on the domain boundary),
    from the faces' packed codes ``bits`` (layers byte-aligned, as ``layout``)."""
    from . import _kernels as kern

    layer = torch.empty(edge_faces.shape[0], dtype=torch.int64)
    ends = torch.tensor([(math.prod(shape) * b + 7) // 8 for _, shape, _, b in layout],
                        dtype=torch.int64).cumsum(0)
    kern.edge_layers(bits.contiguous().numpy(), edge_faces[:, 0].contiguous().numpy(),
                     edge_faces[:, 1].contiguous().numpy(), ends.numpy(), layer.numpy())
    return layer


@dataclass
class _Cells:
    """Class cells of the faces the decision boundary crosses (CSR): cell ``m`` is
    class ``cls[m]`` inside face ``face[m]``, corners ``xy[start[m]:start[m + 1]]``
    counter-clockwise, and ``label`` per corner: the other class of the clip line
    the edge leaving it lies on, -1 on the face's own boundary."""

    face: Tensor
    cls: Tensor
    start: Tensor
    xy: Tensor
    label: Tensor


def _class_cells(vertices: Tensor, faces: Tensor, sizes: Tensor, slopes: Tensor,
                 offsets: Tensor) -> _Cells:
    """Split the faces whose vertices disagree on the argmax output into class cells
    (:func:`maxaffine._kernels.class_cells`: only the classes no vertex winner
    dominates on a face are clipped against each other, so a 1,000-class head
    costs about what a 10-class one does)."""
    from . import _kernels as kern

    face, cls, start, xy, label = kern.class_cells(
        faces.contiguous().numpy(), sizes.contiguous().numpy(), vertices.contiguous().numpy(),
        slopes.contiguous().numpy(), offsets.contiguous().numpy())
    return _Cells(*(torch.from_numpy(x) for x in (face, cls, start, xy, label)))


def _decision_boundary(vertices: Tensor, faces: Tensor, sizes: Tensor, slopes: Tensor,
                       offsets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Segments (S, 2, 2) where the argmax output changes (C > 1) or the output is 0
    (C = 1): edges of the class cells (:func:`_class_cells`) that lie on a clip
    line, each once (from the cell of the higher class); with the class pair
    (low, high) (S, 2) and the face (S,) of each."""
    cells = _class_cells(vertices, faces, sizes, slopes, offsets)
    m = cells.face.shape[0]
    count = cells.start.diff()
    owner = torch.repeat_interleave(torch.arange(m), count)
    corner = torch.arange(cells.xy.shape[0])
    following = torch.where(corner + 1 < cells.start[1:][owner], corner + 1,
                            cells.start[:-1][owner])
    cls = cells.cls[owner]
    on = (cells.label >= 0) & (cells.label < cls)
    a, b = cells.xy[on], cells.xy[following[on]]
    pairs = torch.stack([cells.label[on], cls[on]], 1)
    where = cells.face[owner[on]]
    extent = float((vertices.max(0).values - vertices.min(0).values).max()) if len(
        vertices) else 0.0
    ok = (b - a).norm(dim=1) > 1e-12 * extent
    return (torch.stack([a, b], 1)[ok].to(vertices.dtype), pairs[ok], where[ok])


# ------------------------------------------------------------------- segments


def partition_segment(model: nn.Module | SplineGraph, x0: Tensor, x1: Tensor, *,
                      dtype: torch.dtype = torch.float64, tol: float | None = None
                      ) -> SegmentPartition:
    """The exact breakpoints of the segment from ``x0`` to ``x1`` (single inputs).

    Layer by layer, every unit's pre-activation is affine between consecutive
    breakpoints, so its crossings are interpolated exactly; max-pool and merged
    pieces are cleaned up by comparing codes of neighbouring pieces.
    """
    for name, x in (("x0", x0), ("x1", x1)):
        check_tensor(x, name)
    if x0.shape != x1.shape:
        raise MaxAffineError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} "
                             f"and {tuple(x1.shape)}")
    if bool((x0 == x1).all()):
        raise MaxAffineError("x0 and x1 are equal: the segment is a point")
    rel_tol = _tolerance(tol, dtype)
    a, b = x0.to(dtype), x1.to(dtype)
    graph = _graph_in(model, a.unsqueeze(0), dtype)
    if tuple(a.shape) != graph.input_shape:
        raise MaxAffineError(f"x0 has shape {tuple(a.shape)}; the model takes single inputs "
                             f"of shape {graph.input_shape} (no batch dimension here)")
    _refuse_batch(graph, a, "x0 and x1")
    _check_parameters(graph)

    def points(t: Tensor) -> Tensor:
        return a.unsqueeze(0) + t.reshape((-1,) + (1,) * a.dim()) * (b - a).unsqueeze(0)

    t = torch.tensor([0.0, 1.0], dtype=dtype)
    with torch.no_grad():
        for unit in graph.units:
            ins = graph.run(points(t), record=True, until=unit.name).inputs[unit.name]
            cols = _segment_columns(unit, ins)  # list of (T, K) cut functions
            for d in cols:
                _check_finite(_abs_max(d) if d.numel() else d, unit.name, dtype)
            new = [t]
            for d in cols:
                scale = d.abs().amax(0, keepdim=True)
                d = torch.where(d.abs() <= rel_tol * scale, 0.0, d)
                left, right = d[:-1], d[1:]
                hit = left * right < 0
                i, k = torch.nonzero(hit, as_tuple=True)
                frac = left[i, k] / (left[i, k] - right[i, k])
                new.append(t[i] + frac * (t[i + 1] - t[i]))
            t = torch.unique(torch.cat(new))
            t = t[torch.cat([torch.tensor([True]), t.diff() > rel_tol])]
            t[-1] = 1.0
        mids = (t[:-1] + t[1:]) / 2
        found = graph.run(points(mids)).codes
        codes = codes_of(graph, found)
        if len(codes.names):  # merge neighbours with equal codes (phantom breakpoints)
            packed = codes.bits
            same = (packed[1:] == packed[:-1]).all(1)
            keep = torch.cat([torch.tensor([True]), ~same, torch.tensor([True])])
            t = t[keep]
            mids = (t[:-1] + t[1:]) / 2
            codes = codes_of(graph, graph.run(points(mids)).codes)

    def along(tt: Tensor) -> Tensor:
        return graph.run(points(tt[:, 0])).output

    jac, out, _ = jacobian(along, mids.unsqueeze(1), mode="forward")
    slopes = jac[..., 0].detach()
    offsets = out.detach() - slopes * mids.unsqueeze(1)
    _check_finite(torch.cat([_abs_max(slopes), _abs_max(offsets)]) if len(slopes) else slopes,
                  "the output", dtype)
    return SegmentPartition(x0, x1, t, codes, slopes, offsets)


def _segment_columns(unit: Unit, ins: tuple[Tensor, ...]) -> list[Tensor]:
    """The unit's cut functions at the breakpoints: each (T, K), zero = boundary
    (lines: their values; windows: the differences of every pair of entries, 1
    where one is absent)."""
    desc = unit.rule.boundary(*ins)
    cols = unit.rule.columns(*ins)
    if isinstance(desc, ops.Windows):
        table = desc.table
        vals = cols[:, table.clamp(min=0)]  # (T, K, R)
        out = []
        r = table.shape[1]
        for i in range(r):
            for j in range(i + 1, r):
                ok = (table[:, i] >= 0) & (table[:, j] >= 0)
                out.append(torch.where(ok, vals[..., i] - vals[..., j], 1.0))
        return out
    second = torch.where(desc.neg >= 0, cols[:, desc.neg.clamp(min=0)], 0.0)
    return [cols[:, desc.pos] - second - desc.level.to(cols.dtype)]


__all__ = ["Partition", "SegmentPartition", "Slice", "partition_plane", "partition_segment"]

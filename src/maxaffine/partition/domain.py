"""Domains of plane partitions: :class:`Slice`, a convex polygon of a 2-D plane of
input space, and the checks that keep its geometry within float64's range."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._arguments import check_tensor, number
from ..errors import MaxAffineError, MaxAffineTypeError
from ..graph import SplineGraph


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

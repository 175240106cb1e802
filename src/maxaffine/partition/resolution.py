"""Regions below a partition's tolerance: where they were merged away, how many
(small windows re-partitioned at a finer tolerance), and the warning that says
so."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import MaxAffineWarning
from ..graph import SplineGraph
from .domain import Slice, _shoelace
from .mesh import clip_halfplanes
from .results import Partition

_MAX_WINDOWS = 16  # places re-partitioned to count regions below the tolerance


def _check_resolution(near: Tensor, graph: SplineGraph, local: Slice, rel_tol: float,
                      vertices: Tensor, faces: Tensor, sizes: Tensor, packed: Tensor,
                      interior: Tensor, unresolved: Tensor, partition: Callable[..., Any]
                      ) -> tuple[int, tuple[int, Tensor] | None]:
    """Count the regions merged away below the tolerance around vertices ``near``
    (where a boundary passed within the tolerance without cutting; all in local
    coordinates): each place is re-partitioned in a window a few tolerances wide
    (whose own tolerance is that much finer), and every window region whose
    interior lies in a face of another code (``packed``: the faces' packed codes) is
    a region the partition could not separate; those faces are marked in
    ``unresolved`` (in place). Returns the number of such regions (distinct codes)
    and (places, first place's centre), or ``(0, None)`` when nothing was found.
    ``partition``: the plane partition (:func:`maxaffine.partition.plane._partition`),
    run without these checks."""
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
        sub = partition(graph, Slice(local.origin, local.u, local.v, window),
                         vertices.dtype, rel_tol, 1_000_000, False, check=False)
        home = _locate(vertices, faces, sizes, sub.interior.to(vertices.dtype))
        ok = home >= 0
        differ = ok.clone()
        differ[ok] = (sub.packed[ok] != packed[home[ok]]).any(1)
        if bool(differ.any()):
            unresolved[home[differ]] = True
            lost.update(bytes(c.tolist()) for c in sub.packed[differ])
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

"""The analytical likelihood and posterior of a ReLU generator.

Balestriero, Paris & Baraniuk, "Analytical Probability Distributions and EM-Learning
for Deep Generative Networks" (NeurIPS 2020), sec. 3: a generator ``G`` built from
affine layers and piecewise-affine nonlinearities is affine on every region ``R_r``
of its latent space, ``G(z) = A_r z + b_r``. With ``z ~ N(0, I_k)`` and
``x = G(z) + eps``, ``eps ~ N(0, sigma^2 I_D)``, the joint density restricted to a
region is a Gaussian in ``z`` (Theorem 1 there)::

    N(z; 0, I) N(x; A_r z + b_r, sigma^2 I) = c_r(x) N(z; mu_r, S_r)
    S_r = (I + A_r^T A_r / sigma^2)^(-1),   mu_r = S_r A_r^T (x - b_r) / sigma^2
    c_r(x) = N(x; b_r, sigma^2 I + A_r A_r^T)

so ``p(x) = sum_r c_r(x) Prob_{N(mu_r, S_r)}(z in R_r)`` and the posterior
``p(z | x)`` is the mixture over regions of ``N(mu_r, S_r)`` truncated to ``R_r``,
with weights ``w_r`` proportional to ``c_r(x) Prob(R_r)``.

How each piece is computed, on the latent box ``[-T, T]^k`` (``bound``; the prior
mass outside it, ``1 - erf(T / sqrt 2)^k``, is reported as ``tail_mass``: 1e-15 for
T = 8):

* ``log c_r(x)`` in log space from the k x k Cholesky factor ``C`` of
  ``P = S^(-1) = C C^T`` (Woodbury: ``log det(sigma^2 I + A A^T) = D log sigma^2 +
  log det P``, ``(x-b)^T (sigma^2 I + A A^T)^(-1) (x-b) = |x - b - A mu|^2 /
  sigma^2 + |mu|^2``, a sum of non-negative terms), so D = 784 costs k x k solves.
* Regions: k = 1 the intervals of :func:`maxaffine.partition_segment`, k = 2 the
  polygons of :func:`maxaffine.partition_plane`, k = 3 the polytopes of
  :func:`maxaffine.partition_box`; each region's map from
  :func:`maxaffine.affine_map` at its interior point.
* Gaussian measure and truncated moments, after whitening ``w = C^T (z - mu)``
  (the region stays convex; ``w ~ N(0, I)``):

  - k = 1: ``Phi(beta) - Phi(alpha)`` and the truncated-normal moments, from
    ``log_ndtr`` (closed form, to rounding).
  - k = 2: the polygon is the signed sum of the triangles (origin, edge). The part
    of the triangle beyond the edge's line (distance ``h``, the edge from ``s1``
    to ``s2`` along it) has measure ``T(h, s2/h) - T(h, s1/h)`` with Owen's ``T``
    function (``(1/2 pi) int exp(-h^2 / (2 cos^2 phi)) d phi`` over the edge's
    angles), so ``Prob = winding - sum_e sign(h_e) [T(|h_e|, s2/|h_e|) -
    T(|h_e|, s1/|h_e|)]`` (winding 1 inside, 0 outside: the angles cancel exactly
    rather than in floating point). The moments follow from the divergence
    theorem, ``int_P w phi = -sum_e n_e int_e phi ds`` and ``int_P w w^T phi =
    Prob I - sum_e n_e (int_e w phi ds)^T``, whose edge integrals are
    ``phi(h) (Phi(s2) - Phi(s1))`` and ``phi(h) (phi(s1) - phi(s2))``. Far polygons
    are computed relative to ``exp(-h_min^2 / 2)`` (and Owen's T beyond h = 10 by
    a 64-point Gauss-Legendre rule in ``y = h tan phi``), so their log measure
    does not underflow. Agreement with adaptive quadrature: 1e-12 relative or better.
  - k = 3: each region is split into tetrahedra (region centroid, facet centroid,
    an edge of the facet), each whitened tetrahedron rotated so that its height axis
    is far from its face normals (slices then move by at most ~cot of that angle per
    unit height, whatever the tetrahedron's size), cut by planes ``t = const`` into
    triangles / quadrilaterals whose 2-D measure and moments are exact as above; the
    outer integral over ``t`` (against ``phi(t)``) is a 24-point Gauss-Legendre rule
    between consecutive vertex heights (analytic there), clipped beyond sqrt(92) of
    the nearest point's height (below exp(-46) of the tetrahedron's peak density).
    Tetrahedra with ``c_r(x) Phi(-d) < exp(-46) / T`` of the best term (d: whitened
    distance, T: their number) are skipped. Within 1e-12 of a collapsed
    Gauss-Legendre rule of the joint density in the tests (orders 16..48 agree to
    1e-15 at noise_std 0.3).
  - k > 3 (or ``method="sampling"``): an estimate. Regions are discovered by
    sampling ``z`` from the prior (``samples``); per input, ``z`` is drawn from the
    proposal ``q = 0.1 N(0, I) + 0.9 sum_r pi_r N(mu_r, S_r)`` with ``pi_r`` the
    normalised ``c_r(x)`` (the defensive prior term bounds the importance
    weights), ``p(x)`` is the mean of ``p(x, z) / q(z)`` (``p(x, z)`` by a forward
    pass) and ``standard_error`` its standard error on the log scale
    (delta method). Regions in the posterior are the distinct codes of the draws.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import _arguments as arguments
from .._arguments import check_dtype, check_tensor
from ..affine import affine_map
from ..errors import MaxAffineError, MaxAffineTypeError
from ..graph import SplineGraph, check_parameters, trace
from ..partition import (
    Complex,
    Partition,
    SegmentPartition,
    partition_box,
    partition_plane,
    partition_segment,
)
from ..vq import codes as codes_of

_LOG_2PI = math.log(2 * math.pi)
_CUT = 46.0  # exp(-46) ~ 1e-20: what is left out where a tail is clipped
_METHODS = ("auto", "exact", "sampling")


# ------------------------------------------------------------------ 1-D Gaussian pieces


def _log_phi(t: np.ndarray) -> np.ndarray:
    return -0.5 * t * t - 0.5 * _LOG_2PI


def _log_interval(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``log(Phi(b) - Phi(a))`` for ``a <= b``, without cancellation in either tail."""
    from scipy.special import log_ndtr

    flip = a > 0  # the upper tail, mirrored into the lower one
    lo, hi = np.where(flip, -b, a), np.where(flip, -a, b)
    upper, lower = log_ndtr(hi), log_ndtr(lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = upper + np.log(-np.expm1(lower - upper))
    return np.where(b > a, out, -np.inf)


def _interval_moments(alpha: np.ndarray, beta: np.ndarray, moments: bool
                      ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """log mass, mean and variance of N(0, 1) on [alpha, beta] (truncated normal)."""
    logz = _log_interval(alpha, beta)
    if not moments:
        return logz, None, None
    with np.errstate(invalid="ignore", over="ignore"):
        ra = np.exp(np.minimum(_log_phi(alpha) - logz, 700))
        rb = np.exp(np.minimum(_log_phi(beta) - logz, 700))
        mean = ra - rb
        second = 1 + alpha * ra - beta * rb
    var = np.maximum(second - mean * mean, 0.0)
    mean = np.clip(np.nan_to_num(mean), alpha, beta)
    return logz, mean, np.nan_to_num(var)


# ------------------------------------------------------------------ 2-D: polygons


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(64)


def _beyond_far(h: np.ndarray, s1: np.ndarray, s2: np.ndarray, shift: np.ndarray
                ) -> np.ndarray:
    """``exp(shift^2 / 2) (T(h, s2/h) - T(h, s1/h))`` for large ``h`` (>= shift):
    ``exp(-h^2/2) / (2 pi h) int_s1^s2 exp(-y^2/2) / (1 + y^2/h^2) dy`` by Gauss-Legendre,
    each half-line piece from its end nearest 0, clipped where exp(-y^2/2) is below
    exp(-46) of its value there."""
    total = np.zeros_like(h)
    for lo_, hi_ in ((np.maximum(s1, 0), np.maximum(s2, 0)),
                     (np.maximum(-s2, 0), np.maximum(-s1, 0))):
        length = np.minimum(hi_ - lo_, -lo_ + np.sqrt(lo_ * lo_ + 2 * _CUT))
        t = 0.5 * length[..., None] * (_GL_NODES + 1)  # (..., G)
        y = lo_[..., None] + t
        f = np.exp(-lo_[..., None] * t - 0.5 * t * t) / (1 + (y / h[..., None]) ** 2)
        part = 0.5 * length * (f @ _GL_WEIGHTS)
        expo = np.where(length > 0, -0.5 * (h * h - shift * shift + lo_ * lo_), -np.inf)
        total = total + np.where(length > 0, part * np.exp(np.minimum(expo, 0.0)), 0.0)
    return total / (2 * math.pi * h)


def _polygon(p: np.ndarray, moments: bool
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Standard 2-D normal measure (log), mean and covariance restricted to the convex
    polygons ``p`` (..., W, 2), counter-clockwise, padded by repeating a vertex."""
    from scipy.special import owens_t

    q = np.roll(p, -1, axis=-2)
    d = q - p
    length = np.hypot(d[..., 0], d[..., 1])
    ok = length > 0
    safe = np.where(ok, length, 1.0)
    u = d / safe[..., None]
    n = np.stack([u[..., 1], -u[..., 0]], -1)  # outward for counter-clockwise
    h = (n * p).sum(-1)
    s1 = (u * p).sum(-1)
    s2 = (u * q).sum(-1)
    ok &= h != 0
    sign = np.where(ok, np.sign(h), 0.0)
    ah = np.where(ok, np.abs(h), 1.0)
    winding = (sign * (np.arctan2(s2, ah) - np.arctan2(s1, ah))).sum(-1) / (2 * math.pi)
    half = np.round(2 * winding) / 2
    winding = np.where(np.abs(winding - half) < 1e-9, half, winding)
    outside = winding == 0
    lo_s = np.where((s1 < 0) & (s2 > 0), 0.0, np.minimum(np.abs(s1), np.abs(s2)))
    dist = np.sqrt(np.where(ok, h * h + lo_s * lo_s, np.inf))  # origin to the edge
    shift = np.where(outside, dist.min(-1), 0.0)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    near = ok & (ah <= 10) & (lo_s < 1)  # Owen's T differences cancel elsewhere
    far = ok & ~near
    beyond = np.zeros_like(h)
    shift_e = np.broadcast_to(shift[..., None], h.shape)
    if near.any():
        a_, s1_, s2_ = ah[near], s1[near], s2[near]
        beyond[near] = (owens_t(a_, s2_ / a_) - owens_t(a_, s1_ / a_)) * np.exp(
            0.5 * np.minimum(shift_e[near], 10.1) ** 2)
    if far.any():
        beyond[far] = _beyond_far(ah[far], s1[far], s2[far], shift_e[far])
    mass = np.where(outside, 0.0, winding) - (sign * beyond).sum(-1)
    with np.errstate(divide="ignore"):
        logm = np.where(mass > 0, np.log(np.where(mass > 0, mass, 1.0)), -np.inf) \
            - 0.5 * shift * shift
    if not moments:
        return logm, None, None
    edge = length > 0
    base = -0.5 * (h * h - shift[..., None] ** 2) - 0.5 * _LOG_2PI  # log phi(h), scaled
    with np.errstate(over="ignore", invalid="ignore"):
        i0 = np.exp(base + _log_interval(np.minimum(s1, s2), np.maximum(s1, s2)))
        i1 = np.exp(base + _log_phi(s1)) - np.exp(base + _log_phi(s2))
    i0 = np.where(edge, i0, 0.0)
    i1 = np.where(edge, i1, 0.0)
    m1 = -(n * i0[..., None]).sum(-2)
    inner = h[..., None] * n * i0[..., None] + u * i1[..., None]  # int_e w phi ds
    m2 = mass[..., None, None] * np.eye(2) - np.einsum("...ei,...ej->...ij", n, inner)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = m1 / mass[..., None]
        second = m2 / mass[..., None, None]
    cov = second - mean[..., :, None] * mean[..., None, :]
    cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
    bad = ~(mass > 0)
    mean[bad] = 0.0
    cov[bad] = 0.0
    return logm, mean, cov


# ------------------------------------------------------------------ 3-D: tetrahedra


_TET_ORDER = 24  # Gauss-Legendre nodes per piece of the outer (height) integral
_TET_NODES, _TET_WEIGHTS = np.polynomial.legendre.leggauss(_TET_ORDER)
_REACH = math.sqrt(2 * _CUT)  # beyond it from the nearest point: below exp(-46) of it
_TET_FACES = ((1, 2, 3), (0, 2, 3), (0, 1, 3), (0, 1, 2))
_SUBSETS = tuple(s for m in (1, 2, 3, 4) for s in itertools.combinations(range(4), m))
# the slice of a tetrahedron (vertices sorted by height) between consecutive heights:
# the edges it crosses, in order around it (a triangle repeats its last vertex)
_SLICE_EDGES = np.array([[(0, 1), (0, 2), (0, 3), (0, 3)],
                         [(0, 2), (0, 3), (1, 3), (1, 2)],
                         [(0, 3), (1, 3), (2, 3), (2, 3)]])


def _frame(v: np.ndarray) -> np.ndarray:
    """(M, 3, 3) rotations (rows: in-plane axes, then the height axis ``n``) with ``n``
    far from the tetrahedra's face normals, so that the slices' edges move by at most
    ``cot`` of the largest angle per unit height: among the axes and the normalised
    cross products of two face normals, the one of least ``max_f |n . n_f|``."""
    normals = np.stack([np.cross(v[:, b] - v[:, a], v[:, c] - v[:, a])
                        for a, b, c in _TET_FACES], 1)  # (M, 4, 3)
    normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-300)
    pairs = [np.cross(normals[:, i], normals[:, j])
             for i, j in itertools.combinations(range(4), 2)]
    cand = np.concatenate([np.broadcast_to(np.eye(3), (v.shape[0], 3, 3)),
                           np.stack(pairs, 1)], 1)  # (M, 9, 3)
    norm = np.linalg.norm(cand, axis=-1, keepdims=True)
    cand = np.where(norm > 1e-8, cand / np.maximum(norm, 1e-300), np.eye(3)[0])
    score = np.abs(np.einsum("mcj,mfj->mcf", cand, normals)).max(-1)
    n = cand[np.arange(v.shape[0]), score.argmin(1)]
    helper = np.eye(3)[np.abs(n).argmin(1)]
    e1 = np.cross(n, helper)
    e1 /= np.linalg.norm(e1, axis=-1, keepdims=True)
    return np.stack([e1, np.cross(n, e1), n], 1)


def _nearest(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distance from the origin to the tetrahedra ``u`` (M, 4, 3) and the height
    (last coordinate) of the nearest point: the projections onto the affine hulls of
    all 15 faces, kept where their barycentric coordinates are >= 0."""
    best = np.full(u.shape[0], np.inf)
    height = np.zeros(u.shape[0])
    for sub in _SUBSETS:
        p = u[:, list(sub)]
        base = p[:, 0]
        if len(sub) == 1:
            point, ok = base, np.ones(u.shape[0], bool)
        else:
            e = p[:, 1:] - base[:, None]  # (M, m-1, 3)
            gram = e @ np.swapaxes(e, 1, 2)
            gram += 1e-13 * np.trace(gram, axis1=1, axis2=2)[:, None, None] * np.eye(
                len(sub) - 1) + 1e-300 * np.eye(len(sub) - 1)
            mu = np.linalg.solve(gram, -(e @ base[..., None]))[..., 0]
            point = base + np.einsum("mj,mjd->md", mu, e)
            ok = (mu >= -1e-12).all(1) & (mu.sum(1) <= 1 + 1e-12)
        dist = np.where(ok, np.linalg.norm(point, axis=1), np.inf)
        better = dist < best
        best = np.where(better, dist, best)
        height = np.where(better, point[:, 2], height)
    return best, height


def _tetrahedra(v: np.ndarray, moments: bool
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Standard 3-D normal measure (log) of the tetrahedra ``v`` (M, 4, 3) and, with
    ``moments``, the mean (M, 3) and second moment ``E[w w^T]`` (M, 3, 3) restricted to
    them: sliced along a height axis (:func:`_frame`), the slices' 2-D measure and
    moments exact (:func:`_polygon`), the height integral (against ``phi(t)``) by
    Gauss-Legendre between consecutive vertex heights, within ``_REACH`` of the
    nearest point's height (farther, the density is below exp(-46) of its largest
    value on the tetrahedron: ``|w|^2 >= d^2 + |w - p|^2`` for ``p`` the nearest point)."""
    m_ = v.shape[0]
    rot = _frame(v)
    u = np.einsum("mij,mvj->mvi", rot, v)
    order = np.argsort(u[..., 2], axis=1)
    u = np.take_along_axis(u, order[..., None], 1)
    h = u[..., 2]  # (M, 4) sorted
    _, tn = _nearest(u)
    lo = np.maximum(h[:, :3], (tn - _REACH)[:, None])  # (M, 3) the pieces, clipped
    hi = np.minimum(h[:, 1:], (tn + _REACH)[:, None])
    half = 0.5 * np.maximum(hi - lo, 0.0)
    t = lo[..., None] + half[..., None] * (_TET_NODES + 1)  # (M, 3, G)
    i, j = _SLICE_EDGES[..., 0], _SLICE_EDGES[..., 1]  # (3, 4)
    hi_, hj = h[:, i], h[:, j]  # (M, 3, 4)
    span = np.where(hj > hi_, hj - hi_, 1.0)
    s = np.clip((t[..., None] - hi_[:, :, None]) / span[:, :, None], 0.0, 1.0)  # (M,3,G,4)
    ui, uj = u[:, i, :2], u[:, j, :2]  # (M, 3, 4, 2)
    poly = ui[:, :, None] + s[..., None] * (uj - ui)[:, :, None]  # (M, 3, G, 4, 2)
    x, y = poly[..., 0], poly[..., 1]
    area = (x * np.roll(y, -1, -1) - np.roll(x, -1, -1) * y).sum(-1)
    poly = np.where((area < 0)[..., None, None], poly[..., ::-1, :], poly)
    with np.errstate(invalid="ignore"):
        logs, mean2, cov2 = _polygon(poly.reshape(-1, 4, 2), moments)
    with np.errstate(divide="ignore"):
        lv = (np.log(half)[..., None] + np.log(_TET_WEIGHTS) + _log_phi(t)
              + logs.reshape(t.shape))
    lv = np.where(half[..., None] > 0, lv, -np.inf).reshape(m_, -1)
    top = lv.max(1)
    safe_top = np.where(np.isfinite(top), top, 0.0)
    a = np.exp(lv - safe_top[:, None])  # (M, 3G)
    mass = a.sum(1)
    with np.errstate(divide="ignore"):
        logm = np.where(mass > 0, safe_top + np.log(np.where(mass > 0, mass, 1.0)), -np.inf)
    if not moments:
        return logm, None, None
    p = a / np.where(mass > 0, mass, 1.0)[:, None]
    tt = t.reshape(m_, -1)
    mean2 = mean2.reshape(m_, -1, 2)
    sec2 = cov2.reshape(m_, -1, 2, 2) + mean2[..., :, None] * mean2[..., None, :]
    full_m = np.stack([mean2[..., 0], mean2[..., 1], tt], -1)  # (M, 3G, 3)
    sec = np.empty((m_, tt.shape[1], 3, 3))
    sec[..., :2, :2] = sec2
    sec[..., :2, 2] = sec[..., 2, :2] = mean2 * tt[..., None]
    sec[..., 2, 2] = tt * tt
    mean = np.einsum("mq,mqi->mi", p, full_m)
    second = np.einsum("mq,mqij->mij", p, sec)
    # back from the rotated frame: w = rot^T u
    return (logm, np.einsum("mji,mj->mi", rot, mean),
            np.einsum("mki,mkl,mlj->mij", rot, second, rot))


def _polytopes(tets: np.ndarray, pair: np.ndarray, pairs: int, moments: bool, chunk: int
               = 4096) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per pair (its tetrahedra ``tets`` (M, 4, 3), whitened, owned by ``pair`` (M,)):
    log measure (P,), mean (P, 3) and covariance (P, 3, 3), summed in log scale."""
    parts = [_tetrahedra(tets[s:s + chunk], moments) for s in range(0, tets.shape[0], chunk)]
    logm = np.concatenate([q[0] for q in parts]) if parts else np.zeros(0)
    top = np.full(pairs, -np.inf)
    np.maximum.at(top, pair, logm)
    safe = np.where(np.isfinite(top), top, 0.0)
    a = np.exp(logm - safe[pair])
    mass = np.bincount(pair, a, pairs)
    with np.errstate(divide="ignore"):
        out = np.where(mass > 0, safe + np.log(np.where(mass > 0, mass, 1.0)), -np.inf)
    if not moments:
        return out, None, None
    mean_t = np.concatenate([q[1] for q in parts])
    sec_t = np.concatenate([q[2] for q in parts])
    norm = np.where(mass > 0, mass, 1.0)
    mean = np.stack([np.bincount(pair, a * mean_t[:, i], pairs) for i in range(3)], 1)
    mean /= norm[:, None]
    sec = np.stack([np.bincount(pair, a * sec_t[:, i, j], pairs)
                    for i in range(3) for j in range(3)], 1).reshape(pairs, 3, 3)
    sec /= norm[:, None, None]
    cov = sec - mean[:, :, None] * mean[:, None, :]
    cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
    bad = ~(mass > 0)
    mean[bad] = 0.0
    cov[bad] = np.eye(3)  # no tetrahedron left: the untruncated moments
    return out, mean, cov


# ------------------------------------------------------------------ the latent regions


@dataclass(frozen=True)
class _Regions:
    """Latent regions: maps ``A`` (R, D, k), ``b`` (R, D); ``vertices`` (R, W, k)
    (k = 1: the interval's ends; k = 2: the polygon counter-clockwise, padded by its
    last vertex), ``packed`` codes (R, bytes); ``prior_mass`` of their union."""

    A: Tensor
    b: Tensor
    vertices: Tensor
    packed: Tensor
    prior_mass: float
    tets: np.ndarray | None = None  # k = 3: (T, 4, 3) tetrahedra, by region
    tet_ptr: np.ndarray | None = None  # k = 3: (R + 1,) region r's are tets[ptr[r]:ptr[r+1]]


def _generator(generator: Any, what: str = "generator") -> tuple[SplineGraph, int]:
    """The float64 spline graph of ``generator`` (a module or its traced graph) and its
    latent dimension; a model that is not piecewise affine raises
    :class:`~maxaffine.UnsupportedOperation` from the trace."""
    base = generator.model if isinstance(generator, SplineGraph) else generator
    if not isinstance(base, nn.Module):
        raise MaxAffineTypeError(f"{what} must be a torch.nn.Module (or its SplineGraph), got "
                                 f"{type(generator).__name__}")
    check_parameters(base)
    param = next((p for p in base.parameters() if p.is_floating_point()), None)
    if isinstance(generator, SplineGraph) and (param is None or param.dtype == torch.float64):
        graph = generator
    else:
        module = copy.deepcopy(base).double() if param is not None and (
            param.dtype != torch.float64) else base
        if isinstance(generator, SplineGraph):
            shape = generator.input_shape
        else:
            first = next((m for m in base.modules() if isinstance(m, nn.Linear)), None)
            if first is None:
                raise MaxAffineError(f"{what}: cannot tell its latent dimension (no "
                                     "nn.Linear); pass its SplineGraph, ma.trace(G, z)")
            shape = (first.in_features,)
        graph = trace(module, torch.zeros(1, *shape, dtype=torch.float64))
    if len(graph.input_shape) != 1:
        raise MaxAffineError(f"{what} must take latent vectors (N, k), got input shape "
                             f"{graph.input_shape}")
    return graph, graph.input_shape[0]


def _maps(graph: SplineGraph, points: Tensor) -> tuple[Tensor, Tensor]:
    amap = affine_map(graph, points.to(torch.float64))
    r, k = points.shape
    return amap.A.reshape(r, -1, k).detach(), amap.B.reshape(r, -1).detach()


def _prior_box_mass(bound: float, k: int) -> float:
    return math.erf(bound / math.sqrt(2)) ** k


def _box_regions(graph: SplineGraph, domain: Any, bound: float) -> _Regions:
    """k = 3: the polytopes of :func:`maxaffine.partition_box`, each split into the
    tetrahedra (centroid of the region, centroid of a facet, an edge of that facet)."""
    if domain is None:
        lo = torch.full((3,), -bound, dtype=torch.float64)
        domain = partition_box(graph, lo, -lo, progress=False)
    if not isinstance(domain, Complex) or domain.dim != 3:
        raise MaxAffineTypeError("domain must be None or a Complex of the 3-D latent box "
                                 f"(partition_box), got {type(domain).__name__}")
    lat = domain._lattice
    r = domain.num_regions
    owner, chain, ends = lat.flags(3, np.arange(r))
    x = np.asarray(lat.x, dtype=np.float64)
    inner = domain._centroids(3)
    tets = np.stack([inner[chain[0]], lat.centroids(2)[chain[1]], x[ends[:, 0]],
                     x[ends[:, 1]]], 1)
    order = np.argsort(owner, kind="stable")
    tets = tets[order]
    ptr = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=r))])
    cells = domain._cell_vertices.tocsr()
    deg = np.diff(cells.indptr)
    width = int(deg.max()) if r else 1
    idx = cells.indptr[:-1, None] + np.minimum(np.arange(width), deg[:, None] - 1)
    verts = torch.from_numpy(x[cells.indices[idx]])
    a, b = _maps(graph, torch.from_numpy(inner))
    lo_, hi_ = x.min(0), x.max(0)
    mass = float(np.prod([0.5 * (math.erf(h / math.sqrt(2)) - math.erf(l_ / math.sqrt(2)))
                          for l_, h in zip(lo_, hi_, strict=True)]))
    return _Regions(a, b, verts, domain.packed, mass, tets, ptr)


def _exact_regions(graph: SplineGraph, k: int, domain: Any, bound: float) -> _Regions:
    if k == 3:
        return _box_regions(graph, domain, bound)
    if domain is None:
        lo = torch.full((k,), -bound, dtype=torch.float64)
        if k == 1:
            domain = partition_segment(graph, lo, -lo)
        else:
            square = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]],
                                  dtype=torch.float64) * bound
            domain = partition_plane(graph, square, progress=False)
    if k == 1:
        if not isinstance(domain, SegmentPartition):
            raise MaxAffineTypeError("domain must be None or a SegmentPartition of the latent "
                                     f"line (partition_segment), got {type(domain).__name__}")
        z0, z1 = (float(domain.x0.reshape(-1)[0]), float(domain.x1.reshape(-1)[0]))
        z = z0 + domain.breakpoints.double() * (z1 - z0)
        ends = torch.stack([z[:-1], z[1:]], 1).sort(1).values
        a, b = _maps(graph, ends.mean(1, keepdim=True))
        lo_, hi_ = min(z0, z1), max(z0, z1)
        mass = 0.5 * (math.erf(hi_ / math.sqrt(2)) - math.erf(lo_ / math.sqrt(2)))
        return _Regions(a, b, ends.unsqueeze(-1), domain.codes.packed(), mass)
    if not isinstance(domain, Partition):
        raise MaxAffineTypeError("domain must be None or a Partition of the latent plane "
                                 f"(partition_plane), got {type(domain).__name__}")
    sizes = domain.face_sizes.long()
    faces = domain.faces.long()
    last = faces.gather(1, (sizes - 1).clamp(min=0).unsqueeze(1))
    idx = torch.where(faces >= 0, faces, last)
    verts = domain.domain.to_input(domain.vertices.double()).reshape(-1, 2)
    poly = verts[idx]  # (R, W, 2)
    x, y = poly[..., 0], poly[..., 1]
    area = (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(1)
    poly = torch.where((area < 0)[:, None, None], poly.flip(1), poly)
    inner = domain.domain.to_input(domain.interior.double()).reshape(-1, 2)
    a, b = _maps(graph, inner)
    bounds = domain.domain.to_input(domain.domain.bounds.double()).reshape(-1, 2)
    bx, by = bounds[:, 0], bounds[:, 1]
    if float((bx * by.roll(-1) - bx.roll(-1) * by).sum()) < 0:
        bounds = bounds.flip(0)
    logm, _, _ = _polygon(bounds.numpy()[None], False)
    return _Regions(a, b, poly, domain.packed, float(np.exp(logm[0])))


# ------------------------------------------------------------------ per input and region


def _gaussians(reg: _Regions, x: Tensor, sigma: float, chunk: int = 4_000_000
               ) -> tuple[Tensor, Tensor, Tensor]:
    """``log c_r(x_n)`` (N, R), ``mu`` (N, R, k) and the Cholesky factor ``C`` of
    ``P_r = I + A_r^T A_r / sigma^2`` (R, k, k)."""
    A, b = reg.A, reg.b
    r, d, k = A.shape
    n = x.shape[0]
    prec = torch.eye(k, dtype=torch.float64) + A.transpose(1, 2) @ A / sigma**2
    chol, info = torch.linalg.cholesky_ex(prec)
    if not (bool(torch.isfinite(prec).all()) and bool(torch.isfinite(b).all())
            and not bool(info.any())):
        raise MaxAffineError("the generator's affine maps overflow float64 (A^T A / "
                             "noise_std^2 is not finite): scale its weights or noise_std")
    logdet = 2 * chol.diagonal(dim1=1, dim2=2).log().sum(1)  # (R,)
    cov = torch.cholesky_inverse(chol)
    logc = torch.empty(n, r, dtype=torch.float64)
    mu = torch.empty(n, r, k, dtype=torch.float64)
    step = max(1, chunk // max(1, n * d))
    for s in range(0, r, step):
        e = min(r, s + step)
        y = x[:, None, :] - b[None, s:e]  # (N, r, D)
        aty = torch.einsum("nrd,rdk->nrk", y, A[s:e]) / sigma**2
        m = torch.einsum("rkj,nrj->nrk", cov[s:e], aty)  # S = P^-1: P >= I, well conditioned
        res = y - torch.einsum("rdk,nrk->nrd", A[s:e], m)
        quad = (res * res).sum(-1) / sigma**2 + (m * m).sum(-1)
        logc[:, s:e] = -0.5 * (d * (_LOG_2PI + 2 * math.log(sigma)) + logdet[s:e] + quad)
        mu[:, s:e] = m
    return logc, mu, chol


def _truncated(reg: _Regions, mu: Tensor, chol: Tensor, moments: bool,
               select: Tensor, logc: Tensor | None = None, floor: Tensor | None = None
               ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """log Prob_{N(mu, S)}(region) (N, R) and the truncated means (N, R, k) and
    covariances (N, R, k, k), after whitening ``w = C^T (z - mu)``, for the pairs
    (input, region) in ``select`` (N, R) (elsewhere: -inf, and the untruncated
    moments). k = 3 with ``floor`` (N,): the tetrahedra at distance ``d`` from the
    whitened origin with ``log c_r(x) + log Phi(-d) < floor`` are left out
    (``Phi(-d)``, the half-space beyond the nearest point, bounds their measure)."""
    n, r, k = mu.shape
    ni, ri = select.nonzero(as_tuple=True)
    ct = chol.transpose(1, 2)  # (R, k, k)
    m = mu[ni, ri]  # (P, k)
    if k == 3:
        ptr = reg.tet_ptr
        count = ptr[1:] - ptr[:-1]
        rnp = ri.numpy()
        pair = np.repeat(np.arange(rnp.shape[0]), count[rnp])
        start = np.repeat(ptr[rnp], count[rnp])
        local = np.arange(pair.shape[0]) - np.repeat(np.cumsum(count[rnp]) - count[rnp],
                                                     count[rnp])
        tet = torch.from_numpy(reg.tets[start + local])  # (M, 4, 3)
        pt = torch.from_numpy(pair)
        w = torch.einsum("mij,mvj->mvi", ct[ri][pt], tet - m[pt][:, None, :]).numpy()
        if floor is not None and logc is not None:
            from scipy.special import log_ndtr

            dist, _ = _nearest(w)
            bound = (logc[ni, ri] - floor[ni]).numpy()[pair] + log_ndtr(-dist)
            keep = bound >= 0
            w, pair = w[keep], pair[keep]
        logm, mw, cw = _polytopes(w, pair, rnp.shape[0], moments)
    elif k == 1:
        w = torch.einsum("pij,pvj->pvi", ct[ri], reg.vertices[ri] - m[:, None, :]).numpy()
        logm, mw, vw = _interval_moments(w[:, 0, 0], w[:, 1, 0], moments)
        mw = None if mw is None else mw[..., None]
        cw = None if vw is None else vw[..., None, None]
    else:
        w = torch.einsum("pij,pvj->pvi", ct[ri], reg.vertices[ri] - m[:, None, :]).numpy()
        logm, mw, cw = _polygon(w, moments)
    full = torch.full((n, r), -math.inf, dtype=torch.float64)
    full[ni, ri] = torch.from_numpy(np.ascontiguousarray(logm))
    if not moments:
        return full, None, None
    # back to z: z = mu + C^{-T} w
    inv = torch.linalg.solve_triangular(ct, torch.eye(k, dtype=torch.float64).expand_as(ct),
                                        upper=True)  # C^{-T}
    mean = mu.clone()
    mean[ni, ri] = m + torch.einsum("pij,pj->pi", inv[ri], torch.from_numpy(mw))
    cov = (inv @ inv.transpose(1, 2)).expand(n, r, k, k).clone()
    cov[ni, ri] = torch.einsum("pij,pjk,plk->pil", inv[ri], torch.from_numpy(cw), inv[ri])
    return full, mean, cov


_DROP = 80.0  # pairs with c_r(x) < exp(-80) of the best c_r(x) Prob_r are left out


def _measure(reg: _Regions, logc: Tensor, mu: Tensor, chol: Tensor, moments: bool
             ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``_truncated`` on the pairs that matter: first each input's 16 regions of
    largest ``c_r(x)``, then every region with ``log c_r(x) >= best - 80``, ``best``
    the largest ``log c_r(x) + log Prob_r`` found; the rest (``c_r Prob_r <= c_r``)
    add less than ``R exp(-80)`` relative to ``p(x)``."""
    n, r = logc.shape
    top = logc.topk(min(16, r), dim=1).indices
    first = torch.zeros(n, r, dtype=torch.bool)
    first[torch.arange(n)[:, None], top] = True
    logm, _, _ = _truncated(reg, mu, chol, False, first)
    best = (logc + logm).amax(1, keepdim=True)
    select = logc >= best - _DROP
    # k = 3: tetrahedra below exp(-46) / (their number) of the best term add < 1e-20
    floor = None if reg.tets is None else best[:, 0] - _CUT - math.log(max(1, len(reg.tets)))
    return _truncated(reg, mu, chol, moments, select | first, logc, floor)


# ------------------------------------------------------------------ the estimator (k > 2)


def _sampled(graph: SplineGraph, x: Tensor, sigma: float, samples: int, seed: int,
             moments: bool) -> dict[str, Any]:
    """Importance sampling (module docstring): log p(x), its standard error, and the
    posterior's regions among the draws with their weights and moments."""
    gen = torch.Generator().manual_seed(seed)
    k = graph.input_shape[0]
    n = x.shape[0]
    z0 = torch.randn(samples, k, dtype=torch.float64, generator=gen)
    packed = codes_of(graph, z0).packed()
    _, first = np.unique(packed.numpy(), axis=0, return_index=True)
    pts = z0[torch.from_numpy(np.sort(first))]
    a, b = _maps(graph, pts)
    reg = _Regions(a, b, pts[:, None, :], packed[np.sort(first)], 1.0)
    logc, mu, chol = _gaussians(reg, x, sigma)
    pi = torch.softmax(logc, 1)  # (N, R)
    comp = torch.multinomial(pi, samples, replacement=True, generator=gen)  # (N, S)
    prior = torch.rand(n, samples, generator=gen) < 0.1
    eps = torch.randn(n, samples, k, dtype=torch.float64, generator=gen)
    ct = chol.transpose(1, 2)[comp]  # (N, S, k, k) upper: C^T
    step = torch.linalg.solve_triangular(ct, eps.unsqueeze(-1), upper=True)[..., 0]
    z = torch.where(prior[..., None], eps, mu.gather(1, comp[..., None].expand(-1, -1, k))
                    + step)
    # log q(z): the defensive mixture
    logdet = 2 * chol.diagonal(dim1=1, dim2=2).log().sum(1)  # log det P_r
    diff = z[:, :, None, :] - mu[:, None, :, :]  # (N, S, R, k)
    white = torch.einsum("rji,nsrj->nsri", chol, diff)  # C^T (z - mu)
    logn = -0.5 * (k * _LOG_2PI - logdet + (white * white).sum(-1))  # (N, S, R)
    logq_mix = torch.logsumexp(logn + pi.clamp(min=1e-300).log()[:, None, :], -1)
    logprior = -0.5 * (k * _LOG_2PI + (z * z).sum(-1))
    logq = torch.logaddexp(math.log(0.1) + logprior, math.log(0.9) + logq_mix)
    with torch.no_grad():
        flat = z.reshape(-1, k)
        out = graph.evaluate(flat).output.reshape(n, samples, -1)
        zcodes = codes_of(graph, flat).packed()
    d = out.shape[-1]
    loglik = -0.5 * (d * (_LOG_2PI + 2 * math.log(sigma))
                     + ((x[:, None, :] - out) ** 2).sum(-1) / sigma**2)
    logw = logprior + loglik - logq  # (N, S)
    top = logw.max(1, keepdim=True).values
    wt = (logw - top).exp()
    mean_w = wt.mean(1)
    se = wt.std(1) / math.sqrt(samples) / mean_w
    result: dict[str, Any] = {"log_likelihood": top[:, 0] + mean_w.log(),
                              "standard_error": se}
    if not moments:
        return result
    uniq, inverse = np.unique(zcodes.numpy(), axis=0, return_inverse=True)
    inverse = torch.from_numpy(inverse.reshape(-1)).reshape(n, samples)
    r = uniq.shape[0]
    norm = wt / wt.sum(1, keepdim=True)  # (N, S)
    onehot = torch.nn.functional.one_hot(inverse, r).double()  # (N, S, R)
    weights = torch.einsum("ns,nsr->nr", norm, onehot)
    safe = weights.clamp(min=1e-300)
    means = torch.einsum("ns,nsr,nsk->nrk", norm, onehot, z) / safe[..., None]
    second = torch.einsum("ns,nsr,nsk,nsl->nrkl", norm, onehot, z, z) / safe[..., None, None]
    covs = second - means[..., :, None] * means[..., None, :]
    rep = torch.stack([flat[(zcodes == torch.from_numpy(u)).all(1).nonzero()[0, 0]]
                       for u in uniq])
    ra, rb = _maps(graph, rep)
    rchol = torch.linalg.cholesky(torch.eye(k, dtype=torch.float64)
                                  + ra.transpose(1, 2) @ ra / sigma**2)
    _, gmu, _ = _gaussians(_Regions(ra, rb, rep[:, None], torch.from_numpy(uniq), 1.0), x,
                           sigma)
    result.update(weights=weights, means=means, covariances=covs, gaussian_means=gmu,
                  gaussian_covariances=torch.cholesky_inverse(rchol), slopes=ra, offsets=rb,
                  packed=torch.from_numpy(uniq), vertices=rep[:, None, :])
    return result


# ------------------------------------------------------------------ the result


@dataclass(frozen=True)
class GeneratorPosterior:
    """The posterior ``p(z | x)`` of a piecewise-affine generator's latent code: per
    input, a mixture over latent regions of Gaussians ``N(mu_r, S_r)`` truncated to
    the regions (Balestriero, Paris & Baraniuk, NeurIPS 2020; :func:`posterior`).

    Axes: N inputs, R regions, k latent dimensions, D outputs.
    ``log_likelihood`` (N,): ``log p(x)`` (the latent prior restricted to the latent
    domain; ``tail_mass`` is the prior mass left outside it). ``weights`` (N, R): the
    posterior probability of each region (rows sum to 1). ``means`` (N, R, k) and
    ``covariances`` (N, R, k, k): the moments of ``N(mu_r, S_r)`` restricted to region
    r; ``gaussian_means`` (N, R, k) ``mu_r`` and ``gaussian_covariances`` (R, k, k)
    ``S_r``, untruncated. Per region: ``packed`` codes (the convention of
    :meth:`maxaffine.Codes.packed`), ``vertices`` (R, W, k) (k = 1: the interval's
    ends; k = 2: the polygon counter-clockwise, padded by its last vertex; sampled:
    one latent point of the region), the generator's map ``G(z) = slopes @ z +
    offsets`` (``slopes`` (R, D, k), ``offsets`` (R, D)). ``method``: ``"exact"``, or
    ``"sampling"`` (an estimate: ``standard_error`` (N,) of ``log_likelihood``,
    and the regions are those the draws visited).
    """

    log_likelihood: Tensor
    weights: Tensor
    means: Tensor
    covariances: Tensor
    gaussian_means: Tensor
    gaussian_covariances: Tensor
    packed: Tensor
    vertices: Tensor
    slopes: Tensor = field(repr=False)
    offsets: Tensor = field(repr=False)
    noise_std: float = 1.0
    bound: float = 8.0
    tail_mass: float = 0.0
    method: str = "exact"
    standard_error: Tensor | None = None
    seconds: float = 0.0

    @property
    def num_regions(self) -> int:
        return int(self.weights.shape[1])

    @property
    def latent_dim(self) -> int:
        return int(self.means.shape[-1])

    @property
    def mean(self) -> Tensor:
        """(N, k) the posterior mean ``E[z | x] = sum_r w_r m_r``."""
        return torch.einsum("nr,nrk->nk", self.weights, self.means)

    @property
    def covariance(self) -> Tensor:
        """(N, k, k) the posterior covariance (law of total covariance)."""
        m = self.mean
        dev = self.means - m[:, None, :]
        within = torch.einsum("nr,nrkl->nkl", self.weights, self.covariances)
        return within + torch.einsum("nr,nrk,nrl->nkl", self.weights, dev, dev)

    def summary(self) -> dict[str, Any]:
        """Inputs, regions, latent and output sizes, the method, the mean log
        likelihood, the mean number of regions holding 99% of the posterior."""
        w = self.weights.detach()
        srt = w.sort(1, descending=True).values.cumsum(1)
        held = (srt < 0.99).sum(1) + 1 if w.numel() else torch.zeros(0)
        ll = self.log_likelihood.detach()
        return {"inputs": int(w.shape[0]), "regions": self.num_regions,
                "latent_dim": self.latent_dim, "outputs": int(self.offsets.shape[1]),
                "noise_std": self.noise_std, "bound": self.bound,
                "tail_mass": self.tail_mass, "method": self.method,
                "mean_log_likelihood": float(ll.mean()) if ll.numel() else None,
                "mean_regions_for_99pct": float(held.double().mean()) if w.numel() else None,
                "seconds": self.seconds}

    def to_json(self) -> str:
        """The summary, the log likelihoods, the weights and the posterior means."""
        se = self.standard_error
        return json.dumps({**self.summary(),
                           "log_likelihood": self.log_likelihood.tolist(),
                           "standard_error": None if se is None else se.tolist(),
                           "weights": self.weights.tolist(),
                           "mean": self.mean.tolist(),
                           "packed": [bytes(r.tolist()).hex() for r in self.packed]})

    def plot(self, ax=None, index: int = 0):
        """Input ``index``'s posterior: k = 2, the latent regions coloured by their
        posterior weight with the truncated means; k = 1, the posterior density;
        otherwise the weights of the regions, sorted."""
        import matplotlib.pyplot as plt

        n = int(self.weights.shape[0])
        if n == 0:
            raise MaxAffineError("this posterior holds no input to plot")
        i = arguments.integer(index, "index", minimum=-n, maximum=n - 1,
                              meaning=f"an input; the posterior has {n}") % n
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 4))
        w = self.weights[i].detach().numpy()
        if self.latent_dim == 2 and self.method == "exact":
            from matplotlib.collections import PolyCollection

            coll = PolyCollection(self.vertices.numpy(), array=w, cmap="viridis",
                                  edgecolors="0.7", linewidths=0.2)
            ax.add_collection(coll)
            ax.figure.colorbar(coll, ax=ax, label="posterior weight")
            m = self.means[i].detach().numpy()
            top = np.argsort(w)[-5:]
            ax.scatter(m[top, 0], m[top, 1], c="r", s=8, label="truncated means")
            lim = np.nanmax(np.abs(self.vertices.numpy()))
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xlabel("z1")
            ax.set_ylabel("z2")
        elif self.latent_dim == 1 and self.method == "exact":
            for r in np.argsort(w)[-50:]:
                lo_, hi_ = (float(v) for v in self.vertices[r, :, 0])
                mu = float(self.gaussian_means[i, r, 0])
                sd = math.sqrt(float(self.gaussian_covariances[r, 0, 0]))
                t = np.linspace(lo_, hi_, 50)
                dens = np.exp(-0.5 * ((t - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
                # the truncated density times its region's weight
                mass = math.exp(float(_log_interval(np.array((lo_ - mu) / sd),
                                                    np.array((hi_ - mu) / sd))))
                ax.plot(t, w[r] * dens / max(mass, 1e-300), lw=1)
            ax.set_xlabel("z")
            ax.set_ylabel("p(z | x)")
        else:
            ax.bar(np.arange(len(w)), np.sort(w)[::-1])
            ax.set_xlabel("region (by weight)")
            ax.set_ylabel("posterior weight")
        ax.set_title(f"posterior of input {i} ({self.num_regions} regions, {self.method})")
        return ax


# ------------------------------------------------------------------ the functions


def _inputs(x: Any, graph: SplineGraph) -> Tensor:
    check_tensor(x, "x")
    out = graph.evaluate(torch.zeros(1, *graph.input_shape, dtype=torch.float64)).output
    shape = tuple(out.shape[1:])
    d = int(math.prod(shape))
    if x.dim() < 1 or (tuple(x.shape[1:]) != shape and tuple(x.shape[1:]) != (d,)):
        raise MaxAffineError(f"x must be a batch of the generator's outputs (N, "
                             f"{', '.join(map(str, shape))}) or (N, {d}), got shape "
                             f"{tuple(x.shape)}")
    return x.detach().to(torch.float64).reshape(x.shape[0], d)


def _run(generator: Any, x: Any, noise_std: Any, domain: Any, bound: Any, method: Any,
         samples: Any, seed: Any, moments: bool) -> GeneratorPosterior | dict[str, Any]:
    t0 = time.perf_counter()
    sigma = arguments.number(noise_std, "noise_std", minimum=0.0, strict=True,
                             meaning="the standard deviation of the output noise")
    if not 1e-150 < sigma < 1e150:
        raise MaxAffineError(f"noise_std must be in (1e-150, 1e150), got {sigma!r}: its "
                             "square must be a normal float64")
    bound = arguments.number(bound, "bound", minimum=0.0, maximum=1e3, strict=True,
                             meaning="the latent box [-bound, bound]^k")
    method = arguments.choice(method, "method", _METHODS)
    samples = arguments.integer(samples, "samples", minimum=2, maximum=10**7,
                                meaning="importance samples per input")
    seed = arguments.integer(seed, "seed", minimum=0)
    graph, k = _generator(generator)
    base = generator.model if isinstance(generator, SplineGraph) else generator
    if isinstance(x, Tensor):
        check_dtype(base, x, "x")
    xs = _inputs(x, graph)
    if method == "auto":
        method = "exact" if k <= 3 else "sampling"
    if method == "exact" and k > 3:
        raise MaxAffineError(f"the exact posterior needs a latent dimension of 1, 2 or 3, the "
                             f"generator's is {k}: pass method='sampling' (an estimate "
                             "with its standard error)")
    if method == "sampling":
        if domain is not None:
            raise MaxAffineError("domain= is for the exact method (a latent partition to "
                                 "reuse); sampling draws from the whole prior")
        got = _sampled(graph, xs, sigma, samples, seed, moments)
        got.update(tail_mass=0.0, seconds=time.perf_counter() - t0)
        return got
    reg = _exact_regions(graph, k, domain, bound)
    logc, mu, chol = _gaussians(reg, xs, sigma)
    logm, mean, cov = _measure(reg, logc, mu, chol, moments)
    joint = logc + logm
    loglik = torch.logsumexp(joint, 1) if joint.shape[1] else torch.full(
        (xs.shape[0],), -math.inf, dtype=torch.float64)
    if not bool(torch.isfinite(loglik).all()):
        raise MaxAffineError("log p(x) underflows for some input (no latent region has "
                             "measurable posterior mass): check x's scale and noise_std")
    got = {"log_likelihood": loglik, "tail_mass": 1.0 - reg.prior_mass,
           "seconds": time.perf_counter() - t0, "standard_error": None}
    if moments:
        # softmax, not exp(joint - log p(x)): with huge |log p(x)| the latter is off by
        # its rounding (an ulp of 1e12 is 1e-4), the former sums to 1
        got.update(weights=torch.softmax(joint, 1), means=mean, covariances=cov,
                   gaussian_means=mu, gaussian_covariances=torch.cholesky_inverse(chol),
                   slopes=reg.A, offsets=reg.b, packed=reg.packed, vertices=reg.vertices)
    return got


def posterior(generator: nn.Module | SplineGraph, x: Tensor, noise_std: float, *,
              domain: SegmentPartition | Partition | Complex | None = None, bound: float = 8.0,
              method: str = "auto", samples: int = 4096, seed: int = 0
              ) -> GeneratorPosterior:
    """The posterior ``p(z | x)`` of a generator ``x = G(z) + eps``, ``z ~ N(0, I_k)``,
    ``eps ~ N(0, noise_std^2 I)``, ``G`` continuous piecewise affine: per input, a
    mixture of the Gaussians ``N(mu_r, S_r)`` truncated to the latent regions
    ``R_r``, with weights ``w_r ~ c_r(x) Prob_{N(mu_r, S_r)}(R_r)``,
    ``S_r = (I + A_r^T A_r / sigma^2)^(-1)``, ``mu_r = S_r A_r^T (x - b_r) / sigma^2``,
    ``c_r(x) = N(x; b_r, sigma^2 I + A_r A_r^T)`` (Balestriero, Paris & Baraniuk,
    NeurIPS 2020, Theorem 1; the module docstring says how each part is computed).

    ``generator``: a module (or its :class:`~maxaffine.SplineGraph`) taking latent
    vectors (N, k); one that is not piecewise affine raises
    :class:`~maxaffine.UnsupportedOperation`. ``x``: (N, *output_shape) or (N, D).
    ``method``: ``"exact"`` (k = 1, 2, 3: the regions of the latent box
    ``[-bound, bound]^k``, or of ``domain``, a :func:`~maxaffine.partition_segment` /
    :func:`~maxaffine.partition_plane` / :func:`~maxaffine.partition_box` of the
    latent space to reuse across calls),
    ``"sampling"`` (any k: an importance-sampling estimate with ``samples`` draws per
    input, reproducible by ``seed``), ``"auto"`` (exact where it can be).
    Returns a :class:`GeneratorPosterior`.
    """
    got = _run(generator, x, noise_std, domain, bound, method, samples, seed, True)
    method = "exact" if got["standard_error"] is None else "sampling"
    return GeneratorPosterior(
        got["log_likelihood"], got["weights"], got["means"], got["covariances"],
        got["gaussian_means"], got["gaussian_covariances"], got["packed"], got["vertices"],
        got["slopes"], got["offsets"], float(noise_std), float(bound), got["tail_mass"],
        method, got["standard_error"], got["seconds"])


def log_likelihood(generator: nn.Module | SplineGraph, x: Tensor, noise_std: float, *,
                   domain: SegmentPartition | Partition | Complex | None = None, bound: float = 8.0,
                   method: str = "auto", samples: int = 4096, seed: int = 0) -> Tensor:
    """``log p(x)`` (N,) of the generative model ``x = G(z) + eps`` (see
    :func:`posterior`: ``log sum_r c_r(x) Prob_{N(mu_r, S_r)}(R_r)``, exact for latent
    dimensions 1 to 3, an importance-sampling estimate otherwise), without the
    posterior's moments."""
    return _run(generator, x, noise_std, domain, bound, method, samples, seed,
                False)["log_likelihood"]

"""Inverting a piecewise-affine generator: the latent code of an output, from all or
some of its entries.

Ma, Balestriero & Baraniuk, "Invertibility of Convolutional Generative Networks from
Partial Measurements" (NeurIPS 2019) show that the latent code ``z*`` of a two-layer
convolutional ReLU generator is recovered from ``y = G(z*)``, even with missing
entries, by gradient descent on

    f(z) = || m * (G(z) - y) ||^2          (m: 1 on observed entries, 0 elsewhere).

A generator of affine layers and ReLUs is continuous piecewise affine (Balestriero &
Baraniuk, "A Spline Theory of Deep Networks", ICML 2018): on the region ``w`` of ``z``,
``G(z) = A_w z + b_w``, so ``f`` restricted to ``w`` is a convex quadratic whose
minimiser is a least-squares solution. :func:`invert` walks over latent regions with
these exact solves (``method="exact"``) or runs the paper's gradient descent
(``method="gradient"``); both return an :class:`Inversion`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .. import _arguments as arg
from ..affine import affine_map, check_overflow
from ..errors import MaxAffineError, MaxAffineTypeError
from ..graph import SplineGraph, check_parameters, trace
from ..vq import codes_of

Method = Literal["exact", "gradient"]
METHODS: tuple[str, ...] = ("exact", "gradient")
_BISECTIONS = 32  # halvings of a segment: its first region crossing to 2^-32 of its length


@dataclass(frozen=True)
class Inversion:
    """Latent codes recovered by :func:`invert`, one per output.

    Axes: N outputs, ``latent_shape`` the generator's input shape (per sample).
    ``z`` (N, *latent_shape): the best latent found; ``output`` (N, *output_shape):
    ``G(z)``; ``y`` and ``mask`` (N, *output_shape): the targets and their observed
    entries (unobserved targets are stored as 0); ``residual`` (N,): the root mean
    square of ``G(z) - y`` over the observed entries; ``code`` (N, bytes) uint8:
    ``z``'s VQ code, packed (:meth:`maxaffine.Codes.packed`); ``iterations`` (N,):
    steps over all starts (exact: least-squares solves; gradient: gradient steps);
    ``regions_visited`` (N,): latent regions the walk entered (exact: distinct regions
    per start, summed over starts; gradient: region changes along the path plus one
    per start); ``starts`` (N,): the starts used; ``rank`` (N,): the rank of the
    observed rows of ``A_w`` at ``z`` (``z`` is locally unique iff it equals the latent
    size); ``success`` (N,) bool:
    ``residual <= tol * (1 + rms(y observed))``; ``method``, ``tol``; ``seconds``: wall
    time of the whole call.
    """

    z: Tensor
    output: Tensor
    y: Tensor
    mask: Tensor
    residual: Tensor
    code: Tensor
    iterations: Tensor
    regions_visited: Tensor
    starts: Tensor
    rank: Tensor
    success: Tensor
    method: str
    tol: float
    seconds: float

    @property
    def num_samples(self) -> int:
        return int(self.z.shape[0])

    def summary(self) -> dict[str, Any]:
        """Samples, method, success rate, mean seconds per inversion, mean iterations,
        regions and starts, and the median and largest residual."""
        n = self.num_samples

        def mean(t: Tensor) -> float | None:
            return float(t.double().mean()) if n else None

        finite = self.residual[torch.isfinite(self.residual)].double()
        return {
            "samples": n, "method": self.method, "tol": self.tol,
            "success_rate": mean(self.success),
            "seconds_per_inversion": self.seconds / n if n else None,
            "mean_iterations": mean(self.iterations),
            "mean_regions_visited": mean(self.regions_visited),
            "mean_starts": mean(self.starts),
            "full_rank_fraction": mean(self.rank == math.prod(self.z.shape[1:])),
            "median_residual": float(finite.median()) if finite.numel() else None,
            "max_residual": float(finite.max()) if finite.numel() else None,
            "observed_fraction": float(self.mask.double().mean()) if self.mask.numel() else None,
        }

    def to_json(self) -> str:
        """The summary and, per sample, ``z``, residual, success, iterations, regions
        visited and the packed code as hex."""
        return json.dumps({
            **self.summary(),
            "z": self.z.reshape(self.num_samples, -1).double().tolist(),
            "residual": self.residual.double().tolist(),
            "success": self.success.tolist(),
            "iterations": self.iterations.tolist(),
            "regions_visited": self.regions_visited.tolist(),
            "rank": self.rank.tolist(),
            "code": [bytes(row.tolist()).hex() for row in self.code],
        })

    def plot(self, ax=None, *, n: int = 6):
        """Outputs that are images: the first ``n`` targets with their missing entries
        grey (top row) above the recovered ``G(z)`` (bottom row), as one mosaic.
        Other outputs: a histogram of log10 residuals, successes and failures apart."""
        from .._plotting import _as_image, _axes

        n = arg.integer(n, "n", minimum=1, meaning="images to draw")
        ax = _axes(ax, figsize=(1.3 * min(n, max(self.num_samples, 1)) + 1, 3))
        first = _as_image(self.y[0].detach().cpu()) if self.num_samples else None
        if first is not None and first.dim() == 2:
            _mosaic(ax, self, min(n, self.num_samples))
            return ax
        r = self.residual.detach().double().clamp_min(1e-300).log10()
        ok = self.success.cpu()
        bins = 20
        if r[ok].numel():
            ax.hist(r[ok].numpy(), bins=bins, color="tab:green", alpha=0.7, label="success")
        if r[~ok].numel():
            ax.hist(r[~ok].numpy(), bins=bins, color="tab:red", alpha=0.7, label="failure")
        ax.set_xlabel("log10 residual (RMS over observed entries)")
        ax.set_ylabel("outputs")
        ax.set_title(f"{self.method} inversion: {int(ok.sum())}/{self.num_samples} recovered",
                     fontsize=9)
        if self.num_samples:
            ax.legend(fontsize=8)
        return ax


def _mosaic(ax, inv: Inversion, n: int) -> None:
    """Targets (missing entries NaN: drawn grey) over recovered outputs, side by side."""
    import matplotlib as mpl

    from .._plotting import _as_image

    rows = []
    for t in (inv.y, inv.output):
        tiles = []
        for i in range(n):
            img = _as_image(t[i].detach().double().cpu()).clone()
            if t is inv.y:
                img[~_as_image(inv.mask[i].cpu())] = math.nan
            tiles += [img, torch.full((img.shape[0], 1), math.nan, dtype=img.dtype)]
        rows += [torch.cat(tiles[:-1], 1), torch.full((1, tiles[0].shape[1] * n + n - 1),
                                                       math.nan, dtype=torch.float64)]
    cmap = mpl.colormaps["gray"].with_extremes(bad="#c8c8ff")
    ax.imshow(torch.cat(rows[:-1], 0).numpy(), cmap=cmap, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ok = int(inv.success[:n].sum())
    ax.set_title(f"top: targets (missing entries blue), bottom: G(z), {inv.method} "
                 f"({ok}/{n} recovered)", fontsize=8)


# ---------------------------------------------------------------------------- checks


def _latent_shape(generator: Any, latent_shape: Any) -> tuple[int, ...] | None:
    """``latent_shape`` as a tuple, or inferred from a graph or a first ``nn.Linear``."""
    if latent_shape is not None:
        if isinstance(latent_shape, Tensor | str | bytes) or not isinstance(
                latent_shape, int | Sequence) or isinstance(latent_shape, bool):
            raise MaxAffineTypeError(f"latent_shape must be an int or a tuple of ints, got "
                                     f"{type(latent_shape).__name__} {latent_shape!r}")
        items = [latent_shape] if not isinstance(latent_shape, Sequence) else list(latent_shape)
        if not items:
            raise MaxAffineError("latent_shape is empty: pass the latent code's shape, e.g. 8")
        shape = tuple(arg.integer(v, "latent_shape", minimum=1, maximum=1 << 20,
                                  meaning="the latent code's shape") for v in items)
        if isinstance(generator, SplineGraph) and generator.input_shape != shape:
            raise MaxAffineError(f"latent_shape {shape} differs from the graph's input shape "
                                 f"{generator.input_shape}: leave latent_shape out")
        return shape
    if isinstance(generator, SplineGraph):
        return generator.input_shape
    first = next((m for m in generator.modules() if next(m.parameters(False), None)
                  is not None), None)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    what = type(first).__name__ if first is not None else "no layer with parameters"
    raise MaxAffineError(f"cannot infer the latent shape of the generator (its first layer "
                         f"is {what}, not an nn.Linear): pass latent_shape=(C, H, W), or "
                         "a traced maxaffine.SplineGraph")


def _graph(generator: Any, latent_shape: Any, dtype: torch.dtype) -> SplineGraph:
    if not isinstance(generator, nn.Module | SplineGraph):
        raise MaxAffineTypeError(f"generator must be a torch.nn.Module or a "
                                 f"maxaffine.SplineGraph, got {type(generator).__name__}")
    shape = _latent_shape(generator, latent_shape)
    if isinstance(generator, SplineGraph):
        graph = generator
    else:
        param = next((p for p in generator.parameters() if p.is_floating_point()), None)
        example = torch.zeros((1, *shape), dtype=param.dtype if param is not None else dtype)
        graph = trace(generator, example)  # UnsupportedOperation: not piecewise affine
    check_parameters(graph)
    return graph


def _targets(graph: SplineGraph, y: Any, mask: Any) -> tuple[Tensor, Tensor]:
    """``y`` (N, *output_shape) with unobserved entries 0, and the mask as bools."""
    if not isinstance(y, Tensor):
        raise MaxAffineTypeError(f"y must be a torch.Tensor (N, *output_shape), got "
                                 f"{type(y).__name__}")
    if not y.is_floating_point():
        raise MaxAffineTypeError(f"y has dtype {y.dtype}; pass floating-point outputs of the "
                                 "generator's dtype (y.double() or y.float())")
    shape = graph.output_shape
    if tuple(y.shape[1:]) != shape:
        hint = ": add a batch axis with y.unsqueeze(0)" if tuple(y.shape) == shape else ""
        raise MaxAffineError(f"y has shape {tuple(y.shape)}; the generator's outputs are "
                             f"(N, {', '.join(map(str, shape))}){hint}")
    arg.check_dtype(graph.model, y, "y")
    y = y.detach()
    if mask is None:
        m = torch.ones(y.shape, dtype=torch.bool)
    else:
        if not isinstance(mask, Tensor):
            raise MaxAffineTypeError(f"mask must be a bool tensor of y's shape or None, got "
                                     f"{type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise MaxAffineTypeError(f"mask has dtype {mask.dtype}; pass bools (True: "
                                     "observed), e.g. mask.bool()")
        if tuple(mask.shape) == shape:
            mask = mask.expand(y.shape)
        if mask.shape != y.shape:
            raise MaxAffineError(f"mask has shape {tuple(mask.shape)}; it must be y's shape "
                                 f"{tuple(y.shape)} (or one output's, {shape}, shared)")
        m = mask.detach().clone()
    observed = m.reshape(len(y), math.prod(shape)).sum(1)
    if bool((observed == 0).any()):
        i = int((observed == 0).nonzero()[0])
        raise MaxAffineError(f"mask observes no entry of output {i}: its latent code is "
                             "undetermined; observe at least one entry per output")
    bad = m & ~torch.isfinite(y)
    if bool(bad.any()):
        raise MaxAffineError(f"y holds {int((bad & torch.isnan(y)).sum())} NaN and "
                             f"{int((bad & torch.isinf(y)).sum())} infinite observed value(s): "
                             "mark them unobserved in mask, or fix y")
    return torch.where(m, y, torch.zeros((), dtype=y.dtype)), m


# ---------------------------------------------------------------------------- the walk


def _forward(graph: SplineGraph, z: Tensor) -> tuple[Tensor, Tensor]:
    """``G(z)`` flattened (n, C) and the packed codes (n, bytes)."""
    ev = graph.run(z)
    return ev.output.reshape(len(z), -1), codes_of(graph, ev.codes, len(z)).packed()


def _loss(out: Tensor, y: Tensor, m: Tensor) -> Tensor:
    """Per row: the sum of squares over observed entries, in float64."""
    return ((out.double() - y) * m).square().sum(1)


class _Best:
    """The best latent per sample over starts."""

    def __init__(self, n: int, d: int, dtype: torch.dtype):
        self.z = torch.zeros((n, d), dtype=dtype)
        self.f = torch.full((n,), math.inf, dtype=torch.float64)

    def offer(self, idx: Tensor, z: Tensor, f: Tensor) -> None:
        better = f < self.f[idx]
        self.z[idx[better]] = z[better]
        self.f[idx[better]] = f[better]


def _exact(graph: SplineGraph, y: Tensor, m: Tensor, starts: Tensor, max_steps: int,
           goal: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The active-set walk over latent regions, batched over samples.

    A start's walk repeats, on the region ``w`` of ``z``: (1) the region's affine map
    ``(A_w, b_w)`` on the observed rows; (2) the least-squares step ``delta`` (minimum
    norm: the nearest minimiser) of ``|| m (A_w (z + delta) + b_w - y) ||``; (3) if
    ``z + delta`` has ``w``'s code, it minimises ``f`` over ``w``: the start ends (a
    success if the residual is at ``goal``); else, if ``f(z + delta) < f(z)``, move
    there; else move along the segment to its first crossing out of ``w`` (found by
    bisection of the codes; ``f`` decreases along it, since ``f`` on ``w`` is a
    convex quadratic with its minimum at ``z + delta``), just past it. A start also
    ends when a region is entered twice, ``f`` does not decrease, or after
    ``max_steps`` solves; the next start (if any) then begins. Returns the best ``z``,
    iterations, regions visited and starts used per sample."""
    n, k, d = starts.shape
    best = _Best(n, d, starts.dtype)
    iters = torch.zeros(n, dtype=torch.int64)
    regions = torch.zeros(n, dtype=torch.int64)
    used = torch.zeros(n, dtype=torch.int64)
    z = starts[:, 0].clone()
    start = torch.zeros(n, dtype=torch.int64)
    steps = torch.zeros(n, dtype=torch.int64)
    visited: list[set[bytes]] = [set() for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool)
    out, code = _forward(graph, z)
    f = _loss(out, y, m)
    for i in range(n):
        visited[i].add(bytes(code[i].tolist()))
    regions += 1
    used += 1
    while not bool(done.all()):
        idx = (~done).nonzero().squeeze(1)
        za, fa, ca, ya, ma_ = z[idx], f[idx], code[idx], y[idx], m[idx]
        amap = affine_map(graph, za.reshape(len(idx), *graph.input_shape), mode="forward")
        A = amap.A.reshape(len(idx), -1, d).double() * ma_.unsqueeze(2)
        rhs = (ya - amap.B.double()) * ma_ - (A @ za.double().unsqueeze(2)).squeeze(2)
        delta = torch.linalg.lstsq(A, rhs.unsqueeze(2), driver="gelsd").solution.squeeze(2)
        zh = (za.double() + delta).to(z.dtype)
        oh, ch = _forward(graph, zh.reshape(len(idx), *graph.input_shape))
        fh = _loss(oh, ya, ma_)
        iters[idx] += 1
        steps[idx] += 1
        inside = (ch == ca).all(1)
        jump = ~inside & (fh < fa)
        # (3a) the region's minimiser lies in the region: the start ends there
        new_z, new_f, new_c = za.clone(), fa.clone(), ca.clone()
        new_z[inside | jump], new_f[inside | jump] = zh[inside | jump], fh[inside | jump]
        new_c[jump] = ch[jump]
        # (3b) first crossing of the segment out of the region, just past it
        walk = ~inside & ~jump
        if bool(walk.any()):
            zc, fc, cc = _crossing(graph, za[walk], delta[walk], ca[walk], ya[walk], ma_[walk])
            new_z[walk], new_f[walk], new_c[walk] = zc, fc, cc
        ended = inside.clone()
        for j in (~inside).nonzero().squeeze(1).tolist():
            key = bytes(new_c[j].tolist())
            s = int(idx[j])
            if key in visited[s] or not bool(new_f[j] < fa[j]):
                ended[j] = True  # a region entered twice, or no decrease
            else:
                visited[s].add(key)
                regions[s] += 1
        ended |= steps[idx] >= max_steps
        z[idx], f[idx], code[idx] = new_z, new_f, new_c
        # a start ends: keep its best point; success ends the sample, else restart
        again = _restart(idx[ended], z, f, best, goal, start, k, done, used, steps, starts)
        if again.numel():
            o2, c2 = _forward(graph, z[again].reshape(len(again), *graph.input_shape))
            f[again], code[again] = _loss(o2, y[again], m[again]), c2
            for s, row in zip(again.tolist(), c2, strict=True):
                visited[s] = {bytes(row.tolist())}
            regions[again] += 1
    return best.z, iters, regions, used


def _crossing(graph: SplineGraph, z: Tensor, delta: Tensor, code: Tensor, y: Tensor,
              m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For each row, the point just past the first region crossing of the segment
    ``z + t delta``, t in (0, 1] (the region is convex: the segment leaves it once),
    by bisection on whether the codes still equal ``code``; with its loss and code."""
    lo = torch.zeros(len(z), dtype=torch.float64)
    hi = torch.ones(len(z), dtype=torch.float64)
    zd = z.double()
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        _, c = _forward(graph, (zd + mid[:, None] * delta).to(z.dtype).reshape(
            len(z), *graph.input_shape))
        same = (c == code).all(1)
        lo = torch.where(same, mid, lo)
        hi = torch.where(same, hi, mid)
    zc = (zd + hi[:, None] * delta).to(z.dtype)
    out, c = _forward(graph, zc.reshape(len(z), *graph.input_shape))
    return zc, _loss(out, y, m), c


def _gradient(graph: SplineGraph, y: Tensor, m: Tensor, starts: Tensor, max_steps: int,
              goal: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradient descent on ``f`` with a backtracking (Armijo) step per sample: the
    trial ``z - eta grad f(z)`` is taken if ``f`` drops by at least ``eta/2 ||grad||^2``
    (then ``eta`` doubles), else ``eta`` halves and ``z`` stays; ``eta`` starts at 1.
    Each trial is one iteration (one forward and backward pass). A start ends at
    ``goal``, after ``max_steps`` iterations, or when ``eta`` falls below 1e-30 (a
    stationary point); then the next start (if any) begins."""
    n, k, d = starts.shape
    best = _Best(n, d, starts.dtype)
    iters = torch.zeros(n, dtype=torch.int64)
    regions = torch.zeros(n, dtype=torch.int64)
    used = torch.ones(n, dtype=torch.int64)
    z = starts[:, 0].clone()
    start = torch.zeros(n, dtype=torch.int64)
    steps = torch.zeros(n, dtype=torch.int64)
    eta = torch.ones(n, dtype=torch.float64)
    done = torch.zeros(n, dtype=torch.bool)

    def value_and_grad(zz: Tensor, yy: Tensor, mm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        zz = zz.detach().requires_grad_(True)
        with torch.enable_grad():
            ev = graph.run(zz.reshape(len(zz), *graph.input_shape))
            loss = _loss(ev.output.reshape(len(zz), -1), yy, mm)
            (g,) = torch.autograd.grad(loss.sum(), zz)
        return loss.detach(), g.detach(), codes_of(graph, ev.codes, len(zz)).packed()

    f, g, code = value_and_grad(z, y, m)
    regions += 1
    while not bool(done.all()):
        idx = (~done).nonzero().squeeze(1)
        za, ga, ea = z[idx], g[idx], eta[idx]
        trial = (za.double() - ea[:, None] * ga.double()).to(z.dtype)
        ft, gt, ct = value_and_grad(trial, y[idx], m[idx])
        iters[idx] += 1
        steps[idx] += 1
        ok = ft <= f[idx] - 0.5 * ea * ga.double().square().sum(1)
        moved = idx[ok]
        regions[moved] += (ct[ok] != code[moved]).any(1).long()
        z[moved], f[moved], g[moved], code[moved] = trial[ok], ft[ok], gt[ok], ct[ok]
        eta[idx] = torch.where(ok, (ea * 2).clamp_max(1e30), ea / 2)
        ended = (f[idx] <= goal[idx]) | (steps[idx] >= max_steps) | (eta[idx] < 1e-30)
        again = _restart(idx[ended], z, f, best, goal, start, k, done, used, steps, starts)
        if again.numel():
            eta[again] = 1.0
            f[again], g[again], code[again] = value_and_grad(z[again], y[again], m[again])
            regions[again] += 1
    return best.z, iters, regions, used


def _restart(end: Tensor, z: Tensor, f: Tensor, best: Any, goal: Tensor, start: Tensor,
             k: int, done: Tensor, used: Tensor, steps: Tensor, starts: Tensor) -> Tensor:
    """The starts ``end`` that ended: keep each one's best point; a sample is done when
    solved or out of starts, else it moves to its next start (``z`` set there).
    Returns the samples that restart."""
    if not end.numel():
        return end
    best.offer(end, z[end], f[end])
    solved = best.f[end] <= goal[end]
    last = start[end] + 1 >= k
    done[end[solved | last]] = True
    again = end[~solved & ~last]
    if again.numel():
        start[again] += 1
        used[again] += 1
        steps[again] = 0
        z[again] = starts[again, start[again]]
    return again


# ---------------------------------------------------------------------------- invert


def invert(
    generator: nn.Module | SplineGraph,
    y: Tensor,
    mask: Tensor | None = None,
    *,
    method: Method = "exact",
    latent_shape: int | Sequence[int] | None = None,
    max_steps: int | None = None,
    restarts: int = 4,
    tol: float | None = None,
    seed: int = 0,
) -> Inversion:
    """The latent codes ``z`` with ``G(z) = y`` on the observed entries, for a batch of
    outputs ``y`` of a piecewise-affine generator ``G`` (Ma, Balestriero & Baraniuk,
    "Invertibility of Convolutional Generative Networks from Partial Measurements",
    NeurIPS 2019): both methods minimise

        f(z) = || mask * (G(z) - y) ||^2.

    ``generator``: a module of affine layers and piecewise-affine nonlinearities
    (linear, transposed / plain convolutions, upsampling, reshapes, ReLU, leaky ReLU,
    ...; anything :func:`maxaffine.trace` takes), or its traced
    :class:`~maxaffine.SplineGraph`; another op (sigmoid, tanh) raises
    :class:`~maxaffine.UnsupportedOperation`. ``y``: (N, *output_shape) of the
    generator's dtype (one output: a batch of 1). ``mask``: bools, True where ``y``
    is observed, of ``y``'s shape (or one output's shape, shared); None: all observed.
    Unobserved entries of ``y`` are ignored (they may be NaN). ``latent_shape``: the
    generator's input shape per sample; default the graph's input shape, or the
    ``in_features`` of the generator's first layer when that is an ``nn.Linear``
    (convolutional first layers need it given).

    ``method="exact"``: on the region ``w`` of ``z``, ``G(z) = A_w z + b_w``
    (:func:`maxaffine.affine_map`), so ``f`` restricted to ``w`` is a convex quadratic;
    its minimiser is the least-squares solution (float64, minimum-norm step from
    ``z``). If the solution lies in ``w`` (its codes are ``w``'s), it is the minimum of
    ``f`` over ``w`` and the start ends; otherwise the walk moves to the solution if
    ``f`` decreases there, else along the segment towards it to just past its first
    region boundary (``f`` decreases along that segment). A start ends when the
    solution lies in its region, a region is entered twice, ``f`` stops decreasing,
    or after ``max_steps`` solves (default 100). ``method="gradient"``: gradient
    descent on ``f`` with a backtracking (Armijo) step size, starting at 1, halved
    when a step does not decrease ``f`` by half its first-order prediction, doubled
    after each accepted step; ``max_steps`` gradient steps per start (default 2000).

    Starts: ``z = 0`` first, then up to ``restarts`` draws from N(0, I) (seeded by
    ``seed``, the same for every batch), each used only while the output is not yet
    inverted. ``tol``: an output counts as inverted (``success``) when the RMS of
    ``G(z) - y`` over its observed entries is at most ``tol * (1 + rms(y observed))``;
    default 1e-6 for float64 generators, 1e-4 otherwise. The best start's ``z`` is
    returned in every case, with its residual: for a ``y`` outside the generator's
    range ``success`` is False and ``residual`` the distance reached. Work is batched
    over outputs; outputs that are done leave the batch.

    >>> G = torch.nn.Sequential(torch.nn.Linear(3, 12), torch.nn.ReLU(),
    ...                         torch.nn.Linear(12, 24)).double()
    >>> z = torch.randn(5, 3, dtype=torch.float64)
    >>> inv = invert(G, G(z).detach())
    >>> bool(inv.success.all()), bool(torch.allclose(inv.z, z))
    (True, True)
    """
    t0 = time.perf_counter()
    method = arg.choice(method, "method", METHODS)
    restarts = arg.integer(restarts, "restarts", minimum=0, maximum=10_000,
                           meaning="random starts after z = 0")
    seed = arg.integer(seed, "seed", minimum=0, meaning="the random starts' seed")
    if max_steps is None:
        max_steps = 100 if method == "exact" else 2000
    max_steps = arg.integer(max_steps, "max_steps", minimum=1, maximum=10**7,
                            meaning="steps per start")
    dtype = y.dtype if isinstance(y, Tensor) and y.is_floating_point() else torch.float64
    graph = _graph(generator, latent_shape, dtype)
    yt, m = _targets(graph, y, mask)
    if tol is None:
        tol = 1e-6 if yt.dtype == torch.float64 else 1e-4
    tol = arg.number(tol, "tol", minimum=0.0, meaning="relative RMS residual")
    n, shape = len(yt), graph.input_shape
    d = math.prod(shape)
    if n == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return Inversion(
            z=yt.new_zeros((0, *shape)), output=yt.clone(), y=yt, mask=m,
            residual=torch.zeros(0, dtype=torch.float64),
            code=_forward(graph, yt.new_zeros((1, *shape)))[1][:0], iterations=empty,
            regions_visited=empty, starts=empty, rank=empty,
            success=torch.zeros(0, dtype=torch.bool),
            method=method, tol=tol, seconds=time.perf_counter() - t0)
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randn(restarts, d, generator=gen, dtype=torch.float64)
    starts = torch.cat([torch.zeros(n, 1, d, dtype=torch.float64),
                        draws.expand(n, restarts, d)], 1).to(yt.dtype)
    yf, mf = yt.reshape(n, -1).double(), m.reshape(n, -1).to(torch.float64)
    count = mf.sum(1)
    scale = 1 + ((yf * mf).square().sum(1) / count).sqrt()
    goal = (tol * scale).square() * count  # f at which an output counts as inverted
    with torch.no_grad():
        run = _exact if method == "exact" else _gradient
        z, iters, regions, used = run(graph, yf, mf, starts, max_steps, goal)
        z = z.reshape(n, *shape)
        out, code = _forward(graph, z)
        check_overflow("the inversion", {"z": z, "G(z)": out})
        A = affine_map(graph, z, mode="forward").A.reshape(n, -1, d).double() * mf[:, :, None]
        sv = torch.linalg.svdvals(A)
        cut = sv[:, :1] * max(A.shape[1], d) * torch.finfo(yt.dtype).eps
        rank = (sv > cut).sum(1)
    residual = (_loss(out, yf, mf) / count).sqrt()
    return Inversion(
        z=z, output=out.reshape(yt.shape), y=yt, mask=m, residual=residual, code=code,
        iterations=iters, regions_visited=regions, starts=used, rank=rank,
        success=residual <= tol * scale, method=method, tol=tol,
        seconds=time.perf_counter() - t0)

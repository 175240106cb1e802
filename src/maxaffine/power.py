"""Power diagrams of max-affine spline layers, and their subdivision.

Balestriero, Cosentino, Aazhang & Baraniuk, "The Geometry of Deep Networks: Power
Diagram Subdivision" (NeurIPS 2019), Thm. 2 and 3. A MASO layer with slopes
``A[k, r, :]`` and offsets ``B[k, r]`` (unit k, piece r) selects, for its input
``h``, the code ``r_k = argmax_r <A[k,r], h> + B[k,r]`` of every unit. The sum of
the units decouples, ``sum_k max_r (...) = max_r <mu[r], h> + sum_k B[k, r_k]``
over layer codes ``r = (r_1, ..., r_K)``, with

    mu[r]  = sum_k A[k, r_k, :]                       (the cell's centroid)
    rad[r] = ||mu[r]||^2 + 2 sum_k B[k, r_k]          (its radius),

and ``argmax_r 2 <mu[r], h> + 2 sum_k B[k, r_k] = argmin_r ||h - mu[r]||^2 - rad[r]``
(subtract the constant ``||h||^2``): the codes are the cells of a power diagram
(Thm. 2). Composition (Thm. 3): on a region ``w`` of the earlier layers, where the
layer input is ``h = A_w x + B_w``, the layer induces the input-space diagram

    mu_w[r]  = A_w^T mu[r]
    rad_w[r] = ||mu_w[r]||^2 + 2 sum_k (B[k, r_k] + <A[k, r_k, :], B_w>).

Which affine map feeds a layer. Layers are the nonlinearities of the spline graph
(``graph.layers``, named as in :func:`maxaffine.codes`). The *layer input* of layer
``l`` is the output of layer ``l - 1`` (the model's input for the first layer), and
the layer's MASO is its nonlinearity applied to its pre-activation, an affine
function of that input (the convolution / batch-norm / ... in between). In a
residual network the pre-activation also reads tensors from before layer
``l - 1``: it is not a function of that input alone, so only the input-space form
exists there (``input_space=True``, which works for every layer).

Pieces. ReLU ``(0, z)``, leaky ReLU / PReLU ``(a z, z)``, abs ``(-z, z)``,
max-pool the window's entries, ``torch.maximum(a, b)`` ``(a, b)`` and
``minimum`` ``(-a, -b)`` (its code is the argmax of these). Hardtanh is not a
single max of its pieces, and a leaky slope ``a >= 1`` turns ``max(a z, z)`` the
other way; for them the code is the argmax of the *selection* pieces
``P_i(z) = sum_{j <= i} (z - b_j)`` over the finite breakpoints ``b_j`` (ReLU:
``(0, z)``), which we use instead (same cells, other centroids).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import _arguments as arg
from ._arguments import check_tensor
from ._autodiff import jacobian, pullback
from .affine import check_overflow
from .errors import MaxAffineError, MaxAffineTypeError
from .graph import SplineGraph, as_graph, check_input

LayerKey = str | int  # a layer given by name or by index


@dataclass(frozen=True)
class PowerDiagram:
    """Every cell of one MASO layer's power diagram (Balestriero et al. 2019, Thm. 2),
    from :func:`power_diagram`.

    ``codes`` (M, K) int64: a table of the layer's integer codes, one row per cell
    (unit k selects piece ``codes[m, k]``; the integers of that layer in
    :class:`maxaffine.Codes`, flattened, never packed); ``mu`` (M, D): centroids;
    ``rad`` (M,): radii; the cell of ``h`` (flattened to D) is
    ``argmin_m ||h - mu[m]||^2 - rad[m]``.
    """

    codes: Tensor
    mu: Tensor
    rad: Tensor

    @property
    def num_cells(self) -> int:
        return self.codes.shape[0]

    def power(self, h: Tensor) -> Tensor:
        """Power distances (N, M) of points ``h`` (N, D) (or (N, *shape)) to every cell."""
        check_tensor(h, "h")
        d = self.mu.shape[1]
        if h.dim() < 1 or math.prod(h.shape[1:]) != d:
            raise MaxAffineError(f"points must be a batch (N, {d}) (or (N, *shape) of {d} "
                                 f"values each), got shape {tuple(h.shape)}: the diagram lives "
                                 f"in {d} dimensions")
        h = h.reshape(h.shape[0], d).to(self.mu.dtype)
        d2 = (h.pow(2).sum(1, keepdim=True) - 2 * h @ self.mu.T
              + self.mu.pow(2).sum(1).unsqueeze(0))
        return d2 - self.rad.unsqueeze(0)

    def assign(self, h: Tensor) -> Tensor:
        """The code (N, K) of the cell of each point: the argmin of the power distance."""
        return self.codes[self.power(h).argmin(1)]

    def plot(self, ax=None, bounds: Sequence[float] = (-1.0, 1.0, -1.0, 1.0),
             resolution: int = 300):
        """For a 2-D layer input: the cells (argmin on a grid) and their centroids."""
        import matplotlib.pyplot as plt

        if self.mu.shape[1] != 2:
            raise MaxAffineError(f"plot needs a 2-D layer input, this one has "
                                 f"{self.mu.shape[1]} dimensions")
        if isinstance(bounds, str | bytes) or not isinstance(bounds, Sequence | Tensor) or (
                isinstance(bounds, Tensor) and bounds.dim() != 1) or len(bounds) != 4:
            raise MaxAffineError(f"bounds must be 4 numbers (x0, x1, y0, y1), got {bounds!r}")
        x0, x1, y0, y1 = (arg.number(b, f"bounds[{i}]") for i, b in enumerate(bounds))
        if not (x0 < x1 and y0 < y1):
            raise MaxAffineError(f"bounds (x0, x1, y0, y1) must have x0 < x1 and y0 < y1, got "
                                 f"{(x0, x1, y0, y1)}")
        resolution = arg.integer(resolution, "resolution", minimum=2, maximum=4096,
                                 meaning="grid points per side")
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 5))
        gx, gy = torch.meshgrid(torch.linspace(x0, x1, resolution),
                                torch.linspace(y0, y1, resolution), indexing="xy")
        pts = torch.stack([gx.flatten(), gy.flatten()], 1).to(self.mu.dtype)
        cell = self.power(pts).argmin(1).reshape(resolution, resolution)
        perm = torch.randperm(self.num_cells, generator=torch.Generator().manual_seed(0))
        ax.imshow(perm[cell].numpy(), origin="lower", extent=(x0, x1, y0, y1),
                  cmap="tab20", interpolation="nearest")
        mu = self.mu.detach().double().numpy()
        ax.scatter(mu[:, 0], mu[:, 1], s=12, c="k", marker="x")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title(f"power diagram: {self.num_cells} cells (x: centroids)", fontsize=10)
        return ax

    def summary(self) -> dict[str, Any]:
        """Cells, units, dimension, and the ranges of the radii and centroid norms."""
        norms = self.mu.detach().norm(dim=1)
        return {"cells": self.num_cells, "units": int(self.codes.shape[1]),
                "dimension": int(self.mu.shape[1]),
                "rad_min": float(self.rad.min()), "rad_max": float(self.rad.max()),
                "mu_norm_min": float(norms.min()), "mu_norm_max": float(norms.max())}

    def to_json(self) -> str:
        """The summary and every cell: code, centroid, radius."""
        return json.dumps({**self.summary(), "codes": self.codes.tolist(),
                           "mu": self.mu.detach().tolist(), "rad": self.rad.detach().tolist()})


@dataclass(frozen=True)
class PowerCells:
    """The power-diagram cell of each input's region at one layer, from
    :func:`power_cells`.

    ``layer``: the layer's name; ``input_space``: whether the diagram lives in input
    space (composed through the earlier layers, Thm. 3) or in the layer-input space;
    ``points`` (N, *space): the inputs / layer inputs; ``codes`` (N, *code_shape):
    the layer's integer codes (the cells; ``maxaffine.codes(model, x)[layer]``);
    ``mu`` (N, *space): centroids, shaped like the points (image-shaped for an image
    space); ``rad`` (N,): radii.
    """

    layer: str
    input_space: bool
    points: Tensor
    codes: Tensor
    mu: Tensor
    rad: Tensor

    def power(self) -> Tensor:
        """(N,) power distance of each point to its own cell, ``||h - mu||^2 - rad``."""
        return (self.points - self.mu).flatten(1).pow(2).sum(1) - self.rad

    def summary(self) -> dict[str, Any]:
        """The layer, its space, and over the inputs: distinct cells, radius range."""
        n = self.points.shape[0]
        return {"layer": self.layer, "input_space": self.input_space, "samples": n,
                "space_shape": list(self.points.shape[1:]),
                "distinct_cells": int(torch.unique(self.codes.reshape(n, -1), dim=0).shape[0])
                if n else 0,
                "rad_min": float(self.rad.min()) if n else None,
                "rad_max": float(self.rad.max()) if n else None}

    def to_json(self) -> str:
        """The summary and, per input, its centroid, radius and code."""
        return json.dumps({**self.summary(), "mu": self.mu.detach().flatten(1).tolist(),
                           "rad": self.rad.detach().tolist(),
                           "codes": self.codes.reshape(self.codes.shape[0], -1).tolist()})

    def plot(self, ax=None, bins: int = 30):
        """A 2-D space: each point joined to its cell's centroid; otherwise a histogram
        of the radii of the inputs' cells (``bins``)."""
        from ._plotting import plot_power_cells

        bins = arg.integer(bins, "bins", minimum=1, maximum=100_000, meaning="histogram bins")
        return plot_power_cells(self, ax=ax, bins=bins)


# ------------------------------------------------------------------- public API


def power_cells(model: nn.Module | SplineGraph, x: Tensor, *, layer: LayerKey,
                input_space: bool = False) -> PowerCells:
    """The power-diagram cell of each input's region at ``layer`` (a layer name or an
    index into ``graph.layers``): its centroid ``mu`` and radius ``rad``. (The whole
    diagram of a small layer, every cell: :func:`power_diagram`.)

    Balestriero et al. (NeurIPS 2019): ``mu[r] = sum_k A[k, r_k]``,
    ``rad[r] = ||mu[r]||^2 + 2 sum_k B[k, r_k]`` in the layer-input space (default;
    the output of the previous nonlinearity, see the module docstring); with
    ``input_space=True`` the composed ``mu_w`` and ``rad_w`` of the region ``w`` of
    the earlier layers, in input space. Computed without enumerating pieces:
    ``mu`` is the gradient of the sum of the selected pieces (one backward pass).
    """
    input_space = arg.flag(input_space, "input_space")
    graph, index, fn, point, code = _layer_setup(model, layer, x, input_space)
    chosen = graph.layers[index]
    v = point.detach().requires_grad_(True)
    with torch.enable_grad():
        pieces, _ = chosen.rule.pieces(*fn(v))
        flat = pieces.reshape(pieces.shape[0], math.prod(pieces.shape[1:-1]), pieces.shape[-1])
        selected = flat.gather(2, code.reshape(*flat.shape[:2], 1).long())[..., 0]
        total = selected.sum(1)  # sum_k <A[k, r_k], v> + B[k, r_k]
        mu = pullback(total, v, torch.ones_like(total), retain=False, differentiable=False)
    total = total.detach()
    offsets = total - (mu * point).flatten(1).sum(1)
    rad = mu.flatten(1).pow(2).sum(1) + 2 * offsets
    check_overflow("the power diagram", {"mu": mu, "rad": rad})
    return PowerCells(chosen.name, input_space or index == 0, point.detach(), code, mu, rad)


def layer_pieces(model: nn.Module | SplineGraph, x: Tensor, *, layer: LayerKey,
                 input_space: bool = False) -> tuple[Tensor, Tensor]:
    """The MASO slopes and offsets of ``layer`` (a name or an index) on each input's
    region.

    Returns ``A`` (N, K, R, *space) and ``B`` (N, K, R): unit k's piece r is
    ``<A[n, k, r], h> + B[n, k, r]`` with ``h`` the layer input (or, with
    ``input_space=True``, the input ``x`` inside its region of the earlier layers).
    Pieces that do not exist (max-pool padding, a Hardtanh bound at infinity) have
    ``B = -inf``. Memory grows as K R D per input: meant for small layers and for
    :func:`power_diagram` ``((A[n], B[n]))``.
    """
    input_space = arg.flag(input_space, "input_space")
    graph, index, fn, point, _ = _layer_setup(model, layer, x, input_space)
    chosen = graph.layers[index]
    n = point.shape[0]

    with torch.no_grad():
        probe, valid = chosen.rule.pieces(*fn(point))
    r = probe.shape[-1]
    k = math.prod(probe.shape[1:-1])
    if n == 0:  # an empty batch: empty pieces of the right shapes
        return point.new_zeros((0, k, r, *point.shape[1:])), point.new_zeros((0, k, r))

    def flat(v: Tensor) -> Tensor:  # missing pieces (-inf) are 0 here, -inf again below
        p, ok = chosen.rule.pieces(*fn(v))
        return (p if ok is None else torch.where(ok, p, 0.0)).reshape(v.shape[0], k * r)

    jac, out, _ = jacobian(flat, point.detach(), num_outputs=probe[:1].numel())
    offsets = out - torch.einsum("npd,nd->np", jac.flatten(2), point.detach().flatten(1))
    check_overflow("the layer's pieces", {"A": jac, "B": offsets})  # absent pieces are 0 here
    if valid is not None:
        offsets = torch.where(valid.reshape(n, -1), offsets, -math.inf)
    return (jac.reshape(n, k, r, *point.shape[1:]).detach(), offsets.reshape(n, k, r).detach())


def power_diagram(maso: nn.Module | SplineGraph | tuple[Tensor, Tensor],
                  input_shape: Sequence[int] | None = None, *,
                  max_cells: int = 65536) -> PowerDiagram:
    """The whole power diagram of one small MASO layer: every code, with its cell.
    (The cells of given inputs at a layer of a deep network: :func:`power_cells`.)

    ``maso``: a module with exactly one nonlinearity (e.g.
    ``nn.Sequential(nn.Linear(2, 4), nn.ReLU())``; its ``input_shape`` is read from a
    first ``nn.Linear`` or given), or the MASO parameters ``(A, B)``, ``A`` (K, R, D)
    and ``B`` (K, R) (e.g. one input's :func:`layer_pieces`). Pieces with
    ``B = -inf`` do not exist and are skipped. Raises if there are more than
    ``max_cells`` codes (the count is the product of the units' pieces).
    """
    max_cells = arg.integer(max_cells, "max_cells", minimum=1,
                            meaning="the most codes to enumerate")
    if isinstance(maso, tuple | list):
        if len(maso) != 2:
            raise MaxAffineError("maso as MASO parameters must be a pair (A, B)")
        A, B = maso
        check_tensor(A, "A")
        if not isinstance(B, Tensor) or B.shape != A.shape[:2] or A.dim() < 3:
            raise MaxAffineError(f"A must be (K, R, D) and B (K, R), got "
                                 f"{tuple(A.shape)} and {tuple(getattr(B, 'shape', ()))}")
        if not B.is_floating_point() or bool((torch.isnan(B) | (B == math.inf)).any()):
            raise MaxAffineError("B must hold finite offsets, or -inf for pieces that do not "
                                 "exist; it holds NaN, +inf or is not floating-point")
        return _enumerate(A.reshape(A.shape[0], A.shape[1], -1), B, max_cells)
    if not isinstance(maso, nn.Module | SplineGraph):
        raise MaxAffineError(f"maso must be a torch.nn.Module with one nonlinearity or a "
                             f"pair (A, B), got {type(maso).__name__}")
    if isinstance(maso, SplineGraph):
        shape = maso.input_shape
    elif input_shape is not None:
        shape = tuple(input_shape)
    else:
        first = next((m for m in maso.modules() if isinstance(m, nn.Linear)), None)
        if first is None:
            raise MaxAffineError("cannot infer the layer's input shape: pass input_shape=")
        shape = (first.in_features,)
    param = next((p for p in maso.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros((1, *shape), dtype=dtype)
    graph = as_graph(maso, x)
    if len(graph.layers) != 1:
        raise MaxAffineError(
            f"power_diagram takes one MASO layer (one nonlinearity); this model has "
            f"{len(graph.layers)}: {graph.layer_names}. For a layer of a deep network use "
            "power_cells(model, x, layer=...), or power_diagram(layer_pieces(model, x, "
            "layer=...)[n]) for one input's region")
    A, B = layer_pieces(graph, x, layer=0)
    return _enumerate(A[0].reshape(A.shape[1], A.shape[2], -1), B[0], max_cells)


def face_centroids(part, *, layer: LayerKey | None = None) -> tuple[Tensor, Tensor]:
    """The power-diagram centroid of each face of a 2-D slice partition, projected
    into the slice, and the slice radius: ``(centroids (F, 2), radii (F,))``.

    For the slice ``x = o + U s`` (U = [u, v]) the input-space power distance of
    a cell is ``||s - c||_G^2 - rad_s`` with ``G = U^T U``, ``c = G^-1 U^T (mu_w - o)``
    and ``rad_s = rad_w - ||o - mu_w||^2 + c^T G c``: the slice of a power diagram
    is a power diagram. ``layer`` (a name or an index): default the last
    nonlinearity, whose cells
    subdivide the regions of the earlier layers into the faces.
    """
    from .partition import Partition

    if not isinstance(part, Partition):
        raise MaxAffineTypeError(f"face_centroids takes a maxaffine.Partition (from "
                                 f"maxaffine.partition_plane), got {type(part).__name__}")
    if part.graph is None:
        raise MaxAffineError("this partition was loaded without its model")
    graph = part.graph
    if not graph.layers:
        raise MaxAffineError("the model has no nonlinearity: no power diagram")
    sl = part.domain
    x = sl.to_input(part.interior.to(sl.origin.dtype))
    param = next((p for p in graph.model.parameters() if p.is_floating_point()), None)
    cells = power_cells(graph, x if param is None else x.to(param.dtype),
                        layer=-1 if layer is None else layer, input_space=True)
    mu = cells.mu.flatten(1).to(sl.origin.dtype)
    basis = torch.stack([sl.u.flatten(), sl.v.flatten()], 1)  # (D, 2)
    gram = basis.T @ basis
    rel = mu - sl.origin.flatten().unsqueeze(0)
    c = torch.linalg.solve(gram, (rel @ basis).T).T  # (F, 2)
    rad = cells.rad.to(mu.dtype) - rel.pow(2).sum(1) + torch.einsum("fi,ij,fj->f", c, gram, c)
    return c, rad


# ------------------------------------------------------------------- internals


def _layer_setup(model: nn.Module | SplineGraph, layer: LayerKey, x: Tensor, input_space: bool):
    """The graph, the layer's index, the function ``v -> the layer's inputs`` (affine
    in v on x's region), the point ``v`` of each input and the layer's code there."""
    graph = as_graph(model, x)
    check_input(graph, x)
    if not graph.layers:
        raise MaxAffineError("the model has no nonlinearity: no power diagram")
    index = graph.layer_index(layer)
    name = graph.layer_names[index]
    with torch.no_grad():
        ev = graph.run(x, until=name)
    code = ev.codes[name]
    if input_space or index == 0:
        frozen = {earlier.name: ev.codes[earlier.name] for earlier in graph.layers[:index]}

        def fn(v: Tensor) -> tuple[Tensor, ...]:
            return graph.run(v, codes=frozen, record=True, until=name).inputs[name]

        return graph, index, fn, x, code
    between = graph.between(index - 1, index)
    with torch.no_grad():
        h = between.source(x)
    return graph, index, between, h, code


def _enumerate(A: Tensor, B: Tensor, max_cells: int) -> PowerDiagram:
    """All codes of a MASO (A (K, R, D), B (K, R)) with their centroids and radii."""
    k, _, d = A.shape
    valid = torch.isfinite(B)
    options = [torch.nonzero(valid[j]).flatten() for j in range(k)]
    if any(o.numel() == 0 for o in options):
        raise MaxAffineError("a unit has no finite piece (all B = -inf)")
    count = math.prod(o.numel() for o in options)
    if count > max_cells:
        raise MaxAffineError(f"the layer has {count} codes (product of its units' pieces), "
                             f"more than max_cells={max_cells}; use power_cells(model, x, "
                             "layer=...) for the cells of given inputs")
    codes = torch.zeros((1, 0), dtype=torch.int64)
    mu = torch.zeros((1, d), dtype=A.dtype)
    off = torch.zeros(1, dtype=A.dtype)
    for j in range(k):
        opt = options[j]
        m = codes.shape[0]
        codes = torch.cat([codes.repeat_interleave(opt.numel(), 0),
                           opt.repeat(m).unsqueeze(1)], 1)
        mu = mu.repeat_interleave(opt.numel(), 0) + A[j, opt].repeat(m, 1)
        off = off.repeat_interleave(opt.numel(), 0) + B[j, opt].repeat(m)
    rad = mu.pow(2).sum(1) + 2 * off
    return PowerDiagram(codes, mu, rad)


__all__ = ["PowerCells", "PowerDiagram", "face_centroids", "layer_pieces", "power_cells",
           "power_diagram"]

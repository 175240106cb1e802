"""The VQ distance between inputs, and retrieval with it.

"Mad Max: Affine Spline Insights into Deep Learning" (Balestriero & Baraniuk,
Proc. IEEE 2021, sec. 5): every layer vector-quantizes its input, so two inputs
can be compared by their codes. Per layer, the VQ distance is the normalised
Hamming distance between the codes, the fraction of units that select different
pieces (max-pool: the fraction of windows whose argmax differs); a weighted mean
over layers combines them.

Pairwise distances come from the packed codes of :class:`maxaffine.Codes` (each
layer byte-aligned, ``b`` bits per unit with ``b`` a power of two, so a unit never
straddles a byte nor a 64-bit word): XOR two codes word by word, fold each
``b``-bit group onto its lowest bit (``y |= y >> 1``, ``y |= y >> 2``, ... for
``b > 1``), mask, and count the set bits. Rows are processed in small tiles, so
``10^4 x 10^4`` pairs need only the (N, M) result in memory (or nothing more
than one tile of it with :func:`vq_knn`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import _arguments as arg
from .errors import MaxAffineError, MaxAffineTypeError
from .graph import SplineGraph, check_input
from .vq import Codes, codes_of, evaluate_codes, graph_for, mismatch

_TILE = 16  # query rows per popcount tile (the tile's (rows, M) words stay in cache)
_LUT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def vq_distance(model: nn.Module | SplineGraph | None, x: Tensor | Codes,
                y: Tensor | Codes | None = None, *, layers: Sequence[str | int] | None = None,
                weights: Sequence[float] | Mapping[str, float] | None = None,
                per_layer: bool = False) -> Tensor:
    """Pairwise VQ distances between the inputs ``x`` (N) and ``y`` (M; default ``x``).

    ``x`` / ``y``: input batches, or their precomputed :func:`maxaffine.codes`
    (then ``model`` may be None). ``layers``: names or indices of the layers to use
    (default all). ``weights``: one non-negative weight per chosen layer (or a dict
    layer name or index -> weight, 0 for the layers it leaves out); the combined
    distance is ``sum_l w_l d_l / sum_l w_l``, equal weights by default. Returns
    float32 (N, M) in [0, 1], or with ``per_layer=True`` the per-layer distances
    (L, N, M); N or M may be 0.
    """
    per_layer = arg.flag(per_layer, "per_layer")
    cx, cy, idx, w = _prepare(model, x, y, layers, weights)
    qx, qy = _words(cx, idx), _words(cy, idx)
    shape = (len(idx), len(cx), len(cy)) if per_layer else (len(cx), len(cy))
    out = torch.empty(shape, dtype=torch.float32)
    for rows, dist in _rows(qx, qy, None if per_layer else w):
        if per_layer:
            out[:, rows] = dist
        else:
            out[rows] = dist
    return out


def vq_knn(model: nn.Module | SplineGraph | None, x: Tensor | Codes,
           y: Tensor | Codes | None = None, *, k: int = 1,
           layers: Sequence[str | int] | None = None,
           weights: Sequence[float] | Mapping[str, float] | None = None,
           exclude_self: bool | None = None,
           queries_per_block: int = 256) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest references ``y`` of each query ``x`` under the VQ distance.

    Same arguments as :func:`vq_distance`; ``y=None`` retrieves within ``x`` and then
    skips each query itself (``exclude_self``, default True exactly then).
    Returns ``(distances (N, k) float32, indices (N, k) int64)`` sorted by distance,
    ties broken by the lower index (N = 0 queries: empty results). The distances
    are held for ``queries_per_block`` queries at a time (a (block, M) matrix).
    """
    k = arg.integer(k, "k", minimum=1, meaning="neighbours per query")
    block_rows = arg.integer(queries_per_block, "queries_per_block", minimum=1,
                             meaning="queries whose distances are held at a time")
    if exclude_self is not None:
        exclude_self = arg.flag(exclude_self, "exclude_self")
    same = y is None
    cx, cy, idx, w = _prepare(model, x, y, layers, weights)
    skip = same if exclude_self is None else exclude_self
    if skip and len(cx) != len(cy):
        raise MaxAffineError(f"exclude_self=True skips each query's own index, so it needs "
                             f"the same samples as queries and references, got {len(cx)} "
                             f"queries and {len(cy)} references: pass exclude_self=False")
    if len(cx) == 0:
        return torch.empty((0, k), dtype=torch.float32), torch.empty((0, k), dtype=torch.int64)
    available = len(cy) - (1 if skip else 0)
    if k > available:
        held = "y has" if not same else "x has"
        raise MaxAffineError(f"k={k} neighbours asked but only {available} references exist "
                             f"({held} {len(cy)} samples"
                             + (", each query itself excluded" if skip else "")
                             + f"): pass k <= {available} or more references")
    qx, qy = _words(cx, idx), _words(cy, idx)
    dists = torch.empty((len(cx), k), dtype=torch.float32)
    found = torch.empty((len(cx), k), dtype=torch.int64)
    for start in range(0, len(cx), block_rows):
        stop = min(len(cx), start + block_rows)
        block = torch.empty((stop - start, len(cy)), dtype=torch.float32)
        sub = [(words[start:stop], b, u) for words, b, u in qx]
        for rows, dist in _rows(sub, qy, w):
            block[rows] = dist
        if skip:
            block[torch.arange(stop - start), torch.arange(start, stop)] = math.inf
        vals, order = torch.sort(block, dim=1, stable=True)
        dists[start:stop], found[start:stop] = vals[:, :k], order[:, :k]
    return dists, found


# ------------------------------------------------------------------- internals


def _as_codes(graph: SplineGraph | None, v: Tensor | Codes, what: str) -> Codes:
    if isinstance(v, Codes):
        return v
    if graph is None:
        raise MaxAffineError(f"{what} is an input batch: pass the model to compute its codes "
                             "(or pass maxaffine.codes(model, ...) as x and y)")
    check_input(graph, v, what)
    return codes_of(graph, evaluate_codes(graph, v), v.shape[0])


def _prepare(model, x, y, layers, weights) -> tuple[Codes, Codes, list[int], np.ndarray]:
    for what, v in (("x", x), ("y", y)):
        if not isinstance(v, Tensor | Codes) and not (what == "y" and v is None):
            raise MaxAffineTypeError(f"{what} must be an input batch (torch.Tensor) or "
                                     f"maxaffine.Codes, got {type(v).__name__}")
    graph = None
    batches = [v for v in (x, y) if isinstance(v, Tensor)]
    if model is not None and batches:  # traced once, on a non-empty batch if there is one
        chosen = max(batches, key=len)
        graph = graph_for(model, chosen, "x" if chosen is x else "y")
    elif model is not None and not isinstance(model, nn.Module | SplineGraph):
        raise MaxAffineTypeError(f"model must be a torch.nn.Module, a maxaffine.SplineGraph "
                                 f"or None (x and y given as Codes), got {type(model).__name__}")
    cx = _as_codes(graph, x, "x")
    cy = cx if y is None else _as_codes(graph, y, "y")
    why = mismatch(cx, cy)
    if why is not None:
        raise MaxAffineError(f"x and y must be codes of one model on inputs of one shape, but "
                             f"{why}")
    if not cx.names:
        raise MaxAffineError("the model has no nonlinearity: every input has the same code, "
                             "so the VQ distance is undefined")
    idx = cx._layers(layers)
    if not idx:
        raise MaxAffineError(f"layers=[] selects no layer: pass None for all layers, or some "
                             f"of {cx.names}")
    if weights is None:
        w = np.ones(len(idx))
    elif isinstance(weights, Mapping):
        by_index: dict[int, float] = {}
        for key, value in weights.items():
            i = arg.layer_index(key, cx.names, "a key of weights")
            if i in by_index:
                raise MaxAffineError(f"weights names layer {cx.names[i]!r} twice (as a name "
                                     "and as an index): give each layer one weight")
            by_index[i] = arg.number(value, f"weights[{key!r}]")
        w = np.array([by_index.get(i, 0.0) for i in idx])
    else:
        if isinstance(weights, str | bytes) or not isinstance(weights, Iterable):
            raise MaxAffineTypeError(f"weights must be one number per layer or a dict name -> "
                                     f"number, got {type(weights).__name__} {weights!r}")
        w = np.asarray([arg.number(v, f"weights[{i}]") for i, v in enumerate(weights)])
        if w.shape != (len(idx),):
            raise MaxAffineError(f"{len(w)} weights for {len(idx)} layers "
                                 f"{[cx.names[i] for i in idx]}: pass one weight per layer")
    if (w < 0).any() or w.sum() <= 0:
        raise MaxAffineError(f"weights must be non-negative and not all zero, got "
                             f"{w.tolist()}")
    return cx, cy, idx, w / w.sum()


def _words(c: Codes, idx: list[int]) -> list[tuple[np.ndarray, int, int]]:
    """Per chosen layer: its packed codes as little-endian 64-bit words (N, W), the
    bits per unit and the number of units."""
    out = []
    for i in idx:
        packed = c.packed([i]).cpu()
        pad = (-packed.shape[1]) % 8
        if pad:
            packed = torch.cat([packed, packed.new_zeros(packed.shape[0], pad)], 1)
        words = np.ascontiguousarray(packed.numpy()).view("<u8")
        out.append((words, c.bits_per_unit[i], max(1, c.num_units[i])))
    return out


def _fold_mask(b: int) -> int:
    """Bit 0 of every b-bit group of a 64-bit word."""
    return sum(1 << s for s in range(0, 64, b))


def _popcount(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2: the hardware instruction
        return np.bitwise_count(x, out=out)
    return _LUT[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.uint8, out=out)


def _counts(q: np.ndarray, r_t: np.ndarray, b: int, acc: np.ndarray, buf: np.ndarray,
            cnt: np.ndarray) -> None:
    """acc (n, M) += number of units whose codes differ, for queries ``q`` (n, W)
    and references ``r_t`` (W, M) (transposed words)."""
    mask = np.uint64(_fold_mask(b)) if b > 1 else None
    for w in range(q.shape[1]):
        np.bitwise_xor(q[:, w, None], r_t[w][None, :], out=buf)
        if mask is not None:
            s = 1
            while s < b:  # fold each b-bit group onto its lowest bit
                np.bitwise_or(buf, buf >> np.uint64(s), out=buf)
                s *= 2
            np.bitwise_and(buf, mask, out=buf)
        _popcount(buf, cnt)
        np.add(acc, cnt, out=acc, casting="unsafe")


def _rows(qx: list[tuple[np.ndarray, int, int]], qy: list[tuple[np.ndarray, int, int]],
          weights: np.ndarray | None) -> Iterator[tuple[slice, Tensor]]:
    """Distances tile by tile: yields (rows, (rows, M) combined) with ``weights``, or
    (rows, (L, rows, M)) per layer when ``weights`` is None."""
    n = qx[0][0].shape[0]
    m = qy[0][0].shape[0]
    refs = [np.ascontiguousarray(words.T) for words, _, _ in qy]
    buf = np.empty((_TILE, m), dtype=np.uint64)
    cnt = np.empty((_TILE, m), dtype=np.uint8)
    wide = max(units for _, _, units in qx) >= 1 << 16
    acc = np.empty((_TILE, m), dtype=np.int64 if wide else np.uint16)
    for start in range(0, n, _TILE):
        stop = min(n, start + _TILE)
        t = stop - start
        layer_d = []
        for (words, b, units), r_t in zip(qx, refs, strict=True):
            a = acc[:t]
            a.fill(0)
            _counts(words[start:stop], r_t, b, a, buf[:t], cnt[:t])
            layer_d.append(a / units)
        if weights is None:
            yield slice(start, stop), torch.from_numpy(np.stack(layer_d).astype(np.float32))
        else:
            total = sum(wt * d for wt, d in zip(weights, layer_d, strict=True))
            yield slice(start, stop), torch.from_numpy(np.asarray(total, dtype=np.float32))


__all__ = ["vq_distance", "vq_knn"]

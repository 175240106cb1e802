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

FAISS backends (``faiss-cpu``; Johnson, Douze & Jegou, "Billion-scale similarity
search with GPUs", IEEE Trans. Big Data 2019), each equal to the built-in path bit
for bit: ``vq_distance(backend="faiss")`` counts each layer's differing units with
``faiss.hammings`` over the layer's bits (units of more than one bit one-hot encoded
over their pieces, so a differing unit is 2 differing bits) and combines the counts
with the same float formula. ``vq_knn(index="faiss")``: where the VQ distance is one
Hamming distance of the concatenated packed codes (equal weights, every chosen
layer one bit per unit with the same number of units, e.g. a single ReLU layer),
an ``IndexBinaryFlat`` over them; every reference with a Hamming distance up to the
k-th smallest is a candidate (found by a k-NN search that fetches a few more, then a
range search where ties go on), and the candidates are ranked by the built-in
float32 distance, ties to the lower index. Elsewhere ``faiss.hammings`` per layer
over all pairs, combined and ranked the same way. ``index="faiss-ivf"``: an
inverted file ``IndexBinaryIVF`` (``round(sqrt(M))`` lists from binary k-means,
``IVF_PROBES`` of them searched; Jegou, Douze & Schmid, IEEE TPAMI 2011, sec. 3.1)
over one bit string per input whose Hamming distance is ``L alpha`` times the
equal-weight VQ distance: layer l's bits repeated ``s_l`` times with ``s_l e_l u_l =
alpha`` for every layer (``u_l`` units, ``e_l`` differing bits per differing unit);
approximate (recall measured in ``benchmarks/distance.py``), distances exact for
the neighbours it returns.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import _arguments as arg
from .errors import MaxAffineError, MaxAffineTypeError
from .graph import SplineGraph, check_input
from .vq import Codes, codes_of, evaluate_codes, graph_for, mismatch

_TILE = 16  # query rows per popcount tile (the tile's (rows, M) words stay in cache)
BACKENDS = ("builtin", "faiss")
"""``vq_distance(backend=...)``: the built-in popcount, or ``faiss.hammings``."""
INDEXES = ("exact", "faiss", "faiss-ivf")
"""``vq_knn(index=...)``: built-in exact search, FAISS exact (``IndexBinaryFlat`` or
``faiss.hammings``: the same result), FAISS approximate (``IndexBinaryIVF``)."""
FAISS_MAX_BITS = 1 << 16
"""Longest bit string (per input) ``index="faiss-ivf"`` builds its index on (8 KiB)."""
FAISS_MAX_SCALE = 1 << 20
"""Largest ``L alpha`` (Hamming units per unit of VQ distance) of a FAISS index:
distinct distances then differ by >= 2^-20, 16 float32 ulps, so ranking by the
Hamming distance and by the float32 distance agree."""
IVF_PROBES = 16
"""Inverted lists a ``faiss-ivf`` search visits (of ``round(sqrt(M))``)."""
_IVF_TRAIN = 40  # k-means training points per inverted list (FAISS asks for >= 39)
_EXTRA = 16  # neighbours fetched beyond k by the exact FAISS search, to see past ties
_PAIRS = 1 << 22  # (rows, M) distance entries per FAISS tile
_CHUNK = 1 << 13  # rows converted to FAISS bit strings at a time
_LUT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def vq_distance(model: nn.Module | SplineGraph | None, x: Tensor | Codes,
                y: Tensor | Codes | None = None, *, layers: Sequence[str | int] | None = None,
                weights: Sequence[float] | Mapping[str, float] | None = None,
                per_layer: bool = False, backend: str = "builtin") -> Tensor:
    """Pairwise VQ distances between the inputs ``x`` (N) and ``y`` (M; default ``x``).

    ``x`` / ``y``: input batches, or their precomputed :func:`maxaffine.codes`
    (then ``model`` may be None). ``layers``: names or indices of the layers to use
    (default all). ``weights``: one non-negative weight per chosen layer (or a dict
    layer name or index -> weight, 0 for the layers it leaves out); the combined
    distance is ``sum_l w_l d_l / sum_l w_l``, equal weights by default. Returns
    float32 (N, M) in [0, 1], or with ``per_layer=True`` the per-layer distances
    (L, N, M); N or M may be 0. ``backend``: ``"builtin"`` (XOR + popcount in numpy)
    or ``"faiss"`` (``faiss.hammings`` per layer, max-pool layers one-hot encoded);
    both give the same float32 values bit for bit, with any ``weights``.
    """
    per_layer = arg.flag(per_layer, "per_layer")
    backend = arg.choice(backend, "backend", BACKENDS)
    cx, cy, idx, w = _prepare(model, x, y, layers, weights)
    if backend == "faiss":
        return _faiss_distance(cx, cy, idx, None if per_layer else w)
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
           queries_per_block: int = 256, index: str = "exact") -> tuple[Tensor, Tensor]:
    """The ``k`` nearest references ``y`` of each query ``x`` under the VQ distance.

    Same arguments as :func:`vq_distance`; ``y=None`` retrieves within ``x`` and then
    skips each query itself (``exclude_self``, default True exactly then).
    Returns ``(distances (N, k) float32, indices (N, k) int64)`` sorted by distance,
    ties broken by the lower index (N = 0 queries: empty results). The distances
    are held for ``queries_per_block`` queries at a time (a (block, M) matrix).

    ``index``: ``"exact"`` (built-in popcount over all pairs), ``"faiss"`` (exact,
    the same distances and indices as ``"exact"``, ties included: a FAISS
    ``IndexBinaryFlat`` over the packed codes where the distance is one Hamming
    distance of them, e.g. one ReLU layer, else ``faiss.hammings`` per layer; any
    ``weights``) or ``"faiss-ivf"`` (a FAISS ``IndexBinaryIVF``: approximate, may miss
    true neighbours; the distances it returns are exact). ``"faiss-ivf"`` needs the
    equal-weight distance (``weights=None``; a weighted one raises: use ``"faiss"``
    or ``"exact"``) and a bit string of at most ``FAISS_MAX_BITS`` per input with
    ``L alpha <= FAISS_MAX_SCALE`` (module docstring), else a ``MaxAffineError`` says
    which layers to keep. Indexes are built on each call: to search one set of
    references many times, build the index once with :func:`vq_index`.
    """
    k = arg.integer(k, "k", minimum=1, meaning="neighbours per query")
    block_rows = arg.integer(queries_per_block, "queries_per_block", minimum=1,
                             meaning="queries whose distances are held at a time")
    if exclude_self is not None:
        exclude_self = arg.flag(exclude_self, "exclude_self")
    index = arg.choice(index, "index", INDEXES)
    if index == "faiss-ivf" and weights is not None:
        raise MaxAffineError(f"index='faiss-ivf' searches the equal-weight VQ distance (as "
                             f"one Hamming distance), but weights={weights!r} were given: "
                             "pass index='faiss' or 'exact' for weighted layers, or "
                             "weights=None (layers=[...] keeps only some layers)")
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
    if index == "faiss" and not _one_hamming(cx, idx, weights):
        return _hammings_knn(cx, cy, idx, w, k, skip, block_rows)
    qx, qy = _words(cx, idx), _words(cy, idx)
    if index != "exact":
        return _faiss_knn(cx, cy, idx, w, k, skip, block_rows, qx, qy, same,
                          approximate=index == "faiss-ivf")
    dists = torch.empty((len(cx), k), dtype=torch.float32)
    found = torch.empty((len(cx), k), dtype=torch.int64)
    for start in range(0, len(cx), block_rows):
        stop = min(len(cx), start + block_rows)
        rows = np.arange(start, stop)
        dists[start:stop], found[start:stop] = _exact_block(qx, qy, w, k, rows,
                                                            rows if skip else None)
    return dists, found


def _exact_block(qx, qy, w: np.ndarray, k: int, rows: np.ndarray,
                 own: np.ndarray | None) -> tuple[Tensor, Tensor]:
    """The built-in search for the queries ``rows``: all (rows, M) distances, the
    references ``own`` (one per row, or None) skipped, a stable sort (ties: lower
    index). Returns (len(rows), k) distances and indices."""
    block = torch.empty((len(rows), qy[0][0].shape[0]), dtype=torch.float32)
    sub = [(words[rows], b, u) for words, b, u in qx]
    for tile, dist in _rows(sub, qy, w):
        block[tile] = dist
    if own is not None:
        block[torch.arange(len(rows)), torch.from_numpy(own)] = math.inf
    vals, order = torch.sort(block, dim=1, stable=True)
    return vals[:, :k], order[:, :k]


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
        if c.bits_per_unit[i] == 1:  # Codes.packed's layout, by numpy's faster packbits
            n, units = len(c), c.num_units[i]
            flat = c.values[i].reshape(n, units).cpu().numpy().astype(np.uint8, copy=False)
            packed = np.packbits(flat, axis=1, bitorder="little")
        else:
            packed = c.packed([i]).cpu().numpy()
        pad = (-packed.shape[1]) % 8
        if pad:
            packed = np.concatenate([packed, np.zeros((packed.shape[0], pad), np.uint8)], 1)
        words = np.ascontiguousarray(packed).view("<u8")
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
    for w in range(q.shape[1]):
        np.bitwise_xor(q[:, w, None], r_t[w][None, :], out=buf)
        _fold(buf, b)
        _popcount(buf, cnt)
        np.add(acc, cnt, out=acc, casting="unsafe")


def _fold(buf: np.ndarray, b: int) -> None:
    """In place: each b-bit group of the XORed words ``buf`` onto its lowest bit
    (1 iff the unit's codes differ), the other bits cleared."""
    if b == 1:
        return
    s = 1
    while s < b:
        np.bitwise_or(buf, buf >> np.uint64(s), out=buf)
        s *= 2
    np.bitwise_and(buf, np.uint64(_fold_mask(b)), out=buf)


def _combine(counts: Sequence[np.ndarray], units: Sequence[int],
             weights: np.ndarray | None) -> np.ndarray:
    """The VQ distance from per-layer counts of differing units: ``sum_l w_l c_l / u_l``
    as float32 (per layer ``c_l / u_l``, stacked, when ``weights`` is None). The one
    formula of every backend, so that they agree bit for bit."""
    layer_d = [c / u for c, u in zip(counts, units, strict=True)]
    if weights is None:
        return np.stack(layer_d).astype(np.float32)
    total = sum(wt * d for wt, d in zip(weights, layer_d, strict=True))
    return np.asarray(total, dtype=np.float32)


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
        counts = []
        for (words, b, _), r_t in zip(qx, refs, strict=True):
            a = acc[:t]
            a.fill(0)
            _counts(words[start:stop], r_t, b, a, buf[:t], cnt[:t])
            counts.append(a.copy())
        yield slice(start, stop), torch.from_numpy(
            _combine(counts, [units for _, _, units in qx], weights))


# ------------------------------------------------------------------- FAISS backends


def _faiss():
    """The ``faiss`` module (``faiss-cpu``), imported on first use."""
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is a dependency
        raise MaxAffineError("backend='faiss' / index='faiss' need the faiss-cpu package: "
                             "pip install faiss-cpu (or use the built-in path)") from err
    return faiss


def _unit_bytes(c: Codes, i: int, rows: slice = slice(None)) -> tuple[np.ndarray, int]:
    """One layer's codes as bit strings for a Hamming distance (n, bytes) uint8, and
    the number of differing bits per differing unit: 1 for one bit per unit (the
    packed codes themselves, ``Codes.packed``'s layout), 2 for wider units, one-hot
    encoded over their pieces."""
    v = c.values[i][rows]
    n, units, r = v.shape[0], c.num_units[i], c.pieces[i]
    flat = v.reshape(n, units).cpu().numpy()
    if c.bits_per_unit[i] == 1:
        return np.packbits(flat.astype(np.uint8, copy=False), axis=1, bitorder="little"), 1
    onehot = np.zeros((n, units * r), dtype=bool)
    onehot[np.arange(n)[:, None], np.arange(units) * r + flat.astype(np.int64)] = True
    return np.packbits(onehot, axis=1, bitorder="little"), 2


def _padded(packed: np.ndarray) -> np.ndarray:
    """Bit strings (n, bytes) zero-padded to a multiple of 8 bytes, at least 8 (FAISS's
    fast kernels; zero bytes add nothing to a Hamming distance)."""
    pad = (-packed.shape[1]) % 8 or (8 if packed.shape[1] == 0 else 0)
    if pad:
        packed = np.concatenate([packed, np.zeros((packed.shape[0], pad), np.uint8)], 1)
    return np.ascontiguousarray(packed)


def _layer_bits(c: Codes, i: int) -> tuple[np.ndarray, int]:
    """One layer's padded bit strings (N, bytes) (:func:`_unit_bytes`) and the
    differing bits per differing unit; converted ``_CHUNK`` rows at a time."""
    n = len(c)
    parts, per = [], 1
    for start in range(0, max(n, 1), _CHUNK):
        packed, per = _unit_bytes(c, i, slice(start, min(n, start + _CHUNK)))
        parts.append(_padded(packed))
    return np.concatenate(parts), per


def _faiss_distance(cx: Codes, cy: Codes, idx: list[int], weights: np.ndarray | None
                    ) -> Tensor:
    """vq_distance with ``faiss.hammings`` counting each layer's differing units."""
    n, m = len(cx), len(cy)
    shape = (n, m) if weights is not None else (len(idx), n, m)
    out = torch.empty(shape, dtype=torch.float32)
    if n == 0 or m == 0:
        return out
    for rows, dist in _hamming_tiles(cx, cy, idx, weights, _PAIRS):
        if weights is None:
            out[:, rows] = torch.from_numpy(dist)
        else:
            out[rows] = torch.from_numpy(dist)
    return out


def _hamming_tiles(cx: Codes, cy: Codes, idx: list[int], weights: np.ndarray | None,
                   pairs: int) -> Iterator[tuple[slice, np.ndarray]]:
    """Distances tile by tile (about ``pairs`` entries each) from ``faiss.hammings``
    per layer: (rows, (rows, M) combined) with ``weights``, else (rows, (L, rows, M))."""
    faiss = _faiss()
    n, m = len(cx), len(cy)
    units = [max(1, cx.num_units[i]) for i in idx]
    layers = []
    for i in idx:
        bx, per = _layer_bits(cx, i)
        by = bx if cy is cx else _layer_bits(cy, i)[0]
        layers.append((bx, by, per))
    step = max(1, pairs // max(1, m))
    dis = np.empty((min(step, n), m), dtype=np.int32)
    for start in range(0, n, step):
        stop = min(n, start + step)
        counts = []
        for bx, by, per in layers:
            d = dis[: stop - start]
            faiss.hammings(faiss.swig_ptr(np.ascontiguousarray(bx[start:stop])),
                           faiss.swig_ptr(by), stop - start, m, bx.shape[1],
                           faiss.swig_ptr(d))
            counts.append(d // per if per > 1 else d.copy())
        yield slice(start, stop), _combine(counts, units, weights)


def _hammings_knn(cx: Codes, cy: Codes, idx: list[int], w: np.ndarray, k: int, skip: bool,
                  block_rows: int) -> tuple[Tensor, Tensor]:
    """vq_knn from all pairs' distances by ``faiss.hammings`` (:func:`_hamming_tiles`):
    per query, the references up to the k-th smallest distance, ranked by distance
    and then index, as the built-in stable sort does."""
    n, m = len(cx), len(cy)
    dists = torch.empty((n, k), dtype=torch.float32)
    found = torch.empty((n, k), dtype=torch.int64)
    pairs = min(_PAIRS, block_rows * m)
    for rows, d in _hamming_tiles(cx, cy, idx, w, pairs):
        t = rows.stop - rows.start
        if skip:
            d[np.arange(t), np.arange(rows.start, rows.stop)] = np.inf
        kth = np.partition(d, k - 1, axis=1)[:, k - 1:k]
        r, col = np.nonzero(d <= kth)
        vals = d[r, col]
        order = np.lexsort((col, vals, r))
        first = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=t))[:-1]])
        pick = order[first[:, None] + np.arange(k)]
        dists[rows] = torch.from_numpy(vals[pick])
        found[rows] = torch.from_numpy(col[pick].astype(np.int64))
    return dists, found


def _one_hamming(c: Codes, idx: list[int], weights) -> bool:
    """Whether the equal-weight VQ distance of layers ``idx`` is one Hamming distance
    of their concatenated packed codes (divided by their bits), small enough to rank
    exactly: every layer one bit per unit, all with the same number of units."""
    units = {c.num_units[i] for i in idx}
    return (weights is None and all(c.bits_per_unit[i] == 1 for i in idx)
            and len(units) == 1 and 0 < len(idx) * units.pop() <= FAISS_MAX_SCALE)


def _hamming_layout(c: Codes, idx: list[int], check: bool = True
                    ) -> tuple[list[tuple[int, int]], int]:
    """Per chosen layer (in order): (layer, repeats s_l) such that the Hamming distance
    of the concatenated, repeated bit strings (:func:`_unit_bytes`) is ``L alpha`` times the
    equal-weight VQ distance, and the number of bits; with ``check``, raises when they
    would exceed FAISS_MAX_BITS or ``L alpha`` FAISS_MAX_SCALE."""
    scale = []
    for i in idx:
        per = 1 if c.bits_per_unit[i] == 1 else 2
        scale.append(per * max(1, c.num_units[i]))
    alpha = math.lcm(*scale)
    repeats = [alpha // s for s in scale]
    nbits = sum(s_l * 8 * ((c.num_units[i] * (1 if c.bits_per_unit[i] == 1 else c.pieces[i])
                            + 7) // 8) for i, s_l in zip(idx, repeats, strict=True))
    if check and (nbits > FAISS_MAX_BITS or len(idx) * alpha > FAISS_MAX_SCALE):
        names = [c.names[i] for i in idx]
        raise MaxAffineError(
            f"index='faiss-ivf' cannot represent the equal-weight VQ distance of "
            f"layers {names} (units {[c.num_units[i] for i in idx]}) as one Hamming distance: "
            f"each layer's bits must be repeated {repeats} times ({nbits} bits per input, "
            f"limit {FAISS_MAX_BITS}; scale {len(idx) * alpha}, limit {FAISS_MAX_SCALE}): "
            "keep fewer layers (layers=[...]), e.g. one, or use index='faiss' (exact)")
    return list(zip(idx, repeats, strict=True)), nbits


def _knn_bits(c: Codes, layout: list[tuple[int, int]], nbits: int) -> np.ndarray:
    """(N, bytes) uint8: each input's layers' bit strings (:func:`_unit_bytes`), layer
    l repeated s_l times, zero-padded to a multiple of 8 bytes (a few rows at a
    time)."""
    n = len(c)
    step = max(1, min(_CHUNK, (1 << 27) // max(1, nbits)))
    parts = []
    for start in range(0, max(n, 1), step):
        rows = slice(start, min(n, start + step))
        row = []
        for i, repeats in layout:
            packed, _ = _unit_bytes(c, i, rows)
            row.append(np.tile(packed, (1, repeats)) if repeats > 1 else packed)
        parts.append(_padded(np.concatenate(row, 1)))
    return np.concatenate(parts)


def _pair_counts(qx, qy, rows: np.ndarray, refs: np.ndarray) -> list[np.ndarray]:
    """Per layer, the differing units of the query / reference pairs (rows, refs)."""
    counts = []
    for (wx, b, _), (wy, _, _) in zip(qx, qy, strict=True):
        total = np.zeros(len(rows), dtype=np.int64)
        for start in range(0, len(rows), _CHUNK):
            stop = min(len(rows), start + _CHUNK)
            buf = np.bitwise_xor(wx[rows[start:stop]], wy[refs[start:stop]])
            _fold(buf, b)
            total[start:stop] = _popcount(buf, np.empty(buf.shape, np.uint8)).sum(
                1, dtype=np.int64)
        counts.append(total)
    return counts


def _faiss_knn(cx: Codes, cy: Codes, idx: list[int], w: np.ndarray, k: int, skip: bool,
               block_rows: int, qx, qy, same: bool, *, approximate: bool
               ) -> tuple[Tensor, Tensor]:
    """vq_knn over a FAISS binary index built for this call (:func:`_faiss_build`,
    :func:`_faiss_search`)."""
    layout, nbits = _hamming_layout(cx, idx, check=approximate)  # flat: _one_hamming
    ref_bits = _knn_bits(cy, layout, nbits)
    index, ivf = _faiss_build(ref_bits, approximate)
    query_bits = ref_bits if same else _knn_bits(cx, layout, nbits)
    return _faiss_search(index, ivf, query_bits, qx, qy, w, k, skip, block_rows)


def _faiss_build(ref_bits: np.ndarray, approximate: bool) -> tuple[object, bool]:
    """A FAISS binary index over the references' bit strings: ``IndexBinaryIVF``
    (``round(sqrt(M))`` lists, k-means on evenly spaced references, ``IVF_PROBES``
    probed) when ``approximate`` and there are enough references for two lists, else
    the exhaustive ``IndexBinaryFlat``; and whether it is the IVF."""
    faiss = _faiss()
    m, nbits = len(ref_bits), 8 * ref_bits.shape[1]
    lists = max(1, min(round(math.sqrt(m)), m // _IVF_TRAIN))
    ivf = approximate and lists > 1  # (one list: the flat index, exhaustive anyway)
    if ivf:
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(nbits), nbits, lists)
        step = max(1, m // (_IVF_TRAIN * lists))  # evenly spaced references train it
        index.train(np.ascontiguousarray(ref_bits[::step][: _IVF_TRAIN * lists]))
        index.nprobe = min(lists, IVF_PROBES)
    else:
        index = faiss.IndexBinaryFlat(nbits)
    for start in range(0, m, _CHUNK * 8):
        index.add(ref_bits[start:start + _CHUNK * 8])
    return index, ivf


def _faiss_search(index, ivf: bool, query_bits: np.ndarray, qx, qy, w: np.ndarray, k: int,
                  skip: bool, block_rows: int) -> tuple[Tensor, Tensor]:
    """The k nearest references of each query (module docstring). Flat (exact): every
    reference with H <= the (k + skip)-th smallest H of its query is a candidate (a
    k-NN search fetches ``_EXTRA`` more to see past ties, a range search the rest);
    candidates are ranked by the built-in float32 distance, then by index. IVF: the
    candidates it finds, ranked the same way (queries it finds too few for: exact)."""
    n, m = len(query_bits), index.ntotal
    want = k + (1 if skip else 0)
    units = [u for _, _, u in qx]
    dists = torch.empty((n, k), dtype=torch.float32)
    found = torch.empty((n, k), dtype=torch.int64)
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        q = query_bits[start:stop]
        if ivf:
            fetch = min(m, want)
            ham, ids = index.search(q, fetch)
            rows, cols = np.nonzero(ids >= 0)
        else:
            fetch = min(m, want + _EXTRA)
            ham, ids = index.search(q, fetch)
            limit = ham[:, want - 1]
            complete = (fetch == m) | (ham[:, -1] > limit)
            rows, cols = np.nonzero((ham <= limit[:, None]) & complete[:, None])
        pair_rows, pair_refs = [rows], [ids[rows, cols]]
        if not ivf:
            for h in np.unique(limit[~complete]):  # ties beyond the fetched: all of them
                which = np.nonzero(~complete & (limit == h))[0]
                lims, _, got = index.range_search(q[which], int(h) + 1)
                pair_rows.append(np.repeat(which, np.diff(lims).astype(np.int64)))
                pair_refs.append(got.astype(np.int64))
        rows, refs = np.concatenate(pair_rows), np.concatenate(pair_refs)
        if skip:
            keep = refs != rows + start
            rows, refs = rows[keep], refs[keep]
        d = _combine(_pair_counts(qx, qy, rows + start, refs), units, w)
        order = np.lexsort((refs, d, rows))
        rows, refs, d = rows[order], refs[order], d[order]
        have = np.bincount(rows, minlength=stop - start)
        first = np.concatenate([[0], np.cumsum(have)[:-1]])
        full = have >= k
        pick = first[full, None] + np.arange(k)
        mask = torch.from_numpy(full)
        dists[start:stop][mask] = torch.from_numpy(d[pick])
        found[start:stop][mask] = torch.from_numpy(refs[pick])
        short = np.nonzero(~full)[0] + start  # an approximate search that found too few
        if len(short):
            dists[short], found[short] = _exact_block(qx, qy, w, k, short,
                                                      short if skip else None)
    return dists, found


@dataclass(frozen=True)
class VQIndex:
    """A FAISS binary index over the codes of a set of references, built once by
    :func:`vq_index` and searched many times with :meth:`search` (``vq_knn(...,
    index=kind)`` builds the same index on every call).

    ``kind``: ``"faiss"`` (``IndexBinaryFlat``: exact, the same neighbours as
    ``vq_knn(index="exact")``, ties included) or ``"faiss-ivf"`` (``IndexBinaryIVF``:
    approximate, exact distances for the neighbours it returns); ``num_references``;
    ``layers``: the layers compared; ``bits``: the bit string per input; ``lists``: the
    inverted lists (1: exhaustive); ``probes``: the lists a query visits; ``seconds``:
    the build time (k-means and adding the references)."""

    kind: str
    num_references: int
    layers: tuple[str, ...]
    bits: int
    lists: int
    probes: int
    seconds: float
    _model: Any = field(repr=False, compare=False)
    _codes: Codes = field(repr=False, compare=False)
    _layer_selection: Any = field(repr=False, compare=False)
    _layout: list = field(repr=False, compare=False)
    _index: Any = field(repr=False, compare=False)
    _ivf: bool = field(repr=False, compare=False)

    def search(self, x: Tensor | Codes, k: int = 1, *, queries_per_block: int = 256
               ) -> tuple[Tensor, Tensor]:
        """The ``k`` nearest references of each query ``x`` (an input batch, encoded by
        the index's model, or :class:`maxaffine.Codes` of that model): ``(distances (N,
        k) float32, indices (N, k) int64)``, as :func:`vq_knn` returns them. Queries
        are never skipped (they are not the references)."""
        k = arg.integer(k, "k", minimum=1, maximum=self.num_references,
                        meaning=f"neighbours per query, of {self.num_references} references")
        block_rows = arg.integer(queries_per_block, "queries_per_block", minimum=1,
                                 meaning="queries searched at a time")
        cx, cy, idx, w = _prepare(self._model, x, self._codes, self._layer_selection, None)
        if len(cx) == 0:
            return (torch.empty((0, k), dtype=torch.float32),
                    torch.empty((0, k), dtype=torch.int64))
        query_bits = _knn_bits(cx, self._layout, self.bits)
        return _faiss_search(self._index, self._ivf, query_bits, _words(cx, idx),
                             _words(cy, idx), w, k, False, block_rows)

    def list_sizes(self) -> Tensor:
        """References per inverted list (one entry for the exhaustive index)."""
        if not self._ivf:
            return torch.tensor([self.num_references])
        lists = self._index.invlists
        return torch.tensor([lists.list_size(i) for i in range(self.lists)])

    def summary(self) -> dict[str, Any]:
        """The index's kind, size, layers, bits, lists and probes, the largest and
        smallest list, and the build time."""
        sizes = self.list_sizes()
        return {"kind": self.kind, "num_references": self.num_references,
                "layers": list(self.layers), "bits": self.bits, "lists": self.lists,
                "probes": self.probes, "largest_list": int(sizes.max()),
                "smallest_list": int(sizes.min()), "seconds": self.seconds}

    def to_json(self) -> str:
        """The summary and the list sizes."""
        out = self.summary()
        out["list_sizes"] = self.list_sizes().tolist()
        return json.dumps(out)

    def plot(self, ax=None):
        """The inverted lists' sizes, largest first (how evenly k-means split the
        references; a query visits ``probes`` of them)."""
        from ._plotting import _axes

        ax = _axes(ax)
        sizes = self.list_sizes().sort(descending=True).values.numpy()
        ax.bar(np.arange(len(sizes)), sizes, width=1.0, color="0.5")
        ax.set_xlabel(f"inverted list ({self.probes} of {self.lists} probed per query)")
        ax.set_ylabel("references")
        ax.set_title(f"{self.kind}: {self.num_references} references, {self.bits} bits")
        return ax


def vq_index(model: nn.Module | SplineGraph | None, y: Tensor | Codes, *,
             layers: Sequence[str | int] | None = None,
             index: str = "faiss-ivf") -> VQIndex:
    """A FAISS index over the codes of the references ``y`` (an input batch of
    ``model``, or :class:`maxaffine.Codes`), for many :meth:`VQIndex.search` calls
    against the same references under the equal-weight VQ distance of ``layers``
    (default all).

    ``index="faiss-ivf"``: ``IndexBinaryIVF`` (module docstring: ``round(sqrt(M))``
    lists from binary k-means, ``IVF_PROBES`` probed; approximate); ``"faiss"``: the
    exhaustive ``IndexBinaryFlat`` (exact), which needs the distance to be one Hamming
    distance of the packed codes (layers of one bit per unit, all of the same number
    of units, e.g. one ReLU layer; else use ``vq_knn(index="faiss")``, which counts
    per layer). Same limits as ``vq_knn(index="faiss-ivf")`` on the bit string.
    """
    if index not in ("faiss", "faiss-ivf"):
        arg.choice(index, "index", ("faiss", "faiss-ivf"))
    if y is None:
        raise MaxAffineTypeError("y must be the references (an input batch or "
                                 "maxaffine.Codes), got None")
    _, cy, idx, _ = _prepare(model, y, None, layers, None)
    if len(cy) == 0:
        raise MaxAffineError("y is an empty batch: an index needs at least one reference")
    approximate = index == "faiss-ivf"
    if not approximate and not _one_hamming(cy, idx, None):
        raise MaxAffineError(
            f"index='faiss' keeps an exhaustive index only where the VQ distance is one "
            f"Hamming distance of the packed codes (one bit per unit, the same number of "
            f"units in every layer), not for layers {[cy.names[i] for i in idx]}: pass "
            "index='faiss-ivf', fewer layers (layers=[...]), or use vq_knn(index='faiss')")
    t0 = time.perf_counter()
    layout, nbits = _hamming_layout(cy, idx, check=approximate)
    ref_bits = _knn_bits(cy, layout, nbits)
    built, ivf = _faiss_build(ref_bits, approximate)
    graph = model
    if isinstance(y, Tensor) and model is not None:
        graph = graph_for(model, y, "y")  # traced once: searches reuse it
    lists = built.nlist if ivf else 1
    return VQIndex(kind=index, num_references=len(cy),
                   layers=tuple(cy.names[i] for i in idx), bits=8 * ref_bits.shape[1],
                   lists=lists, probes=built.nprobe if ivf else 1,
                   seconds=time.perf_counter() - t0, _model=graph, _codes=cy,
                   _layer_selection=layers, _layout=layout, _index=built, _ivf=ivf)


__all__ = ["VQIndex", "vq_distance", "vq_index", "vq_knn"]

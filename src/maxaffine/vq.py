"""VQ codes: which affine piece every unit of every nonlinearity selects.

Layer k of a MASO layer selects ``r_k = argmax_r <A[k,r], x> + B[k,r]``
(Balestriero & Baraniuk, "A Spline Theory of Deep Networks", ICML 2018, eq. 6;
"Mad Max: Affine Spline Insights into Deep Learning", sec. 5 on VQ).  ReLU,
leaky ReLU, PReLU and abs have codes {0, 1} (``1{z > 0}``), Hardtanh {0, 1, 2}
(below / inside / above), max-pool the argmax's offset in its window.  Inputs
with equal codes (all layers) lie in the same convex region of input space.

Packed convention (shared by :mod:`maxaffine.partition`; the module is ``vq``
because ``maxaffine.codes`` is the function): each layer is packed
separately and byte-aligned, in graph order; unit ``i`` (row-major over the
layer's code shape) occupies bits ``[i*b, (i+1)*b)`` of its layer, ``b`` the
layer's bits per unit (a power of two, so units never straddle bytes), bit
``j`` living in byte ``j // 8`` at position ``j % 8`` (little-endian).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import _arguments as arg
from ._arguments import check_dtype, check_tensor
from .errors import MaxAffineError, MaxAffineTypeError
from .graph import SplineGraph, as_graph, check_input, piece_fractions


@dataclass(frozen=True)
class Codes:
    """Per-nonlinearity code tensors of a batch, in graph order.

    ``names``: stable layer names (module paths, or ``owner.fn`` for functional
    calls); ``values``: code tensors (N, *code_shape); ``pieces``: pieces per unit;
    ``bits_per_unit``: packing width per layer; ``num_samples``: the batch size
    (needed only when there are no nonlinearities, i.e. the model is affine).
    """

    names: tuple[str, ...]
    values: tuple[Tensor, ...]
    pieces: tuple[int, ...]
    bits_per_unit: tuple[int, ...]
    num_samples: int | None = None

    def __post_init__(self) -> None:
        counts = {len(self.names), len(self.values), len(self.pieces), len(self.bits_per_unit)}
        if len(counts) != 1:
            raise MaxAffineError(f"Codes needs one entry per layer in names, values, pieces and "
                                 f"bits_per_unit, got {len(self.names)}, {len(self.values)}, "
                                 f"{len(self.pieces)} and {len(self.bits_per_unit)}")
        if not all(isinstance(v, Tensor) and v.dim() >= 1 for v in self.values):
            raise MaxAffineTypeError("Codes.values must be code tensors (N, *code_shape)")
        if len({v.shape[0] for v in self.values}) > 1:
            raise MaxAffineError(f"Codes.values have different batch sizes "
                                 f"{[v.shape[0] for v in self.values]}: one row per sample")
        for name, v, p in zip(self.names, self.values, self.pieces, strict=True):
            if v.numel() and (int(v.min()) < 0 or int(v.max()) >= p):
                raise MaxAffineError(f"codes of layer {name!r} hold values in [{int(v.min())}, "
                                     f"{int(v.max())}], but its units have {p} pieces: codes "
                                     f"must lie in [0, {p - 1}]")

    def __len__(self) -> int:
        return self.values[0].shape[0] if self.values else (self.num_samples or 0)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __getitem__(self, key: str | int) -> Tensor:
        return self.values[self._index(key)]

    def items(self) -> Iterator[tuple[str, Tensor]]:
        return zip(self.names, self.values, strict=True)

    def as_dict(self) -> dict[str, Tensor]:
        """name -> code tensor; pass to ``SplineGraph.evaluate(codes=...)`` to freeze."""
        return dict(self.items())

    def _index(self, key: str | int) -> int:
        """The position of a layer given by name or by index (negative from the end)."""
        return arg.layer_index(key, self.names)

    def _layers(self, layers: Iterable[str | int] | None, what: str = "layers") -> list[int]:
        if layers is None:
            return list(range(len(self.names)))
        if isinstance(layers, str | bytes) or not isinstance(layers, Iterable):
            raise MaxAffineTypeError(f"{what} must be a list of layer names or indices (e.g. "
                                     f"[{self.names[0] if self.names else '0'!r}]), got "
                                     f"{type(layers).__name__} {layers!r}; None for all layers")
        return [arg.layer_index(k, self.names, f"{what}[{i}]") for i, k in enumerate(layers)]

    @property
    def num_units(self) -> tuple[int, ...]:
        return tuple(math.prod(v.shape[1:]) for v in self.values)

    def packed(self, layers: Sequence[str | int] | None = None) -> Tensor:
        """The codes packed into bits, uint8 of shape (N, num_bytes) (the module
        docstring gives the convention), of the chosen ``layers`` (names or indices;
        default all)."""
        idx = self._layers(layers)
        if not idx:
            return torch.zeros((len(self), 0), dtype=torch.uint8)
        return pack([self.values[i] for i in idx], [self.bits_per_unit[i] for i in idx])

    def byte_slices(self) -> dict[str, slice]:
        """Where each layer lives in :meth:`packed` (all layers)."""
        out, start = {}, 0
        for name, u, b in zip(self.names, self.num_units, self.bits_per_unit, strict=True):
            stop = start + (u * b + 7) // 8
            out[name] = slice(start, stop)
            start = stop
        return out

    def region_ids(self, layers: Sequence[str | int] | None = None) -> Tensor:
        """(N,) int64 ids, equal iff the samples' codes (of ``layers``) are equal.

        Ids number the distinct codes of this batch in order of first appearance.
        """
        packed = self.packed(layers)
        if packed.shape[1] == 0 or len(self) == 0:
            return torch.zeros(len(self), dtype=torch.int64)
        _, inverse = torch.unique(packed, dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(self), dtype=torch.int64)
        first.scatter_reduce_(0, inverse, torch.arange(len(self)), reduce="amin")
        rank = torch.empty_like(first)
        rank[first.argsort()] = torch.arange(len(first))
        return rank[inverse]

    def hamming(self, other: Codes, normalized: bool = True) -> dict[str, Tensor]:
        """Per layer, the (fraction of) units whose codes differ between aligned
        samples of ``self`` and ``other`` (max-pool: windows whose argmax differs).
        Both must come from one model on inputs of one shape, with as many samples."""
        normalized = arg.flag(normalized, "normalized")
        if not isinstance(other, Codes):
            raise MaxAffineTypeError(f"Codes.hamming compares with other maxaffine.Codes, got "
                                     f"{type(other).__name__}: compute them with "
                                     "maxaffine.codes(model, x)")
        why = mismatch(self, other)
        if why is not None:
            raise MaxAffineError(f"Codes.hamming needs codes of one model on inputs of one "
                                 f"shape, but {why}")
        if len(self) != len(other):
            raise MaxAffineError(f"Codes.hamming compares aligned samples, but there are "
                                 f"{len(self)} and {len(other)}: select matching samples "
                                 "(Codes.select), or use maxaffine.vq_distance for all pairs")
        out = {}
        for name, a, b, units in zip(self.names, self.values, other.values, self.num_units,
                                     strict=True):
            diff = (a != b).reshape(a.shape[0], units).sum(1)
            out[name] = diff / max(1, units) if normalized else diff
        return out

    def select(self, index: Tensor | slice | Sequence[int]) -> Codes:
        """The codes of a subset of samples."""
        try:
            probe = torch.as_tensor(index) if isinstance(index, list | tuple | Tensor) else None
            if probe is not None and probe.numel() and probe.is_floating_point():
                raise TypeError("indices must be integers or bools")
            kept = torch.arange(len(self))[index]
        except (IndexError, TypeError, ValueError, RuntimeError) as err:
            raise MaxAffineError(f"Codes.select: index {index!r} does not select among the "
                                 f"{len(self)} samples ({err}); pass indices in "
                                 f"[-{len(self)}, {len(self) - 1}], a slice or a bool mask "
                                 f"of length {len(self)}") from None
        kept = kept.reshape(-1)  # a single int selects one sample, kept as a batch of 1
        return Codes(self.names, tuple(v[kept] for v in self.values), self.pieces,
                     self.bits_per_unit, kept.numel())

    def summary(self) -> dict[str, Any]:
        """Samples, distinct regions among them (all layers), and per layer: code
        shape, units, pieces, bits per unit, distinct codes, and the fraction of
        (sample, unit) entries selecting each piece."""
        packed = [self.packed([i]) for i in range(len(self.names))]
        return {
            "samples": len(self),
            "regions": int(self.region_ids().max()) + 1 if len(self) else 0,
            "layers": {
                n: {"code_shape": list(v.shape[1:]), "units": u, "pieces": p,
                    "bits_per_unit": b,
                    "distinct_codes": int(torch.unique(q, dim=0).shape[0]) if len(self) else 0,
                    "piece_fractions": piece_fractions(v, p)}
                for n, v, u, p, b, q in zip(self.names, self.values, self.num_units,
                                            self.pieces, self.bits_per_unit, packed,
                                            strict=True)},
        }

    def to_json(self) -> str:
        """The layers and each sample's packed codes (hex)."""
        return json.dumps({
            "layers": [
                {"name": n, "pieces": p, "shape": list(v.shape[1:])}
                for n, p, v in zip(self.names, self.pieces, self.values, strict=True)
            ],
            "packed": [row.hex() for row in (bytes(r.tolist()) for r in self.packed())],
        })

    def plot(self, ax=None):
        """Per layer, the fraction of (sample, unit) entries selecting each piece."""
        from ._plotting import plot_piece_usage

        return plot_piece_usage(self.names, [piece_fractions(v, p) for v, p in
                                             zip(self.values, self.pieces, strict=True)],
                                ax=ax)


def pack(values: Sequence[Tensor], bits_per_unit: Sequence[int]) -> Tensor:
    """Pack per-layer code tensors (N, *shape) into uint8 (N, num_bytes).

    Each layer is byte-aligned; ``bits_per_unit`` entries are powers of two.
    """
    if not values:
        return torch.zeros((0, 0), dtype=torch.uint8)
    n = values[0].shape[0]
    chunks = []
    for v, b in zip(values, bits_per_unit, strict=True):
        units = math.prod(v.shape[1:])
        flat = v.reshape(n, units)  # sizes explicit: n may be 0
        if b >= 8:  # whole bytes per unit, little-endian
            wide = flat.long()
            parts = [(wide >> (8 * k)) & 0xFF for k in range(b // 8)]
            chunks.append(torch.stack(parts, -1).reshape(n, units * (b // 8)).to(torch.uint8))
            continue
        per_byte = 8 // b
        pad = (-units) % per_byte
        if pad:
            flat = torch.cat([flat, flat.new_zeros(n, pad)], 1)
        grouped = flat.to(torch.uint8).reshape(n, flat.shape[1] // per_byte, per_byte)
        shifts = torch.arange(0, 8, b, dtype=torch.uint8, device=flat.device)
        chunks.append((grouped << shifts).sum(-1, dtype=torch.uint8))
    return torch.cat(chunks, 1)


def codes(model: nn.Module | SplineGraph, x: Tensor) -> Codes:
    """The VQ codes of every nonlinearity for a batch ``x`` (N, *input_shape).

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> c = codes(net, torch.randn(3, 2))
    >>> c.names, c["1"].shape, c.packed().shape
    (('1',), torch.Size([3, 4]), torch.Size([3, 1]))

    An empty batch (0, *input_shape) gives codes with 0 rows and every layer.
    """
    graph = graph_for(model, x)
    check_input(graph, x)
    return codes_of(graph, evaluate_codes(graph, x), x.shape[0])


def graph_for(model: nn.Module | SplineGraph, x: Tensor, what: str = "x") -> SplineGraph:
    """The spline graph of ``model`` for a batch ``x`` that may be empty (an empty
    batch is traced on one zero sample of its shape: the trace checks itself on a
    sample). Errors name ``what``."""
    if isinstance(model, SplineGraph):
        return model
    if not isinstance(model, nn.Module):
        raise MaxAffineTypeError(f"model must be a torch.nn.Module or a maxaffine.SplineGraph, "
                                 f"got {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise MaxAffineTypeError(f"{what} must be a torch.Tensor batch (N, *input_shape), got "
                                 f"{type(x).__name__}")
    check_tensor(x, what)
    if x.dim() < 2:
        raise MaxAffineError(f"{what} must be a batch (N, *input_shape); got shape "
                             f"{tuple(x.shape)}: add a batch dimension with "
                             f"{what}.unsqueeze(0)")
    check_dtype(model, x, what)
    return as_graph(model, x if x.shape[0] else x.new_zeros((1, *x.shape[1:])))


def evaluate_codes(graph: SplineGraph, x: Tensor) -> dict[str, Tensor]:
    """name -> code tensor (N, *code_shape) of a checked batch ``x``; an empty batch
    gets empty codes of the right shapes and dtypes (from one zero sample)."""
    with torch.no_grad():
        if x.shape[0] == 0:
            probe = graph.run(x.new_zeros((1, *graph.input_shape))).codes
            return {k: v[:0] for k, v in probe.items()}
        return graph.run(x).codes


def mismatch(a: Codes, b: Codes) -> str | None:
    """None if ``a`` and ``b`` hold codes of one model on inputs of one shape, else
    what differs (the first layer that does, and how)."""
    if a.names != b.names:
        return (f"their layers differ, {a.names} vs {b.names}: they are codes of different "
                "models")
    for name, va, vb, pa, pb, ba, bb in zip(a.names, a.values, b.values, a.pieces, b.pieces,
                                            a.bits_per_unit, b.bits_per_unit, strict=True):
        if pa != pb or ba != bb:
            return (f"layer {name!r} has {pa} pieces per unit ({ba} bits) vs {pb} ({bb} "
                    "bits): they are codes of different models")
        if va.shape[1:] != vb.shape[1:]:
            return (f"codes of layer {name!r} have shape {tuple(va.shape[1:])} vs "
                    f"{tuple(vb.shape[1:])}: the inputs have different sizes (or the models "
                    "differ); compute both with the same model on inputs of the same shape")
    return None


def codes_of(graph: SplineGraph, found: dict[str, Tensor], num_samples: int | None = None
             ) -> Codes:
    """Wrap an evaluation's name -> code dict as :class:`Codes` in graph order."""
    layers = graph.layers
    return Codes(
        names=tuple(layer.name for layer in layers),
        values=tuple(found[layer.name] for layer in layers),
        pieces=tuple(layer.num_pieces for layer in layers),
        bits_per_unit=tuple(layer.bits_per_unit for layer in layers),
        num_samples=num_samples,
    )


def unpack(packed: Tensor, shapes: Sequence[tuple[int, ...]], bits_per_unit: Sequence[int]
           ) -> tuple[Tensor, ...]:
    """Inverse of :func:`pack`: per-layer code tensors (N, *shape) as uint8 (int64
    for layers wider than 8 bits per unit)."""
    n = packed.shape[0]
    out, start = [], 0
    for shape, b in zip(shapes, bits_per_unit, strict=True):
        units = math.prod(shape)
        nbytes = (units * b + 7) // 8
        chunk = packed[:, start: start + nbytes]
        start += nbytes
        if b >= 8:
            parts = chunk.reshape(n, units, b // 8).long()
            shifts = torch.arange(0, b, 8, dtype=torch.int64)
            vals = (parts << shifts).sum(-1)
            out.append(vals.reshape(n, *shape) if b > 8 else vals.to(torch.uint8).reshape(
                n, *shape))
            continue
        if b == 1:  # numpy's bit unpacking is several times faster
            bits = np.unpackbits(chunk.contiguous().numpy(), axis=1, count=units,
                                 bitorder="little")
            out.append(torch.from_numpy(bits).reshape(n, *shape))
            continue
        shifts = torch.arange(0, 8, b, dtype=torch.uint8)
        vals = (chunk.unsqueeze(-1) >> shifts) & ((1 << b) - 1)
        out.append(vals.reshape(n, nbytes * (8 // b))[:, :units].reshape(n, *shape))
    return tuple(out)

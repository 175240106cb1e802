"""VQ codes: which affine piece every unit of every nonlinearity selects.

Unit k of a MASO layer selects ``r_k = argmax_r <A[k,r], x> + B[k,r]``
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .errors import MaxAffineError
from .graph import SplineGraph, as_graph


@dataclass(frozen=True)
class Codes:
    """Per-nonlinearity code tensors of a batch, in graph order.

    ``names``: stable unit names (module paths, or ``owner.fn`` for functional
    calls); ``values``: code tensors (N, *code_shape); ``pieces``: pieces per unit;
    ``bits_per_unit``: packing width per layer; ``num_samples``: the batch size
    (needed only when there are no nonlinearities, i.e. the model is affine).
    """

    names: tuple[str, ...]
    values: tuple[Tensor, ...]
    pieces: tuple[int, ...]
    bits_per_unit: tuple[int, ...]
    num_samples: int | None = None

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
        if isinstance(key, int):
            return key
        try:
            return self.names.index(key)
        except ValueError:
            raise MaxAffineError(f"no layer {key!r}; layers are {self.names}") from None

    def _layers(self, layers: Sequence[str | int] | None) -> list[int]:
        return list(range(len(self.names))) if layers is None else [self._index(k) for k in layers]

    @property
    def num_units(self) -> tuple[int, ...]:
        return tuple(v[0].numel() if len(v) else 0 for v in self.values)

    @property
    def bits(self) -> Tensor:
        """Packed codes, uint8 of shape (N, num_bytes) (module docstring: convention)."""
        return self.packed()

    def packed(self, layers: Sequence[str | int] | None = None) -> Tensor:
        """Packed codes of the chosen layers only (default: all)."""
        idx = self._layers(layers)
        if not idx:
            return torch.zeros((len(self), 0), dtype=torch.uint8)
        return pack([self.values[i] for i in idx], [self.bits_per_unit[i] for i in idx])

    def byte_slices(self) -> dict[str, slice]:
        """Where each layer lives in :attr:`bits`."""
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
        if packed.shape[1] == 0:
            return torch.zeros(len(self), dtype=torch.int64)
        _, inverse = torch.unique(packed, dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(self), dtype=torch.int64)
        first.scatter_reduce_(0, inverse, torch.arange(len(self)), reduce="amin")
        rank = torch.empty_like(first)
        rank[first.argsort()] = torch.arange(len(first))
        return rank[inverse]

    def hamming(self, other: Codes, normalized: bool = True) -> dict[str, Tensor]:
        """Per layer, the (fraction of) units whose codes differ between aligned
        samples of ``self`` and ``other`` (max-pool: windows whose argmax differs)."""
        if self.names != other.names or len(self) != len(other):
            raise MaxAffineError("hamming needs codes of the same model and batch size")
        out = {}
        for name, a, b in zip(self.names, self.values, other.values, strict=True):
            diff = (a != b).flatten(1).sum(1)
            out[name] = diff / max(1, a[0].numel()) if normalized else diff
        return out

    def select(self, index: Tensor | slice | Sequence[int]) -> Codes:
        """The codes of a subset of samples."""
        kept = torch.arange(len(self))[index]
        return Codes(self.names, tuple(v[index] for v in self.values), self.pieces,
                     self.bits_per_unit, kept.numel())

    def to_json(self) -> str:
        return json.dumps({
            "layers": [
                {"name": n, "pieces": p, "shape": list(v.shape[1:])}
                for n, p, v in zip(self.names, self.pieces, self.values, strict=True)
            ],
            "bits": [row.hex() for row in (bytes(r.tolist()) for r in self.bits)],
        })


def pack(values: Sequence[Tensor], bits_per_unit: Sequence[int]) -> Tensor:
    """Pack per-layer code tensors (N, *shape) into uint8 (N, num_bytes).

    Each layer is byte-aligned; ``bits_per_unit`` entries are powers of two.
    """
    if not values:
        return torch.zeros((0, 0), dtype=torch.uint8)
    n = values[0].shape[0]
    chunks = []
    for v, b in zip(values, bits_per_unit, strict=True):
        flat = v.reshape(n, -1)
        if b >= 8:  # whole bytes per unit, little-endian
            wide = flat.long()
            parts = [(wide >> (8 * k)) & 0xFF for k in range(b // 8)]
            chunks.append(torch.stack(parts, -1).reshape(n, -1).to(torch.uint8))
            continue
        per_byte = 8 // b
        units = flat.shape[1]
        pad = (-units) % per_byte
        if pad:
            flat = torch.cat([flat, flat.new_zeros(n, pad)], 1)
        grouped = flat.to(torch.uint8).reshape(n, -1, per_byte)
        shifts = torch.arange(0, 8, b, dtype=torch.uint8, device=flat.device)
        chunks.append((grouped << shifts).sum(-1, dtype=torch.uint8))
    return torch.cat(chunks, 1)


def codes(model: nn.Module | SplineGraph, x: Tensor) -> Codes:
    """The VQ codes of every nonlinearity for a batch ``x`` (N, *input_shape).

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> c = codes(net, torch.randn(3, 2))
    >>> c.names, c["1"].shape, c.bits.shape
    (('1',), torch.Size([3, 4]), torch.Size([3, 1]))
    """
    graph = as_graph(model, x)
    with torch.no_grad():
        found = graph.evaluate(x).codes
    return codes_of(graph, found, x.shape[0])


def codes_of(graph: SplineGraph, found: dict[str, Tensor], num_samples: int | None = None
             ) -> Codes:
    """Wrap an evaluation's name -> code dict as :class:`Codes` in graph order."""
    units = graph.units
    return Codes(
        names=tuple(u.name for u in units),
        values=tuple(found[u.name] for u in units),
        pieces=tuple(u.num_pieces for u in units),
        bits_per_unit=tuple(u.bits for u in units),
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
        out.append(vals.reshape(n, -1)[:, :units].reshape(n, *shape))
    return tuple(out)

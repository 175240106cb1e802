"""The exact partition of a segment (:func:`partition_segment`): breakpoints
interpolated layer by layer where a unit's boundary changes sign, phantom ones
(ties of non-maximal window entries) merged by comparing neighbours' codes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from .._arguments import check_tensor
from .._autodiff import jacobian
from ..errors import MaxAffineError
from ..graph import Layer, SplineGraph, check_parameters
from ..vq import codes_of
from .plane import _graph_in, _refuse_batch, _tolerance
from .results import SegmentPartition
from .values import _abs_max, _check_finite


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
    check_parameters(graph)

    def points(t: Tensor) -> Tensor:
        return a.unsqueeze(0) + t.reshape((-1,) + (1,) * a.dim()) * (b - a).unsqueeze(0)

    t = torch.tensor([0.0, 1.0], dtype=dtype)
    with torch.no_grad():
        for layer in graph.layers:
            ins = graph.run(points(t), record=True, until=layer.name).inputs[layer.name]
            cols = _segment_columns(layer, ins)  # list of (T, K) cut functions
            for d in cols:
                _check_finite(_abs_max(d) if d.numel() else d, layer.name, dtype)
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
            packed = codes.packed()
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


def _segment_columns(layer: Layer, ins: tuple[Tensor, ...]) -> list[Tensor]:
    """The layer's cut functions at the breakpoints: each (T, K), zero = boundary
    (lines: their values; windows: the differences of every pair of entries, 1
    where one is absent)."""
    desc = layer.rule.boundary(*ins)
    cols = layer.rule.columns(*ins)
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

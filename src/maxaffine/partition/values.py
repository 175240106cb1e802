"""The network's values at a partition's vertices, as each layer's cuts need
them: resumed between pauses (values kept as mesh columns) or recomputed by
chunked forward passes; and the columns each layer's boundaries read."""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

from .. import ops
from ..errors import MaxAffineError
from ..graph import Layer, SplineGraph
from .domain import Slice
from .mesh import Mesh

_RESUME_LIMIT = 32768  # values per vertex a paused evaluation may keep (else recompute)


_RESUME_BUDGET = 8e7  # values a paused evaluation may hold (est.); beyond: recompute


_CHUNK_VALUES = 1 << 20  # values per vertex x vertices of one chunk of a resumed evaluation


class _VertexValues:
    """The network's values at the mesh's vertices, as each layer's cuts need them.

    Two strategies, same results. *Resume* (small layers, e.g. MLPs): keep the
    values of the nodes a paused evaluation needs as extra columns of the mesh
    (interpolated at new vertices, which is exact since those nodes are affine
    on every face so far) and run only the steps between consecutive layers.
    *Recompute* (wide layers, e.g. CNN feature maps): a chunked forward pass
    from the input at all vertices, per chunk of a layer's units.
    """

    def __init__(self, graph: SplineGraph, sl: Slice, mesh: Mesh):
        self.graph, self.sl, self.mesh = graph, sl, mesh
        self.pauses = graph.pauses
        self.sizes = [p.size for p in self.pauses]
        self.resume = bool(self.sizes) and max(self.sizes) <= _RESUME_LIMIT
        self.start_nv = mesh.nv  # vertices at the current layer's start
        # (name, per-sample shape) of the live columns
        self.live: tuple[tuple[str, tuple[int, ...]], ...] = ()
        self.ncols = 0  # the first ncols columns are the current cut-function inputs
        self._resumed_scale: Tensor | None = None  # per column of the last resume: max |v|
        self._scale: Tensor | None = None  # the same, while those are the cut columns
        # the largest |value| of any earlier layer's inputs: values computed from them
        # (interpolated, or through forward passes) are rounded to ~eps of it, however
        # small their own range (e.g. after a clamp)
        self.upstream = 0.0
        self.offset = 0  # where the live columns start
        self.output: Tensor | None = None
        if self.resume:
            self._resume({"": sl.to_input(mesh.xy)}, None, 0)

    def _resume(self, env: dict[str, Tensor], start: str | None, pause: int | None) -> None:
        """Run the evaluation paused before nonlinearity ``start`` (live values ``env``
        by name; ``start`` None: ``env[""]`` is the input) to the pause before layer
        ``pause`` (``None``: to the output) at every vertex, and keep the live values
        there as the mesh's columns, the layer's own inputs first (so they double as
        its cut-function inputs). Runs in chunks of vertices, each written straight
        into the new columns: temporaries stay small (reused, in cache) instead of
        a fresh (V, width) tensor per op, whose first touch costs as much as the
        arithmetic here."""
        nv, graph = self.mesh.nv, self.graph
        if pause is None:
            live: tuple = ()
            dest = torch.empty((nv, graph.num_outputs), dtype=self.mesh.xy.dtype)
            width = graph.num_outputs
        else:
            live = self.live = self.pauses[pause].live
            width = self.sizes[pause]
            # the new values may replace the old ones in the same buffer: a chunk's
            # rows are read (into the walk's temporaries) before they are written
            dest = self.mesh.fresh_vals(width, reuse=True)
        widest = max([width] + [v[:1].numel() for v in env.values()])
        rows = max(256, _CHUNK_VALUES // max(1, widest))
        stop = None if pause is None else self.pauses[pause].layer
        scale = torch.zeros(width, dtype=dest.dtype)
        with torch.no_grad():
            for a in range(0, nv, rows):
                b = min(nv, a + rows)
                part = {n: v[a:b] for n, v in env.items()}
                ev = graph.run(part[""] if start is None else part, start=start, stop=stop,
                               keep_codes=False, in_place=True, forward=_window_max)
                if pause is None:
                    dest[a:b] = ev.output.reshape(b - a, -1)
                    continue
                flat = [ev.values[n].reshape(b - a, -1) for n, _ in live]
                if any(_same_memory(f, dest) for f in flat):
                    # a value kept from the last pause, in the buffer being rewritten:
                    # read them all before writing any
                    dest[a:b] = torch.cat(flat, 1)
                else:
                    at = 0
                    for f in flat:
                        dest[a:b, at: at + f.shape[1]] = f
                        at += f.shape[1]
                # the cuts' tolerances scale with each column's range: read it while
                # the chunk is in cache
                torch.maximum(scale, _abs_max(dest[a:b]), out=scale)
        if pause is None:
            self.output = dest
        self._resumed_scale = None if pause is None else scale
        self.ncols = self.offset = 0

    def _env(self) -> dict[str, Tensor]:
        vals, env, at = self.mesh.vals[:, self.offset:], {}, 0
        for name, shape in self.live:
            k = math.prod(shape)
            env[name] = vals[:, at: at + k].reshape((-1, *shape))
            at += k
        return env

    def columns(self, index: int, layer: Layer, sel: Tensor, desc: ops.Lines | ops.Windows
                ) -> ops.Lines | ops.Windows:
        """Put the columns the boundaries of units ``sel`` read (the rule's
        :meth:`~maxaffine.ops.Nonlinearity.columns`) first in the mesh, and return
        those boundaries in terms of them (``desc`` restricted to ``sel``)."""
        mesh, graph = self.mesh, self.graph
        self._scale = None
        if self.resume and desc.direct:
            env = self._env()
            nodes = list(self.pauses[index].inputs)
            ins = tuple(env[n] for n in nodes)
            shapes = {tuple(t.shape) for t in ins}
            in_place = (len(shapes) == 1 and len(set(nodes)) == len(nodes)
                        and [n for n, _ in self.live[: len(nodes)]] == nodes
                        and sel.shape[0] == layer.num_units)
            if in_place:  # the columns are the first live columns already: read them
                self.ncols, self.offset = sum(t[:1].numel() for t in ins), 0  # there
                self._scale = self._resumed_scale
                return desc
            local, used = _restrict(desc, sel)
            cols = torch.cat([t.reshape(t.shape[0], -1) for t in ins], 1)[:, used]
            mesh.set_vals(torch.cat([cols, mesh.vals[:, self.offset:]], 1))
            self.ncols = self.offset = cols.shape[1]
            return local
        # columns that are not the op's inputs, or recompute mode: forward passes
        local, used = _restrict(desc, sel)
        if self.resume:  # the live values stay, after the new columns
            cols = torch.empty((mesh.nv, used.shape[0]), dtype=mesh.xy.dtype)
            for part, ev in _evaluate(graph, self.sl, mesh.xy, layer.name):
                cols[part] = layer.rule.columns(*ev.inputs[layer.name])[:, used]
            mesh.set_vals(torch.cat([cols, mesh.vals[:, self.offset:]], 1))
            self.ncols = self.offset = cols.shape[1]
            return local
        vals = mesh.fresh_vals(used.shape[0])  # written in place: one copy of the values
        for part, ev in _evaluate(graph, self.sl, mesh.xy, layer.name):
            vals[part] = layer.rule.columns(*ev.inputs[layer.name])[:, used]
        self.ncols = used.shape[0]
        return local

    def scale(self) -> Tensor:
        """(ncols,) the largest absolute value of each cut-function input column at
        the vertices (kept from the last resume when those are its columns)."""
        if self._scale is not None and self.offset == 0:
            return self._scale[: self.ncols].clone()
        return _abs_max(self.mesh.vals[:, : self.ncols])

    def advance(self, index: int) -> None:
        """After layer ``index`` is cut: move the paused evaluation to the next layer."""
        if not self.resume:
            return
        growth = min(4.0, self.mesh.nv / max(1, self.start_nv))
        self.start_nv = self.mesh.nv
        if index + 1 < len(self.pauses) and (
                growth * self.mesh.nv * self.sizes[index + 1] > _RESUME_BUDGET):
            # the next layer's values at all vertices (whose number its cuts multiply,
            # as the last layer's did, up to 4x) would outgrow the budget: recompute
            # them in chunks from the input
            self.resume = False
            self.mesh.drop_vals()
            return
        self._resume(self._env(), self.pauses[index].layer,
                     index + 1 if index + 1 < len(self.pauses) else None)

    def outputs(self) -> Tensor:
        """(V, C) network outputs at every vertex."""
        if self.resume and self.pauses:
            assert self.output is not None
            return self.output
        out = torch.empty((self.mesh.nv, self.graph.num_outputs), dtype=self.mesh.xy.dtype)
        for part, ev in _evaluate(self.graph, self.sl, self.mesh.xy, None, record=False):
            out[part] = ev.output.reshape(ev.output.shape[0], -1)
        return out


def _same_memory(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _evaluate(graph: SplineGraph, sl: Slice, st: Tensor, until: str | None,
              record: bool = True):
    """Forward passes at slice points, chunked so activations fit in memory.
    Yields ``(slice of st, Evaluation)``."""
    per = max(1, graph.input_dim + sum(u.num_units for u in graph.layers) * 3)
    chunk = max(256, int(1e7 // per))
    with torch.no_grad():
        for i in range(0, st.shape[0], chunk):
            yield slice(i, i + chunk), graph.run(sl.to_input(st[i:i + chunk]),
                                                 record=record, until=until)


def _restrict(desc: ops.Lines | ops.Windows, sel: Tensor
              ) -> tuple[ops.Lines | ops.Windows, Tensor]:
    """The boundaries of units ``sel`` (consecutive) over the columns they read:
    returns them in terms of those columns, and which of the rule's columns they
    are (``used``, in order). Windows read their entries unit-major (an absent
    entry reads column 0, never compared)."""
    if isinstance(desc, ops.Windows):
        t = desc.table[sel]
        k, r = t.shape
        local = torch.where(t >= 0, torch.arange(k * r).reshape(k, r), -1)
        return ops.Windows(local), t.clamp(min=0).flatten()
    per = desc.per_unit
    lo, hi = int(sel[0]) * per, (int(sel[-1]) + 1) * per
    pos, neg = desc.pos[lo:hi], desc.neg[lo:hi]
    used = torch.unique(torch.cat([pos, neg[neg >= 0]]))
    local_neg = torch.where(neg >= 0, torch.searchsorted(used, neg.clamp(min=0)), -1)
    return ops.Lines(torch.searchsorted(used, pos), local_neg, desc.level[lo:hi],
                     desc.unit[lo:hi] - int(sel[0]), desc.base), used


def _columns_per_unit(desc: ops.Lines | ops.Windows, n_units: int) -> int:
    """Columns one unit's boundaries read (for the values budget)."""
    if isinstance(desc, ops.Windows):
        return desc.table.shape[1]
    used = torch.unique(torch.cat([desc.pos, desc.neg[desc.neg >= 0]]))
    return max(1, -(-used.shape[0] // max(1, n_units)))


def _check_finite(scale: Tensor, where: str, dtype: torch.dtype) -> None:
    """Values that overflowed (inf, or NaN from inf - inf) have no geometry."""
    if scale.numel() and not bool(torch.isfinite(scale).all()):
        raise MaxAffineError(
            f"values of {where} overflow {dtype} on this domain (the network's values "
            "there exceed the largest float): scale the model's weights or the domain down")


def _abs_max(cols: Tensor) -> Tensor:
    """Per column, the largest absolute value (no (V, cols) temporary; and no
    reference to the mesh's buffer outlives the call, so cuts can replace it)."""
    return torch.maximum(cols.amax(0), -cols.amin(0))


def _window_max(rule: ops.Nonlinearity, args: tuple, kwargs: dict) -> Tensor | None:
    """A window maximum over many float64 samples (the vertices of a partition) by a
    compiled gather (:func:`~maxaffine.partition.kernels.window_max`), which is
    several times faster than native float64 max-pooling; None for anything else
    (the rule's own forward)."""
    x = args[0] if args else None
    if not (isinstance(x, Tensor) and x.dtype == torch.float64 and x.device.type == "cpu"
            and x.numel() >= 1 << 16 and not x.requires_grad):
        return None
    known = _WINDOWS.setdefault(rule, {})
    shape = tuple(x.shape[1:])
    if shape not in known:
        desc = rule.boundary(*(a[:1] if isinstance(a, Tensor) else a for a in args), **kwargs)
        out_shape = rule.forward(x[:1], *args[1:], **kwargs).shape[1:]
        known[shape] = (desc, tuple(out_shape)) if (
            isinstance(desc, ops.Windows) and desc.direct) else None
    found = known[shape]
    if found is None:
        return None
    from . import kernels as kern

    desc, out_shape = found
    table = desc.table
    out = torch.empty((x.shape[0], table.shape[0]), dtype=x.dtype)
    kern.window_max(x.reshape(x.shape[0], -1).contiguous().numpy(), table.contiguous().numpy(),
                    bool((table < 0).any()), out.numpy())
    return out.reshape(x.shape[0], *out_shape)


# rule -> input shape -> (its windows, output shape), or None (not a direct window max)
_WINDOWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_CHUNK_FLOATS = 1 << 21  # activations of one chunk of points (all layers) in _forward


def _rows_per_pass(graph: SplineGraph) -> int:
    """Points per forward pass: a chunk's activations (every layer's, recorded) stay
    a few MB, whatever the number of points."""
    per = graph.input_dim + 3 * sum(layer.num_units for layer in graph.layers)
    return max(256, _CHUNK_FLOATS // max(1, per))


def _forward(graph: SplineGraph, x, dtype: torch.dtype, layer: Layer | None,
             keep=None):
    """At the points ``x`` (V, d) numpy: the layer's columns (its boundaries' inputs;
    ``keep``: only those), or the outputs (``layer`` None), as float64 numpy (V, C);
    chunked."""
    import numpy as np

    rows, chunk = [], _rows_per_pass(graph)
    with torch.no_grad():
        for i in range(0, max(1, x.shape[0]), chunk):
            pts = torch.from_numpy(x[i:i + chunk]).to(dtype).reshape(-1, *graph.input_shape)
            if layer is None:
                out = graph.run(pts, record=False).output
                rows.append(out.reshape(out.shape[0], -1).double().numpy())
            else:
                ev = graph.run(pts, record=True, until=layer.name)
                cols = layer.rule.columns(*ev.inputs[layer.name])
                if keep is not None:
                    cols = cols[:, torch.from_numpy(keep)]
                rows.append(cols.double().numpy())
    return np.concatenate(rows)


def _line_values(graph: SplineGraph, x, dtype: torch.dtype, layer: Layer, pos, neg, level,
                 out, col_max=None) -> None:
    """The values ``columns[:, pos] - columns[:, neg] - level`` of a layer's lines
    (``neg`` -1: no second term) at the points ``x``, written into ``out`` (V, L)
    chunk by chunk (no (V, columns) copy); ``col_max``: updated in place with each
    column's largest |value|."""
    import numpy as np

    p = torch.from_numpy(pos)
    second = neg >= 0
    q = torch.from_numpy(neg[second])
    lev = torch.from_numpy(level)
    chunk = _rows_per_pass(graph)
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            pts = torch.from_numpy(x[i:i + chunk]).to(dtype).reshape(-1, *graph.input_shape)
            ev = graph.run(pts, record=True, until=layer.name)
            cols = layer.rule.columns(*ev.inputs[layer.name]).double()
            if col_max is not None:
                np.maximum(col_max, cols.abs().amax(0).numpy(), out=col_max)
            vals = cols[:, p] - lev
            if second.any():
                vals[:, torch.from_numpy(second)] -= cols[:, q]
            out[i:i + chunk] = vals.numpy()

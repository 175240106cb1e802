"""The exact partition of a 2-D slice (:func:`partition_plane`): layer by layer,
every face cut along the boundaries of each unit (lines or window ties), all faces
in lockstep; codes read at each face's interior point; the output's map fitted
per face; regions below the tolerance flagged, re-evaluated and counted."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import ops
from ..errors import MaxAffineError, MaxAffineTypeError, UnsupportedOperation
from ..graph import Layer, SplineGraph, as_graph, check_parameters
from ..vq import codes_of, pack
from .domain import Slice, _as_slice, _centred, _polygon
from .mesh import Mesh, _Prefault, unpack_bits
from .resolution import _check_resolution, _warn_unresolved
from .results import Partition
from .values import (
    _abs_max,
    _check_finite,
    _columns_per_unit,
    _evaluate,
    _VertexValues,
)


def partition_plane(
    model: nn.Module | SplineGraph,
    domain: Slice | Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    tol: float | None = None,
    progress: bool = True,
    max_regions: int = 5_000_000,
) -> Partition:
    """The exact partition of a 2-D slice of input space into the network's regions.

    ``domain``: a :class:`Slice` (e.g. ``Slice.through(x1, x2, x3)``), or a convex
    polygon (K, 2) for a model with 2-D inputs. Geometry runs in ``dtype``
    (float64 by default, or float32; a model of another dtype is evaluated through
    a converted copy), in coordinates centred on the domain when it lies far from
    the slice's origin. ``tol``: values within ``tol`` (relative to each unit's
    range on the domain) of a boundary count as on it (default 1e-13 in float64,
    1e-5 in float32; at least 32 machine epsilons, at most 1e-3).

    Regions thinner than the tolerance (about ``tol`` times the domain's size)
    cannot be separated: where a boundary passes that close to a vertex without
    cutting, the faces there are re-evaluated at their interior points (so every
    face's code and map are its interior point's), the places are re-partitioned
    in small windows to count what was merged, and a :class:`MaxAffineWarning`
    says how many regions, where, and how to resolve them (``Partition.unresolved``
    marks the faces that hold them).
    """
    t0 = time.perf_counter()
    rel_tol = _tolerance(tol, dtype)
    if isinstance(max_regions, bool) or not isinstance(max_regions, int) or max_regions < 1:
        raise MaxAffineError(f"max_regions must be a positive int, got {max_regions!r}")
    graph, sl = _graph_and_slice(model, domain, dtype)
    part = _partition(graph, sl, dtype, rel_tol, max_regions, progress, check=True)
    return replace(part, seconds=time.perf_counter() - t0)


def _tolerance(tol: Any, dtype: torch.dtype) -> float:
    """The relative tolerance of a partition in ``dtype``, validated."""
    if dtype not in (torch.float64, torch.float32):
        raise MaxAffineError(
            f"dtype={dtype}: partition geometry runs in torch.float64 (default, exact to "
            "~1e-13 of the domain) or torch.float32 (faster, ~1e-5); half precision "
            "cannot separate regions reliably")
    default = 1e-13 if dtype == torch.float64 else 1e-5
    if tol is None:
        return default
    if isinstance(tol, bool) or not isinstance(tol, int | float):
        raise MaxAffineTypeError(f"tol must be a float, got {type(tol).__name__} {tol!r}")
    low, high = 32 * torch.finfo(dtype).eps, 1e-3
    if not low <= float(tol) <= high:  # also refuses NaN
        raise MaxAffineError(
            f"tol={tol!r} is outside [{low:.2g}, {high:g}] for {dtype}: it is relative to "
            "each unit's range on the domain; below 32 machine epsilons rounding errors "
            "re-cross the boundaries they were cut along (the cuts would not end), above "
            f"1e-3 whole regions are merged. The default is {default:g}")
    return float(tol)


def _graph_and_slice(model: nn.Module | SplineGraph, domain: Any, dtype: torch.dtype
                     ) -> tuple[SplineGraph, Slice]:
    """The model's graph in ``dtype`` and the domain as a :class:`Slice` of its inputs."""
    if isinstance(domain, Slice):
        example = domain.origin.to(dtype).unsqueeze(0)
        try:
            graph = _graph_in(model, example, dtype)
        except MaxAffineError as err:
            if isinstance(err, UnsupportedOperation):
                raise
            raise MaxAffineError(
                f"domain: the slice lives in inputs of shape {tuple(domain.origin.shape)}, "
                f"which the model does not take ({err}); build the slice from inputs of "
                "the model's own shape, e.g. Slice.through(x[0], x[1], x[2])") from err
    else:
        _polygon(domain, "domain")  # a clear error before any tracing
        try:
            graph = _graph_in(model, torch.zeros((1, 2), dtype=dtype), dtype)
        except MaxAffineError as err:
            if isinstance(err, UnsupportedOperation):
                raise
            raise MaxAffineError(
                "a bare polygon is a domain only for models with 2-D inputs; use "
                "Slice.through(x1, x2, x3) or Slice(origin, u, v, bounds)") from err
    sl = _as_slice(domain, graph)
    _refuse_batch(graph, sl.origin, "the slice's points (Slice.through's x1, x2, x3)")
    return graph, sl


def _refuse_batch(graph: SplineGraph, x: Tensor, what: str) -> None:
    """A batch passed where single inputs are expected (``x[:1]`` instead of ``x[0]``)
    shows as a per-sample input and output that share a leading axis the model
    only broadcasts over (Linear layers on (N, d) rows)."""
    ins, outs = graph.input_shape, graph.output_shape
    if len(ins) >= 2 and len(outs) >= 2 and ins[0] == outs[0]:
        raise MaxAffineError(
            f"{what} have shape {tuple(x.shape)}, which the model treats as {ins[0]} "
            f"separate rows (its output per point is {outs}): that looks like a batch. "
            "Pass single inputs, e.g. x[0] rather than x[:1]")


def _partition(graph: SplineGraph, sl: Slice, dtype: torch.dtype, rel_tol: float,
               max_regions: int, progress: bool, check: bool) -> Partition:
    """:func:`partition_plane` on a traced graph; ``check``: look for regions below
    the tolerance (not inside those checks' own windows)."""
    check_parameters(graph)
    shift, local = _centred(sl)
    mesh = Mesh(local.bounds.to(dtype))
    mesh.add_payload(torch.zeros((1, 1), dtype=torch.uint8))  # column 0: flags (_FLAG)
    values = _VertexValues(graph, local, mesh)
    suspects: list[Tensor] = []  # vertices a boundary passed within the tolerance of
    bar = tqdm(total=len(graph.layers), desc="partition", disable=not progress, leave=False)
    extent = float((local.bounds.max(0).values - local.bounds.min(0).values).max())
    for index, layer in enumerate(graph.layers):
        mesh.mark_layer()
        if _cut_layer(mesh, values, index, layer, rel_tol, max_regions, suspects):
            # windows: ties of different pairs of entries can be the same line in a
            # face (two dead entries, both 0; padding of equal constants): vertices
            # made for it on the two sides of an edge then coincide (to rounding).
            # Weld them (within rel_tol of the domain's size), then merge the pieces
            # of regions that ties of non-maximal entries split.
            mesh.weld(rel_tol * extent)
            _merge_regions(mesh, graph, layer)
        bar.update(1)
        bar.set_postfix(regions=mesh.nf)
    bar.close()
    outputs = values.outputs()
    _check_finite(_abs_max(outputs), "the output", mesh.xy.dtype)
    mesh.drop_vals()  # the last layer's values are not needed any more
    near = torch.cat(suspects) if suspects else torch.zeros((0, 2), dtype=mesh.xy.dtype)
    part, places = _finish(mesh, graph, sl, local, shift, outputs, rel_tol,
                           near if check else None)
    if places is not None:
        _warn_unresolved(part, places, shift, rel_tol, dtype, stacklevel=4)
    return part


def _graph_in(model: nn.Module | SplineGraph, example: Tensor, dtype: torch.dtype
              ) -> SplineGraph:
    """The spline graph of ``model`` evaluated in ``dtype`` (a converted copy if needed)."""
    base = model.model if isinstance(model, SplineGraph) else model
    if not isinstance(base, nn.Module):
        raise MaxAffineError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    param = next((p for p in base.parameters() if p.is_floating_point()), None)
    if param is not None and param.dtype != dtype:
        base = copy.deepcopy(base).to(dtype)
    elif isinstance(model, SplineGraph):
        return model
    return as_graph(base, example)


_VALUES_BUDGET = 2e7  # per-vertex values held at once in recompute mode (floats)


_REROOT = 4  # a new phase of cuts starts when the faces have multiplied this much


def _cut_layer(mesh: Mesh, values: _VertexValues, index: int, layer: Layer,
              rel_tol: float, max_regions: int, suspects: list[Tensor]) -> bool:
    """Cut every face along the boundaries of one layer's units (the rule's
    :meth:`~maxaffine.ops.Nonlinearity.boundary`: lines, or ties of window entries),
    and record the units' codes on every face (packed, in the mesh's payload);
    vertices that a boundary passed within the tolerance of (without being made on
    it) are appended to ``suspects`` (their coordinates) and their faces flagged.
    Returns whether the boundaries were windows (whose pieces need merging)."""
    graph = values.graph
    _, ev = next(_evaluate(graph, values.sl, values.sl.bounds[:1].to(mesh.xy.dtype),
                           layer.name))
    desc = layer.rule.boundary(*ev.inputs[layer.name])
    windows = isinstance(desc, ops.Windows)
    n_units = layer.num_units
    per_unit = _columns_per_unit(desc, n_units)
    # line identities of the whole layer: vertices are keyed by (edge, line) across
    # all chunks of units, so a line cut partly in one chunk and finished in the
    # next still makes one vertex per edge
    ident = _line_identities(desc)
    n_ident = int(ident.max()) + 1 if ident.numel() else 0
    mesh.begin_lines(n_ident)
    per_line = ident.shape[0] // max(1, n_units)
    # the unit that owns each line identity (windows: the first comparing the pair):
    # lines of one window may meet at a vertex (ties of three entries)
    owner = torch.full((max(1, n_ident),), -2, dtype=torch.int64)
    if windows and n_ident:
        owner.fill_(n_units).scatter_reduce_(
            0, ident, torch.arange(n_units).repeat_interleave(per_line), reduce="amin")
    start, upstream = 0, 0.0
    while start < n_units:
        # recompute mode holds (vertices x columns) values: chunks of units sized to
        # a budget, ended early (at a multiple of 64 units, to keep the packed codes
        # byte-aligned) when the cuts have multiplied the vertices
        limit = None if values.resume else _VALUES_BUDGET
        chunk = n_units if values.resume else max(
            64, int(_VALUES_BUDGET // max(1, mesh.nv * per_unit)) // 64 * 64)
        sel = torch.arange(start, min(n_units, start + chunk))
        local = values.columns(index, layer, sel, desc)
        k = sel.shape[0]
        own = values.scale()
        _check_finite(own, layer.name, mesh.xy.dtype)
        # tolerances scale with each column's range, and at least with the values it
        # was computed from (its rounding)
        scale = own.clamp(min=values.upstream)
        upstream = max(upstream, float(own.max()) if own.numel() else 0.0)
        lines = _Lines.of(local, scale, rel_tol, ident[start * per_line: (start + k) * per_line])
        done, hit = _cut_lines(mesh, lines, limit, max_regions, layer.name, start, owner,
                               rel_tol, suspects)
        if lines.window is not None:
            code = lines.window_codes(mesh, done)
        else:
            # each face lies on one side of each line (up to the tolerance): a unit's
            # code is the base plus the count of its lines positive at the face's
            # interior point
            nb = lines.unit.shape[0] // k
            if nb == 1 and local.base == 0 and layer.bits_per_unit == 1:  # the packed codes
                mesh.add_payload(hit.view(torch.uint8)[:, : (done + 7) // 8])
                start += done
                continue
            hit = unpack_bits(hit, lines.unit.shape[0])
            code = (hit.reshape(mesh.nf, k, nb).sum(2, dtype=torch.uint8)
                    + local.base)[:, :done]
        # these units' codes are final on every face: later cuts copy them to both halves
        mesh.add_payload(pack([code.to(torch.uint8 if layer.num_pieces <= 256
                                       else torch.int64)], [layer.bits_per_unit]))
        start += done
    values.upstream = max(values.upstream, upstream)
    values.advance(index)
    return windows


def _line_identities(desc: ops.Lines | ops.Windows) -> Tensor:
    """Ids of every line of a layer (the order of :meth:`_Lines.of`), equal for the
    same line of two units: windows that compare the same two columns (overlapping
    max-pool windows). (Identical lines of other units are candidates in the same
    faces: the first cuts, and the second finds its vertices on the line already.)"""
    if isinstance(desc, ops.Windows):
        table = desc.table
        r = table.shape[1]
        a, b = torch.triu_indices(r, r, 1)
        p, q = table[:, a].flatten(), table[:, b].flatten()
        pair = torch.minimum(p, q) * (int(table.max()) + 2) + torch.maximum(p, q)
        return torch.unique(pair, return_inverse=True)[1]
    return torch.arange(desc.pos.shape[0])


@dataclass
class _Lines:
    """The cut lines of a chunk of ``k`` units, each the zero set of
    ``vals[:, pos] - vals[:, neg] - level`` (``neg`` -1: no second term), affine
    on every face of the layer; ``unit`` (L,) owns each line, ``tol`` (L,).

    Elementwise splines: one line per finite breakpoint (``z = b``);
    ``torch.maximum`` / ``minimum``: ``a = b``; max-pooling: ``e_a = e_b`` for
    every pair of valid entries of a window (``window`` (k, R): valid entries),
    cut only in the layer-start faces where both entries can be the maximum
    (:meth:`possible_max`); the pieces that ties of two non-maximal entries still
    split off are merged afterwards.
    """

    pos: Tensor
    neg: Tensor
    level: Tensor
    tol: Tensor
    unit: Tensor
    window: Tensor | None = None
    unit_tol: Tensor | None = None
    entries: tuple[Tensor, Tensor] | None = None  # max-pooling: (j * R + a) of each pair
    ident: Tensor | None = None  # (L,) equal for lines that are the same function
    cols: Tensor | None = None  # max-pooling (k, R): value column of each window entry
    _near: Tensor | None = field(default=None, repr=False)  # bits at the layer's start

    @classmethod
    def of(cls, local: ops.Lines | ops.Windows, scale: Tensor, rel_tol: float,
           ident: Tensor) -> _Lines:
        """The lines of a chunk of units from their boundaries over the mesh's columns
        (:func:`_restrict`); ``scale`` (columns,): each column's largest |value|;
        ``ident``: the lines' identities (:func:`_line_identities`)."""
        if isinstance(local, ops.Windows):
            window = local.table >= 0
            k, r = window.shape
            cols = torch.where(window, local.table, 0)  # absent: any column, never read
            unit_tol = rel_tol * torch.where(window, scale[cols], 0.0).amax(1)
            a, b = torch.triu_indices(r, r, 1)
            # every pair of every window (unit-major); a pair with an absent entry
            # gets an infinite tolerance: never cut
            ok = (window[:, a] & window[:, b]).flatten()
            j = torch.arange(k).repeat_interleave(a.shape[0])
            tol = torch.where(ok, unit_tol[j], math.inf)
            zero = torch.zeros(j.shape[0], dtype=scale.dtype)
            ea, eb = j * r + a.repeat(k), j * r + b.repeat(k)
            return cls(cols.flatten()[ea], cols.flatten()[eb], zero, tol, j, window,
                       unit_tol, (ea, eb), ident, cols.contiguous())
        neg = local.neg
        level = local.level.to(scale.dtype)
        tol = rel_tol * (scale[local.pos] + torch.where(neg >= 0, scale[neg.clamp(min=0)], 0.0)
                         + level.abs())
        return cls(local.pos, neg, level, tol, local.unit, ident=ident)

    def __post_init__(self) -> None:
        n = self.pos.shape[0]
        if self.ident is None:
            self.ident = torch.arange(n)
        if n and bool((self.neg >= 0).any()) != bool((self.neg >= 0).all()):
            raise ValueError("lines have a second term all or none (the compiled loops "
                             "read one flag)")

    def subset(self, keep: Tensor) -> _Lines:
        """The lines ``keep`` (bools (L,)), same units and windows."""
        pick = torch.nonzero(keep).flatten()
        entries = None if self.entries is None else (self.entries[0][pick],
                                                     self.entries[1][pick])
        return _Lines(self.pos[pick], self.neg[pick], self.level[pick], self.tol[pick],
                      self.unit[pick], self.window, self.unit_tol, entries,
                      self.ident[pick], self.cols, self._near)

    def possible_max(self, mesh: Mesh, k: int) -> Tensor:
        """Max-pooling: (layer-start faces, k * R) bools, window entry ``a`` can be
        the maximum somewhere in the face: no entry ``c`` exceeds it by more than
        the tolerance at every vertex (differences are affine on the face, which
        is convex, so such a ``c`` exceeds it everywhere)."""
        from . import kernels as kern

        r = self.window.shape[1]
        near, top = self._bits(mesh, k, top=True)
        self._near = near  # these vertices' values stay: window_codes reuses them
        dominated = torch.ones((int(mesh.origin_layer.max()) + 1, k, r), dtype=torch.int8)
        kern.window_dominated(mesh.faces.contiguous().numpy(), mesh.sizes.numpy(),
                              mesh.origin_layer.numpy(), mesh.vals.numpy(),
                              self.window[:k].contiguous().numpy(), self.cols[:k].numpy(),
                              self.unit_tol[:k].contiguous().numpy(), near.numpy(),
                              top.numpy(), dominated.numpy())
        return (dominated == 0).reshape(-1, k * r)

    def window_codes(self, mesh: Mesh, k: int) -> Tensor:
        """Max-pooling, once every face has one maximal entry per window (up to
        the tolerance): (F, k) the entry that is maximal at the face's interior
        point (its vertex mean; ties, e.g. zeros after a ReLU, go to the first, as
        in ``F.max_pool``): the one entry within the tolerance of the window's
        maximum at the face's vertices, or where several are, the largest mean."""
        from . import kernels as kern

        near, _ = self._bits(mesh, k, top=False, reuse=self._near)
        code = torch.empty((mesh.nf, k), dtype=torch.int64)
        kern.window_codes(mesh.faces.contiguous().numpy(), mesh.sizes.numpy(),
                          mesh.vals.numpy(), self.window[:k].contiguous().numpy(),
                          self.cols[:k].numpy(), self.unit_tol[:k].contiguous().numpy(),
                          near.numpy(), code.numpy())
        return code

    def _bits(self, mesh: Mesh, k: int, top: bool, reuse: Tensor | None = None
              ) -> tuple[Tensor, Tensor]:
        """Per vertex, packed bits of the entries near (and equal to) their window's
        maximum (:func:`maxaffine.partition.kernels.window_bits`); ``reuse``: the near bits
        of the first vertices, computed before (for at least ``k`` windows)."""
        from . import kernels as kern

        words = (k * self.window.shape[1] + 63) // 64
        near = torch.empty((mesh.nv, words), dtype=torch.int64)
        tops = torch.empty((mesh.nv, words if top else 0), dtype=torch.int64)
        start = 0
        if reuse is not None:
            start = reuse.shape[0]
            near[:start] = reuse[:, :words]
        kern.window_bits(mesh.vals[start:].numpy(), self.window[:k].contiguous().numpy(),
                         self.cols[:k].numpy(), self.unit_tol[:k].contiguous().numpy(),
                         near[start:].numpy(), tops[start:].numpy())
        return near, tops


_FLAG = 0  # payload column of the faces' flags: a line passed a vertex within the tolerance


_MAX_PHASES = 200  # a layer's cuts end in a few phases; more means they cannot end


def _cut_lines(mesh: Mesh, lines: _Lines, limit: float | None, max_regions: int,
               name: str, first_unit: int, owner: Tensor, rel_tol: float,
               suspects: list[Tensor]) -> tuple[int, Tensor | None]:
    """Cut every face by every line crossing it (no loop over units or faces).

    Flags faces that a line may cross in a sliver below the tolerance (and appends
    the vertices it passed to ``suspects``; :meth:`Mesh.read_lines`), and returns
    how many units were processed (all unless ``limit``, values held, stopped the
    chunk early, at a multiple of 64 units) and, unless max-pooling, the packed
    bits (F, words) of the lines positive at each face's interior point.
    """
    n_lines = lines.pos.shape[0]
    k = int(lines.unit[-1]) + 1 if n_lines else 0
    if lines.window is not None:
        k = lines.window.shape[0]
    done = k
    possible = None
    if lines.window is not None:
        # max-pooling: a pair's line is cut only in the layer-start faces where both
        # entries can be the window's maximum (all their pieces, so that regions
        # merged afterwards lie within one layer-start face); the lines of pairs
        # that never both can (most, in a small domain) are dropped here
        possible = lines.possible_max(mesh, k)  # (layer faces, entries)
        somewhere = possible.any(0)
        lines = lines.subset(somewhere[lines.entries[0]] & somewhere[lines.entries[1]]
                             & torch.isfinite(lines.tol))
        n_lines = lines.pos.shape[0]
    # each vertex's side of every line, as packed bits (computed once per vertex:
    # values never change within a layer; the cuts add new vertices' bits)
    mesh.set_lines(lines.pos, lines.neg, lines.level, lines.tol, lines.ident)
    phases = 0
    while n_lines:
        # a phase: the current faces are roots; each root is cut by the lines that
        # cross it, in line order, all roots in lockstep (iteration i cuts every
        # piece of every root by that root's i-th line). A new phase starts when the
        # faces have multiplied, so that roots (and their line lists) stay small.
        mesh.mark()
        # (root, line) pairs where the line crosses the root, sorted by root then line
        root, line = mesh.crossings(n_lines)
        if possible is not None:
            at = mesh.origin_layer[root]
            keep = possible[at, lines.entries[0][line]] & possible[at, lines.entries[1][line]]
            root, line = root[keep], line[keep]
        if limit is not None and done == k and mesh.nv * mesh.vals.shape[1] > limit:
            # over the values budget: end this chunk at the first 64-unit boundary
            # past the earliest unfinished unit (packed codes stay byte-aligned)
            first = int(lines.unit[line].min()) if line.numel() else k
            done = min(k, (first // 64 + 1) * 64)
        if done < k:
            keep = lines.unit[line] < done
            root, line = root[keep], line[keep]
        if root.numel() == 0:
            break
        phases += 1
        if phases > _MAX_PHASES:
            raise MaxAffineError(
                f"the cuts along {name} do not end ({root.numel()} crossings left after "
                f"{_MAX_PHASES} passes): rounding errors exceed the tolerance; pass a "
                "larger tol or use dtype=torch.float64")
        # re-root when the faces have multiplied: the next phase starts from them
        mesh.lockstep(root, line, _REROOT * mesh.nf)
        if mesh.nf > max_regions:
            raise MaxAffineError(f"more than max_regions={max_regions} regions at {name}; "
                                 "shrink the domain or raise max_regions")
    # lines of units past ``done`` are cut with the next chunk
    n_done = int((lines.unit < done).sum())
    # beyond rounding: a few machine epsilons of the lines' ranges (tol = rel_tol * range)
    floor = min(1.0, 16 * torch.finfo(mesh.xy.dtype).eps / rel_tol)
    signs, flagged, near = mesh.read_lines(
        n_done, owner, None if lines.window is None else lines.unit + first_unit,
        possible, lines.entries, floor, signs=lines.window is None)
    if near.numel():
        mesh.payload[:, _FLAG] |= flagged.to(torch.uint8)
        suspects.append(mesh.xy[near].clone())
    return done, signs


def _merge_regions(mesh: Mesh, graph: SplineGraph, layer: Layer) -> None:
    """Merge faces of one region (same face at layer start, same codes of this
    layer): comparisons with the running maximum split regions in pieces."""
    nbytes = (layer.num_units * layer.bits_per_unit + 7) // 8
    layer = mesh.payload[:, mesh.payload.shape[1] - nbytes:]
    key = torch.cat([mesh.origin_layer.unsqueeze(1), layer.long()], 1)
    _, group = torch.unique(key, dim=0, return_inverse=True)
    # a merged region is flagged when any of its pieces is
    flag = mesh.payload[:, _FLAG]
    merged = torch.zeros(int(group.max()) + 1, dtype=flag.dtype).scatter_reduce_(
        0, group, flag, reduce="amax")
    mesh.payload[:, _FLAG] = merged[group]
    mesh.merge(group)


def _finish(mesh: Mesh, graph: SplineGraph, sl: Slice, local: Slice, shift: Tensor,
            outputs: Tensor, rel_tol: float, check: Tensor | None
            ) -> tuple[Partition, tuple[int, Tensor] | None]:
    """Codes (from the payload), areas, interior points, the output's affine map on
    each face (least squares through its vertices, exact for an affine function;
    at the interior point itself for flagged faces), edges. Geometry is computed in
    the ``local`` slice's coordinates and returned in ``sl``'s (``shift`` apart).
    ``check``: suspect vertices (local coordinates) around which to look for
    regions below the tolerance (:func:`_check_resolution`); returns the places
    checked (count, first centre in ``sl``'s coordinates) with the partition."""
    areas = mesh.areas()
    keep = torch.nonzero(areas > 0).flatten()
    faces, sizes, payload = mesh.faces[keep], mesh.sizes[keep], mesh.payload[keep]
    areas = areas[keep]
    packed = payload[:, _FLAG + 1:].contiguous()
    # only the vertices some face uses (max-pool merges weld and drop some)
    used = torch.zeros(mesh.nv, dtype=torch.bool)
    used[faces[faces >= 0]] = True
    renumber = torch.cumsum(used, 0) - 1
    faces = torch.where(faces >= 0, renumber[faces.clamp(min=0)], -1)
    vertices, outputs = mesh.xy[used].clone(), outputs[used].contiguous()
    mesh.release()  # its buffers are copied: free them before the heavy steps
    # vertex means, and the least-squares plane through the vertices' outputs
    from . import kernels as kern

    interior = torch.empty((faces.shape[0], 2), dtype=vertices.dtype)
    slopes = torch.empty((faces.shape[0], outputs.shape[1], 2), dtype=outputs.dtype)
    offsets = torch.empty((faces.shape[0], outputs.shape[1]), dtype=outputs.dtype)
    # many outputs make these the largest buffers: the idle core faults them in
    spread = torch.empty(faces.shape[0], dtype=vertices.dtype)
    helper = _Prefault([(slopes, 0), (offsets, 0)], faces.shape[0])
    kern.face_fits(faces.contiguous().numpy(), sizes.contiguous().numpy(), vertices.numpy(),
                   outputs.numpy(), interior.numpy(), slopes.numpy(), offsets.numpy(),
                   spread.numpy())
    helper.stop()
    corrected = torch.zeros(faces.shape[0], dtype=torch.bool)
    # faces narrower than ~2^-22 of the domain: rounding of their vertices' positions
    # and values (~eps of the domain) shows in a fitted slope across them
    extent = float((vertices.max(0).values - vertices.min(0).values).max())
    thin = spread < 2.0 ** -22 * extent
    redo = torch.nonzero(thin | (payload[:, _FLAG] > 0)).flatten()
    if redo.numel():
        # where a boundary passed within the tolerance of a face's vertices, values
        # interpolated across it may be off by up to the tolerance: the codes and
        # maps of those faces (and the maps of thin ones) are those of a forward pass
        # at their interior points
        exact_packed, exact_slopes, exact_offsets = _exact_at(graph, local, interior[redo])
        out = torch.einsum("fcd,fd->fc", slopes[redo], interior[redo]) + offsets[redo]
        exact_out = torch.einsum("fcd,fd->fc", exact_slopes, interior[redo]) + exact_offsets
        scale = 1e-9 * (1.0 + float(_abs_max(outputs).max()))
        corrected[redo] = ((exact_packed != packed[redo]).any(1)
                           | ((out - exact_out).abs().amax(1) > scale)) & ~thin[redo]
        packed[redo] = exact_packed
        slopes[redo] = exact_slopes
        offsets[redo] = exact_offsets
    lost, places = 0, None
    if check is not None:
        lost, places = _check_resolution(check, graph, local, rel_tol, vertices, faces, sizes,
                                         packed, interior, corrected, _partition)
    if bool(shift.any()):
        vertices += shift.to(vertices.dtype)
        interior += shift.to(interior.dtype)
        offsets -= torch.einsum("fcd,d->fc", slopes, shift.to(slopes.dtype))
    layout = tuple((layer.name, tuple(layer.code_shape), layer.num_pieces, layer.bits_per_unit)
                   for layer in graph.layers)
    view = _FaceView(faces, sizes, vertices.shape[0])
    edges, edge_faces = view.edges()
    edge_layer = _edge_layers(packed, layout, edge_faces)
    return Partition(
        domain=sl, vertices=vertices, faces=faces, face_sizes=sizes, edges=edges,
        edge_faces=edge_faces, edge_layer=edge_layer, packed=packed, code_layout=layout,
        areas=areas, interior=interior, slopes=slopes, offsets=offsets, graph=graph,
        tol=rel_tol, unresolved=corrected, lost_regions=lost,
    ), places


def _exact_at(graph: SplineGraph, sl: Slice, st: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Packed codes (N, bytes) and the output's affine map in slice coordinates,
    slopes (N, C, 2) and offsets (N, C), at points ``st`` (N, 2) of ``sl``: codes
    from a forward pass, the map from the network with those codes frozen (one
    affine map, extended to the whole plane) at the point and one step along s
    and t."""
    n = st.shape[0]
    b = sl.bounds.to(st.dtype)
    step = float((b.max(0).values - b.min(0).values).max())
    with torch.no_grad():
        ev = graph.run(sl.to_input(st))
        frozen = {k: v.repeat((3,) + (1,) * (v.dim() - 1)) for k, v in ev.codes.items()}
        pts = torch.cat([st, st + st.new_tensor([step, 0.0]), st + st.new_tensor([0.0, step])])
        out = graph.run(sl.to_input(pts), codes=frozen).output.reshape(3, n, -1)
    slopes = torch.stack([out[1] - out[0], out[2] - out[0]], -1) / step
    offsets = out[0] - torch.einsum("fcd,fd->fc", slopes, st)
    return codes_of(graph, ev.codes, n).packed(), slopes, offsets


class _FaceView(Mesh):
    """A read-only mesh over finished faces (for edge extraction)."""

    def __init__(self, faces: Tensor, sizes: Tensor, nv: int):
        self._faces, self._sizes = faces, sizes
        self.nf, self.width, self.nv = faces.shape[0], faces.shape[1], nv


def _edge_layers(packed: Tensor, layout: tuple, edge_faces: Tensor) -> Tensor:
    """First layer whose codes differ across each edge (-1 on the domain boundary),
    from the faces' packed codes ``packed`` (layers byte-aligned, as ``layout``)."""
    from . import kernels as kern

    layer = torch.empty(edge_faces.shape[0], dtype=torch.int64)
    ends = torch.tensor([(math.prod(shape) * b + 7) // 8 for _, shape, _, b in layout],
                        dtype=torch.int64).cumsum(0)
    kern.edge_layers(packed.contiguous().numpy(), edge_faces[:, 0].contiguous().numpy(),
                     edge_faces[:, 1].contiguous().numpy(), ends.numpy(), layer.numpy())
    return layer

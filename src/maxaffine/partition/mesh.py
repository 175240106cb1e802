"""Batched planar subdivisions into convex faces: cut by lines, merge, clip.

The geometry behind :func:`maxaffine.partition_plane`, kept separate from the
ops (which know nothing of polygons). Faces are rows of a padded tensor of
vertex ids in counter-clockwise order; vertices are shared between faces.
A *cut* splits faces along the zero line of a function that is affine on each
(values given at the faces' vertices). Each cut is one of a set of lines
(:meth:`Mesh.begin_lines`): a new vertex is identified by (the edge of the
subdivision at the start, or the chord, it lies on; the line), so it is created
once and shared by the faces on both sides of the edge, even when they are cut
by that line at different times; the subdivision stays conforming. Like edge
subdivision (Berzins, ICML 2023) values at new vertices are interpolated along
the edge, which is exact for a continuous piecewise-affine function that is
affine on the edge; unlike it, each call cuts a whole batch of faces at once
(:meth:`Mesh.lockstep`, whose step loop is compiled with numba: one pass per
step instead of dozens of tensor passes over (faces x width) temporaries).

Degenerate cases are resolved by one rule: a vertex whose value is within
``tol`` of zero is *on* the line. It then belongs to both halves, never creates
a new vertex, and a face whose vertices are all on one side (or on the line)
is not cut: no sliver thinner than ``tol`` is ever created.
"""

from __future__ import annotations

import ctypes
import platform
import threading

import numpy as np
import torch
from torch import Tensor

_HASH_START = 1 << 12  # slots of a layer's vertex-key hash table at first (grows 4x)


class Mesh:
    """A growing conforming subdivision of a convex polygon into convex faces.

    ``xy``: (V, 2) vertices; ``vals``: (V, ncols) values of the current cut
    functions' inputs at the vertices; ``faces``: (F, width) vertex ids, -1
    padded; ``sizes``: (F,); ``origin``: for each face, the index of the face it
    descends from at the last :meth:`mark` (``origin_layer``: at
    :meth:`mark_layer`).
    """

    def __init__(self, polygon: Tensor):
        dtype = polygon.dtype
        k = polygon.shape[0]
        self._xy = torch.empty((max(64, 4 * k), 2), dtype=dtype)
        self._xy[:k] = polygon
        self.nv = k
        self._vals = torch.empty((self._xy.shape[0], 0), dtype=dtype)
        self._above = self._below = torch.empty((self._xy.shape[0], 0), dtype=torch.int64)
        self._faces = torch.full((64, max(8, k + 2)), -1, dtype=torch.int64)
        self._faces[0, :k] = torch.arange(k)
        self._sizes = torch.zeros(64, dtype=torch.int64)
        self._sizes[0] = k
        self._origin = torch.zeros(64, dtype=torch.int64)
        self._origin_layer = torch.zeros(64, dtype=torch.int64)
        self._payload = torch.zeros((64, 0), dtype=torch.uint8)
        self._support = torch.full_like(self._faces, -1)
        self.nf = 1
        self.width = k

    # ----------------------------------------------------------------- views
    @property
    def xy(self) -> Tensor:
        return self._xy[: self.nv]

    @property
    def vals(self) -> Tensor:
        return self._vals[: self.nv]

    @property
    def above(self) -> Tensor:
        """(V, words) packed bits: vertex strictly above each line (by > tol)."""
        return self._above[: self.nv]

    @property
    def below(self) -> Tensor:
        """(V, words) packed bits: vertex strictly below each line."""
        return self._below[: self.nv]

    @property
    def faces(self) -> Tensor:
        return self._faces[: self.nf, : self.width]

    @property
    def sizes(self) -> Tensor:
        return self._sizes[: self.nf]

    @property
    def origin(self) -> Tensor:
        return self._origin[: self.nf]

    @property
    def origin_layer(self) -> Tensor:
        return self._origin_layer[: self.nf]

    @property
    def payload(self) -> Tensor:
        """(F, bytes) per-face data copied to both halves of a cut (packed codes)."""
        return self._payload[: self.nf]

    def add_payload(self, values: Tensor) -> None:
        """Append columns (F, b) of uint8 to every face's payload."""
        new = torch.empty((self._faces.shape[0], self._payload.shape[1] + values.shape[1]),
                          dtype=torch.uint8)
        new[: self.nf, : self._payload.shape[1]] = self._payload[: self.nf]
        new[: self.nf, self._payload.shape[1]:] = values
        self._payload = new

    def set_vals(self, vals: Tensor) -> None:
        """Replace the per-vertex values (V, ncols) used by :meth:`lockstep`."""
        self.fresh_vals(vals.shape[1]).copy_(vals)

    def fresh_vals(self, ncols: int, reuse: bool = False) -> Tensor:
        """Drop the per-vertex values and return new uninitialised ones (V, ncols),
        to be filled in place. Room is reserved for 16x the vertices (pages not
        written cost nothing), so cuts rarely copy the values to grow.

        ``reuse``: when the current values have ``ncols`` columns and room for 4x
        the vertices, return them instead (pages already written cost no page
        faults): the caller overwrites them row by row, reading each row first."""
        if reuse and self._vals.shape[1] == ncols and self._vals.shape[0] >= 4 * self.nv:
            self._above = self._below = torch.empty((self._xy.shape[0], 0), dtype=torch.int64)
            return self._vals[: self.nv]
        self.drop_vals()
        self._reserve_vertices(15 * self.nv)
        self._vals = torch.empty((self._xy.shape[0], ncols), dtype=self._xy.dtype)
        return self._vals[: self.nv]

    def drop_vals(self) -> None:
        """Free the per-vertex values (and the sides of lines read from them)."""
        self._vals = self._xy[:, :0]
        self._above = self._below = torch.empty((self._xy.shape[0], 0), dtype=torch.int64)

    def mark(self) -> None:
        self._origin[: self.nf] = torch.arange(self.nf)

    def mark_layer(self) -> None:
        self._origin_layer[: self.nf] = torch.arange(self.nf)

    # ---------------------------------------------------------------- growth
    def _reserve_vertices(self, extra: int) -> None:
        need = self.nv + extra
        if need > self._xy.shape[0]:
            cap = max(need, 4 * self._xy.shape[0])  # untouched pages cost nothing
            for name in ("_xy", "_vals", "_above", "_below"):
                old = getattr(self, name)
                new = torch.empty((cap, old.shape[1]), dtype=old.dtype)
                new[: self.nv] = old[: self.nv]
                setattr(self, name, new)

    def _reserve_faces(self, extra: int, width: int) -> None:
        need = self.nf + extra
        cap = self._faces.shape[0]
        if need > cap or width > self._faces.shape[1]:
            cap = max(need, 2 * cap) if need > cap else cap
            w = max(width, self._faces.shape[1])
            # rows past nf are written whole before they are read: leave them
            # uninitialised (pages never written cost no memory)
            for name in ("_faces", "_support"):
                old = getattr(self, name)
                buf = torch.empty((cap, w), dtype=torch.int64)
                buf[: self.nf, : old.shape[1]] = old[: self.nf]
                buf[: self.nf, old.shape[1]:] = -1
                setattr(self, name, buf)
            for name in ("_sizes", "_origin", "_origin_layer", "_payload"):
                old = getattr(self, name)
                new = torch.empty((cap, *old.shape[1:]), dtype=old.dtype)
                new[: self.nf] = old[: self.nf]
                setattr(self, name, new)

    def _write_faces(self, rows: Tensor, polys: Tensor, sizes: Tensor,
                     support: Tensor | None = None) -> None:
        """Overwrite faces ``rows`` (existing or just reserved) with ``polys``."""
        w = polys.shape[1]
        self._reserve_faces(0, w)
        pad = self._faces.shape[1] - w  # whole rows: one write each
        self._faces[rows] = torch.nn.functional.pad(polys, (0, pad), value=-1)
        self._support[rows] = (torch.full_like(self._faces[:1], -1) if support is None
                               else torch.nn.functional.pad(support, (0, pad), value=-1))
        self._sizes[rows] = sizes
        self.width = max(self.width, w)

    # ------------------------------------------------------------------- cut
    def entries(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Vertex ids (-1 padded) and validity mask of faces ``rows``."""
        fv = self._faces[rows, : self.width]
        valid = torch.arange(self.width) < self._sizes[rows, None]
        return fv, valid

    def begin_lines(self, n_lines: int) -> None:
        """Start cutting by up to ``n_lines`` lines (ids 0..n_lines-1), in any order
        and any number of :meth:`lockstep` calls.

        Every face edge gets a *support*: the id of the edge of the current
        subdivision it lies on; a chord cut later gets ``n_edges + root * n_lines
        + line`` with ``root`` its face's :attr:`origin_layer` (a line meets a
        convex root in one segment). A new vertex is identified by (support of the
        edge it splits, line): a segment and a line cross at most once, so the
        faces on both sides of an edge share the vertex even when they are cut at
        different times, and the subdivision is conforming once every face has
        been cut by every line crossing it.
        """
        from . import kernels as kern

        self._support = torch.empty(self._faces.shape, dtype=torch.int64)
        keys, _ = kern.edge_table(self._faces.numpy(), self.sizes.numpy(), self.nv,
                                  self._support[: self.nf].numpy())
        self._support[self.nf:] = -1
        self._n_lines = max(1, n_lines)
        self._chord_base = keys.shape[0]
        # the vertices made so far, by key: an open-addressing hash table (-1: empty)
        self._hkeys = np.full(_HASH_START, -1, dtype=np.int64)
        self._hids = np.empty_like(self._hkeys)
        self._hcount = 0

    def set_lines(self, pos: Tensor, neg: Tensor, level: Tensor, tol: Tensor,
                  ident: Tensor) -> None:
        """The lines :meth:`lockstep` cuts along. Line ``l`` is the zero set of
        ``vals[:, pos[l]] - vals[:, neg[l]] - level[l]`` (``neg[l] < 0``: no second
        term), affine on every face; a vertex within ``tol[l]`` of zero is on it;
        ``ident[l]`` < the ``n_lines`` of :meth:`begin_lines` identifies it (equal
        for the same line of two units). Computes every vertex's sides of every
        line (:attr:`above`, :attr:`below`); new vertices get theirs as they are
        made. Call again whenever the values change."""
        from . import kernels as kern  # numba: imported (and compiled) on first use

        dtype = self._xy.dtype
        self._lines = (pos.contiguous().numpy(), neg.contiguous().numpy(),
                       level.to(dtype).contiguous().numpy(),
                       tol.to(dtype).contiguous().numpy(), ident.contiguous().numpy())
        words = (pos.shape[0] + 63) // 64
        self._above = torch.empty((self._xy.shape[0], words), dtype=torch.int64)
        self._below = torch.empty_like(self._above)
        kern.side_bits(self._vals.numpy(), 0, *self._lines[:4], self.above.numpy(),
                       self.below.numpy())

    def read_lines(self, n_lines: int, owner: Tensor, line_owner: Tensor | None,
                   possible: Tensor | None, entries: tuple[Tensor, Tensor] | None,
                   floor: float, signs: bool) -> tuple[Tensor | None, Tensor, Tensor]:
        """After the cuts of :meth:`begin_lines` (:func:`maxaffine.partition.kernels.face_lines`):
        ``signs`` (F, words) packed bits, each line of :meth:`set_lines` positive at
        the face's interior point (None unless asked); faces (bools (F,)) that one
        of the first ``n_lines`` lines may cross in a sliver thinner than its
        tolerance (it passes that close to a vertex it was not made on, on the far
        side from the face's other vertices by more than ``floor`` times the
        tolerance; or the whole face is within the tolerance, except for max-pool
        ties, which often are exactly: dead entries), and those vertices (ids).
        ``owner`` (line identities,): the unit owning each identity, ``line_owner``
        (lines,) (None: the identity; lines of one owner may meet at a vertex, e.g.
        a max-pool window's ties); ``possible`` / ``entries``: max-pool pairs count
        only in faces where both entries can be maximal."""
        from . import kernels as kern

        leg = np.full((self.nv, 2), -1, dtype=np.int64)
        kern.vertex_creators(self._hkeys, self._hids, self._n_lines, self._chord_base, leg)
        if line_owner is None:
            line_owner_np, leg_owner = self._lines[4], leg
        else:
            line_owner_np = line_owner.contiguous().numpy()
            leg_owner = np.where(leg >= 0, owner.numpy()[np.maximum(leg, 0)], -3)
        face_flag = np.zeros(self.nf, dtype=np.uint8)
        vertex_flag = np.zeros(self.nv, dtype=np.uint8)
        if possible is None:
            possible_np = np.zeros((0, 0), dtype=np.uint8)
            ea = eb = np.zeros(0, dtype=np.int64)
        else:
            possible_np = possible.to(torch.uint8).numpy()
            ea, eb = entries[0].contiguous().numpy(), entries[1].contiguous().numpy()
        out = torch.empty((self.nf if signs else 0, self._above.shape[1]), dtype=torch.int64)
        kern.face_lines(self._faces.numpy(), self.sizes.numpy(), self._vals.numpy(),
                        *self._lines[:4], self._above.numpy(), self._below.numpy(), n_lines,
                        self._lines[4], line_owner_np, leg, leg_owner,
                        self.origin_layer.numpy(), possible_np, ea, eb, floor, possible is None,
                        out.numpy(), face_flag, vertex_flag)
        return ((out if signs else None), torch.from_numpy(face_flag).bool(),
                torch.from_numpy(np.flatnonzero(vertex_flag)))

    def crossings(self, n_lines: int) -> tuple[Tensor, Tensor]:
        """(face, line) pairs, sorted, where line (of :meth:`set_lines`) crosses the
        face: some vertex is strictly above it and some strictly below."""
        from . import kernels as kern

        face, line = kern.crossing_lines(self._faces.numpy(), self.sizes.numpy(),
                                         self._above.numpy(), self._below.numpy(), n_lines)
        return torch.from_numpy(face), torch.from_numpy(line)

    def lockstep(self, root: Tensor, line: Tensor, stop_faces: int | None = None) -> bool:
        """Cut every face by its root's lines (:meth:`set_lines`) in lockstep. The
        (``root``, ``line``) pairs, sorted by root, list each root's lines in
        order (roots: faces at the last :meth:`mark`); iteration ``i`` splits each
        face ``f`` (present at the iteration's start) along the ``i``-th line of
        root ``origin[f]`` where the line crosses it.

        The part where the function is positive keeps the row, the other is
        appended. New vertices get every value column interpolated. Stops early
        (returns ``True``) after an iteration that left more than ``stop_faces``
        faces; returns ``False`` when all iterations ran.
        """
        from . import kernels as kern

        count = torch.bincount(root, minlength=self.nf)
        start = torch.zeros(self.nf + 1, dtype=torch.int64)
        torch.cumsum(count, 0, out=start[1:])
        n_iter = int(count.max()) if count.numel() else 0
        start_np, line_np = start.numpy(), line.contiguous().numpy()
        state = np.array([self.nf, self.nv, self.width, 0, 0, self.nf, self._hcount],
                         dtype=np.int64)
        stop = np.iinfo(np.int64).max if stop_faces is None else stop_faces
        # most crossings make a vertex and a face: let the idle core fault in the
        # pages they will be written to while the (single-threaded) loop runs
        helper = _Prefault([(self._vals, self.nv), (self._xy, self.nv),
                            (self._above, self.nv), (self._below, self.nv),
                            (self._faces, self.nf), (self._support, self.nf),
                            (self._payload, self.nf)], line.shape[0])
        while True:
            status = kern.lockstep(
                self._faces.numpy(), self._sizes.numpy(), self._support.numpy(),
                self._origin.numpy(), self._origin_layer.numpy(), self._payload.numpy(),
                self._xy.numpy(), self._vals.numpy(), self._above.numpy(),
                self._below.numpy(), start_np, line_np, n_iter, *self._lines, self._n_lines,
                self._chord_base, self._hkeys, self._hids, state, stop)
            self.nf, self.nv = int(state[kern.NF]), int(state[kern.NV])
            self.width, self._hcount = int(state[kern.WIDTH]), int(state[kern.HCOUNT])
            if status in (kern.NEED_FACES, kern.NEED_VERTICES, kern.NEED_WIDTH):
                helper.stop()  # the buffers it works on are about to be replaced
            if status == kern.NEED_FACES:
                self._reserve_faces(64, self.width)
            elif status == kern.NEED_VERTICES:
                self._reserve_vertices(64)
            elif status == kern.NEED_WIDTH:
                self._reserve_faces(0, self._faces.shape[1] + 4)
            elif status == kern.NEED_HASH:
                keys = np.full(4 * self._hkeys.shape[0], -1, dtype=np.int64)
                ids = np.empty_like(keys)
                kern.rehash(self._hkeys, self._hids, keys, ids)
                self._hkeys, self._hids = keys, ids
            else:
                helper.stop()
                return status == kern.STOPPED

    def weld(self, eps: float) -> int:
        """Make vertices closer than ``eps`` one (the lowest id) in every face, and
        drop the repeated corners that this leaves. Returns how many vertices were
        merged away (they stay, unused)."""
        n = self.nv
        xy = self.xy
        cell = torch.floor((xy - xy.min(0).values) / eps).long()  # points within eps:
        width = int(cell[:, 1].max()) + 3                      # same or adjacent cells
        key = cell[:, 0] * width + cell[:, 1]
        order = torch.argsort(key)
        sorted_key = key[order]
        firsts, seconds = [], []
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                near = key + dx * width + dy
                lo = torch.searchsorted(sorted_key, near)
                count = torch.searchsorted(sorted_key, near, right=True) - lo
                i = torch.repeat_interleave(torch.arange(n), count)
                start = torch.cumsum(count, 0) - count
                j = order[lo[i] + torch.arange(i.shape[0]) - start[i]]
                close = (j > i) & ((xy[i] - xy[j]).norm(dim=1) <= eps)
                firsts.append(i[close])
                seconds.append(j[close])
        i, j = torch.cat(firsts), torch.cat(seconds)
        if i.numel() == 0:
            return 0
        label = torch.arange(n)
        while True:  # clusters are tiny: a few rounds of min-propagation
            low = torch.minimum(label[i], label[j])
            new = label.clone()
            new.scatter_reduce_(0, i, low, reduce="amin")
            new.scatter_reduce_(0, j, low, reduce="amin")
            if torch.equal(new, label):
                break
            label = new
        fv, valid = self.entries(torch.arange(self.nf))
        fv = torch.where(valid, label[fv.clamp(min=0)], -1)
        # a corner equal to the one before it (cyclically) goes
        prev = fv.gather(1, (torch.arange(self.width) - 1).expand_as(fv) % self.sizes[:, None])
        keep = valid & (fv != prev)
        polys, sizes = _compact(fv, keep)
        self._write_faces(torch.arange(self.nf), polys, sizes)
        return int((label != torch.arange(n)).sum())

    # ----------------------------------------------------------------- merge
    def merge(self, group: Tensor) -> int:
        """Merge faces with equal ``group`` ids into one face each.

        Each group must tile a convex polygon (true for faces of one region
        split by phantom lines). Returns the number of faces removed.
        """
        counts = torch.bincount(group)
        multi = counts[group] > 1
        if not bool(multi.any()):
            return 0
        idx = torch.nonzero(multi).flatten()
        fv, valid = self.entries(idx)
        n, w = fv.shape
        sizes = self._sizes[idx]
        nxt = torch.arange(1, w + 1).expand(n, w)
        nxt = torch.where(nxt >= sizes[:, None], 0, nxt)
        g = group[idx][:, None].expand(n, w)[valid]
        u, v = fv[valid], fv.gather(1, nxt)[valid]
        lo, hi = torch.minimum(u, v), torch.maximum(u, v)
        edge_ids, eid = torch.unique(lo * self.nv + hi, return_inverse=True)
        key = g * edge_ids.shape[0] + eid
        _, inv, cnt = torch.unique(key, return_inverse=True, return_counts=True)
        boundary = cnt[inv] == 1
        gb, vb = g[boundary], u[boundary]
        # unique (group, vertex) pairs: boundary vertices of each merged polygon
        pair = torch.unique(gb * self.nv + vb)
        gb, vb = pair // self.nv, pair % self.nv
        ug, ginv = torch.unique(gb, return_inverse=True)
        pts = self._xy[vb]
        center = torch.zeros((ug.shape[0], 2), dtype=pts.dtype).index_add_(0, ginv, pts)
        center /= torch.bincount(ginv).unsqueeze(1).to(pts.dtype)
        rel = pts - center[ginv]
        angle = torch.atan2(rel[:, 1], rel[:, 0])
        order = torch.argsort(ginv.to(pts.dtype) * 8.0 + angle)
        ginv, vb = ginv[order], vb[order]
        gsize = torch.bincount(ginv, minlength=ug.shape[0])
        start = torch.cumsum(gsize, 0) - gsize
        col = torch.arange(vb.shape[0]) - start[ginv]
        polys = torch.full((ug.shape[0], int(gsize.max())), -1, dtype=torch.int64)
        polys[ginv, col] = vb
        # representative old face of each group (for origins)
        first = torch.full((ug.shape[0],), self.nf, dtype=torch.int64)
        first.scatter_reduce_(0, torch.unique(group[idx], return_inverse=True)[1], idx,
                              reduce="amin")
        keep = torch.nonzero(~multi).flatten()
        polys, gsize = self._drop_lone_straight(polys, gsize, keep)
        self._compact_faces(keep, polys, gsize, first)
        return n - ug.shape[0]

    def _drop_lone_straight(self, polys: Tensor, sizes: Tensor, others: Tensor
                            ) -> tuple[Tensor, Tensor]:
        """Remove from merged polygons the vertices at a straight angle that no other
        face uses. A merged region keeps the vertices its internal cuts made on its
        boundary; where the face across that edge was never cut (it was no
        candidate) such a vertex would be a T-junction."""
        fv, valid = self.entries(others)
        uses = torch.bincount(torch.cat([fv[valid], polys[polys >= 0]]), minlength=self.nv)
        n, w = polys.shape
        col = torch.arange(w).expand(n, w)
        size = sizes[:, None].clamp(min=1)
        real = col < size
        b = self._xy[polys.clamp(min=0)]
        a = self._xy[polys.gather(1, (col - 1) % size).clamp(min=0)]
        c = self._xy[polys.gather(1, (col + 1) % size).clamp(min=0)]
        u, v = b - a, c - b
        cross = (u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]).abs()
        straight = (cross <= 1e-9 * u.norm(dim=-1) * v.norm(dim=-1)) & ((u * v).sum(-1) > 0)
        drop = real & straight & (uses[polys.clamp(min=0)] == 1)
        if not bool(drop.any()):
            return polys, sizes
        return _compact(polys, real & ~drop)

    def _compact_faces(self, keep: Tensor, polys: Tensor, sizes: Tensor, src: Tensor) -> None:
        """Keep faces ``keep`` in order, then append ``polys`` (origins from ``src``)."""
        origin, origin_layer = self._origin[src], self._origin_layer[src]
        payload = self._payload[src]
        k = keep.shape[0]
        for name in ("_faces", "_support", "_sizes", "_origin", "_origin_layer", "_payload"):
            buf = getattr(self, name)
            buf[:k] = buf[keep].clone()
        self.nf = k
        self._reserve_faces(polys.shape[0], polys.shape[1])
        rows = torch.arange(k, k + polys.shape[0])
        self._origin[rows] = origin
        self._origin_layer[rows] = origin_layer
        self._payload[rows] = payload
        self.nf = k + polys.shape[0]
        self._write_faces(rows, polys, sizes)

    # --------------------------------------------------------------- queries
    def reduce(self, words: Tensor, op: str) -> Tensor:
        """Bitwise ``"or"`` / ``"and"`` of per-vertex int64 words (V, k) over each
        face's vertices: (F, k)."""
        from . import kernels as kern

        if op not in ("or", "and"):
            raise ValueError(f"op must be 'or' or 'and', got {op!r}")
        out = torch.empty((self.nf, words.shape[1]), dtype=torch.int64)
        kern.face_reduce(self._faces.numpy(), self._sizes.numpy(),
                         words.to(torch.int64).contiguous().numpy(), op == "and", out.numpy())
        return out

    def centers(self) -> Tensor:
        """(F, 2) vertex means: strictly interior points of non-degenerate faces."""
        fv, valid = self.entries(torch.arange(self.nf))
        pts = self._xy[fv.clamp(min=0)] * valid.unsqueeze(-1)
        return pts.sum(1) / self.sizes.unsqueeze(1).to(pts.dtype)

    def areas(self) -> Tensor:
        """(F,) signed shoelace areas (positive for counter-clockwise faces)."""
        from . import kernels as kern

        out = torch.empty(self.nf, dtype=self._xy.dtype)
        kern.face_areas(self._faces.numpy(), self._sizes.numpy(), self._xy.numpy(), out.numpy())
        return out

    def release(self) -> None:
        """Free the buffers (the mesh is unusable afterwards)."""
        for name in ("_faces", "_support", "_vals", "_above", "_below", "_payload", "_origin",
                     "_origin_layer"):
            buf = getattr(self, name)
            # an empty tensor, not an empty view (which would keep the buffer alive)
            setattr(self, name, torch.empty((0, *buf.shape[1:]), dtype=buf.dtype))

    def edges(self) -> tuple[Tensor, Tensor]:
        """Undirected edges (E, 2), sorted, and their faces (E, 2): lowest and
        highest face using the edge (-1: domain boundary)."""
        from . import kernels as kern

        slots = np.empty((self.nf, self.width), dtype=np.int64)
        keys, faces = kern.edge_table(self._faces.numpy(), self.sizes.numpy(), self.nv, slots)
        keys, faces = torch.from_numpy(keys), torch.from_numpy(faces)
        return torch.stack([keys // self.nv, keys % self.nv], 1), faces


_MADV_POPULATE_WRITE = 23  # Linux >= 5.14
_PREFAULT_MIN = 16 << 20  # bytes
_PREFAULT_SLICE = 4 << 20  # bytes of the widest buffer per slice


class _Prefault:
    """A helper thread that faults in rows ``[used, used + rows)`` of each (buffer,
    used) (``madvise(MADV_POPULATE_WRITE)``, which releases the GIL), all buffers
    a slice of rows at a time, in the order the cut loop writes them: first writes
    to fresh memory cost a page fault per 4 KiB, which on virtual machines is a
    large share of a cut's time. :meth:`stop` ends it after the current slice (rows
    that the cuts did not need are not faulted in, nor waited for)."""

    def __init__(self, buffers: list[tuple[Tensor, int]], rows: int):
        self.spans = []
        for buf, used in buffers:
            if buf.numel() == 0:
                continue
            row = buf.stride(0) * buf.element_size()
            self.spans.append((buf.data_ptr() + used * row, row, min(buf.shape[0] - used, rows)))
        total = sum(row * n for _, row, n in self.spans)
        self.thread: threading.Thread | None = None
        if _LIBC is None or total < _PREFAULT_MIN:
            return  # small: a thread would cost more than the faults
        widest = max(row for _, row, _ in self.spans)
        self.step = max(1, _PREFAULT_SLICE // widest)
        self.rows = max(n for _, _, n in self.spans)
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        for lo in range(0, self.rows, self.step):
            if self.halt.is_set():
                return
            for base, row, n in self.spans:
                start = (base + lo * row + 4095) // 4096 * 4096
                end = (base + min(n, lo + self.step) * row) // 4096 * 4096
                if end > start and _LIBC.madvise(
                        ctypes.c_void_p(start), ctypes.c_size_t(end - start),
                        _MADV_POPULATE_WRITE) != 0:
                    return  # unsupported (old kernel): faults happen as usual

    def stop(self) -> None:
        if self.thread is not None:
            self.halt.set()
            self.thread.join()


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "madvise") else None
    except OSError:
        return None


_LIBC = _libc()


def unpack_bits(words: Tensor, k: int) -> Tensor:
    """Bools (N, k) from int64 words (N, ceil(k / 64)): bit ``i`` in word
    ``i // 64``, bit ``i % 64`` (as the compiled side bits write them)."""
    if words.shape[0] == 0:
        return torch.zeros((0, k), dtype=torch.bool)
    by = words.contiguous().view(torch.uint8)
    bits = (by.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.reshape(words.shape[0], -1)[:, :k].bool()


def _compact(ext: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Left-align the kept entries of each row (stable), -1 padded; ``ext`` (N, K)
    or (N, K, channels)."""
    pos = torch.cumsum(keep, 1) - 1
    sizes = pos[:, -1] + 1
    w = int(sizes.max())
    out = torch.full((ext.shape[0], w + 1, *ext.shape[2:]), -1, dtype=ext.dtype)
    index = torch.where(keep, pos, w)  # dropped entries land in column w
    if ext.dim() == 3:
        index = index.unsqueeze(2).expand_as(ext)
    out.scatter_(1, index, ext)
    return out[:, :w], sizes


def clip_halfplanes(poly: Tensor, sizes: Tensor, normals: Tensor, offsets: Tensor,
                    labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Clip convex polygons by half-planes ``<n, p> + c >= 0``, one after another.

    ``poly`` (P, W, 2) coordinates, ``sizes`` (P,), ``normals`` (P, H, 2),
    ``offsets`` (P, H), ``labels`` (P, H) ints naming each half-plane. Returns the
    clipped polygons (P, W', 2), sizes, and per-edge labels (P, W'): the label of
    the half-plane whose line an edge lies on, or -1 for an original edge (edge
    ``j`` joins vertex ``j`` to ``j + 1``).
    """
    p, w = poly.shape[:2]
    edge = torch.full((p, w), -1, dtype=torch.int64)
    for h in range(normals.shape[1]):
        val = (poly * normals[:, h, None, :]).sum(-1) + offsets[:, h, None]
        valid = torch.arange(poly.shape[1]) < sizes[:, None]
        inside = (val >= 0) & valid
        n, w = val.shape
        nxt = torch.arange(1, w + 1).expand(n, w)
        nxt = torch.where(nxt >= sizes[:, None].clamp(min=1), 0, nxt)
        val_n, inside_n = val.gather(1, nxt), inside.gather(1, nxt)
        cross = valid & (inside != inside_n)
        t = (val / torch.where(cross, val - val_n, 1.0)).unsqueeze(-1)
        pt = poly + t * (poly.gather(1, nxt.unsqueeze(-1).expand(n, w, 2)) - poly)
        # sequence: [vertex j if inside] [crossing on edge j if crossed]
        seq = torch.stack([poly, pt], 2).reshape(n, 2 * w, 2)
        keep = torch.stack([inside, cross], 2).reshape(n, 2 * w)
        # label of the edge leaving each kept entry: a kept vertex keeps its edge's
        # label unless the edge is cut (then the crossing follows); an entering
        # crossing (inside -> outside) starts an edge along the clip line
        lab_v = edge
        lab_c = torch.where(inside & ~inside_n, labels[:, h, None].expand(n, w), edge)
        lab = torch.stack([lab_v, lab_c], 2).reshape(n, 2 * w)
        sizes = keep.sum(1)
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        wn = max(1, int(sizes.max()) if sizes.numel() else 1)
        order = order[:, :wn]
        poly = seq.gather(1, order.unsqueeze(-1).expand(n, wn, 2))
        edge = lab.gather(1, order)
        edge = torch.where(torch.arange(wn) < sizes[:, None], edge, -1)
        sizes = torch.where(sizes >= 3, sizes, 0)
    return poly, sizes, edge

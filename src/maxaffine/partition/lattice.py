"""The face lattice of a polyhedral complex in d dimensions, and its cut by a
hyperplane that is affine on every cell (behind :func:`maxaffine.partition_box`).

Every k-face (k = 1..d) lists its facets, (k-1)-faces, as a CSR list; level 0 are
the vertices, with coordinates. A cut reads only the signs of the cut function at
the vertices (within a tolerance, zero): a face with vertices strictly on both
sides splits into its positive part (keeping its id), its negative part (appended)
and its section, a new (k-1)-face whose facets are the sections of its cut facets
and its ridges on the hyperplane. This is the combinatorial core of edge
subdivision (Berzins, "Polyhedral complex extraction from ReLU networks using edge
subdivision", ICML 2023), carried for every level of the lattice so that no face
is ever searched for: it is produced by the cut that creates it.

Degenerate arrangements (a hyperplane through existing vertices, coincident
hyperplanes, values within the tolerance) are resolved from the signs alone;
where snapping to zero left signs that no hyperplane has (a cut face with a facet
on the hyperplane, a ridge on it not shared by one face of each side), those
vertices get the side of their own value's sign instead (zero: the negative side,
as the codes' ties go to the lower piece), which makes them consistent.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

_ID = np.int32  # face and vertex ids in the lattice's rows (half the memory of int64)


def _grown(arr: np.ndarray, cap: int, fill: int | None = None) -> np.ndarray:
    """``arr`` with room for ``cap`` rows (axis 0), reallocated in place where the
    allocator can (large blocks are remapped, not copied: no moment with both the
    old and the new buffer resident); new rows hold ``fill`` (default: zeros)."""
    n0 = arr.shape[0]
    if arr.base is None and arr.flags.owndata and arr.flags.c_contiguous:
        arr.resize((cap, *arr.shape[1:]), refcheck=False)
        out = arr
    else:
        out = np.zeros((cap, *arr.shape[1:]), dtype=arr.dtype)
        out[:n0] = arr
    if fill:
        out[n0:] = fill
    return out


class _Rows:
    """One level's facet lists as rows ``idx[beg[f]:end[f]]`` of a buffer with room to
    grow (cuts rewrite the rows they cut and append; the rest stay put), and
    ``minus`` / ``zero`` scratch (-1 but for the faces of the current cut)."""

    def __init__(self, ptr: np.ndarray, idx: np.ndarray):
        n = ptr.shape[0] - 1
        self.n, self.used, self.garbage = n, idx.shape[0], 0
        self.beg, self.end = ptr[:-1].astype(_ID), ptr[1:].astype(_ID)
        self.idx = idx.astype(_ID)
        self.minus = np.full(n, -1, dtype=_ID)
        self.zero = np.full(n, -1, dtype=_ID)
        self.bits = np.zeros((3, 0, n), dtype=np.uint64)  # P, N, Z per word and face

    def reserve(self, faces: int, entries: int) -> None:
        if self.n + faces > self.beg.shape[0]:
            cap = max(self.n + faces, self.beg.shape[0] * 3 // 2)
            for name, fill in (("beg", 0), ("end", 0), ("minus", -1), ("zero", -1)):
                setattr(self, name, _grown(getattr(self, name), cap, fill))
            bits = np.zeros((3, self.bits.shape[1], cap), dtype=np.uint64)
            bits[:, :, : self.n] = self.bits[:, :, : self.n]
            self.bits = bits
        if self.used + entries > self.idx.shape[0]:
            self.idx = _grown(self.idx, max(self.used + entries, self.idx.shape[0] * 3 // 2))

    def compact(self) -> None:
        """Rows back in face order, without garbage (the passes over all rows then
        stream through memory)."""
        if self.garbage == 0:
            return
        ptr, idx = self.csr()  # a fresh array: it becomes the buffer
        self.beg[: self.n], self.end[: self.n] = ptr[:-1], ptr[1:]
        self.idx, self.used, self.garbage = idx, idx.shape[0], 0

    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ptr, idx)``: the rows in face order (a fresh array unless they are)."""
        from . import kernels_nd as kern

        if self.garbage == 0:  # appended in order, nothing moved: already CSR
            ptr = np.zeros(self.n + 1, dtype=np.int64)
            np.cumsum(self.end[: self.n] - self.beg[: self.n], out=ptr[1:])
            if ptr[-1] == self.used and (self.n == 0 or self.beg[0] == 0):
                return ptr, self.idx[: self.used]
        return kern.rows_in_order(self.beg, self.end, self.idx, self.n)


class Lattice:
    """``x`` (V, d) vertex coordinates; ``ptr[k - 1]``, ``idx[k - 1]``: level k's CSR
    facet lists (k = 1..d); ``carry`` (V, m): per-vertex values interpolated
    along with the coordinates (affine on every cell). Vertices live in buffers
    that grow geometrically (by half: a cut appends a few; copying all would dominate),
    faces in :class:`_Rows`."""

    def __init__(self, x: np.ndarray, ptr: list[np.ndarray], idx: list[np.ndarray],
                 carry: np.ndarray | None = None):
        self._set_levels(ptr, idx)
        self._nv = x.shape[0]
        self._x = np.array(x, dtype=np.float64)
        self._c = np.zeros((self._nv, 0))
        self._lines = np.zeros((self._nv, 0))  # the cut functions of the current batch
        self._tol = np.zeros(0)
        self._no_rows = np.zeros(0, dtype=_ID)
        self._never = np.zeros(0, dtype=_ID)
        self._vbits = np.zeros((3, 0, self._nv), dtype=np.uint64)
        self.carry = np.zeros((self._nv, 0)) if carry is None else carry

    @property
    def x(self) -> np.ndarray:
        return self._x[: self._nv]

    @x.setter
    def x(self, value: np.ndarray) -> None:
        self._nv = value.shape[0]
        self._x = np.array(value, dtype=np.float64)
        self._lines = np.zeros((self._nv, 0))
        self._vbits = np.zeros((3, 0, self._nv), dtype=np.uint64)

    @property
    def carry(self) -> np.ndarray:
        return self._c[: self._nv]

    @carry.setter
    def carry(self, value: np.ndarray) -> None:
        if value.shape[0] != self._nv:
            raise ValueError("carry needs one row per vertex")
        self._c = np.empty((self._x.shape[0], value.shape[1]), dtype=np.float64)
        self._c[: self._nv] = value

    def _append(self, x: np.ndarray, c: np.ndarray, lines: np.ndarray) -> None:
        n, add = self._nv, x.shape[0]
        if n + add > self._x.shape[0]:
            cap = max(n + add, self._x.shape[0] * 3 // 2, 64)
            for name in ("_x", "_c", "_lines"):
                setattr(self, name, _grown(getattr(self, name), cap))
            bits = np.zeros((3, self._vbits.shape[1], cap), dtype=np.uint64)
            bits[:, :, :n] = self._vbits[:, :, :n]
            self._vbits = bits
        self._x[n: n + add] = x
        self._c[n: n + add] = c
        self._lines[n: n + add] = lines
        self._nv = n + add

    def _set_levels(self, ptr: list[np.ndarray], idx: list[np.ndarray]) -> None:
        self.rows = [_Rows(p, i) for p, i in zip(ptr, idx, strict=True)]
        self._csr: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(ptr)

    def _level(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._csr[k - 1] is None:
            self._csr[k - 1] = self.rows[k - 1].csr()
        return self._csr[k - 1]

    @property
    def ptr(self) -> list[np.ndarray]:
        """Per level k = 1..d, the CSR offsets of its facet lists (compacted on read)."""
        return [self._level(k)[0] for k in range(1, len(self.rows) + 1)]

    @property
    def idx(self) -> list[np.ndarray]:
        return [self._level(k)[1] for k in range(1, len(self.rows) + 1)]

    @property
    def dim(self) -> int:
        return self._x.shape[1]

    @property
    def nv(self) -> int:
        return self._nv

    def count(self, k: int) -> int:
        """Number of k-faces."""
        return self.nv if k == 0 else self.rows[k - 1].n

    @property
    def num_cells(self) -> int:
        return self.count(self.dim)

    @classmethod
    def box(cls, lower: np.ndarray, upper: np.ndarray) -> Lattice:
        """The face lattice of the box ``[lower, upper]`` (3^d faces: each coordinate
        at its lower bound, its upper bound, or free)."""
        d = lower.shape[0]
        words = list(itertools.product((0, 1, 2), repeat=d))  # 2: free
        by_dim: list[list[tuple[int, ...]]] = [[] for _ in range(d + 1)]
        for w in words:
            by_dim[sum(c == 2 for c in w)].append(w)
        ids = [{w: i for i, w in enumerate(ws)} for ws in by_dim]
        x = np.array([[upper[i] if c else lower[i] for i, c in enumerate(w)]
                      for w in by_dim[0]], dtype=np.float64)
        ptr, idx = [], []
        for k in range(1, d + 1):
            rows = []
            for w in by_dim[k]:
                row = []
                for i, c in enumerate(w):
                    if c == 2:
                        for side in (0, 1):
                            row.append(ids[k - 1][(*w[:i], side, *w[i + 1:])])
                rows.append(row)
            ptr.append(np.arange(0, 2 * k * len(rows) + 1, 2 * k, dtype=np.int64))
            idx.append(np.array(rows, dtype=np.int64).reshape(-1))
        return cls(x, ptr, idx)

    # -------------------------------------------------------------- the cut

    def cut(self, values: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
        """Cut every face by the zero set of ``values`` (V,), affine on every cell (a
        batch of one line: :meth:`begin` then :meth:`cut_line`)."""
        self.begin(values[:, None], np.array([tol], dtype=np.float64))
        return self.cut_line(0)

    @property
    def lines(self) -> np.ndarray:
        """(V, L) the values of the current batch's cut functions at the vertices."""
        return self._lines[: self._nv]

    def begin(self, lines: np.ndarray, tol: np.ndarray) -> None:
        """Start a batch of cuts along ``lines`` (V, L): functions affine on every cell
        until the batch ends (a layer's boundaries), interpolated at new vertices;
        ``tol`` (L,): values within it count as zero. Every face's sign bits for
        them are computed once here and kept exact by the cuts."""
        self.line_buffer(lines.shape[1])[:] = lines
        self.begin_bits(tol)

    def line_buffer(self, n_lines: int) -> np.ndarray:
        """A (V, n_lines) buffer for the next batch's line values, to be filled in
        place (no copy of them is made), then :meth:`begin_bits`."""
        self._lines = None  # freed before its successor is allocated
        self._lines = np.empty((self._x.shape[0], n_lines), dtype=np.float64)
        return self._lines[: self.nv]

    def begin_bits(self, tol: np.ndarray) -> None:
        """The sign bits of the lines in :meth:`line_buffer` (see :meth:`begin`)."""
        from . import kernels_nd as kern

        nv, n_lines = self.nv, self._lines.shape[1]
        words = max(1, -(-n_lines // 64))
        self._tol = np.asarray(tol, dtype=np.float64)
        self._vbits = None
        self._vbits = np.zeros((3, words, self._x.shape[0]), dtype=np.uint64)
        kern.vertex_bits(self._lines, self._tol, 0, nv, self._vbits)
        self._refresh_all()

    def _refresh_all(self) -> None:
        from . import kernels_nd as kern

        words = self._vbits.shape[1]
        below = self._vbits
        for r in self.rows:
            r.bits = None
            r.bits = np.zeros((3, words, r.beg.shape[0]), dtype=np.uint64)
            kern.face_bits(np.arange(r.n), r.beg, r.end, r.idx, below, r.bits)
            below = r.bits

    def _sides(self, k: int, w: int, m: np.uint64) -> tuple[np.ndarray, np.ndarray]:
        """Level k's (positive, negative) bools for one line, from the bits."""
        bits = self._vbits[:, :, : self.nv] if k == 0 else self.rows[k - 1].bits[
            :, :, : self.rows[k - 1].n]
        return (bits[0, w] & m) != 0, (bits[1, w] & m) != 0

    def cut_line(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Cut every face by line ``j`` of the batch.

        Returns ``(cell_pos, cell_minus)`` for the cells before the cut: whether each
        has a vertex strictly on the positive side (after the cut, each cell lies on
        one side: the old ids on the positive side when they have such a vertex,
        the appended negative parts ``cell_minus`` (-1: uncut) on the negative)."""
        from . import kernels_nd as kern

        d, rows = self.dim, self.rows
        w, m = j >> 6, np.uint64(1) << np.uint64(j & 63)
        top = rows[d - 1]
        cell_pos = (top.bits[0, w, : top.n] & m) != 0
        cut_top = kern.with_bits(top.bits, top.n, w, m, 0, 1)
        if cut_top.shape[0] == 0:  # no cell is cut, so no face is
            return cell_pos, np.full(top.n, -1, dtype=np.int64)
        if d >= 2 and bool(((top.bits[2, w, cut_top] & m) != 0).any()):
            # a cut cell has a vertex on the line: check the signs are a hyperplane's
            self._resolve_zeros(j, w, m)
            cell_pos = (top.bits[0, w, : top.n] & m) != 0
        self._csr = [None] * d
        values = self._lines[: self.nv, j]
        # new vertices on the strictly cut edges
        edges = rows[0]
        e = kern.with_bits(edges.bits, edges.n, w, m, 0, 1)
        a, b = edges.idx[edges.beg[e]], edges.idx[edges.beg[e] + 1]
        va, vb = values[a], values[b]
        t = (va / (va - vb))[:, None]
        x, c, lines = self.x, self.carry, self.lines
        new_lines = lines[a] + t * (lines[b] - lines[a])
        new_lines[:, j] = 0.0  # on this line
        nv = self.nv
        new_x, new_c = x[a] + t * (x[b] - x[a]), c[a] + t * (c[b] - c[a])
        if self._no_rows.shape[0] < nv:  # vertices have no facets, and are never cut
            self._no_rows = np.zeros(2 * nv, dtype=_ID)
            self._never = np.full(2 * nv, -1, dtype=_ID)
        no_rows, vertex_minus = self._no_rows, self._never
        old_n = [r.n for r in rows]
        cuts = []
        for k in range(1, d + 1):  # the cuts, each level reading its facets' sides
            r = rows[k - 1]
            cut = e if k == 1 else kern.with_bits(r.bits, r.n, w, m, 0, 1)
            cuts.append(cut)
            here, lower = kern.cut_bounds(cut, r.beg, r.end, r.idx,
                                          rows[k - 2].beg if k > 1 else no_rows,
                                          rows[k - 2].end if k > 1 else no_rows)
            r.reserve(cut.shape[0], here)
            if k > 1:
                lo = rows[k - 2]
                lo.reserve(cut.shape[0], lower)
                below2 = self._vbits if k == 2 else rows[k - 3].bits
                r.used, lo.used, freed = kern.cut_rows_bits(
                    cut, r.n, r.beg, r.end, r.idx, r.used, lo.bits, below2, w, m,
                    lo.minus, lo.zero, lo.beg, lo.end, lo.idx, lo.n, lo.used, True,
                    r.minus, r.zero)
                lo.minus[cuts[k - 2]] = -1  # the scratch is clean for the next cut
                lo.zero[cuts[k - 2]] = -1
                lo.n += cut.shape[0]
            else:
                r.used, _, freed = kern.cut_rows_bits(
                    cut, r.n, r.beg, r.end, r.idx, r.used, self._vbits, self._vbits, w, m,
                    vertex_minus, vertex_minus, no_rows, no_rows, no_rows, nv, 0, False,
                    r.minus, r.zero)
            r.garbage += freed
            r.n += cut.shape[0]
        cell_minus = np.full(old_n[d - 1], -1, dtype=np.int64)
        cell_minus[cuts[d - 1]] = old_n[d - 1] + np.arange(cuts[d - 1].shape[0])
        top.minus[cuts[d - 1]] = -1
        top.zero[cuts[d - 1]] = -1
        # the new vertices, then every face made or changed, bottom-up
        self._append(new_x, new_c, new_lines)
        kern.vertex_bits(self._lines, self._tol, nv, self.nv, self._vbits)
        below = self._vbits
        for k in range(1, d + 1):
            r = rows[k - 1]
            made = np.concatenate([cuts[k - 1], np.arange(old_n[k - 1], r.n)])
            kern.face_bits(made, r.beg, r.end, r.idx, below, r.bits)
            below = r.bits
        for r in rows:  # compact levels that are half garbage
            if r.garbage > r.used // 2:
                r.compact()
        return cell_pos, cell_minus

    def positive(self) -> np.ndarray:
        """(cells, L) bools: each cell has a vertex strictly on the positive side of
        each line of the batch (after its cuts: the cell's side)."""
        top = self.rows[self.dim - 1]
        n_lines = self._lines.shape[1]
        words = top.bits[0, :, : top.n]  # (W, cells)
        as_bytes = np.ascontiguousarray(words.T).view(np.uint8).reshape(top.n, -1)
        return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :n_lines].astype(bool)

    def _resolve_zeros(self, j: int, w: int, m: np.uint64) -> None:
        """Vertices within the tolerance of line ``j``: where snapping them to it left
        signs that no hyperplane has (a cut face with a facet on the line, a ridge on
        it not shared by one face of each side), those vertices take their own
        value's sign (zero: negative), and the bits are recomputed."""
        from . import kernels_nd as kern

        d = self.dim
        self._csr = [None] * d
        pos = [self._sides(k, w, m)[0] for k in range(d + 1)]
        neg = [self._sides(k, w, m)[1] for k in range(d + 1)]
        bad = [np.zeros(self.count(k), dtype=np.bool_) for k in range(d + 1)]
        found = 0
        for k in range(2, d + 1):
            lo = self._ptr_idx(k - 1)
            hi = self._level(k)
            found += kern.conflicts(hi[0], hi[1], pos[k], neg[k], pos[k - 1], neg[k - 1],
                                    lo[0], lo[1], pos[k - 2], neg[k - 2], bad[k - 1],
                                    bad[k - 2])
        if not found:
            return
        for k in range(d, 0, -1):
            hi = self._level(k)
            kern.spread_down(hi[0], hi[1], bad[k], bad[k - 1])
        unsnap = np.flatnonzero(bad[0] & ~pos[0] & ~neg[0])
        values = self._lines[unsnap, j]
        vb = self._vbits
        vb[2, w, unsnap] &= ~m
        up = unsnap[values > 0]
        vb[0, w, up] |= m
        vb[1, w, unsnap[values <= 0]] |= m
        self._refresh_all()
        self._resolve_zeros(j, w, m)  # until consistent: each round unsnaps vertices

    def compact(self) -> None:
        """Every level's rows back in face order (after a batch of cuts)."""
        for r in self.rows:
            r.compact()

    def _ptr_idx(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Level k's CSR (level 0: vertices, no facets)."""
        if k == 0:
            return np.zeros(self.nv + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return self._level(k)

    # ---------------------------------------------------------- reading it

    def incidence(self, k: int) -> Any:  # scipy.sparse.csr_matrix
        """(k-faces x (k-1)-faces) 0/1 sparse matrix."""
        ptr, idx = self._level(k)
        import scipy.sparse as sp

        data = np.ones(idx.shape[0], dtype=np.int8)
        return sp.csr_matrix((data, idx, ptr), shape=(self.count(k), self.count(k - 1)))

    def vertex_sets(self, k: int) -> Any:  # scipy.sparse.csr_matrix
        """(k-faces x vertices) 0/1: the vertices of each k-face."""
        import scipy.sparse as sp

        m = self.incidence(1) if k >= 1 else sp.identity(self.nv, format="csr", dtype=np.int8)
        for j in range(2, k + 1):
            m = self.incidence(j) @ m
            m.data[:] = 1
        m = m.tocsr()
        m.sort_indices()
        return m.astype(np.int8)

    def centroids(self, k: int) -> np.ndarray:
        """(k-faces, d) the mean of each k-face's vertices (in its relative interior)."""
        if k == 0:
            return self.x
        m = self.vertex_sets(k).astype(np.float64)
        return (m @ self.x) / np.asarray(m.sum(1))

    def flags(self, k: int, faces: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """The simplices of the barycentric-style subdivision of the k-faces ``faces``:
        one per chain ``F_k > F_(k-1) > ... > F_1`` of faces, with the centroids of
        ``F_k .. F_2`` and the two ends of the edge ``F_1``. Returns
        ``(owner, chain, ends)``: the position in ``faces`` of each simplex's face,
        the face ids of levels k..2 (``chain[0]`` level k), and (S, 2) edge ends."""
        owner = np.arange(faces.shape[0])
        cur = faces.astype(np.int64)
        chain = []
        for j in range(k, 1, -1):
            chain.append(cur)
            ptr, idx = self._level(j)
            deg = ptr[cur + 1] - ptr[cur]
            starts = np.repeat(ptr[cur], deg)
            offs = np.arange(deg.sum()) - np.repeat(np.cumsum(deg) - deg, deg)
            owner = np.repeat(owner, deg)
            chain = [np.repeat(c, deg) for c in chain]
            cur = idx[starts + offs]
        ends = self._level(1)[1].reshape(-1, 2)[cur] if k >= 1 else cur[:, None]
        return owner, chain, ends

    def restrict(self, keep_cells: np.ndarray) -> np.ndarray:
        """Keep the cells ``keep_cells`` (bools) and the faces below them; returns the
        kept old vertex ids (renumbering everything)."""
        d = self.dim
        keep = [None] * (d + 1)
        keep[d] = keep_cells.astype(np.bool_)
        for k in range(d, 0, -1):
            lo = np.zeros(self.count(k - 1), dtype=np.bool_)
            ptr, idx = self._level(k)
            rows = np.repeat(keep[k], np.diff(ptr))
            lo[idx[rows]] = True
            keep[k - 1] = lo
        new_id = [np.cumsum(kp) - 1 for kp in keep]
        ptrs, idxs = [], []
        for k in range(1, d + 1):
            ptr, idx = self._level(k)
            deg = np.diff(ptr)[keep[k]]
            rows = np.repeat(keep[k], np.diff(ptr))
            idxs.append(new_id[k - 1][idx[rows]])
            ptrs.append(np.concatenate([[0], np.cumsum(deg)]).astype(np.int64))
        self._set_levels(ptrs, idxs)
        kept = np.flatnonzero(keep[0])
        carry = self.carry[kept]
        self.x = self.x[kept]
        self.carry = carry
        return kept

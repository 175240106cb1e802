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

import numpy as np
import scipy.sparse as sp


class Lattice:
    """``x`` (V, d) vertex coordinates; ``ptr[k - 1]``, ``idx[k - 1]``: level k's CSR
    facet lists (k = 1..d); ``carry`` (V, m): per-vertex values interpolated
    along with the coordinates (affine on every cell). Vertices live in buffers
    that grow geometrically (a cut appends a few; copying all would dominate)."""

    def __init__(self, x: np.ndarray, ptr: list[np.ndarray], idx: list[np.ndarray],
                 carry: np.ndarray | None = None):
        self.ptr, self.idx = ptr, idx
        self._nv = x.shape[0]
        self._x = np.array(x, dtype=np.float64)
        self._c = np.zeros((self._nv, 0))
        self.carry = np.zeros((self._nv, 0)) if carry is None else carry

    @property
    def x(self) -> np.ndarray:
        return self._x[: self._nv]

    @x.setter
    def x(self, value: np.ndarray) -> None:
        self._nv = value.shape[0]
        self._x = np.array(value, dtype=np.float64)

    @property
    def carry(self) -> np.ndarray:
        return self._c[: self._nv]

    @carry.setter
    def carry(self, value: np.ndarray) -> None:
        if value.shape[0] != self._nv:
            raise ValueError("carry needs one row per vertex")
        self._c = np.empty((self._x.shape[0], value.shape[1]), dtype=np.float64)
        self._c[: self._nv] = value

    def _append(self, x: np.ndarray, c: np.ndarray) -> None:
        n, add = self._nv, x.shape[0]
        if n + add > self._x.shape[0]:
            cap = max(n + add, 2 * self._x.shape[0], 64)
            for name in ("_x", "_c"):
                old = getattr(self, name)
                new = np.empty((cap, old.shape[1]), dtype=np.float64)
                new[:n] = old[:n]
                setattr(self, name, new)
        self._x[n: n + add] = x
        self._c[n: n + add] = c
        self._nv = n + add

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    @property
    def nv(self) -> int:
        return self._nv

    def count(self, k: int) -> int:
        """Number of k-faces."""
        return self.nv if k == 0 else self.ptr[k - 1].shape[0] - 1

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
        """Cut every face by the zero set of ``values`` (V,), affine on every cell.

        Returns ``(cell_pos, cell_minus)`` for the cells before the cut: whether each
        has a vertex strictly on the positive side (after the cut, each cell lies on
        one side: the old ids on the positive side when they have such a vertex,
        the appended negative parts ``cell_minus`` (-1: uncut) on the negative)."""
        from . import kernels_nd as kern

        d = self.dim
        pos0 = values > tol
        neg0 = values < -tol
        if not (pos0.any() and neg0.any()):  # the hyperplane misses every cell
            side = bool(pos0.any())
            return (np.full(self.num_cells, side, dtype=np.bool_),
                    np.full(self.num_cells, -1, dtype=np.int64))
        while True:
            pos, neg = [pos0], [neg0]
            for k in range(1, d + 1):
                p = np.empty(self.count(k), dtype=np.bool_)
                q = np.empty_like(p)
                kern.sides(self.ptr[k - 1], self.idx[k - 1], pos[k - 1], neg[k - 1], p, q)
                pos.append(p)
                neg.append(q)
            if d < 2 or np.count_nonzero(pos0) + np.count_nonzero(neg0) == pos0.shape[0]:
                break  # no vertex on the hyperplane: the signs are a hyperplane's
            bad = [np.zeros(self.count(k), dtype=np.bool_) for k in range(d + 1)]
            found = 0
            for k in range(2, d + 1):
                lo = self._ptr_idx(k - 1)
                found += kern.conflicts(self.ptr[k - 1], self.idx[k - 1], pos[k], neg[k],
                                        pos[k - 1], neg[k - 1], lo[0], lo[1], pos[k - 2],
                                        neg[k - 2], bad[k - 1], bad[k - 2])
            if not found:
                break
            for k in range(d, 0, -1):
                kern.spread_down(self.ptr[k - 1], self.idx[k - 1], bad[k], bad[k - 1])
            unsnap = bad[0] & ~pos0 & ~neg0
            if not unsnap.any():  # pragma: no cover - conflicts always involve zeros
                raise RuntimeError("inconsistent signs without vertices on the hyperplane")
            pos0 = pos0 | (unsnap & (values > 0))
            neg0 = neg0 | (unsnap & (values <= 0))
        # new vertices on the strictly cut edges
        e = np.flatnonzero(pos[1] & neg[1])
        ends = self.idx[0].reshape(-1, 2)[e]
        va, vb = values[ends[:, 0]], values[ends[:, 1]]
        t = (va / (va - vb))[:, None]
        a, b = ends[:, 0], ends[:, 1]
        new_x = self.x[a] + t * (self.x[b] - self.x[a])
        new_c = self.carry[a] + t * (self.carry[b] - self.carry[a])
        nv = self.nv
        minus_lo = np.full(nv, -1, dtype=np.int64)
        zero_lo = minus_lo
        for k in range(1, d + 1):
            lo_ptr, lo_idx = self._ptr_idx(k - 1)
            n_lo_new = self.count(k - 1)  # level k-1 already holds its negative parts
            new_ptr, new_idx, minus, zero, f0_ptr, f0_idx = kern.cut_level(
                self.ptr[k - 1], self.idx[k - 1], pos[k], neg[k], pos[k - 1], neg[k - 1],
                minus_lo, zero_lo, lo_ptr, lo_idx, pos[k - 2] if k > 1 else pos[0],
                neg[k - 2] if k > 1 else neg[0], n_lo_new)
            self.ptr[k - 1], self.idx[k - 1] = new_ptr, new_idx
            if k > 1:  # the sections join level k-1
                p = self.ptr[k - 2]
                self.ptr[k - 2] = np.concatenate([p, p[-1] + f0_ptr[1:]])
                self.idx[k - 2] = np.concatenate([self.idx[k - 2], f0_idx])
            minus_lo, zero_lo = minus, zero
        self._append(new_x, new_c)
        return pos[d], minus_lo

    def _ptr_idx(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Level k's CSR (level 0: vertices, no facets)."""
        if k == 0:
            return np.zeros(self.nv + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return self.ptr[k - 1], self.idx[k - 1]

    # ---------------------------------------------------------- reading it

    def incidence(self, k: int) -> sp.csr_matrix:
        """(k-faces x (k-1)-faces) 0/1 sparse matrix."""
        ptr, idx = self.ptr[k - 1], self.idx[k - 1]
        data = np.ones(idx.shape[0], dtype=np.int8)
        return sp.csr_matrix((data, idx, ptr), shape=(self.count(k), self.count(k - 1)))

    def vertex_sets(self, k: int) -> sp.csr_matrix:
        """(k-faces x vertices) 0/1: the vertices of each k-face."""
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

    def cofaces(self, k: int) -> sp.csr_matrix:
        """((k-1)-faces x k-faces) 0/1: the faces each (k-1)-face bounds."""
        return self.incidence(k).T.tocsr()

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
            ptr, idx = self.ptr[j - 1], self.idx[j - 1]
            deg = ptr[cur + 1] - ptr[cur]
            starts = np.repeat(ptr[cur], deg)
            offs = np.arange(deg.sum()) - np.repeat(np.cumsum(deg) - deg, deg)
            owner = np.repeat(owner, deg)
            chain = [np.repeat(c, deg) for c in chain]
            cur = idx[starts + offs]
        ends = self.idx[0].reshape(-1, 2)[cur] if k >= 1 else cur[:, None]
        return owner, chain, ends

    def restrict(self, keep_cells: np.ndarray) -> np.ndarray:
        """Keep the cells ``keep_cells`` (bools) and the faces below them; returns the
        kept old vertex ids (renumbering everything)."""
        d = self.dim
        keep = [None] * (d + 1)
        keep[d] = keep_cells.astype(np.bool_)
        for k in range(d, 0, -1):
            lo = np.zeros(self.count(k - 1), dtype=np.bool_)
            ptr, idx = self.ptr[k - 1], self.idx[k - 1]
            rows = np.repeat(keep[k], np.diff(ptr))
            lo[idx[rows]] = True
            keep[k - 1] = lo
        new_id = [np.cumsum(kp) - 1 for kp in keep]
        for k in range(1, d + 1):
            ptr, idx = self.ptr[k - 1], self.idx[k - 1]
            deg = np.diff(ptr)[keep[k]]
            rows = np.repeat(keep[k], np.diff(ptr))
            self.idx[k - 1] = new_id[k - 1][idx[rows]]
            self.ptr[k - 1] = np.concatenate([[0], np.cumsum(deg)]).astype(np.int64)
        kept = np.flatnonzero(keep[0])
        carry = self.carry[kept]
        self.x = self.x[kept]
        self.carry = carry
        return kept

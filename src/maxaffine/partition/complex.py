"""The results of full-dimension partitions: :class:`Complex` (the polyhedral
complex of a network's regions in a box or polytope) and :class:`LevelSet` (the
exact (d-1)-complex where an output takes a value, or the decision boundary)."""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._arguments import indices, integer, number
from ..errors import MaxAffineError, MaxAffineTypeError
from ..graph import SplineGraph
from ..vq import Codes, unpack
from .lattice import Lattice
from .values import _forward


@dataclass(frozen=True)
class Complex:
    """The exact polyhedral complex of a network's regions in a convex domain of its
    d-dimensional input space (:func:`maxaffine.partition_box`).

    Geometry: ``vertices`` (V, d), ``edges`` (E, 2), every k-face on request
    (:meth:`faces`), ``f_vector`` (the number of k-faces, k = 0..d). Per region:
    ``packed`` (R, bytes) its codes (the convention of :meth:`maxaffine.Codes.packed`,
    layers as ``code_layout``), ``codes`` the same unpacked, :meth:`region_vertices`,
    ``interior`` points (the mean of its vertices), exact ``volumes``, and the
    output's affine map ``maps()`` (a :class:`maxaffine.AffineMap` at the interior
    points). ``adjacency``: regions x regions through shared facets (scipy.sparse).
    ``vertex_outputs`` (V, C): the network's outputs at the vertices.
    :meth:`level_set` and :meth:`decision_boundary` give exact (d-1)-complexes.
    """

    _lattice: Lattice = field(repr=False)  # the face lattice (internal)
    packed: Tensor
    code_layout: tuple[tuple[str, tuple[int, ...], int, int], ...]
    graph: SplineGraph | None = field(default=None, repr=False)
    tol: float = 0.0
    constraints: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    seconds: float = 0.0

    # ------------------------------------------------------------- geometry

    @cached_property
    def vertex_outputs(self) -> Tensor:
        """(V, C) the network's outputs at the vertices (computed on first use)."""
        if self.graph is None:
            raise MaxAffineError("this complex was built without its model")
        out = _forward(self.graph, self._lattice.x, self._dtype, None)
        if not np.isfinite(out).all():
            raise MaxAffineError("the network's outputs overflow on this domain: scale the "
                                 "model's weights or the domain down")
        return torch.from_numpy(out)

    @property
    def dim(self) -> int:
        return self._lattice.dim

    @property
    def num_regions(self) -> int:
        return self._lattice.num_cells

    @cached_property
    def vertices(self) -> Tensor:
        return torch.from_numpy(self._lattice.x)

    @cached_property
    def edges(self) -> Tensor:
        """(E, 2) vertex ids of every edge."""
        return torch.from_numpy(self._lattice.idx[0].reshape(-1, 2).astype(np.int64))

    @property
    def f_vector(self) -> tuple[int, ...]:
        """The number of k-faces for k = 0..d (vertices, edges, ..., regions)."""
        return tuple(self._lattice.count(k) for k in range(self.dim + 1))

    @property
    def euler_characteristic(self) -> int:
        """``sum_k (-1)^k f_k``: 1 for a complex that subdivides a convex domain."""
        return sum((-1) ** k * f for k, f in enumerate(self.f_vector))

    def faces(self, k: int) -> tuple[Tensor, Tensor]:
        """The k-faces as their vertex ids: ``(offsets, ids)``, face ``i``'s vertices
        are ``ids[offsets[i]:offsets[i + 1]]`` (k = 0..d; k = d: the regions)."""
        k = integer(k, "k", minimum=0, maximum=self.dim,
                    meaning=f"a face dimension of this {self.dim}-D complex")
        m = self._lattice.vertex_sets(k)
        return torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(
            m.indices.astype(np.int64))

    def facets(self, k: int) -> tuple[Tensor, Tensor]:
        """The k-faces as lists of their (k-1)-faces (the face lattice): ``(offsets,
        ids)`` like :meth:`faces`, ids into the (k-1)-faces (k = 1..d)."""
        k = integer(k, "k", minimum=1, maximum=self.dim,
                    meaning=f"a face dimension of this {self.dim}-D complex, >= 1")
        return (torch.from_numpy(self._lattice.ptr[k - 1].copy()),
                torch.from_numpy(self._lattice.idx[k - 1].astype(np.int64)))

    def region_vertices(self, i: int) -> Tensor:
        """The vertex ids of region ``i``."""
        i = integer(i, "i", minimum=-self.num_regions, maximum=self.num_regions - 1,
                    meaning=f"a region index; the complex has {self.num_regions} regions")
        m = self._cell_vertices
        i %= self.num_regions
        return torch.from_numpy(m.indices[m.indptr[i]: m.indptr[i + 1]].astype(np.int64))

    @cached_property
    def _cell_vertices(self) -> Any:  # scipy.sparse.csr_matrix
        return self._lattice.vertex_sets(self.dim)

    @cached_property
    def interior(self) -> Tensor:
        """(R, d) each region's vertex mean (in its interior: the regions are convex)."""
        return torch.from_numpy(self._centroids(self.dim))

    def _centroids(self, k: int) -> np.ndarray:
        if k == self.dim:
            m = self._cell_vertices.astype(np.float64)
            return (m @ self._lattice.x) / np.asarray(m.sum(1))
        return self._lattice.centroids(k)

    @cached_property
    def volumes(self) -> Tensor:
        """(R,) each region's exact volume, level by level from its faces' (the
        pyramid formula): ``vol_k(F) = 1/k sum_(G facet of F) dist(c_F, aff G)
        vol_(k-1)(G)``, with ``c_F`` the mean of F's vertices (inside F) and aff G
        spanned by an orthonormal basis built up the lattice."""
        lat, d = self._lattice, self.dim
        x = lat.x
        ends = lat.idx[0].reshape(-1, 2)
        direction = x[ends[:, 1]] - x[ends[:, 0]]
        vol = np.linalg.norm(direction, axis=1)  # level 1: lengths
        basis = (direction / np.maximum(vol, 1e-300)[:, None])[:, None, :]  # (E, 1, d)
        origin = x[ends[:, 0]]  # a point of each face's affine hull
        for k in range(2, d + 1):
            ptr, idx = lat.ptr[k - 1], lat.idx[k - 1]
            cent = self._centroids(k)
            owner = np.repeat(np.arange(ptr.shape[0] - 1), np.diff(ptr))
            rel = cent[owner] - origin[idx]  # (nnz, d)
            b = basis[idx]  # (nnz, k-1, d)
            perp = rel - np.einsum("nj,njd->nd", np.einsum("nd,njd->nj", rel, b), b)
            h = np.linalg.norm(perp, axis=1)
            vol = np.bincount(owner, h * vol[idx], ptr.shape[0] - 1) / k
            if k < d:  # the next level's bases: a facet's basis and the way to c_F
                first = idx[ptr[:-1]]
                rel0 = cent - origin[first]
                b0 = basis[first]
                p0 = rel0 - np.einsum("nj,njd->nd", np.einsum("nd,njd->nj", rel0, b0), b0)
                p0 /= np.maximum(np.linalg.norm(p0, axis=1), 1e-300)[:, None]
                basis = np.concatenate([b0, p0[:, None, :]], 1)
                origin = cent
        return torch.from_numpy(vol)

    @property
    def domain_volume(self) -> float:
        """The volume of the box (or polytope) partitioned."""
        return float(self.volumes.sum())

    @cached_property
    def adjacency(self) -> Any:  # scipy.sparse.csr_matrix
        """(R, R) 0/1 symmetric: regions that share a facet."""
        inc = self._lattice.incidence(self.dim).T.tocsr()  # facets x cells
        two = np.flatnonzero(np.diff(inc.indptr) == 2)
        pairs = inc.indices[inc.indptr[two][:, None] + np.arange(2)]
        r = self.num_regions
        import scipy.sparse as sp

        adj = sp.coo_matrix((np.ones(2 * len(pairs), dtype=np.int8),
                             (np.r_[pairs[:, 0], pairs[:, 1]], np.r_[pairs[:, 1], pairs[:, 0]])),
                            shape=(r, r)).tocsr()
        adj.data[:] = 1
        return adj

    # ---------------------------------------------------------------- codes

    @cached_property
    def codes(self) -> Codes:
        """The regions' codes as a :class:`maxaffine.Codes` (one row per region)."""
        layout = self.code_layout
        names, shapes, pieces, bits = (tuple(x[i] for x in layout) for i in range(4))
        return Codes(names, unpack(self.packed, shapes, bits), pieces, bits, self.num_regions)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(name for name, *_ in self.code_layout)

    def maps(self, regions: Any = None):
        """The output's affine map on the regions ``regions`` (default all): a
        :class:`maxaffine.AffineMap` at their interior points (``A`` (R, C, d),
        ``B`` (R, C))."""
        from ..affine import affine_map

        if self.graph is None:
            raise MaxAffineError("this complex was built without its model")
        idx = (torch.arange(self.num_regions) if regions is None
               else indices(regions, self.num_regions, "regions"))
        x = self.interior[idx].to(self._dtype).reshape(-1, *self.graph.input_shape)
        return affine_map(self.graph, x)

    @property
    def _dtype(self) -> torch.dtype:
        param = next((p for p in self.graph.model.parameters() if p.is_floating_point()),
                     None) if self.graph is not None else None
        return torch.float64 if param is None else param.dtype

    def locate(self, x: Tensor) -> Tensor:
        """(N,) the region of each point of the batch ``x`` (N, d), in the model's dtype,
        by its code (-1: no region of the complex has it, e.g. a point outside the
        domain)."""
        from ..vq import codes as codes_of

        if self.graph is None:
            raise MaxAffineError("this complex was built without its model")
        packed = codes_of(self.graph, x).packed()
        table = {bytes(r): i for i, r in enumerate(self.packed.numpy())}
        return torch.tensor([table.get(bytes(r), -1) for r in packed.numpy()],
                            dtype=torch.int64)

    # ------------------------------------------------------------ level sets

    def level_set(self, c: float = 0.0, output: int | Tensor | Any = 0) -> LevelSet:
        """The exact (d-1)-complex where an output equals ``c``: each region's
        section by the hyperplane where its affine map equals ``c``, as simplices
        (d = 3: a triangle mesh; d = 2: segments), oriented so that the output grows
        along their normal. ``output``: an output index, or weights (C,) of the
        outputs (e.g. ``[-1, 1]``: where output 1 equals output 0)."""
        c = number(c, "c", meaning="the level")
        outs = self.vertex_outputs.numpy()
        n_out = outs.shape[1]
        if isinstance(output, bool) or not isinstance(
                output, int | np.integer | Tensor | np.ndarray | list | tuple):
            raise MaxAffineTypeError(f"output must be an output index or weights of the "
                                     f"outputs, got {type(output).__name__} {output!r}")
        if isinstance(output, int | np.integer):
            j = int(indices([int(output)], n_out, "output")[0])
            w = np.eye(n_out)[j]
            label = f"output {j}"
        else:
            try:
                w = np.asarray(torch.as_tensor(output, dtype=torch.float64).numpy(), dtype=float)
            except (TypeError, ValueError, RuntimeError) as err:
                raise MaxAffineTypeError(f"output weights must be {n_out} real numbers, got "
                                         f"{output!r}") from err
            if w.shape != (n_out,) or not np.isfinite(w).all():
                raise MaxAffineError(f"output must be an output index or {n_out} finite "
                                     f"weights, got shape {w.shape}")
            label = f"weights {w.tolist()}"
        g = outs @ w - c
        scale = max(float(np.abs(outs).max(initial=0.0)) * float(np.abs(w).sum()), abs(c))
        return _separate(self, [g], [self.tol * max(scale, 1e-300)], binary=True,
                         what=f"{label} = {c:g}")

    def decision_boundary(self) -> LevelSet:
        """Where the predicted class (the argmax output, ties to the first; one output:
        its sign) changes: the (d-1)-complex between regions of different classes,
        found by cutting every region along ``f_j = max_{i<j} f_i`` for j = 1..C-1
        (each cut is a hyperplane in the pieces of the earlier ones)."""
        outs = self.vertex_outputs.numpy()
        if outs.shape[1] == 1:
            return self.level_set(0.0, 0)
        scale = float(np.abs(outs).max(initial=0.0)) * 2
        return _separate(self, None, [self.tol * max(scale, 1e-300)], binary=False,
                         what="decision boundary")

    # --------------------------------------------------------------- output

    def summary(self) -> dict[str, Any]:
        vol = self.volumes
        return {
            "dim": self.dim,
            "regions": self.num_regions,
            "vertices": self.f_vector[0],
            "edges": self.f_vector[1] if self.dim >= 1 else 0,
            "f_vector": list(self.f_vector),
            "euler_characteristic": self.euler_characteristic,
            "volume": float(vol.sum()),
            "min_volume": float(vol.min()) if len(vol) else 0.0,
            "max_volume": float(vol.max()) if len(vol) else 0.0,
            "layers": list(self.layer_names),
            "tol": self.tol,
            "seconds": self.seconds,
        }

    def to_json(self) -> str:
        m = self._cell_vertices
        return json.dumps({
            "summary": self.summary(),
            "vertices": self._lattice.x.tolist(),
            "edges": self.edges.tolist(),
            "regions": [m.indices[m.indptr[i]: m.indptr[i + 1]].tolist()
                        for i in range(self.num_regions)],
            "packed": [bytes(r.tolist()).hex() for r in self.packed],
            "volumes": self.volumes.tolist(),
        })

    def to_html(self, path: str | Path, *, level: float | None = None, output: int = 0,
                title: str | None = None) -> Path:
        """Write a self-contained HTML page with a rotatable mesh of the level set
        ``output = level`` (``level`` None: the decision boundary) and the complex's
        edges (d = 2 or 3): :func:`maxaffine.explore.level_set_html`. Returns the path."""
        from ..explore import level_set_html, write_html

        if self.dim not in (2, 3):
            raise MaxAffineError(f"to_html draws 2-D and 3-D complexes; this one is "
                                 f"{self.dim}-D")
        surface = self.decision_boundary() if level is None else self.level_set(level, output)
        return write_html(level_set_html(surface, complex_=self, title=title), path)

    def plot(self, ax=None, regions: Any = None, level: float | None = 0.0, output: int = 0):
        """d = 2: the regions, coloured; d = 3: the level set ``output = level``
        (``level`` None: the edges of ``regions``, default all) in 3-D."""
        from .._plotting import plot_complex

        if self.dim not in (2, 3):
            raise MaxAffineError(f"plot draws 2-D and 3-D complexes; this one is {self.dim}-D "
                                 "(see summary(), or partition a 2-D or 3-D slice)")
        sel = None if regions is None else indices(regions, self.num_regions, "regions")
        return plot_complex(self, ax=ax, regions=sel, level=level, output=output)


@dataclass(frozen=True)
class LevelSet:
    """An exact (d-1)-complex in d-dimensional input space, as simplices: ``vertices``
    (n, d) and ``simplices`` (S, d) vertex ids (d = 3: triangles, oriented so the
    function grows along the right-hand normal; d = 2: segments). ``regions`` (S,):
    the region of the complex each simplex bounds on its positive (higher-class)
    side; ``classes`` (S, 2): the classes on either side (decision boundaries)."""

    vertices: Tensor
    simplices: Tensor
    regions: Tensor
    classes: Tensor | None = None
    what: str = ""

    @property
    def dim(self) -> int:
        return self.vertices.shape[1]

    @property
    def triangles(self) -> Tensor:
        """(S, 3) the triangles of a 3-D level set (empty in other dimensions: see
        :attr:`simplices`)."""
        if self.dim != 3:
            return torch.zeros((0, 3), dtype=torch.int64)
        return self.simplices

    @property
    def num_simplices(self) -> int:
        return self.simplices.shape[0]

    @cached_property
    def measures(self) -> Tensor:
        """(S,) each simplex's (d-1)-volume (length, area, ...)."""
        x = self.vertices[self.simplices].double()  # (S, d, d)
        if self.dim == 1:
            return torch.ones(self.num_simplices, dtype=torch.float64)
        e = x[:, 1:] - x[:, :1]  # (S, d-1, d)
        gram = e @ e.transpose(1, 2)
        return torch.sqrt(torch.linalg.det(gram).clamp(min=0)) / math.factorial(self.dim - 1)

    @property
    def measure(self) -> float:
        """The total (d-1)-volume (length of a 2-D curve, area of a 3-D surface)."""
        return float(self.measures.sum())

    def mesh(self):
        """The 3-D level set as a ``trimesh.Trimesh`` (vertices merged as they are)."""
        import trimesh

        if self.dim != 3:
            raise MaxAffineError(f"a triangle mesh is a 3-D level set; this one is in "
                                 f"{self.dim}-D (its simplices are {self.dim}-point)")
        return trimesh.Trimesh(self.vertices.numpy(), self.triangles.numpy(), process=False)

    @property
    def is_watertight(self) -> bool:
        """Every (d-2)-face of the simplices is shared by exactly two of them (a closed
        curve or surface, e.g. inside the box)."""
        s = self.simplices.numpy()
        d = self.dim
        if d == 1 or s.shape[0] == 0:
            return False
        faces = np.concatenate([np.delete(s, i, axis=1) for i in range(d)])
        faces.sort(1)
        _, counts = np.unique(faces, axis=0, return_counts=True)
        return bool((counts == 2).all())

    def save(self, path: str | Path) -> None:
        """A 3-D level set as a mesh file through trimesh (``.ply``, ``.obj``, ``.stl``,
        ...); any dimension as ``.json``."""
        if not isinstance(path, str | os.PathLike):
            raise MaxAffineTypeError(f"path must be a str or a path, got "
                                     f"{type(path).__name__} {path!r}")
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(self.to_json())
            return
        if self.dim != 3:
            raise MaxAffineError(f"{path.suffix} mesh files hold 3-D surfaces; this level set "
                                 f"is in {self.dim}-D: save it as .json")
        if path.suffix.lower() not in (".ply", ".obj", ".stl", ".off", ".glb"):
            raise MaxAffineError(f"save: unknown mesh format {path.suffix!r}; use .ply, .obj, "
                                 ".stl, .off, .glb or .json")
        self.mesh().export(str(path))

    def summary(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "dim": self.dim,
            "vertices": int(self.vertices.shape[0]),
            "simplices": self.num_simplices,
            "measure": self.measure,
            "watertight": self.is_watertight,
        }

    def to_json(self) -> str:
        return json.dumps({
            "summary": self.summary(),
            "vertices": self.vertices.tolist(),
            "simplices": self.simplices.tolist(),
            "regions": self.regions.tolist(),
            "classes": None if self.classes is None else self.classes.tolist(),
        })

    def to_html(self, path: str | Path, *, title: str | None = None) -> Path:
        """Write a self-contained HTML page with this level set as a rotatable mesh
        (d = 3: triangles; d = 2: segments in the plane z = 0):
        :func:`maxaffine.explore.level_set_html`. Returns the path."""
        from ..explore import level_set_html, write_html

        return write_html(level_set_html(self, title=title), path)

    def plot(self, ax=None, **kwargs: Any):
        """d = 3: the surface (matplotlib 3-D); d = 2: the segments."""
        from .._plotting import plot_level_set

        if self.dim not in (2, 3):
            raise MaxAffineError(f"plot draws level sets in 2-D and 3-D; this one is "
                                 f"{self.dim}-D (see summary())")
        return plot_level_set(self, ax=ax, **kwargs)


def _separate(cx: Complex, functions: list[np.ndarray] | None, tols: list[float],
              binary: bool, what: str) -> LevelSet:
    """The facets between cells of different labels once a copy of the complex is cut
    along ``functions`` (their values at the vertices; binary: one function, labels
    its sides) or, for ``functions`` None, the tournament ``f_j - max_{i<j} f_i``
    of the outputs (labels: the argmax)."""
    lat = copy.deepcopy(cx._lattice)
    d = lat.dim
    outs = cx.vertex_outputs.numpy()
    if binary:
        lat.carry = functions[0][:, None].copy()
        steps = 1
    else:
        lat.carry = outs.copy()
        steps = outs.shape[1] - 1
    label = np.zeros(lat.num_cells, dtype=np.int64)
    owner = np.arange(lat.num_cells)  # the complex's region each cell lies in
    for j in range(1, steps + 1):
        if binary:
            g = lat.carry[:, 0].copy()
        else:
            g = lat.carry[:, j] - lat.carry[:, :j].max(1)
        nv = lat.nv
        cell_pos, minus = lat.cut(g, tols[0])
        if binary:
            lat.carry[nv:, 0] = 0.0
        cut = np.flatnonzero(minus >= 0)
        label = np.concatenate([np.where(cell_pos, j, label), label[cut]])
        owner = np.concatenate([owner, owner[cut]])
    cof = lat.incidence(d).T.tocsr()  # (d-1)-faces x cells
    two = np.flatnonzero(np.diff(cof.indptr) == 2)
    pairs = cof.indices[cof.indptr[two][:, None] + np.arange(2)]
    differ = label[pairs[:, 0]] != label[pairs[:, 1]]
    faces, pairs = two[differ], pairs[differ]
    # the higher label's cell (the positive side) orients each face
    hi = np.where(label[pairs[:, 0]] > label[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
    lo_ = np.where(hi == pairs[:, 0], pairs[:, 1], pairs[:, 0])
    if d == 1:
        simp = faces[:, None]  # vertices
        owner_s = np.arange(faces.shape[0])
        pts = lat.x
        verts = [pts]
    else:
        owner_s, chain, ends = lat.flags(d - 1, faces)
        verts = [lat.x]
        cols = []
        at = lat.nv
        for i, ch in enumerate(chain):  # centroids of the faces of each chain level
            k = d - 1 - i
            uniq, inv = np.unique(ch, return_inverse=True)
            verts.append(lat.centroids(k)[uniq])
            cols.append(at + inv)
            at += uniq.shape[0]
        simp = np.stack([*cols, ends[:, 0], ends[:, 1]], 1)
        pts = np.concatenate(verts)
        # orientation: the normal (by the right-hand rule) points to the higher label
        cell_c = lat.centroids(d)
        direction = cell_c[hi[owner_s]] - pts[simp[:, 0]]
        mat = np.concatenate([(pts[simp[:, 1:]] - pts[simp[:, :1]]),
                              direction[:, None, :]], 1)
        flip = np.linalg.det(mat) < 0
        simp[flip, -2:] = simp[flip][:, [-1, -2]]
    # keep the used vertices only
    used, inv = np.unique(simp, return_inverse=True)
    simp = inv.reshape(simp.shape)
    pts = pts[used]
    classes = None
    if not binary:
        classes = torch.from_numpy(np.stack([label[lo_], label[hi]], 1)[owner_s])
    return LevelSet(vertices=torch.from_numpy(np.ascontiguousarray(pts)),
                    simplices=torch.from_numpy(simp.astype(np.int64)),
                    regions=torch.from_numpy(owner[hi][owner_s].astype(np.int64)),
                    classes=classes, what=what)

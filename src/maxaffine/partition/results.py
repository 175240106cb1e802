"""The results of exact partitions: :class:`Partition` (a plane slice) and
:class:`SegmentPartition` (a segment), plain dataclasses of tensors with plots and
JSON."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._arguments import indices, integer, layer_index
from ..errors import MaxAffineError, MaxAffineTypeError
from ..graph import SplineGraph
from ..vq import Codes, unpack
from .boundary import _class_cells, _decision_boundary
from .domain import Slice


@dataclass(frozen=True)
class Partition:
    """The exact partition of a 2-D slice into the network's regions.

    Geometry in slice coordinates (s, t): ``vertices`` (V, 2); ``faces`` (F, W)
    vertex ids counter-clockwise, -1 padded, with ``face_sizes``; ``edges`` (E, 2)
    with ``edge_faces`` (E, 2) (-1: the domain's boundary) and ``edge_layer`` (E,)
    (index into ``layer_names`` of the first layer whose codes differ across the
    edge: the layer that created it; -1 on the domain boundary).
    Per face: ``packed`` (F, bytes) uint8, its codes packed (the convention of
    :meth:`maxaffine.Codes.packed`, layers as ``code_layout``); ``codes``, the
    same as a :class:`maxaffine.Codes` with one row per face (unpacked on first
    use: a byte per unit and face); ``areas``, ``interior`` points, and the
    output's affine map ``f(s, t) = slopes @ (s, t) + offsets`` with ``slopes``
    (F, C, 2), ``offsets`` (F, C). ``decision_boundary`` (S, 2, 2) segments where
    the argmax class changes (or the scalar output is zero) with
    ``boundary_classes`` (S, 2) and ``boundary_faces`` (S,), the face of each,
    computed on first use. ``tol``: the relative tolerance used; ``unresolved``
    (F,) bools: faces that hold regions narrower than it (merged in; the face
    carries its interior point's code and map), ``lost_regions`` how many such
    regions were found (see :func:`partition_plane`); ``seconds``: the time it took.
    """

    domain: Slice
    vertices: Tensor
    faces: Tensor
    face_sizes: Tensor
    edges: Tensor
    edge_faces: Tensor
    edge_layer: Tensor
    packed: Tensor
    code_layout: tuple[tuple[str, tuple[int, ...], int, int], ...]  # name, shape, R, bits/unit
    areas: Tensor
    interior: Tensor
    slopes: Tensor
    offsets: Tensor
    seconds: float = 0.0
    graph: SplineGraph | None = field(default=None, repr=False)
    tol: float = 0.0
    unresolved: Tensor | None = None
    lost_regions: int = 0

    def __post_init__(self) -> None:
        if self.unresolved is None:  # (frozen: set once, while it is being built)
            object.__setattr__(self, "unresolved",
                               torch.zeros(self.num_regions, dtype=torch.bool))

    @cached_property
    def _boundary(self) -> tuple[Tensor, Tensor, Tensor]:
        return _decision_boundary(self.vertices, self.faces, self.face_sizes, self.slopes,
                                  self.offsets)

    @property
    def decision_boundary(self) -> Tensor:
        """(S, 2, 2) segments where the argmax output changes (or the scalar output is
        zero); computed on first use."""
        return self._boundary[0]

    @property
    def boundary_classes(self) -> Tensor:
        """(S, 2) the two classes (low, high) on either side of each segment."""
        return self._boundary[1]

    @property
    def boundary_faces(self) -> Tensor:
        """(S,) the face each decision-boundary segment lies in."""
        return self._boundary[2]

    @property
    def num_regions(self) -> int:
        return self.faces.shape[0]

    @cached_property
    def codes(self) -> Codes:
        """The faces' codes (one row per face) as a :class:`maxaffine.Codes`, unpacked
        from :attr:`packed` on first use."""
        layout = self.code_layout
        names, shapes, pieces, bits = (tuple(x[i] for x in layout) for i in range(4))
        return Codes(names, unpack(self.packed, shapes, bits), pieces, bits, self.num_regions)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(name for name, *_ in self.code_layout)

    def polygon(self, i: int) -> Tensor:
        """Corners (k, 2) of face ``i``, counter-clockwise."""
        i = integer(i, "i", minimum=-self.num_regions, maximum=self.num_regions - 1,
                    meaning=f"a face index; the partition has {self.num_regions} faces")
        return self.vertices[self.faces[i, : int(self.face_sizes[i])]]

    def predicted(self) -> Tensor:
        """(F,) argmax output on each face's interior point."""
        out = torch.einsum("fcd,fd->fc", self.slopes, self.interior) + self.offsets
        return out.argmax(1) if out.shape[1] > 1 else (out[:, 0] > 0).long()

    def class_cells(self) -> tuple[list[Tensor], Tensor]:
        """Regions split further by the decision boundary: polygons (list of (k, 2))
        and their class. Faces without a boundary inside are returned whole."""
        cells = _class_cells(self.vertices, self.faces, self.face_sizes, self.slopes,
                             self.offsets)
        whole = torch.ones(self.num_regions, dtype=torch.bool)
        whole[cells.face] = False
        idx = torch.nonzero(whole).flatten()
        bounds = cells.start.tolist()
        polys = [self.polygon(int(i)) for i in idx] + [
            cells.xy[bounds[m]: bounds[m + 1]].to(self.vertices.dtype)
            for m in range(cells.face.shape[0])]
        return polys, torch.cat([self.predicted()[idx], cells.cls])

    def layer_boundaries(self, layer: int | str) -> Tensor:
        """Segments (S, 2, 2) of the edges created by ``layer`` (a name or an index)."""
        i = layer_index(layer, self.layer_names)
        return self.vertices[self.edges[self.edge_layer == i]]

    def input_space_maps(self, faces: Tensor | None = None):
        """The output's affine map in *input space* on the given faces (default all):
        a :class:`maxaffine.AffineMap` at their interior points."""
        from ..affine import affine_map

        if self.graph is None:
            raise MaxAffineError("this partition was loaded without its model")
        idx = (torch.arange(self.num_regions) if faces is None
               else indices(faces, self.num_regions, "faces"))
        return affine_map(self.graph, self.domain.to_input(self.interior[idx]))

    def summary(self) -> dict[str, Any]:
        per_layer = torch.bincount(self.edge_layer + 1, minlength=len(self.layer_names) + 1)
        return {
            "regions": self.num_regions,
            "vertices": int(self.vertices.shape[0]),
            "edges": int(self.edges.shape[0]),
            "domain_area": self.domain.area,
            "area_sum": float(self.areas.sum()),
            "mean_area": float(self.areas.mean()),
            "decision_boundary_segments": int(self.decision_boundary.shape[0]),
            "decision_boundary_length": float(
                (self.decision_boundary[:, 1] - self.decision_boundary[:, 0]).norm(dim=1).sum()),
            "edges_per_layer": {n: int(per_layer[i + 1])
                                for i, n in enumerate(self.layer_names)},
            "tol": self.tol,
            "unresolved_faces": int(self.unresolved.sum()),
            "lost_regions": self.lost_regions,
            "seconds": self.seconds,
        }

    def plot(self, ax=None, color_by: str = "region", **kwargs: Any):
        """Draw the faces coloured by ``'region'``, ``'layer'`` (edges coloured by the
        layer that created them), ``'class'`` (predicted class) or ``'output'``
        (max output), with the decision boundary bold and the anchors marked;
        ``centroids`` (F, 2): a point to mark in each face, e.g. the power-diagram
        centroids ``maxaffine.power.face_centroids(part)[0]``."""
        from .._plotting import plot_partition

        return plot_partition(self, ax=ax, color_by=color_by, **kwargs)

    def to_json(self) -> str:
        faces = [self.faces[i, : int(self.face_sizes[i])].tolist()
                 for i in range(self.num_regions)]
        return json.dumps({
            "summary": self.summary(),
            "layer_names": list(self.layer_names),
            "vertices": self.vertices.tolist(),
            "faces": faces,
            "packed": [bytes(r.tolist()).hex() for r in self.packed],
            "areas": self.areas.tolist(),
            "edges": self.edges.tolist(),
            "edge_layer": self.edge_layer.tolist(),
            "decision_boundary": self.decision_boundary.tolist(),
            "boundary_classes": self.boundary_classes.tolist(),
        })

    def to_html(self, path: str | Path, *, title: str | None = None,
                max_outputs: int = 10) -> Path:
        """Write an interactive, self-contained HTML page of this partition (pan, zoom,
        hover a region for its code, area, class and affine map; edges by layer with
        toggles; decision boundary; anchors): :func:`maxaffine.explore.partition_html`.
        ``max_outputs``: the output rows of each region's map shown. Returns the path."""
        from ..explore import partition_html, write_html

        return write_html(partition_html(self, title=title, max_outputs=max_outputs), path)

    def save(self, path: str | Path) -> None:
        """Write JSON (``.json``), all tensors with torch (``.pt``) or numpy arrays
        (``.npz``, with the code layout as a JSON string)."""
        if not isinstance(path, str | os.PathLike):
            raise MaxAffineTypeError(f"path must be a str or a path, got "
                                     f"{type(path).__name__} {path!r}")
        path = Path(path)
        state = {k: v for k, v in self.__dict__.items()
                 if isinstance(v, Tensor) and not k.startswith("_")}
        if path.suffix == ".json":
            path.write_text(self.to_json())
        elif path.suffix == ".pt":
            state["code_layout"] = self.code_layout
            torch.save(state, path)
        elif path.suffix == ".npz":
            import numpy as np

            np.savez_compressed(path, code_layout=json.dumps(self.code_layout),
                                **{k: v.detach().numpy() for k, v in state.items()})
        else:
            raise MaxAffineError(f"save: unknown format {path.suffix!r} of {str(path)!r}; use "
                                 ".json, .pt or .npz")


@dataclass(frozen=True)
class SegmentPartition:
    """The exact partition of the segment ``x0 + t (x1 - x0)``, t in [0, 1].

    ``breakpoints`` (P + 1,): 0 = t_0 < ... < t_P = 1; piece ``i`` is
    [t_i, t_{i+1}] with codes ``codes`` (per piece) and output
    ``f = offsets[i] + slopes[i] * t`` (both (P, C)).
    """

    x0: Tensor
    x1: Tensor
    breakpoints: Tensor
    codes: Codes
    slopes: Tensor
    offsets: Tensor

    @property
    def num_regions(self) -> int:
        return self.breakpoints.shape[0] - 1

    @property
    def lengths(self) -> Tensor:
        """Length of each piece in input space."""
        return self.breakpoints.diff() * float((self.x1 - self.x0).double().norm())

    def summary(self) -> dict[str, Any]:
        """Regions, the segment's length, the shortest and longest piece, outputs, and
        per layer the regions its codes alone split the segment into."""
        packed = [self.codes.packed([i]) for i in range(len(self.codes.names))]
        lengths = self.lengths
        return {
            "regions": self.num_regions,
            "length": float((self.x1 - self.x0).double().norm()),
            "min_piece_length": float(lengths.min()), "max_piece_length": float(lengths.max()),
            "outputs": int(self.slopes.shape[1]),
            "layer_regions": {n: 1 + int((p[1:] != p[:-1]).any(1).sum()) if len(p) > 1 else 1
                              for n, p in zip(self.codes.names, packed, strict=True)},
        }

    def to_json(self) -> str:
        """The summary, the breakpoints, each piece's packed codes (hex) and map."""
        return json.dumps({
            **self.summary(),
            "breakpoints": self.breakpoints.tolist(),
            "packed": [bytes(r.tolist()).hex() for r in self.codes.packed()],
            "slopes": self.slopes.detach().tolist(), "offsets": self.offsets.detach().tolist(),
        })

    def plot(self, ax=None, outputs: list[int] | None = None):
        """The outputs along the segment, with the region breakpoints."""
        import matplotlib.pyplot as plt

        n_out = self.slopes.shape[1]
        cols = (range(n_out) if outputs is None
                else indices(outputs, n_out, "outputs").tolist())
        if ax is None:
            _, ax = plt.subplots(figsize=(7, 3))
        t = self.breakpoints.double()
        for c in cols:
            left = self.offsets[:, c] + self.slopes[:, c] * t[:-1]
            right = self.offsets[:, c] + self.slopes[:, c] * t[1:]
            ys = torch.cat([left[:1], right])
            ax.plot(t.numpy(), ys.detach().numpy(), lw=1, label=f"output {c}")
        for b in t[1:-1]:
            ax.axvline(float(b), color="0.85", lw=0.5, zorder=0)
        ax.set_xlabel("t")
        ax.set_title(f"{self.num_regions} regions along the segment")
        return ax

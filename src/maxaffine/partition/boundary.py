"""Decision boundaries and class cells of a plane partition: each face the argmax
class changes in is clipped into the cells of the classes that can win there
(only those no vertex winner dominates on the face; compiled)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class _Cells:
    """Class cells of the faces the decision boundary crosses (CSR): cell ``m`` is
    class ``cls[m]`` inside face ``face[m]``, corners ``xy[start[m]:start[m + 1]]``
    counter-clockwise, and ``label`` per corner: the other class of the clip line
    the edge leaving it lies on, -1 on the face's own boundary."""

    face: Tensor
    cls: Tensor
    start: Tensor
    xy: Tensor
    label: Tensor


def _class_cells(vertices: Tensor, faces: Tensor, sizes: Tensor, slopes: Tensor,
                 offsets: Tensor) -> _Cells:
    """Split the faces whose vertices disagree on the argmax output into class cells
    (:func:`maxaffine.partition.kernels.class_cells`: only the classes no vertex winner
    dominates on a face are clipped against each other, so a 1,000-class head
    costs about what a 10-class one does)."""
    from . import kernels as kern

    face, cls, start, xy, label = kern.class_cells(
        faces.contiguous().numpy(), sizes.contiguous().numpy(), vertices.contiguous().numpy(),
        slopes.contiguous().numpy(), offsets.contiguous().numpy())
    return _Cells(*(torch.from_numpy(x) for x in (face, cls, start, xy, label)))


def _decision_boundary(vertices: Tensor, faces: Tensor, sizes: Tensor, slopes: Tensor,
                       offsets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Segments (S, 2, 2) where the argmax output changes (C > 1) or the output is 0
    (C = 1): edges of the class cells (:func:`_class_cells`) that lie on a clip
    line, each once (from the cell of the higher class); with the class pair
    (low, high) (S, 2) and the face (S,) of each."""
    cells = _class_cells(vertices, faces, sizes, slopes, offsets)
    m = cells.face.shape[0]
    count = cells.start.diff()
    owner = torch.repeat_interleave(torch.arange(m), count)
    corner = torch.arange(cells.xy.shape[0])
    following = torch.where(corner + 1 < cells.start[1:][owner], corner + 1,
                            cells.start[:-1][owner])
    cls = cells.cls[owner]
    on = (cells.label >= 0) & (cells.label < cls)
    a, b = cells.xy[on], cells.xy[following[on]]
    pairs = torch.stack([cells.label[on], cls[on]], 1)
    where = cells.face[owner[on]]
    extent = float((vertices.max(0).values - vertices.min(0).values).max()) if len(
        vertices) else 0.0
    ok = (b - a).norm(dim=1) > 1e-12 * extent
    return (torch.stack([a, b], 1)[ok].to(vertices.dtype), pairs[ok], where[ok])

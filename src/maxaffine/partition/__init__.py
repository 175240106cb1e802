"""Exact partitions of input space into the regions of a max-affine spline network.

The VQ codes of a MASO network partition input space into convex regions
(Balestriero & Baraniuk, "A Spline Theory of Deep Networks", ICML 2018, sec. 5;
Balestriero et al., "The Geometry of Deep Networks: Power Diagram
Subdivision", NeurIPS 2019, Thm. 3: layer by layer, each region of layers
1..l-1 is subdivided by layer l).  We compute that partition exactly on a
segment (:func:`partition_segment`), on a convex polygon of a 2-D plane
(:func:`partition_plane`) and, for networks with a low-dimensional input, at
full dimension in a box or polytope (:func:`partition_box`,
:func:`partition_polytope`: the whole polyhedral complex), layer by layer:

1. The network is continuous, so each nonlinearity's pre-activation at every
   vertex of the current partition comes from one plain batched forward pass.
2. Inside a face (of the layer's start) the pre-activation is affine, so the
   face's boundaries of this layer are lines: ``z_k = breakpoint`` (ReLU, leaky
   ReLU, PReLU, abs: 0; Hardtanh: both bounds), ``a = b`` (``torch.maximum``), or,
   for max-pooling, the ties ``e_a = e_b`` of two window entries that can both be
   the window's maximum in the face; pieces of one region split by ties of
   non-maximal entries are merged at the end of the layer.
3. Every face is cut by the lines crossing it, all faces in lockstep (step i
   cuts each face by its own i-th line; no Python loop over faces or units:
   the batch's step loop is compiled, :mod:`maxaffine.partition.kernels`).
   A new vertex is keyed by (the layer-start edge or chord it splits, the line),
   so the faces on both sides of an edge share it whatever order they are cut
   in: the subdivision stays conforming (:mod:`maxaffine.partition.mesh`).

Each face's codes are read off the sides of the lines at its vertices; the
output's affine map on a face is fit through the outputs at its vertices (exact:
the output is affine there).

At full dimension the same layer-by-layer cuts run on the complex's face lattice
(:mod:`.lattice`, compiled loops in :mod:`.kernels_nd`): every k-face lists its
facets, and a cut splits each face it crosses into two parts and a section,
reading only the signs of the unit's values at the vertices (:mod:`.box`; results
:class:`Complex` and :class:`LevelSet` in :mod:`.complex`). Around one input, at
any dimension, :mod:`.near` walks the regions that meet a ball from facet to facet
(:func:`regions_near`, :class:`RegionSet`; linear programs with HiGHS).

The package: :mod:`.domain` (:class:`Slice`), :mod:`.plane` (the plane driver),
:mod:`.values` (the network's values at the vertices), :mod:`.mesh` and
:mod:`.kernels` (the batched subdivision and its compiled loops),
:mod:`.boundary` (decision boundary, class cells), :mod:`.resolution` (regions
below the tolerance), :mod:`.segment` (:func:`partition_segment`),
:mod:`.results` (:class:`Partition`, :class:`SegmentPartition`).
"""

from .box import partition_box, partition_polytope
from .complex import Complex, LevelSet
from .domain import Slice
from .near import RegionSet, regions_near
from .plane import partition_plane
from .results import Partition, SegmentPartition
from .segment import partition_segment

__all__ = ["Complex", "LevelSet", "Partition", "RegionSet", "SegmentPartition", "Slice",
           "partition_box", "partition_plane", "partition_polytope", "partition_segment",
           "regions_near"]

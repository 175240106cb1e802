"""maxaffine: the max-affine spline view of deep networks.

A network of affine layers and piecewise-affine convex nonlinearities is a
composition of max-affine spline operators (Balestriero & Baraniuk, ICML 2018):
conditioned on its input it is the affine map ``f(x) = A[x] x + B[x]``.
"""

from .affine import AffineMap, affine_map
from .errors import MaxAffineError, UnsupportedOperation
from .graph import SplineGraph, trace
from .inference import soften, vq_posterior
from .ops import register_op, supported_ops
from .partition import Partition, SegmentPartition, Slice, partition_plane, partition_segment
from .vq import Codes, codes

__version__ = "0.1.0"

__all__ = [
    "AffineMap",
    "Codes",
    "MaxAffineError",
    "Partition",
    "SegmentPartition",
    "Slice",
    "SplineGraph",
    "UnsupportedOperation",
    "affine_map",
    "codes",
    "partition_plane",
    "partition_segment",
    "register_op",
    "soften",
    "supported_ops",
    "trace",
    "vq_posterior",
]

"""maxaffine: the max-affine spline view of deep networks.

A network of affine layers and piecewise-affine convex nonlinearities is a
composition of max-affine spline operators (Balestriero & Baraniuk, ICML 2018):
conditioned on its input it is the affine map ``f(x) = A[x] x + B[x]``.
"""

from .affine import AffineMap, affine_map
from .distances import vq_distance, vq_knn
from .errors import MaxAffineError, MaxAffineTypeError, MaxAffineWarning, UnsupportedOperation
from .graph import SplineGraph, trace
from .inference import soften, vq_posterior
from .ops import register_op, supported_ops
from .partition import Partition, SegmentPartition, Slice, partition_plane, partition_segment
from .power import layer_power_diagram, power_diagram
from .stats import (
    boundary_curvature,
    boundary_distance,
    local_complexity,
    region_density,
    region_sharing,
)
from .vq import Codes, codes

__version__ = "0.1.0"

__all__ = [
    "AffineMap",
    "Codes",
    "MaxAffineError",
    "MaxAffineTypeError",
    "MaxAffineWarning",
    "Partition",
    "SegmentPartition",
    "Slice",
    "SplineGraph",
    "UnsupportedOperation",
    "affine_map",
    "boundary_curvature",
    "boundary_distance",
    "codes",
    "layer_power_diagram",
    "local_complexity",
    "partition_plane",
    "partition_segment",
    "power_diagram",
    "region_density",
    "region_sharing",
    "register_op",
    "soften",
    "supported_ops",
    "trace",
    "vq_distance",
    "vq_knn",
    "vq_posterior",
]

"""maxaffine: the max-affine spline view of deep networks.

A network of affine layers and piecewise-affine convex nonlinearities is a
composition of max-affine spline operators (Balestriero & Baraniuk, ICML 2018):
conditioned on its input it is the affine map ``f(x) = A[x] x + B[x]``.

The functions and the result types they return are imported here; the submodules
(``maxaffine.losses``, ``maxaffine.nn``, ``maxaffine.experiments``, ...) are
attributes too, imported on first use (PEP 562), so ``import maxaffine`` stays
light. docs/architecture.md says which module owns what.
"""

import importlib as _importlib

from .affine import AffineMap, affine_map
from .curvature import HessianComplexity, LossHessian, hessian_complexity, loss_hessian
from .distances import VQIndex, vq_distance, vq_index, vq_knn
from .errors import MaxAffineError, MaxAffineTypeError, MaxAffineWarning, UnsupportedOperation
from .graph import Between, Evaluation, Layer, Pause, SplineGraph, trace
from .inference import VQPosterior, soften, vq_posterior
from .ops import register_op, supported_ops
from .partition import (
    Complex,
    LevelSet,
    Partition,
    RegionSet,
    SegmentPartition,
    Slice,
    partition_box,
    partition_plane,
    partition_polytope,
    partition_segment,
    regions_near,
)
from .power import PowerCells, PowerDiagram, power_cells, power_diagram
from .scanning import partition_many, scan
from .stats import (
    BoundaryCurvature,
    BoundaryDistance,
    LocalComplexity,
    RegionDensity,
    RegionSharing,
    boundary_curvature,
    boundary_distance,
    local_complexity,
    region_density,
    region_sharing,
)
from .vq import Codes, codes

__version__ = "0.1.0"

# The public submodules, reachable as attributes of the package (``ma.losses``).
_SUBMODULES: tuple[str, ...] = (
    "affine", "cli", "conservation", "curvature", "datasets", "demo", "distances", "errors",
    "experiments", "explore", "generative", "graph",
    "inference", "kernels", "losses", "models", "nn", "ops", "orthogonal", "partition", "power",
    "scanning", "stats", "training", "vq",
)


def __getattr__(name: str):
    """A public submodule, imported on first access (PEP 562)."""
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES))


__all__ = [
    "AffineMap",
    "Between",
    "BoundaryCurvature",
    "BoundaryDistance",
    "Codes",
    "Complex",
    "Evaluation",
    "HessianComplexity",
    "Layer",
    "LevelSet",
    "LocalComplexity",
    "LossHessian",
    "MaxAffineError",
    "MaxAffineTypeError",
    "MaxAffineWarning",
    "Partition",
    "Pause",
    "PowerCells",
    "PowerDiagram",
    "RegionDensity",
    "RegionSet",
    "RegionSharing",
    "SegmentPartition",
    "Slice",
    "SplineGraph",
    "UnsupportedOperation",
    "VQIndex",
    "VQPosterior",
    "affine_map",
    "boundary_curvature",
    "boundary_distance",
    "codes",
    "hessian_complexity",
    "local_complexity",
    "loss_hessian",
    "partition_box",
    "partition_many",
    "partition_plane",
    "partition_polytope",
    "partition_segment",
    "power_cells",
    "power_diagram",
    "region_density",
    "region_sharing",
    "regions_near",
    "register_op",
    "scan",
    "soften",
    "supported_ops",
    "trace",
    "vq_distance",
    "vq_index",
    "vq_knn",
    "vq_posterior",
]

"""Drop-in PyTorch modules the spline theory proposes.

Import as ``import maxaffine.nn as mnn`` (distinct from ``torch.nn``).
"""

from .betavq import (
    Abs,
    BetaVQ,
    BetaVQPool1d,
    BetaVQPool2d,
    beta_vq,
    hard_selection,
    soft_selection,
    vq_selection,
)
from .hamming import GHN, GHConv2d, GHLinear, fuzzy_xor
from .sparse import (
    OrthogonalityReport,
    SparseCoding,
    SparseCodingConv2d,
    nearest_orthonormal,
    orthogonality_report,
)

__all__: list[str] = [
    "GHN",
    "Abs",
    "BetaVQ",
    "BetaVQPool1d",
    "BetaVQPool2d",
    "GHConv2d",
    "GHLinear",
    "OrthogonalityReport",
    "SparseCoding",
    "SparseCodingConv2d",
    "beta_vq",
    "fuzzy_xor",
    "hard_selection",
    "nearest_orthonormal",
    "orthogonality_report",
    "soft_selection",
    "vq_selection",
]

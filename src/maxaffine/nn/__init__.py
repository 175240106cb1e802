"""Drop-in PyTorch modules the spline theory proposes.

Import as ``import maxaffine.nn as mnn`` (distinct from ``torch.nn``).
"""

__all__: list[str] = []

"""Hard orthogonality: keep a layer's (flattened) filters orthonormal during training.

Orthogonal filters remove the cross terms of a layer's joint VQ, so per-unit
inference (ReLU, max-pool) is the optimal joint inference (Balestriero &
Baraniuk, "From Hard to Soft", ICLR 2019); orthonormal class vectors make the
last layer's templates orthogonal in feature space ("A Spline Theory of Deep
Networks", ICML 2018).  :func:`orthogonal_filters` enforces ``W W^T = I`` on the
(out, fan_in) matrix of flattened filters with a parametrization
(``torch.nn.utils.parametrize``), so any optimizer keeps the constraint exactly.

``n`` filters of dimension ``d`` can be mutually orthogonal (and nonzero) only
if ``n <= d``: R^d holds at most d such vectors, and Gram-Schmidt on more would
produce ``n - d`` zero filters.  That case is refused; use fewer filters, the
soft penalty :func:`maxaffine.losses.filter_orthogonality` (whose minimum is
then positive), or ``torch.nn.utils.parametrizations.orthogonal``, which makes
the *columns* orthonormal instead (``W^T W = I``: a tight frame, not orthogonal
filters).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

from .errors import MaxAffineError

__all__ = ["orthogonal_filters"]


class OrthonormalFilters(nn.Module):
    """Parametrization: filters (out, *fan_in), grouped as (groups, out / groups,
    fan_in), mapped to orthonormal rows per group by a QR factorisation of the
    transpose with signs fixed (``diag(R) > 0``), so orthonormal filters map to
    themselves and ``right_inverse`` is the identity."""

    def __init__(self, groups: int = 1):
        super().__init__()
        self.groups = groups

    def forward(self, weight: Tensor) -> Tensor:
        g = self.groups
        w = weight.reshape(g, weight.shape[0] // g, -1)  # (G, n, d), n <= d
        q, r = torch.linalg.qr(w.transpose(1, 2))  # (G, d, n), (G, n, n)
        sign = torch.where(r.diagonal(dim1=1, dim2=2) < 0, -1.0, 1.0).to(q.dtype)
        return (q * sign.unsqueeze(1)).transpose(1, 2).reshape(weight.shape)

    def right_inverse(self, weight: Tensor) -> Tensor:
        return weight


def orthogonal_filters(module: nn.Module, name: str = "weight") -> nn.Module:
    """Constrain ``module``'s filters to be orthonormal (``W W^T = I`` on the
    flattened filters) for the rest of training; returns ``module``.

    ``nn.Linear``: ``torch.nn.utils.parametrizations.orthogonal`` (rows
    orthonormal when out_features <= in_features). ``nn.Conv1d/2d/3d``: each
    filter is flattened to (in_channels / groups) * prod(kernel_size) and the
    filters of each group are orthonormalised by :class:`OrthonormalFilters`
    (torch's ``orthogonal`` would treat a conv weight as a batch of
    kernel-sized matrices).  The traced spline graph sees the parametrized
    weight, so affine maps and codes keep working.  Raises
    :class:`~maxaffine.MaxAffineError` when filters outnumber their dimension
    (impossible: see the module docstring).

    >>> lin = orthogonal_filters(torch.nn.Linear(6, 4))
    >>> torch.allclose(lin.weight @ lin.weight.T, torch.eye(4), atol=1e-5)
    True
    """
    if not isinstance(module, nn.Module):
        raise MaxAffineError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor) or weight.dim() < 2:
        raise MaxAffineError(
            f"{type(module).__name__}.{name} must be a weight tensor with at least 2 "
            f"dimensions (out, *fan_in); got {type(weight).__name__}"
        )
    conv = isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
    if not (conv or isinstance(module, nn.Linear)):
        raise MaxAffineError(
            f"orthogonal_filters takes an nn.Linear or nn.Conv1d/2d/3d, got "
            f"{type(module).__name__}"
        )
    groups = module.groups if conv else 1
    n = weight.shape[0] // groups
    d = math.prod(weight.shape[1:])
    if n > d:
        what = f"{n} filters" + (" per group" if groups > 1 else "")
        raise MaxAffineError(
            f"{type(module).__name__}.{name} has {what} of dimension {d}: at most {d} "
            f"nonzero vectors of R^{d} are mutually orthogonal, so Gram-Schmidt would leave "
            f"{n - d} filters zero. Use at most {d} filters, the soft penalty "
            "maxaffine.losses.filter_orthogonality (its minimum is then > 0), or "
            "torch.nn.utils.parametrizations.orthogonal for orthonormal columns "
            "(W^T W = I, a tight frame rather than orthogonal filters)"
        )
    if parametrize.is_parametrized(module, name):
        raise MaxAffineError(f"{type(module).__name__}.{name} is already parametrized")
    if conv:
        parametrize.register_parametrization(module, name, OrthonormalFilters(groups))
        return module
    return parametrizations.orthogonal(module, name)

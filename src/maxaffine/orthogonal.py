"""Hard orthogonality: keep a layer's (flattened) filters orthonormal during training.

Orthogonal filters remove the cross terms of a layer's joint VQ, so per-unit
inference (ReLU, max-pool) is the optimal joint inference (Balestriero &
Baraniuk, "From Hard to Soft", ICLR 2019); orthonormal class vectors make the
last layer's templates orthogonal in feature space ("A Spline Theory of Deep
Networks", ICML 2018); an orthonormal dictionary makes a ReLU layer the exact
MAP code of sparse coding (Bowren 2021, :mod:`maxaffine.nn.sparse`).
:func:`orthogonal_filters` enforces ``W W^T = I`` on the (out, fan_in) matrix of
flattened filters with a parametrization (``torch.nn.utils.parametrize``) that
is orthonormal for *every* value of its parameter, so any optimizer, weight
decay included, keeps the constraint exactly.

The map (:class:`OrthonormalFilters`) is a product of Householder reflections
``H(v) = I - 2 v v^T / (v^T v)``, each orthogonal for every ``v != 0``.  Per group,
with n filters of dimension d (n <= d), the free parameter ``X`` (the weight's
shape, flattened to n x d) gives the reflectors ``v_j = e_j + u_j``, ``u_j`` the
entries of row j of ``X`` right of the diagonal (so ``v_j^T v_j >= 1``: no value of
``X`` is singular), and

    W^T = B H(v_1) H(v_2) ... H(v_n) [I_n; 0] diag(s),

where ``B`` (d x d orthogonal, itself n reflections) and ``s in {-1, +1}^n`` are
buffers read off the Householder QR of the weight when it is assigned (at
registration: torch's initial weight).  So ``X = 0`` is that weight
orthonormalised (the Q of its QR factorisation: Gram-Schmidt of its rows), the
optimizer works in a chart centred there (as torch's trivialization does), and
weight decay pulls towards it.  The products are evaluated in the compact WY form
``I - V S^{-1} V^T`` (n-column matrix products and an n x n triangular solve whose
diagonal is ``v_j^T v_j / 2 >= 1/2``), each reflector rescaled (``H(v) = H(c v)``)
so that no finite value overflows, and polished by one Newton-Schulz step, the
identity in exact arithmetic: ``W W^T = I`` to working precision for every finite
``X``, zero, rank-deficient, tiny or huge.  (torch's
``parametrizations.orthogonal`` multiplies its Householder product by
``int(diag X)``, which weight decay or any update moving the diagonal off +-1 turns
into zero rows; its matrix-exponential map costs O(d^3) and loses orthogonality
in float32 for large ``X``.)

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
from torch.nn.utils import parametrize

from ._arguments import check_tensor
from .errors import MaxAffineError, MaxAffineTypeError

__all__ = ["orthogonal_filters"]


def _householder_frame(tails: Tensor) -> Tensor:
    """``H(v_1) ... H(v_n) [I_n; 0]`` for ``v_j = e_j + tails[..., :, j]``: tails
    (..., d, n), d >= n, strictly lower triangular -> (..., d, n) orthonormal columns
    (``-[I_n; 0]`` at ``tails = 0``).

    Compact WY form (Joffrain et al., "Accumulating Householder transformations,
    revisited", 2006): ``[I_n; 0] - V S^{-1} V_1^T`` with ``S = triu(V^T V, 1) +
    diag(V^T V) / 2`` and ``V_1`` the top n rows of ``V``.  Each ``v_j`` is divided by
    ``c_j = max(1, max|tail_j|)`` (``H(v) = H(v / c)``), so no finite value overflows,
    and the diagonal ``1 / c_j`` of ``V`` is kept out of the matrix products, so small
    tails are not rounded against 1."""
    n = tails.shape[-1]
    eye = torch.eye(n, dtype=tails.dtype, device=tails.device)
    r = 1 / tails.detach().abs().amax(-2, keepdim=True).clamp_min(1)  # (..., 1, n)
    tails = tails * r  # V = diag-part r + tails
    head = tails[..., :n, :]
    gram = tails.mT @ tails  # V^T V = diag(r^2) + r head + head^T r + gram
    diag = (r.squeeze(-2).square() + gram.diagonal(dim1=-2, dim2=-1)) / 2
    s = (gram + head.mT * r).triu(1) + torch.diag_embed(diag)
    y = torch.linalg.solve_triangular(s, eye * r + head.mT, upper=True)  # S^{-1} V_1^T
    return torch.cat([eye - r.mT * y - head @ y, -(tails[..., n:, :] @ y)], dim=-2)


class OrthonormalFilters(nn.Module):
    """Parametrization: filters (out, *fan_in), grouped as (groups, n = out / groups,
    d = fan_in), n <= d, mapped to orthonormal rows per group by
    ``W^T = B H(v_1) ... H(v_n) [I_n; 0] diag(s)``, ``v_j = e_j + u_j`` with ``u_j``
    the part of row j of ``X`` (flattened to n x d) right of the diagonal (module
    docstring).  Orthonormal for every finite ``X``.

    Buffers, set by :meth:`right_inverse` (called by ``register_parametrization``
    and on every assignment ``module.weight = w``): ``B = I - base_w base_v^T``
    (compact WY form of the reflections of the Householder QR of ``w^T``;
    ``base_v``, ``base_w``: (groups, d, n)) and ``signs`` ``s`` (groups, n).
    ``right_inverse(w)`` returns ``X = 0``, where the weight is ``w``
    orthonormalised: ``w`` itself when its rows are already orthonormal, the Q of
    its QR factorisation (``diag(R) >= 0``) otherwise."""

    base_v: Tensor
    base_w: Tensor
    signs: Tensor

    def __init__(self, groups: int = 1):
        super().__init__()
        self.groups = groups
        for name in ("base_v", "base_w", "signs"):
            self.register_buffer(name, None)

    def _frames(self, weight: Tensor) -> Tensor:
        g = self.groups
        return weight.reshape(g, weight.shape[0] // g, math.prod(weight.shape[1:])).mT

    def forward(self, x: Tensor) -> Tensor:
        q = _householder_frame(self._frames(x).tril(-1))  # (G, d, n)
        q = (q - self.base_w @ (self.base_v.mT @ q)) * self.signs.unsqueeze(-2)
        eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
        q = q - q @ (q.mT @ q - eye) / 2  # Newton-Schulz: the identity when q^T q = I
        return q.mT.reshape(x.shape)

    @torch.no_grad()
    def right_inverse(self, weight: Tensor) -> Tensor:
        frames = self._frames(weight)
        a, tau = torch.geqrf(frames.double())  # w^T = H'_1 ... H'_n R
        d, n = frames.shape[-2:]
        v = a.tril(-1) + torch.eye(d, n, dtype=a.dtype, device=a.device)
        gram = v.mT @ v
        s = gram.triu(1) + torch.diag_embed(gram.diagonal(dim1=-2, dim2=-1) / 2)
        self.base_v = v.to(weight.dtype)
        self.base_w = torch.linalg.solve_triangular(s, v, upper=True, left=False).to(weight.dtype)
        # LAPACK's H'_j is the identity where tau_j = 0 (nothing below the diagonal), but
        # B uses the reflection H(e_j) there: flip those columns.  With diag(R) >= 0 and
        # H(v_1) ... H(v_n) [I_n; 0] = -[I_n; 0] at X = 0, the weight at X = 0 is w's Q.
        flip = torch.where(tau == 0, -1.0, 1.0) * torch.where(a.diagonal(dim1=-2, dim2=-1) < 0,
                                                              -1.0, 1.0)
        self.signs = (-flip).to(weight.dtype)
        return torch.zeros_like(weight)


def orthogonal_filters(module: nn.Module, name: str = "weight") -> nn.Module:
    """Constrain ``module``'s filters to be orthonormal (``W W^T = I`` on the
    flattened filters) for the rest of training; returns ``module``.

    ``nn.Linear`` and ``nn.Conv1d/2d/3d``: each filter is flattened to
    (in_channels / groups) * prod(kernel_size) values (in_features for a linear
    layer) and the filters of each group are kept orthonormal by
    :class:`OrthonormalFilters`: ``W^T = B H(v_1) ... H(v_n) [I_n; 0] diag(s)``,
    a product of Householder reflections, orthonormal for every value of the
    parameter ``module.parametrizations.<name>.original`` (zero, rank-deficient,
    huge; under any optimizer and weight decay).  The current weight,
    orthonormalised (Gram-Schmidt of its rows), is the starting point (parameter
    0, towards which weight decay pulls), so different seeds give different
    filters; assigning ``module.<name> = w`` later restarts from ``w``
    orthonormalised (``w`` itself if orthonormal).
    The traced spline graph sees the parametrized weight, so affine maps and
    codes keep working.  Raises :class:`~maxaffine.MaxAffineError` when filters
    outnumber their dimension (impossible: see the module docstring).

    >>> lin = orthogonal_filters(torch.nn.Linear(6, 4))
    >>> torch.allclose(lin.weight @ lin.weight.T, torch.eye(4), atol=1e-5)
    True
    """
    if not isinstance(module, nn.Module):
        raise MaxAffineError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise MaxAffineTypeError(f"name must be the name of the weight (a str such as "
                                 f"'weight'), got {type(name).__name__} {name!r}")
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
    check_tensor(weight.detach(), f"{type(module).__name__}.{name}")
    parametrize.register_parametrization(module, name, OrthonormalFilters(groups))
    return module

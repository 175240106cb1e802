"""Curvature of the training loss with respect to a network's parameters.

:func:`loss_hessian` -- Dauphin, Oquab, Hoffmann, Rajpurkar & Balestriero,
"Neglected Hessian component explains mysteries in sharpness regularization"
(NeurIPS 2024), eq. 2: the Hessian of ``L(f(theta))`` splits as

    H = G + NME,   G = J^T H_L J,   NME = sum_i (dL/df_i) d^2 f_i / d theta^2,

with ``J = df/dtheta`` the Jacobian of the (flattened) outputs and ``H_L`` the
Hessian of the loss with respect to the outputs: ``G`` is the Gauss-Newton matrix,
``NME`` the nonlinear modelling error. The NME further splits (sec. 3) into the
terms with the activations' second derivatives, ``NME_activation`` (zero almost
everywhere for spline networks: ReLU, leaky ReLU, abs, max-pool; non-zero for
swish, GELU, softplus and beta-VQ with beta < 1), and the rest ``NME_rest``
(products of first derivatives through the weights: the network is multilinear
in its weights).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, jvp, vjp

from . import _arguments as arg
from .errors import MaxAffineError, MaxAffineTypeError
from .graph import check_parameters

# ============================================================================ loss_hessian

Which = Literal["H", "G", "NME", "NME_activation", "NME_rest"]
WHICH: tuple[str, ...] = ("H", "G", "NME", "NME_activation", "NME_rest")

EXACT_MAX_PARAMETERS = 2048
"""``exact=None`` builds the matrices up to this many parameters (each float64
matrix is ``8 P^2`` bytes; ``exact=True`` is meant for up to ~1e4)."""


def _frozen_slope_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose curvature is the activations': the parameter-free leaf
    modules (ReLU, SiLU, GELU, BetaVQ with a fixed beta, max-pool, softmax, ...; the
    linear ones, Flatten, Identity, are unchanged by linearization)."""
    return [m for m in model.modules()
            if not any(True for _ in m.children())
            and not any(True for _ in m.parameters(recurse=False))]


@contextmanager
def _hooks(modules: list[nn.Module], hook: Callable) -> Iterator[None]:
    """Temporary forward hooks (removed on exit; nothing else is written)."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


MAX_PROBES = 1_000_000
"""The most random probes a Hutchinson trace estimate takes."""


@dataclass(frozen=True)
class LossHessian:
    """The loss Hessian ``H = G + NME`` w.r.t. the flattened parameters (Dauphin et
    al., NeurIPS 2024, eq. 2), ``NME = NME_activation + NME_rest``.

    ``G``, ``NME``, ``NME_activation``, ``NME_rest``, ``H``: (P, P) matrices when
    ``exact``, else None (then use :meth:`matvec`, :meth:`top_eigenvalues`,
    :meth:`trace`). ``loss``: the loss at the point; ``parameter_names``: the order
    of the flattened parameters (``torch.cat`` of ``p.reshape(-1)``)."""

    G: Tensor | None
    NME: Tensor | None
    NME_activation: Tensor | None
    NME_rest: Tensor | None
    H: Tensor | None
    num_parameters: int
    loss: float
    parameter_names: tuple[str, ...]
    _products: dict[str, Callable[[Tensor], Tensor]] = field(repr=False, compare=False)
    _theta: Tensor = field(repr=False, compare=False)

    @property
    def exact(self) -> bool:
        return self.G is not None

    def matrix(self, which: Which = "H") -> Tensor:
        """One of the exact matrices (a :class:`MaxAffineError` when not exact)."""
        arg.choice(which, "which", WHICH)
        if not self.exact:
            raise MaxAffineError(f"the matrices were not built ({self.num_parameters} "
                                 f"parameters): call loss_hessian(..., exact=True), or use "
                                 f"matvec / top_eigenvalues / trace")
        return getattr(self, which)

    def matvec(self, v: Tensor, which: Which = "H") -> Tensor:
        """``M v`` for ``M`` in ``H`` (double backward: the gradient of
        ``<grad L, v>``), ``G`` (``J^T (H_L (J v))``: jvp, double backward through the
        loss, vjp), ``NME = H - G``,
        ``NME_rest = H_lin - G`` (``H_lin``: the frozen-slope model's Hessian) and
        ``NME_activation = H - H_lin``. ``v``: (P,) or (V, P) directions."""
        arg.choice(which, "which", WHICH)
        arg.check_tensor(v, "v")
        P = self.num_parameters
        if v.shape[-1:] != (P,) or v.dim() > 2:
            raise MaxAffineError(f"v must have shape (P,) or (V, P) with P = {P}, got "
                                 f"{tuple(v.shape)}")
        v = v.to(self._theta)
        product = self._products[which]

        def scaled(row: Tensor) -> Tensor:
            # M v = |v|_inf M (v / |v|_inf): huge directions overflow to inf, not NaN
            size = row.abs().max()
            size = torch.where(size > 0, size, torch.ones_like(size))
            return product(row / size) * size

        if v.dim() == 1:
            return scaled(v)
        return torch.stack([scaled(row) for row in v])

    def operator(self, which: Which = "H"):
        """A ``scipy.sparse.linalg.LinearOperator`` (float64) of ``M``."""
        from scipy.sparse.linalg import LinearOperator

        arg.choice(which, "which", WHICH)

        def mv(v: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1))
            return self.matvec(t, which).detach().double().cpu().numpy()

        P = self.num_parameters
        return LinearOperator((P, P), matvec=mv, rmatvec=mv, dtype=np.float64)

    def top_eigenvalues(self, k: int = 1, which: Which = "H", *, tol: float = 0.0,
                        seed: int = 0) -> Tensor:
        """The ``k`` largest (algebraic) eigenvalues of ``M``, descending, by Lanczos
        (``scipy.sparse.linalg.eigsh`` on :meth:`operator`); ``k >= P - 1``: all of
        them from the dense matrix (built by products when not exact)."""
        from scipy.sparse.linalg import eigsh

        P = self.num_parameters
        k = arg.integer(k, "k", minimum=1, maximum=P, meaning="eigenvalues wanted")
        seed = arg.integer(seed, "seed", minimum=0, meaning="seed of the Lanczos start")
        tol = arg.number(tol, "tol", minimum=0.0, meaning="Lanczos relative accuracy")
        if k >= P - 1:
            M = self.matrix(which) if self.exact else self.matvec(
                torch.eye(P, dtype=self._theta.dtype, device=self._theta.device), which)
            values = np.linalg.eigvalsh(0.5 * (M + M.T).detach().double().cpu().numpy())
        else:
            v0 = np.random.default_rng(seed).standard_normal(P)
            values = eigsh(self.operator(which), k=k, which="LA", tol=tol, v0=v0,
                           return_eigenvectors=False)
        return torch.as_tensor(np.sort(values)[::-1][:k].copy())

    def trace(self, which: Which = "H", samples: int = 100, *, seed: int = 0
              ) -> tuple[float, float]:
        """Hutchinson's estimate ``mean_s z_s^T M z_s`` over Rademacher ``z_s`` and its
        standard error ``std / sqrt(samples)``; (the exact trace, 0.0) when exact."""
        arg.choice(which, "which", WHICH)
        samples = arg.integer(samples, "samples", minimum=2, maximum=MAX_PROBES,
                              meaning="random probes")
        seed = arg.integer(seed, "seed", minimum=0, meaning="seed of the probes")
        if self.exact:
            return float(self.matrix(which).trace()), 0.0
        return self.hutchinson(which, samples, seed=seed)

    def hutchinson(self, which: Which = "H", samples: int = 100, *, seed: int = 0
                   ) -> tuple[float, float]:
        """Hutchinson's estimate and its standard error, also when exact."""
        arg.choice(which, "which", WHICH)
        samples = arg.integer(samples, "samples", minimum=2, maximum=MAX_PROBES,
                              meaning="random probes")
        seed = arg.integer(seed, "seed", minimum=0, meaning="seed of the probes")
        gen = torch.Generator().manual_seed(seed)
        quads = []
        for start in range(0, samples, 256):  # probes in chunks: bounded memory
            z = torch.randint(0, 2, (min(256, samples - start), self.num_parameters),
                              generator=gen)
            z = (2.0 * z - 1.0).to(self._theta)
            quads.append((self.matvec(z, which) * z).sum(-1).detach().double())
        quad = torch.cat(quads)
        return float(quad.mean()), float(quad.std() / math.sqrt(samples))

    def _spectrum(self, which: Which, k: int = 10) -> Tensor:
        if self.exact:
            M = self.matrix(which)
            return torch.linalg.eigvalsh(0.5 * (M + M.T)).flip(0).detach().cpu()
        return self.top_eigenvalues(min(k, self.num_parameters), which)

    def summary(self) -> dict[str, Any]:
        """Parameters, the loss, and when exact each matrix's trace, largest and
        smallest eigenvalue."""
        out: dict[str, Any] = {"num_parameters": self.num_parameters, "loss": self.loss,
                               "exact": self.exact}
        if self.exact:
            for name in WHICH:
                ev = self._spectrum(name)  # type: ignore[arg-type]
                out[name] = {"trace": float(self.matrix(name).trace()),  # type: ignore[arg-type]
                             "max_eigenvalue": float(ev[0]), "min_eigenvalue": float(ev[-1])}
        return out

    def to_json(self) -> str:
        """The summary and, when exact, every matrix's eigenvalues (descending)."""
        out = self.summary()
        out["parameter_names"] = list(self.parameter_names)
        if self.exact:
            out["eigenvalues"] = {n: self._spectrum(n).tolist() for n in WHICH}  # type: ignore[arg-type]
        return json.dumps(out)

    def plot(self, ax=None, which: tuple[str, ...] = ("G", "NME")):
        """The eigenvalue spectra (descending; the top 10 when not exact) of ``which``."""
        from ._plotting import _axes

        ax = _axes(ax)
        for name in which:
            arg.choice(name, "which", WHICH)
            ev = self._spectrum(name)  # type: ignore[arg-type]
            ax.plot(np.arange(1, len(ev) + 1), ev.numpy(), marker=".", label=name)
        ax.axhline(0.0, color="0.6", lw=0.5)
        ax.set_xlabel("eigenvalue index")
        ax.set_ylabel("eigenvalue")
        ax.legend()
        return ax


def _finite(t: Tensor, what: str) -> None:
    """Overflowed values (inf, or NaN from inf - inf) have no curvature to report."""
    if not bool(torch.isfinite(t).all()):
        raise MaxAffineError(f"{what} overflow(s) {t.dtype} here (NaN or infinite values): "
                             "rescale the inputs or the model's weights")


def loss_hessian(model: nn.Module, loss_fn: Callable[[Tensor, Any], Tensor], x: Tensor,
                 y: Any, *, exact: bool | None = None) -> LossHessian:
    """The loss Hessian w.r.t. ``model``'s parameters at ``(x, y)`` and its split
    ``H = G + NME`` (Dauphin et al., "Neglected Hessian component explains mysteries
    in sharpness regularization", NeurIPS 2024, eq. 2):

        G = J^T H_L J,   NME = sum_i g_i d^2 f_i / d theta^2,   g = dL/df,

    ``f = model(x)`` flattened, ``L = loss_fn(model(x), y)`` a scalar. Exact
    (``exact=True``, or ``None`` and at most :data:`EXACT_MAX_PARAMETERS`
    parameters): ``J`` by ``jacrev``, ``H_L`` by ``hessian`` of the loss in the
    outputs, and ``NME`` by ``hessian`` of ``theta -> <g, f(theta)>`` with ``g`` held
    fixed (so ``G + NME`` is computed independently of ``hessian(L(f(theta)))``).

    The activation-curvature split, computed exactly: the *frozen-slope* model
    ``f_lin`` replaces every parameter-free leaf module ``m`` (the activations,
    pooling) by its tangent at the current input ``u0``,
    ``m(u0) + dm(u0)[u - u0]`` (a ``jvp``). ``f_lin`` has the same value and
    Jacobian as ``f`` at ``theta``, hence the same ``G`` and ``g``, and its second
    derivative lacks exactly the terms with ``m''``; so
    ``NME_rest = sum_i g_i d^2 f_lin,i / d theta^2`` (the multilinear terms) and
    ``NME_activation = NME - NME_rest`` (zero a.e. for ReLU / leaky / abs /
    max-pool networks). Functional nonlinearities (``F.silu(u)`` inside
    ``forward``) and modules with parameters (batch-norm, learnable beta) are not
    linearized: their curvature counts in ``NME_rest``.

    Parameters are taken in ``model.named_parameters()`` order (all of them); the
    computation runs in their dtype (use float64 for exact comparisons).
    """
    if not isinstance(model, nn.Module):
        raise MaxAffineTypeError(f"model must be a torch.nn.Module, got {arg.describe(model)}")
    if not callable(loss_fn):
        raise MaxAffineTypeError(f"loss_fn must be callable as loss_fn(output, y) -> scalar, "
                                 f"got {arg.describe(loss_fn)}")
    arg.check_tensor(x, "x")
    if x.dim() >= 1 and x.shape[0] == 0:
        raise MaxAffineError("x is an empty batch: the loss of no samples has no Hessian")
    if exact is not None:
        exact = arg.flag(exact, "exact")
    check_parameters(model)
    arg.check_dtype(model, x, "x")
    named = [(n, p) for n, p in model.named_parameters()]
    if not named:
        raise MaxAffineError(f"{type(model).__name__} has no parameters: the loss Hessian "
                             f"w.r.t. parameters is empty")
    names = tuple(n for n, _ in named)
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    theta0 = torch.cat([p.detach().reshape(-1) for _, p in named])
    buffers = {n: b for n, b in model.named_buffers()}
    P = theta0.numel()
    if exact is None:
        exact = P <= EXACT_MAX_PARAMETERS

    def unflatten(theta: Tensor) -> dict[str, Tensor]:
        return {n: t.reshape(s) for n, t, s in zip(names, theta.split(sizes), shapes,
                                                   strict=True)}

    def f(theta: Tensor) -> Tensor:
        return functional_call(model, {**unflatten(theta), **buffers}, (x,))

    # the activations' inputs at theta0, per call, for the frozen-slope model
    modules = _frozen_slope_modules(model)
    recorded: dict[int, list[tuple[Tensor, ...]]] = {id(m): [] for m in modules}

    def record(module, inputs, output):
        recorded[id(module)].append(tuple(u.detach() if isinstance(u, Tensor) else u
                                          for u in inputs))

    with torch.no_grad(), _hooks(modules, record):
        out0 = arg.run(f, theta0, what=f"model(x) with x of shape {tuple(x.shape)}",
                       hint=" (is x shaped as the model expects?)")
    if not isinstance(out0, Tensor):
        raise MaxAffineTypeError(f"the model must return one tensor, got "
                                 f"{arg.describe(out0)}")
    out0 = out0.detach()

    def loss_of(out: Tensor) -> Tensor:
        value = arg.run(loss_fn, out, y, what="loss_fn(model(x), y)",
                        hint=" (do y and the model's outputs match?)")
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise MaxAffineError(f"loss_fn(output, y) must return a scalar tensor (reduce "
                                 f"it, e.g. reduction='mean'), got {arg.describe(value)}")
        return value.reshape(())

    loss0 = loss_of(out0)
    g = grad(loss_of)(out0).detach()
    _finite(out0, "the model's outputs")
    _finite(loss0.detach(), "the loss")
    _finite(g, "the loss's gradient w.r.t. the outputs")

    def f_lin(theta: Tensor) -> Tensor:
        calls = {id(m): 0 for m in modules}

        def tangent(module, inputs, output):
            i = calls[id(module)]
            calls[id(module)] += 1
            u0 = recorded[id(module)][i]
            where = [j for j, u in enumerate(inputs) if isinstance(u, Tensor)]

            def call(*us):
                full = list(u0)
                for j, u in zip(where, us, strict=True):
                    full[j] = u
                return module.forward(*full)

            primals = tuple(u0[j] for j in where)
            tangents = tuple(inputs[j] - u0[j] for j in where)
            value, slope = jvp(call, primals, tangents)
            return value + slope

        with _hooks(modules, tangent):
            return f(theta)

    def loss_at(model_fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        return lambda theta: loss_of(model_fn(theta))

    def hvp(model_fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        gradient = grad(loss_at(model_fn))
        return lambda v: grad(lambda t: (gradient(t) * v).sum())(theta0)

    grad_out = grad(loss_of)

    def gvp(v: Tensor) -> Tensor:
        _, jv = jvp(f, (theta0,), (v.reshape(-1),))
        hjv = grad(lambda o: (grad_out(o) * jv).sum())(out0)
        _, pull = vjp(f, theta0)
        return pull(hjv)[0]

    h_v, hlin_v = hvp(f), hvp(f_lin)
    products: dict[str, Callable[[Tensor], Tensor]] = {
        "H": h_v,
        "G": gvp,
        "NME": lambda v: h_v(v) - gvp(v),
        "NME_rest": lambda v: hlin_v(v) - gvp(v),
        "NME_activation": lambda v: h_v(v) - hlin_v(v),
    }

    G = NME = NME_act = NME_rest = H = None
    if exact:
        m = out0.numel()
        J = jacrev(lambda t: f(t).reshape(-1))(theta0).reshape(m, P)
        HL = hessian(lambda o: loss_of(o.reshape(out0.shape)))(out0.reshape(-1))
        G = (J.T @ HL.reshape(m, m) @ J).detach()
        NME = hessian(lambda t: (g * f(t)).sum())(theta0).detach()
        NME_rest = hessian(lambda t: (g * f_lin(t)).sum())(theta0).detach()
        NME_act = NME - NME_rest
        H = G + NME
        _finite(H, "the loss Hessian")
    return LossHessian(G=G, NME=NME, NME_activation=NME_act, NME_rest=NME_rest, H=H,
                       num_parameters=P, loss=float(loss0), parameter_names=names,
                       _products=products, _theta=theta0)


__all__ = ["EXACT_MAX_PARAMETERS", "LossHessian", "loss_hessian"]
# ========================================================================= end loss_hessian


# ====================================================================== hessian_complexity

COMPLEXITY_METHODS: tuple[str, ...] = ("auto", "fit", "autograd")
TANGENT_VARIANCE = 0.95
"""``tangent_dim=None`` takes, at each point, the smallest number of local principal
directions that explain this fraction of the neighbourhood's variance (then the
median over the points)."""


@dataclass(frozen=True)
class HessianComplexity:
    """The tangent-Hessian complexity of a function on data (Javadi, Balestriero &
    Baraniuk, "A Hessian Based Complexity Measure for Deep Networks"):

        C(f) = (1/N) sum_i sum_o || U_i^T (d^2 f_o / dx^2)(x_i) U_i ||_F^2,

    ``U_i`` an orthonormal basis of the data manifold's tangent space at ``x_i``.

    ``per_point``: (N,) squared Frobenius norms (summed over the outputs counted);
    ``mean``: their mean, ``C(f)``; ``tangent_dim``: the tangent spaces' dimension;
    ``k``: the neighbours per point; ``method``: ``"fit"`` (local second-order least
    squares) or ``"autograd"`` (the input Hessian projected on the tangent space)."""

    per_point: Tensor
    mean: float
    tangent_dim: int
    k: int
    method: str

    def summary(self) -> dict[str, Any]:
        """The mean, the spread of the per-point values, ``tangent_dim``, ``k``, method."""
        v = self.per_point.detach().double().cpu()
        return {"mean": self.mean, "median": float(v.median()), "max": float(v.max()),
                "min": float(v.min()), "num_points": int(v.numel()),
                "tangent_dim": self.tangent_dim, "k": self.k, "method": self.method}

    def to_json(self) -> str:
        """The summary and the per-point values."""
        out = self.summary()
        out["per_point"] = self.per_point.detach().double().cpu().tolist()
        return json.dumps(out)

    def plot(self, ax=None, bins: int = 30):
        """A histogram of the per-point squared Frobenius norms, the mean marked."""
        from ._plotting import _axes

        bins = arg.integer(bins, "bins", minimum=1, maximum=10_000, meaning="histogram bins")
        ax = _axes(ax)
        ax.hist(self.per_point.detach().double().cpu().numpy(), bins=bins, color="0.5")
        ax.axvline(self.mean, color="C3", lw=1.0, label=f"mean {self.mean:.3g}")
        ax.set_xlabel("||tangent Hessian||_F^2")
        ax.set_ylabel("points")
        ax.legend()
        return ax


def _neighbours(x: Tensor, k: int) -> Tensor:
    """(N, k + 1) indices: each point itself first, then its ``k`` nearest others."""
    d = torch.cdist(x, x)
    d.fill_diagonal_(math.inf)
    near = d.topk(k, dim=1, largest=False).indices
    own = torch.arange(x.shape[0], device=x.device)[:, None]
    return torch.cat([own, near], dim=1)


def _local_spectra(x: Tensor, hood: Tensor) -> tuple[Tensor, Tensor]:
    """Local PCA of each neighbourhood (centred on its mean): singular values (N, D)
    and right singular vectors (N, D, r), descending, ``r = min(D, k + 1)``."""
    local = x[hood]
    local = local - local.mean(dim=1, keepdim=True)
    D, m = local.shape[2], local.shape[1]
    if m < D:
        # few neighbours in many dimensions (images): local^T = Q R (thin QR), so
        # local^T local = Q (R R^T) Q^T and the right singular vectors are Q W for the
        # eigenvectors W of the small (m, m) matrix R R^T -- memory N D m, not N D^2,
        # and orthonormal even where singular values vanish
        q, r = torch.linalg.qr(local.transpose(1, 2))
        small = r @ r.transpose(1, 2)
        _finite(small, "the neighbourhoods' scatter (x's squared distances)")
        w, v = torch.linalg.eigh(small)
        s = w.flip(-1).clamp_min(0.0).sqrt()
        return torch.cat([s, s.new_zeros(s.shape[0], D - m)], dim=1), q @ v.flip(-1)
    # eigh of the (D, D) scatter matrices: the squared singular values, and much
    # faster than a batched SVD of the neighbourhoods
    scatter = local.transpose(1, 2) @ local
    _finite(scatter, "the neighbourhoods' scatter (x's squared distances)")
    w, v = torch.linalg.eigh(scatter)
    return w.flip(-1).clamp_min(0.0).sqrt(), v.flip(-1)


def _estimated_dim(s: Tensor, D: int) -> int:
    """The median over the points of the smallest dimension whose local principal
    directions explain :data:`TANGENT_VARIANCE` of the variance, in [1, D - 1]."""
    var = s.double() ** 2
    share = var.cumsum(1) / var.sum(1, keepdim=True).clamp_min(1e-300)
    dims = (share < TANGENT_VARIANCE - 1e-12).sum(1) + 1
    return int(min(max(int(dims.median()), 1), D - 1))


def _quadratic_design(t: Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
    """Columns ``1, t_a, t_a t_b (a <= b)`` of ``c + g.t + 1/2 t^T H t``: the
    coefficient of ``t_a^2`` is ``H_aa / 2``, of ``t_a t_b`` (a < b) ``H_ab``."""
    d = t.shape[-1]
    pairs = [(a, b) for a in range(d) for b in range(a, d)]
    quad = torch.stack([t[..., a] * t[..., b] for a, b in pairs], dim=-1)
    return torch.cat([torch.ones_like(t[..., :1]), t, quad], dim=-1), pairs


def _fit_complexity(y: Tensor, x: Tensor, hood: Tensor, U: Tensor) -> Tensor:
    """``sum_o ||H_o||_F^2`` per point from the least-squares quadratic fit of the
    outputs ``y`` (N, m) over each neighbourhood in tangent coordinates."""
    t = torch.einsum("nkD,nDd->nkd", x[hood] - x[:, None, :], U)
    A, pairs = _quadratic_design(t)
    coef = torch.linalg.lstsq(A, y[hood]).solution         # (N, 1 + d + p, m)
    d = U.shape[-1]
    q = coef[:, 1 + d:, :]
    weight = torch.tensor([4.0 if a == b else 2.0 for a, b in pairs], dtype=q.dtype,
                          device=q.device)                  # (2 c_aa)^2, 2 c_ab^2
    return (weight[None, :, None] * q ** 2).sum(dim=(1, 2))


def _autograd_complexity(model: nn.Module, x: Tensor, U: Tensor,
                         output: int | None) -> Tensor:
    """``sum_o ||U^T H_o U||_F^2`` per point, ``H_o`` the input Hessian by autograd."""
    from torch.func import vmap

    def f(point: Tensor) -> Tensor:
        out = model(point[None]).reshape(-1)
        return out if output is None else out[output:output + 1]

    H = vmap(hessian(f))(x)                                 # (N, m, D, D)
    T = torch.einsum("nDa,nmDE,nEb->nmab", U, H, U)
    return (T ** 2).sum(dim=(1, 2, 3))


def _is_piecewise_affine(model: nn.Module, x: Tensor) -> bool:
    from .errors import UnsupportedOperation
    from .graph import trace

    try:
        trace(model, x[:1])
    except UnsupportedOperation:
        return False
    return True


def hessian_complexity(model: nn.Module, x: Tensor, *, tangent_dim: int | None = None,
                       k: int | None = None, output: int | None = None,
                       method: str = "auto") -> HessianComplexity:
    """The tangent-Hessian complexity of ``model`` on the data ``x`` (N, D) (Javadi,
    Balestriero & Baraniuk, "A Hessian Based Complexity Measure for Deep Networks";
    tangent Hessians as in Hessian eigenmaps, Donoho & Grimes, PNAS 2003):

        C(f) = (1/N) sum_i sum_o || H_i^{tan}(f_o) ||_F^2,   H^{tan} = U_i^T H_x U_i,

    summed over the (flattened) outputs ``o``, or only ``output`` when given.

    Tangent spaces: at each point, its ``k`` nearest neighbours (Euclidean) and the
    point itself, centred on their mean; ``U_i`` = the top ``tangent_dim`` right
    singular vectors (local PCA). ``tangent_dim=None``: per point, the smallest
    dimension explaining :data:`TANGENT_VARIANCE` (95%) of the local variance, then
    the median over the points, clipped to [1, D - 1] (estimated with
    ``k = min(N - 1, max(2 D, 10))`` neighbours unless ``k`` is given). ``k=None``:
    ``2 (1 + d + d (d + 1) / 2)`` for ``d = tangent_dim`` (twice the coefficients of
    a quadratic in ``d`` variables), at most ``N - 1``.

    ``method="fit"``: least squares over the neighbourhood of
    ``f(x_j) ~ c + g.t_j + 1/2 t_j^T H t_j``, ``t_j = U_i^T (x_j - x_i)``: sees a
    spline network's kinks at the neighbourhood's scale (its pointwise Hessian is 0
    a.e.); needs ``k + 1 >= 1 + d + d (d + 1) / 2``. ``method="autograd"``:
    ``U_i^T H_x U_i`` with ``H_x`` = ``torch.func.hessian`` of the output in the
    input (smooth models). ``method="auto"``: ``"fit"`` when ``maxaffine.trace``
    accepts the model (piecewise affine), else ``"autograd"``.

    A model without parameters is accepted (the measure is about the function, not
    its weights). ``x`` must be a finite floating (N, D) tensor with ``N >= 2`` and
    ``D >= 2``, in the parameters' dtype (float64 for exact checks).
    """
    if not isinstance(model, nn.Module):
        raise MaxAffineTypeError(f"model must be a torch.nn.Module, got {arg.describe(model)}")
    arg.check_tensor(x, "x")
    if x.dim() != 2:
        raise MaxAffineError(f"x must be a batch of vectors (N, D), got shape "
                             f"{tuple(x.shape)}: flatten the inputs first")
    arg.check_dtype(model, x, "x")
    check_parameters(model)
    method = arg.choice(method, "method", COMPLEXITY_METHODS)
    N, D = x.shape
    if N < 2:
        raise MaxAffineError(f"x has {N} point(s): tangent spaces need neighbours, pass "
                             f"at least 2 points")
    if D < 2:
        raise MaxAffineError(f"x has dimension {D}: a tangent space of dimension < D "
                             f"needs D >= 2")
    if k is not None:
        k = arg.integer(k, "k", minimum=1, maximum=N - 1, meaning="neighbours per point")
    if tangent_dim is not None:
        tangent_dim = arg.integer(tangent_dim, "tangent_dim", minimum=1, maximum=D - 1,
                                  meaning="dimension of the data manifold")
    x = x.detach()
    with torch.no_grad():
        y0 = arg.run(model, x[:1], what=f"model(x) with x of shape {tuple(x.shape)}",
                     hint=" (is x shaped as the model expects?)").reshape(1, -1)
    m = y0.shape[1]
    if output is not None:
        output = arg.integer(output, "output", minimum=-m, maximum=m - 1,
                             meaning=f"index into the model's {m} flattened output(s)") % m

    if tangent_dim is None:
        k_est = k if k is not None else min(N - 1, max(2 * D, 10))
        s, _ = _local_spectra(x, _neighbours(x, k_est))
        tangent_dim = _estimated_dim(s, D)
    d = tangent_dim
    coefficients = 1 + d + d * (d + 1) // 2
    if k is None:
        k = min(N - 1, 2 * coefficients)
    if k < d:
        raise MaxAffineError(f"k = {k} neighbours cannot span a tangent space of dimension "
                             f"{d}: pass k >= {d}")
    hood = _neighbours(x, k)
    _, V = _local_spectra(x, hood)
    U = V[..., :d]

    if method == "auto":
        method = "fit" if _is_piecewise_affine(model, x) else "autograd"
    if method == "fit":
        if k + 1 < coefficients:
            raise MaxAffineError(f"method='fit' in {d} tangent dimensions fits {coefficients} "
                                 f"coefficients from k + 1 = {k + 1} points: pass "
                                 f"k >= {coefficients - 1} (and N > k), or method='autograd'")
        with torch.no_grad():
            y = model(x).reshape(N, -1)
        _finite(y, "the model's outputs")
        if output is not None:
            y = y[:, output:output + 1]
        per_point = _fit_complexity(y, x, hood, U)
    else:
        per_point = _autograd_complexity(model, x, U, output).detach()
    _finite(per_point, "the tangent Hessians")
    return HessianComplexity(per_point=per_point, mean=float(per_point.mean()),
                             tangent_dim=d, k=k, method=method)


__all__ += ["COMPLEXITY_METHODS", "TANGENT_VARIANCE", "HessianComplexity",
            "hessian_complexity"]
# ================================================================== end hessian_complexity

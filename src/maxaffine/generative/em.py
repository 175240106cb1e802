"""EM learning of a piecewise-affine generator from its exact posterior.

Balestriero, Paris & Baraniuk, "Analytical Probability Distributions and EM-Learning
for Deep Generative Networks" (NeurIPS 2020), sec. 4: with ``z ~ N(0, I_k)``,
``x = G(z) + eps``, ``eps ~ N(0, sigma^2 I_D)`` and ``G(z) = A_r z + b_r`` on latent
region ``r``, the posterior ``q(z) = p(z | x)`` is a mixture over regions of truncated
Gaussians (:func:`~maxaffine.generative.posterior`: weights ``w_r``, truncated means
``m_r`` and covariances ``C_r``), so the EM function is exact::

    Q(theta, sigma) = E_q[log p(x | z)] + const
                    = -1/(2 sigma^2) E_q ||x - G(z)||^2 - D log sigma + const
    E_q ||x - G(z)||^2 = sum_r w_r (||x - A_r m_r - b_r||^2 + tr(A_r C_r A_r^T)).

:func:`fit_em` alternates

* E-step: :func:`~maxaffine.generative.posterior` of the current generator for all
  of ``data`` (exact: latent dimension 1 or 2; it also gives the exact
  ``log p(x)`` recorded per step);
* M-step: ``m_steps`` Adam steps on the network parameters, minimising the expected
  squared error above with ``A_r, b_r`` taken from the spline graph with the codes
  of region ``r`` frozen (:meth:`maxaffine.SplineGraph.evaluate` with ``codes=`` at
  ``0`` and the unit vectors: differentiable in the parameters). Per region the
  error needs only the posterior's sufficient statistics ``sum_n w_nr``,
  ``sum_n w_nr x_n``, ``sum_n w_nr m_nr``, ``sum_n w_nr x_n m_nr^T`` and
  ``sum_n w_nr (m_nr m_nr^T + C_nr)``, so a step costs O(R D k), not O(N R D).
  Then, if ``learn_noise``, the noise in closed form, ``sigma^2 = (1/(N D)) sum_n
  E_q ||x_n - G(z)||^2`` (the maximiser of ``Q`` over ``sigma`` given the network).

With the codes frozen, the surrogate equals ``Q`` at the current parameters and has
the same gradient there (``G`` is almost everywhere locally the frozen affine map),
but it is not ``Q`` once the regions move, and Adam steps are not exact ascent, so
the EM guarantee ``log p(data)`` non-decreasing does not hold by itself. :func:`fit_em`
enforces it: a step whose exact ``log p(data)`` (from the next E-step) is lower
than the current one (beyond 1e-9 relative) is rejected (parameters and noise
restored, the learning rate halved), so the recorded log-likelihood never
decreases. The last layer's closed-form least-squares update is not used.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .. import _arguments as arguments
from .._arguments import check_dtype, check_tensor
from ..errors import MaxAffineError, MaxAffineTypeError
from ..graph import SplineGraph, check_parameters, trace
from .likelihood import GeneratorPosterior, posterior

_KEEP = 1e-12  # regions whose posterior weight is below this for every input are dropped
_TOL = 1e-9  # relative decrease of log p(data) that rejects a step


@dataclass(frozen=True)
class EMFit:
    """What :func:`fit_em` returns.

    ``generator``: the fitted module (the one passed in, trained in place).
    ``log_likelihood`` (steps + 1,): the exact mean ``log p(x)`` of ``data`` per sample
    before the first step (index 0) and after each step; non-decreasing (a step that
    would lower it is rejected). ``noise_stds`` (steps + 1,): sigma at the same times;
    ``noise_std``: the final sigma. ``accepted`` (steps,) bool: which steps were kept
    (a rejected step halves the learning rate: ``lr`` is the final one).
    ``regions`` (steps + 1,): the latent regions with posterior weight above 1e-12
    for some input, per E-step. ``m_steps``; ``seconds``: wall time.
    """

    generator: nn.Module = field(repr=False)
    log_likelihood: Tensor
    noise_stds: Tensor
    accepted: Tensor
    regions: Tensor
    noise_std: float
    lr: float
    m_steps: int
    seconds: float

    @property
    def steps(self) -> int:
        return int(self.accepted.shape[0])

    def summary(self) -> dict[str, Any]:
        """Steps, the first and last mean log-likelihoods, the final noise, the
        rejected steps, the final learning rate and the time."""
        ll = self.log_likelihood
        return {"steps": self.steps, "m_steps": self.m_steps,
                "initial_log_likelihood": float(ll[0]),
                "final_log_likelihood": float(ll[-1]),
                "noise_std": self.noise_std,
                "rejected_steps": int((~self.accepted).sum()),
                "final_lr": self.lr, "final_regions": int(self.regions[-1]),
                "seconds": self.seconds}

    def to_json(self) -> str:
        """The summary and the per-step curves."""
        return json.dumps({**self.summary(),
                           "log_likelihood": self.log_likelihood.tolist(),
                           "noise_stds": self.noise_stds.tolist(),
                           "accepted": self.accepted.tolist(),
                           "regions": self.regions.tolist()})

    def plot(self, ax=None):
        """The exact mean log-likelihood per EM step (rejected steps marked)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        ll = self.log_likelihood.numpy()
        ax.plot(range(len(ll)), ll, "-o", ms=3, label="EM")
        bad = [i + 1 for i, a in enumerate(self.accepted.tolist()) if not a]
        if bad:
            ax.plot(bad, ll[bad], "x", c="r", label="rejected step")
        ax.set_xlabel("EM step")
        ax.set_ylabel("mean log p(x)")
        ax.set_title(f"EM: sigma = {self.noise_std:.3g}")
        ax.legend()
        return ax


def _graph(generator: Any) -> tuple[nn.Module, SplineGraph, int]:
    """The module, its spline graph (same parameters) and its latent dimension."""
    module = generator.model if isinstance(generator, SplineGraph) else generator
    if not isinstance(module, nn.Module):
        raise MaxAffineTypeError("generator must be a torch.nn.Module (or its SplineGraph), "
                                 f"got {type(generator).__name__}")
    check_parameters(module)
    params = [p for p in module.parameters() if p.is_floating_point()]
    if not params:
        raise MaxAffineError("generator has no floating-point parameters to fit")
    if isinstance(generator, SplineGraph):
        graph = generator
    else:
        first = next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
        if first is None:
            raise MaxAffineError("generator: cannot tell its latent dimension (no nn.Linear); "
                                 "pass its SplineGraph, ma.trace(G, z)")
        graph = trace(module, torch.zeros(1, first.in_features, dtype=params[0].dtype))
    if len(graph.input_shape) != 1:
        raise MaxAffineError("generator must take latent vectors (N, k), got input shape "
                             f"{graph.input_shape}")
    return module, graph, graph.input_shape[0]


def _statistics(post: GeneratorPosterior, x: Tensor) -> dict[str, Tensor]:
    """Per kept region: interior point and the posterior's sufficient statistics."""
    w = post.weights
    keep = (w > _KEEP).any(0)
    w, m, c = w[:, keep], post.means[:, keep], post.covariances[:, keep]
    verts = post.vertices[keep]
    return {"points": verts.mean(1),  # convex: a positive mix of the vertices is inside
            "w": w.sum(0),  # (R,)
            "x2": torch.einsum("nr,n->r", w, (x * x).sum(1)),
            "wx": torch.einsum("nr,nd->rd", w, x),
            "wm": torch.einsum("nr,nrk->rk", w, m),
            "xm": torch.einsum("nr,nd,nrk->rdk", w, x, m),
            "mm": torch.einsum("nr,nrkl->rkl", w, c + m[..., :, None] * m[..., None, :])}


def _expected_error(graph: SplineGraph, stats: dict[str, Tensor], codes: dict[str, Tensor],
                    n: int, dtype: torch.dtype) -> Tensor:
    """``(1/N) sum_n E_q ||x_n - G(z)||^2`` with each region's map frozen: ``b_r`` the
    graph at 0, ``A_r e_j = G_r(e_j) - b_r``."""
    r, k = stats["wm"].shape
    basis = torch.cat([torch.zeros(1, k), torch.eye(k)]).to(dtype)
    out = graph.evaluate(basis.repeat(r, 1), codes=codes).output.reshape(r, k + 1, -1)
    b = out[:, 0].double()
    a = (out[:, 1:] - out[:, :1]).transpose(1, 2).double()  # (R, D, k)
    total = (stats["x2"] - 2 * (b * stats["wx"]).sum(1) + stats["w"] * (b * b).sum(1)
             - 2 * (a * stats["xm"]).sum((1, 2))
             + 2 * torch.einsum("rd,rdk,rk->r", b, a, stats["wm"])
             + torch.einsum("rdk,rdl,rkl->r", a, a, stats["mm"]))
    return total.sum() / n


def _last_linear(module: nn.Module, graph: SplineGraph, z: Tensor
                 ) -> tuple[nn.Linear, SplineGraph] | None:
    """``(W, graph of everything before it)`` when the generator is an ``nn.Sequential``
    ending in an ``nn.Linear`` (its output ``G(z) = W h(z) + c`` with ``h`` piecewise
    affine on the same regions, the nonlinearities all being before ``W``); else None."""
    if not (isinstance(module, nn.Sequential) and len(module) > 1
            and isinstance(module[-1], nn.Linear)):
        return None
    head = trace(module[:-1], z)
    if [layer.name for layer in head.layers] != [layer.name for layer in graph.layers]:
        return None
    return module[-1], head


def _closed_form_last_layer(last: nn.Linear, head: SplineGraph, stats: dict[str, Tensor],
                            codes: dict[str, Tensor], dtype: torch.dtype) -> None:
    """The M-step for the last layer in closed form: with the posterior fixed, the
    expected complete-data log-likelihood is a least-squares problem in ``[W c]``:
    ``[W c] = S_xh S_hh^-1`` with ``S_hh = sum_r H_r Z_r H_r^T``, ``S_xh = sum_r X_r
    H_r^T``, where on region r ``[h; 1] = H_r [z; 1]``, ``Z_r = sum_n w_nr E[z~ z~^T]``
    and ``X_r = sum_n w_nr x_n E[z~]^T`` (``z~ = [z; 1]``). It is the exact maximiser
    (the regions do not depend on ``W``), so EM's ascent holds for this part."""
    r, k = stats["wm"].shape
    basis = torch.cat([torch.zeros(1, k), torch.eye(k)]).to(dtype)
    with torch.no_grad():
        out = head.evaluate(basis.repeat(r, 1), codes=codes).output.reshape(r, k + 1, -1)
    g = out[:, 0].double()  # (R, m)
    h = (out[:, 1:] - out[:, :1]).transpose(1, 2).double()  # (R, m, k)
    m = g.shape[1]
    hh = torch.zeros(r, m + 1, k + 1, dtype=torch.float64)
    hh[:, :m, :k], hh[:, :m, k], hh[:, m, k] = h, g, 1.0
    z = torch.zeros(r, k + 1, k + 1, dtype=torch.float64)
    z[:, :k, :k], z[:, :k, k], z[:, k, :k], z[:, k, k] = (stats["mm"], stats["wm"],
                                                          stats["wm"], stats["w"])
    xz = torch.cat([stats["xm"], stats["wx"][:, :, None]], 2)  # (R, D, k+1)
    s_hh = torch.einsum("rik,rkl,rjl->ij", hh, z, hh)
    s_xh = torch.einsum("rdk,rjk->dj", xz, hh)
    ridge = 1e-10 * float(torch.diagonal(s_hh).abs().max()) * torch.eye(m + 1,
                                                                        dtype=torch.float64)
    try:
        wc = torch.linalg.solve(s_hh + ridge, s_xh.T).T  # (D, m+1)
    except RuntimeError:  # singular (e.g. dead hidden units everywhere): keep Adam's step
        return
    if not bool(torch.isfinite(wc).all()):
        return
    with torch.no_grad():
        last.weight.copy_(wc[:, :m].to(last.weight.dtype))
        if last.bias is not None:
            last.bias.copy_(wc[:, m].to(last.bias.dtype))


def fit_em(generator: nn.Module | SplineGraph, data: Tensor, noise_std: float, steps: int,
           *, lr: float = 1e-2, m_steps: int = 20, learn_noise: bool = True,
           progress: bool = True, seed: int = 0, bound: float = 8.0) -> EMFit:
    """Fit a piecewise-affine generator ``x = G(z) + eps``, ``z ~ N(0, I_k)``,
    ``eps ~ N(0, sigma^2 I)``, to ``data`` by EM with the exact posterior
    (Balestriero, Paris & Baraniuk, NeurIPS 2020, sec. 4; the module docstring gives
    the E- and M-steps).

    ``generator``: a module taking latent vectors (N, k), k = 1 or 2 (or its
    :class:`~maxaffine.SplineGraph`), trained **in place**. ``data``: (N, D) or
    (N, *output_shape), the module's dtype. ``noise_std``: the initial sigma (kept
    if ``learn_noise=False``). ``steps``: EM steps, each one E-step and ``m_steps``
    Adam steps (learning rate ``lr``) on the expected squared error, then (for an
    ``nn.Sequential`` ending in an ``nn.Linear``) the last
    layer in closed form (:func:`_closed_form_last_layer`), then the closed-form
    sigma. A step lowering the exact ``log p(data)`` is rejected and
    halves ``lr``. ``seed`` seeds torch's generator during the fit (the fit itself
    draws nothing). ``bound``: the latent box of the exact posterior. A latent
    dimension above 2 raises :class:`~maxaffine.MaxAffineError` (the M-step needs
    the exact posterior; there is no sampling fallback). Returns an :class:`EMFit`.
    """
    t0 = time.perf_counter()
    module, graph, k = _graph(generator)
    sigma = arguments.number(noise_std, "noise_std", minimum=0.0, strict=True,
                             meaning="the initial standard deviation of the output noise")
    steps = arguments.integer(steps, "steps", minimum=1, maximum=10**6, meaning="EM steps")
    lr = arguments.number(lr, "lr", minimum=0.0, strict=True, meaning="Adam's learning rate")
    m_steps = arguments.integer(m_steps, "m_steps", minimum=1, maximum=10**6,
                                meaning="Adam steps per M-step")
    learn_noise = arguments.flag(learn_noise, "learn_noise")
    progress = arguments.flag(progress, "progress")
    seed = arguments.integer(seed, "seed", minimum=0)
    bound = arguments.number(bound, "bound", minimum=0.0, maximum=1e3, strict=True,
                             meaning="the latent box [-bound, bound]^k")
    if k > 2:
        raise MaxAffineError(f"fit_em needs the exact posterior, i.e. a latent dimension of 1 "
                             f"or 2; the generator's is {k} (no sampling fallback)")
    check_tensor(data, "data")
    check_dtype(module, data, "data")
    dtype = data.dtype
    with torch.no_grad():
        out_shape = tuple(graph.evaluate(torch.zeros(1, k, dtype=dtype)).output.shape[1:])
    d = math.prod(out_shape)
    if data.dim() < 2 or data.shape[0] < 1 or (tuple(data.shape[1:]) != out_shape
                                               and tuple(data.shape[1:]) != (d,)):
        raise MaxAffineError(f"data must be a non-empty batch of the generator's outputs "
                             f"(N, {', '.join(map(str, out_shape))}) or (N, {d}), got "
                             f"shape {tuple(data.shape)}")
    x = data.detach().reshape(data.shape[0], d)
    x64 = x.double()
    n = x.shape[0]
    params = [p for p in module.parameters() if p.requires_grad and p.is_floating_point()]
    last = _last_linear(module, graph, torch.zeros(1, k, dtype=dtype))
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        post = posterior(graph, x, sigma, bound=bound, method="exact")
        lls = [float(post.log_likelihood.mean())]
        sigmas, accepted, regions = [sigma], [], [int((post.weights > _KEEP).any(0).sum())]
        bar = tqdm(range(steps), desc="EM", disable=not progress, leave=False)
        for _ in bar:
            stats = _statistics(post, x64)
            with torch.no_grad():
                codes = graph.evaluate(stats["points"].to(dtype)).codes
            codes = {name: c.repeat_interleave(k + 1, 0) for name, c in codes.items()}
            saved = [p.detach().clone() for p in params]
            opt = torch.optim.Adam(params, lr=lr)
            for _ in range(m_steps):
                opt.zero_grad()
                loss = _expected_error(graph, stats, codes, n, dtype)
                loss.backward()
                opt.step()
            if last is not None:
                _closed_form_last_layer(last[0], last[1], stats, codes, dtype)
            new_sigma = sigma
            if learn_noise:
                with torch.no_grad():
                    err = float(_expected_error(graph, stats, codes, n, dtype))
                new_sigma = math.sqrt(max(err, 0.0) / d) or sigma
            try:
                new = posterior(graph, x, new_sigma, bound=bound, method="exact")
                new_ll = float(new.log_likelihood.mean())
            except MaxAffineError:
                new, new_ll = None, -math.inf
            if new is not None and new_ll >= lls[-1] - _TOL * abs(lls[-1]):
                post, sigma = new, new_sigma
                accepted.append(True)
            else:
                with torch.no_grad():
                    for p, s in zip(params, saved, strict=True):
                        p.copy_(s)
                lr /= 2
                accepted.append(False)
            lls.append(float(post.log_likelihood.mean()))
            sigmas.append(sigma)
            regions.append(int((post.weights > _KEEP).any(0).sum()))
            bar.set_postfix(loglik=f"{lls[-1]:.4g}", sigma=f"{sigma:.3g}")
        bar.close()
    return EMFit(module, torch.tensor(lls, dtype=torch.float64),
                 torch.tensor(sigmas, dtype=torch.float64), torch.tensor(accepted),
                 torch.tensor(regions), sigma, lr, m_steps, time.perf_counter() - t0)

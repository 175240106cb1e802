"""Infinite-width kernels of ReLU / erf networks, and the empirical NTK of any model.

- :func:`nngp`, :func:`ntk`: the neural network Gaussian process kernel and the neural
  tangent kernel of a fully connected network with ``depth`` hidden layers, by the
  closed-form arc-cosine recursion (Cho & Saul, "Kernel Methods for Deep Learning",
  NeurIPS 2009, the degree-1 arc-cosine kernel, for ReLU; Williams, "Computing with
  Infinite Networks", NIPS 1996, for erf; Lee et al., "Deep Neural Networks as Gaussian
  Processes", ICLR 2018; Jacot, Gabriel & Hongler, "Neural Tangent Kernel", NeurIPS 2018;
  Arora et al., "On Exact Computation with an Infinitely Wide Neural Net", NeurIPS 2019):
  the formulas are written out below.
- :func:`rntk`: the recurrent neural tangent kernel of an Elman RNN (Alemohammad, Wang,
  Balestriero & Baraniuk, "The Recurrent Neural Tangent Kernel", ICLR 2021, sec. 3 and
  its Theorem 1), for sequences of different lengths (formulas in :func:`rntk`).
- :func:`empirical_ntk`: ``sum_p J1_p J2_p^T`` of any ``torch.nn.Module`` by
  :mod:`torch.func`.

**The network and its parametrizations** (``depth`` = L hidden layers, input dimension d,
hidden width n)::

    z1 = sw / sqrt(d) W1 x + sb b1,   z(l+1) = sw / sqrt(n) W(l+1) phi(z(l)) + sb b(l+1),
    f(x) = z(L+1)                                    (NTK parametrization)

with all ``W``, ``b`` entries i.i.d. N(0, 1) and ``sw^2 = weight_var``, ``sb^2 =
bias_var``. The *standard* parametrization has the same network, ``z(l+1) = W phi(z(l)) +
b`` with ``W ~ N(0, sw^2 / fan_in)``, ``b ~ N(0, sb^2)`` (PyTorch's ``nn.Linear`` with its
weights redrawn): the function, hence the NNGP, is the same, but the gradients with
respect to the weights are ``sqrt(fan_in) / sw`` times larger (those w.r.t. the biases
``1 / sb`` times), so its NTK grows linearly with the width. For it :func:`ntk` needs
``width=n`` and returns the width-aware kernel that the empirical NTK of a width-``n``
network concentrates around (relative fluctuations O(1 / sqrt(n))): in the recursion
below, the contribution ``sw^2 K(l) + sb^2`` of layer l+1's own parameters becomes
``fan_in K(l) + 1`` (cf. Sohl-Dickstein, Novak, Schoenholz & Lee, "On the infinite
width limit of neural networks with a standard parameterization", 2020).

**Recursion** (all kernels are of one output unit; different outputs are independent)::

    Sigma(1) = sw^2 <x, x'> / d + sb^2,          Theta(1) = Sigma(1)
    K(l)     = E[phi(u) phi(v)],  Kdot(l) = E[phi'(u) phi'(v)],   (u, v) ~ N(0, Sigma(l))
    Sigma(l+1) = sw^2 K(l) + sb^2,               Theta(l+1) = Sigma(l+1) + sw^2 Kdot(l) Theta(l)
    nngp = Sigma(L+1),  ntk = Theta(L+1)

where for ReLU (Cho & Saul), with ``cos t = Sigma(x, x') / sqrt(Sigma(x, x) Sigma(x', x'))``,
``K = sqrt(Sigma(x, x) Sigma(x', x')) (sin t + (pi - t) cos t) / (2 pi)`` and ``Kdot =
(pi - t) / (2 pi)``; for erf (Williams) ``K = 2/pi arcsin(2 S12 / sqrt((1 + 2 S11)(1 + 2
S22)))`` and ``Kdot = 4/pi / sqrt((1 + 2 S11)(1 + 2 S22) - 4 S12^2)``.

All kernels are computed in float64 and returned as (N, M) float64 tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from . import _arguments as arg
from .errors import MaxAffineError, MaxAffineTypeError

D = torch.float64
ACTIVATIONS: tuple[str, ...] = ("relu", "erf")
PARAMETRIZATIONS: tuple[str, ...] = ("ntk", "standard")
OUTPUTS: tuple[str, ...] = ("mean", "trace", "full")
_BLOCK = 1 << 22  # kernel entries per row block (float64: 32 MiB per temporary)

# ============================================================================ Gaussian moments


MAX_DEPTH = 10_000
"""The deepest kernel computed (one recursion step per layer; deep ReLU kernels have long
converged to their fixed point by then)."""

def _moments(activation: str, s11: Tensor, s22: Tensor, s12: Tensor,
             derivative: bool = True) -> tuple[Tensor, Tensor | None]:
    """``E[phi(u) phi(v)]`` and ``E[phi'(u) phi'(v)]`` for ``(u, v) ~ N(0, [[s11, s12],
    [s12, s22]])``, broadcast over the three tensors (closed forms in the module
    docstring). A zero variance means ``u = 0``: both moments are 0 for ReLU (PyTorch's
    ``relu'(0) = 0``)."""
    if activation == "relu":
        norm = torch.sqrt(s11 * s22)
        zero = norm <= 0
        cos = torch.where(zero, -1.0, s12 / torch.where(zero, 1.0, norm)).clamp(-1.0, 1.0)
        rest = (math.pi - torch.arccos(cos)) / (2 * math.pi)  # (pi - t) / (2 pi)
        # sin t = sqrt(1 - cos^2): K = norm (sin t + (pi - t) cos t) / (2 pi)
        k = norm * (torch.sqrt(1 - cos * cos) / (2 * math.pi) + rest * cos)
        return k, (rest if derivative else None)
    a, b = 1 + 2 * s11, 1 + 2 * s22
    k = (2 / math.pi) * torch.arcsin((2 * s12 / torch.sqrt(a * b)).clamp(-1.0, 1.0))
    kdot = (4 / math.pi) / torch.sqrt(a * b - 4 * s12 * s12) if derivative else None
    return k, kdot


# ============================================================================ checks


def _variance(value: Any, name: str) -> float:
    return arg.number(value, name, minimum=0.0, meaning="a variance")


def _points(x: Any, name: str) -> Tensor:
    """``x`` as an (N, D) float64 tensor (trailing dimensions flattened)."""
    arg.check_tensor(x, name)
    if x.dim() < 2:
        raise MaxAffineError(f"{name} must be a batch (N, D) of inputs (trailing dimensions "
                             f"are flattened), got shape {tuple(x.shape)}: for one input use "
                             f"{name}.unsqueeze(0)")
    if x.shape[0] == 0:
        raise MaxAffineError(f"{name} is an empty batch (shape {tuple(x.shape)}): pass at "
                             "least one input")
    x = x.detach().to(D).reshape(x.shape[0], -1)
    if x.shape[1] == 0:
        raise MaxAffineError(f"{name} has no features (shape {tuple(x.shape)})")
    return x


def _pair(x1: Any, x2: Any) -> tuple[Tensor, Tensor]:
    if isinstance(x2, int) and not isinstance(x2, bool):
        raise MaxAffineTypeError(f"x2 must be a tensor of inputs or None, got int {x2}: the "
                                 f"depth is the third argument (f(x1, None, {x2}) or "
                                 f"depth={x2})")
    a = _points(x1, "x1")
    b = a if x2 is None else _points(x2, "x2")
    if a.shape[1] != b.shape[1]:
        raise MaxAffineError(f"x1 and x2 must have the same feature dimension: x1 has "
                             f"{a.shape[1]} features, x2 has {b.shape[1]}")
    return a, b


def _finite(k: Tensor, what: str) -> Tensor:
    """``k`` if finite, else an error (an overflow: inputs or variances too large)."""
    if not bool(torch.isfinite(k).all()):
        raise MaxAffineError(f"{what} overflowed to inf / NaN in float64: the inputs or the "
                             "variances are too large (rescale the inputs, or lower the "
                             "variances / depth)")
    return k


def _blocks(n: int, m: int) -> list[slice]:
    step = max(1, _BLOCK // max(m, 1))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


# ============================================================================ MLP kernels


def _mlp(x1: Any, x2: Any, depth: Any, activation: str, weight_var: Any, bias_var: Any,
         parametrization: str, width: Any, want_ntk: bool) -> Tensor:
    a, b = _pair(x1, x2)
    depth = arg.integer(depth, "depth", minimum=1, maximum=MAX_DEPTH,
                        meaning="number of hidden layers")
    activation = arg.choice(activation, "activation", ACTIVATIONS)
    sw = _variance(weight_var, "weight_var")
    sb = _variance(bias_var, "bias_var")
    parametrization = arg.choice(parametrization, "parametrization", PARAMETRIZATIONS)
    if parametrization == "standard" and want_ntk:
        if width is None:
            raise MaxAffineError("parametrization='standard' needs width=n (the hidden "
                                 "width): its NTK grows linearly with the width")
        width = arg.integer(width, "width", minimum=1, meaning="hidden width")
    elif width is not None:
        width = arg.integer(width, "width", minimum=1, meaning="hidden width")
    d = a.shape[1]
    out = torch.empty(a.shape[0], b.shape[0], dtype=D)
    vb = sw * (b * b).sum(1) / d + sb  # variances of the first pre-activation
    va_all = sw * (a * a).sum(1) / d + sb
    for rows in _blocks(a.shape[0], b.shape[0]):
        va, v2 = va_all[rows], vb
        dot = a[rows] @ b.T
        sigma = sw * dot / d + sb
        if parametrization == "standard":
            theta = dot + 1.0  # fan_in K + 1 with fan_in = d, K = <x, x'> / d
        else:
            theta = sigma
        for _ in range(depth):
            k, kdot = _moments(activation, va[:, None], v2[None, :], sigma, want_ntk)
            kaa, _ = _moments(activation, va, va, va, False)
            kbb, _ = _moments(activation, v2, v2, v2, False)
            new = sw * k + sb
            if want_ntk:
                own = width * k + 1.0 if parametrization == "standard" else new
                theta = own + sw * kdot * theta
            sigma, va, v2 = new, sw * kaa + sb, sw * kbb + sb
        out[rows] = theta if want_ntk else sigma
    return _finite(out, "the NTK" if want_ntk else "the NNGP kernel")


def nngp(x1: Tensor, x2: Tensor | None = None, depth: int = 1, *,
         activation: Literal["relu", "erf"] = "relu", weight_var: float = 2.0,
         bias_var: float = 0.1) -> Tensor:
    """The NNGP kernel ``E[f(x1_i) f(x2_j)]`` of a fully connected network with ``depth``
    hidden layers at infinite width (Lee et al., ICLR 2018; ReLU moments: Cho & Saul
    2009; erf: Williams 1996; recursion ``Sigma(l)`` in the module docstring). The same
    in the standard and NTK parametrizations (module docstring).

    ``x1``: (N, ...) inputs, ``x2``: (M, ...) (default ``x1``), trailing dimensions
    flattened to D features; ``weight_var = sigma_w^2`` (default 2, He), ``bias_var =
    sigma_b^2`` (default 0.1); also used for the read-out layer. Returns (N, M) float64.
    """
    return _mlp(x1, x2, depth, activation, weight_var, bias_var, "ntk", None, False)


def ntk(x1: Tensor, x2: Tensor | None = None, depth: int = 1, *,
        activation: Literal["relu", "erf"] = "relu", weight_var: float = 2.0,
        bias_var: float = 0.1, parametrization: Literal["ntk", "standard"] = "ntk",
        width: int | None = None) -> Tensor:
    """The neural tangent kernel ``sum_p df(x1_i)/dp df(x2_j)/dp`` of a fully connected
    network with ``depth`` hidden layers at infinite width (Jacot et al. 2018; Arora et
    al. 2019; recursion ``Theta(l)`` in the module docstring).

    ``parametrization="ntk"`` (default): the width-independent limit of the NTK
    parametrization. ``"standard"``: PyTorch-style layers ``W ~ N(0, sigma_w^2 /
    fan_in)``, ``b ~ N(0, sigma_b^2)``; needs ``width`` (every hidden layer's width) and
    returns the width-aware kernel (it grows linearly with ``width``). Arguments as in
    :func:`nngp`. Returns (N, M) float64.
    """
    return _mlp(x1, x2, depth, activation, weight_var, bias_var, parametrization, width,
                True)


# ============================================================================ RNTK


def _sequences(s: Any, lengths: Any, name: str) -> tuple[Tensor, Tensor]:
    """``s`` as a padded (N, T, d) float64 tensor (each sequence from index 0) and its
    (N,) int64 lengths. ``s``: a list of (T_i, d) or (T_i,) tensors, or an (N, T, d)
    tensor with optional ``lengths`` (default: all T)."""
    if isinstance(s, Tensor):
        arg.check_tensor(s, name)
        if s.dim() != 3:
            raise MaxAffineError(f"{name} must be an (N, T, d) tensor of sequences or a list "
                                 f"of (T_i, d) tensors, got shape {tuple(s.shape)}"
                                 + (f": for scalar sequences use {name}.unsqueeze(-1)"
                                    if s.dim() == 2 else ""))
        if s.shape[0] == 0 or s.shape[1] == 0 or s.shape[2] == 0:
            raise MaxAffineError(f"{name} is empty (shape {tuple(s.shape)}): pass at least "
                                 "one sequence of at least one step with >= 1 feature")
        x = s.detach().to(D)
        if lengths is None:
            lens = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        else:
            arg.indices(lengths, x.shape[1] + 1, f"lengths of {name}")  # type checks
            lens = torch.as_tensor(lengths).reshape(-1).long()
            if lens.numel() != x.shape[0]:
                raise MaxAffineError(f"lengths of {name} has {lens.numel()} entries for "
                                     f"{x.shape[0]} sequences")
            if bool((lens < 1).any()) or bool((lens > x.shape[1]).any()):
                raise MaxAffineError(f"lengths of {name} must be in [1, {x.shape[1]}], got "
                                     f"{lens.tolist()}")
        return x, lens
    if lengths is not None:
        raise MaxAffineError(f"lengths of {name} is only for a padded tensor; a list of "
                             "sequences carries its own lengths")
    if not isinstance(s, Sequence) or isinstance(s, str | bytes):
        raise MaxAffineTypeError(f"{name} must be an (N, T, d) tensor or a list of (T_i, d) "
                                 f"tensors, got {type(s).__name__}")
    if len(s) == 0:
        raise MaxAffineError(f"{name} is an empty list: pass at least one sequence")
    seqs = []
    for i, q in enumerate(s):
        arg.check_tensor(q, f"{name}[{i}]")
        if q.dim() == 1:
            q = q[:, None]
        if q.dim() != 2 or q.shape[0] == 0 or q.shape[1] == 0:
            raise MaxAffineError(f"{name}[{i}] must be a (T, d) (or (T,)) sequence with T >= "
                                 f"1, got shape {tuple(q.shape)}")
        if seqs and q.shape[1] != seqs[0].shape[1]:
            raise MaxAffineError(f"{name}[{i}] has {q.shape[1]} features but {name}[0] has "
                                 f"{seqs[0].shape[1]}: every step needs the same dimension")
        seqs.append(q.detach().to(D))
    lens = torch.tensor([q.shape[0] for q in seqs], dtype=torch.long)
    x = torch.zeros(len(seqs), int(lens.max()), seqs[0].shape[1], dtype=D)
    for i, q in enumerate(seqs):
        x[i, :q.shape[0]] = q
    return x, lens


def _end_aligned(x: Tensor, lens: Tensor, t: int) -> tuple[Tensor, Tensor]:
    """Move each sequence to end at step ``t - 1``: (N, t, d) inputs and (N, t) mask."""
    n, tmax, d = x.shape
    out = torch.zeros(n, t, d, dtype=D)
    pos = torch.arange(t)
    start = t - lens
    valid = pos[None, :] >= start[:, None]
    src = (pos[None, :] - start[:, None]).clamp(0, tmax - 1)
    out[valid] = x[torch.arange(n)[:, None].expand(n, t)[valid], src[valid]]
    return out, valid


def rntk(s1: Tensor | Sequence[Tensor], s2: Tensor | Sequence[Tensor] | None = None, *,
         lengths1: Tensor | Sequence[int] | None = None,
         lengths2: Tensor | Sequence[int] | None = None, depth: int = 1,
         activation: Literal["relu", "erf"] = "relu", recurrent_var: float = 2.0,
         input_var: float = 2.0, bias_var: float = 0.1, output_var: float = 1.0,
         kernel: Literal["ntk", "nngp"] = "ntk") -> Tensor:
    """The recurrent neural tangent kernel (Alemohammad, Wang, Balestriero & Baraniuk,
    ICLR 2021, sec. 3, Theorem 1) of the ``depth``-layer Elman RNN, NTK parametrization,
    hidden width n -> infinity, initial states 0 (the paper's ``sigma_h = 0``)::

        g(l, t) = sw / sqrt(n) W(l) h(l, t-1) + su / sqrt(m_l) U(l) h(l-1, t) + sb b(l),
        h(l, t) = phi(g(l, t)),  h(0, t) = x_t,  h(l, 0) = 0,
        f(x) = sv / sqrt(n) V h(L, T)               (read out at each sequence's last step)

    with ``m_1 = d``, ``m_l = n``, all of ``W, U, b, V`` i.i.d. N(0, 1); ``sw^2 =
    recurrent_var``, ``su^2 = input_var``, ``sb^2 = bias_var``, ``sv^2 = output_var``. The
    default ``recurrent_var = 2`` keeps a ReLU state's variance from decaying, so early
    steps still count (with ``1`` it halves every step and the kernel sees only the last
    few steps).

    **Different lengths.** The recursion for the output's kernel at steps (T, T') only
    visits pairs of steps (t, t') with ``T - t = T' - t'`` (each step back moves both by
    one, and ``h(l, 0) = 0`` ends it), so two sequences of lengths T and T' are compared
    *aligned at their ends*: step ``T - k`` of one with step ``T' - k`` of the other,
    ``k < min(T, T')``; the earlier steps of the longer one enter only through its own
    variances. This is exact for the network above, not a padding choice.

    The kernel is computed forward in time (equivalent to the paper's backward form with
    ``Pi``), per layer l and step, on end-aligned pairs of steps::

        Sigma(l, t) = sw^2 K(l, t-1) + su^2 K(l-1, t) + sb^2,   K(0, t) = <x_t, x'_t'> / d
        Theta(l, t) = Sigma(l, t) + sw^2 Kdot(l, t-1) Theta(l, t-1)
                                  + su^2 Kdot(l-1, t) Theta(l-1, t)
        ntk = sv^2 (K(L, T) + Kdot(L, T) Theta(L, T)),   nngp = sv^2 K(L, T)

    with ``K(l, 0) = Kdot(l, 0) = Theta(0, t) = 0``; K and Kdot are the Gaussian moments
    of ``phi`` (ReLU or erf, module docstring) under the covariance ``Sigma(l, t)``.

    ``s1``, ``s2`` (default ``s1``): a list of (T_i, d) (or (T_i,) scalar) tensors, or a
    padded (N, T, d) tensor whose sequences start at index 0, with ``lengths1`` /
    ``lengths2`` (default: all T). ``kernel="nngp"`` returns the GP kernel of the output
    instead. Returns (N, M) float64.
    """
    x1, l1 = _sequences(s1, lengths1, "s1")
    if s2 is None:
        if lengths2 is not None:
            raise MaxAffineError("lengths2 was given without s2")
        x2, l2 = x1, l1
    else:
        x2, l2 = _sequences(s2, lengths2, "s2")
    if x1.shape[2] != x2.shape[2]:
        raise MaxAffineError(f"s1 and s2 must have the same feature dimension: s1 has "
                             f"{x1.shape[2]} features per step, s2 has {x2.shape[2]}")
    depth = arg.integer(depth, "depth", minimum=1, maximum=MAX_DEPTH,
                        meaning="number of recurrent layers")
    activation = arg.choice(activation, "activation", ACTIVATIONS)
    kernel = arg.choice(kernel, "kernel", ("ntk", "nngp"))
    rv = _variance(recurrent_var, "recurrent_var")
    iv = _variance(input_var, "input_var")
    bv = _variance(bias_var, "bias_var")
    ov = _variance(output_var, "output_var")
    t = max(x1.shape[1], x2.shape[1])
    a, ma = _end_aligned(x1, l1, t)
    b, mb = _end_aligned(x2, l2, t)
    d = a.shape[2]
    va, vb = _self_variances(a, ma, depth, activation, rv, iv, bv), \
        _self_variances(b, mb, depth, activation, rv, iv, bv)
    out = torch.empty(a.shape[0], b.shape[0], dtype=D)
    same = s2 is None  # symmetric: compute the upper block triangle, mirror the rest
    for rows in _blocks(a.shape[0], b.shape[0]):
        cols = slice(rows.start if same else 0, b.shape[0])
        out[rows, cols] = _rntk_block(a[rows], ma[rows], [v[rows] for v in va], b[cols],
                                      mb[cols], [v[cols] for v in vb], d, activation, rv, iv,
                                      bv, ov, kernel == "ntk")
        if same:
            out[rows.stop:, rows] = out[rows, rows.stop:].T
    return _finite(out, "the RNTK" if kernel == "ntk" else "the RNN's NNGP kernel")


def _self_variances(x: Tensor, mask: Tensor, depth: int, activation: str, rv: float,
                    iv: float, bv: float) -> list[Tensor]:
    """Per layer, the (N, t) variances ``Sigma(l, t)(x, x)`` (0 before a sequence starts)."""
    n, t, d = x.shape
    out = [torch.zeros(n, t, dtype=D) for _ in range(depth)]
    k_prev = [torch.zeros(n, dtype=D) for _ in range(depth)]
    m = mask.to(D)
    for p in range(t):
        k_in = (x[:, p] * x[:, p]).sum(1) / d
        for layer in range(depth):
            v = (rv * k_prev[layer] + iv * k_in + bv) * m[:, p]
            out[layer][:, p] = v
            k, _ = _moments(activation, v, v, v, False)
            k = k * m[:, p]
            k_prev[layer], k_in = k, k
    return out


def _rntk_block(a: Tensor, ma: Tensor, va: list[Tensor], b: Tensor, mb: Tensor,
                vb: list[Tensor], d: int, activation: str, rv: float, iv: float, bv: float,
                ov: float, want_ntk: bool) -> Tensor:
    """The (n, m) kernel of end-aligned blocks ``a`` (n, t, d), ``b`` (m, t, d) with masks
    ``ma``, ``mb`` and per-layer self variances ``va``, ``vb`` (0 where masked).

    Entries of a pair before both sequences have started are never read: the ReLU moments
    vanish with a zero variance (``1 / sqrt(var)`` is set to 0 there), erf's are masked."""
    n, m, t = a.shape[0], b.shape[0], a.shape[1]
    depth = len(va)
    first = max(int((~ma).sum(1).min()), int((~mb).sum(1).min()))  # first step with a pair
    k_prev: list[Tensor | None] = [None] * depth
    kd_prev: list[Tensor | None] = [None] * depth
    th_prev: list[Tensor | None] = [None] * depth
    k = kd = theta = torch.zeros(n, m, dtype=D)
    for p in range(first, t):
        k_in = a[:, p] @ b[:, p].T
        k_in.mul_(1.0 / d)
        kd_in = th_in = None
        for layer in range(depth):
            sigma = k_in * iv
            if k_prev[layer] is not None:
                sigma.add_(k_prev[layer], alpha=rv)
            sigma.add_(bv)
            if activation == "erf":
                sigma.mul_(ma[:, p, None].to(D)).mul_(mb[None, :, p].to(D))
            if want_ntk:
                theta = sigma.clone()
                if kd_prev[layer] is not None:
                    theta.addcmul_(kd_prev[layer], th_prev[layer], value=rv)
                if kd_in is not None:
                    theta.addcmul_(kd_in, th_in, value=iv)
            k, kd = _moments_outer(activation, va[layer][:, p], vb[layer][:, p], ma[:, p],
                                   mb[:, p], sigma, want_ntk)
            k_prev[layer], kd_prev[layer], th_prev[layer] = k, kd, theta
            k_in, kd_in, th_in = k, kd, theta
    if not want_ntk:
        return ov * k
    return ov * (k + kd * theta)


def _moments_outer(activation: str, va: Tensor, vb: Tensor, ma: Tensor, mb: Tensor,
                   sigma: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
    """:func:`_moments` for variances ``va`` (n,), ``vb`` (m,) and covariances ``sigma``
    (n, m), in place where possible (the RNTK's inner loop); masked pairs give 0."""
    if activation == "relu":
        sa, sb = torch.sqrt(va), torch.sqrt(vb)
        ia = torch.where(sa > 0, 1.0 / torch.where(sa > 0, sa, 1.0), 0.0)
        ib = torch.where(sb > 0, 1.0 / torch.where(sb > 0, sb, 1.0), 0.0)
        cos = sigma * ia[:, None]
        cos.mul_(ib[None, :]).clamp_(-1.0, 1.0)
        rest = torch.arccos(cos)
        rest.sub_(math.pi).mul_(-1.0 / (2 * math.pi))  # (pi - t) / (2 pi)
        k = torch.mul(cos, cos).neg_().add_(1.0).clamp_(min=0.0).sqrt_()
        k.mul_(1.0 / (2 * math.pi)).addcmul_(rest, cos)  # sin t / (2 pi) + rest cos t
        k.mul_(sa[:, None]).mul_(sb[None, :])
        if not derivative:
            return k, None
        return k, rest.mul_((sa > 0).to(D)[:, None]).mul_((sb > 0).to(D)[None, :])
    aa, bb = 1 + 2 * va, 1 + 2 * vb
    prod = aa[:, None] * bb[None, :]
    root = torch.sqrt(prod)
    k = torch.arcsin((2 * sigma / root).clamp_(-1.0, 1.0)).mul_(2 / math.pi)
    if not derivative:
        return k, None
    kd = prod.addcmul_(sigma, sigma, value=-4.0).rsqrt_().mul_(4 / math.pi)
    return k, kd.mul_(ma.to(D)[:, None]).mul_(mb.to(D)[None, :])


# ============================================================================ empirical NTK


def empirical_ntk(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *,
                  outputs: Literal["mean", "trace", "full"] = "mean",
                  chunk: int | None = None) -> Tensor:
    """The empirical neural tangent kernel ``Theta(x1_i, x2_j) = sum_p J_p(x1_i)
    J_p(x2_j)^T`` of ``model`` at its current parameters (Jacot et al. 2018): the
    sum over every trainable parameter ``p`` (``requires_grad``) of the product of the
    Jacobians of the outputs, by :func:`torch.func.jacrev` of
    :func:`torch.func.functional_call`.

    ``x1``: (N, ...) and ``x2``: (M, ...) (default ``x1``), batches on dimension 0, fed to
    ``model`` in chunks of ``chunk`` inputs (default: ~256 MiB of Jacobian per chunk); the
    model's output per input is flattened to K values. ``outputs``: ``"full"`` returns
    (N, M, K, K) with entry ``[i, j, k, k']`` the kernel of output k at ``x1_i`` and output
    k' at ``x2_j``; ``"trace"`` the (N, M) sum over k of the diagonal ``[i, j, k, k]``;
    ``"mean"`` (default) that trace divided by K, which for a wide network with
    independent outputs approaches the one-output kernel of :func:`ntk` / :func:`rntk`.
    Models whose outputs couple the batch (batch-norm in training mode) give the kernel of
    that batch function: call ``model.eval()`` first. The dtype of the inputs must be the
    model's (use float64 for exact checks). Returns float64.
    """
    from torch.func import functional_call, jacrev

    from .graph import SplineGraph, check_parameters

    if isinstance(model, SplineGraph):  # a traced graph: the kernel of its module
        model = model.model
    if not isinstance(model, nn.Module):
        raise MaxAffineTypeError(f"model must be a torch.nn.Module (or its SplineGraph), got "
                                 f"{arg.describe(model)}")
    check_parameters(model)
    outputs = arg.choice(outputs, "outputs", OUTPUTS)
    a = _batch(x1, "x1", model)
    b = a if x2 is None else _batch(x2, "x2", model)
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    if not params:
        raise MaxAffineError("model has no trainable parameters (requires_grad=True): its "
                             "NTK is 0")
    buffers = dict(model.named_buffers())
    total = sum(v.numel() for v in params.values())

    def f(p: dict[str, Tensor], x: Tensor) -> Tensor:
        y = functional_call(model, (p, buffers), (x,))
        if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != x.shape[0]:
            raise MaxAffineError(f"model must return a tensor with the batch on dimension 0 "
                                 f"(got {arg.describe(y)} for {x.shape[0]} inputs)")
        return y.reshape(x.shape[0], -1)

    sizes = []
    for name, x in (("x1", a), ("x2", b)):
        try:
            with torch.no_grad():
                sizes.append(f(params, x[:1]).shape[1])
        except (RuntimeError, IndexError, TypeError) as err:
            raise MaxAffineError(f"model fails on {name} of shape {tuple(x.shape)} "
                                 f"({type(err).__name__}: {err})") from err
    if sizes[0] != sizes[1]:
        raise MaxAffineError(f"model gives {sizes[0]} outputs per input on x1 but {sizes[1]} "
                             "on x2")
    k_out = sizes[0]
    if chunk is None:
        chunk = max(1, (1 << 25) // max(1, total * k_out))
    chunk = arg.integer(chunk, "chunk", minimum=1, meaning="inputs per Jacobian")
    jac: Callable[[Tensor], dict[str, Tensor]] = jacrev(f)

    def jacobian(x: Tensor) -> Tensor:
        j = jac(params, x)
        return torch.cat([v.reshape(x.shape[0], k_out, -1) for v in j.values()], 2).to(D)

    out = torch.empty(a.shape[0], b.shape[0], k_out, k_out, dtype=D)
    for i in range(0, a.shape[0], chunk):
        ja = jacobian(a[i:i + chunk])
        for j in range(0, b.shape[0], chunk):
            jb = ja if x2 is None and j == i else jacobian(b[j:j + chunk])
            out[i:i + chunk, j:j + chunk] = torch.einsum("akp,bqp->abkq", ja, jb)
    _finite(out, "the empirical NTK (the model's Jacobian)")
    if outputs == "full":
        return out
    tr = out.diagonal(dim1=2, dim2=3).sum(-1)
    return tr / k_out if outputs == "mean" else tr


def _batch(x: Any, name: str, model: nn.Module) -> Tensor:
    arg.check_tensor(x, name)
    if x.dim() < 1 or x.shape[0] == 0:
        raise MaxAffineError(f"{name} must be a non-empty batch (N, ...) of inputs, got shape "
                             f"{tuple(x.shape)}")
    arg.check_dtype(model, x, name)
    return x.detach()


__all__ = ["empirical_ntk", "nngp", "ntk", "rntk"]

"""Hard, soft and beta-VQ nonlinearities ("From Hard to Soft", Balestriero & Baraniuk, ICLR 2019).

A max-affine unit with affine pieces ``l_1..l_R`` (its GMM log-odds, DESIGN.md
section 1) outputs ``z = sum_r t_r l_r`` for a *selection* ``t`` on the simplex:

* hard VQ, ``t = onehot(argmax_r l_r)``: ReLU (pieces ``(0, u)``), leaky ReLU
  (``(a u, u)``), abs (``(-u, u)``), max-pooling (one piece per window entry);
* soft VQ, ``t = softmax(l)``: ``u * sigmoid(u)`` (swish), ``u * tanh(u)``,
  softmax-weighted pooling;
* beta-VQ (ibid., eq. 12), the maximiser of ``beta <t, l> + (1 - beta) H(t)``:
  ``t = softmax(beta / (1 - beta) * l)``; beta -> 1 is hard, beta = 1/2 soft, and
  beta -> 0 the mean of the pieces (``u / 2`` for ReLU, average pooling).

Numerics.  Everything is parameterised by ``eta = logit(beta) = log(beta / (1 - beta))``:
the inverse temperature is ``exp(eta)``, and two-piece units use the sigmoid form
``z = l_0 + d * sigmoid(exp(eta) * d)`` with ``d = l_1 - l_0``, so nothing
overflows or divides by zero.  ``eta`` is clamped to ``[-40, 40]`` (beta within
4e-18 of 0 or 1, below float64 resolution at 1): ``exp(40) * 1e4`` is far from
float32 overflow and every gradient stays finite.  A *fixed* beta of exactly 1
or 0 takes an exact path (``torch.relu`` / ``max_pool`` / the plain mean), so
``soften(model, 1.0)`` reproduces the hard model bit for bit.

Axes: pieces live on a trailing axis ``R``; a unit's selection has the shape of
its pieces, ``(N, *unit_shape, R)``.  Per-channel betas use axis 1 (``C``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _arguments as arg
from .. import ops
from ..errors import MaxAffineError, MaxAffineTypeError

MAX_LOGIT = 40.0
"""``|logit(beta)|`` is clamped here: beta within ``sigmoid(-40) = 4.2e-18`` of 0 or 1."""

Kind = Literal["relu", "leaky_relu", "abs"]
KINDS: tuple[str, ...] = ("relu", "leaky_relu", "abs")


# ------------------------------------------------------------------ beta <-> logit


def _check_beta(beta: float, what: str = "beta", open_interval: bool = False) -> float:
    where = "(0, 1)" if open_interval else "[0, 1]"
    try:
        b = arg.number(beta, what)
    except MaxAffineTypeError:
        raise MaxAffineTypeError(f"{what} must be a number in {where}, got "
                                 f"{type(beta).__name__} {beta!r}") from None
    except MaxAffineError:
        b = math.nan
    ok = 0.0 < b < 1.0 if open_interval else 0.0 <= b <= 1.0
    if not ok:
        hint = (": a learnable beta is stored as its logit, so it cannot be exactly 0 or 1; "
                "pass e.g. 1e-6 or 1 - 1e-6, or learnable=False" if open_interval
                else ": 1 is the hard nonlinearity, 1/2 the soft one, 0 the mean of the pieces")
        raise MaxAffineError(f"{what} must lie in {where}, got {beta!r}{hint}")
    return b


def logit(beta: float | Tensor) -> Tensor:
    """``log(beta / (1 - beta))`` clamped to ``[-MAX_LOGIT, MAX_LOGIT]`` (exact at 0, 1)."""
    if isinstance(beta, Tensor):
        return torch.logit(beta).clamp(-MAX_LOGIT, MAX_LOGIT)
    b = _check_beta(beta)
    if b == 0.0:
        return torch.tensor(-MAX_LOGIT, dtype=torch.float64)
    if b == 1.0:
        return torch.tensor(MAX_LOGIT, dtype=torch.float64)
    value = math.log(b) - math.log1p(-b)
    return torch.tensor(min(MAX_LOGIT, max(-MAX_LOGIT, value)), dtype=torch.float64)


def _exact_end(beta: float | Tensor) -> float | None:
    """1.0 or 0.0 when ``beta`` is a Python number at an end of [0, 1], else None."""
    if isinstance(beta, Tensor):
        return None
    b = _check_beta(beta)
    return b if b in (0.0, 1.0) else None


# ------------------------------------------------------------------ pieces


def unit_pieces(u: Tensor, kind: Kind, negative_slope: float = 0.01) -> Tensor:
    """The two affine pieces of an elementwise unit, stacked on a new last axis.

    ReLU ``(0, u)``, leaky ReLU ``(a u, u)``, abs ``(-u, u)`` (Balestriero &
    Baraniuk 2018, sec. 3).  Shape ``(*u.shape, 2)``.
    """
    arg.choice(kind, "kind", KINDS)
    arg.layer_input(u, "unit_pieces", "u")
    if kind == "relu":
        return torch.stack([torch.zeros_like(u), u], -1)
    if kind == "leaky_relu":
        return torch.stack([u * negative_slope, u], -1)
    return torch.stack([-u, u], -1)


def window_pieces(
    x: Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    axis: Literal[-1, 0] = -1,
) -> tuple[Tensor, Tensor | None]:
    """The pieces of a pooling unit: its window's entries, on a new last axis.

    ``x``: (N, C, *spatial) with ``d = len(kernel)`` spatial axes. Returns
    ``pieces`` of shape (N, C, *out, K) (K = prod(kernel), entries row-major over
    the kernel: the max-pool code convention of :class:`maxaffine.ops.MaxPool`)
    and ``valid`` (bool, broadcastable, False where a window covers padding), or
    None without padding. Padded entries are 0 in ``pieces`` and never selected.
    ``axis=0`` puts the piece axis first instead, (K, N, C, *out), contiguous: the
    layout in which reductions over pieces are fastest.
    """
    d = len(kernel)
    check_windows(x, kernel, padding, dilation, "window_pieces", batched=None)
    pad = [p for a in reversed(range(d)) for p in (padding[a], padding[a])]
    mask: Tensor | None = None
    if any(padding):
        ones = torch.ones((1,) * (x.dim() - d) + tuple(x.shape[-d:]), dtype=torch.bool,
                          device=x.device)
        mask = F.pad(ones, pad, value=False)
        x = F.pad(x, pad, value=0.0)

    lead = x.dim() - d
    for a in range(d):
        span = dilation[a] * (kernel[a] - 1) + 1
        x = x.unfold(lead + a, span, stride[a])
        if mask is not None:
            mask = mask.unfold(lead + a, span, stride[a])
    index = (Ellipsis, *(slice(None, None, dl) for dl in dilation[:d]))

    def gather(t: Tensor) -> Tensor:
        t = t[index]
        if axis == -1:
            return t.flatten(-d)
        front = tuple(range(t.dim() - d, t.dim())) + tuple(range(t.dim() - d))
        return t.permute(front).reshape((math.prod(t.shape[-d:]), *t.shape[:-d]))

    x = gather(x)
    if mask is not None:
        mask = gather(mask)
        if bool(mask.all()):
            mask = None
    return x, mask


def check_windows(x: Tensor, kernel: Sequence[int], padding: Sequence[int],
                  dilation: Sequence[int], owner: str | nn.Module,
                  batched: bool | None = True) -> None:
    """An error naming ``owner`` (a name, or a module: its repr) unless ``x`` is a
    (N, C, *spatial) or (C, *spatial) tensor (any number of leading axes if
    ``batched`` is None) whose padded spatial sizes hold a whole pooling window."""
    d = len(kernel)
    if not arg.layer_input(x, owner):
        return
    if x.dim() < d + 1 or (batched is not None and x.dim() > d + 2):
        axes = {1: "L", 2: "H, W"}.get(d, ", ".join(f"S{i}" for i in range(d)))
        raise MaxAffineError(f"{owner}: pooling over {d} spatial axes needs an input "
                             f"(N, C, {axes}) or (C, {axes}), got shape {tuple(x.shape)}")
    span = [dl * (k - 1) + 1 for k, dl in zip(kernel, dilation, strict=True)]
    padded = [s + 2 * p for s, p in zip(x.shape[-d:], padding, strict=True)]
    if any(p < w for p, w in zip(padded, span, strict=True)):
        size = "x".join(map(str, x.shape[-d:]))
        raise MaxAffineError(f"{owner}: the input's spatial size {size} (padded by "
                             f"{tuple(padding)}: {'x'.join(map(str, padded))}) is smaller "
                             f"than one pooling window ({'x'.join(map(str, span))} = kernel "
                             f"{tuple(kernel)}, dilation {tuple(dilation)}): use a "
                             f"kernel_size of at most {size}, or a larger input")


# ------------------------------------------------------------------ selections


def _masked(logits: Tensor, valid: Tensor | None) -> Tensor:
    if valid is None:
        return logits
    return logits.masked_fill(~valid, -math.inf)


def _check_pieces(pieces: Tensor, dim: int, valid: Tensor | None = None) -> None:
    if not isinstance(pieces, Tensor) or not pieces.is_floating_point():
        got = f"dtype {pieces.dtype}" if isinstance(pieces, Tensor) else type(pieces).__name__
        raise MaxAffineTypeError(f"pieces must be a floating-point torch.Tensor, got {got}: "
                                 "use pieces.float()")
    arg.integer(dim, "dim", minimum=-pieces.dim(), maximum=pieces.dim() - 1)
    if valid is None:
        return
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool:
        got = f"dtype {valid.dtype}" if isinstance(valid, Tensor) else type(valid).__name__
        raise MaxAffineTypeError(f"valid must be a bool tensor (True where a piece exists), "
                                 f"got {got}")
    try:
        shape = torch.broadcast_shapes(valid.shape, pieces.shape)
    except RuntimeError:
        shape = None
    if shape != pieces.shape:
        raise MaxAffineError(f"valid of shape {tuple(valid.shape)} does not broadcast to the "
                             f"pieces' shape {tuple(pieces.shape)}")
    if pieces.numel() and not bool(valid.expand(shape).any(dim).all()):
        raise MaxAffineError("valid marks no piece of some unit as existing: every unit needs "
                             "at least one valid piece")


def hard_selection(pieces: Tensor, dim: int = -1, valid: Tensor | None = None) -> Tensor:
    """Hard VQ: one-hot of ``argmax`` over ``dim`` (ties to the first piece, the
    code convention of :func:`maxaffine.codes`)."""
    _check_pieces(pieces, dim, valid)
    if bool(torch.isnan(pieces).any()):  # argmax would select the NaN as the maximum
        raise MaxAffineError(f"pieces contain {int(torch.isnan(pieces).sum())} NaN value(s): "
                             "a NaN has no place in the order the hard selection takes")
    idx = _masked(pieces, valid).argmax(dim, keepdim=True)
    return torch.zeros_like(pieces).scatter_(dim, idx, 1.0)


def soft_selection(pieces: Tensor, dim: int = -1, valid: Tensor | None = None) -> Tensor:
    """Soft VQ: the GMM posterior ``softmax(l)`` over ``dim`` (beta = 1/2)."""
    _check_pieces(pieces, dim, valid)
    return torch.softmax(_masked(pieces, valid), dim)


def vq_selection(
    pieces: Tensor, beta: float | Tensor, dim: int = -1, valid: Tensor | None = None
) -> Tensor:
    """beta-VQ selection ``t = softmax(beta / (1 - beta) * l)`` over ``dim``.

    ``beta``: a number in [0, 1] or a tensor broadcastable to ``pieces``; a number
    exactly 1 gives :func:`hard_selection`, exactly 0 the uniform selection over the
    valid pieces.  ``valid``: optional mask of pieces that exist (pooling padding).
    """
    _check_pieces(pieces, dim, valid)
    end = _exact_end(beta)
    if end == 1.0:
        return hard_selection(pieces, dim, valid)
    if end == 0.0:
        ones = torch.ones_like(pieces) if valid is None else valid.to(pieces.dtype).expand_as(
            pieces)
        return ones / ones.sum(dim, keepdim=True)
    tau = logit(beta).to(pieces).exp()
    return torch.softmax(_masked(tau * pieces, valid), dim)


def beta_vq(
    pieces: Tensor, beta: float | Tensor, dim: int = -1, valid: Tensor | None = None
) -> Tensor:
    """The beta-VQ output ``z = sum_r t_r l_r`` with ``t = vq_selection(pieces, beta)``."""
    t = vq_selection(pieces, beta, dim, valid)
    if valid is not None:
        pieces = pieces.masked_fill(~valid, 0.0)
    return (t * pieces).sum(dim)


# ------------------------------------------------------------------ modules


class _BetaModule(nn.Module):
    """Holds beta as its logit ``eta`` (a parameter when learnable, else a buffer),
    one per layer (shape ``()``) or per channel (shape ``(C,)``, axis 1)."""

    logit_beta: Tensor

    def __init__(self, beta: float | Sequence[float] | Tensor, learnable: bool,
                 per_channel: int | None):
        super().__init__()
        learnable = arg.flag(learnable, "learnable")
        try:
            if isinstance(beta, str | bytes | bool) or (
                    isinstance(beta, Tensor) and beta.dtype == torch.bool) or (
                    isinstance(beta, Sequence) and any(isinstance(b, bool) for b in beta)):
                raise TypeError
            values = torch.as_tensor(beta, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise MaxAffineTypeError(f"beta must be a number in [0, 1], or one per channel "
                                     f"(a list or tensor), got {type(beta).__name__} "
                                     f"{beta!r}") from None
        if per_channel is not None:
            per_channel = arg.integer(per_channel, "per_channel", minimum=1,
                                      meaning="the channel count, or None for one beta")
            if values.numel() == 1:
                values = values.expand(per_channel)
            elif values.numel() != per_channel:
                raise MaxAffineError(f"beta has {values.numel()} values but per_channel="
                                     f"{per_channel}: pass one beta, or one per channel")
        elif values.numel() != 1:
            raise MaxAffineError(f"beta has {values.numel()} values: pass per_channel="
                                 f"{values.numel()} for one beta per channel")
        for b in values.tolist():
            _check_beta(b, "learnable beta" if learnable else "beta", open_interval=learnable)
        eta = torch.stack([logit(float(b)) for b in values.tolist()]).float()
        eta = eta.reshape(()) if per_channel is None else eta
        self.learnable = bool(learnable)
        self.per_channel = per_channel
        if learnable:
            self.logit_beta = nn.Parameter(eta)
        else:
            self.register_buffer("logit_beta", eta)

    @property
    def beta(self) -> Tensor:
        """beta in [0, 1] for reading: a 0-d tensor, or (C,) per channel, detached (the
        trained parameter is ``logit_beta``; ``torch.sigmoid(logit_beta)`` is
        differentiable)."""
        return torch.sigmoid(self.logit_beta.detach().clamp(-MAX_LOGIT, MAX_LOGIT))

    def _exact(self) -> float | None:
        """1.0 / 0.0 when the (fixed) beta is exactly hard / linear in every channel."""
        if self.learnable:
            return None
        eta = self.logit_beta
        if bool((eta >= MAX_LOGIT).all()):
            return 1.0
        if bool((eta <= -MAX_LOGIT).all()):
            return 0.0
        return None

    def _inverse_temperature(self, x: Tensor, trailing: int) -> Tensor:
        """``beta / (1 - beta) = exp(eta)`` shaped to broadcast against ``x`` with its
        channel axis at 1 and ``trailing`` extra trailing axes."""
        tau = self.logit_beta.clamp(-MAX_LOGIT, MAX_LOGIT).exp().to(x.dtype)
        if self.per_channel is None:
            return tau
        if x.dim() < 2 or x.shape[1] != self.per_channel:
            raise MaxAffineError(f"{type(self).__name__} has per_channel={self.per_channel} "
                                 f"betas (channel axis 1) but got input of shape "
                                 f"{tuple(x.shape)}: pass (N, {self.per_channel}, ...) or "
                                 "build the module with the input's channel count")
        return tau.reshape((1, -1) + (1,) * (x.dim() - 2 + trailing))

    def extra_repr(self) -> str:
        beta = self.beta.detach()
        b = f"{float(beta):.4g}" if beta.dim() == 0 else f"per_channel={self.per_channel}"
        return f"beta={b}, learnable={self.learnable}"


class BetaVQ(_BetaModule):
    """beta-VQ activation ("From Hard to Soft", ICLR 2019, eq. 12): the unit's pieces
    ``l`` (ReLU ``(0, u)``, leaky ReLU ``(a u, u)``, abs ``(-u, u)``) combined as
    ``z = sum_r t_r l_r`` with ``t = softmax(beta / (1 - beta) * l)``.

    Closed forms (``tau = beta / (1 - beta)``): ReLU ``u * sigmoid(tau u)`` (swish
    at beta = 1/2), leaky ReLU ``a u + (1 - a) u sigmoid(tau (1 - a) u)``, abs
    ``u * tanh(tau u)``.  beta -> 1: the hard nonlinearity; beta -> 0: the mean
    of the pieces (``u / 2``, ``(1 + a) u / 2``, ``0``).

    ``learnable``: beta is a parameter through its logit, so it stays in (0, 1);
    ``per_channel``: C for one beta per channel (axis 1), None for one per layer.
    ``module.beta`` reads it.
    """

    def __init__(self, kind: Kind = "relu", beta: float | Sequence[float] | Tensor = 0.5,
                 learnable: bool = False, per_channel: int | None = None,
                 negative_slope: float = 0.01):
        arg.choice(kind, "kind", KINDS)
        slope = arg.number(negative_slope, "negative_slope", meaning="a in the pieces (a u, u)")
        if not 0.0 <= slope < 1.0:
            raise MaxAffineError(f"negative_slope must lie in [0, 1) (pieces (a u, u) with "
                                 f"a < 1), got {negative_slope!r}")
        super().__init__(beta, learnable, per_channel)
        self.kind = kind
        self.negative_slope = float(negative_slope)

    def forward(self, u: Tensor) -> Tensor:
        arg.layer_input(u, self)
        end = self._exact()
        a = self.negative_slope if self.kind == "leaky_relu" else 0.0
        if end == 1.0:
            if self.kind == "relu":
                return torch.relu(u)
            return u.abs() if self.kind == "abs" else F.leaky_relu(u, a)
        if end == 0.0:
            return u * 0.0 if self.kind == "abs" else u * ((1.0 + a) / 2.0)
        tau = self._inverse_temperature(u, 0)
        if self.kind == "relu":
            return u * torch.sigmoid(tau * u)
        if self.kind == "abs":
            return u * torch.tanh(tau * u)
        d = u * (1.0 - a)
        return u * a + d * torch.sigmoid(tau * d)

    def pieces(self, u: Tensor) -> tuple[Tensor, None]:
        """The unit's affine pieces (N, ..., 2) and no padding mask."""
        return unit_pieces(u, self.kind, self.negative_slope), None

    def selection(self, u: Tensor, beta: float | Tensor | None = None) -> Tensor:
        """Posterior over the pieces (N, ..., 2) at this module's beta (or ``beta``)."""
        arg.layer_input(u, self)
        pieces, _ = self.pieces(u)
        if beta is not None:
            return vq_selection(pieces, beta)
        end = self._exact()
        if end is not None:
            return vq_selection(pieces, end)
        return torch.softmax(self._inverse_temperature(u, 1) * pieces, -1)

    def extra_repr(self) -> str:
        slope = f", negative_slope={self.negative_slope}" if self.kind == "leaky_relu" else ""
        return f"kind={self.kind!r}, {super().extra_repr()}{slope}"


class _BetaVQPool(_BetaModule):
    """beta-VQ pooling: each window's entries are its pieces."""

    spatial_dims: int = 2

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 beta: float | Sequence[float] | Tensor = 0.5, padding: int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, learnable: bool = False,
                 per_channel: int | None = None):
        super().__init__(beta, learnable, per_channel)
        d = self.spatial_dims

        def tup(v: int | Sequence[int], what: str, minimum: int) -> tuple[int, ...]:
            if isinstance(v, str | bytes) or not isinstance(v, Sequence | numbers.Integral
                                                            | Tensor):
                raise MaxAffineTypeError(f"{what} must be an int or {d} ints, got "
                                         f"{type(v).__name__} {v!r}")
            if isinstance(v, Sequence):
                t = tuple(arg.integer(e, f"{what}[{i}]", minimum=minimum)
                          for i, e in enumerate(v))
            else:
                t = (arg.integer(v, what, minimum=minimum),) * d
            if len(t) != d:
                raise MaxAffineError(f"{what} needs {d} value(s), got {v!r}")
            return t

        self.kernel_size = tup(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else tup(stride, "stride", 1)
        self.padding = tup(padding, "padding", 0)
        self.dilation = tup(dilation, "dilation", 1)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise MaxAffineError(f"padding {self.padding} must be at most half of kernel_size "
                                 f"{self.kernel_size} (as for max-pooling)")

    def pieces(self, x: Tensor, axis: Literal[-1, 0] = -1) -> tuple[Tensor, Tensor | None]:
        """Window entries (N, C, *out, K) and the padding mask (or None)."""
        return window_pieces(x, self.kernel_size, self.stride, self.padding, self.dilation,
                             axis)

    def forward(self, x: Tensor) -> Tensor:
        if arg.layer_input(x, self):  # not under torch.fx tracing (proxies)
            check_windows(x, self.kernel_size, self.padding, self.dilation, self)
        end = self._exact()
        if end == 1.0:
            pool = F.max_pool1d if self.spatial_dims == 1 else F.max_pool2d
            return pool(x, self.kernel_size, self.stride, self.padding, self.dilation)
        pieces, valid = self.pieces(x, axis=0)  # (K, N, C, *out): fast reductions
        if end == 0.0:
            return beta_vq(pieces, 0.0, 0, valid)
        logits = _masked(self._inverse_temperature(x, 0) * pieces, valid)
        t = torch.softmax(logits, 0)
        return (t * pieces).sum(0)

    def selection(self, x: Tensor, beta: float | Tensor | None = None) -> Tensor:
        """Posterior over each window's entries (N, C, *out, K)."""
        pieces, valid = self.pieces(x)
        if beta is None:
            end = self._exact()
            beta = end if end is not None else None
        if beta is not None:
            return vq_selection(pieces, beta, -1, valid)
        return torch.softmax(_masked(self._inverse_temperature(x, 1) * pieces, valid), -1)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, {super().extra_repr()}")


class BetaVQPool1d(_BetaVQPool):
    """beta-VQ pooling over (N, C, L): max-pool at beta -> 1, softmax-weighted pooling
    at 1/2, average pooling at beta -> 0 ("From Hard to Soft", ICLR 2019, sec. 4)."""

    spatial_dims = 1


class BetaVQPool2d(_BetaVQPool):
    """beta-VQ pooling over (N, C, H, W): max-pool at beta -> 1, softmax-weighted
    pooling at 1/2, average pooling at beta -> 0 ("From Hard to Soft", ICLR 2019,
    sec. 4). Padded window entries are not pieces (max-pool semantics; at beta -> 0
    average pooling with ``count_include_pad=False``)."""

    spatial_dims = 2


class Abs(nn.Module):
    """``|u|`` as a module (pieces ``(-u, u)``), so abs networks can be built from
    factories and softened with :func:`maxaffine.soften`. Registered with the
    spline graph as the :class:`maxaffine.ops.Abs` nonlinearity."""

    def forward(self, u: Tensor) -> Tensor:
        arg.layer_input(u, "Abs")
        return u.abs()


ops.register_op(Abs, ops.Abs)

BETA_MODULES: tuple[type[nn.Module], ...] = (BetaVQ, _BetaVQPool)
"""Module types whose output is a beta-VQ (for :func:`maxaffine.vq_posterior`)."""

__all__ = [
    "Abs", "BetaVQ", "BetaVQPool1d", "BetaVQPool2d", "beta_vq", "hard_selection", "logit",
    "soft_selection", "unit_pieces", "vq_selection", "window_pieces",
]

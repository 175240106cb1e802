"""A ReLU layer as one step of non-negative orthogonal sparse coding.

Bowren ("A Sparse Coding Interpretation of Neural Networks and Theoretical
Implications", 2021) reads ``ReLU(W x + b)`` as the MAP code of a sparse-coding model.
With a dictionary ``Phi`` (D x K, one atom per column), Gaussian noise of
variance ``sigma^2`` and an independent prior on each coefficient, the MAP code
minimises

    E(a) = 1/2 ||x - Phi a||^2 + sum_k t_k |a_k|,    t_k = sigma^2 lambda_k >= 0,

over ``a >= 0`` for the non-negative *exponential* prior ``p(a_k) ~ exp(-lambda_k a_k)``,
and over all ``a`` for the *Laplace* prior ``p(a_k) ~ exp(-lambda_k |a_k|)``.
When the atoms are orthonormal (``Phi^T Phi = I``, so K <= D) the energy
separates per coefficient, ``||x - Phi a||^2 = ||Phi^T x - a||^2 + const``, and
the minimiser is closed-form:

    exponential prior:  a = ReLU(Phi^T x - t)
    Laplace prior:      a = sign(u) ReLU(|u| - t),   u = Phi^T x  (soft threshold).

So a ReLU layer with weight ``W = Phi^T`` and bias ``b = -t <= 0`` is exactly one
step of non-negative orthogonal sparse coding (DESIGN.md section 1).

:class:`SparseCoding` and :class:`SparseCodingConv2d` are trainable layers whose
output is that MAP code. With ``orthogonal=True`` the dictionary is kept
orthonormal by :func:`maxaffine.orthogonal.orthogonal_filters` on the analysis
weight ``Phi^T`` (a product of Householder reflections, orthonormal for every
value of its parameter, so under any optimizer and weight decay), so the output
*is* the exact minimiser of ``E``. An orthonormal dictionary cannot be
overcomplete: asking for more atoms than dimensions (K > D) with
``orthogonal=True`` raises an error. With
``orthogonal=False`` any K is allowed and the layer computes the same formula,
which is then the first proximal-gradient (ISTA) step from ``a = 0`` with unit
step, not the exact MAP code; :meth:`orthogonality` says how far the dictionary
is from orthonormal.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .. import _arguments as arg
from .._arguments import check_tensor
from ..errors import MaxAffineError, MaxAffineTypeError
from ..graph import check_parameters
from ..orthogonal import orthogonal_filters

Prior = Literal["exponential", "laplace"]
_PRIORS = ("exponential", "laplace")
_MIN_THRESHOLD = 1e-12  # softplus cannot reach 0 exactly; thresholds below this count as 0


@dataclass(frozen=True)
class OrthogonalityReport:
    """How far a dictionary ``Phi`` (D x K) is from having orthonormal atoms.

    ``gram_error``: ``||Phi^T Phi - I||_F``; ``relative_gram_error``: that over
    ``sqrt(K)``; ``distance``: ``||Phi - Q||_F / ||Phi||_F`` with ``Q`` the nearest
    matrix with orthonormal columns (the polar factor; ``nan`` when K > D, or when
    ``Phi = 0``, which is equally far from every orthonormal matrix); ``coherence``:
    the largest ``|cos|`` between two nonzero atoms (zero atoms count as orthogonal);
    ``norm_min`` / ``norm_max``: the atoms' norms; ``overcomplete``: K > D (then no
    orthonormal dictionary exists); ``clamped_thresholds``: when read from an
    ordinary layer, how many units had a positive bias, i.e. a negative threshold
    that no prior with ``lambda >= 0`` explains (set to 0 in the sparse coder).
    """

    in_features: int
    out_features: int
    gram_error: float
    relative_gram_error: float
    distance: float
    coherence: float
    norm_min: float
    norm_max: float
    overcomplete: bool
    clamped_thresholds: int = 0

    @property
    def exact(self) -> bool:
        """Whether the thresholded code is the exact MAP code (orthonormal atoms,
        tolerance 1e-4 relative)."""
        return not self.overcomplete and self.relative_gram_error < 1e-4

    def to_json(self) -> str:
        """The report as JSON (a ``nan`` distance as null)."""
        d = {k: (None if isinstance(v, float) and math.isnan(v) else v)
             for k, v in asdict(self).items()}
        return json.dumps(d)

    def __str__(self) -> str:
        lines = [
            f"dictionary {self.in_features} x {self.out_features}"
            + (" (overcomplete: cannot be orthonormal)" if self.overcomplete else ""),
            f"  ||Phi^T Phi - I||_F = {self.gram_error:.4g} "
            f"({self.relative_gram_error:.4g} per sqrt(atom))",
            f"  distance to nearest orthonormal = {self.distance:.4g} (relative)",
            f"  coherence = {self.coherence:.4g}; atom norms in "
            f"[{self.norm_min:.4g}, {self.norm_max:.4g}]",
        ]
        if self.clamped_thresholds:
            lines.append(f"  {self.clamped_thresholds} positive bias(es) clamped to threshold 0")
        lines.append("  the code is the exact MAP code" if self.exact else
                     "  the code is one thresholding step, not the exact MAP code")
        return "\n".join(lines)


def orthogonality_report(dictionary: Tensor, clamped_thresholds: int = 0) -> OrthogonalityReport:
    """An :class:`OrthogonalityReport` for ``dictionary`` (D x K, atoms as columns)."""
    if not isinstance(dictionary, Tensor):
        raise MaxAffineTypeError(f"dictionary must be a torch.Tensor (D, K), got "
                                 f"{type(dictionary).__name__}")
    if dictionary.dim() != 2 or not dictionary.numel():
        raise MaxAffineError(f"dictionary must be a matrix (D, K) with D, K >= 1 (atoms as "
                             f"columns), got shape {tuple(dictionary.shape)}")
    check_tensor(dictionary.detach(), "dictionary")
    clamped_thresholds = arg.integer(clamped_thresholds, "clamped_thresholds", minimum=0,
                                     meaning="how many biases were clamped")
    phi = dictionary.detach().to(torch.float64)
    d, k = phi.shape
    gram = phi.T @ phi
    eye = torch.eye(k, dtype=phi.dtype)
    gram_error = float(torch.linalg.matrix_norm(gram - eye))
    norms = phi.norm(dim=0)
    peak = phi.abs().amax(0)  # scale first: squares of tiny atoms underflow
    unit = F.normalize(phi / torch.where(peak > 0, peak, 1.0), dim=0)  # zero atoms stay 0
    cos = unit.T @ unit
    coherence = float((cos - torch.diag(torch.diag(cos))).abs().max()) if k > 1 else 0.0
    size = float(torch.linalg.matrix_norm(phi))
    if k <= d and size > 0:
        dist = float(torch.linalg.matrix_norm(phi - nearest_orthonormal(phi))) / size
    else:
        dist = math.nan
    return OrthogonalityReport(
        in_features=d, out_features=k, gram_error=gram_error,
        relative_gram_error=gram_error / math.sqrt(k), distance=dist, coherence=coherence,
        norm_min=float(norms.min()), norm_max=float(norms.max()), overcomplete=k > d,
        clamped_thresholds=clamped_thresholds,
    )


def nearest_orthonormal(phi: Tensor) -> Tensor:
    """The matrix with orthonormal columns nearest to ``phi`` (D x K, K <= D) in
    Frobenius norm: the polar factor ``U V^T`` of ``phi = U S V^T``."""
    if not isinstance(phi, Tensor):
        raise MaxAffineTypeError(f"phi must be a torch.Tensor (D, K), got {type(phi).__name__}")
    if phi.dim() < 2:
        raise MaxAffineError(f"phi must be a matrix (D, K) (or a batch of them), got shape "
                             f"{tuple(phi.shape)}")
    check_tensor(phi.detach(), "phi")
    work = phi if phi.dtype in (torch.float32, torch.float64) else phi.float()  # half: no SVD
    u, _, vh = torch.linalg.svd(work, full_matrices=False)
    return (u @ vh).to(phi.dtype)


def _check_prior(prior: str) -> str:
    return arg.choice(prior, "prior", _PRIORS)


def _check_complete(d: int, k: int, what: str) -> None:
    if k > d:
        raise MaxAffineError(
            f"orthogonal=True needs at most as many atoms as dimensions, but {what}: "
            f"{k} atoms of dimension {d}. An orthonormal dictionary cannot be overcomplete; "
            "use fewer atoms, or orthogonal=False (then the output is one thresholding "
            "step, i.e. the first ISTA iterate, not the exact MAP code)"
        )


def _inverse_softplus(t: Tensor) -> Tensor:
    t = t.clamp_min(_MIN_THRESHOLD)
    return t + torch.log(-torch.expm1(-t))  # log(exp(t) - 1), stable for small and large t


class _SparseCoder(nn.Module):
    """What both layers share: the prior, the learned thresholds, the code map."""

    prior: str
    orthogonal: bool

    def _init_thresholds(self, k: int, init_threshold: float) -> None:
        init_threshold = arg.number(init_threshold, "init_threshold", minimum=0.0,
                                    maximum=torch.finfo(torch.float32).max,
                                    meaning="sigma^2 lambda, stored in float32")
        # thresholds = softplus(raw_thresholds) >= 0 keeps a gradient everywhere.
        self.raw_thresholds = nn.Parameter(
            _inverse_softplus(torch.full((k,), float(init_threshold))))

    @property
    def thresholds(self) -> Tensor:
        """Per-atom thresholds ``t_k = sigma^2 lambda_k >= 0``, shape (K,)."""
        return F.softplus(self.raw_thresholds)

    @thresholds.setter
    def thresholds(self, value: Tensor) -> None:
        value = torch.as_tensor(value, dtype=self.raw_thresholds.dtype)
        if value.shape != self.raw_thresholds.shape:
            raise MaxAffineError(f"thresholds must have shape {tuple(self.raw_thresholds.shape)}"
                                 f", got {tuple(value.shape)}")
        if bool((value < 0).any()):
            raise MaxAffineError("thresholds must be >= 0 (sigma^2 lambda with lambda >= 0)")
        with torch.no_grad():
            self.raw_thresholds.copy_(_inverse_softplus(value))

    def _shrink(self, u: Tensor, t: Tensor) -> Tensor:
        # Written with ReLU and subtraction only, so maxaffine.trace sees a spline.
        if self.prior == "exponential":
            return F.relu(u - t)
        return F.relu(u - t) - F.relu(-u - t)

    @property
    def dictionary(self) -> Tensor:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def orthogonality(self) -> OrthogonalityReport:
        """How far the current dictionary is from orthonormal (see
        :class:`OrthogonalityReport`)."""
        return orthogonality_report(self.dictionary)

    def objective(self, x_patches: Tensor, code: Tensor) -> Tensor:
        """The sparse-coding energy ``1/2 ||p - Phi a||^2 + sum_k t_k |a_k|`` per
        signal: ``x_patches`` (..., D), ``code`` (..., K) -> (...)."""
        phi = self.dictionary
        d, k = phi.shape
        for what, t, size in (("x_patches", x_patches, d), ("code", code, k)):
            if arg.layer_input(t, f"{type(self).__name__}.objective", what, phi.dtype) and (
                    t.dim() == 0 or t.shape[-1] != size):
                raise MaxAffineError(f"{what} must have shape (..., {size}), got "
                                     f"{tuple(t.shape)}")
        if x_patches.shape[:-1] != code.shape[:-1]:
            raise MaxAffineError(f"x_patches {tuple(x_patches.shape)} and code "
                                 f"{tuple(code.shape)} must have the same leading axes: one "
                                 "code per signal")
        resid = x_patches - code @ phi.T
        return 0.5 * resid.pow(2).sum(-1) + (code.abs() * self.thresholds).sum(-1)

    def extra_repr(self) -> str:
        return f"prior={self.prior!r}, orthogonal={self.orthogonal}"


class SparseCoding(_SparseCoder):
    """The MAP code of sparse coding with dictionary ``Phi`` (``in_features`` x
    ``out_features``) and learned thresholds (Bowren 2021; DESIGN.md section 1).

    ``forward(x)``, x of shape (..., in_features), returns the code (...,
    out_features): ``ReLU(Phi^T x - t)`` for ``prior='exponential'`` (a
    non-negative code; exactly a ReLU layer with weight ``Phi^T`` and bias ``-t``),
    the soft threshold ``sign(u) ReLU(|u| - t)``, ``u = Phi^T x``, for
    ``prior='laplace'``.

    ``orthogonal=True`` (default) keeps ``Phi^T Phi = I`` through
    :func:`maxaffine.orthogonal.orthogonal_filters` on the analysis weight
    ``Phi^T`` (orthonormal for every value of the parameter
    ``linear.parametrizations.weight.original``), so the output is the exact minimiser of
    ``1/2 ||x - Phi a||^2 + sum_k t_k |a_k|`` (over ``a >= 0`` for the exponential
    prior). It requires ``out_features <= in_features`` (an orthonormal dictionary
    cannot be overcomplete) and raises :class:`~maxaffine.MaxAffineError` otherwise.
    ``orthogonal=False`` allows any shape; the output is then one thresholding
    step, not the exact MAP code.

    Attributes: ``dictionary`` (D, K), ``thresholds`` (K,) (``softplus`` of the
    parameter ``raw_thresholds``, so always >= 0), ``linear`` (the bias-free
    ``nn.Linear`` computing ``Phi^T x``). ``reconstruct(code)`` gives ``Phi a``.
    """

    def __init__(self, in_features: int, out_features: int, prior: Prior = "exponential",
                 orthogonal: bool = True, *, init_threshold: float = 0.1) -> None:
        super().__init__()
        in_features = arg.integer(in_features, "in_features", minimum=1)
        out_features = arg.integer(out_features, "out_features", minimum=1)
        self.prior = _check_prior(prior)
        self.orthogonal = orthogonal = arg.flag(orthogonal, "orthogonal")
        if orthogonal:
            _check_complete(in_features, out_features, f"SparseCoding({in_features}, "
                            f"{out_features}) asks for")
        self.in_features, self.out_features = in_features, out_features
        self.linear = nn.Linear(in_features, out_features, bias=False)
        if orthogonal:
            orthogonal_filters(self.linear)
        self._init_thresholds(out_features, init_threshold)

    @property
    def dictionary(self) -> Tensor:
        """``Phi``, shape (in_features, out_features): the atoms are its columns."""
        return self.linear.weight.T

    def forward(self, x: Tensor) -> Tensor:
        self._check_last(x, "input", self.in_features)
        return self._shrink(self.linear(x), self.thresholds)

    def reconstruct(self, code: Tensor) -> Tensor:
        """``Phi a``: (..., out_features) -> (..., in_features)."""
        self._check_last(code, "code", self.out_features)
        return F.linear(code, self.dictionary)

    def _check_last(self, x: Tensor, what: str, size: int) -> None:
        me = f"SparseCoding({self.in_features}, {self.out_features})"
        if arg.layer_input(x, me, what, self.raw_thresholds.dtype) and (
                x.dim() == 0 or x.shape[-1] != size):
            raise MaxAffineError(f"{me} takes {what}s (..., {size}), got shape "
                                 f"{tuple(x.shape)}")

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, prior: Prior = "exponential",
                    orthogonal: bool = False) -> SparseCoding:
        """Read ``ReLU(linear(x))`` as a sparse coder: ``Phi = W^T``, ``t = -b``.

        Positive biases (negative thresholds, which no prior with ``lambda >= 0``
        explains) are clamped to threshold 0. With ``orthogonal=False`` (default)
        the dictionary is ``W^T`` itself, so the layer equals ``ReLU(linear(x))``
        whenever ``b <= 0``; with ``orthogonal=True`` it is the nearest orthonormal
        dictionary (polar factor of ``W^T``). The returned layer's ``source_report``
        (an :class:`OrthogonalityReport`) says how far ``W^T`` is from orthonormal
        and how many biases were clamped.
        """
        if not isinstance(linear, nn.Linear):
            raise MaxAffineError(f"from_linear needs a torch.nn.Linear, got "
                                 f"{type(linear).__name__}")
        check_parameters(linear)
        w = linear.weight.detach()
        b = linear.bias.detach() if linear.bias is not None else torch.zeros(w.shape[0])
        layer = cls(linear.in_features, linear.out_features, prior, orthogonal,
                    init_threshold=0.0)
        layer.to(dtype=w.dtype, device=w.device)
        with torch.no_grad():
            weight = nearest_orthonormal(w.T).T if orthogonal else w
            _set_weight(layer.linear, weight)
        layer.thresholds = (-b).clamp_min(0)
        layer.source_report = orthogonality_report(w.T, int((b > 0).sum()))
        return layer


class SparseCodingConv2d(_SparseCoder):
    """Patch-wise sparse coding as a convolution (Bowren 2021): every
    ``kernel_size`` patch ``p`` of the (zero-padded) input, flattened to
    D = in_channels * kh * kw values, is coded independently by
    ``ReLU(Phi^T p - t)`` (exponential prior) or the soft threshold (Laplace),
    with one atom per output channel and one threshold per atom.

    With ``orthogonal=True`` the flattened filters are kept orthonormal by
    :func:`maxaffine.orthogonal.orthogonal_filters` (as for :class:`SparseCoding`),
    so each output pixel is the exact MAP code of its patch;
    ``out_channels <= in_channels * kh * kw`` is then required. Overlapping
    patches are coded independently: this is not the MAP code of a convolutional
    sparse-coding model of the whole image.

    Attributes: ``dictionary`` (D, K), ``thresholds`` (K,), ``conv`` (the
    bias-free ``nn.Conv2d``); ``patches(x)`` (N, L, D) lists the coded patches;
    ``reconstruct(code, output_size)`` averages the patches' reconstructions
    ``Phi a`` where they overlap.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 prior: Prior = "exponential", orthogonal: bool = True, *,
                 init_threshold: float = 0.1) -> None:
        super().__init__()
        in_channels = arg.integer(in_channels, "in_channels", minimum=1)
        out_channels = arg.integer(out_channels, "out_channels", minimum=1)
        kernel_size = arg.pair(kernel_size, "kernel_size")
        stride = arg.pair(stride, "stride")
        padding = arg.pair(padding, "padding", minimum=0)
        self.prior = _check_prior(prior)
        self.orthogonal = orthogonal = arg.flag(orthogonal, "orthogonal")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        d = in_channels * math.prod(self.conv.kernel_size)
        if orthogonal:
            _check_complete(d, out_channels, f"SparseCodingConv2d({in_channels}, "
                            f"{out_channels}, kernel_size={self.conv.kernel_size}) asks for")
            orthogonal_filters(self.conv)
        self._init_thresholds(out_channels, init_threshold)

    @property
    def dictionary(self) -> Tensor:
        """``Phi``, shape (in_channels * kh * kw, out_channels): one atom per column,
        in the order of ``F.unfold`` (channel-major, then rows, then columns)."""
        return self.conv.weight.flatten(1).T

    def forward(self, x: Tensor) -> Tensor:
        self._check_image(x)
        return self._shrink(self.conv(x), self.thresholds.view(-1, 1, 1))

    def _check_image(self, x: Tensor) -> None:
        c = self.conv
        me = f"SparseCodingConv2d({c.in_channels}, {c.out_channels}, {c.kernel_size})"
        arg.image_input(x, me, c.in_channels, c.kernel_size, c.padding,
                        self.raw_thresholds.dtype)

    def patches(self, x: Tensor) -> Tensor:
        """The zero-padded patches the layer codes, (N, L, D), L = output pixels
        in row-major order: ``forward(x)[n, :, i, j]`` codes ``patches(x)[n, i * W' + j]``."""
        self._check_image(x)
        c = self.conv
        return F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride).transpose(1, 2)

    def reconstruct(self, code: Tensor, output_size: tuple[int, int]) -> Tensor:
        """Reconstruct an image (N, C, H, W) from a code (N, K, H', W'): each patch
        becomes ``Phi a`` and overlapping patches are averaged (the least-squares
        image for those patch estimates; padding is dropped)."""
        c = self.conv
        output_size = arg.pair(output_size, "output_size")
        arg.layer_input(code, "SparseCodingConv2d.reconstruct", "code",
                        self.raw_thresholds.dtype)
        if code.dim() != 4 or code.shape[1] != c.out_channels:
            raise MaxAffineError(f"code must be (N, {c.out_channels}, H', W'), got shape "
                                 f"{tuple(code.shape)}")
        out = [(s + 2 * p - k) // st + 1 for s, p, k, st in zip(
            output_size, c.padding, c.kernel_size, c.stride, strict=True)]
        if tuple(code.shape[-2:]) != tuple(out):
            raise MaxAffineError(f"a code of spatial size {tuple(code.shape[-2:])} does not come "
                                 f"from images of size {output_size} (their codes are "
                                 f"{tuple(out)}): pass the coded images' (H, W) as output_size")
        n = code.shape[0]
        cols = self.dictionary @ code.flatten(2)  # (N, D, L)
        args = dict(kernel_size=c.kernel_size, dilation=c.dilation, padding=c.padding,
                    stride=c.stride)
        image = F.fold(cols, output_size, **args)
        ones = torch.ones(n, math.prod(c.kernel_size), cols.shape[-1], dtype=cols.dtype,
                          device=cols.device)
        count = F.fold(ones, output_size, **args)
        return image / count.clamp_min(1)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, prior: Prior = "exponential",
                  orthogonal: bool = False) -> SparseCodingConv2d:
        """Read ``ReLU(conv(x))`` as a patch-wise sparse coder (the convolutional
        counterpart of :meth:`SparseCoding.from_linear`; ``source_report`` is set
        the same way)."""
        if not isinstance(conv, nn.Conv2d):
            raise MaxAffineError(f"from_conv needs a torch.nn.Conv2d, got {type(conv).__name__}")
        check_parameters(conv)
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
            raise MaxAffineError("from_conv supports groups=1, dilation=1 and zero padding only")
        w = conv.weight.detach()
        b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0])
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, prior, orthogonal, init_threshold=0.0)
        layer.to(dtype=w.dtype, device=w.device)
        with torch.no_grad():
            phi = w.flatten(1).T
            weight = nearest_orthonormal(phi).T.reshape(w.shape) if orthogonal else w
            _set_weight(layer.conv, weight)
        layer.thresholds = (-b).clamp_min(0)
        layer.source_report = orthogonality_report(w.flatten(1).T, int((b > 0).sum()))
        return layer



def _set_weight(module: nn.Module, weight: Tensor) -> None:
    """Assign a weight, through the parametrization's right inverse when there is one."""
    if parametrize.is_parametrized(module, "weight"):
        module.weight = weight.clone()
    else:
        module.weight.copy_(weight)


__all__ = ["OrthogonalityReport", "SparseCoding", "SparseCodingConv2d", "nearest_orthonormal",
           "orthogonality_report"]

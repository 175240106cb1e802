"""Op rules of the spline graph: one small class per primitive, one registry.

A max-affine spline operator (MASO; Balestriero & Baraniuk, "A Spline Theory of
Deep Networks", ICML 2018, eq. 4) maps ``x`` to ``S(x)_k = max_r <A[k,r], x> + B[k,r]``.
Every op of a traced model falls in one of two families:

* :class:`Affine` -- one piece (R = 1): linear, conv, eval-mode batch-norm,
  average pooling, reshapes, residual additions, constant scaling.  Its rule is
  just the op itself; its linear part is what autograd sees.
* :class:`Nonlinearity` -- R > 1 pieces. ``code`` picks the piece of every unit
  (the VQ code: argmax over pieces, ties to the lower piece), and ``piece``
  evaluates the selected affine piece.  Because the output is computed *through*
  ``piece`` with the code held constant, autograd differentiates exactly the
  selected piece, so Jacobians follow our code convention even at ties.

Adding an op costs one small class and one :func:`register_op` line.
"""

from __future__ import annotations

import builtins
import math
import operator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UnsupportedOperation


@dataclass(frozen=True)
class Site:
    """Where a rule is bound: one node of the traced model.

    ``dependent`` flags, per positional argument, whether it depends on the input's
    values; ``dependent_kwargs`` names the keyword arguments that do.
    """

    name: str
    target: Any
    module: nn.Module | None
    args: tuple
    kwargs: dict
    dependent: tuple[bool, ...]
    dependent_kwargs: frozenset[str] = field(default_factory=frozenset)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Run the original operation."""
        if self.module is not None:
            return self.module(*args, **kwargs)
        if isinstance(self.target, str):
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)

    def param(self, index: int, name: str, default: Any) -> Any:
        """A static argument by position or keyword, as traced."""
        if name in self.kwargs:
            return self.kwargs[name]
        if index < len(self.args):
            return self.args[index]
        return default

    def unsupported(self, why: str) -> UnsupportedOperation:
        return UnsupportedOperation(f"{self.name} ({describe_target(self.target)}): {why}")


def describe_target(target: Any) -> str:
    if isinstance(target, type):
        return target.__name__
    if isinstance(target, str):
        return f"Tensor.{target}"
    name = getattr(target, "__name__", repr(target))
    if any(v is target for v in vars(F).values()):
        return f"F.{name}"
    if any(v is target for v in vars(torch).values()):
        return f"torch.{name}"
    return name


class Rule:
    """An op bound to one site of the graph. Subclasses are the families below."""

    kind: ClassVar[str]

    def __init__(self, site: Site):
        self.site = site

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.site.call(*args, **kwargs)


# --------------------------------------------------------------------------- affine


class Affine(Rule):
    """One affine piece. ``linear_args``: the positions / keywords that may depend on
    the input (``None``: any); anything else depending on it would make the op
    non-affine (e.g. a learned weight computed from the input)."""

    kind = "affine"
    linear_args: ClassVar[frozenset[int | str] | None] = frozenset({0, "input"})

    def __init__(self, site: Site):
        super().__init__(site)
        if self.linear_args is not None:
            bad = [i for i, d in enumerate(site.dependent) if d and i not in self.linear_args]
            bad += [k for k in site.dependent_kwargs if k not in self.linear_args]
            if bad:
                raise site.unsupported(
                    f"argument(s) {bad} depend on the input, which makes this op non-affine"
                )


class Product(Affine):
    """Multiplication-like ops: affine only when at most one factor depends on x."""

    linear_args = None

    def __init__(self, site: Site):
        super().__init__(site)
        if sum(site.dependent) + len(site.dependent_kwargs) > 1:
            raise site.unsupported(
                "both factors depend on the input; a product of two input-dependent "
                "tensors is not piecewise affine"
            )


class Quotient(Affine):
    linear_args = frozenset({0, "input"})


class Anywhere(Affine):
    """Ops that are affine in all their tensor arguments jointly (add, cat, ...)."""

    linear_args = None


class EvalOnly(Affine):
    """Affine only in eval mode (batch-norm with running statistics, dropout)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.check_eval()
        return super().forward(*args, **kwargs)

    def check_eval(self) -> None:
        """Raise :class:`UnsupportedOperation` unless the op is a fixed affine map."""
        module = self.site.module
        if module is not None and module.training:
            kind = type(module).__name__
            raise self.site.unsupported(
                f"{kind} is in training mode, where it is not a fixed affine map "
                "(batch statistics / random masks); call model.eval() first"
            )
        if module is not None and hasattr(module, "running_mean") and module.running_mean is None:
            raise self.site.unsupported(
                f"{type(module).__name__} has no running statistics "
                "(track_running_stats=False), so it normalises with batch statistics "
                "even in eval mode; use track_running_stats=True"
            )
        if module is None and self.site.param(*self._train_flag):
            raise self.site.unsupported(
                "called with training=True; pass training=False (or self.training) "
                "and call model.eval()"
            )

    _train_flag: ClassVar[tuple[int, str, bool]] = (5, "training", False)


class BatchNorm(EvalOnly):
    """Eval-mode batch-norm as the per-channel affine map it is (channels on axis 1):
    ``x * s + t``, ``s = weight / sqrt(running_var + eps)``, ``t = bias - running_mean s``
    (the form of torch's own eval kernel).  Its backward is one multiplication, several
    times cheaper than ``native_batch_norm_backward``, which otherwise dominates
    reverse-mode Jacobians of convolutional nets."""

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        self.check_eval()
        m = self.site.module
        if m is not None:
            mean, var, weight, bias, eps = m.running_mean, m.running_var, m.weight, m.bias, m.eps
        else:  # F.batch_norm(input, running_mean, running_var, weight, bias, training,
            #                 momentum, eps)
            def arg(i: int, name: str, default: Any = None) -> Any:
                return kwargs[name] if name in kwargs else (
                    args[i - 1] if i - 1 < len(args) else default)

            mean, var, weight, bias = (arg(1, "running_mean"), arg(2, "running_var"),
                                       arg(3, "weight"), arg(4, "bias"))
            eps = arg(7, "eps", 1e-5)
            if mean is None or var is None:
                raise self.site.unsupported(
                    "batch_norm without running statistics normalises with batch statistics")
        scale = 1 / torch.sqrt(var + eps)
        if weight is not None:
            scale = scale * weight
        shift = -mean * scale
        if bias is not None:
            shift = shift + bias
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.reshape(shape) + shift.reshape(shape)


class FunctionalDropout(EvalOnly):
    _train_flag = (2, "training", True)


class ShapedLike(Affine):
    """``x.view_as(other)`` and kin: affine in ``x``; ``other`` lends only its shape, so
    it may depend on the input."""

    linear_args = frozenset({0, 1, "other"})


# --------------------------------------------------------------------- nonlinearities


class Nonlinearity(Rule):
    """A piecewise-affine convex (or concave) unit-wise spline with ``num_pieces`` pieces.

    ``code(*args)`` returns the VQ code of every unit, an integer tensor in
    ``[0, num_pieces)`` with the shape of the op's output; ``piece(code, *args)``
    evaluates the selected affine piece (Balestriero & Baraniuk 2018, eq. 6:
    ``z_k = <A[k, r_k], x> + B[k, r_k]``).
    """

    kind = "nonlinearity"
    num_pieces: ClassVar[int] = 2
    linear_args: ClassVar[frozenset[int | str]] = frozenset({0, "input"})

    def __init__(self, site: Site):
        super().__init__(site)
        bad = [i for i, d in enumerate(site.dependent) if d and i not in self.linear_args]
        bad += [k for k in site.dependent_kwargs if k not in self.linear_args]
        if bad:
            raise site.unsupported(f"parameter argument(s) {bad} depend on the input")

    @property
    def bits(self) -> int:
        """Bits per unit in packed codes: the power of two >= log2(num_pieces), so a
        unit never straddles a byte (see :func:`maxaffine.vq.pack`)."""
        need = max(1, math.ceil(math.log2(self.num_pieces)))
        return 1 << math.ceil(math.log2(need))

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.select(*args, **kwargs)[1]

    def forward_(self, *args: Any, **kwargs: Any) -> Tensor:
        """:meth:`forward`, overwriting the input where the rule can (else a copy)."""
        return self.forward(*args, **kwargs)

    def select(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """``(code, output)`` with the codes not frozen: ``piece(code(x), x)``.  A rule
        may compute the output with a native op instead, when that op's derivative
        selects the same piece as ``code`` everywhere, ties included."""
        code = self.code(*args, **kwargs)
        return code, self.piece(code, *args, **kwargs)

    def code(self, *args: Any, **kwargs: Any) -> Tensor:
        raise NotImplementedError

    def piece(self, code: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        raise NotImplementedError


class Elementwise(Nonlinearity):
    """Unit-wise spline of the pre-activation ``z = args[0]``: ``slope(code) * z + offset``.

    ``breakpoints`` are the values of ``z`` where the piece changes; ``code`` is the
    number of breakpoints strictly below ``z`` (ties go to the lower piece).
    """

    def breakpoints(self) -> tuple[float, ...]:
        return (0.0,)

    def code(self, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        first, *rest = self.breakpoints()
        code = (z > first).to(torch.uint8)
        for b in rest:
            code += z > b
        return code


class ReLU(Elementwise):
    """``max(0, z)``: pieces {0, z}."""

    def piece(self, code: Tensor, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return z * code.to(z.dtype)

    def select(self, z: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        # relu's derivative at 0 is 0, the lower piece, as the code's tie rule
        return (z > 0).view(torch.uint8), torch.relu(z)

    def forward(self, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return torch.relu(z)

    def forward_(self, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return torch.relu_(z)


class LeakyReLU(Elementwise):
    """``max(a z, z)`` for 0 < a < 1 (pieces {a z, z})."""

    def __init__(self, site: Site):
        super().__init__(site)
        m = site.module
        self.slope = m.negative_slope if m is not None else site.param(1, "negative_slope", 0.01)

    def piece(self, code: Tensor, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return torch.where(code.bool(), z, z * self.slope)

    def select(self, z: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        # leaky_relu's derivative at 0 is the slope, the lower piece, as the tie rule
        return (z > 0).view(torch.uint8), F.leaky_relu(z, self.slope)


class PReLU(Elementwise):
    """Leaky ReLU with a learned slope per channel (channel axis 1)."""

    def piece(self, code: Tensor, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        weight = self.site.module.weight if self.site.module is not None else args[0]
        if weight.numel() > 1 and z.dim() > 1:
            weight = weight.reshape((1, -1) + (1,) * (z.dim() - 2))
        return torch.where(code.bool(), z, z * weight.to(z.dtype))


class Abs(Elementwise):
    """``|z| = max(-z, z)``."""

    def piece(self, code: Tensor, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return z * (2 * code.to(z.dtype) - 1)


class Hardtanh(Elementwise):
    """``clamp(z, lo, hi)``: pieces {lo, z, hi}; codes 0 (z <= lo), 1, 2 (z > hi).

    Covers Hardtanh, ReLU6 and ``clamp`` (a missing bound never triggers).
    """

    num_pieces = 3

    def __init__(self, site: Site):
        super().__init__(site)
        m, t = site.module, site.target
        if m is not None:
            lo, hi = m.min_val, m.max_val
        elif t in (F.relu6,):
            lo, hi = 0.0, 6.0
        elif t in (F.hardtanh,):
            lo, hi = site.param(1, "min_val", -1.0), site.param(2, "max_val", 1.0)
        else:  # clamp(input, min=None, max=None)
            lo, hi = site.param(1, "min", None), site.param(2, "max", None)
        if isinstance(lo, Tensor) or isinstance(hi, Tensor):
            raise site.unsupported("clamp with tensor bounds; use scalar bounds")
        self.lo = -math.inf if lo is None else float(lo)
        self.hi = math.inf if hi is None else float(hi)

    def breakpoints(self) -> tuple[float, ...]:
        return (self.lo, self.hi)

    def piece(self, code: Tensor, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        lo = z.new_tensor(0.0 if math.isinf(self.lo) else self.lo)
        hi = z.new_tensor(0.0 if math.isinf(self.hi) else self.hi)
        return torch.where(code == 1, z, torch.where(code == 0, lo, hi))


class MaxPool(Nonlinearity):
    """Max-pooling: one unit per (channel, window), one piece per window entry.

    The code is the argmax's offset inside its window, row-major over the kernel
    (ties to the first entry, as ``F.max_poolNd``); ``piece`` gathers that entry.
    """

    spatial_dims: ClassVar[int]

    def __init__(self, site: Site):
        super().__init__(site)
        m, d = site.module, self.spatial_dims

        def tup(v: Any) -> tuple[int, ...]:
            return tuple(v) if isinstance(v, tuple | list) else (int(v),) * d

        if m is not None:
            k, s, p, dil, ceil, ret = (
                m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices
            )
        else:
            k = site.param(1, "kernel_size", None)
            s = site.param(2, "stride", None)
            p = site.param(3, "padding", 0)
            dil = site.param(4, "dilation", 1)
            ceil = site.param(5, "ceil_mode", False)
            ret = site.param(6, "return_indices", False)
        if ret:
            raise site.unsupported("return_indices=True returns the code itself; use codes()")
        self.kernel = tup(k)
        self.stride = tup(s) if s not in (None, ()) and s != [] else self.kernel
        self.padding = tup(p)
        self.dilation = tup(dil)
        self.ceil_mode = bool(ceil)
        self.num_pieces = math.prod(self.kernel)  # type: ignore[misc]

    def _pool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pool = F.max_pool1d_with_indices if self.spatial_dims == 1 else F.max_pool2d_with_indices
        return pool(x, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode, True)

    def _grid(self, out_shape: torch.Size, device: torch.device) -> list[Tensor]:
        """Per spatial axis, the input coordinate of each output window's origin."""
        d = self.spatial_dims
        grids = []
        for a in range(d):
            n = out_shape[-d + a]
            g = torch.arange(n, device=device) * self.stride[a] - self.padding[a]
            grids.append(g.reshape((n,) + (1,) * (d - 1 - a)))
        return grids

    def window_index(self, in_shape: tuple[int, ...]) -> Tensor:
        """(units, pieces) flat indices into one sample's input (C, *spatial) of every
        window entry; units row-major over (C, *out_spatial), pieces row-major over
        the kernel (the code convention); -1 marks padding (never selected)."""
        d = self.spatial_dims
        channels, sizes = in_shape[0], tuple(in_shape[-d:])
        _, idx = self._pool(torch.zeros((1, 1, *sizes)))
        out_sizes = tuple(idx.shape[-d:])
        flat = torch.zeros((), dtype=torch.int64)
        valid = torch.ones((), dtype=torch.bool)
        for a in range(d):
            shape_o, shape_k = [1] * (2 * d), [1] * (2 * d)
            shape_o[a], shape_k[d + a] = out_sizes[a], self.kernel[a]
            origin = torch.arange(out_sizes[a]) * self.stride[a] - self.padding[a]
            coord = origin.reshape(shape_o) + (torch.arange(self.kernel[a])
                                               * self.dilation[a]).reshape(shape_k)
            flat = flat * sizes[a] + coord
            valid = valid & (coord >= 0) & (coord < sizes[a])
        units, pieces = math.prod(out_sizes), math.prod(self.kernel)
        flat = flat.expand(out_sizes + self.kernel).reshape(1, units, pieces)
        valid = valid.expand(out_sizes + self.kernel).reshape(1, units, pieces)
        base = torch.arange(channels).reshape(-1, 1, 1) * math.prod(sizes)
        return torch.where(valid, flat + base, -1).reshape(channels * units, pieces)

    def code(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self._code_of(self._pool(x)[1], x)

    def select(self, x: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        # the native op's derivative picks the entry at its argmax index, as the code
        out, idx = self._pool(x)
        return self._code_of(idx, x), out

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        # values only: the maximum does not depend on how ties are broken
        if (x.dtype == torch.float64 and x.device.type == "cpu" and x.numel() >= 1 << 16
                and x.dim() == self.spatial_dims + 2
                and not (torch.is_grad_enabled() and x.requires_grad)):
            # many samples in float64 (e.g. the vertices of a plane partition):
            # the native kernel is several times slower than a compiled gather
            from . import _kernels as kern

            table, padded, out_shape = self._table(tuple(x.shape[1:]))
            out = torch.empty((x.shape[0], table.shape[0]), dtype=x.dtype)
            kern.window_max(x.reshape(x.shape[0], -1).contiguous().numpy(), table.numpy(),
                            padded, out.numpy())
            return out.reshape(x.shape[0], *out_shape)
        pool = F.max_pool1d if self.spatial_dims == 1 else F.max_pool2d
        return pool(x, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)

    def _table(self, in_shape: tuple[int, ...]) -> tuple[Tensor, bool, tuple[int, ...]]:
        """Window table (:meth:`window_index`), whether it has padding, and the
        output's shape (C, *out_spatial), per input shape (cached)."""
        tables = self.__dict__.setdefault("_tables", {})
        if in_shape not in tables:
            table = self.window_index(in_shape)
            out = self._pool(torch.zeros((1, 1, *in_shape[1:])))[1].shape[2:]
            tables[in_shape] = (table, bool((table < 0).any()), (in_shape[0], *out))
        return tables[in_shape]

    def _code_of(self, idx: Tensor, x: Tensor) -> Tensor:
        """Window offsets of the flat argmax indices ``idx`` into ``x``'s planes."""
        d = self.spatial_dims
        sizes = x.shape[-d:]
        dtype = torch.uint8 if self.num_pieces <= 256 else torch.int64
        if d == 2 and self.dilation == (1, 1):
            # code = (row - gy) kw + (col - gx) with col = idx - row W, in 4 passes
            gy, gx = self._grid(idx.shape, idx.device)
            w, kw = sizes[1], self.kernel[1]
            code = torch.div(idx, w, rounding_mode="floor")
            code.mul_(kw - w).add_(idx).sub_(gy * kw + gx)
            return code.to(dtype)
        coords = [idx]  # row-major flat index -> per-axis coordinates, one division per axis
        for a in reversed(range(1, d)):
            quotient = coords[0] // sizes[a]
            coords[0:1] = [quotient, coords[0] - quotient * sizes[a]]
        code = None
        for a, (c, g) in enumerate(zip(coords, self._grid(idx.shape, idx.device), strict=True)):
            offset = c - g if self.dilation[a] == 1 else (c - g) // self.dilation[a]
            code = offset if code is None else code * self.kernel[a] + offset
        return code.to(dtype)

    def piece(self, code: Tensor, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        d = self.spatial_dims
        sizes = x.shape[-d:]
        # flat input index = window origin + offset of the selected entry (a lookup table)
        table = torch.zeros((), dtype=torch.int64, device=code.device)
        base = torch.zeros((), dtype=torch.int64, device=code.device)
        for a, g in enumerate(self._grid(code.shape, code.device)):
            steps = torch.arange(self.kernel[a], device=code.device) * self.dilation[a]
            table = (table.unsqueeze(-1) * sizes[a] + steps).flatten()
            base = base * sizes[a] + g
        flat = base + table[code.long()]
        index = flat.flatten(-d).expand((*x.shape[: x.dim() - d], -1))
        return x.flatten(-d).gather(-1, index).reshape(x.shape[: x.dim() - d] + code.shape[-d:])


class MaxPool1d(MaxPool):
    spatial_dims = 1


class MaxPool2d(MaxPool):
    spatial_dims = 2


class Maximum(Nonlinearity):
    """``max(a, b)`` of two tensors: code 1 where ``b > a`` (ties to ``a``)."""

    linear_args = frozenset({0, 1, "input", "other"})

    def __init__(self, site: Site):
        super().__init__(site)
        other = site.param(1, "other", None)
        if not isinstance(other, Tensor):
            raise site.unsupported(
                "max/min over a dimension is a reduction, not supported yet; "
                "use a max-pool layer, or torch.maximum(a, b) of two tensors"
            )

    def code(self, a: Tensor, b: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if not isinstance(b, Tensor):
            raise self.site.unsupported("torch.max with a dim argument (a reduction)")
        return (b > a).to(torch.uint8)

    def piece(self, code: Tensor, a: Tensor, b: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return torch.where(code.bool(), b, a)


class Minimum(Maximum):
    """``min(a, b)`` of two tensors: code 1 where ``b < a``."""

    def code(self, a: Tensor, b: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return (b < a).to(torch.uint8)


# ------------------------------------------------------------------------ registry

_REGISTRY: dict[Any, type[Rule]] = {}

# Ops that read only a tensor's metadata: their result does not depend on x's values.
METADATA_OPS: frozenset[Any] = frozenset(
    {"size", "dim", "numel", "ndimension", "nelement", "type", "get_device", "new_zeros",
     "new_ones", "new_empty", "new_full", torch.zeros_like, torch.ones_like,
     torch.empty_like, torch.full_like, builtins.len, torch.numel}
)
METADATA_ATTRS: frozenset[str] = frozenset({"shape", "dtype", "device", "ndim", "is_cuda"})


def register_op(target: Any, rule: type[Rule]) -> None:
    """Declare how the spline graph treats ``target`` (a module type, a function, or a
    ``Tensor`` method name). Refuses to overwrite an existing entry."""
    if target in _REGISTRY:
        raise ValueError(f"{describe_target(target)} is already registered as "
                         f"{_REGISTRY[target].__name__}")
    if not (isinstance(rule, type) and issubclass(rule, Rule)):
        raise TypeError("rule must be a subclass of maxaffine.ops.Rule")
    _REGISTRY[target] = rule


def lookup(target: Any) -> type[Rule] | None:
    return _REGISTRY.get(target)


def supported_ops() -> dict[str, list[str]]:
    """The registered ops by family (``affine``, ``nonlinearity``)."""
    out: dict[str, list[str]] = {"affine": [], "nonlinearity": []}
    for target, rule in _REGISTRY.items():
        out[rule.kind].append(describe_target(target))
    return {k: sorted(set(v)) for k, v in out.items()}


def _register_all(rule: type[Rule], *targets: Any) -> None:
    for t in targets:
        register_op(t, rule)


_register_all(
    Affine,
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.Flatten, nn.Unflatten, nn.Identity, nn.ZeroPad1d, nn.ZeroPad2d,
    nn.ConstantPad1d, nn.ConstantPad2d,
    F.linear, F.conv1d, F.conv2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.pad, torch.flatten, torch.reshape, torch.squeeze,
    torch.unsqueeze, torch.transpose, torch.permute, torch.mean, torch.sum, torch.neg,
    operator.neg, operator.pos, operator.getitem,
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "contiguous",
    "squeeze", "unsqueeze", "mean", "sum", "neg", "expand",
    "repeat", "clone", "chunk", "split", "narrow", "float", "double", "to",
)
_register_all(ShapedLike, "expand_as", "view_as", "reshape_as")
_register_all(EvalOnly, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_register_all(BatchNorm, nn.BatchNorm1d, nn.BatchNorm2d, F.batch_norm)
_register_all(FunctionalDropout, F.dropout)
_register_all(Anywhere, operator.add, operator.sub, torch.add, torch.sub, "add", "sub",
              torch.cat, torch.concat, torch.stack)
_register_all(Product, operator.mul, torch.mul, "mul", operator.matmul, torch.matmul,
              "matmul")
_register_all(Quotient, operator.truediv, torch.div, "div")
_register_all(ReLU, nn.ReLU, F.relu, torch.relu, "relu", "relu_", F.relu_)
_register_all(LeakyReLU, nn.LeakyReLU, F.leaky_relu)
_register_all(PReLU, nn.PReLU, F.prelu)
_register_all(Abs, torch.abs, builtins.abs, operator.abs, "abs")
_register_all(Hardtanh, nn.Hardtanh, nn.ReLU6, F.hardtanh, F.relu6, torch.clamp, "clamp",
              torch.clip, "clip")
_register_all(MaxPool1d, nn.MaxPool1d, F.max_pool1d)
_register_all(MaxPool2d, nn.MaxPool2d, F.max_pool2d)
_register_all(Maximum, torch.maximum, torch.max, "maximum")
_register_all(Minimum, torch.minimum, torch.min, "minimum")

__all__ = [
    "Abs", "Affine", "Elementwise", "Hardtanh", "LeakyReLU", "MaxPool", "Maximum",
    "Minimum", "Nonlinearity", "PReLU", "ReLU", "Rule", "Site", "lookup", "register_op",
    "supported_ops",
]

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

Window maxima (:class:`MaxPool`: max-pooling, adaptive max-pooling, ``amax``) are
nonlinearities defined by a window table, one unit per output entry and one piece
per window entry; ``torch.max(x, dim)`` and the min forms reach them through the
trace-time rewrites of :mod:`maxaffine.graph`. Ops with no rule are refused with a
reason (:func:`refusal`): not affine or piecewise-affine, or affine /
piecewise-affine but not supported yet.

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

from .errors import MaxAffineError, MaxAffineTypeError, UnsupportedOperation


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


class Where(Affine):
    """``torch.where(condition, a, b)``: affine in ``a`` and ``b`` jointly when the
    condition does not depend on the input (a constant mask)."""

    linear_args = frozenset({1, 2, "input", "other"})

    def __init__(self, site: Site):
        super().__init__(site)
        if len(site.args) + len(site.kwargs) < 3:
            raise site.unsupported("torch.where(condition) returns indices, not values")


class WhereMethod(Where):
    """``a.where(condition, b)``."""

    linear_args = frozenset({0, 2, "other"})


# --------------------------------------------------------------------- nonlinearities


@dataclass(frozen=True)
class Lines:
    """A layer's region boundaries as lines over its :meth:`Nonlinearity.columns`:
    line ``l`` is the zero set of ``columns[:, pos[l]] - columns[:, neg[l]] - level[l]``
    (``neg[l] < 0``: no second term), affine on every region of the earlier
    layers, and belongs to unit ``unit[l]``. Lines are unit-major, the same number
    per unit, and a unit's lines decrease in order (line j >= line j + 1
    everywhere), so a unit's code is ``base`` plus the number of its positive lines
    (ties to the lower piece)."""

    pos: Tensor
    neg: Tensor
    level: Tensor
    unit: Tensor
    base: int = 0
    direct: bool = False  # the columns are the op's input-dependent inputs, flattened, in order

    @property
    def per_unit(self) -> int:
        return self.pos.shape[0] // max(1, int(self.unit[-1]) + 1) if len(self.unit) else 0


@dataclass(frozen=True)
class Windows:
    """A layer's units as maxima over entries of its :meth:`Nonlinearity.columns`:
    unit ``k``'s code is the position ``r`` of the largest ``columns[:, table[k, r]]``
    (the first of equal maxima; ``table`` -1: no entry), and its region boundaries
    are the ties of two entries. ``direct``: the columns are the op's first input
    itself (flattened), so they can be read where that input is stored (likewise
    :attr:`Lines.direct`: the columns are the op's input-dependent inputs, flattened
    and concatenated in order)."""

    table: Tensor
    direct: bool = False


class Nonlinearity(Rule):
    """A piecewise-affine convex (or concave) unit-wise spline with ``num_pieces`` pieces.

    Every mode of the op lives here:

    * ``code(*args)``: the VQ code of every unit, an integer tensor in
      ``[0, num_pieces)`` with the shape of the op's output; ``piece(code, *args)``:
      the selected affine piece (Balestriero & Baraniuk 2018, eq. 6:
      ``z_k = <A[k, r_k], x> + B[k, r_k]``); ``select``: both.
    * ``pieces(*args)``: (N, *code_shape, R) affine functions of the inputs whose
      argmax is the code (ties to the first), with a validity mask; for a MASO unit
      (``single_max``) they are the unit's own pieces (``max_r`` of them is the
      output; for a min, of their negatives), the log-odds of its GMM ("From Hard to
      Soft", ICLR 2019). Power diagrams, posteriors and boundary distances read them.
    * ``columns(*args)`` and ``boundary(*args)``: the region boundaries as
      :class:`Lines` or :class:`Windows` over per-sample columns; the exact
      partitions cut along them.

    An op defined by ``code``, ``piece`` and ``pieces`` alone works everywhere: its
    default boundary is the windows of its pieces.
    """

    kind = "nonlinearity"
    num_pieces: ClassVar[int] = 2
    linear_args: ClassVar[frozenset[int | str]] = frozenset({0, "input"})
    dependent_hint: ClassVar[str] = ""  # appended to the refusal of such arguments
    single_max: ClassVar[bool] = False  # the output is the max of ``pieces`` (a MASO unit)

    def __init__(self, site: Site):
        super().__init__(site)
        bad = [i for i, d in enumerate(site.dependent) if d and i not in self.linear_args]
        bad += [k for k in site.dependent_kwargs if k not in self.linear_args]
        if bad:
            raise site.unsupported(f"parameter argument(s) {bad} depend on the input"
                                   + self.dependent_hint)

    @property
    def bits_per_unit(self) -> int:
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

    def pieces(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        """(N, *code_shape, R) pieces whose argmax is the code, and a validity mask
        of the same shape (None: all valid; invalid pieces are ``-inf``)."""
        raise NotImplementedError(
            f"{type(self).__name__} defines no pieces(): implement it (the affine pieces "
            "whose argmax is the code) to partition, power-diagram and measure it")

    def columns(self, *args: Any, **kwargs: Any) -> Tensor:
        """(N, C) per-sample values that :meth:`boundary` refers to (default: the
        pieces, flattened; invalid ones 0)."""
        pieces, valid = self.pieces(*args, **kwargs)
        flat = _rows(pieces)
        return flat if valid is None else torch.where(valid.reshape(flat.shape), flat, 0.0)

    def boundary(self, *args: Any, **kwargs: Any) -> Lines | Windows:
        """The layer's region boundaries over :meth:`columns` (static: the same for
        every batch of inputs of these shapes; default: the windows of the pieces)."""
        pieces, valid = self.pieces(*args, **kwargs)
        k, r = math.prod(pieces.shape[1:-1]), pieces.shape[-1]
        table = torch.arange(k * r).reshape(k, r)
        if valid is not None:
            table = torch.where(valid[:1].reshape(k, r), table, -1)
        return Windows(table)


def _rows(t: Tensor) -> Tensor:
    """(N, everything else): one row per sample, also for empty batches."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _selection_pieces(z: Tensor, breakpoints: tuple[float, ...]
                      ) -> tuple[Tensor, Tensor | None]:
    """``P_i(z) = sum_{j <= i} (z - b_j)`` over the finite breakpoints ``b_j`` below
    piece i: the convex spline whose argmax counts the breakpoints below ``z`` (the
    elementwise code); codes no value reaches (below a ``-inf`` or above a ``+inf``
    breakpoint) are ``-inf``."""
    lower = [-math.inf, *breakpoints]
    upper = [*breakpoints, math.inf]
    pieces, valid, acc = [], [], torch.zeros_like(z)
    for i, (lo, hi) in enumerate(zip(lower, upper, strict=True)):
        if i and math.isfinite(lo):
            acc = acc + (z - lo)
        pieces.append(acc)
        valid.append(lo < hi and lo != math.inf and hi != -math.inf)
    stacked = torch.stack(pieces, -1)
    if all(valid):
        return stacked, None
    mask = torch.tensor(valid, device=z.device).expand(stacked.shape)
    return torch.where(mask, stacked, -math.inf), mask


class Elementwise(Nonlinearity):
    """Unit-wise spline of the pre-activation ``z = args[0]``: ``slope(code) * z + offset``.

    ``breakpoints`` are the values of ``z`` where the piece changes; ``code`` is the
    number of breakpoints strictly below ``z`` (ties go to the lower piece). Its
    boundaries are the lines ``z = b`` of the finite breakpoints, and its pieces the
    selection pieces of the breakpoints (a MASO unit overrides them with its own).
    """

    def breakpoints(self) -> tuple[float, ...]:
        return (0.0,)

    def code(self, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        first, *rest = self.breakpoints()
        code = (z > first).to(torch.uint8)
        for b in rest:
            code += z > b
        return code

    def pieces(self, z: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        return _selection_pieces(z, self.breakpoints())

    def columns(self, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return _rows(z)

    def boundary(self, z: Tensor, *args: Any, **kwargs: Any) -> Lines:
        k = math.prod(z.shape[1:])
        bps = self.breakpoints()
        finite = [b for b in bps if math.isfinite(b)]
        units = torch.arange(k).repeat_interleave(len(finite))
        return Lines(units, torch.full_like(units, -1),
                     torch.tensor(finite, dtype=torch.float64).repeat(k), units,
                     base=sum(1 for b in bps if b == -math.inf), direct=True)


class ReLU(Elementwise):
    """``max(0, z)``: pieces {0, z}."""

    single_max = True

    def pieces(self, z: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        return torch.stack([torch.zeros_like(z), z], -1), None

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

    @property
    def single_max(self) -> bool:  # type: ignore[override]
        return self.slope < 1  # max(a z, z); a > 1 makes it a min

    def pieces(self, z: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        return _slope_pieces(z, z.new_tensor(float(self.slope)))


def _slope_pieces(z: Tensor, slope: Tensor) -> tuple[Tensor, None]:
    """Pieces of ``z -> z`` (code 1, z > 0) and ``z -> a z`` (code 0): {a z, z},
    whose argmax is the code where ``a < 1``; elsewhere (a >= 1, a min) the
    selection pieces {0, z}."""
    low = torch.where(slope < 1, z * slope.to(z.dtype), torch.zeros_like(z))
    return torch.stack([low, z], -1), None


class PReLU(Elementwise):
    """Leaky ReLU with a learned slope per channel (channel axis 1)."""

    single_max = True  # for slopes below 1 (the usual case); see _slope_pieces

    def _weight(self, z: Tensor, *args: Any) -> Tensor:
        weight = self.site.module.weight if self.site.module is not None else args[0]
        if weight.numel() > 1 and z.dim() > 1:
            weight = weight.reshape((1, -1) + (1,) * (z.dim() - 2))
        return weight.to(z.dtype)

    def piece(self, code: Tensor, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return torch.where(code.bool(), z, z * self._weight(z, *args))

    def pieces(self, z: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        return _slope_pieces(z, self._weight(z, *args))


class Abs(Elementwise):
    """``|z| = max(-z, z)``."""

    single_max = True

    def pieces(self, z: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        return torch.stack([-z, z], -1), None

    def piece(self, code: Tensor, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return z * (2 * code.to(z.dtype) - 1)


class Hardtanh(Elementwise):
    """``clamp(z, lo, hi)``: pieces {lo, z, hi}; codes 0 (z <= lo), 1, 2 (z > hi).

    Covers Hardtanh, ReLU6 and ``clamp`` (a missing bound never triggers).
    """

    num_pieces = 3
    dependent_hint = (": clamp with an input-dependent bound is piecewise-affine but not "
                      "implemented yet; write torch.minimum(torch.maximum(x, lo), hi)")

    def __init__(self, site: Site):
        super().__init__(site)
        m, t = site.module, site.target
        if m is not None:
            lo, hi = m.min_val, m.max_val
        elif t in (F.relu6,):
            lo, hi = 0.0, 6.0
        elif t in (F.hardtanh,):
            lo, hi = site.param(1, "min_val", -1.0), site.param(2, "max_val", 1.0)
        elif t in (torch.clamp_min, "clamp_min"):
            lo, hi = site.param(1, "min", None), None
        elif t in (torch.clamp_max, "clamp_max"):
            lo, hi = None, site.param(1, "max", None)
        else:  # clamp(input, min=None, max=None)
            lo, hi = site.param(1, "min", None), site.param(2, "max", None)
        if isinstance(lo, Tensor) or isinstance(hi, Tensor):
            raise site.unsupported(
                "clamp with tensor bounds is piecewise-affine but not implemented yet: "
                "write torch.minimum(torch.maximum(x, lo), hi), or use scalar bounds")
        self.lo = -math.inf if lo is None else float(lo)
        self.hi = math.inf if hi is None else float(hi)

    def breakpoints(self) -> tuple[float, ...]:
        return (self.lo, self.hi)

    def piece(self, code: Tensor, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        lo = z.new_tensor(0.0 if math.isinf(self.lo) else self.lo)
        hi = z.new_tensor(0.0 if math.isinf(self.hi) else self.hi)
        return torch.where(code == 1, z, torch.where(code == 0, lo, hi))


class Hardsigmoid(Elementwise):
    """``relu6(z + 3) / 6``: pieces {0, z / 6 + 1/2, 1}; codes 0 (z <= -3), 1, 2 (z > 3)."""

    num_pieces = 3

    def breakpoints(self) -> tuple[float, ...]:
        return (-3.0, 3.0)

    def piece(self, code: Tensor, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return torch.where(code == 1, z / 6 + 0.5, (code == 2).to(z.dtype))


class Softshrink(Elementwise):
    """Soft thresholding ``sign(z) max(|z| - l, 0)``: pieces {z + l, 0, z - l}; codes
    0 (z <= -l), 1, 2 (z > l)."""

    num_pieces = 3

    def __init__(self, site: Site):
        super().__init__(site)
        m = site.module
        lambd = m.lambd if m is not None else site.param(1, "lambd", 0.5)
        if isinstance(lambd, Tensor) or float(lambd) < 0:
            raise site.unsupported(f"lambd={lambd!r}: softshrink needs a number >= 0")
        self.lambd = float(lambd)

    def breakpoints(self) -> tuple[float, ...]:
        return (-self.lambd, self.lambd)

    def piece(self, code: Tensor, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return torch.where(code == 0, z + self.lambd,
                           torch.where(code == 2, z - self.lambd, torch.zeros_like(z)))


class MaxPool(Nonlinearity):
    """A max over windows of input entries ("window max"): max-pooling, adaptive
    max-pooling, and max-reductions over axes (``torch.amax``, ``x.max(dim)``).

    One unit per output entry, one piece per entry of its window. Everything is
    defined by :meth:`window_index`, a (units, pieces) table of flat indices into
    one sample's input (-1: padding, or an entry a shorter window lacks; never
    selected): units row-major over the output's per-sample shape, pieces in
    each subclass's documented order. The code is the position of the window's
    maximum in that order (ties to the first, as torch's own max ops); ``piece``
    gathers that entry. Subclasses implement ``window_index``, ``_out_shape``
    and ``_values`` (the maximum with a native op) and may override ``select`` /
    ``piece`` with faster native equivalents.
    """

    def window_index(self, in_shape: tuple[int, ...]) -> Tensor:
        raise NotImplementedError

    def _out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def _values(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _table(self, in_shape: tuple[int, ...]) -> tuple[Tensor, bool, tuple[int, ...]]:
        """Window table (:meth:`window_index`), whether it has padding, and the
        output's per-sample shape, per input shape (cached)."""
        tables = self.__dict__.setdefault("_tables", {})
        if in_shape not in tables:
            table = self.window_index(in_shape)
            tables[in_shape] = (table, bool((table < 0).any()), self._out_shape(in_shape))
        return tables[in_shape]

    def _code_dtype(self) -> torch.dtype:
        return torch.uint8 if self.num_pieces <= 256 else torch.int64

    def select(self, x: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        # generic: the max of every window's pieces (the first of equal maxima); the
        # max's derivative selects the entry at the returned index, as the code
        pieces, _ = self.pieces(x)
        best, code = pieces.max(-1)
        return code.to(self._code_dtype()), best

    single_max = True

    def pieces(self, x: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        table, padded, out = self._table(tuple(x.shape[1:]))
        table = table.to(x.device)
        n = x.shape[0]
        vals = _rows(x)[:, table.clamp(min=0)].reshape(n, *out, table.shape[1])
        if not padded:
            return vals, None
        valid = (table >= 0).reshape(1, *out, table.shape[1]).expand_as(vals)
        return vals.masked_fill(~valid, -math.inf), valid

    def columns(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return _rows(x)

    def boundary(self, x: Tensor, *args: Any, **kwargs: Any) -> Windows:
        return Windows(self._table(tuple(x.shape[1:]))[0], direct=True)

    def code(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self.select(x)[0]

    def piece(self, code: Tensor, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        table, _, out = self._table(tuple(x.shape[1:]))
        n = x.shape[0]
        table = table.to(x.device)
        entry = table[torch.arange(table.shape[0], device=x.device), code.reshape(n, -1).long()]
        return x.reshape(n, -1).gather(1, entry).reshape(n, *out)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        # values only: the maximum does not depend on how ties are broken
        if torch.is_grad_enabled() and x.requires_grad:
            return self.select(x)[1]  # differentiated: the code's piece
        return self._values(x)


def _window_table(lead: int, sizes: tuple[int, ...], coords: list[Tensor],
                  valid: list[Tensor]) -> Tensor:
    """(lead * prod(out), prod(k)) flat indices into a (lead, *sizes) sample of the
    windows with per-axis input coordinates ``coords[a]`` (out_a, k_a), present
    where ``valid[a]`` (else -1); units row-major over (lead, *out), pieces
    row-major over the window's axes."""
    d = len(sizes)
    flat = torch.zeros((), dtype=torch.int64)
    ok = torch.ones((), dtype=torch.bool)
    for a in range(d):
        shape = [1] * (2 * d)
        shape[a], shape[d + a] = coords[a].shape
        flat = flat * sizes[a] + coords[a].reshape(shape)
        ok = ok & valid[a].reshape(shape)
    outs = tuple(c.shape[0] for c in coords)
    ks = tuple(c.shape[1] for c in coords)
    units, pieces = math.prod(outs), math.prod(ks)
    flat = flat.expand(outs + ks).reshape(1, units, pieces)
    ok = ok.expand(outs + ks).reshape(1, units, pieces)
    base = torch.arange(lead).reshape(-1, 1, 1) * math.prod(sizes)
    return torch.where(ok, flat + base, -1).reshape(lead * units, pieces)


class KernelMaxPool(MaxPool):
    """Max-pooling with a fixed kernel (``nn.MaxPool1d/2d/3d``, ``F.max_poolNd``):
    one unit per (channel, window). The code is the argmax's offset inside its
    window, row-major over the kernel (ties to the first entry, as
    ``F.max_poolNd``); ``piece`` gathers that entry."""

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

    _POOLS: ClassVar[dict[int, Any]] = {
        1: F.max_pool1d_with_indices, 2: F.max_pool2d_with_indices,
        3: F.max_pool3d_with_indices}

    def _pool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pool = self._POOLS[self.spatial_dims]
        return pool(x, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode, True)

    def _values(self, x: Tensor) -> Tensor:
        return self._pool(x)[0]

    def _out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        d = self.spatial_dims
        out = self._pool(torch.zeros((1, 1, *in_shape[-d:])))[1].shape[2:]
        return (*in_shape[:-d], *out)

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
        """(units, pieces) flat indices into one sample's input (*lead, *spatial) of
        every window entry; units row-major over (*lead, *out_spatial), pieces
        row-major over the kernel (the code convention); -1 marks padding."""
        d = self.spatial_dims
        sizes = tuple(in_shape[-d:])
        out = self._out_shape(in_shape)[-d:]
        coords, valid = [], []
        for a in range(d):
            origin = torch.arange(out[a]) * self.stride[a] - self.padding[a]
            c = origin.unsqueeze(1) + torch.arange(self.kernel[a]) * self.dilation[a]
            coords.append(c)
            valid.append((c >= 0) & (c < sizes[a]))
        return _window_table(math.prod(in_shape[:-d]), sizes, coords, valid)

    def code(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self._code_of(self._pool(x)[1], x)

    def select(self, x: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        # the native op's derivative picks the entry at its argmax index, as the code
        out, idx = self._pool(x)
        return self._code_of(idx, x), out

    def _code_of(self, idx: Tensor, x: Tensor) -> Tensor:
        """Window offsets of the flat argmax indices ``idx`` into ``x``'s planes."""
        d = self.spatial_dims
        sizes = x.shape[-d:]
        dtype = self._code_dtype()
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


class MaxPool1d(KernelMaxPool):
    spatial_dims = 1


class MaxPool2d(KernelMaxPool):
    spatial_dims = 2


class MaxPool3d(KernelMaxPool):
    spatial_dims = 3


class AdaptiveMaxPool(MaxPool):
    """Adaptive max-pooling (``nn.AdaptiveMaxPool1d/2d/3d``): output entry ``i`` of an
    axis of size ``L`` pooled to ``O`` covers ``floor(i L / O) .. ceil((i + 1) L / O) - 1``,
    so windows differ in size. Pieces are row-major over the *largest* window shape
    (``k_a = max_i`` window length on axis ``a``): the code is the argmax's offset
    ``(dy, dx)`` inside its window written as ``dy * k_x + dx`` (2-D; likewise in
    1-D / 3-D), ties to the first entry, as ``F.adaptive_max_poolNd``; entries a
    shorter window lacks are -1 in :meth:`window_index` and never selected."""

    spatial_dims: ClassVar[int]
    _POOLS: ClassVar[dict[int, Any]] = {
        1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}

    def __init__(self, site: Site):
        super().__init__(site)
        m, d = site.module, self.spatial_dims
        if m is not None:
            size, ret = m.output_size, m.return_indices
        else:
            size = site.param(1, "output_size", None)
            ret = site.param(2, "return_indices", False)
        if ret:
            raise site.unsupported("return_indices=True returns the code itself; use codes()")
        size = tuple(size) if isinstance(size, tuple | list) else (size,) * d
        self.output_size: tuple[int | None, ...] = tuple(
            None if s is None else int(s) for s in size)
        x = site.args[0] if site.args else site.kwargs.get("input")
        self.num_pieces = self._table(tuple(x.shape[1:]))[0].shape[1]  # type: ignore[misc]

    def _sizes(self, in_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        d = self.spatial_dims
        sizes = tuple(in_shape[-d:])
        out = tuple(s if o is None else o for s, o in zip(sizes, self.output_size, strict=True))
        return sizes, out

    def _out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*in_shape[: -self.spatial_dims], *self._sizes(in_shape)[1])

    def _values(self, x: Tensor) -> Tensor:
        return self._POOLS[self.spatial_dims](x, self.output_size)

    def window_index(self, in_shape: tuple[int, ...]) -> Tensor:
        sizes, out = self._sizes(in_shape)
        coords, valid = [], []
        for n_in, n_out in zip(sizes, out, strict=True):
            i = torch.arange(n_out)
            start = torch.div(i * n_in, n_out, rounding_mode="floor")
            end = torch.div((i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
            c = start.unsqueeze(1) + torch.arange(int((end - start).max()))
            coords.append(c)
            valid.append(c < end.unsqueeze(1))
        return _window_table(math.prod(in_shape[: -self.spatial_dims]), sizes, coords, valid)


class AdaptiveMaxPool1d(AdaptiveMaxPool):
    spatial_dims = 1


class AdaptiveMaxPool2d(AdaptiveMaxPool):
    spatial_dims = 2


class AdaptiveMaxPool3d(AdaptiveMaxPool):
    spatial_dims = 3


class Amax(MaxPool):
    """A max-reduction over axes of each sample: ``torch.amax(x, dim, keepdim)`` (and
    ``torch.max(x, dim)`` / ``x.max(dim)``, which tracing rewrites to it when only
    their values are used; ``min`` / ``amin`` are traced as ``-amax(-x)``: their
    unit sees ``-x``). One unit per output entry; pieces row-major over the
    reduced axes in increasing order, so for one axis the code is the index
    ``torch.max(x, dim)`` returns (ties to the first)."""

    def __init__(self, site: Site):
        super().__init__(site)
        x = site.args[0] if site.args else site.kwargs.get("input")
        dim = site.param(1, "dim", ())
        self.keepdim = bool(site.param(2, "keepdim", False))
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if not all(isinstance(a, int) for a in dims):
            raise site.unsupported(f"dim={dim!r} is not a constant int or tuple of ints; "
                                   "pass the axes as Python ints")
        ndim = x.dim()
        axes = sorted({a % ndim for a in dims}) if dims else list(range(ndim))
        if 0 in axes:
            raise site.unsupported(
                "the max is taken over the batch axis (axis 0) too, which mixes samples; "
                "reduce over the axes of one sample, e.g. x.flatten(1).amax(1)")
        self.dims = tuple(axes)
        self.num_pieces = math.prod(x.shape[a] for a in axes)  # type: ignore[misc]

    def _out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        red = {a - 1 for a in self.dims}
        if self.keepdim:
            return tuple(1 if a in red else s for a, s in enumerate(in_shape))
        return tuple(s for a, s in enumerate(in_shape) if a not in red)

    def _values(self, x: Tensor) -> Tensor:
        return torch.amax(x, self.dims, self.keepdim)

    def window_index(self, in_shape: tuple[int, ...]) -> Tensor:
        red = [a - 1 for a in self.dims]
        kept = [a for a in range(len(in_shape)) if a not in red]
        idx = torch.arange(math.prod(in_shape)).reshape(in_shape).permute(*kept, *red)
        return idx.reshape(-1, math.prod(in_shape[a] for a in red))

    def select(self, x: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if len(self.dims) == 1:  # native: values and the first argmax index
            best, code = torch.max(x, self.dims[0], self.keepdim)
            return code.to(self._code_dtype()), best
        return super().select(x)


class Maximum(Nonlinearity):
    """``max(a, b)`` of two tensors: code 1 where ``b > a`` (ties to ``a``)."""

    linear_args = frozenset({0, 1, "input", "other"})

    def __init__(self, site: Site):
        super().__init__(site)
        other = site.param(1, "other", None)
        if other is None:
            raise site.unsupported(
                "without dim, the max / min is taken over every axis, the batch axis "
                "included, which mixes samples; reduce over the axes of one sample, "
                "e.g. x.flatten(1).amax(1)")
        if not isinstance(other, Tensor):
            raise site.unsupported(
                f"a reduction over dim={other!r} computed in forward(); pass dim as a "
                "Python int (x.max(1), torch.amax(x, (1, 2))) so tracing can read it")

    single_max = True
    _sign: ClassVar[float] = 1.0  # max: pieces (a, b); min = -max(-a, -b): (-a, -b)

    def code(self, a: Tensor, b: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return (b > a).to(torch.uint8)

    def piece(self, code: Tensor, a: Tensor, b: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return torch.where(code.bool(), b, a)

    def pieces(self, a: Tensor, b: Tensor, *args: Any, **kwargs: Any
               ) -> tuple[Tensor, Tensor | None]:
        a, b = torch.broadcast_tensors(a, b)
        return torch.stack([a, b], -1) * self._sign, None

    def columns(self, a: Tensor, b: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        a, b = torch.broadcast_tensors(a, b)
        return torch.cat([_rows(a), _rows(b)], 1)

    def boundary(self, a: Tensor, b: Tensor, *args: Any, **kwargs: Any) -> Lines:
        # one line per unit: b - a (maximum: code 1 where b > a), a - b (minimum)
        k = math.prod(torch.broadcast_shapes(a.shape, b.shape)[1:])
        units = torch.arange(k)
        first, second = (units + k, units) if self._sign > 0 else (units, units + k)
        direct = (a.shape == b.shape and len(self.site.dependent) >= 2
                  and all(self.site.dependent[:2]))
        return Lines(first, second, torch.zeros(k, dtype=torch.float64), units,
                     direct=direct)


class Minimum(Maximum):
    """``min(a, b)`` of two tensors: code 1 where ``b < a``."""

    _sign = -1.0

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
    ``Tensor`` method name). Refuses to overwrite an existing entry
    (:class:`~maxaffine.MaxAffineError`) and anything but a :class:`Rule` subclass
    (:class:`~maxaffine.MaxAffineTypeError`)."""
    if not (isinstance(rule, type) and issubclass(rule, Rule)):
        raise MaxAffineTypeError(
            f"rule must be a subclass of maxaffine.ops.Rule (e.g. ops.Affine, "
            f"ops.Elementwise), got {rule!r}")
    if not (isinstance(target, str | type) or callable(target)):
        raise MaxAffineTypeError(
            f"target must be a module type, a function or a Tensor method name, got "
            f"{type(target).__name__} {target!r}")
    if target in _REGISTRY:
        raise MaxAffineError(
            f"{describe_target(target)} is already registered as "
            f"{_REGISTRY[target].__name__}; to change how it is traced, register a "
            "subclass of the module type (or a wrapper function) instead")
    _REGISTRY[target] = rule


def lookup(target: Any) -> type[Rule] | None:
    try:
        return _REGISTRY.get(target)
    except TypeError:  # an unhashable target: never registered
        return None


# Ops that tracing rewrites into registered ones (see ``graph._rewrite``), by family.
REWRITTEN: dict[str, tuple[str, ...]] = {
    "nonlinearity": ("torch.max(x, dim)", "Tensor.max(dim)", "torch.min(x, dim)",
                     "Tensor.min(dim)", "torch.amin", "Tensor.amin"),
    "affine": ("in-place forms (x.add_(y), x.mul_(c), x += y, ...) of supported ops",),
}


def supported_ops() -> dict[str, list[str]]:
    """The registered ops by family (``affine``, ``nonlinearity``), with the forms
    tracing rewrites into them (``torch.max(x, dim)`` is traced as ``torch.amax``,
    a min as ``-amax(-x)``, in-place methods as their out-of-place forms)."""
    out: dict[str, list[str]] = {"affine": [], "nonlinearity": []}
    for target, rule in _REGISTRY.items():
        out[rule.kind].append(describe_target(target))
    for kind, names in REWRITTEN.items():
        out[kind].extend(names)
    return {k: sorted(set(v)) for k, v in out.items()}


# ------------------------------------------------------------------------ refusals

_NOT_IMPLEMENTED_PIECEWISE: dict[Any, str] = {
    **dict.fromkeys((torch.sort, "sort", torch.msort, "msort", torch.topk, "topk",
                     torch.median, "median", torch.kthvalue, "kthvalue", torch.cummax,
                     "cummax", torch.cummin, "cummin"),
                    "an order statistic (a permutation of the entries chosen by their "
                    "order); use torch.amax / max-pooling where a maximum is meant"),
    nn.RReLU: "in eval mode a leaky ReLU of slope (lower + upper) / 2: use nn.LeakyReLU",
    **dict.fromkeys((nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d, F.max_unpool1d,
                     F.max_unpool2d, F.max_unpool3d),
                    "it places values at a max-pool's argmax indices"),
}
_NOT_IMPLEMENTED_AFFINE: dict[Any, str] = {
    **dict.fromkeys((torch.einsum, torch.tensordot, torch.kron, torch.addmm, "addmm",
                     torch.baddbmm, "baddbmm", torch.addmv, torch.mv, "mv"),
                    "affine when only one operand depends on the input; use x @ W, "
                    "torch.matmul or F.linear"),
    F.grid_sample: "linear in the input for a constant grid",
    **dict.fromkeys((torch.index_add, "index_add", torch.scatter, "scatter",
                     torch.scatter_add, "scatter_add", torch.index_put, "index_put",
                     "index_copy", torch.index_copy, "masked_scatter"),
                    "affine for constant indices"),
    **dict.fromkeys((torch.diagonal, "diagonal", torch.diag_embed, "diag_embed",
                     torch.diag, "diag"), "a linear selection of entries"),
}
_REFUSED: dict[Any, str] = {
    operator.setitem: (
        "item assignment (x[...] = v) modifies a tensor in place, which the traced graph "
        "cannot follow; build the tensor out of place (torch.cat, torch.where with a "
        "constant mask, F.pad)"),
    **dict.fromkeys((nn.Threshold, F.threshold, nn.Hardshrink, F.hardshrink, torch.sign,
                     "sign", torch.round, "round", torch.floor, "floor", torch.ceil, "ceil",
                     torch.heaviside),
                    "piecewise constant or affine but discontinuous, so not a max-affine "
                    "spline (F.threshold is continuous only with value == threshold: use "
                    "a ReLU then)"),
    **dict.fromkeys((torch.flipud, "flipud"),
                    "flips axis 0, the batch axis, which mixes samples; flip an axis of "
                    "each sample with torch.flip(x, [dim])"),
    **dict.fromkeys((nn.FractionalMaxPool2d, nn.FractionalMaxPool3d),
                    "random pooling windows, drawn anew at every call: not a fixed spline"),
    **dict.fromkeys((nn.Embedding, nn.EmbeddingBag, F.embedding),
                    "it takes integer indices, not a floating-point input; trace the model "
                    "from the embeddings on"),
}


def refusal(target: Any) -> str:
    """Why ``target`` (a module type, function or method name with no rule) is refused:
    not affine or piecewise-affine, or affine / piecewise-affine but not implemented
    yet (each with a remedy)."""
    if isinstance(target, str) and target.endswith("_") and not any(
            target in t for t in (_REFUSED, _NOT_IMPLEMENTED_PIECEWISE,
                                  _NOT_IMPLEMENTED_AFFINE)):
        target = target[:-1]  # an in-place method: the reason of its out-of-place form
    for table, prefix in ((_REFUSED, ""),
                          (_NOT_IMPLEMENTED_PIECEWISE,
                           "piecewise-affine but not implemented yet: "),
                          (_NOT_IMPLEMENTED_AFFINE, "affine but not supported yet: ")):
        reason = table.get(target) if _hashable(target) else None
        if reason is not None:
            return prefix + reason
    return ("not affine or piecewise-affine (smooth nonlinearities, normalisations with "
            "input statistics and products of activations are not MASOs)")


def _hashable(target: Any) -> bool:
    try:
        hash(target)
    except TypeError:
        return False
    return True


def _register_all(rule: type[Rule], *targets: Any) -> None:
    for t in targets:
        register_op(t, rule)


_register_all(
    Affine,
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Flatten, nn.Unflatten, nn.Identity, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d,
    nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle,
    nn.PixelUnshuffle, nn.ChannelShuffle, nn.Fold, nn.Unfold,
    F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
    F.conv_transpose3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.pad, F.interpolate,  # (and F.upsample*)
    F.pixel_shuffle, F.pixel_unshuffle,
    F.channel_shuffle, F.fold, F.unfold,
    torch.flatten, torch.reshape, torch.squeeze,
    torch.unsqueeze, torch.transpose, torch.permute, torch.mean, torch.sum, torch.neg,
    torch.flip, torch.fliplr, torch.roll, torch.rot90, torch.narrow,
    torch.select, torch.movedim, torch.moveaxis, torch.swapaxes, torch.swapdims,
    torch.split, torch.chunk, torch.tensor_split, torch.unbind, torch.hstack, torch.tile,
    torch.repeat_interleave, torch.broadcast_to, torch.cumsum, torch.diff, torch.tril,
    torch.triu, torch.index_select, torch.gather, torch.take_along_dim, torch.masked_fill,
    operator.neg, operator.pos, operator.getitem,
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "contiguous",
    "squeeze", "unsqueeze", "mean", "sum", "neg", "expand",
    "repeat", "clone", "chunk", "split", "narrow", "float", "double", "to",
    "flip", "fliplr", "roll", "rot90", "select", "movedim", "moveaxis",
    "swapaxes", "swapdims", "tensor_split", "unbind", "tile", "repeat_interleave",
    "broadcast_to", "cumsum", "diff", "tril", "triu", "index_select", "gather",
    "take_along_dim", "masked_fill", "unfold",
)
_register_all(ShapedLike, "expand_as", "view_as", "reshape_as", "type_as")
_register_all(EvalOnly, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
              nn.FeatureAlphaDropout)
_register_all(BatchNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, F.batch_norm)
_register_all(FunctionalDropout, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)
_register_all(Anywhere, operator.add, operator.sub, torch.add, torch.sub, "add", "sub",
              torch.cat, torch.concat, torch.stack)
_register_all(Where, torch.where)
_register_all(WhereMethod, "where")
_register_all(Product, operator.mul, torch.mul, "mul", operator.matmul, torch.matmul,
              "matmul", torch.mm, "mm", torch.bmm, "bmm")
_register_all(Quotient, operator.truediv, torch.div, "div")
_register_all(ReLU, nn.ReLU, F.relu, torch.relu, "relu", "relu_", F.relu_)
_register_all(LeakyReLU, nn.LeakyReLU, F.leaky_relu)
_register_all(PReLU, nn.PReLU, F.prelu)
_register_all(Abs, torch.abs, builtins.abs, operator.abs, "abs")
_register_all(Hardtanh, nn.Hardtanh, nn.ReLU6, F.hardtanh, F.relu6, torch.clamp, "clamp",
              torch.clip, "clip", torch.clamp_min, "clamp_min", torch.clamp_max, "clamp_max")
_register_all(Hardsigmoid, nn.Hardsigmoid, F.hardsigmoid)
_register_all(Softshrink, nn.Softshrink, F.softshrink)
_register_all(MaxPool1d, nn.MaxPool1d, F.max_pool1d)
_register_all(MaxPool2d, nn.MaxPool2d, F.max_pool2d)
_register_all(MaxPool3d, nn.MaxPool3d, F.max_pool3d)
_register_all(AdaptiveMaxPool1d, nn.AdaptiveMaxPool1d, F.adaptive_max_pool1d)
_register_all(AdaptiveMaxPool2d, nn.AdaptiveMaxPool2d, F.adaptive_max_pool2d)
_register_all(AdaptiveMaxPool3d, nn.AdaptiveMaxPool3d, F.adaptive_max_pool3d)
_register_all(Amax, torch.amax, "amax")
_register_all(Maximum, torch.maximum, torch.max, "maximum", "max")
_register_all(Minimum, torch.minimum, torch.min, "minimum", "min")

__all__ = [
    "Abs", "AdaptiveMaxPool", "Affine", "Amax", "Elementwise", "Hardsigmoid", "Hardtanh",
    "KernelMaxPool", "LeakyReLU", "Lines", "MaxPool", "Maximum", "Minimum", "Nonlinearity",
    "PReLU", "ReLU", "Rule", "Site", "Softshrink", "Windows", "lookup", "refusal",
    "register_op", "supported_ops",
]

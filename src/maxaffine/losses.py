"""Orthogonality penalties: drop-in regularizers on templates and filters.

Templates.  Conditioned on its input a spline network is ``f(x) = A[x] x + B[x]``
and row ``c`` of ``A[x]`` is the template (matched filter) of class ``c``
(Balestriero & Baraniuk, "A Spline Theory of Deep Networks", ICML 2018,
Thm. 1).  That paper and its extension ("Mad Max: Affine Spline Insights into
Deep Learning", Proc. IEEE 2021) propose penalising the inner products between
the templates of different classes,

    lambda * mean_n sum_{a != c} <A_a[x_n], A_c[x_n]>^2,

computed by double back-propagation, and reports better accuracy and less
overfitting with no change to the architecture.  The sum runs over *ordered*
pairs (each unordered pair counts twice), as written in the paper.

Filters.  The cheap variant penalises the off-diagonal Gram of the last layer's
class vectors (:func:`weight_orthogonality`); :func:`filter_orthogonality` does
the same for a hidden layer's flattened filters.  Orthogonal filters remove the
cross terms of a layer's joint VQ, so per-unit inference is the optimal joint
inference (Balestriero & Baraniuk, "From Hard to Soft: Understanding Deep
Network Nonlinearities via Vector Quantization and Statistical Inference",
ICLR 2019).  For a hard constraint see
:func:`maxaffine.orthogonal.orthogonal_filters`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from . import _arguments as arg
from ._arguments import check_dtype, check_tensor
from ._autodiff import pullback
from .errors import MaxAffineError, MaxAffineTypeError
from .graph import SplineGraph, check_parameters

Classes = Sequence[int] | Tensor | None

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

__all__ = [
    "filter_orthogonality",
    "template_gram",
    "template_orthogonality",
    "weight_orthogonality",
]


# ------------------------------------------------------------------------ templates


def template_orthogonality(
    model: nn.Module | SplineGraph,
    x: Tensor,
    classes: Classes = None,
    normalize: bool = False,
    *,
    samples: int | None = None,
) -> Tensor:
    """``mean_n sum_{a != c} <A_a[x_n], A_c[x_n]>^2``: the orthogonal-templates
    penalty (Balestriero & Baraniuk, ICML 2018; "Mad Max"), a scalar that is
    differentiable with respect to the model's parameters (double back-prop).

    ``model``: any module mapping (N, *input_shape) to (N, C) with independent
    samples; for a spline network the templates are the rows of ``A[x]`` (for
    other models, of the local linearization).  ``x``: a batch (N, *input_shape).
    ``classes``: which classes' templates enter the sum; None for all C, a
    sequence / (k,) tensor of distinct class indices shared by the batch, or a
    (N, k) tensor of per-sample index sets (e.g. each label and a few others, for
    many-class problems). Only those k rows are computed: k vector-Jacobian
    products, vmapped, never a loop over samples.  ``normalize``: squared cosines
    instead of squared inner products (scale-free; at most k (k - 1); a zero
    template has cosine 0 with every other).
    ``samples``: evaluate the penalty on that many inputs drawn at random
    (``torch``'s global generator) without replacement: an unbiased estimate of
    the full-batch value at a fraction of the cost.

    Cost: k vector-Jacobian products of the batch and their back-propagation
    (about 3k backward passes), plus, for batch-norm in training mode, one more
    forward and backward of the batch for its statistics. With ``samples=m`` the
    products run on m inputs instead of the whole batch. ``benchmarks/orthogonality.py``
    measures a training step with the penalty against a plain one.

    A model in training mode is evaluated as the function the training loss sees:
    every batch-norm layer normalises with the statistics of the whole batch ``x``
    (held fixed for the per-sample Jacobian, so samples stay independent, while
    gradients still flow through them to the weights); dropout is off.  This
    uses temporary forward hooks and eval mode during the call; running
    statistics and training flags are left as they were.

    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> p = template_orthogonality(net, torch.randn(8, 4))
    >>> p.backward()  # gradients w.r.t. the weights

    An empty batch raises: the penalty is a mean over the batch's samples; so do NaN /
    inf parameters (named).
    """
    if samples is not None:
        samples = arg.integer(samples, "samples", minimum=1,
                              meaning="inputs drawn from the batch, or None for all")
    normalize = arg.flag(normalize, "normalize")
    n = _batch_size(model, x)
    if n == 0:
        raise MaxAffineError("x is an empty batch (0 samples), and the penalty is a mean over "
                             "the batch's samples: skip the penalty for an empty batch")
    rows = None
    if samples is not None and samples < n:
        rows = torch.randperm(n, device=x.device)[:samples]
    gram = _gram(model, x, classes, rows)
    return _off_diagonal_squares(gram, normalize).mean()


def template_gram(
    model: nn.Module | SplineGraph, x: Tensor, classes: Classes = None, normalize: bool = False
) -> Tensor:
    """Per-sample Gram matrices of the templates, ``G[n, a, c] = <A_a[x_n], A_c[x_n]>``,
    shape (N, k, k) with k the number of classes selected (see
    :func:`template_orthogonality` for ``classes`` and the training-mode rules);
    ``normalize=True`` gives cosines. Differentiable w.r.t. the parameters.
    An empty batch gives an empty (0, k, k)."""
    normalize = arg.flag(normalize, "normalize")
    if _batch_size(model, x) == 0:
        sets = _class_sets(classes, 0, x.device)
        k = _num_outputs(_module(model), x) if sets is None else sets.shape[-1]
        return x.new_zeros((0, k, k))
    gram = _gram(model, x, classes, None)
    return _cosines(gram) if normalize else gram


def _module(model: nn.Module | SplineGraph) -> nn.Module:
    if isinstance(model, SplineGraph):
        return model.model
    if not isinstance(model, nn.Module):
        raise MaxAffineTypeError(f"model must be a torch.nn.Module or a maxaffine.SplineGraph, "
                                 f"got {type(model).__name__}")
    return model


def _batch_size(model: nn.Module | SplineGraph, x: Tensor) -> int:
    module = _module(model)
    if not isinstance(x, Tensor):
        raise MaxAffineTypeError(f"x must be a torch.Tensor batch (N, *input_shape), got "
                                 f"{type(x).__name__}")
    check_tensor(x, "x")
    if x.dim() < 2:
        raise MaxAffineError(
            f"x must be a batch (N, *input_shape); got shape {tuple(x.shape)}: "
            "add a batch dimension with x.unsqueeze(0)"
        )
    check_dtype(module, x, "x")
    check_parameters(module)  # a NaN weight would give NaN templates, or none at all
    return x.shape[0]


def _forward(model: nn.Module, v: Tensor) -> Tensor:
    """``model(v)``, with a shape error of the model's own layers named as such."""
    try:
        out = model(v)
    except RuntimeError as err:
        raise MaxAffineError(f"the model fails on x of shape {tuple(v.shape)} ({err}): pass a "
                             "batch of the model's input shape (N, *input_shape)") from err
    if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != v.shape[0]:
        got = (f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else
               type(out).__name__)
        raise MaxAffineError(f"the model must map x (N, *input_shape) to one tensor (N, C), "
                             f"got {got} for x of shape {tuple(v.shape)}")
    return out


def _num_outputs(model: nn.Module, x: Tensor) -> int:
    """C, from one eval-mode pass of the (empty) batch ``x``; flags restored."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = _forward(model, x)
    finally:
        for m, flag in flags:
            m.training = flag
    return math.prod(out.shape[1:])


def _gram(model: nn.Module | SplineGraph, x: Tensor, classes: Classes,
          rows: Tensor | None) -> Tensor:
    """Gram (n, k, k) of the selected templates of ``x[rows]`` (all rows if None)."""
    A = _templates(model, x, classes, rows)
    return A @ A.transpose(1, 2)


def _templates(model: nn.Module | SplineGraph, x: Tensor, classes: Classes,
               rows: Tensor | None) -> Tensor:
    """Templates (n, k, D) of the selected classes: one batched forward, then k
    vector-Jacobian products vmapped over one-hot cotangents of shape (k, n, C)."""
    model = _module(model)
    sets = _class_sets(classes, x.shape[0], x.device)
    xs = x if rows is None else x[rows]
    if sets is not None and sets.dim() == 2 and rows is not None:
        sets = sets[rows]
    n = xs.shape[0]
    with _batch_statistics_frozen(model, x):

        with torch.enable_grad():
            v = xs if xs.requires_grad else xs.detach().requires_grad_(True)
            out = _forward(model, v).reshape(n, -1)
        c = out.shape[1]
        if sets is None:
            cot = torch.eye(c, dtype=out.dtype, device=out.device).unsqueeze(1).expand(c, n, c)
        else:
            if int(sets.max()) >= c:
                raise MaxAffineError(
                    f"classes contains index {int(sets.max())} but the model has C={c} "
                    f"outputs: class indices must be in [0, {c - 1}]"
                )
            sets = sets.expand(n, -1) if sets.dim() == 1 else sets
            cot = nn.functional.one_hot(sets.T, c).to(out.dtype)  # (k, n, C)
        with torch.enable_grad():  # differentiable: the penalty back-propagates
            A = pullback(out, v, cot, retain=False, differentiable=torch.is_grad_enabled())
    return A.movedim(0, 1).flatten(2)  # (n, k, D)


def _class_sets(classes: Classes, n: int, device: torch.device) -> Tensor | None:
    """None, or the selected class indices as a (k,) or (n, k) long tensor (validated)."""
    if classes is None:
        return None
    try:
        if isinstance(classes, str | bytes):
            raise TypeError
        t = torch.as_tensor(classes, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise MaxAffineTypeError(f"classes must be integer class indices (a list, a (k,) or "
                                 f"(N, k) tensor) or None, got {type(classes).__name__} "
                                 f"{classes!r}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise MaxAffineTypeError(f"classes must hold integer class indices, got dtype "
                                 f"{t.dtype}: use .long()")
    t = t.long()
    if t.dim() not in (1, 2) or (t.dim() == 2 and t.shape[0] != n):
        raise MaxAffineError(
            f"classes must have shape (k,) or (N={n}, k), got {tuple(t.shape)}"
        )
    if t.shape[-1] < 2:
        raise MaxAffineError(f"classes must name at least 2 classes per sample, got "
                             f"{t.shape[-1]}: a single template has no pair to penalise")
    if bool((t < 0).any()):
        raise MaxAffineError(f"classes must be non-negative indices, got min {int(t.min())}")
    srt = t.sort(dim=-1).values
    if bool((srt[..., 1:] == srt[..., :-1]).any()):
        raise MaxAffineError("classes must not repeat an index (per sample)")
    return t


@contextlib.contextmanager
def _batch_statistics_frozen(model: nn.Module, x: Tensor) -> Iterator[None]:
    """Inside: ``model`` runs in eval mode, and each batch-norm layer that was in
    training mode (or keeps no running statistics) normalises with the batch
    statistics of ``x``, computed once here at the outer autograd level. The
    network is then per-sample (piecewise) affine in its input while the
    statistics stay functions of the weights. Flags are restored on exit."""
    flags = [(m, m.training) for m in model.modules()]
    norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS)
             and (m.training or m.running_mean is None)]
    stats: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {m: [] for m in norms}
    calls: dict[nn.Module, int] = {}
    recording = True

    def normalise(m: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        z = inputs[0]
        if recording:  # the statistics for the later passes, and the training-mode output
            dims = [0, *range(2, z.dim())]
            var, mean = torch.var_mean(z, dims, correction=0)
            stats[m].append((mean, var))
            return nn.functional.batch_norm(z, None, None, m.weight, m.bias, training=True,
                                            eps=m.eps)
        i = calls.get(m, 0)
        calls[m] = i + 1
        mean, var = stats[m][i]
        shape = (1, -1) + (1,) * (z.dim() - 2)
        scale = torch.rsqrt(var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight
        y = (z - mean.reshape(shape)) * scale.reshape(shape)
        return y if m.bias is None else y + m.bias.reshape(shape)

    hooks = [m.register_forward_hook(normalise) for m in norms]
    if norms:
        hooks.append(model.register_forward_pre_hook(lambda *_: calls.clear()))
    model.eval()
    try:
        if norms:
            _forward(model, x)
            recording = False
        yield
    finally:
        for h in hooks:
            h.remove()
        for m, flag in flags:
            m.training = flag


def _cosines(gram: Tensor) -> Tensor:
    sq = gram.diagonal(dim1=-2, dim2=-1).clamp_min(torch.finfo(gram.dtype).tiny)
    norm = sq.sqrt()
    return gram / (norm.unsqueeze(-1) * norm.unsqueeze(-2))


def _off_diagonal_squares(gram: Tensor, normalize: bool) -> Tensor:
    """``sum_{a != c} G[..., a, c]^2`` (ordered pairs), of cosines if ``normalize``."""
    if normalize:
        gram = _cosines(gram)
    # the diagonal masked, not subtracted: an overflowed (inf) Gram gives inf, not NaN
    eye = torch.eye(gram.shape[-1], dtype=torch.bool, device=gram.device)
    return gram.masked_fill(eye, 0.0).pow(2).sum((-2, -1))


# -------------------------------------------------------------------------- weights


def weight_orthogonality(weight: Tensor, *, normalize: bool = False) -> Tensor:
    """``sum_{a != c} <w_a, w_c>^2`` over the rows of ``weight`` (ordered pairs): the
    squared off-diagonal of the Gram ``W W^T`` of a linear layer's class vectors,
    the cheap variant of the orthogonal-templates penalty (Balestriero & Baraniuk,
    ICML 2018; "Mad Max"). Rows are flattened (dims 1.. into one); ``normalize`` uses
    cosines. Zero iff the rows are mutually orthogonal.

    >>> weight_orthogonality(torch.eye(3))
    tensor(0.)
    """
    if not isinstance(weight, Tensor):
        raise MaxAffineTypeError(f"weight must be a torch.Tensor (out, *fan_in), e.g. "
                                 f"layer.weight, got {type(weight).__name__}")
    if weight.dim() < 2 or not weight.is_floating_point():
        raise MaxAffineError(
            f"weight must be a floating (out, *fan_in) tensor, got shape "
            f"{tuple(weight.shape)} and dtype {weight.dtype}: pass a layer's weight matrix "
            "(.float() for integer tensors)"
        )
    normalize = arg.flag(normalize, "normalize")
    w = weight.flatten(1)
    return _off_diagonal_squares(w @ w.T, normalize)


def filter_orthogonality(layer: nn.Module, *, normalize: bool = False) -> Tensor:
    """:func:`weight_orthogonality` of a hidden layer's flattened filters.

    ``layer``: ``nn.Linear`` (rows of the weight) or ``nn.Conv1d/2d/3d`` (each
    filter flattened to (in_channels / groups) * prod(kernel_size)). For a
    grouped convolution only filters of the same group are compared (filters of
    different groups read disjoint channels, so they are orthogonal anyway).
    With more filters than dimensions the penalty cannot reach zero.  This is the
    flattened-filter Gram, the usual proxy: rows of the full convolution operator
    are all spatial shifts of the filters, which it does not compare.

    >>> filter_orthogonality(torch.nn.Conv2d(1, 4, 3)) > 0
    tensor(True)
    """
    normalize = arg.flag(normalize, "normalize")
    if isinstance(layer, nn.Linear):
        return weight_orthogonality(layer.weight, normalize=normalize)
    if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        w = layer.weight
        g = layer.groups
        w = w.reshape(g, w.shape[0] // g, -1)
        return _off_diagonal_squares(w @ w.transpose(1, 2), normalize).sum()
    raise MaxAffineTypeError(
        f"filter_orthogonality takes an nn.Linear or nn.Conv1d/2d/3d, got "
        f"{type(layer).__name__}; for a bare weight tensor use weight_orthogonality"
    )

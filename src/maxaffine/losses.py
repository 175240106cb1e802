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

Inversion.  The same spline view lets a network reconstruct its own input
(Balestriero, Roger, Glotin & Baraniuk, "Semi-Supervised Learning via New Deep
Network Inversion", arXiv:1711.04313, 2017; Balestriero, Glotin & Baraniuk,
"Semi-Supervised Learning Enabled by Multiscale Deep Neural Network Inversion",
arXiv:1802.10172, 2018): the template of the predicted class and each layer's
backward map of its own activations map back to input space, so the distance to
``x`` is a loss on unlabelled data with no decoder and no extra parameters
(:func:`inversion_loss`); :func:`semi_supervised_loss` adds it, with the entropy
of the unlabelled predictions, to the cross-entropy of the labelled ones.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from . import _arguments as arg
from ._arguments import check_dtype, check_tensor
from ._autodiff import pullback
from .errors import MaxAffineError, MaxAffineTypeError
from .graph import SplineGraph, check_input, check_parameters

Classes = Sequence[int] | Tensor | None

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

__all__ = [
    "filter_orthogonality",
    "inversion_loss",
    "semi_supervised_loss",
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


# ------------------------------------------------------------------------- inversion

Scales = str | int | Sequence[str | int]

TEMPLATE = "template"  # the predicted class's template, A_yhat[x]
OUTPUT = "output"  # the output's backward map of the output itself, A[x]^T f(x)


def inversion_loss(model: nn.Module | SplineGraph, x: Tensor, *,
                   scales: Scales = "all") -> Tensor:
    """The multiscale reconstruction error of ``x`` by the network's own inverse: a
    scalar, differentiable with respect to the weights (double back-prop), with no
    parameters of its own (Balestriero, Roger, Glotin & Baraniuk, arXiv:1711.04313,
    sec. 3; Balestriero, Glotin & Baraniuk, "Semi-Supervised Learning Enabled by
    Multiscale Deep Neural Network Inversion", arXiv:1802.10172).

    On the region of ``x`` a spline network is affine, ``f(x) = A[x] x + B[x]``, and so
    is every nonlinearity's output, ``z_l(x) = A_l[x] x + B_l[x]`` (``A_l[x]``: the
    Jacobian of layer l's output with every code frozen, the composition of the
    layers' maps up to l). Each *scale* s gives a reconstruction ``xhat_s`` of x in
    input space:

    * ``"template"``: the template of the predicted class,
      ``xhat = A_c[x] = d f_c / d x`` with ``c = argmax_k f_k(x)`` (1711.04313, the
      inverse of a DNN as the matched filter of its decision: ``<A_c[x], x>`` is
      largest when the template is x itself);
    * a layer (a name of ``graph.layer_names`` or an index; negative from the end):
      that nonlinearity's backward map applied to its own output,
      ``xhat = A_l[x]^T z_l(x)`` (a vector-Jacobian product of the layer's output
      with cotangent the output: the back-propagation of the layer's activations
      to the input, 1802.10172's per-layer inverse, measured in input space);
    * ``"output"``: the same for the network's output, ``xhat = A[x]^T f(x)``.

    ``scales``: ``"all"`` (default: ``"template"`` and every nonlinearity of the
    graph, the multiscale loss), ``"layers"`` (every nonlinearity), one scale, or a
    sequence of distinct scales. The names ``"template"`` and ``"output"`` take
    precedence over layers of those names (use their index).

    Normalisation: per scale, the mean over the batch of the squared error per input
    entry, ``e_s = (1 / (N D)) sum_n ||x_n - xhat_s(x_n)||^2`` (D: entries per
    sample), and the loss is the mean of ``e_s`` over the scales: no weights to set.
    ``e_s`` is in the units of ``x`` squared (inputs in [0, 1]: at most about 1 for a
    zero reconstruction).

    Exact reconstruction: where the layers' maps are orthogonal on the region
    (``A_l[x]^T A_l[x] = I``) and carry no offset, ``A_l^T z_l = A_l^T A_l x = x``:
    e.g. orthogonal linear layers with ``abs`` (a sign flip per unit) and no biases
    reconstruct every x at every layer and at ``"output"``; ``"template"`` is exact
    where x is its predicted class's template.

    ``model``: a piecewise-affine ``nn.Module`` that :func:`maxaffine.trace` accepts,
    or its :class:`~maxaffine.SplineGraph` (trace once, e.g.
    ``maxaffine.trace(net, x[:1])``, to save the tracing in a training loop: the graph
    reads the module's current weights). Batch-norm and dropout must be in eval mode,
    as for every spline map. ``x``: a batch (N, *input_shape), finite; an empty batch
    raises (the loss is a mean over samples), as do NaN / inf inputs or parameters.

    Cost: one forward pass of the graph and one vector-Jacobian product (a backward
    pass) per scale, each back-propagated again by ``loss.backward()``. Under
    ``torch.no_grad()`` the value is computed without the double-back-prop graph.

    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> loss = inversion_loss(net, torch.randn(8, 4))
    >>> loss.backward()  # gradients w.r.t. the weights
    """
    graph = _graph(model, x, "x")
    names = _scales(graph, scales)
    return _reconstruction(graph, x, names)[0]


def semi_supervised_loss(
    model: nn.Module | SplineGraph, x_labelled: Tensor, y: Tensor, x_unlabelled: Tensor, *,
    alpha: float = 1.0, beta: float = 1.0, scales: Scales = "all",
) -> Tensor:
    """``CE(f(x_labelled), y) + alpha * R(x_labelled and x_unlabelled)
    + beta * H(softmax f(x_unlabelled))``: the semi-supervised loss of the inversion
    papers (Balestriero et al., arXiv:1711.04313, sec. 3.2; arXiv:1802.10172), a
    differentiable scalar.

    * ``CE``: the mean cross-entropy of the labelled batch (logits ``f``, labels ``y``);
    * ``R``: :func:`inversion_loss` (with ``scales``) on the labelled and unlabelled
      inputs together, a mean over all of them: reconstruction needs no label;
    * ``H``: the mean entropy (nats) of the predicted class distribution of the
      unlabelled inputs, ``-sum_c p_c log p_c`` with ``p = softmax(f(x))``
      (entropy minimisation: confident predictions on unlabelled data).

    The papers weight the three terms by constants chosen per data set (a convex
    combination, ``a1 CE + a2 R + (1 - a1 - a2) H``); dividing by the weight of the
    cross-entropy gives this form. ``alpha = 0`` is entropy minimisation alone,
    ``alpha = beta = 0`` plain supervised training (both still evaluate the graph on
    the unlabelled batch). Defaults ``alpha = beta = 1``: set them for your data (the
    reconstruction term is in units of the input squared, see :func:`inversion_loss`).

    ``model``: as :func:`inversion_loss`, mapping (N, *input_shape) to logits (N, C).
    ``y``: (N_labelled,) integer class indices in [0, C). Both batches must be
    non-empty and finite, of the model's input shape and dtype.

    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> loss = semi_supervised_loss(net, torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]),
    ...                             torch.randn(20, 4), alpha=0.5, beta=0.1)
    >>> loss.backward()
    """
    graph = _graph(model, x_labelled, "x_labelled")
    _check_batch(graph, x_unlabelled, "x_unlabelled")
    alpha = arg.number(alpha, "alpha", minimum=0.0, meaning="the reconstruction's weight")
    beta = arg.number(beta, "beta", minimum=0.0, meaning="the entropy's weight")
    if len(graph.output_shape) != 1:
        raise MaxAffineError(
            f"semi_supervised_loss needs a model returning logits (N, C), but its outputs "
            f"are (N, {', '.join(map(str, graph.output_shape))}): flatten them in the model")
    labels = _labels(y, x_labelled.shape[0], graph.num_outputs)
    names = _scales(graph, scales)
    n = x_labelled.shape[0]
    both = torch.cat([x_labelled, x_unlabelled])
    if alpha > 0:
        rec, logits = _reconstruction(graph, both, names)
    else:
        rec, logits = both.new_zeros(()), graph.evaluate(both).output
    ce = nn.functional.cross_entropy(logits[:n], labels)
    logp = torch.log_softmax(logits[n:], dim=1)
    entropy = -(logp.exp() * logp).sum(1).mean()
    return ce + alpha * rec + beta * entropy


def _graph(model: nn.Module | SplineGraph, x: Tensor, what: str) -> SplineGraph:
    """The spline graph of ``model`` (traced on ``x``), with ``x`` checked as a
    non-empty, finite batch of its input shape and dtype."""
    from .vq import graph_for

    graph = graph_for(model, x, what)
    _check_batch(graph, x, what)
    return graph


def _check_batch(graph: SplineGraph, x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor):
        raise MaxAffineTypeError(f"{what} must be a torch.Tensor batch (N, *input_shape), got "
                                 f"{type(x).__name__}")
    check_input(graph, x, what)  # shape, dtype, NaN / inf, parameters
    if x.shape[0] == 0:
        raise MaxAffineError(f"{what} is an empty batch (0 samples), and the loss is a mean "
                             f"over its samples: skip the loss for an empty batch")


def _scales(graph: SplineGraph, scales: Scales) -> tuple[str, ...]:
    """The requested scales as ``"template"``, ``"output"`` or layer names, validated."""
    if isinstance(scales, str) and scales in ("all", "layers"):
        names = graph.layer_names
        if scales == "all":
            return (TEMPLATE, *names)
        if not names:
            raise MaxAffineError("scales='layers' but the model has no nonlinearity: use "
                                 "'template' or 'output'")
        return names
    items = [scales] if isinstance(scales, str | numbers.Integral) or (
        isinstance(scales, Tensor) and scales.dim() == 0) else scales
    if isinstance(items, bytes) or not isinstance(items, Sequence | Tensor):
        raise MaxAffineTypeError(f"scales must be 'all', 'layers', 'template', 'output', a layer "
                                 f"name or index, or a sequence of them, got "
                                 f"{type(scales).__name__} {scales!r}")
    out: list[str] = []
    for key in items:
        if isinstance(key, str) and key in (TEMPLATE, OUTPUT):
            name = key
        else:
            try:
                name = graph.layer_names[arg.layer_index(key, graph.layer_names, "scales")]
            except MaxAffineError as err:
                raise type(err)(f"scales: {err} (or 'template', 'output')") from None
        if name in out:
            raise MaxAffineError(f"scales names {name!r} twice: each scale counts once")
        out.append(name)
    if not out:
        raise MaxAffineError("scales is empty: pass 'all', or at least one of 'template', "
                             f"'output' and the layers {graph.layer_names}")
    return tuple(out)


def _labels(y: Tensor, n: int, num_classes: int) -> Tensor:
    if not isinstance(y, Tensor):
        raise MaxAffineTypeError(f"y must be a ({n},) integer tensor of class indices, got "
                                 f"{type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise MaxAffineTypeError(f"y must hold integer class indices, got dtype {y.dtype}: "
                                 "use y.long()")
    if tuple(y.shape) != (n,):
        raise MaxAffineError(f"y must have shape ({n},), one label per labelled input, got "
                             f"{tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise MaxAffineError(f"y holds labels in [{int(y.min())}, {int(y.max())}] but the model "
                             f"has C={num_classes} outputs: labels must lie in "
                             f"[0, {num_classes - 1}]")
    return y.long()


def _reconstruction(graph: SplineGraph, x: Tensor, names: tuple[str, ...]
                    ) -> tuple[Tensor, Tensor]:
    """The mean over ``names`` of each scale's squared error per entry (see
    :func:`inversion_loss`), and the graph's outputs (N, C). One forward pass, one
    vector-Jacobian product per scale; differentiable if grad mode is on."""
    differentiable = torch.is_grad_enabled()
    n, d = x.shape[0], math.prod(x.shape[1:])
    layers = [s for s in names if s not in (TEMPLATE, OUTPUT)]
    with torch.enable_grad():
        v = x if differentiable and x.requires_grad else x.detach().requires_grad_(True)
        ev = graph.evaluate(v, record=bool(layers))
        out = ev.output.reshape(n, -1)
        pairs: list[tuple[Tensor, Tensor]] = []  # (tensor, cotangent) per scale
        for s in names:
            if s == TEMPLATE:
                if out.shape[1] == 0:
                    raise MaxAffineError("the model has no outputs (C=0): no template")
                hot = nn.functional.one_hot(out.detach().argmax(1), out.shape[1])
                pairs.append((out, hot.to(out.dtype)))
            elif s == OUTPUT:
                pairs.append((out, out))
            else:  # the layer's output, through the selected pieces (codes frozen)
                z = graph.layer(s).rule.piece(ev.codes[s], *ev.inputs[s]).reshape(n, -1)
                pairs.append((z, z))
        errors = []
        for i, (target, cot) in enumerate(pairs):
            if target.requires_grad:
                xhat = pullback(target, v, cot, retain=i + 1 < len(pairs),
                                differentiable=differentiable)
            else:  # the scale does not depend on x: reconstructs 0
                xhat = torch.zeros_like(v)
            errors.append((v - xhat).pow(2).sum() / (n * d))
    loss = torch.stack(errors).mean()
    if not differentiable:
        return loss.detach(), out.detach()
    return loss, out

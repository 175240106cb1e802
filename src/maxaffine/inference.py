"""The GMM inference behind hard and soft nonlinearities.

"From Hard to Soft: Understanding Deep Network Nonlinearities via Vector
Quantization and Statistical Inference" (Balestriero & Baraniuk, ICLR 2019):
unit ``k`` of a MASO layer is a Gaussian mixture over its ``R`` affine pieces
whose log-odds are ``l_r(x) = <A[k,r], x> + B[k,r]`` (sec. 3). Its posterior over
the pieces is

* hard VQ (beta = 1): ``onehot(argmax_r l_r)``, the VQ code (:func:`maxaffine.codes`);
* soft VQ (beta = 1/2): ``softmax_r(l_r)``;
* beta-VQ: ``softmax_r(beta / (1 - beta) * l_r)`` (sec. 4, eq. 12).

:func:`vq_posterior` evaluates it for every nonlinearity of a model, and
:func:`soften` turns a hard (ReLU / leaky ReLU / abs / max-pool) model into its
beta-VQ counterpart.

How pre-activations are obtained.  A piecewise-affine model is traced once
(:func:`maxaffine.trace`) and ``graph.evaluate(x, record=True)`` gives every
nonlinearity's inputs; units are named as in :func:`maxaffine.codes`.  A model
containing beta-VQ modules is not piecewise affine, so it cannot be traced: then
each VQ *module* (beta-VQ modules and torch's ReLU / LeakyReLU / PReLU /
max-pool / Hardtanh, :class:`maxaffine.nn.Abs`) gets a forward hook for the
duration of one ``model(x)`` call; the hooks write only into a local dict and
are removed afterwards.  Layers are named by module path, the name the same unit
has in the traced hard model, so ``vq_posterior(soften(net, b), x, layer=name)``
and ``vq_posterior(net, x, layer=name)`` refer to the same units.  Functional
nonlinearities (``F.relu(x)``, ``x.abs()``) in such a model are found by a
symbolic trace and reported as an error rather than silently skipped.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch.fx as fx
from torch import Tensor, nn

from . import _arguments as arguments
from . import ops
from ._arguments import check_dtype, check_tensor
from .errors import MaxAffineError, MaxAffineTypeError, UnsupportedOperation
from .graph import SplineGraph, Tracer, as_graph, check_parameters, node_name, rule_for_module
from .nn import betavq
from .nn.betavq import BETA_MODULES, BetaVQ, BetaVQPool1d, BetaVQPool2d

# ------------------------------------------------------------------ pieces of a unit


def _rule_pieces(rule: ops.Nonlinearity, name: str,
                 inputs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
    """A hard unit's pieces (N, *code_shape, R) and validity mask: the log-odds of
    its GMM, for a unit that is a single max (or min) over its affine pieces."""
    if not rule.single_max:
        raise MaxAffineError(
            f"{name} ({type(rule).__name__}) is not a single max over affine pieces "
            "(e.g. Hardtanh = min(max(u, lo), hi)), so it has no GMM posterior; pick "
            "another layer with layer=..."
        )
    return rule.pieces(*inputs)


def _cannot(what: str, problems: list[str]) -> UnsupportedOperation:
    err = UnsupportedOperation(problems)
    lines = "\n".join(f"  - {p}" for p in problems)
    err.args = (f"{what} {len(problems)} nonlinearit{'y' if len(problems) == 1 else 'ies'}:"
                f"\n{lines}",)
    return err


# ------------------------------------------------------------------ vq_posterior


@dataclass(frozen=True)
class VQPosterior:
    """Each unit's posterior over its affine pieces, per layer (:func:`vq_posterior`).

    ``names``: the layers, in evaluation order (all of them, or the one asked for);
    ``values``: per layer a tensor (N, *code_shape, R), pieces on the last axis;
    ``beta``: the beta every unit was evaluated at, or None (each unit's own
    inference: hard units one-hot, beta-VQ modules their beta). Index it by layer
    name or index (``post["2"]``, ``post[-1]``); iterating gives the names.
    """

    names: tuple[str, ...]
    values: tuple[Tensor, ...]
    beta: float | None = None

    def __getitem__(self, layer: str | int) -> Tensor:
        return self.values[arguments.layer_index(layer, self.names)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def items(self) -> Iterator[tuple[str, Tensor]]:
        return zip(self.names, self.values, strict=True)

    def as_dict(self) -> dict[str, Tensor]:
        """name -> posterior (N, *code_shape, R)."""
        return dict(self.items())

    def summary(self) -> dict[str, Any]:
        """Per layer: the posterior's shape, the mean probability of each unit's most
        probable piece (1 for hard VQ) and the mean entropy in nats (0 for hard VQ)."""
        layers = {}
        for name, p in self.items():
            p = p.detach().double()
            entropy = -(p * p.clamp(min=1e-300).log()).sum(-1)
            layers[name] = {"shape": list(p.shape),
                            "mean_max": float(p.amax(-1).mean()) if p.numel() else None,
                            "mean_entropy": float(entropy.mean()) if p.numel() else None}
        return {"beta": self.beta, "layers": layers}

    def to_json(self) -> str:
        """The summary and every posterior, as nested lists."""
        return json.dumps({**self.summary(),
                           "values": {n: p.detach().tolist() for n, p in self.items()}})

    def plot(self, ax=None, bins: int = 20):
        """Histogram, per layer, of each unit's largest posterior probability (hard
        VQ: all at 1; softer inference spreads it towards 1/R)."""
        from ._plotting import plot_posterior

        bins = arguments.integer(bins, "bins", minimum=1, maximum=100_000,
                                 meaning="histogram bins")
        return plot_posterior(self, ax=ax, bins=bins)


def _result(names: list[str], out: dict[str, Tensor], beta: float | None) -> VQPosterior:
    return VQPosterior(tuple(names), tuple(out[n] for n in names),
                       None if beta is None else float(beta))


def vq_posterior(model: nn.Module | SplineGraph, x: Tensor, *, layer: str | int | None = None,
                 beta: float | None = None) -> VQPosterior:
    """Each unit's posterior over its affine pieces under the layer's GMM.

    ("From Hard to Soft", ICLR 2019, sec. 3-4: ``t = softmax(beta / (1 - beta) * l)``.)

    ``model``: a piecewise-affine model (or its :class:`~maxaffine.SplineGraph`), or
    a model with beta-VQ modules (see the module docstring). ``x``: (N, *input_shape).
    ``layer``: a layer name (as in :func:`maxaffine.codes`) or index; None for all.
    ``beta``: None uses each unit's own inference (hard units: the one-hot VQ code;
    beta-VQ modules: their beta); a number in [0, 1] evaluates every unit at that
    beta instead (1: hard, 0.5: the soft posterior ``softmax(l)``).

    Returns a :class:`VQPosterior` (the chosen layer, or all layers in evaluation
    order), each layer's posterior (N, *code_shape, R) with the pieces on the last
    axis (ReLU ``(0, u)``, abs ``(-u, u)``, leaky ``(a u, u)``, max-pool the window
    row-major): ``vq_posterior(net, x, layer="2")["2"]``. Runs the model as it is:
    call ``model.eval()`` first for batch-norm models.
    """
    if beta is not None:
        betavq._check_beta(beta)
    if not isinstance(model, nn.Module | SplineGraph):
        raise MaxAffineTypeError(f"model must be a torch.nn.Module or a maxaffine.SplineGraph, "
                                 f"got {type(model).__name__}")
    check_tensor(x, "x")
    if not isinstance(model, SplineGraph) and any(
            isinstance(m, BETA_MODULES) for m in model.modules()):
        if x.dim() < 2:
            raise MaxAffineError(f"x must be a batch (N, *input_shape); got shape "
                                 f"{tuple(x.shape)}: add a batch dimension with x.unsqueeze(0)")
        check_dtype(model, x, "x")
        check_parameters(model)
        return _posterior_by_hooks(model, x, layer, beta)
    graph = as_graph(model, x)
    names = list(graph.layer_names)
    if layer is not None:
        names = [names[graph.layer_index(layer)]]
    ev = graph.evaluate(x, record=True)
    out: dict[str, Tensor] = {}
    for name in names:
        pieces, valid = _rule_pieces(graph.layer(name).rule, name, ev.inputs[name])
        out[name] = betavq.vq_selection(pieces, 1.0 if beta is None else beta, -1, valid)
    return _result(names, out, beta)


def _vq_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module path -> module, for every module that is a VQ unit."""
    found: dict[str, nn.Module] = {}
    for path, m in model.named_modules():
        rule = rule_for_module(m)
        if isinstance(m, BETA_MODULES) or (rule is not None
                                           and issubclass(rule, ops.Nonlinearity)):
            found[path] = m
    return found


def _posterior_by_hooks(model: nn.Module, x: Tensor, layer: str | int | None,
                        beta: float | None) -> VQPosterior:
    """The posteriors read through forward hooks on every VQ module (the layers, in
    the order ``model.forward`` calls them)."""
    units = _vq_modules(model)
    problems = _functional_units(model)
    if problems:
        raise _cannot("vq_posterior cannot see", [
            f"{p}: a functional nonlinearity in a model with beta-VQ modules, where only "
            "modules are hooked; use modules (torch.nn.ReLU, maxaffine.nn.Abs, ...)"
            for p in problems])
    seen: dict[str, tuple[Tensor, ...]] = {}
    again: set[str] = set()

    def hook_for(path: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if path in seen:
                again.add(path)
            seen[path] = tuple(a for a in args if isinstance(a, Tensor))
        return hook

    handles = [m.register_forward_hook(hook_for(p)) for p, m in units.items()]
    try:
        model(x)
    except RuntimeError as err:  # shapes the model's own layers refuse
        raise MaxAffineError(f"the model fails on x of shape {tuple(x.shape)} ({err}): pass a "
                             "batch of the model's input shape (N, *input_shape)") from err
    finally:
        for h in handles:
            h.remove()
    names = list(seen)
    if layer is not None:
        names = [names[arguments.layer_index(layer, tuple(seen))]]
    out: dict[str, Tensor] = {}
    for path in names:
        if path in again:
            raise MaxAffineError(f"module {path!r} is called more than once per forward, "
                                 "so its units are ambiguous; use distinct modules")
        inputs, m = seen[path], units[path]
        if isinstance(m, BETA_MODULES):
            out[path] = m.selection(inputs[0], beta)
            continue
        rule_cls = rule_for_module(m)
        site = ops.Site(path, type(m), m, inputs, {}, (True,) + (False,) * (len(inputs) - 1))
        pieces, valid = _rule_pieces(rule_cls(site), path, inputs)
        out[path] = betavq.vq_selection(pieces, 1.0 if beta is None else beta, -1, valid)
    return _result(names, out, beta)


# ------------------------------------------------------------------ soften


class _LeafTracer(Tracer):
    """The spline graph's tracer, with beta-VQ modules kept as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, BETA_MODULES) or super().is_leaf_module(m, module_qualified_name)


def _functional_units(model: nn.Module) -> list[str]:
    """Functional nonlinearity calls (``F.relu``, ``x.abs()``, ...) found by a symbolic
    trace, as ``"name (F.relu)"``; empty (with a warning) when the model cannot be
    traced symbolically."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception as err:  # torch.fx raises several types for untraceable code
        warnings.warn(f"{type(model).__name__} cannot be traced symbolically ({err}); "
                      "functional nonlinearities (F.relu, x.abs()) cannot be checked",
                      stacklevel=3)
        return []
    found = []
    for node in graph.nodes:
        if node.op in ("call_function", "call_method"):
            rule = ops.lookup(node.target)
            if rule is not None and issubclass(rule, ops.Nonlinearity):
                found.append(f"{node_name(node)} ({ops.describe_target(node.target)})")
    return found


def _soft_counterpart(m: nn.Module, beta: float, learnable: bool) -> nn.Module | None:
    """The beta-VQ module replacing hard module ``m``; None if ``m`` is not one we
    replace. Raises for max-pools with options beta-VQ pooling lacks."""
    t = type(m)
    if t is nn.ReLU:
        return BetaVQ("relu", beta, learnable)
    if t is betavq.Abs:
        return BetaVQ("abs", beta, learnable)
    if t is nn.LeakyReLU:
        if not 0.0 <= m.negative_slope < 1.0:
            raise ValueError(f"LeakyReLU slope {m.negative_slope} is outside [0, 1)")
        return BetaVQ("leaky_relu", beta, learnable, negative_slope=m.negative_slope)
    if t in (nn.MaxPool1d, nn.MaxPool2d):
        if m.ceil_mode or m.return_indices:
            raise ValueError("ceil_mode / return_indices are not supported by beta-VQ pooling")
        cls = BetaVQPool1d if t is nn.MaxPool1d else BetaVQPool2d
        return cls(m.kernel_size, m.stride, beta, padding=m.padding, dilation=m.dilation,
                   learnable=learnable)
    return None


def soften(model: nn.Module, beta: float = 0.5, *, share_weights: bool = False,
           learnable: bool = False) -> nn.Module:
    """A copy of ``model`` with every hard nonlinearity module replaced by its beta-VQ
    counterpart ("From Hard to Soft", ICLR 2019, sec. 4).

    ``nn.ReLU`` -> ``BetaVQ('relu')``, ``nn.LeakyReLU(a)`` -> ``BetaVQ('leaky_relu',
    negative_slope=a)``, :class:`maxaffine.nn.Abs` -> ``BetaVQ('abs')``,
    ``nn.MaxPool1d/2d`` -> ``BetaVQPool1d/2d`` (same kernel, stride, padding,
    dilation); ``beta`` in [0, 1] (1 reproduces the model exactly, 1/2 is swish /
    softmax pooling), ``learnable`` makes each replacement's beta a parameter.
    Module paths, the model's class, its mode and existing beta-VQ modules are kept.

    ``share_weights``: False (default) deep-copies parameters and buffers; True
    shares them with ``model`` (training one trains the other).

    Raises :class:`~maxaffine.UnsupportedOperation` naming every hard nonlinearity
    that cannot be replaced: functional calls (``F.relu(x)``, ``x.abs()``,
    ``F.max_pool2d``; found by a symbolic ``torch.fx`` trace; replace them by
    modules) and modules without a beta-VQ counterpart (PReLU, Hardtanh, ReLU6).
    """
    if not isinstance(model, nn.Module):
        raise MaxAffineError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    learnable = arguments.flag(learnable, "learnable")
    share_weights = arguments.flag(share_weights, "share_weights")
    betavq._check_beta(beta, "learnable beta" if learnable else "beta", open_interval=learnable)
    if not any(True for _ in model.children()):  # a single module, e.g. nn.ReLU()
        alone = _soft_counterpart(model, beta, learnable)
        if alone is not None:
            return alone.train(model.training)
    problems = [f"{p}: functional call, cannot be replaced; use a module (nn.ReLU, "
                "maxaffine.nn.Abs, nn.MaxPool2d, ...)" for p in _functional_units(model)]
    replace: dict[int, nn.Module] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, BETA_MODULES) or id(m) in replace:
            continue
        try:
            soft = _soft_counterpart(m, beta, learnable)
        except ValueError as err:
            problems.append(f"{path} ({type(m).__name__}): {err}")
            continue
        if soft is not None:
            replace[id(m)] = soft.train(m.training)
            continue
        rule = rule_for_module(m)
        if rule is not None and issubclass(rule, ops.Nonlinearity):
            problems.append(f"{path} ({type(m).__name__}): no beta-VQ counterpart")
    if problems:
        raise _cannot("soften cannot replace", problems)
    memo: dict[int, object] = {}
    if share_weights:
        memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    for m in model.modules():
        if id(m) in replace:  # replaced anyway: do not copy
            memo[id(m)] = m
    soft_model = copy.deepcopy(model, memo)
    for path, old in model.named_modules(remove_duplicate=False):
        if path and id(old) in replace:
            parent, _, leaf = path.rpartition(".")
            setattr(soft_model.get_submodule(parent), leaf, replace[id(old)])
    if isinstance(model, fx.GraphModule):
        soft_model.recompile()
    return soft_model


__all__ = ["VQPosterior", "soften", "vq_posterior"]

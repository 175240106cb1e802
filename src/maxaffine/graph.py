"""The spline graph: a PyTorch model traced once into a plan of spline ops.

``trace(model, example_input)`` walks ``model.forward`` with ``torch.fx`` (which
also sees functional calls such as ``F.relu`` and ``x.view``), classifies every
node with the op registry of :mod:`maxaffine.ops`, reports *all* unsupported
operations at once, and returns an immutable :class:`SplineGraph`.  The graph
shares the user's parameters (nothing is copied or written onto the modules), so
it stays valid while the model trains.

``SplineGraph.evaluate`` is the one interpreter loop every other module reuses.
Each nonlinearity computes its VQ code and then evaluates the *selected piece*
(``ops.Nonlinearity.piece``); pass ``codes=`` to freeze some or all codes, which
turns the network into the single affine map of that region extended to all
of input space (Balestriero & Baraniuk 2018, Thm. 1: ``f(x) = A[x] x + B[x]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.node import map_arg

from . import ops
from .errors import MaxAffineError, UnsupportedOperation

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _rule_for_module(m: nn.Module) -> type[ops.Rule] | None:
    """Registered rule of a module's type, or of a base whose ``forward`` it keeps
    (e.g. the classes ``torch.nn.utils.parametrize`` creates)."""
    for cls in type(m).__mro__:
        rule = ops.lookup(cls)
        if rule is not None:
            return rule if type(m).forward is cls.forward else None
    return None


class _Tracer(fx.Tracer):
    """Registered modules and ``torch.nn`` built-ins are leaves (so an unsupported
    built-in such as ``nn.GELU`` is reported by name); user modules and containers
    are traced through, so no nested submodule is silently dropped."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _CONTAINERS):
            return False
        if _rule_for_module(m) is not None:
            return True
        return type(m).__module__.startswith("torch.nn")


@dataclass(frozen=True)
class Unit:
    """One nonlinearity of the graph: a layer of VQ units.

    ``code_shape``: per-sample shape of its code tensor (one entry per unit);
    ``num_pieces``: affine pieces per unit (R); ``bits``: bits per unit when packed.
    """

    name: str
    kind: str
    rule: ops.Nonlinearity
    code_shape: tuple[int, ...]
    num_pieces: int

    @property
    def bits(self) -> int:
        return self.rule.bits

    @property
    def num_units(self) -> int:
        return math.prod(self.code_shape)


@dataclass(frozen=True)
class _Step:
    node: fx.Node
    kind: str  # input | attr | call | affine | nonlinearity | output
    rule: ops.Rule | None = None
    site: ops.Site | None = None


@dataclass
class Evaluation:
    """What one pass of :meth:`SplineGraph.evaluate` returns.

    ``output``: f(x); ``codes``: name -> code tensor (N, *code_shape);
    ``inputs``: name -> the nonlinearity's tensor inputs (pre-activations),
    only when ``record=True``.
    """

    output: Tensor
    codes: dict[str, Tensor]
    inputs: dict[str, tuple[Tensor, ...]] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class SplineGraph:
    """A model traced into spline ops. Build it with :func:`trace`.

    Attributes: ``units`` (the nonlinearities in topological order),
    ``input_shape`` / ``output_shape`` (per sample), ``num_outputs`` (C, the
    flattened output size), ``model`` (the traced module).
    """

    model: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    units: tuple[Unit, ...]
    _gm: fx.GraphModule = field(repr=False)
    _steps: tuple[_Step, ...] = field(repr=False)
    _shapes: dict = field(repr=False, default_factory=dict)  # node -> (shape, dtype)

    @property
    def num_outputs(self) -> int:
        return math.prod(self.output_shape)

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)

    @property
    def unit_names(self) -> tuple[str, ...]:
        return tuple(u.name for u in self.units)

    def unit(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise MaxAffineError(f"no nonlinearity named {name!r}; the graph has {self.unit_names}")

    def __call__(self, x: Tensor) -> Tensor:
        return self.evaluate(x).output

    def evaluate(
        self, x: Tensor, codes: dict[str, Tensor] | None = None, record: bool = False
    ) -> Evaluation:
        """Run the network on a batch ``x`` of shape (N, *input_shape).

        ``codes``: optional name -> code tensor to *freeze* (units not named compute
        their own code); frozen, the graph is the affine map of that region.
        ``record``: also return each nonlinearity's inputs (pre-activations).
        """
        check_input(self, x)
        if codes:
            self._check_codes(codes, x.shape[0])
        return self._run(x, codes, record)

    def _check_codes(self, codes: dict[str, Tensor], n: int) -> None:
        unknown = [k for k in codes if k not in self.unit_names]
        if unknown:
            raise MaxAffineError(
                f"codes for unknown nonlinearities {unknown}; the graph has {self.unit_names}"
            )
        for unit in self.units:
            code = codes.get(unit.name)
            if code is not None and tuple(code.shape) != (n, *unit.code_shape):
                raise MaxAffineError(
                    f"code of {unit.name!r} has shape {tuple(code.shape)}, expected "
                    f"{(n, *unit.code_shape)} (batch size, code shape)"
                )

    def _run(self, x: Tensor, codes: dict[str, Tensor] | None, record: bool,
             until: str | None = None) -> Evaluation:
        """The interpreter loop from the input. ``until``: stop right after that
        nonlinearity (its code and inputs recorded; ``output`` is then None)."""
        env: dict[fx.Node, Any] = {self._steps[0].node: x}
        return self._walk(env, x.shape[0], 0, codes, record, until)

    def _walk(self, env: dict[fx.Node, Any], batch: int, start: int,
              codes: dict[str, Tensor] | None, record: bool, until: str | None,
              stop: int | None = None, keep_codes: bool = True,
              in_place: bool = False) -> Evaluation:
        """The one interpreter loop. Runs steps ``start`` .. ``stop`` (exclusive) on
        ``env`` (node -> value, updated in place), resuming a paused evaluation:
        values of input-dependent nodes before ``start`` must be in ``env`` where
        still needed; metadata steps before ``start`` are re-run, with zero-stride
        stand-ins of the right shape for inputs that are not."""
        found: dict[str, Tensor] = {}
        inputs: dict[str, tuple[Tensor, ...]] = {}
        out: Any = None
        steps = self._steps if stop is None else self._steps[:stop]
        for index, step in enumerate(steps):
            node = step.node
            if step.kind == "input":
                if node not in env:
                    env[node] = self._stand_in(node, batch)
                continue
            if step.kind == "attr":
                env[node] = _fetch_attr(self._gm, node.target)
                continue
            if index < start and step.kind != "call":
                continue
            lookup = env.__getitem__ if index >= start else (
                lambda n: env[n] if n in env else self._stand_in(n, batch))
            args = map_arg(node.args, lookup)
            kwargs = map_arg(node.kwargs, lookup)
            if step.kind == "output":
                out = args[0]
            elif step.kind == "call":
                env[node] = _plain_call(self._gm, node, args, kwargs)
            elif step.kind == "affine":
                env[node] = step.rule.forward(*args, **kwargs)
            else:  # nonlinearity
                rule: ops.Nonlinearity = step.rule  # type: ignore[assignment]
                name = step.site.name
                code = codes.get(name) if codes else None
                if code is None and not keep_codes:
                    last_use = in_place and all(
                        len(a.users) == 1 and a.op not in ("placeholder", "get_attr")
                        and not _shares_storage(env, a) for a in node.all_input_nodes)
                    env[node] = (rule.forward_ if last_use else rule.forward)(*args, **kwargs)
                elif code is None:
                    code, env[node] = rule.select(*args, **kwargs)
                else:
                    env[node] = rule.piece(code, *args, **kwargs)
                if keep_codes:
                    found[name] = code
                if record:
                    inputs[name] = tuple(a for a in args if isinstance(a, Tensor))
                if name == until:
                    return Evaluation(None, found, inputs)  # type: ignore[arg-type]
        return Evaluation(out, found, inputs)

    def _stand_in(self, node: fx.Node, batch: int) -> Tensor:
        """A zero-stride tensor shaped like ``node``'s value (for metadata ops)."""
        shape, dtype = self._shapes[node]
        return torch.zeros((), dtype=dtype).expand((batch, *shape))

    def _pause_points(self) -> list[tuple[int, frozenset[fx.Node]]]:
        """For each unit: its step index and the input-dependent nodes whose values
        a paused evaluation must keep to resume there (computed before the unit,
        used by it or later)."""
        index = {st.node: i for i, st in enumerate(self._steps)}
        last = {n: max((index[u] for u in n.users), default=-1) for n in index}
        out = []
        for unit_step in (i for i, st in enumerate(self._steps) if st.kind == "nonlinearity"):
            live = frozenset(n for n, i in index.items() if i < unit_step
                             and last[n] >= unit_step and n in self._shapes
                             and self._steps[i].kind in ("input", "affine", "nonlinearity"))
            out.append((unit_step, live))
        return out

    def summary(self) -> str:
        """A table of the nonlinearities: name, kind, units, pieces."""
        rows = [f"SplineGraph {self.input_shape} -> {self.output_shape}"]
        rows.append(f"  {'unit':<32} {'kind':<12} {'units':>8} {'pieces':>6}")
        for u in self.units:
            rows.append(f"  {u.name:<32} {u.kind:<12} {u.num_units:>8} {u.num_pieces:>6}")
        return "\n".join(rows)


# ------------------------------------------------------------------------- tracing


def _shares_storage(env: dict[fx.Node, Any], node: fx.Node) -> bool:
    """Whether ``env[node]``'s memory is (part of) another value's, e.g. a view."""
    ptr = env[node].untyped_storage().data_ptr()
    return any(isinstance(v, Tensor) and v.untyped_storage().data_ptr() == ptr
               for n, v in env.items() if n is not node)


def trace(model: nn.Module, example_input: Tensor) -> SplineGraph:
    """Trace ``model`` into a :class:`SplineGraph` (plan once, evaluate many times).

    ``example_input`` is a batch (N, *input_shape) used to resolve shapes and to
    check that the traced graph reproduces ``model``.  Raises
    :class:`~maxaffine.UnsupportedOperation` listing every operation that is not
    affine or piecewise-affine, with its module path.
    """
    if isinstance(model, SplineGraph):
        return model
    if not isinstance(model, nn.Module):
        raise MaxAffineError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_tensor(example_input, "example_input")
    if example_input.dim() < 2:
        raise MaxAffineError(
            f"example_input must be a batch (N, *input_shape); got shape "
            f"{tuple(example_input.shape)}: add a batch dimension with x.unsqueeze(0)"
        )
    _check_dtype(model, example_input, "example_input")
    tracer = _Tracer()
    try:
        fx_graph = tracer.trace(model)
    except Exception as err:  # torch.fx raises several types for untraceable code
        raise UnsupportedOperation(
            f"{type(model).__name__}.forward cannot be traced symbolically "
            f"({type(err).__name__}: {err}). Data-dependent Python control flow "
            "(if/for on tensor values, .item(), len(x)) is not a fixed spline; make it "
            "depend only on shapes or module attributes"
        ) from err
    gm = fx.GraphModule(tracer.root, fx_graph)
    placeholders = [n for n in fx_graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise MaxAffineError(
            f"model.forward must take exactly one tensor input, it takes "
            f"{[n.target for n in placeholders]}"
        )
    example = example_input[:2].detach()
    with torch.no_grad():
        steps, units, output, shapes = _bind(gm, example)
    if not isinstance(output, Tensor):
        raise UnsupportedOperation(
            f"model output: expected one tensor, got {type(output).__name__}; "
            "wrap the model to return a single tensor"
        )
    graph = SplineGraph(
        model=model,
        input_shape=tuple(example.shape[1:]),
        output_shape=tuple(output.shape[1:]),
        units=tuple(units),
        _gm=gm,
        _steps=tuple(steps),
        _shapes=shapes,
    )
    _check_faithful(graph, model, example)
    return graph


def as_graph(model: nn.Module | SplineGraph, x: Tensor) -> SplineGraph:
    """The graph of ``model`` (traced on ``x``), or ``model`` itself if already one."""
    if isinstance(model, SplineGraph):
        return model
    _check_tensor(x, "x")
    if x.dim() < 2:
        raise MaxAffineError(
            f"x must be a batch (N, *input_shape); got shape {tuple(x.shape)}: "
            "add a batch dimension with x.unsqueeze(0)"
        )
    return trace(model, x[:1])


def _name(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    owner = ""
    if stack:
        path = list(stack.values())[-1]
        owner = path[0] if isinstance(path, tuple) else str(path)
    return f"{owner}.{node.name}" if owner else node.name


def _is_metadata(node: fx.Node) -> bool:
    if node.op in ("call_method", "call_function") and node.target in ops.METADATA_OPS:
        return True
    return (
        node.op == "call_function"
        and node.target is getattr
        and len(node.args) > 1
        and node.args[1] in ops.METADATA_ATTRS
    )


def _bind(gm: fx.GraphModule, example: Tensor
          ) -> tuple[list[_Step], list[Unit], Any, dict[fx.Node, tuple]]:
    """Propagate the example, mark input-dependent nodes, bind a rule to each."""
    values: dict[fx.Node, Any] = {}
    dependent: set[fx.Node] = set()
    steps: list[_Step] = []
    units: list[Unit] = []
    problems: list[str] = []
    taken: set[str] = set()
    output: Any = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            values[node] = example
            dependent.add(node)
            steps.append(_Step(node, "input"))
            continue
        if node.op == "get_attr":
            values[node] = _fetch_attr(gm, node.target)
            steps.append(_Step(node, "attr"))
            continue
        args = map_arg(node.args, values.__getitem__)
        kwargs = map_arg(node.kwargs, values.__getitem__)
        if node.op == "output":
            output = args[0]
            steps.append(_Step(node, "output"))
            continue
        deps = [_depends(a, dependent) for a in node.args]
        dep_kw = frozenset(k for k, v in node.kwargs.items() if _depends(v, dependent))
        if not (any(deps) or dep_kw) or _is_metadata(node):
            values[node] = _plain_call(gm, node, args, kwargs)
            steps.append(_Step(node, "call"))
            continue
        dependent.add(node)
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        target = type(module) if module is not None else node.target
        name = _name(node)
        if name in taken:  # a module called more than once: "act", "act@1", ...
            name = next(f"{name}@{k}" for k in range(1, len(taken) + 2)
                        if f"{name}@{k}" not in taken)
        taken.add(name)
        site = ops.Site(name, target, module, args, kwargs, tuple(deps), dep_kw)
        rule_cls = _rule_for_module(module) if module is not None else ops.lookup(target)
        rule: ops.Rule | None = None
        if rule_cls is None:
            problems.append(
                f"{site.name} ({ops.describe_target(target)}): not affine or "
                "piecewise-affine (smooth nonlinearities, normalisations with input "
                "statistics and products of activations are not MASOs)"
            )
        else:
            try:
                rule = rule_cls(site)
            except UnsupportedOperation as err:
                problems.extend(err.problems)
        try:
            if rule is None:
                values[node] = _shadow_call(gm, node, args, kwargs)
                continue
            values[node] = rule.forward(*args, **kwargs)
        except UnsupportedOperation as err:
            problems.extend(err.problems)
            try:
                values[node] = _shadow_call(gm, node, args, kwargs)
            except Exception:
                raise UnsupportedOperation(problems) from err
            continue
        except Exception as err:  # shapes or dtypes that do not fit the model
            if problems:
                raise UnsupportedOperation(problems) from err
            raise MaxAffineError(
                f"{site.name} ({ops.describe_target(target)}) fails on the example input "
                f"of shape {tuple(example.shape)} and dtype {example.dtype} "
                f"({type(err).__name__}: {err}); example_input must be a batch "
                "(N, *input_shape) of the model's dtype"
            ) from err
        steps.append(_Step(node, rule.kind, rule, site))
        if isinstance(rule, ops.Nonlinearity):
            units.append(Unit(site.name, type(rule).__name__, rule,
                              tuple(values[node].shape[1:]), rule.num_pieces))
    if problems:
        raise UnsupportedOperation(problems)
    shapes = {n: (tuple(v.shape[1:]), v.dtype) for n, v in values.items()
              if n in dependent and isinstance(v, Tensor) and v.dim() > 0}
    return steps, units, output, shapes


def _depends(arg: Any, dependent: set[fx.Node]) -> bool:
    found = False

    def visit(n: fx.Node) -> fx.Node:
        nonlocal found
        found = found or n in dependent
        return n

    map_arg(arg, visit)
    return found


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _plain_call(gm: fx.GraphModule, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _shadow_call(gm: fx.GraphModule, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    """:func:`_plain_call` on copies of a module's parameters and buffers: keeps shapes
    propagating past an unsupported op without side effects on the user's model
    (e.g. a batch-norm in training mode updating its running statistics)."""
    if node.op != "call_module":
        return _plain_call(gm, node, args, kwargs)
    module = gm.get_submodule(node.target)
    state = {k: v.clone() for k, v in [*module.named_parameters(), *module.named_buffers()]}
    return torch.func.functional_call(module, state, args, kwargs)


def _check_faithful(graph: SplineGraph, model: nn.Module, example: Tensor) -> None:
    """The graph must reproduce the model, and treat samples independently."""
    with torch.no_grad():
        expected = model(example)
        got = graph._run(example, None, False).output
        gen = torch.Generator(device=example.device).manual_seed(0)  # no global RNG use
        noise = torch.randn(example[:1].shape, generator=gen, dtype=example.dtype,
                            device=example.device)
        other = example[:1] * 0.5 + noise * (float(example.abs().max()) + 1.0)
        pair = graph._run(torch.cat([example[:1], other]), None, False).output
        alone = graph._run(other, None, False).output
    scale = float(expected.abs().max()) + 1.0
    tol = 1e-4 * scale if expected.dtype != torch.float64 else 1e-9 * scale
    if got.shape != expected.shape or float((got - expected).abs().max()) > tol:
        raise MaxAffineError(
            "the traced graph does not reproduce model(example_input); the model may "
            "mutate tensors in place or depend on state torch.fx cannot see"
        )
    if float((pair[:1] - got[:1]).abs().max()) > tol or float((pair[1:] - alone).abs().max()) > tol:
        raise UnsupportedOperation(
            "model output for one sample depends on the other samples of the batch "
            "(batch statistics?); per-sample affine maps require independent samples"
        )


# ------------------------------------------------------------------------- inputs


def _check_tensor(x: Any, what: str) -> None:
    if not isinstance(x, Tensor):
        raise MaxAffineError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise MaxAffineError(
            f"{what} has dtype {x.dtype}; spline maps need floating-point inputs: "
            f"use {what}.float() (or .double() for exact checks)"
        )
    # a finite sum proves every entry finite (25x faster than isfinite().all());
    # only a non-finite sum (NaN / inf, or an overflow) needs the exact check
    if not math.isfinite(float(x.detach().sum())) and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise MaxAffineError(f"{what} contains {n_nan} NaN and {n_inf} infinite value(s)")


def check_input(graph: SplineGraph, x: Tensor, what: str = "x") -> None:
    """Clear errors for inputs the graph cannot take (shape, dtype, NaN/inf)."""
    _check_tensor(x, what)
    shape = tuple(x.shape)
    if shape[1:] != graph.input_shape:
        hint = ""
        if shape == graph.input_shape:
            hint = f": add a batch dimension with {what}.unsqueeze(0)"
        raise MaxAffineError(
            f"{what} has shape {shape}; the model was traced for (N, "
            f"{', '.join(map(str, graph.input_shape))}){hint}"
        )
    _check_dtype(graph.model, x, what)


def _check_dtype(model: nn.Module, x: Tensor, what: str) -> None:
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is not None and param.dtype != x.dtype:
        raise MaxAffineError(
            f"{what} is {x.dtype} but the model's parameters are {param.dtype}: call "
            f"model.to({x.dtype}) or convert {what} with .to({param.dtype})"
        )

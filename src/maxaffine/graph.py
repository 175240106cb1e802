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

Before binding rules, tracing rewrites the torch.fx graph (:func:`_rewrite`):
in-place ops become out-of-place ones whose results later users read (eager
semantics), and ``torch.max(x, dim)`` / min forms become ``amax`` window maxima.
Models returning a dict / tuple / list of tensors are traced with their outputs
flattened (:attr:`SplineGraph.output_slices`).
"""

from __future__ import annotations

import inspect
import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.node import map_arg

from . import _arguments as arguments
from . import ops
from ._arguments import check_dtype, check_tensor, describe
from .errors import MaxAffineError, MaxAffineTypeError, UnsupportedOperation

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def rule_for_module(m: nn.Module) -> type[ops.Rule] | None:
    """Registered rule of a module's type, or of a base whose ``forward`` it keeps
    (e.g. the classes ``torch.nn.utils.parametrize`` creates)."""
    for cls in type(m).__mro__:
        rule = ops.lookup(cls)
        if rule is not None:
            return rule if type(m).forward is cls.forward else None
    return None


class Tracer(fx.Tracer):
    """Registered modules and ``torch.nn`` built-ins are leaves (so an unsupported
    built-in such as ``nn.GELU`` is reported by name); user modules and containers
    are traced through, so no nested submodule is silently dropped."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _CONTAINERS):
            return False
        if rule_for_module(m) is not None:
            return True
        return type(m).__module__.startswith("torch.nn")


@dataclass(frozen=True)
class Layer:
    """One nonlinearity of the graph: a layer of VQ units, one unit per entry of its
    code (a ReLU's units are its neurons, a max-pool's its windows).

    ``name``: its stable name (module path, or ``owner.fn`` for a functional call);
    ``kind``: its rule's class name; ``code_shape``: per-sample shape of its code
    tensor; ``num_units``: units in the layer; ``num_pieces``: affine pieces per unit
    (R); ``bits_per_unit``: bits per unit in packed codes.
    """

    name: str
    kind: str
    rule: ops.Nonlinearity
    code_shape: tuple[int, ...]
    num_pieces: int

    @property
    def bits_per_unit(self) -> int:
        return self.rule.bits_per_unit

    @property
    def num_units(self) -> int:
        return math.prod(self.code_shape)


@dataclass(frozen=True)
class _Step:
    node: fx.Node
    kind: str  # input | attr | call | affine | nonlinearity | output
    rule: ops.Rule | None = None
    site: ops.Site | None = None


def piece_fractions(code: Tensor, pieces: int | None = None) -> list[float]:
    """The fraction of a layer's (sample, unit) entries selecting each piece, from its
    code tensor (N, *code_shape); ``pieces``: R (default: the largest code + 1).
    Empty codes (no sample or no unit): an empty list."""
    flat = code.detach().reshape(-1).long()
    if flat.numel() == 0:
        return []
    r = pieces if pieces is not None else int(flat.max()) + 1
    return (torch.bincount(flat, minlength=r).double() / flat.numel()).tolist()


@dataclass(frozen=True)
class Evaluation:
    """What one pass of :meth:`SplineGraph.evaluate` returns (N samples).

    * ``output``: f(x), shape (N, *output_shape) -- for a model returning a dict,
      tuple, list or namedtuple of tensors, the (N, C) concatenation of its
      per-sample flattened outputs (:attr:`SplineGraph.output_slices` names the
      columns; :meth:`SplineGraph.split_output` gives them back by name); None when
      the pass stopped after a layer (``until=``).
    * ``codes``: layer name -> code tensor (N, *code_shape), integer (uint8 when
      the units have <= 256 pieces, else int64), in graph order: the selected piece
      of every unit (the frozen code where ``codes=`` was given).
    * ``inputs``: layer name -> the nonlinearity's tensor inputs, each (N, *shape):
      the pre-activations (``torch.maximum(a, b)``: both ``a`` and ``b``; a min
      over axes: ``-x``, as it is traced as ``-amax(-x)``); filled only with
      ``record=True``, else empty.
    * ``values``: the live values of the pause a :meth:`SplineGraph.run` stopped at
      (``stop=``), by name; else empty.
    """

    output: Tensor | None
    codes: dict[str, Tensor]
    inputs: dict[str, tuple[Tensor, ...]] = field(default_factory=dict)
    values: dict[str, Tensor] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Shapes, and per layer the fraction of (sample, unit) entries selecting each
        piece (ReLU: off, on)."""
        n = next(iter(self.codes.values())).shape[0] if self.codes else (
            None if self.output is None else self.output.shape[0])
        return {
            "samples": n,
            "output_shape": None if self.output is None else list(self.output.shape),
            "layers": {name: {"code_shape": list(c.shape[1:]),
                              "piece_fractions": piece_fractions(c)}
                       for name, c in self.codes.items()},
            "recorded": sorted(self.inputs),
            "live_values": sorted(self.values),
        }

    def to_json(self) -> str:
        """The summary, the output and the codes (nested lists)."""
        return json.dumps({
            **self.summary(),
            "output": None if self.output is None else self.output.detach().tolist(),
            "codes": {name: c.tolist() for name, c in self.codes.items()},
        })

    def plot(self, ax=None):
        """Per layer, the fraction of (sample, unit) entries selecting each piece."""
        from ._plotting import plot_piece_usage

        return plot_piece_usage(list(self.codes), [piece_fractions(c)
                                                   for c in self.codes.values()], ax=ax)


@dataclass(frozen=True)
class Pause:
    """Where an evaluation can stop and resume (:meth:`SplineGraph.run`): right before
    nonlinearity ``layer``. ``live``: the values computed before it that it or later
    steps read, as (name, per-sample shape), the layer's own input-dependent inputs
    first (``inputs``: their names, in argument order), the rest by name."""

    layer: str
    live: tuple[tuple[str, tuple[int, ...]], ...]
    inputs: tuple[str, ...]

    @property
    def size(self) -> int:
        """Values per sample a paused evaluation keeps."""
        return sum(math.prod(shape) for _, shape in self.live)


@dataclass(frozen=True)
class Between:
    """The affine ops between the output of nonlinearity ``start`` and the inputs of
    the next one, ``stop`` (:meth:`SplineGraph.between`): ``source(x)`` is
    ``start``'s output at inputs ``x``; ``between(h)`` maps such outputs ``h`` to
    ``stop``'s inputs (a function of ``h`` alone)."""

    graph: SplineGraph
    start: str
    stop: str

    def source(self, x: Tensor) -> Tensor:
        check_input(self.graph, x)
        return self.graph._layer_output(x, self.start)

    def __call__(self, h: Tensor) -> tuple[Tensor, ...]:
        check_tensor(h, "h")
        check_dtype(self.graph.model, h, "h")
        shape = self.graph.layer(self.start).code_shape
        if tuple(h.shape[1:]) != tuple(shape):
            raise MaxAffineError(f"h has shape {tuple(h.shape)}; the output of {self.start!r} "
                                 f"is (N, {', '.join(map(str, shape))})")
        return self.graph._from_layer_output(h, self.start, self.stop)


@dataclass(frozen=True, eq=False)
class SplineGraph:
    """A model traced into spline ops. Build it with :func:`trace`.

    Attributes: ``layers`` (the nonlinearities in topological order, each a
    :class:`Layer` of units; ``layer_names``, ``layer(name_or_index)``),
    ``input_shape`` / ``output_shape`` (per sample), ``num_outputs`` (C, the
    flattened output size), ``model`` (the traced module).

    Structured outputs: a model returning a dict / tuple / list / namedtuple of
    tensors (nested too) is traced with its outputs flattened: each leaf is
    flattened per sample and the leaves are concatenated in the structure's order
    (dict insertion order, tuple order, depth first); ``output_shape`` is then
    (C,), ``output_names`` the leaves' names (dict keys, tuple indices, namedtuple
    fields; nested ones joined by ``.``) and ``output_slices`` maps each name to
    its columns of the output (rows of ``affine_map(...).A``).
    """

    model: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    _gm: fx.GraphModule = field(repr=False)
    _steps: tuple[_Step, ...] = field(repr=False)
    _shapes: dict = field(repr=False, default_factory=dict)  # node -> (shape, dtype)
    # output leaves (name, per-sample shape); structured: not a single tensor
    _outputs: tuple[tuple[str, tuple[int, ...]], ...] = field(repr=False, default=())
    _structured: bool = field(repr=False, default=False)

    @property
    def num_outputs(self) -> int:
        return math.prod(self.output_shape)

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the model's output tensors: ``("output",)`` for a single tensor,
        else the leaves of the returned structure (dict keys, tuple indices, ...)."""
        return tuple(name for name, _ in self._outputs)

    @property
    def output_slices(self) -> dict[str, slice]:
        """Output name -> its columns of the flattened output (N, C) (rows of A)."""
        out, at = {}, 0
        for name, shape in self._outputs:
            out[name] = slice(at, at + math.prod(shape))
            at += math.prod(shape)
        return out

    def split_output(self, t: Tensor, dim: int = 1) -> dict[str, Tensor]:
        """Split axis ``dim`` (of size C, the flattened output) of ``t`` into the
        model's named outputs, each reshaped to its per-sample shape: e.g.
        ``split_output(evaluation.output)`` -> name -> (N, *shape),
        ``split_output(amap.A)`` -> name -> (N, *shape, *input_shape)."""
        if not isinstance(t, Tensor) or t.dim() == 0:
            raise MaxAffineTypeError(
                f"split_output takes a tensor with an axis of the flattened output size "
                f"C={self.num_outputs}, got {describe(t)}")
        dim = arguments.integer(dim, "dim", minimum=-t.dim(), maximum=t.dim() - 1,
                                meaning=f"an axis of the tensor of shape {tuple(t.shape)}")
        dim = dim % t.dim()
        if t.shape[dim] != self.num_outputs:
            raise MaxAffineError(
                f"axis {dim} of a tensor of shape {tuple(t.shape)} has size "
                f"{t.shape[dim]}, not the flattened output size C={self.num_outputs}; "
                "pass the axis that holds the outputs as dim=")
        out = {}
        for (name, shape), s in zip(self._outputs, self.output_slices.values(), strict=True):
            part = t.narrow(dim, s.start, s.stop - s.start)
            out[name] = part.unflatten(dim, shape) if shape else part.squeeze(dim)
        return out

    def layer(self, key: str | int) -> Layer:
        """The nonlinearity ``key``: a name of :attr:`layer_names` or an index into
        :attr:`layers` (negative from the end)."""
        return self.layers[self.layer_index(key)]

    def layer_index(self, key: str | int, what: str = "layer") -> int:
        """The position in :attr:`layers` of the nonlinearity ``key`` (a name or an
        index, negative from the end); ``what`` names the argument in errors."""
        return arguments.layer_index(key, self.layer_names, what)

    def _name(self, key: str | int | None, what: str) -> str | None:
        """The name of the nonlinearity ``key`` (a name or an index; None stays None)."""
        return None if key is None else self.layer_names[self.layer_index(key, what)]

    def __call__(self, x: Tensor) -> Tensor:
        return self.evaluate(x).output

    def evaluate(
        self, x: Tensor, codes: dict[str, Tensor] | None = None, record: bool = False,
        *, until: str | int | None = None,
    ) -> Evaluation:
        """Run the network on a batch ``x`` of shape (N, *input_shape).

        ``codes``: optional name -> code tensor to *freeze* (units not named compute
        their own code); frozen, the graph is the affine map of that region.
        ``record``: also return each nonlinearity's inputs (pre-activations).
        ``until``: stop right after that nonlinearity, a name or an index (``output``
        is then None).
        """
        check_input(self, x)
        record = arguments.flag(record, "record")
        if codes is not None:
            self._check_codes(codes, x.shape[0])
        if until is not None:
            until = self._name(until, "until")
        return self._run(x, codes, record, until)

    def run(self, x: Tensor | Mapping[str, Tensor], *, start: str | int | None = None,
            stop: str | int | None = None, until: str | int | None = None,
            codes: dict[str, Tensor] | None = None, record: bool = False,
            keep_codes: bool = True, in_place: bool = False,
            forward: Callable[..., Tensor | None] | None = None) -> Evaluation:
        """The interpreter between pauses: from the input ``x`` (``start=None``) or
        resumed at the pause before nonlinearity ``start`` (``x``: its live values by
        name, :attr:`pauses`), to the output, to the pause before ``stop`` (its live
        values in ``Evaluation.values``), or right after nonlinearity ``until`` (each
        a layer name or index).
        ``keep_codes=False`` skips the codes (values only); ``in_place=True`` lets
        nonlinearities overwrite inputs that nothing else reads (the caller gives up
        those tensors); ``forward(rule, args, kwargs)``, with ``keep_codes=False``, may
        compute a nonlinearity's values instead of its rule (returning None: the
        rule's own), e.g. with a kernel for many samples. Values are checked (finite,
        shapes); parameters are not (see :func:`check_parameters`)."""
        for flag_name, flag_value in (("record", record), ("keep_codes", keep_codes),
                                      ("in_place", in_place)):
            arguments.flag(flag_value, flag_name)
        start, stop, until = (self._name(start, "start"), self._name(stop, "stop"),
                              self._name(until, "until"))
        if start is None:
            check_input(self, x)  # type: ignore[arg-type]
            env: dict[fx.Node, Any] = {self._steps[0].node: x}
            first, batch = 0, x.shape[0]  # type: ignore[union-attr]
        else:
            env, batch = self._paused_values(x, start), 0
            batch = next(iter(env.values())).shape[0] if env else 0
            first = self._pause_steps[start]
        if codes is not None:
            self._check_codes(codes, batch)
        end = None if stop is None else self._pause_steps[stop]
        ev = self._walk(env, batch, first, codes, record, until, stop=end,
                        keep_codes=keep_codes, in_place=in_place, forward=forward)
        if stop is not None:
            live = self.pause(stop).live
            ev = replace(ev, values={name: env[self._nodes[name]] for name, _ in live})
        return ev

    def _paused_values(self, values: Any, start: str) -> dict[fx.Node, Tensor]:
        """The live values of the pause before ``start``, checked, by node."""
        live = self.pause(start).live
        if not isinstance(values, Mapping):
            raise MaxAffineTypeError(
                f"run(start={start!r}) resumes from the live values of that pause, a dict "
                f"name -> tensor ({[n for n, _ in live]}), got {type(values).__name__}")
        if set(values) != {n for n, _ in live}:
            raise MaxAffineError(f"run(start={start!r}) needs the values "
                                 f"{sorted(n for n, _ in live)}, got {sorted(values)}")
        batch = None
        for name, shape in live:
            v = values[name]
            check_tensor(v, f"values[{name!r}]")
            check_dtype(self.model, v, f"values[{name!r}]")
            if tuple(v.shape[1:]) != shape or (batch is not None and v.shape[0] != batch):
                raise MaxAffineError(f"values[{name!r}] has shape {tuple(v.shape)}, expected "
                                     f"(N, {', '.join(map(str, shape))}) with one N")
            batch = v.shape[0]
        nodes = self._nodes
        return {nodes[name]: values[name] for name, _ in live}

    def pause(self, layer: str | int) -> Pause:
        """The pause right before nonlinearity ``layer`` (a name or an index)."""
        return self.pauses[self.layer_index(layer)]

    @cached_property
    def pauses(self) -> tuple[Pause, ...]:
        """One :class:`Pause` per nonlinearity, in graph order."""
        index = {st.node: i for i, st in enumerate(self._steps)}
        last = {n: max((index[u] for u in n.users), default=-1) for n in index}
        out = []
        for step in (st for st in self._steps if st.kind == "nonlinearity"):
            at = index[step.node]
            live = {n for n, i in index.items() if i < at and last[n] >= at
                    and n in self._shapes
                    and self._steps[i].kind in ("input", "affine", "nonlinearity")}
            own = [n for n in _arg_nodes(step.node) if n in self._shapes]
            first = [n for n in dict.fromkeys(own) if n in live]
            rest = sorted((n for n in live if n not in first), key=lambda n: n.name)
            out.append(Pause(step.site.name,
                             tuple((n.name, tuple(self._shapes[n][0])) for n in first + rest),
                             tuple(n.name for n in own)))
        return tuple(out)

    @cached_property
    def _nodes(self) -> dict[str, fx.Node]:
        return {st.node.name: st.node for st in self._steps}

    @cached_property
    def _pause_steps(self) -> dict[str, int]:
        return {st.site.name: i for i, st in enumerate(self._steps)
                if st.kind == "nonlinearity"}

    def between(self, start: str | int, stop: str | int) -> Between:
        """The affine ops from the output of nonlinearity ``start`` to the inputs of
        the next one, ``stop`` (names or indices); refused when ``stop``'s inputs also
        read values computed before ``start``'s output (a skip connection around it)."""
        i = self.layer_index(start, "start")
        j = self.layer_index(stop, "stop")
        start, stop = self.layer_names[i], self.layer_names[j]
        if j != i + 1:
            raise MaxAffineError(f"between({start!r}, {stop!r}): {stop!r} is not the "
                                 f"nonlinearity right after {start!r}")
        s_prev, s_stop = self._pause_steps[start], self._pause_steps[stop]
        steps = self._steps
        node_prev = steps[s_prev].node
        dependent = {steps[k].node for k in range(s_prev + 1)
                     if steps[k].kind in ("input", "affine", "nonlinearity")}
        reads = set()
        for k in range(s_prev + 1, s_stop + 1):
            if steps[k].kind in ("affine", "nonlinearity"):
                reads.update(set(steps[k].node.all_input_nodes) & dependent)
        extra = reads - {node_prev}
        if extra:
            raise MaxAffineError(
                f"the pre-activation of {stop!r} also reads "
                f"{sorted(n.name for n in extra)} (a skip connection?), so it is not a "
                f"function of the output of {start!r} alone; use input_space=True")
        return Between(self, start, stop)

    def _layer_output(self, x: Tensor, name: str) -> Tensor:
        s_prev = self._pause_steps[name]
        env: dict[fx.Node, Any] = {self._steps[0].node: x}
        self._walk(env, x.shape[0], 0, None, False, None, stop=s_prev + 1)
        return env[self._steps[s_prev].node]

    def _from_layer_output(self, h: Tensor, start: str, stop: str) -> tuple[Tensor, ...]:
        s_prev = self._pause_steps[start]
        steps, n = self._steps, h.shape[0]
        node_prev = steps[s_prev].node
        dependent = {steps[k].node for k in range(s_prev + 1)
                     if steps[k].kind in ("input", "affine", "nonlinearity")}
        meta = set()
        for k in range(s_prev + 1, self._pause_steps[stop] + 1):
            if steps[k].kind not in ("affine", "nonlinearity"):
                meta.update(set(steps[k].node.all_input_nodes) & dependent)
        local = {m: self._stand_in(m, n) for m in meta - {node_prev}}
        local[node_prev] = h
        return self._walk(local, n, s_prev + 1, None, True, stop).inputs[stop]

    def _check_codes(self, codes: dict[str, Tensor], n: int) -> None:
        if not isinstance(codes, Mapping):
            raise MaxAffineTypeError(
                f"codes must be a dict layer name -> code tensor (e.g. maxaffine.codes(graph, "
                f"x).as_dict()), got {type(codes).__name__}")
        unknown = [k for k in codes if k not in self.layer_names]
        if unknown:
            raise MaxAffineError(
                f"codes for unknown layers {unknown}; the layers are {self.layer_names}"
            )
        for layer in self.layers:
            code = codes.get(layer.name)
            if code is None:
                continue
            if not isinstance(code, Tensor) or code.is_floating_point() or code.is_complex():
                raise MaxAffineTypeError(
                    f"code of {layer.name!r} must be an integer tensor (the index of each "
                    f"unit's piece), got {describe(code)}")
            if tuple(code.shape) != (n, *layer.code_shape):
                raise MaxAffineError(
                    f"code of {layer.name!r} has shape {tuple(code.shape)}, expected "
                    f"{(n, *layer.code_shape)} (batch size, code shape)"
                )
            if code.numel() and (int(code.min()) < 0 or int(code.max()) >= layer.num_pieces):
                raise MaxAffineError(
                    f"code of {layer.name!r} holds values in [{int(code.min())}, "
                    f"{int(code.max())}], but its units have {layer.num_pieces} pieces: codes "
                    f"must lie in [0, {layer.num_pieces - 1}]")

    def _run(self, x: Tensor, codes: dict[str, Tensor] | None, record: bool,
             until: str | None = None) -> Evaluation:
        """The interpreter loop from the input. ``until``: stop right after that
        nonlinearity (its code and inputs recorded; ``output`` is then None)."""
        env: dict[fx.Node, Any] = {self._steps[0].node: x}
        return self._walk(env, x.shape[0], 0, codes, record, until)

    def _walk(self, env: dict[fx.Node, Any], batch: int, start: int,
              codes: dict[str, Tensor] | None, record: bool, until: str | None,
              stop: int | None = None, keep_codes: bool = True,
              in_place: bool = False,
              forward: Callable[..., Tensor | None] | None = None) -> Evaluation:
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
                out = _flat_output(args[0], batch) if self._structured else args[0]
            elif step.kind == "call":
                env[node] = _plain_call(self._gm, node, args, kwargs)
            elif step.kind == "affine":
                env[node] = step.rule.forward(*args, **kwargs)
            else:  # nonlinearity
                rule: ops.Nonlinearity = step.rule  # type: ignore[assignment]
                name = step.site.name
                code = codes.get(name) if codes else None
                if code is None and not keep_codes:
                    fast = None if forward is None else forward(rule, args, kwargs)
                    if fast is not None:
                        env[node] = fast
                    else:
                        last_use = in_place and all(
                            len(a.users) == 1 and a.op not in ("placeholder", "get_attr")
                            and not _shares_storage(env, a) for a in node.all_input_nodes)
                        env[node] = (rule.forward_ if last_use else rule.forward)(*args,
                                                                                  **kwargs)
                elif code is None:
                    code, env[node] = rule.select(*args, **kwargs)
                else:
                    env[node] = rule.piece(code, *args, **kwargs)
                if keep_codes:
                    found[name] = code
                if record:
                    inputs[name] = tuple(a for a in args if isinstance(a, Tensor))
                if name == until:
                    return Evaluation(None, found, inputs)
        return Evaluation(out, found, inputs)

    def _stand_in(self, node: fx.Node, batch: int) -> Tensor:
        """A zero-stride tensor shaped like ``node``'s value (for metadata ops)."""
        shape, dtype = self._shapes[node]
        return torch.zeros((), dtype=dtype).expand((batch, *shape))

    def summary(self) -> dict[str, Any]:
        """Shapes, and per nonlinearity: name, kind, code shape, units, pieces, bits per
        unit (:meth:`table` lays them out as text; ``str(graph)`` too)."""
        return {
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "output_names": list(self.output_names),
            "units": sum(layer.num_units for layer in self.layers),
            "layers": [{"name": layer.name, "kind": layer.kind,
                        "code_shape": list(layer.code_shape), "units": layer.num_units,
                        "pieces": layer.num_pieces, "bits_per_unit": layer.bits_per_unit}
                       for layer in self.layers],
        }

    def table(self) -> str:
        """A table of the nonlinearities: name, kind, units, pieces."""
        rows = [f"SplineGraph {self.input_shape} -> {self.output_shape}"]
        rows.append(f"  {'layer':<32} {'kind':<12} {'units':>8} {'pieces':>6}")
        for u in self.layers:
            rows.append(f"  {u.name:<32} {u.kind:<12} {u.num_units:>8} {u.num_pieces:>6}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()

    def to_json(self) -> str:
        return json.dumps(self.summary())

    def plot(self, ax=None):
        """Units per nonlinearity, one bar per layer in graph order (log scale)."""
        from ._plotting import plot_layers

        return plot_layers(self, ax=ax)


def _arg_nodes(node: fx.Node) -> list[fx.Node]:
    """The nodes ``node`` reads, in argument order, repeats included."""
    found: list[fx.Node] = []
    map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


# ------------------------------------------------------------------------- tracing


def _shares_storage(env: dict[fx.Node, Any], node: fx.Node) -> bool:
    """Whether ``env[node]``'s memory is (part of) another value's, e.g. a view."""
    ptr = env[node].untyped_storage().data_ptr()
    return any(isinstance(v, Tensor) and v.untyped_storage().data_ptr() == ptr
               for n, v in env.items() if n is not node)


def trace(model: nn.Module, example_input: Tensor) -> SplineGraph:
    """Trace ``model`` into a :class:`SplineGraph` (plan once, evaluate many times).

    ``example_input`` is a batch (N, *input_shape) used to resolve shapes and to
    check that the traced graph reproduces ``model`` (an empty batch (0, ...)
    works: a zero sample of that shape stands in). Raises
    :class:`~maxaffine.UnsupportedOperation` listing every operation that cannot
    be traced, with its module path and why (not affine or piecewise-affine, or
    affine / piecewise-affine but not supported yet), and
    :class:`~maxaffine.MaxAffineError` for NaN / inf parameters.

    In-place operations (``x.add_(y)``, ``x.relu_()``, ``nn.ReLU(inplace=True)``)
    are traced as their out-of-place forms, later uses of the modified tensor
    reading the result (as in eager PyTorch); one that modifies a tensor another
    value still in use shares memory with (a view) is refused. ``torch.max(x, dim)``
    / ``x.max(dim)`` (values only) are traced as ``torch.amax``; min and ``amin`` as
    ``-amax(-x)``.
    """
    if isinstance(model, SplineGraph):
        return model
    if not isinstance(model, nn.Module):
        raise MaxAffineTypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_tensor(example_input, "example_input")
    if example_input.dim() < 2:
        raise MaxAffineError(
            f"example_input must be a batch (N, *input_shape); got shape "
            f"{tuple(example_input.shape)}: add a batch dimension with x.unsqueeze(0)"
        )
    check_dtype(model, example_input, "example_input")
    check_parameters(model)
    tracer = Tracer()
    own = set(vars(model))
    try:
        try:
            fx_graph = tracer.trace(model)
        except Exception as err:  # torch.fx raises several types for untraceable code
            raise UnsupportedOperation(
                f"{type(model).__name__}.forward cannot be traced symbolically "
                f"({type(err).__name__}: {err}). Data-dependent Python control flow "
                "(if/for on tensor values, .item(), len(x)) is not a fixed spline; make it "
                "depend only on shapes or module attributes"
            ) from err
        gm = fx.GraphModule(tracer.root, fx_graph)  # copies the constants it reads
    finally:
        # torch.fx stores tensors created in forward (torch.tensor(...)) on the root
        # module as _tensor_constant<i>: take them off the user's model again
        for name in set(vars(model)) - own:
            delattr(model, name)
    placeholders = [n for n in fx_graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise MaxAffineError(
            f"model.forward must take exactly one tensor input, it takes "
            f"{[n.target for n in placeholders]}"
        )
    problems, mutates, reported = _rewrite(gm)
    # a copy: in-place ops of the model (run eagerly below) must not touch the user's
    # tensor; an empty batch is stood in for by one zero sample of its shape
    example = (example_input[:2].detach().clone() if example_input.shape[0] else
               example_input.new_zeros((1, *example_input.shape[1:])))
    with torch.no_grad():
        steps, layers, output, shapes = _bind(gm, example, problems, mutates, reported)
    leaves = _output_leaves(output, "model output")
    for name, leaf in leaves:
        if not leaf.is_floating_point():
            raise MaxAffineError(
                f"model output {name!r} has dtype {leaf.dtype}; spline maps need "
                "floating-point outputs: drop it (argmax indices, masks) or wrap the model")
        if leaf.dim() == 0 or leaf.shape[0] != example.shape[0]:
            raise MaxAffineError(
                f"model output {name!r} has shape {tuple(leaf.shape)}, without the batch "
                f"axis of the input ({example.shape[0]} samples): every output tensor "
                "must be per sample, (N, ...); drop it or wrap the model")
    structured = not isinstance(output, Tensor)
    outputs = tuple((name, tuple(leaf.shape[1:])) for name, leaf in leaves)
    graph = SplineGraph(
        model=model,
        input_shape=tuple(example.shape[1:]),
        output_shape=((sum(math.prod(s) for _, s in outputs),) if structured
                      else tuple(output.shape[1:])),
        layers=tuple(layers),
        _gm=gm,
        _steps=tuple(steps),
        _shapes=shapes,
        _outputs=outputs,
        _structured=structured,
    )
    _check_faithful(graph, model, example)
    return graph


def as_graph(model: nn.Module | SplineGraph, x: Tensor) -> SplineGraph:
    """The graph of ``model`` (traced on ``x``), or ``model`` itself if already one."""
    if isinstance(model, SplineGraph):
        return model
    check_tensor(x, "x")
    if x.dim() < 2:
        raise MaxAffineError(
            f"x must be a batch (N, *input_shape); got shape {tuple(x.shape)}: "
            "add a batch dimension with x.unsqueeze(0)"
        )
    return trace(model, x[:1])


def node_name(node: fx.Node) -> str:
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


# ----------------------------------------------------------------- graph rewrites

_AUGMENTED = {operator.iadd: operator.add, operator.isub: operator.sub,
              operator.imul: operator.mul, operator.itruediv: operator.truediv,
              operator.imatmul: operator.matmul}


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    return ops.describe_target(node.target)


def _has_inplace_flag(target: Any, args: tuple, kwargs: dict) -> bool:
    """Whether a call passes ``inplace=True`` (``F.relu(x, inplace=True)``, also
    positionally)."""
    if kwargs.get("inplace") is True:
        return True
    try:
        bound = inspect.signature(target).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):  # builtins without a signature, or no match
        return False
    return bound.arguments.get("inplace") is True


def _mutated_input(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The node whose tensor ``node`` modifies in place (its first argument), if any:
    methods and functions named ``*_`` (``x.add_``, ``torch.relu_``), augmented
    assignment functions (``operator.iadd``), ``inplace=True`` calls and modules."""
    if node.op == "call_method":
        name = node.target
        inplace = name.endswith("_") and not name.startswith("_")
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        inplace = (node.target in _AUGMENTED
                   or (name.endswith("_") and not name.startswith("_"))
                   or _has_inplace_flag(node.target, node.args, node.kwargs))
    elif node.op == "call_module":
        inplace = getattr(gm.get_submodule(node.target), "inplace", False) is True
    else:
        return None
    first = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
    return first if inplace and isinstance(first, fx.Node) else None


def _out_of_place(node: fx.Node) -> None:
    """Point an in-place method / function with no rule of its own at its registered
    out-of-place form (``add_`` -> ``add``; ``operator.iadd`` -> ``operator.add``)."""
    if ops.lookup(node.target) is not None:
        return  # e.g. relu_: its rule computes out of place
    if node.op == "call_method" and ops.lookup(node.target[:-1]) is not None:
        node.target = node.target[:-1]
    elif node.op == "call_function":
        if node.target in _AUGMENTED:
            node.target = _AUGMENTED[node.target]
            return
        name = getattr(node.target, "__name__", "")
        for namespace in (torch, torch.nn.functional):
            if getattr(namespace, name, None) is node.target:
                plain = getattr(namespace, name[:-1], None)
                if plain is not None and ops.lookup(plain) is not None:
                    node.target = plain
                return


def _is_namedtuple(target: Any) -> bool:
    return isinstance(target, type) and issubclass(target, tuple) and hasattr(target, "_fields")


def _max_reduction(node: fx.Node) -> tuple[Any, Any, Any, bool] | None:
    """``(input, dim, keepdim, is_min)`` of ``torch.max(x, dim)`` / ``x.min(dim)`` /
    ``torch.amin(x, dim)`` (dim a constant), else None."""
    fn = node.op == "call_function"
    method = node.op == "call_method"
    if not ((fn and node.target in (torch.max, torch.min, torch.amin))
            or (method and node.target in ("max", "min", "amin"))):
        return None
    args, kwargs = node.args, node.kwargs
    x = args[0] if args else kwargs.get("input")
    amin = node.target in (torch.amin, "amin")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", () if amin else None)
    if "other" in kwargs or dim is None or isinstance(dim, fx.Node | bool):
        return None
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    return x, dim, keepdim, node.target in (torch.min, "min", torch.amin, "amin")


def _values_users(node: fx.Node) -> tuple[list[fx.Node], list[fx.Node]]:
    """Users of a ``(values, indices)`` result: those reading the values
    (``[0]``, ``.values``), and any other (reading the indices, or the pair)."""
    values, other = [], []
    for user in node.users:
        item = user.args[1] if user.op == "call_function" and len(user.args) > 1 else None
        if ((user.target is operator.getitem and item == 0)
                or (user.target is getattr and item == "values")):
            values.append(user)
        elif ((user.target is operator.getitem and item == 1)
              or (user.target is getattr and item == "indices")) and not user.users:
            values.append(user)  # dead code (v, _ = x.max(1)): dropped with the rest
        else:
            other.append(user)
    return values, other


def _rewrite(gm: fx.GraphModule) -> tuple[list[str], dict[fx.Node, fx.Node], set[fx.Node]]:
    """Rewrite the traced graph into registered ops, in place; returns the problems
    found, per in-place node the node whose tensor it modifies, and the nodes
    already reported (not to be bound to a rule).

    * In-place ops: later users of the modified tensor read the op's result (eager
      PyTorch's semantics), and the op runs out of place.
    * ``torch.max(x, dim)`` / ``x.max(dim)`` whose values only are used become
      ``torch.amax(x, dim, keepdim)``; min / amin become ``-amax(-x)``, so their
      unit is a window max of ``-x`` (code: the first argmin).
    """
    graph = gm.graph
    problems: list[str] = []
    mutates: dict[fx.Node, fx.Node] = {}
    reported: set[fx.Node] = set()
    for node in list(graph.nodes):
        if _is_namedtuple(node.target) and node.op == "call_function" and all(
                u.op == "output" for u in node.users):
            # ``return Heads(a, b)`` is recorded as a call: make it part of the output
            packed = node.target(*node.args, **node.kwargs)
            for user in list(node.users):
                user.args = map_arg(user.args,
                                    lambda n, p=packed, old=node: p if n is old else n)
            graph.erase_node(node)
            continue
        reduction = _max_reduction(node)
        if reduction is not None:
            found = _rewrite_max(gm, node, *reduction)
            if found:
                problems.extend(found)
                reported.add(node)
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        target = _mutated_input(gm, node)
        if target is None:
            continue
        mutates[node] = target
        _out_of_place(node)
        for user in list(target.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(target, node)
    gm.recompile()
    return problems, mutates, reported


def _rewrite_max(gm: fx.GraphModule, node: fx.Node, x: Any, dim: Any, keepdim: Any,
                 is_min: bool) -> list[str]:
    graph = gm.graph
    amin = node.target in (torch.amin, "amin")
    if amin:
        readers, others = [], []
    else:
        readers, others = _values_users(node)
    if others:
        return [f"{node_name(node)} ({_describe(gm, node)}): the indices of torch.max / "
                "torch.min over a dim are used, and indices are not a piecewise-affine "
                "function of the input; use the values only (x.max(dim).values or "
                "torch.amax): the argmax is the unit's VQ code, read it with "
                "maxaffine.codes"]
    node.op, node.target, node.kwargs = "call_function", torch.amax, {}
    node.args = (x, dim, keepdim)
    result = node
    if is_min:
        with graph.inserting_before(node):
            negated = graph.call_function(torch.neg, (x,))
        with graph.inserting_after(node):
            result = graph.call_function(torch.neg, (node,))
        for new in (negated, result):
            new.meta = dict(node.meta)
        node.args = (negated, dim, keepdim)
        if amin:
            node.replace_all_uses_with(result, delete_user_cb=lambda u: u is not result)
    for user in readers:
        user.replace_all_uses_with(result)
        graph.erase_node(user)
    return []


def _unsupported(problems: list[str]) -> UnsupportedOperation:
    err = UnsupportedOperation(problems)
    lines = "\n".join(f"  - {p}" for p in problems)
    err.args = (
        f"{len(problems)} operation(s) cannot be traced into a max-affine spline:\n"
        f"{lines}\nReplace them with supported ops (see maxaffine.supported_ops()), or "
        "pass exact=False to affine_map where a local linearization is acceptable.",)
    return err


def _aliased(node: fx.Node, target: fx.Node, values: dict[fx.Node, Any],
             order: dict[fx.Node, int]) -> fx.Node | None:
    """A node other than ``target`` whose value shares memory with ``target``'s and is
    read after ``node`` (which modifies ``target`` in place), if any."""
    value = values.get(target)
    if not isinstance(value, Tensor) or value.numel() == 0:
        return None
    ptr = value.untyped_storage().data_ptr()
    for other, v in values.items():
        if (other is not target and isinstance(v, Tensor) and v.numel()
                and v.untyped_storage().data_ptr() == ptr
                and any(order[u] > order[node] for u in other.users)):
            return other
    return None


def _bind(gm: fx.GraphModule, example: Tensor, problems: list[str],
          mutates: dict[fx.Node, fx.Node], reported: set[fx.Node]
          ) -> tuple[list[_Step], list[Layer], Any, dict[fx.Node, tuple]]:
    """Propagate the example, mark input-dependent nodes, bind a rule to each.
    ``problems``: found so far (by :func:`_rewrite`), about the nodes ``reported``;
    ``mutates``: in-place node -> the node whose tensor it modifies."""
    values: dict[fx.Node, Any] = {}
    dependent: set[fx.Node] = set()
    steps: list[_Step] = []
    layers: list[Layer] = []
    taken: set[str] = set()
    output: Any = None
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in gm.graph.nodes:
        if node in mutates:
            shared = _aliased(node, mutates[node], values, order)
            if shared is not None:
                problems.append(
                    f"{node_name(node)} ({_describe(gm, node)}): modifies in place a tensor "
                    f"that {node_name(shared)} shares memory with (a view of it, or the same "
                    "tensor) and that is used later; the traced graph computes out of "
                    "place, so write this op out of place (x.relu() instead of x.relu_(), "
                    "y = x + 1 instead of x += 1, inplace=False)")
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
        if node in reported:  # refused already: only keep shapes propagating
            values[node] = _shadow_call(gm, node, args, kwargs)
            continue
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        target = type(module) if module is not None else node.target
        name = node_name(node)
        if name in taken:  # a module called more than once: "act", "act@1", ...
            name = next(f"{name}@{k}" for k in range(1, len(taken) + 2)
                        if f"{name}@{k}" not in taken)
        taken.add(name)
        site = ops.Site(name, target, module, args, kwargs, tuple(deps), dep_kw)
        rule_cls = rule_for_module(module) if module is not None else ops.lookup(target)
        rule: ops.Rule | None = None
        if rule_cls is None:
            if _is_namedtuple(target):
                why = ("a namedtuple built in forward() and used before it is returned; "
                       "build it in the return statement only")
            elif target is getattr:
                why = (f"reading attribute .{node.args[1]} of an input-dependent tensor is "
                       "not supported (only shape / dtype / device); use an explicit op, "
                       "e.g. x.transpose(-2, -1) instead of x.mT")
            else:
                why = ops.refusal(target)
            problems.append(f"{site.name} ({ops.describe_target(target)}): {why}")
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
                raise _unsupported(problems) from err
            continue
        except Exception as err:  # shapes or dtypes that do not fit the model
            if problems:
                raise _unsupported(problems) from err
            raise MaxAffineError(
                f"{site.name} ({ops.describe_target(target)}) fails on the example input "
                f"of shape {tuple(example.shape)} and dtype {example.dtype} "
                f"({type(err).__name__}: {err}); example_input must be a batch "
                "(N, *input_shape) of the model's dtype"
            ) from err
        steps.append(_Step(node, rule.kind, rule, site))
        if isinstance(rule, ops.Nonlinearity):
            layers.append(Layer(site.name, type(rule).__name__, rule,
                                tuple(values[node].shape[1:]), rule.num_pieces))
    if problems:
        raise _unsupported(problems)
    shapes = {n: (tuple(v.shape[1:]), v.dtype) for n, v in values.items()
              if n in dependent and isinstance(v, Tensor) and v.dim() > 0}
    return steps, layers, output, shapes


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


def _output_leaves(out: Any, what: str, prefix: str = "") -> list[tuple[str, Tensor]]:
    """The tensors of a model output, named, in order: a tensor is ``"output"``; a
    dict / tuple / list / namedtuple is walked depth first (dict insertion order),
    leaves named by their keys / indices / fields joined with ``.``."""
    if isinstance(out, Tensor):
        return [(prefix or "output", out)]
    if isinstance(out, Mapping):
        items = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, tuple) and hasattr(out, "_fields"):
        items = list(zip(out._fields, out, strict=True))
    elif isinstance(out, tuple | list):
        items = [(str(i), v) for i, v in enumerate(out)]
    else:
        raise MaxAffineError(
            f"{what}{' ' + repr(prefix) if prefix else ''} is of type "
            f"{type(out).__name__}, not a tensor: the model must return a tensor or a "
            "dict / tuple / list of tensors; drop the other values (or wrap the model)")
    if not items:
        raise MaxAffineError(f"{what} {prefix!r} is an empty {type(out).__name__}: return "
                             "at least one tensor")
    found: list[tuple[str, Tensor]] = []
    for key, value in items:
        found.extend(_output_leaves(value, what, f"{prefix}.{key}" if prefix else key))
    return found


def _flat_output(out: Any, batch: int) -> Tensor:
    """A structured model output as one (N, C) tensor: the leaves of
    :func:`_output_leaves`, each flattened per sample, concatenated."""
    leaves = [t.reshape(batch, math.prod(t.shape[1:]))
              for _, t in _output_leaves(out, "model output")]
    return leaves[0] if len(leaves) == 1 else torch.cat(leaves, 1)


def _check_faithful(graph: SplineGraph, model: nn.Module, example: Tensor) -> None:
    """The graph must reproduce the model, and treat samples independently."""
    with torch.no_grad():
        # a copy: an in-place op on the model's input must not change the example
        expected = model(example.clone())
        if graph._structured:
            names = tuple(name for name, _ in _output_leaves(expected, "model output"))
            if names != graph.output_names:
                raise MaxAffineError(
                    f"the model's outputs {names} differ from the traced ones "
                    f"{graph.output_names}; forward must return the same structure on "
                    "every call")
            expected = _flat_output(expected, example.shape[0])
        got = graph._run(example, None, False).output
        gen = torch.Generator(device=example.device).manual_seed(0)  # no global RNG use
        noise = torch.randn(example[:1].shape, generator=gen, dtype=example.dtype,
                            device=example.device)
        other = example[:1] * 0.5 + noise * (float(example.abs().max()) + 1.0)
        pair = graph._run(torch.cat([example[:1], other]), None, False).output
        alone = graph._run(other, None, False).output
    scale = float(expected.abs().max()) + 1.0 if expected.numel() else 1.0
    tol = 1e-4 * scale if expected.dtype != torch.float64 else 1e-9 * scale
    if got.shape != expected.shape or float((got - expected).abs().max()) > tol:
        raise MaxAffineError(
            "the traced graph does not reproduce model(example_input); the model may "
            "mutate tensors in place in a way tracing cannot follow (item assignment, "
            "x += y on an alias) or depend on state torch.fx cannot see"
        )
    if got.numel() and (float((pair[:1] - got[:1]).abs().max()) > tol
                        or float((pair[1:] - alone).abs().max()) > tol):
        raise UnsupportedOperation(
            "model output for one sample depends on the other samples of the batch "
            "(batch statistics?); per-sample affine maps require independent samples"
        )


# ------------------------------------------------------------------------- inputs


def check_parameters(model: nn.Module | SplineGraph) -> None:
    """Raise :class:`~maxaffine.MaxAffineError` naming every floating-point parameter or
    buffer of ``model`` (or of a graph's model, and the tensor constants its trace
    reads) that holds NaN or infinite values, with their counts: such a model's
    outputs and affine maps are NaN. Cheap: a finite sum proves a tensor finite."""
    graph = model if isinstance(model, SplineGraph) else None
    module = graph.model if graph is not None else model
    if not isinstance(module, nn.Module):
        raise MaxAffineTypeError(
            f"model must be a torch.nn.Module, got {type(module).__name__}")
    named: list[tuple[str, str, Any]] = [
        *(("parameter", k, v) for k, v in module.named_parameters()),
        *(("buffer", k, v) for k, v in module.named_buffers())]
    if graph is not None:
        named += [("constant", str(st.node.target), _fetch_attr(graph._gm, st.node.target))
                  for st in graph._steps if st.kind == "attr"]
    seen: set[int] = set()
    bad = []
    for kind, name, t in named:
        if not isinstance(t, Tensor) or not t.is_floating_point() or id(t) in seen:
            continue
        seen.add(id(t))
        if math.isfinite(float(t.detach().sum())) or bool(torch.isfinite(t).all()):
            continue
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        bad.append(f"{kind} {name!r} {tuple(t.shape)}: {n_nan} NaN and {n_inf} infinite "
                   "value(s)")
    if bad:
        raise MaxAffineError(
            f"{type(module).__name__} has non-finite {'values' if len(bad) > 1 else 'value'}"
            f" in {len(bad)} tensor(s), so its outputs and affine maps would be NaN:\n"
            + "\n".join(f"  - {b}" for b in bad)
            + "\nreload or reinitialise those tensors (a diverged training run? lower "
            "the learning rate or clip gradients)")


def check_input(graph: SplineGraph, x: Tensor, what: str = "x") -> None:
    """Clear errors for inputs the graph cannot take (shape, dtype, NaN/inf), and for
    non-finite parameters (:func:`check_parameters`)."""
    check_tensor(x, what)
    shape = tuple(x.shape)
    if shape[1:] != graph.input_shape:
        hint = ""
        if shape == graph.input_shape:
            hint = f": add a batch dimension with {what}.unsqueeze(0)"
        raise MaxAffineError(
            f"{what} has shape {shape}; the model was traced for (N, "
            f"{', '.join(map(str, graph.input_shape))}){hint}"
        )
    check_dtype(graph.model, x, what)
    check_parameters(graph)

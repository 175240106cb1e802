"""Per-input affine maps and templates: ``f(x) = A[x] x + B[x]``.

A network of MASO layers is continuous and piecewise affine; on the region of
``x`` it *is* the affine map ``A[x] x + B[x]`` (Balestriero & Baraniuk, "A
Spline Theory of Deep Networks", ICML 2018, Thm. 1 / eq. 8).  Row ``c`` of
``A[x]`` is the signal-dependent *template* of output ``c``, and
``f_c(x) = <A_c[x], x> + B_c[x]`` is a matched filter (ibid., sec. 4).

``A[x]`` is the Jacobian of the spline graph with every code frozen at ``x``'s
codes (the graph differentiates the selected pieces, so ties follow the VQ
code convention), computed batched in reverse mode (one vector-Jacobian
product per output: plain backward passes, or vmapped for small layers) or
forward mode (one Jacobian-vector product per input dimension, vmapped),
whichever is cheaper.  ``B[x]`` is the frozen graph evaluated at 0 (reverse
mode) or ``f(x) - A[x] x`` (forward mode, where A is small).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import _arguments as arg
from ._arguments import check_tensor
from ._autodiff import Mode, jacobian
from .errors import MaxAffineError, MaxAffineTypeError
from .graph import (
    SplineGraph,
    _flat_output,
    _output_leaves,
    as_graph,
    check_input,
    check_parameters,
)


@dataclass(frozen=True)
class AffineMap:
    """The affine map of each input's region.

    Axes: ``A`` is (N, C, *input_shape), ``B`` and ``output`` are (N, C), with C the
    flattened output size. ``exact`` is False for the local linearization of a
    model that is not piecewise affine (``affine_map(..., exact=False)``).
    ``output_slices``: output name -> its rows of ``A`` (columns of ``B``); one
    entry ``"output"`` for a model returning a tensor, one per tensor for a model
    returning a dict / tuple / list (see :class:`~maxaffine.SplineGraph`).
    """

    A: Tensor
    B: Tensor
    x: Tensor
    output: Tensor
    exact: bool = True
    mode: str = "reverse"
    output_slices: dict[str, slice] | None = None

    @property
    def num_outputs(self) -> int:
        return self.B.shape[1]

    def templates(self, c: int | Tensor | None = None) -> Tensor:
        """Templates ``A_c[x]`` of output ``c`` for every sample, shape (N, *input_shape).

        ``c``: an output index, a (N,) tensor of per-sample indices (e.g. labels),
        or None for each sample's predicted (argmax) output.
        """
        n, num = self.A.shape[0], self.num_outputs
        if c is None:
            if num == 0:
                raise MaxAffineError("the model has no outputs (C=0): no templates")
            c = self.output.argmax(dim=1)
        if isinstance(c, numbers.Integral) and not isinstance(c, bool):
            if not -num <= int(c) < num:
                raise MaxAffineError(
                    f"output index {c} out of range for C={num} outputs; pass an index in "
                    f"[-{num}, {num}) or None for each sample's predicted output")
            return self.A[:, int(c)]
        if isinstance(c, bool) or not isinstance(c, Tensor | list | tuple):
            raise MaxAffineTypeError(
                f"c must be an int, a ({n},) tensor or list of ints, or None; got "
                f"{type(c).__name__} {c!r}")
        try:
            c = torch.as_tensor(c, device=self.A.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise MaxAffineTypeError(f"c must hold integers: {err}") from err
        if c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
            raise MaxAffineTypeError(
                f"per-sample indices must be integers, got dtype {c.dtype}: use c.long()")
        if c.shape != (n,):
            raise MaxAffineError(
                f"per-sample indices must have shape ({n},) (one output index per "
                f"sample), got {tuple(c.shape)}")
        c = c.long()
        if n and (int(c.min()) < -num or int(c.max()) >= num):
            bad = c[(c < -num) | (c >= num)]
            raise MaxAffineError(
                f"per-sample output indices {bad.tolist()[:5]} out of range for C={num} "
                f"outputs; indices must lie in [-{num}, {num})")
        return self.A[torch.arange(n, device=self.A.device), c % max(1, num)]

    def reconstruct(self, x: Tensor | None = None) -> Tensor:
        """``A[x] x + B[x]`` (N, C); with another ``x``, the region's affine map extended."""
        x = self.x if x is None else x
        check_tensor(x, "x")
        if x.shape != self.x.shape:
            raise MaxAffineError(f"x must have shape {tuple(self.x.shape)}, got {tuple(x.shape)}")
        if x.dtype != self.A.dtype:
            raise MaxAffineError(f"x is {x.dtype} but the map is {self.A.dtype}: convert x with "
                                 f".to({self.A.dtype})")
        return _apply(self.A, x) + self.B

    def plot(self, ax=None, *, n: int = 4, classes: list[int] | None = None):
        """Templates of the first ``n`` inputs, one row per input: the input, then
        one template per class (red positive, blue negative), as in the papers'
        figures; image-like inputs ((C, H, W), (H, W), (D,) for D a square) as images,
        others as lines. ``ax``: a grid of axes (n, classes + 1), or None for a new
        figure (returned)."""
        from ._plotting import plot_templates

        n = arg.integer(n, "n", minimum=1, meaning="inputs to draw")
        if classes is not None:
            classes = _class_list(classes, self.num_outputs)
        return plot_templates(self, n=n, classes=classes, ax=ax)

    def summary(self) -> dict[str, Any]:
        """Shapes, how the map was computed, and how well ``A x + B`` reproduces the
        output (0 up to rounding for an exact map)."""
        n, c = self.B.shape
        error = ((_apply(self.A, self.x) + self.B - self.output).abs().max()
                 if n and c else torch.zeros(()))
        return {"samples": n, "outputs": c, "input_shape": list(self.x.shape[1:]),
                "exact": self.exact, "mode": self.mode,
                "output_names": None if self.output_slices is None else list(
                    self.output_slices),
                "reconstruction_error": float(error.detach()),
                "template_norm_mean": float(self.A.detach().flatten(2).norm(dim=2).mean())
                if n and c else None}

    def to_json(self) -> str:
        """Shapes, outputs and offsets (the full A is large: use ``save``)."""
        return json.dumps({
            "exact": self.exact, "mode": self.mode, "A_shape": list(self.A.shape),
            "output": self.output.tolist(), "B": self.B.tolist(),
            "output_slices": None if self.output_slices is None else {
                k: [s.start, s.stop] for k, s in self.output_slices.items()},
        })

    def save(self, path: str | Path) -> None:
        """All tensors to a ``.pt`` file."""
        if not isinstance(path, str | PathLike):
            raise MaxAffineTypeError(f"path must be a str or a path, got {type(path).__name__}")
        state = {k: getattr(self, k) for k in ("A", "B", "x", "output", "exact", "mode")}
        if self.output_slices is not None:  # as [start, stop] (torch.load's safe types)
            state["output_slices"] = {k: [s.start, s.stop] for k, s in self.output_slices.items()}
        torch.save(state, path)


def affine_map(
    model: nn.Module | SplineGraph,
    x: Tensor,
    *,
    exact: bool = True,
    mode: Mode = "auto",
    products_per_pass: int | None = None,
) -> AffineMap:
    """The per-input affine map ``f(x) = A[x] x + B[x]`` of a piecewise-affine model.

    ``x``: batch (N, *input_shape); an empty batch gives empty maps.  A model
    returning a dict / tuple / list of tensors has its outputs flattened per sample
    and concatenated in order (C rows in all; ``output_slices`` names them).
    ``mode``: ``"reverse"`` costs ~C vector-Jacobian
    products, ``"forward"`` ~D Jacobian-vector products; ``"auto"`` picks the cheaper.
    ``exact=False`` skips the spline graph and returns the local linearization
    (the Jacobian) of any differentiable model, labelled ``exact=False``.
    ``products_per_pass``: how many of those products one pass computes (vector-
    Jacobian products, one per output row of ``A``, in reverse mode; Jacobian-vector
    products, one per input dimension, in forward mode): more is faster for small
    layers and takes more memory; default chosen from the widest layer (one at a
    time for convolutional nets).
    In grad mode gradients flow to the model's parameters (double back-prop); under
    ``torch.no_grad()`` the maps are computed without that graph, faster.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> m = affine_map(net, torch.randn(5, 3))
    >>> m.A.shape, m.B.shape
    (torch.Size([5, 2, 3]), torch.Size([5, 2]))
    """
    if mode not in ("auto", "forward", "reverse"):
        raise MaxAffineError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
    exact = arg.flag(exact, "exact")
    if products_per_pass is not None:
        products_per_pass = arg.integer(products_per_pass, "products_per_pass", minimum=1,
                                        meaning="Jacobian products per pass, or None")
    found: dict[str, Tensor] = {}
    if exact:
        graph = as_graph(model, x)
        check_input(graph, x)
        slices = graph.output_slices
        if x.shape[0] == 0:  # an empty batch: empty maps of the right shapes
            c = graph.num_outputs
            return AffineMap(A=x.new_zeros((0, c, *x.shape[1:])), B=x.new_zeros((0, c)),
                             x=x, output=x.new_zeros((0, c)), exact=True,
                             mode="forward" if mode == "forward" else "reverse",
                             output_slices=slices)
        if mode == "auto":
            mode = "forward" if graph.input_dim < graph.num_outputs else "reverse"
        keep = mode == "reverse"  # (forward mode evaluates fn inside function transforms)

        def fn(v: Tensor) -> Tensor:
            ev = graph.run(v)
            if keep:
                found.update(ev.codes)
            return ev.output
    else:
        if not isinstance(model, nn.Module | SplineGraph):
            raise MaxAffineError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_tensor(x, "x")
        if x.dim() < 2:
            raise MaxAffineError(
                f"x must be a batch (N, *input_shape); got shape {tuple(x.shape)}: add a "
                "batch dimension with x.unsqueeze(0)")
        check_parameters(model)
        net = model
        leaves: list[tuple[str, tuple[int, ...]]] = []

        def fn(v: Tensor) -> Tensor:
            # dict / tuple outputs: flattened per sample and concatenated, as traced
            out = net(v)
            if not leaves:
                leaves.extend((name, tuple(t.shape[1:]))
                              for name, t in _output_leaves(out, "model output"))
            return _flat_output(out, v.shape[0])

        if x.shape[0] == 0:
            with torch.no_grad():
                c = fn(x).shape[1]
            return AffineMap(A=x.new_zeros((0, c, *x.shape[1:])), B=x.new_zeros((0, c)),
                             x=x, output=x.new_zeros((0, c)), exact=False,
                             mode="forward" if mode == "forward" else "reverse",
                             output_slices=_slices(leaves) if not isinstance(
                                 model, SplineGraph) else model.output_slices)
    c = graph.num_outputs if exact else None
    if exact and products_per_pass is None:
        products_per_pass = _products_per_pass(graph, x.shape[0])
    A, out, used = jacobian(fn, x, mode=mode, products_per_pass=products_per_pass,
                            num_outputs=c)
    if exact and used == "reverse":
        # B[x] is the network at 0 with x's codes frozen: read off directly (no
        # cancellation in f(x) - A x) and without another pass over the large A.
        B = graph.run(torch.zeros_like(x), codes=found).output.reshape(out.shape)
    else:
        B = out - _apply(A, x)
    check_overflow("the affine map", {"A": A, "B": B, "f(x)": out})
    return AffineMap(A=A, B=B, x=x, output=out, exact=exact, mode=used,
                     output_slices=slices if exact else model.output_slices if isinstance(
                         model, SplineGraph) else _slices(leaves))


def check_overflow(what: str, tensors: dict[str, Tensor]) -> None:
    """Inputs and parameters are checked finite before, so a non-finite result is an
    overflow of the dtype (e.g. huge weights or inputs in float32): refuse it rather
    than return NaN / inf. ``what`` names the result, ``tensors`` its parts."""
    for name, t in tensors.items():
        t = t.detach()
        if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
            raise MaxAffineError(
                f"{what} overflows {t.dtype}: {name} has {int(torch.isnan(t).sum())} NaN and "
                f"{int(torch.isinf(t).sum())} infinite value(s) although x and the parameters "
                "are finite (values beyond the dtype's range); evaluate the model in float64 "
                "(model.double(), x.double()) or rescale its weights or inputs")


def _class_list(classes: Sequence[int] | Tensor, num: int) -> list[int]:
    """``classes`` (output indices to draw) as a list of ints in [0, num), validated."""
    if isinstance(classes, str | bytes) or not isinstance(classes, Sequence | Tensor):
        raise MaxAffineTypeError(f"classes must be a list of output indices, got "
                                 f"{type(classes).__name__} {classes!r}")
    if isinstance(classes, Tensor) and (classes.dim() != 1 or classes.dtype == torch.bool):
        raise MaxAffineError(f"classes must be a list of output indices, got a tensor of "
                             f"shape {tuple(classes.shape)} and dtype {classes.dtype}")
    out = [arg.integer(c, f"classes[{i}]", minimum=-num, maximum=num - 1,
                       meaning=f"an index of the C={num} outputs") % max(1, num)
           for i, c in enumerate(classes)]
    if not out:
        raise MaxAffineError("classes is empty: pass at least one output index, or None for "
                             "all outputs")
    return out


def _slices(leaves: list[tuple[str, tuple[int, ...]]]) -> dict[str, slice]:
    out, at = {}, 0
    for name, shape in leaves:
        out[name] = slice(at, at + math.prod(shape))
        at += math.prod(shape)
    return out


def _apply(A: Tensor, x: Tensor) -> Tensor:
    """``A x`` per sample: (N, C, *in), (N, *in) -> (N, C).  A vectorised dot product;
    a batched matrix-vector product (``einsum``/``bmm``) is ~4x slower on CPU."""
    return torch.linalg.vecdot(A.flatten(2), x.flatten(1).unsqueeze(1))


def _products_per_pass(graph: SplineGraph, n: int, budget: int = 1 << 21) -> int:
    """How many products to vmap at once: as many as keep the batched copies of the
    widest nonlinearity's input within ``budget`` elements (vmapping pays off while
    they stay cache-sized: MLPs; convolutions' backward runs fastest one output at a
    time)."""
    widest = max([u.num_units for u in graph.layers] + [graph.input_dim])
    return max(1, min(graph.num_outputs, graph.input_dim, budget // max(1, n * widest)))

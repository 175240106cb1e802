"""The one autodiff engine: per-sample Jacobians and batched Jacobian-vector and
vector-Jacobian products of functions whose samples are independent (a spline
graph with its codes free or frozen). Affine maps (:mod:`maxaffine.affine`),
template losses, boundary distances, layer pieces and segment partitions all
differentiate through here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from .errors import MaxAffineError

Mode = Literal["auto", "forward", "reverse"]


def basis(d: int, start: int, stop: int, x: Tensor) -> Tensor:
    """Directions ``e_start .. e_{stop-1}`` of the input space of ``x`` (N, *in), each
    expanded over the batch: (stop - start, N, *in)."""
    e = torch.zeros((stop - start, d), dtype=x.dtype, device=x.device)
    e[torch.arange(stop - start), torch.arange(start, stop)] = 1
    return e.reshape(stop - start, 1, *x.shape[1:]).expand(stop - start, *x.shape)


def pushforward(fn: Callable[[Tensor], Any], x: Tensor, tangents: Tensor) -> tuple[Any, Any]:
    """``fn(x)`` and its Jacobian-vector products along each of the (k, N, *in)
    ``tangents`` (vmapped over k); ``fn`` may return a tensor or a tuple of them."""
    def push(t: Tensor) -> tuple[Any, Any]:
        return torch.func.jvp(fn, (x,), (t,))

    return torch.func.vmap(push)(tangents)


def pullback(out: Tensor, x: Tensor, cotangents: Tensor, *, retain: bool,
             differentiable: bool) -> Tensor:
    """Vector-Jacobian products of ``out`` (N, C), computed from ``x``, with the
    cotangents (N, C) or (k, N, C) (batched: one backward pass per product, no
    vmapped backward): (N, *in) or (k, N, *in). ``retain``: keep the graph for more
    products; ``differentiable``: build the double-back-prop graph."""
    batched = cotangents.dim() == 3
    (g,) = torch.autograd.grad(out, x, cotangents, retain_graph=retain or differentiable,
                               create_graph=differentiable, is_grads_batched=batched,
                               materialize_grads=True)
    return g


def jacobian(
    fn: Callable[[Tensor], Tensor], x: Tensor, *, mode: Mode = "auto",
    products_per_pass: int | None = None, num_outputs: int | None = None,
) -> tuple[Tensor, Tensor, str]:
    """Per-sample Jacobians of ``fn`` (samples must be independent), batched.

    Returns ``(J, f(x) flattened to (N, C), mode used)`` with J of shape (N, C, *in).
    Never loops over samples.  Reverse mode: one batched forward pass, then the
    C vector-Jacobian products (one per output), ``products_per_pass`` outputs per
    backward pass (one: a plain backward pass; more are batched); ``None``: all at
    once. Forward mode: ``products_per_pass`` Jacobian-vector products (one per input
    dimension) vmapped per pass; ``None``: all at once.
    ``num_outputs`` (C, if known) saves the probe pass of ``mode="auto"``.
    In grad mode the result is differentiable (double back-prop).
    """
    n = x.shape[0]
    d = math.prod(x.shape[1:])
    if mode not in ("auto", "forward", "reverse"):
        raise MaxAffineError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}")

    def flat(v: Tensor) -> Tensor:
        return fn(v).reshape(n, -1)

    if mode == "auto":
        if num_outputs is None:
            with torch.no_grad():
                num_outputs = math.prod(fn(x[:1]).shape[1:])
        mode = "forward" if d < num_outputs else "reverse"
    if mode == "reverse":
        jac, out = _reverse(flat, x, products_per_pass)
        return jac, out, mode
    step = d if products_per_pass is None else max(1, products_per_pass)
    outs, cols = None, []
    for start in range(0, d, step):
        o, t = pushforward(flat, x, basis(d, start, min(d, start + step), x))  # (k, N, C)
        outs, cols = o[0] if outs is None else outs, [*cols, t]
    jac = torch.cat(cols).permute(1, 2, 0) if d else x.new_zeros((n, 0, 0))
    if outs is None:  # no input dimension
        outs = flat(x)
        jac = x.new_zeros((n, outs.shape[1], 0))
    return jac.reshape((n, jac.shape[1], *x.shape[1:])), outs, mode


def _reverse(flat: Callable[[Tensor], Tensor], x: Tensor, products_per_pass: int | None
             ) -> tuple[Tensor, Tensor]:
    """Reverse-mode Jacobian of ``flat`` (N, *in) -> (N, C): one forward pass, then one
    backward pass per chunk of outputs (cotangents one-hot per output, for all samples
    at once).  Plain ``autograd.grad`` rather than ``torch.func.vjp``: without the
    function transforms' wrapping a chunk of one runs at the speed of ordinary
    back-prop, several times faster than vmapping convolutions' backward."""
    differentiable = torch.is_grad_enabled()
    with torch.enable_grad():
        xx = x if differentiable and x.requires_grad else x.detach().requires_grad_(True)
        out = flat(xx)
        n, c = out.shape
        if not out.requires_grad:  # f does not depend on x
            return x.new_zeros((n, c, *x.shape[1:])), out
        eye = torch.eye(c, dtype=out.dtype, device=out.device)
        step = c if products_per_pass is None else max(1, products_per_pass)
        rows = []
        for start in range(0, c, step):
            stop = min(c, start + step)
            if stop - start == 1:
                cot = eye[start].expand(n, c)
            else:
                cot = eye[start:stop].unsqueeze(1).expand(stop - start, n, c)
            g = pullback(out, xx, cot, retain=stop < c, differentiable=differentiable)
            rows.append(g.unsqueeze(1) if stop - start == 1 else g.movedim(0, 1))
    jac = torch.cat(rows, 1) if len(rows) > 1 else rows[0]
    if not differentiable:
        return jac.detach(), out.detach()
    return jac, out

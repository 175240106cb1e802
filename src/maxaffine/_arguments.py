"""Validation of scalar arguments and of layers' inputs: every error names the
argument, the value it got, what is expected and what to do (a string where a
number belongs is a :class:`~maxaffine.MaxAffineTypeError`, a number out of range a
:class:`~maxaffine.MaxAffineError`)."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import Tensor

from .errors import MaxAffineError, MaxAffineTypeError


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def integer(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None,
            meaning: str = "") -> int:
    """``value`` as an int (Python / numpy integers, 0-d integer tensors; never bool)
    within ``[minimum, maximum]``. ``meaning`` says in the message what it is."""
    about = f" ({meaning})" if meaning else ""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point() \
            and not value.is_complex() and value.dtype is not torch.bool:
        ok, value = True, int(value)
    if not ok:
        raise MaxAffineTypeError(f"{name} must be an integer{about}, got {_kind(value)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            want = f">= {minimum}"
        elif minimum is None:
            want = f"<= {maximum}"
        else:
            want = f"in [{minimum}, {maximum}]"
        raise MaxAffineError(f"{name} must be {want}{about}, got {value}")
    return value


def number(value: Any, name: str, *, minimum: float | None = None,
           maximum: float | None = None, strict: bool = False, meaning: str = "") -> float:
    """``value`` as a finite float (Python / numpy reals, one-element tensors; never
    bool or str) within ``[minimum, maximum]`` (open interval if ``strict``)."""
    about = f" ({meaning})" if meaning else ""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        ok = True
    if not ok:
        raise MaxAffineTypeError(f"{name} must be a number{about}, got {_kind(value)}")
    v = float(value)
    low = minimum is not None and (v <= minimum if strict else v < minimum)
    high = maximum is not None and (v >= maximum if strict else v > maximum)
    if not math.isfinite(v) or low or high:
        if minimum is not None and maximum is not None:
            want = f"in {'(' if strict else '['}{minimum:g}, {maximum:g}{')' if strict else ']'}"
        elif minimum is not None:
            want = f"{'>' if strict else '>='} {minimum:g}"
        elif maximum is not None:
            want = f"{'<' if strict else '<='} {maximum:g}"
        else:
            want = "finite"
        if minimum is not None or maximum is not None:
            want = "a finite number " + want
        raise MaxAffineError(f"{name} must be {want}{about}, got {value!r}")
    return v


def flag(value: Any, name: str) -> bool:
    """``value`` as a bool (True / False only: ``"no"`` would be truthy)."""
    if not isinstance(value, bool):
        raise MaxAffineTypeError(f"{name} must be True or False, got {_kind(value)}")
    return value


def choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    """``value`` if it is one of ``options``."""
    if not isinstance(value, str) or value not in options:
        cls = MaxAffineError if isinstance(value, str) else MaxAffineTypeError
        raise cls(f"{name} must be one of {options}, got {_kind(value)}")
    return value


def pair(value: Any, name: str, *, minimum: int = 1) -> tuple[int, int]:
    """A kernel size / stride / padding: an int or a pair of ints, each >= ``minimum``."""
    if isinstance(value, str | bytes) or not isinstance(value, numbers.Integral | tuple | list
                                                        | Tensor):
        raise MaxAffineTypeError(f"{name} must be an int or a pair (h, w) of ints, got "
                                 f"{_kind(value)}")
    if isinstance(value, tuple | list):
        if len(value) not in (1, 2):
            raise MaxAffineError(f"{name} must be an int or a pair (h, w), got {value!r}")
        items = [integer(v, f"{name}[{i}]", minimum=minimum) for i, v in enumerate(value)]
        return (items[0], items[-1])
    v = integer(value, name, minimum=minimum)
    return (v, v)


def layer_input(x: Any, owner: Any, what: str = "input",
                dtype: torch.dtype | None = None) -> bool:
    """Check the input of a layer's ``forward``: a floating-point tensor (of the
    layer's ``dtype`` if given). Returns False, checking nothing, for the proxies
    ``torch.fx`` passes while tracing (then shapes are unknown), else True.
    ``owner``: the layer (its repr is made only for an error message) or a name."""
    if isinstance(x, torch.fx.Proxy):
        return False
    if isinstance(x, Tensor) and x.is_floating_point() and (dtype is None or x.dtype == dtype):
        return True
    name = owner if isinstance(owner, str) else repr(owner)
    if not isinstance(x, Tensor):
        raise MaxAffineTypeError(f"{name} takes a torch.Tensor {what}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise MaxAffineTypeError(f"{name} takes a floating-point {what}, got dtype {x.dtype}: "
                                 "convert it with .float()")
    raise MaxAffineError(f"{name} has {dtype} parameters but its {what} is {x.dtype}: convert "
                         f"the {what} with .to({dtype}) or the layer with .to({x.dtype})")


def image_input(x: Any, owner: str, channels: int, kernel: tuple[int, int],
                padding: tuple[int, int], dtype: torch.dtype) -> None:
    """Check the input of a 2-D convolutional layer: images (N, ``channels``, H, W)
    (or one (C, H, W)) of ``dtype``, at least ``kernel`` large once padded."""
    if not layer_input(x, owner, dtype=dtype):
        return  # torch.fx tracing: a proxy
    if x.dim() not in (3, 4) or x.shape[-3] != channels:
        raise MaxAffineError(f"{owner} takes images (N, {channels}, H, W), got shape "
                             f"{tuple(x.shape)}")
    padded = [s + 2 * p for s, p in zip(x.shape[-2:], padding, strict=True)]
    if any(p < k for p, k in zip(padded, kernel, strict=True)):
        raise MaxAffineError(f"{owner}: the input is {x.shape[-2]}x{x.shape[-1]} "
                             f"({padded[0]}x{padded[1]} padded by {padding}), smaller than "
                             f"the {kernel[0]}x{kernel[1]} kernel: use a smaller kernel_size, "
                             "more padding or a larger input")


def describe(value: Any) -> str:
    """A short description of an argument: a tensor's shape and dtype, else its type."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


def check_tensor(x: Any, what: str) -> None:
    """``x`` must be a finite floating-point tensor: else an error naming ``what``."""
    if not isinstance(x, Tensor):
        raise MaxAffineTypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise MaxAffineTypeError(
            f"{what} has dtype {x.dtype}; spline maps need floating-point inputs: "
            f"use {what}.float() (or .double() for exact checks)"
        )
    # a finite sum proves every entry finite (25x faster than isfinite().all());
    # only a non-finite sum (NaN / inf, or an overflow) needs the exact check
    if not math.isfinite(float(x.detach().sum())) and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise MaxAffineError(f"{what} contains {n_nan} NaN and {n_inf} infinite value(s)")


def check_dtype(model: torch.nn.Module, x: Tensor, what: str) -> None:
    """``x`` must have the dtype of ``model``'s floating-point parameters."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is not None and param.dtype != x.dtype:
        raise MaxAffineError(
            f"{what} is {x.dtype} but the model's parameters are {param.dtype}: call "
            f"model.to({x.dtype}) or convert {what} with .to({param.dtype})"
        )


def indices(values: Any, n: int, what: str) -> Tensor:
    """``values`` as (k,) int64 indices into ``n`` items (negative from the end)."""
    try:
        idx = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as err:
        raise MaxAffineTypeError(f"{what} must be a list or tensor of indices, got "
                                 f"{type(values).__name__} {values!r}") from err
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise MaxAffineTypeError(f"{what} must be integer indices, got dtype {idx.dtype}")
    if idx.dim() > 1:
        raise MaxAffineError(f"{what} must be a flat list of indices, got shape "
                             f"{tuple(idx.shape)}")
    idx = idx.reshape(-1).long()
    bad = (idx < -n) | (idx >= n)
    if bool(bad.any()):
        raise MaxAffineError(f"{what}: index {int(idx[bad][0])} is out of range for {n} "
                             f"item(s) (valid: -{n} .. {n - 1})")
    return idx % max(n, 1)


def layer_index(key: Any, names: tuple[str, ...], what: str = "layer") -> int:
    """The position in ``names`` of a layer (a nonlinearity of the spline graph) given
    by name or by index (negative from the end; Python / numpy ints, 0-d integer
    tensors); the error lists the layers. ``what`` names the argument."""
    count = len(names)
    if isinstance(key, str):
        if key in names:
            return names.index(key)
        raise MaxAffineError(f"no layer {key!r}: the layers are {names}; pass one of these "
                             f"names or an index in [-{count}, {count - 1}]" if count else
                             f"no layer {key!r}: the model has no nonlinearity")
    if isinstance(key, Tensor) and key.dim() == 0 and not key.is_floating_point() \
            and not key.is_complex() and key.dtype is not torch.bool:
        key = int(key)
    if not isinstance(key, numbers.Integral) or isinstance(key, bool):
        raise MaxAffineTypeError(f"{what} must be a layer name (str) or index (int), got "
                                 f"{_kind(key)}; the layers are {names}")
    if not -count <= key < count:
        raise MaxAffineError(
            f"layer index {key} is out of range: there are {count} layers {names}"
            + (f"; pass an index in [-{count}, {count - 1}] or a name" if count else
               " (the model has no nonlinearity)"))
    return int(key) % count


def run(fn: Any, *args: Any, what: str, hint: str = "") -> Any:
    """``fn(*args)`` with the errors torch raises for inputs a callable refuses (shape,
    dtype or index mismatches) as a :class:`MaxAffineError` naming ``what`` was called."""
    try:
        return fn(*args)
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MaxAffineError(f"{what} failed: {message}{hint}") from err


def file_path(value: Any, name: str, example: str) -> Path:
    """``value`` (a str or path-like) as the :class:`~pathlib.Path` of a file to write:
    not a directory, and no parent of it a file. ``example``: a file name the message
    suggests inside a directory given by mistake."""
    if not isinstance(value, str | os.PathLike):
        raise MaxAffineTypeError(f"{name} must be a file path (str or pathlib.Path), got "
                                 f"{_kind(value)}")
    path = Path(value)
    if path.is_dir():
        raise MaxAffineError(f"{name}={str(path)!r} is a directory: pass a file path, e.g. "
                             f"{str(path / example)!r}")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise MaxAffineError(f"{name}: {str(parent)!r} (a parent of {str(path)!r}) is a "
                                 "file, not a directory")
    return path


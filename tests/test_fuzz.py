"""Fuzz suite (issue 13, "Must show"): every public callable against corrupted
arguments, one argument slot at a time.

The table ``RECIPES`` holds, for each public callable (``maxaffine.__all__``, the
public methods of its classes, ``maxaffine.nn``, ``maxaffine.losses``,
``maxaffine.orthogonal``, ``maxaffine.power``, ``maxaffine.stats``), a small valid
call on a small model (MLP 2-8-8-3 in float64, MLP 4-8-3 and a CNN on (1, 6, 6)
in float32, shared and never modified) and the *kind* of each argument slot that
takes tensors, numbers, models or options. ``test_every_public_callable_has_a_recipe``
fails when a public name or method has none, so a new public function must join
the table.

For each slot, :func:`corruptions` draws (hypothesis) one value per corruption of
the slot's kind: NaN / +inf / -inf entries, empty batches, a missing or extra axis,
a wrong feature size, integer / bool / half / complex dtypes, a list, a str or None
for a tensor, huge (1e30, 1e300, far offsets) and tiny (1e-300, subnormal) values,
zeros, constants, duplicated rows, non-contiguous views; degenerate geometry (equal
or collinear points, x0 == x1, parallel directions, zero-area or non-convex
polygons); zero, negative, fractional, NaN, huge or string counts, radii, betas
and tolerances; unknown options and layers; NaN / inf / huge model parameters and
models that are not spline networks.

The contract per case (:func:`judge`), within ``TIME_BOUND`` seconds (a
``SIGALRM`` watchdog in the main thread and an elapsed-time check; none may hang):

* the call raises :class:`maxaffine.MaxAffineError` (or a subclass): always fine;
  any other exception type is a failure;
* ``REFUSE`` (a wrong type, shape or dtype, an out-of-range number, an unknown
  option or layer): a result is a failure;
* non-finite data or parameters: recipes of analysis functions must refuse them;
  recipes marked ``propagate`` (training-time primitives: the layers' forward, the
  losses, the selections, arithmetic helpers such as ``to_input``) may instead
  compute with IEEE arithmetic: a NaN argument must then show as a NaN in the
  result (a finite-looking result hides it: a failure), while an infinite one may
  legitimately give finite values (``ReLU(-inf) = 0``, ``softmax`` of ``-inf``);
* otherwise (``EITHER``: empty, huge, tiny, degenerate inputs, ...) a result must
  hold no NaN and no inf (except in fields the recipe documents, ``inf_ok`` /
  ``nan_ok``, e.g. boundary distances where no unit depends on x), must pass the
  recipe's check (shapes consistent with the inputs, empty outputs for empty
  inputs, ``A x + B = f(x)``, ...); ``SAME`` (a numpy or 0-d tensor scalar, a
  non-contiguous view, a traced graph for its model): if it returns, the result
  equals the valid call's;
* ``HUGE`` (finite inputs or parameters near the float range): as ``EITHER``, but
  inf is accepted where the true value overflows the dtype; NaN is not (an
  analysis function refuses an overflow); ``propagate`` recipes compute with IEEE
  overflow arithmetic (``inf - inf = NaN``), as torch's own layers and losses.

``test_fuzz`` runs every recipe with one drawn example (all slots and corruptions,
a few seconds in all); ``test_fuzz_extended`` (slow) draws 25 per recipe. Each
call also runs under a memory bound (4 GiB more address space), so an absurd
allocation fails instead of exhausting the machine. ``PARTITION_CASES`` and
``REGRESSIONS`` pin every bug the suite found (and that was fixed).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import json
import math
import numbers
import re
import resource
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import maxaffine as ma
import maxaffine.conservation as conservation
import maxaffine.kernels as kernels
import maxaffine.losses as losses
import maxaffine.models as models
import maxaffine.nn as mnn
import maxaffine.orthogonal as orthogonal
import maxaffine.power as power
import maxaffine.stats as stats
from maxaffine import generative, ops

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TIME_BOUND = 20.0  # seconds per call (a few milliseconds each in practice)
MEMORY_BOUND = 4 << 30  # bytes of address space a call may add (a huge allocation fails)
REFUSE, EITHER, SAME, HUGE, NONFINITE = "refuse", "either", "same", "huge", "non-finite"
NAMESPACES = {"maxaffine": ma, "maxaffine.nn": mnn, "maxaffine.losses": losses,
              "maxaffine.orthogonal": orthogonal, "maxaffine.power": power,
              "maxaffine.stats": stats, "maxaffine.generative": generative,
              "maxaffine.conservation": conservation, "maxaffine.kernels": kernels}
_TMP = Path(tempfile.mkdtemp(prefix="maxaffine-fuzz-"))


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    shutil.rmtree(_TMP, ignore_errors=True)


# ------------------------------------------------------------------ the watchdog


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so no ``except Exception`` swallows it."""


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (SIGALRM: main thread, Linux)."""

    def fire(signum, frame):
        raise Hang(f"no result within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def memory_bound(extra: int) -> Iterator[None]:
    """Let the block grow the address space by at most ``extra`` bytes, so that an
    absurd allocation fails (MemoryError / RuntimeError) instead of exhausting the
    machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    limit = used + extra if hard == resource.RLIM_INFINITY else min(hard, used + extra)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# ------------------------------------------------------------------ shared objects
# Built once per process and never modified by a recipe (calls that modify their
# arguments get fresh ones).


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


@functools.cache
def mlp2() -> nn.Module:
    """MLP 2-8-8-3, float64 (partitions, power diagrams, distances)."""
    _seeded()
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 3)).double().eval()


@functools.cache
def mlp4() -> nn.Module:
    """MLP 4-8-3, float32."""
    _seeded(1)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@functools.cache
def cnn() -> nn.Module:
    """conv 3x3 (2 channels) - ReLU - max-pool 2 - linear, on (1, 6, 6), float32."""
    _seeded(2)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(18, 3)).eval()


@functools.cache
def graph2() -> ma.SplineGraph:
    return ma.trace(mlp2(), x2())


@functools.cache
def graph4() -> ma.SplineGraph:
    return ma.trace(mlp4(), x4())


@functools.cache
def graph_cnn() -> ma.SplineGraph:
    return ma.trace(cnn(), xc())


def x2() -> Tensor:
    return torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def x4() -> Tensor:
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(4))


def xc() -> Tensor:
    return torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(5))


def square() -> Tensor:
    return torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]],
                        dtype=torch.float64)


@functools.cache
def partition() -> ma.Partition:
    return ma.partition_plane(graph2(), square(), progress=False)


@functools.cache
def complex2() -> ma.Complex:
    return ma.partition_box(graph2(), -torch.ones(2, dtype=torch.float64),
                            torch.ones(2, dtype=torch.float64), progress=False)


@functools.cache
def regionset2() -> ma.RegionSet:
    return ma.regions_near(graph2(), x2()[0], 0.5, progress=False)


def _check_regionset(r: ma.RegionSet, kw: dict[str, Any]) -> None:
    need(r.num_regions >= 1 and r.packed.shape[0] == r.num_regions, "no region")
    need(r.interior_points.shape == (r.num_regions, *kw["x"].shape), "interior points' shape")
    need(torch.equal(ma.codes(r.graph, r.interior_points).packed(), r.packed),
         "an interior point has another code than its region")
    need(bool((r.margins > 0).all()), "an interior point is not strictly inside")


def gen_x2() -> Tensor:
    """Outputs of mlp2 seen as a generator (latent 2 -> 3), with noise."""
    with torch.no_grad():
        return mlp2()(x2()) + 0.1 * torch.randn(5, 3, dtype=torch.float64,
                                                generator=torch.Generator().manual_seed(7))


@functools.cache
def generator_posterior2() -> generative.GeneratorPosterior:
    return generative.posterior(mlp2(), gen_x2(), 0.5, bound=4.0)


@functools.cache
def em_fit2() -> generative.EMFit:
    return generative.fit_em(copy.deepcopy(mlp2()), gen_x2(), 0.5, 1, m_steps=2,
                             progress=False)


def _check_generator_posterior(r: generative.GeneratorPosterior, kw: dict[str, Any]) -> None:
    n = rows(kw)
    need(r.log_likelihood.shape == (n,) and r.weights.shape[0] == n, "one row per input")
    if n:
        need(bool(((r.weights.sum(1) - 1).abs() < 1e-9).all()), "weights do not sum to 1")


@functools.cache
def octahedron() -> ma.LevelSet:
    """The level set |x|_1 = 0.5 of a 3-D ReLU net (a closed triangle mesh)."""
    first, second = nn.Linear(3, 6).double(), nn.Linear(6, 1).double()
    with torch.no_grad():
        first.weight.copy_(torch.cat([torch.eye(3), -torch.eye(3)]))
        first.bias.zero_()
        second.weight.fill_(1.0)
        second.bias.fill_(-0.5)
    net = nn.Sequential(first, nn.ReLU(), second)
    return ma.partition_box(net, -torch.ones(3, dtype=torch.float64),
                            torch.ones(3, dtype=torch.float64), progress=False).level_set()


@functools.cache
def segment() -> ma.SegmentPartition:
    return ma.partition_segment(graph2(), x2()[0], x2()[1])


@functools.cache
def amap4() -> ma.AffineMap:
    return ma.affine_map(graph4(), x4())


@functools.cache
def amap_cnn() -> ma.AffineMap:
    return ma.affine_map(graph_cnn(), xc())


@functools.cache
def paused2() -> dict[str, Tensor]:
    """The live values of graph2's pause before its first nonlinearity, at x2()."""
    return graph2().run(x2(), stop="1").values


def _paused_cases(valid: dict[str, Any], draw: Draw) -> list[tuple[str, str, Any, str]]:
    """Corrupted live values for a resumed run."""
    (name, value), = valid["values"].items()
    return [("values", "nan", {name: value.masked_fill(value > 0, math.nan)}, REFUSE),
            ("values", "missing", {}, REFUSE),
            ("values", "unknown name", {name: value, "zz": value}, REFUSE),
            ("values", "wrong shape", {name: value[:, :3]}, REFUSE),
            ("values", "a tensor", value, REFUSE),
            ("values", "integer", {name: value.long()}, REFUSE),
            ("values", "empty batch", {name: value[:0]}, EITHER)]


def codes2() -> ma.Codes:
    return ma.codes(graph2(), x2())


@functools.cache
def pieces2() -> tuple[Tensor, Tensor]:
    return power.layer_pieces(graph2(), x2(), layer="3")


@functools.cache
def diagram() -> power.PowerDiagram:
    return ma.power_diagram(nn.Sequential(nn.Linear(2, 3), nn.ReLU()).double())


def posterior2() -> ma.VQPosterior:
    return ma.vq_posterior(graph2(), x2(), beta=0.5)


def other_codes() -> ma.Codes:
    """Codes of another model (other layers)."""
    return ma.codes(graph4(), x4())


def layer2() -> nn.Module:
    _seeded(6)
    return nn.Sequential(nn.Linear(2, 3), nn.ReLU()).double()


# ------------------------------------------------------------------ corruptions

Draw = Callable[..., Any]


@dataclass(frozen=True)
class Case:
    """One corrupted argument: ``slot`` gets ``value``; ``expect`` is the contract."""

    slot: str
    label: str
    value: Any
    expect: str


def _put(x: Tensor, pos: int, value: float) -> Tensor:
    y = x.detach().clone(memory_format=torch.contiguous_format)
    if y.numel():  # a value beyond the dtype's range becomes inf, as a cast would
        y.view(-1)[pos % y.numel()] = torch.tensor(value, dtype=torch.float64).to(y.dtype)
    return y


def _other_float(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == torch.float64 else torch.float64


def _strided(x: Tensor) -> Tensor:
    """The same values as a non-contiguous view."""
    if x.dim() == 0:
        return x.clone()
    return torch.stack([x, x], -1)[..., 0]


def _grow(x: Tensor, extra: int) -> Tensor:
    """One more entry along the last axis (a wrong feature size)."""
    return torch.cat([x, x[..., :1].expand(*x.shape[:-1], extra)], -1)


def _huge(x: Tensor, big: float, how: str, pos: int) -> Tensor:
    with torch.no_grad():
        if how == "scale":
            return x * big
        if how == "offset":
            return x + big
        return _put(x, pos, big)


def tensor_cases(kind: str, x: Tensor, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    """Corruptions of a tensor slot. ``kind``: ``batch`` (a model's input batch
    (N, *input_shape)), ``sample`` (one input, no batch axis) or ``tensor`` (any
    other tensor: shape corruptions may be accepted)."""
    strict = REFUSE if kind in ("batch", "sample") else EITHER
    floats = REFUSE if kind == "batch" else EITHER  # other float dtypes
    pos = draw(st.integers(0, 10**6), label="position")
    yield "nan", _put(x, pos, math.nan), NONFINITE
    yield "+inf", _put(x, pos, math.inf), NONFINITE
    yield "-inf", _put(x, pos, -math.inf), NONFINITE
    big = draw(st.sampled_from([1e30, 1e300, -1e300, 3e38]), label="huge")
    how = draw(st.sampled_from(["scale", "offset", "entry"]), label="how")
    yield f"huge({how} {big:g})", _huge(x, big, how, pos), HUGE
    if x.is_floating_point() and x.numel() and bool(x.abs().max() > 0):
        top = torch.finfo(x.dtype).max / 4  # finite, but sums of a few overflow
        yield "x scaled to the dtype's max / 4", x.detach() * (
            top / float(x.detach().abs().max())), HUGE
        yield "x + the dtype's max / 4", x.detach() + top, HUGE
    tiny = draw(st.sampled_from([1e-300, 1e-30, 1e-40, 5e-324]), label="tiny")
    yield f"tiny(x {tiny:g})", x.detach() * tiny, EITHER
    yield "zeros", torch.zeros_like(x), EITHER
    c = draw(st.sampled_from([1.0, -3.5, 1e6]), label="constant")
    yield f"constant({c:g})", torch.full_like(x, c), EITHER
    yield "non-contiguous", _strided(x.detach()), SAME
    if x.is_floating_point():
        yield "requires_grad", x.detach().clone().requires_grad_(True), SAME
    idt = draw(st.sampled_from([torch.int64, torch.int32, torch.uint8]), label="int dtype")
    yield f"{idt}", x.detach().round().to(idt), REFUSE if strict == REFUSE else EITHER
    yield "bool", x.detach() > 0, REFUSE if strict == REFUSE else EITHER
    half = draw(st.sampled_from([torch.float16, torch.bfloat16]), label="half dtype")
    yield f"{half}", x.detach().to(half), floats
    yield "complex", x.detach().to(torch.complex64), strict
    yield "list", x.detach().tolist(), REFUSE
    yield "str", draw(st.sampled_from(["x", ""]), label="str"), REFUSE
    yield "None", None, REFUSE
    if x.dim() >= 1:
        yield f"{_other_float(x.dtype)}", x.detach().to(_other_float(x.dtype)), floats
        yield "wrong size", _grow(x.detach(), draw(st.integers(1, 3), label="extra")), strict
    if kind == "batch":
        n = x.shape[0]
        yield "empty batch", x.detach()[:0], EITHER
        yield "no batch axis", x.detach()[0], REFUSE
        axis = draw(st.integers(0, x.dim()), label="axis")
        yield f"extra axis {axis}", x.detach().unsqueeze(axis), EITHER
        yield "one sample", x.detach()[:1], EITHER
        i = draw(st.integers(0, n - 1), label="row")
        yield "duplicated rows", x.detach()[i:i + 1].expand_as(x).clone(), EITHER
    elif kind == "sample":
        yield "batched", x.detach().unsqueeze(0), REFUSE
    else:
        if x.dim() >= 1:
            yield "empty", x.detach()[:0], EITHER
        yield "extra axis", x.detach().unsqueeze(0), EITHER
        if x.dim() >= 1 and x.numel():
            yield "0-d", x.detach().flatten()[0], EITHER


def count_cases(v: Any, draw: Draw, minimum: int = 1) -> Iterator[tuple[str, Any, str]]:
    """An integer slot (>= ``minimum``)."""
    yield "below minimum", minimum - 1, REFUSE
    yield "negative", -draw(st.integers(1, 10**9), label="negative"), REFUSE
    yield "fraction", 1.5, REFUSE
    yield "nan", math.nan, REFUSE
    yield "inf", math.inf, REFUSE
    yield "str", "3", REFUSE
    yield "bool", True, REFUSE
    yield "complex", 2j, REFUSE
    yield "list", [2], REFUSE
    yield "integral float", float(v) if isinstance(v, int) else 2.0, EITHER
    yield "huge", draw(st.sampled_from([2**31, 2**62, 10**18]), label="huge int"), EITHER
    if isinstance(v, int):
        yield "numpy int", np.int64(v), SAME
        yield "0-d tensor", torch.tensor(v), SAME
    yield "None", None, EITHER


def size_cases(v: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    """A layer size (constructors: no huge values, which would allocate)."""
    for label, value, expect in count_cases(v, draw):
        if label not in ("huge", "None"):
            yield label, value, expect
    yield "None", None, REFUSE


REAL_SPECS = {  # name: (minimum, strict, maximum)
    "pos": (0.0, True, None), "nonneg": (0.0, False, None), "unit": (0.0, False, 1.0),
    "any": (None, False, None), "tol": (1e-12, False, 1e-3), "slope": (0.0, False, 0.99),
}


def real_cases(v: Any, draw: Draw, spec: str) -> Iterator[tuple[str, Any, str]]:
    """A real number slot of range ``spec`` (``REAL_SPECS``)."""
    lo, strict, hi = REAL_SPECS[spec]

    def inside(x: float) -> str:
        ok = (lo is None or (x > lo if strict else x >= lo)) and (hi is None or x <= hi)
        return EITHER if ok else REFUSE

    yield "nan", math.nan, REFUSE
    yield "inf", math.inf, REFUSE
    yield "-inf", -math.inf, REFUSE
    yield "zero", 0.0, inside(0.0)
    neg = -draw(st.sampled_from([1e-3, 1.0, 1e3]), label="negative")
    yield f"negative({neg:g})", neg, inside(neg)
    big = draw(st.sampled_from([1e30, 1e300]), label="huge")
    yield f"huge({big:g})", big, HUGE if inside(big) == EITHER else REFUSE
    small = draw(st.sampled_from([1e-300, 5e-324, 1e-30]), label="tiny")
    yield f"tiny({small:g})", small, inside(small)
    if hi is not None:
        yield "above maximum", hi + 0.5, REFUSE
    yield "str", str(v), REFUSE
    yield "bool", True, REFUSE
    yield "complex", 1 + 1j, REFUSE
    yield "list", [v], REFUSE
    if isinstance(v, float):
        yield "numpy float", np.float64(v), SAME
        yield "0-d tensor", torch.tensor(v), SAME
    yield "None", None, EITHER


def choice_cases(v: str, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    yield "unknown", "nope", REFUSE
    if v.upper() != v:
        yield "upper case", v.upper(), REFUSE
    yield "bytes", v.encode(), REFUSE
    yield "int", 0, REFUSE
    yield "None", None, REFUSE


def flag_cases(v: bool, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    yield "str", draw(st.sampled_from(["no", "False", ""]), label="flag str"), REFUSE
    yield "None", None, REFUSE
    yield "list", [v], REFUSE
    yield "int", int(v), EITHER
    yield "numpy bool", np.bool_(v), EITHER


def layer_cases(v: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    """A layer (or output, unit, face) given by name or index."""
    yield "index too large", draw(st.sampled_from([99, 2**40]), label="index"), REFUSE
    yield "index too small", -99, REFUSE
    yield "unknown name", "nope", REFUSE
    yield "fraction", 1.5, REFUSE
    yield "nan", math.nan, REFUSE
    yield "bool", True, REFUSE
    yield "list", [v], REFUSE
    yield "None", None, EITHER
    if isinstance(v, int):
        yield "numpy int", np.int64(v), SAME
        yield "0-d tensor", torch.tensor(v), EITHER


def layers_cases(v: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    """A list of layer names or indices."""
    yield "empty", [], EITHER
    yield "unknown name", ["nope"], REFUSE
    yield "index too large", [99], REFUSE
    yield "str", "1", REFUSE
    yield "int", 0, REFUSE
    yield "fraction", [0.5], REFUSE
    yield "None entry", [None], REFUSE
    yield "repeated", [v[0], v[0]], EITHER
    yield "tuple", tuple(v), SAME
    yield "None", None, EITHER


def weights_cases(v: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    k = len(v)
    yield "nan", [math.nan] * k, REFUSE
    yield "inf", [math.inf] * k, REFUSE
    yield "negative", [-1.0] * k, REFUSE
    yield "all zero", [0.0] * k, REFUSE
    yield "too few", v[:-1], REFUSE
    yield "too many", [*v, 1.0], REFUSE
    yield "str", "ab", REFUSE
    yield "str entries", ["a"] * k, REFUSE
    yield "unknown layer", {"nope": 1.0}, REFUSE
    yield "huge", [1e300] * k, EITHER
    yield "tiny", [1e-300] * k, EITHER
    yield "tensor", torch.tensor(v), SAME
    yield "None", None, EITHER


def classes_cases(v: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    yield "one class", v[:1], REFUSE
    yield "repeated", [v[0], v[0]], REFUSE
    yield "negative", [-1, *v[1:]], REFUSE
    yield "out of range", [*v[:-1], 99], REFUSE
    yield "fractions", [0.5, 1.5], REFUSE
    yield "str", "ab", REFUSE
    yield "empty", [], REFUSE
    yield "bool tensor", torch.tensor([True, False]), REFUSE
    yield "wrong batch", torch.tensor([v] * 7), REFUSE
    yield "tensor", torch.tensor(v), SAME
    yield "None", None, EITHER


def model_cases(m: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    """A model slot (a module or its SplineGraph)."""
    k = draw(st.integers(0, 99), label="parameter")
    pos = draw(st.integers(0, 10**6), label="position")
    yield "NaN parameter", poisoned(m, math.nan, k, pos), NONFINITE
    yield "inf parameter", poisoned(m, math.inf, k, pos), NONFINITE
    big = draw(st.sampled_from([1e30, 1e150]), label="scale")
    yield f"parameters x {big:g}", scaled(m, big), HUGE
    yield "zero parameters", scaled(m, 0.0), EITHER
    yield "str", "model", REFUSE
    yield "None", None, REFUSE
    yield "tensor", torch.zeros(2, 2), REFUSE
    yield "function", lambda x: x, REFUSE
    module = m.model if isinstance(m, ma.SplineGraph) else m
    dtype = next(module.parameters()).dtype
    shape = m.input_shape if isinstance(m, ma.SplineGraph) else _input_shape(m)
    smooth = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 3), nn.GELU()).to(dtype)
    yield "not a spline (GELU)", smooth, REFUSE
    yield f"{_other_float(dtype)} model", copy.deepcopy(module).to(_other_float(dtype)), EITHER
    if isinstance(m, ma.SplineGraph):
        yield "its module", module, SAME
    else:
        yield "its graph", ma.trace(m, torch.zeros((1, *shape), dtype=dtype)), SAME


def _input_shape(m: nn.Module) -> tuple[int, ...]:
    first = next(x for x in m.modules() if isinstance(x, nn.Linear | nn.Conv2d))
    return (first.in_features,) if isinstance(first, nn.Linear) else (1, 6, 6)


def _float_tensors(module: nn.Module) -> list[Tensor]:
    return [t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]


def poisoned(m: Any, value: float, k: int, pos: int, weights_only: bool = False) -> Any:
    """A copy of model ``m`` (a module or a graph, traced while finite) with one
    parameter entry (of a weight, with ``weights_only``) set to ``value``."""
    module = copy.deepcopy(m.model if isinstance(m, ma.SplineGraph) else m)
    out: Any = module
    if isinstance(m, ma.SplineGraph):
        dtype = _float_tensors(module)[0].dtype
        out = ma.trace(module, torch.zeros((1, *m.input_shape), dtype=dtype))
    tensors = _float_tensors(module) if not weights_only else [
        t for name, t in module.named_parameters() if name.endswith("weight")]
    with torch.no_grad():
        t = tensors[k % len(tensors)]
        index = torch.unravel_index(torch.tensor(pos % t.numel()), t.shape)
        t[tuple(int(i) for i in index)] = value
    return out


def scaled(m: Any, factor: float) -> Any:
    """A copy of model ``m`` with every floating parameter multiplied by ``factor``."""
    module = copy.deepcopy(m.model if isinstance(m, ma.SplineGraph) else m)
    out: Any = module
    if isinstance(m, ma.SplineGraph):
        dtype = _float_tensors(module)[0].dtype
        out = ma.trace(module, torch.zeros((1, *m.input_shape), dtype=dtype))
    with torch.no_grad():
        for t in module.parameters():
            if t.is_floating_point():
                t.mul_(factor)
    return out


def module_cases(m: nn.Module, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    """A single layer (nn.Linear / nn.Conv2d / a small MASO layer)."""
    k = draw(st.integers(0, 9), label="parameter")
    pos = draw(st.integers(0, 10**6), label="position")
    yield "NaN weight", poisoned(m, math.nan, k, pos, weights_only=True), NONFINITE
    yield "inf weight", poisoned(m, math.inf, k, pos, weights_only=True), NONFINITE
    yield "zero weights", scaled(m, 0.0), EITHER
    big = draw(st.sampled_from([1e30, 1e150]), label="scale")
    yield f"weights x {big:g}", scaled(m, big), HUGE
    yield "tiny weights", scaled(m, 1e-300), EITHER
    yield "ReLU module", nn.ReLU(), REFUSE
    yield "str", "layer", REFUSE
    yield "None", None, REFUSE
    yield "tensor", torch.zeros(3, 3), REFUSE


def codes_cases(c: ma.Codes, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    yield "another model's codes", other_codes(), REFUSE
    yield "fewer samples", c.select([0, 1]), EITHER
    yield "no samples", c.select([]), EITHER
    yield "packed bits", c.packed(), REFUSE
    yield "str", "codes", REFUSE
    yield "None", None, EITHER


def domain_cases(p: Tensor, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    """A convex polygon (K, 2) of a plane."""
    pos = draw(st.integers(0, 7), label="corner")
    yield "nan corner", _put(p, pos, math.nan), REFUSE
    yield "inf corner", _put(p, pos, math.inf), REFUSE
    yield "two corners", p[:2], REFUSE
    yield "no corners", p[:0], REFUSE
    yield "three columns", torch.cat([p, p[:, :1]], 1), REFUSE
    yield "flat", p.flatten(), REFUSE
    yield "zero area (collinear)", torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), REFUSE
    yield "repeated corner", torch.cat([p[:1], p]), EITHER
    yield "non-convex", torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.2, 0.2], [0.0, 2.0]]), REFUSE
    yield "clockwise", p.flip(0), SAME
    yield "all equal", p[:1].expand(4, 2).clone(), REFUSE
    big = draw(st.sampled_from([1e8, 1e30, 1e300]), label="scale")
    yield f"huge (x {big:g})", p * big, HUGE
    yield f"far (+ {big:g})", p + big, HUGE
    small = draw(st.sampled_from([1e-12, 1e-100, 1e-300]), label="small")
    yield f"tiny (x {small:g})", p * small, EITHER
    yield "float32", p.float(), EITHER
    yield "int64", (p * 2).long(), EITHER
    yield "list", p.tolist(), EITHER
    yield "str", "square", REFUSE
    yield "None", None, REFUSE


def point_cases(x: Tensor, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    """One input of a slice / segment (no batch axis)."""
    yield from tensor_cases("sample", x, draw)
    yield "empty", x[..., :0], REFUSE


def path_cases(p: str, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    yield "unknown suffix", str(_TMP / "out.unknown"), EITHER
    yield "int", 3, REFUSE
    yield "None", None, REFUSE
    yield "Path", Path(p), EITHER


def dtype_cases(v: torch.dtype, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    yield "float16", torch.float16, REFUSE
    yield "int64", torch.int64, REFUSE
    yield "complex64", torch.complex64, REFUSE
    yield "str", "float64", REFUSE
    yield "None", None, REFUSE
    yield "float32", torch.float32, EITHER


def sizes_cases(v: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    """A shape-like argument (a sequence of positive ints)."""
    yield "zero entry", (0, *v[1:]), REFUSE
    yield "negative entry", (-1, *v[1:]), REFUSE
    yield "fraction entry", (1.5, *v[1:]), REFUSE
    yield "str", "ab", REFUSE
    yield "None entry", (None, *v[1:]), REFUSE
    yield "nan entry", (math.nan, *v[1:]), REFUSE
    yield "tensor", torch.tensor(v), EITHER
    yield "None", None, REFUSE


def pair_cases(v: Any, draw: Draw, minimum: int = 1) -> Iterator[tuple[str, Any, str]]:
    """A kernel size / stride / padding: an int or a pair."""
    yield "below minimum", minimum - 1, REFUSE
    yield "negative", -2, REFUSE
    yield "fraction", 1.5, REFUSE
    yield "triple", (v, v, v) if isinstance(v, int) else (*v, 1), REFUSE
    yield "empty", (), REFUSE
    yield "str", "2", REFUSE
    yield "nan", math.nan, REFUSE
    yield "pair", (v, v) if isinstance(v, int) else v, EITHER
    yield "None", None, EITHER


def message_cases(v: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    yield "None", None, EITHER
    yield "int", 3, EITHER
    yield "list of ints", [1, 2], EITHER
    yield "empty list", [], EITHER
    yield "tensor", torch.zeros(2), EITHER


def selector_cases(v: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    """Indices / a slice / a mask selecting samples or faces."""
    yield "out of range", [99], REFUSE
    yield "negative out of range", [-99], REFUSE
    yield "fractions", [0.5], REFUSE
    yield "float tensor", torch.tensor([0.5]), REFUSE
    yield "str", "a", REFUSE
    yield "nested", [[[0]]], EITHER
    yield "empty", [], EITHER
    yield "slice", slice(0, 2), EITHER
    yield "tensor", torch.tensor(v), SAME
    yield "None", None, EITHER


def center_cases(v: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    yield "anchor out of range", 99, REFUSE
    yield "nan", (math.nan, 0.0), REFUSE
    yield "inf", (math.inf, 0.0), REFUSE
    yield "huge", (1e300, 0.0), HUGE
    yield "three coordinates", (0.0, 0.0, 0.0), REFUSE
    yield "str", "a", REFUSE
    yield "None", None, REFUSE
    yield "bool", True, REFUSE
    yield "tensor", torch.tensor(v, dtype=torch.float64), SAME


def codes_dict_cases(v: dict[str, Tensor], draw: Draw) -> Iterator[tuple[str, Any, str]]:
    """Codes to freeze in SplineGraph.evaluate: name -> (N, *code_shape)."""
    name = next(iter(v))
    code = v[name]
    yield "unknown layer", {"nope": code}, REFUSE
    yield "wrong shape", {name: code[:, :1]}, REFUSE
    yield "no batch axis", {name: code[0]}, REFUSE
    yield "out of range", {name: torch.full_like(code, 7)}, REFUSE
    yield "negative", {name: torch.full_like(code, -1, dtype=torch.int64)}, REFUSE
    yield "float", {name: code.float() + 0.5}, REFUSE
    yield "list", {name: code.tolist()}, REFUSE
    yield "None entry", {name: None}, EITHER
    yield "not a dict", [code], REFUSE
    yield "int64", {name: code.long()}, SAME
    yield "empty dict", {}, SAME


def partition_cases(p: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    yield "segment partition", segment(), REFUSE
    yield "str", "partition", REFUSE
    yield "None", None, REFUSE


def target_cases(v: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    yield "registered already", nn.ReLU, REFUSE
    yield "None", None, REFUSE
    yield "int", 3, REFUSE
    yield "unhashable", [nn.ReLU], REFUSE


def rule_cases(v: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    yield "a module type", nn.ReLU, REFUSE
    yield "None", None, REFUSE
    yield "str", "ReLU", REFUSE
    yield "instance", ops.Rule, EITHER


def beta_cases(v: Any, draw: Draw) -> Iterator[tuple[str, Any, str]]:
    """beta: a number in [0, 1], or one per channel."""
    for label, value, expect in real_cases(v, draw, "unit"):
        yield label, value, EITHER if label == "list" else expect
    yield "per-channel list", [v, v], EITHER
    yield "tensor with nan", torch.tensor([v, math.nan]), REFUSE
    yield "empty list", [], REFUSE


CASES: dict[str, Callable[..., Iterator[tuple[str, Any, str]]]] = {
    "batch": functools.partial(tensor_cases, "batch"),
    "tensor": functools.partial(tensor_cases, "tensor"),
    "sample": point_cases,
    "count": count_cases,
    "count0": functools.partial(count_cases, minimum=0),
    "size": size_cases,
    "choice": choice_cases,
    "flag": flag_cases,
    "layer": layer_cases,
    "layers": layers_cases,
    "weights": weights_cases,
    "classes": classes_cases,
    "model": model_cases,
    "module": module_cases,
    "codes": codes_cases,
    "domain": domain_cases,
    "path": path_cases,
    "dtype": dtype_cases,
    "sizes": sizes_cases,
    "pair": pair_cases,
    "pair0": functools.partial(pair_cases, minimum=0),
    "message": message_cases,
    "selector": selector_cases,
    "center": center_cases,
    "codes_dict": codes_dict_cases,
    "partition": partition_cases,
    "target": target_cases,
    "rule": rule_cases,
    "beta": beta_cases,
    **{f"real:{spec}": functools.partial(real_cases, spec=spec) for spec in REAL_SPECS},
}


def corruptions(recipe: Recipe, valid: dict[str, Any], draw: Draw) -> list[Case]:
    """Every corruption of every slot of ``recipe``, one drawn value each, plus the
    recipe's own degenerate cases."""
    out = []
    for slot, kind in recipe.slots.items():
        for label, value, expect in CASES[kind](valid[slot], draw):
            out.append(Case(slot, label, value, recipe.expect.get(f"{slot}:{label}", expect)))
    if recipe.extra is not None:
        out += [Case(slot, label, value, recipe.expect.get(f"{slot}:{label}", expect))
                for slot, label, value, expect in recipe.extra(valid, draw)]
    return out


# ------------------------------------------------------------------ judging results


def _holds(value: Any, test: Callable[[Tensor], Tensor]) -> bool:
    """Whether an argument (a tensor, a float, a list of them, a model's parameters)
    has an entry passing ``test`` (e.g. ``torch.isnan``)."""
    if isinstance(value, Tensor):
        return (value.is_floating_point() or value.is_complex()) and bool(
            test(value.detach()).any())
    if isinstance(value, float):
        return bool(test(torch.tensor(value, dtype=torch.float64)))
    if isinstance(value, list | tuple):
        return any(_holds(v, test) for v in value)
    if isinstance(value, ma.SplineGraph):
        value = value.model
    if isinstance(value, nn.Module):
        return any(_holds(t, test) for t in _float_tensors(value))
    return False


def _nonfinite(value: Any) -> bool:
    return _holds(value, lambda t: ~torch.isfinite(t))


def _has_nan(value: Any) -> bool:
    return _holds(value, torch.isnan)


def leaves(obj: Any, path: str = "result", depth: int = 0) -> Iterator[tuple[str, Tensor]]:
    """Every number of a result, as (path, tensor): tensors, numbers, arrays, module
    parameters and buffers, and the fields and public properties of result objects."""
    if depth > 6 or obj is None or isinstance(obj, bool | str | bytes | type):
        return
    if isinstance(obj, Tensor):
        yield path, obj.detach()
    elif isinstance(obj, numbers.Real):
        yield path, torch.tensor(float(obj), dtype=torch.float64)
    elif isinstance(obj, np.ndarray) and obj.dtype.kind in "fiu":
        yield path, torch.from_numpy(np.asarray(obj, dtype=np.float64))
    elif isinstance(obj, ma.SplineGraph):
        return
    elif isinstance(obj, nn.Module):
        for name, t in [*obj.named_parameters(), *obj.named_buffers()]:
            yield f"{path}.{name}", t.detach()
        if type(obj).__module__.startswith("maxaffine"):
            yield from _properties(obj, path, depth)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, f"{path}[{k!r}]", depth + 1)
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from leaves(v, f"{path}[{i}]", depth + 1)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if f.name not in ("graph", "domain"):
                yield from leaves(getattr(obj, f.name), f"{path}.{f.name}", depth + 1)
        yield from _properties(obj, path, depth)


def _properties(obj: Any, path: str, depth: int) -> Iterator[tuple[str, Tensor]]:
    for name, attr in inspect.getmembers(type(obj)):
        if name.startswith("_") or not isinstance(attr, property | functools.cached_property):
            continue
        if isinstance(obj, nn.Module) and name in vars(nn.Module):
            continue
        yield from leaves(getattr(obj, name), f"{path}.{name}", depth + 1)


def _allowed(path: str, names: frozenset[str]) -> bool:
    return bool(set(re.split(r"[.\[\]']+", path)) & names)


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor{tuple(value.shape)} {value.dtype}"
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _same(result: Any, baseline: Any) -> str | None:
    got, want = list(leaves(result)), list(leaves(baseline))
    if [p for p, _ in got] != [p for p, _ in want]:
        return "returned a result of another structure than the valid call's"
    for (path, a), (_, b) in zip(got, want, strict=True):
        if path.endswith((".seconds", ".regions_per_second")):
            continue
        if a.shape != b.shape:
            return f"{path} has shape {tuple(a.shape)}, the valid call's {tuple(b.shape)}"
        if a.is_floating_point() or b.is_floating_point():
            a, b = a.double(), b.double()
            finite = b[torch.isfinite(b)]
            scale = 1.0 + float(finite.abs().max()) if finite.numel() else 1.0
            if not torch.allclose(a, b, rtol=1e-5, atol=1e-6 * scale, equal_nan=True):
                return f"{path} differs from the valid call's"
        elif not torch.equal(a, b):
            return f"{path} differs from the valid call's"
    return None


def _problems(recipe: Recipe, case: Case | None, result: Any, kwargs: dict[str, Any],
              baseline: Any) -> str | None:
    """Why ``result`` breaks the contract of ``case`` (None: it does not)."""
    expect = EITHER if case is None else case.expect
    if expect == REFUSE:
        return f"returned {type(result).__name__} instead of raising MaxAffineError"
    found = list(leaves(result))
    bad = [p for p, t in found if (t.is_floating_point() or t.is_complex())
           and not bool(torch.isfinite(t).all())]
    if expect == NONFINITE:
        if recipe.nonfinite == "refuse":
            return (f"returned {type(result).__name__} for non-finite data instead of raising "
                    "MaxAffineError")
        nan = case is not None and _has_nan(case.value)
        if nan and not any(bool(torch.isnan(t).any()) for p, t in found if p in bad):
            return "hid the NaN argument behind a NaN-free result"
        return None
    for path, t in found:
        if not (t.is_floating_point() or t.is_complex()):
            continue
        if expect == HUGE and recipe.nonfinite == "propagate":
            continue  # IEEE overflow arithmetic, as torch's own layers and losses
        if bool(torch.isnan(t).any()) and not _allowed(path, recipe.nan_ok):
            return f"NaN in {path} (from finite arguments)"
        if (bool(torch.isinf(t).any()) and expect != HUGE
                and not _allowed(path, recipe.inf_ok | recipe.nan_ok)):
            return f"inf in {path} (from arguments far from overflow)"
    if recipe.check is not None:
        try:
            recipe.check(result, kwargs)
        except AssertionError as err:
            return f"result fails its check: {err}"
    if expect == SAME and baseline is not None:
        return _same(result, baseline)
    return None


def judge(recipe: Recipe, case: Case | None, kwargs: dict[str, Any],
          baseline: Any = None, bound: float = TIME_BOUND) -> tuple[str | None, Any]:
    """Run ``recipe`` on ``kwargs`` under the watchdog; returns (the broken contract
    or None, the result)."""
    _seeded()
    start = time.perf_counter()
    result: Any = None
    try:
        with watchdog(bound), memory_bound(MEMORY_BOUND), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a MaxAffineWarning may accompany results
            try:
                result = recipe.call(**kwargs)
            except ma.MaxAffineError as err:
                if not str(err):
                    return "raised a MaxAffineError without a message", None
                return None, None
            except Exception as err:  # the contract: only MaxAffineError
                text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                return f"raised {type(err).__name__}: {text}", None
            try:
                problem = _problems(recipe, case, result, kwargs, baseline)
            except Exception as err:  # a result that cannot be read
                problem = f"result cannot be read: {type(err).__name__}: {err}"
    except Hang as err:
        return str(err), None
    finally:
        plt.close("all")
    elapsed = time.perf_counter() - start
    if elapsed > bound:
        return f"took {elapsed:.1f} s (bound {bound:g} s)", None
    return problem, result


# ------------------------------------------------------------------ curvature, conservation


@functools.cache
def vq_index2() -> ma.VQIndex:
    """An exhaustive index over mlp2's codes of x2 (its first ReLU layer)."""
    return ma.vq_index(mlp2(), x2(), layers=["1"], index="faiss")


# kernels have no model whose dtype inputs must match: other float dtypes are read as float64
KERNEL_DTYPES = {f"{slot}:torch.{t}": EITHER for slot in ("x1", "x2")
                 for t in ("float16", "float32", "bfloat16")}


def labels2() -> Tensor:
    return torch.arange(len(x2())) % 3


@functools.cache
def loss_hessian2() -> ma.LossHessian:
    return ma.loss_hessian(mlp2(), nn.functional.cross_entropy, x2(), labels2())


@functools.cache
def loss_hessian2_free() -> ma.LossHessian:
    """The matrix-free form (products only)."""
    return ma.loss_hessian(mlp2(), nn.functional.cross_entropy, x2(), labels2(), exact=False)


def _check_loss_hessian(r: ma.LossHessian, kw: dict[str, Any]) -> None:
    P = sum(p.numel() for p in kw["model"].parameters()) if isinstance(
        kw["model"], nn.Module) else r.num_parameters
    need(r.num_parameters == P, "one row per parameter")
    if r.exact:
        need(_finite(r.H) and bool(torch.allclose(r.G + r.NME, r.H, atol=1e-6, rtol=1e-6)),
             "H = G + NME")


def manifold_x() -> Tensor:
    """40 points on a curve in 3-D (a 1-D data manifold)."""
    t = torch.linspace(-1.0, 1.0, 40, dtype=torch.float64)
    return torch.stack([t, t**2, 0.5 * t], 1)


def mlp3() -> nn.Module:
    _seeded(3)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).double()


@functools.cache
def hessian_complexity3() -> ma.HessianComplexity:
    return ma.hessian_complexity(mlp3(), manifold_x(), tangent_dim=1, k=8)


def two_layer() -> nn.Module:
    _seeded(4)
    return nn.Sequential(nn.Linear(3, 2, bias=False), nn.ReLU(),
                         nn.Linear(2, 2, bias=False)).double()


def _check_complexity(r: ma.HessianComplexity, kw: dict[str, Any]) -> None:
    need(r.per_point.shape == (rows(kw),), "one value per point")
    need(bool((r.per_point >= 0).all()), "squared norms are >= 0")


# ------------------------------------------------------------------ the recipe table


@dataclass(frozen=True)
class Recipe:
    """A valid call of one public callable and the kinds of its argument slots.

    ``call(**args())`` is the valid call (``args`` builds fresh arguments);
    ``slots``: argument -> kind (a key of ``CASES``); ``check(result, kwargs)``
    asserts a result is consistent with its arguments; ``nonfinite``: ``refuse``
    or ``propagate`` (module docstring); ``inf_ok`` / ``nan_ok``: result
    fields documented to hold inf / NaN; ``expect``: per ``"slot:label"``, a
    contract other than the corruption's default; ``extra(valid, draw)``: the
    recipe's own cases (slot, label, value, expect), e.g. degenerate geometry."""

    name: str
    call: Callable[..., Any]
    args: Callable[[], dict[str, Any]]
    slots: dict[str, str] = field(default_factory=dict)
    check: Callable[[Any, dict[str, Any]], None] | None = None
    nonfinite: str = "refuse"
    inf_ok: frozenset[str] = frozenset()
    nan_ok: frozenset[str] = frozenset()
    expect: dict[str, str] = field(default_factory=dict)
    extra: Callable[[dict[str, Any], Draw], list[tuple[str, str, Any, str]]] | None = None

    @property
    def public_name(self) -> str:
        return self.name.split("[")[0]


def R(name: str, call: Callable[..., Any], args: Callable[[], dict[str, Any]],
      slots: dict[str, str] | None = None, **options: Any) -> Recipe:
    for key in ("inf_ok", "nan_ok"):
        if key in options:
            options[key] = frozenset(options[key])
    return Recipe(name, call, args, slots or {}, **options)


def need(condition: bool, message: str = "") -> None:
    if not condition:
        raise AssertionError(message)


def rows(kw: dict[str, Any], key: str = "x") -> int:
    return kw[key].shape[0]


def _finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _check_affine(r: ma.AffineMap, kw: dict[str, Any]) -> None:
    x = kw["x"]
    need(r.A.shape == (x.shape[0], r.B.shape[1], *x.shape[1:]), f"A {tuple(r.A.shape)}")
    need(r.B.shape == r.output.shape == (x.shape[0], r.num_outputs), f"B {tuple(r.B.shape)}")
    if _finite(r.A) and _finite(r.B) and x.numel():
        rebuilt = r.reconstruct()
        scale = 1.0 + float((r.A.flatten(2).abs() * x.flatten(1).abs().unsqueeze(1)).sum(2).max())
        need(bool(((rebuilt - r.output).abs() <= 1e-4 * scale).all()), "A x + B != f(x)")


def _check_codes(r: ma.Codes, kw: dict[str, Any]) -> None:
    need(len(r) == rows(kw), f"{len(r)} rows")
    need(r.packed().shape[0] == rows(kw) and r.region_ids().shape == (rows(kw),))


def _check_distance(r: Tensor, kw: dict[str, Any]) -> None:
    nx = len(kw["x"])
    ny = nx if kw.get("y") is None else len(kw["y"])
    shape = (nx, ny) if not kw.get("per_layer") else (r.shape[0], nx, ny)
    need(r.shape == shape, f"shape {tuple(r.shape)}, expected {shape}")
    need(bool(((r >= 0) & (r <= 1 + 1e-6)).all()), "distances outside [0, 1]")


def _check_knn(r: tuple[Tensor, Tensor], kw: dict[str, Any]) -> None:
    d, i = r
    k = int(kw["k"]) if kw.get("k") is not None else 1
    need(d.shape == i.shape == (len(kw["x"]), k), f"shapes {tuple(d.shape)}, {tuple(i.shape)}")
    need(bool((d.diff(dim=1) >= 0).all()), "neighbours not sorted")


def _check_posterior(r: ma.VQPosterior, kw: dict[str, Any]) -> None:
    need(isinstance(r, ma.VQPosterior), f"a {type(r).__name__}")
    for t in r.values:
        need(t.shape[0] == rows(kw), f"shape {tuple(t.shape)}")
        need(bool(((t >= 0) & (t <= 1)).all()), "posterior outside [0, 1]")
        need(bool(((t.sum(-1) - 1).abs() < 1e-4).all()), "posterior does not sum to 1")


def _check_module_forward(shape: tuple[int, ...], dtype: torch.dtype = torch.float32
                          ) -> Callable[[Any, dict[str, Any]], None]:
    def check(m: nn.Module, kw: dict[str, Any]) -> None:
        if any(float(t.abs().max()) > 1e20 for t in _float_tensors(m) if t.numel()):
            return  # huge parameters: the forward may overflow
        out = m(torch.randn(2, *shape, dtype=dtype, generator=torch.Generator().manual_seed(0)))
        need(_finite(out), "forward of a valid input is not finite")

    return check


def _check_partition(r: ma.Partition, kw: dict[str, Any]) -> None:
    need(r.num_regions >= 1, "no region")
    area = float(r.areas.sum())
    need(abs(area - r.domain.area) <= 1e-6 * r.domain.area, f"areas sum to {area:g}, "
         f"domain {r.domain.area:g}")


def _check_complex(r: ma.Complex, kw: dict[str, Any]) -> None:
    need(r.num_regions >= 1, "no region")
    need(r.euler_characteristic == 1, f"Euler characteristic {r.euler_characteristic}")
    vol = float(r.volumes.sum())
    if "lower" in kw and math.isfinite(vol):
        lo = torch.as_tensor(kw["lower"]).double()
        hi = torch.as_tensor(kw["upper"]).double()
        box = float((hi - lo).prod())
        need(abs(vol - box) <= 1e-6 * box, f"volumes sum to {vol:g}, box {box:g}")


def _check_segment(r: ma.SegmentPartition, kw: dict[str, Any]) -> None:
    t = r.breakpoints
    need(float(t[0]) == 0.0 and float(t[-1]) == 1.0 and bool((t.diff() > 0).all()),
         "breakpoints not increasing from 0 to 1")
    need(r.slopes.shape == r.offsets.shape == (r.num_regions, 3))


def _check_json(r: str, kw: dict[str, Any]) -> None:
    json.loads(r)


def _valid_extra_inputs(valid: dict[str, Any], draw: Draw, slot: str, other: str
                        ) -> list[tuple[str, str, Any, str]]:
    """Degenerate segments: ``slot`` equal to ``other``, or next to it."""
    x = valid[other]
    return [(slot, f"equal to {other}", x.clone(), REFUSE),
            (slot, f"{other} + 1e-300", x + 1e-300, EITHER),
            (slot, f"{other} + 1 ulp", torch.nextafter(x, x + 1), EITHER)]


def _slice_extra(valid: dict[str, Any], draw: Draw) -> list[tuple[str, str, Any, str]]:
    x1, x2 = valid["x1"], valid["x2"]
    t = draw(st.sampled_from([-1.0, 0.5, 2.0, 1e6]), label="collinear t")
    noise = draw(st.sampled_from([1e-14, 1e-9, 1e-6]), label="noise")
    line = x1 + t * (x2 - x1)
    return [("x2", "equal to x1", x1.clone(), REFUSE),
            ("x3", "equal to x1", x1.clone(), REFUSE),
            ("x3", f"collinear (t={t:g})", line, REFUSE),
            ("x3", f"nearly collinear ({noise:g})", line + noise * torch.randn_like(line),
             EITHER)]


def _slice_domains(valid: dict[str, Any], draw: Draw) -> list[tuple[str, str, Any, str]]:
    """Slices of the CNN's input space: another input shape, tiny, far, huge windows."""
    plane = ma.Slice.through(*xc())
    small = draw(st.sampled_from([1e-6, 1e-12]), label="window")
    far = draw(st.sampled_from([1e4, 1e8]), label="far")
    scale = draw(st.sampled_from([1e6, 1e30]), label="images x")
    return [("domain", "slice of 2-D inputs", ma.Slice.square(), REFUSE),
            ("domain", f"window of {small:g}", plane.zoom(1, small), EITHER),
            ("domain", f"window at {far:g}", plane.zoom((far, -far), 0.1), EITHER),
            ("domain", f"images x {scale:g}", ma.Slice.through(*(xc() * scale)).zoom(0, 0.3),
             HUGE),
            ("domain", "not a slice", xc()[0], REFUSE)]


def _slice_ctor_extra(valid: dict[str, Any], draw: Draw) -> list[tuple[str, str, Any, str]]:
    u = valid["u"]
    return [("v", "parallel to u", 2 * u, REFUSE), ("v", "zero", torch.zeros_like(u), REFUSE),
            ("u", "zero", torch.zeros_like(u), REFUSE),
            ("v", "nearly parallel", u + 1e-15 * valid["v"], REFUSE)]


def _image_too_small(slot: str) -> Callable[..., list[tuple[str, str, Any, str]]]:
    def extra(valid: dict[str, Any], draw: Draw) -> list[tuple[str, str, Any, str]]:
        return [(slot, "smaller than a window", valid[slot][..., :0, :0].clone(), REFUSE)]

    return extra


def _features(slot: str) -> Callable[..., list[tuple[str, str, Any, str]]]:
    def extra(valid: dict[str, Any], draw: Draw) -> list[tuple[str, str, Any, str]]:
        return [(slot, "wrong feature size", _grow(valid[slot], 1), REFUSE)]

    return extra


def _codes_extra(valid: dict[str, Any], draw: Draw) -> list[tuple[str, str, Any, str]]:
    v = valid["values"]
    return [("values", "list", v.tolist(), REFUSE), ("values", "0-d", v[0, 0], REFUSE),
            ("values", "float", v.float(), EITHER), ("values", "empty batch", v[:0], EITHER),
            ("values", "out of range", v + 5, REFUSE), ("values", "None", None, REFUSE)]


def _register_and_forget(target: Any, rule: Any) -> None:
    """``maxaffine.register_op``, with the global registry restored afterwards (other
    tests in this process enumerate it)."""
    before = set(ops._REGISTRY)
    try:
        ma.register_op(target, rule)
    finally:
        for key in [k for k in ops._REGISTRY if k not in before]:
            del ops._REGISTRY[key]


def _fresh_target() -> dict[str, Any]:
    fresh = type("FuzzModule", (nn.Module,), {"forward": lambda self, x: x})
    return {"target": fresh, "rule": ops.ReLU}


def _sc(prior: str = "exponential") -> mnn.SparseCoding:
    _seeded(7)
    return mnn.SparseCoding(6, 4, prior)


def _scc() -> mnn.SparseCodingConv2d:
    _seeded(8)
    return mnn.SparseCodingConv2d(1, 4, 3, padding=1)


def _u() -> Tensor:
    return torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(9))


def _img() -> Tensor:
    return torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(10))


def _seq() -> Tensor:
    return torch.randn(2, 2, 7, generator=torch.Generator().manual_seed(11))


def _pieces() -> Tensor:
    return torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(12))


def _stat(kind: str) -> Any:
    if kind == "lc":
        return ma.local_complexity(graph2(), x2(), 0.5)
    if kind == "bd":
        return ma.boundary_distance(graph2(), x2())
    if kind == "rd":
        return ma.region_density(graph2(), x2()[:2], x2()[2:4])
    return ma.boundary_curvature(partition())


POSTERIOR = dict(check=_check_posterior)
PROPAGATE = dict(nonfinite="propagate")

@functools.cache
def generator2() -> nn.Module:
    """An expansive generator: latent 2 -> 8 -> 6 (ReLU), float64."""
    _seeded(3)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 6)).double().eval()


def outputs2() -> Tensor:
    with torch.no_grad():
        return generator2()(torch.randn(3, 2, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(1)))


@functools.cache
def inversion2() -> generative.Inversion:
    return generative.invert(generator2(), outputs2())


def _check_inversion(r: generative.Inversion, kw: dict[str, Any]) -> None:
    n = kw["y"].shape[0]
    need(r.z.shape == (n, 2) and r.residual.shape == r.success.shape == (n,), "shapes")
    need(r.output.shape == kw["y"].shape and r.code.shape[0] == n, "output / code shape")
    need(bool((r.residual >= 0).all()), "negative residual")


def _mask_cases(valid: dict[str, Any], draw: Draw) -> list[tuple[str, str, Any, str]]:
    y = valid["y"]
    half = torch.rand(y.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    half[:, 0] = True
    none = half.clone()
    none[draw(st.integers(0, len(y) - 1), label="row")] = False
    return [("mask", "half observed", half, EITHER),
            ("mask", "shared by all outputs", half[0], EITHER),
            ("mask", "an output with nothing observed", none, REFUSE),
            ("mask", "all False", torch.zeros_like(half), REFUSE),
            ("mask", "float", half.double(), REFUSE),
            ("mask", "int", half.long(), REFUSE),
            ("mask", "wrong shape", half[:, :3], REFUSE),
            ("mask", "list", half.tolist(), REFUSE),
            ("mask", "str", "all", REFUSE)]


RECIPES: list[Recipe] = [
    # ---------------------------------------------------------------- tracing, graphs
    R("trace", ma.trace, lambda: dict(model=mlp4(), example_input=x4()),
      {"model": "model", "example_input": "batch"},
      check=lambda r, kw: need(r.input_shape == tuple(kw["example_input"].shape[1:]))),
    R("SplineGraph.evaluate", lambda graph, x, codes, record: graph.evaluate(x, codes, record),
      lambda: dict(graph=graph2(), x=x2(), codes=dict(codes2().items()), record=True),
      {"x": "batch", "codes": "codes_dict", "record": "flag"},
      check=lambda r, kw: need(r.output.shape == (rows(kw), 3))),
    R("SplineGraph.run", lambda graph, x, until, record: graph.run(x, until=until,
                                                                    record=record),
      lambda: dict(graph=graph2(), x=x2(), until="3", record=True),
      {"x": "batch", "until": "layer", "record": "flag"},
      check=lambda r, kw: need((r.output is None) == (kw["until"] is not None))),
    R("SplineGraph.run[resume]", lambda values, start, stop: graph2().run(
        values, start=start, stop=stop, keep_codes=False),
      lambda: dict(values=paused2(), start="1", stop="3"),
      {"start": "layer", "stop": "layer"}, extra=_paused_cases,
      check=lambda r, kw: need(set(r.values) == ({n for n, _ in graph2().pause("3").live}
                                                 if kw["stop"] is not None else set()))),
    R("SplineGraph.pause", lambda layer: graph2().pause(layer), lambda: dict(layer="3"),
      {"layer": "layer"}),
    R("SplineGraph.between", lambda start, stop: graph2().between(start, stop),
      lambda: dict(start="1", stop="3"), {"start": "layer", "stop": "layer"}),
    R("Between.source", lambda x: graph2().between("1", "3").source(x),
      lambda: dict(x=x2()), {"x": "batch"},
      check=lambda r, kw: need(r.shape == (rows(kw), 8))),
    R("Between.__call__", lambda h: graph2().between("1", "3")(h),
      lambda: dict(h=torch.rand(5, 8, dtype=torch.float64)), {"h": "batch"},
      check=lambda r, kw: need(r[0].shape == (rows(kw, "h"), 8))),
    R("SplineGraph.split_output", lambda t, dim: graph2().split_output(t, dim),
      lambda: dict(t=torch.randn(4, 3), dim=1), {"t": "tensor", "dim": "layer"},
      expect={"dim:None": REFUSE}, **PROPAGATE),
    R("SplineGraph.layer", lambda key: graph2().layer(key), lambda: dict(key="3"),
      {"key": "layer"}, expect={"key:None": REFUSE}),
    R("SplineGraph.layer_index", lambda key: graph2().layer_index(key), lambda: dict(key=-1),
      {"key": "layer"}, check=lambda r, kw: need(r in (0, 1)),
      expect={"key:None": REFUSE}),
    R("SplineGraph.summary", lambda: graph_cnn().summary(), dict),
    R("SplineGraph.table", lambda: graph_cnn().table(), dict,
      check=lambda r, kw: need("MaxPool2d" in r)),
    R("SplineGraph.to_json", lambda: graph_cnn().to_json(), dict, check=_check_json),
    R("SplineGraph.plot", lambda model: ma.trace(model, x4()).plot(), lambda: dict(model=mlp4()),
      extra=lambda valid, draw: [("model", "affine", nn.Linear(4, 2), EITHER)]),
    R("Evaluation.summary", lambda x: graph2().evaluate(x).summary(), lambda: dict(x=x2()),
      {"x": "batch"}),
    R("Evaluation.to_json", lambda: graph2().run(x2(), until="3").to_json(), dict,
      check=_check_json),
    R("Evaluation.plot", lambda x: graph_cnn().evaluate(x).plot(), lambda: dict(x=xc()),
      {"x": "batch"}),
    R("supported_ops", ma.supported_ops, dict,
      check=lambda r, kw: need(set(r) == {"affine", "nonlinearity"})),
    R("register_op", _register_and_forget, _fresh_target, {"target": "target", "rule": "rule"}),
    # ---------------------------------------------------------------- affine maps
    R("affine_map", lambda model, x, exact, mode, products_per_pass: ma.affine_map(
        model, x, exact=exact, mode=mode, products_per_pass=products_per_pass),
      lambda: dict(model=mlp4(), x=x4(), exact=True, mode="auto", products_per_pass=2),
      {"model": "model", "x": "batch", "exact": "flag", "mode": "choice",
       "products_per_pass": "count"}, check=_check_affine),
    R("affine_map[cnn]", lambda model, x: ma.affine_map(model, x),
      lambda: dict(model=graph_cnn(), x=xc()), {"model": "model", "x": "batch"},
      check=_check_affine),
    R("AffineMap.templates", lambda c: amap4().templates(c), lambda: dict(c=1),
      {"c": "layer"}, check=lambda r, kw: need(r.shape == (5, 4)),
      expect={"c:list": EITHER}),
    R("AffineMap.reconstruct", lambda x: amap4().reconstruct(x), lambda: dict(x=x4()),
      {"x": "batch"}, **PROPAGATE, expect={"x:None": EITHER},
      check=lambda r, kw: need(r.shape == (5 if kw["x"] is None else rows(kw), 3))),
    R("AffineMap.plot", lambda n, classes: amap_cnn().plot(n=n, classes=classes),
      lambda: dict(n=2, classes=[0, 2]), {"n": "count", "classes": "classes"},
      expect={"classes:one class": EITHER, "classes:repeated": EITHER,
              "classes:negative": EITHER, "classes:empty": EITHER}),
    R("AffineMap.to_json", lambda: amap4().to_json(), dict, check=_check_json),
    R("AffineMap.summary", lambda x: ma.affine_map(mlp4(), x).summary(), lambda: dict(x=x4()),
      {"x": "batch"}, check=lambda r, kw: need(r["samples"] == rows(kw))),
    R("AffineMap.save", lambda path: amap4().save(path),
      lambda: dict(path=str(_TMP / "amap.pt")), {"path": "path"}),
    # ---------------------------------------------------------------- codes
    R("codes", ma.codes, lambda: dict(model=mlp4(), x=x4()),
      {"model": "model", "x": "batch"}, check=_check_codes),
    R("codes[cnn]", ma.codes, lambda: dict(model=graph_cnn(), x=xc()),
      {"model": "model", "x": "batch"}, check=_check_codes),
    R("Codes", lambda values: ma.Codes(("a",), (values,), (2,), (1,)),
      lambda: dict(values=torch.zeros(3, 4, dtype=torch.uint8)), extra=_codes_extra),
    R("Codes.hamming", lambda other, normalized: codes2().hamming(other, normalized),
      lambda: dict(other=codes2(), normalized=True), {"other": "codes", "normalized": "flag"},
      expect={"other:fewer samples": REFUSE, "other:no samples": REFUSE,
              "other:None": REFUSE}),
    R("Codes.region_ids", lambda layers: codes2().region_ids(layers),
      lambda: dict(layers=["1"]), {"layers": "layers"},
      check=lambda r, kw: need(r.shape == (5,))),
    R("Codes.packed", lambda layers: codes2().packed(layers), lambda: dict(layers=[0, "3"]),
      {"layers": "layers"}, check=lambda r, kw: need(r.shape[0] == 5)),
    R("Codes.select", lambda index: codes2().select(index), lambda: dict(index=[0, 2]),
      {"index": "selector"}),
    R("Codes.__getitem__", lambda key: codes2()[key], lambda: dict(key="3"), {"key": "layer"},
      expect={"key:None": REFUSE}),
    R("Codes.items", lambda: list(codes2().items()), dict),
    R("Codes.as_dict", lambda: codes2().as_dict(), dict),
    R("Codes.byte_slices", lambda: codes2().byte_slices(), dict),
    R("Codes.to_json", lambda: codes2().to_json(), dict, check=_check_json),
    R("Codes.summary", lambda x: ma.codes(graph_cnn(), x).summary(), lambda: dict(x=xc()),
      {"x": "batch"}),
    R("Codes.plot", lambda x: ma.codes(graph2(), x).plot(), lambda: dict(x=x2()),
      {"x": "batch"}),
    # ---------------------------------------------------------------- distances
    R("vq_distance", lambda model, x, y, layers, weights, per_layer: ma.vq_distance(
        model, x, y, layers=layers, weights=weights, per_layer=per_layer),
      lambda: dict(model=mlp2(), x=x2(), y=x2()[:3], layers=["1", 1], weights=[1.0, 2.0],
                   per_layer=False),
      {"model": "model", "x": "batch", "y": "batch", "layers": "layers",
       "weights": "weights", "per_layer": "flag"}, check=_check_distance,
      expect={"layers:empty": REFUSE, "y:None": EITHER}),
    R("vq_distance[codes]", lambda x, y: ma.vq_distance(None, x, y),
      lambda: dict(x=codes2(), y=codes2().select([0, 1])), {"x": "codes", "y": "codes"},
      check=_check_distance, expect={"x:None": REFUSE, "y:None": EITHER}),
    R("vq_knn", lambda model, x, y, k, queries_per_block, exclude_self: ma.vq_knn(
        model, x, y, k=k, exclude_self=exclude_self, queries_per_block=queries_per_block),
      lambda: dict(model=graph2(), x=x2(), y=x2()[:4], k=2, queries_per_block=2,
                   exclude_self=False),
      {"model": "model", "x": "batch", "y": "batch", "k": "count", "queries_per_block": "count",
       "exclude_self": "flag"}, check=_check_knn,
      expect={"exclude_self:None": EITHER, "y:None": EITHER}),
    R("vq_distance[faiss]", lambda model, x, y, weights, backend: ma.vq_distance(
        model, x, y, weights=weights, backend=backend),
      lambda: dict(model=mlp2(), x=x2(), y=x2()[:3], weights=[1.0, 2.0], backend="faiss"),
      {"model": "model", "x": "batch", "y": "batch", "weights": "weights",
       "backend": "choice"}, check=_check_distance, expect={"y:None": EITHER}),
    R("vq_knn[faiss]", lambda model, x, y, k, index: ma.vq_knn(model, x, y, k=k, index=index),
      lambda: dict(model=graph2(), x=x2(), y=x2()[:4], k=2, index="faiss"),
      {"model": "model", "x": "batch", "y": "batch", "k": "count", "index": "choice"},
      check=_check_knn, expect={"y:None": EITHER}),
    R("vq_knn[faiss-ivf]", lambda x, y, k: ma.vq_knn(None, x, y, k=k, index="faiss-ivf"),
      lambda: dict(x=codes2(), y=codes2().select([0, 1, 2]), k=2),
      {"x": "codes", "y": "codes", "k": "count"},
      check=_check_knn, expect={"x:None": REFUSE, "y:None": EITHER}),
    R("vq_index", lambda model, y, layers, index: ma.vq_index(model, y, layers=layers,
                                                              index=index),
      lambda: dict(model=mlp2(), y=x2(), layers=["1", 1], index="faiss-ivf"),
      {"model": "model", "y": "batch", "layers": "layers", "index": "choice"},
      check=lambda r, kw: need(r.num_references == rows(kw, "y"), "one entry per reference"),
      expect={"y:empty batch": REFUSE, "layers:None": EITHER}),
    R("VQIndex.search", lambda x, k, queries_per_block: vq_index2().search(
        x, k, queries_per_block=queries_per_block),
      lambda: dict(x=x2(), k=2, queries_per_block=2),
      {"x": "batch", "k": "count", "queries_per_block": "count"}, check=_check_knn),
    R("VQIndex.list_sizes", lambda: vq_index2().list_sizes(), dict),
    R("VQIndex.summary", lambda: vq_index2().summary(), dict),
    R("VQIndex.to_json", lambda: vq_index2().to_json(), dict, check=_check_json),
    R("VQIndex.plot", lambda: vq_index2().plot(), dict),
    # ---------------------------------------------------------------- datasets
    R("scan", lambda model, data, measures, labels, batch_size, radius, out: ma.scan(
        model, data, measures, labels=labels, batch_size=batch_size, radius=radius,
        n_directions=2, out=out, progress=False),
      lambda: dict(model=mlp2(), data=x2(), measures=("codes", "region", "prediction",
                                                       "local_complexity"),
                   labels=torch.arange(len(x2())), batch_size=2, radius=0.1,
                   out=str(_TMP / "scan.parquet")),
      {"model": "model", "data": "batch", "labels": "tensor", "batch_size": "count",
       "radius": "real:pos", "out": "path"},
      check=lambda r, kw: need(len(r) == len(kw["data"]), "one row per input"),
      # integer labels cannot hold NaN / inf: those corruptions stay finite
      expect={"labels:None": EITHER, "labels:empty batch": REFUSE, "labels:nan": EITHER,
              "labels:+inf": EITHER, "labels:-inf": EITHER, "out:None": EITHER,
              "radius:None": REFUSE}),
    R("partition_many", lambda model, slices, dtype, tol: ma.partition_many(
        model, slices, progress=False, dtype=dtype, tol=tol),
      lambda: dict(model=mlp2(), slices=[ma.Slice.square(-1, 1), square()],
                   dtype=torch.float64, tol=1e-10),
      {"model": "model", "dtype": "dtype", "tol": "real:tol"},
      check=lambda r, kw: need(len(r) == len(kw["slices"]) and all(
          isinstance(p, ma.Partition) for p in r), "one partition per slice"),
      extra=lambda valid, draw: [("slices", "empty", [], EITHER),
                                 ("slices", "a str", "square", REFUSE),
                                 ("slices", "None inside", [None], REFUSE),
                                 ("slices", "a bad polygon", [torch.zeros(2, 2)], REFUSE)]),
    # ---------------------------------------------------------------- inference
    R("vq_posterior", lambda model, x, layer, beta: ma.vq_posterior(model, x, layer=layer,
                                                                    beta=beta),
      lambda: dict(model=mlp2(), x=x2(), layer="3", beta=0.5),
      {"model": "model", "x": "batch", "layer": "layer", "beta": "real:unit"}, **POSTERIOR),
    R("vq_posterior[beta-vq]", lambda model, x, layer: ma.vq_posterior(model, x, layer=layer),
      lambda: dict(model=ma.soften(mlp2(), 0.5), x=x2(), layer="1"),
      {"x": "batch", "layer": "layer"}, **POSTERIOR),
    R("VQPosterior.__getitem__", lambda layer: posterior2()[layer], lambda: dict(layer="3"),
      {"layer": "layer"}, expect={"layer:None": REFUSE}),
    R("VQPosterior.items", lambda: list(posterior2().items()), dict),
    R("VQPosterior.as_dict", lambda: posterior2().as_dict(), dict),
    R("VQPosterior.summary", lambda: posterior2().summary(), dict),
    R("VQPosterior.to_json", lambda: posterior2().to_json(), dict, check=_check_json),
    R("VQPosterior.plot", lambda ax, bins: posterior2().plot(ax, bins=bins),
      lambda: dict(ax=None, bins=10), {"bins": "count"}),
    R("soften", lambda model, beta, share_weights, learnable: ma.soften(
        model, beta, share_weights=share_weights, learnable=learnable),
      lambda: dict(model=mlp2(), beta=0.5, share_weights=False, learnable=True),
      {"model": "model", "beta": "real:unit", "share_weights": "flag", "learnable": "flag"},
      check=lambda r, kw: _check_module_forward((2,), _float_tensors(r)[0].dtype)(r, kw),
      **PROPAGATE,
      expect={"beta:zero": REFUSE, "model:its graph": EITHER,
              "model:not a spline (GELU)": EITHER}),
    # ---------------------------------------------------------------- power diagrams
    R("power_cells", lambda model, x, layer, input_space: ma.power_cells(
        model, x, layer=layer, input_space=input_space),
      lambda: dict(model=mlp2(), x=x2(), layer="3", input_space=False),
      {"model": "model", "x": "batch", "layer": "layer", "input_space": "flag"},
      check=lambda r, kw: need(r.mu.shape == r.points.shape and r.rad.shape == (rows(kw),)),
      expect={"layer:None": REFUSE}),
    R("power_cells[cnn]", lambda model, x: ma.power_cells(model, x, layer=1),
      lambda: dict(model=graph_cnn(), x=xc()), {"model": "model", "x": "batch"},
      check=lambda r, kw: need(r.mu.shape == r.points.shape and r.rad.shape == (rows(kw),))),
    R("PowerCells.power", lambda: ma.power_cells(graph2(), x2(), layer=0).power(), dict),
    R("PowerCells.summary", lambda x: ma.power_cells(graph2(), x, layer=1).summary(),
      lambda: dict(x=x2()), {"x": "batch"}),
    R("PowerCells.to_json", lambda: ma.power_cells(graph_cnn(), xc(), layer=1).to_json(), dict,
      check=_check_json),
    R("PowerCells.plot", lambda model, x, bins: ma.power_cells(model, x, layer=0).plot(
        bins=bins), lambda: dict(model=graph2(), x=x2(), bins=10),
      {"model": "model", "x": "batch", "bins": "count"}),
    R("layer_pieces", lambda model, x, layer, input_space: power.layer_pieces(
        model, x, layer=layer, input_space=input_space),
      lambda: dict(model=graph2(), x=x2(), layer=1, input_space=True),
      {"model": "model", "x": "batch", "layer": "layer", "input_space": "flag"},
      check=lambda r, kw: need(r[0].shape == (rows(kw), 8, 2, 2)),
      expect={"layer:None": REFUSE}),
    R("power_diagram", lambda maso, max_cells: ma.power_diagram(
        maso, max_cells=max_cells), lambda: dict(maso=layer2(), max_cells=64),
      {"maso": "module", "max_cells": "count"},
      check=lambda r, kw: need(r.codes.shape == (8, 3) and r.mu.shape == (8, 2))),
    R("power_diagram[pieces]", lambda A, B: ma.power_diagram((A, B)),
      lambda: dict(A=pieces2()[0][0], B=pieces2()[1][0]), {"A": "tensor", "B": "tensor"},
      expect={"B:-inf": EITHER}),
    R("PowerDiagram.power", lambda h: diagram().power(h), lambda: dict(h=x2()),
      {"h": "tensor"}, check=lambda r, kw: need(r.shape == (rows(kw, "h"), 8)), **PROPAGATE),
    R("PowerDiagram.assign", lambda h: diagram().assign(h), lambda: dict(h=x2()),
      {"h": "tensor"}, check=lambda r, kw: need(r.shape == (rows(kw, "h"), 3))),
    R("PowerDiagram.summary", lambda: diagram().summary(), dict),
    R("PowerDiagram.to_json", lambda: diagram().to_json(), dict, check=_check_json),
    R("PowerDiagram.plot", lambda bounds, resolution: diagram().plot(
        bounds=bounds, resolution=resolution),
      lambda: dict(bounds=torch.tensor([-1.0, 1.0, -2.0, 2.0]), resolution=20),
      {"bounds": "tensor", "resolution": "count"}, expect={"bounds:list": EITHER}),
    R("face_centroids", lambda part, layer: power.face_centroids(part, layer=layer),
      lambda: dict(part=partition(), layer=0), {"part": "partition", "layer": "layer"},
      check=lambda r, kw: need(r[0].shape == (partition().num_regions, 2))),
    # ---------------------------------------------------------------- statistics
    R("local_complexity", lambda model, x, radius, n_directions, seed: ma.local_complexity(
        model, x, radius, n_directions, seed=seed),
      lambda: dict(model=mlp4(), x=x4(), radius=0.3, n_directions=2, seed=0),
      {"model": "model", "x": "batch", "radius": "real:pos", "n_directions": "count",
       "seed": "count0"}, check=lambda r, kw: need(r.values.shape == (rows(kw), 1)),
      expect={"radius:None": REFUSE, "n_directions:huge": REFUSE}),
    R("local_complexity[directions]", lambda x, directions: ma.local_complexity(
        graph2(), x, 0.1, directions=directions),
      lambda: dict(x=x2(), directions=torch.eye(2, dtype=torch.float64)),
      {"x": "batch", "directions": "tensor"},
      check=lambda r, kw: need(r.values.shape == (rows(kw), 2)),
      expect={"directions:None": EITHER}),
    R("boundary_distance", lambda model, x, directions_per_pass: ma.boundary_distance(
        model, x, directions_per_pass=directions_per_pass),
      lambda: dict(model=mlp4(), x=x4(), directions_per_pass=2),
      {"model": "model", "x": "batch", "directions_per_pass": "count"},
      check=lambda r, kw: need(r.values.shape == (rows(kw), 1)
                               and r.direction.shape == kw["x"].shape),
      inf_ok={"values", "total"}),
    R("boundary_distance[cnn]", lambda model, x: ma.boundary_distance(model, x),
      lambda: dict(model=graph_cnn(), x=xc()), {"model": "model", "x": "batch"},
      check=lambda r, kw: need(r.values.shape == (rows(kw), 2)), inf_ok={"values", "total"}),
    R("region_density", ma.region_density,
      lambda: dict(model=mlp2(), x0=x2()[:2], x1=x2()[2:4]),
      {"model": "model", "x0": "batch", "x1": "batch"},
      check=lambda r, kw: need(r.values.shape[0] == r.lengths.shape[0]),
      expect={"x1:torch.float16": EITHER, "x1:torch.bfloat16": EITHER,
              "x1:torch.float32": EITHER},
      extra=lambda valid, draw: _valid_extra_inputs(valid, draw, "x1", "x0")),
    R("region_sharing", lambda model, x, batch_size: ma.region_sharing(
        model, x, batch_size=batch_size),
      lambda: dict(model=mlp2(), x=x2(), batch_size=2),
      {"model": "model", "x": "batch", "batch_size": "count"},
      check=lambda r, kw: need(r.region_ids.shape == (rows(kw),)), nan_ok={"shared"}),
    R("boundary_curvature", ma.boundary_curvature, lambda: dict(partition=partition()),
      {"partition": "partition"},
      check=lambda r, kw: need(bool(((r.angles >= 0) & (r.angles <= math.pi)).all()))),
    R("LayerStat.__getitem__", lambda stat, layer: stat[layer],
      lambda: dict(stat=_stat("lc"), layer="3"), {"layer": "layer"},
      expect={"layer:None": REFUSE}),
    R("LayerStat.as_dict", lambda: _stat("bd").as_dict(), dict, inf_ok={"result"}),
    R("LayerStat.to_json", lambda: _stat("rd").to_json(), dict, check=_check_json),
    R("LayerStat.summary", lambda: _stat("bd").summary(), dict),
    R("LayerStat.plot", lambda: stats.LayerStat(("a", "b"), torch.rand(4, 2)).plot(), dict),
    R("BoundaryDistance.plot", lambda: _stat("bd").plot(), dict),
    R("RegionDensity.plot", lambda: _stat("rd").plot(), dict),
    R("RegionSharing.summary", lambda x: ma.region_sharing(graph2(), x).summary(),
      lambda: dict(x=x2()), {"x": "batch"}),
    R("RegionSharing.to_json", lambda: ma.region_sharing(graph2(), x2()).to_json(), dict,
      check=_check_json),
    R("RegionSharing.plot", lambda: ma.region_sharing(graph2(), x2()).plot(), dict),
    R("BoundaryCurvature.to_json", lambda: _stat("bc").to_json(), dict, check=_check_json),
    R("LocalComplexity.plot", lambda bins: _stat("lc").plot(bins=bins), lambda: dict(bins=5),
      {"bins": "count"}),
    R("BoundaryCurvature.summary", lambda: _stat("bc").summary(), dict),
    R("BoundaryCurvature.plot", lambda bins: _stat("bc").plot(bins=bins), lambda: dict(bins=6),
      {"bins": "count"}),
    # ---------------------------------------------------------------- partitions
    R("invert", lambda generator, y, mask, method, restarts, max_steps, tol, seed:
      generative.invert(generator, y, mask, method=method, restarts=restarts,
                        max_steps=max_steps, tol=tol, seed=seed),
      lambda: dict(generator=generator2(), y=outputs2(), mask=None, method="exact",
                   restarts=1, max_steps=20, tol=1e-6, seed=0),
      {"generator": "model", "y": "batch", "method": "choice", "restarts": "count0",
       "max_steps": "count", "tol": "real:nonneg", "seed": "count0"},
      check=_check_inversion, extra=_mask_cases, inf_ok={"residual"}),
    R("Inversion.summary", lambda: inversion2().summary(), dict),
    R("Inversion.to_json", lambda: inversion2().to_json(), dict, check=_check_json),
    R("Inversion.plot", lambda n: inversion2().plot(n=n), lambda: dict(n=2), {"n": "count"},
      expect={"n:None": REFUSE, "n:huge": EITHER}),
    R("partition_plane", lambda model, domain, dtype, tol, max_regions: ma.partition_plane(
        model, domain, dtype=dtype, tol=tol, max_regions=max_regions, progress=False),
      lambda: dict(model=mlp2(), domain=square(), dtype=torch.float64, tol=1e-10,
                   max_regions=10**6),
      {"model": "model", "domain": "domain", "dtype": "dtype", "tol": "real:tol",
       "max_regions": "count"}, check=_check_partition),
    R("partition_plane[slice]", lambda model, domain: ma.partition_plane(
        model, domain, progress=False),
      lambda: dict(model=graph_cnn(), domain=ma.Slice.through(*xc()).zoom(0, 0.3)),
      {"model": "model"}, check=_check_partition, extra=_slice_domains),
    R("regions_near", lambda model, x, radius, norm, max_regions: ma.regions_near(
        model, x, radius, norm=norm, max_regions=max_regions, progress=False),
      lambda: dict(model=mlp2(), x=x2()[0], radius=0.5, norm="l2", max_regions=1000),
      {"model": "model", "x": "sample", "radius": "real:pos", "norm": "choice",
       "max_regions": "count"}, check=_check_regionset),
    R("RegionSet.halfspaces", lambda i: regionset2().halfspaces(i), lambda: dict(i=1),
      {"i": "layer"}, expect={"i:None": REFUSE},
      check=lambda r, kw: need(r[0].shape[1] == 2 and r[0].shape[0] == r[1].shape[0])),
    R("RegionSet.maps", lambda indices: regionset2().maps(indices), lambda: dict(indices=[0, 1]),
      {"indices": "selector"},
      check=lambda r, kw: need(isinstance(r, ma.AffineMap) and r.A.shape[0] == r.B.shape[0])),
    R("RegionSet.summary", lambda: regionset2().summary(), dict),
    R("RegionSet.to_json", lambda: regionset2().to_json(), dict, check=_check_json),
    R("RegionSet.plot", lambda: regionset2().plot(), dict),
    R("partition_segment", lambda model, x0, x1, dtype, tol: ma.partition_segment(
        model, x0, x1, dtype=dtype, tol=tol),
      lambda: dict(model=mlp2(), x0=x2()[0], x1=x2()[1], dtype=torch.float64, tol=1e-10),
      {"model": "model", "x0": "sample", "x1": "sample", "dtype": "dtype", "tol": "real:tol"},
      check=_check_segment, extra=lambda valid, draw: _valid_extra_inputs(
          valid, draw, "x1", "x0")),
    R("SegmentPartition.plot", lambda outputs: segment().plot(outputs=outputs),
      lambda: dict(outputs=[0, 2]), {"outputs": "selector"}),
    R("SegmentPartition.summary", lambda: segment().summary(), dict),
    R("SegmentPartition.to_json", lambda: segment().to_json(), dict, check=_check_json),
    R("Partition.polygon", lambda i: partition().polygon(i), lambda: dict(i=1), {"i": "layer"},
      expect={"i:None": REFUSE}),
    R("Partition.predicted", lambda: partition().predicted(), dict),
    R("Partition.class_cells", lambda: partition().class_cells(), dict),
    R("Partition.layer_boundaries", lambda layer: partition().layer_boundaries(layer),
      lambda: dict(layer="3"), {"layer": "layer"}, expect={"layer:None": REFUSE}),
    R("Partition.input_space_maps", lambda faces: partition().input_space_maps(faces),
      lambda: dict(faces=[0, 2]), {"faces": "selector"}),
    R("Partition.summary", lambda: partition().summary(), dict),
    R("Partition.plot", lambda color_by: partition().plot(color_by=color_by),
      lambda: dict(color_by="class"), {"color_by": "choice"}),
    R("Partition.to_json", lambda: partition().to_json(), dict, check=_check_json),
    R("Partition.save", lambda path: partition().save(path),
      lambda: dict(path=str(_TMP / "part.npz")), {"path": "path"},
      expect={"path:unknown suffix": REFUSE}),
    R("partition_box", lambda model, lower, upper, dtype, tol, max_regions: ma.partition_box(
        model, lower, upper, dtype=dtype, tol=tol, max_regions=max_regions, progress=False),
      lambda: dict(model=mlp2(), lower=-torch.ones(2, dtype=torch.float64),
                   upper=torch.ones(2, dtype=torch.float64), dtype=torch.float64, tol=1e-10,
                   max_regions=10**6),
      {"model": "model", "lower": "tensor", "upper": "tensor", "dtype": "dtype",
       "tol": "real:tol", "max_regions": "count"}, check=_check_complex,
      expect={"lower:list": EITHER, "upper:list": EITHER}, inf_ok={"volumes"}),
    R("partition_polytope", lambda model, A, b: ma.partition_polytope(
        model, A, b, progress=False),
      lambda: dict(model=mlp2(), A=torch.tensor([[1.0, 0], [0, 1], [-1, -1]]),
                   b=torch.tensor([1.0, 1, 1])),
      {"model": "model", "A": "tensor", "b": "tensor"}, check=_check_complex,
      expect={"A:list": EITHER, "b:list": EITHER}, inf_ok={"volumes"}),
    R("Complex.faces", lambda k: complex2().faces(k), lambda: dict(k=1), {"k": "count0"},
      expect={"k:None": REFUSE, "k:huge": REFUSE}),
    R("Complex.facets", lambda k: complex2().facets(k), lambda: dict(k=2), {"k": "count"},
      expect={"k:None": REFUSE, "k:huge": REFUSE}),
    R("Complex.maps", lambda regions: complex2().maps(regions), lambda: dict(regions=[0, 2]),
      {"regions": "selector"}),
    R("Complex.region_vertices", lambda i: complex2().region_vertices(i), lambda: dict(i=1),
      {"i": "layer"}, expect={"i:None": REFUSE}),
    R("Complex.locate", lambda x: complex2().locate(x), lambda: dict(x=x2()), {"x": "batch"}),
    R("Complex.level_set", lambda c, output: complex2().level_set(c, output),
      lambda: dict(c=0.1, output=1), {"c": "real:any", "output": "layer"},
      expect={"output:None": REFUSE}),
    R("Complex.decision_boundary", lambda: complex2().decision_boundary(), dict),
    R("Complex.summary", lambda: complex2().summary(), dict),
    R("Complex.to_json", lambda: complex2().to_json(), dict, check=_check_json),
    R("Complex.plot", lambda regions: complex2().plot(regions=regions),
      lambda: dict(regions=[0, 2]), {"regions": "selector"}),
    R("LevelSet.mesh", lambda: octahedron().mesh(), dict),
    R("LevelSet.save", lambda path: octahedron().save(path),
      lambda: dict(path=str(_TMP / "octa.ply")), {"path": "path"},
      expect={"path:unknown suffix": REFUSE}),
    R("Partition.to_html", lambda path: partition().to_html(path),
      lambda: dict(path=str(_TMP / "part.html")), {"path": "path"}),
    R("Complex.to_html", lambda path, level, output: complex2().to_html(
        path, level=level, output=output),
      lambda: dict(path=str(_TMP / "cx.html"), level=0.0, output=0),
      {"path": "path", "level": "real:any", "output": "layer"}),
    R("LevelSet.to_html", lambda path: octahedron().to_html(path),
      lambda: dict(path=str(_TMP / "ls.html")), {"path": "path"}),
    R("LevelSet.summary", lambda: octahedron().summary(), dict),
    R("LevelSet.to_json", lambda: octahedron().to_json(), dict, check=_check_json),
    R("LevelSet.plot", lambda: octahedron().plot(), dict),
    # ---------------------------------------------------------------- generative likelihood
    R("posterior", lambda model, x, noise_std, bound, method, samples: generative.posterior(
        model, x, noise_std, bound=bound, method=method, samples=samples),
      lambda: dict(model=mlp2(), x=gen_x2(), noise_std=0.5, bound=4.0, method="exact",
                   samples=64),
      {"model": "model", "x": "batch", "noise_std": "real:pos", "bound": "real:pos",
       "method": "choice", "samples": "count"}, check=_check_generator_posterior),
    R("log_likelihood", lambda model, x, noise_std, method: generative.log_likelihood(
        model, x, noise_std, bound=4.0, method=method, samples=64),
      lambda: dict(model=mlp2(), x=gen_x2(), noise_std=0.5, method="auto"),
      {"model": "model", "x": "batch", "noise_std": "real:pos", "method": "choice"},
      check=lambda r, kw: need(r.shape == (rows(kw),), "one log likelihood per input")),
    R("GeneratorPosterior.summary", lambda: generator_posterior2().summary(), dict),
    R("GeneratorPosterior.to_json", lambda: generator_posterior2().to_json(), dict,
      check=_check_json),
    R("GeneratorPosterior.plot", lambda index: generator_posterior2().plot(index=index),
      lambda: dict(index=1), {"index": "layer"}, expect={"index:None": REFUSE}),
    # ---------------------------------------------------------------- generative EM
    R("fit_em", lambda model, data, noise_std, steps, m_steps, lr, learn_noise:
      generative.fit_em(copy.deepcopy(model), data, noise_std, steps, m_steps=m_steps, lr=lr,
                        learn_noise=learn_noise, progress=False),
      lambda: dict(model=mlp2(), data=gen_x2(), noise_std=0.5, steps=1, m_steps=2, lr=1e-2,
                   learn_noise=True),
      {"model": "model", "data": "batch", "noise_std": "real:pos", "steps": "count",
       "m_steps": "count", "lr": "real:pos", "learn_noise": "flag"},
      check=lambda r, kw: need(r.log_likelihood.shape == (kw["steps"] + 1,)
                               and bool((r.log_likelihood.diff() >= -1e-9 * (
                                   1 + r.log_likelihood[:-1].abs())).all()),
                               "one non-decreasing log-likelihood per step")),
    R("EMFit.summary", lambda: em_fit2().summary(), dict),
    R("EMFit.to_json", lambda: em_fit2().to_json(), dict, check=_check_json),
    R("EMFit.plot", lambda: em_fit2().plot(), dict),
    R("Slice", ma.Slice, lambda: dict(origin=torch.zeros(3), u=torch.tensor([1.0, 0, 0]),
                                       v=torch.tensor([0.0, 1, 0]), bounds=square()),
      {"origin": "sample", "u": "sample", "v": "sample", "bounds": "domain"},
      extra=_slice_ctor_extra,
      expect={"bounds:list": EITHER, "u:tiny(x 1e-300)": EITHER, "v:tiny(x 1e-300)": EITHER}),
    R("Slice.through", lambda x1, x2, x3, shape, pad: ma.Slice.through(
        x1, x2, x3, shape=shape, pad=pad),
      lambda: dict(x1=xc()[0], x2=xc()[1], x3=xc()[2], shape="box", pad=0.1),
      {"x1": "sample", "x2": "sample", "x3": "sample", "shape": "choice",
       "pad": "real:nonneg"}, extra=_slice_extra),
    R("Slice.square", ma.Slice.square, lambda: dict(low=-1.0, high=2.0),
      {"low": "real:any", "high": "real:any"},
      extra=lambda valid, draw: [("high", "equal to low", valid["low"], REFUSE)]),
    R("Slice.zoom", lambda center, radius: ma.Slice.through(*xc()).zoom(center, radius),
      lambda: dict(center=(0.1, 0.2), radius=0.5), {"center": "center", "radius": "real:pos"}),
    R("Slice.to_input", lambda st: ma.Slice.through(*xc()).to_input(st),
      lambda: dict(st=torch.rand(4, 2, dtype=torch.float64)), {"st": "tensor"},
      check=lambda r, kw: need(r.shape == (rows(kw, "st"), 1, 6, 6)), **PROPAGATE,
      extra=lambda valid, draw: [("st", "integer coordinates", torch.ones(4, 2,
                                  dtype=torch.int64), REFUSE)]),
    # ---------------------------------------------------------------- errors
    R("MaxAffineError", lambda message: ma.MaxAffineError(message), lambda: dict(message="bad"),
      {"message": "message"}),
    R("MaxAffineTypeError", lambda message: ma.MaxAffineTypeError(message),
      lambda: dict(message="bad"), {"message": "message"}),
    R("MaxAffineWarning", lambda message: ma.MaxAffineWarning(message), lambda: dict(message="bad"),
      {"message": "message"}),
    R("UnsupportedOperation", lambda problems: ma.UnsupportedOperation(problems),
      lambda: dict(problems=["a", "b"]),
      {"problems": "message"}, check=lambda r, kw: need(bool(str(r)))),
    # ---------------------------------------------------------------- losses
    R("template_orthogonality", lambda model, x, classes, normalize, samples:
      losses.template_orthogonality(model, x, classes, normalize, samples=samples),
      lambda: dict(model=mlp4(), x=x4(), classes=[0, 2], normalize=False, samples=3),
      {"model": "model", "x": "batch", "classes": "classes", "normalize": "flag",
       "samples": "count"}, check=lambda r, kw: need(r.dim() == 0), **PROPAGATE,
      expect={"model:its graph": EITHER, "x:empty batch": REFUSE,
              "model:not a spline (GELU)": EITHER}),
    R("template_gram", lambda model, x, classes, normalize: losses.template_gram(
        model, x, classes, normalize),
      lambda: dict(model=mlp4(), x=x4(), classes=[0, 2], normalize=True),
      {"model": "model", "x": "batch", "classes": "classes", "normalize": "flag"},
      check=lambda r, kw: need(r.shape[0] == rows(kw)), **PROPAGATE,
      expect={"model:its graph": EITHER, "model:not a spline (GELU)": EITHER}),
    R("inversion_loss", lambda model, x, scales: losses.inversion_loss(model, x, scales=scales),
      lambda: dict(model=mlp4(), x=x4(), scales="all"),
      {"model": "model", "x": "batch", "scales": "choice"},
      check=lambda r, kw: need(r.dim() == 0 and not float(r) < 0, "a non-negative scalar"),
      **PROPAGATE, expect={"x:empty batch": REFUSE, "scales:int": EITHER}),  # a layer index
    R("semi_supervised_loss", lambda model, x_labelled, y, x_unlabelled, alpha, beta:
      losses.semi_supervised_loss(model, x_labelled, y, x_unlabelled, alpha=alpha, beta=beta),
      lambda: dict(model=mlp4(), x_labelled=x4()[:2], y=torch.tensor([0, 2]),
                   x_unlabelled=x4()[2:], alpha=0.5, beta=0.1),
      {"model": "model", "x_labelled": "batch", "x_unlabelled": "batch",
       "alpha": "real:nonneg", "beta": "real:nonneg"},
      check=lambda r, kw: need(r.dim() == 0, "a scalar"),
      **PROPAGATE, expect={"x_labelled:empty batch": REFUSE, "x_unlabelled:empty batch": REFUSE}),
    R("weight_orthogonality", lambda weight, normalize: losses.weight_orthogonality(
        weight, normalize=normalize),
      lambda: dict(weight=torch.randn(3, 4), normalize=False),
      {"weight": "tensor", "normalize": "flag"}, **PROPAGATE),
    R("filter_orthogonality", lambda layer, normalize: losses.filter_orthogonality(
        layer, normalize=normalize),
      lambda: dict(layer=nn.Conv2d(1, 3, 3), normalize=True),
      {"layer": "module", "normalize": "flag"}, **PROPAGATE),
    R("orthogonal_filters", lambda module, name: orthogonal.orthogonal_filters(module, name),
      lambda: dict(module=nn.Linear(6, 4), name="weight"),
      {"module": "module", "name": "choice"},
      check=lambda r, kw: need(torch.allclose(r.weight @ r.weight.T, torch.eye(4), atol=1e-4),
                               "filters not orthonormal"),
      expect={"module:zero weights": EITHER, "module:tiny weights": EITHER}),
    # ---------------------------------------------------------------- layers
    R("Abs", mnn.Abs, dict),
    R("Abs.forward", lambda u: mnn.Abs()(u), lambda: dict(u=_u()), {"u": "tensor"},
      **PROPAGATE),
    R("BetaVQ", lambda kind, beta, learnable, per_channel, negative_slope: mnn.BetaVQ(
        kind, beta, learnable, per_channel, negative_slope),
      lambda: dict(kind="leaky_relu", beta=0.3, learnable=False, per_channel=4,
                   negative_slope=0.1),
      {"kind": "choice", "beta": "beta", "learnable": "flag", "per_channel": "size",
       "negative_slope": "real:slope"}, check=_check_module_forward((4, 5)),
      expect={"per_channel:None": EITHER, "beta:per-channel list": REFUSE}),
    R("BetaVQ.forward", lambda m, u: m(u),
      lambda: dict(m=mnn.BetaVQ("relu", 0.5, per_channel=4), u=_u()), {"u": "tensor"},
      **PROPAGATE),
    R("BetaVQ.pieces", lambda m, u: m.pieces(u),
      lambda: dict(m=mnn.BetaVQ("abs", 0.5), u=_u()), {"u": "tensor"}, **PROPAGATE),
    R("BetaVQ.selection", lambda m, u, beta: m.selection(u, beta),
      lambda: dict(m=mnn.BetaVQ("relu", 0.5), u=_u(), beta=0.7),
      {"u": "tensor", "beta": "real:unit"}, **PROPAGATE),
    R("BetaVQPool2d", lambda kernel_size, stride, beta, padding, dilation: mnn.BetaVQPool2d(
        kernel_size, stride, beta, padding, dilation),
      lambda: dict(kernel_size=2, stride=2, beta=0.5, padding=1, dilation=1),
      {"kernel_size": "pair", "stride": "pair", "beta": "beta", "padding": "pair0",
       "dilation": "pair"}, check=_check_module_forward((2, 6, 6)),
      expect={"beta:per-channel list": REFUSE}),
    R("BetaVQPool2d.forward", lambda m, x: m(x),
      lambda: dict(m=mnn.BetaVQPool2d(2, 2, 0.4, padding=1), x=_img()), {"x": "tensor"},
      **PROPAGATE),
    R("BetaVQPool2d.pieces", lambda m, x: m.pieces(x),
      lambda: dict(m=mnn.BetaVQPool2d(3, 1, 0.4), x=_img()), {"x": "tensor"},
      extra=_image_too_small("x"), **PROPAGATE),
    R("BetaVQPool2d.selection", lambda m, x, beta: m.selection(x, beta),
      lambda: dict(m=mnn.BetaVQPool2d(2, 2, 0.4), x=_img(), beta=0.9),
      {"x": "tensor", "beta": "real:unit"}, extra=_image_too_small("x"), **PROPAGATE),
    R("BetaVQPool1d", lambda kernel_size, beta: mnn.BetaVQPool1d(kernel_size, beta=beta),
      lambda: dict(kernel_size=3, beta=0.5), {"kernel_size": "pair", "beta": "beta"},
      check=_check_module_forward((2, 7)),
      expect={"kernel_size:pair": REFUSE, "beta:per-channel list": REFUSE}),
    R("BetaVQPool1d.forward", lambda m, x: m(x),
      lambda: dict(m=mnn.BetaVQPool1d(3, 2, 0.6), x=_seq()), {"x": "tensor"}, **PROPAGATE),
    R("beta_vq", mnn.beta_vq, lambda: dict(pieces=_pieces(), beta=0.3, dim=-1),
      {"pieces": "tensor", "beta": "real:unit", "dim": "layer"}, **PROPAGATE,
      expect={"dim:None": REFUSE}),
    R("vq_selection", mnn.vq_selection, lambda: dict(pieces=_pieces(), beta=0.3, dim=-1),
      {"pieces": "tensor", "beta": "real:unit", "dim": "layer"}, **PROPAGATE,
      expect={"dim:None": REFUSE}),
    R("vq_selection[valid]", lambda pieces, valid: mnn.vq_selection(pieces, 0.0, -1, valid),
      lambda: dict(pieces=_pieces(), valid=torch.tensor([True, False])),
      extra=lambda valid, draw: [
          ("valid", "no valid piece", torch.zeros(2, dtype=torch.bool), REFUSE),
          ("valid", "wrong shape", torch.ones(3, dtype=torch.bool), REFUSE),
          ("valid", "float", torch.tensor([1.0, 0.0]), REFUSE),
          ("valid", "list", [True, False], REFUSE),
          ("valid", "full shape", torch.tensor([True, False]).expand(3, 4, 2), SAME)]),
    R("hard_selection", mnn.hard_selection, lambda: dict(pieces=_pieces(), dim=1),
      {"pieces": "tensor", "dim": "layer"}, **PROPAGATE,
      expect={"dim:None": REFUSE}),
    R("soft_selection", mnn.soft_selection, lambda: dict(pieces=_pieces(), dim=0),
      {"pieces": "tensor", "dim": "layer"}, **PROPAGATE, expect={"dim:None": REFUSE}),
    R("fuzzy_xor", mnn.fuzzy_xor, lambda: dict(x=torch.rand(3, 4), w=torch.rand(4)),
      {"x": "tensor", "w": "tensor"}, **PROPAGATE),
    R("GHLinear", lambda in_features, out_features, threshold, margin: mnn.GHLinear(
        in_features, out_features, threshold=threshold, margin=margin),
      lambda: dict(in_features=4, out_features=3, threshold="double", margin=0.1),
      {"in_features": "size", "out_features": "size", "threshold": "choice",
       "margin": "real:nonneg"}, check=lambda r, kw: _check_module_forward(
          (r.in_features,))(r, kw)),
    R("GHLinear.forward", lambda m, x: m(x), lambda: dict(m=mnn.GHLinear(4, 3), x=x4()),
      {"x": "tensor"}, extra=_features("x"), **PROPAGATE),
    R("GHLinear.hamming", lambda m, x: m.hamming(x), lambda: dict(m=mnn.GHLinear(4, 3), x=x4()),
      {"x": "tensor"}, extra=_features("x"), **PROPAGATE),
    R("GHConv2d", lambda in_channels, out_channels, kernel_size, stride, padding, margin:
      mnn.GHConv2d(in_channels, out_channels, kernel_size, stride, padding, margin=margin),
      lambda: dict(in_channels=1, out_channels=2, kernel_size=3, stride=1, padding=1,
                   margin=0.0),
      {"in_channels": "size", "out_channels": "size", "kernel_size": "pair", "stride": "pair",
       "padding": "pair0", "margin": "real:nonneg"},
      check=lambda r, kw: _check_module_forward((r.in_channels, 6, 6))(r, kw)),
    R("GHConv2d.forward", lambda m, x: m(x), lambda: dict(m=mnn.GHConv2d(1, 2, 3), x=xc()),
      {"x": "tensor"}, extra=_image_too_small("x"), **PROPAGATE),
    R("GHConv2d.hamming", lambda m, x: m.hamming(x), lambda: dict(m=mnn.GHConv2d(1, 2, 3),
                                                                  x=xc()),
      {"x": "tensor"}, extra=_image_too_small("x"), **PROPAGATE),
    R("GHN", lambda input_shape, num_classes, widths, channels, kernel_size, threshold, margin:
      mnn.GHN(input_shape, num_classes, widths=widths, channels=channels,
              kernel_size=kernel_size, threshold=threshold, margin=margin),
      lambda: dict(input_shape=(1, 6, 6), num_classes=3, widths=(4,), channels=(2,),
                   kernel_size=3, threshold="single", margin=0.0),
      {"input_shape": "sizes", "num_classes": "size", "widths": "sizes", "channels": "sizes",
       "kernel_size": "size", "threshold": "choice", "margin": "real:nonneg"},
      check=lambda r, kw: _check_module_forward(tuple(int(s) for s in kw["input_shape"]))(
          r, kw)),
    R("SparseCoding", lambda in_features, out_features, prior, orthogonal, init_threshold:
      mnn.SparseCoding(in_features, out_features, prior, orthogonal,
                       init_threshold=init_threshold),
      lambda: dict(in_features=6, out_features=4, prior="laplace", orthogonal=True,
                   init_threshold=0.1),
      {"in_features": "size", "out_features": "size", "prior": "choice", "orthogonal": "flag",
       "init_threshold": "real:nonneg"},
      check=lambda r, kw: _check_module_forward((r.in_features,))(r, kw)),
    R("SparseCoding.forward", lambda m, x: m(x), lambda: dict(m=_sc(), x=torch.randn(3, 6)),
      {"x": "tensor"}, extra=_features("x"), **PROPAGATE),
    R("SparseCoding.reconstruct", lambda m, code: m.reconstruct(code),
      lambda: dict(m=_sc(), code=torch.rand(3, 4)), {"code": "tensor"},
      extra=_features("code"), **PROPAGATE),
    R("SparseCoding.objective", lambda m, x_patches, code: m.objective(x_patches, code),
      lambda: dict(m=_sc("laplace"), x_patches=torch.randn(3, 6), code=torch.rand(3, 4)),
      {"x_patches": "tensor", "code": "tensor"}, **PROPAGATE),
    R("SparseCoding.orthogonality", lambda: _sc().orthogonality(), dict),
    R("SparseCoding.from_linear", lambda linear, prior, orthogonal:
      mnn.SparseCoding.from_linear(linear, prior=prior, orthogonal=orthogonal),
      lambda: dict(linear=nn.Linear(6, 4), prior="exponential", orthogonal=True),
      {"linear": "module", "prior": "choice", "orthogonal": "flag"}, nan_ok={"distance"}),
    R("SparseCodingConv2d", lambda in_channels, out_channels, kernel_size, stride, padding,
      prior: mnn.SparseCodingConv2d(in_channels, out_channels, kernel_size, stride, padding,
                                    prior),
      lambda: dict(in_channels=1, out_channels=4, kernel_size=3, stride=1, padding=1,
                   prior="exponential"),
      {"in_channels": "size", "out_channels": "size", "kernel_size": "pair", "stride": "pair",
       "padding": "pair0", "prior": "choice"},
      check=lambda r, kw: _check_module_forward((r.conv.in_channels, 6, 6))(r, kw)),
    R("SparseCodingConv2d.forward", lambda m, x: m(x), lambda: dict(m=_scc(), x=xc()),
      {"x": "tensor"}, extra=_image_too_small("x"), **PROPAGATE),
    R("SparseCodingConv2d.patches", lambda m, x: m.patches(x), lambda: dict(m=_scc(), x=xc()),
      {"x": "tensor"}, **PROPAGATE),
    R("SparseCodingConv2d.reconstruct", lambda m, code, output_size: m.reconstruct(
        code, output_size),
      lambda: dict(m=_scc(), code=torch.rand(3, 4, 6, 6), output_size=(6, 6)),
      {"code": "tensor", "output_size": "pair"}, **PROPAGATE,
      expect={"output_size:None": REFUSE}),
    R("SparseCodingConv2d.from_conv", lambda conv, prior: mnn.SparseCodingConv2d.from_conv(
        conv, prior=prior), lambda: dict(conv=nn.Conv2d(1, 4, 3), prior="laplace"),
      {"conv": "module", "prior": "choice"}, nan_ok={"distance"}),
    # ---------------------------------------------------------------- reference models
    R("models.mlp", lambda input_shape, widths, num_classes: models.mlp(
        input_shape, widths, num_classes),
      lambda: dict(input_shape=(1, 2, 2), widths=(5, 3), num_classes=2),
      {"input_shape": "sizes", "widths": "sizes", "num_classes": "size"},
      check=lambda r, kw: _check_module_forward(tuple(int(v) for v in kw["input_shape"]))(
          r, kw)),
    R("models.small_cnn", lambda input_shape, num_classes, channels, batchnorm:
      models.small_cnn(input_shape, num_classes, channels, batchnorm=batchnorm),
      lambda: dict(input_shape=(1, 6, 6), num_classes=3, channels=(2,), batchnorm=True),
      {"input_shape": "sizes", "num_classes": "size", "channels": "sizes",
       "batchnorm": "flag"},
      check=lambda r, kw: _check_module_forward(tuple(int(v) for v in kw["input_shape"]))(
          r.eval(), kw)),
    R("nearest_orthonormal", mnn.nearest_orthonormal, lambda: dict(phi=torch.randn(5, 3)),
      {"phi": "tensor"}),
    R("orthogonality_report", mnn.orthogonality_report,
      lambda: dict(dictionary=torch.randn(5, 3), clamped_thresholds=1),
      {"dictionary": "tensor", "clamped_thresholds": "count0"}, nan_ok={"distance"}),
    R("OrthogonalityReport.to_json", lambda dictionary: mnn.orthogonality_report(
        dictionary).to_json(), lambda: dict(dictionary=torch.randn(3, 5)),
      {"dictionary": "tensor"}, check=_check_json),
    # ---------------------------------------------------------------- curvature
    R("loss_hessian", lambda model, x, y, exact: ma.loss_hessian(
        model, nn.functional.cross_entropy, x, y, exact=exact),
      lambda: dict(model=mlp2(), x=x2(), y=labels2(), exact=True),
      {"model": "model", "x": "batch", "exact": "flag"}, check=_check_loss_hessian,
      expect={"model:not a spline (GELU)": EITHER, "exact:None": EITHER}),
    R("loss_hessian[loss]", lambda loss_fn: ma.loss_hessian(mlp2(), loss_fn, x2(), labels2()),
      lambda: dict(loss_fn=nn.functional.cross_entropy), extra=lambda valid, draw: [
          ("loss_fn", "not scalar", lambda out, y: out, REFUSE),
          ("loss_fn", "not callable", 3, REFUSE),
          ("loss_fn", "returns a float", lambda out, y: 1.0, REFUSE)]),
    R("LossHessian.matrix", lambda which: loss_hessian2().matrix(which),
      lambda: dict(which="NME"), {"which": "choice"}),
    R("LossHessian.matvec", lambda v, which: loss_hessian2_free().matvec(v, which),
      lambda: dict(v=torch.ones(loss_hessian2().num_parameters, dtype=torch.float64),
                   which="G"), {"v": "tensor", "which": "choice"}),
    R("LossHessian.operator", lambda which: loss_hessian2().operator(which),
      lambda: dict(which="H"), {"which": "choice"}),
    R("LossHessian.top_eigenvalues", lambda k, which, seed: loss_hessian2_free(
        ).top_eigenvalues(k, which, seed=seed), lambda: dict(k=2, which="H", seed=0),
      {"k": "count", "which": "choice", "seed": "count0"}),
    R("LossHessian.trace", lambda which, samples, seed: loss_hessian2_free().trace(
        which, samples, seed=seed), lambda: dict(which="NME_rest", samples=4, seed=0),
      {"which": "choice", "samples": "count", "seed": "count0"},
      expect={"samples:1": REFUSE}),
    R("LossHessian.hutchinson", lambda which, samples: loss_hessian2().hutchinson(
        which, samples), lambda: dict(which="NME_activation", samples=4),
      {"which": "choice", "samples": "count"}, expect={"samples:1": REFUSE}),
    R("LossHessian.summary", lambda: loss_hessian2().summary(), dict),
    R("LossHessian.to_json", lambda: loss_hessian2().to_json(), dict, check=_check_json),
    R("LossHessian.plot", lambda: loss_hessian2().plot(), dict),
    R("hessian_complexity", lambda model, x, tangent_dim, k, output, method:
      ma.hessian_complexity(model, x, tangent_dim=tangent_dim, k=k, output=output,
                            method=method),
      lambda: dict(model=mlp3(), x=manifold_x(), tangent_dim=1, k=8, output=0, method="fit"),
      {"model": "model", "x": "batch", "tangent_dim": "count", "k": "count",
       "output": "layer", "method": "choice"}, check=_check_complexity,
      expect={"model:not a spline (GELU)": EITHER}),
    R("HessianComplexity.summary", lambda: hessian_complexity3().summary(), dict),
    R("HessianComplexity.to_json", lambda: hessian_complexity3().to_json(), dict,
      check=_check_json),
    R("HessianComplexity.plot", lambda bins: hessian_complexity3().plot(bins=bins),
      lambda: dict(bins=5), {"bins": "count"}),
    # ---------------------------------------------------------------- kernels
    R("nngp", lambda x1, x2, depth, activation, weight_var, bias_var: kernels.nngp(
        x1, x2, depth, activation=activation, weight_var=weight_var, bias_var=bias_var),
      lambda: dict(x1=x4().double(), x2=x4()[:3].double(), depth=2, activation="relu",
                   weight_var=2.0, bias_var=0.1),
      {"x1": "batch", "x2": "batch", "depth": "count", "activation": "choice",
       "weight_var": "real:pos", "bias_var": "real:nonneg"},
      check=lambda r, kw: need(r.shape == (rows(kw, "x1"), rows(
          kw, "x2" if kw["x2"] is not None else "x1")), "(N, M)"),
      # no model to match: any float dtype is read in float64; weight_var 0 is allowed
      expect={"x2:None": EITHER, **KERNEL_DTYPES, "weight_var:zero": EITHER}),
    R("ntk", lambda x1, x2, depth, parametrization, width: kernels.ntk(
        x1, x2, depth, parametrization=parametrization, width=width),
      lambda: dict(x1=x4().double(), x2=None, depth=2, parametrization="standard", width=64),
      {"x1": "batch", "depth": "count", "parametrization": "choice", "width": "count"},
      check=lambda r, kw: need(r.shape == (rows(kw, "x1"), rows(kw, "x1")), "(N, N)"),
      expect={**KERNEL_DTYPES, "x1:wrong size": EITHER}),
    R("rntk", lambda s1, s2, depth, activation, kernel: kernels.rntk(
        s1, s2, depth=depth, activation=activation, kernel=kernel),
      lambda: dict(s1=torch.randn(3, 4, 2, dtype=torch.float64), s2=None, depth=1,
                   activation="erf", kernel="ntk"),
      {"s1": "batch", "depth": "count", "activation": "choice", "kernel": "choice"},
      check=lambda r, kw: need(r.shape == (rows(kw, "s1"), rows(kw, "s1")), "(N, N)"),
      expect={"s1:torch.float16": EITHER, "s1:torch.float32": EITHER,
              "s1:torch.bfloat16": EITHER, "s1:wrong size": EITHER}),
    R("rntk[lists]", lambda s1, s2: kernels.rntk(s1, s2),
      lambda: dict(s1=[torch.randn(3, 2, dtype=torch.float64),
                       torch.randn(5, 2, dtype=torch.float64)],
                   s2=[torch.randn(2, 2, dtype=torch.float64)]),
      extra=lambda valid, draw: [
          ("s1", "an empty sequence", [torch.zeros(0, 2, dtype=torch.float64)], REFUSE),
          ("s1", "NaN inside", [torch.full((2, 2), math.nan, dtype=torch.float64)], REFUSE),
          ("s2", "other features", [torch.randn(2, 3, dtype=torch.float64)], REFUSE),
          ("s1", "empty list", [], REFUSE)]),
    R("empirical_ntk", lambda model, x1, x2, outputs: kernels.empirical_ntk(
        model, x1, x2, outputs=outputs),
      lambda: dict(model=mlp2(), x1=x2(), x2=x2()[:2], outputs="mean"),
      {"model": "model", "x1": "batch", "x2": "batch", "outputs": "choice"},
      check=lambda r, kw: need(r.shape[:2] == (rows(kw, "x1"), rows(
          kw, "x2" if kw["x2"] is not None else "x1")), "(N, M)"),
      expect={"model:not a spline (GELU)": EITHER, "x2:None": EITHER}),
    # ---------------------------------------------------------------- conservation
    R("conserved_quantities", lambda model: conservation.conserved_quantities(model),
      lambda: dict(model=mlp2()), {"model": "model"},
      check=lambda r, kw: need(r.dim() == 1 and r.numel() == len(
          conservation.conserved_quantity_names(kw["model"])), "one value per name"),
      # a smooth head after the last affine layer has no hidden unit: nothing to conserve
      expect={"model:not a spline (GELU)": EITHER}),
    R("conserved_quantity_names", lambda model: conservation.conserved_quantity_names(model),
      lambda: dict(model=mlp2()), {"model": "model"},
      check=lambda r, kw: need(isinstance(r, list) and all(isinstance(n, str) for n in r),
                               "a list of names"),
      # names do not read the parameters' values
      expect={"model:not a spline (GELU)": EITHER, "model:NaN parameter": EITHER,
              "model:inf parameter": EITHER}),
    R("number_of_conservation_laws", lambda model, seed, tol, max_parameters:
      conservation.number_of_conservation_laws(model, seed=seed, tol=tol,
                                               max_parameters=max_parameters),
      lambda: dict(model=two_layer(), seed=0, tol=1e-8, max_parameters=64),
      {"model": "model", "seed": "count0", "tol": "real:tol", "max_parameters": "count"},
      check=lambda r, kw: need(r == 2, "r = 2 laws for a two-layer ReLU net")),
]

BY_NAME = {r.name: r for r in RECIPES}

# Result objects the library builds (users call their methods, not their constructors).
RESULTS = {"AffineMap", "Complex", "Inversion", "LevelSet", "Partition", "RegionSet",
           "SegmentPartition",
           "SplineGraph",
           "PowerCells", "PowerDiagram", "LayerStat", "LocalComplexity", "BoundaryDistance",
           "RegionDensity", "RegionSharing", "BoundaryCurvature", "OrthogonalityReport",
           "Evaluation", "Layer", "Pause", "Between", "VQPosterior", "GeneratorPosterior",
           "EMFit", "LossHessian", "HessianComplexity", "VQIndex"}


def public_callables() -> set[str]:
    """Every public function and class of the namespaces, and every public method that
    a maxaffine class defines (``Class.method``; torch's module API excluded, forward
    included)."""
    names: set[str] = set()
    for module in NAMESPACES.values():
        for name in module.__all__:
            obj = getattr(module, name)
            if not isinstance(obj, type):
                names.add(name)
                continue
            if name not in RESULTS:
                names.add(name)
            for klass in obj.__mro__:
                if not klass.__module__.startswith("maxaffine"):
                    continue
                for attr, value in vars(klass).items():
                    if attr.startswith("_") or isinstance(value, property
                                                          | functools.cached_property):
                        continue
                    if issubclass(obj, nn.Module) and hasattr(nn.Module, attr) and (
                            attr != "forward"):
                        continue
                    if callable(value) or isinstance(value, classmethod | staticmethod):
                        names.add(f"{name}.{attr}")
    return names


# ------------------------------------------------------------------ the tests


def test_every_public_callable_has_a_recipe():
    """A public function, class or method without a recipe fails here: add it to
    RECIPES (a valid call and its argument slots)."""
    covered = {r.public_name for r in RECIPES}
    aliases = {  # methods inherited by public subclasses: one recipe covers them
        "LocalComplexity.as_dict", "LocalComplexity.to_json", "BoundaryDistance.as_dict",
        "BoundaryDistance.to_json", "RegionDensity.as_dict", "RegionDensity.to_json",
        "LocalComplexity.summary", "BoundaryDistance.summary", "RegionDensity.summary",
        "BetaVQPool1d.pieces", "BetaVQPool1d.selection", "SparseCodingConv2d.orthogonality",
        "SparseCodingConv2d.objective",
    }
    missing = sorted(public_callables() - covered - aliases)
    assert not missing, f"public callables without a fuzz recipe: {missing}"
    extra = {"Codes.__getitem__", "LayerStat.__getitem__", "Between.__call__",
             "VQPosterior.__getitem__", "models.mlp",
             "models.small_cnn"}
    unknown = sorted(covered - public_callables() - extra)
    assert not unknown, f"recipes for no public callable: {unknown}"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
def test_valid_call(recipe: Recipe):
    """The recipe itself is a valid call: a result passing its own checks."""
    problem, _ = judge(recipe, None, fresh_args(recipe))
    assert problem is None, f"{recipe.name}: {problem}"


def fresh_args(recipe: Recipe) -> dict[str, Any]:
    """The recipe's arguments, built from the same random state every time (modules
    built in ``args``, e.g. ``GHLinear(4, 3)``, get the same initial weights), so a
    ``SAME`` case compares like with like."""
    _seeded()
    return recipe.args()


def fuzz(recipe: Recipe, data: st.DataObject) -> None:
    """Every corruption of every slot of ``recipe`` (one drawn value each), judged
    against the contract; all failures reported at once."""
    problem, baseline = judge(recipe, None, fresh_args(recipe))
    valid = fresh_args(recipe)  # fresh: a valid call may modify its arguments
    assert problem is None, f"{recipe.name} (valid call): {problem}"
    failures = []
    for case in corruptions(recipe, valid, data.draw):
        kwargs = {**fresh_args(recipe), case.slot: case.value}
        expect = case.expect
        if (expect != REFUSE and f"{case.slot}:{case.label}" not in recipe.expect
                and _nonfinite(case.value)):
            expect = NONFINITE  # e.g. a huge float64 value cast to float32: inf
        problem, _ = judge(recipe, dataclasses.replace(case, expect=expect), kwargs, baseline)
        if problem is not None:
            failures.append(f"{recipe.name}({case.slot}={case.label} "
                            f"[{_describe(case.value)}], expect {expect}): {problem}")
    assert not failures, "\n".join(failures)


# Bugs the fuzz found in src/maxaffine/partition.py (fixed): (recipe, slot, corruption
# label, the corrupted value, the contract), each also run on its own below.
_SQ = "Slice.square"
PARTITION_CASES: list[tuple[str, str, str, Callable[[], Any], str]] = [
    # a model whose values overflow float64: NaN slopes instead of a MaxAffineError
    ("partition_plane", "model", "parameters x 1e+150", lambda: scaled(mlp2(), 1e150), HUGE),
    ("partition_segment", "model", "parameters x 1e+150", lambda: scaled(mlp2(), 1e150),
     HUGE),
    # Slice.__post_init__: float(extent) ** 2 raises OverflowError for extents ~1e300
    ("partition_plane", "domain", "huge (x 1e+300)", lambda: square() * 1e300, HUGE),
    ("Slice", "bounds", "huge (x 1e+300)", lambda: square() * 1e300, HUGE),
    ("Slice.through", "pad", "huge(1e+300)", lambda: 1e300, HUGE),
    ("Slice.zoom", "radius", "huge(1e+300)", lambda: 1e300, HUGE),
    (_SQ, "low", "huge(1e+300)", lambda: 1e300, HUGE),
    (_SQ, "high", "huge(1e+300)", lambda: 1e300, HUGE),
    # a domain / bounds that is not numbers: TypeError from torch.as_tensor
    ("partition_plane", "domain", "str", lambda: "square", REFUSE),
    ("partition_plane", "domain", "None", lambda: None, REFUSE),
    ("Slice", "bounds", "str", lambda: "square", REFUSE),
    ("Slice", "bounds", "None", lambda: None, REFUSE),
    # Slice.square(low, high): not validated (TypeError / ValueError; True accepted)
    *[(_SQ, slot, label, functools.partial(lambda v: v, value), REFUSE)
      for slot in ("low", "high")
      for label, value in (("str", "2.0"), ("bool", True), ("complex", 1 + 1j),
                           ("list", [2.0]))],
    (_SQ, "low", "None", lambda: None, EITHER),
    (_SQ, "high", "None", lambda: None, EITHER),
    # Slice.to_input(st): not validated (AttributeError / RuntimeError / IndexError), and
    # integer coordinates cast the slice's origin and basis to integers (wrong points)
    ("Slice.to_input", "st", "list", lambda: [[0.5, 0.5]], REFUSE),
    ("Slice.to_input", "st", "str", lambda: "x", REFUSE),
    ("Slice.to_input", "st", "None", lambda: None, REFUSE),
    ("Slice.to_input", "st", "wrong size", lambda: torch.rand(4, 3, dtype=torch.float64),
     EITHER),
    ("Slice.to_input", "st", "extra axis", lambda: torch.rand(1, 4, 2, dtype=torch.float64),
     EITHER),
    ("Slice.to_input", "st", "0-d", lambda: torch.tensor(0.5, dtype=torch.float64), EITHER),
    ("Slice.to_input", "st", "integer coordinates",
     lambda: torch.ones(4, 2, dtype=torch.int64), REFUSE),
    # Partition.polygon(i): IndexError / ValueError; a list [1] returns a stacked result
    *[("Partition.polygon", "i", label, functools.partial(lambda v: v, value), REFUSE)
      for label, value in (("index too large", 99), ("index too small", -99),
                           ("unknown name", "nope"), ("fraction", 1.5), ("nan", math.nan),
                           ("bool", True), ("list", [1]), ("None", None))],
    # Partition.input_space_maps(faces): IndexError / TypeError / RuntimeError
    *[("Partition.input_space_maps", "faces", label, functools.partial(lambda v: v, value),
       expect)
      for label, value, expect in (
          ("out of range", [99], REFUSE), ("negative out of range", [-99], REFUSE),
          ("fractions", [0.5], REFUSE), ("float tensor", torch.tensor([0.5]), REFUSE),
          ("str", "a", REFUSE), ("nested", [[[0]]], EITHER), ("empty", [], EITHER),
          ("slice", slice(0, 2), EITHER))],
    # Partition.save(path): TypeError for a path that is not a str / PathLike
    ("Partition.save", "path", "int", lambda: 3, REFUSE),
    ("Partition.save", "path", "None", lambda: None, REFUSE),
    # SegmentPartition.plot(outputs): IndexError / TypeError / ValueError
    *[("SegmentPartition.plot", "outputs", label, functools.partial(lambda v: v, value),
       expect)
      for label, value, expect in (
          ("out of range", [99], REFUSE), ("negative out of range", [-99], REFUSE),
          ("fractions", [0.5], REFUSE), ("float tensor", torch.tensor([0.5]), REFUSE),
          ("str", "a", REFUSE), ("nested", [[[0]]], EITHER),
          ("slice", slice(0, 2), EITHER))],
]

FAST = settings(max_examples=1, deadline=None, derandomize=True, database=None,
                phases=[Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EXTENDED = settings(FAST, max_examples=25)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
@FAST
@given(data=st.data())
def test_fuzz(recipe: Recipe, data: st.DataObject):
    fuzz(recipe, data)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
@EXTENDED
@given(data=st.data())
def test_fuzz_extended(recipe: Recipe, data: st.DataObject):
    fuzz(recipe, data)


@pytest.mark.parametrize("name, slot, label, value, expect", [
    pytest.param(*case, id=f"{case[0]}({case[1]}={case[2]})") for case in PARTITION_CASES])
def test_partition_regressions(name: str, slot: str, label: str, value: Callable[[], Any],
                              expect: str):
    recipe = BY_NAME[name]
    case = Case(slot, label, value(), expect)
    problem, _ = judge(recipe, case, {**fresh_args(recipe), slot: case.value})
    assert problem is None, f"{name}({slot}={label}): {problem}"


# ------------------------------------------------------------------ regressions
# One line per bug the fuzz found (and fixed): the call, the error it must raise now
# (it raised IndexError / TypeError / RuntimeError / AttributeError, or returned a
# wrong or NaN result before), and a fragment of the message.

TE, E = ma.MaxAffineTypeError, ma.MaxAffineError


def _bvq_model() -> nn.Module:
    return ma.soften(mlp2(), 0.5)


REGRESSIONS: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    # graph.py: frozen codes and record, split_output
    ("evaluate-code-range", lambda: graph2().evaluate(x2(), {"1": torch.full((5, 8), 7)}), E,
     r"codes must lie in \[0, 1\]"),
    ("evaluate-code-float", lambda: graph2().evaluate(x2(), {"1": torch.zeros(5, 8)}), TE,
     "integer tensor"),
    ("evaluate-code-list", lambda: graph2().evaluate(x2(), {"1": [[0] * 8] * 5}), TE,
     "integer tensor"),
    ("evaluate-codes-not-dict", lambda: graph2().evaluate(x2(), [torch.zeros(5, 8)]), TE,
     "must be a dict"),
    ("evaluate-record-str", lambda: graph2().evaluate(x2(), record="no"), TE, "record"),
    ("split-output-dim", lambda: graph2().split_output(torch.zeros(4, 3), 99), E,
     r"dim must be in \[-2, 1\]"),
    ("split-output-none", lambda: graph2().split_output(None), TE, "NoneType"),
    # affine.py: flags, chunk sizes, overflow, AffineMap methods
    ("affine-exact-str", lambda: ma.affine_map(mlp4(), x4(), exact="no"), TE, "exact"),
    ("affine-per-pass-fraction", lambda: ma.affine_map(mlp4(), x4(), products_per_pass=1.5),
     TE, "products_per_pass"),
    ("affine-per-pass-zero", lambda: ma.affine_map(mlp4(), x4(), products_per_pass=0), E,
     "products_per_pass"),
    ("affine-overflow", lambda: ma.affine_map(scaled(mlp4(), 1e30), x4()), E,
     "overflows torch.float32"),
    ("reconstruct-int", lambda: amap4().reconstruct(x4().long()), TE, "torch.int64"),
    ("reconstruct-float64", lambda: amap4().reconstruct(x4().double()), E, "torch.float64"),
    ("templates-plot-n", lambda: amap_cnn().plot(n=0), E, "n must be >= 1"),
    ("templates-plot-classes", lambda: amap_cnn().plot(n=2, classes=[0, 99]), E,
     r"classes\[1\]"),
    ("amap-save-path", lambda: amap4().save(3), TE, "path must be a str"),
    # vq.py: Codes
    ("codes-range", lambda: ma.Codes(("a",), (torch.full((2, 3), 5, dtype=torch.uint8),), (2,),
                                     (1,)), E, "2 pieces"),
    ("hamming-flag", lambda: codes2().hamming(codes2(), normalized="no"), TE, "normalized"),
    ("select-fractions", lambda: codes2().select([0.5]), E, "integers or bools"),
    # inference.py: vq_posterior, soften
    ("posterior-model", lambda: ma.vq_posterior("model", x2()), TE, "torch.nn.Module"),
    ("posterior-hooks-dtype", lambda: ma.vq_posterior(_bvq_model(), x2().float()), E,
     "torch.float32"),
    ("posterior-hooks-shape", lambda: ma.vq_posterior(_bvq_model(), torch.zeros(5, 3,
                                                      dtype=torch.float64)), E, "fails on x"),
    ("posterior-hooks-unbatched", lambda: ma.vq_posterior(_bvq_model(), x2()[0]), E,
     "a batch"),
    ("soften-learnable", lambda: ma.soften(mlp2(), 0.5, learnable="no"), TE, "learnable"),
    ("soften-share", lambda: ma.soften(mlp2(), 0.5, share_weights=None), TE, "share_weights"),
    # power.py
    ("power-input-space", lambda: ma.power_cells(mlp2(), x2(), layer="3", input_space="no"),
     TE, "input_space"),
    ("pieces-input-space", lambda: power.layer_pieces(mlp2(), x2(), layer="3",
                                                      input_space=None), TE, "input_space"),
    ("max-cells", lambda: ma.power_diagram(layer2(), max_cells=None), TE, "max_cells"),
    ("maso-nan-offsets", lambda: ma.power_diagram(
        (torch.zeros(2, 2, 3), torch.tensor([[0.0, math.nan], [0.0, 1.0]]))), E, r"NaN, \+inf"),
    ("power-points-none", lambda: diagram().power(None), TE, "NoneType"),
    ("assign-nan", lambda: diagram().assign(torch.tensor([[math.nan, 0.0]])), E, "NaN"),
    ("diagram-plot-bounds", lambda: diagram().plot(bounds=(0.0, math.nan, 0.0, 1.0)), E,
     r"bounds\[1\]"),
    ("diagram-plot-resolution", lambda: diagram().plot(resolution=2**31), E, "resolution"),
    ("face-centroids-type", lambda: power.face_centroids(segment()), TE, "Partition"),
    # stats.py: a cross-polytope beyond float32 (counts were computed at inf vertices)
    ("lc-overflow", lambda: ma.local_complexity(mlp4(), x4(), 1e300), E, "overflow"),
    # power.py: sums of the selected pieces beyond float32 (rad was NaN)
    ("power-overflow", lambda: ma.power_cells(graph_cnn(), xc() + 3e38, layer=1), E,
     "power diagram overflows"),
    # stats.py: histogram bins
    ("lc-plot-bins", lambda: _stat("lc").plot(bins=0), E, "bins must be in"),
    ("curvature-plot-bins", lambda: _stat("bc").plot(bins=2**31), E, "bins must be in"),
    # losses.py, orthogonal.py
    ("template-nan-bias", lambda: losses.template_orthogonality(
        poisoned(mlp4(), math.nan, 3, 0), x4()), E, "'2.bias'"),
    ("orthogonal-name", lambda: orthogonal.orthogonal_filters(nn.Linear(6, 4), 0), TE,
     "name must be"),
    ("orthogonal-nan", lambda: orthogonal.orthogonal_filters(
        poisoned(nn.Linear(6, 4), math.nan, 0, 0, weights_only=True)), E, "1 NaN"),
    # nn: layers' inputs and constructors
    ("betavq-bool-beta", lambda: mnn.BetaVQ(beta=True), TE, "beta must be"),
    ("betavq-list-input", lambda: mnn.BetaVQ()([1.0, 2.0]), TE, "torch.Tensor"),
    ("betavq-int-input", lambda: mnn.BetaVQ()(torch.ones(3, dtype=torch.int64)), TE,
     "floating-point"),
    ("abs-none", lambda: mnn.Abs()(None), TE, "torch.Tensor"),
    ("pool-int-input", lambda: mnn.BetaVQPool2d(2)(torch.ones(1, 1, 4, 4, dtype=torch.int64)),
     TE, "floating-point"),
    ("hard-selection-nan", lambda: mnn.hard_selection(torch.tensor([[math.nan, 0.0]])), E,
     "NaN"),
    ("valid-none-valid", lambda: mnn.vq_selection(torch.zeros(3, 2), 0.0, -1,
                                                  torch.zeros(2, dtype=torch.bool)), E,
     "no piece"),
    ("valid-shape", lambda: mnn.soft_selection(torch.zeros(3, 2), -1,
                                               torch.ones(3, 3, dtype=torch.bool)), E,
     "does not broadcast"),
    ("fuzzy-xor-list", lambda: mnn.fuzzy_xor([0.5], torch.ones(1)), TE, "tensors"),
    ("fuzzy-xor-shapes", lambda: mnn.fuzzy_xor(torch.ones(3, 5), torch.ones(4)), E,
     "do not broadcast"),
    ("gh-linear-dtype", lambda: mnn.GHLinear(4, 3)(x4().double()), E, "torch.float64"),
    ("gh-hamming-size", lambda: mnn.GHLinear(4, 3).hamming(torch.zeros(2, 5)), E,
     r"\(\.\.\., 4\)"),
    ("gh-conv-hamming-small", lambda: mnn.GHConv2d(1, 2, 3).hamming(torch.zeros(1, 1, 2, 2)),
     E, "smaller than"),
    ("sc-prior", lambda: mnn.SparseCoding(6, 4, prior="nope"), E, "prior must be one of"),
    ("sc-in-features", lambda: mnn.SparseCoding(6.0, 4), TE, "in_features"),
    ("sc-out-features", lambda: mnn.SparseCoding(6, 0), E, "out_features"),
    ("sc-orthogonal", lambda: mnn.SparseCoding(6, 4, orthogonal="no"), TE, "orthogonal"),
    ("sc-threshold-nan", lambda: mnn.SparseCoding(6, 4, init_threshold=math.nan), E,
     "init_threshold"),
    ("sc-threshold-huge", lambda: mnn.SparseCoding(6, 4, init_threshold=1e300), E,
     "init_threshold"),
    ("sc-forward-size", lambda: _sc()(torch.zeros(2, 7)), E, r"\(\.\.\., 6\)"),
    ("sc-reconstruct-int", lambda: _sc().reconstruct(torch.zeros(2, 4, dtype=torch.int64)),
     TE, "floating-point"),
    ("sc-objective-rows", lambda: _sc().objective(torch.zeros(3, 6), torch.zeros(2, 4)), E,
     "leading axes"),
    ("sc-from-linear-nan", lambda: mnn.SparseCoding.from_linear(
        poisoned(nn.Linear(6, 4), math.nan, 0, 0, weights_only=True), orthogonal=True), E,
     "non-finite"),
    ("scc-kernel", lambda: mnn.SparseCodingConv2d(1, 4, 1.5), TE, "kernel_size"),
    ("scc-padding", lambda: mnn.SparseCodingConv2d(1, 4, 3, padding=-1), E, "padding"),
    ("scc-forward-small", lambda: mnn.SparseCodingConv2d(1, 4, 3)(torch.zeros(1, 1, 2, 2)), E,
     "smaller than"),
    ("scc-reconstruct-size", lambda: _scc().reconstruct(torch.zeros(1, 4, 6, 6), (0, 0)), E,
     "output_size"),
    ("scc-reconstruct-mismatch", lambda: _scc().reconstruct(torch.zeros(1, 4, 6, 7), (6, 6)),
     E, "does not come"),
    ("scc-from-conv-inf", lambda: mnn.SparseCodingConv2d.from_conv(
        poisoned(nn.Conv2d(1, 4, 3), math.inf, 0, 0, weights_only=True)), E, "non-finite"),
    ("nearest-nan", lambda: mnn.nearest_orthonormal(torch.full((3, 2), math.nan)), E, "NaN"),
    ("report-inf", lambda: mnn.orthogonality_report(torch.full((3, 2), math.inf)), E,
     "infinite"),
    ("report-clamped", lambda: mnn.orthogonality_report(torch.eye(3), -1), E,
     "clamped_thresholds"),
    ("report-empty", lambda: mnn.orthogonality_report(torch.zeros(0, 3)), E, "D, K >= 1"),
    # errors.py
    ("unsupported-none", lambda: (_ for _ in ()).throw(ma.UnsupportedOperation(None)), E,
     "None"),
]


@pytest.mark.parametrize("call, error, match", [r[1:] for r in REGRESSIONS],
                         ids=[r[0] for r in REGRESSIONS])
def test_regressions(call: Callable[[], Any], error: type[Exception], match: str):
    with watchdog(TIME_BOUND), memory_bound(MEMORY_BOUND), pytest.raises(error, match=match):
        call()


def test_regression_results():
    """Fixed results: overflow gives inf, not NaN; empty batches stay empty; half
    precision works where a float32 kernel exists."""
    huge = losses.weight_orthogonality(torch.eye(2) * 1e30)  # W W^T overflows on its diagonal
    assert float(huge) == 0.0  # was NaN (inf - inf on the diagonal)
    empty = mnn.BetaVQPool2d(2, 2, 0.5)(torch.zeros(0, 3, 4, 4))
    assert empty.shape == (0, 3, 2, 2)  # was a RuntimeError (ambiguous reshape)
    assert diagram().power(torch.zeros(0, 2, dtype=torch.float64)).shape == (0, 8)
    q = mnn.nearest_orthonormal(torch.randn(4, 2).half())
    assert q.dtype == torch.float16 and torch.allclose(q.float().T @ q.float(), torch.eye(2),
                                                       atol=1e-2)
    err = ma.UnsupportedOperation(3)
    assert err.problems == ["3"]  # was a TypeError ('int' object is not iterable)
    assert mnn.BetaVQ(beta=[0.3])(torch.ones(2)).shape == (2,)  # one beta as a list


def test_watchdog_interrupts_a_hang():
    """The time bound is enforced: a call that does not return is a failure."""
    hang = R("hang", lambda: time.sleep(5), dict)
    start = time.perf_counter()
    problem, _ = judge(hang, None, {}, bound=0.2)
    assert problem is not None and "no result within" in problem
    assert time.perf_counter() - start < 2

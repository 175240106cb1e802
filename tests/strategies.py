"""Hypothesis strategies for random max-affine spline networks, and independent
references for the geometry of their regions.

Reused by the graph, affine-map, code and partition tests.  The public API:

* :func:`architectures` -- ``architectures(input_kind="flat" | "image" | "seq",
  dtype=torch.float64)`` draws an :class:`Architecture`: a user ``nn.Module`` (eval
  mode, seeded parameters, randomized batch-norm statistics) built from random
  blocks -- linear / conv (any stride, padding, groups, dilation), batch-norm,
  residual blocks, ReLU / leaky / abs / PReLU / Hardtanh / ReLU6 / clamp, max-pool
  and average pooling (any kernel, stride, padding, dilation, ceil mode), adaptive
  average and max pooling, maxima over the spatial axes (``amax`` / ``max(dim)``),
  flatten / view / transpose, ``torch.maximum`` / ``minimum`` / ``cat``
  branches -- each both as ``nn`` modules and as functional calls, nested in user
  submodules (some modules called twice).
* :func:`inputs` -- a batch for an architecture, drawn from a seed and a scale.
* :func:`margins` / :func:`boundary_distance` -- the signed margins of every unit's
  code (positive inside the region) and the exact distance from ``x`` to the
  boundary of its region, computed from the recorded pre-activations and the frozen
  (affine) graph, with max-pool windows extracted independently by ``unfold``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn

from maxaffine import ops
from maxaffine.graph import SplineGraph

INPUT_KINDS = ("flat", "image", "seq")
ACTIVATIONS = ("relu", "leaky", "abs", "prelu", "hardtanh", "relu6", "clamp", "maximum")


@dataclass(frozen=True, eq=False)
class Architecture:
    """A drawn network: ``model`` (eval mode), per-sample ``input_shape``, ``blocks``
    (one readable line per block, shown when a property fails) and the ``seed`` of
    its parameters."""

    model: nn.Module
    input_shape: tuple[int, ...]
    blocks: tuple[str, ...]
    seed: int

    def __repr__(self) -> str:
        body = "; ".join(self.blocks)
        return f"Architecture({self.input_shape} -> {body}; seed={self.seed})"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def sample(self, n: int, seed: int = 0, scale: float = 1.0) -> Tensor:
        """A batch (n, *input_shape) of Gaussian inputs."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((n, *self.input_shape), generator=gen, dtype=torch.float64)
        return (x * scale).to(self.dtype)


# ------------------------------------------------------------------------ modules


class Activation(nn.Module):
    """Piecewise-affine activations written as functional calls."""

    def __init__(self, kind: str, channels: int, lo: float, hi: float, slope: float,
                 variant: int):
        super().__init__()
        self.kind, self.lo, self.hi, self.slope, self.variant = kind, lo, hi, slope, variant
        if kind == "prelu":
            self.weight = nn.Parameter(torch.empty(channels))

    def forward(self, x: Tensor) -> Tensor:
        k, v = self.kind, self.variant
        if k == "relu":
            return (F.relu(x), x.relu(), torch.relu(x))[v]
        if k == "leaky":
            return F.leaky_relu(x, self.slope)
        if k == "abs":
            return (torch.abs(x), x.abs(), abs(x))[v]
        if k == "prelu":
            return F.prelu(x, self.weight)
        if k == "hardtanh":
            return F.hardtanh(x, self.lo, self.hi)
        if k == "relu6":
            return F.relu6(x * 4.0)
        if k == "clamp":
            return (torch.clamp(x, min=self.lo, max=self.hi), x.clamp(self.lo),
                    torch.clip(x, max=self.hi))[v]
        # maximum: a leaky ReLU written as max(x, a x), or its min-form mirror
        if v == 1:
            return torch.minimum(x, x * self.slope)
        return torch.maximum(x, self.slope * x)


class Abs(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.abs()


class Linear(nn.Module):
    """``F.linear`` with the block's own parameters."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.bias = nn.Parameter(torch.empty(d_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class Conv(nn.Module):
    """``F.conv1d`` / ``F.conv2d`` with the block's own parameters."""

    def __init__(self, dims: int, c_in: int, c_out: int, k: int, stride: int, padding: int,
                 dilation: int, groups: int, bias: bool):
        super().__init__()
        self.dims, self.stride, self.padding = dims, stride, padding
        self.dilation, self.groups = dilation, groups
        self.weight = nn.Parameter(torch.empty(c_out, c_in // groups, *([k] * dims)))
        self.bias = nn.Parameter(torch.empty(c_out)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                    self.groups)


class BatchNorm(nn.Module):
    """``F.batch_norm`` with running statistics, ``training=self.training``."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=self.training, eps=1e-4)


class Pool(nn.Module):
    """Functional max / average pooling (1-D or 2-D)."""

    def __init__(self, dims: int, kind: str, k: int, stride: int, padding: int, dilation: int,
                 ceil: bool):
        super().__init__()
        self.dims, self.kind, self.k, self.stride = dims, kind, k, stride
        self.padding, self.dilation, self.ceil = padding, dilation, ceil

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "max":
            pool = F.max_pool1d if self.dims == 1 else F.max_pool2d
            return pool(x, self.k, self.stride, self.padding, self.dilation, self.ceil)
        pool = F.avg_pool1d if self.dims == 1 else F.avg_pool2d
        return pool(x, self.k, self.stride, self.padding, self.ceil, count_include_pad=False)


class Residual(nn.Module):
    """``act(skip(x) +/- inner(x))``; ``act`` may be the same module as one inside
    ``inner`` (a module called twice)."""

    def __init__(self, inner: nn.Module, act: nn.Module, op: str):
        super().__init__()
        self.inner, self.act, self.op = inner, act, op

    def forward(self, x: Tensor) -> Tensor:
        h = self.inner(x)
        if self.op == "sub":
            return self.act(x - h)
        if self.op == "torch.add":
            return self.act(torch.add(x, h, alpha=0.5))
        return self.act(h + x)


class Branches(nn.Module):
    """Two branches joined by ``torch.maximum`` / ``torch.minimum`` / ``torch.cat``."""

    def __init__(self, a: nn.Module, b: nn.Module, join: str):
        super().__init__()
        self.a, self.b, self.join = a, b, join

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.a(x), self.b(x)
        if self.join == "maximum":
            return torch.maximum(a, b)
        if self.join == "minimum":
            return a.minimum(b)
        return torch.cat([a, b], dim=1)


class Lambda(nn.Module):
    """Shape glue written inline (flatten, view, transpose, slicing, scaling, maxima
    over the spatial axes)."""

    def __init__(self, kind: str, arg: int = 0):
        super().__init__()
        self.kind, self.arg = kind, arg

    def forward(self, x: Tensor) -> Tensor:
        k = self.kind
        if k == "flatten":
            return x.flatten(1)
        if k == "torch.flatten":
            return torch.flatten(x, 1)
        if k == "view":
            return x.contiguous().view(x.size(0), -1)
        if k == "mean":
            return x.mean((-2, -1)) if self.arg == 2 else x.mean(-1)
        if k == "amax":
            return x.amax((-2, -1)) if self.arg == 2 else x.max(-1).values
        if k == "transpose":
            return x.transpose(-1, -2)
        if k == "slice":
            return x[:, self.arg:]
        if k == "scale":
            return (0.5 * x, -x / 2.0, x * 4.0)[self.arg]
        if k == "unsqueeze":
            return x.unsqueeze(1)
        raise AssertionError(k)


class Net(nn.Module):
    """The drawn network: a body of blocks (user submodules) and a head."""

    def __init__(self, body: list[nn.Module], head: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*body)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


# ----------------------------------------------------------------------- drawing

Draw = Callable[[st.SearchStrategy], object]


def _activation(draw: Draw, channels: int) -> tuple[nn.Module, str]:
    kind = draw(st.sampled_from(ACTIVATIONS))
    functional = draw(st.booleans())
    lo = -draw(st.floats(0.1, 1.0))
    hi = draw(st.floats(0.1, 1.0))
    slope = draw(st.sampled_from([0.1, -0.3, 0.5]))
    variant = draw(st.integers(0, 2)) if kind in ("relu", "abs", "clamp") else (
        draw(st.integers(0, 1)) if kind == "maximum" else 0)
    if functional or kind in ("clamp", "maximum"):
        return (Activation(kind, channels, lo, hi, slope, variant),
                f"F.{kind}[{variant}](lo={lo:.2f},hi={hi:.2f},a={slope})")
    module = {
        "relu": lambda: nn.ReLU(),
        "leaky": lambda: nn.LeakyReLU(slope),
        "abs": lambda: Abs(),
        "prelu": lambda: nn.PReLU(channels),
        "hardtanh": lambda: nn.Hardtanh(lo, hi),
        "relu6": lambda: nn.Sequential(Lambda("scale", 2), nn.ReLU6()),
    }[kind]()
    return module, f"nn.{kind}(lo={lo:.2f},hi={hi:.2f},a={slope})"


def _linear(draw: Draw, d_in: int, d_out: int) -> tuple[nn.Module, str]:
    if draw(st.booleans()):
        return nn.Linear(d_in, d_out, bias=draw(st.booleans())), f"nn.Linear({d_in},{d_out})"
    return Linear(d_in, d_out), f"F.linear({d_in},{d_out})"


def _batchnorm(draw: Draw, channels: int, dims: int) -> tuple[nn.Module, str]:
    if draw(st.booleans()):
        cls = nn.BatchNorm1d if dims <= 1 else nn.BatchNorm2d
        return cls(channels), f"nn.BatchNorm({channels})"
    return BatchNorm(channels), f"F.batch_norm({channels})"


def _conv(draw: Draw, dims: int, c_in: int, size: tuple[int, ...], same: bool = False
          ) -> tuple[nn.Module, int, tuple[int, ...], str]:
    """A conv whose output is non-empty; ``same``: stride 1 and output size = input."""
    g = draw(st.sampled_from([d for d in (1, 2, 3) if c_in % d == 0]))
    c_out = g * draw(st.integers(1, 3)) if not same else c_in
    if same:
        k, stride, dil = 3, 1, draw(st.integers(1, 2))
        pad = dil
    else:
        k = draw(st.integers(1, min(3, *size)))
        dil = draw(st.integers(1, 2))
        if dil * (k - 1) + 1 > min(size):
            dil = 1
        stride = draw(st.integers(1, 3))
        pad = draw(st.integers(0, 2))
    out = tuple((s + 2 * pad - dil * (k - 1) - 1) // stride + 1 for s in size)
    desc = f"conv{dims}d({c_in}->{c_out},k={k},s={stride},p={pad},d={dil},g={g})"
    if draw(st.booleans()):
        cls = nn.Conv1d if dims == 1 else nn.Conv2d
        module = cls(c_in, c_out, k, stride, pad, dil, g, bias=draw(st.booleans()))
        return module, c_out, out, "nn." + desc
    return Conv(dims, c_in, c_out, k, stride, pad, dil, g, True), c_out, out, "F." + desc


def _pool(draw: Draw, dims: int, size: tuple[int, ...]
          ) -> tuple[nn.Module, tuple[int, ...], str]:
    kind = draw(st.sampled_from(["max", "max", "avg"]))
    k = draw(st.integers(1, min(3, *size)))
    dil = draw(st.integers(1, 2)) if kind == "max" else 1
    if dil * (k - 1) + 1 > min(size):
        dil = 1
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, k // 2))
    ceil = draw(st.booleans())
    desc = f"{kind}pool{dims}d(k={k},s={stride},p={pad},d={dil},ceil={ceil})"
    if draw(st.booleans()):
        module = Pool(dims, kind, k, stride, pad, dil, ceil)
        desc = "F." + desc
    elif kind == "max":
        cls = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
        module = cls(k, stride, pad, dil, ceil_mode=ceil)
        desc = "nn." + desc
    else:
        cls = nn.AvgPool1d if dims == 1 else nn.AvgPool2d
        module = cls(k, stride, pad, ceil_mode=ceil)
        desc = "nn." + desc
    with torch.no_grad():
        out = tuple(module(torch.zeros(1, 1, *size)).shape[2:])
    return module, out, desc


@st.composite
def _flat_block(draw: Draw, d: int) -> tuple[nn.Module, int, str]:
    kind = draw(st.sampled_from(["dense", "dense", "residual", "branches", "pool", "glue"]))
    if kind == "dense":
        w = draw(st.integers(1, 8))
        lin, desc = _linear(draw, d, w)
        layers = [lin]
        if draw(st.booleans()):
            bn, bdesc = _batchnorm(draw, w, 1)
            layers.append(bn)
            desc += " " + bdesc
        act, adesc = _activation(draw, w)
        layers.append(act)
        if draw(st.booleans()):
            layers.append(nn.Dropout(0.3))
            desc += " dropout"
        return nn.Sequential(*layers), w, f"{desc} {adesc}"
    if kind == "residual":
        act, adesc = _activation(draw, d)
        lin1, d1 = _linear(draw, d, d)
        lin2, d2 = _linear(draw, d, d)
        reuse = draw(st.booleans())
        inner_act = act if reuse else _activation(draw, d)[0]
        op = draw(st.sampled_from(["add", "sub", "torch.add"]))
        block = Residual(nn.Sequential(lin1, inner_act, lin2), act, op)
        return block, d, f"residual[{op}]({d1} act {d2}) {adesc}{' reused' if reuse else ''}"
    if kind == "branches":
        join = draw(st.sampled_from(["maximum", "minimum", "cat"]))
        w = draw(st.integers(1, 6))
        a, da = _linear(draw, d, w)
        b, db = _linear(draw, d, w)
        act, adesc = _activation(draw, w)
        return Branches(a, nn.Sequential(b, act), join), 2 * w if join == "cat" else w, (
            f"{join}({da}, {db} {adesc})")
    if kind == "pool":
        if d < 2:
            return nn.Identity(), d, "identity"
        pool, out, desc = _pool(draw, 1, (d,))
        return nn.Sequential(Lambda("unsqueeze"), pool, nn.Flatten()), out[0], desc
    glue = draw(st.sampled_from(["scale", "slice"]))
    if glue == "slice" and d >= 2:
        start = draw(st.integers(1, d - 1))
        return Lambda("slice", start), d - start, f"x[:, {start}:]"
    neg = draw(st.integers(0, 1))
    return Lambda("scale", neg), d, "-x/2" if neg else "0.5*x"


@st.composite
def _spatial_block(draw: Draw, dims: int, c: int, size: tuple[int, ...]
                   ) -> tuple[nn.Module, int, tuple[int, ...], str]:
    kind = draw(st.sampled_from(["conv", "conv", "pool", "residual", "branches", "glue"]))
    if kind == "conv":
        conv, c_out, out, desc = _conv(draw, dims, c, size)
        layers = [conv]
        if draw(st.booleans()):
            bn, bdesc = _batchnorm(draw, c_out, dims)
            layers.append(bn)
            desc += " " + bdesc
        act, adesc = _activation(draw, c_out)
        layers.append(act)
        return nn.Sequential(*layers), c_out, out, f"{desc} {adesc}"
    if kind == "pool":
        pool, out, desc = _pool(draw, dims, size)
        return pool, c, out, desc
    if kind == "residual":
        conv1, _, _, d1 = _conv(draw, dims, c, size, same=True)
        conv2, _, _, d2 = _conv(draw, dims, c, size, same=True)
        bn, bdesc = _batchnorm(draw, c, dims)
        act, adesc = _activation(draw, c)
        reuse = draw(st.booleans())
        inner_act = act if reuse else _activation(draw, c)[0]
        op = draw(st.sampled_from(["add", "sub", "torch.add"]))
        block = Residual(nn.Sequential(conv1, bn, inner_act, conv2), act, op)
        return block, c, size, f"residual[{op}]({d1} {bdesc} {d2}) {adesc}"
    if kind == "branches":
        join = draw(st.sampled_from(["maximum", "minimum", "cat"]))
        conv1, c_out, out, d1 = _conv(draw, dims, c, size, same=True)
        conv2, _, _, d2 = _conv(draw, dims, c, size, same=True)
        act, adesc = _activation(draw, c_out)
        return Branches(conv1, nn.Sequential(conv2, act), join), (
            2 * c_out if join == "cat" else c_out), out, f"{join}({d1}, {d2} {adesc})"
    if dims == 2 and draw(st.booleans()):
        return Lambda("transpose"), c, size[::-1], "transpose(H,W)"
    neg = draw(st.integers(0, 1))
    return Lambda("scale", neg), c, size, "-x/2" if neg else "0.5*x"


def _spatial_head(draw: Draw, dims: int, c: int, size: tuple[int, ...]
                  ) -> tuple[list[nn.Module], int, str]:
    kind = draw(st.sampled_from(["flatten", "nn.Flatten", "torch.flatten", "view", "adaptive",
                                 "adaptive-max", "mean", "amax"]))
    if kind == "nn.Flatten":
        return [nn.Flatten()], c * math.prod(size), kind
    if kind in ("flatten", "torch.flatten", "view"):
        return [Lambda(kind)], c * math.prod(size), kind
    if kind == "mean":
        return [Lambda("mean", dims)], c, "mean(spatial)"
    if kind == "amax":  # a max over the spatial axes (maxout): a window maximum
        return [Lambda("amax", dims)], c, "amax(spatial)"
    out = tuple(draw(st.integers(1, s)) for s in size)
    if kind == "adaptive-max":
        cls = nn.AdaptiveMaxPool1d if dims == 1 else nn.AdaptiveMaxPool2d
    else:
        cls = nn.AdaptiveAvgPool1d if dims == 1 else nn.AdaptiveAvgPool2d
    return [cls(out if dims == 2 else out[0]), nn.Flatten()], c * math.prod(out), f"{kind}{out}"


@st.composite
def architectures(draw: Draw, input_kind: str = "flat", dtype: torch.dtype = torch.float64,
                  max_blocks: int = 3) -> Architecture:
    """A random piecewise-affine network for inputs of kind ``"flat"`` (D,),
    ``"image"`` (C, H, W) or ``"seq"`` (C, L); see the module docstring."""
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    blocks: list[nn.Module] = []
    descs: list[str] = []
    n_blocks = draw(st.integers(1, max_blocks))
    if input_kind == "flat":
        d = draw(st.integers(1, 6))
        input_shape: tuple[int, ...] = (d,)
        for _ in range(n_blocks):
            block, d, desc = draw(_flat_block(d))
            blocks.append(block)
            descs.append(desc)
        width = d
    else:
        dims = 2 if input_kind == "image" else 1
        c = draw(st.integers(1, 3))
        size = tuple(draw(st.integers(3, 7)) for _ in range(dims))
        input_shape = (c, *size)
        for _ in range(n_blocks):
            block, c, size, desc = draw(_spatial_block(dims, c, size))
            blocks.append(block)
            descs.append(desc)
        head, width, desc = _spatial_head(draw, dims, c, size)
        blocks += head
        descs.append(desc)
    n_out = draw(st.integers(1, 4))
    head_layer, desc = _linear(draw, width, n_out)
    descs.append(desc)
    seed = draw(st.integers(0, 2**31 - 1))
    model = Net(blocks, head_layer).to(dtype)
    initialize(model, seed)
    return Architecture(model.eval(), input_shape, tuple(descs), seed)


def inputs(arch: Architecture, n: int = 4) -> st.SearchStrategy[Tensor]:
    """Batches (n, *input_shape) for ``arch``: Gaussian, seeded, scale in [0.3, 3]."""
    return st.builds(lambda seed, scale: arch.sample(n, seed, scale),
                     st.integers(0, 2**31 - 1), st.sampled_from([0.3, 1.0, 3.0]))


@torch.no_grad()
def initialize(model: nn.Module, seed: int, gain: float = 1.5) -> None:
    """Seeded parameters: weights N(0, gain^2 / fan_in), biases N(0, 0.3^2); batch-norm
    with random running statistics and signed scales; PReLU slopes in [-0.5, 0.8]."""
    gen = torch.Generator().manual_seed(seed)

    def fill(t: Tensor, sample: Callable[[tuple[int, ...]], Tensor]) -> None:
        t.copy_(sample(tuple(t.shape)).to(t.dtype))

    def normal(std: float) -> Callable[[tuple[int, ...]], Tensor]:
        return lambda s: torch.randn(s, generator=gen, dtype=torch.float64) * std

    def uniform(lo: float, hi: float) -> Callable[[tuple[int, ...]], Tensor]:
        return lambda s: lo + (hi - lo) * torch.rand(s, generator=gen, dtype=torch.float64)

    for module in model.modules():
        params = dict(module.named_parameters(recurse=False))
        if "running_mean" in dict(module.named_buffers(recurse=False)):
            fill(module.running_mean, normal(0.5))
            fill(module.running_var, uniform(0.5, 2.0))
            if "weight" in params:
                sign = torch.randint(0, 2, params["weight"].shape, generator=gen) * 2 - 1
                fill(params["weight"], lambda s, sign=sign: uniform(0.5, 1.5)(s) * sign)
            if "bias" in params:
                fill(params["bias"], normal(0.3))
            continue
        if isinstance(module, nn.PReLU) or (isinstance(module, Activation)
                                            and module.kind == "prelu"):
            fill(params["weight"], uniform(-0.5, 0.8))
            continue
        for name, p in params.items():
            if name == "weight" and p.dim() >= 2:
                fill(p, normal(gain / math.sqrt(p[0].numel())))
            elif name == "bias":
                fill(p, normal(0.3))


# ------------------------------------------------------------- region geometry


def maxpool_windows(rule: ops.MaxPool, x: Tensor, out_shape: tuple[int, ...]) -> Tensor:
    """(N, C, *out, K) entries of every max-pool window of ``x``, padding as -inf, the
    K axis row-major over the kernel; extracted with ``unfold``, independently of the
    op rule's index arithmetic."""
    d = rule.spatial_dims
    pads: list[int] = []
    for a in reversed(range(d)):  # F.pad lists the last axis first
        extra = rule.stride[a] * (rule.kernel[a] + 1) * rule.dilation[a]
        pads += [rule.padding[a], rule.padding[a] + extra]
    w = F.pad(x, pads, value=-math.inf)
    for a in range(d):
        span = rule.dilation[a] * (rule.kernel[a] - 1) + 1
        w = w.unfold(2 + a, span, rule.stride[a])[..., :: rule.dilation[a]]
        w = w.narrow(2 + a, 0, out_shape[-d + a])
    return w.flatten(-d)


def margins(graph: SplineGraph, x: Tensor, codes: dict[str, Tensor]
            ) -> list[tuple[str, Tensor, Tensor]]:
    """Signed margins of every unit's code, evaluated with ``codes`` frozen (so each
    is an affine function of ``x``): one ``(name, margins, alternative)`` per
    nonlinearity, ``margins`` of shape (N, *code_shape, J) positive where ``codes``
    is the code the unit would select (``inf`` where a candidate does not exist),
    ``alternative`` the code the unit selects once margin j turns negative.

    Elementwise units with breakpoints b_i: ``+-(z - b_i)``; ``maximum(a, b)``:
    ``+-(b - a)``; max-pool: ``z[r] - z[j]`` over the other window entries j.
    """
    ev = graph._run(x, codes, True)
    out = []
    for layer in graph.layers:
        rule, code, args = layer.rule, codes[layer.name].long(), ev.inputs[layer.name]
        if isinstance(rule, ops.Elementwise):
            z = args[0]
            ms, alt = [], []
            for i, b in enumerate(rule.breakpoints()):
                if math.isinf(b):
                    continue
                above = code > i  # code counts the breakpoints strictly below z
                ms.append(torch.where(above, z - b, b - z))
                alt.append(torch.where(above, torch.full_like(code, i),
                                       torch.full_like(code, i + 1)))
            out.append((layer.name, torch.stack(ms, -1), torch.stack(alt, -1)))
        elif isinstance(rule, ops.Maximum):
            a, b = args[0], args[1]
            diff = b - a if not isinstance(rule, ops.Minimum) else a - b
            m = torch.where(code == 1, diff, -diff)
            out.append((layer.name, m.unsqueeze(-1), (1 - code).unsqueeze(-1)))
        elif isinstance(rule, ops.MaxPool):
            if isinstance(rule, ops.KernelMaxPool):
                win = maxpool_windows(rule, args[0], layer.code_shape)
            else:  # adaptive pooling, amax: from the op's own window table
                t = rule.window_index(tuple(args[0].shape[1:]))
                win = args[0].flatten(1)[:, t.clamp(min=0)].masked_fill(t < 0, -math.inf)
                win = win.reshape(*code.shape, -1)
            chosen = win.gather(-1, code.unsqueeze(-1))
            m = chosen - win
            k = win.shape[-1]
            alt = torch.arange(k).expand(m.shape)
            m = torch.where(alt == code.unsqueeze(-1), torch.inf, m)
            out.append((layer.name, m, alt))
        else:
            raise AssertionError(f"no margin reference for {type(rule).__name__}")
    return out


def margin_gradients(graph: SplineGraph, x: Tensor, codes: dict[str, Tensor]
                     ) -> tuple[Tensor, Tensor]:
    """All margins flattened, (N, M), and their gradients w.r.t. the sample, (N, M, D),
    by ``torch.func.jacfwd`` of the frozen graph (infinite margins get gradient 0)."""

    def flat(v: Tensor) -> Tensor:
        ms = [m.flatten(1) for _, m, _ in margins(graph, v, codes)]
        return torch.cat(ms, 1) if ms else v.new_zeros(v.shape[0], 0)

    m = flat(x)
    n = x.shape[0]
    if m.shape[1] == 0:
        return m, x.new_zeros(n, 0, math.prod(x.shape[1:]))
    jac = torch.func.jacfwd(flat)(x)  # (N, M, N, *in)
    jac = jac.reshape(n, m.shape[1], n, -1)
    idx = torch.arange(n)
    return m, jac[idx, :, idx].nan_to_num(0.0, 0.0, 0.0)


def boundary_distance(graph: SplineGraph, x: Tensor, codes: dict[str, Tensor]
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Exact Euclidean distance from each sample to the boundary of its region.

    The region of ``x`` is the polytope where every frozen margin is >= 0, so the
    distance is ``min_k m_k / ||grad m_k||`` over the non-constant margins.  Returns
    ``(distance (N,), index of the nearest margin (N,), gradients (N, M, D))``;
    distance ``inf`` when no margin depends on ``x``.
    """
    m, g = margin_gradients(graph, x, codes)
    if m.shape[1] == 0:
        inf = torch.full((x.shape[0],), torch.inf, dtype=x.dtype)
        return inf, torch.zeros(x.shape[0], dtype=torch.long), g
    norm = g.norm(dim=-1)
    live = (norm > 1e-12 * (1.0 + norm.amax(dim=1, keepdim=True))) & torch.isfinite(m)
    ratio = torch.where(live, m / norm.clamp_min(1e-300), torch.inf)
    dist, k = ratio.min(dim=1)
    return dist, k, g


def locate(graph: SplineGraph, x: Tensor, codes: dict[str, Tensor], n: int, k: int
           ) -> tuple[str, tuple[int, ...], int]:
    """Which unit owns flat margin ``k`` of sample ``n``: ``(unit name, unit index
    within one sample's code tensor, code it switches to when that margin turns
    negative)``."""
    start = 0
    one = {name: c[n : n + 1] for name, c in codes.items()}
    for name, m, alt in margins(graph, x[n : n + 1], one):
        size = m[0].numel()
        if k < start + size:
            pos = torch.unravel_index(torch.tensor(k - start), tuple(m.shape[1:]))
            pos = tuple(int(p) for p in pos)
            return name, pos[:-1], int(alt[(0, *pos)])
        start += size
    raise IndexError(k)

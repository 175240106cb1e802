"""The op contract: every mode of a nonlinearity lives on its rule.

For every registered nonlinearity rule: its ``pieces`` have the code as argmax, its
``boundary`` (lines or windows over its ``columns``) gives the code, and along
random segments the code changes exactly where a boundary changes sign. Two ops
registered here by the test itself (one from its breakpoints, one from ``code``,
``piece`` and ``pieces`` alone) then go through every public function.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import maxaffine as ma
import maxaffine.power as power
from maxaffine import ops
from reference_partition import reference_partition

D64 = torch.float64


# ------------------------------------------------------------------ ops of the test


@torch.fx.wrap
def shifted_relu(x: Tensor) -> Tensor:
    """``max(x, 1/2)``: a MASO unit given by its breakpoint (an Elementwise rule)."""
    return torch.clamp(x, min=0.5)


@torch.fx.wrap
def clipped_relu(x: Tensor) -> Tensor:
    """``min(max(x, 0), 1)``: given by ``code``, ``piece`` and ``pieces`` only."""
    return x.clamp(0.0, 1.0)


class ShiftedReLU(ops.Elementwise):
    single_max = True

    def breakpoints(self) -> tuple[float, ...]:
        return (0.5,)

    def piece(self, code: Tensor, z: Tensor, *args, **kwargs) -> Tensor:
        return torch.where(code.bool(), z, torch.full_like(z, 0.5))

    def pieces(self, z: Tensor, *args, **kwargs) -> tuple[Tensor, None]:
        return torch.stack([torch.full_like(z, 0.5), z], -1), None


class ClippedReLU(ops.Nonlinearity):
    num_pieces = 3

    def code(self, z: Tensor, *args, **kwargs) -> Tensor:
        return (z > 0).to(torch.uint8) + (z > 1).to(torch.uint8)

    def piece(self, code: Tensor, z: Tensor, *args, **kwargs) -> Tensor:
        return torch.where(code == 1, z, (code == 2).to(z.dtype))

    def pieces(self, z: Tensor, *args, **kwargs) -> tuple[Tensor, None]:
        # 0, z, 2z - 1: the argmax counts the breakpoints 0 and 1 below z
        return torch.stack([torch.zeros_like(z), z, 2 * z - 1], -1), None


for _target, _rule in ((shifted_relu, ShiftedReLU), (clipped_relu, ClippedReLU)):
    if ops.lookup(_target) is None:
        ma.register_op(_target, _rule)


# ------------------------------------------------------------------ every rule


class Probe(nn.Module):
    """One call of ``fn`` on an affine map of a 2-D input (then a linear head)."""

    def __init__(self, fn, shape: tuple[int, ...], width: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.shape, self.fn = shape, fn
        self.lin = nn.Linear(2, math.prod(shape))
        with torch.no_grad():
            self.lin.weight.mul_(3)
        self.head = nn.LazyLinear(3)
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        h = self.fn(self.lin(x).reshape(-1, *self.shape))
        return self.head(h.flatten(1))


def _shifted(x):
    return shifted_relu(x)


def _clipped(x):
    return clipped_relu(x)


# rule -> a function that uses it on a (N, *shape) tensor, and the shape
CASES: dict[type, tuple] = {
    ops.ReLU: (torch.relu, (6,)),
    ops.LeakyReLU: (lambda h: F.leaky_relu(h, 0.2), (6,)),
    ops.PReLU: (nn.PReLU(6, init=0.3), (6,)),
    ops.Abs: (torch.abs, (6,)),
    ops.Hardtanh: (lambda h: F.hardtanh(h, -0.5, 0.7), (6,)),
    ops.Hardsigmoid: (lambda h: F.hardsigmoid(4 * h), (6,)),
    ops.Softshrink: (lambda h: F.softshrink(h, 0.4), (6,)),
    ops.Maximum: (lambda h: torch.maximum(h[:, :3], -h[:, 3:] * 0.7 + 0.1), (6,)),
    ops.Minimum: (lambda h: torch.minimum(h[:, :3], h[:, 3:] * 0.5), (6,)),
    ops.MaxPool1d: (nn.MaxPool1d(2, 1, padding=1), (2, 4)),
    ops.MaxPool2d: (nn.MaxPool2d(2, 1, padding=1), (1, 3, 3)),
    ops.MaxPool3d: (nn.MaxPool3d(2), (1, 2, 2, 2)),
    ops.AdaptiveMaxPool1d: (nn.AdaptiveMaxPool1d(3), (2, 5)),
    ops.AdaptiveMaxPool2d: (nn.AdaptiveMaxPool2d((2, 2)), (1, 3, 3)),
    ops.AdaptiveMaxPool3d: (nn.AdaptiveMaxPool3d(1), (1, 2, 2, 2)),
    ops.Amax: (lambda h: h.amax(-1), (3, 3)),
    ShiftedReLU: (_shifted, (6,)),
    ClippedReLU: (_clipped, (6,)),
}


def _registered_nonlinearities() -> set[type]:
    return {rule for rule in ops._REGISTRY.values()
            if isinstance(rule, type) and issubclass(rule, ops.Nonlinearity)}


def test_every_registered_nonlinearity_is_in_the_table():
    missing = _registered_nonlinearities() - set(CASES)
    assert not missing, f"add these rules to CASES: {sorted(r.__name__ for r in missing)}"


def _probe(rule: type, seed: int = 0) -> tuple[nn.Module, ma.SplineGraph]:
    fn, shape = CASES[rule]
    net = Probe(fn, shape, 6, seed).to(D64)
    net(torch.zeros(1, 2, dtype=D64))  # materialise the lazy head
    net.eval()
    graph = ma.trace(net, torch.zeros(1, 2, dtype=D64))
    assert any(type(u.rule) is rule for u in graph.layers), (rule, [u.kind for u in graph.layers])
    return net, graph


def _layer(graph: ma.SplineGraph, rule: type):
    return next(u for u in graph.layers if type(u.rule) is rule)


def _boundary_code(rule, inputs) -> Tensor:
    """The code from the rule's boundary description alone."""
    desc = rule.boundary(*inputs)
    cols = rule.columns(*inputs)
    n = cols.shape[0]
    if isinstance(desc, ops.Windows):
        vals = cols[:, desc.table.clamp(min=0)].masked_fill(desc.table < 0, -math.inf)
        return vals.argmax(-1)  # first of equal maxima
    second = torch.where(desc.neg >= 0, cols[:, desc.neg.clamp(min=0)], 0.0)
    value = cols[:, desc.pos] - second - desc.level.to(cols.dtype)
    return (value > 0).reshape(n, -1, desc.per_unit).sum(-1) + desc.base


def _boundary_values(rule, inputs) -> Tensor:
    """(N, boundaries) every function whose sign change may be a boundary."""
    desc = rule.boundary(*inputs)
    cols = rule.columns(*inputs)
    if isinstance(desc, ops.Windows):
        t = desc.table
        r = t.shape[1]
        a, b = torch.triu_indices(r, r, 1)
        ok = ((t[:, a] >= 0) & (t[:, b] >= 0)).flatten()
        diff = cols[:, t[:, a].clamp(min=0)] - cols[:, t[:, b].clamp(min=0)]
        return diff.flatten(1)[:, ok]
    second = torch.where(desc.neg >= 0, cols[:, desc.neg.clamp(min=0)], 0.0)
    return cols[:, desc.pos] - second - desc.level.to(cols.dtype)


@pytest.mark.parametrize("rule", list(CASES), ids=lambda r: r.__name__)
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_every_mode_agrees_with_the_code(rule, seed):
    _, graph = _probe(rule, seed % 7)
    layer = _layer(graph, rule)
    x = torch.randn(200, 2, dtype=D64, generator=torch.Generator().manual_seed(seed)) * 2
    ev = graph.evaluate(x, record=True)
    inputs, code = ev.inputs[layer.name], ev.codes[layer.name].long()
    # pieces: argmax is the code (absent pieces -inf); the selected piece's value is
    # the output where the unit is a single max
    pieces, valid = layer.rule.pieces(*inputs)
    assert pieces.shape == (*code.shape, pieces.shape[-1])
    if valid is not None:
        assert bool(torch.isinf(pieces[~valid]).all())
    assert torch.equal(pieces.argmax(-1), code)
    if layer.rule.single_max:
        out = layer.rule.piece(code.to(torch.uint8 if layer.num_pieces <= 256 else torch.int64),
                              *inputs)
        best = pieces.amax(-1)
        assert torch.allclose(best.abs(), out.abs(), atol=1e-12) or torch.allclose(
            best, out, atol=1e-12)
    # boundary: the code from lines or windows alone
    assert torch.equal(_boundary_code(layer.rule, inputs).reshape(code.shape), code)


@pytest.mark.parametrize("rule", list(CASES), ids=lambda r: r.__name__)
def test_codes_change_where_boundaries_change_sign(rule):
    _, graph = _probe(rule, 3)
    layer = _layer(graph, rule)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        a, b = torch.randn(2, 2, dtype=D64, generator=g) * 2
        t = torch.linspace(0, 1, 2001, dtype=D64)[:, None]
        ev = graph.evaluate(a + t * (b - a), record=True)
        code = ev.codes[layer.name].reshape(t.shape[0], -1)
        values = _boundary_values(layer.rule, ev.inputs[layer.name])
        changed = (code[1:] != code[:-1]).any(1)
        crossed = ((values[1:] > 0) != (values[:-1] > 0)).any(1)
        assert bool((crossed | ~changed).all())  # every code change crosses a boundary
        if isinstance(layer.rule.boundary(*ev.inputs[layer.name]), ops.Lines):
            assert torch.equal(changed, crossed)  # and every line crossing is one


# ------------------------------------------------------------------ ops of the test, end to end


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b, self.c = nn.Linear(2, 12), nn.Linear(12, 10), nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.c(clipped_relu(self.b(shifted_relu(self.a(x) * 2))))


@pytest.fixture(scope="module")
def user_net() -> nn.Module:
    return UserNet().to(D64).eval()


def test_user_ops_trace_map_and_code(user_net):
    x = torch.randn(64, 2, dtype=D64)
    graph = ma.trace(user_net, x)
    assert [u.kind for u in graph.layers] == ["ShiftedReLU", "ClippedReLU"]
    amap = ma.affine_map(user_net, x)
    assert torch.allclose(amap.reconstruct(), user_net(x), atol=1e-12)
    codes = ma.codes(user_net, x)
    assert codes["shifted_relu"].max() <= 1 and codes["clipped_relu"].max() <= 2


def test_user_ops_partitions(user_net):
    sl = ma.Slice.square(-1.5, 1.5)
    part = ma.partition_plane(user_net, sl, progress=False)
    # every face's code is its interior point's; the regions are the reference's
    assert torch.equal(ma.codes(user_net, part.interior).packed(), part.packed)
    ref = {code for _, code in reference_partition(user_net, sl)}
    assert {bytes(c.tolist()) for c in part.packed} == ref
    assert abs(float(part.areas.sum()) - 9.0) < 1e-9
    seg = ma.partition_segment(user_net, torch.tensor([-1.5, -1.0], dtype=D64),
                               torch.tensor([1.5, 1.2], dtype=D64))
    t = torch.linspace(0, 1, 4001, dtype=D64)[:, None]
    pts = torch.tensor([-1.5, -1.0], dtype=D64) + t * torch.tensor([3.0, 2.2], dtype=D64)
    dense = ma.codes(user_net, pts).region_ids()
    assert seg.num_regions >= int((dense[1:] != dense[:-1]).sum()) + 1


def test_user_ops_statistics_and_power(user_net):
    x = torch.randn(32, 2, dtype=D64, generator=torch.Generator().manual_seed(2))
    bd = ma.boundary_distance(user_net, x)
    # stepping just short of the distance keeps every code; just past changes some
    step = bd.direction * bd.total[:, None]
    same = ma.codes(user_net, x + 0.999 * step).packed() == ma.codes(user_net, x).packed()
    assert bool(same.all())
    moved = (ma.codes(user_net, x + 1.001 * step).packed() != ma.codes(user_net, x).packed()).any(1)
    assert bool(moved[torch.isfinite(bd.total)].all())
    lc = ma.local_complexity(user_net, x, radius=0.05)
    assert lc.values.shape == (32, 2)
    cells = ma.power_cells(user_net, x, layer="clipped_relu", input_space=True)
    assert torch.equal(cells.codes.long(), ma.codes(user_net, x)["clipped_relu"].long()
                       .reshape(cells.codes.shape))
    a, b = power.layer_pieces(user_net, x[:3], layer="shifted_relu")
    diagram = ma.power_diagram((a[0], b[0]))
    assert diagram.mu.shape[-1] == 2
    post = ma.vq_posterior(user_net, x, layer="shifted_relu")["shifted_relu"]  # its GMM
    assert torch.equal(post.argmax(-1), ma.codes(user_net, x)["shifted_relu"].long())
    with pytest.raises(ma.MaxAffineError, match="not a single max"):
        ma.vq_posterior(user_net, x, layer="clipped_relu")
    d = ma.vq_distance(user_net, x[:4], x)
    assert d.shape == (4, 32)
    density = ma.region_density(user_net, x[:4], x[4:8])
    assert density.total.shape[0] == 4


def test_user_ops_with_the_rest_of_the_public_api(user_net):
    x = torch.randn(40, 2, dtype=D64, generator=torch.Generator().manual_seed(4))
    sharing = ma.region_sharing(user_net, x)
    assert len(sharing.regions) == 2 and int(sharing.regions[-1]) >= 1
    dist, idx = ma.vq_knn(user_net, x[:5], x, k=3)
    assert idx.shape == (5, 3) and bool((dist[:, :1] == 0).all())  # each query finds itself
    part = ma.partition_plane(user_net, ma.Slice.square(-1.5, 1.5), progress=False)
    curvature = ma.boundary_curvature(part)
    assert isinstance(curvature.summary(), dict)
    # soften has no beta-VQ counterpart for a functional op of the user's: named
    with pytest.raises(ma.MaxAffineError, match=r"shifted_relu|clipped_relu"):
        ma.soften(user_net, 0.5)

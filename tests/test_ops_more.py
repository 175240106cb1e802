"""Issue 13, item 11: ops that were refused for the wrong reason.

Window maxima (adaptive max-pooling, max-pooling in 3-D, ``amax`` / ``max(dim)`` /
``min(dim)`` / ``amin``) against torch's own values, argmax indices and Jacobians on
random shapes; in-place operations followed as eager PyTorch does; refusals that
say *why* (not piecewise affine, or not implemented yet). The single-op checks
against ``torch.func.jacfwd`` are rows of the op table in ``test_graph.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import maxaffine as ma
from maxaffine import ops

DT = torch.float64


class Lambda(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def affine_then(shape: tuple[int, ...], op: nn.Module, seed: int) -> nn.Module:
    """An affine layer with a bias (so B is not 0) on the flattened sample, then ``op``."""
    torch.manual_seed(seed)
    d = math.prod(shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, d), nn.Unflatten(1, shape), op).double()


def check_spline(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The properties every traced spline must have; returns the codes."""
    graph = ma.trace(model, x)
    expected = model(x).reshape(x.shape[0], -1)
    torch.testing.assert_close(graph(x).reshape(x.shape[0], -1), expected, rtol=1e-12,
                               atol=1e-12)
    rev = ma.affine_map(graph, x, mode="reverse")
    fwd = ma.affine_map(graph, x, mode="forward")
    torch.testing.assert_close(rev.reconstruct(), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fwd.A, rev.A, rtol=1e-12, atol=1e-12)
    jac = torch.stack([torch.func.jacfwd(lambda v: model(v[None]).reshape(-1))(xi)
                       for xi in x])
    torch.testing.assert_close(rev.A.reshape(jac.shape), jac, rtol=1e-10, atol=1e-10)
    codes = graph.evaluate(x).codes
    x2 = torch.randn(x.shape, dtype=DT, generator=torch.Generator().manual_seed(1))
    frozen = graph.evaluate(x2, codes=codes).output.reshape(x.shape[0], -1)
    torch.testing.assert_close(frozen, rev.reconstruct(x2), rtol=1e-10, atol=1e-10)
    for layer in graph.layers:
        code = codes[layer.name]
        assert code.shape == (x.shape[0], *layer.code_shape)
        assert int(code.min()) >= 0 and int(code.max()) < layer.num_pieces
        hard = ma.vq_posterior(graph, x, layer=layer.name)[layer.name]
        assert torch.equal(hard.argmax(-1), code.long())
    return codes


# ------------------------------------------------------------ max / min over axes

REDUCTIONS = ("amax", "max", "amin", "min")


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
       data=st.data(), seed=st.integers(0, 99))
def test_max_and_min_over_axes_are_window_maxima(shape, data, seed):
    op = data.draw(st.sampled_from(REDUCTIONS))
    keepdim = data.draw(st.booleans())
    if op in ("max", "min"):
        dims: int | tuple[int, ...] = data.draw(st.integers(1, len(shape)))
    else:
        dims = tuple(sorted(data.draw(st.sets(st.integers(1, len(shape)), min_size=1))))
    if op == "max":
        fn = lambda h: h.max(dims, keepdim=keepdim).values  # noqa: E731
    elif op == "min":
        fn = lambda h: torch.min(h, dims, keepdim)[0]  # noqa: E731
    else:
        fn = lambda h: getattr(torch, op)(h, dims, keepdim)  # noqa: E731
    model = affine_then(shape, Lambda(fn), seed)
    x = torch.randn((3, *shape), dtype=DT, generator=torch.Generator().manual_seed(seed))
    (code,) = check_spline(model, x).values()
    h = model[:-1](x)
    if isinstance(dims, int):  # the code is the index torch returns (min: of the minimum)
        ref = (torch.max if op == "max" else torch.min)(h, dims, keepdim).indices
    else:
        axes = [a for a in range(1, h.dim()) if a not in dims]
        flat = h.permute(0, *axes, *dims).reshape(*[h.shape[a] for a in (0, *axes)], -1)
        ref = (flat.argmax(-1) if op == "amax" else flat.argmin(-1))
        if keepdim:
            ref = ref.reshape(code.shape)
    assert torch.equal(code.long(), ref)


def test_ties_go_to_the_first_entry_as_torch():
    x = torch.tensor([[[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]]], dtype=DT)
    graph = ma.trace(Lambda(lambda h: h.max(2)[0] + torch.min(h, 2).values), x)
    codes = list(graph.evaluate(x).codes.values())
    assert codes[0].tolist() == [[1, 0]] == x.max(2).indices.tolist()
    assert codes[1].tolist() == [[3, 0]] == x.min(2).indices.tolist()


def test_using_the_indices_of_max_is_refused_with_the_reason():
    class Indices(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            values, idx = x.max(1)
            return values + idx

    with pytest.raises(ma.UnsupportedOperation, match=r"indices .* not a piecewise-affine") \
            as info:
        ma.trace(Indices(), torch.randn(2, 3))
    (problem,) = info.value.problems  # one, about the max
    assert "(Tensor.max): the indices" in problem

    class Unused(nn.Module):  # v, _ = x.max(1): the indices are never read
        def forward(self, x: Tensor) -> Tensor:
            v, _ = x.max(1)
            return v

    x = torch.randn(4, 3, dtype=DT)
    torch.testing.assert_close(ma.trace(Unused(), x)(x), x.max(1).values)


@pytest.mark.parametrize("fn", [lambda x: torch.max(x), lambda x: x.amax(0),
                                lambda x: torch.amin(x)], ids=["max()", "amax(0)", "amin()"])
def test_reductions_over_the_batch_axis_are_refused(fn):
    with pytest.raises(ma.UnsupportedOperation, match="batch axis"):
        ma.trace(Lambda(fn), torch.randn(2, 3))


# ------------------------------------------------------------ pooling windows


def adaptive_code(h: Tensor, out: tuple[int, ...]) -> Tensor:
    """The documented code of adaptive max-pooling, from torch's own argmax indices:
    the offset inside the window, row-major over the largest window shape."""
    d = len(out)
    pool = F.adaptive_max_pool1d if d == 1 else F.adaptive_max_pool2d
    _, idx = pool(h, out, return_indices=True)
    sizes = h.shape[-d:]
    coords, code = [], torch.zeros_like(idx)
    for a in reversed(range(d)):
        coords.insert(0, idx % sizes[a])
        idx = idx // sizes[a]
    for a in range(d):
        n_in, n_out = sizes[a], out[a]
        starts = [i * n_in // n_out for i in range(n_out)]
        widths = [-(-(i + 1) * n_in // n_out) - s for i, s in enumerate(starts)]
        origin = torch.tensor(starts).reshape((n_out,) + (1,) * (d - 1 - a))
        code = code * max(widths) + coords[a] - origin
    return code


@given(d=st.integers(1, 2), channels=st.integers(1, 2), data=st.data(),
       seed=st.integers(0, 99))
def test_adaptive_max_pooling_is_a_window_max(d, channels, data, seed):
    sizes = tuple(data.draw(st.integers(1, 7)) for _ in range(d))
    out = tuple(data.draw(st.integers(1, s + 2)) for s in sizes)
    pool = nn.AdaptiveMaxPool1d(out) if d == 1 else nn.AdaptiveMaxPool2d(out)
    shape = (channels, *sizes)
    model = affine_then(shape, pool, seed)
    x = torch.randn((3, *shape), dtype=DT, generator=torch.Generator().manual_seed(seed))
    (code,) = check_spline(model, x).values()
    assert torch.equal(code.long(), adaptive_code(model[:-1](x), out))


@given(data=st.data(), seed=st.integers(0, 99))
def test_max_pooling_3d(data, seed):
    sizes = tuple(data.draw(st.integers(2, 4)) for _ in range(3))
    k = tuple(data.draw(st.integers(1, 2)) for _ in range(3))
    pad = tuple(data.draw(st.integers(0, kk // 2)) for kk in k)
    pool = nn.MaxPool3d(k, stride=data.draw(st.integers(1, 2)), padding=pad,
                        ceil_mode=data.draw(st.booleans()))
    model = affine_then((1, *sizes), pool, seed)
    x = torch.randn((2, 1, *sizes), dtype=DT, generator=torch.Generator().manual_seed(seed))
    (code,) = check_spline(model, x).values()
    _, idx = F.max_pool3d(model[:-1](x), pool.kernel_size, pool.stride, pool.padding,
                          ceil_mode=pool.ceil_mode, return_indices=True)
    table = ma.trace(model, x).layers[0].rule.window_index((1, *sizes))
    picked = table[torch.arange(table.shape[0]), code.reshape(2, -1).long()]
    assert torch.equal(picked, idx.reshape(2, -1))  # the code points at torch's argmax


def test_window_maxima_flow_through_the_rest_of_the_library():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 24), nn.Unflatten(1, (2, 12)), nn.AdaptiveMaxPool1d(5),
                        Lambda(lambda h: torch.cat([h.amax(1), torch.min(h, 2)[0]], 1)),
                        nn.Linear(7, 3)).double()
    x = torch.randn(6, 2, dtype=DT)
    graph = ma.trace(net, x)
    assert [u.kind for u in graph.layers] == ["AdaptiveMaxPool1d", "Amax", "Amax"]
    assert graph.layers[0].num_pieces == 4  # windows of 3 or 4 of the 12 entries
    part = ma.partition_plane(net, ma.Slice.square(-1, 1), progress=False)
    assert abs(float(part.areas.sum()) - 4.0) < 1e-9
    inside = ma.codes(graph, part.interior.to(DT))
    assert len(set(inside.region_ids().tolist())) == part.num_regions
    cells = ma.power_cells(net, x, layer=graph.layer_names[2], input_space=True)
    assert torch.equal(cells.codes.long(), ma.codes(graph, x)[graph.layer_names[2]].long()
                       .reshape(cells.codes.shape))


# ------------------------------------------------------------------ in place


class AddInPlace(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        h = x * 2.0
        y = h.add_(1.0)  # eager: h is y now
        h.mul_(3.0)
        return torch.cat([h, y, torch.flip(x, [1])], 1)


class ReluThenReuse(nn.Module):
    def __init__(self, functional: str):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.act = nn.ReLU(inplace=True)
        self.functional = functional

    def forward(self, x: Tensor) -> Tensor:
        h = self.lin(x)
        if self.functional == "method":
            y = h.relu_()
        elif self.functional == "function":
            y = F.relu(h, inplace=True)
        else:
            y = self.act(h)
        return h + y  # eager: h was modified, so this is 2 relu(lin(x))


@pytest.mark.parametrize("model", [AddInPlace(), ReluThenReuse("method"),
                                   ReluThenReuse("function"), ReluThenReuse("module")],
                         ids=["add_/mul_", "relu_", "F.relu(inplace)", "ReLU(inplace)"])
def test_in_place_ops_follow_eager_semantics(model):
    model = model.double()
    x = torch.randn(5, 3, dtype=DT) * 3
    before = x.clone()
    graph = ma.trace(model, x)
    assert torch.equal(x, before)  # tracing leaves the caller's tensor alone
    torch.testing.assert_close(graph(x), model(x.clone()))
    torch.testing.assert_close(ma.affine_map(graph, x).reconstruct(),
                               model(x.clone()).reshape(5, -1))


class BasicBlock(nn.Module):
    """A torchvision-style residual block: ReLU(inplace=True) and ``out += identity``."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def test_resnet_block_with_in_place_relu():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(inplace=True), BasicBlock(2),
                        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(2, 3)).double().eval()
    x = torch.randn(4, 1, 5, 5, dtype=DT)
    graph = ma.trace(net, x)
    torch.testing.assert_close(ma.affine_map(graph, x).reconstruct(), net(x.clone()))


def test_in_place_op_on_a_view_in_use_is_refused():
    class ViewMutation(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            h = x * 1.0
            v = h[:, :2]
            v.relu_()  # eager: modifies h too
            return h

    with pytest.raises(ma.UnsupportedOperation, match=r"modifies in place a tensor that .*"
                                                      r"shares memory with"):
        ma.trace(ViewMutation(), torch.randn(3, 4))


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("fn, reason", [
    (lambda x: torch.sort(x, 1).values, "piecewise-affine but not implemented yet"),
    (lambda x: x.topk(2, 1).values, "piecewise-affine but not implemented yet"),
    (lambda x: torch.einsum("bi,ij->bj", x, torch.ones(3, 2)),
     "affine but not supported yet"),
    (lambda x: torch.flipud(x), "batch axis"),
    (lambda x: F.gelu(x), "not affine or piecewise-affine"),
    (lambda x: torch.sign(x), "discontinuous"),
    (lambda x: torch.clamp(x, min=x[:, :1]), "piecewise-affine but not implemented yet"),
], ids=["sort", "topk", "einsum", "flipud", "gelu", "sign", "clamp(tensor)"])
def test_refusals_say_why(fn, reason):
    with pytest.raises(ma.UnsupportedOperation, match="cannot be traced") as info:
        ma.trace(Lambda(fn), torch.randn(2, 3))
    assert reason in str(info.value)


def test_item_assignment_is_refused_as_in_place():
    class SetItem(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            h = x * 2
            h[:, 0] = 0.0
            return h

    with pytest.raises(ma.UnsupportedOperation, match="item assignment"):
        ma.trace(SetItem(), torch.randn(2, 3))


def test_supported_ops_lists_the_new_ops():
    listed = ma.supported_ops()
    assert {"Upsample", "F.interpolate", "torch.flip", "torch.roll", "Tensor.add",
            "PixelShuffle", "ReflectionPad2d"} <= set(listed["affine"])
    assert {"AdaptiveMaxPool2d", "torch.amax", "Tensor.max(dim)", "torch.amin",
            "MaxPool3d", "Hardsigmoid"} <= set(listed["nonlinearity"])
    assert all(isinstance(ops.lookup(t), type) for t in (nn.Upsample, torch.amax, "roll"))


@pytest.mark.parametrize("op", [nn.AdaptiveMaxPool2d((2, 3)), Lambda(lambda h: h.amax((1, 3))),
                                Lambda(lambda h: h.max(2)[0])], ids=["adaptive", "amax", "max"])
def test_float64_fast_path_of_window_maxima(op):
    x = torch.randn(2, 2, 5, 7, dtype=DT)
    graph = ma.trace(op, x)
    rule = graph.layers[0].rule
    big = torch.randn(1000, 2, 5, 7, dtype=DT)  # >= 2^16 entries: the compiled gather
    with torch.no_grad():
        assert torch.equal(rule.forward(big), op(big))
        assert torch.equal(graph(big), op(big))

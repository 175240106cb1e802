"""VQ codes: constant inside a region (distance to its boundary computed from the
frozen affine margins), changed when crossing it, region ids, packed bits, and
hand-worked toy networks."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import Tensor, nn

import maxaffine as ma
from maxaffine.vq import Codes
from strategies import (
    INPUT_KINDS,
    architectures,
    boundary_distance,
    locate,
    margin_gradients,
    margins,
)

DT = torch.float64


def equal_codes(a: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
    """(N,) True where every unit's code agrees."""
    n = next(iter(a.values())).shape[0] if a else 0
    same = torch.ones(n, dtype=torch.bool)
    for name in a:
        same &= (a[name] == b[name]).flatten(1).all(1)
    return same


@pytest.mark.parametrize("kind", INPUT_KINDS)
@given(data=st.data())
def test_codes_constant_inside_and_changed_across_the_nearest_boundary(
        kind: str, data: st.DataObject):
    arch = data.draw(architectures(kind))
    x = arch.sample(3, data.draw(st.integers(0, 999)))
    graph = ma.trace(arch.model, x)
    found = graph.evaluate(x).codes
    assume(graph.layers)
    dist, nearest, grads = boundary_distance(graph, x, found)
    assume(bool(torch.isfinite(dist).all() and (dist > 1e-7).all()))
    # the nearest boundary must be unique: two units whose boundaries are (nearly)
    # equally far (e.g. identical pre-activations) would both flip when crossing
    m, g = margin_gradients(graph, x, found)
    norm = g.norm(dim=-1)
    live = (norm > 1e-12 * (1.0 + norm.amax(dim=1, keepdim=True))) & torch.isfinite(m)
    ratio = torch.where(live, m / norm.clamp_min(1e-300), torch.inf)
    if ratio.shape[1] > 1:
        second = ratio.topk(2, dim=1, largest=False).values[:, 1]
        assume(bool((second > dist * (1 + 1e-4)).all()))
    view = (-1, *[1] * (x.dim() - 1))

    # Random perturbations shorter than the distance never change a code.
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 999)))
    for frac in (0.1, 0.5, 0.99):
        u = torch.randn(x.shape, generator=gen, dtype=DT)
        u = u / u.flatten(1).norm(dim=1).reshape(view)
        inside = graph.evaluate(x + (frac * dist).reshape(view) * u).codes
        assert bool(equal_codes(found, inside).all()), frac

    # Along the nearest margin's gradient: same codes just before, changed just after.
    g = grads[torch.arange(3), nearest].reshape(x.shape)
    g_unit = g / g.flatten(1).norm(dim=1).reshape(view)
    before = graph.evaluate(x - ((1 - 1e-6) * dist).reshape(view) * g_unit).codes
    assert bool(equal_codes(found, before).all())
    crossed_x = x - ((1 + 1e-6) * dist).reshape(view) * g_unit
    after = graph.evaluate(crossed_x).codes
    assert not bool(equal_codes(found, after).any())
    frozen_margins = dict((name, m) for name, m, _ in margins(graph, crossed_x, found))
    for n in range(3):
        name, pos, new_code = locate(graph, x, found, n, int(nearest[n]))
        assert int(after[name][(n, *pos)]) == new_code
        for layer in graph.layers:  # units before the crossed one keep their codes
            if layer.name == name:
                # ...and inside its layer exactly the entries whose margin turned negative
                flipped = (frozen_margins[name][n] < 0).any(-1)
                assert torch.equal(after[name][n] != found[name][n], flipped)
                break
            assert torch.equal(after[layer.name][n], found[layer.name][n]), layer.name


@pytest.mark.parametrize("kind", INPUT_KINDS)
@given(data=st.data())
def test_region_ids_equal_iff_codes_equal(kind: str, data: st.DataObject):
    arch = data.draw(architectures(kind))
    base = arch.sample(4, data.draw(st.integers(0, 999)))
    graph = ma.trace(arch.model, base)
    found = graph.evaluate(base).codes
    dist, _, _ = boundary_distance(graph, base, found)
    step = (0.5 * dist.clamp(max=1.0)).reshape(-1, *[1] * (base.dim() - 1))
    near = base + step * torch.randn(base.shape, dtype=DT).sign() / math.sqrt(
        base[0].numel())
    far = arch.sample(4, 7, scale=3.0)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    x = torch.cat([base, near, far])[order]
    c = ma.codes(graph, x)
    ids = c.region_ids()
    values = [v.flatten(1) for v in c.values]
    for i in range(12):
        for j in range(12):
            same = all(torch.equal(v[i], v[j]) for v in values)
            assert (ids[i] == ids[j]).item() == same
    first = [int(ids[i]) for i in range(12) if int(ids[i]) not in ids[:i].tolist()]
    assert first == list(range(len(first)))  # numbered in order of first appearance
    # the near copies share their base point's region
    pos = {int(o): k for k, o in enumerate(order)}
    for k in range(4):
        assert ids[pos[k]] == ids[pos[4 + k]]
    # ids restricted to a subset of layers
    if c.names:
        sub = c.region_ids(layers=[c.names[0]])
        v0 = values[0]
        for i in range(12):
            for j in range(12):
                assert (sub[i] == sub[j]).item() == torch.equal(v0[i], v0[j])


# ------------------------------------------------------------------- packed bits


def unpack_reference(bits: Tensor, codes: Codes) -> list[Tensor]:
    """Read every unit's code back from the packed bytes, bit by bit, following the
    documented convention (layers byte-aligned in graph order, unit i of a layer at
    bits [i*b, (i+1)*b), bit j in byte j // 8 at position j % 8)."""
    rows = bits.tolist()
    out, start = [], 0
    for v, b in zip(codes.values, codes.bits_per_unit, strict=True):
        units = v[0].numel()
        layer = []
        for row in rows:
            vals = []
            for i in range(units):
                code = 0
                for t in range(b):
                    j = i * b + t
                    code |= ((row[start + j // 8] >> (j % 8)) & 1) << t
                vals.append(code)
            layer.append(vals)
        out.append(torch.tensor(layer).reshape(v.shape))
        start += (units * b + 7) // 8
    assert start == bits.shape[1]
    return out


@pytest.mark.parametrize("kind", INPUT_KINDS)
@given(data=st.data())
def test_packed_bits_round_trip_on_random_architectures(kind: str, data: st.DataObject):
    arch = data.draw(architectures(kind))
    x = arch.sample(3, data.draw(st.integers(0, 999)), 2.0)
    c = ma.codes(arch.model, x)
    assert c.packed().dtype == torch.uint8
    for got, v in zip(unpack_reference(c.packed(), c), c.values, strict=True):
        assert torch.equal(got, v.long())


class PoolNet(nn.Module):
    """Units with 2, 3, 9, 25 and 289 pieces: 1, 2, 4, 8 and 16 bits per unit."""

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(x[:, 0, :5, 0])  # 5 units: 5 bits in one byte
        b = F.hardtanh(x[:, 0, 0, :9] * 2)  # 9 units x 2 bits: 3 bytes
        c = F.max_pool2d(x, 3)  # 5 x 5 windows x 4 bits
        d = F.max_pool2d(x, 5, stride=3)  # 25 pieces: a byte each
        e = F.max_pool2d(x, 17)  # 289 pieces: two bytes each
        return torch.cat([a, b, c.flatten(1), d.flatten(1), e.flatten(1)], 1)


def test_packing_widths_and_round_trip():
    x = torch.randn(6, 1, 17, 17, dtype=DT)
    c = ma.codes(PoolNet(), x)
    assert c.pieces == (2, 3, 9, 25, 289)
    assert c.bits_per_unit == (1, 2, 4, 8, 16)
    assert c.num_units == (5, 9, 25, 25, 1)
    assert list(c.byte_slices().values()) == [slice(0, 1), slice(1, 4), slice(4, 17),
                                              slice(17, 42), slice(42, 44)]
    assert c.packed().shape == (6, 44)
    for got, v in zip(unpack_reference(c.packed(), c), c.values, strict=True):
        assert torch.equal(got, v.long())
    # the 17 x 17 window's code is the flat argmax of the whole image
    assert torch.equal(c.values[4].flatten(), x.flatten(1).argmax(1))
    assert torch.equal(c.packed(["hardtanh"]), c.packed()[:, 1:4])


# ---------------------------------------------------------------- hand-worked toys


def relu_1d() -> nn.Module:
    """f(x) = 2 relu(x - 1) - relu(x + 0.5) + 3 relu(0.25 - x) + 0.5: breakpoints
    at -0.5, 0.25 and 1."""
    net = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [1.0], [-1.0]]))
        net[0].bias.copy_(torch.tensor([-1.0, 0.5, 0.25]))
        net[2].weight.copy_(torch.tensor([[2.0, -1.0, 3.0]]))
        net[2].bias.fill_(0.5)
    return net


def test_relu_1d_breakpoints_slopes_and_regions():
    net = relu_1d()
    x = torch.tensor([[-2.0], [-0.5], [0.0], [0.25], [0.5], [1.0], [3.0]], dtype=DT)
    c = ma.codes(net, x)
    expected = [[0, 0, 1], [0, 0, 1], [0, 1, 1], [0, 1, 0], [0, 1, 0], [0, 1, 0], [1, 1, 0]]
    assert c["1"].tolist() == expected  # ties (x on a breakpoint) go to the lower piece
    amap = ma.affine_map(net, x)
    # slope = sum of active units' w2 * w1, offset = sum of active w2 * b1 + 0.5
    assert amap.A.flatten().tolist() == [-3.0, -3.0, -4.0, -1.0, -1.0, -1.0, 1.0]
    assert amap.B.flatten().tolist() == pytest.approx([1.25, 1.25, 0.75, 0.0, 0.0, 0.0, -2.0])
    grid = torch.linspace(-3, 3, 601, dtype=DT).unsqueeze(1)
    ids = ma.codes(net, grid).region_ids()
    assert len(ids.unique()) == 4
    assert int((ids[1:] != ids[:-1]).sum()) == 3  # three breakpoints crossed


def test_maxpool_window_argmax_codes():
    x = torch.tensor([[[[1.0, 5.0, 0.0],
                        [3.0, 2.0, 4.0],
                        [9.0, 1.0, 7.0]]]], dtype=DT)
    c = ma.codes(nn.Sequential(nn.MaxPool2d(2, stride=1)), x)
    assert c["0"].tolist() == [[[[1, 0], [2, 3]]]]  # offset row-major in each 2x2 window
    c = ma.codes(nn.Sequential(nn.MaxPool2d(2, stride=1, dilation=2)), x)
    assert c["0"].tolist() == [[[[2]]]]  # corners 1, 0, 9, 7: the 9 at offset (1, 0)
    c = ma.codes(nn.Sequential(nn.MaxPool2d(2, stride=2, padding=1)), x)
    # windows clipped by padding: top-left only sees 1 at offset (1, 1)
    assert c["0"].tolist() == [[[[3, 2], [3, 3]]]]
    amap = ma.affine_map(nn.Sequential(nn.MaxPool2d(2, stride=2, padding=1), nn.Flatten()), x)
    picked = amap.A.reshape(4, 9).argmax(1).tolist()
    assert picked == [0, 1, 6, 8] and amap.A.sum().item() == 4.0
    tie = torch.tensor([[[2.0, 2.0, 1.0, 3.0]]], dtype=DT)
    assert ma.codes(nn.Sequential(nn.MaxPool1d(2)), tie)["0"].tolist() == [[[0, 1]]]


def test_hardtanh_states_and_slopes():
    z = torch.tensor([[-2.0, -1.0, 0.0, 1.0, 2.0]], dtype=DT)
    net = nn.Sequential(nn.Hardtanh(-1.0, 1.0))
    assert ma.codes(net, z)["0"].tolist() == [[0, 0, 1, 1, 2]]
    amap = ma.affine_map(net, z)
    assert torch.equal(amap.A[0], torch.diag(torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0], dtype=DT)))
    assert amap.B[0].tolist() == [-1.0, -1.0, 0.0, 0.0, 1.0]


def test_elementwise_and_maximum_codes():
    z = torch.tensor([[-1.5, -0.0, 0.0, 2.0]], dtype=DT)
    for net, want, slopes in [(nn.Sequential(nn.ReLU()), [0, 0, 0, 1], [0, 0, 0, 1]),
                              (nn.Sequential(nn.LeakyReLU(0.1)), [0, 0, 0, 1],
                               [0.1, 0.1, 0.1, 1]),
                              (nn.Sequential(nn.PReLU()), [0, 0, 0, 1], [0.25, 0.25, 0.25, 1])]:
        assert ma.codes(net.double(), z)["0"].tolist() == [want]
        # at z = 0 the template takes the lower piece's slope, in either mode
        for mode in ("forward", "reverse"):
            a = ma.affine_map(net, z, mode=mode).A[0]
            assert a.diagonal().tolist() == pytest.approx(slopes)

    class Both(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.cat([x.abs(), torch.maximum(x, 1 - x), torch.minimum(x, 1 - x)], 1)

    z = torch.tensor([[-1.5, -0.0, 0.0, 0.5, 2.0]], dtype=DT)  # 0.5: max(z, 1 - z) tied
    c = ma.codes(Both(), z)
    assert c.names == ("abs_1", "maximum", "minimum")
    assert c["abs_1"].tolist() == [[0, 0, 0, 1, 1]]
    assert c["maximum"].tolist() == [[1, 1, 1, 0, 0]]  # 1 where the second argument wins
    assert c["minimum"].tolist() == [[0, 0, 0, 0, 1]]  # ties go to the first argument
    amap = ma.affine_map(Both(), z)
    slopes = [amap.A[0, 5 * k: 5 * k + 5].diagonal().tolist() for k in range(3)]
    assert slopes == [[-1.0, -1.0, -1.0, 1.0, 1.0],  # |0| = -0: the lower piece
                      [-1.0, -1.0, -1.0, 1.0, 1.0],
                      [1.0, 1.0, 1.0, 1.0, -1.0]]


# ----------------------------------------------------------------- Codes object


def test_hamming_select_and_dict_access():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(8, 3), nn.Hardtanh()).double()
    x = torch.randn(5, 1, 4, 4, dtype=DT)
    y = x + 0.3 * torch.randn(5, 1, 4, 4, dtype=DT)
    graph = ma.trace(net, x)
    a, b = ma.codes(graph, x), ma.codes(graph, y)
    dist = a.hamming(b)
    counts = a.hamming(b, normalized=False)
    assert list(dist) == list(a.names) == ["1", "2", "5"]
    for name in a.names:
        differ = (a[name] != b[name]).flatten(1)
        assert torch.equal(counts[name], differ.sum(1))
        torch.testing.assert_close(dist[name], differ.double().mean(1).to(dist[name].dtype))
    assert a.hamming(a)["2"].tolist() == [0.0] * 5
    assert torch.equal(a[0], a["1"]) and set(a.as_dict()) == set(a.names) == set(a)
    sub = a.select([4, 1])
    assert len(sub) == 2 and torch.equal(sub["2"], a["2"][[4, 1]])
    assert torch.equal(sub.packed(), a.packed()[[4, 1]])
    info = json.loads(a.to_json())
    assert [layer["name"] for layer in info["layers"]] == ["1", "2", "5"]
    assert bytes.fromhex(info["packed"][2]) == bytes(a.packed()[2].tolist())
    torch.testing.assert_close(graph.evaluate(y, codes=a.as_dict()).output,
                               ma.affine_map(graph, x).reconstruct(y))
    with pytest.raises(ma.MaxAffineError, match="no layer"):
        a["nope"]
    with pytest.raises(ma.MaxAffineError, match=r"aligned samples, but there are 5 and 2"):
        a.hamming(sub)


def test_affine_model_has_one_region():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()
    c = ma.codes(net, torch.randn(6, 3, dtype=DT))
    assert len(c) == 6 and c.names == () and c.packed().shape == (6, 0)
    assert c.region_ids().tolist() == [0] * 6

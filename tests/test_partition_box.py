"""Full-dimension partitions (partition_box / partition_polytope): the complex
against independent references (the plane partition in 2-D, qhull volumes, dense
sampling, forward passes at interior points), on random architectures."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.spatial import ConvexHull
from torch import nn

import maxaffine as ma
from maxaffine.errors import MaxAffineError, UnsupportedOperation
from maxaffine.partition import Complex, partition_box, partition_polytope
from strategies import architectures


def _mlp(sizes, seed=0, act=nn.ReLU):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1]).double()


class Abs(nn.Module):
    def forward(self, x):
        return x.abs()


def _packed_set(packed: torch.Tensor) -> list[bytes]:
    return sorted(bytes(r) for r in packed.numpy())


def _check_complex(cx: Complex, model: nn.Module, lower, upper, n_samples=3000, seed=0):
    """The properties every complex has, against references that share nothing with
    the cuts: codes of forward passes, qhull volumes, dense sampling."""
    d = cx.dim
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    box = float(np.prod(upper - lower))
    # Euler's relation for a subdivided ball, and volumes summing to the box
    assert cx.euler_characteristic == 1, cx.f_vector
    assert abs(float(cx.volumes.sum()) - box) <= 1e-9 * box
    assert bool((cx.volumes > 0).all())
    # codes are distinct (a region is all points of one code) and every interior
    # point has its region's code
    packed = _packed_set(cx.packed)
    assert len(set(packed)) == len(packed)
    inside = cx.interior.to(torch.float64)
    assert torch.equal(cx.locate(inside), torch.arange(cx.num_regions))
    assert bool(((inside >= torch.from_numpy(lower)) & (inside <= torch.from_numpy(upper)))
                .all())
    # dense sampling finds no code outside the complex
    gen = torch.Generator().manual_seed(seed)
    pts = torch.from_numpy(lower) + torch.rand((n_samples, d), generator=gen,
                                               dtype=torch.float64) * torch.from_numpy(
                                                   upper - lower)
    assert bool((cx.locate(pts) >= 0).all())
    # qhull volumes of the regions' vertex sets (independent of the lattice)
    if d >= 2:
        offsets, ids = (t.numpy() for t in cx.faces(d))
        x = cx.vertices.numpy()
        for i in range(min(cx.num_regions, 60)):
            hull = ConvexHull(x[ids[offsets[i]: offsets[i + 1]]])
            assert math.isclose(hull.volume, float(cx.volumes[i]), rel_tol=1e-7,
                                abs_tol=1e-12 * box)
    # every edge has two distinct ends; every facet bounds one or two regions
    e = cx.edges
    assert bool((e[:, 0] != e[:, 1]).all())
    if d >= 1:
        _, facet_ids = cx.facets(d)
        deg = np.bincount(facet_ids.numpy())
        assert deg.min() >= 1 and deg.max() <= 2


def test_box_equals_plane_in_2d():
    net = _mlp((2, 12, 12, 3))
    sq = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float64)
    cx = partition_box(net, [-1, -1], [1, 1], progress=False)
    part = ma.partition_plane(net, sq, progress=False)
    assert _packed_set(cx.packed) == _packed_set(part.packed)
    areas = dict(zip(_packed_set(part.packed), [0.0] * part.num_regions, strict=True))
    for r, a in zip(part.packed.numpy(), part.areas.tolist(), strict=True):
        areas[bytes(r)] = a
    for r, v in zip(cx.packed.numpy(), cx.volumes.tolist(), strict=True):
        assert math.isclose(areas[bytes(r)], v, rel_tol=1e-9, abs_tol=1e-13)
    _check_complex(cx, net, [-1, -1], [1, 1])


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(arch=architectures("flat"), half=st.floats(0.3, 3.0), seed=st.integers(0, 99))
def test_random_architectures(arch, half, seed):
    d = arch.input_shape[0]
    assume(d <= 4)
    net = arch.model.double()
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(d, generator=gen, dtype=torch.float64) * 0.5
    lower, upper = (centre - half).numpy(), (centre + half).numpy()
    try:
        cx = partition_box(net, lower, upper, progress=False, max_regions=20_000)
    except MaxAffineError as err:
        assume("not supported at full dimension" not in str(err)
               and "max_regions" not in str(err))
        raise
    _check_complex(cx, net, lower, upper, seed=seed)
    if d == 2:  # the plane partition of the same square: the same codes
        lo, hi = lower, upper
        sq = torch.tensor([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]],
                          dtype=torch.float64)
        part = ma.partition_plane(net, sq, progress=False)
        if part.lost_regions == 0:
            assert _packed_set(cx.packed) == _packed_set(part.packed)


@pytest.mark.parametrize("d", [1, 3, 4])
def test_dimensions(d):
    net = _mlp((d, 10, 10, 2), seed=d)
    cx = partition_box(net, -np.ones(d), np.ones(d), progress=False)
    _check_complex(cx, net, -np.ones(d), np.ones(d))


def test_activations_and_maximum():
    torch.manual_seed(3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 6), nn.Linear(3, 6)
            self.c = nn.Linear(6, 5)
            self.out = nn.Linear(5, 1)

        def forward(self, x):
            h = torch.maximum(self.a(x), self.b(x))
            h = nn.functional.leaky_relu(self.c(h).abs(), 0.1)
            return self.out(nn.functional.hardtanh(h - 0.5))

    net = Net().double()
    cx = partition_box(net, -np.ones(3), np.ones(3), progress=False)
    _check_complex(cx, net, -np.ones(3), np.ones(3))


def test_degenerate_arrangements_are_resolved():
    """Hyperplanes through the box's corners and through each other's vertices, and
    coincident ones (duplicated units): no slivers, the same regions as without
    the duplicates."""
    lin = nn.Linear(3, 6).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1, 0], [1, -1, 0], [0, 1, 1], [1, 1, 0],
                                       [1, 0, 0], [0, 0, 1]]))
        lin.bias.zero_()  # all through the origin, two identical, some through corners
    out = nn.Linear(6, 1).double()
    net = nn.Sequential(lin, nn.ReLU(), out)
    cx = partition_box(net, -np.ones(3), np.ones(3), progress=False)
    _check_complex(cx, net, -np.ones(3), np.ones(3))
    # the distinct planes x+y, x-y, y+z, x, z through the origin cut the cube into
    # as many regions as sampling finds codes
    pts = torch.rand((20000, 3), dtype=torch.float64) * 2 - 1
    assert cx.num_regions == len({bytes(r) for r in ma.codes(net, pts).packed().numpy()})
    # float32 arithmetic on the same arrangement
    cx32 = partition_box(net.float(), -np.ones(3), np.ones(3), dtype=torch.float32,
                         progress=False)
    assert cx32.num_regions == cx.num_regions
    assert cx32.euler_characteristic == 1


def test_polytope_domain():
    net = _mlp((2, 10, 10, 2), seed=4)
    tri = np.array([[-1.0, -1.0], [1.0, -0.5], [0.0, 1.0]])
    # A x <= b for the triangle's three edges (counter-clockwise: outward normals)
    a, b = [], []
    for i in range(3):
        p, q = tri[i], tri[(i + 1) % 3]
        n = np.array([q[1] - p[1], p[0] - q[0]])
        a.append(n)
        b.append(n @ p)
    cx = partition_polytope(net, np.array(a), np.array(b), progress=False)
    part = ma.partition_plane(net, torch.from_numpy(tri), progress=False)
    assert _packed_set(cx.packed) == _packed_set(part.packed)
    assert math.isclose(float(cx.volumes.sum()), float(part.areas.sum()), rel_tol=1e-9)
    assert cx.euler_characteristic == 1
    # a 3-D simplex
    net3 = _mlp((3, 8, 8, 1), seed=5)
    a3 = np.vstack([-np.eye(3), np.ones((1, 3))])
    cx3 = partition_polytope(net3, a3, np.array([0.0, 0, 0, 1]), progress=False)
    assert math.isclose(float(cx3.volumes.sum()), 1 / 6, rel_tol=1e-9)
    assert torch.equal(cx3.locate(cx3.interior), torch.arange(cx3.num_regions))


def _octahedron_net():
    """f(x) = |x1| + |x2| + |x3| - 0.5 as a ReLU net: |t| = relu(t) + relu(-t)."""
    first = nn.Linear(3, 6).double()
    second = nn.Linear(6, 1).double()
    with torch.no_grad():
        first.weight.copy_(torch.cat([torch.eye(3), -torch.eye(3)]).double())
        first.bias.zero_()
        second.weight.fill_(1.0)
        second.bias.fill_(-0.5)
    return nn.Sequential(first, nn.ReLU(), second)


def test_level_set_is_exact_and_watertight(tmp_path):
    net = _octahedron_net()
    cx = partition_box(net, -np.ones(3), np.ones(3), progress=False)
    ls = cx.level_set(0.0)
    assert ls.is_watertight
    f = net(ls.vertices).detach().squeeze(1)
    assert float(f.abs().max()) <= 1e-12
    # the octahedron |x|_1 = 0.5 has area 4 sqrt(3) (0.5)^2 ... = sqrt(3)
    assert math.isclose(ls.measure, math.sqrt(3), rel_tol=1e-12)
    # oriented outwards: the enclosed volume (divergence theorem) is positive and
    # equals the octahedron's, 4/3 (0.5)^3
    tri = ls.vertices[ls.triangles]
    vol = float(torch.einsum("sd,sd->s", tri[:, 0], torch.cross(tri[:, 1], tri[:, 2], dim=1))
                .sum()) / 6
    assert math.isclose(vol, 4 / 3 * 0.125, rel_tol=1e-12)
    ls.save(tmp_path / "octa.ply")
    import trimesh

    mesh = trimesh.load(tmp_path / "octa.ply", process=False)
    assert mesh.vertices.shape[0] == ls.vertices.shape[0]
    # a random net's level set: vertices on f = c
    net2 = _mlp((3, 16, 16, 1), seed=7)
    cx2 = partition_box(net2, -np.ones(3), np.ones(3), progress=False)
    c = float(cx2.vertex_outputs.median())
    ls2 = cx2.level_set(c)
    assert ls2.num_simplices > 0
    vals = net2(ls2.vertices).detach().squeeze(1) - c
    scale = float(cx2.vertex_outputs.abs().max())
    assert float(vals.abs().max()) <= 1e-10 * scale


def test_decision_boundary_matches_the_plane():
    net = _mlp((2, 10, 10, 4), seed=6)
    sq = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float64)
    cx = partition_box(net, [-1, -1], [1, 1], progress=False)
    part = ma.partition_plane(net, sq, progress=False)
    db = cx.decision_boundary()
    seg = part.decision_boundary
    length = float((seg[:, 1] - seg[:, 0]).norm(dim=1).sum())
    assert math.isclose(db.measure, length, rel_tol=1e-9)
    # both sides of each piece have the classes it names
    mid = db.vertices[db.simplices].mean(1)
    normal = (db.vertices[db.simplices[:, 1]] - db.vertices[db.simplices[:, 0]]) @ torch.tensor(
        [[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    normal = normal / normal.norm(dim=1, keepdim=True)
    hi = net(mid + 1e-7 * normal).argmax(1)
    lo = net(mid - 1e-7 * normal).argmax(1)
    assert torch.equal(hi, db.classes[:, 1]) and torch.equal(lo, db.classes[:, 0])


def test_maps_adjacency_and_results():
    net = _mlp((3, 8, 8, 2), seed=8)
    cx = partition_box(net, -np.ones(3), np.ones(3), progress=False)
    amap = cx.maps()
    assert torch.allclose(cx.maps([1, 2]).A, amap.A[1:3], rtol=1e-12, atol=1e-14)
    assert torch.allclose(amap.reconstruct(), net(cx.interior))
    adj = cx.adjacency
    assert (adj != adj.T).nnz == 0 and adj.diagonal().sum() == 0
    # neighbours differ in their codes; every region has a neighbour
    assert np.diff(adj.indptr).min() >= 1
    s = cx.summary()
    assert s["regions"] == cx.num_regions and s["euler_characteristic"] == 1
    assert '"regions"' in cx.to_json()
    import matplotlib

    matplotlib.use("Agg")
    cx.plot()
    cx.plot(regions=[0, 1], level=None)
    partition_box(_mlp((2, 6, 1)), [-1, -1], [1, 1], progress=False).plot()


def test_bad_input():
    net = _mlp((3, 8, 1))
    with pytest.raises(MaxAffineError, match=r"3 coordinates|model"):
        partition_box(net, [-1, -1], [1, 1], progress=False)
    with pytest.raises(MaxAffineError, match="lower >= upper in coordinate 1"):
        partition_box(net, [-1, 1, -1], [1, 1, 1], progress=False)
    with pytest.raises(MaxAffineError, match="NaN"):
        partition_box(net, [-1, float("nan"), -1], [1, 1, 1], progress=False)
    with pytest.raises(MaxAffineError, match="unbounded"):
        partition_polytope(net, -np.eye(3), np.zeros(3), progress=False)
    with pytest.raises(MaxAffineError, match="empty"):
        partition_polytope(net, np.array([[1.0, 0, 0], [-1, 0, 0]]), np.array([-1.0, -1]),
                           progress=False)
    with pytest.raises(MaxAffineError, match="no interior"):
        partition_polytope(net, np.vstack([np.eye(3), -np.eye(3), [[1.0, 0, 0], [-1, 0, 0]]]),
                           np.r_[np.ones(6), 0, 0], progress=False)
    with pytest.raises(UnsupportedOperation):
        partition_box(nn.Sequential(nn.Linear(3, 4), nn.Sigmoid()).double(), -np.ones(3),
                      np.ones(3), progress=False)
    with pytest.raises(MaxAffineError, match="max_regions"):
        partition_box(_mlp((3, 32, 32, 1)), -np.ones(3), np.ones(3), max_regions=10,
                      progress=False)
    cx = partition_box(net, -np.ones(3), np.ones(3), progress=False)
    with pytest.raises(MaxAffineError, match="output"):
        cx.level_set(0.0, output=3)


def test_lines_in_batches_give_the_same_complex(monkeypatch):
    """Wide layers are cut in batches of lines whose values are recomputed at all
    vertices (a memory budget): the same complex as one batch."""
    from maxaffine.partition import box

    torch.manual_seed(11)
    net = nn.Sequential(nn.Linear(3, 40), nn.Hardtanh(), nn.Linear(40, 30), nn.ReLU(),
                        nn.Linear(30, 1)).double()
    whole = partition_box(net, -np.ones(3), np.ones(3), progress=False)
    monkeypatch.setattr(box, "_VALUES_BUDGET", 64)  # 8 units per batch
    parts = partition_box(net, -np.ones(3), np.ones(3), progress=False)
    assert parts.f_vector == whole.f_vector
    assert _packed_set(parts.packed) == _packed_set(whole.packed)
    _check_complex(parts, net, -np.ones(3), np.ones(3))


@pytest.mark.slow
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(arch=architectures("flat"), half=st.floats(0.3, 3.0), seed=st.integers(0, 99))
def test_random_architectures_extended(arch, half, seed):
    test_random_architectures.hypothesis.inner_test(arch, half, seed)


def test_plots_refuse_other_dimensions():
    cx = partition_box(_mlp((4, 6, 1)), -np.ones(4), np.ones(4), progress=False)
    with pytest.raises(MaxAffineError, match="4-D"):
        cx.plot()
    with pytest.raises(MaxAffineError, match="3-D"):
        cx.level_set(0.0).plot()

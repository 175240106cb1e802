"""Exact partitions: against a slow reference, dense sampling and hand-worked cases."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from matplotlib.path import Path
from torch import nn

import maxaffine as ma
import maxaffine.partition.mesh as planar
import maxaffine.partition.plane as plane
import maxaffine.partition.values as mv
from reference_partition import reference_partition
from strategies import architectures

D64 = torch.float64


def _mlp(widths, seed=0, act=nn.ReLU):
    torch.manual_seed(seed)
    layers, d = [], 2
    for w in widths:
        layers += [nn.Linear(d, w), act()]
        d = w
    layers.append(nn.Linear(d, 3))
    return nn.Sequential(*layers).to(D64).eval()


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.conv2(F.leaky_relu(self.bn(self.conv1(x)), 0.2)))


def _cnn(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), _Block(2),
                        nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).to(D64).eval()
    bn = net[3].bn
    bn.running_mean.uniform_(-0.3, 0.3)
    bn.running_var.uniform_(0.5, 1.5)
    return net


def _dense_codes(model, sl, n=160):
    b = sl.bounds
    lo, hi = b.min(0).values, b.max(0).values
    g0 = torch.linspace(float(lo[0]), float(hi[0]), n, dtype=D64)
    g1 = torch.linspace(float(lo[1]), float(hi[1]), n, dtype=D64)
    s, t = torch.meshgrid(g0, g1, indexing="ij")
    pts = torch.stack([s.flatten(), t.flatten()], 1)
    pts = pts[torch.as_tensor(Path(b.numpy()).contains_points(pts.numpy()))]
    return {bytes(r.tolist()) for r in ma.codes(model, sl.to_input(pts)).packed()}


def _check_invariants(model, part):
    """Properties every partition must have (DESIGN.md section 4)."""
    sl = part.domain
    # areas are positive and tile the domain
    assert bool((part.areas > 0).all())
    assert abs(float(part.areas.sum()) - sl.area) <= 1e-9 * sl.area
    # every face's interior point has the face's code
    at_interior = ma.codes(model, sl.to_input(part.interior)).packed()
    assert torch.equal(at_interior, part.packed)
    # one face per region: codes are distinct, and neighbours differ
    assert len({bytes(r.tolist()) for r in part.packed}) == part.num_regions
    inner = part.edge_faces[:, 1] >= 0
    f1, f2 = part.edge_faces[inner, 0], part.edge_faces[inner, 1]
    assert bool((part.packed[f1] != part.packed[f2]).any(1).all())
    # the subdivision is conforming: an edge with one face lies on the domain's
    # boundary (no T-junctions, no duplicate vertices), and Euler's V - E + F = 1
    lone = part.vertices[part.edges[part.edge_faces[:, 1] < 0]].mean(1)  # midpoints
    b, c = sl.bounds.to(lone.dtype), sl.bounds.roll(-1, 0).to(lone.dtype)
    rel = lone[:, None, :] - b[None]
    along = (c - b)[None]
    t = ((rel * along).sum(2) / (along * along).sum(2)).clamp(0, 1)
    dist = (rel - t[..., None] * along).norm(dim=2).amin(1)
    assert float(dist.max()) <= 1e-9 * float((b.max(0).values - b.min(0).values).max())
    used = torch.unique(part.faces[part.faces >= 0]).shape[0]
    assert used - part.edges.shape[0] + part.num_regions == 1
    # faces are convex and counter-clockwise
    for i in range(part.num_regions):
        p = part.polygon(i)
        q, r = p.roll(-1, 0), p.roll(-2, 0)
        turn = (q - p)[:, 0] * (r - q)[:, 1] - (q - p)[:, 1] * (r - q)[:, 0]
        assert bool((turn >= -1e-9 * float(part.areas[i]) - 1e-15).all())
    # the output's affine map on each face matches the network at interior points
    with torch.no_grad():
        out = model(sl.to_input(part.interior)).reshape(part.num_regions, -1)
    fit = torch.einsum("fcd,fd->fc", part.slopes, part.interior) + part.offsets
    assert float((fit - out).abs().max()) <= 1e-8 * (1 + float(out.abs().max()))
    # decision boundary endpoints: the top two outputs tie
    if part.decision_boundary.shape[0]:
        with torch.no_grad():
            ends = model(sl.to_input(part.decision_boundary.reshape(-1, 2))).reshape(
                -1, part.slopes.shape[1])
        if ends.shape[1] == 1:
            gap = ends[:, 0].abs()
        else:
            top = ends.topk(2, dim=1).values
            gap = top[:, 0] - top[:, 1]
        assert float(gap.max()) <= 1e-7 * (1 + float(ends.abs().max()))


def _by_code(pairs):
    areas = defaultdict(float)
    for poly, code in pairs:
        n = len(poly)
        areas[code] += 0.5 * sum(poly[i][0] * poly[(i + 1) % n][1]
                                 - poly[(i + 1) % n][0] * poly[i][1] for i in range(n))
    return areas


def _compare_with_reference(model, part):
    ref = _by_code(reference_partition(model, part.domain))
    fast = {bytes(c.tolist()): float(a) for c, a in zip(part.packed, part.areas, strict=True)}
    assert set(fast) == set(ref)
    scale = part.domain.area
    for code, a in ref.items():
        assert abs(fast[code] - a) <= 1e-8 * scale


# ----------------------------------------------------------------- hand-worked


def test_two_relu_lines_make_four_quadrants():
    lin = nn.Linear(2, 2).to(D64)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
        lin.bias.zero_()
    net = nn.Sequential(lin, nn.ReLU(), nn.Linear(2, 1).to(D64))
    part = ma.partition_plane(net, ma.Slice.square(), progress=False)
    assert part.num_regions == 4
    assert torch.allclose(part.areas, torch.ones(4, dtype=D64))
    codes = sorted(int(c[0]) for c in part.packed)
    assert codes == [0, 1, 2, 3]  # both bits, each quadrant once


def test_three_concurrent_lines_make_six_sectors():
    lin = nn.Linear(2, 3).to(D64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        lin.bias.zero_()
    net = nn.Sequential(lin, nn.ReLU(), nn.Linear(3, 1).to(D64))
    part = ma.partition_plane(net, ma.Slice.square(), progress=False)
    assert part.num_regions == 6  # a degenerate vertex shared by three lines
    assert abs(float(part.areas.sum()) - 4.0) < 1e-12
    _check_invariants(net, part)


def test_maxpool_window_cells_without_phantom_ties():
    # one max-pool window over 4 affine functions of (s, t): at most 4 cells, and
    # ties between two non-maximal entries never split a cell
    lin = nn.Linear(2, 4).to(D64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.3, 0.2]]))
        lin.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.5]))
    net = nn.Sequential(lin, nn.Unflatten(1, (1, 2, 2)), nn.MaxPool2d(2), nn.Flatten())
    part = ma.partition_plane(net, ma.Slice.square(), progress=False)
    assert part.num_regions == 4
    assert sorted(part.codes["2"].flatten().tolist()) == [0, 1, 2, 3]
    _check_invariants(net, part)
    _compare_with_reference(net, part)


class _TwiceRelu(nn.Module):
    """The same pre-activations twice: identical lines of different units."""

    def __init__(self):
        super().__init__()
        self.lin, self.out = nn.Linear(2, 5), nn.Linear(10, 2)

    def forward(self, x):
        z = self.lin(x)
        return self.out(torch.relu(torch.cat([z, z], 1)))


def test_identical_lines_and_overlapping_windows_share_vertices():
    # units with the same boundary (duplicated pre-activations; overlapping
    # stride-1 max-pool windows comparing the same two inputs) must create one
    # vertex per crossing, not one per unit: the subdivision stays conforming
    torch.manual_seed(3)
    net = _TwiceRelu().to(D64).eval()
    part = ma.partition_plane(net, ma.Slice.square(-3, 3), progress=False)
    single = nn.Sequential(net.lin, nn.ReLU())
    assert part.num_regions == ma.partition_plane(single, ma.Slice.square(-3, 3),
                                                  progress=False).num_regions
    _check_invariants(net, part)
    torch.manual_seed(1)
    pool = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(2, 1), nn.Flatten(),
                         nn.Linear(2 * 3 * 3, 2)).to(D64).eval()
    xs = torch.rand(3, 1, 5, 5, dtype=D64, generator=torch.Generator().manual_seed(1))
    sl = ma.Slice.through(xs[0], xs[1], xs[2], shape="triangle")
    part = ma.partition_plane(pool, sl, progress=False)
    _check_invariants(pool, part)
    _compare_with_reference(pool, part)
    # padding makes entries of equal constants: ties of different pairs are then
    # the same line in a face, cut from its two sides (vertices welded)
    torch.manual_seed(7)
    padded = nn.Sequential(nn.Conv2d(1, 2, 1, padding=1), nn.ReLU(), nn.MaxPool2d(2, 1),
                           nn.Flatten(), nn.Linear(32, 1)).to(D64).eval()
    xs = torch.rand(3, 1, 3, 3, dtype=D64, generator=torch.Generator().manual_seed(7))
    sl = ma.Slice.through(xs[0], xs[1], xs[2], shape="triangle")
    part = ma.partition_plane(padded, sl, progress=False)
    _check_invariants(padded, part)
    _compare_with_reference(padded, part)


def test_hardtanh_bands():
    lin = nn.Linear(2, 1).to(D64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0]]))
        lin.bias.zero_()
    net = nn.Sequential(lin, nn.Hardtanh(-0.5, 0.5))
    part = ma.partition_plane(net, ma.Slice.square(), progress=False)
    assert part.num_regions == 3
    assert sorted(round(float(a), 12) for a in part.areas) == [1.0, 1.0, 2.0]
    assert sorted(part.codes["1"].flatten().tolist()) == [0, 1, 2]


# ------------------------------------------------------------------ reference


@pytest.mark.parametrize("act", [nn.ReLU, nn.LeakyReLU, lambda: nn.Hardtanh(-0.3, 0.4)])
def test_mlp_matches_reference_and_dense_sampling(act):
    net = _mlp([6, 5], seed=3, act=act)
    part = ma.partition_plane(net, ma.Slice.square(), progress=False)
    _check_invariants(net, part)
    _compare_with_reference(net, part)
    assert _dense_codes(net, part.domain) <= {bytes(c.tolist()) for c in part.packed}


def test_cnn_with_maxpool_and_residual_matches_reference():
    net = _cnn(seed=1)
    xs = torch.rand(3, 1, 8, 8, dtype=D64, generator=torch.Generator().manual_seed(0))
    sl = ma.Slice.through(xs[0], xs[1], xs[2], shape="triangle")
    part = ma.partition_plane(net, sl, progress=False)
    assert part.num_regions > 20
    _check_invariants(net, part)
    _compare_with_reference(net, part)
    assert _dense_codes(net, sl, 120) <= {bytes(c.tolist()) for c in part.packed}


@settings(max_examples=8)
@given(arch=architectures(input_kind="flat"), seed=st.integers(0, 10))
def test_random_architectures_flat(arch, seed):
    assume(math.prod(arch.input_shape) >= 2)  # a plane needs two dimensions
    _check_random_architecture(arch, arch.sample(3, seed=seed), reference_up_to=400)


@settings(max_examples=6)
@given(arch=architectures(input_kind="image"), seed=st.integers(0, 10))
def test_random_architectures_image(arch, seed):
    _check_random_architecture(arch, arch.sample(3, seed=seed, scale=0.5),
                               reference_up_to=300)


def _check_random_architecture(arch, x, reference_up_to):
    """Invariants on the plane through three samples; the slow reference too when
    the partition is small enough."""
    sl = ma.Slice.through(x[0], x[1], x[2], shape="triangle")
    try:
        part = ma.partition_plane(arch.model, sl, progress=False, max_regions=3000)
    except ma.MaxAffineError as err:  # pragma: no cover - too many regions to check
        if "max_regions" in str(err):
            return
        raise
    _check_invariants(arch.model, part)
    if part.num_regions <= reference_up_to:
        _compare_with_reference(arch.model, part)


def test_resume_and_recompute_strategies_agree(monkeypatch):
    net = _cnn(seed=2)
    xs = torch.rand(3, 1, 8, 8, dtype=D64, generator=torch.Generator().manual_seed(1))
    sl = ma.Slice.through(xs[0], xs[1], xs[2])
    a = ma.partition_plane(net, sl, progress=False)
    monkeypatch.setattr(mv, "_RESUME_LIMIT", 0)
    b = ma.partition_plane(net, sl, progress=False)
    monkeypatch.setattr(plane, "_VALUES_BUDGET", 500)  # many small chunks of units
    c = ma.partition_plane(net, sl, progress=False)
    for other in (b, c):
        assert {bytes(x.tolist()) for x in a.packed} == {bytes(x.tolist()) for x in other.packed}
        assert abs(float(a.areas.sum()) - float(other.areas.sum())) < 1e-12
    _check_invariants(net, c)


def test_chunks_of_units_and_strategy_switch_keep_the_partition(monkeypatch):
    # layers of 150 units: recompute mode with a tiny values budget ends chunks of
    # units early (lines of later units already cut in some faces), the resume mode
    # hands over to recompute mid-network, and the compiled cut loop stops and resumes
    # to grow its vertex-key table; all give the same conforming result
    net = _mlp([150, 150], seed=5)
    sl = ma.Slice.square()
    a = ma.partition_plane(net, sl, progress=False)
    monkeypatch.setattr(mv, "_RESUME_BUDGET", 1e5)
    b = ma.partition_plane(net, sl, progress=False)
    monkeypatch.setattr(mv, "_RESUME_LIMIT", 0)
    monkeypatch.setattr(plane, "_VALUES_BUDGET", 3e4)
    c = ma.partition_plane(net, sl, progress=False)
    monkeypatch.setattr(planar, "_HASH_START", 2)  # the key table grows many times
    d = ma.partition_plane(net, sl, progress=False)
    for other in (b, c, d):
        _check_invariants(net, other)
        assert {bytes(x.tolist()) for x in a.packed} == {bytes(x.tolist()) for x in other.packed}


class _ViewedPreActivation(nn.Module):
    """ReLUs of a slice, a reshape and an identity (eval dropout) of a value that is
    used again later: the vertex forward passes apply a ReLU in place only to a
    value nothing else uses or shares."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.drop = nn.Linear(2, 12), nn.Linear(12, 2), nn.Dropout(0.5)

    def forward(self, x):
        h = self.a(x)
        r = torch.relu(h[:, :6])  # a view of h, its one user
        r2 = torch.relu(h.reshape(-1, 3, 4)).flatten(1)
        r3 = torch.relu(self.drop(h))  # identity in eval mode: h itself
        return (self.b(torch.cat([r, h[:, 6:]], 1)) + self.b(r2) + self.b(r3)
                + h.sum(1, keepdim=True))


def test_in_place_forward_passes_spare_shared_values():
    torch.manual_seed(0)
    net = _ViewedPreActivation().to(D64).eval()
    part = ma.partition_plane(net, ma.Slice.square(-2, 2), progress=False)
    _check_invariants(net, part)


class _KeptValueMoves(nn.Module):
    """``h`` is kept across two pause points and changes place among the kept
    values (first at unit 2, after ``c`` at unit 3), both 12 wide: the vertex
    values are rewritten in the same buffer, and ``c`` must not overwrite ``h``
    before it is read."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(2, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.l4, self.l5 = nn.Linear(6, 1), nn.Linear(6, 1)

    def forward(self, x):
        h = torch.relu(self.l1(x))
        m = torch.maximum(h, self.l2(h))
        return self.l4(torch.relu(self.l3(m))) + self.l5(h)


def test_values_rewritten_in_place_keep_values_that_move():
    torch.manual_seed(3)
    net = _KeptValueMoves().to(D64).eval()
    part = ma.partition_plane(net, ma.Slice.square(-2, 2), progress=False)
    _check_invariants(net, part)


def test_float32_geometry_and_float32_model():
    net = _mlp([16, 16], seed=0).float()
    part32 = ma.partition_plane(net, ma.Slice.square(), progress=False, dtype=torch.float32)
    part64 = ma.partition_plane(net, ma.Slice.square(), progress=False)
    assert part32.vertices.dtype == torch.float32
    assert abs(part32.num_regions - part64.num_regions) <= 0.02 * part64.num_regions
    assert next(net.parameters()).dtype == torch.float32  # the user's model is untouched


# -------------------------------------------------------------------- segments


def test_segment_matches_dense_sampling_and_outputs():
    net = _cnn(seed=0)
    x0, x1 = torch.rand(2, 1, 8, 8, dtype=D64, generator=torch.Generator().manual_seed(2))
    seg = ma.partition_segment(net, x0, x1)
    t = torch.linspace(0, 1, 20001, dtype=D64)
    pts = x0 + t[:, None, None, None] * (x1 - x0)
    bits = ma.codes(net, pts).packed()
    runs = int((bits[1:] != bits[:-1]).any(1).sum()) + 1
    assert seg.num_regions == runs
    piece = torch.searchsorted(seg.breakpoints, t, right=True).clamp(1, seg.num_regions) - 1
    with torch.no_grad():
        out = net(pts).flatten(1)
    fit = seg.offsets[piece] + seg.slopes[piece] * t[:, None]
    assert float((fit - out).abs().max()) < 1e-10
    assert abs(float(seg.lengths.sum()) - float((x1 - x0).norm())) < 1e-12


def test_segment_agrees_with_plane_restricted_to_it():
    net = _mlp([8, 8], seed=5)
    part = ma.partition_plane(net, ma.Slice.square(), progress=False)
    x0, x1 = torch.tensor([-0.9, -0.7], dtype=D64), torch.tensor([0.8, 0.95], dtype=D64)
    seg = ma.partition_segment(net, x0, x1)
    # clip the segment by every face: the face intervals' ends are the breakpoints
    d = x1 - x0
    ends = set()
    for i in range(part.num_regions):
        p = part.polygon(i)
        lo, hi = 0.0, 1.0
        for j in range(p.shape[0]):
            a, b = p[j], p[(j + 1) % p.shape[0]]
            n = torch.tensor([-(b - a)[1], (b - a)[0]], dtype=D64)  # inward normal (CCW)
            num, den = float(n @ (x0 - a)), float(n @ d)
            if abs(den) < 1e-15:
                if num < 0:
                    lo, hi = 1.0, 0.0
                continue
            t = -num / den
            if den > 0:
                lo = max(lo, t)
            else:
                hi = min(hi, t)
        if hi - lo > 1e-12:
            ends.add(round(lo, 9))
            ends.add(round(hi, 9))
    plane_breaks = sorted(ends)
    assert len(plane_breaks) == seg.num_regions + 1
    assert torch.allclose(torch.tensor(plane_breaks, dtype=D64), seg.breakpoints, atol=1e-8)


# ---------------------------------------------------------------- results / io


def test_results_json_save_and_plot(tmp_path):
    import json

    import matplotlib

    matplotlib.use("Agg")
    net = _mlp([8, 8], seed=1)
    part = ma.partition_plane(net, ma.Slice.square(), progress=False)
    data = json.loads(part.to_json())
    assert data["summary"]["regions"] == part.num_regions
    assert len(data["faces"]) == part.num_regions
    part.save(tmp_path / "p.json")
    part.save(tmp_path / "p.pt")
    assert (tmp_path / "p.pt").stat().st_size > 0
    for mode in ("region", "layer", "class", "output"):
        ax = part.plot(color_by=mode)
        assert len(ax.collections) >= 2
    with pytest.raises(ValueError, match="color_by"):
        part.plot(color_by="nonsense")
    # class cells tile the domain too
    polys, classes = part.class_cells()
    total = sum(abs(0.5 * float((p[:, 0] * p.roll(-1, 0)[:, 1]
                                 - p.roll(-1, 0)[:, 0] * p[:, 1]).sum())) for p in polys)
    assert abs(total - 4.0) < 1e-9
    assert len(classes) == len(polys)
    # per-layer boundaries come from the layers that exist
    assert set(part.edge_layer.tolist()) <= {-1, 0, 1}
    assert part.layer_boundaries(0).shape[1:] == (2, 2)


# ---------------------------------------------------------------------- errors


def test_bad_domains_are_refused():
    x = torch.rand(1, 4, 4, dtype=D64)
    with pytest.raises(ma.MaxAffineError, match="collinear"):
        ma.Slice.through(x, 2 * x, 3 * x)
    with pytest.raises(ma.MaxAffineError, match="equal"):
        ma.Slice.through(x, x, 2 * x)
    with pytest.raises(ma.MaxAffineError, match="NaN"):
        ma.Slice.through(x, x.clone().fill_(math.nan), x + 1)
    e = torch.eye(2, dtype=D64)
    with pytest.raises(ma.MaxAffineError, match="zero area"):
        ma.Slice(torch.zeros(2, dtype=D64), e[0], e[1], [[0, 0], [1, 1], [2, 2]])
    with pytest.raises(ma.MaxAffineError, match="convex"):
        ma.Slice(torch.zeros(2, dtype=D64), e[0], e[1], [[0, 0], [2, 0], [1, 0.2], [1, 2]])
    with pytest.raises(ma.MaxAffineError, match="parallel"):
        ma.Slice(torch.zeros(2, dtype=D64), e[0], 2 * e[0], [[0, 0], [1, 0], [0, 1]])
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU())
    with pytest.raises(ma.MaxAffineError, match="2-D inputs"):
        ma.partition_plane(net, [[0, 0], [1, 0], [0, 1]], progress=False)
    with pytest.raises(ma.MaxAffineError, match="equal"):
        ma.partition_segment(net, x, x)


def test_unsupported_model_is_refused():
    net = nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 1))
    with pytest.raises(ma.UnsupportedOperation, match="GELU"):
        ma.partition_plane(net, ma.Slice.square(), progress=False)
    with pytest.raises(ma.UnsupportedOperation, match="GELU"):
        ma.partition_segment(net, torch.zeros(2), torch.ones(2))


def test_region_limit_is_a_clear_error():
    net = _mlp([64, 64], seed=0)
    with pytest.raises(ma.MaxAffineError, match="max_regions"):
        ma.partition_plane(net, ma.Slice.square(), progress=False, max_regions=50)

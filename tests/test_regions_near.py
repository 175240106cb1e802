"""regions_near: the exact regions of a network within a ball around one input.

Checked against the exact plane partition in 2-D (the same codes, L-inf: the
square; L2: the faces whose polygon comes closer to x than the radius), against
dense sampling of the ball at higher dimension (no code outside the set), and on
its own terms: interior points inside their regions and the ball, a symmetric
adjacency, H-representations, maps; bad input named."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import maxaffine as ma
from maxaffine.partition.near import _Walk

ACTIVATIONS = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.2),
               "hardtanh": lambda: nn.Hardtanh(-0.5, 0.5)}


def mlp(d: int, widths: tuple[int, ...], act: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(d, w), ACTIVATIONS[act]()]
        d = w
    return nn.Sequential(*layers, nn.Linear(d, 3)).double().eval()


def keys(packed: torch.Tensor) -> set[bytes]:
    return {bytes(r.tolist()) for r in packed}


def sample_ball(x: torch.Tensor, r: float, norm: str, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = x.numel()
    if norm == "linf":
        u = torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1
    else:
        v = torch.randn(n, d, generator=g, dtype=torch.float64)
        u = v / v.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=g,
                                                         dtype=torch.float64) ** (1 / d)
    return (x.reshape(1, -1) + r * u).reshape(n, *x.shape)


def check_set(found: ma.RegionSet, model: nn.Module) -> None:
    """Interior points have their region's code and lie strictly inside the ball;
    codes are distinct; the adjacency is symmetric and joins distinct regions."""
    n = found.num_regions
    assert torch.equal(ma.codes(model, found.interior_points).packed(), found.packed)
    assert len(keys(found.packed)) == n
    offset = (found.interior_points - found.x).flatten(1)
    dist = offset.abs().amax(1) if found.norm == "linf" else offset.norm(dim=1)
    assert bool((dist < found.radius).all())
    assert bool((found.margins > 0).all()) and bool((dist + found.margins
                                                      <= found.radius * (1 + 1e-9)).all())
    adj = found.adjacency
    assert adj.shape == (n, n) and (adj != adj.T).nnz == 0 and adj.diagonal().sum() == 0
    assert bool((found.edges[:, 0] < found.edges[:, 1]).all())
    if n > 1 and found.complete:
        # the walk reached every region through facets: the graph is connected
        import scipy.sparse.csgraph

        assert scipy.sparse.csgraph.connected_components(adj)[0] == 1


def polygon_distance(point: torch.Tensor, poly: torch.Tensor) -> float:
    """Euclidean distance from a point to a convex polygon (0 inside)."""
    a, b = poly, poly.roll(-1, 0)
    edge = b - a
    cross = edge[:, 0] * (point[1] - a[:, 1]) - edge[:, 1] * (point[0] - a[:, 0])
    if bool((cross >= 0).all()) or bool((cross <= 0).all()):
        return 0.0
    t = (((point - a) * edge).sum(1) / (edge * edge).sum(1).clamp(min=1e-300)).clamp(0, 1)
    return float((a + t[:, None] * edge - point).norm(dim=1).min())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), act=st.sampled_from(sorted(ACTIVATIONS)),
       widths=st.sampled_from([(6,), (8, 6), (5, 5, 4)]),
       cx=st.floats(-1, 1), cy=st.floats(-1, 1), r=st.floats(0.05, 1.0))
def test_2d_linf_and_l2_match_the_plane_partition(seed, act, widths, cx, cy, r):
    net = mlp(2, widths, act, seed)
    x = torch.tensor([cx, cy], dtype=torch.float64)
    square = torch.tensor([[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r],
                           [cx - r, cy + r]], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ma.MaxAffineWarning)  # regions below tolerance
        try:
            part = ma.partition_plane(net, square, progress=False)
            box = ma.regions_near(net, x, r, norm="linf", progress=False)
            ball = ma.regions_near(net, x, r, norm="l2", progress=False)
        except ma.MaxAffineWarning:
            return  # a sliver below either method's tolerance: nothing exact to compare
    assert box.complete and ball.complete
    assert keys(box.packed) == keys(part.packed)
    check_set(box, net)
    check_set(ball, net)
    # L2: the faces of the square's partition that come closer to x than r
    inside, unsure = set(), set()
    for i in range(part.num_regions):
        dist = polygon_distance(x, part.polygon(i))
        key = bytes(part.packed[i].tolist())
        if abs(dist - r) < 1e-9 * max(r, 1.0):
            unsure.add(key)
        elif dist < r:
            inside.add(key)
    assert inside <= keys(ball.packed) <= inside | unsure


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("act", ["relu", "hardtanh"])
def test_sampling_the_ball_finds_no_other_region(norm, act):
    """In 6-D, dense sampling of the ball finds no code outside the set."""
    net = mlp(6, (12, 10), act, 3)
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.3
    r = 0.4
    found = ma.regions_near(net, x, r, norm=norm, progress=False)
    assert found.complete and found.unresolved == 0
    check_set(found, net)
    seen = keys(ma.codes(net, sample_ball(x, r, norm, 100_000)).packed())
    assert seen <= keys(found.packed)
    assert found.num_regions >= len(seen) > 1


def test_max_pooling_cnn_against_sampling():
    torch.manual_seed(2)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(18, 3)).double().eval()
    x = torch.rand(1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for norm, r in (("linf", 0.02), ("l2", 0.05)):
        found = ma.regions_near(cnn, x, r, norm=norm, progress=False)
        assert found.complete
        check_set(found, cnn)
        seen = keys(ma.codes(cnn, sample_ball(x, r, norm, 50_000)).packed())
        assert seen <= keys(found.packed)


def test_the_naive_walk_finds_the_same_regions():
    net = mlp(4, (8, 8), "relu", 5)
    x = torch.zeros(4, dtype=torch.float64)
    fast = ma.regions_near(net, x, 0.5, progress=False)
    graph = fast.graph
    naive = _Walk(graph, x, 0.5, "linf", 10_000, prune=False, witnesses=False,
                  warm=False).run(False)
    assert keys(naive.packed) == keys(fast.packed)
    assert set(map(tuple, naive.edges.tolist())) <= set(map(tuple, fast.edges.tolist())) or (
        naive.num_regions == fast.num_regions)
    assert naive.linear_programs > fast.linear_programs


def test_results_halfspaces_maps_and_counts():
    net = mlp(3, (8, 8), "relu", 7)
    x = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    found = ma.regions_near(net, x, 0.6, norm="l2", progress=False)
    assert found.num_regions > 3
    assert found.codes.packed().equal(found.packed)
    for i in (0, found.num_regions - 1):
        a, b = found.halfspaces(i)
        y = found.interior_points[i].reshape(-1)
        assert bool((a @ y < b).all())
        # points of other regions violate some constraint
        other = found.interior_points[(i + 1) % found.num_regions].reshape(-1)
        assert not bool((a @ other <= b).all())
    amap = found.maps()
    with torch.no_grad():
        assert torch.allclose(amap.reconstruct(), net(found.interior_points), atol=1e-12)
    counts = found.counts_per_layer
    assert counts.shape == (2,) and int(found.counts_up_to_layer[-1]) == found.num_regions
    assert 1 <= int(counts[0]) <= found.num_regions
    summary = found.summary()
    assert summary["regions"] == found.num_regions and summary["norm"] == "l2"
    assert found.regions_per_second > 0 and found.seconds > 0
    # region 0 holds x
    assert ma.codes(net, x.unsqueeze(0)).packed().equal(found.packed[:1])


def test_max_regions_stops_with_a_warning():
    net = mlp(4, (16, 16), "relu", 1)
    x = torch.zeros(4, dtype=torch.float64)
    with pytest.warns(ma.MaxAffineWarning, match="max_regions=3"):
        found = ma.regions_near(net, x, 2.0, max_regions=3, progress=False)
    assert not found.complete and found.num_regions == 3
    check_set(found, net)


def test_one_region_when_no_boundary_meets_the_ball():
    net = mlp(3, (4,), "relu", 0)
    x = torch.full((3,), 50.0, dtype=torch.float64)
    found = ma.regions_near(net, x, 1e-3, progress=False)
    assert found.num_regions == 1 and found.edges.shape == (0, 2)
    affine = nn.Linear(3, 2).double()
    assert ma.regions_near(affine, x, 1.0, progress=False).num_regions == 1


def test_float32_model_and_image_inputs():
    torch.manual_seed(0)
    net = ma.models.mlp((1, 4, 4), (8,), 3).eval()  # float32, (1, 4, 4) inputs
    x = torch.rand(1, 4, 4)
    found = ma.regions_near(net, x, 0.05, progress=False)
    assert found.interior_points.shape[1:] == (1, 4, 4)
    assert found.interior_points.dtype == torch.float64
    check_set(found, net.double())


@pytest.mark.parametrize("radius", [0.0, -1.0, math.nan, math.inf])
def test_bad_radius(radius):
    with pytest.raises(ma.MaxAffineError, match="radius"):
        ma.regions_near(mlp(2, (4,), "relu", 0), torch.zeros(2, dtype=torch.float64), radius)


def test_bad_arguments_are_named():
    net = mlp(2, (4,), "relu", 0)
    x = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ma.MaxAffineError, match="norm"):
        ma.regions_near(net, x, 0.5, norm="l1")
    with pytest.raises(ma.MaxAffineError, match="NaN"):
        ma.regions_near(net, torch.tensor([math.nan, 0.0], dtype=torch.float64), 0.5)
    with pytest.raises(ma.MaxAffineError, match="batch"):
        ma.regions_near(net, x.unsqueeze(0), 0.5)
    with pytest.raises(ma.MaxAffineError):
        ma.regions_near(net, torch.zeros(3, dtype=torch.float64), 0.5)
    with pytest.raises(ma.MaxAffineError, match="max_regions"):
        ma.regions_near(net, x, 0.5, max_regions=0)
    with pytest.raises(ma.MaxAffineTypeError):
        ma.regions_near("net", x, 0.5)
    with pytest.raises(ma.MaxAffineError, match="float64 resolves"):
        ma.regions_near(net, x, 1e-14)
    smooth = nn.Sequential(nn.Linear(2, 4), nn.Sigmoid(), nn.Linear(4, 2)).double()
    with pytest.raises(ma.UnsupportedOperation, match="Sigmoid"):
        ma.regions_near(smooth, x, 0.5)


def test_the_experiment_runs(tmp_path):
    import argparse
    import json

    from maxaffine.experiments import experiments
    from maxaffine.experiments.regions_near import changing_units

    exp = experiments()["regions-near"]
    parser = argparse.ArgumentParser()
    exp.add_arguments(parser)
    args = parser.parse_args(["--train-size", "300", "--epochs", "1", "--images", "1",
                              "--radii", "0.003", "0.03", "--max-regions", "15",
                              "--directions", "4", "--no-progress"])
    args.out = tmp_path
    out = exp.run(args)
    rows = json.loads((out / "runs.json").read_text())["rows"]
    assert [r["radius"] for r in rows] == [0.003, 0.03][: len(rows)] and rows
    assert all(r["regions"] >= 1 and r["units_changing"] >= 0 for r in rows)
    assert "local_complexity" in (out / "regions_near.md").read_text()
    # units changing among the regions: 0 for one region, >= 1 for more
    net = mlp(3, (8,), "relu", 0)
    one = ma.regions_near(net, torch.full((3,), 50.0, dtype=torch.float64), 1e-3,
                          progress=False)
    many = ma.regions_near(net, torch.zeros(3, dtype=torch.float64), 1.0, progress=False)
    assert changing_units(one) == 0 and changing_units(many) >= 1


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), d=st.sampled_from([2, 3]), r=st.floats(0.2, 1.0))
def test_linf_ball_equals_the_box_complex(seed, d, r):
    """In 2-D and 3-D the L-inf ball is a box: the walk finds exactly the regions of
    the full-dimension complex of that box (``partition_box``), an independent
    construction (face-lattice cuts, no linear programs)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, 10), nn.ReLU(), nn.Linear(10, 8), nn.LeakyReLU(0.1),
                        nn.Linear(8, 2)).double()
    x = torch.randn(d, dtype=torch.float64) * 0.5
    found = ma.regions_near(net, x, r, norm="linf", progress=False)
    box = ma.partition_box(net, x - r, x + r, progress=False)
    assert found.complete
    assert sorted(bytes(p) for p in found.packed.numpy()) == sorted(
        bytes(p) for p in box.packed.numpy())

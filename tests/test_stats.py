"""Partition statistics: local complexity (zero inside a region, exact counts on
hand-built layers), boundary distance (against the independent margin reference
and the exact segment partition along its direction), region density and
sharing, and the turning angles of a hand-built decision boundary."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import maxaffine as ma
from strategies import INPUT_KINDS, architectures
from strategies import boundary_distance as reference_distance

DT = torch.float64
FEW = max(10, settings.default.max_examples * 15 // 25)  # fewer examples than the profile


def linear(weight: list, bias: list) -> nn.Linear:
    w = torch.tensor(weight, dtype=DT)
    lin = nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(torch.tensor(bias, dtype=DT))
    return lin


# ------------------------------------------------------------------- boundary distance


@pytest.mark.parametrize("kind", INPUT_KINDS)
@settings(max_examples=FEW)
@given(data=st.data())
def test_boundary_distance_matches_the_segment_partition_along_its_direction(
        kind: str, data: st.DataObject):
    arch = data.draw(architectures(kind))
    x = arch.sample(3, data.draw(st.integers(0, 999)))
    graph = ma.trace(arch.model, x)
    assume(graph.layers)
    bd = ma.boundary_distance(graph, x)
    ref, _, _ = reference_distance(graph, x, graph.evaluate(x).codes)
    torch.testing.assert_close(bd.total, ref, rtol=1e-9, atol=1e-12)
    assert bd.values.shape == (3, len(graph.layers))
    for n in range(3):
        d = float(bd.total[n])
        if not (1e-6 < d < 1e3):
            continue
        direction = bd.direction[n]
        torch.testing.assert_close(float(direction.norm()), 1.0)
        seg = ma.partition_segment(graph, x[n], x[n] + 2 * d * direction)
        first = float(seg.breakpoints[1]) * 2 * d
        assert abs(first - d) <= 1e-7 * d, (first, d)
        # the first layer whose code changes there is the nearest layer
        changed = [i for i, v in enumerate(seg.codes.values)
                   if not torch.equal(v[0], v[1])]
        layer = int(bd.values[n].argmin())
        values = sorted(bd.values[n].tolist())
        if len(values) == 1 or values[1] > values[0] * (1 + 1e-6):
            assert changed and changed[0] == layer


def test_first_layer_distance_by_hand():
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(6, 4, generator=gen, dtype=DT), torch.randn(6, generator=gen, dtype=DT)
    net = nn.Sequential(linear(w.tolist(), b.tolist()), nn.ReLU(), linear([[1.0] * 6], [0.0]))
    x = torch.randn(10, 4, generator=gen, dtype=DT)
    bd = ma.boundary_distance(net, x, directions_per_pass=3)
    expected = ((x @ w.T + b).abs() / w.norm(dim=1)).amin(1)
    torch.testing.assert_close(bd[0], expected)
    k = ((x @ w.T + b).abs() / w.norm(dim=1)).argmin(1)
    sign = (x @ w.T + b).gather(1, k[:, None]).sign()
    torch.testing.assert_close(bd.direction, -sign * w[k] / w[k].norm(dim=1, keepdim=True))


# ------------------------------------------------------------------- local complexity


@pytest.mark.parametrize("kind", INPUT_KINDS)
@settings(max_examples=FEW)
@given(data=st.data())
def test_local_complexity_zero_inside_a_region_and_positive_across(
        kind: str, data: st.DataObject):
    arch = data.draw(architectures(kind))
    x = arch.sample(3, data.draw(st.integers(0, 999)))
    graph = ma.trace(arch.model, x)
    assume(graph.layers)
    bd = ma.boundary_distance(graph, x)
    d = bd.total
    assume(bool(torch.isfinite(d).all() & (d > 1e-6).all()))
    for n in range(3):
        inside = ma.local_complexity(graph, x[n:n + 1], 0.99 * float(d[n]),
                                     min(graph.input_dim, 6), seed=n)
        assert int(inside.total[0]) == 0
        # just past the nearest boundary, along its direction: that layer counts
        across = ma.local_complexity(graph, x[n:n + 1], (1 + 1e-6) * float(d[n]),
                                     directions=bd.direction[n:n + 1])
        layer = int(bd.values[n].argmin())
        values = sorted(bd.values[n].tolist())
        if len(values) == 1 or values[1] > values[0] * (1 + 1e-4):
            assert int(across.values[0, :layer].sum()) == 0
            assert int(across.values[0, layer]) >= 1


def test_local_complexity_counts_crossing_hyperplanes_exactly():
    """First layer: the units whose hyperplane meets the cross-polytope
    {x0 + sum_i t_i e_i : sum |t_i| <= r}, i.e. |z_k(x0)| < r max_i |w_ki|."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(40, 3, generator=gen, dtype=DT)
    b = torch.randn(40, generator=gen, dtype=DT)
    net = nn.Sequential(linear(w.tolist(), b.tolist()), nn.ReLU(),
                        linear(torch.randn(7, 40, generator=gen, dtype=DT).tolist(),
                               torch.randn(7, generator=gen, dtype=DT).tolist()), nn.ReLU(),
                        linear([[1.0] * 7], [0.0]))
    x0 = torch.randn(5, 3, generator=gen, dtype=DT)
    axes = torch.eye(3, dtype=DT)
    for r in (0.05, 0.3, 1.0, 3.0):
        lc = ma.local_complexity(net, x0, r, directions=axes)
        z = x0 @ w.T + b
        expected = (z.abs() < r * w.abs().amax(1)).sum(1)
        assert torch.equal(lc.values[:, 0], expected)
        # second layer: the propagated vertices, by hand
        verts = torch.cat([x0.unsqueeze(1), x0.unsqueeze(1) + r * axes,
                           x0.unsqueeze(1) - r * axes], 1)  # (5, 7, 3)
        h = torch.relu(verts @ w.T + b)
        z2 = h @ net[2].weight.detach().T + net[2].bias.detach()
        pos = z2 > 0
        expected2 = (pos.any(1) & ~pos.all(1)).sum(1)
        assert torch.equal(lc.values[:, 1], expected2)
        assert torch.equal(lc.total, expected + expected2)
    assert expected.sum() > 0  # the largest radius does cross hyperplanes


def test_local_complexity_of_the_demo_cnn_is_batched():
    from maxaffine.models import small_cnn

    torch.manual_seed(0)
    cnn = small_cnn((1, 12, 12), channels=(4, 8)).eval()
    x = torch.rand(6, 1, 12, 12)
    lc = ma.local_complexity(cnn, x, 0.05, 10)
    one = ma.local_complexity(cnn, x[2:3], 0.05, 10)
    assert lc.values.shape == (6, 4)
    assert torch.equal(lc.values[2], one.values[0])
    assert bool((ma.local_complexity(cnn, x, 0.5, 10).total >= lc.total).all())


# ------------------------------------------------------------------- density and sharing


def test_region_density_by_hand():
    """One ReLU layer: a segment crosses the hyperplanes whose sign differs at its ends."""
    gen = torch.Generator().manual_seed(2)
    w, b = torch.randn(25, 2, generator=gen, dtype=DT), torch.randn(25, generator=gen, dtype=DT)
    net = nn.Sequential(linear(w.tolist(), b.tolist()), nn.ReLU(), linear([[1.0] * 25], [0.0]))
    x0 = torch.randn(6, 2, generator=gen, dtype=DT) * 2
    x1 = torch.randn(6, 2, generator=gen, dtype=DT) * 2
    rd = ma.region_density(net, x0, x1)
    crossings = ((x0 @ w.T + b) * (x1 @ w.T + b) < 0).sum(1)
    assert torch.equal(rd.values[:, 0], 1 + crossings)
    torch.testing.assert_close(rd.lengths, (x1 - x0).norm(dim=1))
    torch.testing.assert_close(rd.total, (1 + crossings) / (x1 - x0).norm(dim=1))
    single = ma.region_density(net, x0[0], x1[0])
    assert torch.equal(single.values, rd.values[:1])


@given(arch=architectures("flat"), seed=st.integers(0, 999))
def test_region_density_counts_the_segment_partition_by_depth(arch, seed: int):
    x = arch.sample(4, seed)
    graph = ma.trace(arch.model, x)
    assume(graph.layers)
    rd = ma.region_density(graph, x[:2], x[2:])
    for n in range(2):
        seg = ma.partition_segment(graph, x[n], x[2 + n])
        assert int(rd.values[n, -1]) == seg.num_regions
        assert bool((rd.values[n].diff() >= 0).all())
        # depth l: pieces whose codes of layers 1..l differ from the previous piece
        for depth in range(len(graph.layers)):
            changes = sum(
                any(not torch.equal(v[i], v[i + 1]) for v in seg.codes.values[:depth + 1])
                for i in range(seg.num_regions - 1))
            assert int(rd.values[n, depth]) == 1 + changes


@pytest.mark.parametrize("kind", INPUT_KINDS)
@given(data=st.data())
def test_region_sharing_against_sets_of_codes(kind: str, data: st.DataObject):
    arch = data.draw(architectures(kind))
    base = arch.sample(6, data.draw(st.integers(0, 999)))
    X = torch.cat([base, base[:3] * (1 + 1e-9), arch.sample(5, 1, scale=0.01)])
    graph = ma.trace(arch.model, X)
    assume(graph.layers)
    rs = ma.region_sharing(graph, X, batch_size=4)
    c = ma.codes(graph, X)
    for depth in range(len(c.names)):
        keys = [tuple(tuple(v[i].flatten().tolist()) for v in c.values[:depth + 1])
                for i in range(len(X))]
        assert int(rs.regions[depth]) == len(set(keys))
        alone = {tuple(c.values[depth][i].flatten().tolist()) for i in range(len(X))}
        assert int(rs.layer_regions[depth]) == len(alone)
        shared = sum(keys.count(k) > 1 for k in keys) / len(X)
        assert math.isclose(float(rs.shared[depth]), shared)
    ids = rs.region_ids
    full = [tuple(tuple(v[i].flatten().tolist()) for v in c.values) for i in range(len(X))]
    for i in range(len(X)):
        for j in range(len(X)):
            assert (ids[i] == ids[j]).item() == (full[i] == full[j])


# ------------------------------------------------------------------- curvature


def polyline_net(a: list[float], c: list[float], classes: int) -> nn.Module:
    """f(x, y) = y - sum_i a_i relu(x - c_i): the boundary f = 0 is the graph of a
    piecewise-linear function with slopes s_j = a_1 + ... + a_j and kinks at c_i."""
    k = len(a)
    first = linear([[1.0, 0.0]] * k + [[0.0, 1.0]], [-ci for ci in c] + [10.0])
    head = [[-ai for ai in a] + [1.0]]
    if classes == 1:
        return nn.Sequential(first, nn.ReLU(), linear(head, [-10.0]))
    return nn.Sequential(first, nn.ReLU(), linear([[0.0] * (k + 1), head[0]], [0.0, -10.0]))


@pytest.mark.parametrize("classes", [1, 2])
def test_turning_angles_of_a_hand_built_boundary(classes: int):
    a, c = [0.5, -1.5, 0.0, 2.0], [-0.5, 0.1, 0.3, 0.6]
    net = polyline_net(a, c, classes)
    domain = torch.tensor([[-1.0, -3.0], [1.0, -3.0], [1.0, 3.0], [-1.0, 3.0]], dtype=DT)
    part = ma.partition_plane(net, domain, progress=False)
    curv = ma.boundary_curvature(part)
    slopes = torch.tensor([0.0, *torch.tensor(a).cumsum(0).tolist()], dtype=DT)
    expected = (torch.atan(slopes[1:]) - torch.atan(slopes[:-1])).abs()
    order = curv.joints[:, 0].argsort()
    torch.testing.assert_close(curv.angles[order], expected)
    torch.testing.assert_close(curv.joints[order, 0], torch.tensor(c, dtype=DT))
    ys = torch.tensor([sum(ai * max(0.0, ci - cj) for ai, cj in zip(a, c, strict=True))
                       for ci in c], dtype=DT)
    torch.testing.assert_close(curv.joints[order, 1], ys, atol=1e-9, rtol=0)
    assert bool((curv.faces[:, 0] != curv.faces[:, 1]).all())
    assert curv.summary()["joints"] == 4
    assert math.isclose(curv.summary()["straight_fraction"], 0.25)  # the a_i = 0 kink


def test_curvature_of_a_straight_boundary_and_errors():
    net = polyline_net([0.0, 0.0], [-0.3, 0.4], 1)
    domain = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=DT)
    curv = ma.boundary_curvature(ma.partition_plane(net, domain, progress=False))
    assert curv.angles.shape == (2,)
    assert float(curv.angles.abs().max()) < 1e-9
    with pytest.raises(ma.MaxAffineError, match="Partition"):
        ma.boundary_curvature(net)


def test_errors_name_the_culprit():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(2, 3)
    with pytest.raises(ma.MaxAffineError, match="radius"):
        ma.local_complexity(net, x, -1.0, 2)
    with pytest.raises(ma.MaxAffineError, match="n_directions"):
        ma.local_complexity(net, x, 0.1, 4)
    with pytest.raises(ma.MaxAffineError, match=r"directions must have shape \(P, 3\)"):
        ma.local_complexity(net, x, 0.1, directions=torch.ones(2, 5))
    with pytest.raises(ma.MaxAffineError, match="same shape"):
        ma.region_density(net, x, x[:1])
    with pytest.raises(ma.MaxAffineError, match="no nonlinearity"):
        ma.boundary_distance(nn.Linear(3, 2), x)


@pytest.mark.slow
def test_training_dynamics_experiment_runs(tmp_path):
    import argparse
    import json

    from maxaffine.experiments import experiments

    exp = experiments()["training-dynamics"]
    parser = argparse.ArgumentParser()
    exp.add_arguments(parser)
    args = parser.parse_args(["--train-size", "128", "--epochs", "2", "--checkpoints", "3",
                              "--widths", "16", "16", "--lc-points", "20", "--bd-points", "4",
                              "--no-progress"])
    args.out = tmp_path
    out = exp.run(args)
    runs = json.loads((out / "runs.json").read_text())
    steps = [r["step"] for r in runs["records"]]
    assert steps[0] == 0 and steps[-1] == 4 and steps == sorted(steps)
    assert (out / "training_dynamics.png").exists()

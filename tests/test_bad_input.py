"""Exactness under stress (issue 13): empty batches give empty results of the
documented types and shapes, and every bad argument of the codes, distances,
statistics, layers, losses, builders and the command line raises a
MaxAffineError (MaxAffineTypeError for wrong types) that names the culprit, the
value received and what to do -- never a raw IndexError, ZeroDivisionError or
RuntimeError."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import maxaffine as ma
import maxaffine.nn as mnn
from maxaffine.losses import (
    filter_orthogonality,
    template_gram,
    template_orthogonality,
    weight_orthogonality,
)
from maxaffine.models import mlp, small_cnn
from strategies import INPUT_KINDS, architectures

DT = torch.float64
FEW = max(8, settings.default.max_examples * 10 // 25)
TypeErr, Err = ma.MaxAffineTypeError, ma.MaxAffineError


def empty_like(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros((0, *x.shape[1:]))


# ------------------------------------------------------------------- empty batches


@pytest.mark.parametrize("kind", INPUT_KINDS)
@settings(max_examples=FEW)
@given(data=st.data())
def test_empty_batches_give_empty_results(kind: str, data: st.DataObject):
    """Issue 13 item 7, on random architectures, from a model (traced on the empty
    batch itself) and from a graph: codes with 0 rows but every layer, of the shapes
    and dtypes a non-empty batch gets; (0, M) / (N, 0) distances; (0, L) statistics."""
    arch = data.draw(architectures(kind))
    x = arch.sample(3, data.draw(st.integers(0, 99)))
    e = empty_like(x)
    graph = ma.trace(arch.model, x)
    full = ma.codes(graph, x)
    for model in (arch.model, graph):
        c = ma.codes(model, e)
        assert len(c) == 0 and c.names == full.names and c.pieces == full.pieces
        assert [(v.shape[1:], v.dtype) for v in c.values] == [
            (v.shape[1:], v.dtype) for v in full.values]
        assert c.packed().shape == (0, full.packed().shape[1]) and c.packed().dtype == torch.uint8
        assert c.region_ids().shape == (0,) and c.num_units == full.num_units
        assert all(h.shape == (0,) for h in c.hamming(c).values())
        assert len(full.select([])) == 0
    L = len(graph.layers)
    lc = ma.local_complexity(arch.model, e, 0.1)
    assert lc.values.shape == (0, L) and lc.values.dtype == torch.int64 and lc.total.shape == (0,)
    density = ma.region_density(graph, e, e)
    assert density.values.shape == (0, L) and density.lengths.shape == (0,)
    if not L:
        return
    sharing = ma.region_sharing(arch.model, e)
    assert sharing.num_samples == 0 and sharing.region_ids.shape == (0,)
    assert sharing.regions.tolist() == [0] * L and sharing.layer_regions.tolist() == [0] * L
    assert bool(sharing.shared.isnan().all())
    bd = ma.boundary_distance(arch.model, e)
    assert bd.values.shape == (0, L) and bd.direction.shape == (0, *arch.input_shape)
    assert bd.total.shape == (0,) and bd.values.dtype == x.dtype
    assert ma.vq_distance(arch.model, e, x).shape == (0, 3)
    assert ma.vq_distance(graph, x, e).shape == (3, 0)
    assert ma.vq_distance(graph, e, per_layer=True).shape == (L, 0, 0)
    assert ma.vq_distance(None, ma.codes(graph, e), full).shape == (0, 3)
    dist, idx = ma.vq_knn(arch.model, e, x, k=2)
    assert dist.shape == idx.shape == (0, 2) and idx.dtype == torch.int64


def test_empty_batches_of_the_demo_cnn_and_losses():
    cnn = small_cnn((1, 8, 8), 3, channels=(2,)).eval()
    e = torch.zeros(0, 1, 8, 8)
    c = ma.codes(cnn, e)
    assert c.names == ("2", "3") and c["3"].shape == (0, 2, 4, 4)
    assert template_gram(cnn, e).shape == (0, 3, 3)
    assert template_gram(cnn.train(), e, classes=[0, 2]).shape == (0, 2, 2)
    with pytest.raises(Err, match=r"empty batch \(0 samples\).*mean over"):
        template_orthogonality(cnn, e)


# ------------------------------------------------------------------- builders


@pytest.mark.parametrize("build, match", [
    (lambda: mnn.GHN((1, 3, 3), 5, channels=(4, 8, 16)),
     r"3x3 input is too small for 3 conv \+ max-pool stages.*at most 1 stage"),
    (lambda: mnn.GHN((1, 1, 1), 2, channels=(4,)),
     r"at most 0 stage\(s\).*channels=\(\) for an MLP"),
    (lambda: mnn.GHLinear(0, 3), r"in_features must be >= 1, got 0"),
    (lambda: mnn.GHLinear(3, -1), r"out_features must be >= 1, got -1"),
    (lambda: mnn.GHN((4,), 0), r"num_classes must be >= 1, got 0"),
    (lambda: mnn.GHN((4,), 2, widths=(8, 0)), r"widths\[1\] must be >= 1, got 0"),
    (lambda: mnn.GHN((4,), 2, widths=(), margin=-1), r"margin must be a finite number >= 0"),
    (lambda: mnn.GHN((4,), 2, threshold="triple"), r"threshold must be one of"),
    (lambda: mnn.GHN((1, 8, 8), 2, channels=(4,), kernel_size=0), r"kernel_size must be >= 1"),
    (lambda: mnn.GHConv2d(1, 2, 0), r"kernel_size must be >= 1, got 0"),
    (lambda: mnn.GHConv2d(1, 2, 3, stride=0), r"stride must be >= 1, got 0"),
    (lambda: mnn.GHConv2d(1, 2, 3, padding=-1), r"padding must be >= 0, got -1"),
    (lambda: mnn.GHLinear(3, 2, margin=float("nan")), r"margin must be a finite number"),
    (lambda: small_cnn((1, 3, 3), 2, channels=(4, 8)), r"at most 1 stage"),
    (lambda: small_cnn((1, 28, 28), 0), r"num_classes must be >= 1"),
    (lambda: small_cnn((28,), 2), r"input_shape must be \(C, L\) or \(C, H, W\)"),
    (lambda: mlp((0, 3), (4,), 2), r"input_shape\[0\] must be >= 1"),
    (lambda: mnn.BetaVQPool2d(0), r"kernel_size must be >= 1, got 0"),
    (lambda: mnn.BetaVQPool2d(2, padding=2), r"at most half of kernel_size"),
    (lambda: mnn.BetaVQ(beta=1.5), r"beta must lie in \[0, 1\], got 1.5"),
    (lambda: mnn.BetaVQ(beta=1.0, learnable=True), r"learnable beta must lie in \(0, 1\).*1e-6"),
    (lambda: mnn.BetaVQ(negative_slope=1.0), r"negative_slope must lie in \[0, 1\)"),
    (lambda: mnn.BetaVQ(per_channel=0), r"per_channel must be >= 1"),
])
def test_builders_refuse_bad_arguments(build, match):
    """Issue 13 item 8: ZeroDivisionError / silently accepted before."""
    with pytest.raises(Err, match=match):
        build()


@pytest.mark.parametrize("build, match", [
    (lambda: mnn.GHLinear("3", 2), r"in_features must be an integer, got str '3'"),
    (lambda: mnn.GHLinear(3.0, 2), r"in_features must be an integer, got float 3.0"),
    (lambda: mnn.GHLinear(3, 2, threshold=1), r"threshold must be one of .* got int 1"),
    (lambda: mnn.GHN("784", 10), r"input_shape must be a sequence of integers"),
    (lambda: mnn.GHN((4,), True), r"num_classes must be an integer, got bool True"),
    (lambda: mnn.BetaVQ(beta="0.5"), r"beta must be a number in \[0, 1\].*got str '0.5'"),
    (lambda: mnn.BetaVQ(kind=3), r"kind must be one of"),
    (lambda: mnn.BetaVQ(negative_slope="0.1"), r"negative_slope must be a number"),
    (lambda: mnn.BetaVQ(learnable="yes"), r"learnable must be True or False"),
    (lambda: mnn.BetaVQPool2d("2"), r"kernel_size must be an int or 2 ints, got str"),
    (lambda: mnn.BetaVQPool2d(2.5), r"kernel_size must be an int or 2 ints, got float 2.5"),
    (lambda: mlp(4, (8,), 2, activation=nn.ReLU()), r"activation must be a factory"),
])
def test_builders_refuse_wrong_types(build, match):
    with pytest.raises(TypeErr, match=match):
        build()


@settings(max_examples=FEW)
@given(size=st.integers(1, 20), stages=st.integers(1, 4), kernel=st.integers(1, 5))
def test_ghn_builds_exactly_the_networks_its_input_allows(size: int, stages: int, kernel: int):
    """Either a clear error that says how many stages fit, or a network that runs on
    its input (the flattened size is computed exactly, even kernels included)."""
    channels = (2,) * stages
    try:
        net = mnn.GHN((1, size, size), 3, widths=(4,), channels=channels, kernel_size=kernel)
    except ma.MaxAffineError as err:
        allowed = int(re.search(r"at most (\d+) stage", str(err)).group(1))
        assert allowed < stages
        if allowed:  # the stages it allows do build and run
            ok = mnn.GHN((1, size, size), 3, widths=(4,), channels=(2,) * allowed,
                         kernel_size=kernel)
            assert ok(torch.rand(2, 1, size, size)).shape == (2, 3)
        return
    assert net(torch.rand(2, 1, size, size)).shape == (2, 3)


def test_layers_refuse_inputs_they_cannot_take():
    """Issue 13 item 9: torch's RuntimeErrors named by the layer, with the remedy."""
    with pytest.raises(Err, match=r"BetaVQPool2d\(kernel_size=\(16, 16\).*spatial size 8x8.*"
                                  r"smaller than one pooling window.*kernel_size of at most 8x8"):
        mnn.BetaVQPool2d(16, 16)(torch.randn(1, 1, 8, 8))
    with pytest.raises(Err, match=r"smaller than one pooling window"):
        mnn.BetaVQPool2d(16, 16, beta=1.0)(torch.randn(1, 1, 8, 8))  # the exact max-pool path
    with pytest.raises(Err, match=r"GHConv2d\(1, 2, \(3, 3\)\): the input is 2x2.*smaller than"):
        mnn.GHConv2d(1, 2, 3)(torch.randn(1, 1, 2, 2))
    with pytest.raises(Err, match=r"takes images \(N, 1, H, W\), got shape \(1, 3, 5, 5\)"):
        mnn.GHConv2d(1, 2, 3)(torch.randn(1, 3, 5, 5))
    with pytest.raises(Err, match=r"GHLinear\(3, 2\) takes inputs \(\.\.\., 3\), got shape"):
        mnn.GHLinear(3, 2)(torch.randn(2, 4))
    with pytest.raises(Err, match=r"per_channel=3 betas .*shape \(2, 4, 5\)"):
        mnn.BetaVQ(per_channel=3)(torch.randn(2, 4, 5))
    with pytest.raises(TypeErr, match=r"pieces must be a floating-point"):
        mnn.vq_selection(torch.ones(2, 3, dtype=torch.long), 0.5)
    with pytest.raises(Err, match=r"beta must lie in \[0, 1\]"):
        mnn.beta_vq(torch.randn(2, 3), -0.1)
    # the checks skip torch.fx proxies: GH networks still trace
    net = mnn.GHN((1, 8, 8), 3, widths=(), channels=(2,))
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(ma.affine_map(net, x).reconstruct(), net(x), atol=1e-4)


# ------------------------------------------------------------------- codes, distances


def test_layer_selection_errors():
    """Issue 13 item 9: IndexError for layers=[5] before; names, lists, types."""
    torch.manual_seed(0)
    net = mlp(3, (4, 4), 2).eval()
    x = torch.randn(5, 3)
    c = ma.codes(net, x)
    with pytest.raises(Err, match=r"layer index 5 is out of range: there are 2 layers "
                                  r"\('2', '4'\); pass an index in \[-2, 1\] or a name"):
        ma.vq_distance(net, x, layers=[5])
    with pytest.raises(Err, match=r"no layer 'conv': the layers are \('2', '4'\)"):
        ma.vq_distance(None, c, layers=["conv"])
    with pytest.raises(Err, match=r"layers=\[\] selects no layer: pass None for all layers"):
        ma.vq_distance(None, c, layers=[])
    with pytest.raises(TypeErr, match=r"layers must be a list of layer names.*got str '2'"):
        ma.vq_distance(None, c, layers="2")
    with pytest.raises(TypeErr, match=r"layers\[0\] must be a layer name \(str\) or index "
                                      r"\(int\), got float"):
        ma.vq_knn(None, c, layers=[1.0])
    with pytest.raises(Err, match=r"layer index -3 is out of range"):
        c[-3]
    assert torch.equal(c[-1], c["4"])
    assert torch.equal(ma.vq_distance(None, c, layers=[-1]), ma.vq_distance(None, c, layers=[1]))
    with pytest.raises(Err, match=r"Codes.select: index \[7\] does not select among the 5"):
        c.select([7])
    lc = ma.local_complexity(net, x, 0.1)
    with pytest.raises(Err, match=r"layer index 2 is out of range"):
        lc[2]
    with pytest.raises(TypeErr, match=r"layer must be a layer name \(str\) or index"):
        lc[0.5]


def test_codes_of_one_model_at_two_input_sizes_say_what_differs():
    """Issue 13 item 12: 'different models: layers ('1','2') and ('1','2')' before."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).eval()
    a, b = ma.codes(net, torch.randn(2, 1, 8, 8)), ma.codes(net, torch.randn(2, 1, 12, 12))
    msg = (r"codes of layer '1' have shape \(2, 8, 8\) vs \(2, 12, 12\): the inputs have "
           r"different sizes")
    with pytest.raises(Err, match=msg):
        a.hamming(b)
    with pytest.raises(Err, match=msg):
        ma.vq_distance(None, a, b)
    with pytest.raises(Err, match=r"their layers differ, \('1', '2'\) vs \('1',\)"):
        a.hamming(ma.codes(nn.Sequential(nn.Linear(2, 3), nn.ReLU()), torch.randn(2, 2)))
    with pytest.raises(Err, match=r"aligned samples, but there are 2 and 1.*vq_distance"):
        a.hamming(a.select([0]))
    with pytest.raises(TypeErr, match=r"other maxaffine.Codes, got Tensor"):
        a.hamming(torch.zeros(2))


@pytest.mark.parametrize("call, error, match", [
    (lambda n, x, c: ma.vq_knn(n, x, k="2"), TypeErr, r"k must be an integer.*got str '2'"),
    (lambda n, x, c: ma.vq_knn(n, x, k=0), Err, r"k must be >= 1"),
    (lambda n, x, c: ma.vq_knn(n, x, k=5), Err, r"k=5 neighbours asked but only 4 references.*"
                                                 r"each query itself excluded"),
    (lambda n, x, c: ma.vq_knn(n, x, queries_per_block=0), Err,
     r"queries_per_block must be >= 1"),
    (lambda n, x, c: ma.vq_knn(n, x, x[:2], exclude_self=True), Err, r"exclude_self=False"),
    (lambda n, x, c: ma.vq_knn(n, x, exclude_self="no"), TypeErr, r"exclude_self must be True"),
    (lambda n, x, c: ma.vq_distance(n, x, per_layer=1), TypeErr, r"per_layer must be True"),
    (lambda n, x, c: ma.vq_distance(n, x, weights=["a", 1]), TypeErr, r"weights\[0\] must be a"),
    (lambda n, x, c: ma.vq_distance(n, x, weights=[float("nan"), 1]), Err, r"weights\[0\] must be"),
    (lambda n, x, c: ma.vq_distance(n, x, weights=[0, 0]), Err, r"not all zero"),
    (lambda n, x, c: ma.vq_distance(n, x, weights="11"), TypeErr, r"weights must be one number"),
    (lambda n, x, c: ma.vq_distance(n, x.tolist()), TypeErr, r"x must be an input batch"),
    (lambda n, x, c: ma.vq_distance("net", x), TypeErr, r"model must be a torch.nn.Module"),
    (lambda n, x, c: ma.vq_distance(None, c, x), Err, r"y is an input batch: pass the model"),
    (lambda n, x, c: ma.vq_distance(n, x, x[:, :2]), Err, r"y has shape \(5, 2\)"),
    (lambda n, x, c: ma.vq_distance(n, x.long()), Err, r"torch.int64.*x.float\(\)"),
    (lambda n, x, c: ma.vq_distance(n, x.half()), Err, r"float16 but the model's parameters"),
    (lambda n, x, c: ma.vq_distance(n, x * float("nan")), Err, r"NaN"),
    (lambda n, x, c: ma.codes(n, "x"), TypeErr, r"x must be a torch.Tensor batch"),
    (lambda n, x, c: ma.codes(n, x[0]), Err, r"unsqueeze\(0\)"),
    (lambda n, x, c: ma.codes(n, x.half()), Err, r"x is torch.float16 but the model"),
    (lambda n, x, c: ma.codes(lambda v: v, x), TypeErr, r"model must be a torch.nn.Module"),
])
def test_distance_and_code_arguments(call, error, match):
    torch.manual_seed(0)
    net = mlp(3, (4, 4), 2).eval()
    x = torch.randn(5, 3)
    with pytest.raises(error, match=match):
        call(net, x, ma.codes(net, x))


# ------------------------------------------------------------------- statistics


def test_local_complexity_default_and_directions():
    """Issue 13 item 13: n_directions=None raised; non-orthonormal directions were
    silently normalised (a different polytope from the one asked for)."""
    torch.manual_seed(0)
    small = mlp(3, (8,), 2).eval()
    x = torch.randn(4, 3)
    assert ma.local_complexity(small, x, 0.1).n_directions == 3  # min(25, input_dim)
    big = mlp(30, (8,), 2).eval()
    lc = ma.local_complexity(big, torch.randn(4, 30), 0.1)
    assert lc.n_directions == 25
    a = ma.local_complexity(big, x.repeat(1, 10), 0.1)  # the default: 25 directions, seed 0
    b = ma.local_complexity(big, x.repeat(1, 10), 0.1, 25, seed=0)
    assert torch.equal(a.values, b.values)
    q = torch.linalg.qr(torch.randn(3, 2, dtype=DT)).Q.T
    assert ma.local_complexity(small, x, 0.1, directions=q).n_directions == 2
    with pytest.raises(Err, match=r"directions must be orthonormal rows.*max \|D D\^T - I\| is "
                                  r"1 > 1e-05.*torch.linalg.qr"):
        ma.local_complexity(small, x, 0.1, directions=torch.tensor([[1.0, 0, 0], [1, 1, 0]]))
    with pytest.raises(Err, match=r"directions must be orthonormal rows"):
        ma.local_complexity(small, x, 0.1, directions=2 * torch.eye(3))  # not unit length
    with pytest.raises(Err, match=r"4 directions in 3 dimensions cannot be orthonormal"):
        ma.local_complexity(small, x, 0.1, directions=torch.randn(4, 3))
    with pytest.raises(Err, match=r"n_directions=3 but directions has 2 rows"):
        ma.local_complexity(small, x, 0.1, 3, directions=q)
    with pytest.raises(Err, match=r"directions.unsqueeze\(0\)"):
        ma.local_complexity(small, x, 0.1, directions=q[0])
    with pytest.raises(TypeErr, match=r"directions must be a torch.Tensor"):
        ma.local_complexity(small, x, 0.1, directions=[[1.0, 0, 0]])
    cnn = small_cnn((1, 4, 4), 2, channels=(2,)).eval()
    flat = torch.eye(16)[:3]  # (P, input_dim) rows are accepted for image inputs
    xi = torch.rand(2, 1, 4, 4)
    assert torch.equal(ma.local_complexity(cnn, xi, 0.3, directions=flat).values,
                       ma.local_complexity(cnn, xi, 0.3, directions=flat.reshape(3, 1, 4, 4)
                                           ).values)


@pytest.mark.parametrize("call, error, match", [
    (lambda n, x: ma.local_complexity(n, x, -1.0), Err, r"radius must be a finite number > 0"),
    (lambda n, x: ma.local_complexity(n, x, float("inf")), Err, r"radius must be a finite"),
    (lambda n, x: ma.local_complexity(n, x, "0.1"), TypeErr, r"radius must be a number"),
    (lambda n, x: ma.local_complexity(n, x, 0.1, 0), Err, r"n_directions must be in \[1, 3\]"),
    (lambda n, x: ma.local_complexity(n, x, 0.1, 4), Err, r"n_directions must be in \[1, 3\]"),
    (lambda n, x: ma.local_complexity(n, x, 0.1, 2.5), TypeErr, r"n_directions must be an int"),
    (lambda n, x: ma.local_complexity(n, x, 0.1, seed=-1), Err, r"seed must be >= 0"),
    (lambda n, x: ma.boundary_distance(n, x, directions_per_pass=0), Err,
     r"directions_per_pass must be >= 1"),
    (lambda n, x: ma.boundary_distance(n, x.long()), Err, r"int64"),
    (lambda n, x: ma.boundary_distance(ma.trace(n, x), x[:, :2]), Err, r"x has shape \(4, 2\)"),
    (lambda n, x: ma.region_sharing(n, x, batch_size=0), Err, r"batch_size must be >= 1"),
    (lambda n, x: ma.region_sharing(n, "X"), TypeErr, r"x must be a torch.Tensor"),
    (lambda n, x: ma.region_density(n, x, x), Err, r"segment 0 has x0 == x1"),
    (lambda n, x: ma.region_density(n, x, x[:2]), Err, r"same shape"),
    (lambda n, x: ma.region_density(n, x, None), TypeErr, r"x1 must be a torch.Tensor"),
    (lambda n, x: ma.region_density(n, x, x + float("nan")), Err, r"x1 contains 12 NaN"),
    (lambda n, x: ma.boundary_curvature(n), TypeErr, r"takes a maxaffine.Partition"),
])
def test_statistics_arguments(call, error, match):
    torch.manual_seed(0)
    net = mlp(3, (4,), 2).eval()
    with pytest.raises(error, match=match):
        call(net, torch.randn(4, 3))


# ------------------------------------------------------------------- losses, training, data


def test_loss_arguments():
    torch.manual_seed(0)
    net = mlp(4, (8,), 3)
    x = torch.randn(6, 4)
    with pytest.raises(Err, match=r"model fails on x of shape \(6, 5\).*\(N, \*input_shape\)"):
        template_orthogonality(net, torch.randn(6, 5))
    with pytest.raises(TypeErr, match=r"samples must be an integer.*got bool True"):
        template_orthogonality(net, x, samples=True)
    with pytest.raises(TypeErr, match=r"classes must be integer class indices.*\['a', 'b'\]"):
        template_orthogonality(net, x, classes=["a", "b"])
    with pytest.raises(TypeErr, match=r"classes must hold integer class indices.*\.long\(\)"):
        template_orthogonality(net, x, classes=[0.0, 1.0])
    with pytest.raises(Err, match=r"index 5 but the model has C=3 outputs.*\[0, 2\]"):
        template_orthogonality(net, x, classes=[0, 5])
    with pytest.raises(TypeErr, match=r"model must be a torch.nn.Module"):
        template_orthogonality("net", x)
    with pytest.raises(TypeErr, match=r"x must be a torch.Tensor"):
        template_gram(net, x.tolist())
    with pytest.raises(Err, match=r"float16 but the model's parameters"):
        template_orthogonality(net, x.half())
    with pytest.raises(TypeErr, match=r"normalize must be True or False"):
        template_orthogonality(net, x, normalize="yes")
    with pytest.raises(TypeErr, match=r"weight must be a torch.Tensor"):
        weight_orthogonality("w")
    with pytest.raises(TypeErr, match=r"takes an nn.Linear or nn.Conv1d/2d/3d, got ReLU"):
        filter_orthogonality(nn.ReLU())


def test_training_and_data_arguments():
    from maxaffine.datasets import load_dataset
    from maxaffine.training import accuracy, fit

    data = load_dataset("moons").subset(20, 10)
    net = mlp(2, (4,), 2)
    for kwargs, error, match in [
        ({"batch_size": 64}, Err, r"batch_size=64 but 'moons' has only 20 training samples"),
        ({"optimizer": "adamw"}, Err, r"optimizer must be one of \('adam', 'sgd'\)"),
        ({"lr": 0.0}, Err, r"lr must be a finite number > 0"),
        ({"epochs": -1}, Err, r"epochs must be >= 0"),
        ({"eval_every": 0}, Err, r"eval_every must be >= 1"),
        ({"penalty": 1.0}, TypeErr, r"penalty must be a function"),
    ]:
        with pytest.raises(error, match=match):
            fit(net, data, progress=False, **kwargs)
    with pytest.raises(TypeErr, match=r"data must be a maxaffine.datasets.Dataset"):
        fit(net, (data.x_train, data.y_train))
    assert accuracy(net, data.x_test[:0], data.y_test[:0]) != accuracy(net, data.x_test[:0],
                                                                        data.y_test[:0])  # NaN
    with pytest.raises(Err, match=r"seed must be >= 0"):
        load_dataset("moons", seed=-1)
    with pytest.raises(Err, match=r"test_fraction must be a finite number in \(0, 1\)"):
        load_dataset("moons", test_fraction=1.0)
    with pytest.raises(TypeErr, match=r"name must be a dataset name"):
        load_dataset(None)
    with pytest.raises(Err, match=r"train must be >= 0"):
        data.subset(-1)


def test_load_file_errors(tmp_path):
    import numpy as np

    from maxaffine.datasets import load_file

    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(Err, match=r"empty.csv: the file has no rows"):
        load_file(tmp_path / "empty.csv")
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 6)), y=np.arange(10) % 2)
    with pytest.raises(Err, match=r"rows of shape \(6,\) cannot be reshaped to input_shape "
                                  r"\(1, 2, 2\)"):
        load_file(tmp_path / "d.npz", input_shape=(1, 2, 2))
    assert load_file(tmp_path / "d.npz", input_shape=(1, 2, 3)).input_shape == (1, 2, 3)


# ------------------------------------------------------------------- command line


def _help(argv: list[str], capsys) -> str:
    from maxaffine.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def test_cli_help_is_plain_text(capsys):
    """Issue 13 item 13: the top-level help printed the module docstring's reST."""
    from maxaffine.experiments import experiments

    pages = [["--help"], ["demo", "--help"], ["reproduce", "--help"]]
    pages += [["reproduce", name, "--help"] for name in experiments()]
    for argv in pages:
        text = _help(argv, capsys)
        assert "usage: maxaffine" in text
        assert not re.search(r"``|:(func|class|meth|mod):|`[^`\s]+`", text), (argv, text)
    assert "output directory" in _help(["demo", "--help"], capsys)


def test_cli_out_is_an_existing_file(tmp_path, capsys):
    """Issue 13 item 13: `maxaffine demo --out <file>` gave a FileExistsError traceback."""
    from maxaffine.cli import main
    from maxaffine.demo import run_demo

    file = tmp_path / "report.txt"
    file.write_text("keep me")
    for argv in (["demo", "--out", str(file)], ["demo", "--out", str(file / "sub")],
                 ["reproduce", "ghn", "--out", str(file)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert re.match(r"maxaffine (demo|reproduce ghn): error: .*report.txt.* is an existing "
                        r"file, not a directory: pass a directory for --out", err)
    assert file.read_text() == "keep me"
    with pytest.raises(Err, match=r"report.txt is an existing file, not a directory"):
        run_demo(file)
    with pytest.raises(SystemExit) as info:
        main(["demo", "--seed", "-1"])
    assert info.value.code == 2
    assert "argument --seed: expected an integer >= 0, got '-1'" in capsys.readouterr().err

"""Hard orthogonality for any parameter value and any optimizer (issue 13, item 5).

``orthogonal_filters`` (Linear, Conv1d/2d, grouped conv) and the orthogonal
sparse coders must keep ``W W^T = I`` (``Phi^T Phi = I``) whatever their
parameters hold: after AdamW / SGD with weight decay, and after every parameter is
overwritten with zeros, rank-one, tiny or huge values.  The check is the Gram
matrix of the flattened filters, computed in float64, and a lower bound on every
filter's norm (torch's Householder map left zero rows here).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import maxaffine as ma
from maxaffine.nn import SparseCoding, SparseCodingConv2d, orthogonality_report
from maxaffine.orthogonal import orthogonal_filters

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}

# name -> (layer factory, input shape); square = as many filters as dimensions.
LAYERS = {
    "linear": (lambda: orthogonal_filters(nn.Linear(16, 8)), (24, 16)),
    "linear-square": (lambda: orthogonal_filters(nn.Linear(6, 6)), (24, 6)),
    "conv1d": (lambda: orthogonal_filters(nn.Conv1d(3, 4, 2)), (8, 3, 5)),
    "conv2d": (lambda: orthogonal_filters(nn.Conv2d(2, 6, 3)), (8, 2, 5, 5)),
    "conv2d-square": (lambda: orthogonal_filters(nn.Conv2d(1, 9, 3)), (8, 1, 5, 5)),
    "conv2d-groups": (lambda: orthogonal_filters(nn.Conv2d(4, 6, 2, groups=2)), (8, 4, 5, 5)),
    "conv2d-groups-square": (lambda: orthogonal_filters(nn.Conv2d(2, 8, 2, groups=2)),
                             (8, 2, 5, 5)),
    "sparse-coding": (lambda: SparseCoding(16, 8), (24, 16)),
    "sparse-coding-square": (lambda: SparseCoding(8, 8, prior="laplace"), (24, 8)),
    "sparse-coding-conv": (lambda: SparseCodingConv2d(2, 5, 3, padding=1), (8, 2, 5, 5)),
    "sparse-coding-conv-square": (lambda: SparseCodingConv2d(1, 9, 3, padding=1),
                                  (8, 1, 5, 5)),
}


def frames(layer: nn.Module) -> torch.Tensor:
    """The matrices that must have orthonormal rows, (groups, n, d), in float64:
    the flattened filters of each group, or ``Phi^T`` of a sparse coder."""
    if isinstance(layer, SparseCoding | SparseCodingConv2d):
        return layer.dictionary.detach().double().T[None]
    w = layer.weight.detach().double()
    g = getattr(layer, "groups", 1)
    return w.reshape(g, w.shape[0] // g, -1)


def assert_orthonormal(layer: nn.Module, dtype=torch.float32) -> None:
    w = frames(layer)
    assert bool(torch.isfinite(w).all())
    gram = w @ w.mT
    err = float((gram - torch.eye(w.shape[1], dtype=w.dtype)).abs().max())
    assert err < TOL[dtype], f"max |W W^T - I| = {err:.3g}"
    assert float(w.norm(dim=-1).min()) > 0.5  # no zero filter / atom
    if isinstance(layer, SparseCoding | SparseCodingConv2d):
        rep = layer.orthogonality()
        assert rep.exact and 0 <= rep.distance < 1e-4 and 0 <= rep.coherence < 1e-4


def train(layer: nn.Module, opt: torch.optim.Optimizer, shape, steps: int = 200,
          dtype=torch.float32) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    with torch.no_grad():
        target = torch.randn(layer(x).shape, generator=gen, dtype=dtype)
    for _ in range(steps):
        loss = (layer(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def spline_net(layer: nn.Module) -> nn.Module:
    """The layer as a piecewise-affine network (sparse coders include their ReLU)."""
    if isinstance(layer, SparseCoding | SparseCodingConv2d):
        return nn.Sequential(layer, nn.Flatten())
    return nn.Sequential(layer, nn.ReLU(), nn.Flatten())


# ------------------------------------------------------------------ optimizers


@pytest.mark.parametrize("name", list(LAYERS))
def test_adamw_weight_decay_keeps_filters_orthonormal_and_the_layer_a_spline(name):
    """The issue's case: AdamW(weight_decay=0.1) for 200 steps left torch's
    Householder map with zero rows (max |W W^T - I| = 1)."""
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make()
    before = frames(layer).clone()
    train(layer, torch.optim.AdamW(layer.parameters(), lr=0.02, weight_decay=0.1), shape)
    assert_orthonormal(layer)
    assert float((frames(layer) - before).abs().max()) > 1e-2  # it did train
    net = spline_net(layer).eval()
    x = torch.randn(shape[0] // 4, *shape[1:])
    ma.trace(net, x)
    with torch.no_grad():
        expected = net(x)
    torch.testing.assert_close(ma.affine_map(net, x).reconstruct(), expected,
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("weight_decay, lr, momentum", [(0.1, 0.1, 0.9), (50.0, 0.01, 0.0)],
                         ids=["sgd-momentum", "sgd-decay-to-zero"])
def test_sgd_weight_decay_keeps_filters_orthonormal(name, weight_decay, lr, momentum):
    """SGD with weight decay; in the second setting the decay halves every raw
    parameter each step and holds it near ``-grad / 50``, close to 0."""
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make()
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    train(layer, opt, shape)
    assert_orthonormal(layer)
    assert all(bool(torch.isfinite(p).all()) for p in layer.parameters())


@pytest.mark.parametrize("name", ["linear", "conv2d-groups", "sparse-coding-conv"])
def test_training_in_float64_from_zero_parameters(name):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    assert_orthonormal(layer, torch.float64)
    before = frames(layer).clone()
    opt = torch.optim.AdamW(layer.parameters(), lr=0.02, weight_decay=0.1)
    train(layer, opt, shape, steps=50, dtype=torch.float64)  # gradients are finite at 0
    assert_orthonormal(layer, torch.float64)
    assert float((frames(layer) - before).abs().max()) > 1e-2


# ------------------------------------------------------ any parameter value


def perturbation(kind: str, scale: float, shape: torch.Size, gen: torch.Generator,
                 dtype) -> torch.Tensor:
    if kind == "zeros" or scale == 0:
        return torch.zeros(shape, dtype=dtype)
    if kind == "constant":
        return torch.full(shape, scale, dtype=dtype)
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "rank-one" and len(shape) >= 2:
        flat = z.reshape(shape[0], -1)
        z = (flat[:, :1] @ flat[:1, :]).reshape(shape)
    elif kind == "half-zero":
        z.view(-1)[::2] = 0
    return (z * scale).to(dtype)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@given(kind=st.sampled_from(["randn", "zeros", "constant", "rank-one", "half-zero"]),
       scale=st.one_of(st.sampled_from([0.0, 1e-30, 1e-6, 1e6]), st.floats(0, 1e6)),
       seed=st.integers(0, 2**16))
def test_any_parameter_value_gives_orthonormal_filters(name, dtype, kind, scale, seed):
    make, _ = LAYERS[name]
    torch.manual_seed(seed)
    layer = make().to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():  # parametrization originals and thresholds alike
            p.copy_(perturbation(kind, scale, p.shape, gen, dtype))
    assert_orthonormal(layer, dtype)


def test_huge_parameters_do_not_overflow():
    lin = orthogonal_filters(nn.Linear(16, 8))
    with torch.no_grad():
        for scale in (1e18, 1e30, 3e38):
            lin.parametrizations.weight.original.copy_(torch.randn(8, 16).sign() * scale)
            assert_orthonormal(lin)


# ------------------------------------------------------- initialisation, assignment


@pytest.mark.parametrize("name", ["linear", "conv2d-groups", "sparse-coding-conv"])
def test_seeds_give_different_orthonormal_filters(name):
    make, _ = LAYERS[name]
    inits = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        layer = make()
        assert_orthonormal(layer)
        inits.append(frames(layer))
    assert float((inits[0] - inits[1]).abs().max()) > 0.1


@pytest.mark.parametrize("make", [lambda: nn.Linear(16, 8), lambda: nn.Conv2d(4, 6, 2, groups=2)],
                         ids=["linear", "conv2d-groups"])
def test_starts_from_the_initial_weight_orthonormalised(make):
    """At registration the weight is torch's initial weight orthonormalised: the Q of
    its QR factorisation with diag(R) > 0 (Gram-Schmidt of the rows, per group)."""
    torch.manual_seed(0)
    plain = make()
    torch.manual_seed(0)
    layer = orthogonal_filters(make())
    w = frames(plain)
    q, r = torch.linalg.qr(w.mT)
    q = q * torch.sign(r.diagonal(dim1=-2, dim2=-1)).unsqueeze(-2)
    torch.testing.assert_close(frames(layer), q.mT, atol=1e-6, rtol=0)


@pytest.mark.parametrize("make", [lambda: nn.Linear(7, 4), lambda: nn.Linear(5, 5),
                                  lambda: nn.Conv2d(4, 6, 2, groups=2), lambda: nn.Conv1d(1, 3, 3)],
                         ids=["linear", "linear-square", "conv2d-groups", "conv1d-square"])
def test_assignment_keeps_orthonormal_weights_and_orthonormalises_others(make):
    torch.manual_seed(0)
    layer = orthogonal_filters(make().double())
    shape = layer.weight.shape
    g = getattr(layer, "groups", 1)
    n, d = shape[0] // g, math.prod(shape[1:])
    q = torch.linalg.qr(torch.randn(g, d, n, dtype=torch.float64))[0].mT.reshape(shape)
    layer.weight = q
    torch.testing.assert_close(layer.weight.detach(), q, atol=1e-12, rtol=0)
    w = torch.randn(shape, dtype=torch.float64)
    layer.weight = w  # not orthonormal: becomes the Q of its QR factorisation
    wf = w.reshape(g, n, d)
    qq, r = torch.linalg.qr(wf.mT)
    qq = qq * torch.sign(r.diagonal(dim1=-2, dim2=-1)).unsqueeze(-2)
    torch.testing.assert_close(layer.weight.detach(), qq.mT.reshape(shape), atol=1e-12, rtol=0)
    for bad in (torch.zeros(shape, dtype=torch.float64),
                torch.ones(shape, dtype=torch.float64)):  # rank 0 and rank 1
        layer.weight = bad
        assert_orthonormal(layer, torch.float64)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = SparseCodingConv2d(2, 5, 3)
    train(a, torch.optim.AdamW(a.parameters(), lr=0.02, weight_decay=0.1), (4, 2, 5, 5), 20)
    torch.manual_seed(1)
    b = SparseCodingConv2d(2, 5, 3)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.dictionary, a.dictionary, atol=0, rtol=0)


def test_frame_is_the_product_of_householder_reflections():
    """The compact WY evaluation against LAPACK's product of the same reflections
    (``tau = 2 / v^T v``), and its gradient against finite differences, also at 0."""
    from maxaffine.orthogonal import _householder_frame

    gen = torch.Generator().manual_seed(0)
    for shape in [(20, 7), (3, 9, 9), (5, 1), (6, 2)]:
        for scale in (1e-3, 1.0, 30.0):
            tails = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).tril(-1)
            tau = 2 / (1 + tails.pow(2).sum(-2))
            torch.testing.assert_close(_householder_frame(tails),
                                       torch.linalg.householder_product(tails, tau),
                                       atol=1e-12, rtol=0)

    def frame(x):
        return _householder_frame(x.tril(-1))

    for x in (torch.zeros(7, 4, dtype=torch.float64),
              torch.randn(2, 6, 6, generator=gen, dtype=torch.float64) * 2):
        assert torch.autograd.gradcheck(frame, (x.requires_grad_(),))


# ------------------------------------------------------------- the report


def test_orthogonality_report_is_finite_for_degenerate_dictionaries():
    """A zero dictionary reported a distance of 2.8e300 (relative to ||Phi|| = 0)."""
    zero = orthogonality_report(torch.zeros(16, 8))
    assert math.isnan(zero.distance) and json.loads(zero.to_json())["distance"] is None
    assert zero.coherence == 0 and zero.relative_gram_error == pytest.approx(1.0)
    assert not zero.exact
    some_zero = torch.eye(16, 8)
    some_zero[:, 3] = 0
    rep = orthogonality_report(some_zero)
    assert rep.coherence == 0 and rep.norm_min == 0 and 0 < rep.distance < 1
    tiny = orthogonality_report(torch.full((16, 8), 1e-160, dtype=torch.float64))
    assert tiny.coherence == pytest.approx(1.0, abs=1e-12)

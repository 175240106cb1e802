"""maxaffine.curvature.loss_hessian: H = G + NME (Dauphin et al., NeurIPS 2024), the
activation-curvature split, matrix-free products, eigenvalues, traces, bad input."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

import maxaffine as ma
from maxaffine import nn as mnn
from maxaffine.curvature import LossHessian, loss_hessian
from maxaffine.errors import MaxAffineError, MaxAffineTypeError

matplotlib.use("Agg")

ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "betavq": lambda: mnn.BetaVQ("relu", beta=0.3),
}
LOSSES = {
    "mse": (nn.functional.mse_loss, lambda g: torch.randn(9, 2, dtype=torch.float64,
                                                          generator=g)),
    "ce": (nn.functional.cross_entropy, lambda g: torch.randint(0, 2, (9,), generator=g)),
}


def _problem(act: str, loss: str, seed: int = 0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 5), ACTIVATIONS[act](), nn.Linear(5, 2)).double()
    x = torch.randn(9, 3, dtype=torch.float64, generator=g)
    loss_fn, make_y = LOSSES[loss]
    return net, loss_fn, x, make_y(g)


def _direct_hessian(net, loss_fn, x, y) -> torch.Tensor:
    named = list(net.named_parameters())
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(t):
        params, i = {}, 0
        for n, p in named:
            params[n] = t[i:i + p.numel()].reshape(p.shape)
            i += p.numel()
        return loss_fn(functional_call(net, params, (x,)), y)

    return hessian(loss)(theta)


@pytest.fixture(scope="module")
def cases() -> dict[tuple[str, str], tuple[LossHessian, torch.Tensor]]:
    out = {}
    for act in ACTIVATIONS:
        for loss in LOSSES:
            net, loss_fn, x, y = _problem(act, loss)
            out[act, loss] = (loss_hessian(net, loss_fn, x, y),
                              _direct_hessian(net, loss_fn, x, y))
    return out


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_gauss_newton_plus_nme_is_the_hessian(cases, act, loss):
    lh, direct = cases[act, loss]
    assert lh.exact and lh.num_parameters == 3 * 5 + 5 + 5 * 2 + 2
    torch.testing.assert_close(lh.G + lh.NME, direct, rtol=0, atol=1e-10)
    torch.testing.assert_close(lh.NME_activation + lh.NME_rest, lh.NME, rtol=0, atol=1e-12)
    # G is positive semi-definite for convex losses
    assert torch.linalg.eigvalsh(lh.G).min() > -1e-10
    assert float(lh.NME.abs().max()) > 1e-3


@pytest.mark.parametrize("loss", list(LOSSES))
def test_activation_curvature_vanishes_for_relu_only(cases, loss):
    assert float(cases["relu", loss][0].NME_activation.abs().max()) == 0.0
    assert float(cases["silu", loss][0].NME_activation.abs().max()) > 1e-3
    assert float(cases["betavq", loss][0].NME_activation.abs().max()) > 1e-3


def test_relu_nme_rest_has_zero_first_layer_block(cases):
    """A one-hidden-layer net is bilinear in (W1, W2): NME_rest has no block within a
    layer's own weights."""
    lh = cases["relu", "mse"][0]
    first = 3 * 5 + 5
    assert float(lh.NME_rest[:first, :first].abs().max()) == 0.0
    assert float(lh.NME_rest[first:, first:].abs().max()) == 0.0


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_matvec_agrees_with_matrices(cases, act):
    lh = cases[act, "ce"][0]
    v = torch.randn(4, lh.num_parameters, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    for which in ("H", "G", "NME", "NME_activation", "NME_rest"):
        torch.testing.assert_close(lh.matvec(v, which), v @ lh.matrix(which).T,
                                   rtol=0, atol=1e-10)
        torch.testing.assert_close(lh.matvec(v[0], which), lh.matrix(which) @ v[0],
                                   rtol=0, atol=1e-10)


@pytest.mark.parametrize("which", ["H", "G", "NME"])
def test_top_eigenvalues_agree_with_eigvalsh(cases, which):
    lh = cases["silu", "mse"][0]
    top = lh.top_eigenvalues(3, which, tol=1e-12)
    M = lh.matrix(which).numpy()
    expect = np.sort(np.linalg.eigvalsh(0.5 * (M + M.T)))[::-1][:3]
    np.testing.assert_allclose(top.numpy(), expect, rtol=0, atol=1e-8)
    full = lh.top_eigenvalues(lh.num_parameters, which)
    np.testing.assert_allclose(full.numpy()[:3], expect, rtol=0, atol=1e-10)


def test_matrix_free_mode_and_hutchinson(cases):
    net, loss_fn, x, y = _problem("silu", "mse")
    free = loss_hessian(net, loss_fn, x, y, exact=False)
    exact = cases["silu", "mse"][0]
    assert not free.exact and free.G is None and free.H is None
    assert free.loss == pytest.approx(exact.loss, abs=1e-14)
    v = torch.randn(exact.num_parameters, dtype=torch.float64)
    torch.testing.assert_close(free.matvec(v, "NME_activation"),
                               exact.NME_activation @ v, rtol=0, atol=1e-10)
    for which in ("H", "G", "NME_rest"):
        estimate, stderr = free.trace(which, 300, seed=3)
        truth = float(exact.matrix(which).trace())
        assert stderr > 0 and abs(estimate - truth) < 4 * stderr + 1e-12, which
    assert exact.trace("G") == (pytest.approx(float(exact.G.trace())), 0.0)
    np.testing.assert_allclose(free.top_eigenvalues(2, "G", tol=1e-12).numpy(),
                               exact.top_eigenvalues(2, "G").numpy(), atol=1e-8)
    with pytest.raises(MaxAffineError, match="not built"):
        free.matrix("G")
    assert free.summary() == {"num_parameters": 32, "loss": free.loss, "exact": False}


def test_summary_json_plot(cases):
    import matplotlib.pyplot as plt

    lh = cases["silu", "ce"][0]
    s = lh.summary()
    assert s["num_parameters"] == 32 and s["H"]["trace"] == pytest.approx(
        float(lh.H.trace()))
    data = json.loads(lh.to_json())
    assert len(data["eigenvalues"]["NME"]) == 32 and data["parameter_names"][0] == "0.weight"
    ax = lh.plot()
    assert len(ax.lines) >= 2
    plt.close("all")
    assert ma.curvature.loss_hessian is loss_hessian


def test_bad_input():
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(MaxAffineError, match="no parameters"):
        loss_hessian(nn.ReLU(), nn.functional.mse_loss, x, y)
    net = nn.Linear(3, 3).double()
    with pytest.raises(MaxAffineError, match="scalar"):
        loss_hessian(net, lambda out, t: ((out - t) ** 2).sum(-1), x, y)
    with pytest.raises(MaxAffineTypeError):
        loss_hessian("net", nn.functional.mse_loss, x, y)
    with pytest.raises(MaxAffineTypeError):
        loss_hessian(net, "mse", x, y)
    lh = loss_hessian(net, nn.functional.mse_loss, x, y)
    with pytest.raises(MaxAffineError, match="shape"):
        lh.matvec(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(MaxAffineError):
        lh.matvec(torch.zeros(12, dtype=torch.float64), "Q")
    # a linear model: no NME at all
    assert float(lh.NME.abs().max()) == 0.0


def test_degenerate_inputs_get_named_errors() -> None:
    """Empty batches, another dtype, overflowing values and NaN parameters end in a
    MaxAffineError, never a raw exception or a NaN matrix."""
    import math

    from maxaffine.curvature import hessian_complexity

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randn(16, 2, dtype=torch.float64)
    mse = nn.functional.mse_loss
    with pytest.raises(MaxAffineError, match="empty"):
        loss_hessian(net, mse, x[:0], y[:0])
    with pytest.raises(MaxAffineError, match="float32"):
        loss_hessian(net, mse, x.float(), y.float())
    with pytest.raises(MaxAffineError, match="overflow"):
        loss_hessian(net, mse, x * 1e300, y)
    with pytest.raises(MaxAffineError, match="overflow"):
        hessian_complexity(net, x * 1e300)
    bad = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    with torch.no_grad():
        bad[0].weight[0, 0] = math.nan
    for call in (lambda: loss_hessian(bad, mse, x, y), lambda: hessian_complexity(bad, x)):
        with pytest.raises(MaxAffineError, match="non-finite"):
            call()

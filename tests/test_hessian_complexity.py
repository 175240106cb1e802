"""maxaffine.curvature.hessian_complexity: the tangent-Hessian complexity (Javadi,
Balestriero & Baraniuk), checked on affine and quadratic functions of data on a plane."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from maxaffine.curvature import HessianComplexity, hessian_complexity
from maxaffine.errors import MaxAffineError, MaxAffineTypeError


class Square(nn.Module):
    """f(x) = sum(x^2): Hessian 2 I, tangent Hessian 2 I_d on any d-plane."""

    def forward(self, x):
        return (x ** 2).sum(1, keepdim=True)


def _plane(n: int = 80, D: int = 10, d: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(D, d, generator=gen, dtype=torch.float64))
    offset = torch.randn(D, generator=gen, dtype=torch.float64)
    coords = torch.rand(n, d, generator=gen, dtype=torch.float64) * 2 - 1
    return coords @ basis.T + offset


def test_affine_model_has_zero_complexity():
    torch.manual_seed(0)
    x = _plane()
    lin = nn.Linear(10, 3).double()
    hc = hessian_complexity(lin, x)
    assert isinstance(hc, HessianComplexity)
    assert hc.method == "fit" and hc.tangent_dim == 2
    scale = float(lin(x).detach().pow(2).mean())
    assert float(hc.per_point.abs().max()) <= 1e-10 * scale
    hc = hessian_complexity(lin, x, method="autograd", tangent_dim=2)
    assert float(hc.per_point.abs().max()) <= 1e-10 * scale


@pytest.mark.parametrize("method", ["fit", "autograd"])
def test_quadratic_on_plane_is_exact(method):
    x = _plane()
    hc = hessian_complexity(Square(), x, method=method)
    assert hc.tangent_dim == 2 and hc.method == method
    torch.testing.assert_close(hc.per_point, torch.full((80,), 8.0, dtype=torch.float64),
                               rtol=0, atol=1e-8)
    assert abs(hc.mean - 8.0) < 1e-8


def test_auto_uses_autograd_for_smooth_models():
    hc = hessian_complexity(Square(), _plane(), tangent_dim=2)
    assert hc.method == "autograd"
    assert abs(hc.mean - 8.0) < 1e-8


def test_output_selects_one_output():
    x = _plane()

    class Two(nn.Module):
        def forward(self, x):
            return torch.cat([(x ** 2).sum(1, keepdim=True), 3 * (x ** 2).sum(1, keepdim=True)], 1)

    both = hessian_complexity(Two(), x, method="fit")
    first = hessian_complexity(Two(), x, method="fit", output=0)
    last = hessian_complexity(Two(), x, method="autograd", output=-1)
    assert abs(first.mean - 8.0) < 1e-8
    assert abs(last.mean - 72.0) < 1e-7
    assert abs(both.mean - 80.0) < 1e-7


def test_relu_mlp_fit_is_finite_and_nonnegative():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2)).double()
    hc = hessian_complexity(net, _plane(120) * 3)
    assert hc.method == "fit"
    assert bool(torch.isfinite(hc.per_point).all()) and bool((hc.per_point >= 0).all())
    summary = hc.summary()
    assert summary["k"] == hc.k and summary["tangent_dim"] == 2
    assert json.loads(hc.to_json())["per_point"] == pytest.approx(hc.per_point.tolist())


def test_plot_returns_axes():
    import matplotlib

    matplotlib.use("Agg")
    hc = hessian_complexity(Square(), _plane(), tangent_dim=2, method="fit")
    assert hc.plot() is not None


def test_bad_arguments_raise_named_errors():
    x = _plane(30)
    sq = Square()
    with pytest.raises(MaxAffineError, match="k must be"):
        hessian_complexity(sq, x, k=30)
    with pytest.raises(MaxAffineError, match="tangent_dim"):
        hessian_complexity(sq, x, tangent_dim=10)
    with pytest.raises(MaxAffineError, match="tangent_dim"):
        hessian_complexity(sq, x, tangent_dim=0)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(MaxAffineError, match="NaN"):
        hessian_complexity(sq, bad)
    with pytest.raises(MaxAffineError, match="output"):
        hessian_complexity(sq, x, output=1)
    with pytest.raises(MaxAffineTypeError):
        hessian_complexity(sq, x, output="0")
    with pytest.raises(MaxAffineError, match="method"):
        hessian_complexity(sq, x, method="spline")
    with pytest.raises(MaxAffineTypeError):
        hessian_complexity(lambda t: t, x)
    with pytest.raises(MaxAffineError, match="fit"):
        hessian_complexity(sq, x, tangent_dim=3, k=5, method="fit")
    with pytest.raises(MaxAffineError, match="float32"):
        hessian_complexity(nn.Linear(10, 1), x)


def test_model_without_parameters_is_accepted():
    hc = hessian_complexity(nn.Identity(), _plane(), tangent_dim=2)
    assert hc.method == "fit"
    assert float(hc.per_point.abs().max()) < 1e-10


@pytest.mark.parametrize("N, D, k", [(50, 30, 8), (40, 5, 3), (20, 200, 6)])
def test_local_pca_equals_svd_of_the_neighbourhoods(N, D, k):
    """Few neighbours in many dimensions take the thin-QR path (memory N D k, not
    N D^2): singular values and top subspaces equal a direct SVD's."""
    from maxaffine.curvature import _local_spectra, _neighbours

    x = torch.randn(N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(N))
    hood = _neighbours(x, k)
    s, V = _local_spectra(x, hood)
    local = x[hood] - x[hood].mean(1, keepdim=True)
    _, ref_s, vh = torch.linalg.svd(local, full_matrices=False)
    assert s.shape == (N, D)
    assert torch.allclose(s[:, :ref_s.shape[1]], ref_s, atol=1e-10)
    assert torch.allclose(V.transpose(1, 2) @ V, torch.eye(V.shape[2], dtype=V.dtype),
                          atol=1e-12)
    for d in (1, 2):
        ours = V[..., :d] @ V[..., :d].transpose(1, 2)
        ref = vh[:, :d].transpose(1, 2) @ vh[:, :d]
        assert torch.allclose(ours, ref, atol=1e-9)

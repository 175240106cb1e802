"""Generalized Hamming layers against the fuzzy-XOR formula computed naively."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import maxaffine as ma
from maxaffine.datasets import load_dataset
from maxaffine.nn import GHN, GHConv2d, GHLinear, fuzzy_xor
from maxaffine.training import fit

DT = torch.float64


def naive_unit(x: list[float], w: list[float], threshold: str, margin: float) -> float:
    """One GH neuron from the definitions: g = sum of fuzzy XORs, h = -g/2, then the
    threshold around the chance level g = n/2 (h = -n/4)."""
    n = len(x)
    g = sum(xi + wi - 2 * xi * wi for xi, wi in zip(x, w, strict=True))
    h = -g / 2
    if threshold == "none":
        return h
    u = h + n / 4
    pos = max(0.0, u - margin)
    if threshold == "single":
        return pos
    return pos - max(0.0, -u - margin)


thresholds = st.sampled_from(["single", "double", "none"])
margins = st.sampled_from([0.0, 0.05, 0.3])


@given(n=st.integers(1, 9), k=st.integers(1, 4), threshold=thresholds, margin=margins,
       seed=st.integers(0, 10_000))
def test_gh_linear_is_the_fuzzy_xor_formula(n, k, threshold, margin, seed):
    gen = torch.Generator().manual_seed(seed)
    layer = GHLinear(n, k, threshold=threshold, margin=margin).double()
    with torch.no_grad():  # weights anywhere, not only near the init
        layer.weight.copy_(torch.rand(k, n, dtype=DT, generator=gen) * 2 - 0.5)
    x = torch.rand(3, n, dtype=DT, generator=gen) * 1.5 - 0.25
    with torch.no_grad():
        got = layer(x).tolist()
    w = layer.weight.tolist()
    for b, row in enumerate(x.tolist()):
        for j in range(k):
            assert got[b][j] == pytest.approx(naive_unit(row, w[j], threshold, margin), abs=1e-12)


@given(c=st.integers(1, 2), kernel=st.integers(1, 3), stride=st.integers(1, 2),
       pad=st.integers(0, 2), threshold=thresholds, margin=margins, seed=st.integers(0, 10_000))
def test_gh_conv_is_the_fuzzy_xor_formula_per_patch(c, kernel, stride, pad, threshold, margin,
                                                   seed):
    gen = torch.Generator().manual_seed(seed)
    layer = GHConv2d(c, 2, kernel, stride, pad, threshold=threshold, margin=margin).double()
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, dtype=DT, generator=gen))
    x = torch.rand(1, c, 4, 5, dtype=DT, generator=gen)
    with torch.no_grad():
        got = layer(x)
    h_in, w_in = 4 + 2 * pad, 5 + 2 * pad
    xs = x[0].tolist()

    def pixel(ch: int, i: int, j: int) -> float:  # zero padding by hand
        i, j = i - pad, j - pad
        return xs[ch][i][j] if 0 <= i < 4 and 0 <= j < 5 else 0.0

    rows = range(0, h_in - kernel + 1, stride)
    cols = range(0, w_in - kernel + 1, stride)
    assert got.shape == (1, 2, len(rows), len(cols))
    for o in range(2):
        w = layer.weight[o].flatten().tolist()
        for a, i in enumerate(rows):
            for b, j in enumerate(cols):
                patch = [pixel(ch, i + di, j + dj) for ch in range(c)
                         for di in range(kernel) for dj in range(kernel)]
                want = naive_unit(patch, w, threshold, margin)
                assert float(got[0, o, a, b]) == pytest.approx(want, abs=1e-12)


def test_fuzzy_xor_is_xor_on_bits_and_has_no_learned_bias():
    a = torch.tensor([0.0, 0.0, 1.0, 1.0])
    b = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert fuzzy_xor(a, b).tolist() == [0.0, 1.0, 1.0, 0.0]
    assert fuzzy_xor(torch.tensor(0.3), torch.tensor(0.5)) == pytest.approx(0.5)
    net = GHN((1, 8, 8), channels=(3,), widths=(5,))
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "3.weight", "4.weight"]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_double_threshold_with_zero_margin_is_affine():
    layer = GHLinear(5, 3, threshold="double").double()
    x = torch.rand(4, 5, dtype=DT)
    with torch.no_grad():
        assert torch.allclose(layer(x), layer.hamming(x) + 5 / 4)


def test_gradients_flow_through_the_analytic_bias():
    torch.manual_seed(0)
    for layer, x in ((GHLinear(6, 3, threshold="double", margin=0.01), torch.rand(5, 6)),
                     (GHConv2d(2, 3, 3, padding=1), torch.rand(2, 2, 5, 5))):
        layer = layer.double()
        x = x.double()

        def f(w, layer=layer, x=x):
            return torch.func.functional_call(layer, {"weight": w}, (x,))

        w = layer.weight.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(f, (w,))
        f(w).sum().backward()
        assert float(w.grad.abs().sum()) > 0


@pytest.mark.parametrize("channels", [(), (3, 4)])
@pytest.mark.parametrize("threshold", ["single", "double"])
def test_ghn_is_a_spline_that_affine_map_handles(channels, threshold):
    """The analytic bias is affine in x, so GHNs trace with the existing registry:
    A[x] equals the Jacobian, and A x' + B reproduces f at nearby points with the
    same VQ code."""
    torch.manual_seed(0)
    net = GHN((1, 6, 6), 4, widths=(7,), channels=channels, threshold=threshold,
              margin=0.02).double().eval()
    x = torch.rand(6, 1, 6, 6, dtype=DT)
    amap = ma.affine_map(net, x)
    jac = torch.func.vmap(torch.func.jacfwd(lambda v: net(v[None])[0]))(x)
    assert torch.allclose(amap.A, jac, atol=1e-10)
    graph = ma.trace(net, x)
    x2 = x + 1e-7 * torch.randn_like(x)
    same = (ma.codes(graph, x).packed() == ma.codes(graph, x2).packed()).all(1)
    assert bool(same.any())
    with torch.no_grad():
        assert torch.allclose(amap.reconstruct(x2)[same], net(x2)[same], atol=1e-9)


def test_ghn_builder_errors_and_learning():
    with pytest.raises(ValueError, match="threshold"):
        GHLinear(3, 2, threshold="triple")
    with pytest.raises(ValueError, match="margin"):
        GHLinear(3, 2, margin=-1)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        GHN((10,), channels=(4,))
    data = load_dataset("digits")
    torch.manual_seed(0)
    net = GHN(data.input_shape, data.num_classes, widths=(64,))
    hist = fit(net, data, epochs=2, progress=False)
    assert hist.test_acc > 0.8  # chance is 0.1


@pytest.mark.slow
def test_ghn_experiment_smoke(tmp_path):
    from maxaffine.cli import main

    assert main(["reproduce", "ghn", "--out", str(tmp_path), "--archs", "mlp", "--configs",
                 "ghn", "relu+bn", "--seeds", "1", "--train-size", "256", "--lrs", "1e-3",
                 "--eval-every", "2", "--no-progress"]) == 0
    md = (tmp_path / "ghn.md").read_text()
    assert "| mlp | 0.001 | ghn |" in md and "| mlp | 0.001 | relu+bn |" in md
    assert (tmp_path / "ghn_curves.png").stat().st_size > 0

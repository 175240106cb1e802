"""SparseCoding / SparseCodingConv2d against an independent sparse-coding solver.

The reference is projected / proximal gradient descent (ISTA) on
``E(a) = 1/2 ||x - Phi a||^2 + sum_k t_k |a_k|`` in float64, started from a random
code with a step below 1/L, run to convergence; it knows nothing of
orthogonality or closed forms.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import maxaffine as ma
from maxaffine.nn import SparseCoding, SparseCodingConv2d, orthogonality_report

DT = torch.float64


def ista(phi: torch.Tensor, t: torch.Tensor, x: torch.Tensor, nonneg: bool,
         tol: float = 1e-14, max_iter: int = 20000) -> torch.Tensor:
    """Minimise 1/2||x - Phi a||^2 + sum t|a| (a >= 0 if nonneg) for each row of x (B, D)."""
    gen = torch.Generator().manual_seed(1)
    lip = float(torch.linalg.matrix_norm(phi, 2)) ** 2
    step = 0.5 / lip
    a = torch.randn(x.shape[0], phi.shape[1], dtype=DT, generator=gen)
    for _ in range(max_iter):
        v = a - step * (a @ phi.T - x) @ phi
        if nonneg:
            new = (v - step * t).clamp_min(0)  # projection onto a >= 0 of the prox step
        else:
            new = torch.sign(v) * (v.abs() - step * t).clamp_min(0)
        if float((new - a).abs().max()) < tol:
            return new
        a = new
    raise AssertionError("ISTA did not converge")


def random_thresholds(layer, k: int, gen: torch.Generator) -> torch.Tensor:
    t = torch.rand(k, dtype=DT, generator=gen) * 0.8
    layer.thresholds = t
    return layer.thresholds.detach()


def randomize_dictionary(layer, gen: torch.Generator) -> None:
    """Any orthonormal-atom dictionary (drawn independently of the layer's init)."""
    w = layer.linear.weight if isinstance(layer, SparseCoding) else layer.conv.weight
    k = w.shape[0]
    d = math.prod(w.shape[1:])
    q, _ = torch.linalg.qr(torch.randn(d, k, dtype=DT, generator=gen))
    with torch.no_grad():
        if isinstance(layer, SparseCoding):
            layer.linear.weight = q.T.contiguous()
        else:
            layer.conv.weight = q.T.reshape(w.shape).contiguous()


@given(d=st.integers(1, 10), extra=st.integers(0, 4), data=st.data(),
       prior=st.sampled_from(["exponential", "laplace"]), seed=st.integers(0, 10_000))
def test_orthogonal_layer_is_the_map_code(d, extra, data, prior, seed):
    k = data.draw(st.integers(1, d))
    gen = torch.Generator().manual_seed(seed)
    layer = SparseCoding(d, k, prior=prior).to(DT)
    randomize_dictionary(layer, gen)
    t = random_thresholds(layer, k, gen)
    x = torch.randn(4 + extra, d, dtype=DT, generator=gen) * 2
    with torch.no_grad():
        got = layer(x)
        ref = ista(layer.dictionary, t, x, nonneg=prior == "exponential")
        assert torch.allclose(got, ref, atol=1e-9, rtol=0)
        if prior == "exponential":
            assert bool((got >= 0).all())
        # and no feasible perturbation lowers the energy
        e0 = layer.objective(x, got)
        for _ in range(5):
            b = got + 1e-3 * torch.randn(got.shape, dtype=DT, generator=gen)
            if prior == "exponential":
                b = b.clamp_min(0)
            assert bool((layer.objective(x, b) >= e0 - 1e-12).all())


def test_non_orthogonal_dictionary_is_not_the_map_code():
    """The comparison above can fail: with a generic (non-orthonormal) dictionary the
    thresholded code is only the first ISTA step, not the minimiser."""
    gen = torch.Generator().manual_seed(0)
    layer = SparseCoding(6, 6, orthogonal=False).to(DT)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.randn(6, 6, dtype=DT, generator=gen))
    t = random_thresholds(layer, 6, gen)
    x = torch.randn(8, 6, dtype=DT, generator=gen)
    with torch.no_grad():
        ref = ista(layer.dictionary, t, x, nonneg=True)
        assert float((layer(x) - ref).abs().max()) > 1e-2
    assert not layer.orthogonality().exact


@given(d=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_laplace_is_soft_threshold(d, seed):
    gen = torch.Generator().manual_seed(seed)
    k = max(1, d - 1)
    layer = SparseCoding(d, k, prior="laplace").to(DT)
    t = random_thresholds(layer, k, gen)
    x = torch.randn(3, d, dtype=DT, generator=gen)
    phi = layer.dictionary.detach().tolist()
    with torch.no_grad():
        got = layer(x).tolist()
    for n, row in enumerate(x.tolist()):
        for j in range(k):
            u = sum(phi[i][j] * row[i] for i in range(d))
            tj = float(t[j])
            want = u - tj if u > tj else (u + tj if u < -tj else 0.0)
            assert got[n][j] == pytest.approx(want, abs=1e-12)


def _patches_by_hand(x: torch.Tensor, kh: int, kw: int, stride: int, pad: int) -> torch.Tensor:
    """(N, H', W', C*kh*kw) by slicing the zero-padded image (no unfold)."""
    xp = F.pad(x, (pad, pad, pad, pad))
    n, _, h, w = xp.shape
    rows = []
    for i in range(0, h - kh + 1, stride):
        cols = [xp[:, :, i:i + kh, j:j + kw].reshape(n, -1) for j in range(0, w - kw + 1, stride)]
        rows.append(torch.stack(cols, 1))
    return torch.stack(rows, 1)


@given(c=st.integers(1, 2), kernel=st.integers(1, 3), stride=st.integers(1, 2),
       pad=st.integers(0, 1), prior=st.sampled_from(["exponential", "laplace"]),
       seed=st.integers(0, 10_000), data=st.data())
def test_conv_layer_codes_each_patch_exactly(c, kernel, stride, pad, prior, seed, data):
    d = c * kernel * kernel
    out = data.draw(st.integers(1, d))
    gen = torch.Generator().manual_seed(seed)
    layer = SparseCodingConv2d(c, out, kernel, stride, pad, prior=prior).to(DT)
    randomize_dictionary(layer, gen)
    t = random_thresholds(layer, out, gen)
    x = torch.randn(2, c, 5, 5, dtype=DT, generator=gen)
    with torch.no_grad():
        got = layer(x)  # (N, K, H', W')
        patches = _patches_by_hand(x, kernel, kernel, stride, pad)
        assert patches.shape[1:3] == got.shape[2:]
        ref = ista(layer.dictionary, t, patches.reshape(-1, d), nonneg=prior == "exponential")
        ref = ref.reshape(*patches.shape[:3], out).permute(0, 3, 1, 2)
        assert torch.allclose(got, ref, atol=1e-9, rtol=0)
        # patches() lists the same patches in the documented order
        assert torch.allclose(layer.patches(x), patches.reshape(2, -1, d))


def test_gradients_reach_dictionary_and_thresholds_and_keep_constraints():
    torch.manual_seed(0)
    for layer, x in ((SparseCoding(12, 7), torch.randn(32, 12)),
                     (SparseCodingConv2d(2, 5, 3, padding=1), torch.randn(4, 2, 6, 6))):
        layer.thresholds = torch.full((layer.thresholds.shape[0],), 0.05)
        (layer(x) - 0.3).pow(2).sum().backward()
        grads = {n: p.grad for n, p in layer.named_parameters()}
        assert set(grads) == {"raw_thresholds", next(n for n in grads if "original" in n)}
        assert all(g is not None and float(g.abs().sum()) > 0 for g in grads.values())
        phi0, t0 = layer.dictionary.detach().clone(), layer.thresholds.detach().clone()
        opt = torch.optim.SGD(layer.parameters(), lr=0.05)
        for _ in range(20):
            opt.zero_grad()
            (layer(x) - 0.3).pow(2).sum().backward()
            opt.step()
        assert float((layer.dictionary.detach() - phi0).abs().max()) > 1e-3
        assert float((layer.thresholds.detach() - t0).abs().max()) > 1e-4
        assert layer.orthogonality().relative_gram_error < 1e-5  # still orthonormal
        assert bool((layer.thresholds >= 0).all())


def test_threshold_gradient_matches_finite_differences():
    torch.manual_seed(1)
    layer = SparseCoding(6, 4, prior="laplace").to(DT)
    x = torch.randn(10, 6, dtype=DT)

    def loss(raw):
        return torch.func.functional_call(layer, {"raw_thresholds": raw}, (x,)).pow(2).sum()

    raw = layer.raw_thresholds.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(loss, (raw,))


def test_from_linear_reads_a_relu_layer():
    torch.manual_seed(0)
    lin = nn.Linear(9, 5).double()
    with torch.no_grad():
        lin.bias.copy_(-lin.bias.abs())
        lin.bias[0] = 0.3  # one positive bias: clamped
    sc = SparseCoding.from_linear(lin)
    x = torch.randn(20, 9, dtype=DT)
    with torch.no_grad():
        expected = torch.relu(x @ lin.weight.T + lin.bias.clamp_max(0))
        assert torch.allclose(sc(x), expected, atol=1e-10)
        assert torch.allclose(sc.dictionary, lin.weight.T)
    rep = sc.source_report
    w = lin.weight.detach()
    assert rep.clamped_thresholds == 1
    gram_error = float(torch.linalg.norm(w @ w.T - torch.eye(5, dtype=DT)))
    assert rep.gram_error == pytest.approx(gram_error)
    assert not rep.exact and not rep.overcomplete
    # orthogonal=True: the polar factor, nearer to W^T than any other orthonormal matrix
    sco = SparseCoding.from_linear(lin, orthogonal=True)
    phi = sco.dictionary.detach()
    assert sco.orthogonality().exact
    d_best = float(torch.linalg.norm(w.T - phi))
    assert rep.distance == pytest.approx(d_best / float(torch.linalg.norm(w)), rel=1e-6)
    for s in range(20):
        gen = torch.Generator().manual_seed(s)
        q, _ = torch.linalg.qr(torch.randn(9, 5, dtype=DT, generator=gen))
        assert float(torch.linalg.norm(w.T - q)) >= d_best - 1e-12
    # an already-orthonormal layer with b <= 0 reads as an exact sparse coder
    q, _ = torch.linalg.qr(torch.randn(9, 5, dtype=DT))
    with torch.no_grad():
        lin.weight.copy_(q.T)
        lin.bias.copy_(-lin.bias.abs())
    assert SparseCoding.from_linear(lin).source_report.exact
    overcomplete = orthogonality_report(torch.randn(3, 5, dtype=DT))
    assert overcomplete.overcomplete and math.isnan(overcomplete.distance)
    assert json.loads(overcomplete.to_json())["distance"] is None
    assert "overcomplete" in str(overcomplete)


def test_from_conv_reads_a_relu_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    with torch.no_grad():
        conv.bias.copy_(-conv.bias.abs())
    sc = SparseCodingConv2d.from_conv(conv)
    x = torch.randn(2, 2, 7, 7, dtype=DT)
    with torch.no_grad():
        assert torch.allclose(sc(x), torch.relu(conv(x)), atol=1e-10)
    assert sc.source_report.clamped_thresholds == 0
    assert SparseCodingConv2d.from_conv(conv, orthogonal=True).orthogonality().exact


@pytest.mark.parametrize("conv", [False, True])
def test_complete_dictionary_reconstructs_input(conv):
    """K = D, zero thresholds, Laplace prior: the code is Phi^T x and Phi a = x."""
    torch.manual_seed(0)
    if conv:
        layer = SparseCodingConv2d(2, 8, 2, stride=1, padding=1, prior="laplace",
                                   init_threshold=0).double()
        randomize_dictionary(layer, torch.Generator().manual_seed(0))
        x = torch.randn(3, 2, 5, 4, dtype=DT)
        rec = layer.reconstruct(layer(x), (5, 4))
    else:
        layer = SparseCoding(6, 6, prior="laplace", init_threshold=0).double()
        randomize_dictionary(layer, torch.Generator().manual_seed(0))
        x = torch.randn(3, 6, dtype=DT)
        rec = layer.reconstruct(layer(x))
    assert torch.allclose(rec, x, atol=1e-9)


def test_errors_name_the_culprit():
    with pytest.raises(ma.MaxAffineError, match="cannot be overcomplete"):
        SparseCoding(4, 5)
    with pytest.raises(ma.MaxAffineError, match="cannot be overcomplete"):
        SparseCodingConv2d(1, 10, 3)
    SparseCoding(4, 5, orthogonal=False)  # allowed: one thresholding step
    with pytest.raises(ValueError, match="prior"):
        SparseCoding(4, 2, prior="gaussian")
    with pytest.raises(ValueError, match="init_threshold"):
        SparseCoding(4, 2, init_threshold=-1)
    with pytest.raises(ma.MaxAffineError, match=r"nn\.Linear"):
        SparseCoding.from_linear(nn.Conv2d(1, 1, 1))
    with pytest.raises(ma.MaxAffineError, match=">= 0"):
        SparseCoding(4, 2).thresholds = torch.tensor([0.1, -0.1])


@pytest.mark.parametrize("prior", ["exponential", "laplace"])
def test_sparse_coding_networks_are_splines(prior):
    """The layers trace with the existing registry: A[x] is the Jacobian and the map
    is affine inside the region."""
    torch.manual_seed(0)
    nets = [
        nn.Sequential(nn.Flatten(), SparseCoding(16, 10, prior=prior), nn.Linear(10, 3)),
        nn.Sequential(SparseCodingConv2d(1, 6, 3, padding=1, prior=prior), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(24, 3)),
    ]
    x = torch.randn(5, 1, 4, 4, dtype=DT)
    for net in nets:
        net = net.double().eval()
        amap = ma.affine_map(net, x)
        jac = torch.func.vmap(torch.func.jacfwd(lambda v, net=net: net(v[None])[0]))(x)
        assert torch.allclose(amap.A, jac, atol=1e-10)
        graph = ma.trace(net, x)
        c0 = ma.codes(graph, x)
        x2 = x + 1e-7 * torch.randn_like(x)
        same = (c0.packed() == ma.codes(graph, x2).packed()).all(1)
        assert bool(same.any())
        with torch.no_grad():
            assert torch.allclose(amap.reconstruct(x2)[same], net(x2)[same], atol=1e-9)


@pytest.mark.slow
def test_sparse_coding_experiment_smoke(tmp_path):
    from maxaffine.cli import main

    assert main(["reproduce", "sparse-coding", "--out", str(tmp_path), "--configs",
                 "sparse-coding", "plain", "--seeds", "1", "--epochs", "1", "--train-size", "256",
                 "--no-progress"]) == 0
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    sc = next(r for r in runs if r["config"] == "sparse-coding")
    assert all(lay["gram_error"] < 1e-4 for lay in sc["layers"])  # orthonormal dictionaries
    assert all(0 < lay["sparsity"] < 1 for r in runs for lay in r["layers"])
    assert (tmp_path / "sparse_coding.png").stat().st_size > 0

"""The sharpness experiment (``maxaffine reproduce sharpness``): the regularisers'
update directions against independent references (``torch.func.hessian``, explicit
perturbations), the NME measures against a closed-form activation-curvature term,
bad input, and a tiny end-to-end run."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian

from maxaffine.datasets import Dataset
from maxaffine.errors import MaxAffineError, MaxAffineTypeError
from maxaffine.experiments import sharpness
from maxaffine.experiments.sharpness import (
    build,
    nme_measures,
    regularized_gradient,
    summarize,
    train,
)


def _problem(beta: float, seed: int = 0, n: int = 12, d: int = 4, h: int = 5, k: int = 3):
    torch.manual_seed(seed)
    net = build(d, k, beta, widths=(h,)).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, d, dtype=torch.float64, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return net, x, y


def _flat_loss(net: nn.Module, x, y):
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    sizes = [p.numel() for _, p in net.named_parameters()]
    buffers = dict(net.named_buffers())
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(t):
        params = {nm: c.reshape(s) for nm, c, s in zip(names, t.split(sizes), shapes,
                                                      strict=True)}
        return nn.functional.cross_entropy(functional_call(net, {**params, **buffers}, (x,)), y)

    return loss, theta


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


@pytest.mark.parametrize("beta", [1.0, 0.5, 0.9])
def test_gradient_penalty_direction_is_g_plus_2_lambda_Hg(beta):
    net, x, y = _problem(beta)
    loss, theta = _flat_loss(net, x, y)
    g = grad(loss)(theta)
    H = hessian(loss)(theta)
    lam = 0.37
    value, direction = regularized_gradient(net, x, y, "gradient-penalty", lam)
    assert value == pytest.approx(float(loss(theta)), abs=1e-12)
    torch.testing.assert_close(_flat(direction), g + 2 * lam * H @ g, atol=1e-10, rtol=1e-9)
    # parameters untouched
    torch.testing.assert_close(_flat(p.detach() for p in net.parameters()), theta)


def test_sam_is_the_gradient_at_the_normalised_ascent_point():
    net, x, y = _problem(0.5)
    loss, theta = _flat_loss(net, x, y)
    g = grad(loss)(theta)
    rho = 0.3
    _, direction = regularized_gradient(net, x, y, "sam", rho)
    ref = grad(loss)(theta + rho * g / g.norm())
    torch.testing.assert_close(_flat(direction), ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(_flat(p.detach() for p in net.parameters()), theta)
    assert not torch.allclose(ref, g)


def test_weight_noise_is_the_gradient_at_a_gaussian_perturbation():
    net, x, y = _problem(1.0)
    loss, theta = _flat_loss(net, x, y)
    sigma = 0.05
    _, direction = regularized_gradient(net, x, y, "weight-noise", sigma,
                                        torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    eps = _flat(sigma * torch.randn(p.shape, generator=gen, dtype=p.dtype)
                for p in net.parameters())
    torch.testing.assert_close(_flat(direction), grad(loss)(theta + eps), atol=1e-12,
                               rtol=1e-10)
    torch.testing.assert_close(_flat(p.detach() for p in net.parameters()), theta)
    # zero strength: every method is plain SGD
    _, plain = regularized_gradient(net, x, y, "sgd", 0.0)
    for method in sharpness.METHODS:
        _, d0 = regularized_gradient(net, x, y, method, 0.0)
        torch.testing.assert_close(_flat(d0), _flat(plain), atol=1e-12, rtol=1e-12)


def _closed_form_nme_activation(net: nn.Sequential, x, y, beta: float) -> torch.Tensor:
    """sum_n sum_k c_nk sigma''(u_nk) a_nk a_nk^T for f = W2 sigma(W1 x + b1) + b2, with
    c_nk = sum_i (dL/df_ni) W2[i, k], a_nk = d u_nk / d(W1, b1): the only activation
    terms of a one-hidden-layer net (the block of the first layer's parameters)."""
    lin1, lin2 = net[1], net[3]
    W1, b1, W2 = lin1.weight.detach(), lin1.bias.detach(), lin2.weight.detach()
    u = x @ W1.T + b1
    out = net(x).detach()
    dl_df = torch.softmax(out, 1)
    dl_df[torch.arange(len(y)), y] -= 1.0
    dl_df /= len(y)
    tau = beta / (1 - beta)
    s = torch.sigmoid(tau * u)
    second = 2 * tau * s * (1 - s) + tau ** 2 * u * s * (1 - s) * (1 - 2 * s)
    c = (dl_df @ W2) * second                                          # (N, h)
    h, d = W1.shape
    P = sum(p.numel() for p in net.parameters())
    M = torch.zeros(P, P, dtype=torch.float64)
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)       # (N, d + 1)
    for k in range(h):
        idx = torch.tensor([k * d + j for j in range(d)] + [h * d + k])  # W1[k, :], b1[k]
        block = torch.einsum("n,ni,nj->ij", c[:, k], xa, xa)
        M[idx[:, None], idx[None, :]] += block
    return M


@pytest.mark.parametrize("beta", [0.5, 0.8])
def test_nme_measures_against_a_closed_form(beta):
    net, x, y = _problem(beta, seed=4, n=20)
    A = _closed_form_nme_activation(net, x, y, beta)
    loss, theta = _flat_loss(net, x, y)
    g, H = grad(loss)(theta), hessian(loss)(theta)
    ref_share = float((A @ g).norm() / (H @ g).norm())
    m = nme_measures(net, x, y, probes=30, seed=1)
    assert m["act_share_of_Hg"] == pytest.approx(ref_share, rel=1e-8)
    assert m["loss"] == pytest.approx(float(loss(theta)), rel=1e-12)
    # Gauss-Newton from the Jacobian and the softmax Hessian, independently
    out_fn = lambda t: functional_call(  # noqa: E731
        net, {n: c.reshape(p.shape) for (n, p), c in zip(
            net.named_parameters(), t.split([p.numel() for p in net.parameters()]),
            strict=True)}, (x,))
    J = torch.func.jacrev(out_fn)(theta).reshape(-1, theta.numel())
    p = torch.softmax(net(x).detach(), 1)
    HL = torch.block_diag(*[(torch.diag(pi) - torch.outer(pi, pi)) / len(y) for pi in p])
    G = J.T @ HL @ J
    # the Hutchinson estimates, recomputed from the exact matrices and the same probes
    z = (2.0 * torch.randint(0, 2, (30, theta.numel()),
                             generator=torch.Generator().manual_seed(1)) - 1.0).double()
    hutchinson = float(((z @ A) ** 2).sum(1).mean() / ((z @ G) ** 2).sum(1).mean())
    assert m["act_over_G"] == pytest.approx(math.sqrt(hutchinson), rel=1e-8)
    # and the estimate is near the exact ratio of Frobenius norms
    assert m["act_over_G"] == pytest.approx(float(A.norm() / G.norm()), rel=0.3)
    assert m["act_over_G"] > 0.0


def test_nme_activation_part_is_zero_for_relu():
    net, x, y = _problem(1.0, n=20)
    m = nme_measures(net, x, y, probes=5)
    assert m["act_over_G"] == 0.0 and m["act_share_of_Hg"] == 0.0
    assert m["rest_over_G"] > 0.0


def test_train_is_deterministic_and_learns():
    g = torch.Generator().manual_seed(0)
    centers = 6.0 * torch.randn(3, 6, generator=g)
    yt, ys = torch.randint(0, 3, (192,), generator=g), torch.randint(0, 3, (90,), generator=g)
    data = Dataset("toy", centers[yt] + torch.randn(192, 6, generator=g), yt,
                   centers[ys] + torch.randn(90, 6, generator=g), ys, 3)
    torch.manual_seed(0)
    net = build(6, 3, 0.5, widths=(8,))
    results = []
    for method in sharpness.METHODS:
        a, b = copy.deepcopy(net), copy.deepcopy(net)
        ra = train(a, data, method, 0.05, epochs=3, seed=2)
        rb = train(b, data, method, 0.05, epochs=3, seed=2)
        assert ra["test_acc"] == rb["test_acc"] and ra["train_loss"] == rb["train_loss"]
        results.append(ra)
    assert all(r["test_acc"] > 0.9 for r in results)
    assert len({r["train_loss"] for r in results}) == len(sharpness.METHODS)


def test_bad_input_names_the_argument():
    net, x, y = _problem(0.5)
    with pytest.raises(MaxAffineError, match="method"):
        regularized_gradient(net, x, y, "adamw", 0.1)
    with pytest.raises(MaxAffineError, match="strength"):
        regularized_gradient(net, x, y, "sam", -0.1)
    with pytest.raises(MaxAffineError, match="beta"):
        build(4, 3, 1.5)
    data = Dataset("toy", torch.randn(10, 4), torch.randint(0, 3, (10,)),
                   torch.randn(5, 4), torch.randint(0, 3, (5,)), 3)
    with pytest.raises(MaxAffineError, match="batch_size"):
        train(build(4, 3, 0.5), data, "sgd", 0.0, batch_size=64)
    with pytest.raises(MaxAffineTypeError, match="data"):
        train(build(4, 3, 0.5), (torch.randn(3, 4),), "sgd", 0.0)
    with pytest.raises(MaxAffineError, match="probes"):
        nme_measures(net, x, y, probes=0)
    with pytest.raises(MaxAffineError, match="diverged"):
        train(build(4, 3, 0.5), data, "sgd", 0.0, lr=1e30, epochs=3, batch_size=5)


def test_summary_pairs_effects_by_seed_and_spearman():
    runs = [{"beta": b, "method": m, "seed": s, "strength": 0.0, "test_acc": acc,
             "test_loss": 1.0 - acc, "train_acc": acc, "train_loss": 0.0, "seconds": 1.0,
             "init": {"act_over_G": b}, "trained": {}}
            for b in (1.0, 0.5) for s, base in ((0, 0.5), (1, 0.7))
            for m, acc in (("sgd", base), ("sam", base + 0.1 * s + b / 10))]
    rows = {(r["beta"], r["method"]): r for r in summarize(runs)}
    mean, std = rows[(0.5, "sam")]["effect_acc"]
    assert mean == pytest.approx((0.05 + 0.15) / 2) and std == pytest.approx(0.1 / math.sqrt(2))
    assert "effect_acc" not in rows[(1.0, "sgd")]
    assert rows[(1.0, "sgd")]["init"]["act_over_G"] == (1.0, 0.0)
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b = [0.3, 0.1, 2.0, 0.7, 1.1], [1.0, -2.0, 0.5, 0.4, 3.0]
    assert sharpness._spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b)[0])


def test_reproduce_writes_table_and_figure(tmp_path):
    from maxaffine.cli import main

    assert main(["reproduce", "sharpness", "--out", str(tmp_path), "--train-size", "64",
                 "--betas", "1", "0.5", "--seeds", "2", "--epochs", "1", "--widths", "4",
                 "--probes", "2", "--hessian-batch", "16", "--no-progress"]) == 0
    table = json.loads((tmp_path / "sharpness.json").read_text())
    assert len(table["rows"]) == 2 * len(sharpness.METHODS)
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert len(runs["runs"]) == 2 * 2 * len(sharpness.METHODS)
    relu_sgd = [r for r in runs["runs"] if r["beta"] == 1.0 and r["method"] == "sgd"]
    assert all(r["init"]["act_over_G"] == 0.0 == r["trained"]["act_over_G"] for r in relu_sgd)
    soft = [r for r in runs["runs"] if r["beta"] == 0.5]
    assert all(r["init"]["act_over_G"] > 0.0 for r in soft)
    for s in runs["summary"]:
        if s["method"] != "sgd":
            diffs = [r["test_acc"] - b["test_acc"] for r in runs["runs"] for b in runs["runs"]
                     if r["beta"] == b["beta"] == s["beta"] and r["seed"] == b["seed"]
                     and r["method"] == s["method"] and b["method"] == "sgd"]
            assert s["effect_acc"][0] == pytest.approx(sum(diffs) / len(diffs))
    assert (tmp_path / "sharpness.md").exists() and (tmp_path / "sharpness.png").exists()


def test_reproduce_refuses_beta_above_one(tmp_path):
    from maxaffine.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "sharpness", "--out", str(tmp_path), "--betas", "1.5"])
    assert exit_info.value.code == 2

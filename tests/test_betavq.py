"""beta-VQ modules and selections ("From Hard to Soft", ICLR 2019) against
independent float64 references: the hard nonlinearities, swish, average pooling
and a per-window Python loop over the definition t = softmax(beta/(1-beta) l)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import maxaffine.nn as mnn
from maxaffine.datasets import Dataset
from maxaffine.experiments import beta_vq as exp
from maxaffine.nn.betavq import logit, unit_pieces, window_pieces
from maxaffine.training import fit

D = torch.float64
KINDS = ("relu", "leaky_relu", "abs")
SLOPE = 0.1


def hard_ref(u: torch.Tensor, kind: str) -> torch.Tensor:
    return {"relu": F.relu, "abs": torch.abs,
            "leaky_relu": lambda v: F.leaky_relu(v, SLOPE)}[kind](u)


def mean_ref(u: torch.Tensor, kind: str) -> torch.Tensor:
    return {"relu": u / 2, "abs": torch.zeros_like(u), "leaky_relu": (1 + SLOPE) * u / 2}[kind]


def definition(u: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """z = sum_r softmax(beta/(1-beta) l)_r l_r, written out for two pieces."""
    lo = {"relu": torch.zeros_like(u), "abs": -u, "leaky_relu": SLOPE * u}[kind]
    tau = beta / (1 - beta)
    m = torch.maximum(tau * lo, tau * u)
    w0, w1 = torch.exp(tau * lo - m), torch.exp(tau * u - m)
    return (w0 * lo + w1 * u) / (w0 + w1)


def grid(n: int = 2001, scale: float = 10.0) -> torch.Tensor:
    return torch.linspace(-scale, scale, n, dtype=D)


# ------------------------------------------------------------------ elementwise limits


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("learnable", [False, True])
def test_hard_limit(kind, learnable):
    u = grid()
    if not learnable:  # beta exactly 1: the exact hard nonlinearity
        assert torch.equal(mnn.BetaVQ(kind, 1.0, negative_slope=SLOPE).double()(u),
                           hard_ref(u, kind))
    beta = 1 - 1e-12  # smooth path, tau = 1e12: |z - hard| <= max_u u e^{-tau u} = 1/(e tau)
    m = mnn.BetaVQ(kind, beta, learnable=learnable, negative_slope=SLOPE).double()
    err = (m(u) - hard_ref(u, kind)).abs().max()
    assert float(err.detach()) <= 2 / (math.e * 1e12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("learnable", [False, True])
def test_linear_limit(kind, learnable):
    u = grid()
    if not learnable:
        assert torch.equal(mnn.BetaVQ(kind, 0.0, negative_slope=SLOPE).double()(u),
                           mean_ref(u, kind))
    tau = 1e-12  # z - mean = O(tau u^2)
    m = mnn.BetaVQ(kind, tau / (1 + tau), learnable=learnable, negative_slope=SLOPE).double()
    assert float((m(u) - mean_ref(u, kind)).abs().max().detach()) <= 100 * tau


def test_swish_and_soft_forms():
    u = grid()
    assert torch.allclose(mnn.BetaVQ("relu", 0.5).double()(u), F.silu(u), rtol=1e-15, atol=1e-15)
    assert torch.allclose(mnn.BetaVQ("relu", 0.5).double()(u), u * torch.sigmoid(u),
                          rtol=0, atol=0)
    assert torch.allclose(mnn.BetaVQ("abs", 0.5).double()(u), u * torch.tanh(u), atol=1e-14)
    assert mnn.BetaVQ().beta == 0.5 and mnn.BetaVQ().kind == "relu"


@given(kind=st.sampled_from(KINDS), beta=st.floats(0.01, 0.99),
       learnable=st.booleans(), scale=st.floats(0.1, 50.0))
def test_matches_definition(kind, beta, learnable, scale):
    u = grid(257, scale)
    m = mnn.BetaVQ(kind, beta, learnable=learnable, negative_slope=SLOPE).double()
    # the module stores logit(beta) in float32: compare at the beta it actually holds
    b = float(m.beta.detach())
    assert abs(b - beta) < 1e-6
    assert torch.allclose(m(u), definition(u, kind, b), rtol=1e-12, atol=1e-12)
    sel = m.selection(u)
    assert torch.allclose(sel.sum(-1), torch.ones_like(u))
    assert torch.allclose((sel * unit_pieces(u, kind, SLOPE)).sum(-1), m(u), atol=1e-12)


# ------------------------------------------------------------------ numerics at the ends


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [1e-6, 0.5, 1 - 1e-6])
@pytest.mark.parametrize("kind", KINDS)
def test_finite_gradients(kind, beta, dtype):
    u = torch.cat([torch.tensor([0.0, 1e-30, -1e-30, 1e4, -1e4, 3e-7, -3e-7]),
                   torch.logspace(-8, 4, 40), -torch.logspace(-8, 4, 40)]).to(dtype)
    u.requires_grad_(True)
    m = mnn.BetaVQ(kind, beta, learnable=True, negative_slope=SLOPE).to(dtype)
    z = m(u)
    (z.sum() + m.selection(u)[..., 1].sum()).backward()
    assert torch.isfinite(z).all()
    assert torch.isfinite(u.grad).all() and torch.isfinite(m.logit_beta.grad).all()
    hard = hard_ref(u.detach(), kind)
    if beta > 0.9:  # also accurate, not only finite, at |u| = 1e4
        assert torch.allclose(z.detach()[3:5], hard[3:5], rtol=1e-6)


@pytest.mark.parametrize("beta", [1e-6, 0.5, 1 - 1e-6])
def test_pool_finite_gradients(beta):
    x = (torch.randn(2, 3, 6, 6) * torch.logspace(-8, 4, 6).reshape(1, 1, 6, 1))
    x[0, 0, :2, :2] = 0.0  # a fully tied window
    x.requires_grad_(True)
    p = mnn.BetaVQPool2d(2, 2, beta, padding=1, learnable=True, per_channel=3)
    y = p(x)
    (y.sum() + p.selection(x).sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(p.logit_beta.grad).all()


def test_beta_parameterisation():
    for b in (1e-6, 0.3, 1 - 1e-6):
        assert abs(float(mnn.BetaVQ(beta=b, learnable=True).beta) - b) < 1e-6
    assert float(logit(1.0)) == 40.0 and float(logit(0.0)) == -40.0
    m = mnn.BetaVQ(beta=[0.2, 0.5, 0.9], learnable=True, per_channel=3)
    assert m.beta.shape == (3,) and isinstance(m.logit_beta, torch.nn.Parameter)
    with torch.no_grad():
        m.logit_beta.fill_(1e6)  # pushed far out: beta stays in (0, 1], output finite
    assert float(m.beta.max()) <= 1.0 and torch.isfinite(m(torch.randn(4, 3, 5) * 1e4)).all()
    assert "logit_beta" in dict(mnn.BetaVQ(beta=0.3).named_buffers())


@pytest.mark.parametrize("kwargs, match", [
    ({"beta": 1.5}, "beta must lie in"),
    ({"beta": 1.0, "learnable": True}, r"learnable beta must lie in \(0, 1\)"),
    ({"beta": float("nan")}, "beta must lie in"),
    ({"kind": "gelu"}, "kind must be one of"),
    ({"negative_slope": 1.5}, "negative_slope"),
    ({"beta": [0.1, 0.2]}, "per_channel=2"),
    ({"beta": [0.1, 0.2], "per_channel": 3}, "2 values but per_channel=3"),
    ({"per_channel": 0}, "per_channel must be"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mnn.BetaVQ(**kwargs)


def test_per_channel_shape_error():
    with pytest.raises(ValueError, match=r"per_channel=3 .*shape \(2, 4\)"):
        mnn.BetaVQ(per_channel=3)(torch.randn(2, 4))


# ------------------------------------------------------------------ pooling


def loop_pool(x: torch.Tensor, k, s, p, dl, beta: float) -> torch.Tensor:
    """Slow reference: every window in Python, padded entries are not pieces."""
    n, c, h, w = x.shape
    ho = (h + 2 * p[0] - dl[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (w + 2 * p[1] - dl[1] * (k[1] - 1) - 1) // s[1] + 1
    out = torch.empty(n, c, ho, wo, dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            vals = []
            for a in range(k[0]):
                for b in range(k[1]):
                    r, q = i * s[0] - p[0] + a * dl[0], j * s[1] - p[1] + b * dl[1]
                    if 0 <= r < h and 0 <= q < w:
                        vals.append(x[:, :, r, q])
            v = torch.stack(vals, -1)
            if beta == 1.0:
                out[:, :, i, j] = v.max(-1).values
            elif beta == 0.0:
                out[:, :, i, j] = v.mean(-1)
            else:
                t = torch.softmax(beta / (1 - beta) * v, -1)
                out[:, :, i, j] = (t * v).sum(-1)
    return out


@st.composite
def pool_cases(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    dl = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = draw(st.integers(dl[0] * (k[0] - 1) + 1, 7))
    w = draw(st.integers(dl[1] * (k[1] - 1) + 1, 7))
    beta = draw(st.sampled_from([0.0, 0.25, 0.5, 0.8, 1.0]))
    return k, s, p, dl, h, w, beta, draw(st.integers(0, 2**31 - 1))


@given(pool_cases())
def test_pool2d_matches_loop(case):
    k, s, p, dl, h, w, beta, seed = case
    x = torch.randn(2, 3, h, w, dtype=D, generator=torch.Generator().manual_seed(seed)) * 3
    m = mnn.BetaVQPool2d(k, s, beta, padding=p, dilation=dl).double()
    held = beta if beta in (0.0, 1.0) else float(m.beta)  # logit(beta) is stored in float32
    assert torch.allclose(m(x), loop_pool(x, k, s, p, dl, held), atol=1e-12)
    if beta == 1.0:
        assert torch.equal(m(x), F.max_pool2d(x, k, s, p, dl))
    sel = m.selection(x)
    assert torch.allclose(sel.sum(-1), torch.ones(sel.shape[:-1], dtype=D))
    pieces, _ = window_pieces(x, k, s, p, dl)
    z = (sel * pieces).sum(-1)
    assert torch.allclose(z, m(x), atol=1e-12)


def test_pool_limits():
    x = torch.randn(3, 4, 8, 8, dtype=D) * 5
    assert torch.equal(mnn.BetaVQPool2d(2, 2, 1.0).double()(x), F.max_pool2d(x, 2))
    near = mnn.BetaVQPool2d(2, 2, 1 - 1e-12, learnable=True).double()(x)
    assert torch.allclose(near, F.max_pool2d(x, 2), atol=3 / (math.e * 1e12))
    assert torch.allclose(mnn.BetaVQPool2d(2, 2, 0.0).double()(x), F.avg_pool2d(x, 2),
                          atol=1e-15)
    lin = mnn.BetaVQPool2d(3, 2, 1e-13, padding=1, learnable=True).double()(x)
    assert torch.allclose(lin, F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), atol=1e-10)
    soft = mnn.BetaVQPool2d(2, 2, 0.5).double()(x)
    win = x.reshape(3, 4, 4, 2, 4, 2).permute(0, 1, 2, 4, 3, 5).reshape(3, 4, 4, 4, 4)
    assert torch.allclose(soft, (torch.softmax(win, -1) * win).sum(-1), atol=1e-14)
    x1 = torch.randn(3, 4, 10, dtype=D)
    assert torch.equal(mnn.BetaVQPool1d(2, 2, 1.0).double()(x1), F.max_pool1d(x1, 2))
    assert torch.allclose(mnn.BetaVQPool1d(3, 2, 0.0, padding=1).double()(x1),
                          F.avg_pool1d(x1, 3, 2, 1, count_include_pad=False), atol=1e-15)
    assert torch.allclose(mnn.BetaVQPool1d(2, 2, 0.5).double()(x1),
                          loop_pool(x1[:, :, None], (1, 2), (1, 2), (0, 0), (1, 1), 0.5)[:, :, 0])


def test_pool_bad_arguments():
    with pytest.raises(ValueError, match="at most half"):
        mnn.BetaVQPool2d(2, 2, 0.5, padding=2)
    with pytest.raises(ValueError, match="kernel_size needs 2"):
        mnn.BetaVQPool2d((2, 2, 2))
    with pytest.raises(ValueError, match=r"needs an input \(N, C, H, W\) or \(C, H, W\)"):
        mnn.BetaVQPool2d(2)(torch.randn(4, 4))


# ------------------------------------------------------------------ selection helpers


@given(beta=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_selection_helpers(beta, seed):
    pieces = torch.randn(5, 7, 4, dtype=D, generator=torch.Generator().manual_seed(seed))
    t = mnn.vq_selection(pieces, beta)
    assert torch.allclose(t.sum(-1), torch.ones(5, 7, dtype=D))
    assert (t >= 0).all()
    if 1e-6 <= beta < 1.0:  # monotone in the pieces: argmax preserved (no ties here;
        # below, tau * (l_r - l_s) underflows the float64 resolution of the softmax)
        assert torch.equal(t.argmax(-1), pieces.argmax(-1))
    z = mnn.beta_vq(pieces, beta)
    assert (z <= pieces.max(-1).values + 1e-12).all() and (z >= pieces.mean(-1) - 1e-12).all()


def test_selection_ends():
    pieces = torch.tensor([[0.0, 0.0, -1.0], [1.0, 3.0, 3.0]], dtype=D)
    hard = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=D)  # ties to the first piece
    assert torch.equal(mnn.hard_selection(pieces), hard)
    assert torch.equal(mnn.vq_selection(pieces, 1.0), hard)
    assert torch.allclose(mnn.soft_selection(pieces), torch.softmax(pieces, -1))
    assert torch.allclose(mnn.vq_selection(pieces, 0.5), torch.softmax(pieces, -1))
    assert torch.allclose(mnn.vq_selection(pieces, 0.0), torch.full((2, 3), 1 / 3, dtype=D))
    valid = torch.tensor([True, True, False])
    assert torch.allclose(mnn.vq_selection(pieces, 0.0, valid=valid)[:, 2], torch.zeros(2, dtype=D))
    assert torch.allclose(mnn.beta_vq(pieces, torch.tensor(0.5, dtype=D)),
                          (torch.softmax(pieces, -1) * pieces).sum(-1))


# ------------------------------------------------------------------ learning beta


def _regress(target, per_channel=None, steps=300):
    torch.manual_seed(0)
    m = mnn.BetaVQ("relu", 0.5, learnable=True, per_channel=per_channel)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(steps):
        u = torch.randn(256, 2) * 2
        loss = ((m(u) - target(u)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.beta.detach()


def test_learnable_beta_moves_to_the_right_end():
    # from 1/2: a ReLU target pulls beta towards 1, a linear u/2 target towards 0
    assert float(_regress(F.relu)) > 0.8
    assert float(_regress(lambda u: u / 2)) < 0.2
    both = _regress(lambda u: torch.stack([F.relu(u[:, 0]), u[:, 1] / 2], 1), per_channel=2)
    assert float(both[0]) > 0.8 and float(both[1]) < 0.2


def test_learnable_beta_moves_in_a_network():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 1, 12, generator=g)
    y = (x[:, 0, :6].abs().sum(1) > x[:, 0, 6:].abs().sum(1)).long()
    data = Dataset("toy", x[:384], y[:384], x[384:], y[384:], 2)
    torch.manual_seed(0)
    model = exp.build(data, "learnable", channels=(4,), soft_pool=True)
    before = exp.layer_betas(model)
    fit(model, data, epochs=8, lr=1e-2, progress=False)
    after = exp.layer_betas(model)
    assert set(before) == {"act1", "pool1"}
    assert all(abs(after[k] - before[k]) > 0.02 for k in before), (before, after)


# ------------------------------------------------------------------ experiment + demo


def test_experiment_smoke(tmp_path):
    parser = argparse.ArgumentParser()
    exp.add_arguments(parser)
    args = parser.parse_args(["--datasets", "digits", "--seeds", "2", "--epochs", "1",
                              "--channels", "4", "--pool", "beta", "--train-size", "200",
                              "--no-progress"])
    args.out = tmp_path
    out = exp.run(args)
    md = (out / "beta_vq.md").read_text()
    assert "learnable" in md and "Command:" in md and " ± " in md
    assert (out / "beta_vq_family.png").exists() and (out / "runs.json").exists()
    rows = [r for r in md.splitlines() if r.startswith("| digits")]
    assert len(rows) == len(exp.CONFIGS)
    assert "act1" in rows[-1] and "pool1" in rows[-1]


def test_demo_section(tmp_path):
    from maxaffine.datasets import load_dataset
    from maxaffine.demo import DemoContext
    from maxaffine.models import small_cnn

    data = load_dataset("digits")
    data = Dataset(data.name, data.x_train[:128], data.y_train[:128], data.x_test[:64],
                   data.y_test[:64], data.num_classes)
    torch.manual_seed(0)
    cnn = small_cnn(data.input_shape, data.num_classes, channels=(4,)).eval()
    ctx = DemoContext(tmp_path, data, torch.nn.Flatten(), cnn, {}, quick=True)
    section = exp.demo_section(ctx)
    assert "| 1 | ReLU + max-pool |" in section.markdown and "0.00e+00" in section.markdown
    assert (tmp_path / "beta_vq_family.png").exists()

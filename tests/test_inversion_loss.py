"""The inversion loss and the semi-supervised loss (issue 18, items 1 and 2).

References are independent and slow: per-sample ``torch.func.jacrev`` Jacobians of
the network and of each layer's output written out by hand in float64, the
reconstruction ``J^T z`` as an explicit matrix product, and finite differences of
the loss in the weights.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import maxaffine as ma
from maxaffine.errors import MaxAffineError, MaxAffineTypeError, UnsupportedOperation
from maxaffine.losses import inversion_loss, semi_supervised_loss

D64 = torch.float64


def _v(t: torch.Tensor) -> float:
    return t.detach().item()


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, dtype=D64, generator=g))
    return q * torch.sign(torch.diagonal(r))  # a Haar-random orthogonal matrix


def _linear(weight: torch.Tensor, bias: bool = False) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias).double()
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


class Abs(nn.Module):
    def forward(self, z):
        return z.abs()


def mlp3(seed: int = 0, widths=(7, 6)) -> nn.Sequential:
    """A float64 ReLU MLP 5-7-6-4 with biases."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, widths[0]), nn.ReLU(), nn.Linear(widths[0], widths[1]),
                         nn.ReLU(), nn.Linear(widths[1], 4)).double()


# ----------------------------------------------------------------- slow reference


def reference_scales(net: nn.Sequential, x: torch.Tensor) -> dict[str, float]:
    """Each scale's error ``mean_n ||x_n - xhat_n||^2 / D``, from explicit per-sample
    Jacobians (jacrev of each prefix of the Sequential), one sample at a time."""
    mods = list(net)
    stops = {str(i): i + 1 for i, m in enumerate(mods) if isinstance(m, nn.ReLU | Abs)}

    def prefix(k):
        return lambda v: nn.Sequential(*mods[:k])(v.unsqueeze(0)).squeeze(0)

    n, d = x.shape[0], x[0].numel()
    errs = {"template": 0.0, "output": 0.0, **{s: 0.0 for s in stops}}
    for i in range(n):
        xi = x[i]
        f = net(xi.unsqueeze(0)).squeeze(0)
        J = torch.func.jacrev(prefix(len(mods)))(xi)  # (C, D)
        c = int(f.argmax())
        errs["template"] += ((xi - J[c]) ** 2).sum().item()
        errs["output"] += ((xi - J.T @ f) ** 2).sum().item()
        for s, k in stops.items():
            z = prefix(k)(xi)
            Jl = torch.func.jacrev(prefix(k))(xi)  # (units, D)
            errs[s] += ((xi - Jl.T @ z) ** 2).sum().item()
    return {k: v / (n * d) for k, v in errs.items()}


# ------------------------------------------------------------------ exactness


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zero_for_orthogonal_abs_network(seed):
    """Orthogonal linear layers without bias and ``abs``: on every region the map to
    layer l is ``S_l Q_l ... S_1 Q_1`` (S: the sign flips of abs), a product of
    orthogonal matrices, so ``A_l^T z_l = A_l^T A_l x = x``: every layer scale and the
    output scale reconstruct every input exactly."""
    d = 6
    net = nn.Sequential(_linear(_orthogonal(d, seed)), Abs(), _linear(_orthogonal(d, seed + 10)),
                        Abs(), _linear(_orthogonal(d, seed + 20)))
    x = torch.randn(9, d, dtype=D64, generator=torch.Generator().manual_seed(seed))
    for scales in ("layers", "output", ["output", 0, 1]):
        assert _v(inversion_loss(net, x, scales=scales)) < 1e-28
    # a non-orthogonal layer breaks it: the reference sees the same thing
    bad = nn.Sequential(_linear(2 * _orthogonal(d, seed)), Abs())
    assert _v(inversion_loss(bad, x, scales="layers")) > 0.1


def test_zero_for_relu_network_in_its_positive_cone():
    """ReLU after orthogonal bias-free layers keeps the orthogonal map where every unit
    is on; inputs ``x = Q1^T u`` with ``u > 0`` and ``Q2 u > 0`` make all units active,
    so both layer scales reconstruct x exactly; switching one unit off does not."""
    d = 5
    q1 = _orthogonal(d, 3)
    net = nn.Sequential(_linear(q1), nn.ReLU(), _linear(torch.eye(d, dtype=D64)), nn.ReLU())
    u = torch.rand(4, d, dtype=D64, generator=torch.Generator().manual_seed(0)) + 0.1
    x = u @ q1  # rows x_n = Q1^T u_n
    assert _v(inversion_loss(net, x, scales="layers")) < 1e-28
    x_off = (u * torch.tensor([-1.0, 1, 1, 1, 1], dtype=D64)) @ q1
    assert _v(inversion_loss(net, x_off, scales=[0])) > 1e-4


def test_template_scale_zero_when_inputs_are_their_templates():
    """A linear orthogonal network ``f(x) = Q x``: at ``x = Q^T e_c`` the output is
    ``e_c``, so the predicted class is c and its template, row c of Q, is x itself:
    the template scale and the multiscale default ("all": template only, no layers)
    are exact; scaling x by t leaves the template and gives the error (1 - t)^2 / D
    per sample."""
    d = 6
    q = _orthogonal(d, 4)
    net = nn.Sequential(_linear(q))
    x = q.clone()  # row c = Q^T e_c
    assert _v(inversion_loss(net, x, scales="template")) < 1e-28
    assert _v(inversion_loss(net, x)) < 1e-28
    t = 3.0
    got = _v(inversion_loss(net, t * x, scales="template"))
    assert got == pytest.approx((1 - t) ** 2 / d, rel=1e-12)


# ------------------------------------------------------------ against the reference


@pytest.mark.parametrize("seed", [0, 1])
def test_each_scale_matches_explicit_jacobians(seed):
    net = mlp3(seed)
    x = torch.randn(6, 5, dtype=D64, generator=torch.Generator().manual_seed(seed))
    ref = reference_scales(net, x)
    graph = ma.trace(net, x[:1])
    assert graph.layer_names == ("1", "3")
    for scale, want in ref.items():
        got = _v(inversion_loss(graph, x, scales=scale))
        assert got == pytest.approx(want, rel=1e-10, abs=1e-14), scale
    # the default is the mean of the template scale and the two layer scales
    want_all = (ref["template"] + ref["1"] + ref["3"]) / 3
    assert _v(inversion_loss(net, x)) == pytest.approx(want_all, rel=1e-10)
    assert _v(inversion_loss(net, x, scales=[-1, "output"])) == pytest.approx(
        (ref["3"] + ref["output"]) / 2, rel=1e-10)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 4), scale=st.sampled_from(
    ["template", "output", "1", "3"]))
def test_scales_match_reference_property(seed, n, scale):
    net = mlp3(seed % 7, widths=(3 + seed % 4, 2 + seed % 5))
    x = 2 * torch.randn(n, 5, dtype=D64, generator=torch.Generator().manual_seed(seed))
    want = reference_scales(net, x)[scale]
    assert _v(inversion_loss(net, x, scales=scale)) == pytest.approx(want, rel=1e-9,
                                                                        abs=1e-13)


def test_cnn_with_maxpool_matches_reference():
    """A conv net with max-pool: each layer's reconstruction J^T z from jacrev of the
    network cut after that layer."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                        nn.Flatten(), nn.Linear(12, 3)).double()
    x = torch.randn(3, 1, 8, dtype=D64)
    mods = list(net)
    for k, scale in ((2, "1"), (3, "2")):
        total = 0.0
        for i in range(3):
            def pre(v, k=k):
                return nn.Sequential(*mods[:k])(v.unsqueeze(0)).flatten()
            J = torch.func.jacrev(pre)(x[i]).reshape(-1, 8)
            total += ((x[i].flatten() - J.T @ pre(x[i])) ** 2).sum().item()
        assert _v(inversion_loss(net, x, scales=scale)) == pytest.approx(total / 24,
                                                                            rel=1e-10)


# ------------------------------------------------------------------- gradients


def test_gradient_matches_finite_differences():
    """d loss / d weights by double back-prop equals central finite differences of the
    loss in every parameter entry (float64; steps far smaller than the distance to the
    nearest region boundary, so the codes do not change)."""
    net = mlp3(5, widths=(4, 3))
    x = torch.randn(5, 5, dtype=D64, generator=torch.Generator().manual_seed(1))
    params = {k: p.detach().clone() for k, p in net.named_parameters()}

    def net_like(p):
        clone = mlp3(5, widths=(4, 3))
        with torch.no_grad():
            for k, v in clone.named_parameters():
                v.copy_(p[k])
        return clone

    # analytic gradient
    clone = net_like(params)
    loss = inversion_loss(clone, x)
    # (the last layer's bias moves no template and no layer output: zero gradient)
    grads = torch.autograd.grad(loss, list(clone.parameters()), allow_unused=True,
                                materialize_grads=True)
    eps = 1e-6
    for (k, p0), g in zip(params.items(), grads, strict=True):
        for idx in range(p0.numel()):
            plus = {kk: vv.clone() for kk, vv in params.items()}
            minus = {kk: vv.clone() for kk, vv in params.items()}
            plus[k].view(-1)[idx] += eps
            minus[k].view(-1)[idx] -= eps
            fd = (_v(inversion_loss(net_like(plus), x))
                  - _v(inversion_loss(net_like(minus), x))) / (2 * eps)
            assert fd == pytest.approx(float(g.view(-1)[idx]), rel=1e-5, abs=1e-8), (k, idx)


def test_gradient_wrt_input_and_no_grad_value():
    """gradcheck in x (the loss is differentiable in its input too), and under
    no_grad the same value without a graph."""
    net = mlp3(2)
    x = torch.randn(3, 5, dtype=D64, generator=torch.Generator().manual_seed(2),
                    requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: inversion_loss(net, v), (x,), eps=1e-6,
                                    atol=1e-7)
    with torch.no_grad():
        quiet = inversion_loss(net, x)
    assert not quiet.requires_grad
    assert float(quiet) == pytest.approx(_v(inversion_loss(net, x)), rel=1e-14)


def test_graph_follows_trained_weights():
    """A graph traced once reads the module's current weights: after an optimizer step
    the loss of the graph equals the loss of the module traced anew."""
    net = mlp3(1)
    x = torch.randn(4, 5, dtype=D64)
    graph = ma.trace(net, x[:1])
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    inversion_loss(graph, x).backward()
    opt.step()
    assert _v(inversion_loss(graph, x)) == pytest.approx(_v(inversion_loss(net, x)),
                                                            rel=1e-14)


# ------------------------------------------------------------- semi-supervised


def test_semi_supervised_loss_is_the_sum_of_its_parts():
    net = mlp3(3)
    g = torch.Generator().manual_seed(3)
    xl, xu = torch.randn(4, 5, dtype=D64, generator=g), torch.randn(7, 5, dtype=D64, generator=g)
    y = torch.tensor([0, 3, 1, 1])
    alpha, beta = 0.7, 0.2
    with torch.no_grad():
        logits = net(xl)
        ce = -float(sum(torch.log_softmax(logits[i], 0)[y[i]] for i in range(4))) / 4
        pu = torch.softmax(net(xu), 1)
        ent = -float(sum(float(p * math.log(p)) for p in pu.flatten())) / 7
    both = torch.cat([xl, xu])
    ref = reference_scales(net, both)
    rec = (ref["template"] + ref["1"] + ref["3"]) / 3
    got = semi_supervised_loss(net, xl, y, xu, alpha=alpha, beta=beta)
    assert _v(got) == pytest.approx(ce + alpha * rec + beta * ent, rel=1e-10)
    # alpha = 0: entropy minimisation; both 0: plain cross-entropy
    assert _v(semi_supervised_loss(net, xl, y, xu, alpha=0.0, beta=beta)) == pytest.approx(
        ce + beta * ent, rel=1e-12)
    assert _v(semi_supervised_loss(net, xl, y, xu, alpha=0.0, beta=0.0)) == pytest.approx(
        ce, rel=1e-12)
    assert _v(semi_supervised_loss(net, xl, y, xu, alpha=alpha, beta=0.0,
                                      scales="output")) == pytest.approx(
        ce + alpha * ref["output"], rel=1e-10)
    got.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# -------------------------------------------------------------------- bad input


def test_bad_input_named_errors():
    net = mlp3(0)
    x = torch.randn(3, 5, dtype=D64)
    y = torch.tensor([0, 1, 2])
    cases = [
        (lambda: inversion_loss(net, x[:0]), MaxAffineError, "empty"),
        (lambda: inversion_loss(net, x.clone().index_fill_(0, torch.tensor([1]), math.nan)),
         MaxAffineError, "NaN"),
        (lambda: inversion_loss(net, x[0]), MaxAffineError, "batch"),
        (lambda: inversion_loss(net, x[:, :4]), MaxAffineError, "shape"),
        (lambda: inversion_loss(net, x.float()), MaxAffineError, "float"),
        (lambda: inversion_loss(net, x.long()), MaxAffineTypeError, "dtype"),
        (lambda: inversion_loss(net, [[1.0] * 5]), MaxAffineTypeError, "x must"),
        (lambda: inversion_loss("net", x), MaxAffineTypeError, "model"),
        (lambda: inversion_loss(net, x, scales=[]), MaxAffineError, "empty"),
        (lambda: inversion_loss(net, x, scales="nope"), MaxAffineError, "scales"),
        (lambda: inversion_loss(net, x, scales=[5]), MaxAffineError, "scales"),
        (lambda: inversion_loss(net, x, scales=[0, "1"]), MaxAffineError, "twice"),
        (lambda: inversion_loss(net, x, scales=1.5), MaxAffineTypeError, "scales"),
        (lambda: inversion_loss(nn.Sequential(nn.Linear(5, 2)).double(), x, scales="layers"),
         MaxAffineError, "no nonlinearity"),
        (lambda: inversion_loss(nn.Sequential(nn.Linear(5, 3), nn.GELU()).double(), x),
         UnsupportedOperation, "GELU"),
        (lambda: semi_supervised_loss(net, x, y, x[:0]), MaxAffineError, "x_unlabelled"),
        (lambda: semi_supervised_loss(net, x[:0], y[:0], x), MaxAffineError, "x_labelled"),
        (lambda: semi_supervised_loss(net, x, y, x * math.inf), MaxAffineError,
         "x_unlabelled"),
        (lambda: semi_supervised_loss(net, x, y[:2], x), MaxAffineError, "y must have shape"),
        (lambda: semi_supervised_loss(net, x, y.double(), x), MaxAffineTypeError, "y must"),
        (lambda: semi_supervised_loss(net, x, [0, 1, 2], x), MaxAffineTypeError, "y must"),
        (lambda: semi_supervised_loss(net, x, torch.tensor([0, 1, 4]), x), MaxAffineError,
         "labels must"),
        (lambda: semi_supervised_loss(net, x, y, x[:, :4]), MaxAffineError, "x_unlabelled"),
        (lambda: semi_supervised_loss(net, x, y, x, alpha=-1.0), MaxAffineError, "alpha"),
        (lambda: semi_supervised_loss(net, x, y, x, beta=math.nan), MaxAffineError, "beta"),
        (lambda: semi_supervised_loss(net, x, y, x, alpha="1"), MaxAffineTypeError, "alpha"),
    ]
    for call, kind, words in cases:
        with pytest.raises(kind, match=words):
            call()
    bad = mlp3(0)
    with torch.no_grad():
        bad[0].weight[0, 0] = math.nan
    with pytest.raises(MaxAffineError, match="NaN"):
        inversion_loss(bad, x)


def test_semi_supervised_needs_logits():
    class Grid(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 6)

        def forward(self, v):
            return self.lin(v).relu().reshape(-1, 2, 3)

    net = Grid().double()
    x = torch.randn(2, 5, dtype=D64)
    assert torch.isfinite(inversion_loss(net, x))  # flattened outputs: 6 classes
    with pytest.raises(MaxAffineError, match="logits"):
        semi_supervised_loss(net, x, torch.tensor([0, 1]), x)

"""maxaffine.kernels: the analytic NNGP / NTK / RNTK against the empirical kernels of
wide random networks written here in the same parametrization, their symmetry and
positive semi-definiteness, the Gaussian moments against numerical integration,
empirical_ntk against an explicit Jacobian product, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from maxaffine.errors import MaxAffineError, MaxAffineTypeError
from maxaffine.kernels import _moments, empirical_ntk, nngp, ntk, rntk

D = torch.float64


# ---------------------------------------------------------------- reference networks

class Linear(nn.Module):
    """``sw / sqrt(fan_in) W x + sb b`` (NTK parametrization, W, b ~ N(0, 1)), or with
    ``standard=True`` ``W x + b`` with ``W ~ N(0, sw^2 / fan_in)``, ``b ~ N(0, sb^2)``."""

    def __init__(self, fan_in: int, fan_out: int, wv: float, bv: float, standard: bool,
                 gen: torch.Generator):
        super().__init__()
        w = torch.randn(fan_out, fan_in, dtype=D, generator=gen)
        b = torch.randn(fan_out, dtype=D, generator=gen)
        self.sw, self.sb, self.fan_in, self.standard = math.sqrt(wv), math.sqrt(bv), fan_in, \
            standard
        if standard:
            w, b = w * self.sw / math.sqrt(fan_in), b * self.sb
        self.weight, self.bias = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x: Tensor) -> Tensor:
        if self.standard:
            return x @ self.weight.T + self.bias
        return self.sw / math.sqrt(self.fan_in) * x @ self.weight.T + self.sb * self.bias


class Erf(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.erf(x)


def mlp(d: int, width: int, depth: int, wv: float, bv: float, act: str = "relu",
        standard: bool = False, seed: int = 0) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    fan = d
    for _ in range(depth):
        layers += [Linear(fan, width, wv, bv, standard, gen),
                   nn.ReLU() if act == "relu" else Erf()]
        fan = width
    layers.append(Linear(fan, 1, wv, bv, standard, gen))
    return nn.Sequential(*layers)


class Elman(nn.Module):
    """The RNN of :func:`maxaffine.kernels.rntk` (NTK parametrization, h(l, 0) = 0),
    on (N, T, d) inputs of one length, read out at the last step."""

    def __init__(self, d: int, width: int, depth: int, rv: float, iv: float, bv: float,
                 ov: float, act: str = "relu", seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)

        def p(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, dtype=D, generator=gen))

        self.W = nn.ParameterList([p(width, width) for _ in range(depth)])
        self.U = nn.ParameterList([p(width, d if i == 0 else width) for i in range(depth)])
        self.b = nn.ParameterList([p(width) for _ in range(depth)])
        self.V = p(1, width)
        self.s = [math.sqrt(v) for v in (rv, iv, bv, ov)]
        self.act = torch.relu if act == "relu" else torch.erf
        self.width, self.d = width, d

    def hidden(self, x: Tensor) -> Tensor:
        sw, su, sb, _ = self.s
        n = self.width
        hs = [torch.zeros(x.shape[0], n, dtype=D) for _ in self.W]
        for t in range(x.shape[1]):
            inp, m = x[:, t], self.d
            for i in range(len(self.W)):
                hs[i] = self.act(sw / math.sqrt(n) * hs[i] @ self.W[i].T
                                 + su / math.sqrt(m) * inp @ self.U[i].T + sb * self.b[i])
                inp, m = hs[i], n
        return hs[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.s[3] / math.sqrt(self.width) * self.hidden(x) @ self.V.T


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def pairwise(net: nn.Module, seqs: list[Tensor]) -> Tensor:
    """Empirical NTK between sequences of different lengths, one pair at a time."""
    n = len(seqs)
    out = torch.empty(n, n, dtype=D)
    for i in range(n):
        for j in range(n):
            out[i, j] = empirical_ntk(net, seqs[i][None], seqs[j][None])[0, 0]
    return out


X = torch.randn(4, 5, dtype=D, generator=torch.Generator().manual_seed(1))
SEQS = [torch.randn(t, 2, dtype=D, generator=torch.Generator().manual_seed(t))
        for t in (2, 5, 3)]


# ---------------------------------------------------------------- Gaussian moments

@pytest.mark.parametrize("act", ["relu", "erf"])
@pytest.mark.parametrize("cov", [(1.0, 1.0, 0.3), (2.0, 0.5, -0.9), (0.7, 1.3, 0.95),
                                 (1.5, 1.5, 1.5)])
def test_moments_match_numerical_integration(act: str, cov: tuple[float, float, float]):
    from scipy import integrate

    a, b, c = cov
    phi = (lambda z: max(z, 0.0)) if act == "relu" else math.erf
    dphi = (lambda z: float(z > 0)) if act == "relu" else \
        (lambda z: 2 / math.sqrt(math.pi) * math.exp(-z * z))
    # integrate over v given u ~ N(0, a): v | u ~ N(c u / a, b - c^2 / a)
    m_coef, s2 = c / a, max(b - c * c / a, 0.0)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()

    def inner(u: float, f: object) -> float:
        if s2 < 1e-14:
            return f(m_coef * u)
        if act == "relu" and f is phi:  # exact rectified-normal mean, smooth in u
            mu, s = m_coef * u, math.sqrt(s2)
            return mu * 0.5 * math.erfc(-mu / (s * math.sqrt(2))) + s * math.exp(
                -mu * mu / (2 * s2)) / math.sqrt(2 * math.pi)
        if act == "relu":
            mu, s = m_coef * u, math.sqrt(s2)
            return 0.5 * math.erfc(-mu / (s * math.sqrt(2)))
        return float(sum(w * f(m_coef * u + math.sqrt(s2) * z)
                         for z, w in zip(nodes, weights, strict=True)))

    def outer(f: object, g: object) -> float:
        dens = lambda u: math.exp(-u * u / (2 * a)) / math.sqrt(2 * math.pi * a)  # noqa: E731
        lim = 12 * math.sqrt(a)
        pts = [0.0] if act == "relu" else None
        return integrate.quad(lambda u: f(u) * inner(u, g) * dens(u), -lim, lim,
                              points=pts, limit=200, epsabs=1e-11)[0]

    k_ref, kd_ref = outer(phi, phi), outer(dphi, dphi)
    k, kd = _moments(act, torch.tensor(a, dtype=D), torch.tensor(b, dtype=D),
                     torch.tensor(c, dtype=D))
    assert float(k) == pytest.approx(k_ref, rel=1e-6, abs=1e-9)
    if c * c < a * b - 1e-12 or act == "erf":
        assert float(kd) == pytest.approx(kd_ref, rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------- MLP kernels

def _ntk_error(width: int, seeds: int, standard: bool, act: str = "relu",
               depth: int = 2) -> float:
    """Mean over ``seeds`` nets of the relative error of their empirical NTK."""
    ana = ntk(X, X, depth, activation=act, parametrization="standard" if standard else "ntk",
              width=width)
    return sum(rel(empirical_ntk(mlp(5, width, depth, 2.0, 0.1, act, standard, s), X), ana)
               for s in range(seeds)) / seeds


@pytest.mark.parametrize("standard", [False, True])
def test_ntk_matches_wide_mlp_error_shrinks(standard: bool):
    e_small, e_wide = _ntk_error(32, 12, standard), _ntk_error(1024, 4, standard)
    assert e_wide < 0.12
    assert e_wide < 0.5 * e_small


def test_ntk_matches_wide_erf_mlp():
    assert _ntk_error(1024, 4, False, "erf") < 0.12 < _ntk_error(16, 8, False, "erf")


@pytest.mark.slow
@pytest.mark.parametrize("standard", [False, True])
def test_ntk_within_5_percent_at_width_4096(standard: bool):
    ana = ntk(X, X, 2, parametrization="standard" if standard else "ntk", width=4096)
    emp = sum(empirical_ntk(mlp(5, 4096, 2, 2.0, 0.1, "relu", standard, s), X)
              for s in range(2)) / 2
    assert rel(emp, ana) < 0.05


def _nngp_empirical(width: int, seed: int, act: str = "relu", depth: int = 2) -> Tensor:
    """``E[f f'] given the last hidden layer`` = ``sw^2 <h, h'> / n + sb^2``."""
    net = mlp(5, width, depth, 2.0, 0.1, act, False, seed)
    with torch.no_grad():
        h = net[:-1](X)
    return 2.0 * h @ h.T / width + 0.1


def _nngp_errors(act: str, widths: tuple[int, ...], seeds: int) -> dict[int, tuple[float, float]]:
    """Per width: the mean relative error of single nets, and that of their average."""
    ana = nngp(X, X, 2, activation=act)
    out = {}
    for w in widths:
        ks = [_nngp_empirical(w, s, act) for s in range(seeds)]
        out[w] = (sum(rel(k, ana) for k in ks) / seeds, rel(sum(ks) / seeds, ana))
    return out


@pytest.mark.parametrize("act", ["relu", "erf"])
def test_nngp_matches_wide_mlp_error_shrinks(act: str):
    err = _nngp_errors(act, (32, 1024), 4)
    assert err[1024][0] < 0.15
    assert err[1024][0] < 0.5 * err[32][0]


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "erf"])
def test_nngp_within_5_percent_at_width_4096(act: str):
    assert _nngp_errors(act, (4096,), 4)[4096][1] < 0.05


def test_ntk_parametrizations_share_the_nngp_and_differ_in_ntk():
    # same function: identical NNGP; standard NTK / width -> the weights-only limit
    a = ntk(X, X, 2, parametrization="standard", width=1000)
    b = ntk(X, X, 2, parametrization="standard", width=2000)
    assert rel(b, 2 * a) < 0.01  # grows linearly with the width
    x0 = torch.zeros(2, 5, dtype=D)  # zero input: only the biases speak
    assert torch.isfinite(ntk(x0, x0, 3)).all() and torch.isfinite(nngp(x0, x0, 3)).all()


def test_depth_one_by_hand():
    # one hidden ReLU layer, sw^2 = 2, sb^2 = 0, d = 2: Sigma1 = <x, x'> = 1, variances
    # 1 and 2, cos t = 1 / sqrt(2); K1 = sqrt(2) (sin t + (pi - t) cos t) / (2 pi);
    # nngp = 2 K1, ntk = 2 K1 + 2 Kdot Sigma1 with Kdot = (pi - t) / (2 pi)
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=D)
    t = math.pi / 4
    s1 = 2 * 1.0 / 2
    k1 = math.sqrt(2) * (math.sin(t) + (math.pi - t) * math.cos(t)) / (2 * math.pi)
    got = nngp(x, x, 1, bias_var=0.0)
    assert float(got[0, 1]) == pytest.approx(2 * k1, rel=1e-12)
    assert float(ntk(x, x, 1, bias_var=0.0)[0, 1]) == pytest.approx(
        2 * k1 + 2 * (math.pi - t) / (2 * math.pi) * s1, rel=1e-12)


# ---------------------------------------------------------------- RNTK

@pytest.mark.parametrize("act", ["relu", "erf"])
def test_rntk_matches_wide_rnn_different_lengths(act: str):
    ana = rntk(SEQS, activation=act, recurrent_var=1.5)
    err = {w: sum(rel(pairwise(Elman(2, w, 1, 1.5, 2.0, 0.1, 1.0, act, s), SEQS), ana)
                  for s in range(n)) / n for w, n in ((16, 8), (1024, 2))}
    assert err[1024] < 0.12
    assert err[1024] < 0.5 * err[16]


def test_rntk_two_layers_matches_wide_rnn():
    seqs = torch.randn(3, 4, 2, dtype=D, generator=torch.Generator().manual_seed(3))
    ana = rntk(seqs, depth=2, recurrent_var=1.5)
    emp = sum(empirical_ntk(Elman(2, 1024, 2, 1.5, 2.0, 0.1, 1.0, "relu", s), seqs)
              for s in range(2)) / 2
    assert rel(emp, ana) < 0.12


def _rnngp_errors(act: str, widths: tuple[int, ...], seeds: int
                  ) -> dict[int, tuple[float, float]]:
    """Per width: the mean relative error of single RNNs' ``<h(T), h'(T)> / n`` against
    the analytic output NNGP (output_var 1), and that of their average."""
    seqs = torch.randn(4, 6, 2, dtype=D, generator=torch.Generator().manual_seed(4))
    ana = rntk(seqs, activation=act, kernel="nngp", recurrent_var=1.5)
    out = {}
    for w in widths:
        ks = []
        for s in range(seeds):
            with torch.no_grad():
                h = Elman(2, w, 1, 1.5, 2.0, 0.1, 1.0, act, s).hidden(seqs)
            ks.append(h @ h.T / w)
        out[w] = (sum(rel(k, ana) for k in ks) / seeds, rel(sum(ks) / seeds, ana))
    return out


@pytest.mark.parametrize("act", ["relu", "erf"])
def test_rntk_nngp_matches_wide_rnn(act: str):
    err = _rnngp_errors(act, (32, 1024), 4)
    assert err[1024][0] < 0.12 and err[1024][0] < 0.3 * err[32][0]


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "erf"])
def test_rntk_nngp_within_5_percent_at_width_4096(act: str):
    assert _rnngp_errors(act, (4096,), 4)[4096][1] < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "erf"])
def test_rntk_within_5_percent_at_width_4096(act: str):
    seqs = torch.randn(3, 5, 2, dtype=D, generator=torch.Generator().manual_seed(5))
    ana = rntk(seqs, activation=act, recurrent_var=1.5)
    emp = sum(empirical_ntk(Elman(2, 4096, 1, 1.5, 2.0, 0.1, 1.0, act, s), seqs)
              for s in range(3)) / 3
    assert rel(emp, ana) < 0.05


def test_rntk_one_step_is_the_one_layer_mlp_kernel():
    # T = 1: g = su/sqrt(d) U x + sb b, f = sv/sqrt(n) V phi(g): the depth-1 MLP with
    # weight_var = input_var = output_var, without the read-out bias (bias_var)
    x = X[:, None, :]
    for act in ("relu", "erf"):
        kw = dict(activation=act, input_var=1.7, bias_var=0.3, output_var=1.7)
        mlp_kw = dict(activation=act, weight_var=1.7, bias_var=0.3)
        # rtol 1e-7: on the diagonal cos t = 1 up to rounding, and arccos(1 - eps) ~
        # sqrt(2 eps) ~ 1e-8 (both paths round <x, x> differently)
        torch.testing.assert_close(rntk(x, **kw), ntk(X, X, 1, **mlp_kw) - 0.3,
                                   rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(rntk(x, kernel="nngp", **kw), nngp(X, X, 1, **mlp_kw) - 0.3,
                                   rtol=1e-7, atol=1e-12)


def test_rntk_without_recurrence_reads_only_the_last_step():
    last = [s[-1:] for s in SEQS]
    torch.testing.assert_close(rntk(SEQS, recurrent_var=0.0), rntk(last, recurrent_var=0.0))


def test_rntk_inputs_list_padded_and_blocks_agree(monkeypatch: pytest.MonkeyPatch):
    padded = torch.zeros(3, 5, 2, dtype=D)
    for i, s in enumerate(SEQS):
        padded[i, :len(s)] = s
    padded[0, 3] = 7.0  # padding content is ignored
    ref = rntk(SEQS, SEQS[:2])
    torch.testing.assert_close(rntk(padded, SEQS[:2], lengths1=[2, 5, 3]), ref)
    import maxaffine.kernels as k

    monkeypatch.setattr(k, "_BLOCK", 1)  # one row per block
    torch.testing.assert_close(rntk(SEQS, SEQS[:2]), ref)
    torch.testing.assert_close(rntk(SEQS), rntk(SEQS, list(SEQS)))  # mirrored blocks
    scalar = [s[:, 0] for s in SEQS]  # (T,) scalar sequences
    torch.testing.assert_close(rntk(scalar), rntk([s[:, :1] for s in SEQS]))


# ---------------------------------------------------------------- symmetric PSD

@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), d=st.integers(1, 4),
       depth=st.integers(1, 3), act=st.sampled_from(["relu", "erf"]),
       wv=st.floats(0.1, 3.0), bv=st.floats(0.0, 1.0), scale=st.floats(0.01, 10.0),
       which=st.sampled_from(["nngp", "ntk", "standard", "rntk", "rnngp"]))
def test_kernels_symmetric_psd(seed: int, n: int, d: int, depth: int, act: str, wv: float,
                               bv: float, scale: float, which: str):
    g = torch.Generator().manual_seed(seed)
    if which in ("rntk", "rnngp"):
        lens = torch.randint(1, 6, (n,), generator=g).tolist()
        x = [scale * torch.randn(t, d, dtype=D, generator=g) for t in lens]
        # x and a copy: the general (non-mirrored) path
        k = rntk(x, list(x), depth=depth, activation=act, recurrent_var=wv, bias_var=bv,
                 kernel="ntk" if which == "rntk" else "nngp")
    else:
        x = scale * torch.randn(n, d, dtype=D, generator=g)
        if which == "nngp":
            k = nngp(x, x, depth, activation=act, weight_var=wv, bias_var=bv)
        else:
            k = ntk(x, x, depth, activation=act, weight_var=wv, bias_var=bv,
                    parametrization="standard" if which == "standard" else "ntk", width=64)
    assert k.shape == (n, n) and k.dtype == D and torch.isfinite(k).all()
    torch.testing.assert_close(k, k.T, rtol=1e-12, atol=1e-14)
    ev = torch.linalg.eigvalsh((k + k.T) / 2)
    assert float(ev.min()) >= -1e-9 * max(float(ev.abs().max()), 1e-300)


# ---------------------------------------------------------------- empirical NTK

def _explicit(model: nn.Module, x1: Tensor, x2: Tensor) -> Tensor:
    """(N, M, K, K): per input and output, the gradient by autograd.grad, concatenated."""
    params = [p for p in model.parameters()]

    def rows(x: Tensor) -> Tensor:
        out = []
        for i in range(x.shape[0]):
            y = model(x[i:i + 1]).reshape(-1)
            out.append(torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
                y[k], params, retain_graph=True)]) for k in range(y.numel())]))
        return torch.stack(out)  # (N, K, P)

    j1, j2 = rows(x1), rows(x2)
    n, m, kk = j1.shape[0], j2.shape[0], j1.shape[1]
    out = torch.zeros(n, m, kk, kk, dtype=D)
    for i in range(n):
        for j in range(m):
            for a in range(kk):
                for b in range(kk):
                    out[i, j, a, b] = sum(float(j1[i, a, p] * j2[j, b, p])
                                          for p in range(j1.shape[2]))
    return out


def test_empirical_ntk_equals_explicit_jacobian_product():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(),
                          nn.Linear(4, 2)).double()
    x1, x2 = torch.randn(3, 3, dtype=D), torch.randn(2, 3, dtype=D)
    ref = _explicit(model, x1, x2)
    full = empirical_ntk(model, x1, x2, outputs="full")
    assert full.shape == (3, 2, 2, 2)
    torch.testing.assert_close(full, ref, rtol=1e-10, atol=1e-10)
    tr = ref.diagonal(dim1=2, dim2=3).sum(-1)
    torch.testing.assert_close(empirical_ntk(model, x1, x2, outputs="trace"), tr,
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(empirical_ntk(model, x1, x2, chunk=1), tr / 2,
                               rtol=1e-10, atol=1e-10)
    sym = empirical_ntk(model, x1, chunk=2)
    torch.testing.assert_close(sym, empirical_ntk(model, x1, x1.clone()), rtol=1e-12,
                               atol=1e-12)


def test_empirical_ntk_skips_frozen_parameters():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    x = torch.randn(3, 3, dtype=D)
    full = empirical_ntk(model, x)
    model[0].weight.requires_grad_(False)
    part = empirical_ntk(model, x)
    # the missing part is the W1 term: df/dW1[i, j] = w2_i 1{z_i > 0} x_j
    with torch.no_grad():
        on = (model[0](x) > 0).to(D) * model[2].weight[0]
    torch.testing.assert_close(full - part, (on @ on.T) * (x @ x.T), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- bad input

def test_bad_input_named_errors():
    x = torch.randn(3, 4, dtype=D)
    nan = x.clone()
    nan[1, 2] = float("nan")
    with pytest.raises(MaxAffineError, match="x1"):
        ntk(nan, x, 2)
    with pytest.raises(MaxAffineError, match="x2"):
        nngp(x, nan, 2)
    with pytest.raises(MaxAffineError, match="depth"):
        ntk(x, x, 0)
    with pytest.raises(MaxAffineError, match="depth"):
        rntk(SEQS, depth=0)
    with pytest.raises(MaxAffineTypeError, match="depth"):
        nngp(x, x, 1.5)
    with pytest.raises(MaxAffineError, match="empty"):
        ntk(torch.zeros(0, 4, dtype=D), x, 1)
    with pytest.raises(MaxAffineError, match="feature dimension"):
        ntk(x, torch.randn(2, 5, dtype=D), 1)
    with pytest.raises(MaxAffineError, match="weight_var"):
        nngp(x, x, 1, weight_var=-1.0)
    with pytest.raises(MaxAffineError, match="activation"):
        ntk(x, x, 1, activation="tanh")
    with pytest.raises(MaxAffineError, match="width"):
        ntk(x, x, 1, parametrization="standard")
    with pytest.raises(MaxAffineTypeError, match="x1"):
        ntk([[1.0, 2.0]], x, 1)
    with pytest.raises(MaxAffineError, match="x1"):
        ntk(torch.randn(4, dtype=D), x, 1)
    with pytest.raises(MaxAffineTypeError, match="depth"):
        ntk(x, 2)  # the depth given where x2 goes
    with pytest.raises(MaxAffineError, match="overflow"):
        ntk(x * 1e160, None, 2)  # finite inputs, infinite <x, x>
    with pytest.raises(MaxAffineError, match="overflow"):
        rntk(torch.ones(1, 400, 1, dtype=D), recurrent_var=40.0)  # (20)^400


def test_bad_sequences_named_errors():
    bad = [s.clone() for s in SEQS]
    bad[1][2, 0] = float("nan")
    with pytest.raises(MaxAffineError, match=r"s1\[1\]"):
        rntk(bad)
    with pytest.raises(MaxAffineError, match="s2"):
        rntk(SEQS, torch.full((2, 3, 2), float("nan"), dtype=D))
    with pytest.raises(MaxAffineError, match="empty"):
        rntk([])
    with pytest.raises(MaxAffineError, match="empty"):
        rntk(torch.zeros(0, 3, 2, dtype=D))
    with pytest.raises(MaxAffineError, match=r"s1\[0\]"):
        rntk([torch.zeros(0, 2, dtype=D)])
    with pytest.raises(MaxAffineError, match="feature dimension"):
        rntk(SEQS, [torch.randn(3, 4, dtype=D)])
    with pytest.raises(MaxAffineError, match=r"s1\[1\]"):
        rntk([torch.randn(3, 2, dtype=D), torch.randn(3, 3, dtype=D)])
    with pytest.raises(MaxAffineError, match="lengths of s1"):
        rntk(torch.randn(2, 3, 2, dtype=D), lengths1=[0, 3])
    with pytest.raises(MaxAffineError, match="lengths of s1"):
        rntk(torch.randn(2, 3, 2, dtype=D), lengths1=[1, 4])
    with pytest.raises(MaxAffineError, match="lengths of s1"):
        rntk(torch.randn(2, 3, 2, dtype=D), lengths1=[1])
    with pytest.raises(MaxAffineError, match="unsqueeze"):
        rntk(torch.randn(2, 3, dtype=D))
    with pytest.raises(MaxAffineTypeError, match="s1"):
        rntk("abc")
    with pytest.raises(MaxAffineError, match="recurrent_var"):
        rntk(SEQS, recurrent_var=float("inf"))


def test_empirical_ntk_bad_input():
    model = nn.Sequential(nn.Linear(3, 2)).double()
    x = torch.randn(2, 3, dtype=D)
    nan = x.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(MaxAffineError, match="x1"):
        empirical_ntk(model, nan)
    with pytest.raises(MaxAffineError, match="x2"):
        empirical_ntk(model, x, nan)
    with pytest.raises(MaxAffineError, match="x1"):
        empirical_ntk(model, x.float())
    with pytest.raises(MaxAffineError, match="x1"):
        empirical_ntk(model, torch.zeros(0, 3, dtype=D))
    with pytest.raises(MaxAffineError, match="x2"):
        empirical_ntk(model, x, torch.randn(2, 4, dtype=D))
    with pytest.raises(MaxAffineTypeError, match="model"):
        empirical_ntk(lambda v: v, x)
    with pytest.raises(MaxAffineError, match="outputs"):
        empirical_ntk(model, x, outputs="sum")
    with pytest.raises(MaxAffineError, match="overflow"):
        empirical_ntk(nn.Sequential(nn.Linear(3, 2)).double(), x * 1e200)
    frozen = nn.Sequential(nn.Linear(3, 2)).double().requires_grad_(False)
    with pytest.raises(MaxAffineError, match="trainable"):
        empirical_ntk(frozen, x)

"""The analytical likelihood and posterior of ReLU generators (issue 16, item 2):
exact log p(x) against brute-force quadrature over the latent space, posterior
weights, truncated moments against Monte Carlo, named errors."""

from __future__ import annotations

import json
import math

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from torch import nn

import maxaffine as ma
from maxaffine.generative import GeneratorPosterior, log_likelihood, posterior

matplotlib.use("Agg")
import itertools

import matplotlib.pyplot as plt

SIGMA = 0.3


def generator(k: int, d: int, seed: int, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(k, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, d)).double()


def data(g: nn.Module, k: int, n: int, seed: int, sigma: float = SIGMA) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.randn(n, k, dtype=torch.float64, generator=gen)
        out = g(z)
        return out + sigma * torch.randn(out.shape, dtype=torch.float64, generator=gen)


def log_joint(g: nn.Module, z: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(z; 0, I) + log N(x; G(z), sigma^2 I), from forward passes only."""
    with torch.no_grad():
        out = g(z)
    k, d = z.shape[1], out.shape[1]
    return (-0.5 * (z * z).sum(1) - 0.5 * k * math.log(2 * math.pi)
            - 0.5 * ((x - out) ** 2).sum(1) / sigma**2
            - 0.5 * d * math.log(2 * math.pi * sigma**2))


def quadrature_1d(g: nn.Module, x: torch.Tensor, sigma: float, bound: float = 8.0) -> float:
    """scipy.integrate.quad between consecutive breakpoints (the density is smooth
    on each piece), scaled by the largest value."""
    seg = ma.partition_segment(g, torch.tensor([-bound], dtype=torch.float64),
                               torch.tensor([bound], dtype=torch.float64))
    z = (-bound + 2 * bound * seg.breakpoints).tolist()
    grid = torch.linspace(-bound, bound, 4001, dtype=torch.float64)[:, None]
    top = float(log_joint(g, grid, x[None], sigma).max())

    def f(t: float) -> float:
        return math.exp(float(log_joint(g, torch.tensor([[t]], dtype=torch.float64), x[None],
                                        sigma)[0]) - top)

    total = sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-13, limit=200)[0]
                for a, b in itertools.pairwise(z))
    return top + math.log(total)


def quadrature_2d(g: nn.Module, x: torch.Tensor, sigma: float, bound: float = 8.0,
                  order: int = 40) -> float:
    """Each region of the latent square fanned into triangles, each integrated by a
    collapsed (Duffy) Gauss-Legendre product rule of ``order`` points a side, the
    density from forward passes (smooth on every triangle)."""
    square = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float64) * bound
    part = ma.partition_plane(g, square, progress=False)
    verts = part.domain.to_input(part.vertices).reshape(-1, 2)
    tris = []
    for face, size in zip(part.faces.tolist(), part.face_sizes.tolist(), strict=True):
        for j in range(1, size - 1):
            tris.append([face[0], face[j], face[j + 1]])
    tri = verts[torch.tensor(tris)]  # (T, 3, 2)
    u, wu = np.polynomial.legendre.leggauss(order)
    u, wu = (u + 1) / 2, wu / 2
    a, b = np.meshgrid(u, u, indexing="ij")
    wa = np.outer(wu, wu) * (1 - a)  # Duffy: (a, b (1 - a)) on the unit triangle
    s, t = torch.tensor(a.ravel()), torch.tensor((b * (1 - a)).ravel())
    w = torch.tensor(wa.ravel())
    p0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    jac = (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).abs()
    pts = p0[:, None] + s[None, :, None] * e1[:, None] + t[None, :, None] * e2[:, None]
    lj = log_joint(g, pts.reshape(-1, 2), x[None], sigma).reshape(len(tri), -1)
    terms = lj + w.log()[None] + jac.log()[:, None]
    return float(torch.logsumexp(terms.reshape(-1), 0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_likelihood_matches_quadrature_1d(seed):
    d = 3 + 3 * seed
    g = generator(1, d, seed)
    x = data(g, 1, 3, seed)
    got = log_likelihood(g, x, SIGMA)
    for i in range(3):
        want = quadrature_1d(g, x[i], SIGMA)
        assert abs(float(got[i]) - want) <= 1e-6 * max(1.0, abs(want)), (i, float(got[i]), want)


@pytest.mark.parametrize("seed", [0, 1])
def test_log_likelihood_matches_quadrature_2d(seed):
    d = 4 + 6 * seed
    g = generator(2, d, seed)
    x = data(g, 2, 3, seed)
    got = log_likelihood(g, x, SIGMA)
    for i in range(3):
        want = quadrature_2d(g, x[i], SIGMA)
        assert abs(float(got[i]) - want) <= 1e-6 * max(1.0, abs(want)), (i, float(got[i]), want)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.sampled_from([1, 2]),
       sigma=st.sampled_from([0.05, 0.3, 1.0]))
def test_weights_are_a_distribution_and_moments_lie_in_their_regions(seed, k, sigma):
    g = generator(k, 5, seed % 1000, width=6)
    x = data(g, k, 2, seed, sigma)
    post = posterior(g, x, sigma)
    assert torch.allclose(post.weights.sum(1), torch.ones(2, dtype=torch.float64), atol=1e-12)
    assert bool((post.weights >= 0).all())
    assert torch.allclose(post.log_likelihood, log_likelihood(g, x, sigma), atol=1e-12)
    heavy = post.weights > 1e-6
    if k == 1:
        lo, hi = post.vertices[:, 0, 0], post.vertices[:, 1, 0]
        m = post.means[..., 0]
        assert bool(((m >= lo - 1e-9) & (m <= hi + 1e-9))[heavy].all())
    var = torch.linalg.eigvalsh(post.covariances)
    assert bool((var[heavy] > -1e-9).all())
    # each truncated covariance is at most the untruncated one (convex truncation)
    excess = torch.linalg.eigvalsh(post.gaussian_covariances[None] - post.covariances)
    assert bool((excess[heavy] > -1e-7).all())


@pytest.mark.parametrize("k", [1, 2])
def test_truncated_means_match_monte_carlo(k):
    g = generator(k, 6, 3)
    x = data(g, k, 1, 4)
    post = posterior(g, x, SIGMA)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(400_000, k, dtype=torch.float64, generator=gen)
    logw = log_joint(g, z, x, SIGMA) + 0.5 * (z * z).sum(1)  # z ~ prior: the likelihood
    w = (logw - logw.max()).exp()
    code = ma.codes(g, z).packed()
    keys = {bytes(r.tolist()): i for i, r in enumerate(post.packed)}
    region = torch.tensor([keys.get(bytes(r.tolist()), -1) for r in code])
    assert bool((region >= 0).all())
    weight_mc = torch.zeros(post.num_regions, dtype=torch.float64).index_add_(0, region, w)
    weight_mc = weight_mc / weight_mc.sum()
    checked = 0
    for r in torch.argsort(post.weights[0], descending=True)[:3].tolist():
        sel = region == r
        wr = w[sel] / w[sel].sum()
        ess = 1 / float((wr * wr).sum())
        if ess < 200:
            continue
        mean = (wr[:, None] * z[sel]).sum(0)
        sd = ((wr[:, None] ** 2 * (z[sel] - mean) ** 2).sum(0)).sqrt()  # self-normalised IS
        assert bool(((mean - post.means[0, r]).abs() <= 4 * sd + 1e-9).all()), r
        assert abs(float(weight_mc[r] - post.weights[0, r])) < 0.05
        checked += 1
    assert checked >= 1


def test_the_posterior_mean_is_the_weighted_truncated_means():
    g = generator(2, 4, 5)
    x = data(g, 2, 2, 6)
    post = posterior(g, x, SIGMA)
    assert torch.allclose(post.mean, (post.weights[..., None] * post.means).sum(1))
    assert bool((torch.linalg.eigvalsh(post.covariance) > 0).all())
    assert post.tail_mass == pytest.approx(1 - math.erf(8 / math.sqrt(2)) ** 2, abs=1e-16)


def test_a_precomputed_partition_is_reused():
    g = generator(2, 5, 7)
    x = data(g, 2, 2, 8)
    square = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float64) * 6
    part = ma.partition_plane(g, square, progress=False)
    a = log_likelihood(g, x, SIGMA, domain=part)
    b = log_likelihood(g, x, SIGMA, bound=6.0)
    assert torch.allclose(a, b, atol=1e-12, rtol=0)
    seg = ma.partition_segment(generator(1, 3, 1), torch.tensor([-8.0], dtype=torch.float64),
                               torch.tensor([8.0], dtype=torch.float64))
    x1 = data(generator(1, 3, 1), 1, 2, 2)
    assert torch.allclose(log_likelihood(generator(1, 3, 1), x1, SIGMA, domain=seg),
                          log_likelihood(generator(1, 3, 1), x1, SIGMA), atol=1e-12)


def test_sampling_estimates_agree_with_the_exact_value():
    g = generator(2, 5, 9)
    x = data(g, 2, 3, 10)
    exact = log_likelihood(g, x, SIGMA)
    post = posterior(g, x, SIGMA, method="sampling", samples=4000)
    assert post.method == "sampling" and post.standard_error is not None
    assert bool(((post.log_likelihood - exact).abs() <= 5 * post.standard_error + 1e-3).all())
    assert torch.allclose(post.weights.sum(1), torch.ones(3, dtype=torch.float64))


def test_latent_three_is_estimated_with_a_standard_error():
    g = generator(3, 4, 11, width=6)
    x = data(g, 3, 2, 12)
    post = posterior(g, x, SIGMA, samples=3000, method="sampling")
    assert post.method == "sampling" and post.latent_dim == 3
    assert bool(torch.isfinite(post.log_likelihood).all())
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(200_000, 3, dtype=torch.float64, generator=gen)
    prior = -0.5 * (z * z).sum(1) - 1.5 * math.log(2 * math.pi)
    naive = torch.stack([torch.logsumexp(log_joint(g, z, xi[None], SIGMA) - prior, 0)
                         - math.log(len(z)) for xi in x])
    assert bool(((post.log_likelihood - naive).abs() < 5 * post.standard_error + 0.05).all())
    g4 = generator(4, 4, 11, width=6)
    with pytest.raises(ma.MaxAffineError, match="method='sampling'"):
        posterior(g4, data(g4, 4, 2, 12), SIGMA, method="exact")


def test_named_errors():
    g = generator(2, 4, 0)
    x = data(g, 2, 2, 1)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ma.MaxAffineError, match="noise_std"):
            log_likelihood(g, x, bad)
    with pytest.raises(ma.MaxAffineTypeError, match="noise_std"):
        log_likelihood(g, x, "0.3")
    with pytest.raises(ma.MaxAffineError, match="x must be a batch"):
        log_likelihood(g, x[:, :3], SIGMA)
    with pytest.raises(ma.MaxAffineError, match="x must be a batch"):
        log_likelihood(g, x[0], SIGMA)
    with pytest.raises(ma.MaxAffineError, match="NaN"):
        log_likelihood(g, torch.where(torch.arange(4) == 1, math.nan, x), SIGMA)
    with pytest.raises(ma.MaxAffineError, match="method"):
        log_likelihood(g, x, SIGMA, method="magic")
    smooth = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 4)).double()
    with pytest.raises(ma.UnsupportedOperation, match="Tanh"):
        posterior(smooth, x, SIGMA)
    with pytest.raises(ma.MaxAffineTypeError, match="generator"):
        posterior(lambda z: z, x, SIGMA)


def test_result_summarises_serialises_and_plots():
    for k in (1, 2, 3):
        g = generator(k, 4, k)
        post = posterior(g, data(g, k, 2, 0), SIGMA, samples=500)
        assert isinstance(post, GeneratorPosterior)
        s = post.summary()
        assert s["regions"] == post.num_regions and s["latent_dim"] == k
        json.dumps(s, allow_nan=False)
        assert isinstance(json.loads(post.to_json()), dict)
        _, ax = plt.subplots()
        assert post.plot(ax=ax) is ax
        post.plot(index=-1)
        plt.close("all")


def test_float32_generators_and_image_outputs():
    g = generator(2, 9, 13).float()
    x = data(generator(2, 9, 13), 2, 2, 14)
    a = log_likelihood(g, x.float(), SIGMA)
    b = log_likelihood(generator(2, 9, 13).float().double(), x, SIGMA)
    assert torch.allclose(a, b, atol=1e-9)
    img = nn.Sequential(generator(2, 9, 13), nn.Unflatten(1, (1, 3, 3)))
    c = log_likelihood(img, x.reshape(2, 1, 3, 3), SIGMA)
    assert torch.allclose(c, b, atol=1e-9)


# ------------------------------------------------------------------ latent dimension 3


def _duffy(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A collapsed Gauss-Legendre rule on the unit tetrahedron: barycentric points
    (Q, 3) (of the last three vertices) and weights (Q,) (volume 1/6)."""
    xg, wg = np.polynomial.legendre.leggauss(n)
    xg, wg = (xg + 1) / 2, wg / 2
    a, b, c = np.meshgrid(xg, xg, xg, indexing="ij")
    w = np.einsum("i,j,k->ijk", wg, wg, wg) * (1 - a) ** 2 * (1 - b)
    lam = np.stack([a, (1 - a) * b, (1 - a) * (1 - b) * c], -1).reshape(-1, 3)
    return lam, w.reshape(-1)


@pytest.fixture(scope="module")
def latent3():
    g = generator(3, 4, 0)
    x = data(g, 3, 1, 1)
    lo = torch.full((3,), -3.0, dtype=torch.float64)
    cx = ma.partition_box(g, lo, -lo, progress=False)
    return g, x, cx, posterior(g, x, SIGMA, domain=cx, bound=3.0)


def test_exact_3d_matches_collapsed_quadrature(latent3):
    """log p(x) against a collapsed Gauss-Legendre rule of the joint density (forward
    passes) on every tetrahedron of the regions holding posterior mass (the density is
    a smooth Gaussian on each): 1e-9 relative (3e-13 seen)."""
    from maxaffine.generative.likelihood import _box_regions, _generator

    g, x, cx, post = latent3
    assert post.method == "exact" and post.latent_dim == 3
    reg = _box_regions(_generator(g)[0], cx, 3.0)
    lam, wts = _duffy(14)
    for i in range(x.shape[0]):
        vals = []
        for r in np.flatnonzero(post.weights[i].numpy() > 1e-14):
            tet = reg.tets[reg.tet_ptr[r]:reg.tet_ptr[r + 1]]
            e = tet[:, 1:] - tet[:, :1]
            pts = tet[:, None, 0] + np.einsum("qj,tjd->tqd", lam, e)
            lj = log_joint(g, torch.from_numpy(pts.reshape(-1, 3)), x[i:i + 1], SIGMA)
            dens = np.exp(lj.numpy().reshape(len(tet), -1)) @ wts
            vals.append(np.log(dens @ np.abs(np.linalg.det(e))))
        ref = np.logaddexp.reduce(vals)
        assert abs(math.expm1(float(post.log_likelihood[i]) - ref)) < 1e-9
    assert abs(post.tail_mass - (1 - math.erf(3 / math.sqrt(2)) ** 3)) < 1e-12


def test_exact_3d_weights_means_and_moments(latent3):
    """Weights sum to 1; truncated means lie in their regions; the top region's
    truncated mean and covariance match rejection sampling within 4 standard errors."""
    g, x, _, post = latent3
    torch.testing.assert_close(post.weights.sum(1), torch.ones(1, dtype=torch.float64))
    for i in range(x.shape[0]):
        heavy = (post.weights[i] > 1e-6).nonzero()[:, 0]
        got = ma.codes(g, post.means[i, heavy]).packed()
        assert torch.equal(got, post.packed[heavy])
    gen = torch.Generator().manual_seed(3)
    i, r = 0, int(post.weights[0].argmax())
    chol = torch.linalg.cholesky(post.gaussian_covariances[r])
    z = post.gaussian_means[i, r] + torch.randn(200_000, 3, dtype=torch.float64,
                                                generator=gen) @ chol.T
    z = z[(ma.codes(g, z).packed() == post.packed[r]).all(1) & (z.abs() <= 3).all(1)]
    assert len(z) > 1000
    m, c = z.mean(0), torch.cov(z.T)
    se = (c.diagonal() / len(z)).sqrt()
    assert ((post.means[i, r] - m).abs() <= 4 * se).all()
    dev = z - m
    sq = dev[:, :, None] * dev[:, None, :]
    se2 = sq.std(0) / math.sqrt(len(z))
    assert ((post.covariances[i, r] - c).abs() <= 4 * se2 + 1e-12).all()

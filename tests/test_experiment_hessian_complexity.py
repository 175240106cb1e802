"""The hessian-complexity experiment (``maxaffine reproduce hessian-complexity``):
complexity at a subset of a pool equals ``hessian_complexity`` on the whole pool, the
label noise and augmentations do what they say, and a tiny run writes its table."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from maxaffine.curvature import hessian_complexity
from maxaffine.errors import MaxAffineError, MaxAffineTypeError
from maxaffine.experiments.hessian_complexity import (
    augment,
    neighbourhoods,
    noisy_labels,
    tangent_complexity_at,
)


def _relu_net(D: int, seed: int, out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, out)).double()


def _curved_data(n: int, D: int, seed: int) -> torch.Tensor:
    """Points on a random 2-D curved sheet in D dimensions, plus a little noise."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 4 - 2
    feats = torch.cat([u, u ** 2, u.prod(1, keepdim=True), torch.sin(u)], 1)
    mix = torch.randn(feats.shape[1], D, generator=gen, dtype=torch.float64)
    return feats @ mix + 0.01 * torch.randn(n, D, generator=gen, dtype=torch.float64)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), D=st.sampled_from([4, 9, 20]),
       d=st.sampled_from([1, 2, 3]), output=st.sampled_from([None, 0, 2]))
def test_subset_equals_whole_pool(seed, D, d, output):
    """The reduced per-point call reproduces the whole-pool call at those points (the
    reduction is an isometry; D = 4 < k exercises a basis of the full space)."""
    pool = _curved_data(50, D, seed)
    net = _relu_net(D, seed)
    k = 2 * (1 + d + d * (d + 1) // 2)
    hoods = neighbourhoods(pool, 15, k)
    ours = tangent_complexity_at(net, hoods, d, output=output)
    whole = hessian_complexity(net, pool, tangent_dim=d, k=k, output=output, method="fit")
    scale = float(whole.per_point.abs().max()) + 1e-12
    torch.testing.assert_close(ours, whole.per_point[:15], rtol=0, atol=1e-9 * scale)


def test_quadratic_on_plane_gives_8_and_float32_models_are_accepted():
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(30, 2, generator=gen, dtype=torch.float64))
    pool = (torch.rand(80, 2, generator=gen, dtype=torch.float64) * 2 - 1) @ basis.T

    class Square(nn.Module):
        def forward(self, x):
            return (x ** 2).sum(1, keepdim=True)

    c = tangent_complexity_at(Square(), neighbourhoods(pool, 20, 12), 2)
    torch.testing.assert_close(c, torch.full((20,), 8.0, dtype=torch.float64), rtol=0,
                               atol=1e-8)
    lin = nn.Linear(30, 4)                                   # float32: evaluated in float64
    c = tangent_complexity_at(lin, neighbourhoods(pool, 20, 12), 2)
    assert float(c.abs().max()) < 1e-10
    assert lin.weight.dtype == torch.float32                 # the caller's model untouched


def test_noisy_labels_corrupt_exactly_the_fraction():
    y = torch.arange(1000) % 10
    for p in (0.0, 0.2, 0.4, 1.0):
        z = noisy_labels(y, p, 10, seed=3)
        assert int((z != y).sum()) == round(p * 1000)
        assert int(z.min()) >= 0 and int(z.max()) <= 9
        assert torch.equal(z, noisy_labels(y, p, 10, seed=3))
    wrong = noisy_labels(y, 0.4, 10, seed=1) != y
    assert not torch.equal(wrong, noisy_labels(y, 0.4, 10, seed=2) != y)
    flipped = noisy_labels(y, 1.0, 10, seed=0)
    # the corrupted labels are spread over the other classes
    assert len(torch.unique((flipped - y) % 10)) == 9
    assert torch.equal(y, torch.arange(1000) % 10)           # input untouched


def test_augment_is_a_per_sample_roll_plus_noise():
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(40, 2, 11)
    x2 = torch.randn(40, 1, 7, 6)
    assert torch.equal(augment(x1, 0, 0.0, gen), x1)
    shifted = augment(x1, 2, 0.0, gen)
    for a, b in zip(x1, shifted, strict=True):
        assert any(torch.equal(torch.roll(a, s, dims=-1), b) for s in range(-2, 3))
    seen = set()
    shifted = augment(x2, 1, 0.0, gen)
    for a, b in zip(x2, shifted, strict=True):
        match = [(i, j) for i in range(-1, 2) for j in range(-1, 2)
                 if torch.equal(torch.roll(a, (i, j), dims=(-2, -1)), b)]
        assert match
        seen.update(match)
    assert len(seen) >= 5                                    # various shifts drawn
    big = torch.zeros(200, 1, 50)
    noisy = augment(big, 0, 0.3, gen)
    assert abs(float(noisy.std()) - 0.3) < 0.01


def test_bad_input_raises_named_errors():
    pool = _curved_data(20, 5, 0)
    with pytest.raises(MaxAffineError, match="points"):
        neighbourhoods(pool, 21, 3)
    with pytest.raises(MaxAffineError, match="k must be"):
        neighbourhoods(pool, 5, 20)
    with pytest.raises(MaxAffineError, match="pool"):
        neighbourhoods(pool[0], 1, 1)
    hoods = neighbourhoods(pool, 5, 10)
    with pytest.raises(MaxAffineError, match="tangent_dim"):
        tangent_complexity_at(_relu_net(5, 0), hoods, 5)
    with pytest.raises(MaxAffineTypeError):
        tangent_complexity_at(lambda t: t, hoods, 2)
    with pytest.raises(MaxAffineTypeError):
        tangent_complexity_at(_relu_net(5, 0), pool, 2)
    with pytest.raises(MaxAffineError, match="fit"):   # 6 coefficients from 4 points
        tangent_complexity_at(_relu_net(5, 0), neighbourhoods(pool, 5, 3), 2)
    y = torch.arange(10) % 3
    with pytest.raises(MaxAffineError, match="fraction"):
        noisy_labels(y, 1.5, 3, seed=0)
    with pytest.raises(MaxAffineError, match="outside"):
        noisy_labels(y, 0.5, 2, seed=0)
    with pytest.raises(MaxAffineError, match="int64"):
        noisy_labels(y.float(), 0.5, 3, seed=0)
    with pytest.raises(MaxAffineTypeError):
        noisy_labels([0, 1], 0.5, 3, seed=0)
    with pytest.raises(MaxAffineError, match="shape"):
        augment(torch.zeros(3, 4), 1, 0.0, torch.Generator())
    with pytest.raises(MaxAffineError, match="shift"):
        augment(torch.zeros(3, 1, 4), -1, 0.0, torch.Generator())


def test_reproduce_writes_tables_and_figure(tmp_path):
    from maxaffine.cli import main

    assert main(["reproduce", "hessian-complexity", "--out", str(tmp_path), "--datasets",
                 "mnist1d", "--seeds", "2", "--epochs", "2", "--train-size", "256",
                 "--points", "8", "--pool", "40", "--tangent-dim", "2", "--label-noise",
                 "0.3", "--widths", "16", "--no-progress"]) == 0
    table = json.loads((tmp_path / "hessian_complexity.json").read_text())
    assert [r[1] for r in table["rows"]] == ["plain", "shift", "noise", "labels 30%"]
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert len(runs) == 8
    assert all(r["complexity_test"] >= 0 and r["complexity_train"] >= 0 for r in runs)
    assert all(abs(r["gap"] - (r["train_acc"] - r["test_acc"])) < 1e-12 for r in runs)
    labels = [r for r in runs if r["condition"] == "labels 30%"]
    assert all(r["label_noise"] == 0.3 for r in labels)
    corr = json.loads((tmp_path / "correlations.json").read_text())
    assert {r[1] for r in corr["rows"]} >= {"complexity_test", "relative_complexity_test"}
    assert (tmp_path / "complexity_vs_gap.png").exists()
    assert "| mnist1d | plain |" in (tmp_path / "hessian_complexity.md").read_text()

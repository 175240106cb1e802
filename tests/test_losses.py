"""Orthogonality penalties and the hard orthogonal parametrization.

References are independent and slow: per-sample, per-class ``torch.func.jacrev``
loops in float64, hand-written batch-norm, double loops over weight rows.
"""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import maxaffine as ma
from maxaffine.losses import (
    filter_orthogonality,
    template_gram,
    template_orthogonality,
    weight_orthogonality,
)
from maxaffine.orthogonal import orthogonal_filters

D64 = torch.float64


# ----------------------------------------------------------------- slow references


def naive_penalty(f, x, classes=None, normalize=False):
    """mean_n sum_{a != c} <A_a, A_c>^2 with one jacrev per sample and per class.

    ``f`` maps one sample (no batch axis) to its (C,) outputs; ``classes`` is None,
    a list shared by all samples, or one list per sample."""
    total = 0.0
    for n in range(x.shape[0]):
        num = f(x[n]).shape[0]
        if classes is None:
            cls = list(range(num))
        elif isinstance(classes[0], list | tuple):
            cls = list(classes[n])
        else:
            cls = list(classes)
        rows = [torch.func.jacrev(lambda v, c=c: f(v)[c])(x[n]).flatten() for c in cls]
        for i, a in enumerate(rows):
            for j, c in enumerate(rows):
                if i == j:
                    continue
                ip = a @ c
                if normalize:  # convention: a zero template has cosine 0
                    both = bool(a.norm() > 0) and bool(c.norm() > 0)
                    ip = ip / (a.norm() * c.norm()) if both else ip * 0
                total = total + ip**2
    return total / x.shape[0]


def per_sample(model):
    return lambda v: model(v.unsqueeze(0))[0]


def grads(value, model):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(value, params, allow_unused=True)


def assert_close_grads(g1, g2, rtol=1e-7, atol=1e-10):
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2, strict=True):
        if a is None and b is None:
            continue
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# -------------------------------------------------------------- template penalty

ACTS = [nn.ReLU, lambda: nn.LeakyReLU(0.2), nn.Hardtanh]


@st.composite
def mlp_case(draw):
    d = draw(st.integers(2, 5))
    widths = draw(st.lists(st.integers(2, 7), min_size=1, max_size=2))
    c = draw(st.integers(2, 5))
    n = draw(st.integers(1, 4))
    act = draw(st.sampled_from(ACTS))
    seed = draw(st.integers(0, 2**16))
    mode = draw(st.sampled_from(["all", "shared", "per-sample"]))
    normalize = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    k = draw(st.integers(2, c))
    if mode == "all":
        classes = None
    elif mode == "shared":
        classes = torch.randperm(c, generator=g)[:k].tolist()
    else:
        classes = [torch.randperm(c, generator=g)[:k].tolist() for _ in range(n)]
    return d, widths, c, n, act, seed, classes, normalize


def build_mlp(d, widths, c, act, seed):
    torch.manual_seed(seed)
    layers, prev = [], d
    for w in widths:
        layers += [nn.Linear(prev, w), act()]
        prev = w
    layers.append(nn.Linear(prev, c))
    return nn.Sequential(*layers).to(D64).eval()


@given(mlp_case())
def test_template_penalty_matches_naive_jacrev(case):
    d, widths, c, n, act, seed, classes, normalize = case
    model = build_mlp(d, widths, c, act, seed)
    x = torch.randn(n, d, dtype=D64, generator=torch.Generator().manual_seed(seed + 1))
    cls_arg = None if classes is None else torch.tensor(classes)
    got = template_orthogonality(model, x, classes=cls_arg, normalize=normalize)
    ref = naive_penalty(per_sample(model), x, classes, normalize)
    torch.testing.assert_close(got, torch.as_tensor(ref, dtype=D64), rtol=1e-9, atol=1e-12)
    if not torch.is_tensor(ref) or not ref.requires_grad:  # e.g. all templates constant
        return
    assert_close_grads(grads(got, model), grads(ref, model))


@pytest.mark.parametrize("normalize", [False, True])
def test_template_penalty_cnn_maxpool_batchnorm_eval(normalize):
    from maxaffine.models import small_cnn

    torch.manual_seed(3)
    model = small_cnn((1, 6, 6), 3, channels=(2,)).to(D64)
    with torch.no_grad():  # non-trivial running statistics
        bn = model[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(3, 1, 6, 6, dtype=D64)
    got = template_orthogonality(model, x, normalize=normalize)
    ref = naive_penalty(per_sample(model), x, None, normalize)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    assert_close_grads(grads(got, model), grads(ref, model))


def test_template_gram_equals_affine_map_rows():
    from maxaffine.models import small_cnn

    torch.manual_seed(0)
    model = small_cnn((1, 8, 8), 4, channels=(3,)).to(D64).eval()
    x = torch.randn(5, 1, 8, 8, dtype=D64)
    A = ma.affine_map(model, x).A.flatten(2)
    torch.testing.assert_close(template_gram(model, x), A @ A.transpose(1, 2))
    cos = template_gram(model, x, classes=[0, 2, 3], normalize=True)
    sub = A[:, [0, 2, 3]]
    sub = sub / sub.norm(dim=2, keepdim=True)
    torch.testing.assert_close(cos, sub @ sub.transpose(1, 2))


def _bn_mlp():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 4))
    model = model.to(D64)
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model.train()


def test_training_mode_batchnorm_uses_batch_statistics():
    """Reference: the same network written by hand, batch statistics of x computed
    from the weights (so gradients flow through them) but held fixed per sample."""
    model = _bn_mlp()
    x = torch.randn(6, 3, dtype=D64)
    lin1, bn, lin2 = model[0], model[1], model[3]
    running = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())

    got = template_orthogonality(model, x)
    h = lin1(x)
    mean, var = h.mean(0), h.var(0, unbiased=False)

    def f(v):
        z = (lin1(v) - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
        return lin2(torch.relu(z))

    ref = naive_penalty(f, x)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    assert_close_grads(grads(got, model), grads(ref, model))
    # state untouched: still training, running statistics not updated
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(bn.running_mean, running[0]) and torch.equal(bn.running_var, running[1])
    assert torch.equal(bn.num_batches_tracked, running[2])


def test_training_mode_cnn_matches_eval_with_batch_statistics():
    """Value check through torch's own eval-mode batch-norm: a copy whose running
    statistics are set to the batch's statistics has the same templates."""
    from maxaffine.models import small_cnn

    torch.manual_seed(2)
    model = small_cnn((1, 8, 8), 5, channels=(3, 4)).to(D64).train()
    x = torch.randn(7, 1, 8, 8, dtype=D64)
    got = template_orthogonality(model, x)
    ref_model = copy.deepcopy(model).eval()
    h = x
    for m_train, m_ref in zip(model, ref_model, strict=True):  # batch stats layer by layer
        if isinstance(m_train, nn.BatchNorm2d):
            m_ref.running_mean.copy_(h.mean((0, 2, 3)).detach())
            m_ref.running_var.copy_(h.var((0, 2, 3), unbiased=False).detach())
        with torch.no_grad():
            h = m_ref(h)
    with torch.no_grad():
        torch.testing.assert_close(ref_model(x), model(x))  # same function as training sees
    ref = template_orthogonality(ref_model, x)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_samples_subset_is_the_penalty_of_a_random_subset():
    model = build_mlp(4, [6], 5, nn.ReLU, 0)
    x = torch.randn(10, 4, dtype=D64)
    assert torch.equal(template_orthogonality(model, x, samples=10),
                       template_orthogonality(model, x))
    torch.manual_seed(7)
    got = template_orthogonality(model, x, samples=3)
    torch.manual_seed(7)
    idx = torch.randperm(10)[:3]
    torch.testing.assert_close(got, template_orthogonality(model, x[idx]))
    # per-sample class sets follow their samples
    cls = torch.stack([torch.randperm(5)[:3] for _ in range(10)])
    torch.manual_seed(8)
    got = template_orthogonality(model, x, classes=cls, samples=4)
    torch.manual_seed(8)
    idx = torch.randperm(10)[:4]
    torch.testing.assert_close(got, template_orthogonality(model, x[idx], classes=cls[idx]))


def test_zero_for_linear_model_with_orthogonal_rows():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(7, 4, dtype=D64))
    model = nn.Linear(7, 4).to(D64)
    with torch.no_grad():
        model.weight.copy_(q.T * torch.tensor([0.5, 2.0, 3.0, 1.0], dtype=D64)[:, None])
    x = torch.randn(9, 7, dtype=D64)
    with torch.no_grad():
        assert float(template_orthogonality(model, x)) < 1e-25
        assert float(template_orthogonality(model, x, normalize=True)) < 1e-25
        model.weight[1] += model.weight[0]  # break orthogonality: the penalty sees it
        assert float(template_orthogonality(model, x)) > 1e-2


@given(st.integers(0, 2**16), st.integers(1, 6))
def test_zero_for_relu_network_with_orthogonal_templates_by_construction(seed, n):
    """f = W2 relu(W1 x): W1 orthonormal rows, each class reading its own hidden units.
    A_c[x] = sum_{k in S_c} W2[c, k] 1{z_k > 0} W1[k]: disjoint sets of orthonormal
    rows, hence orthogonal templates on every region."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(8, 6, dtype=D64, generator=g))
    w2 = torch.zeros(3, 6, dtype=D64)
    for c in range(3):
        w2[c, 2 * c:2 * c + 2] = torch.randn(2, dtype=D64, generator=g)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).to(D64)
    with torch.no_grad():
        model[0].weight.copy_(q.T)
        model[2].weight.copy_(w2)
    x = torch.randn(n, 8, dtype=D64, generator=g)
    assert float(template_orthogonality(model, x)) < 1e-25


def test_template_penalty_errors():
    model = build_mlp(3, [4], 4, nn.ReLU, 0)
    x = torch.randn(2, 3, dtype=D64)
    bad = {
        "at least 2": [1],
        "repeat": [1, 1],
        "C=4": [0, 4],
        "non-negative": [-1, 2],
        "integer": torch.tensor([0.0, 1.0]),
        "shape": torch.zeros(3, 2, dtype=torch.long),
    }
    for msg, cls in bad.items():
        with pytest.raises(ma.MaxAffineError, match=msg):
            template_orthogonality(model, x, classes=cls)
    with pytest.raises(ma.MaxAffineError, match="batch"):
        template_orthogonality(model, x[0])
    with pytest.raises(ma.MaxAffineError, match="samples"):
        template_orthogonality(model, x, samples=0)
    with pytest.raises(ma.MaxAffineError, match="Module"):
        template_orthogonality(lambda v: v, x)
    with pytest.raises(ma.MaxAffineError, match="NaN"):
        template_orthogonality(model, x * float("nan"))


# -------------------------------------------------------------- weight penalties


def naive_weight_penalty(w, normalize=False):
    rows = w.flatten(1)
    total = torch.zeros((), dtype=w.dtype)
    for a in range(rows.shape[0]):
        for c in range(rows.shape[0]):
            if a != c:
                ip = rows[a] @ rows[c]
                if normalize:
                    ip = ip / (rows[a].norm() * rows[c].norm())
                total = total + ip**2
    return total


@given(st.integers(1, 6), st.integers(1, 7), st.booleans(), st.integers(0, 2**16))
def test_weight_orthogonality_matches_double_loop(out, fan_in, normalize, seed):
    w = torch.randn(out, fan_in, dtype=D64, generator=torch.Generator().manual_seed(seed))
    w.requires_grad_(True)
    got = weight_orthogonality(w, normalize=normalize)
    ref = naive_weight_penalty(w, normalize)
    torch.testing.assert_close(got, ref)
    if ref.requires_grad:
        torch.testing.assert_close(torch.autograd.grad(got, w)[0], torch.autograd.grad(ref, w)[0])


@given(st.integers(1, 6), st.integers(0, 2**16))
def test_weight_orthogonality_zero_for_orthogonal_weights(k, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(8, k, dtype=D64, generator=g))
    scales = torch.rand(k, 1, dtype=D64, generator=g) * 3 + 0.1
    assert float(weight_orthogonality(q.T * scales)) < 1e-25
    assert float(weight_orthogonality(q.T * scales, normalize=True)) < 1e-25


def test_weight_orthogonality_hand_example():
    # rows (1, 0) and (1, 1): <w_0, w_1> = 1, counted for (0, 1) and (1, 0)
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert float(weight_orthogonality(w)) == 2.0
    assert float(weight_orthogonality(w, normalize=True)) == pytest.approx(1.0)


def test_filter_orthogonality_conv_and_groups():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3).double()
    torch.testing.assert_close(filter_orthogonality(conv),
                               naive_weight_penalty(conv.weight.detach()))
    lin = nn.Linear(6, 4).double()
    torch.testing.assert_close(filter_orthogonality(lin), naive_weight_penalty(lin.weight))
    grouped = nn.Conv1d(4, 6, 2, groups=2).double()
    w = grouped.weight.detach()
    ref = naive_weight_penalty(w[:3]) + naive_weight_penalty(w[3:])
    torch.testing.assert_close(filter_orthogonality(grouped), ref)
    with pytest.raises(ma.MaxAffineError, match="weight_orthogonality"):
        filter_orthogonality(nn.ReLU())
    with pytest.raises(ma.MaxAffineError, match="floating"):
        weight_orthogonality(torch.ones(3))


# ----------------------------------------------------------- hard orthogonality


def _orthonormal_error(layer):
    w = layer.weight
    if isinstance(layer, nn.Conv1d | nn.Conv2d) and layer.groups > 1:
        w = w.reshape(layer.groups, w.shape[0] // layer.groups, -1)
    else:
        w = w.reshape(1, w.shape[0], -1)
    eye = torch.eye(w.shape[1]).expand_as(w @ w.transpose(1, 2))
    return float((w @ w.transpose(1, 2) - eye).abs().max())


@pytest.mark.parametrize("layer, shape", [
    (lambda: nn.Linear(12, 5), (16, 12)),
    (lambda: nn.Linear(6, 6), (16, 6)),
    (lambda: nn.Conv2d(2, 6, 3, padding=1), (16, 2, 5, 5)),
    (lambda: nn.Conv1d(3, 4, 2), (16, 3, 5)),
    (lambda: nn.Conv2d(4, 6, 2, groups=2), (16, 4, 5, 5)),
], ids=["linear", "linear-square", "conv2d", "conv1d", "conv2d-groups"])
def test_hard_orthogonality_survives_training(layer, shape):
    torch.manual_seed(0)
    layer = orthogonal_filters(layer())
    assert _orthonormal_error(layer) < 1e-5
    before = layer.weight.detach().clone()
    x = torch.randn(shape)
    target = torch.randn_like(layer(x))
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(30):
        loss = (layer(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _orthonormal_error(layer) < 1e-5
    assert float((layer.weight - before).abs().max()) > 1e-2  # it did train


def test_hard_orthogonality_in_a_cnn_keeps_spline_view():
    from maxaffine.models import small_cnn

    torch.manual_seed(0)
    net = small_cnn((1, 8, 8), 4, channels=(4, 6))
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            orthogonal_filters(m)
    x = torch.rand(5, 1, 8, 8)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    y = torch.randint(0, 4, (5,))
    for _ in range(5):
        loss = nn.functional.cross_entropy(net(x), y) + 0.1 * template_orthogonality(net, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            assert _orthonormal_error(m) < 1e-5
    net.eval()
    amap = ma.affine_map(net, x)
    torch.testing.assert_close(amap.reconstruct(), net(x), atol=1e-5, rtol=1e-4)


def test_hard_orthogonality_refuses_impossible_and_bad_layers():
    with pytest.raises(ma.MaxAffineError, match="16 filters of dimension 9"):
        orthogonal_filters(nn.Conv2d(1, 16, 3))
    with pytest.raises(ma.MaxAffineError, match="per group"):
        orthogonal_filters(nn.Conv2d(2, 8, 1, groups=2))
    with pytest.raises(ma.MaxAffineError, match="tight frame"):
        orthogonal_filters(nn.Linear(3, 5))
    with pytest.raises(ma.MaxAffineError, match=r"Linear or nn\.Conv"):
        orthogonal_filters(nn.Bilinear(2, 2, 2))
    with pytest.raises(ma.MaxAffineError, match="weight tensor"):
        orthogonal_filters(nn.ReLU())
    lin = orthogonal_filters(nn.Linear(4, 2))
    with pytest.raises(ma.MaxAffineError, match="already parametrized"):
        orthogonal_filters(lin)


# ------------------------------------------------------------ experiment, demo


def test_experiment_runs_and_writes_results(tmp_path):
    from maxaffine.cli import main

    main(["reproduce", "orthogonality", "--dataset", "digits", "--lambdas", "0,1",
          "--seeds", "2", "--epochs", "2", "--channels", "4", "--normalize",
          "--train-size", "400", "--samples", "16", "--out", str(tmp_path)])
    table = json.loads((tmp_path / "orthogonality.json").read_text())
    assert [r[0] for r in table["rows"]] == ["0", "1"]
    assert "within noise" in table["notes"] or "beyond" in table["notes"]
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert len(runs) == 4 and all(0 <= r["mean_abs_cos"] <= 1 for r in runs)
    cos = {lam: sum(r["mean_abs_cos"] for r in runs if r["lambda"] == lam) for lam in (0, 1)}
    assert cos[1] < cos[0]  # the penalty does what it says on the templates
    for name in ("templates_lambda0", "templates_lambda1", "cosines"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    md = (tmp_path / "orthogonality.md").read_text()
    assert "maxaffine reproduce orthogonality" in md or "Command:" in md


def test_experiment_rejects_bad_lambdas():
    from maxaffine.experiments.orthogonality import _floats

    with pytest.raises(argparse.ArgumentTypeError):
        _floats("0,-1")
    with pytest.raises(argparse.ArgumentTypeError):
        _floats("a")


def test_demo_section(tmp_path):
    from maxaffine.datasets import load_dataset
    from maxaffine.demo import DemoContext
    from maxaffine.experiments.orthogonality import demo_section
    from maxaffine.models import small_cnn
    from maxaffine.training import fit

    data = load_dataset("digits")
    cnn = small_cnn(data.input_shape, data.num_classes, channels=(4,))
    hist = {"cnn": fit(cnn, data, epochs=1, progress=False)}
    ctx = DemoContext(tmp_path, data, cnn, cnn, hist, quick=True)
    section = demo_section(ctx)
    assert "template_cosines" in section.markdown
    assert (tmp_path / "template_cosines.png").exists()

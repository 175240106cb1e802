"""Per-input affine maps: ``A[x] x + B[x] = f(x)``, templates = Jacobians, and the
non-trivial half of the claim: the same ``(A[x], B[x])`` is f on x's whole region."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import Tensor, nn

import maxaffine as ma
from maxaffine.affine import jacobian
from maxaffine.models import small_cnn
from strategies import INPUT_KINDS, architectures, boundary_distance

DT = torch.float64


def per_sample_jacrev(model: nn.Module, x: Tensor) -> Tensor:
    """Independent reference: torch.func.jacrev of the untraced model, one sample at a
    time (no vmap, whose batching rules are not under test)."""
    return torch.stack([torch.func.jacrev(lambda v: model(v[None])[0].reshape(-1))(xi)
                        for xi in x])


def scale_of(amap: ma.AffineMap, x: Tensor) -> float:
    """Magnitude of the terms of A x + B: the tolerance scale of the reconstruction."""
    terms = torch.einsum("ncd,nd->nc", amap.A.flatten(2).abs(), x.flatten(1).abs())
    return 1.0 + float(terms.max()) + float(amap.B.abs().max())


@pytest.mark.parametrize("kind", INPUT_KINDS)
@given(data=st.data())
def test_reconstruction_and_templates_on_random_architectures(kind: str, data: st.DataObject):
    arch = data.draw(architectures(kind))
    x = arch.sample(4, data.draw(st.integers(0, 999)), data.draw(st.sampled_from([0.3, 3.0])))
    amap = ma.affine_map(arch.model, x)
    f = arch.model(x).reshape(4, -1)
    assert amap.A.shape == (4, f.shape[1], *arch.input_shape) and amap.B.shape == f.shape
    err = float((amap.reconstruct() - f).abs().max())
    assert err < 1e-9 * scale_of(amap, x)
    torch.testing.assert_close(amap.output, f, rtol=0, atol=1e-12)
    jac = per_sample_jacrev(arch.model, x)
    torch.testing.assert_close(amap.A.reshape(jac.shape), jac, rtol=1e-10, atol=1e-10)
    for c in range(f.shape[1]):
        torch.testing.assert_close(amap.templates(c), amap.A[:, c])


@pytest.mark.parametrize("kind", INPUT_KINDS)
@given(data=st.data())
def test_frozen_graph_is_the_regions_affine_map_everywhere(kind: str, data: st.DataObject):
    """graph.evaluate(x2, codes=codes(x)) = A[x] x2 + B[x] for ANY x2, and f itself
    equals that map on x's region (perturbations inside the boundary distance)."""
    arch = data.draw(architectures(kind))
    x = arch.sample(3, data.draw(st.integers(0, 999)))
    graph = ma.trace(arch.model, x)
    amap = ma.affine_map(graph, x)
    found = graph.evaluate(x).codes
    x2 = arch.sample(3, 12345, scale=5.0)
    frozen = graph.evaluate(x2, codes=found).output.reshape(3, -1)
    torch.testing.assert_close(frozen, amap.reconstruct(x2), rtol=1e-10, atol=1e-10)

    dist, _, _ = boundary_distance(graph, x, found)
    assume(bool((dist > 1e-7).all()))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 999)))
    for frac in (0.5, 0.99):
        u = torch.randn(x.shape, generator=gen, dtype=DT)
        u = u / u.flatten(1).norm(dim=1).reshape(-1, *[1] * (x.dim() - 1))
        step = (frac * dist.clamp(max=10.0)).reshape(-1, *[1] * (x.dim() - 1))
        y = x + step * u
        f_y = arch.model(y).reshape(3, -1)
        torch.testing.assert_close(amap.reconstruct(y), f_y, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(ma.affine_map(graph, y).A, amap.A, rtol=1e-9, atol=1e-9)


class Absolute(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.abs()


def test_templates_at_ties_follow_the_code_convention():
    """Integer weights and inputs tie many units (z = 0, equal max-pool entries); the
    map must still be the Jacobian of the frozen graph, i.e. of the pieces the codes
    select, whichever way affine_map evaluates the unfrozen network."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 3, 2, padding=1), nn.LeakyReLU(0.25), nn.MaxPool2d(2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(12, 6), nn.Hardtanh(-2.0, 2.0),
                        nn.Linear(6, 4), Absolute()).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randint(-1, 2, p.shape))
    x = torch.randint(-1, 2, (6, 1, 4, 4)).double()
    graph = ma.trace(net, x)
    found = graph.evaluate(x).codes
    zs = graph.evaluate(x, record=True).inputs
    assert sum(int((z[0] == 0).sum()) for name, z in zs.items() if name != "2") > 10
    for mode in ("forward", "reverse"):
        amap = ma.affine_map(graph, x, mode=mode)
        frozen = torch.stack([torch.func.jacrev(
            lambda v, i=i: graph.evaluate(v[None], codes={k: c[i : i + 1] for k, c in
                                                          found.items()}).output[0])(x[i])
            for i in range(6)])
        torch.testing.assert_close(amap.A, frozen, rtol=0, atol=0)
        torch.testing.assert_close(amap.reconstruct(), net(x), rtol=0, atol=1e-12)


def test_region_map_is_not_the_map_of_a_neighbouring_region():
    """Crossing a ReLU's breakpoint changes the map: the test above can fail."""
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU()).double()
    with torch.no_grad():
        net[0].weight.fill_(2.0)
        net[0].bias.fill_(-1.0)  # breakpoint at x = 0.5
    x = torch.tensor([[0.4]], dtype=DT)
    amap = ma.affine_map(net, x)
    assert float(amap.A) == 0.0 and float(amap.B) == 0.0
    y = torch.tensor([[0.7]], dtype=DT)
    assert float(net(y)) == pytest.approx(0.4) and float(amap.reconstruct(y)) == 0.0


# ------------------------------------------------------------------------- modes


@pytest.mark.parametrize("shape,outputs", [((3,), 5), ((6,), 2), ((1, 4, 4), 3)])
def test_forward_reverse_and_chunks_agree(shape: tuple[int, ...], outputs: int):
    torch.manual_seed(0)
    d = torch.Size(shape).numel()
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 7), nn.LeakyReLU(0.1), nn.Linear(7, 7),
                        nn.Hardtanh(), nn.Linear(7, outputs)).double()
    x = torch.randn(5, *shape, dtype=DT)
    graph = ma.trace(net, x)
    auto = ma.affine_map(graph, x)
    assert auto.mode == ("forward" if d < outputs else "reverse")
    for mode in ("forward", "reverse"):
        for chunk in (None, 1, 2):
            other = ma.affine_map(graph, x, mode=mode, products_per_pass=chunk)
            assert other.mode == mode
            torch.testing.assert_close(other.A, auto.A, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(other.B, auto.B, rtol=1e-12, atol=1e-12)


def test_jacobian_of_a_plain_function():
    x = torch.randn(4, 3, dtype=DT)
    w = torch.randn(3, 2, dtype=DT)
    for mode in ("forward", "reverse", "auto"):
        jac, out, _ = jacobian(lambda v: torch.tanh(v) @ w, x, mode=mode)
        torch.testing.assert_close(out, torch.tanh(x) @ w)
        expected = (1 - torch.tanh(x) ** 2).unsqueeze(1) * w.T.unsqueeze(0)
        torch.testing.assert_close(jac, expected)


def test_output_axes_are_flattened():
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Unflatten(1, (2, 3))).double()
    x = torch.randn(4, 3, dtype=DT)
    amap = ma.affine_map(net, x)
    assert amap.A.shape == (4, 6, 3) and amap.B.shape == (4, 6)
    torch.testing.assert_close(amap.reconstruct(), net(x).reshape(4, 6))


def test_exact_false_is_the_labelled_local_linearization():
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    x = torch.randn(5, 3, dtype=DT)
    with pytest.raises(ma.UnsupportedOperation, match="Tanh"):
        ma.affine_map(net, x)
    lin = ma.affine_map(net, x, exact=False)
    assert lin.exact is False and json.loads(lin.to_json())["exact"] is False
    torch.testing.assert_close(lin.A, per_sample_jacrev(net, x).reshape(lin.A.shape))
    torch.testing.assert_close(lin.reconstruct(), net(x))  # exact at x by construction


def test_float32_cnn_reconstruction():
    torch.manual_seed(0)
    net = small_cnn((1, 12, 12), 10, channels=(4, 8)).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(6, 1, 12, 12)
    amap = ma.affine_map(net, x)
    f = net(x)
    assert float((amap.reconstruct() - f).abs().max()) < 1e-4 * scale_of(amap, x)
    ref = per_sample_jacrev(net.double(), x.double())
    torch.testing.assert_close(amap.A.double().reshape(ref.shape), ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ gradients


def test_affine_map_is_differentiable_in_the_parameters():
    """Double back-prop: d/dtheta of a loss on the templates and offsets equals a
    reference built from torch.func.jacrev of the functional model."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 6), nn.LeakyReLU(0.3),
                        nn.Linear(6, 2)).double()
    x = torch.randn(5, 3, dtype=DT)
    params = dict(net.named_parameters())

    def loss_ref(p: dict[str, Tensor]) -> Tensor:
        def f(v: Tensor) -> Tensor:
            return torch.func.functional_call(net, p, (v[None],))[0]
        jac = torch.stack([torch.func.jacrev(f)(xi) for xi in x])
        offsets = torch.func.functional_call(net, p, (x,)) - torch.einsum("ncd,nd->nc", jac, x)
        return (jac[:, 0] * jac[:, 1]).sum() ** 2 + (offsets**2).sum()

    expected = torch.func.grad(loss_ref)(params)
    for mode in ("forward", "reverse"):
        amap = ma.affine_map(net, x, mode=mode)
        loss = (amap.A[:, 0] * amap.A[:, 1]).sum() ** 2 + (amap.B**2).sum()
        grads = torch.autograd.grad(loss, list(params.values()), materialize_grads=True)
        for (name, ref), got in zip(expected.items(), grads, strict=True):
            torch.testing.assert_close(got, ref, msg=name)


def test_no_grad_gives_detached_maps():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=DT)
    with torch.no_grad():
        amap = ma.affine_map(net, x)
    assert not amap.A.requires_grad and not amap.B.requires_grad
    torch.testing.assert_close(amap.A, ma.affine_map(net, x).A.detach())


# -------------------------------------------------------------------- the object


def test_templates_selection():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.randn(5, 4, dtype=DT)
    amap = ma.affine_map(net, x)
    pred = net(x).argmax(1)
    torch.testing.assert_close(amap.templates(), amap.A[torch.arange(5), pred])
    labels = torch.tensor([0, 2, 1, 1, 0])
    torch.testing.assert_close(amap.templates(labels), amap.A[torch.arange(5), labels])
    torch.testing.assert_close(amap.templates(-1), amap.A[:, 2])
    # matched filter: <A_c[x], x> + B_c[x] = f_c(x)
    torch.testing.assert_close((amap.templates(1) * x).sum(1) + amap.B[:, 1], net(x)[:, 1])
    with pytest.raises(ma.MaxAffineError, match="out of range"):
        amap.templates(3)
    with pytest.raises(ma.MaxAffineError, match="shape"):
        amap.templates(torch.tensor([0, 1]))
    with pytest.raises(ma.MaxAffineError, match="shape"):
        amap.reconstruct(x[:2])


def test_save_and_to_json(tmp_path):
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    x = torch.randn(3, 2, dtype=DT)
    amap = ma.affine_map(net, x)
    info = json.loads(amap.to_json())
    assert info["A_shape"] == [3, 2, 2] and info["exact"] is True
    torch.testing.assert_close(torch.tensor(info["B"], dtype=DT), amap.B.detach())
    amap.save(tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt")
    torch.testing.assert_close(loaded["A"], amap.A.detach())

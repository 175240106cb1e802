"""Power diagrams: the argmin over all codes of the power distance is the VQ code,
in the layer-input space and in input space (both computed directly and composed
with the DESIGN formula from the region's affine map), on random architectures;
hand-worked ReLU layers; slices of a power diagram."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import maxaffine as ma
from maxaffine.affine import jacobian
from maxaffine.power import PowerDiagram, face_centroids, layer_pieces
from strategies import architectures

matplotlib.use("Agg")
DT = torch.float64
FEW = max(10, settings.default.max_examples * 20 // 25)  # fewer examples than the profile
MAX_CELLS = 4096


def code_index(pd: PowerDiagram, code: Tensor) -> int:
    hit = torch.nonzero((pd.codes == code.flatten().long()).all(1)).flatten()
    assert hit.numel() == 1, "the code is not (exactly once) among the enumerated cells"
    return int(hit[0])


def assert_code_is_argmin(pd: PowerDiagram, point: Tensor, code: Tensor) -> None:
    """The code's cell attains the minimum power distance; another cell may only tie
    (structural ties, e.g. two max-pool entries that are both exactly 0)."""
    power = pd.power(point.reshape(1, -1))[0]
    own = power[code_index(pd, code)]
    scale = 1.0 + float(power.abs().max())
    assert float(own - power.min()) <= 1e-9 * scale
    best = int(power.argmin())
    if not torch.equal(pd.codes[best], code.flatten().long()):
        assert float(own - power[best]) <= 1e-9 * scale  # a tie, not a wrong cell


def num_codes(B: Tensor) -> int:
    return math.prod(int(torch.isfinite(B[k]).sum()) for k in range(B.shape[0]))


@settings(max_examples=FEW)
@given(arch=architectures("flat"), seed=st.integers(0, 999))
def test_argmin_of_power_distance_is_the_code_in_both_spaces(arch, seed: int):
    x = arch.sample(3, seed)
    graph = ma.trace(arch.model, x)
    assume(graph.layers)
    found = graph.evaluate(x).codes
    for index, layer in enumerate(graph.layers):
        A, B = layer_pieces(graph, x, layer=index, input_space=True)
        assume(num_codes(B[0]) <= MAX_CELLS)
        cells = ma.power_cells(graph, x, layer=index, input_space=True)
        for n in range(3):
            pd = ma.power_diagram((A[n], B[n]))
            assert_code_is_argmin(pd, x[n], found[layer.name][n])
            i = code_index(pd, found[layer.name][n])  # the direct formula's cell
            torch.testing.assert_close(cells.mu[n].flatten(), pd.mu[i])
            torch.testing.assert_close(cells.rad[n], pd.rad[i])
        try:
            A_h, B_h = layer_pieces(graph, x, layer=index)
        except ma.MaxAffineError as err:  # a skip connection feeds the pre-activation
            assert "input_space=True" in str(err) and index > 0
            continue
        cells_h = ma.power_cells(graph, x, layer=index)
        for n in range(3):
            pd = ma.power_diagram((A_h[n], B_h[n]))
            assert_code_is_argmin(pd, cells_h.points[n], found[layer.name][n])
            i = code_index(pd, found[layer.name][n])
            torch.testing.assert_close(cells_h.mu[n].flatten(), pd.mu[i])
            torch.testing.assert_close(cells_h.rad[n], pd.rad[i])
        if index > 0:
            check_composition(graph, index, x, found, A_h, B_h, cells)


def check_composition(graph, index: int, x: Tensor, found: dict, A_h: Tensor, B_h: Tensor,
                      cells) -> None:
    """DESIGN section 1: with the layer input h = A_w x + B_w on x's region,
    mu_w = A_w^T mu and rad_w = ||mu_w||^2 + 2 sum_k (B[k, r_k] + <A[k, r_k], B_w>);
    enumerated over all codes r, the argmin at x is the code."""
    prev = graph.layers[index - 1]
    frozen = {u.name: found[u.name] for u in graph.layers[:index]}

    def layer_input(v: Tensor) -> Tensor:  # output of the previous unit, codes frozen
        ins = graph._run(v, frozen, True, until=prev.name).inputs[prev.name]
        return prev.rule.piece(frozen[prev.name], *ins).flatten(1)

    A_w, h, _ = jacobian(layer_input, x, mode="forward")
    A_w, h = A_w.flatten(2).detach(), h.detach()  # (N, Dh, D), (N, Dh)
    B_w = h - torch.einsum("nhd,nd->nh", A_w, x.flatten(1))
    layer = graph.layers[index]
    for n in range(x.shape[0]):
        pd = ma.power_diagram((A_h[n], B_h[n]))
        offsets = (pd.rad - pd.mu.pow(2).sum(1)) / 2  # sum_k B[k, r_k]
        mu_w = pd.mu @ A_w[n]  # (M, D) = (A_w^T mu)^T
        rad_w = mu_w.pow(2).sum(1) + 2 * (offsets + pd.mu @ B_w[n])
        composed = PowerDiagram(pd.codes, mu_w, rad_w)
        assert_code_is_argmin(composed, x[n], found[layer.name][n])
        i = code_index(pd, found[layer.name][n])
        torch.testing.assert_close(mu_w[i], cells.mu[n].flatten())
        torch.testing.assert_close(rad_w[i], cells.rad[n])


@pytest.mark.parametrize("kind", ["image", "seq"])
@given(data=st.data())
def test_power_cells_of_convolutional_layers(kind: str, data: st.DataObject):
    """Conv nets: the region's own cell (direct formula, one backward pass) equals
    the enumerated pieces' cell, and nothing else has a smaller power distance
    (checked against every single-unit change of code)."""
    arch = data.draw(architectures(kind, max_blocks=2))
    x = arch.sample(2, data.draw(st.integers(0, 999)))
    graph = ma.trace(arch.model, x)
    assume(graph.layers)
    found = graph.evaluate(x).codes
    for index, layer in enumerate(graph.layers):
        for space in (True, False):
            try:
                A, B = layer_pieces(graph, x, layer=index, input_space=space)
            except ma.MaxAffineError:
                assert not space
                continue
            cells = ma.power_cells(graph, x, layer=index, input_space=space)
            for n in range(2):
                a, b = A[n].flatten(2), B[n]
                code = found[layer.name][n].flatten().long()
                k = torch.arange(a.shape[0])
                mu = a[k, code].sum(0)
                rad = mu.pow(2).sum() + 2 * b[k, code].sum()
                torch.testing.assert_close(cells.mu[n].flatten(), mu)
                torch.testing.assert_close(cells.rad[n], rad)
                # no unit switching to another piece lowers the power distance (the
                # distance is a constant minus 2 sum_k P_k(r_k): this is the argmin)
                h = cells.points[n].flatten()
                own = (h - mu).pow(2).sum() - rad
                new_mu = mu + a - a[k, code].unsqueeze(1)  # (K, R, D): unit k -> piece r
                new_off = b[k, code].sum() + b - b[k, code].unsqueeze(1)
                new = (h - new_mu).pow(2).sum(-1) - new_mu.pow(2).sum(-1) - 2 * new_off
                new = torch.where(torch.isfinite(b), new, math.inf)
                assert float(own - new.min()) <= 1e-9 * (1 + float(own.abs()))


def test_relu_layer_by_hand():
    """ReLU pieces: A[k,0] = 0, B[k,0] = 0, A[k,1] = w_k, B[k,1] = b_k, so
    mu[r] = sum_k r_k w_k and rad[r] = ||mu[r]||^2 + 2 sum_k r_k b_k."""
    gen = torch.Generator().manual_seed(3)
    lin = nn.Linear(3, 5).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(5, 3, generator=gen, dtype=DT))
        lin.bias.copy_(torch.randn(5, generator=gen, dtype=DT))
    pd = ma.power_diagram(nn.Sequential(lin, nn.ReLU()))
    assert pd.num_cells == 32
    r = pd.codes.to(DT)
    mu = r @ lin.weight.detach()
    torch.testing.assert_close(pd.mu, mu)
    torch.testing.assert_close(pd.rad, mu.pow(2).sum(1) + 2 * r @ lin.bias.detach())
    x = torch.randn(500, 3, generator=gen, dtype=DT) * 3
    with torch.no_grad():
        expected = (lin(x) > 0).long()
    assert torch.equal(pd.assign(x), expected)


def test_pieces_of_each_nonlinearity_by_hand():
    """leaky ReLU (a z, z); a leaky slope above 1 and Hardtanh use the selection
    pieces; max-pool the window entries; maximum (a, b) and minimum (-a, -b)."""
    z = torch.tensor([[-2.0, 0.5]], dtype=DT)
    eye = nn.Linear(2, 2).double()
    with torch.no_grad():
        eye.weight.copy_(torch.eye(2, dtype=DT))
        eye.bias.zero_()
    A, B = layer_pieces(nn.Sequential(eye, nn.LeakyReLU(0.2)), z, layer=0)
    torch.testing.assert_close(A[0, 0], torch.tensor([[0.2, 0.0], [1.0, 0.0]], dtype=DT))
    A, _ = layer_pieces(nn.Sequential(eye, nn.LeakyReLU(3.0)), z, layer=0)
    torch.testing.assert_close(A[0, 1], torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=DT))
    A, B = layer_pieces(nn.Sequential(eye, nn.Hardtanh(-1.0, 2.0)), z, layer=0)
    # P = (0, z + 1, 2 z - 1): slopes (0, 1, 2), offsets (0, 1, -1)
    torch.testing.assert_close(A[0, 0, :, 0], torch.tensor([0.0, 1.0, 2.0], dtype=DT))
    torch.testing.assert_close(B[0, 0], torch.tensor([0.0, 1.0, -1.0], dtype=DT))
    A, B = layer_pieces(nn.Sequential(eye, nn.ReLU6()), z, layer=0)
    torch.testing.assert_close(B[0, 1], torch.tensor([0.0, 0.0, -6.0], dtype=DT))
    clamp = layer_pieces(_Clamp(), z, layer=0)[1]
    assert bool(torch.isneginf(clamp[0, :, 2]).all())  # clamp(min=0): no upper piece
    pool = nn.Sequential(nn.Unflatten(1, (1, 4)), nn.MaxPool1d(2, padding=1))
    A, B = layer_pieces(pool, torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=DT), layer=0)
    assert A.shape == (1, 3, 2, 4)
    assert bool(torch.isneginf(B[0, 0, 0])) and bool(torch.isneginf(B[0, 2, 1]))
    torch.testing.assert_close(A[0, 1, 1], torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=DT))
    A, _ = layer_pieces(_Pair(torch.minimum), z, layer=0)  # min(x, -x): pieces (-x, x)
    torch.testing.assert_close(A[0, 0], torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=DT))


class _Clamp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, min=0.0)


class _Pair(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x, -x)


def test_slice_of_a_power_diagram():
    """One ReLU layer on a 2-D input: the partition of a slice (non-orthonormal
    basis) is the power diagram, so the projected centroids and slice radii put
    every face's interior in its own cell."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT))
    sl = ma.Slice(torch.tensor([0.3, -0.2], dtype=DT), torch.tensor([1.0, 0.5], dtype=DT),
                  torch.tensor([-0.2, 0.8], dtype=DT),
                  torch.tensor([[-2.0, -2.0], [2.0, -2.0], [2.0, 2.0], [-2.0, 2.0]]))
    part = ma.partition_plane(net, sl, progress=False)
    assert part.num_regions > 5
    c, rad = face_centroids(part)
    basis = torch.stack([sl.u, sl.v], 1)
    gram = basis.T @ basis
    diff = part.interior.unsqueeze(1) - c.unsqueeze(0)  # (F, F, 2)
    power = torch.einsum("abi,ij,abj->ab", diff, gram, diff) - rad.unsqueeze(0)
    assert torch.equal(power.argmin(1), torch.arange(part.num_regions))
    # the slice power distance is the input-space one
    cells = ma.power_cells(part.graph, sl.to_input(part.interior), layer=0, input_space=True)
    own = torch.einsum("fi,ij,fj->f", part.interior - c, gram, part.interior - c) - rad
    torch.testing.assert_close(own, cells.power())
    ax = part.plot(centroids=face_centroids(part)[0])
    assert len(ax.collections) >= 3
    import matplotlib.pyplot as plt

    plt.close("all")


def test_power_diagram_of_the_demo_cnn_layers():
    from maxaffine.models import small_cnn

    torch.manual_seed(0)
    cnn = small_cnn((1, 12, 12), channels=(4, 8)).eval()
    x = torch.rand(3, 1, 12, 12)
    names = ma.codes(cnn, x).names
    shapes = [(1, 12, 12), (4, 12, 12), (4, 6, 6), (8, 6, 6)]
    for name, shape in zip(names, shapes, strict=True):
        cells = ma.power_cells(cnn, x, layer=name)
        assert cells.mu.shape == (3, *shape) and cells.rad.shape == (3,)
        assert ma.power_cells(cnn, x, layer=name, input_space=True).mu.shape == x.shape


def test_errors_name_the_culprit():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU())
    x = torch.randn(2, 2)
    with pytest.raises(ma.MaxAffineError, match="out of range"):
        ma.power_cells(net, x, layer=5)
    with pytest.raises(ma.MaxAffineError, match=r"no layer 'nope': the layers are"):
        ma.power_cells(net, x, layer="nope")
    with pytest.raises(ma.MaxAffineError, match="one nonlinearity"):
        ma.power_diagram(net)
    with pytest.raises(ma.MaxAffineError, match="max_cells"):
        ma.power_diagram(nn.Sequential(nn.Linear(2, 20), nn.ReLU()))
    with pytest.raises(ma.MaxAffineError, match=r"\(K, R, D\)"):
        ma.power_diagram((torch.zeros(3, 2), torch.zeros(3, 2)))
    with pytest.raises(ma.MaxAffineError, match="input_shape"):
        ma.power_diagram(nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU()))

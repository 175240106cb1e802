"""maxaffine.conservation: rescaling-invariance quantities stay put under gradient
descent while the weights move; Lie-algebra counts match the known laws."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maxaffine.conservation import (
    conserved_quantities,
    conserved_quantity_names,
    number_of_conservation_laws,
)
from maxaffine.errors import MaxAffineError, MaxAffineTypeError


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 2))


def _conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 5, 3, padding=1), nn.LeakyReLU(0.1), nn.AvgPool2d(1),
                         nn.Flatten(), nn.Linear(5 * 9, 6), nn.PReLU(), nn.Linear(6, 2))


def _incoming(model: nn.Module) -> torch.Tensor:
    """||w_j||^2 + b_j^2 alone: not conserved."""
    return torch.cat([m.weight.reshape(m.weight.shape[0], -1).pow(2).sum(1) + m.bias.pow(2)
                      for m in model if isinstance(m, nn.Linear | nn.Conv2d)][:-1])


@pytest.mark.parametrize("make, shape", [(_mlp, (64, 4)), (_conv, (32, 1, 8, 8))])
def test_quantities_are_conserved_by_gradient_descent(make, shape):
    torch.manual_seed(0)
    model = make().double()
    x = torch.randn(*shape, dtype=torch.float64)
    y = 3 * torch.randn(shape[0], 2, dtype=torch.float64)
    q0, in0 = conserved_quantities(model).detach(), _incoming(model).detach()
    w0 = torch.cat([p.detach().flatten() for p in model.parameters()])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for _ in range(1000):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    w1 = torch.cat([p.detach().flatten() for p in model.parameters()])
    spread = q0.max() - q0.min()
    drift = ((conserved_quantities(model).detach() - q0).abs().max() / spread).item()
    moved = ((w1 - w0).norm() / w0.norm()).item()
    not_conserved = ((_incoming(model).detach() - in0).abs().max() / spread).item()
    assert q0.shape == (len(conserved_quantity_names(model)),)
    assert drift < 0.01
    assert moved > 10 * drift
    assert not_conserved > 10 * drift


def test_names_and_flatten_blocks():
    model = _conv()
    names = conserved_quantity_names(model)
    assert names[:4] == ["0[0]", "0[1]", "0[2]", "0[3]"] and names[-1] == "7[5]"
    q = conserved_quantities(model)
    w_out = model[7].weight.reshape(6, 5, 9)
    expected = model[3].weight[1].pow(2).sum() + model[3].bias[1] ** 2 - w_out[:, 1].pow(2).sum()
    torch.testing.assert_close(q[4 + 1], expected)
    assert conserved_quantities(nn.Linear(3, 2)).shape == (0,)


@pytest.mark.parametrize("n, m, r", [(2, 2, 1), (3, 2, 2), (2, 3, 3), (3, 3, 2)])
def test_number_of_conservation_laws(n, m, r):
    linear = nn.Sequential(nn.Linear(m, r, bias=False), nn.Linear(r, n, bias=False))
    relu = nn.Sequential(nn.Linear(m, r, bias=False), nn.ReLU(), nn.Linear(r, n, bias=False))
    assert number_of_conservation_laws(linear) == r * (r + 1) // 2
    assert number_of_conservation_laws(relu) == r


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.lin(x)


def test_bad_input():
    with pytest.raises(MaxAffineError, match="no parameters"):
        conserved_quantities(nn.Sequential(nn.ReLU(), nn.Flatten()))
    with pytest.raises(MaxAffineTypeError):
        conserved_quantities("mlp")
    with pytest.raises(MaxAffineError, match=r"1 \(Sigmoid\)"):
        conserved_quantities(nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2)))
    with pytest.raises(MaxAffineError, match=r"1 \(_Residual\)"):
        conserved_quantities(nn.Sequential(nn.Linear(4, 4), _Residual(), nn.Linear(4, 2)))
    with pytest.raises(MaxAffineError, match=r"1 \(BatchNorm1d in train mode\)"):
        conserved_quantities(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))
    # a non-homogeneous head after the last affine layer is fine
    assert conserved_quantities(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2),
                                              nn.Sigmoid())).shape == (3,)
    with pytest.raises(MaxAffineError, match="two-layer"):
        number_of_conservation_laws(_mlp())
    with pytest.raises(MaxAffineError, match="bias"):
        number_of_conservation_laws(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))


def test_nan_parameters_are_refused() -> None:
    import math

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        net[2].weight[0, 1] = math.nan
    with pytest.raises(MaxAffineError, match="non-finite"):
        conserved_quantities(net)

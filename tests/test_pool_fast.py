"""The compiled float64 window maximum of plane partitions' vertex passes (many
samples, no autograd) against torch's native max-pooling."""

import math

import pytest
import torch
from torch import nn

import maxaffine as ma

CASES = [
    (nn.MaxPool2d(2), (170, 8, 28, 28)),
    (nn.MaxPool2d(3, 2, 1), (300, 4, 31, 29)),
    (nn.MaxPool2d(3, 2, 1, ceil_mode=True), (300, 4, 30, 30)),
    (nn.MaxPool2d((2, 3), (1, 2), (1, 0), dilation=(2, 1)), (540, 3, 25, 26)),
    (nn.MaxPool1d(3, 2, 1), (400, 8, 341)),
]


def _rule(module, shape):
    graph = ma.trace(nn.Sequential(module).double(), torch.zeros((1, *shape[1:]),
                                                                 dtype=torch.float64))
    return next(st.rule for st in graph._steps if st.kind == "nonlinearity")


@pytest.mark.parametrize("module,shape", CASES)
def test_compiled_max_pool_equals_native(module, shape, monkeypatch):
    from maxaffine.partition import kernels
    from maxaffine.partition.values import _window_max

    calls = []
    real = kernels.window_max
    monkeypatch.setattr(kernels, "window_max", lambda *a: calls.append(1) or real(*a))
    assert math.prod(shape) >= 1 << 16  # large enough for the compiled path
    rule = _rule(module, shape)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x[x > 1.0] = 0.0  # ties (first entry wins) ...
    x[x < -1.0] = -0.0  # ... and signed zeros
    x.view(-1)[::997] = math.nan  # NaN propagates
    x.view(-1)[5::1009] = -math.inf
    with torch.no_grad():
        fast, native = _window_max(rule, (x,), {}), module(x)
    assert calls and fast.shape == native.shape
    same = (fast == native) | (fast.isnan() & native.isnan())
    assert bool(same.all())
    assert torch.equal(torch.signbit(fast), torch.signbit(native))
    # with autograd, or for few samples, the rule's own (native) op is used
    xg = x.clone().requires_grad_(True)
    assert _window_max(rule, (xg,), {}) is None and rule.forward(xg).grad_fn is not None
    assert _window_max(rule, (x[:1, ..., :2],), {}) is None

"""Clear errors (MaxAffineError / UnsupportedOperation, both ValueErrors) that name
their culprit, for every kind of bad model or input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import maxaffine as ma
from maxaffine.models import mlp, small_cnn


def test_error_classes():
    assert issubclass(ma.MaxAffineError, ValueError)
    assert issubclass(ma.UnsupportedOperation, ma.MaxAffineError)


class Smooth(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(3, 4), nn.GELU())
        self.norm = nn.LayerNorm(4)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.inner(x))
        return torch.tanh(self.norm(h)).softmax(-1)


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Smooth()

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


def test_unsupported_ops_are_all_reported_with_their_paths():
    with pytest.raises(ma.UnsupportedOperation) as info:
        ma.trace(Outer(), torch.randn(2, 3))
    err = info.value
    assert len(err.problems) == 5
    text = str(err)
    for culprit in ("block.inner.1 (GELU)", "block.silu (F.silu)", "block.norm (LayerNorm)",
                    "block.tanh (torch.tanh)", "block.softmax (Tensor.softmax)"):
        assert culprit in text, culprit
    assert "5 operation(s)" in text and "supported_ops()" in text


def test_products_reductions_and_tensor_bounds():
    class Bad(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            a = x * x
            b = torch.max(x, dim=1).values.unsqueeze(1)
            c = torch.clamp(x, min=x[:, :1])
            d = 1.0 / x
            return a + b + c + d

    with pytest.raises(ma.UnsupportedOperation) as info:
        ma.trace(Bad(), torch.randn(2, 3))
    text = str(info.value)
    assert len(info.value.problems) == 3  # torch.max(x, dim) is traced (as amax), not refused
    assert "both factors depend on the input" in text
    assert "clamp (torch.clamp): parameter argument(s) ['min'] depend on the input" in text
    assert "truediv (truediv): argument(s) [1] depend on the input" in text


def test_batchnorm_in_training_mode():
    net = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.BatchNorm1d(4)), nn.ReLU())
    before = net[1][0].running_mean.clone()
    with pytest.raises(ma.UnsupportedOperation, match=r"1\.0 \(BatchNorm1d\).*model\.eval\(\)"):
        ma.trace(net, torch.randn(5, 3))
    assert torch.equal(net[1][0].running_mean, before)  # the failed trace changed nothing
    with pytest.raises(ma.UnsupportedOperation, match="training mode"):
        ma.trace(net, torch.randn(1, 3))  # even where torch itself would refuse the batch
    graph = ma.trace(net.eval(), torch.randn(5, 3))
    net.train()  # a graph traced in eval mode refuses to run once the model trains
    with pytest.raises(ma.UnsupportedOperation, match="BatchNorm1d is in training mode"):
        ma.affine_map(graph, torch.randn(5, 3))
    with pytest.raises(ma.UnsupportedOperation, match="track_running_stats"):
        ma.trace(nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)).eval(),
                 torch.randn(4, 3))


def test_functional_batchnorm_with_batch_statistics():
    class FBN(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return F.batch_norm(x, None, None, training=True)

    with pytest.raises(ma.UnsupportedOperation, match="training=True"):
        ma.trace(FBN(), torch.randn(4, 3))


def test_dropout_in_training_mode():
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5))
    with pytest.raises(ma.UnsupportedOperation, match=r"1 \(Dropout\).*model\.eval\(\)"):
        ma.trace(net, torch.randn(2, 3))

    class FDrop(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return F.dropout(x, 0.5)  # training defaults to True

    with pytest.raises(ma.UnsupportedOperation, match=r"dropout \(F\.dropout\).*training"):
        ma.trace(FDrop(), torch.randn(2, 3))
    ma.trace(net.eval(), torch.randn(2, 3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_inputs(bad: float):
    net = mlp(3, (4,), 2).eval()
    x = torch.randn(4, 3)
    x[2, 1] = bad
    for call in (lambda: ma.trace(net, x), lambda: ma.affine_map(net, x),
                 lambda: ma.codes(net, x), lambda: ma.trace(net, x[:1]).evaluate(x)):
        with pytest.raises(ma.MaxAffineError, match=r"NaN|infinite"):
            call()


def test_wrong_input_shapes():
    net = mlp(3, (4,), 2).eval()
    graph = ma.trace(net, torch.randn(2, 3))
    with pytest.raises(ma.MaxAffineError, match=r"shape \(2, 4\).*\(N, 3\)"):
        ma.affine_map(graph, torch.randn(2, 4))
    with pytest.raises(ma.MaxAffineError, match=r"unsqueeze\(0\)"):
        ma.codes(graph, torch.randn(3))
    with pytest.raises(ma.MaxAffineError, match="batch"):
        ma.trace(net, torch.randn(3))
    cnn = small_cnn((1, 8, 8), 3, channels=(2,)).eval()
    graph = ma.trace(cnn, torch.randn(2, 1, 8, 8))
    with pytest.raises(ma.MaxAffineError, match=r"add a batch dimension"):
        graph.evaluate(torch.randn(1, 8, 8))
    with pytest.raises(ma.MaxAffineError, match=r"fails on the example input of shape \(1, 8, 8\)"):
        ma.trace(cnn, torch.randn(1, 8, 8))  # unbatched image: torch accepts the conv


def test_integer_and_mismatched_dtypes():
    net = mlp(3, (4,), 2).eval()
    with pytest.raises(ma.MaxAffineError, match=r"torch\.int64.*\.float\(\)"):
        ma.affine_map(net, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ma.MaxAffineError, match=r"torch\.bool"):
        ma.trace(net, torch.ones(2, 3, dtype=torch.bool))
    x64 = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(ma.MaxAffineError, match=r"float64 but the model's parameters are "
                                                r"torch\.float32"):
        ma.trace(net, x64)
    graph = ma.trace(net, x64.float())
    with pytest.raises(ma.MaxAffineError, match=r"model\.to"):
        ma.affine_map(graph, x64)


def test_data_dependent_python_branch():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > 0:
                return self.lin(x)
            return -x

    with pytest.raises(ma.UnsupportedOperation, match=r"Branchy\.forward cannot be traced.*"
                                                      r"Data-dependent"):
        ma.trace(Branchy(), torch.randn(2, 3))


def test_output_mixing_samples_of_the_batch():
    class Centre(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x - x.mean(0, keepdim=True)

    with pytest.raises(ma.UnsupportedOperation, match="depends on the other samples"):
        ma.trace(Centre(), torch.randn(3, 4))
    with pytest.raises(ma.UnsupportedOperation, match="depends on the other samples"):
        ma.trace(Centre(), torch.randn(1, 4))  # a single example is not enough to hide it


def test_tuple_outputs_and_several_inputs():
    class Pair(nn.Module):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return F.relu(x), x

    assert ma.trace(Pair(), torch.randn(2, 3)).output_shape == (6,)  # outputs flattened

    class Two(nn.Module):
        def forward(self, x: Tensor, y: Tensor) -> Tensor:
            return x + y

    with pytest.raises(ma.MaxAffineError, match="exactly one tensor input"):
        ma.trace(Two(), torch.randn(2, 3))
    with pytest.raises(ma.MaxAffineError, match=r"torch\.nn\.Module"):
        ma.trace(lambda x: x, torch.randn(2, 3))  # type: ignore[arg-type]


def test_in_place_activation_whose_result_is_dropped():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            h = self.lin(x)
            h.relu_()  # traced out of place, later uses reading the result (eager semantics)
            return h

    net, x = InPlace(), torch.randn(4, 3) * 3
    graph = ma.trace(net, x)
    assert len(graph.layers) == 1
    torch.testing.assert_close(graph(x), net(x))


def test_max_pool_returning_indices():
    net = nn.Sequential(nn.MaxPool1d(2, return_indices=True))
    with pytest.raises(ma.UnsupportedOperation, match="return_indices"):
        ma.trace(net, torch.randn(2, 1, 4))


def test_frozen_codes_are_checked():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    graph = ma.trace(net, x)
    found = ma.codes(graph, x).as_dict()
    with pytest.raises(ma.MaxAffineError, match="unknown layers"):
        graph.evaluate(x, codes={"relu": found["1"]})
    with pytest.raises(ma.MaxAffineError, match=r"shape \(2, 4\), expected \(5, 4\)"):
        graph.evaluate(x, codes={"1": found["1"][:2]})
    with pytest.raises(ma.MaxAffineError, match=r"no layer '2': the layers are \('1',\)"):
        graph.layer("2")
    with pytest.raises(ma.MaxAffineError, match=r"layer index 1 is out of range: there are 1"):
        graph.layer(1)
    with pytest.raises(ma.MaxAffineTypeError, match=r"a layer name \(str\) or index"):
        graph.layer(1.0)


def test_bad_mode_and_model_arguments():
    net = mlp(3, (4,), 2).eval()
    with pytest.raises(ma.MaxAffineError, match="mode"):
        ma.affine_map(net, torch.randn(2, 3), mode="sideways")  # type: ignore[arg-type]
    with pytest.raises(ma.MaxAffineError, match=r"torch\.nn\.Module"):
        ma.affine_map("net", torch.randn(2, 3), exact=False)  # type: ignore[arg-type]

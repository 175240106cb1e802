"""Issue 13, items 4, 7, 9, 10: bad parameters named, empty batches, template
indices, register_op / soften errors, and models returning dicts or tuples."""

from __future__ import annotations

import math
from collections import namedtuple

import pytest
import torch
from torch import Tensor, nn

import maxaffine as ma
from maxaffine import graph as spline_graph
from maxaffine import ops
from maxaffine.power import layer_pieces

DT = torch.float64


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2)).eval()


# ------------------------------------------------- item 4: NaN / inf parameters


@pytest.mark.parametrize("where, value, named, counts", [
    ("0.weight", math.nan, "parameter '0.weight'", "1 NaN and 0 infinite"),
    ("1.running_var", math.inf, "buffer '1.running_var'", "0 NaN and 1 infinite"),
], ids=["nan-weight", "inf-buffer"])
def test_non_finite_parameters_are_named(where, value, named, counts):
    net = mlp()
    x = torch.randn(4, 3)
    graph = ma.trace(net, x)  # traced while finite: the graph shares the parameters
    with torch.no_grad():
        tensor = net.get_parameter(where) if "weight" in where else net.get_buffer(where)
        tensor.view(-1)[1] = value
    calls = [lambda: ma.affine_map(net, x), lambda: ma.affine_map(graph, x),
             lambda: ma.affine_map(net, x, exact=False), lambda: ma.codes(net, x),
             lambda: graph.evaluate(x), lambda: ma.trace(net, x),
             lambda: spline_graph.check_parameters(net),
             lambda: ma.vq_posterior(net, x)]
    for call in calls:
        with pytest.raises(ma.MaxAffineError, match="non-finite") as info:
            call()
        assert named in str(info.value) and counts in str(info.value)


def test_check_parameters_passes_finite_models_and_names_every_bad_tensor():
    net = mlp()
    spline_graph.check_parameters(net)
    spline_graph.check_parameters(ma.trace(net, torch.randn(2, 3)))
    with torch.no_grad():
        net[0].bias.fill_(math.inf)
        net[3].weight[0, 0] = math.nan
    with pytest.raises(ma.MaxAffineError, match=r"in 2 tensor\(s\)") as info:
        spline_graph.check_parameters(net)
    assert "'0.bias' (5,): 0 NaN and 5 infinite" in str(info.value)
    assert "'3.weight'" in str(info.value)
    with pytest.raises(ma.MaxAffineTypeError):
        spline_graph.check_parameters("net")  # type: ignore[arg-type]


# ------------------------------------------------- item 7: empty batches


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)).double().eval()


@pytest.mark.parametrize("build, shape", [(mlp, (3,)), (small_cnn, (1, 4, 4))],
                         ids=["mlp", "cnn"])
def test_empty_batches_give_empty_results(build, shape):
    net = build()
    dtype = next(net.parameters()).dtype
    empty = torch.zeros((0, *shape), dtype=dtype)
    graph = ma.trace(net, empty)
    assert graph.input_shape == shape
    ev = graph.evaluate(empty, record=True)
    assert ev.output.shape == (0, graph.num_outputs)
    for layer in graph.layers:
        assert ev.codes[layer.name].shape == (0, *layer.code_shape)
        assert all(t.shape[0] == 0 for t in ev.inputs[layer.name])
    c = graph.num_outputs
    for model in (net, graph):
        for kwargs in ({}, {"mode": "forward"}, {"exact": False}):
            amap = ma.affine_map(model, empty, **kwargs)
            assert amap.A.shape == (0, c, *shape) and amap.B.shape == (0, c)
            assert amap.output.shape == (0, c) and amap.reconstruct().shape == (0, c)
            assert amap.templates(0).shape == (0, *shape)
    assert ma.vq_posterior(net, empty, layer=0)[0].shape[0] == 0
    for input_space in (False, True):
        cells = ma.power_cells(net, empty, layer=-1, input_space=input_space)
        assert cells.mu.shape[0] == cells.rad.shape[0] == cells.codes.shape[0] == 0
        A, B = layer_pieces(net, empty, layer=-1, input_space=input_space)
        assert A.shape[:2] == B.shape[:2] == (0, graph.layers[-1].num_units)
    # the graph traced on an empty batch is the same spline as one traced on data
    x = torch.randn((5, *shape), dtype=dtype)
    torch.testing.assert_close(graph(x), net(x))


# ------------------------------------------------- item 9: raw exceptions


def test_template_indices_are_checked():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    amap = ma.affine_map(net, torch.randn(5, 3))
    assert torch.equal(amap.templates(-1), amap.A[:, 1])
    assert torch.equal(amap.templates(torch.tensor([0, 1, -1, 0, 1])),
                       amap.A[torch.arange(5), torch.tensor([0, 1, 1, 0, 1])])
    assert torch.equal(amap.templates([1, 1, 1, 1, 1]), amap.A[:, 1])
    for bad, match in [(2, r"output index 2 out of range for C=2"),
                       (torch.tensor([0, 1, 2, 3, 4]), r"\[2, 3, 4\] out of range for C=2"),
                       (torch.tensor([0, -3, 0, 0, 0]), r"\[-3\] out of range"),
                       (torch.zeros(5, 1, dtype=torch.long), r"shape \(5,\)"),
                       (torch.zeros(4, dtype=torch.long), r"shape \(5,\)")]:
        with pytest.raises(ma.MaxAffineError, match=match):
            amap.templates(bad)
    for bad in (torch.zeros(5), "0", 1.0, True, torch.zeros(5, dtype=torch.bool)):
        with pytest.raises(ma.MaxAffineTypeError):
            amap.templates(bad)  # type: ignore[arg-type]


def test_soften_and_vq_posterior_check_beta():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    for bad in ("0.5", None, [0.5]):
        with pytest.raises(ma.MaxAffineTypeError, match="beta"):
            ma.soften(net, bad)  # type: ignore[arg-type]
    for bad in (1.5, -0.1, math.nan):
        with pytest.raises(ma.MaxAffineError, match=r"beta must lie in \[0, 1\]"):
            ma.soften(net, bad)
    with pytest.raises(ma.MaxAffineTypeError, match="beta"):
        ma.vq_posterior(net, torch.randn(2, 3), beta="soft")  # type: ignore[arg-type]


# ------------------------------------------------- item 10: structured outputs

Heads = namedtuple("Heads", ["logits", "box"])


class MultiHead(nn.Module):
    """A trunk and three heads, returned as ``kind``: dict, tuple, list, namedtuple,
    or nested."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(3, 8), nn.ReLU())
        self.logits = nn.Linear(8, 4)
        self.box = nn.Linear(8, 6)
        self.kind = kind

    def forward(self, x: Tensor):
        h = self.trunk(x)
        logits, box = self.logits(h), self.box(h).view(-1, 2, 3)
        if self.kind == "dict":
            return {"logits": logits, "box": box, "score": h.amax(1)}
        if self.kind == "tuple":
            return logits, box
        if self.kind == "list":
            return [box, logits]
        if self.kind == "namedtuple":
            return Heads(logits, box)
        return {"heads": (logits, {"box": box})}


@pytest.mark.parametrize("kind, names", [
    ("dict", ("logits", "box", "score")), ("tuple", ("0", "1")), ("list", ("0", "1")),
    ("namedtuple", ("logits", "box")), ("nested", ("heads.0", "heads.1.box"))])
def test_structured_outputs_are_flattened_in_order(kind, names):
    net = MultiHead(kind).double()
    x = torch.randn(5, 3, dtype=DT)
    graph = ma.trace(net, x)
    assert graph.output_names == names
    out = net(x)
    leaves = {"dict": lambda o: [o["logits"], o["box"], o["score"]],
              "tuple": list, "list": list, "namedtuple": list,
              "nested": lambda o: [o["heads"][0], o["heads"][1]["box"]]}[kind](out)
    flat = torch.cat([t.reshape(5, -1) for t in leaves], 1)
    assert graph.output_shape == (flat.shape[1],) and graph.num_outputs == flat.shape[1]
    torch.testing.assert_close(graph(x), flat)
    sizes = [t[0].numel() for t in leaves]
    assert [s.stop - s.start for s in graph.output_slices.values()] == sizes
    for name, t in zip(names, leaves, strict=True):
        torch.testing.assert_close(graph.split_output(graph(x))[name], t)
    amap = ma.affine_map(net, x)
    torch.testing.assert_close(amap.reconstruct(), flat)
    assert amap.output_slices == graph.output_slices
    parts = graph.split_output(amap.A)  # rows of A by output, (N, *shape, *input_shape)
    for name, t in zip(names, leaves, strict=True):
        assert parts[name].shape == (*t.shape, 3)
    lin = ma.affine_map(net, x, exact=False)  # the linearization takes them too
    torch.testing.assert_close(lin.A, amap.A)
    assert lin.output_slices == graph.output_slices
    assert set(ma.codes(net, x).names) == set(graph.layer_names)


def test_bad_structured_outputs_are_named():
    class WithInt(nn.Module):
        def forward(self, x: Tensor):
            return {"y": x * 2, "n": 3}

    class WithIndex(nn.Module):
        def forward(self, x: Tensor):
            return x * 2, x.argmax(1)

    class Unbatched(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("c", torch.ones(4))

        def forward(self, x: Tensor):
            return x * 2, self.c

    with pytest.raises(ma.MaxAffineError, match=r"model output 'n' is of type int, not a tensor"):
        ma.trace(WithInt(), torch.randn(2, 3))
    with pytest.raises(ma.UnsupportedOperation, match="argmax"):
        ma.trace(WithIndex(), torch.randn(2, 3))
    with pytest.raises(ma.MaxAffineError, match=r"model output '1' has shape \(4,\)"):
        ma.trace(Unbatched(), torch.randn(2, 3))


def test_register_op_errors_are_maxaffine_errors():
    with pytest.raises(ma.MaxAffineError, match="already registered"):
        ma.register_op("relu", ops.ReLU)
    with pytest.raises(ma.MaxAffineTypeError, match="Rule"):
        ma.register_op("my_op", object)  # type: ignore[arg-type]

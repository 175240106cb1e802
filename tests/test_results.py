"""Results (issue 14): every result type is a frozen dataclass with ``plot(ax=None)``,
``to_json() -> str`` and ``summary() -> dict``, and each of them works on a small
network's results."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json

import matplotlib
import pytest
import torch
from torch import nn

import maxaffine as ma

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# exported dataclasses that are not results: a domain, a graph's parts
NOT_RESULTS = {"Slice", "Layer", "Pause", "Between"}
RESULTS = sorted(
    name for name in ma.__all__
    if isinstance(getattr(ma, name), type) and dataclasses.is_dataclass(getattr(ma, name))
    and name not in NOT_RESULTS)


def test_the_results_are_the_expected_ones():
    assert set(RESULTS) == {
        "AffineMap", "BoundaryCurvature", "BoundaryDistance", "Codes", "Complex", "Evaluation",
        "HessianComplexity", "LevelSet", "LossHessian",
        "LocalComplexity", "Partition", "PowerCells", "PowerDiagram", "RegionDensity",
        "RegionSet", "RegionSharing", "SegmentPartition", "SplineGraph", "VQIndex",
        "VQPosterior"}


@pytest.mark.parametrize("name", RESULTS)
def test_result_is_frozen_with_plot_json_summary(name):
    klass = getattr(ma, name)
    assert klass.__dataclass_params__.frozen, f"{name} is not frozen"
    for method in ("plot", "to_json", "summary"):
        assert callable(getattr(klass, method, None)), f"{name}.{method}"
    params = list(inspect.signature(klass.plot).parameters.values())
    assert params[1].name == "ax" and params[1].default is None, f"{name}.plot(ax=None, ...)"
    hints = {m: inspect.signature(getattr(klass, m)).return_annotation
             for m in ("to_json", "summary")}
    assert hints["to_json"] in (str, "str"), name
    assert str(hints["summary"]).startswith("dict"), name


def _results() -> dict[str, object]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                        nn.Linear(8, 3)).double().eval()
    x = torch.randn(16, 2, dtype=torch.float64)
    graph = ma.trace(net, x)
    part = ma.partition_plane(net, ma.Slice.square(-2, 2), progress=False)
    return {
        "AffineMap": ma.affine_map(net, x),
        "BoundaryCurvature": ma.boundary_curvature(part),
        "BoundaryDistance": ma.boundary_distance(net, x),
        "Codes": ma.codes(net, x),
        "Complex": ma.partition_box(net, -torch.ones(2, dtype=torch.float64),
                                    torch.ones(2, dtype=torch.float64), progress=False),
        "Evaluation": graph.evaluate(x, record=True),
        "LevelSet": ma.partition_box(net, -torch.ones(2, dtype=torch.float64),
                                     torch.ones(2, dtype=torch.float64),
                                     progress=False).decision_boundary(),
        "LocalComplexity": ma.local_complexity(net, x, 0.1),
        "LossHessian": ma.loss_hessian(net, nn.functional.cross_entropy, x,
                                       torch.arange(16) % 3),
        "HessianComplexity": ma.hessian_complexity(net, x, tangent_dim=1, k=8),
        "Partition": part,
        "PowerCells": ma.power_cells(net, x, layer=-1, input_space=True),
        "PowerDiagram": ma.power_diagram(nn.Sequential(nn.Linear(2, 3), nn.ReLU())),
        "RegionDensity": ma.region_density(net, x[:4], x[4:8]),
        "RegionSet": ma.regions_near(net, x[0], 0.5, progress=False),
        "RegionSharing": ma.region_sharing(net, x),
        "SegmentPartition": ma.partition_segment(net, x[0], x[1]),
        "SplineGraph": graph,
        "VQPosterior": ma.vq_posterior(net, x, beta=0.5),
        "VQIndex": ma.vq_index(net, x),
    }


def test_every_result_summarises_serialises_and_plots():
    found = _results()
    assert set(found) == set(RESULTS)
    for name, result in found.items():
        assert type(result) is getattr(ma, name)
        summary = result.summary()
        assert isinstance(summary, dict) and summary, name
        json.dumps(summary, allow_nan=False)  # plain, strict JSON
        assert isinstance(json.loads(result.to_json()), dict), name
        first = next(f.name for f in dataclasses.fields(result))
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(result, first, None)
        _, ax = plt.subplots()
        if name != "AffineMap":  # a grid of axes (one row per input)
            assert result.plot(ax=ax) is ax, name
        plt.close("all")
        result.plot()
        plt.close("all")


def test_summaries_say_what_they_summarise():
    found = _results()
    graph = found["SplineGraph"]
    assert [layer["name"] for layer in graph.summary()["layers"]] == ["1", "3"]
    assert "ReLU" in str(graph) and str(graph) == graph.table()
    codes = found["Codes"].summary()
    assert codes["samples"] == 16 and codes["layers"]["1"]["units"] == 8
    assert sum(codes["layers"]["1"]["piece_fractions"]) == pytest.approx(1.0)
    assert found["AffineMap"].summary()["reconstruction_error"] < 1e-12
    assert found["Partition"].summary()["regions"] == found["Partition"].num_regions
    post = found["VQPosterior"].summary()
    assert post["beta"] == 0.5 and set(post["layers"]) == {"1", "3"}
    sharing = found["RegionSharing"].summary()["layers"]
    assert sharing["3"]["regions"] >= sharing["1"]["regions"] >= 1
    lc = found["LocalComplexity"].summary()
    assert lc["radius"] == 0.1 and set(lc["layers"]) == {"1", "3"} and "total" in lc
    assert found["SegmentPartition"].summary()["regions"] == found["SegmentPartition"].num_regions


def test_an_affine_model_plots_its_graph():
    graph = ma.trace(nn.Linear(3, 2), torch.zeros(1, 3))
    assert graph.summary()["layers"] == [] and graph.plot() is not None
    plt.close("all")


def test_the_demo_report_shows_the_graph_as_a_table(tmp_path):
    from maxaffine.datasets import Dataset, load_dataset
    from maxaffine.demo import DemoContext, models_section
    from maxaffine.models import mlp, small_cnn
    from maxaffine.training import History

    data = load_dataset("digits")
    data = Dataset(data.name, data.x_train[:32], data.y_train[:32], data.x_test[:8],
                   data.y_test[:8], data.num_classes)
    torch.manual_seed(0)
    cnn = small_cnn(data.input_shape, data.num_classes, channels=(4,)).eval()
    net = mlp(data.input_shape, (8,), data.num_classes).eval()
    history = {"mlp": History(train_acc=0.5, test_acc=0.5), "cnn": History(train_acc=0.5,
                                                                           test_acc=0.5)}
    section = models_section(DemoContext(tmp_path, data, net, cnn, history, quick=True))
    assert ma.trace(cnn, data.x_test[:1]).table() in section.markdown


# results of maxaffine.generative (exported there, not from maxaffine)
def _generative_results() -> dict[str, object]:
    from maxaffine import generative

    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 16)).double().eval()
    with torch.no_grad():
        y = gen(torch.randn(4, 2, dtype=torch.float64))
    found = {"Inversion": generative.invert(gen, y),
             "GeneratorPosterior": generative.posterior(gen, y, 0.1),
             "EMFit": generative.fit_em(copy.deepcopy(gen), y, 0.1, 1, m_steps=2,
                                        progress=False)}
    # every result type the module exports is here
    exported = {n for n in generative.__all__ if isinstance(getattr(generative, n), type)}
    assert set(found) == exported
    return found


def test_generative_results_are_frozen_and_summarise_serialise_and_plot():
    from maxaffine import generative

    for name, result in _generative_results().items():
        klass = getattr(generative, name)
        assert type(result) is klass and klass.__dataclass_params__.frozen, name
        params = list(inspect.signature(klass.plot).parameters.values())
        assert params[1].name == "ax" and params[1].default is None, name
        json.dumps(result.summary(), allow_nan=False)
        assert isinstance(json.loads(result.to_json()), dict), name
        _, ax = plt.subplots()
        assert result.plot(ax=ax) is ax, name
        result.plot()
        plt.close("all")

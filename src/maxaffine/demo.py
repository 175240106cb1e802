"""``maxaffine demo`` and ``maxaffine report``: the HTML report of a model's spline view.

The report (``report.md`` + ``report.html`` + figures + an interactive
``explore.html``) is a list of sections; each capability adds one function
``section(ctx) -> Section``. :func:`run_demo` trains a small MLP and CNN on MNIST
and writes every section (:data:`SECTIONS`); :func:`run_report` writes the
sections that apply to any model (:data:`MODEL_SECTIONS`: graph, affine maps and
templates, a partition through three inputs, local complexity, VQ retrieval) for a
user's own model (a TorchScript file, or ``module:factory`` with a state dict) on
the user's inputs (a tensor file or a built-in dataset), through the same functions.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import _arguments as arg
from .affine import affine_map
from .datasets import DATASETS, Dataset, load_dataset, load_file
from .errors import MaxAffineError, MaxAffineTypeError
from .experiments import markdown_to_html, output_dir_problem
from .experiments._report import DemoContext, Section
from .experiments.beta_vq import demo_section as beta_vq_section
from .experiments.orthogonality import demo_section as orthogonality_section
from .experiments.regions_near import demo_section as regions_near_section
from .experiments.sdf_mesh import demo_section as sdf_mesh_section
from .experiments.sparse_coding import demo_section as sparse_coding_section
from .experiments.training_dynamics import demo_section as local_complexity_section
from .experiments.vq_distance import batched_codes, knn_scores, pixel_knn
from .experiments.vq_distance import demo_section as vq_distance_section
from .graph import trace
from .models import mlp, small_cnn
from .training import accuracy, fit

#: a model with at most this many units is partitioned on the whole plane through
#: three inputs; a larger one (e.g. the demo CNN) in a window where its class changes
WHOLE_PLANE_UNITS = 2048


def _main_name(ctx: DemoContext) -> str:
    """The name under which the single-model sections' model (``ctx.cnn``) is listed."""
    return next((n for n, m in ctx.named_models().items() if m is ctx.cnn), "model")


def _dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def models_section(ctx: DemoContext) -> Section:
    """Each model's size and accuracy, and the analysed model's spline graph."""
    rows = ["| model | parameters | units | train acc | test acc | seconds |",
            "|---|---|---|---|---|---|"]
    for name, model in ctx.named_models().items():
        params = sum(p.numel() for p in model.parameters())
        units = trace(model, ctx.data.x_test[:1]).summary()["units"]
        h = ctx.history.get(name)
        if h is not None:
            rows.append(f"| {name} | {params} | {units} | {h.train_acc:.3f} | "
                        f"{h.test_acc:.3f} | {h.seconds:.1f} |")
        else:
            tr = accuracy(model, ctx.data.x_train, ctx.data.y_train)
            te = accuracy(model, ctx.data.x_test, ctx.data.y_test)
            rows.append(f"| {name} | {params} | {units} | {tr:.3f} | {te:.3f} | |")
    labels = ("" if ctx.labels == "dataset" else
              " The inputs carry no labels: the labels used below (accuracies, classes of "
              "the chosen inputs, retrieval precision) are the model's own predictions, so "
              "its accuracy is 1 by construction.")
    graph = trace(ctx.cnn, ctx.data.x_test[:1])
    main = _main_name(ctx)
    text = (f"Dataset: {ctx.data!r}.{labels}\n\n" + "\n".join(rows) +
            f"\n\nThe {main.upper() if main in ('mlp', 'cnn') else main} as a spline graph "
            "(its nonlinearities are the VQ layers):\n\n```\n" + graph.table() + "\n```\n")
    return Section("Models", text)


def affine_section(ctx: DemoContext) -> Section:
    """``A x + B = f(x)`` and ``A = jacrev`` per model and dtype; the templates."""
    x = ctx.data.x_test[:64]
    rows = ["| model | dtype | max abs(A x + B - f(x)) | max abs(A - jacrev) |",
            "|---|---|---|---|"]
    for name, model in ctx.named_models().items():
        own = _dtype(model)
        for dtype in (torch.float32, torch.float64):
            m = model.to(dtype)
            xd = x.to(dtype)
            amap = affine_map(m, xd)
            with torch.no_grad():
                err = float((amap.reconstruct() - m(xd).flatten(1)).abs().max())
            jac = torch.func.vmap(torch.func.jacrev(lambda v, m=m: m(v[None])[0]))(xd[:8])
            jerr = float((amap.A[:8] - jac).abs().max().detach())
            rows.append(f"| {name} | {str(dtype).split('.')[-1]} | {err:.2e} | {jerr:.2e} |")
            model.to(own)
    amap = affine_map(ctx.cnn, ctx.data.x_test[:4])
    fig = amap.plot(n=4)
    main = _main_name(ctx)
    text = ("Conditioned on its input, each network is the affine map f(x) = A[x] x + B[x]; "
            "the rows of A[x] are the class templates (matched filters).\n\n"
            + "\n".join(rows) + "\n\n" + ctx.figure(fig, f"templates_{main}") + "\n")
    return Section("Affine maps and templates", text)


def three_inputs(x: Tensor, y: Tensor) -> tuple[list[int], Any]:
    """Three inputs (indices), of different classes where there are three, that span
    a plane, and the :class:`maxaffine.Slice` through them (padded box)."""
    from .partition import Slice

    firsts = [int(torch.nonzero(y == c)[0]) for c in torch.unique(y)]
    rest = [i for i in range(len(x)) if i not in firsts]
    order = firsts[:3] + rest + firsts[3:]
    for k in range(2, len(order)):
        picks = [order[0], order[1], order[k]] if k >= 2 else order[:3]
        try:
            return picks, Slice.through(x[picks[0]], x[picks[1]], x[picks[2]], pad=0.1)
        except MaxAffineError:
            continue
    raise MaxAffineError("the inputs span no plane (fewer than three inputs, or all of "
                         "them on one line): pass at least three inputs in general position")


def _window_partition(model: nn.Module, sl: Any, x1: Tensor, x2: Tensor) -> tuple[Any, int]:
    """The partition of a window of 1% of |x2 - x1| around the point where the model's
    prediction first changes on the segment from x1 to x2 (found by the exact segment
    partition), and the number of regions along that segment."""
    from .partition import partition_plane, partition_segment

    seg = partition_segment(model, x1, x2)
    mids = (seg.breakpoints[:-1] + seg.breakpoints[1:]) / 2
    cls = (seg.offsets + seg.slopes * mids.unsqueeze(1)).argmax(1)
    change = torch.nonzero(cls != cls[0]).flatten()
    t_star = float(seg.breakpoints[change[0]]) if change.numel() else 0.0
    length = float(sl.anchors[1, 0])
    zoom = sl.zoom((t_star * length, 0.0), 0.01 * length)
    return partition_plane(model, zoom, progress=False), seg.num_regions


def partition_section(ctx: DemoContext) -> Section:
    """Exact partitions of the plane through three inputs: the whole plane for a model
    with at most :data:`WHOLE_PLANE_UNITS` units, else a window where the prediction
    changes; each with a figure and an interactive explorer page."""
    import matplotlib.pyplot as plt

    from .partition import partition_plane

    x, y = ctx.data.x_test, ctx.data.y_test
    picks, sl = three_inputs(x, y)
    models = ctx.named_models()
    parts, notes = {}, []
    for name, model in models.items():
        units = trace(model, x[:1]).summary()["units"]
        if units <= WHOLE_PLANE_UNITS:
            parts[name] = (partition_plane(model, sl, progress=False), "whole plane")
        else:
            near, n_seg = _window_partition(model, sl, x[picks[0]], x[picks[1]])
            parts[name] = (near, "window on the segment x1-x2")
            notes.append(f"The {name} ({units} units) has far more regions: a window of 1% "
                         "of |x2 - x1| around the point where its prediction first changes "
                         f"on the segment from x1 to x2; along that segment it crosses "
                         f"{n_seg} regions (exact segment partition).")
    fig, axes = plt.subplots(len(parts), 2, figsize=(13, 6 * len(parts)), squeeze=False)
    links = []
    for row, (name, (part, where)) in enumerate(parts.items()):
        left, right = axes[row]
        part.plot(ax=left, color_by="region")
        left.set_title(f"{name}: {part.num_regions} regions, {where} through x1, x2, x3",
                       fontsize=9)
        if where == "whole plane":
            part.plot(ax=right, color_by="class")
            right.set_title(f"{name}: predicted class, decision boundary in black", fontsize=9)
        else:
            part.plot(ax=right, color_by="layer")
            right.set_title(f"{name}, same window: edges coloured by the layer that made them",
                            fontsize=9)
        page = "explore.html" if row == 0 else f"explore_{name}.html"
        part.to_html(ctx.out / page, title=f"{name}: {part.num_regions} regions, {where}")
        links.append(f"[{name}, {where}]({page})")
    fig.tight_layout()
    names = list(parts)
    rows = ["| statistic | " + " | ".join(f"{n}, {parts[n][1]}" for n in names) + " |",
            "|---" * (len(names) + 1) + "|"]
    summaries = [parts[n][0].summary() for n in names]

    def fmt(v: object) -> str:
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    for key in ("regions", "vertices", "edges", "domain_area", "area_sum", "mean_area",
                "decision_boundary_segments", "decision_boundary_length", "seconds"):
        rows.append(f"| {key} | " + " | ".join(fmt(s[key]) for s in summaries) + " |")
    text = (f"The exact partitions of the plane through test inputs of classes "
            f"{[int(y[i]) for i in picks]} (x1, x2, x3) into linear regions: every "
            "region's code, area and affine map are known exactly (max-pooling and "
            "batch-norm included). " + " ".join(notes) + " The first "
            "partitions in a fresh environment also compile the partition's loops "
            "(numba, a few seconds, cached on disk): their seconds include it.\n\n"
            + "\n".join(rows) + "\n\n" + ctx.figure(fig, "partition") + "\n\n"
            "Interactive explorer (pan, zoom, hover a region for its code, area, class and "
            "affine map; edges by layer with toggles): " + ", ".join(links) + ".\n")
    return Section("Exact partitions of a plane of input space", text)


def vq_section(ctx: DemoContext) -> Section:
    """VQ-distance retrieval with the analysed model's codes: the experiment's demo
    section for the demo; for a user's model the same 1-NN table (k = 16, or fewer
    when there are fewer training inputs) and, for image inputs, its mosaic."""
    if not ctx.models:
        return vq_distance_section(ctx)
    from .distances import vq_knn
    from .experiments.vq_distance import retrieval_figure

    n_train = min(len(ctx.data.x_train), 1000 if ctx.quick else 4000)
    n_test = min(len(ctx.data.x_test), 200 if ctx.quick else 500)
    x_train, y_train = ctx.data.x_train[:n_train], ctx.data.y_train[:n_train]
    x_test, y_test = ctx.data.x_test[:n_test], ctx.data.y_test[:n_test]
    ctx.cnn.eval()
    k = min(16, n_train)
    train_codes, test_codes = batched_codes(ctx.cnn, x_train), batched_codes(ctx.cnn, x_test)
    scores = knn_scores(train_codes, test_codes, y_train, y_test, k=k)
    rows = [f"| distance | 1-NN accuracy | precision@{k} |", "|---|---|---|"]
    for name, sc in scores.items():
        label = "all layers (mean)" if name == "all" else f"layer {name}"
        rows.append(f"| VQ, {label} | {sc['nn1']:.3f} | {sc[f'precision@{k}']:.3f} |")
    rows.append(f"| raw inputs (Euclidean) | {pixel_knn(x_train, x_test, y_train, y_test):.3f}"
                " | |")
    figure = ""
    if len(ctx.data.input_shape) == 3 and n_test >= 3:
        queries = torch.arange(3) * (n_test // 3)
        dist, idx = vq_knn(None, test_codes.select(queries), train_codes, k=k)
        fig = retrieval_figure([(_main_name(ctx), x_test[queries], y_test[queries],
                                 x_train[idx], y_train[idx], dist)])
        figure = "\n\n" + ctx.figure(fig, "vq_retrieval") + "\n"
    text = ("The VQ distance (`maxaffine.vq_distance`, Mad Max sec. 5) compares two inputs by "
            "the fraction of units of a layer that select different pieces (popcount over "
            f"packed codes). 1-NN classification of {n_test} test inputs against {n_train} "
            "training inputs with the model's codes:\n\n" + "\n".join(rows) + figure + "\n")
    return Section("VQ distance and retrieval", text)


#: the sections for any model (``maxaffine report``)
MODEL_SECTIONS: list[Callable[[DemoContext], Section]] = [
    models_section, affine_section, partition_section, local_complexity_section, vq_section]

#: the demo's sections: the model sections and the experiments' demos
SECTIONS: list[Callable[[DemoContext], Section]] = [
    models_section, affine_section, partition_section, beta_vq_section, sparse_coding_section,
    orthogonality_section, vq_section, local_complexity_section, regions_near_section,
    sdf_mesh_section]


def _out_dir(out: Any) -> Path:
    if not isinstance(out, str | Path):
        raise MaxAffineTypeError(f"out must be a directory path (str or Path), got "
                                 f"{type(out).__name__}")
    out = Path(out)
    problem = output_dir_problem(out)
    if problem is not None:
        raise MaxAffineError(f"out: {problem}; pass a directory for the report")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_report(ctx: DemoContext, sections: list[Callable[[DemoContext], Section]],
                 title: str, t0: float | None = None) -> Path:
    """Run ``sections`` on ``ctx`` and write ``report.md`` and ``report.html`` into
    ``ctx.out``; returns ``ctx.out``."""
    t0 = time.perf_counter() if t0 is None else t0
    parts = [f"# {title}", ""]
    for make in sections:
        s0 = time.perf_counter()
        section = make(ctx)
        parts += [f"## {section.title}", "", section.markdown,
                  f"_({time.perf_counter() - s0:.1f} s)_", ""]
    parts.append(f"Total: {time.perf_counter() - t0:.0f} s.")
    text = "\n".join(parts)
    (ctx.out / "report.md").write_text(text)
    (ctx.out / "report.html").write_text(markdown_to_html(text, title=title))
    return ctx.out


def run_demo(out: str | Path = "out/demo", *, quick: bool = False, seed: int = 0,
             progress: bool = True) -> Path:
    """Train the demo models and write ``out/report.md`` and ``out/report.html``
    (``out`` is a directory, created if missing)."""
    t0 = time.perf_counter()
    seed = arg.integer(seed, "seed", minimum=0)
    out = _out_dir(out)
    torch.manual_seed(seed)
    data = load_dataset("mnist", seed=seed)
    if quick:
        data = data.subset(512, 256)
    epochs = 1 if quick else 4
    net = mlp(data.input_shape, (128, 128), data.num_classes)
    cnn = small_cnn(data.input_shape, data.num_classes, channels=(8, 16))
    hist = {
        "mlp": fit(net, data, epochs=epochs, seed=seed, progress=progress, desc="mlp"),
        "cnn": fit(cnn, data, epochs=epochs, seed=seed, progress=progress, desc="cnn"),
    }
    ctx = DemoContext(out, data, net, cnn, hist, seed=seed, quick=quick)
    return write_report(ctx, SECTIONS, "maxaffine demo report", t0)


# ------------------------------------------------------------ a user's own model


def load_model(spec: str | Path | nn.Module, *, state_dict: str | Path | None = None,
               example: Tensor | None = None) -> nn.Module:
    """A user's model for :func:`run_report`, in eval mode and float32.

    ``spec``: a module; a TorchScript file (``torch.jit.save``; rebuilt as ordinary
    modules, since TorchScript cannot be traced by ``torch.fx``: standard layers
    composed by ``nn.Sequential`` or by a forward that calls the children in order,
    checked against the TorchScript module on ``example``); or ``"module:factory"``, a
    callable of an importable module that returns the model (the current directory
    is on the path). ``state_dict``: a file of ``torch.save(model.state_dict())``
    loaded into it."""
    if isinstance(spec, nn.Module):
        model = spec
    elif isinstance(spec, str | Path):
        path = Path(spec)
        if path.is_file():
            model = _from_torchscript(path, example)
        elif isinstance(spec, str) and ":" in spec and not path.suffix:
            model = _from_factory(spec)
        elif path.exists():
            raise MaxAffineError(f"model: {str(path)!r} is a directory, not a model file")
        else:
            raise MaxAffineError(
                f"model: no file {str(spec)!r}; pass a TorchScript file (torch.jit.save) or "
                "'module:factory' (a function of an importable module returning the model)")
    else:
        raise MaxAffineTypeError(f"model must be a TorchScript file, 'module:factory' or a "
                                 f"torch.nn.Module, got {type(spec).__name__}")
    if state_dict is not None:
        _load_state(model, state_dict)
    return model.float().eval()


def _from_factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise MaxAffineError(f"model: {spec!r} is not 'module:factory'")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise MaxAffineError(f"model: cannot import module {module_name!r} of {spec!r} "
                             f"({err}); put its directory on PYTHONPATH") from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise MaxAffineError(f"model: module {module_name!r} has no {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise MaxAffineTypeError(f"model: {spec!r} is not callable")
    model = factory() if not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise MaxAffineTypeError(f"model: {spec!r} returned {type(model).__name__}, not a "
                                 "torch.nn.Module")
    return model


def _load_state(model: nn.Module, state_dict: str | Path) -> None:
    if not isinstance(state_dict, str | Path):
        raise MaxAffineTypeError(f"state_dict must be a file path, got "
                                 f"{type(state_dict).__name__}")
    path = Path(state_dict)
    if not path.is_file():
        raise MaxAffineError(f"state_dict: no file {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MaxAffineError(f"state_dict: cannot read {str(path)!r} with torch.load "
                             f"({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise MaxAffineError(f"state_dict: {str(path)!r} holds a {type(state).__name__}, not "
                             "a state dict (torch.save(model.state_dict(), path))")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        raise MaxAffineError(f"state_dict: {str(path)!r} does not fit the model: "
                             f"{str(err)[:800]}") from None


def _attrs(m: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The constructor settings a TorchScript module kept (scripted modules keep
    them; traced ones lose them, and the defaults are checked numerically)."""
    out = {}
    for n in names:
        try:
            out[n] = getattr(m, n)
        except (AttributeError, RuntimeError):
            pass
    return out


def _leaf(m: Any, kind: str) -> nn.Module | None:
    """A standard torch.nn layer rebuilt from a TorchScript submodule (None: unknown)."""
    params = dict(m.named_parameters(recurse=False))
    buffers = dict(m.named_buffers(recurse=False))
    w, b = params.get("weight"), params.get("bias")
    if kind == "Linear" and w is not None:
        layer: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    elif kind in ("Conv1d", "Conv2d") and w is not None:
        cls = nn.Conv1d if kind == "Conv1d" else nn.Conv2d
        a = _attrs(m, ("stride", "padding", "dilation", "groups"))
        groups = int(a.get("groups", 1))
        layer = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), bias=b is not None,
                    **a)
    elif kind in ("BatchNorm1d", "BatchNorm2d") and "running_mean" in buffers:
        cls = nn.BatchNorm1d if kind == "BatchNorm1d" else nn.BatchNorm2d
        layer = cls(buffers["running_mean"].shape[0], affine=w is not None,
                    **_attrs(m, ("eps",)))
    elif kind in ("MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d"):
        a = _attrs(m, ("kernel_size", "stride", "padding", "ceil_mode"))
        if "kernel_size" not in a:
            return None  # a traced pooling layer keeps no window size
        layer = getattr(nn, kind)(**a)
    elif kind in ("ReLU", "Identity", "Dropout", "Abs"):
        layer = getattr(nn, kind)() if kind != "Abs" else None
    elif kind == "LeakyReLU":
        layer = nn.LeakyReLU(**_attrs(m, ("negative_slope",)))
    elif kind == "Hardtanh":
        layer = nn.Hardtanh(**_attrs(m, ("min_val", "max_val")))
    elif kind == "Flatten":
        layer = nn.Flatten(**_attrs(m, ("start_dim", "end_dim")))
    elif kind == "PReLU" and w is not None:
        layer = nn.PReLU(w.numel())
    else:
        return None
    if layer is not None:
        layer.load_state_dict({k: v.detach().clone() for k, v in m.state_dict().items()})
    return layer


def _rebuild(m: Any, path: str) -> nn.Module:
    kind = m.original_name
    children = list(m.named_children())
    if not children:
        layer = _leaf(m, kind)
        if layer is None:
            raise MaxAffineError(
                f"model: the TorchScript submodule {path or 'model'!r} ({kind}) cannot be "
                "rebuilt as a torch.nn layer; pass the model as 'module:factory' with "
                "--state-dict instead")
        return layer
    # nn.Sequential, or a forward that calls the children in order (checked later)
    return nn.Sequential(*[_rebuild(c, f"{path}.{n}" if path else n) for n, c in children])


def _from_torchscript(path: Path, example: Tensor | None) -> nn.Module:
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise MaxAffineError(
            f"model: {str(path)!r} is not a TorchScript file ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''}); save the model with "
            "torch.jit.save(torch.jit.script(model), path), or pass 'module:factory'") from None
    model = _rebuild(scripted, "")
    if example is not None:
        scripted.eval()
        model.eval()
        check_fit(example.float(), scripted)
        try:
            with torch.no_grad():
                want, got = scripted(example.float()), model(example.float())
            same = (want.shape == got.shape
                    and bool(torch.allclose(want, got, rtol=1e-4, atol=1e-5)))
        except (RuntimeError, ValueError, TypeError, IndexError):
            same = False
        if not same:
            raise MaxAffineError(
                f"model: the TorchScript model in {str(path)!r} is not a chain of its layers "
                "(its forward does more than call them in order, or a traced layer lost its "
                "settings), so it cannot be rebuilt for tracing; pass it as 'module:factory' "
                "with --state-dict")
    return model


def read_inputs(spec: str | Path | Tensor, *, seed: int = 0) -> Dataset | Tensor:
    """The report's inputs as read: a labelled :class:`maxaffine.datasets.Dataset`, or
    a float tensor (N, *input_shape) of unlabelled inputs.

    ``spec``: a built-in dataset name (``maxaffine.datasets.DATASETS``), a tensor, or a
    file: ``.pt`` / ``.pth`` (``torch.save`` of a tensor, or of a dict with ``x`` and
    ``y``), ``.npy``, ``.npz`` (arrays ``x`` and ``y``, or a single array of inputs),
    ``.csv`` (numeric, label in the last column)."""
    import numpy as np

    if isinstance(spec, Tensor):
        return _input_tensor("inputs", spec)
    if not isinstance(spec, str | Path):
        raise MaxAffineTypeError(f"inputs must be a dataset name, a file path or a tensor, "
                                 f"got {type(spec).__name__}")
    path = Path(spec)
    if isinstance(spec, str) and spec.lower() in DATASETS and not path.exists():
        return load_dataset(spec, seed=seed)
    if not path.is_file():
        raise MaxAffineError(f"inputs: no file {str(spec)!r}, and not a built-in dataset "
                             f"(one of {', '.join(DATASETS)})")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return load_file(path, seed=seed)
    raw: Any
    try:
        if suffix in (".pt", ".pth"):
            raw = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".npy":
            raw = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                keys = list(f.files)
                if "x" in keys and "y" in keys:
                    return load_file(path, seed=seed)
                if len(keys) != 1:
                    raise MaxAffineError(f"inputs: {str(path)!r} holds arrays {keys}: give "
                                         "arrays 'x' and 'y', or a single array of inputs")
                raw = torch.from_numpy(f[keys[0]])
        else:
            raise MaxAffineError(f"inputs: unsupported format {suffix!r} of {str(path)!r} "
                                 "(use .pt, .npy, .npz, .csv or a dataset name)")
    except MaxAffineError:
        raise
    except Exception as err:
        raise MaxAffineError(f"inputs: cannot read {str(path)!r} ({type(err).__name__}: "
                             f"{str(err)[:200]})") from None
    if isinstance(raw, dict) and "x" in raw and "y" in raw:
        return load_file(path, seed=seed)
    if not isinstance(raw, Tensor):
        raise MaxAffineError(f"inputs: {str(path)!r} holds a {type(raw).__name__}: save a "
                             "tensor of inputs (N, *input_shape), or a dict with 'x' and 'y'")
    return _input_tensor(str(path), raw)


def _input_tensor(name: str, x: Tensor) -> Tensor:
    if x.is_complex() or x.dtype == torch.bool:
        raise MaxAffineTypeError(f"inputs: {name} must hold real numbers, got {x.dtype}")
    if x.dim() < 2:
        raise MaxAffineError(f"inputs: {name} has shape {tuple(x.shape)}: inputs are a batch "
                             "(N, *input_shape)")
    x = x.detach().float()
    if not bool(torch.isfinite(x).all()):
        raise MaxAffineError(f"inputs: {name} holds NaN or inf values")
    if len(x) < 16:
        raise MaxAffineError(f"inputs: {name} has {len(x)} inputs; a report needs at least 16")
    return x


def check_fit(x: Tensor, model: nn.Module) -> None:
    """Raise a :class:`maxaffine.MaxAffineError` naming the shapes when the inputs ``x``
    (a batch) do not go through ``model`` to logits (N, outputs)."""
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        # TorchScript's own errors put the cause on their last line
        first = (lines[-1] if "TorchScript" in lines[0] else lines[0])[:300] if lines else ""
        raise MaxAffineError(
            f"inputs: inputs of shape {tuple(x.shape[1:])} do not fit the model "
            f"({type(err).__name__}: {first}); pass inputs shaped (N, *input_shape) as the "
            "model expects") from None
    if not isinstance(out, Tensor) or out.dim() != 2:
        raise MaxAffineError(f"model: its output must be logits (N, outputs), got "
                             f"{tuple(out.shape) if isinstance(out, Tensor) else type(out)}")


def label_inputs(raw: Dataset | Tensor, model: nn.Module, *, seed: int = 0,
                 name: str = "inputs") -> tuple[Dataset, str]:
    """:func:`read_inputs`' result as a Dataset and where its labels come from:
    ``"dataset"``, or ``"predicted"`` for unlabelled inputs, which get the model's
    predictions as labels and a seeded 80/20 split. The inputs must fit ``model``."""
    if isinstance(raw, Dataset):
        check_fit(raw.x_test[:2] if len(raw.x_test) else raw.x_train[:2], model)
        if len(raw.x_test) < 3 or len(raw.x_train) < 1:
            raise MaxAffineError(f"inputs: {len(raw.x_train)} training and {len(raw.x_test)} "
                                 "test inputs are too few for a report")
        return raw, "dataset"
    x = _input_tensor(name, raw)
    check_fit(x[:2], model)
    with torch.no_grad():
        out = torch.cat([model(x[i:i + 1000]) for i in range(0, len(x), 1000)])
    y = out.argmax(1) if out.shape[1] > 1 else (out[:, 0] > 0).long()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = max(3, round(0.2 * len(x)))
    test, train = perm[:n_test], perm[n_test:]
    return Dataset(Path(name).stem, x[train], y[train], x[test], y[test],
                   max(2, out.shape[1])), "predicted"


def run_report(model: str | Path | nn.Module, inputs: str | Path | Tensor,
               out: str | Path = "out/report", *, state_dict: str | Path | None = None,
               quick: bool = False, seed: int = 0) -> Path:
    """The report of :func:`run_demo`'s model sections (:data:`MODEL_SECTIONS`: graph
    summary, affine maps and templates, an exact partition through three inputs with
    its explorer page, local complexity, VQ retrieval) for a user's own ``model``
    (see :func:`load_model`) on ``inputs`` (see :func:`read_inputs`), written to
    ``out/report.md``, ``out/report.html`` and ``out/explore.html``. ``quick``: at most
    512 training and 256 test inputs. Returns ``out``."""
    t0 = time.perf_counter()
    seed = arg.integer(seed, "seed", minimum=0)
    if not isinstance(quick, bool):
        raise MaxAffineTypeError(f"quick must be a bool, got {type(quick).__name__}")
    out = _out_dir(out)
    raw = read_inputs(inputs, seed=seed)
    example = (raw.x_test if isinstance(raw, Dataset) else raw)[:8]
    net = load_model(model, state_dict=state_dict, example=example)
    data, labels = label_inputs(raw, net, seed=seed,
                                name=str(inputs) if not isinstance(inputs, Tensor) else "inputs")
    if quick:
        data = data.subset(512, 256)
    if isinstance(model, nn.Module):
        name = type(model).__name__
    elif Path(model).is_file():
        name = Path(model).stem
    else:
        name = str(model).rpartition(":")[2]
    ctx = DemoContext(out, data, net, net, {}, seed=seed, quick=quick, models={name: net},
                      labels=labels)
    return write_report(ctx, MODEL_SECTIONS, f"maxaffine report: {name} on {data.name}", t0)

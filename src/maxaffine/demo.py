"""``maxaffine demo``: train a small MLP and CNN on MNIST and write a report.

The report (``report.md`` + ``report.html`` + figures) is a list of sections;
each capability adds one function ``section(ctx) -> Section`` to ``SECTIONS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import _arguments as arg
from .affine import affine_map
from .datasets import load_dataset
from .errors import MaxAffineError, MaxAffineTypeError
from .experiments import markdown_to_html, output_dir_problem
from .experiments._report import DemoContext, Section
from .experiments.beta_vq import demo_section as beta_vq_section
from .experiments.orthogonality import demo_section as orthogonality_section
from .experiments.regions_near import demo_section as regions_near_section
from .experiments.sdf_mesh import demo_section as sdf_mesh_section
from .experiments.sparse_coding import demo_section as sparse_coding_section
from .experiments.training_dynamics import demo_section as local_complexity_section
from .experiments.vq_distance import demo_section as vq_distance_section
from .graph import trace
from .models import mlp, small_cnn
from .training import fit


def models_section(ctx: DemoContext) -> Section:
    rows = ["| model | parameters | train acc | test acc | seconds |", "|---|---|---|---|---|"]
    for name, model in (("mlp", ctx.mlp), ("cnn", ctx.cnn)):
        h = ctx.history[name]
        params = sum(p.numel() for p in model.parameters())
        rows.append(f"| {name} | {params} | {h.train_acc:.3f} | {h.test_acc:.3f} | "
                    f"{h.seconds:.1f} |")
    graph = trace(ctx.cnn, ctx.data.x_test[:1])
    text = (f"Dataset: {ctx.data!r}.\n\n" + "\n".join(rows) +
            "\n\nThe CNN as a spline graph (its nonlinearities are the VQ layers):\n\n"
            "```\n" + graph.table() + "\n```\n")
    return Section("Models", text)


def affine_section(ctx: DemoContext) -> Section:
    x = ctx.data.x_test[:64]
    rows = ["| model | dtype | max abs(A x + B - f(x)) | max abs(A - jacrev) |",
            "|---|---|---|---|"]
    for name, model in (("mlp", ctx.mlp), ("cnn", ctx.cnn)):
        for dtype in (torch.float32, torch.float64):
            m = model.to(dtype)
            xd = x.to(dtype)
            amap = affine_map(m, xd)
            with torch.no_grad():
                err = float((amap.reconstruct() - m(xd).flatten(1)).abs().max())
            jac = torch.func.vmap(torch.func.jacrev(lambda v, m=m: m(v[None])[0]))(xd[:8])
            jerr = float((amap.A[:8] - jac).abs().max().detach())
            rows.append(f"| {name} | {str(dtype).split('.')[-1]} | {err:.2e} | {jerr:.2e} |")
            model.float()
    amap = affine_map(ctx.cnn, ctx.data.x_test[:4])
    fig = amap.plot(n=4)
    text = ("Conditioned on its input, each network is the affine map f(x) = A[x] x + B[x]; "
            "the rows of A[x] are the class templates (matched filters).\n\n"
            + "\n".join(rows) + "\n\n" + ctx.figure(fig, "templates_cnn") + "\n")
    return Section("Affine maps and templates", text)


def partition_section(ctx: DemoContext) -> Section:
    import matplotlib.pyplot as plt

    from .partition import Slice, partition_plane, partition_segment

    x, y = ctx.data.x_test, ctx.data.y_test
    # three test images of different classes
    picks = [int(torch.nonzero(y == c)[0]) for c in torch.unique(y)[:3]]
    sl = Slice.through(x[picks[0]], x[picks[1]], x[picks[2]], pad=0.1)
    whole = partition_plane(ctx.mlp, sl, progress=False)
    # the CNN has far more regions (thousands of conv units cut the plane): a window
    # of 1% of |x2 - x1| around the point where its prediction first changes on the
    # segment from x1 to x2 (found by the exact segment partition)
    seg = partition_segment(ctx.cnn, x[picks[0]], x[picks[1]])
    mids = (seg.breakpoints[:-1] + seg.breakpoints[1:]) / 2
    cls = (seg.offsets + seg.slopes * mids.unsqueeze(1)).argmax(1)
    change = torch.nonzero(cls != cls[0]).flatten()
    t_star = float(seg.breakpoints[change[0]]) if change.numel() else 0.0
    length = float(sl.anchors[1, 0])
    zoom = sl.zoom((t_star * length, 0.0), 0.01 * length)
    near = partition_plane(ctx.cnn, zoom, progress=False)
    fig, axes = plt.subplots(2, 2, figsize=(13, 12))
    axes = axes.flatten()
    whole.plot(ax=axes[0], color_by="region")
    whole.plot(ax=axes[1], color_by="class")
    near.plot(ax=axes[2], color_by="region")
    near.plot(ax=axes[3], color_by="layer")
    axes[0].set_title(f"MLP: {whole.num_regions} regions on the plane through x1, x2, x3",
                      fontsize=9)
    axes[1].set_title("MLP: predicted class, decision boundary in black", fontsize=9)
    axes[2].set_title(f"CNN: {near.num_regions} regions in a window where its prediction "
                      "changes on the segment x1-x2 (decision boundary bold)", fontsize=9)
    axes[3].set_title("CNN, same window: edges coloured by the layer that made them",
                      fontsize=9)
    fig.tight_layout()
    rows = ["| statistic | MLP, whole plane | CNN, window on the segment x1-x2 |",
            "|---|---|---|"]
    a, b = whole.summary(), near.summary()

    def fmt(v: object) -> str:
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    for key in ("regions", "vertices", "edges", "domain_area", "area_sum", "mean_area",
                "decision_boundary_segments", "decision_boundary_length", "seconds"):
        rows.append(f"| {key} | {fmt(a[key])} | {fmt(b[key])} |")
    text = (f"The exact partitions of the plane through test images of classes "
            f"{[int(y[i]) for i in picks]} (x1, x2, x3) into linear regions: every "
            "region's code, area and affine map are known exactly (max-pooling and "
            "batch-norm included). Along the segment from x1 to x2 the CNN crosses "
            f"{seg.num_regions} regions (exact segment partition). The first "
            "partitions in a fresh environment also compile the partition's loops "
            "(numba, a few seconds, cached on disk): their seconds include it.\n\n"
            + "\n".join(rows) + "\n\n" + ctx.figure(fig, "partition") + "\n")
    return Section("Exact partitions of a plane of input space", text)


SECTIONS: list[Callable[[DemoContext], Section]] = [models_section, affine_section,
                                                     partition_section,
                                                     beta_vq_section, sparse_coding_section,
                                                     orthogonality_section, vq_distance_section,
                                                     local_complexity_section,
                                                     regions_near_section, sdf_mesh_section]


def run_demo(out: str | Path = "out/demo", *, quick: bool = False, seed: int = 0,
             progress: bool = True) -> Path:
    """Train the demo models and write ``out/report.md`` and ``out/report.html``
    (``out`` is a directory, created if missing)."""
    t0 = time.perf_counter()
    if not isinstance(out, str | Path):
        raise MaxAffineTypeError(f"out must be a directory path (str or Path), got "
                                 f"{type(out).__name__}")
    seed = arg.integer(seed, "seed", minimum=0)
    out = Path(out)
    problem = output_dir_problem(out)
    if problem is not None:
        raise MaxAffineError(f"out: {problem}; pass a directory for the report")
    out.mkdir(parents=True, exist_ok=True)
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
    parts = ["# maxaffine demo report", ""]
    for make in SECTIONS:
        s0 = time.perf_counter()
        section = make(ctx)
        parts += [f"## {section.title}", "", section.markdown,
                  f"_({time.perf_counter() - s0:.1f} s)_", ""]
    parts.append(f"Total: {time.perf_counter() - t0:.0f} s.")
    text = "\n".join(parts)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(markdown_to_html(text))
    return out

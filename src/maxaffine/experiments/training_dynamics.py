"""``maxaffine reproduce training-dynamics``: how the partition around the data
changes over a long training run.

Humayun, Balestriero & Baraniuk, "Deep Networks Always Grok and Here is Why"
(ICML 2024) track the *local complexity* (the number of neurons whose boundary
crosses a small cross-polytope around a point, :func:`maxaffine.local_complexity`)
around training and test points during long training: it first rises, then
falls around the data as the regions migrate towards the decision boundary
("region migration"), late in training. We train a network on an MNIST subset
for many epochs and record, at log-spaced steps, the local complexity around
training and test points, the distance from those points to the nearest region
boundary (:func:`maxaffine.boundary_distance`) and the accuracies.

``maxaffine.training.fit`` has no per-step callback, so the measurements ride on
its ``penalty`` hook: a :class:`Tracker` is called with the model before each
update, measures at the scheduled steps (in eval mode, without gradients) and
adds 0 to the loss.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..datasets import Dataset, load_dataset
from ..graph import SplineGraph, trace
from ..models import mlp, small_cnn
from ..stats import boundary_distance, local_complexity
from ..training import accuracy, fit
from . import (
    Experiment,
    Table,
    non_negative_int,
    positive_float,
    positive_int,
    save_figure,
    write_table,
)

if TYPE_CHECKING:
    from ._report import DemoContext, Section


def log_schedule(total: int, points: int) -> list[int]:
    """About ``points`` distinct steps from 0 to ``total``, log-spaced."""
    raw = torch.logspace(0, math.log10(max(1, total)), max(2, points - 1)).round().long()
    return sorted({0, total, *raw.tolist()})


class Tracker:
    """Measures the partition statistics at scheduled steps (a ``fit`` penalty that
    adds 0). ``points``: name -> (inputs for local complexity, inputs for the
    boundary distance)."""

    def __init__(self, graph: SplineGraph, points: dict[str, tuple[Tensor, Tensor]],
                 data: Dataset, schedule: list[int], radius: float, n_directions: int,
                 steps_per_epoch: int):
        self.graph, self.points, self.data = graph, points, data
        self.schedule, self.radius, self.n_directions = set(schedule), radius, n_directions
        self.steps_per_epoch = steps_per_epoch
        self.step = 0
        self.records: list[dict] = []

    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
        if self.step in self.schedule:
            self.measure(model)
        self.step += 1
        return xb.new_zeros(())

    @torch.no_grad()
    def measure(self, model: nn.Module) -> dict:
        was = model.training
        model.eval()
        t0 = time.perf_counter()
        rec: dict = {"step": self.step, "epoch": self.step / self.steps_per_epoch,
                     "train_acc": accuracy(model, self.data.x_train, self.data.y_train),
                     "test_acc": accuracy(model, self.data.x_test, self.data.y_test)}
        for name, (x_lc, x_bd) in self.points.items():
            lc = local_complexity(self.graph, x_lc, self.radius, self.n_directions)
            bd = boundary_distance(self.graph, x_bd)
            rec[f"lc_{name}"] = float(lc.total.double().mean())
            rec[f"lc_{name}_layers"] = lc.values.double().mean(0).tolist()
            rec[f"bd_{name}"] = float(bd.total.median())
            rec[f"bd_{name}_layers"] = bd.values.median(0).values.tolist()
        rec["seconds"] = time.perf_counter() - t0
        self.records.append(rec)
        model.train(was)
        return rec


def build(arch: str, data: Dataset, widths: tuple[int, ...]) -> nn.Module:
    if arch == "mlp":
        return mlp(data.input_shape, widths, data.num_classes)
    return small_cnn(data.input_shape, data.num_classes, channels=widths)


def plot_dynamics(records: list[dict], radius: float):
    import matplotlib.pyplot as plt

    steps = [max(r["step"], 0.5) for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(steps, [r["train_acc"] for r in records], "o-", ms=3, label="train")
    axes[0].plot(steps, [r["test_acc"] for r in records], "s-", ms=3, label="test")
    axes[0].set_ylabel("accuracy")
    axes[1].plot(steps, [r["lc_train"] for r in records], "o-", ms=3, label="train points")
    axes[1].plot(steps, [r["lc_test"] for r in records], "s-", ms=3, label="test points")
    axes[1].set_ylabel(f"local complexity (radius {radius:g})")
    axes[2].plot(steps, [r["bd_train"] for r in records], "o-", ms=3, label="train points")
    axes[2].plot(steps, [r["bd_test"] for r in records], "s-", ms=3, label="test points")
    axes[2].set_ylabel("median distance to region boundary")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("optimisation step (0 plotted at 0.5)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--widths", type=positive_int, nargs="+", default=[200, 200, 200],
                   help="MLP widths or CNN channels (default 200 200 200)")
    p.add_argument("--train-size", type=positive_int, default=1000,
                   help="training samples from the MNIST subset (default 1000)")
    p.add_argument("--epochs", type=positive_int, default=1000, help="epochs (default 1000)")
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--init-scale", type=positive_float, default=1.0,
                   help="multiply the initial weights by this (default 1)")
    p.add_argument("--checkpoints", type=positive_int, default=24, help="measurements (log-spaced)")
    p.add_argument("--radius", type=positive_float, default=0.2,
                   help="cross-polytope radius for the local complexity (default 0.2)")
    p.add_argument("--directions", type=positive_int, default=25, help="cross-polytope directions")
    p.add_argument("--lc-points", type=positive_int, default=500,
                   help="train and test points for the local complexity (default 500 each)")
    p.add_argument("--bd-points", type=positive_int, default=100,
                   help="train and test points for the boundary distance (default 100 each)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> Path:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    full = load_dataset("mnist", seed=args.seed)
    n = args.train_size
    data = full.subset(train=n)
    torch.manual_seed(args.seed)
    model = build(args.arch, data, tuple(args.widths))
    if args.init_scale != 1.0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("weight") and p.dim() > 1:
                    p.mul_(args.init_scale)
    model.eval()
    graph = trace(model, data.x_test[:1])
    model.train()
    steps_per_epoch = max(1, len(data.x_train) // 64)
    total = args.epochs * steps_per_epoch
    schedule = log_schedule(total, args.checkpoints)
    k, b = args.lc_points, args.bd_points
    points = {"train": (data.x_train[:k], data.x_train[:b]),
              "test": (data.x_test[:k], data.x_test[:b])}
    tracker = Tracker(graph, points, data, schedule, args.radius, args.directions,
                      steps_per_epoch)
    hist = fit(model, data, epochs=args.epochs, lr=args.lr, seed=args.seed, penalty=tracker,
               progress=not args.no_progress, desc=f"{args.arch} {args.epochs} epochs")
    tracker.step = total
    tracker.measure(model)
    for r in tracker.records:
        print(f"step {r['step']:6d}: acc {r['train_acc']:.3f}/{r['test_acc']:.3f}, "
              f"LC {r['lc_train']:.2f}/{r['lc_test']:.2f}, boundary distance "
              f"{r['bd_train']:.2e}/{r['bd_test']:.2e}", flush=True)
    rows = [[r["step"], round(r["epoch"], 1), round(r["train_acc"], 3), round(r["test_acc"], 3),
             round(r["lc_train"], 2), round(r["lc_test"], 2), f"{r['bd_train']:.2e}",
             f"{r['bd_test']:.2e}"] for r in tracker.records]
    measured = sum(r["seconds"] for r in tracker.records)
    during = measured - tracker.records[-1]["seconds"]  # the last one ran after fit
    notes = (f"{data!r}; {args.arch} widths {tuple(args.widths)}, Adam lr {args.lr:g}, batch 64, "
             f"{args.epochs} epochs ({total} steps), initial weights x{args.init_scale:g}, seed "
             f"{args.seed}. Local complexity: mean over {k} train / {k} test points of the "
             "number of units whose code changes over the cross-polytope of radius "
             f"{args.radius:g} spanned by {args.directions} random orthonormal directions "
             "(inputs in [0, 1]^784). Boundary distance: median over "
             f"{b} train / {b} test points of the exact distance to the boundary of the "
             "point's region. Per-layer values in runs.json. Training took "
             f"{hist.seconds - during:.0f} s, the measurements {measured:.0f} s; "
             f"{args.threads} torch thread(s).")
    table = Table("Partition around the data during training (MNIST subset)",
                  ["step", "epoch", "train acc", "test acc", "LC train", "LC test",
                   "dist. train", "dist. test"], rows, notes=notes)
    save_figure(plot_dynamics(tracker.records, args.radius), out, "training_dynamics")
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                        if k != "out"},
                                               "layer_names": list(graph.layer_names),
                                               "records": tracker.records}, indent=2,
                                              default=str))
    table.seconds = time.perf_counter() - t0
    write_table(out, "training_dynamics", table)
    return out


EXPERIMENT = Experiment("training-dynamics", "local complexity and boundary distance around "
                        "train and test points over a long training run (Humayun et al. 2024)",
                        add_arguments, run)


def demo_section(ctx: DemoContext) -> Section:
    """Local complexity of the demo CNN around training and test points (histogram)."""
    import matplotlib.pyplot as plt

    from ._report import Section

    n = 64 if ctx.quick else 256
    radius, dirs = 0.2, 8
    ctx.cnn.eval()
    stats = {name: local_complexity(ctx.cnn, x[:n], radius, dirs, seed=ctx.seed)
             for name, x in (("train", ctx.data.x_train), ("test", ctx.data.x_test))}
    fig, ax = plt.subplots(figsize=(6, 3.2))
    top = int(max(int(s.total.max()) for s in stats.values()))
    bins = torch.linspace(0, top + 1, min(40, top + 2)).tolist()
    for name, s in stats.items():
        ax.hist(s.total.numpy(), bins=bins, alpha=0.6, label=f"{name} points")
    ax.set_xlabel(f"units whose code changes within radius {radius} ({dirs} directions)")
    ax.set_ylabel("points")
    ax.legend()
    fig.tight_layout()
    names = stats["train"].names
    rows = ["| points | " + " | ".join(f"layer {k}" for k in names) + " | total |",
            "|---" * (len(names) + 2) + "|"]
    for name, s in stats.items():
        means = s.values.double().mean(0).tolist()
        rows.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in means)
                    + f" | {float(s.total.double().mean()):.1f} |")
    text = ("Local complexity (`maxaffine.local_complexity`, Humayun et al. 2024): the number "
            "of units whose code is not constant over a cross-polytope of radius "
            f"{radius} ({dirs} random orthonormal directions) around "
            f"{len(stats['train'].total)} training and {len(stats['test'].total)} test "
            "inputs, mean per layer:\n\n" + "\n".join(rows) + "\n\n"
            + ctx.figure(fig, "local_complexity") + "\n\nHow it evolves during training: "
            "`maxaffine reproduce training-dynamics` (results/training-dynamics/).\n")
    return Section("Local complexity around the data", text)

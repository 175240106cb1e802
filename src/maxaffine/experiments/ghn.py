"""``maxaffine reproduce ghn``: generalized Hamming networks without batch-norm
against the same architectures with ReLU + batch-norm.

Fan ("Revisit Fuzzy Neural Network", NeurIPS 2017) claims that the analytic
bias ``-(sum w + sum x) / 2`` of a generalized Hamming neuron replaces both the
learned bias and batch-norm, and that GHNs learn fast. We train, on the MNIST
subset (:func:`maxaffine.datasets.load_dataset`), an MLP (784-256-256-10) and a
small CNN (two 3x3 conv + max-pool stages, 16 and 32 channels, then a linear
read-out) in four versions:

* ``ghn``: :class:`maxaffine.nn.GHN`, single thresholding (ReLU at the chance
  distance), no learned bias, no batch-norm;
* ``ghn-double``: the same with double thresholding (``--margin``);
* ``relu+bn``: the same layout with learned layers, batch-norm and ReLU
  (:func:`maxaffine.models.small_cnn`; the MLP with BatchNorm1d);
* ``relu``: learned biases and ReLU, no batch-norm (a reference that separates
  "no batch-norm" from "analytic bias").

For each learning rate in ``--lrs`` and each seed we record the test accuracy
after every ``--eval-every`` iterations (learning curves) and after each epoch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from ..datasets import Dataset
from ..models import mlp, small_cnn
from ..nn.hamming import GHN
from ..training import fit
from . import (
    Experiment,
    Table,
    add_common_arguments,
    non_negative_float,
    positive_float,
    positive_int,
    prepare,
    save_figure,
    write_table,
)

CONFIGS = ("ghn", "ghn-double", "relu+bn", "relu")
ARCHS = ("mlp", "cnn")
WIDTHS = (256, 256)
CHANNELS = (16, 32)


def build(data: Dataset, arch: str, config: str, margin: float = 0.1) -> nn.Module:
    """The ``arch`` ("mlp" or "cnn") network of ``config`` (one of :data:`CONFIGS`)."""
    shape, k = data.input_shape, data.num_classes
    if config in ("ghn", "ghn-double"):
        threshold = "single" if config == "ghn" else "double"
        if arch == "mlp":
            return GHN(shape, k, widths=WIDTHS, threshold=threshold, margin=margin)
        return GHN(shape, k, widths=(), channels=CHANNELS, threshold=threshold, margin=margin)
    bn = config == "relu+bn"
    if arch == "cnn":
        return small_cnn(shape, k, CHANNELS, batchnorm=bn)
    if not bn:
        return mlp(shape, WIDTHS, k)
    layers: list[nn.Module] = [nn.Flatten()]
    d = data.x_train[0].numel()
    for w in WIDTHS:
        layers += [nn.Linear(d, w, bias=False), nn.BatchNorm1d(w), nn.ReLU()]
        d = w
    layers.append(nn.Linear(d, k))
    return nn.Sequential(*layers)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _acc_at(curve: list[tuple[int, float]], it: int) -> float:
    """Accuracy at the last evaluation at or before iteration ``it``."""
    before = [a for i, a in curve if i <= it]
    return before[-1] if before else float("nan")


def _plot_curves(runs: list[dict], archs: list[str], lrs: list[float], configs: list[str]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(lrs), len(archs), figsize=(5.2 * len(archs), 3.6 * len(lrs)),
                             squeeze=False)
    for r, lr in enumerate(lrs):
        for c, arch in enumerate(archs):
            ax = axes[r, c]
            for j, config in enumerate(configs):
                rs = [x for x in runs if x["arch"] == arch and x["lr"] == lr
                      and x["config"] == config]
                if not rs:
                    continue
                its = [i for i, _ in rs[0]["curve"]]
                accs = torch.tensor([[a for _, a in x["curve"]] for x in rs])
                m, s = accs.mean(0), accs.std(0) if len(rs) > 1 else torch.zeros(len(its))
                ax.plot(its, m, color=f"C{j}", label=config, lw=1.5)
                ax.fill_between(its, m - s, m + s, color=f"C{j}", alpha=0.2)
            ax.set_title(f"{arch}, Adam lr {lr:g}", fontsize=10)
            ax.set_xlabel("iteration (batch 64)")
            ax.set_ylabel("test accuracy")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("GHN (analytic bias, no batch-norm) vs ReLU + batch-norm on MNIST "
                 "(mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--seeds", type=positive_int, default=3,
                   help="seeds per configuration (default 3)")
    p.add_argument("--epochs", type=positive_int, default=1, help="epochs (default 1)")
    p.add_argument("--lrs", type=positive_float, nargs="+", default=[1e-3, 1e-2],
                   help="Adam learning rates, each a separate comparison (default 1e-3 1e-2)")
    p.add_argument("--eval-every", type=positive_int, default=8,
                   help="evaluate the test accuracy every this many iterations (default 8)")
    p.add_argument("--margin", type=non_negative_float, default=0.1,
                   help="double-thresholding margin")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "digits"])
    add_common_arguments(p)


def run(args: argparse.Namespace) -> Path:
    t0 = time.perf_counter()
    out = Path(args.out)
    data = prepare(args, args.dataset)
    per_epoch = len(data.x_train) // 64
    runs = []
    for lr in args.lrs:
        for arch in args.archs:
            for config in args.configs:
                for seed in range(args.seeds):
                    torch.manual_seed(seed)
                    model = build(data, arch, config, args.margin)
                    hist = fit(model, data, epochs=args.epochs, lr=lr, seed=seed,
                               eval_every=args.eval_every, progress=not args.no_progress,
                               desc=f"{arch} {config} lr {lr:g} seed {seed}")
                    runs.append({
                        "arch": arch, "config": config, "lr": lr, "seed": seed,
                        "test_acc": hist.test_acc, "train_acc": hist.train_acc,
                        "curve": hist.curve, "seconds": hist.seconds,
                        "epoch_acc": [_acc_at(hist.curve, e * per_epoch)
                                      for e in range(1, args.epochs + 1)],
                        "parameters": sum(p.numel() for p in model.parameters()),
                    })
                    print(f"{arch} {config:10s} lr {lr:g} seed {seed}: test "
                          f"{hist.test_acc:.4f} ({hist.seconds:.1f} s)", flush=True)
    early = [it for it in (args.eval_every, 3 * args.eval_every) if it < per_epoch * args.epochs]
    rows = []
    for lr in args.lrs:
        for arch in args.archs:
            for config in args.configs:
                rs = [r for r in runs if (r["arch"], r["config"], r["lr"]) == (arch, config, lr)]
                cells = [arch, f"{lr:g}", config, rs[0]["parameters"]]
                for it in early:
                    m, s = _mean_std([_acc_at(r["curve"], it) for r in rs])
                    cells.append(f"{m:.3f} ± {s:.3f}")
                m, s = _mean_std([r["test_acc"] for r in rs])
                cells += [f"{m:.4f} ± {s:.4f}",
                          f"{statistics.fmean(r['seconds'] for r in rs):.1f}"]
                rows.append(cells)
    its = [f"acc @ it {it}" for it in early]
    last = "test acc after 1 epoch" if args.epochs == 1 else f"test acc after {args.epochs} epochs"
    notes = (f"{data!r}; batch 64 ({per_epoch} iterations per epoch), Adam, {args.seeds} "
             f"seed(s) (init and batch order; fixed split); mean ± std over seeds. "
             f"GHN hidden layers: GHLinear / GHConv2d with analytic bias -(sum w + sum x)/2, "
             f"no learned bias, no batch-norm; ghn-double margin {args.margin}. "
             f"MLP widths {WIDTHS}, CNN channels {CHANNELS}. {args.threads} torch thread(s).")
    table = Table("GHN (no batch-norm) vs ReLU + batch-norm: test accuracy",
                  ["arch", "lr", "network", "parameters", *its, last, "s / run"], rows,
                  notes=notes)
    save_figure(_plot_curves(runs, args.archs, args.lrs, args.configs), out, "ghn_curves")
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps({"runs": runs}, indent=2))
    table.seconds = time.perf_counter() - t0
    write_table(out, "ghn", table)
    return out


EXPERIMENT = Experiment("ghn", "generalized Hamming networks without batch-norm vs ReLU + "
                        "batch-norm on MNIST (Fan, NeurIPS 2017)", add_arguments, run)

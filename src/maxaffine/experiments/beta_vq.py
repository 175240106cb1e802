"""``maxaffine reproduce beta-vq``: hard, soft and beta-VQ nonlinearities compared.

"From Hard to Soft" (Balestriero & Baraniuk, ICLR 2019, sec. 4) derives the
family ``z = sum_r t_r l_r``, ``t = softmax(beta / (1 - beta) * l)``: ReLU at
beta -> 1, swish ``u * sigmoid(u)`` at beta = 1/2, ``u / 2`` at beta -> 0, with a
learnable beta in between.  The same small CNN (:func:`maxaffine.models.small_cnn`)
is trained on the MNIST subset and on MNIST-1D with ReLU, swish, fixed beta in
{0.25, 0.75} and a learnable beta (one per layer, initialised at 1/2); we report
test accuracy (mean +- std over seeds) and the learned betas, and plot the
family.  ``--pool beta`` applies the same beta to the pooling layers (softmax
pooling at 1/2) instead of keeping max-pooling.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..datasets import Dataset, load_dataset
from ..graph import trace
from ..inference import soften, vq_posterior
from ..models import small_cnn
from ..nn.betavq import BetaVQ, BetaVQPool1d, BetaVQPool2d, _BetaModule, unit_pieces, vq_selection
from ..training import fit
from . import (
    Experiment,
    Table,
    add_common_arguments,
    positive_int,
    save_figure,
    write_table,
)

if TYPE_CHECKING:
    from ._report import DemoContext, Section

# name -> beta (None: hard ReLU + max-pool; "learnable": learned, initialised at 1/2)
CONFIGS: dict[str, float | str | None] = {
    "relu": None, "swish": 0.5, "beta=0.25": 0.25, "beta=0.75": 0.75, "learnable": "learnable",
}
EPOCHS = {"mnist": 4, "mnist1d": 30}


def build(data: Dataset, config: str, channels: tuple[int, ...] = (16, 32),
          soft_pool: bool = False) -> nn.Module:
    """The small CNN of ``config`` (a key of :data:`CONFIGS`) for ``data``."""
    beta = CONFIGS[config]
    if beta is None:
        return small_cnn(data.input_shape, data.num_classes, channels)
    learnable = beta == "learnable"
    b = 0.5 if learnable else float(beta)

    def activation() -> nn.Module:
        return BetaVQ("relu", b, learnable=learnable)

    pool_cls = BetaVQPool2d if len(data.input_shape) == 3 else BetaVQPool1d

    def pool(k: int) -> nn.Module:
        return pool_cls(k, k, b, learnable=learnable)

    return small_cnn(data.input_shape, data.num_classes, channels, activation=activation,
                     pool=pool if soft_pool else None)


def layer_betas(model: nn.Module) -> dict[str, float]:
    """Each beta-VQ layer's beta (per-channel: the mean), labelled act1, pool1, ..."""
    out: dict[str, float] = {}
    counts = {"act": 0, "pool": 0}
    for m in model.modules():
        if isinstance(m, _BetaModule):
            kind = "act" if isinstance(m, BetaVQ) else "pool"
            counts[kind] += 1
            out[f"{kind}{counts[kind]}"] = float(m.beta.detach().mean())
    return out


def plot_family(betas: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95, 1.0),
                negative_slope: float = 0.2):
    """The beta-VQ family: each unit's output ``z(u)`` (top) and the selection
    ``t(u)`` of the piece ``u`` (bottom) for several beta (ICLR 2019, fig. 2)."""
    import matplotlib.pyplot as plt

    u = torch.linspace(-4, 4, 401, dtype=torch.float64)
    kinds = (("relu", "ReLU: pieces (0, u)"),
             ("leaky_relu", f"leaky ReLU: ({negative_slope} u, u)"),
             ("abs", "abs: (-u, u)"))
    fig, axes = plt.subplots(2, 3, figsize=(11, 6), sharex=True)
    cmap = plt.get_cmap("viridis")
    for j, (kind, title) in enumerate(kinds):
        for i, b in enumerate(betas):
            unit = BetaVQ(kind, b, negative_slope=negative_slope).double()
            with torch.no_grad():
                z = unit(u)
                t = vq_selection(unit_pieces(u, kind, negative_slope), b)[..., 1]
            style = {"color": cmap(i / max(1, len(betas) - 1)), "lw": 1.4,
                     "label": f"beta={b:g}" + {0.5: " (soft)", 1.0: " (hard)"}.get(b, "")}
            axes[0, j].plot(u, z, **style)
            axes[1, j].plot(u, t, **style)
        axes[0, j].set_title(title, fontsize=10)
        axes[1, j].set_xlabel("u")
        axes[1, j].set_ylim(-0.05, 1.05)
    axes[0, 0].set_ylabel("output z = sum_r t_r l_r")
    axes[1, 0].set_ylabel("selection t of piece u")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("beta-VQ: t = softmax(beta/(1-beta) l); beta->1 hard VQ, 1/2 soft VQ, "
                 "->0 mean of the pieces", fontsize=10)
    fig.tight_layout()
    return fig


def _plot_accuracy(summary: list[dict]):
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in summary})
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        rows = [r for r in summary if r["dataset"] == ds]
        names = [r["config"] for r in rows]
        ax.bar(range(len(rows)), [r["acc_mean"] for r in rows],
               yerr=[r["acc_std"] for r in rows], color="C0", capsize=3)
        ax.set_xticks(range(len(rows)), names, rotation=30, fontsize=8)
        lo = min(r["acc_mean"] - r["acc_std"] for r in rows)
        ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(r["acc_mean"] + r["acc_std"]
                                                       for r in rows) + 0.02))
        ax.set_title(ds, fontsize=10)
        ax.set_ylabel("test accuracy")
    fig.tight_layout()
    return fig


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run_grid(datasets: list[str], configs: list[str], seeds: int, epochs: dict[str, int],
             channels: tuple[int, ...], soft_pool: bool, train_size: int | None = None,
             progress: bool = True, log: Callable[[str], None] = print) -> list[dict]:
    """Train every (dataset, config, seed); one dict per run."""
    runs = []
    for ds in datasets:
        data = load_dataset(ds)
        if train_size:
            data = data.subset(train=train_size)
        for config in configs:
            for seed in range(seeds):
                torch.manual_seed(seed)
                model = build(data, config, channels, soft_pool)
                hist = fit(model, data, epochs=epochs[ds], seed=seed, progress=progress,
                           desc=f"{ds} {config} seed {seed}")
                runs.append({"dataset": ds, "config": config, "seed": seed,
                             "epochs": epochs[ds], "test_acc": hist.test_acc,
                             "train_acc": hist.train_acc, "seconds": hist.seconds,
                             "betas": layer_betas(model)})
                log(f"{ds:8s} {config:10s} seed {seed}: test {hist.test_acc:.4f} "
                    f"({hist.seconds:.1f} s) {runs[-1]['betas'] if config == 'learnable' else ''}")
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    """Per (dataset, config): accuracy mean/std and learned betas mean/std."""
    out = []
    keys = list(dict.fromkeys((r["dataset"], r["config"]) for r in runs))
    for ds, config in keys:
        rs = [r for r in runs if r["dataset"] == ds and r["config"] == config]
        acc_m, acc_s = _mean_std([r["test_acc"] for r in rs])
        tr_m, _ = _mean_std([r["train_acc"] for r in rs])
        betas = {}
        if config == "learnable":
            for layer in rs[0]["betas"]:
                betas[layer] = _mean_std([r["betas"][layer] for r in rs])
        out.append({"dataset": ds, "config": config, "seeds": len(rs), "acc_mean": acc_m,
                    "acc_std": acc_s, "train_acc": tr_m, "betas": betas,
                    "seconds": statistics.fmean(r["seconds"] for r in rs)})
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", nargs="+", default=["mnist", "mnist1d"],
                   choices=["mnist", "mnist1d", "digits"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--seeds", type=positive_int, default=5,
                   help="seeds per configuration (default 5)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help=f"epochs for every dataset (default {EPOCHS}, digits 20)")
    p.add_argument("--channels", type=positive_int, nargs="+", default=[16, 32])
    p.add_argument("--pool", choices=["max", "beta"], default="max",
                   help="max: keep max-pooling; beta: beta-VQ pooling with the same beta")
    add_common_arguments(p)


def run(args: argparse.Namespace) -> Path:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    epochs = {ds: args.epochs or EPOCHS.get(ds, 20) for ds in args.datasets}
    runs = run_grid(args.datasets, args.configs, args.seeds, epochs, tuple(args.channels),
                    args.pool == "beta", args.train_size, progress=not args.no_progress)
    summary = summarize(runs)
    rows = []
    for s in summary:
        beta = CONFIGS[s["config"]]
        init = "1 (hard)" if beta is None else ("0.5 -> learned" if beta == "learnable"
                                                else f"{beta:g}")
        learned = ", ".join(f"{k} {m:.3f} ± {sd:.3f}" for k, (m, sd) in s["betas"].items())
        rows.append([s["dataset"], s["config"], init, f"{s['acc_mean']:.4f} ± {s['acc_std']:.4f}",
                     f"{s['train_acc']:.4f}", learned or "-", f"{s['seconds']:.1f}"])
    pool = ("beta-VQ pooling with the same beta" if args.pool == "beta"
            else "max-pooling in every configuration")
    notes = (f"Small CNN channels {tuple(args.channels)} (conv-BN-activation-pool), {pool}; "
             f"Adam lr 1e-3, batch 64, epochs {epochs}; {args.seeds} seed(s) (model init and "
             "batch order; fixed data split); train accuracy is the mean over seeds; learned "
             "beta: mean ± std over seeds, act = activation, pool = pooling layer; "
             f"{args.threads} torch thread(s).")
    table = Table("beta-VQ nonlinearities: test accuracy (mean ± std over seeds)",
                  ["dataset", "nonlinearity", "beta", "test acc", "train acc",
                   "learned beta per layer", "s / run"], rows, notes=notes)
    save_figure(plot_family(), out, "beta_vq_family")
    save_figure(_plot_accuracy(summary), out, "beta_vq_accuracy")
    (out / "runs.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    table.seconds = time.perf_counter() - t0
    write_table(out, "beta_vq", table)
    return out


EXPERIMENT = Experiment("beta-vq", "hard / soft / beta-VQ nonlinearities on MNIST and MNIST-1D "
                        "(From Hard to Soft, ICLR 2019)", add_arguments, run)


# --------------------------------------------------------------------------- demo


def demo_section(ctx: DemoContext) -> Section:
    """The demo CNN softened without retraining, its soft VQ posterior, and a
    learnable-beta copy fine-tuned for one epoch (one seed)."""
    from ..training import accuracy
    from ._report import Section

    data, cnn = ctx.data, ctx.cnn
    x, y = data.x_test, data.y_test
    with torch.no_grad():
        ref = cnn(x[:256])
    rows = ["| beta | nonlinearities | test acc (no retraining) | max abs(output - ReLU net) |",
            "|---|---|---|---|"]
    for beta in (1.0, 0.9, 0.75, 0.5, 0.25):
        soft = soften(cnn, beta, share_weights=True)
        with torch.no_grad():
            diff = float((soft(x[:256]) - ref).abs().max())
        label = {1.0: "ReLU + max-pool", 0.5: "swish + softmax-pool"}.get(beta, "beta-VQ")
        rows.append(f"| {beta:g} | {label} | {accuracy(soft, x, y):.3f} | {diff:.2e} |")
    first = trace(cnn, x[:1]).layers[0].name
    code_rows = ["| beta | mean posterior of the hard code's piece | argmax = code |",
                 "|---|---|---|"]
    with torch.no_grad():
        hard = vq_posterior(cnn, x[:256], layer=first)[first]
        for beta in (0.5, 0.75, 0.9):
            post = vq_posterior(cnn, x[:256], layer=first, beta=beta)[first]
            agree = float((post.argmax(-1) == hard.argmax(-1)).double().mean())
            code_rows.append(f"| {beta:g} | {float((post * hard).sum(-1).mean()):.3f} | "
                             f"{agree:.4f} |")
    tuned = soften(cnn, 0.9, learnable=True)
    sub = data if not ctx.quick else data.subset(train=256)
    hist = fit(tuned, sub, epochs=1, seed=ctx.seed, progress=False)
    betas = ", ".join(f"{k} {v:.3f}" for k, v in layer_betas(tuned).items())
    text = (
        "`maxaffine.soften(cnn, beta)` swaps every ReLU / max-pool of the trained demo CNN "
        "for its beta-VQ counterpart (\"From Hard to Soft\", ICLR 2019): "
        "t = softmax(beta/(1-beta) l) over each unit's pieces, z = sum_r t_r l_r. "
        "beta = 1 reproduces the network exactly; lower beta moves it towards the mean "
        "of the pieces.\n\n" + "\n".join(rows) +
        f"\n\nThe GMM posterior `maxaffine.vq_posterior(cnn, x, layer={first!r}, "
        f"beta=...)[{first!r}]` "
        "over each unit's pieces, against the hard VQ code (argmax differs only at ties):"
        "\n\n" + "\n".join(code_rows) +
        f"\n\nA copy softened at beta = 0.9 with a learnable beta per layer, fine-tuned "
        f"for one epoch ({len(sub.x_train)} samples, seed {ctx.seed}): test accuracy "
        f"{hist.test_acc:.3f}, learned beta {betas}.\n\n"
        + ctx.figure(plot_family(), "beta_vq_family") +
        "\n\nFull experiment: `maxaffine reproduce beta-vq` (results/beta-vq/).\n"
    )
    return Section("Hard, soft and beta-VQ nonlinearities", text)

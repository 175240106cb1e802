"""``maxaffine reproduce semi-supervised``: does the inversion loss help with few labels?

Claim (Balestriero, Roger, Glotin & Baraniuk, "Semi-Supervised Learning via New
Deep Network Inversion", arXiv:1711.04313; Balestriero, Glotin & Baraniuk,
"Semi-Supervised Learning Enabled by Multiscale Deep Neural Network Inversion",
arXiv:1802.10172): adding the network's own reconstruction of its inputs
(:func:`maxaffine.losses.inversion_loss`: the predicted class's template and every
layer's backward map of its activations, compared with the input) and the entropy of
the unlabelled predictions to the cross-entropy of a few labelled inputs lets any
topology learn from unlabelled data, beating supervised training at few labels.

For each data set and number of labels we train the same MLP from the same
initialisation and on the same mini-batches three ways: *supervised* (cross-entropy
of the labelled inputs only), *entropy* (plus ``beta`` times the entropy of the
unlabelled predictions) and *inversion* (plus ``alpha`` times the reconstruction
error of all inputs, with the same entropy term;
:func:`maxaffine.losses.semi_supervised_loss`), with the same number of Adam steps,
and report the test accuracy (mean +- std over seeds) and whether each difference
to supervised training exceeds twice its standard error.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..datasets import Dataset, load_dataset
from ..graph import SplineGraph, trace
from ..losses import inversion_loss, semi_supervised_loss
from ..models import mlp
from ..training import accuracy
from . import (
    Experiment,
    Table,
    non_negative_float,
    positive_float,
    positive_int,
    save_figure,
    write_table,
)

METHODS = ("supervised", "entropy", "inversion")
DATASETS = ("mnist", "digits", "mnist1d")


def labelled_split(y: Tensor, n_labels: int, num_classes: int, gen: torch.Generator
                   ) -> tuple[Tensor, Tensor]:
    """Indices of ``n_labels`` labelled samples (as class-balanced as ``n_labels``
    allows: ``n_labels // C`` per class, the remainder from random classes) and of
    the rest (the unlabelled pool)."""
    if n_labels > len(y):
        raise ValueError(f"{n_labels} labels but only {len(y)} training samples")
    per, extra = divmod(n_labels, num_classes)
    bonus = set(torch.randperm(num_classes, generator=gen)[:extra].tolist())
    chosen = []
    for c in range(num_classes):
        pool = torch.nonzero(y == c).flatten()
        pool = pool[torch.randperm(len(pool), generator=gen)]
        chosen.append(pool[:per + (c in bonus)])
    lab = torch.cat(chosen)
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[lab] = False
    return lab, torch.nonzero(mask).flatten()


def train(method: str, data: Dataset, n_labels: int, seed: int, *, steps: int,
          widths: Sequence[int], labelled_batch: int, unlabelled_batch: int, lr: float,
          alpha: float, beta: float) -> tuple[nn.Module, dict]:
    """One run: the MLP trained by ``method`` for ``steps`` Adam steps. The model's
    initialisation, the labelled subset and every mini-batch depend on ``seed`` only,
    not on the method. Returns the model (eval mode) and its numbers."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    split = torch.Generator().manual_seed(1000 + seed)
    lab, unl = labelled_split(data.y_train, n_labels, data.num_classes, split)
    xl_all, yl_all, xu_all = data.x_train[lab], data.y_train[lab], data.x_train[unl]
    torch.manual_seed(seed)
    model = mlp(data.input_shape, widths, data.num_classes)
    graph: SplineGraph = trace(model, xl_all[:1])  # reads the module's current weights
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    bl, bu = min(labelled_batch, len(lab)), min(unlabelled_batch, len(unl))
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        il = torch.randperm(len(lab), generator=gen)[:bl]
        iu = torch.randint(len(unl), (bu,), generator=gen)
        xl, yl, xu = xl_all[il], yl_all[il], xu_all[iu]
        if method == "supervised":
            loss = nn.functional.cross_entropy(model(xl), yl)
        else:
            loss = semi_supervised_loss(graph, xl, yl, xu, beta=beta,
                                        alpha=alpha if method == "inversion" else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        rec = float(inversion_loss(graph, data.x_test[:500]))
    return model, {"method": method, "dataset": data.name, "labels": n_labels, "seed": seed,
                   "test_acc": accuracy(model, data.x_test, data.y_test),
                   "labelled_train_acc": accuracy(model, xl_all, yl_all),
                   "test_reconstruction": rec, "final_loss": float(loss.detach()),
                   "seconds": seconds}


def _ints(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _names(options: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        vals = [t.strip() for t in text.split(",") if t.strip()]
        bad = [v for v in vals if v not in options]
        if not vals or bad:
            raise argparse.ArgumentTypeError(f"expected some of {','.join(options)}, got "
                                             f"{text!r}")
        return vals

    parse.__name__ = "names"
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", type=_names(DATASETS), default=list(DATASETS),
                   help="comma-separated, from mnist,digits,mnist1d (default all)")
    p.add_argument("--labels", type=_ints, default=[50, 100, 500],
                   help="numbers of labelled training inputs (default 50,100,500)")
    p.add_argument("--methods", type=_names(METHODS), default=list(METHODS))
    p.add_argument("--seeds", type=positive_int, default=5)
    p.add_argument("--steps", type=positive_int, default=300, help="Adam steps per run")
    p.add_argument("--widths", type=_ints, default=[256, 128], help="MLP hidden widths")
    p.add_argument("--labelled-batch", type=positive_int, default=50)
    p.add_argument("--unlabelled-batch", type=positive_int, default=100)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--alpha", type=non_negative_float, default=1.0,
                   help="weight of the reconstruction (inversion) term")
    p.add_argument("--beta", type=non_negative_float, default=0.1,
                   help="weight of the entropy term (entropy and inversion)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--no-progress", action="store_true")


def _mean_std(vals: Sequence[float]) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.3f} ± {sd:.3f}"


def _verdict(base: list[float], other: list[float]) -> str:
    """The difference of mean test accuracies and whether it exceeds 2 standard errors
    (paired over seeds: the same initialisation, labels and batches)."""
    diffs = [o - b for o, b in zip(other, base, strict=True)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return f"{mean:+.3f} (one seed)"
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    if abs(mean) <= 2 * se:
        return f"{mean:+.3f} (noise)"
    return f"{mean:+.3f} ({'better' if mean > 0 else 'worse'})"


def _figure(runs: list[dict], datasets: list[str], methods: list[str], out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4),
                             squeeze=False)
    for ax, name in zip(axes[0], datasets, strict=True):
        for method in methods:
            rs = [r for r in runs if r["dataset"] == name and r["method"] == method]
            labels = sorted({r["labels"] for r in rs})
            accs = [[r["test_acc"] for r in rs if r["labels"] == n] for n in labels]
            mean = [statistics.fmean(a) for a in accs]
            sd = [statistics.stdev(a) if len(a) > 1 else 0.0 for a in accs]
            ax.errorbar(labels, mean, yerr=sd, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xticks(labels, [str(n) for n in labels])
        ax.minorticks_off()
        ax.set_xlabel("labelled training inputs")
        ax.set_ylabel("test accuracy")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Semi-supervised learning by network inversion (mean ± sd over seeds)",
                 fontsize=10)
    save_figure(fig, out, "semi_supervised_accuracy")


def _reconstruction_figure(models: dict[str, nn.Module], x: Tensor, out: Path) -> None:
    """Input and the "template" reconstruction (the predicted class's template) of a
    few test images, for each method's model (seed 0)."""
    import matplotlib.pyplot as plt

    from ..affine import affine_map

    rows = [("input", x)]
    for method, model in models.items():
        rows.append((method, affine_map(model, x).templates().detach()))
    fig, axes = plt.subplots(len(rows), len(x), figsize=(1.3 * len(x), 1.4 * len(rows)),
                             squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        for j in range(len(x)):
            ax = axes[i][j]
            img = imgs[j].reshape(x.shape[-2], x.shape[-1]) if x.dim() == 4 else imgs[j]
            if x.dim() == 4 and i == 0:
                ax.imshow(img.numpy(), cmap="gray")
            elif x.dim() == 4:  # red positive, blue negative, white 0
                top = float(img.abs().max()) or 1.0
                ax.imshow(img.numpy(), cmap="RdBu_r", vmin=-top, vmax=top)
            else:
                ax.plot(img.flatten().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle("Predicted class's template A_c[x] (the 'template' reconstruction)",
                 fontsize=9)
    save_figure(fig, out, "templates")


def run(args: argparse.Namespace) -> Path:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = len(args.datasets) * len(args.labels) * args.seeds * len(args.methods)
    bar = tqdm(total=total, desc="runs", disable=args.no_progress)
    runs: list[dict] = []
    first: dict[str, nn.Module] = {}
    for name in args.datasets:
        data = load_dataset(name, seed=0)
        for n_labels in args.labels:
            if n_labels >= len(data.x_train):
                raise SystemExit(f"--labels {n_labels}: {name} has only {len(data.x_train)} "
                                 "training inputs (some must stay unlabelled)")
            for seed in range(args.seeds):
                for method in args.methods:
                    model, r = train(method, data, n_labels, seed, steps=args.steps,
                                     widths=args.widths, labelled_batch=args.labelled_batch,
                                     unlabelled_batch=args.unlabelled_batch, lr=args.lr,
                                     alpha=args.alpha, beta=args.beta)
                    runs.append(r)
                    if name == args.datasets[0] and n_labels == args.labels[0] and seed == 0:
                        first[method] = model
                    bar.update(1)
    bar.close()

    rows, verdicts = [], []
    for name in args.datasets:
        for n_labels in args.labels:
            accs = {m: [r["test_acc"] for r in runs if r["dataset"] == name
                        and r["labels"] == n_labels and r["method"] == m]
                    for m in args.methods}
            row = [name, n_labels] + [_mean_std(accs[m]) for m in args.methods]
            if "supervised" in args.methods:
                row += [_verdict(accs["supervised"], accs[m]) for m in args.methods
                        if m != "supervised"]
            rows.append(row)
    columns = ["data", "labels"] + [f"{m} test acc" for m in args.methods]
    if "supervised" in args.methods:
        columns += [f"{m} - supervised" for m in args.methods if m != "supervised"]
    wins = {m: sum(1 for row in rows for c, v in zip(columns, row, strict=True)
                   if c == f"{m} - supervised" and "better" in str(v))
            for m in args.methods if m != "supervised"}
    seconds = time.perf_counter() - t0
    verdicts = [f"{m}: better than supervised beyond 2 SE in {k} of {len(rows)} settings"
                for m, k in wins.items()]
    notes = (
        f"MLP {list(args.widths)} (ReLU), Adam lr={args.lr}, {args.steps} steps per run, "
        f"labelled batches of {args.labelled_batch} (all labels when fewer), unlabelled "
        f"batches of {args.unlabelled_batch} (the training inputs not labelled); "
        f"class-balanced labelled subsets; {args.seeds} seeds, each with the same "
        "initialisation, labels and batches for every method. entropy: CE + "
        f"{args.beta:g} H(unlabelled); inversion: CE + {args.alpha:g} R(all) + "
        f"{args.beta:g} H(unlabelled), R = inversion_loss(scales='all'): the predicted "
        "class's template and each ReLU layer's backward map of its activations, mean "
        "squared error per input entry. Test accuracy on the held-out test split "
        "(mnist: 1,000 images; digits: 360; mnist1d: 1,000). 'm - supervised': mean "
        "paired difference over seeds, 'better' / 'worse' only beyond 2 standard "
        "errors (a rough test: with 5 seeds, a two-sided paired t-test at 2 SE has "
        "p = 0.12), else 'noise'. The defaults alpha = 1, beta = 0.1 were chosen in a "
        "small pilot on a validation split of the training set (100 labels, 1-2 seeds; "
        "alpha in 0.3, 1, 3, 10; beta in 0.1, 0.3, 1), never on the test split.\n\n"
        + "\n".join(f"- {v}" for v in verdicts))
    table = Table(title="Semi-supervised learning by network inversion: test accuracy",
                  columns=columns, rows=rows, seconds=seconds, notes=notes)
    write_table(out, "semi_supervised", table)
    (out / "runs.json").write_text(json.dumps(runs, indent=1))
    _figure(runs, list(args.datasets), list(args.methods), out)
    data = load_dataset(args.datasets[0], seed=0)
    _reconstruction_figure(first, data.x_test[:6], out)
    return out


EXPERIMENT = Experiment(
    name="semi-supervised",
    help="supervised vs entropy minimisation vs the inversion loss at 50-500 labels "
         "(Balestriero, Glotin & Baraniuk 2018)",
    add_arguments=add_arguments,
    run=run,
)

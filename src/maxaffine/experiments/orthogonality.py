"""``maxaffine reproduce orthogonality``: do orthogonal templates help?

Claim (Balestriero & Baraniuk, "A Spline Theory of Deep Networks", ICML 2018;
"Mad Max", Proc. IEEE 2021): adding
``lambda * mean_n sum_{a != c} <A_a[x_n], A_c[x_n]>^2`` to the loss (templates by
double back-prop) improves accuracy and reduces overfitting with no change to
the architecture.  We train the same CNN with each penalty strength on
class-balanced mini-batches with Adam, over several seeds, and report test
accuracy, the train-test gap and the mean |cos| between the templates of
different classes on test data, with a verdict that says whether any difference
is beyond seed noise.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..affine import affine_map
from ..datasets import DATASETS, load_dataset
from ..losses import template_gram, template_orthogonality, weight_orthogonality
from ..models import small_cnn
from ..training import Penalty, fit
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

PENALTIES = ("template", "weight")


def make_penalty(kind: str, lam: float, *, normalize: bool = False,
                 samples: int | None = None) -> Penalty | None:
    """The ``fit(penalty=...)`` callable for ``lam`` times the ``kind`` penalty
    (``"template"``: :func:`template_orthogonality`; ``"weight"``:
    :func:`weight_orthogonality` of the last ``nn.Linear``); None when ``lam == 0``."""
    if kind not in PENALTIES:
        raise ValueError(f"penalty must be one of {PENALTIES}, got {kind!r}")
    if lam == 0:
        return None
    if kind == "template":
        def penalty(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
            return lam * template_orthogonality(model, xb, normalize=normalize, samples=samples)
    else:
        def penalty(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
            last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
            return lam * weight_orthogonality(last.weight, normalize=normalize)
    return penalty


def cosine_matrix(model: nn.Module, x: Tensor, batch_size: int = 250) -> Tensor:
    """Mean over ``x`` of |cos| between class templates, (C, C), model in eval mode."""
    was = model.training
    model.eval()
    total = None
    for i in range(0, len(x), batch_size):
        with torch.no_grad():  # the vjp inside still runs: torch.func ignores outer no_grad
            cos = template_gram(model, x[i:i + batch_size], normalize=True).abs().sum(0)
        total = cos if total is None else total + cos
    model.train(was)
    return total / len(x)


def mean_offdiag(mat: Tensor) -> float:
    """Mean of the off-diagonal entries of a square matrix."""
    c = mat.shape[0]
    return float((mat.sum() - mat.diagonal().sum()) / (c * (c - 1)))


def plot_cosines(mats: dict[str, Tensor], title: str = "mean |cos| between class templates"):
    """Heatmaps of (C, C) template-cosine matrices, one panel per entry."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(mats), figsize=(3.6 * len(mats), 3.3), squeeze=False)
    im = None
    for ax, (name, mat) in zip(axes[0], mats.items(), strict=True):
        im = ax.imshow(mat.double().numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"{name}\noff-diagonal mean {mean_offdiag(mat):.3f}", fontsize=9)
        ticks = range(0, mat.shape[0], max(1, mat.shape[0] // 10))
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xlabel("class")
        ax.set_ylabel("class")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return fig


def _floats(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0,0.1,1, got {text!r}") from None
    if not vals or any(v < 0 or not math.isfinite(v) for v in vals):
        raise argparse.ArgumentTypeError(f"lambdas must be finite and >= 0, got {text!r}")
    return vals


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist", choices=[d for d in DATASETS
                                                          if d in ("mnist", "digits", "mnist1d")])
    p.add_argument("--lambdas", type=_floats, default=[0.0, 0.1, 1.0],
                   help="penalty strengths, comma-separated (default 0,0.1,1)")
    p.add_argument("--seeds", type=positive_int, default=5)
    p.add_argument("--epochs", type=positive_int, default=6)
    p.add_argument("--penalty", choices=PENALTIES, default="template")
    p.add_argument("--normalize", action="store_true",
                   help="squared cosines instead of squared inner products")
    p.add_argument("--samples", type=non_negative_int, default=16,
                   help="template penalty on this many random inputs of each batch, an "
                        "unbiased estimate (default 16; 0: the whole batch, slower)")
    p.add_argument("--train-size", type=positive_int, default=None,
                   help="use only the first N training examples (a small-data regime)")
    p.add_argument("--channels", type=_ints, default=[8, 16])
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=1e-3)


def _mean_std(vals: Sequence[float]) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.4f} ± {sd:.4f}"


def _verdict(name: str, base: list[float], other: list[float], higher_is_better: bool) -> str:
    """Difference of means, and whether it exceeds twice its standard error."""
    diff = statistics.fmean(other) - statistics.fmean(base)
    if len(base) < 2 or len(other) < 2:
        return f"{name} {diff:+.4f} (one seed: no error bar)"
    se = math.sqrt(statistics.variance(base) / len(base) + statistics.variance(other) / len(other))
    if abs(diff) <= 2 * se:
        return f"{name} {diff:+.4f} (within noise, 2 SE = {2 * se:.4f})"
    better = (diff > 0) == higher_is_better
    return f"{name} {diff:+.4f} ({'better' if better else 'worse'}, beyond 2 SE = {2 * se:.4f})"


def run(args: argparse.Namespace) -> Path:
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.dataset, seed=0)
    if args.train_size:
        data = data.subset(train=args.train_size)
    x_eval = data.x_test[:500]
    runs: list[dict] = []
    models: dict[float, nn.Module] = {}
    bar = tqdm(total=len(args.lambdas) * args.seeds, desc="runs", leave=True)
    for lam in args.lambdas:
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = small_cnn(data.input_shape, data.num_classes, channels=args.channels)
            pen = make_penalty(args.penalty, lam, normalize=args.normalize,
                               samples=args.samples or None)
            hist = fit(model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       seed=seed, penalty=pen, balanced=True, desc=f"lambda={lam:g} seed={seed}")
            cos = cosine_matrix(model, x_eval)
            with torch.no_grad():
                test_pen = float(template_orthogonality(model, x_eval[:100]))
            runs.append({"lambda": lam, "seed": seed, "test_acc": hist.test_acc,
                         "train_acc": hist.train_acc, "gap": hist.train_acc - hist.test_acc,
                         "mean_abs_cos": mean_offdiag(cos), "test_penalty": test_pen,
                         "seconds": hist.seconds, "final_loss": hist.losses[-1],
                         "cosines": cos.tolist()})
            if seed == 0:
                models[lam] = model
            bar.update(1)
    bar.close()

    rows = []
    for lam in args.lambdas:
        r = [x for x in runs if x["lambda"] == lam]
        rows.append([f"{lam:g}", _mean_std([x["test_acc"] for x in r]),
                     _mean_std([x["train_acc"] for x in r]), _mean_std([x["gap"] for x in r]),
                     _mean_std([x["mean_abs_cos"] for x in r]),
                     f"{statistics.fmean(x['test_penalty'] for x in r):.3g}",
                     f"{statistics.fmean(x['seconds'] for x in r):.1f}"])
    base = [x for x in runs if x["lambda"] == args.lambdas[0]]
    verdicts = []
    for lam in args.lambdas[1:]:
        r = [x for x in runs if x["lambda"] == lam]
        parts = [
            _verdict("test acc", [x["test_acc"] for x in base], [x["test_acc"] for x in r], True),
            _verdict("gap", [x["gap"] for x in base], [x["gap"] for x in r], False),
            _verdict("mean |cos|", [x["mean_abs_cos"] for x in base],
                     [x["mean_abs_cos"] for x in r], False),
        ]
        verdicts.append(f"- lambda={lam:g} vs {args.lambdas[0]:g}: " + "; ".join(parts))
    kind = ("squared cosines" if args.normalize else "squared inner products")
    seconds = time.perf_counter() - t0
    notes = (
        f"{data!r}; small_cnn channels={list(args.channels)}, Adam lr={args.lr}, "
        f"{args.epochs} epochs, class-balanced batches of {args.batch_size}, "
        f"{args.seeds} seeds per lambda; penalty: {args.penalty} ({kind}"
        + (f", on {args.samples} random inputs of each batch"
           if args.samples and args.penalty == "template" else "") + "). "
        "mean abs(cos): |cos| between the templates of distinct classes, averaged over "
        "500 test inputs and all class pairs (eval mode); "
        "test penalty: the unnormalised template penalty on 100 test inputs. "
        "gap = train acc - test acc. Differences are called real only beyond twice "
        "their standard error over seeds.\n\n" + "\n".join(verdicts)
    )
    table = Table(
        title=(f"Orthogonal-template penalty on {data.name}" if args.penalty == "template"
               else f"Class-vector (last-layer weight) orthogonality penalty on {data.name}"),
        columns=["lambda", "test acc", "train acc", "train-test gap", "mean abs(cos)",
                 "test penalty", "s / run"],
        rows=rows, seconds=seconds, notes=notes,
    )
    write_table(out, "orthogonality", table)
    (out / "runs.json").write_text(json.dumps(runs, indent=1))

    lo, hi = args.lambdas[0], args.lambdas[-1]
    x_fig = data.x_test[:4]
    for lam in (lo, hi):
        fig = affine_map(models[lam], x_fig).plot(n=4)
        fig.suptitle(f"Templates A_c[x], lambda={lam:g} (seed 0; gold: predicted class)",
                     fontsize=9)
        save_figure(fig, out, f"templates_lambda{lam:g}")
    mats = {f"lambda={lam:g}": torch.tensor(
        next(x for x in runs if x["lambda"] == lam and x["seed"] == 0)["cosines"])
        for lam in (lo, hi)}
    save_figure(plot_cosines(mats, f"{data.name}: mean |cos| between class templates "
                                   "(test data, seed 0)"), out, "cosines")
    return out


EXPERIMENT = Experiment(
    name="orthogonality",
    help="orthogonal-template penalty: accuracy, train-test gap and template cosines",
    add_arguments=add_arguments,
    run=run,
)


# --------------------------------------------------------------------------- demo


def demo_section(ctx: DemoContext) -> Section:
    """Template-cosine matrices of the demo CNN fine-tuned briefly with and without
    the orthogonal-template penalty (same steps, same batches)."""
    import copy

    from ._report import Section

    steps = 5 if ctx.quick else 20
    n = steps * 60  # class-balanced batches hold 60 of 64 for 10 classes
    data = ctx.data
    sub = data.subset(n, 500)
    x_eval = data.x_test[:100]
    lam = 1.0
    mats, rows = {}, ["| fine-tuning | test acc | mean abs cos | template penalty (test) |",
                      "|---|---|---|---|"]
    for name, pen in (("without penalty", None),
                      (f"with penalty (lambda={lam:g}, cosines)",
                       make_penalty("template", lam, normalize=True, samples=8))):
        model = copy.deepcopy(ctx.cnn)
        hist = fit(model, sub, epochs=1, seed=ctx.seed, penalty=pen, balanced=True,
                   progress=False)
        mats[name] = cosine_matrix(model, x_eval)
        with torch.no_grad():
            value = float(template_orthogonality(model, x_eval))
        rows.append(f"| {name} | {hist.test_acc:.3f} | {mean_offdiag(mats[name]):.3f} | "
                    f"{value:.3g} |")
    fig = plot_cosines(mats)
    text = (
        "The orthogonal-template penalty `maxaffine.losses.template_orthogonality` "
        "(Balestriero & Baraniuk 2018) pushes the templates A_c[x] of different classes "
        f"apart. The demo CNN is fine-tuned for {steps} class-balanced steps with and "
        "without it (penalty on squared cosines, 8 random inputs per batch); the "
        "matrices are mean |cos| between class templates over 100 test inputs; test "
        "accuracy on 500 test inputs.\n\n" + "\n".join(rows) + "\n\n"
        + ctx.figure(fig, "template_cosines")
        + "\n\nFull experiment: `maxaffine reproduce orthogonality` "
        "(results/orthogonality/).\n"
    )
    return Section("Orthogonal templates", text)

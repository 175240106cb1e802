"""``maxaffine reproduce hessian-complexity``: does data augmentation lower a network's
tangent-Hessian complexity, and does the complexity track the generalization gap?

Claim (Javadi, Balestriero & Baraniuk, "A Hessian Based Complexity Measure for Deep
Networks", 2019): the complexity of the function ``f`` a network fits is

    C(f) = integral over the data manifold of ||H^tan f(x)||_F^2 dP(x),

the squared Frobenius norm of ``f``'s Hessian restricted to the manifold's tangent space
(Hessian eigenmaps, Donoho & Grimes, PNAS 2003); data augmentation acts as an implicit
Hessian regulariser (lower ``C``), and ``C`` tracks generalization.

We train ReLU MLPs (input -> 256 -> 256 -> 10, Adam) on MNIST (the offline 5k set) and
MNIST-1D under five conditions -- plain; augmented with random shifts (circular, up to
``--shift`` positions per axis); augmented with Gaussian input noise; 20% and 40% of the
training labels replaced by a random other class -- over seeds, and measure ``C`` of the
trained net's ten logits (summed over the logits) with
:func:`maxaffine.curvature.hessian_complexity` (``method="fit"``, the local second-order
least-squares fit that sees a spline network's kinks at the neighbourhood's scale; a
ReLU net's pointwise Hessian is 0 almost everywhere) at ``--points`` test points and
``--points`` training points, each with its ``k`` nearest neighbours in a pool of
``--pool`` points of the same split, and the train / test accuracy and their gap.

Evaluating at a subset of the pool: :func:`tangent_complexity_at` runs
``hessian_complexity`` on one point and its ``k`` nearest pool neighbours, expressed in
an orthonormal basis of the ``k``-dimensional span of their differences (an isometry, so
distances, local PCA, tangent coordinates and the fit are unchanged, while the local PCA
costs ``k^2`` instead of ``D^2`` per point): the value at the point equals the one a call
on the whole pool gives there (tested).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import _arguments as arg
from ..curvature import hessian_complexity
from ..datasets import Dataset, load_dataset
from ..errors import MaxAffineError, MaxAffineTypeError
from ..models import mlp
from . import (
    Experiment,
    Table,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    save_figure,
    write_table,
)

D64 = torch.float64
DATASET_NAMES = ("mnist", "mnist1d")


# ------------------------------------------------------------------------ data and training

def noisy_labels(y: Tensor, fraction: float, num_classes: int, seed: int) -> Tensor:
    """A copy of ``y`` with ``round(fraction * N)`` labels, chosen at random, replaced by
    a uniformly random *other* class (so exactly that many are wrong)."""
    if not isinstance(y, Tensor):
        raise MaxAffineTypeError(f"y must be a tensor of labels, got {arg.describe(y)}")
    if y.dim() != 1 or y.dtype != torch.int64:
        raise MaxAffineError(f"y must be a 1-D int64 tensor of labels, got {y.dtype} of shape "
                             f"{tuple(y.shape)}")
    fraction = arg.number(fraction, "fraction", minimum=0.0, maximum=1.0,
                          meaning="share of labels to corrupt")
    num_classes = arg.integer(num_classes, "num_classes", minimum=2)
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise MaxAffineError(f"y has labels outside [0, {num_classes - 1}] (num_classes = "
                             f"{num_classes})")
    gen = torch.Generator().manual_seed(arg.integer(seed, "seed", minimum=0))
    out = y.clone()
    flip = torch.randperm(len(y), generator=gen)[:round(fraction * len(y))]
    offset = torch.randint(1, num_classes, (len(flip),), generator=gen)
    out[flip] = (y[flip] + offset) % num_classes
    return out


def augment(x: Tensor, shift: int, noise_std: float, gen: torch.Generator) -> Tensor:
    """Random circular shifts of each sample by up to ``shift`` positions along every
    spatial axis (``x``: (N, C, L) or (N, C, H, W); ``torch.roll`` per sample), then
    Gaussian noise of standard deviation ``noise_std``."""
    arg.check_tensor(x, "x")
    if x.dim() not in (3, 4):
        raise MaxAffineError(f"x must be (N, C, L) or (N, C, H, W), got shape "
                             f"{tuple(x.shape)}")
    shift = arg.integer(shift, "shift", minimum=0, meaning="largest shift in positions")
    noise_std = arg.number(noise_std, "noise_std", minimum=0.0)
    out = x
    if shift:
        n = x.shape[0]
        for axis in range(2, x.dim()):
            size = x.shape[axis]
            s = torch.randint(-shift, shift + 1, (n,), generator=gen)
            pos = torch.arange(size)
            idx = (pos[None, :] - s[:, None]) % size          # roll: out[i] = x[i - s]
            view = [n] + [1] * (x.dim() - 1)
            view[axis] = size
            out = out.gather(axis, idx.reshape(view).expand(out.shape))
    if noise_std:
        out = out + noise_std * torch.randn(out.shape, generator=gen, dtype=out.dtype)
    return out


def train(model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, batch_size: int,
          lr: float, seed: int, shift: int = 0, noise_std: float = 0.0) -> list[float]:
    """Cross-entropy with Adam on shuffled full mini-batches, each batch augmented by
    :func:`augment` (when ``shift`` or ``noise_std``); the per-epoch mean loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            xb = x[idx]
            if shift or noise_std:
                xb = augment(xb, shift, noise_std, gen)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            count += 1
        losses.append(total / max(count, 1))
    model.eval()
    return losses


# ---------------------------------------------------------------- complexity at a subset

class _Local(nn.Module):
    """``z -> f(anchor + z Q^T)``: the model in the coordinates of an orthonormal basis
    ``Q`` (D, r) of a neighbourhood's span (an isometric embedding)."""

    def __init__(self, model: nn.Module, anchor: Tensor, basis: Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("anchor", anchor)
        self.register_buffer("basis", basis)

    def forward(self, z: Tensor) -> Tensor:
        return self.model(self.anchor + z @ self.basis.T)


@dataclass(frozen=True)
class Neighbourhoods:
    """Per evaluation point: its ``k + 1`` pool points (itself first, then its ``k``
    nearest others), their base point (the evaluation point, (P, D)), an orthonormal
    basis of their differences' span (P, D, r) and their coordinates in it
    (P, k + 1, r). Independent of the model: built once, used for every net."""

    anchors: Tensor
    bases: Tensor
    coords: Tensor
    k: int


def neighbourhoods(pool: Tensor, points: int, k: int) -> Neighbourhoods:
    """The neighbourhoods of the first ``points`` rows of ``pool`` (N, D) among all of
    ``pool`` (Euclidean ``k`` nearest, as in :func:`hessian_complexity`)."""
    arg.check_tensor(pool, "pool")
    if pool.dim() != 2:
        raise MaxAffineError(f"pool must be (N, D), got shape {tuple(pool.shape)}")
    N = pool.shape[0]
    points = arg.integer(points, "points", minimum=1, maximum=N,
                         meaning="evaluation points, the first rows of pool")
    k = arg.integer(k, "k", minimum=1, maximum=N - 1, meaning="neighbours per point")
    pool = pool.detach().to(D64)
    d = torch.cdist(pool[:points], pool)
    d[torch.arange(points), torch.arange(points)] = float("inf")
    near = d.topk(k, dim=1, largest=False).indices
    hoods = pool[torch.cat([torch.arange(points)[:, None], near], dim=1)]   # (P, k+1, D)
    anchors = hoods[:, 0]
    diffs = hoods - anchors[:, None, :]
    # columns of diffs[:, 1:]^T lie in span(Q) (A = QR), so coords @ Q^T == diffs
    Q, _ = torch.linalg.qr(diffs[:, 1:].transpose(1, 2))                      # (P, D, r)
    coords = diffs @ Q
    return Neighbourhoods(anchors=anchors, bases=Q, coords=coords, k=k)


def tangent_complexity_at(model: nn.Module, hoods: Neighbourhoods, tangent_dim: int,
                          output: int | None = None) -> Tensor:
    """``||H^tan f||_F^2`` (summed over the outputs, or ``output``) at each evaluation
    point of ``hoods`` by :func:`maxaffine.curvature.hessian_complexity` with
    ``method="fit"`` on the point and its ``k`` neighbours in their span's coordinates;
    equal to ``hessian_complexity(model, pool, k=k, ...).per_point`` at those points.
    ``model`` is evaluated in float64 (a copy)."""
    if not isinstance(model, nn.Module):
        raise MaxAffineTypeError(f"model must be a torch.nn.Module, got {arg.describe(model)}")
    if not isinstance(hoods, Neighbourhoods):
        raise MaxAffineTypeError(f"hoods must come from neighbourhoods(pool, points, k), got "
                                 f"{arg.describe(hoods)}")
    r = hoods.bases.shape[-1]
    tangent_dim = arg.integer(tangent_dim, "tangent_dim", minimum=1, maximum=r - 1,
                              meaning="dimension of the data manifold")
    f = copy.deepcopy(model).to(D64).eval()
    values = []
    for anchor, basis, z in zip(hoods.anchors, hoods.bases, hoods.coords, strict=True):
        hc = hessian_complexity(_Local(f, anchor, basis), z, tangent_dim=tangent_dim,
                                k=hoods.k, output=output, method="fit")
        values.append(hc.per_point[0])
    return torch.stack(values)


# ----------------------------------------------------------------------------- experiment

def conditions(label_noise: list[float]) -> list[tuple[str, int, float, float]]:
    """(name, shift, input-noise flag, label-noise fraction) per training condition."""
    out = [("plain", 0, 0.0, 0.0), ("shift", 1, 0.0, 0.0), ("noise", 0, 1.0, 0.0)]
    out += [(f"labels {round(100 * p)}%", 0, 0.0, p) for p in label_noise]
    return out


def _mean_loss(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def one(data: Dataset, hoods: dict[str, Neighbourhoods], condition: tuple, seed: int,
        args: argparse.Namespace) -> dict:
    name, shift_on, noise_on, fraction = condition
    torch.manual_seed(seed)
    model = mlp(data.input_shape, tuple(args.widths), data.num_classes)
    y_used = (noisy_labels(data.y_train, fraction, data.num_classes, 10_000 + seed)
              if fraction else data.y_train)
    noise_std = args.noise * float(data.x_train.std()) if noise_on else 0.0
    t0 = time.perf_counter()
    losses = train(model, data.x_train, y_used, epochs=args.epochs,
                   batch_size=args.batch_size, lr=args.lr, seed=seed,
                   shift=args.shift if shift_on else 0, noise_std=noise_std)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    c_test = tangent_complexity_at(model, hoods["test"], args.tangent_dim)
    c_train = tangent_complexity_at(model, hoods["train"], args.tangent_dim)
    complexity_seconds = time.perf_counter() - t0
    with torch.no_grad():
        logits = model(data.x_test)
    spread = float((logits - logits.mean(0)).pow(2).sum(1).mean())
    train_acc = _accuracy(model, data.x_train, y_used)
    test_acc = _accuracy(model, data.x_test, data.y_test)
    return {"dataset": data.name, "condition": name, "seed": seed,
            "train_acc": train_acc, "train_acc_clean": _accuracy(model, data.x_train,
                                                                 data.y_train),
            "test_acc": test_acc, "gap": train_acc - test_acc,
            "train_loss": _mean_loss(model, data.x_train, y_used),
            "test_loss": _mean_loss(model, data.x_test, data.y_test),
            "complexity_test": float(c_test.mean()),
            "complexity_train": float(c_train.mean()),
            "complexity_test_median": float(c_test.median()),
            "logit_rms": float(logits.pow(2).sum(1).mean().sqrt()),
            "logit_variance": spread,
            "relative_complexity_test": float(c_test.mean()) / spread,
            "relative_complexity_train": float(c_train.mean()) / spread,
            "noise_std": noise_std, "label_noise": fraction,
            "final_loss": losses[-1], "train_seconds": train_seconds,
            "complexity_seconds": complexity_seconds}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", nargs="+", choices=DATASET_NAMES, default=list(DATASET_NAMES))
    p.add_argument("--seeds", type=positive_int, default=5)
    p.add_argument("--epochs", type=positive_int, default=40)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--widths", type=positive_int, nargs="+", default=[256, 256],
                   help="hidden widths of the ReLU MLP")
    p.add_argument("--shift", type=positive_int, default=2,
                   help="largest random shift (positions per axis) of the 'shift' condition")
    p.add_argument("--noise", type=positive_float, default=0.3,
                   help="input noise std of the 'noise' condition, in units of the "
                        "training inputs' std")
    p.add_argument("--label-noise", type=non_negative_float, nargs="*", default=[0.2, 0.4],
                   help="fractions of corrupted training labels (one condition each)")
    p.add_argument("--points", type=positive_int, default=200,
                   help="evaluation points per split for the complexity")
    p.add_argument("--pool", type=positive_int, default=1000,
                   help="pool per split in which the neighbours are found")
    p.add_argument("--tangent-dim", type=positive_int, default=5)
    p.add_argument("--k", type=non_negative_int, default=0,
                   help="neighbours per point (0: 2 (1 + d + d(d+1)/2), twice the "
                        "quadratic fit's coefficients)")
    p.add_argument("--train-size", type=positive_int, default=None,
                   help="use only this many training samples (quick runs)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--no-progress", action="store_true")


def _ms(values: list[float], fmt: str = ".3f") -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{fmt}} ± {sd:{fmt}}"


def _spearman(a: list[float], b: list[float]) -> tuple[float, float]:
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan"), float("nan")
    res = spearmanr(a, b)
    return float(res.statistic), float(res.pvalue)


def _figures(runs: list[dict], names: list[str], out: Path) -> None:
    import matplotlib.pyplot as plt

    sets = sorted({r["dataset"] for r in runs}, key=[*DATASET_NAMES].index)
    fig, axes = plt.subplots(2, len(sets), figsize=(5.5 * len(sets), 8.5), squeeze=False,
                             layout="constrained")
    for j, ds in enumerate(sets):
        rs = [r for r in runs if r["dataset"] == ds]
        for i, key in enumerate(("complexity_test", "relative_complexity_test")):
            ax = axes[i, j]
            for c, name in enumerate(names):
                sel = [r for r in rs if r["condition"] == name]
                ax.scatter([r[key] for r in sel], [r["gap"] for r in sel], s=22,
                           color=f"C{c}", label=name)
            rho, p = _spearman([r[key] for r in rs], [r["gap"] for r in rs])
            ax.set_xlabel("tangent-Hessian complexity C at test points" if i == 0 else
                          "relative complexity C / Var(logits) at test points")
            ax.set_ylabel("generalization gap (train acc - test acc)")
            ax.set_title(f"{ds}: Spearman {rho:.2f} (p = {p:.2g}, {len(rs)} runs)")
            ax.legend(fontsize=8)
    if len(sets) > 1:
        rho, p = _spearman([r["complexity_test"] for r in runs], [r["gap"] for r in runs])
        rel, q = _spearman([r["relative_complexity_test"] for r in runs],
                           [r["gap"] for r in runs])
        fig.suptitle(f"all {len(runs)} runs: Spearman(C, gap) {rho:.2f} (p = {p:.2g}); "
                     f"Spearman(relative C, gap) {rel:.2f} (p = {q:.2g})")
    save_figure(fig, out, "complexity_vs_gap")


def run(args: argparse.Namespace) -> Path:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    d = args.tangent_dim
    k = args.k or 2 * (1 + d + d * (d + 1) // 2)
    conds = conditions(list(args.label_noise))
    names = [c[0] for c in conds]
    runs: list[dict] = []
    for ds in args.datasets:
        data = load_dataset(ds, seed=0)
        if args.train_size:
            data = data.subset(train=args.train_size)
        pool = min(args.pool, len(data.x_test), len(data.x_train))
        if args.points > pool:
            raise MaxAffineError(f"--points {args.points} exceeds the pool of {pool} points")
        hoods = {split: neighbourhoods(x[:pool].reshape(pool, -1), args.points, k)
                 for split, x in (("test", data.x_test), ("train", data.x_train))}
        for cond in conds:
            for seed in range(args.seeds):
                r = one(data, hoods, cond, seed, args)
                runs.append(r)
                if not args.no_progress:
                    print(f"{ds} {r['condition']} seed {seed}: train {r['train_acc']:.3f} "
                          f"test {r['test_acc']:.3f} C_test {r['complexity_test']:.4g} "
                          f"C_train {r['complexity_train']:.4g} ({r['train_seconds']:.0f} + "
                          f"{r['complexity_seconds']:.0f} s)", flush=True)
    _figures(runs, names, out)

    rows, corr_rows = [], []
    for ds in args.datasets:
        rs = [r for r in runs if r["dataset"] == ds]
        plain = {r["seed"]: r["complexity_test"] for r in rs if r["condition"] == "plain"}
        for name in names:
            sel = [r for r in rs if r["condition"] == name]
            lower = (f"{sum(r['complexity_test'] < plain[r['seed']] for r in sel)}/{len(sel)}"
                     if name != "plain" else "-")
            rows.append([ds, name, _ms([r["train_acc"] for r in sel]),
                         _ms([r["train_acc_clean"] for r in sel]),
                         _ms([r["test_acc"] for r in sel]), _ms([r["gap"] for r in sel]),
                         _ms([r["complexity_test"] for r in sel], ".3g"),
                         _ms([r["complexity_train"] for r in sel], ".3g"), lower,
                         _ms([r["relative_complexity_test"] for r in sel], ".3g"),
                         _ms([r["logit_rms"] for r in sel], ".1f")])
        for key in ("complexity_test", "complexity_train", "relative_complexity_test",
                    "logit_rms"):
            for target in ("gap", "test_acc"):
                rho, p = _spearman([r[key] for r in rs], [r[target] for r in rs])
                corr_rows.append([ds, key, target, len(rs), rho, p])
    if len(args.datasets) > 1:
        for key in ("complexity_test", "complexity_train", "relative_complexity_test"):
            rho, p = _spearman([r[key] for r in runs], [r["gap"] for r in runs])
            corr_rows.append(["all", key, "gap", len(runs), rho, p])

    notes = (
        f"Mean ± standard deviation over {args.seeds} seeds (model initialisation, batch "
        "order, augmentation and label-noise draws; one fixed stratified split, seed 0: "
        f"{len(data.x_train)} train / {len(data.x_test)} test for the last dataset). ReLU "
        f"MLP input -> {' -> '.join(map(str, args.widths))} -> 10, Adam (lr {args.lr:g}), "
        f"batch {args.batch_size}, {args.epochs} epochs. shift: random circular shifts of "
        f"up to {args.shift} positions per axis; noise: Gaussian input noise of std "
        f"{args.noise:g} x the training inputs' std; labels p%: that share of training "
        "labels replaced by a random other class. train acc: on the labels trained on "
        "(noisy for 'labels'); clean: on the true labels; gap = train acc - test acc. "
        "C: maxaffine.curvature.hessian_complexity (method 'fit', the summed squared "
        "Frobenius norms of the ten logits' tangent Hessians, float64), mean over "
        f"{args.points} points per split, each with its k = {k} nearest neighbours in a "
        f"pool of {pool} points of the same split (unaugmented inputs), tangent dimension "
        f"{d}. 'C < plain': seeds whose test-point C is below the same seed's plain run. "
        "relative C: C (test points) / Var(logits), the mean squared distance of the test "
        "logits to their mean (C scales with the square of the logits, this ratio does "
        "not); logit RMS: root mean squared norm of the test logits. "
        f"{args.threads} torch thread(s).")
    table = Table("Tangent-Hessian complexity vs generalization (ReLU MLPs)",
                  ["data", "condition", "train acc", "train acc (clean)", "test acc", "gap",
                   "C (test points)", "C (train points)", "C < plain", "relative C",
                   "logit RMS"],
                  rows, notes=notes)
    corr = Table("Spearman correlations across runs",
                 ["data", "measure", "vs", "runs", "Spearman rho", "p-value"], corr_rows,
                 notes="Each run is one (condition, seed); 'all' pools both datasets.")
    (out / "runs.json").write_text(json.dumps(runs, indent=1))
    table.seconds = corr.seconds = time.perf_counter() - t0
    write_table(out, "hessian_complexity", table)
    write_table(out, "correlations", corr)
    return out


EXPERIMENT = Experiment(
    name="hessian-complexity",
    help="tangent-Hessian complexity vs augmentation, label noise and the generalization "
         "gap (Javadi, Balestriero & Baraniuk 2019)",
    add_arguments=add_arguments,
    run=run,
)

"""``maxaffine reproduce sharpness``: gradient penalty, SAM and weight noise against the
activation-curvature part of the nonlinear modelling error.

Dauphin, Oquab, Hoffmann, Rajpurkar & Balestriero, "Neglected Hessian component
explains mysteries in sharpness regularization" (NeurIPS 2024): the loss Hessian is
``H = G + NME`` (eq. 2, :func:`maxaffine.curvature.loss_hessian`), and the NME holds
the activations' second derivatives. A gradient penalty ``lambda ||grad L||^2``
trains with the gradient ``grad L + 2 lambda H grad L`` (double back-prop), so its
update sees ``NME_activation grad L`` -- exactly zero almost everywhere for ReLU,
non-zero for curved activations; the paper reports that gradient penalties work for
GELU-like networks but not for ReLU networks, and that weight noise (whose expected
penalty is ``sigma^2 / 2 tr(H)``, G and NME alike) does not help the same way.

Here the activation curvature is dialled continuously with beta-VQ ("From Hard to
Soft", ICLR 2019, eq. 12; :class:`maxaffine.nn.BetaVQ`): ``z = u sigmoid(tau u)``,
``tau = beta / (1 - beta)``, is ReLU at beta = 1 (no curvature), swish at 1/2, and
``u / 2`` (no curvature again) as beta -> 0. The same MLP on MNIST-1D is trained with
plain SGD (momentum), the gradient penalty, SAM (Foret et al., ICLR 2021) and weight
noise, from the same initialisation and batch order per seed; we report test
accuracy and loss per (beta, method), the paired effect of each regulariser
(its accuracy minus plain SGD's, per seed), and the NME's activation part of each
net at initialisation and after plain training: ``||NME_act||_F / ||G||_F``
(Hutchinson estimates of squared Frobenius norms, ``E ||M z||^2 = ||M||_F^2`` for
Rademacher ``z``) and ``||NME_act g|| / ||H g||`` (``g = grad L``: the activation
share of the penalty's own update direction ``H g``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import _arguments as arg
from ..curvature import loss_hessian
from ..datasets import Dataset, load_dataset
from ..errors import MaxAffineError, MaxAffineTypeError
from ..nn.betavq import BetaVQ
from . import (
    Experiment,
    Table,
    non_negative_float,
    positive_float,
    positive_int,
    save_figure,
    write_table,
)

METHODS: tuple[str, ...] = ("sgd", "gradient-penalty", "sam", "weight-noise")
BETAS: tuple[float, ...] = (1.0, 0.99, 0.9, 0.75, 0.5, 0.25)
WIDTHS: tuple[int, ...] = (64, 64)
"""Default hidden widths: 7,434 parameters on MNIST-1D, which fit the training set to
about 90% and overfit (the regime where a regulariser can matter)."""
STRENGTHS: dict[str, float] = {"sgd": 0.0, "gradient-penalty": 0.1, "sam": 0.05,
                               "weight-noise": 0.03}
"""Default strengths: ``lambda`` of the penalty ``lambda ||grad L||^2``, SAM's radius
``rho``, the weight noise's standard deviation ``sigma``; picked in a pilot on a
validation split of the training set (3,000 / 1,000, seeds 100-101, beta 1 and 1/2,
30 epochs, widths (24, 24)) from {0.01, 0.1, 1}, {0.02, 0.05, 0.2} and
{0.01, 0.03, 0.1}: the middle values, which lowered the validation loss without
costing accuracy (the largest ones cost 5-10 points); kept for widths (64, 64), where
one pilot seed showed each lowering the validation loss."""


def build(input_dim: int, num_classes: int, beta: float, widths: tuple[int, ...] = WIDTHS
          ) -> nn.Sequential:
    """Flatten -> [Linear -> BetaVQ("relu", beta)] per width -> Linear(num_classes).
    beta = 1 is exactly ReLU (``torch.relu``)."""
    beta = arg.number(beta, "beta", minimum=0.0, maximum=1.0,
                      meaning="1 is ReLU, 1/2 swish, 0 u/2")
    layers: list[nn.Module] = [nn.Flatten()]
    d = arg.integer(input_dim, "input_dim", minimum=1)
    for w in widths:
        w = arg.integer(w, "widths", minimum=1)
        layers += [nn.Linear(d, w), BetaVQ("relu", beta)]
        d = w
    layers.append(nn.Linear(d, arg.integer(num_classes, "num_classes", minimum=1)))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- training

def _gradient(model: nn.Module, params: list[Tensor], x: Tensor, y: Tensor,
              create_graph: bool = False) -> tuple[Tensor, list[Tensor]]:
    loss = nn.functional.cross_entropy(model(x), y)
    return loss, list(torch.autograd.grad(loss, params, create_graph=create_graph))


def regularized_gradient(model: nn.Module, x: Tensor, y: Tensor, method: str,
                         strength: float, gen: torch.Generator | None = None
                         ) -> tuple[float, list[Tensor]]:
    """The training loss at the parameters and the update direction of ``method``:

    * ``sgd``: ``grad L``;
    * ``gradient-penalty``: ``grad (L + lambda ||grad L||^2) = g + 2 lambda H g``
      (double back-prop; Dauphin et al. 2024, sec. 5; Drucker & LeCun 1992);
    * ``sam``: ``grad L`` at ``theta + rho g / ||g||`` (Foret et al., ICLR 2021, eq. 3);
    * ``weight-noise``: ``grad L`` at ``theta + eps``, ``eps ~ N(0, sigma^2 I)`` drawn
      from ``gen`` (in expectation ``grad (L + sigma^2 / 2 tr H)``, to second order).

    ``strength``: lambda, rho or sigma (ignored by ``sgd``). The parameters are
    restored before returning."""
    method = arg.choice(method, "method", METHODS)
    strength = arg.number(strength, "strength", minimum=0.0,
                          meaning="lambda, rho or sigma of the method")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise MaxAffineError(f"{type(model).__name__} has no trainable parameters")
    if method == "gradient-penalty":
        loss, g = _gradient(model, params, x, y, create_graph=True)
        penalty = sum((gi ** 2).sum() for gi in g)
        total = loss + strength * penalty
        return float(loss.detach()), [t.detach() for t in torch.autograd.grad(total, params)]
    loss, g = _gradient(model, params, x, y)
    if method == "sgd" or strength == 0.0:
        return float(loss.detach()), g
    if method == "sam":
        norm = torch.sqrt(sum((gi ** 2).sum() for gi in g)).clamp_min(1e-12)
        shift = [strength * gi / norm for gi in g]
    else:
        shift = [strength * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    with torch.no_grad():
        for p, s in zip(params, shift, strict=True):
            p.add_(s)
    try:
        _, g2 = _gradient(model, params, x, y)
    finally:
        with torch.no_grad():
            for p, s in zip(params, shift, strict=True):
                p.sub_(s)
    return float(loss.detach()), g2


def train(model: nn.Module, data: Dataset, method: str, strength: float, *, epochs: int = 30,
          lr: float = 0.05, momentum: float = 0.9, batch_size: int = 64, seed: int = 0
          ) -> dict[str, float]:
    """Train ``model`` in place by SGD with momentum on ``data.x_train`` along
    :func:`regularized_gradient`'s direction; returns the final train / test loss and
    accuracy and the wall time. Batch order and weight noise come from ``seed``, so
    runs with the same seed see the same batches."""
    if not isinstance(model, nn.Module):
        raise MaxAffineTypeError(f"model must be a torch.nn.Module, got {arg.describe(model)}")
    if not isinstance(data, Dataset):
        raise MaxAffineTypeError(f"data must be a maxaffine.datasets.Dataset, got "
                                 f"{arg.describe(data)}")
    method = arg.choice(method, "method", METHODS)
    epochs = arg.integer(epochs, "epochs", minimum=0)
    batch_size = arg.integer(batch_size, "batch_size", minimum=1,
                             maximum=max(1, len(data.x_train)),
                             meaning="samples per step, at most the training set's size")
    lr = arg.number(lr, "lr", minimum=0.0, strict=True, meaning="the learning rate")
    momentum = arg.number(momentum, "momentum", minimum=0.0, maximum=1.0)
    seed = arg.integer(seed, "seed", minimum=0)
    t0 = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    order = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 7919)
    n = len(data.x_train)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            loss, g = regularized_gradient(model, data.x_train[idx], data.y_train[idx],
                                           method, strength, noise)
            if not math.isfinite(loss):
                raise MaxAffineError(f"training diverged ({method}, strength {strength:g}): "
                                     f"loss {loss}; lower lr or the strength")
            for p, gi in zip((p for p in model.parameters() if p.requires_grad), g,
                             strict=True):
                p.grad = gi
            opt.step()
    model.eval()
    out = {"seconds": time.perf_counter() - t0}
    with torch.no_grad():
        for split in ("train", "test"):
            x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
            logits = model(x)
            out[f"{split}_loss"] = float(nn.functional.cross_entropy(logits, y))
            out[f"{split}_acc"] = float((logits.argmax(1) == y).double().mean())
    return out


# --------------------------------------------------------------------------- curvature

def nme_measures(model: nn.Module, x: Tensor, y: Tensor, *, probes: int = 20,
                 seed: int = 0) -> dict[str, float]:
    """The activation-curvature part of the NME of the cross-entropy loss on ``(x, y)``
    relative to the Gauss-Newton part (Dauphin et al. 2024, eq. 2; matrix-free, from
    :func:`maxaffine.curvature.loss_hessian` in float64 on a copy of ``model``):

    * ``act_over_G``: ``||NME_act||_F / ||G||_F``, each squared norm by Hutchinson,
      ``mean_s ||M z_s||^2`` over ``probes`` Rademacher ``z_s`` (the same ``z_s`` for
      both);
    * ``rest_over_G``: the same for ``NME_rest`` (the multilinear terms);
    * ``act_share_of_Hg``: ``||NME_act g|| / ||H g||`` at ``g = grad L``, exact: the
      activation terms' share of the gradient penalty's update ``2 lambda H g``;
    * ``loss``: the loss on the batch.
    """
    probes = arg.integer(probes, "probes", minimum=1, meaning="Hutchinson probes")
    net = copy.deepcopy(model).double().eval()
    xd = x.double()
    lh = loss_hessian(net, nn.functional.cross_entropy, xd, y, exact=False)
    gen = torch.Generator().manual_seed(int(seed))
    z = (2.0 * torch.randint(0, 2, (probes, lh.num_parameters), generator=gen) - 1.0).double()

    def sq_frobenius(which: str) -> float:
        return float((lh.matvec(z, which) ** 2).sum(-1).mean())  # type: ignore[arg-type]

    G2, A2, R2 = sq_frobenius("G"), sq_frobenius("NME_activation"), sq_frobenius("NME_rest")
    params = list(net.parameters())
    loss = nn.functional.cross_entropy(net(xd), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)]).detach()
    Hg = lh.matvec(g, "H")
    Ag = lh.matvec(g, "NME_activation")
    tiny = 1e-300
    return {"act_over_G": math.sqrt(A2 / max(G2, tiny)),
            "rest_over_G": math.sqrt(R2 / max(G2, tiny)),
            "act_share_of_Hg": float(Ag.norm() / Hg.norm().clamp_min(tiny)),
            "loss": lh.loss}


# --------------------------------------------------------------------------- the grid

def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run_grid(data: Dataset, betas: list[float], methods: list[str], seeds: int,
             strengths: dict[str, float], *, epochs: int, lr: float,
             widths: tuple[int, ...], probes: int, hessian_batch: int,
             log: Callable[[str], None] = print) -> list[dict]:
    """Train every (beta, method, seed) from the seed's initialisation; one dict per
    run, with the NME measures at initialisation and (``sgd``, ``gradient-penalty``)
    after training on the first ``hessian_batch`` training samples."""
    runs = []
    xh, yh = data.x_train[:hessian_batch], data.y_train[:hessian_batch]
    dim = math.prod(data.input_shape)
    for beta in betas:
        for seed in range(seeds):
            torch.manual_seed(seed)
            init = build(dim, data.num_classes, beta, widths)
            at_init = nme_measures(init, xh, yh, probes=probes, seed=seed)
            for method in methods:
                model = copy.deepcopy(init)
                result = train(model, data, method, strengths[method], epochs=epochs, lr=lr,
                               seed=seed)
                trained = (nme_measures(model, xh, yh, probes=probes, seed=seed)
                           if method in ("sgd", "gradient-penalty") else {})
                runs.append({"beta": beta, "method": method, "seed": seed,
                             "strength": strengths[method], **result,
                             "init": at_init, "trained": trained})
                log(f"beta {beta:<5g} {method:16s} seed {seed}: test acc "
                    f"{result['test_acc']:.4f} loss {result['test_loss']:.3f} "
                    f"({result['seconds']:.1f} s) act/G init {at_init['act_over_G']:.3f}"
                    + (f" trained {trained['act_over_G']:.3f}" if trained else ""))
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    """Per (beta, method): test / train accuracy and loss (mean, std), the paired
    effect against ``sgd`` (per-seed difference; mean, std), the NME measures."""
    out = []
    for beta, method in dict.fromkeys((r["beta"], r["method"]) for r in runs):
        rs = sorted((r for r in runs if r["beta"] == beta and r["method"] == method),
                    key=lambda r: r["seed"])
        base = {r["seed"]: r for r in runs if r["beta"] == beta and r["method"] == "sgd"}
        row: dict = {"beta": beta, "method": method, "seeds": len(rs),
                     "strength": rs[0]["strength"]}
        for key in ("test_acc", "test_loss", "train_acc", "train_loss", "seconds"):
            row[key] = _mean_std([r[key] for r in rs])
        paired = [r for r in rs if r["seed"] in base]
        if paired and method != "sgd":
            row["effect_acc"] = _mean_std([r["test_acc"] - base[r["seed"]]["test_acc"]
                                           for r in paired])
            row["effect_loss"] = _mean_std([r["test_loss"] - base[r["seed"]]["test_loss"]
                                            for r in paired])
        for when in ("init", "trained"):
            if all(r[when] for r in rs):
                row[when] = {k: _mean_std([r[when][k] for r in rs]) for k in rs[0][when]}
        out.append(row)
    return out


def _pm(ms: tuple[float, float], digits: int = 3) -> str:
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def _spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (no ties expected; NaN for fewer than 3 points)."""
    if len(a) < 3:
        return math.nan
    ra = {i: r for r, i in enumerate(sorted(range(len(a)), key=lambda i: a[i]))}
    rb = {i: r for r, i in enumerate(sorted(range(len(b)), key=lambda i: b[i]))}
    n = len(a)
    d2 = sum((ra[i] - rb[i]) ** 2 for i in range(n))
    return 1.0 - 6.0 * d2 / (n * (n * n - 1))


def _plot(summary: list[dict], methods: list[str]):
    """Left, middle: each regulariser's effect on test accuracy and on test loss
    (paired by seed) against ``||NME_act||_F / ||G||_F`` of the plainly trained net,
    one point per beta. Right: test accuracy per beta and method."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    base = {s["beta"]: s for s in summary if s["method"] == "sgd"}
    betas = sorted(base, reverse=True)
    markers = {"gradient-penalty": "o", "sam": "s", "weight-noise": "^"}
    for ax, key, label in ((axes[0], "effect_acc", "test accuracy"),
                           (axes[1], "effect_loss", "test loss")):
        for k, method in enumerate(m for m in methods if m != "sgd"):
            pts = [(base[b]["trained"]["act_over_G"][0], s[key], b) for b in betas
                   for s in summary if s["beta"] == b and s["method"] == method
                   and key in s and "trained" in base[b]]
            if not pts:
                continue
            pts.sort(key=lambda p: p[0])
            ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                        yerr=[p[1][1] for p in pts], marker=markers.get(method, "o"), ls=":",
                        lw=0.8, capsize=3, color=f"C{k + 1}", label=method)
            if method == "gradient-penalty":
                for xv, (e, _), b in pts:
                    ax.annotate(f"beta={b:g}", (xv, e), textcoords="offset points",
                                xytext=(4, 4), fontsize=7)
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_xscale("symlog", linthresh=1e-2)
        right = max((b["trained"]["act_over_G"][0] for b in base.values() if "trained" in b),
                    default=1.0)
        ax.set_xlim(-2e-3, max(2.0 * right, 0.1))
        ax.set_xlabel("||NME_activation||_F / ||G||_F  (plain-SGD net, train batch)")
        ax.set_ylabel(f"{label} minus plain SGD's (paired by seed)")
        ax.legend(fontsize=8)
        ax.set_title(f"regulariser effect on {label}", fontsize=10)
    ax2 = axes[2]
    width = 0.8 / max(1, len(methods))
    for k, method in enumerate(methods):
        rows = [next((s for s in summary if s["beta"] == b and s["method"] == method), None)
                for b in betas]
        xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(betas))]
        ax2.bar([x for x, r in zip(xs, rows, strict=True) if r],
                [r["test_acc"][0] for r in rows if r],
                yerr=[r["test_acc"][1] for r in rows if r], width=width, capsize=2,
                color=f"C{k}", label=method)
    ax2.set_xticks(range(len(betas)), [f"{b:g}" + (" (ReLU)" if b == 1 else "")
                                       for b in betas], fontsize=8)
    ax2.set_xlabel("beta")
    accs = [s["test_acc"][0] for s in summary]
    ax2.set_ylim(max(0.0, min(accs) - 0.05), min(1.0, max(accs) + 0.03))
    ax2.set_ylabel("test accuracy")
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _beta(text: str) -> float:
    """An argparse ``type``: a beta in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a beta in [0, 1] (1: ReLU, 0.5: swish), "
                                         f"got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist1d", choices=["mnist1d", "mnist", "digits"])
    p.add_argument("--betas", type=_beta, nargs="+", default=list(BETAS),
                   help="beta-VQ betas in [0, 1] (1: ReLU, 0.5: swish)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=positive_int, default=5, help="seeds (default 5)")
    p.add_argument("--epochs", type=positive_int, default=30, help="epochs (default 30)")
    p.add_argument("--lr", type=positive_float, default=0.05,
                   help="SGD learning rate, momentum 0.9 (default 0.05)")
    p.add_argument("--widths", type=positive_int, nargs="+", default=list(WIDTHS),
                   help=f"hidden widths (default {' '.join(map(str, WIDTHS))})")
    p.add_argument("--penalty", type=non_negative_float,
                   default=STRENGTHS["gradient-penalty"], help="lambda of lambda ||grad L||^2")
    p.add_argument("--rho", type=non_negative_float, default=STRENGTHS["sam"],
                   help="SAM radius")
    p.add_argument("--sigma", type=non_negative_float, default=STRENGTHS["weight-noise"],
                   help="weight-noise standard deviation")
    p.add_argument("--probes", type=positive_int, default=20,
                   help="Hutchinson probes per Frobenius norm (default 20)")
    p.add_argument("--hessian-batch", type=positive_int, default=256,
                   help="training samples for the NME measures (default 256)")
    p.add_argument("--train-size", type=positive_int, default=None,
                   help="use only this many training samples (quick runs)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no per-run log lines")


def run(args: argparse.Namespace) -> Path:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = load_dataset(args.dataset)
    if args.train_size:
        data = data.subset(train=args.train_size)
    methods = list(dict.fromkeys(["sgd", *args.methods]))  # the paired baseline always runs
    strengths = {"sgd": 0.0, "gradient-penalty": args.penalty, "sam": args.rho,
                 "weight-noise": args.sigma}
    runs = run_grid(data, list(args.betas), methods, args.seeds, strengths,
                    epochs=args.epochs, lr=args.lr, widths=tuple(args.widths),
                    probes=args.probes, hessian_batch=min(args.hessian_batch, len(data.x_train)),
                    log=(lambda s: None) if args.no_progress else print)
    summary = summarize(runs)
    rows = []
    for s in summary:
        init, trained = s.get("init", {}), s.get("trained", {})
        rows.append([
            f"{s['beta']:g}" + (" (ReLU)" if s["beta"] == 1 else ""), s["method"],
            f"{s['strength']:g}", _pm(s["test_acc"]), _pm(s["test_loss"]),
            _pm(s["train_acc"]),
            _pm(s["effect_acc"]) if "effect_acc" in s else "-",
            _pm(s["effect_loss"]) if "effect_loss" in s else "-",
            _pm(init["act_over_G"]) if init else "-",
            _pm(trained["act_over_G"]) if trained else "-",
            _pm(trained["act_share_of_Hg"]) if trained else "-",
            _pm(trained["rest_over_G"]) if trained else "-",
            f"{s['seconds'][0]:.1f}"])
    base = {s["beta"]: s for s in summary if s["method"] == "sgd"}
    corr = {}
    for method in methods[1:]:
        pairs = [(base[s["beta"]]["trained"]["act_over_G"][0], s["effect_acc"][0])
                 for s in summary if s["method"] == method and "effect_acc" in s]
        corr[method] = _spearman([p[0] for p in pairs], [p[1] for p in pairs])
    corr_text = "; ".join(f"{m} {c:+.2f}" for m, c in corr.items())
    notes = (
        f"{args.dataset} ({len(data.x_train)} train / {len(data.x_test)} test), MLP widths "
        f"{tuple(args.widths)} with BetaVQ('relu', beta) (beta = 1: torch.relu), SGD lr "
        f"{args.lr:g} momentum 0.9, batch 64, {args.epochs} epochs, {args.seeds} seed(s) "
        "(seed = initialisation, batch order and weight noise; every method starts from the "
        "same initialisation per seed); strengths: gradient penalty lambda ||grad L||^2, SAM "
        "rho, weight-noise sigma. Effect = test accuracy (loss) minus plain SGD's, paired by seed. "
        "act/G = ||NME_activation||_F / ||G||_F, rest/G = ||NME_rest||_F / ||G||_F "
        f"({args.probes} Hutchinson probes), act share of Hg = ||NME_act g|| / ||H g||, all on "
        f"the first {min(args.hessian_batch, len(data.x_train))} training samples in float64, "
        "at initialisation and for the net trained by that method. Spearman correlation "
        f"over beta of effect vs act/G (plain-SGD net): {corr_text}. {args.threads} torch "
        "thread(s).")
    table = Table("Sharpness regularisers vs the NME's activation part: mean ± std over seeds",
                  ["beta", "method", "strength", "test acc", "test loss", "train acc",
                   "effect (acc)", "effect (loss)", "act/G init", "act/G trained",
                   "act share of Hg", "rest/G trained", "s / run"], rows, notes=notes)
    save_figure(_plot(summary, methods), out, "sharpness")
    (out / "runs.json").write_text(json.dumps({"runs": runs, "summary": summary,
                                               "spearman": corr}, indent=2))
    table.seconds = time.perf_counter() - t0
    write_table(out, "sharpness", table)
    return out


EXPERIMENT = Experiment("sharpness", "gradient penalty vs SAM vs weight noise for ReLU and "
                        "beta-VQ MLPs against the NME's activation part (Dauphin et al., "
                        "NeurIPS 2024)", add_arguments, run)

"""``maxaffine reproduce rntk``: does the recurrent NTK beat other kernels on time
series, and does it handle sequences of different lengths natively?

Claim (Alemohammad, Wang, Balestriero & Baraniuk, "The Recurrent Neural Tangent
Kernel", ICLR 2021, sec. 4-5): kernel machines with the RNTK outperform other kernels,
including the MLP NTK and the Gaussian (RBF) kernel, on time-series classification, and
the RNTK compares sequences of different lengths without padding. We classify MNIST-1D
(:func:`maxaffine.datasets.load_dataset`, 40 samples per sequence, seen as a sequence of
scalars) (a) whole and (b) as random crops (each train and test sequence cut to a
uniformly drawn length in ``[min_length, 40]`` at a uniformly drawn offset), with
kernel ridge regression and an SVM (scikit-learn, precomputed kernels) on

- the RNTK (:func:`maxaffine.kernels.rntk`, ReLU, one or two layers chosen on
  validation, variances fixed from a pilot): crops as they are (its recursion aligns
  two sequences at their ends);
- the MLP NTK (:func:`maxaffine.kernels.ntk`, ReLU, depth chosen on validation) and the
  RBF kernel (bandwidth chosen on validation): they need vectors of one length, so crops
  are zero-padded at the end to 40 samples (this is the paper's point);

and a trained GRU (1 layer, 64 units, last valid hidden state read out; packed
sequences, so no padding either). The kernels' own hyperparameters and the ridge
lambda are chosen by kernel ridge regression on a validation split (the last 20% of the
training subset), the SVM's C for the chosen kernel likewise; both machines are then
refitted on the whole subset. The GRU trains on the first 80% and keeps its
best-validation epoch.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..datasets import Dataset, load_dataset
from ..kernels import ntk, rntk
from . import Experiment, Table, _typed, positive_float, positive_int, save_figure, write_table

D = torch.float64
LENGTH = 40
RIDGES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # times the mean diagonal of the train kernel
CS = (0.1, 1.0, 10.0, 100.0)  # SVM C for the kernel normalised to mean diagonal 1
MLP_DEPTHS = (2, 4, 8)
RBF_FACTORS = (1.0, 4.0, 16.0)  # gamma = factor / median squared distance
RNTK_ARGS = dict(activation="relu", input_var=2.0, bias_var=0.1, output_var=1.0)
RNTK_VARIANTS = {"depth 1, recurrent_var 2.1": dict(depth=1, recurrent_var=2.1),
                 "depth 2, recurrent_var 2.0": dict(depth=2, recurrent_var=2.0)}
KERNELS = ("RNTK", "MLP NTK", "RBF")
SETTINGS = ("whole", "crops")


# ---------------------------------------------------------------- data


@functools.lru_cache(maxsize=2)
def _mnist1d(seed: int) -> Dataset:
    return load_dataset("mnist1d", seed=seed)


def sequences(seed: int, train: int, test: int, crops: bool, min_length: int
              ) -> tuple[list[Tensor], Tensor, list[Tensor], Tensor]:
    """Standardised MNIST-1D sequences ((T_i,) float64 tensors) and labels; with
    ``crops`` each cut to a random length in [min_length, 40] at a random offset."""
    data = _mnist1d(seed)
    xtr = data.x_train[:train].reshape(-1, LENGTH).to(D)
    xte = data.x_test[:test].reshape(-1, LENGTH).to(D)
    mean, std = xtr.mean(), xtr.std()
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    gen = torch.Generator().manual_seed(1000 + seed)

    def cut(x: Tensor) -> list[Tensor]:
        if not crops:
            return list(x)
        out = []
        for row in x:
            n = int(torch.randint(min_length, LENGTH + 1, (1,), generator=gen))
            start = int(torch.randint(0, LENGTH - n + 1, (1,), generator=gen))
            out.append(row[start:start + n])
        return out

    return cut(xtr), data.y_train[:train], cut(xte), data.y_test[:test]


def padded(seqs: list[Tensor]) -> Tensor:
    """(N, 40): each sequence from index 0, zeros after its end."""
    out = torch.zeros(len(seqs), LENGTH, dtype=D)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


# ---------------------------------------------------------------- kernel machines


def ridge_accuracy(k_fit: np.ndarray, y_fit: np.ndarray, k_eval: np.ndarray,
                   y_eval: np.ndarray, lams: tuple[float, ...]) -> list[float]:
    """Kernel ridge regression on centred one-hot targets (one eigendecomposition for
    all ``lams``, relative to the mean diagonal): accuracy for each lambda."""
    scale = float(np.mean(np.diag(k_fit)))
    w, q = np.linalg.eigh(k_fit)
    y = np.eye(10)[y_fit] - 0.1
    qy = q.T @ y
    eval_q = k_eval @ q
    return [float(np.mean((eval_q @ (qy / (w + lam * scale)[:, None])).argmax(1) == y_eval))
            for lam in lams]


def svm_accuracy(k_fit: np.ndarray, y_fit: np.ndarray, k_eval: np.ndarray,
                 y_eval: np.ndarray, cs: tuple[float, ...]) -> list[float]:
    """SVC (one-vs-one, precomputed kernel normalised to mean diagonal 1): accuracy for
    each C."""
    from sklearn.svm import SVC

    scale = float(np.mean(np.diag(k_fit)))
    out = []
    for c in cs:
        svc = SVC(C=c, kernel="precomputed").fit(k_fit / scale, y_fit)
        out.append(float(np.mean(svc.predict(k_eval / scale) == y_eval)))
    return out


def evaluate(kernels: dict[str, tuple[np.ndarray, np.ndarray]], y_tr: np.ndarray,
             y_te: np.ndarray, n_fit: int) -> dict[str, dict]:
    """Choose the kernel variant and ridge lambda on validation (the last ``len - n_fit``
    training points); the SVM's C for that variant likewise; refit both on all training
    points and test."""
    fit, val = slice(0, n_fit), slice(n_fit, len(y_tr))
    out = {}
    t0 = time.perf_counter()
    best = (-1.0, "", 0.0)
    for variant, (k_tr, _) in kernels.items():
        scores = ridge_accuracy(k_tr[fit, fit], y_tr[fit], k_tr[val, fit], y_tr[val], RIDGES)
        i = int(np.argmax(scores))
        if scores[i] > best[0]:
            best = (scores[i], variant, RIDGES[i])
    k_tr, k_te = kernels[best[1]]
    out["ridge"] = {"val": best[0], "variant": best[1], "reg": best[2],
                    "test": ridge_accuracy(k_tr, y_tr, k_te, y_te, (best[2],))[0],
                    "seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    scores = svm_accuracy(k_tr[fit, fit], y_tr[fit], k_tr[val, fit], y_tr[val], CS)
    i = int(np.argmax(scores))
    out["SVM"] = {"val": scores[i], "variant": best[1], "reg": CS[i],
                  "test": svm_accuracy(k_tr, y_tr, k_te, y_te, (CS[i],))[0],
                  "seconds": time.perf_counter() - t0}
    return out


def kernel_matrices(name: str, tr: list[Tensor], te: list[Tensor]
                    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]:
    """Train (N, N) and test (M, N) matrices of each variant of kernel ``name``."""
    t0 = time.perf_counter()
    if name == "RNTK":
        tr_s, te_s = [s[:, None] for s in tr], [s[:, None] for s in te]
        mats = {name: (rntk(tr_s, **RNTK_ARGS, **v).numpy(),
                       rntk(te_s, tr_s, **RNTK_ARGS, **v).numpy())
                for name, v in RNTK_VARIANTS.items()}
    elif name == "MLP NTK":
        a, b = padded(tr), padded(te)
        mats = {f"depth {d}": (ntk(a, None, d).numpy(), ntk(b, a, d).numpy())
                for d in MLP_DEPTHS}
    else:
        a, b = padded(tr), padded(te)
        d_tr, d_te = torch.cdist(a, a) ** 2, torch.cdist(b, a) ** 2
        med = float(d_tr[d_tr > 0].median())
        mats = {f"gamma {f:g}/median": (torch.exp(-f / med * d_tr).numpy(),
                                        torch.exp(-f / med * d_te).numpy())
                for f in RBF_FACTORS}
    return mats, time.perf_counter() - t0


# ---------------------------------------------------------------- trained RNN


class GRUClassifier(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.gru = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x[..., None], lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, h = self.gru(packed)
        return self.head(h[-1])


def train_rnn(tr: list[Tensor], y_tr: Tensor, te: list[Tensor], y_te: Tensor, n_fit: int,
              args: argparse.Namespace, seed: int) -> dict:
    """A GRU trained with Adam on the first ``n_fit`` training sequences; the epoch with
    the best accuracy on the rest (validation) is kept and tested."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    x_tr, l_tr = padded(tr).float(), torch.tensor([len(s) for s in tr])
    x_te, l_te = padded(te).float(), torch.tensor([len(s) for s in te])
    model = GRUClassifier(args.rnn_hidden)
    opt = torch.optim.Adam(model.parameters(), lr=args.rnn_lr)
    fit, val = torch.arange(n_fit), torch.arange(n_fit, len(tr))

    def accuracy(idx: Tensor | None, x: Tensor, lens: Tensor, y: Tensor) -> float:
        model.eval()
        with torch.no_grad():
            if idx is not None:
                x, lens, y = x[idx], lens[idx], y[idx]
            acc = float((model(x, lens).argmax(1) == y).double().mean())
        model.train()
        return acc

    best_val, best_test, best_epoch = -1.0, 0.0, 0
    for epoch in range(1, args.rnn_epochs + 1):
        perm = fit[torch.randperm(n_fit)]
        for i in range(0, n_fit, 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_tr[b], l_tr[b]), y_tr[b]).backward()
            opt.step()
        v = accuracy(val, x_tr, l_tr, y_tr)
        if v > best_val:
            best_val, best_epoch = v, epoch
            best_test = accuracy(None, x_te, l_te, y_te)
    return {"val": best_val, "test": best_test, "variant": f"epoch {best_epoch}",
            "reg": 0.0, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- experiment


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=positive_int, default=5,
                   help="MNIST-1D datasets (generator seed 42 + seed) and crops")
    p.add_argument("--train-size", type=_typed(int, lambda v: v >= 20, "an integer >= 20"),
                   default=2000,
                   help="training sequences used (of 4000; the kernels are O(N^2 T))")
    p.add_argument("--test-size", type=positive_int, default=1000, help="test sequences")
    p.add_argument("--min-length", type=_typed(int, lambda v: 1 <= v <= LENGTH,
                                               f"an integer in [1, {LENGTH}]"), default=20,
                   help="shortest crop (lengths uniform in [min-length, 40])")
    p.add_argument("--rnn-hidden", type=positive_int, default=64)
    p.add_argument("--rnn-epochs", type=positive_int, default=60)
    p.add_argument("--rnn-lr", type=positive_float, default=3e-3)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="2 seeds, 300 train / 200 test sequences, 5 GRU epochs")


def _figure(runs: list[dict], out: Path) -> None:
    import matplotlib.pyplot as plt

    methods = [("RNTK", "ridge"), ("RNTK", "SVM"), ("MLP NTK", "ridge"), ("MLP NTK", "SVM"),
               ("RBF", "ridge"), ("RBF", "SVM"), ("GRU", "trained")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.38
    for k, setting in enumerate(SETTINGS):
        accs = [[r["results"][m][mach]["test"] for r in runs if r["setting"] == setting]
                for m, mach in methods]
        pos = np.arange(len(methods)) + (k - 0.5) * width
        axes[0].bar(pos, [np.mean(a) for a in accs], width,
                    yerr=[np.std(a, ddof=1) if len(a) > 1 else 0 for a in accs], capsize=3,
                    label=setting)
        secs = [[r["seconds"][m] + r["results"][m][mach]["seconds"] if m != "GRU"
                 else r["results"][m][mach]["seconds"] for r in runs if r["setting"] == setting]
                for m, mach in methods]
        axes[1].scatter([np.mean(s) for s in secs], [np.mean(a) for a in accs],
                        marker="o" if k == 0 else "s", label=setting)
        for (m, mach), s, a in zip(methods, secs, accs, strict=True):
            axes[1].annotate(f"{m} {mach}", (np.mean(s), np.mean(a)), fontsize=7)
    axes[0].set_xticks(np.arange(len(methods)), [f"{m}\n{mach}" for m, mach in methods],
                       fontsize=8)
    axes[0].set_ylabel("test accuracy")
    axes[0].set_title("MNIST-1D: whole sequences vs random crops")
    axes[0].legend()
    axes[1].set_xscale("log")
    axes[1].set_xlabel("seconds (kernel matrices + model selection and fit; GRU training)")
    axes[1].set_ylabel("test accuracy")
    axes[1].legend()
    save_figure(fig, out, "accuracy")


def run(args: argparse.Namespace) -> Path:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(args.threads):  # numpy's BLAS (eigh) and scikit-learn too
        return _run(args)


def _run(args: argparse.Namespace) -> Path:
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.seeds, args.train_size, args.test_size, args.rnn_epochs = 2, 300, 200, 5
    runs = []
    for seed in range(args.seeds):
        for setting in SETTINGS:
            tr, y_tr, te, y_te = sequences(seed, args.train_size, args.test_size,
                                           setting == "crops", args.min_length)
            n_fit = round(0.8 * len(tr))
            results, seconds = {}, {}
            for name in KERNELS:
                mats, seconds[name] = kernel_matrices(name, tr, te)
                results[name] = evaluate(mats, y_tr.numpy(), y_te.numpy(), n_fit)
            results["GRU"] = {"trained": train_rnn(tr, y_tr, te, y_te, n_fit, args, seed)}
            seconds["GRU"] = 0.0
            runs.append({"seed": seed, "setting": setting, "train": len(tr), "test": len(te),
                         "results": results, "seconds": seconds})
            if not args.no_progress:
                line = ", ".join(f"{m} {mach} {v['test']:.3f}" for m, r in results.items()
                                 for mach, v in r.items())
                print(f"seed {seed} {setting}: {line} "
                      f"({time.perf_counter() - t_start:.0f} s)", flush=True)
    _figure(runs, out)
    rows = []
    for m, mach in [(k, mm) for k in KERNELS for mm in ("ridge", "SVM")] + [("GRU", "trained")]:
        row: list = [m, mach]
        for setting in SETTINGS:
            rs = [r for r in runs if r["setting"] == setting]
            acc = [r["results"][m][mach]["test"] for r in rs]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            secs = [r["seconds"][m] + r["results"][m][mach]["seconds"] for r in rs]
            row += [f"{statistics.fmean(acc):.3f} ± {sd:.3f}", f"{statistics.fmean(secs):.1f}"]
        rows.append(row)
    wins = {s: sum(max(r["results"]["RNTK"][mm]["test"] for mm in ("ridge", "SVM"))
                   > max(r["results"][k][mm]["test"] for k in ("MLP NTK", "RBF")
                         for mm in ("ridge", "SVM"))
                   for r in runs if r["setting"] == s) for s in SETTINGS}
    notes = (
        f"Test accuracy, mean ± standard deviation over {args.seeds} seeds (each a fresh "
        f"MNIST-1D dataset, generator seed 42 + seed, with its own crops); the first "
        f"{runs[0]['train']} of its 4000 training sequences (subsampled: the kernel "
        f"matrices cost O(N^2 T)) and {runs[0]['test']} test sequences, standardised. "
        f"crops: every train and test sequence cut to a length uniform in "
        f"[{args.min_length}, 40] at a uniform offset. RNTK: maxaffine.kernels.rntk, "
        f"{RNTK_ARGS}, (depth, recurrent_var) in {{(1, 2.1), (2, 2.0)}} (values from a "
        "pilot on seed 1's training set), on the (T_i, 1) sequences as they are (aligned "
        "at their ends by the recursion). MLP NTK (ReLU, depth in {2, 4, 8}) and RBF "
        "(gamma = {1, 4, 16} / median squared distance) on the sequences zero-padded at "
        "the end to 40. ridge: kernel ridge regression on centred one-hot labels, lambda "
        "in {1e-6, 1e-5, ..., 1} x mean diagonal; SVM: scikit-learn SVC, precomputed "
        "kernel scaled to mean diagonal 1, C in {0.1, 1, 10, 100}; the kernel variant "
        "and lambda chosen by ridge on the last 20% of the training subset, C likewise, "
        "then refitted on all of it. GRU: 1 layer, "
        f"{args.rnn_hidden} units, packed sequences (no padding), Adam lr {args.rnn_lr:g}, "
        f"batch 64, {args.rnn_epochs} epochs on the first 80%, best validation epoch "
        "kept. Seconds: mean per seed, kernel matrices (train and test, all variants) + "
        "selection and fit; GRU: training with its per-epoch validation. RNTK beats "
        f"both other kernels (best machine each): whole {wins['whole']}/{args.seeds}, "
        f"crops {wins['crops']}/{args.seeds}. {args.threads} torch thread(s).")
    table = Table("RNTK vs MLP NTK vs RBF vs a trained GRU on MNIST-1D (whole / random "
                  "crops)",
                  ["model", "machine", "whole acc", "whole s", "crops acc", "crops s"], rows,
                  notes=notes)
    (out / "runs.json").write_text(json.dumps(runs, indent=1))
    table.seconds = time.perf_counter() - t_start
    write_table(out, "rntk", table)
    return out


EXPERIMENT = Experiment(
    name="rntk",
    help="recurrent NTK vs MLP NTK vs RBF vs a GRU on MNIST-1D, whole and cropped "
         "(Alemohammad et al. 2021)",
    add_arguments=add_arguments,
    run=run,
)

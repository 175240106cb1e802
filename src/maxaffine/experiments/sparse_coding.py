"""``maxaffine reproduce sparse-coding``: a CNN whose layers are orthogonal
sparse coders against the plain ReLU CNN of the same shape.

Bowren (2021) reads a ReLU layer as one step of non-negative orthogonal sparse
coding. :class:`maxaffine.nn.SparseCodingConv2d` makes that reading exact: an
orthonormal patch dictionary and learned thresholds ``t >= 0``, so every output
pixel is the MAP code of its patch. We train on the MNIST subset

* ``sparse-coding``: SparseCodingConv2d(1->16, 5x5) -> max-pool ->
  SparseCodingConv2d(16->32, 3x3) -> max-pool -> linear (exponential prior:
  non-negative codes);
* ``sparse-coding-laplace``: the same with the Laplace prior (signed codes);
* ``plain``: Conv2d -> ReLU in the same places, learned weights and biases;

and report, on the test set, accuracy; the sparsity of each layer's code
(fraction of exact zeros, before pooling); and how well each code reconstructs
the patches it codes, ``||p - Phi a||^2 / ||p||^2`` summed over patches, with
``Phi = W^T`` (for the plain CNN we also give the error after the best global
rescaling of ``Phi a``, since its filters have arbitrary norms), plus how far
each dictionary is from orthonormal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..datasets import Dataset
from ..nn.sparse import SparseCodingConv2d, orthogonality_report
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

if TYPE_CHECKING:
    from ._report import DemoContext, Section

CONFIGS = ("sparse-coding", "sparse-coding-laplace", "plain")
LAYERS = ((16, 5), (32, 3))  # (channels, kernel) per coding layer


def build(data: Dataset, config: str, init_threshold: float = 0.1) -> nn.Sequential:
    """The CNN of ``config`` (one of :data:`CONFIGS`): [coder -> MaxPool2d(2)] per
    entry of :data:`LAYERS`, then Flatten -> Linear."""
    c, h, w = data.input_shape
    layers: list[nn.Module] = []
    for out, k in LAYERS:
        if config == "plain":
            layers += [nn.Conv2d(c, out, k, padding=k // 2), nn.ReLU()]
        else:
            prior = "laplace" if config.endswith("laplace") else "exponential"
            layers.append(SparseCodingConv2d(c, out, k, padding=k // 2, prior=prior,
                                             init_threshold=init_threshold))
        layers.append(nn.MaxPool2d(2))
        c, h, w = out, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, data.num_classes)]
    return nn.Sequential(*layers)


def coding_layers(model: nn.Sequential) -> list[tuple[int, nn.Conv2d | SparseCodingConv2d]]:
    """(index of the module whose output is the code, the conv / coder) per layer."""
    out = []
    for i, m in enumerate(model):
        if isinstance(m, SparseCodingConv2d):
            out.append((i, m))
        elif isinstance(m, nn.Conv2d):
            out.append((i + 1, m))  # the code is the ReLU's output
    return out


def _patches(conv: nn.Conv2d, x: Tensor) -> Tensor:
    return F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride).transpose(1, 2)


@torch.no_grad()
def code_statistics(model: nn.Sequential, x: Tensor, batch: int = 500) -> list[dict]:
    """Per coding layer: sparsity of the code, relative reconstruction error of the
    coded patches by ``Phi a`` (raw and after the best global scale), and the
    dictionary's orthogonality report."""
    model.eval()
    layers = coding_layers(model)
    acc = [{"zeros": 0, "entries": 0, "err": 0.0, "energy": 0.0, "pr": 0.0, "rr": 0.0}
           for _ in layers]
    for s in range(0, len(x), batch):
        h = x[s:s + batch]
        inputs: dict[int, Tensor] = {}
        outputs: dict[int, Tensor] = {}
        for i, m in enumerate(model):
            inputs[i] = h
            h = m(h)
            outputs[i] = h
        for a, (idx, layer) in zip(acc, layers, strict=True):
            conv = layer.conv if isinstance(layer, SparseCodingConv2d) else layer
            start = idx if isinstance(layer, SparseCodingConv2d) else idx - 1
            p = _patches(conv, inputs[start])  # (N, L, D)
            code = outputs[idx].flatten(2).transpose(1, 2)  # (N, L, K)
            rec = code @ conv.weight.flatten(1)  # Phi a per patch, (N, L, D)
            a["zeros"] += int((code == 0).sum())
            a["entries"] += code.numel()
            a["err"] += float((p - rec).pow(2).sum())
            a["energy"] += float(p.pow(2).sum())
            a["pr"] += float((p * rec).sum())
            a["rr"] += float(rec.pow(2).sum())
    stats = []
    for a, (_, layer) in zip(acc, layers, strict=True):
        conv = layer.conv if isinstance(layer, SparseCodingConv2d) else layer
        scale = a["pr"] / max(a["rr"], 1e-30)
        best = a["energy"] - 2 * scale * a["pr"] + scale**2 * a["rr"]
        report = orthogonality_report(conv.weight.detach().flatten(1).T)
        stats.append({"sparsity": a["zeros"] / a["entries"], "rel_error": a["err"] / a["energy"],
                      "rel_error_best_scale": best / a["energy"], "best_scale": scale,
                      "gram_error": report.relative_gram_error, "coherence": report.coherence})
    return stats


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _plot(models: dict[str, nn.Sequential], runs: list[dict], configs: list[str]):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 3.2 + 1.3 * len(models)))
    grid = fig.add_gridspec(1 + len(models), 3, height_ratios=[2.2] + [1] * len(models))
    metrics = (("test_acc", "test accuracy"), ("sparsity", "code sparsity (zeros)"),
               ("rel_error", "patch reconstruction error"))
    for j, (key, title) in enumerate(metrics):
        ax = fig.add_subplot(grid[0, j])
        for i, config in enumerate(configs):
            rs = [r for r in runs if r["config"] == config]
            if key == "test_acc":
                vals = [[r["test_acc"]] for r in rs]
            else:
                vals = [[lay[key] for lay in r["layers"]] for r in rs]
            v = torch.tensor(vals)
            xs = torch.arange(v.shape[1]) + (i - (len(configs) - 1) / 2) * 0.25
            ax.bar(xs, v.mean(0), width=0.25, yerr=v.std(0) if len(rs) > 1 else None,
                   color=f"C{i}", label=config, capsize=2)
        ax.set_title(title, fontsize=10)
        if key != "test_acc":
            ax.set_xticks(range(len(LAYERS)), [f"layer {k + 1}" for k in range(len(LAYERS))])
        else:
            ax.set_xticks([])
            ax.set_ylim(0.8, 1.0)
    fig.axes[0].legend(fontsize=8, loc="lower left")
    for r, (config, model) in enumerate(models.items()):
        w = coding_layers(model)[0][1]
        w = (w.conv if isinstance(w, SparseCodingConv2d) else w).weight.detach()[:, 0]
        ax = fig.add_subplot(grid[1 + r, :])
        tiles = torch.cat([torch.nn.functional.pad(t / t.abs().max(), (1, 1, 1, 1)) for t in w], 1)
        ax.imshow(tiles, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_axis_off()
        ax.set_title(f"{config}: first-layer atoms (seed 0)", fontsize=9)
    fig.tight_layout()
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--seeds", type=positive_int, default=3,
                   help="seeds per configuration (default 3)")
    p.add_argument("--epochs", type=positive_int, default=3, help="epochs (default 3)")
    p.add_argument("--lr", type=positive_float, default=1e-3,
                   help="Adam learning rate (default 1e-3)")
    p.add_argument("--init-threshold", type=non_negative_float, default=0.1,
                   help="initial threshold of the sparse coders (default 0.1)")
    p.add_argument("--dataset", default="mnist", choices=["mnist"])
    add_common_arguments(p)


def run(args: argparse.Namespace) -> Path:
    t0 = time.perf_counter()
    out = Path(args.out)
    data = prepare(args, args.dataset)
    runs, first = [], {}
    for config in args.configs:
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = build(data, config, args.init_threshold)
            hist = fit(model, data, epochs=args.epochs, lr=args.lr, seed=seed,
                       progress=not args.no_progress, desc=f"{config} seed {seed}")
            layers = code_statistics(model, data.x_test)
            if seed == 0:
                first[config] = model
            runs.append({"config": config, "seed": seed, "test_acc": hist.test_acc,
                         "train_acc": hist.train_acc, "seconds": hist.seconds,
                         "layers": layers})
            print(f"{config:22s} seed {seed}: test {hist.test_acc:.4f}, sparsity "
                  f"{[round(s['sparsity'], 3) for s in layers]}, rec. error "
                  f"{[round(s['rel_error'], 3) for s in layers]} ({hist.seconds:.1f} s)",
                  flush=True)
    rows = []
    for config in args.configs:
        rs = [r for r in runs if r["config"] == config]
        m, s = _mean_std([r["test_acc"] for r in rs])
        for li in range(len(LAYERS)):
            def ms(key: str, li: int = li, rs: list = rs) -> str:
                mm, ss = _mean_std([r["layers"][li][key] for r in rs])
                return f"{mm:.3f} ± {ss:.3f}"

            rows.append([config, f"{m:.4f} ± {s:.4f}" if li == 0 else "", li + 1,
                         ms("sparsity"), ms("rel_error"), ms("rel_error_best_scale"),
                         ms("gram_error"), ms("coherence")])
    notes = (f"{data!r}; {args.epochs} epoch(s), Adam lr {args.lr:g}, batch 64, {args.seeds} "
             "seed(s), mean ± std. Layers: (channels, kernel) = "
             f"{LAYERS}, 'same' padding, each followed by max-pool 2. Sparsity: fraction of "
             "zero code entries on the test set (before pooling). Reconstruction error: "
             "sum over the test patches of ||p - Phi a||^2 / sum ||p||^2 with Phi = W^T; "
             "'best scale' rescales Phi a by the least-squares global factor. Gram error: "
             "Frobenius norm of Phi^T Phi - I over sqrt(atoms) (0 = orthonormal); coherence: "
             "largest |cos| between two atoms. Sparse coders start at threshold "
             f"{args.init_threshold}. {args.threads} torch thread(s).")
    table = Table("Sparse-coding CNN vs plain ReLU CNN (test set)",
                  ["network", "test acc", "layer", "code sparsity", "rec. error",
                   "rec. error (best scale)", "Gram error", "coherence"], rows,
                  notes=notes)
    save_figure(_plot(first, runs, args.configs), out, "sparse_coding")
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps({"runs": runs}, indent=2))
    table.seconds = time.perf_counter() - t0
    write_table(out, "sparse_coding", table)
    return out


EXPERIMENT = Experiment("sparse-coding", "orthogonal sparse-coding CNN vs plain ReLU CNN: "
                        "accuracy, code sparsity, reconstruction (Bowren 2021)",
                        add_arguments, run)


def demo_section(ctx: DemoContext) -> Section:
    """The demo MLP's ReLU layers read as sparse coders (how far from orthogonal,
    how sparse), and a generalized Hamming MLP of the same widths trained for the
    same number of epochs (no biases, no batch-norm)."""
    from ..nn.hamming import GHN
    from ..nn.sparse import SparseCoding
    from ._report import Section

    x = ctx.data.x_test
    mods = list(ctx.mlp)
    rows = ["| layer | D x K | Gram error | distance to orthonormal | coherence | "
            "positive biases (clamped) | code sparsity |", "|---|---|---|---|---|---|---|"]
    h = x
    with torch.no_grad():
        for i, m in enumerate(mods):
            out = m(h)
            if isinstance(m, nn.Linear) and i + 1 < len(mods) and isinstance(mods[i + 1],
                                                                             nn.ReLU):
                rep = SparseCoding.from_linear(m).source_report
                code = torch.relu(out)
                rows.append(f"| {i} | {rep.in_features} x {rep.out_features} | "
                            f"{rep.relative_gram_error:.3f} | {rep.distance:.3f} | "
                            f"{rep.coherence:.3f} | {rep.clamped_thresholds} | "
                            f"{float((code == 0).double().mean()):.3f} |")
            h = out
    hist = ctx.history["mlp"]
    epochs = max(1, round(len(hist.losses) / max(1, len(ctx.data.x_train) // 64)))
    widths = tuple(m.out_features for m in mods if isinstance(m, nn.Linear))[:-1]
    torch.manual_seed(ctx.seed)
    ghn = GHN(ctx.data.input_shape, ctx.data.num_classes, widths=widths)
    gh = fit(ghn, ctx.data, epochs=epochs, seed=ctx.seed, progress=False, desc="ghn")
    text = ("A ReLU layer `ReLU(W x + b)` is one step of non-negative sparse coding with "
            "dictionary `Phi = W^T` and thresholds `-b` (Bowren 2021); the step is the exact "
            "MAP code only when the atoms are orthonormal and `b <= 0`. The demo MLP's layers, "
            "read with `maxaffine.nn.SparseCoding.from_linear` (Gram error: "
            "`||Phi^T Phi - I||_F / sqrt(K)`, 0 when orthonormal):\n\n" + "\n".join(rows) +
            "\n\nA generalized Hamming MLP (`maxaffine.nn.GHN`, Fan 2017: analytic bias "
            f"`-(sum w + sum x)/2`, no learned bias, no batch-norm) with widths {widths}, "
            f"{epochs} epoch(s): test accuracy {gh.test_acc:.3f} (the ReLU MLP above: "
            f"{hist.test_acc:.3f}). See `maxaffine reproduce ghn` and "
            "`maxaffine reproduce sparse-coding` for the full comparisons.\n")
    return Section("Sparse coding and generalized Hamming views", text)

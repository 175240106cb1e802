"""``maxaffine reproduce vq-distance``: do a network's VQ codes make a good metric?

"Mad Max: Affine Spline Insights into Deep Learning" (Balestriero & Baraniuk,
Proc. IEEE 2021, sec. 5) proposes the VQ distance, the fraction of units (per
layer) that select different pieces for two inputs, as a distance between
inputs that reflects what the network has learned. We measure it by 1-nearest-
neighbour classification of the MNIST test subset against the training subset,
per layer and for all layers together, for three CNNs of the same architecture:

* ``trained``: trained on the true labels;
* ``untrained``: random initialisation (the codes of a random partition);
* ``random-labels``: trained on randomly permuted labels until it fits them.

Baselines: 1-NN on raw pixels (Euclidean) and the trained network's own
accuracy. The figure shows the 16 nearest training images of a few test queries
under each network's VQ distance (all layers).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..datasets import Dataset, load_dataset
from ..distances import vq_knn
from ..models import small_cnn
from ..training import fit
from ..vq import Codes, codes
from . import Experiment, Table, non_negative_int, positive_int, save_figure, write_table

if TYPE_CHECKING:
    from ._report import DemoContext, Section

MODELS = ("trained", "untrained", "random-labels")


def batched_codes(model: nn.Module, x: Tensor, batch: int = 1000) -> Codes:
    """:func:`maxaffine.codes` of a large batch, computed in chunks."""
    parts = [codes(model, x[i:i + batch]) for i in range(0, len(x), batch)]
    first = parts[0]
    values = tuple(torch.cat([p.values[k] for p in parts]) for k in range(len(first.names)))
    return Codes(first.names, values, first.pieces, first.bits_per_unit, len(x))


def knn_scores(train: Codes, test: Codes, y_train: Tensor, y_test: Tensor, k: int = 16
               ) -> dict[str, dict[str, float]]:
    """Per layer (and ``"all"``): 1-NN accuracy and precision@k (the fraction of the k
    nearest training samples with the query's label) under the VQ distance."""
    out = {}
    for name in (*train.names, "all"):
        layers = None if name == "all" else [name]
        _, idx = vq_knn(None, test, train, k=k, layers=layers)
        labels = y_train[idx]
        out[name] = {"nn1": float((labels[:, 0] == y_test).double().mean()),
                     f"precision@{k}": float((labels == y_test[:, None]).double().mean())}
    return out


def pixel_knn(x_train: Tensor, x_test: Tensor, y_train: Tensor, y_test: Tensor) -> float:
    """1-NN accuracy with the Euclidean distance between raw inputs."""
    d = torch.cdist(x_test.flatten(1).double(), x_train.flatten(1).double())
    return float((y_train[d.argmin(1)] == y_test).double().mean())


def retrieval_figure(rows: list[tuple[str, Tensor, Tensor, Tensor, Tensor, Tensor]]):
    """One block per model: each query (blue frame), then its nearest training
    images (red frame: another label), as one image mosaic. ``rows``: (title,
    queries (Q, 1, H, W), query labels (Q,), neighbours (Q, K, 1, H, W), their labels
    (Q, K), distances (Q, K))."""
    import matplotlib.pyplot as plt

    pad = 2
    blue, red, grey = (0.12, 0.47, 0.71), (0.9, 0.1, 0.1), (0.8, 0.8, 0.8)

    def tile(img: Tensor, color: tuple[float, float, float]) -> Tensor:
        g = img[0].double().clamp(0, 1)
        rgb = g.unsqueeze(-1).expand(*g.shape, 3)
        frame = torch.tensor(color, dtype=torch.float64).expand(g.shape[0] + 2 * pad,
                                                                g.shape[1] + 2 * pad, 3)
        frame = frame.clone()
        frame[pad:-pad, pad:-pad] = rgb
        return frame

    lines, labels = [], []
    for title, xq, yq, xn, yn, dn in rows:
        for i in range(xq.shape[0]):
            tiles = [tile(xq[i], blue)] + [
                tile(xn[i, j], red if int(yn[i, j]) != int(yq[i]) else grey)
                for j in range(xn.shape[1])]
            lines.append(torch.cat(tiles, 1))
            labels.append((title if i == 0 else "", float(dn[i, 0]), float(dn[i, -1])))
    mosaic = torch.cat(lines, 0).numpy()
    height = lines[0].shape[0]
    fig, ax = plt.subplots(figsize=(0.45 * (rows[0][3].shape[1] + 1), 0.45 * len(lines) + 0.6))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([(r + 0.5) * height for r in range(len(lines))],
                  [f"{t}  d={lo:.2f}..{hi:.2f}" for t, lo, hi in labels], fontsize=6)
    ax.set_title("Query (blue) and its 16 nearest training images under the VQ distance "
                 "(all layers; red: another label)", fontsize=7)
    fig.tight_layout()
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channels", type=positive_int, nargs="+", default=[8, 16],
                   help="CNN channels per conv stage (default 8 16, the demo CNN)")
    p.add_argument("--epochs", type=positive_int, default=4,
                   help="epochs on true labels (default 4)")
    p.add_argument("--random-label-epochs", type=non_negative_int, default=50,
                   help="epochs on random labels (default 50)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--queries", type=positive_int, default=4,
                   help="queries in the figure (default 4)")
    p.add_argument("--train-size", type=positive_int, default=None, help="use only this many "
                   "training samples (quick runs)")
    p.add_argument("--test-size", type=positive_int, default=None)
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> Path:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = load_dataset("mnist", seed=args.seed)
    if args.train_size or args.test_size:
        data = data.subset(args.train_size, args.test_size)
    gen = torch.Generator().manual_seed(args.seed)
    shuffled = data.y_train[torch.randperm(len(data.y_train), generator=gen)]
    random_data = Dataset(data.name, data.x_train, shuffled, data.x_test, data.y_test,
                          data.num_classes)
    results, figure_rows = {}, []
    queries = torch.arange(args.queries) * (len(data.x_test) // max(1, args.queries))
    for name in MODELS:
        torch.manual_seed(args.seed)
        model = small_cnn(data.input_shape, data.num_classes, channels=tuple(args.channels))
        info: dict = {}
        if name == "trained":
            h = fit(model, data, epochs=args.epochs, seed=args.seed,
                    progress=not args.no_progress, desc="true labels")
            info = {"epochs": args.epochs, "train_acc": h.train_acc, "test_acc": h.test_acc}
        elif name == "random-labels":
            h = fit(model, random_data, epochs=args.random_label_epochs, seed=args.seed,
                    progress=not args.no_progress, desc="random labels")
            info = {"epochs": args.random_label_epochs, "train_acc": h.train_acc,
                    "test_acc": h.test_acc}
        else:
            from ..training import accuracy

            model.eval()
            info = {"epochs": 0, "train_acc": accuracy(model, data.x_train, data.y_train),
                    "test_acc": accuracy(model, data.x_test, data.y_test)}
        model.eval()
        s0 = time.perf_counter()
        train_codes = batched_codes(model, data.x_train)
        test_codes = batched_codes(model, data.x_test)
        info["scores"] = knn_scores(train_codes, test_codes, data.y_train, data.y_test)
        info["seconds_knn"] = time.perf_counter() - s0
        results[name] = info
        dist, idx = vq_knn(None, test_codes.select(queries), train_codes, k=16)
        figure_rows.append((name, data.x_test[queries], data.y_test[queries],
                            data.x_train[idx], data.y_train[idx], dist))
        print(f"{name:14s} train acc {info['train_acc']:.3f} test acc {info['test_acc']:.3f}; "
              "1-NN " + ", ".join(f"{k}: {v['nn1']:.3f}" for k, v in info["scores"].items()),
              flush=True)
    pixel = pixel_knn(data.x_train, data.x_test, data.y_train, data.y_test)
    names = list(results["trained"]["scores"])
    columns = ["network", "epochs", "train acc (own labels)", "test acc",
               *[f"1-NN {n}" for n in names], "precision@16 all"]
    rows = []
    for name, info in results.items():
        sc = info["scores"]
        rows.append([name, info["epochs"], round(info["train_acc"], 3),
                     round(info["test_acc"], 3), *[round(sc[n]["nn1"], 3) for n in names],
                     round(sc["all"]["precision@16"], 3)])
    notes = (f"{data!r}; CNN small_cnn(channels={tuple(args.channels)}): conv-BN-ReLU-maxpool "
             "per stage, so the VQ layers are ReLU, max-pool, ReLU, max-pool (named by module "
             "index). 1-NN: each test image gets the label of its nearest training image "
             "under the VQ distance of that layer (normalised Hamming distance of the codes; "
             "max-pool: fraction of windows whose argmax differs), 'all': the mean over "
             "layers. precision@16: fraction of the 16 nearest training images with the "
             f"query's label. Raw-pixel Euclidean 1-NN: {pixel:.3f}. Random labels: the "
             "training labels permuted once (seed "
             f"{args.seed}); its test acc is against the true labels. Adam lr 1e-3, batch 64, "
             f"seed {args.seed}, {args.threads} torch thread(s).")
    table = Table("1-NN accuracy with the VQ distance (MNIST subset, test vs train)",
                  columns, rows, notes=notes)
    save_figure(retrieval_figure(figure_rows), out, "vq_retrieval")
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps({"results": results, "pixel_1nn": pixel},
                                              indent=2))
    table.seconds = time.perf_counter() - t0
    write_table(out, "vq_distance", table)
    return out


EXPERIMENT = Experiment("vq-distance", "1-NN accuracy and retrieval with the VQ distance of "
                        "trained, untrained and random-label CNNs (Mad Max, sec. 5)",
                        add_arguments, run)


def demo_section(ctx: DemoContext) -> Section:
    """The demo CNN's VQ distance: 1-NN accuracy per layer and a retrieval figure."""
    from ._report import Section

    n_train = min(len(ctx.data.x_train), 1000 if ctx.quick else 4000)
    n_test = min(len(ctx.data.x_test), 200 if ctx.quick else 500)
    x_train, y_train = ctx.data.x_train[:n_train], ctx.data.y_train[:n_train]
    x_test, y_test = ctx.data.x_test[:n_test], ctx.data.y_test[:n_test]
    ctx.cnn.eval()
    train_codes, test_codes = batched_codes(ctx.cnn, x_train), batched_codes(ctx.cnn, x_test)
    scores = knn_scores(train_codes, test_codes, y_train, y_test)
    rows = ["| distance | 1-NN accuracy | precision@16 |", "|---|---|---|"]
    for name, sc in scores.items():
        label = "all layers (mean)" if name == "all" else f"layer {name}"
        rows.append(f"| VQ, {label} | {sc['nn1']:.3f} | {sc['precision@16']:.3f} |")
    rows.append(f"| raw pixels (Euclidean) | {pixel_knn(x_train, x_test, y_train, y_test):.3f}"
                " | |")
    queries = torch.arange(3) * (n_test // 3)
    dist, idx = vq_knn(None, test_codes.select(queries), train_codes, k=16)
    fig = retrieval_figure([("demo CNN", x_test[queries], y_test[queries], x_train[idx],
                             y_train[idx], dist)])
    text = ("The VQ distance (`maxaffine.vq_distance`, Mad Max sec. 5) compares two inputs by "
            "the fraction of units of a layer that select different pieces (popcount over "
            f"packed codes). 1-NN classification of {n_test} test images against {n_train} "
            "training images with the demo CNN's codes:\n\n" + "\n".join(rows) + "\n\n"
            + ctx.figure(fig, "vq_retrieval") + "\n\nFull experiment (trained vs untrained vs "
            "random-label CNN): `maxaffine reproduce vq-distance` (results/vq-distance/).\n")
    return Section("VQ distance and retrieval", text)

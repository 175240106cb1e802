"""Throughput of ``maxaffine.affine_map`` against the two standard ways to get the
per-input Jacobian ``A[x]`` of a network (Balestriero & Baraniuk 2018, Thm. 1):

* ``torch.func.vmap(torch.func.jacrev(f))`` over the batch;
* one autograd call per output class (``retain_graph=True``).

Measured in the same run, repetitions interleaved (one call of each method per
round), medians reported; MLP 784-256-256-10 and ``small_cnn((1, 28, 28), 10)``,
batch 256, float32.  Every method runs the way a user who wants ``A`` (not its
parameter gradients) would call it: ``affine_map`` and ``vmap(jacrev)`` under
``torch.no_grad()``, the loop with plain ``autograd.grad``.  The differentiable
``affine_map`` (grad mode, ``A`` differentiable in the parameters) is reported too.

    python benchmarks/affine.py [--repeats 7] [--threads 1] [--batch 256]

Prints a table and writes ``benchmarks/results/affine.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

import maxaffine as ma
from maxaffine.models import mlp, small_cnn

OUT = Path(__file__).parent / "results" / "affine.json"
TARGETS = {"vs_vmap_jacrev": 1.0, "vs_per_class_loop": 3.0}


def vmap_jacrev(model: nn.Module, x: Tensor) -> Tensor:
    def one(v: Tensor) -> Tensor:
        return model(v.unsqueeze(0)).squeeze(0)

    with torch.no_grad():
        return torch.func.vmap(torch.func.jacrev(one))(x)


def per_class_loop(model: nn.Module, x: Tensor) -> Tensor:
    xx = x.detach().requires_grad_(True)
    out = model(xx)
    rows = [torch.autograd.grad(out[:, c].sum(), xx, retain_graph=True)[0]
            for c in range(out.shape[1])]
    return torch.stack(rows, 1)


def ours(graph: ma.SplineGraph, x: Tensor) -> Tensor:
    with torch.no_grad():
        return ma.affine_map(graph, x).A


def ours_differentiable(graph: ma.SplineGraph, x: Tensor) -> Tensor:
    return ma.affine_map(graph, x).A


def measure(methods: dict[str, Callable[[], Tensor]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each method, rounds interleaved after one warm-up call."""
    times: dict[str, list[float]] = {k: [] for k in methods}
    for fn in methods.values():
        fn()
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def bench_model(name: str, model: nn.Module, shape: tuple[int, ...], batch: int,
                repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *shape), generator=gen)
    model.eval()
    graph = ma.trace(model, x)
    reference = vmap_jacrev(model, x)
    got = ours(graph, x)
    error = float((got.reshape(reference.shape) - reference).abs().max())
    methods = {
        "affine_map": lambda: ours(graph, x),
        "vmap(jacrev)": lambda: vmap_jacrev(model, x),
        "per-class loop": lambda: per_class_loop(model, x),
        "affine_map (differentiable)": lambda: ours_differentiable(graph, x),
    }
    times = measure(methods, repeats)
    median = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: batch / v for k, v in median.items()}
    return {
        "model": name,
        "input_shape": list(shape),
        "outputs": graph.num_outputs,
        "batch": batch,
        "mode": ma.affine_map(graph, x[:2]).mode,
        "max_abs_diff_vs_vmap_jacrev": error,
        "seconds": times,
        "median_seconds": median,
        "samples_per_second": rate,
        "ratio_vs_vmap_jacrev": rate["affine_map"] / rate["vmap(jacrev)"],
        "ratio_vs_per_class_loop": rate["affine_map"] / rate["per-class loop"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = [
        ("MLP 784-256-256-10", mlp(784, (256, 256), 10), (784,)),
        ("small_cnn 1x28x28", small_cnn((1, 28, 28), 10), (1, 28, 28)),
    ]
    start = time.perf_counter()
    results = [bench_model(n, m, s, args.batch, args.repeats) for n, m, s in models]
    wall = time.perf_counter() - start

    cols = ["affine_map", "vmap(jacrev)", "per-class loop", "affine_map (differentiable)"]
    print(f"samples/s, batch {args.batch}, float32, {args.threads} thread(s), "
          f"median of {args.repeats} interleaved rounds")
    print(f"{'model':<20}" + "".join(f"{c:>29}" for c in cols) + f"{'x vmap':>9}{'x loop':>9}")
    for r in results:
        row = "".join(f"{r['samples_per_second'][c]:>29.0f}" for c in cols)
        print(f"{r['model']:<20}{row}{r['ratio_vs_vmap_jacrev']:>9.2f}"
              f"{r['ratio_vs_per_class_loop']:>9.2f}")
    for r in results:
        print(f"{r['model']}: mode {r['mode']}, max |A - A_vmap(jacrev)| = "
              f"{r['max_abs_diff_vs_vmap_jacrev']:.1e}")

    report = {
        "benchmark": "affine_map vs vmap(jacrev) vs per-class autograd loop",
        "command": f"python benchmarks/affine.py --repeats {args.repeats} "
                   f"--threads {args.threads} --batch {args.batch}",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "threads": args.threads,
        "wall_seconds": wall,
        "targets": TARGETS,
        "targets_met": {
            r["model"]: {
                "vs_vmap_jacrev": r["ratio_vs_vmap_jacrev"] >= TARGETS["vs_vmap_jacrev"],
                "vs_per_class_loop": r["ratio_vs_per_class_loop"]
                >= TARGETS["vs_per_class_loop"],
            }
            for r in results
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

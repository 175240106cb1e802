"""Benchmark: exact plane partitions (maxaffine.partition_plane).

Each case runs in a fresh process (so peak memory is its own): a warm-up on a tiny
network (numba's compiled loops load from their disk cache), then ``--repeat``
runs (default 3; the big [-r,r]^2 cases once) whose median gives seconds and
regions/s; the first run's time is printed too. Also regions and peak resident
memory. The baseline measured in the same run
is the project's slow per-face clipping reference (tests/reference_partition.py)
on the small network where it is feasible; its ratio to the fast path is printed.
The 1000-class head case also times the first access to ``.decision_boundary``
(computed lazily) and, as its baseline, the same trunk with one output.

    python benchmarks/partition.py [--quick] [--dtype float64|float32] [--only NAME]
                                   [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mlp(widths, seed=0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers, d = [], widths[0]
    for w in widths[1:-1]:
        layers += [nn.Linear(d, w), nn.ReLU()]
        d = w
    layers.append(nn.Linear(d, widths[-1]))
    return nn.Sequential(*layers).eval()


def _case(name: str, dtype_name: str, repeat: int, queue) -> None:
    import torch

    torch.set_num_threads(2)
    import maxaffine as ma
    from maxaffine.datasets import load_dataset
    from maxaffine.models import mlp, small_cnn
    from maxaffine.training import fit

    dtype = getattr(torch, dtype_name)
    domain = ma.Slice.square()
    if name.startswith("mlp 2-"):
        widths = [int(w) for w in name.split()[1].split("-")]
        if "class head" not in name:
            widths.append(1)
        model = _mlp(widths)
        if "^2" in name:  # "[-r,r]^2"
            r = float(name.split("[-")[1].split(",")[0])
            domain = ma.Slice.square(-r, r)
    else:
        data = load_dataset("mnist")
        torch.manual_seed(0)
        if name.startswith("mlp 784"):
            model = mlp(data.input_shape, (256, 256, 256), 10)
        else:
            model = small_cnn(data.input_shape, 10, channels=(8, 16))
        fit(model, data, epochs=1, progress=False)
        x = data.x_test[:3]
        domain = ma.Slice.through(x[0], x[1], x[2])
        if "window" in name:  # thousands of conv units: a window around x1
            domain = domain.zoom(0, 0.02 * float(domain.anchors[1, 0]))
    reference = None
    if name.endswith("(vs reference)"):
        sys.path.insert(0, str(ROOT / "tests"))
        from reference_partition import reference_partition

        t0 = time.perf_counter()
        ref = reference_partition(model.double(), domain)
        reference = (len(ref), time.perf_counter() - t0)
        model = model.float()
    # one-time costs of the process (kernel initialisation, first tracing) are not
    # the algorithm's: warm up on a tiny unrelated network first
    ma.partition_plane(_mlp([2, 8, 8, 1], seed=1), ma.Slice.square(), progress=False)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, boundary, part = [], [], None
    for _ in range(repeat if not name.endswith("^2") else 1):  # the big cases: once
        part = None  # the last run's result is freed first: peak memory is one run's
        t0 = time.perf_counter()
        part = ma.partition_plane(model, domain, dtype=dtype, progress=False,
                                  max_regions=10_000_000)
        times.append(time.perf_counter() - t0)
        if "class head" in name:  # the decision boundary is computed on first use
            t0 = time.perf_counter()
            segments = part.decision_boundary.shape[0]
            boundary.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extra = {}
    if boundary:
        # baseline in the same process: the same trunk with one output (same seed,
        # same first layers: the same partition), whose decision boundary is trivial
        trunk = _mlp([int(w) for w in name.split()[1].split("-")[:-1]] + [1])
        part_trunk, trunk_times = None, []
        for _ in range(repeat):
            part_trunk = None
            t0 = time.perf_counter()
            part_trunk = ma.partition_plane(trunk, domain, dtype=dtype, progress=False)
            trunk_times.append(time.perf_counter() - t0)
        extra = {"boundary_seconds": statistics.median(boundary), "segments": segments,
                 "trunk_seconds": statistics.median(trunk_times),
                 "trunk_regions": part_trunk.num_regions}
    queue.put({
        "case": name, "dtype": dtype_name, "regions": part.num_regions, "seconds": seconds,
        "first_seconds": times[0], "runs": len(times),
        "regions_per_s": part.num_regions / seconds,
        "peak_rss_mb": peak / 1024, "rss_growth_mb": (peak - base) / 1024,
        "reference_regions": reference[0] if reference else None,
        "reference_seconds": reference[1] if reference else None, **extra,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small cases only")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per case after the warm-up (the [-r,r]^2 cases: one);"
                             " seconds is their median, first_seconds the first")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/partition.json")
    args = parser.parse_args()
    cases = ["mlp 2-32-32-32 (vs reference)", "mlp 2-64-64-64"]
    if not args.quick:
        cases += ["mlp 2-128-128-128", "mlp 2-256-256-256", "mlp 784-256-256-256-10 (MNIST plane)",
                  "demo cnn (MNIST plane, 2% window)",
                  "mlp 2-256-256-256-1000 (1000-class head)", "mlp 2-256-256-256 [-4,4]^2",
                  "mlp 2-512-512-512 [-8,8]^2"]
    cases = [c for c in cases if args.only in c]
    ctx = mp.get_context("spawn")
    rows = []
    for name in cases:
        queue = ctx.Queue()
        proc = ctx.Process(target=_case, args=(name, args.dtype, args.repeat, queue))
        proc.start()
        row = queue.get()
        proc.join()
        rows.append(row)
        ratio = ""
        if row["reference_seconds"]:
            ratio = (f"  reference: {row['reference_regions']} regions in "
                     f"{row['reference_seconds']:.2f} s -> fast path "
                     f"{row['reference_seconds'] / row['seconds']:.0f}x faster")
        if "boundary_seconds" in row:
            ratio = (f"  decision boundary {row['boundary_seconds']:.2f} s "
                     f"({row['segments']} segments); same trunk, one output: "
                     f"{row['trunk_seconds']:.2f} s -> default call "
                     f"{row['seconds'] / row['trunk_seconds']:.2f}x, with the boundary "
                     f"{(row['seconds'] + row['boundary_seconds']) / row['trunk_seconds']:.2f}x"
                     f"; boundary / default call "
                     f"{row['boundary_seconds'] / row['seconds']:.2f}")
        print(f"{name:<40} {row['regions']:>9} regions {row['seconds']:8.2f} s "
              f"(first {row['first_seconds']:.2f} s, {row['runs']} runs) "
              f"{row['regions_per_s']:>10.0f} regions/s  peak {row['peak_rss_mb']:7.0f} MB"
              f"{ratio}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "partition_plane", "dtype": args.dtype, "machine": platform.platform(),
        "cpus": mp.cpu_count(), "rows": rows,
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Throughput of ``maxaffine.scanning.scan`` in-process vs on a 2-worker Dask cluster.

The demo CNN (``small_cnn((1, 28, 28), 10, channels=(8, 16))``, one epoch on the
MNIST subset, eval mode) scanned over MNIST images in batches of 256:

* ``codes``: the packed codes, regions and predicted classes (one forward pass);
* ``codes + local complexity``: and the local complexity at radius 0.1 over 25
  random directions (51 forward passes per image; Humayun et al., ICML 2024).

Each case runs in this process with one torch thread, in this process with two,
and on a ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` (two
worker processes; the spline graph sent once, the batches scattered to them). The
cluster's start and one warm-up scan are timed apart, not in its throughput; the
tables of the cluster and of the one-thread run are checked equal bit for bit.

    python benchmarks/scan.py [--images 5000] [--lc-images 1000]

Prints a table and writes ``benchmarks/results/scan.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from maxaffine.datasets import load_dataset
from maxaffine.models import small_cnn
from maxaffine.scanning import scan
from maxaffine.training import fit

OUT = Path(__file__).parent / "results" / "scan.json"
BATCH = 256


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(images: int = 5000, lc_images: int = 1000) -> dict:
    from distributed import Client, LocalCluster

    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = load_dataset("mnist")
    cnn = small_cnn(data.input_shape, data.num_classes, channels=(8, 16))
    fit(cnn, data, epochs=1, progress=False)
    cnn.eval()
    x = torch.cat([data.x_train, data.x_test])
    cases = [("codes", ("codes", "region", "prediction"), x[:images]),
             ("codes + local complexity", ("codes", "region", "prediction",
                                           "local_complexity"), x[:lc_images])]
    options = {"batch_size": BATCH, "radius": 0.1, "progress": False}
    start, (cluster, client) = timed(lambda: (lambda c: (c, Client(c)))(
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                     dashboard_address=None)))
    warm, _ = timed(lambda: scan(cnn, x[:BATCH], cases[1][1], client=client, **options))
    print(f"demo CNN, batches of {BATCH}; LocalCluster start {start:.1f} s, warm-up scan "
          f"{warm:.1f} s (torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f})")
    print(f"{'measures':<26} {'images':>7} {'1 thread':>9} {'2 threads':>9} "
          f"{'cluster 2x1':>11} {'x 1 thread':>10} {'equal':>6}")
    rows = []
    for label, measures, xs in cases:
        torch.set_num_threads(1)
        t1, one = timed(lambda m=measures, v=xs: scan(cnn, v, m, **options))
        torch.set_num_threads(2)
        t2, two = timed(lambda m=measures, v=xs: scan(cnn, v, m, **options))
        torch.set_num_threads(1)
        tc, far = timed(lambda m=measures, v=xs: scan(cnn, v, m, client=client, **options))
        equal = one.equals(far)
        pd.testing.assert_frame_equal(one, far, check_exact=True)
        n = len(xs)
        row = {"measures": label, "images": n, "images_per_s_1_thread": n / t1,
               "images_per_s_2_threads": n / t2, "images_per_s_cluster": n / tc,
               "cluster_vs_1_thread": t1 / tc, "cluster_vs_2_threads": t2 / tc,
               "cluster_equals_in_process": bool(equal),
               "two_threads_equal_one": bool(one.equals(two))}
        rows.append(row)
        print(f"{label:<26} {n:>7} {n / t1:>9.0f} {n / t2:>9.0f} {n / tc:>11.0f} "
              f"{t1 / tc:>10.2f} {equal!s:>6}", flush=True)
    client.close()
    cluster.close()
    result = {"benchmark": "scan", "model": "small_cnn((1, 28, 28), 10, channels=(8, 16))",
              "batch_size": BATCH, "radius": 0.1, "n_directions": 25,
              "cluster": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True)",
              "cluster_start_s": start, "warm_up_s": warm, "torch": torch.__version__,
              "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
              "machine": platform.machine(), "rows": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="images for codes (5000)")
    parser.add_argument("--lc-images", type=int, default=1000,
                        help="images for codes + local complexity (1000)")
    args = parser.parse_args()
    main(args.images, args.lc_images)

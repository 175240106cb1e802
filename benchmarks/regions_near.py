"""Speed of ``maxaffine.regions_near``: the exact regions within a ball around an
MNIST image, at the full input dimension (784).

Model: the demo MLP shape, ``models.mlp((1, 28, 28), (128, 128), 10)``, torch's
default initialisation after ``torch.manual_seed(0)``, float64; ``x``: the first
image of the MNIST test subset. For L-inf and L2 balls of a few radii we walk every
region (up to ``MAX_REGIONS``) and report regions/s and linear programs per region.

Baseline, in the same run: the naive walk (``_Walk(prune=False, witnesses=False,
warm=False)``): every unit's line is a candidate facet and gets its own linear
program, solved from scratch. Both walks are timed on the first ``FIRST`` regions
of the same breadth-first order (the baseline takes seconds per region); the
ratio is their regions/s. Run: ``python benchmarks/regions_near.py`` (writes
benchmarks/results/regions_near.json).
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from pathlib import Path

import torch

import maxaffine as ma
from maxaffine.datasets import load_dataset
from maxaffine.models import mlp
from maxaffine.partition.near import _Walk

CASES = [("linf", 0.0001), ("linf", 0.0003), ("linf", 0.001), ("l2", 0.003), ("l2", 0.01)]
BASELINE = [("linf", 0.0003), ("l2", 0.01)]
MAX_REGIONS = 1500
FIRST = 6


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ma.MaxAffineWarning)
    torch.manual_seed(0)
    data = load_dataset("mnist")
    net = mlp(data.input_shape, (128, 128), data.num_classes).double().eval()
    x = data.x_test[0].double()
    graph = ma.trace(net, x.unsqueeze(0))
    rows = []
    print(f"{'norm':5s} {'radius':>8s} {'regions':>8s} {'complete':>8s} {'LPs/region':>10s} "
          f"{'seconds':>8s} {'regions/s':>10s}")
    for norm, r in CASES:
        found = ma.regions_near(graph, x, r, norm=norm, max_regions=MAX_REGIONS,
                                progress=False)
        row = {"norm": norm, "radius": r, "regions": found.num_regions,
               "complete": found.complete, "unresolved": found.unresolved,
               "linear_programs": found.linear_programs, "seconds": found.seconds,
               "regions_per_second": found.regions_per_second,
               "counts_per_layer": found.counts_per_layer.tolist()}
        rows.append(row)
        print(f"{norm:5s} {r:8g} {found.num_regions:8d} {found.complete!s:>8s} "
              f"{found.linear_programs / found.num_regions:10.1f} {found.seconds:8.1f} "
              f"{found.regions_per_second:10.1f}", flush=True)
    print(f"\nbaseline (naive: every line, one cold LP each) on the first {FIRST} regions")
    base = []
    for norm, r in BASELINE:
        timings = {}
        for name, options in (("regions_near", {}),
                              ("naive", {"prune": False, "witnesses": False, "warm": False})):
            t0 = time.perf_counter()
            walk = _Walk(graph, x, r, norm, FIRST, **options)
            found = walk.run(False)
            seconds = time.perf_counter() - t0
            timings[name] = {"regions": found.num_regions, "seconds": seconds,
                             "linear_programs": found.linear_programs,
                             "regions_per_second": found.num_regions / seconds}
        ratio = (timings["regions_near"]["regions_per_second"]
                 / timings["naive"]["regions_per_second"])
        base.append({"norm": norm, "radius": r, **timings, "speedup": ratio})
        print(f"{norm:5s} {r:8g}: regions_near {timings['regions_near']['regions_per_second']:.2f}"
              f" regions/s ({timings['regions_near']['linear_programs']} LPs), naive "
              f"{timings['naive']['regions_per_second']:.2f} regions/s "
              f"({timings['naive']['linear_programs']} LPs): {ratio:.1f}x", flush=True)
    out = Path(__file__).parent / "results" / "regions_near.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "model": "mlp((1, 28, 28), (128, 128), 10), torch default init, seed 0, float64",
        "x": "MNIST test subset image 0", "max_regions": MAX_REGIONS, "rows": rows,
        "baseline_first_regions": FIRST, "baseline": base,
        "machine": platform.processor() or platform.machine(), "torch_threads": 1,
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

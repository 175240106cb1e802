"""Benchmark: exact polyhedral complexes at full input dimension (partition_box).

Random ReLU MLPs (torch default init after ``torch.manual_seed(0)``, every Linear
followed by a ReLU, the last layer's units counted too; float64) on the box
[-1, 1]^d, d = 3, 4, 5. Each net runs in a fresh process (spawn), so its peak
memory is its own: a warm-up partition of a tiny 3-8-8 net (numba's compiled loops
load or compile, tracing warms up), then ``--repeat`` partitions of the net
(default 3) whose best gives seconds; the first run's time is printed too.

Columns: the complex's vertices, edges (box boundary included: every edge of the
complex, ``Complex.f_vector[1]``) and regions; seconds; peak memory as the growth
of the process's max resident set size (``resource.getrusage``, which sees numpy's
and numba's allocations, unlike ``tracemalloc`` for numba) over the partitions,
measured from just before the first of them, and the absolute peak.

Baseline measured in the same run: one plain float64 forward pass of the net over
all the complex's vertices (in chunks of 65,536, like partition_box's own passes;
best of ``--repeat``), the cheapest thing that touches every vertex. "x fwd" is
partition seconds / forward seconds: the partition's cost in units of evaluating
the network where its answer lives.

Yardstick (quoted, not run here): the published edge-subdivision timings on this
kind of machine, about 0.6 s (3-16-16-16), 9.5 s (3-32-32-32) and 6 s (3-64-64);
"yardstick / ours" is that quote divided by our seconds.

    python benchmarks/partition_nd.py [--nets 3-8-8 4-32-32 ...] [--large]
                                      [--repeat N] [--only NAME]

``--large``: adds 3-112-112-112 (about 1.05e6 vertices, ~1 min a run: one run, no
repeats; the memory target is < 2 GB). Torch runs on one thread by default
(``--threads``): on a busy 2-core machine two OpenMP threads made small forward
passes 10x slower, which would distort the baseline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETS = ["3-16-16-16", "3-32-32-32", "3-64-64", "4-16-16", "5-12-12"]
LARGE = ["3-112-112-112"]  # about 1.05e6 vertices
YARDSTICK = {"3-16-16-16": 0.6, "3-32-32-32": 9.5, "3-64-64": 6.0}  # seconds, quoted
_CHUNK = 1 << 16


def _mlp(widths: list[int], seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers).double().eval()


def _box(d: int):
    import torch

    return -torch.ones(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)


def _case(name: str, repeat: int, threads: int, queue) -> None:
    if name in LARGE:
        repeat = 1
    import torch

    torch.set_num_threads(threads)
    from maxaffine.partition import partition_box

    widths = [int(w) for w in name.split("-")]
    d = widths[0]
    partition_box(_mlp([3, 8, 8], seed=1), *_box(3), progress=False)  # warm-up
    model = _mlp(widths)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cx = [], None
    for _ in range(repeat):
        cx = None  # the last run's result is freed first: peak memory is one run's
        t0 = time.perf_counter()
        cx = partition_box(model, *_box(d), progress=False, max_regions=50_000_000)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    f = cx.f_vector
    x = cx.vertices
    forward = []
    with torch.no_grad():
        model(x[:_CHUNK])  # warm-up
        for _ in range(repeat):
            t0 = time.perf_counter()
            for i in range(0, x.shape[0], _CHUNK):
                model(x[i:i + _CHUNK])
            forward.append(time.perf_counter() - t0)
    seconds = min(times)
    queue.put({
        "net": name, "dim": d, "vertices": f[0], "edges": f[1], "regions": cx.num_regions,
        "f_vector": list(f), "euler_characteristic": cx.euler_characteristic,
        "seconds": seconds, "first_seconds": times[0], "runs": len(times),
        "forward_seconds": min(forward), "x_forward": seconds / min(forward),
        "peak_rss_mb": peak / 1024, "rss_growth_mb": (peak - base) / 1024,
        "yardstick_seconds": YARDSTICK.get(name),
        "yardstick_over_ours": YARDSTICK[name] / seconds if name in YARDSTICK else None,
    })


def _table(rows: list[dict]) -> str:
    head = (f"{'net':<15}{'vertices':>10}{'edges':>10}{'regions':>10}{'seconds':>9}"
            f"{'(first)':>9}{'fwd s':>9}{'x fwd':>8}{'RSS +MB':>9}{'peak MB':>9}"
            f"{'yardstick':>11}{'yard/ours':>10}")
    lines = [head]
    for r in rows:
        yard = f"{r['yardstick_seconds']:.1f} s" if r["yardstick_seconds"] else "-"
        ratio = f"{r['yardstick_over_ours']:.0f}x" if r["yardstick_over_ours"] else "-"
        lines.append(f"{r['net']:<15}{r['vertices']:>10}{r['edges']:>10}{r['regions']:>10}"
                     f"{r['seconds']:>9.3f}{r['first_seconds']:>9.3f}"
                     f"{r['forward_seconds']:>9.4f}{r['x_forward']:>8.0f}"
                     f"{r['rss_growth_mb']:>9.0f}{r['peak_rss_mb']:>9.0f}{yard:>11}"
                     f"{ratio:>10}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=[], metavar="D-W-W",
                        help="more nets, as input dim and widths (e.g. 3-8-8 4-32-32)")
    parser.add_argument("--large", action="store_true",
                        help=f"also {', '.join(LARGE)} (~1e6 vertices: peak memory)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per net after the "
                        "warm-up (default 3); seconds is the best, first_seconds the first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--only", default="", help="run the nets whose name contains this")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks/results/partition_nd.json")
    args = parser.parse_args()
    nets = NETS + args.nets + (LARGE if args.large else [])
    nets = [n for n in nets if args.only in n]
    ctx = mp.get_context("spawn")
    rows = []
    for name in nets:
        queue = ctx.Queue()
        proc = ctx.Process(target=_case, args=(name, args.repeat, args.threads, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
        print(_table(rows[-1:]).splitlines()[-1] if len(rows) > 1 else _table(rows),
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "partition_box", "dtype": "float64", "domain": "[-1, 1]^d",
        "machine": platform.platform(), "python": sys.version.split()[0],
        "cpus": mp.cpu_count(), "threads": args.threads, "repeat": args.repeat,
        "memory": "ru_maxrss growth over the partitions (getrusage), per fresh process",
        "baseline": "one float64 forward pass over all vertices (x_forward = seconds / it)",
        "yardstick": "edge-subdivision seconds quoted from its publication, not run here",
        "rows": rows,
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

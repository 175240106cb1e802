"""Command line: ``maxaffine demo | reproduce <experiment> ...``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .experiments import experiments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maxaffine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train small models on MNIST and write a report")
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.add_argument("--quick", action="store_true", help="tiny data, 1 epoch (for tests)")
    demo.add_argument("--seed", type=int, default=0)
    rep = sub.add_parser("reproduce", help="run a paper's experiment")
    rsub = rep.add_subparsers(dest="experiment", required=True)
    for exp in experiments().values():
        p = rsub.add_parser(exp.name, help=exp.help)
        p.add_argument("--out", type=Path, default=Path("out") / exp.name)
        exp.add_arguments(p)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.command == "demo":
        from .demo import run_demo

        out = run_demo(args.out, quick=args.quick, seed=args.seed)
        print(f"report: {out / 'report.html'} ({time.perf_counter() - t0:.0f} s)")
    else:
        out = experiments()[args.experiment].run(args)
        print(f"results: {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

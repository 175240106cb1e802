"""Command line: ``maxaffine demo | reproduce <experiment> ...``.

Help texts are plain text written here (docstrings carry reST markup that
argparse would print as is). A bad argument, an unusable ``--out`` or a
:class:`~maxaffine.MaxAffineError` from the run gives one ``maxaffine ...: error:``
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from .errors import MaxAffineError
from .experiments import experiments, non_negative_int, output_dir_problem

DESCRIPTION = (
    "Exact affine maps, VQ codes and input-space partitions of PyTorch spline networks. "
    "'maxaffine demo' trains a small MLP and CNN on MNIST and writes an HTML report; "
    "'maxaffine reproduce EXPERIMENT' runs one of the papers' experiments.")


def plain(text: str) -> str:
    """``text`` without reST markup (roles such as :func:`x`, ``literals``, `refs`)."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"`{1,2}([^`]+)`{1,2}", r"\1", text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maxaffine", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="train small models on MNIST and write a report",
        description="Train a small MLP and CNN on MNIST and write report.md, report.html "
                    "and the figures into the --out directory.")
    demo.add_argument("--out", type=Path, default=Path("out/demo"),
                      help="output directory, created if missing (default out/demo)")
    demo.add_argument("--quick", action="store_true", help="tiny data, 1 epoch (for tests)")
    demo.add_argument("--seed", type=non_negative_int, default=0,
                      help="random seed for data split and training (default 0)")
    rep = sub.add_parser("reproduce", help="run a paper's experiment",
                         description="Run one of the papers' experiments; each writes a "
                                     "table (JSON and Markdown) and figures into --out.")
    rsub = rep.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for exp in experiments().values():
        p = rsub.add_parser(exp.name, help=plain(exp.help), description=plain(exp.help))
        p.add_argument("--out", type=Path, default=Path("out") / exp.name,
                       help=f"output directory, created if missing (default out/{exp.name})")
        exp.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    where = "maxaffine " + (args.command if args.command == "demo" else
                            f"reproduce {args.experiment}")
    problem = output_dir_problem(args.out)
    if problem is not None:
        print(f"{where}: error: {problem}: pass a directory for --out", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        if args.command == "demo":
            from .demo import run_demo

            out = run_demo(args.out, quick=args.quick, seed=args.seed)
            print(f"report: {out / 'report.html'} ({time.perf_counter() - t0:.0f} s)")
        else:
            out = experiments()[args.experiment].run(args)
            print(f"results: {out} ({time.perf_counter() - t0:.0f} s)")
    except MaxAffineError as err:
        print(f"{where}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

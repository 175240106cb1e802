"""Command line: ``maxaffine demo | report MODEL | explore | reproduce <experiment> ...``.

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
from .experiments import experiments, non_negative_int, output_dir_problem, positive_float

DESCRIPTION = (
    "Exact affine maps, VQ codes and input-space partitions of PyTorch spline networks. "
    "'maxaffine demo' trains a small MLP and CNN on MNIST and writes an HTML report; "
    "'maxaffine report MODEL --input INPUTS' writes the same report for your own model; "
    "'maxaffine explore' writes an interactive page of a partition; "
    "'maxaffine reproduce EXPERIMENT' runs one of the papers' experiments.")

MODEL_HELP = ("a TorchScript file (torch.jit.save), or 'module:factory': a function of an "
              "importable module (the current directory and PYTHONPATH are searched) that "
              "returns the model")
INPUT_HELP = ("a tensor file (.pt / .pth: torch.save of a tensor (N, *input_shape) or of a "
              "dict with 'x' and 'y'; .npy; .npz; .csv with the label last) or a built-in "
              "dataset (mnist, digits, mnist1d, moons, circles, blobs); unlabelled inputs are "
              "labelled by the model's predictions")


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
    report = sub.add_parser(
        "report", help="write the demo's report for your own model",
        description="Write report.md, report.html, the figures and an interactive "
                    "explore.html for your own model: graph summary, affine maps and "
                    "templates, an exact partition through three inputs, local complexity "
                    "and VQ retrieval.")
    report.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    report.add_argument("--input", required=True, metavar="INPUTS", help=INPUT_HELP)
    report.add_argument("--state-dict", type=Path, default=None, metavar="FILE",
                        help="a state dict (torch.save(model.state_dict(), FILE)) to load")
    report.add_argument("--out", type=Path, default=Path("out/report"),
                        help="output directory, created if missing (default out/report)")
    report.add_argument("--quick", action="store_true",
                        help="at most 512 training and 256 test inputs")
    report.add_argument("--seed", type=non_negative_int, default=0,
                        help="random seed for the split of unlabelled inputs (default 0)")
    exp = sub.add_parser(
        "explore", help="write an interactive HTML page of a plane partition",
        description="Partition a plane of input space exactly and write a self-contained "
                    "HTML page: pan, zoom, hover a region for its code, area, predicted "
                    "class and affine map, edges coloured by layer with toggles, the "
                    "decision boundary and the anchor inputs.")
    exp.add_argument("--model", default="demo", metavar="MODEL",
                     help="'demo' (an MLP trained briefly on the inputs: moons for "
                          "--square, else mnist) or " + MODEL_HELP)
    exp.add_argument("--state-dict", type=Path, default=None, metavar="FILE",
                     help="a state dict to load into MODEL")
    plane = exp.add_mutually_exclusive_group()
    plane.add_argument("--through", nargs=3, metavar="X", default=None,
                       help="the plane through three inputs: indices into the test inputs of "
                            "--input (default 0 1 2: the first three of different classes)")
    plane.add_argument("--square", nargs=2, type=float, metavar=("LOW", "HIGH"), default=None,
                       help="the square [LOW, HIGH]^2 of a model with 2-D inputs")
    exp.add_argument("--input", default=None, metavar="INPUTS",
                     help=INPUT_HELP + " (default mnist; with --square none is needed)")
    exp.add_argument("--zoom", type=positive_float, default=None, metavar="RADIUS",
                     help="only the square of half-width RADIUS (slice units) around x1")
    exp.add_argument("--out", type=Path, default=Path("out/explore.html"),
                     help="the page to write (default out/explore.html)")
    exp.add_argument("--seed", type=non_negative_int, default=0,
                     help="random seed for the demo model's training (default 0)")
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


def _page_problem(path: Path) -> str | None:
    """Why ``path`` cannot be written as a page (a directory, or a file in the way)."""
    if path.is_dir():
        return f"{path} is a directory: pass a file such as {path / 'explore.html'}"
    problem = output_dir_problem(path.parent)
    return None if problem is None else f"{problem}: pass a writable file for --out"


def _explore(args: argparse.Namespace) -> Path:
    """``maxaffine explore``: the model, the plane, the partition, the page."""
    import torch

    from .datasets import Dataset, load_dataset
    from .demo import label_inputs, load_model, read_inputs, three_inputs
    from .partition import Slice, partition_plane

    torch.manual_seed(args.seed)
    raw = None
    if args.square is None or args.input is not None:
        raw = read_inputs(args.input or ("moons" if args.square else "mnist"), seed=args.seed)
    if args.model == "demo":
        from .models import mlp
        from .training import fit

        data = raw if isinstance(raw, Dataset) else load_dataset(
            "moons" if args.square else "mnist", seed=args.seed)
        model = mlp(data.input_shape, (32, 32) if len(data.x_train[0].flatten()) <= 8
                    else (128, 128), data.num_classes)
        fit(model, data, epochs=2, seed=args.seed, progress=False)
    else:
        example = None
        if raw is not None:
            example = (raw.x_test if isinstance(raw, Dataset) else raw)[:8]
        elif args.square is not None:
            example = torch.empty(8, 2).uniform_(*sorted(args.square))
        model = load_model(args.model, state_dict=args.state_dict, example=example)
    if args.square is not None:
        low, high = args.square
        sl = Slice.square(low, high)
        what = f"the square [{low:g}, {high:g}]^2"
    else:
        data, _ = label_inputs(raw, model, seed=args.seed)
        x = data.x_test
        if args.through is None:
            _, sl = three_inputs(x, data.y_test)
            what = "the plane through three test inputs of different classes"
        else:
            idx = []
            for text in args.through:
                try:
                    i = int(text)
                except ValueError:
                    raise MaxAffineError(f"--through: {text!r} is not an index of the test "
                                         "inputs") from None
                if not -len(x) <= i < len(x):
                    raise MaxAffineError(f"--through: index {i} is outside the {len(x)} test "
                                         "inputs")
                idx.append(i)
            sl = Slice.through(x[idx[0]], x[idx[1]], x[idx[2]], pad=0.1)
            what = f"the plane through test inputs {idx}"
    if args.zoom is not None:
        sl = sl.zoom(0 if len(sl.anchors) else (0.0, 0.0), args.zoom)
        what += f", zoomed to radius {args.zoom:g}"
    part = partition_plane(model, sl, progress=False)
    return part.to_html(args.out, title=f"{part.num_regions} regions of {what}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    where = "maxaffine " + (f"reproduce {args.experiment}" if args.command == "reproduce"
                            else args.command)
    if args.command == "explore":
        problem = _page_problem(args.out)
        if problem is not None:
            print(f"{where}: error: {problem}", file=sys.stderr)
            return 2
    else:
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
        elif args.command == "report":
            from .demo import run_report

            out = run_report(args.model, args.input, args.out, state_dict=args.state_dict,
                             quick=args.quick, seed=args.seed)
            print(f"report: {out / 'report.html'} ({time.perf_counter() - t0:.0f} s)")
        elif args.command == "explore":
            out = _explore(args)
            print(f"page: {out} ({time.perf_counter() - t0:.0f} s)")
        else:
            out = experiments()[args.experiment].run(args)
            print(f"results: {out} ({time.perf_counter() - t0:.0f} s)")
    except MaxAffineError as err:
        print(f"{where}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

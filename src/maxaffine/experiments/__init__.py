"""Paper claims as runnable experiments: ``maxaffine reproduce <name>``.

Each experiment module defines ``EXPERIMENT = Experiment(...)``: a name, a
one-line help, a function adding its CLI options, and a ``run(args)`` that
writes a table (JSON + Markdown) and figures under ``args.out`` and returns
that directory. Register a module by adding its name to ``_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._report import Table, markdown_to_html, output_dir_problem, save_figure, write_table


@dataclass(frozen=True)
class Experiment:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Path]


def _typed(convert: Callable[[str], float], ok: Callable[[float], bool], what: str
           ) -> Callable[[str], float]:
    """An argparse ``type``: ``convert`` the text, and refuse values that are not ``ok``
    with a message saying what is expected (argparse then exits with status 2)."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _typed(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _typed(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _typed(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
non_negative_float = _typed(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Options every training experiment takes: ``--train-size``, ``--threads``,
    ``--no-progress``."""
    p.add_argument("--train-size", type=positive_int, default=None,
                   help="use only this many training samples (quick runs)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def prepare(args: argparse.Namespace, dataset: str, seed: int = 0):
    """Apply ``--threads`` and load ``dataset``, cut to ``--train-size``."""
    import torch

    from ..datasets import load_dataset

    torch.set_num_threads(args.threads)
    data = load_dataset(dataset, seed=seed)
    return data.subset(train=args.train_size) if args.train_size else data


_MODULES: list[str] = ["orthogonality", "beta_vq", "ghn", "sparse_coding", "vq_distance",
                       "training_dynamics", "sdf_mesh",
                       "generator_inversion", "regions_near", "em_generator", "hessian_complexity",
                       "sharpness", "semi_supervised", "rntk"]


def experiments() -> dict[str, Experiment]:
    """All registered experiments by name."""
    out = {}
    for mod in _MODULES:
        exp = importlib.import_module(f"{__name__}.{mod}").EXPERIMENT
        out[exp.name] = exp
    return out


__all__ = [
    "Experiment",
    "Table",
    "add_common_arguments",
    "experiments",
    "markdown_to_html",
    "non_negative_float",
    "non_negative_int",
    "output_dir_problem",
    "positive_float",
    "positive_int",
    "save_figure",
    "write_table",
]

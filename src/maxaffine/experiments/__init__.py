"""Paper claims as runnable experiments: ``maxaffine reproduce <name>``.

Each experiment module defines ``EXPERIMENT = Experiment(...)``: a name, a
one-line help, a function adding its CLI options, and a ``run(args)`` that
writes a table (JSON + Markdown) and figures under ``args.out`` and returns
that directory. Register a module by adding its name to ``_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._report import Table, markdown_to_html, save_figure, write_table


@dataclass(frozen=True)
class Experiment:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Path]


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Options every training experiment takes: ``--train-size``, ``--threads``,
    ``--no-progress``."""
    p.add_argument("--train-size", type=int, default=None,
                   help="use only this many training samples (quick runs)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def prepare(args: argparse.Namespace, dataset: str, seed: int = 0):
    """Apply ``--threads`` and load ``dataset``, cut to ``--train-size``."""
    import torch

    from ..datasets import load_dataset

    torch.set_num_threads(args.threads)
    data = load_dataset(dataset, seed=seed)
    return data.subset(train=args.train_size) if args.train_size else data


_MODULES: list[str] = ["orthogonality", "beta_vq", "ghn", "sparse_coding", "vq_distance",
                       "training_dynamics"]


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
    "save_figure",
    "write_table",
]

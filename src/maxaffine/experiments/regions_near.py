"""``maxaffine reproduce regions-near``: how many linear regions lie within radius r of
the data, exactly, and how good the local-complexity estimate is.

:func:`maxaffine.regions_near` enumerates, at the full input dimension (784 for
MNIST), every region of the demo MLP that meets the L2 ball of radius r around a
test image, for growing r until ``--max-regions`` stops the walk. Beside it, at the
same radius, :func:`maxaffine.local_complexity` (Humayun, Balestriero & Baraniuk,
"Deep Networks Always Grok and Here is Why", ICML 2024): the number of units whose
code changes over a cross-polytope ``x +- r d_j`` (``--directions`` random
orthonormal directions), a polytope inside the same L2 ball. The two count
different things: the estimate counts *units* (hyperplanes) crossing the
neighbourhood, the walk counts *regions*; the exact counterpart of the estimate is
the number of units whose code is not the same in all the regions found, and with
k such hyperplanes in general position in a space of dimension d >= k there can be
up to 2^k regions (in 784 dimensions, nearly all of them do occur when the
hyperplanes pass near the centre).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..errors import MaxAffineWarning
from ..partition import RegionSet, regions_near
from ..stats import local_complexity
from . import (
    Experiment,
    Table,
    non_negative_int,
    positive_float,
    positive_int,
    prepare,
    write_table,
)

if TYPE_CHECKING:
    from ._report import DemoContext, Section


def changing_units(found: RegionSet) -> int:
    """Units whose code is not the same in every region of ``found`` (the exact
    counterpart of local complexity over the ball)."""
    return int(sum(int((v != v[:1]).any(0).sum()) for v in
                   (c.reshape(c.shape[0], -1) for c in found.codes.values)))


def measure(model: nn.Module, x: Tensor, radii: list[float], *, max_regions: int,
            directions: int, norm: str = "l2", seed: int = 0) -> list[dict]:
    """For each image of ``x`` and each radius (increasing; stops for an image once a
    walk hits ``max_regions``): exact regions, units changing, local complexity."""
    rows = []
    for i in range(x.shape[0]):
        for r in sorted(radii):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MaxAffineWarning)
                found = regions_near(model, x[i], r, norm=norm, max_regions=max_regions,
                                     progress=False)
            lc = local_complexity(model, x[i:i + 1], r, directions, seed=seed)
            rows.append({"image": i, "radius": r, "regions": found.num_regions,
                         "complete": found.complete, "units_changing": changing_units(found),
                         "local_complexity": int(lc.total[0]),
                         "log2_regions": math.log2(found.num_regions),
                         "seconds": found.seconds})
            if not found.complete:
                break
    return rows


def markdown(rows: list[dict], max_regions: int) -> str:
    lines = ["| image | radius (L2) | exact regions | units changing (exact) | "
             "local_complexity | log2(regions) | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        more = "" if r["complete"] else ">= "
        lines.append(f"| {r['image']} | {r['radius']:g} | {more}{r['regions']} | "
                     f"{more}{r['units_changing']} | {r['local_complexity']} | "
                     f"{more}{r['log2_regions']:.1f} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=positive_int, default=4, help="test images (default 4)")
    p.add_argument("--radii", type=positive_float, nargs="+",
                   default=[0.003, 0.01, 0.03, 0.1, 0.3],
                   help="L2 radii (default 0.003 .. 0.3)")
    p.add_argument("--max-regions", type=positive_int, default=1000,
                   help="stop a walk after this many regions (default 1000)")
    p.add_argument("--directions", type=positive_int, default=25,
                   help="cross-polytope directions of local_complexity (default 25)")
    p.add_argument("--epochs", type=positive_int, default=4, help="training epochs (default 4)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--train-size", type=positive_int, default=None,
                   help="use only this many training samples (quick runs)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> Path:
    from ..models import mlp
    from ..training import fit

    t0 = time.perf_counter()
    data = prepare(args, "mnist", seed=args.seed)
    torch.manual_seed(args.seed)
    model = mlp(data.input_shape, (128, 128), data.num_classes)
    history = fit(model, data, epochs=args.epochs, seed=args.seed,
                  progress=not args.no_progress, desc="mlp")
    model.eval()
    rows = measure(model, data.x_test[: args.images], list(args.radii),
                   max_regions=args.max_regions, directions=args.directions, seed=args.seed)
    for r in rows:
        print(f"image {r['image']} r={r['radius']:g}: {r['regions']} regions"
              f"{'' if r['complete'] else '+'}, {r['units_changing']} units changing, "
              f"local complexity {r['local_complexity']}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps({"rows": rows, "test_acc": history.test_acc},
                                              indent=2))
    columns = ["image", "radius", "regions", "complete", "units changing (exact)",
               "local_complexity", "log2(regions)", "seconds"]
    table = Table(
        "Exact regions within L2 radius r of MNIST test images (demo MLP) vs local complexity",
        columns, [[r["image"], r["radius"], r["regions"], r["complete"], r["units_changing"],
                   r["local_complexity"], round(r["log2_regions"], 2), round(r["seconds"], 2)]
                  for r in rows],
        notes=(f"{data!r}; mlp (128, 128) trained {args.epochs} epochs (test acc "
               f"{history.test_acc:.3f}), float64 geometry. Regions: maxaffine.regions_near "
               f"(exact, L2 ball; incomplete rows stopped at {args.max_regions}). "
               f"local_complexity: {args.directions} random orthonormal directions. "
               "'units changing': units whose code differs among the exact regions."))
    table.seconds = time.perf_counter() - t0
    write_table(out, "regions_near", table)
    return out


EXPERIMENT = Experiment("regions-near", "exact regions within radius r of MNIST test images "
                        "(demo MLP) beside the local-complexity estimate", add_arguments, run)


def demo_section(ctx: DemoContext) -> Section:
    """Exact regions near a few test images, beside local complexity."""
    from ._report import Section

    images = 1 if ctx.quick else 2
    radii = [0.003, 0.01, 0.03, 0.1, 0.3]
    max_regions = 40 if ctx.quick else 60
    ctx.mlp.eval()
    rows = measure(ctx.mlp, ctx.data.x_test[:images], radii, max_regions=max_regions,
                   directions=25, seed=ctx.seed)
    text = ("`maxaffine.regions_near` walks every linear region of the demo MLP that meets "
            "the L2 ball of radius r around a test image, exactly and in all 784 dimensions "
            "(facet and ball tests as linear programs). `local_complexity` at the same radius "
            "(25-direction cross-polytope) counts *units* whose code changes, not regions: "
            "compare it with the exact count of units changing among the regions found; "
            "k hyperplanes crossing the ball can make up to 2^k regions.\n\n"
            + markdown(rows, max_regions)
            + f"\n\n(walks stop at {max_regions} regions, shown as >=.) Full experiment: "
            "`maxaffine reproduce regions-near` (results/regions-near/).\n")
    return Section("Exact regions near the data", text)

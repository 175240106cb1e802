"""``maxaffine reproduce sdf-mesh``: exact level sets of a neural SDF vs marching cubes.

A ReLU MLP is piecewise affine, so its zero level set is a polyhedral surface that
can be extracted exactly: cut the network's polyhedral complex in the box
(:func:`maxaffine.partition.partition_box`) by each region's plane where the
output is 0 (:meth:`~maxaffine.partition.Complex.level_set`). The usual way,
``skimage.measure.marching_cubes`` on a grid of the network's values, approximates
that surface, more closely as the grid grows.

We fit a small MLP (3-w-...-w-1, ReLU, float32, Adam) to the signed distance of a
shape generated in code (a torus, or a union of three spheres) on points drawn
uniformly in [-1, 1]^3, convert it to float64, and compare the exact mesh with
marching cubes on grids of the *same* network's values at several resolutions
(plus one chosen to match the exact mesh's vertex count): vertices, triangles,
seconds (marching cubes: grid evaluation + extraction; exact: partition + level
set), the symmetric Hausdorff distance to the exact mesh, the largest |f| at the
mesh's vertices, and watertightness.

Hausdorff distance: each mesh's vertices plus ``samples`` area-uniform points on
its triangles (``trimesh.sample.sample_surface``) are projected exactly onto the
other mesh's nearest triangles (``trimesh.triangles.closest_point``), the
candidates being the triangles of the 8 nearest points of a dense cloud on the
other mesh (its own samples and every triangle's centroid). Each point's distance
is thus an upper bound of the true one, within the cloud's spacing; the maximum
over the sampled points a lower bound of the sup over the surface.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import MaxAffineError
from . import (
    Experiment,
    Table,
    _typed,
    non_negative_int,
    positive_float,
    positive_int,
    save_figure,
    write_table,
)

if TYPE_CHECKING:
    from ..partition import LevelSet
    from ._report import DemoContext, Section

_CHUNK = 1 << 18  # grid points per forward pass


def torus_sdf(p: Tensor, major: float = 0.5, minor: float = 0.25) -> Tensor:
    """The signed distance to a torus around the z axis (negative inside)."""
    ring = torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - major
    return torch.sqrt(ring ** 2 + p[:, 2] ** 2) - minor


_SPHERES = ((-0.35, -0.1, 0.0, 0.35), (0.35, -0.1, 0.0, 0.3), (0.0, 0.3, 0.15, 0.28))


def spheres_sdf(p: Tensor) -> Tensor:
    """The union of three overlapping spheres (the min of their signed distances:
    exact outside, a bound inside)."""
    d = [torch.linalg.vector_norm(p - p.new_tensor(s[:3]), dim=1) - s[3] for s in _SPHERES]
    return torch.stack(d).min(0).values


SHAPES = {"torus": torus_sdf, "spheres": spheres_sdf}


def sdf_mlp(widths: tuple[int, ...] = (32, 32, 32)) -> nn.Sequential:
    """3 -> widths -> 1, a ReLU after every hidden Linear."""
    layers: list[nn.Module] = []
    d = 3
    for w in widths:
        layers += [nn.Linear(d, w), nn.ReLU()]
        d = w
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


def train_sdf(shape: str = "torus", widths: tuple[int, ...] = (32, 32, 32), steps: int = 1500,
              batch: int = 2048, lr: float = 3e-3, seed: int = 0) -> tuple[nn.Module, dict]:
    """Fit :func:`sdf_mlp` to ``SHAPES[shape]`` in float32 (Adam, L1 loss on points
    uniform in [-1, 1]^3, cosine learning-rate decay); returns the network in float64
    (``.double()``, eval mode) and ``{"seconds", "loss", "rmse", "max_error"}`` (errors
    on 100,000 fresh uniform points)."""
    sdf = SHAPES[shape]
    torch.manual_seed(seed)
    net = sdf_mlp(widths)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    t0 = time.perf_counter()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x = torch.rand(batch, 3, generator=gen) * 2 - 1
        loss = (net(x)[:, 0] - sdf(x)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    net = net.double().eval()
    with torch.no_grad():
        x = torch.rand(100_000, 3, generator=gen, dtype=torch.float64) * 2 - 1
        err = net(x)[:, 0] - sdf(x)
    return net, {"seconds": seconds, "loss": loss.item(), "rmse": float(err.pow(2).mean().sqrt()),
                 "max_error": float(err.abs().max())}


# ------------------------------------------------------------------- meshes


def warm_up() -> None:
    """Partition a tiny network once, so that loading (or compiling) the partition's
    numba loops is not counted in the exact mesh's seconds."""
    from ..partition import partition_box

    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(0)
        tiny = sdf_mlp((4,)).double()
    ones = torch.ones(3, dtype=torch.float64)
    partition_box(tiny, -ones, ones, progress=False).level_set(0.0)


def exact_mesh(net: nn.Module) -> tuple[LevelSet, dict]:
    """The exact zero level set of ``net`` (float64) in [-1, 1]^3 and
    ``{"partition_seconds", "level_set_seconds", "regions", "scale"}`` (scale: the
    largest |f| at the complex's vertices)."""
    from ..partition import partition_box

    ones = torch.ones(3, dtype=torch.float64)
    cx = partition_box(net, -ones, ones, progress=False)
    t0 = time.perf_counter()
    ls = cx.level_set(0.0)
    return ls, {"partition_seconds": cx.seconds, "level_set_seconds": time.perf_counter() - t0,
                "regions": cx.num_regions, "f_vector": list(cx.f_vector),
                "scale": float(cx.vertex_outputs.abs().max())}


def grid_values(net: nn.Module, n: int) -> np.ndarray:
    """``net`` on the n^3 grid of [-1, 1]^3 (``linspace(-1, 1, n)`` per axis), (n, n, n)."""
    t = torch.linspace(-1, 1, n, dtype=torch.float64)
    pts = torch.cartesian_prod(t, t, t)
    with torch.no_grad():
        vals = torch.cat([net(pts[i:i + _CHUNK])[:, 0] for i in range(0, len(pts), _CHUNK)])
    return vals.reshape(n, n, n).numpy()


def marching_cubes_mesh(net: nn.Module, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """``skimage.measure.marching_cubes`` at level 0 on :func:`grid_values`: vertices
    (V, 3) in input coordinates, triangles (F, 3) oriented like the exact level set
    (the normal points to growing values; none if the grid's values do not change
    sign), and the seconds of both steps."""
    from skimage.measure import marching_cubes

    if n < 2:
        raise MaxAffineError(f"a marching-cubes grid needs at least 2 points per axis, got {n}")
    t0 = time.perf_counter()
    vol = grid_values(net, n)
    t1 = time.perf_counter()
    h = 2.0 / (n - 1)
    if vol.min() < 0.0 < vol.max():
        verts, faces, _, _ = marching_cubes(vol, 0.0, spacing=(h, h, h),
                                            gradient_direction="ascent")
        faces = faces[:, ::-1]  # skimage's winding makes the normals point downhill
    else:  # no sign change on the grid: no surface
        verts, faces = np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    t2 = time.perf_counter()
    return verts - 1.0, np.ascontiguousarray(faces, dtype=np.int64), {"grid_seconds": t1 - t0,
                                                 "extract_seconds": t2 - t1}


def watertight(faces: np.ndarray) -> bool:
    """Every edge of the triangles is shared by exactly two of them."""
    if len(faces) == 0:
        return False
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return bool((counts == 2).all())


# ------------------------------------------------------------------ distances


def _cloud(verts: np.ndarray, faces: np.ndarray, samples: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Points on the mesh with the triangle each lies on: ``samples`` area-uniform
    samples and every triangle's centroid."""
    import trimesh

    mesh = trimesh.Trimesh(verts, faces, process=False)
    pts, tri = trimesh.sample.sample_surface(mesh, samples, seed=seed)
    return (np.concatenate([pts, verts[faces].mean(1)]),
            np.concatenate([tri, np.arange(len(faces))]))


def _directed(points: np.ndarray, verts: np.ndarray, faces: np.ndarray,
              cloud: tuple[np.ndarray, np.ndarray], k: int = 8) -> np.ndarray:
    """(P,) each point's distance to the mesh (exact projection onto the triangles of
    its ``k`` nearest cloud points)."""
    import trimesh
    from scipy.spatial import cKDTree

    tree = cKDTree(cloud[0])
    out = np.empty(len(points))
    step = 50_000
    for i in range(0, len(points), step):
        p = points[i:i + step]
        _, near = tree.query(p, k=k)
        tri = verts[faces[cloud[1][near.ravel()]]]
        q = np.repeat(p, k, 0)
        d = np.linalg.norm(trimesh.triangles.closest_point(tri, q) - q, axis=1)
        out[i:i + step] = d.reshape(-1, k).min(1)
    return out


def hausdorff(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
              samples: int = 100_000, seed: int = 0) -> float:
    """The symmetric Hausdorff distance between two triangle meshes ``(vertices,
    faces)``, from their vertices and ``samples`` surface samples each (module
    docstring)."""
    ca, cb = _cloud(*a, samples, seed), _cloud(*b, samples, seed + 1)
    pa = np.concatenate([a[0], ca[0][:samples]])
    pb = np.concatenate([b[0], cb[0][:samples]])
    return float(max(_directed(pa, *b, cb).max(), _directed(pb, *a, ca).max()))


# ------------------------------------------------------------------ the study


def compare(net: nn.Module, resolutions: tuple[int, ...] = (16, 32, 64, 128), *,
            samples: int = 100_000, match: bool = True, seed: int = 0
            ) -> tuple[LevelSet, list[dict], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """The exact mesh and marching cubes at each resolution (and, with ``match``, at
    the resolution whose vertex count is nearest the exact mesh's); returns the level
    set, one row dict per mesh (exact first) and the marching-cubes meshes by
    resolution."""
    ls, info = exact_mesh(net)
    ev, ef = ls.vertices.numpy(), ls.triangles.numpy()
    with torch.no_grad():
        f_exact = float(net(ls.vertices)[:, 0].abs().max()) if len(ev) else math.nan
    rows = [{"method": "exact (partition_box + level_set)", "grid": None,
             "vertices": len(ev), "triangles": len(ef),
             "seconds": info["partition_seconds"] + info["level_set_seconds"],
             "hausdorff": 0.0, "max_abs_f": f_exact, "watertight": ls.is_watertight,
             "area": ls.measure, "polygons": len(np.unique(ef[:, 0])), **info}]
    meshes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for n in resolutions:
        rows.append(_marching_cubes_row(net, n, (ev, ef), meshes, samples, seed))
    if match and meshes and len(ev):
        # vertex counts grow like n^2: the grid whose count is nearest the exact one's
        n = max(resolutions)
        m = max(4, round(n * math.sqrt(len(ev) / max(1, len(meshes[n][0])))))
        if m not in meshes:
            rows.append(_marching_cubes_row(net, m, (ev, ef), meshes, samples, seed))
            rows[-1]["method"] = "marching cubes (matched vertices)"
    return ls, rows, meshes


def _marching_cubes_row(net: nn.Module, n: int, exact: tuple[np.ndarray, np.ndarray],
                        meshes: dict[int, tuple[np.ndarray, np.ndarray]], samples: int,
                        seed: int) -> dict:
    verts, faces, times = marching_cubes_mesh(net, n)
    meshes[n] = (verts, faces)
    with torch.no_grad():
        f_mc = float(net(torch.from_numpy(verts))[:, 0].abs().max()) if len(verts) else math.nan
    tri = verts[faces]
    area = float(np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]),
                                axis=1).sum() / 2)
    dist = hausdorff(exact, (verts, faces), samples, seed) if len(verts) and len(exact[0]) \
        else math.inf
    return {"method": "marching cubes", "grid": n, "vertices": len(verts),
            "triangles": len(faces), "seconds": times["grid_seconds"] + times["extract_seconds"],
            "hausdorff": dist, "max_abs_f": f_mc, "watertight": watertight(faces),
            "area": area, **times}


def figure(ls: LevelSet, mc: tuple[np.ndarray, np.ndarray], n: int):
    """The exact mesh beside marching cubes' at resolution ``n`` (matplotlib 3-D)."""
    import matplotlib.pyplot as plt

    from ..partition import LevelSet

    fig = plt.figure(figsize=(11, 5.2))
    a = fig.add_subplot(1, 2, 1, projection="3d")
    ls.plot(ax=a)
    a.set_title(f"exact zero level set: {ls.vertices.shape[0]} vertices, "
                f"{ls.num_simplices} triangles", fontsize=9)
    b = fig.add_subplot(1, 2, 2, projection="3d")
    verts, faces = mc
    LevelSet(vertices=torch.from_numpy(verts), simplices=torch.from_numpy(faces),
             regions=torch.zeros(len(faces), dtype=torch.int64),
             what=f"marching cubes {n}^3").plot(ax=b, color="tab:blue")
    b.set_title(f"marching cubes on a {n}^3 grid: {len(verts)} vertices, {len(faces)} "
                "triangles", fontsize=9)
    for ax in (a, b):
        ax.view_init(elev=35, azim=-60)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


COLUMNS = ["method", "grid", "vertices", "triangles", "seconds", "Hausdorff to exact",
           "max abs f at vertices", "watertight"]


def _table_rows(rows: list[dict]) -> list[list[Any]]:
    return [[r["method"], "-" if r["grid"] is None else f"{r['grid']}^3", r["vertices"],
             r["triangles"], round(r["seconds"], 3), float(f"{r['hausdorff']:.3g}"),
             float(f"{r['max_abs_f']:.2g}"), r["watertight"]] for r in rows]


def _markdown(rows: list[dict]) -> str:
    table = Table("", COLUMNS, _table_rows(rows)).markdown().splitlines()
    return "\n".join(table[2:-2])  # without the title and the command line


# ----------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", choices=sorted(SHAPES), default="torus",
                   help="the shape whose SDF is fitted (default torus)")
    p.add_argument("--widths", type=positive_int, nargs="+", default=[32, 32, 32],
                   help="hidden widths of the MLP (default 32 32 32)")
    p.add_argument("--steps", type=positive_int, default=3000,
                   help="Adam steps (default 3000)")
    p.add_argument("--batch", type=positive_int, default=2048, help="points per step")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="Adam learning rate")
    p.add_argument("--resolutions", type=_typed(int, lambda v: v >= 2, "an integer >= 2"),
                   nargs="+", default=[16, 32, 64, 128],
                   help="marching-cubes grids (points per axis; default 16 32 64 128)")
    p.add_argument("--samples", type=positive_int, default=200_000,
                   help="surface samples per mesh for the Hausdorff distance")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")


def run(args: argparse.Namespace) -> Path:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    net, fit_info = train_sdf(args.shape, tuple(args.widths), args.steps, args.batch, args.lr,
                              args.seed)
    warm_up()
    ls, rows, meshes = compare(net, tuple(args.resolutions), samples=args.samples,
                               seed=args.seed)
    for r in rows:
        print(f"{r['method']:<36} {r['grid'] or '-'!s:>5} {r['vertices']:>8} vertices "
              f"{r['seconds']:7.3f} s  Hausdorff {r['hausdorff']:.3g}  max|f| "
              f"{r['max_abs_f']:.2g}  watertight {r['watertight']}", flush=True)
    shown = 32 if 32 in meshes else sorted(meshes)[0]
    save_figure(figure(ls, meshes[shown], shown), out, "sdf_mesh")
    widths = "-".join(str(w) for w in (3, *args.widths, 1))
    notes = (f"MLP {widths} (ReLU) fitted to the {args.shape} SDF: {args.steps} Adam steps of "
             f"{args.batch} uniform points in [-1, 1]^3, lr {args.lr} (cosine decay), L1 loss, "
             f"float32 ({fit_info['seconds']:.1f} s), then float64: RMSE to the SDF "
             f"{fit_info['rmse']:.3g}, max error {fit_info['max_error']:.3g}. Exact: "
             f"{rows[0]['regions']} regions, partition {rows[0]['partition_seconds']:.2f} s + "
             f"level set {rows[0]['level_set_seconds']:.2f} s; its surface is "
             f"{rows[0]['polygons']} planar polygons, each a fan of triangles around its "
             "centroid (one extra vertex per polygon); "
             f"the network's range on the box "
             f"{rows[0]['scale']:.3g}. Marching cubes: grid evaluation + skimage extraction. "
             f"Hausdorff: vertices + {args.samples} area-uniform samples per mesh, each "
             "projected exactly onto the other mesh's candidate triangles (see the module "
             f"docstring). {args.threads} torch thread(s).")
    table = Table(f"Exact zero level set vs marching cubes ({args.shape} SDF, MLP {widths})",
                  COLUMNS, _table_rows(rows), notes=notes)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps({"fit": fit_info, "rows": rows}, indent=2))
    table.seconds = time.perf_counter() - t0
    write_table(out, "sdf_mesh", table)
    return out


EXPERIMENT = Experiment("sdf-mesh", "exact zero level set of a small neural SDF "
                        "(partition_box + level_set) vs marching cubes at several resolutions",
                        add_arguments, run)


def demo_section(ctx: DemoContext) -> Section:
    """A 3-32-32-32-1 torus SDF: the exact mesh vs marching cubes, with a picture."""
    from ._report import Section

    steps = 300 if ctx.quick else 1500
    resolutions = (16, 32) if ctx.quick else (16, 32, 64)
    net, fit_info = train_sdf("torus", (32, 32, 32), steps=steps, batch=2048, seed=ctx.seed)
    warm_up()
    ls, rows, meshes = compare(net, resolutions, samples=20_000 if ctx.quick else 50_000,
                               seed=ctx.seed)
    text = (f"A ReLU MLP 3-32-32-32-1 fitted briefly ({steps} Adam steps, "
            f"{fit_info['seconds']:.1f} s, RMSE {fit_info['rmse']:.3f}) to the signed distance "
            "of a torus is piecewise affine, so its zero level set is a polyhedral surface: "
            "`partition_box(net, -1, 1).level_set(0.0)` extracts it exactly "
            f"({rows[0]['regions']} regions). Marching cubes on grids of the same network's "
            "values approximates it; the symmetric Hausdorff distance to the exact mesh "
            "(vertices + surface samples, projected onto the other mesh) shrinks with the "
            "grid:\n\n" + _markdown(rows) + "\n\n"
            + ctx.figure(figure(ls, meshes[32], 32), "sdf_mesh")
            + "\n\nFull experiment (3,000 steps, grids up to 128^3): "
            "`maxaffine reproduce sdf-mesh` (results/sdf-mesh/).\n")
    return Section("Exact level sets of a neural SDF vs marching cubes", text)

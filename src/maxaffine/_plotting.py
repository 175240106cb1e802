"""Matplotlib figures shared by results objects (imported lazily)."""

from __future__ import annotations

import math

import torch


def _as_image(t: torch.Tensor) -> torch.Tensor | None:
    """(H, W) or (H, W, 3) view of a per-sample tensor, or None if not image-like."""
    if t.dim() == 3 and t.shape[0] == 1:
        return t[0]
    if t.dim() == 3 and t.shape[0] == 3:
        return t.permute(1, 2, 0)
    if t.dim() == 2 and min(t.shape) > 1:  # (1, L): a one-channel signal, drawn as a line
        return t
    if t.dim() == 1 and math.isqrt(t.numel()) ** 2 == t.numel() and t.numel() > 3:
        s = math.isqrt(t.numel())
        return t.reshape(s, s)
    return None


def plot_templates(amap, n: int = 4, classes=None, ax=None):
    """Grid: one row per input (the input, then the template of each class)."""
    import matplotlib.pyplot as plt

    n = min(n, amap.A.shape[0])
    classes = list(range(amap.num_outputs)) if classes is None else list(classes)
    pred = amap.output.argmax(1)
    ncol = len(classes) + 1
    if ax is None:
        fig, axes = plt.subplots(n, ncol, figsize=(1.3 * ncol, 1.4 * n), squeeze=False)
    else:
        fig, axes = ax.figure, ax
    for i in range(n):
        x = amap.x[i].detach().cpu()
        img = _as_image(x)
        row = axes[i]
        for j in range(ncol):
            row[j].set_xticks([])
            row[j].set_yticks([])
        if img is not None:
            row[0].imshow(img.double().numpy(), cmap="gray")
        else:
            row[0].plot(x.flatten().double().numpy(), color="k", lw=0.8)
        row[0].set_ylabel(f"pred {int(pred[i])}", fontsize=8)
        temps = amap.A[i, classes].detach().cpu().double()
        lim = float(temps.abs().max()) or 1.0
        for j, c in enumerate(classes):
            t = _as_image(temps[j])
            a = row[j + 1]
            if t is not None and t.dim() == 2:
                a.imshow(t.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            else:
                color = "C3" if c == int(pred[i]) else "C0"
                a.plot(temps[j].flatten().numpy(), color=color, lw=0.8)
                a.set_ylim(-lim, lim)
            if i == 0:
                a.set_title(f"class {c}", fontsize=8)
            if c == int(pred[i]):
                for s in a.spines.values():
                    s.set_edgecolor("gold")
                    s.set_linewidth(2.5)
    axes[0][0].set_title("input", fontsize=8)
    fig.suptitle("Templates A_c[x] (rows of the input's affine map; gold: predicted class)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_partition(part, ax=None, color_by: str = "region", edges: bool = True,
                   boundary: bool = True, anchors: bool = True, cmap: str | None = None,
                   centroids=None):
    """Faces of a :class:`~maxaffine.Partition` as polygons (see ``Partition.plot``);
    ``centroids`` (F, 2): points to mark in each face (e.g. the power-diagram
    centroids, :func:`maxaffine.power.face_centroids`); it draws what it is given."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection, PolyCollection

    from .errors import MaxAffineError

    if color_by not in ("region", "layer", "class", "output"):
        raise MaxAffineError(f"color_by must be 'region', 'layer', 'class' or 'output', "
                             f"got {color_by!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    verts = [part.polygon(i).double().numpy() for i in range(part.num_regions)]
    n = part.num_regions
    if color_by == "class":  # faces crossed by the decision boundary are split
        polys, classes = part.class_cells()
        verts = [p.double().numpy() for p in polys]
        colors = plt.get_cmap(cmap or "tab10")(classes.numpy() % 10)
    elif color_by == "region":
        # neighbours get unrelated colours: a fixed random permutation of a cyclic map
        g = torch.Generator().manual_seed(0)
        values = torch.rand(n, generator=g).numpy()
        colors = plt.get_cmap(cmap or "tab20")(values)
    elif color_by == "output":
        out = torch.einsum("fcd,fd->fc", part.slopes, part.interior) + part.offsets
        v = out.max(1).values
        v = (v - v.min()) / (v.max() - v.min() + 1e-300)
        colors = plt.get_cmap(cmap or "viridis")(v.numpy())
    else:
        colors = [(0.93, 0.93, 0.93, 1.0)] * n
    ax.add_collection(PolyCollection(verts, facecolors=colors, edgecolors="none"))
    if edges:
        seg = part.vertices[part.edges].numpy()
        if color_by == "layer":
            layers = part.edge_layer.numpy()
            lc = plt.get_cmap("plasma")
            k = max(1, len(part.layer_names))
            ecol = [lc(l / k) if l >= 0 else (0, 0, 0, 1) for l in layers]
            ax.add_collection(LineCollection(seg, colors=ecol, linewidths=0.6))
            handles = [plt.Line2D([], [], color=lc(i / k), label=name)
                       for i, name in enumerate(part.layer_names)]
            ax.legend(handles=handles, fontsize=7, loc="upper right", title="edges of")
        else:
            ax.add_collection(LineCollection(seg, colors="0.25", linewidths=0.25))
    if bool(part.unresolved.any()):  # faces holding regions below the tolerance
        bad = [part.polygon(int(i)).double().numpy()
               for i in torch.nonzero(part.unresolved).flatten()]
        ax.add_collection(PolyCollection(bad, facecolors="none", edgecolors="red",
                                         linewidths=1.2, hatch="////"))
    if boundary and part.decision_boundary.shape[0]:
        ax.add_collection(LineCollection(part.decision_boundary.numpy(), colors="k",
                                         linewidths=2.2))
    if anchors and part.domain.anchors.shape[0]:
        a = part.domain.anchors.numpy()
        ax.scatter(a[:, 0], a[:, 1], s=60, c="white", edgecolors="k", zorder=5)
        for i, (x, y) in enumerate(a):
            ax.annotate(f"x{i + 1}", (x, y), textcoords="offset points", xytext=(5, 5),
                        fontsize=9, weight="bold")
    if centroids is not None:
        c = centroids.double().numpy()
        ax.scatter(c[:, 0], c[:, 1], s=8, c="k", marker="x", linewidths=0.6, zorder=4)
    b = part.domain.bounds.numpy()
    ax.set_xlim(b[:, 0].min(), b[:, 0].max())
    ax.set_ylim(b[:, 1].min(), b[:, 1].max())
    ax.set_aspect("equal")
    ax.set_title(f"{n} regions" + (" (decision boundary in black)"
                                   if part.decision_boundary.shape[0] else ""), fontsize=10)
    return ax


def _axes(ax, figsize=(5, 3)):
    """``ax``, or the axes of a new figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_posterior(post, ax=None, bins: int = 20):
    """Per layer of a :class:`~maxaffine.VQPosterior`, a histogram of each unit's
    largest posterior probability."""
    ax = _axes(ax)
    for name, p in post.items():
        top = p.detach().double().amax(-1).flatten()
        if top.numel():
            ax.hist(top.numpy(), bins=bins, range=(0.0, 1.0), histtype="step", label=name)
    ax.set_xlabel("posterior of each unit's most probable piece")
    ax.set_ylabel("units x inputs")
    ax.set_title("VQ posterior" + ("" if post.beta is None else f" (beta = {post.beta:g})"),
                 fontsize=10)
    if post.names:
        ax.legend(fontsize=7, title="layer")
    return ax


def plot_piece_usage(names, fractions, ax=None):
    """Stacked bars, one per layer: the fraction of (sample, unit) entries selecting
    each piece (``fractions``: per layer, a list over pieces)."""
    import matplotlib.pyplot as plt

    ax = _axes(ax, (6, 0.4 * max(3, len(names)) + 1))
    cmap = plt.get_cmap("tab10")
    for i, row in enumerate(fractions):
        left = 0.0
        for r, f in enumerate(row):
            if not math.isfinite(f) or f <= 0:
                continue
            ax.barh(i, f, left=left, color=cmap(r % 10),
                    label=f"piece {r}" if r < 10 else None)
            left += f
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    ax.set_yticks(range(len(names)), [str(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of (input, unit) entries selecting each piece")
    ax.set_title("VQ codes per layer", fontsize=10)
    return ax


def plot_layers(graph, ax=None):
    """Units per nonlinearity of a :class:`~maxaffine.SplineGraph`, graph order."""
    layers = graph.layers
    ax = _axes(ax, (6, 0.4 * max(3, len(layers)) + 1))
    if not layers:
        ax.text(0.5, 0.5, "no nonlinearity: the model is affine", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return ax
    ax.barh(range(len(layers)), [layer.num_units for layer in layers], color="C0")
    ax.set_yticks(range(len(layers)),
                  [f"{layer.name} ({layer.kind}, R={layer.num_pieces})" for layer in layers],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("units")
    ax.set_title(f"SplineGraph {graph.input_shape} -> {graph.output_shape}", fontsize=10)
    return ax


def plot_layer_values(names, values, ax=None, xlabel: str = "value", log: bool = False):
    """One row per layer of per-input values (N, L): the range (thin line), the
    quartiles (thick line) and the median (dot); non-finite values left out."""
    ax = _axes(ax, (6, 0.4 * max(3, len(names)) + 1))
    for j in range(len(names)):
        v = values[:, j].detach().double()
        v = v[torch.isfinite(v) & ((v > 0) if log else True)]
        if v.numel() == 0:
            continue
        q = torch.quantile(v, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=v.dtype)).tolist()
        ax.hlines(j, q[0], q[4], color="C0", lw=1)
        ax.hlines(j, q[1], q[3], color="C0", lw=6)
        ax.plot([q[2]], [j], "o", color="white", mec="C0", ms=5)
    ax.set_yticks(range(len(names)), [str(n) for n in names], fontsize=8)
    ax.set_ylim(len(names) - 0.5, -0.5)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    return ax


def plot_region_sharing(rs, ax=None):
    """Distinct regions per depth (layers 1..l) and per layer alone, as bars."""
    ax = _axes(ax, (6, 3))
    k = range(len(rs.names))
    ax.bar([i - 0.2 for i in k], rs.regions.tolist(), width=0.4, label="layers 1..l")
    ax.bar([i + 0.2 for i in k], rs.layer_regions.tolist(), width=0.4,
           label="layer l alone")
    ax.set_xticks(list(k), [str(n) for n in rs.names], fontsize=8)
    ax.set_ylabel("distinct regions")
    ax.set_title(f"regions occupied by {rs.num_samples} samples", fontsize=10)
    ax.legend(fontsize=7)
    return ax


def plot_power_cells(cells, ax=None, bins: int = 30):
    """A 2-D space: each point joined to its cell's centroid; otherwise a histogram
    of the cells' radii."""
    plane = math.prod(cells.points.shape[1:]) == 2
    ax = _axes(ax, (5, 5) if plane else (5, 3))
    where = "input space" if cells.input_space else "layer-input space"
    if plane:
        p = cells.points.detach().flatten(1).double().numpy()
        m = cells.mu.detach().flatten(1).double().numpy()
        for a, b in zip(p, m, strict=True):
            ax.plot([a[0], b[0]], [a[1], b[1]], color="0.7", lw=0.5, zorder=1)
        ax.scatter(p[:, 0], p[:, 1], s=10, c="C0", label="points", zorder=2)
        ax.scatter(m[:, 0], m[:, 1], s=18, c="k", marker="x", label="centroids", zorder=3)
        ax.set_aspect("equal")
        ax.legend(fontsize=7)
    else:
        ax.hist(cells.rad.detach().double().numpy(), bins=bins)
        ax.set_xlabel("radius of the input's cell")
        ax.set_ylabel("inputs")
    ax.set_title(f"power cells of layer {cells.layer!r} ({where})", fontsize=10)
    return ax


def plot_complex(cx, ax=None, regions=None, level=0.0, output=0):
    """A full-dimension complex: d = 2, its regions filled (each polygon's vertices in
    angular order about its centroid); d = 3, the level set ``output = level`` as a
    surface, or (``level`` None) the edges of ``regions`` (default all)."""
    import matplotlib.pyplot as plt
    import numpy as np

    d = cx.dim
    if d == 2:
        from matplotlib.collections import PolyCollection

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 5))
        offsets, ids = (t.numpy() for t in cx.faces(2))
        x = cx.vertices.numpy()
        sel = range(cx.num_regions) if regions is None else regions.tolist()
        polys = []
        for i in sel:
            p = x[ids[offsets[i]: offsets[i + 1]]]
            c = p.mean(0)
            polys.append(p[np.argsort(np.arctan2(p[:, 1] - c[1], p[:, 0] - c[0]))])
        rng = np.random.default_rng(0)
        ax.add_collection(PolyCollection(polys, facecolors=rng.random((len(polys), 3)) * 0.6
                                         + 0.4, edgecolors="k", linewidths=0.3))
        ax.autoscale_view()
        ax.set_aspect("equal")
        ax.set_title(f"{cx.num_regions} regions")
        return ax
    if d != 3:
        raise ValueError(f"plot draws 2-D and 3-D complexes; this one is {d}-D (use summary)")
    if level is not None and regions is None:
        return plot_level_set(cx.level_set(level, output), ax=ax)
    if ax is None:
        fig = plt.figure(figsize=(6, 6))
        ax = fig.add_subplot(projection="3d")
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    x = cx.vertices.numpy()
    edges = cx.edges.numpy()
    if regions is not None:
        offsets, ids = (t.numpy() for t in cx.faces(3))
        keep = np.zeros(x.shape[0], dtype=bool)
        for i in regions.tolist():
            keep[ids[offsets[i]: offsets[i + 1]]] = True
        edges = edges[keep[edges].all(1)]
    ax.add_collection3d(Line3DCollection(x[edges], colors="k", linewidths=0.3))
    lo, hi = x.min(0), x.max(0)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_zlim(lo[2], hi[2])
    ax.set_title(f"{cx.num_regions} regions")
    return ax


def plot_level_set(ls, ax=None, color="tab:orange", **kwargs):
    """A level set: d = 3, its triangles shaded by their normal; d = 2, its segments."""
    import matplotlib.pyplot as plt
    import numpy as np

    x = ls.vertices.numpy()
    s = ls.simplices.numpy()
    if ls.dim == 2:
        from matplotlib.collections import LineCollection

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 5))
        ax.add_collection(LineCollection(x[s], colors=color, **kwargs))
        ax.autoscale_view()
        ax.set_aspect("equal")
        ax.set_title(ls.what)
        return ax
    if ls.dim != 3:
        raise ValueError(f"plot draws 2-D and 3-D level sets; this one is {ls.dim}-D")
    from matplotlib.colors import to_rgb
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if ax is None:
        fig = plt.figure(figsize=(6, 6))
        ax = fig.add_subplot(projection="3d")
    tri = x[s]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)
    light = np.array([0.4, 0.3, 0.85])
    shade = 0.35 + 0.65 * np.clip(n @ (light / np.linalg.norm(light)), 0, 1)
    faces = np.clip(np.outer(shade, to_rgb(color)), 0, 1)
    ax.add_collection3d(Poly3DCollection(tri, facecolors=faces, edgecolors="none", **kwargs))
    if len(x):
        lo, hi = x.min(0), x.max(0)
        mid, half = (lo + hi) / 2, (hi - lo).max() / 2
        for set_lim, m in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), mid, strict=True):
            set_lim(m - half, m + half)
    ax.set_title(f"{ls.what}: {ls.num_simplices} triangles")
    return ax

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
            k = max(1, len(part.unit_names))
            ecol = [lc(l / k) if l >= 0 else (0, 0, 0, 1) for l in layers]
            ax.add_collection(LineCollection(seg, colors=ecol, linewidths=0.6))
            handles = [plt.Line2D([], [], color=lc(i / k), label=name)
                       for i, name in enumerate(part.unit_names)]
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

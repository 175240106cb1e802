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
    if t.dim() == 2:
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
            row[0].imshow(img.double(), cmap="gray")
        else:
            row[0].plot(x.flatten().double(), color="k", lw=0.8)
        row[0].set_ylabel(f"pred {int(pred[i])}", fontsize=8)
        temps = amap.A[i, classes].detach().cpu().double()
        lim = float(temps.abs().max()) or 1.0
        for j, c in enumerate(classes):
            t = _as_image(temps[j])
            a = row[j + 1]
            if t is not None and t.dim() == 2:
                a.imshow(t, cmap="RdBu_r", vmin=-lim, vmax=lim)
            else:
                a.plot(temps[j].flatten(), color="C3" if c == int(pred[i]) else "C0", lw=0.8)
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

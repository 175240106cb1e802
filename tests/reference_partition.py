"""A slow, obviously correct reference for plane partitions (tests only).

Per-face polygon clipping in plain Python floats (float64): for every unit in
graph order, every current polygon is clipped by that unit's boundary, where the
unit's inputs are affine functions of the slice coordinates read off the graph
with the codes of the earlier units frozen at the polygon's centroid (the frozen
graph is one affine map, so three evaluations give it exactly). Max-pool units
split a polygon into the cells ``e_r >= e_j`` for all j; units known only by their
``pieces`` (no breakpoints, no window table) likewise into the cells where each
piece is the largest. Nothing is shared with the fast path but the spline graph
itself (and, for those units, the rule's pieces).
"""

from __future__ import annotations

import math

import torch

import maxaffine as ma
from maxaffine import ops

Poly = list[tuple[float, float]]


def clip(poly: Poly, a: float, b: float, c: float) -> Poly:
    """Sutherland-Hodgman: the part of a convex polygon where a s + b t + c >= 0."""
    out: Poly = []
    n = len(poly)
    for i in range(n):
        p, q = poly[i], poly[(i + 1) % n]
        vp, vq = a * p[0] + b * p[1] + c, a * q[0] + b * q[1] + c
        if vp >= 0:
            out.append(p)
        if (vp >= 0) != (vq >= 0):
            t = vp / (vp - vq)
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def area(poly: Poly) -> float:
    return 0.5 * sum(poly[i][0] * poly[(i + 1) % len(poly)][1]
                     - poly[(i + 1) % len(poly)][0] * poly[i][1] for i in range(len(poly)))


def centroid(poly: Poly) -> tuple[float, float]:
    return (sum(p[0] for p in poly) / len(poly), sum(p[1] for p in poly) / len(poly))


def _layer_inputs(graph, sl, poly: Poly, name: str) -> list[torch.Tensor]:
    """Affine coefficients (3, *units) of the unit's inputs on the polygon: value at
    (0, 0), and the s and t slopes, from the graph frozen at the centroid's codes."""
    c = torch.tensor([centroid(poly)], dtype=torch.float64)
    frozen = graph.evaluate(sl.to_input(c)).codes
    frozen = {k: v.expand((3, *v.shape[1:])) for k, v in frozen.items() if k != name}
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    ins = graph.evaluate(sl.to_input(pts), codes=frozen, record=True).inputs[name]
    out = []
    # the signal(s) only: torch.maximum compares two, the others read their first
    # input (later ones are parameters, e.g. PReLU's per-channel slope)
    signals = ins[:2] if isinstance(graph.layer(name).rule, ops.Maximum) else ins[:1]
    for z in signals:
        z = torch.broadcast_to(z, (3, *ins[0].shape[1:])) if z.dim() else z
        z = z.reshape(3, -1)
        out.append(torch.stack([z[0], z[1] - z[0], z[2] - z[0]]))
    return out


@torch.no_grad()
def reference_partition(model, sl, min_area: float = 1e-14) -> list[tuple[Poly, bytes]]:
    """Polygons and their packed codes (the maxaffine.Codes convention)."""
    graph = ma.trace(model, sl.origin.unsqueeze(0).to(torch.float64))
    faces: list[Poly] = [[(float(s), float(t)) for s, t in sl.bounds]]
    for layer in graph.layers:
        rule = layer.rule
        new: list[Poly] = []
        for poly in faces:
            coef = _layer_inputs(graph, sl, poly, layer.name)
            pieces: list[Poly] = [poly]
            if isinstance(rule, ops.MaxPool) or not hasattr(rule, "breakpoints"):
                if isinstance(rule, ops.MaxPool):
                    x = coef[0]
                    table = rule.window_index(_input_shape(graph, sl, layer.name))
                else:  # an op known by its pieces only: the windows of its pieces
                    x, table = _layer_pieces(graph, sl, poly, layer.name)
                scale = 1.0 + float(x.abs().max())
                for k in range(table.shape[0]):
                    entries = [int(i) for i in table[k] if i >= 0]
                    cells: list[Poly] = []
                    for p in pieces:
                        for a, r in enumerate(entries):
                            cell = p
                            for b, j in enumerate(entries):
                                if j == r or not cell:
                                    continue
                                d = x[:, r] - x[:, j]
                                if float(d.abs().max()) <= 1e-12 * scale:
                                    # identical entries: the first one wins the tie
                                    cell = [] if b < a else cell
                                    continue
                                cell = clip(cell, float(d[1]), float(d[2]), float(d[0]))
                            if len(cell) >= 3 and area(cell) > min_area:
                                cells.append(cell)
                    pieces = cells
            else:
                if isinstance(rule, ops.Maximum):
                    sign = -1.0 if isinstance(rule, ops.Minimum) else 1.0
                    lines = [(coef[1] - coef[0]) * sign]
                else:
                    lines = [coef[0] - torch.tensor([b, 0.0, 0.0], dtype=torch.float64)[:, None]
                             for b in rule.breakpoints() if abs(b) != float("inf")]
                scale = 1.0 + max(float(c.abs().max()) for c in coef)
                for line in lines:
                    for k in range(line.shape[1]):
                        c0, cs, ct = (float(v) for v in line[:, k])
                        if max(abs(c0), abs(cs), abs(ct)) <= 1e-12 * scale:
                            continue  # identically on the boundary: one piece, no split
                        split: list[Poly] = []
                        for p in pieces:
                            for side in (1.0, -1.0):
                                q = clip(p, side * cs, side * ct, side * c0)
                                if len(q) >= 3 and area(q) > min_area:
                                    split.append(q)
                        pieces = split
            new.extend(pieces)
        faces = new
    cents = torch.tensor([centroid(p) for p in faces], dtype=torch.float64)
    bits = ma.codes(graph, sl.to_input(cents)).packed()
    return [(p, bytes(b.tolist())) for p, b in zip(faces, bits, strict=True)]


def _layer_pieces(graph, sl, poly: Poly, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine coefficients (3, K * R) of the unit's pieces on the polygon (as
    :func:`_layer_inputs`) and the (K, R) table of each unit's pieces into them."""
    c = torch.tensor([centroid(poly)], dtype=torch.float64)
    frozen = graph.evaluate(sl.to_input(c)).codes
    frozen = {k: v.expand((3, *v.shape[1:])) for k, v in frozen.items() if k != name}
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    ins = graph.evaluate(sl.to_input(pts), codes=frozen, record=True).inputs[name]
    pieces, valid = graph.layer(name).rule.pieces(*ins)
    k, r = math.prod(pieces.shape[1:-1]), pieces.shape[-1]
    p = pieces.reshape(3, k * r)
    table = torch.arange(k * r).reshape(k, r)
    if valid is not None:
        table = torch.where(valid[:1].reshape(k, r), table, -1)
    return torch.stack([p[0], p[1] - p[0], p[2] - p[0]]).nan_to_num(0.0, 0.0, 0.0), table


def _input_shape(graph, sl, name: str) -> tuple[int, ...]:
    x = sl.to_input(torch.zeros((1, 2), dtype=torch.float64))
    return tuple(graph.evaluate(x, record=True).inputs[name][0].shape[1:])

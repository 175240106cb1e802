"""Interactive, self-contained HTML pages for exact partitions (``maxaffine explore``).

:func:`partition_html` turns a :class:`maxaffine.Partition` (the exact regions of a
plane slice, Balestriero & Baraniuk, "A Spline Theory of Deep Networks", ICML 2018:
each region is the set of inputs sharing one VQ code, on which the network is the
affine map ``f(x) = A[x] x + B[x]``) into one HTML file: a canvas with pan (drag)
and zoom (wheel), the regions coloured by predicted class, region or area; hovering
a region shows its code (packed hex, per layer, and bits for small layers), area,
predicted class and the output's affine map in the plane's coordinates
``f(s, t) = A (s, t) + B`` (the rows of the largest outputs); edges are coloured by
the layer that made them, one toggle per layer; the decision boundary and the
slice's anchor inputs are drawn on top.

:func:`level_set_html` turns a :class:`maxaffine.LevelSet` of a 3-D (or 2-D)
complex (an exact level set or decision boundary of :func:`maxaffine.partition_box`)
into a rotatable mesh (drag to rotate, wheel to zoom), optionally with the
complex's edges as a wireframe.

The pages need no network: the data is a JSON block and the script is a small
hand-written canvas renderer, both inline. For tests and automation each page sets
``window.MAXAFFINE`` (``numRegions``, ``locate(s, t)``, ``toClient(s, t)``, ...)
and ``data-regions`` on ``<body>``.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import _arguments as arg
from .errors import MaxAffineError, MaxAffineTypeError

if TYPE_CHECKING:  # pragma: no cover
    from .partition.complex import Complex, LevelSet
    from .partition.results import Partition

#: bit strings per layer are shipped for layers with at most this many code bits
MAX_BITS_SHOWN = 256


# ------------------------------------------------------------------ payloads


def _bits(values: torch.Tensor, pieces: int) -> list[str]:
    """Each row's codes as a string: '0'/'1' per unit for two pieces, else the
    piece indices (base 36 digits)."""
    flat = values.reshape(values.shape[0], -1).to(torch.int64)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if pieces > len(digits):
        return [",".join(str(int(v)) for v in row) for row in flat]
    return ["".join(digits[int(v)] for v in row) for row in flat]


def _round(x: torch.Tensor, digits: int = 12) -> list:
    """A float tensor as nested lists of numbers with ``digits`` significant digits
    (finite values only; ``None`` for NaN / inf, which JSON cannot hold)."""
    flat = [float(f"{v:.{digits}g}") if math.isfinite(v) else None
            for v in x.detach().double().flatten().tolist()]
    if x.dim() == 0:
        return flat[0]
    out: Any = flat
    for size in reversed(x.shape[1:]):
        out = [out[i: i + size] for i in range(0, len(out), size)]
    return out


def _packed_codes(packed: torch.Tensor) -> dict[str, Any]:
    """The faces' packed codes, as hex strings (``packed``), or, where that is shorter
    (many units, few of them changing across the faces, as in a small window of a
    CNN), as the bitwise majority code ``packed_base`` (hex) and per face the
    positions of the bits that differ from it, ascending, each given as its distance
    from the previous one (the first from -1), ``packed_flips``. Bit ``p`` is bit
    ``7 - p % 8`` of byte ``p // 8`` (numpy's big-endian ``unpackbits`` order)."""
    import numpy as np

    raw = packed.numpy()
    n, width = raw.shape
    if n >= 2 and width:
        bits = np.unpackbits(raw, axis=1)
        base = (2 * bits.sum(0, dtype=np.int64) > n).astype(np.uint8)
        rows, cols = np.nonzero(bits != base)
        starts = np.searchsorted(rows, np.arange(n + 1))
        gaps = np.diff(cols, prepend=-1)
        first = starts[:-1][starts[:-1] < len(cols)]  # each face's first flip (if any)
        gaps[first] = cols[first] + 1
        # JSON characters: each gap's digits and comma, against two per byte + quotes
        chars = int((np.floor(np.log10(np.maximum(gaps, 1))) + 2).sum()) + 3 * n
        if chars < n * (2 * width + 3):
            return {"packed": None, "packed_base": bytes(np.packbits(base)).hex(),
                    "packed_flips": [g.tolist() for g in np.split(gaps, starts[1:-1])]}
    return {"packed": [bytes(r).hex() for r in raw.tolist()], "packed_base": None,
            "packed_flips": None}


def partition_payload(part: Partition, *, max_outputs: int = 10,
                      title: str | None = None) -> dict[str, Any]:
    """The data the explorer page draws, as a JSON-ready dict: ``vertices`` (V, 2)
    slice coordinates, ``faces`` (vertex ids, counter-clockwise), per face ``packed``
    (hex; or, when much shorter, ``packed_base`` and ``packed_flips``, see
    :func:`_packed_codes`), ``layer_bits`` (per layer: bit strings, or None for layers above
    :data:`MAX_BITS_SHOWN` bits), ``areas``, ``predicted``, ``map_rows`` (the output
    indices shown; None: all, in order), ``slopes`` / ``offsets`` (those rows of the face's map
    ``f(s, t) = slopes @ (s, t) + offsets``); ``edges`` with ``edge_layer``,
    ``layer_names``, ``layer_bytes`` (each layer's byte range in ``packed``),
    ``boundary`` (decision-boundary segments), ``anchors`` and ``bounds``.
    ``max_outputs``: how many output rows per face (the largest at the face's
    interior point, all when the model has at most that many outputs)."""
    from ._arguments import integer

    _check(part, "part", "Partition", ("faces", "face_sizes", "code_layout", "domain",
                                       "slopes", "offsets", "packed"))
    title = _title(title)
    max_outputs = integer(max_outputs, "max_outputs", minimum=1,
                          meaning="output rows of the affine map shown per region")
    n_faces = part.num_regions
    sizes = part.face_sizes.tolist()
    faces = [row[:k] for row, k in zip(part.faces.tolist(), sizes, strict=True)]
    slopes, offsets = part.slopes.detach().double(), part.offsets.detach().double()
    n_out = slopes.shape[1]
    values = torch.einsum("fcd,fd->fc", slopes, part.interior.double()) + offsets
    if n_out <= max_outputs:
        rows = torch.arange(n_out).expand(n_faces, n_out)
    else:
        rows = values.topk(max_outputs, dim=1).indices
    gather = rows.unsqueeze(-1).expand(-1, -1, 2)
    layer_bits: list[list[str] | None] = []
    layer_bytes, start = [], 0
    codes = None
    for name, shape, pieces, bits in part.code_layout:
        units = math.prod(shape)
        stop = start + (units * bits + 7) // 8
        layer_bytes.append([start, stop])
        start = stop
        if units * bits <= MAX_BITS_SHOWN:
            codes = part.codes if codes is None else codes
            layer_bits.append(_bits(codes[name], pieces))
        else:
            layer_bits.append(None)
    s = part.summary()
    return {
        "kind": "partition",
        "title": title or f"maxaffine explorer: {n_faces} regions",
        "num_regions": n_faces,
        "vertices": _round(part.vertices),
        "faces": faces,
        **_packed_codes(part.packed),
        "layer_names": list(part.layer_names),
        "layer_bytes": layer_bytes,
        "layer_bits": layer_bits,
        "areas": _round(part.areas, 8),
        "predicted": part.predicted().tolist(),
        "num_outputs": n_out,
        "map_rows": None if n_out <= max_outputs else rows.tolist(),
        "slopes": _round(slopes.gather(1, gather), 6),
        "offsets": _round(offsets.gather(1, rows), 6),
        "unresolved": torch.nonzero(part.unresolved).flatten().tolist(),
        "edges": part.edges.tolist(),
        "edge_layer": part.edge_layer.tolist(),
        "boundary": _round(part.decision_boundary),
        "anchors": _round(part.domain.anchors),
        "bounds": _round(part.domain.bounds),
        "summary": _finite({k: v for k, v in s.items() if k != "edges_per_layer"}),
    }


def level_set_payload(level_set: LevelSet, *, complex_: Complex | None = None,
                      title: str | None = None) -> dict[str, Any]:
    """The data of the mesh page: ``vertices`` (n, 3) (2-D level sets get z = 0),
    ``triangles`` (3-D) or ``segments`` (2-D), ``regions`` (the complex's region on
    each simplex's positive side), ``classes``, and with ``complex_`` its edges as
    ``wire_vertices`` / ``wire_edges``."""
    _check(level_set, "level_set", "LevelSet", ("vertices", "simplices", "regions", "what"))
    title = _title(title)
    if complex_ is not None:
        _check(complex_, "complex_", "Complex", ("vertices", "edges", "num_regions", "dim"))
    d = level_set.dim
    if d not in (2, 3):
        raise MaxAffineError(f"the mesh page draws 2-D and 3-D level sets; this one is {d}-D")

    def lift(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().double()
        return torch.cat([v, torch.zeros(v.shape[0], 3 - v.shape[1],
                                         dtype=torch.float64)], 1) if v.shape[1] < 3 else v

    payload: dict[str, Any] = {
        "kind": "mesh",
        "title": title or f"maxaffine explorer: {level_set.what or 'level set'}",
        "what": level_set.what,
        "dim": d,
        "vertices": _round(lift(level_set.vertices)),
        "triangles": level_set.simplices.tolist() if d == 3 else [],
        "segments": level_set.simplices.tolist() if d == 2 else [],
        "regions": level_set.regions.tolist(),
        "classes": None if level_set.classes is None else level_set.classes.tolist(),
        "num_simplices": level_set.num_simplices,
        "summary": _finite(level_set.summary()),
        "wire_vertices": [],
        "wire_edges": [],
    }
    if complex_ is not None:
        if complex_.dim != d:
            raise MaxAffineError(f"complex_ is {complex_.dim}-D but the level set is {d}-D")
        payload["wire_vertices"] = _round(lift(complex_.vertices))
        payload["wire_edges"] = complex_.edges.tolist()
        payload["num_regions"] = complex_.num_regions
    return payload


# ------------------------------------------------------------------ pages


def partition_html(part: Partition, *, title: str | None = None, max_outputs: int = 10) -> str:
    """The explorer page of a plane partition as one self-contained HTML string
    (see the module docstring; the data is :func:`partition_payload`)."""
    payload = partition_payload(part, max_outputs=max_outputs, title=title)
    return _page(payload, _PARTITION_JS)


def level_set_html(level_set: LevelSet, *, complex_: Complex | None = None,
                   title: str | None = None) -> str:
    """The rotatable mesh page of a level set (optionally with its complex's edges)
    as one self-contained HTML string."""
    return _page(level_set_payload(level_set, complex_=complex_, title=title), _MESH_JS)


def write_html(text: str, path: str | os.PathLike) -> Path:
    """Write a page to ``path`` (parent directories created); returns the path."""
    path = arg.file_path(path, "path", "explore.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _check(obj: Any, name: str, kind: str, fields: tuple[str, ...]) -> None:
    """``obj`` must be a maxaffine ``kind`` (checked by its name and fields: the
    report stage reads geometry results without importing their modules)."""
    if type(obj).__name__ != kind or not all(hasattr(obj, f) for f in fields):
        raise MaxAffineTypeError(f"{name} must be a maxaffine.{kind}, got "
                                 f"{type(obj).__name__}")


def _title(title: Any) -> str | None:
    if title is not None and not isinstance(title, str):
        raise MaxAffineTypeError(f"title must be a str or None, got {type(title).__name__}")
    return title


def _finite(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary with non-finite numbers as None (JSON has no NaN / inf)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in summary.items()}


def _page(payload: dict[str, Any], script: str) -> str:
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    # a JSON block inside <script>: "</" would end it, so it is escaped
    data = data.replace("</", "<\\/").replace("<!--", "<\\!--")
    title = html.escape(payload["title"])
    return (_HEAD.replace("@TITLE@", title)
            + f"<script id='payload' type='application/json'>{data}</script>\n"
            + "<script>\n" + _COMMON_JS + script + "\n</script>\n</body></html>\n")


_HEAD = """<!doctype html>
<html><head><meta charset='utf-8'><title>@TITLE@</title>
<style>
html,body{margin:0;height:100%;font-family:sans-serif;font-size:13px}
#wrap{display:flex;height:100%}
#side{width:290px;padding:8px;overflow:auto;border-right:1px solid #ccc;box-sizing:border-box}
#main{flex:1;position:relative}
canvas{display:block;width:100%;height:100%;cursor:crosshair}
#tooltip{position:absolute;pointer-events:none;background:rgba(255,255,255,.95);
border:1px solid #888;padding:5px 7px;font-family:monospace;font-size:11px;display:none;
max-width:460px;word-break:break-all;white-space:pre-wrap}
h1{font-size:15px;margin:0 0 6px}
label{display:block;margin:2px 0}
.sw{display:inline-block;width:12px;height:12px;vertical-align:middle;margin-right:4px}
</style></head><body>
<div id='wrap'><div id='side'><h1>@TITLE@</h1><div id='count'></div><div id='controls'></div>
<p style='color:#666'>Drag to pan (rotate in 3-D), wheel to zoom, double-click to reset.</p>
<div id='info'></div></div>
<div id='main'><canvas id='view'></canvas><div id='tooltip'></div></div></div>
"""

_COMMON_JS = r"""
"use strict";
const P = JSON.parse(document.getElementById('payload').textContent);
const canvas = document.getElementById('view');
const ctx = canvas.getContext('2d');
const tip = document.getElementById('tooltip');
const controls = document.getElementById('controls');
const PALETTE = ['#1f77b4','#ff7f0e','#2ca02c','#d62728','#9467bd','#8c564b','#e377c2',
                 '#7f7f7f','#bcbd22','#17becf'];
function classColor(c, light) {
  const h = (c * 137.508) % 360;
  return c < 10 && !light ? PALETTE[c] : 'hsl(' + h.toFixed(0) + ',60%,' + (light ? 82 : 55) + '%)';
}
function hashColor(i) {
  const h = (i * 137.508) % 360, l = 62 + (i * 7919 % 5) * 5;
  return 'hsl(' + h.toFixed(1) + ',55%,' + l + '%)';
}
function fmt(v) {
  if (v === null) return 'nan';
  return (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3)) ? v.toExponential(4)
    : v.toFixed(5);
}
function addCheck(parent, text, checked, color, onchange) {
  const l = document.createElement('label');
  const c = document.createElement('input');
  c.type = 'checkbox'; c.checked = checked;
  c.addEventListener('change', () => onchange(c.checked));
  l.appendChild(c);
  if (color) { const s = document.createElement('span'); s.className = 'sw';
    s.style.background = color; l.appendChild(s); }
  l.appendChild(document.createTextNode(text));
  parent.appendChild(l);
  return c;
}
function resize() {
  const r = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(r.width * dpr));
  canvas.height = Math.max(1, Math.round(r.height * dpr));
}
let pending = false;
function redraw() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; draw(); });
}
"""

_PARTITION_JS = r"""
const V = P.vertices, F = P.faces, NF = F.length;
const LAYER_COLORS = P.layer_names.map((_, i) => i < 10 ? PALETTE[(i + 3) % 10] : classColor(i));
const show = {layers: P.layer_names.map(() => true), boundary: true, anchors: true,
              domain: true, mode: 'class'};
// face bounding boxes and a uniform grid for hit tests
const bb = new Float64Array(4 * NF);
let X0 = Infinity, Y0 = Infinity, X1 = -Infinity, Y1 = -Infinity;
for (const b of P.bounds) { X0 = Math.min(X0, b[0]); X1 = Math.max(X1, b[0]);
  Y0 = Math.min(Y0, b[1]); Y1 = Math.max(Y1, b[1]); }
for (let f = 0; f < NF; f++) {
  let a = Infinity, b = Infinity, c = -Infinity, d = -Infinity;
  for (const v of F[f]) { const p = V[v]; a = Math.min(a, p[0]); c = Math.max(c, p[0]);
    b = Math.min(b, p[1]); d = Math.max(d, p[1]); }
  bb[4 * f] = a; bb[4 * f + 1] = b; bb[4 * f + 2] = c; bb[4 * f + 3] = d;
}
const G = Math.max(1, Math.min(512, Math.ceil(Math.sqrt(NF))));
const gw = (X1 - X0) / G || 1, gh = (Y1 - Y0) / G || 1;
const grid = Array.from({length: G * G}, () => []);
function cell(v, lo, w) { return Math.min(G - 1, Math.max(0, Math.floor((v - lo) / w))); }
for (let f = 0; f < NF; f++) {
  const i0 = cell(bb[4 * f], X0, gw), i1 = cell(bb[4 * f + 2], X0, gw);
  const j0 = cell(bb[4 * f + 1], Y0, gh), j1 = cell(bb[4 * f + 3], Y0, gh);
  for (let i = i0; i <= i1; i++) for (let j = j0; j <= j1; j++) grid[j * G + i].push(f);
}
function inside(f, s, t) {
  // faces are convex, counter-clockwise: inside iff left of (or on) every side
  const p = F[f], k = p.length;
  let scale = 0;
  for (let m = 0; m < k; m++) { const a = V[p[m]];
    scale = Math.max(scale, Math.abs(a[0] - s), Math.abs(a[1] - t)); }
  for (let m = 0; m < k; m++) {
    const a = V[p[m]], b = V[p[(m + 1) % k]];
    const cr = (b[0] - a[0]) * (t - a[1]) - (b[1] - a[1]) * (s - a[0]);
    if (cr < -1e-12 * scale * scale) return false;
  }
  return true;
}
function locate(s, t) {
  if (!(s >= X0 && s <= X1 && t >= Y0 && t <= Y1)) return -1;
  for (const f of grid[cell(t, Y0, gh) * G + cell(s, X0, gw)]) {
    if (s < bb[4 * f] || s > bb[4 * f + 2] || t < bb[4 * f + 1] || t > bb[4 * f + 3]) continue;
    if (inside(f, s, t)) return f;
  }
  return -1;
}
// view: screen = (s, t) * scale + offset (t axis up)
let scale = 1, ox = 0, oy = 0;
function reset() {
  resize();
  const w = canvas.width, h = canvas.height, m = 0.05;
  scale = Math.min(w * (1 - 2 * m) / ((X1 - X0) || 1), h * (1 - 2 * m) / ((Y1 - Y0) || 1));
  ox = w / 2 - scale * (X0 + X1) / 2; oy = h / 2 + scale * (Y0 + Y1) / 2;
  redraw();
}
const dpr = () => window.devicePixelRatio || 1;
function toClient(s, t) {
  const r = canvas.getBoundingClientRect(), d = dpr();
  return [r.left + (s * scale + ox) / d, r.top + (oy - t * scale) / d];
}
function fromClient(x, y) {
  const r = canvas.getBoundingClientRect(), d = dpr();
  return [((x - r.left) * d - ox) / scale, (oy - (y - r.top) * d) / scale];
}
const logArea = P.areas.map(a => Math.log(Math.max(a, 1e-300)));
const laMin = logArea.reduce((a, b) => Math.min(a, b), Infinity);
const laMax = logArea.reduce((a, b) => Math.max(a, b), -Infinity);
function faceColor(f) {
  if (show.mode === 'region') return hashColor(f);
  if (show.mode === 'area') {
    const u = laMax > laMin ? (logArea[f] - laMin) / (laMax - laMin) : 0.5;
    return 'hsl(' + (240 - 200 * u).toFixed(0) + ',60%,70%)'; }
  return classColor(P.predicted[f], true);
}
let hovered = -1;
function draw() {
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.setTransform(scale, 0, 0, -scale, ox, oy);
  const px = 1 / scale;
  for (let f = 0; f < NF; f++) {
    const p = F[f];
    ctx.beginPath();
    ctx.moveTo(V[p[0]][0], V[p[0]][1]);
    for (let m = 1; m < p.length; m++) ctx.lineTo(V[p[m]][0], V[p[m]][1]);
    ctx.closePath();
    ctx.fillStyle = faceColor(f);
    ctx.fill();
  }
  ctx.lineWidth = 1 * px * dpr();
  for (let l = -1; l < P.layer_names.length; l++) {
    if (l >= 0 && !show.layers[l]) continue;
    if (l < 0 && !show.domain) continue;
    ctx.beginPath();
    for (let e = 0; e < P.edges.length; e++) {
      if (P.edge_layer[e] !== l) continue;
      const a = V[P.edges[e][0]], b = V[P.edges[e][1]];
      ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]);
    }
    ctx.strokeStyle = l < 0 ? '#444' : LAYER_COLORS[l];
    ctx.stroke();
  }
  if (show.boundary && P.boundary.length) {
    ctx.beginPath();
    for (const sg of P.boundary) { ctx.moveTo(sg[0][0], sg[0][1]); ctx.lineTo(sg[1][0], sg[1][1]); }
    ctx.lineWidth = 3 * px * dpr(); ctx.strokeStyle = '#000'; ctx.stroke();
  }
  if (hovered >= 0) {
    const p = F[hovered];
    ctx.beginPath();
    ctx.moveTo(V[p[0]][0], V[p[0]][1]);
    for (let m = 1; m < p.length; m++) ctx.lineTo(V[p[m]][0], V[p[m]][1]);
    ctx.closePath();
    ctx.lineWidth = 3 * px * dpr(); ctx.strokeStyle = '#f0a000'; ctx.stroke();
  }
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  if (show.anchors) {
    ctx.font = (12 * dpr()) + 'px sans-serif';
    P.anchors.forEach((a, i) => {
      const x = a[0] * scale + ox, y = oy - a[1] * scale;
      ctx.beginPath(); ctx.arc(x, y, 5 * dpr(), 0, 2 * Math.PI);
      ctx.fillStyle = '#fff'; ctx.fill(); ctx.lineWidth = 2 * dpr(); ctx.strokeStyle = '#000';
      ctx.stroke(); ctx.fillStyle = '#000';
      ctx.fillText('x' + (i + 1), x + 7 * dpr(), y - 7 * dpr());
    });
  }
}
function codeHex(f) {
  if (P.packed) return P.packed[f];
  const b = [];
  for (let i = 0; i < P.packed_base.length; i += 2) {
    b.push(parseInt(P.packed_base.substr(i, 2), 16));
  }
  let p = -1;
  for (const g of P.packed_flips[f]) { p += g; b[p >> 3] ^= 0x80 >> (p & 7); }
  return b.map(v => v.toString(16).padStart(2, '0')).join('');
}
function describe(f) {
  const code = codeHex(f);
  const lines = ['region ' + f + ' of ' + NF, 'code (hex): ' + code];
  P.layer_names.forEach((n, i) => {
    const r = P.layer_bytes[i], hex = code.slice(2 * r[0], 2 * r[1]);
    const bits = P.layer_bits[i] ? P.layer_bits[i][f] : null;
    lines.push('  ' + n + ': ' + (bits !== null ? bits : hex));
  });
  lines.push('area: ' + P.areas[f].toExponential(6));
  lines.push('predicted class: ' + P.predicted[f]);
  if (P.unresolved.includes(f)) lines.push('holds regions narrower than the tolerance');
  const rows = P.map_rows ? P.map_rows[f] : [...Array(P.num_outputs).keys()];
  lines.push('f(s, t) = A (s, t) + B' + (rows.length < P.num_outputs
    ? ' (the ' + rows.length + ' largest of ' + P.num_outputs + ' outputs)' : '') + ':');
  rows.forEach((c, k) => {
    const a = P.slopes[f][k];
    lines.push('  ' + String(c).padStart(3) + ': A = [' + fmt(a[0]) + ', ' + fmt(a[1]) +
               '], B = ' + fmt(P.offsets[f][k]));
  });
  return lines.join('\n');
}
function hover(x, y) {
  const st = fromClient(x, y), f = locate(st[0], st[1]);
  if (f !== hovered) { hovered = f; redraw(); }
  if (f < 0) { tip.style.display = 'none'; return; }
  tip.textContent = describe(f);
  tip.dataset.region = String(f);
  const r = canvas.getBoundingClientRect();
  tip.style.display = 'block';
  tip.style.left = Math.min(x - r.left + 14, r.width - 300) + 'px';
  tip.style.top = (y - r.top + 14) + 'px';
}
let drag = null;
canvas.addEventListener('mousedown', e => { drag = [e.clientX, e.clientY]; });
window.addEventListener('mouseup', () => { drag = null; });
canvas.addEventListener('mousemove', e => {
  if (drag) { const d = dpr(); ox += (e.clientX - drag[0]) * d; oy += (e.clientY - drag[1]) * d;
    drag = [e.clientX, e.clientY]; redraw(); }
  hover(e.clientX, e.clientY);
});
canvas.addEventListener('mouseleave', () => {
  tip.style.display = 'none'; hovered = -1; redraw();
});
canvas.addEventListener('wheel', e => {
  e.preventDefault();
  const r = canvas.getBoundingClientRect(), d = dpr();
  const x = (e.clientX - r.left) * d, y = (e.clientY - r.top) * d;
  const k = Math.exp(-e.deltaY * 0.0015);
  ox = x - (x - ox) * k; oy = y - (y - oy) * k; scale *= k; redraw();
}, {passive: false});
canvas.addEventListener('dblclick', reset);
window.addEventListener('resize', reset);
// controls
document.getElementById('count').textContent = NF + ' regions, ' + P.edges.length + ' edges, ' +
  P.boundary.length + ' decision-boundary segments';
document.body.dataset.regions = String(NF);
const sel = document.createElement('select');
for (const m of ['class', 'region', 'area']) { const o = document.createElement('option');
  o.value = m; o.textContent = 'colour by ' + m; sel.appendChild(o); }
sel.addEventListener('change', () => { show.mode = sel.value; redraw(); });
controls.appendChild(sel);
const lh = document.createElement('div'); lh.textContent = 'edges by the layer that made them:';
controls.appendChild(lh);
P.layer_names.forEach((n, i) => {
  const count = P.edge_layer.filter(l => l === i).length;
  addCheck(controls, n + ' (' + count + ')', true, LAYER_COLORS[i],
           v => { show.layers[i] = v; redraw(); });
});
addCheck(controls, 'domain boundary', true, '#444', v => { show.domain = v; redraw(); });
addCheck(controls, 'decision boundary', true, '#000', v => { show.boundary = v; redraw(); });
if (P.anchors.length) addCheck(controls, 'anchor inputs', true, null,
                               v => { show.anchors = v; redraw(); });
const info = document.getElementById('info');
info.textContent = Object.entries(P.summary).map(([k, v]) =>
  k + ': ' + (typeof v === 'number' && !Number.isInteger(v) ? v.toPrecision(6) : v)).join('\n');
info.style.whiteSpace = 'pre-wrap';
window.MAXAFFINE = {payload: P, numRegions: NF, locate: locate, toClient: toClient,
                    fromClient: fromClient, describe: describe, codeHex: codeHex, ready: true};
reset();
"""

_MESH_JS = r"""
const V = P.vertices, T = P.triangles, S = P.segments, W = P.wire_vertices;
let cx = 0, cy = 0, cz = 0, rad = 0, n = 0;
for (const v of V.concat(W)) { cx += v[0]; cy += v[1]; cz += v[2]; n++; }
if (n) { cx /= n; cy /= n; cz /= n; }
for (const v of V.concat(W)) rad = Math.max(rad, Math.hypot(v[0] - cx, v[1] - cy, v[2] - cz));
rad = rad || 1;
let yaw = 0.6, pitch = 0.5, zoom = 1;
const show = {mesh: true, wire: W.length > 0, color: P.classes ? 'class' : 'region'};
function project(v) {
  const x = v[0] - cx, y = v[1] - cy, z = v[2] - cz;
  const c1 = Math.cos(yaw), s1 = Math.sin(yaw), c2 = Math.cos(pitch), s2 = Math.sin(pitch);
  const x1 = c1 * x + s1 * y, y1 = -s1 * x + c1 * y;
  const y2 = c2 * y1 - s2 * z, z2 = s2 * y1 + c2 * z;
  const k = Math.min(canvas.width, canvas.height) * 0.42 * zoom / rad;
  return [canvas.width / 2 + k * x1, canvas.height / 2 - k * z2, y2];
}
function triColor(i, shade) {
  const base = show.color === 'class' && P.classes ? P.classes[i][1] : P.regions[i];
  const h = (base * 137.508) % 360;
  return 'hsl(' + h.toFixed(0) + ',55%,' + (25 + 50 * shade).toFixed(0) + '%)';
}
function draw() {
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const Q = V.map(project);
  if (show.mesh && T.length) {
    const order = T.map((t, i) => [Q[t[0]][2] + Q[t[1]][2] + Q[t[2]][2], i]);
    order.sort((a, b) => b[0] - a[0]);
    for (const [, i] of order) {
      const t = T[i], a = Q[t[0]], b = Q[t[1]], c = Q[t[2]];
      // screen-space normal: |z| of the cross product, normalised by the area
      const area = Math.abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]));
      const p0 = V[t[0]], p1 = V[t[1]], p2 = V[t[2]];
      const e1 = [p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]];
      const e2 = [p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2]];
      const nrm = Math.hypot(e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2],
                             e1[0] * e2[1] - e1[1] * e2[0]);
      const k = Math.min(canvas.width, canvas.height) * 0.42 * zoom / rad;
      const shade = nrm > 0 ? 0.35 + 0.65 * Math.min(1, area / (nrm * k * k)) : 0.5;
      ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.lineTo(c[0], c[1]);
      ctx.closePath(); ctx.fillStyle = triColor(i, shade); ctx.fill();
      ctx.strokeStyle = 'rgba(0,0,0,0.15)'; ctx.lineWidth = 0.5; ctx.stroke();
    }
  }
  if (show.mesh && S.length) {
    ctx.lineWidth = 2 * (window.devicePixelRatio || 1);
    S.forEach((s, i) => { const a = Q[s[0]], b = Q[s[1]]; ctx.beginPath();
      ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.strokeStyle = triColor(i, 0.5);
      ctx.stroke(); });
  }
  if (show.wire && W.length) {
    const R = W.map(project);
    ctx.beginPath();
    for (const e of P.wire_edges) { ctx.moveTo(R[e[0]][0], R[e[0]][1]);
      ctx.lineTo(R[e[1]][0], R[e[1]][1]); }
    ctx.strokeStyle = 'rgba(60,60,60,0.35)'; ctx.lineWidth = 1; ctx.stroke();
  }
}
function reset() { resize(); yaw = 0.6; pitch = 0.5; zoom = 1; redraw(); }
let drag = null;
canvas.addEventListener('mousedown', e => { drag = [e.clientX, e.clientY]; });
window.addEventListener('mouseup', () => { drag = null; });
canvas.addEventListener('mousemove', e => {
  if (!drag) return;
  yaw += (e.clientX - drag[0]) * 0.01;
  pitch = Math.max(-1.55, Math.min(1.55, pitch + (e.clientY - drag[1]) * 0.01));
  drag = [e.clientX, e.clientY]; redraw();
});
canvas.addEventListener('wheel', e => { e.preventDefault(); zoom *= Math.exp(-e.deltaY * 0.0015);
  redraw(); }, {passive: false});
canvas.addEventListener('dblclick', reset);
window.addEventListener('resize', reset);
document.getElementById('count').textContent = (P.dim === 3 ? T.length + ' triangles' :
  S.length + ' segments') + (P.num_regions ? ', complex of ' + P.num_regions + ' regions' : '');
document.body.dataset.simplices = String(P.num_simplices);
if (P.num_regions) document.body.dataset.regions = String(P.num_regions);
addCheck(controls, 'level set (' + (P.what || 'mesh') + ')', true, null,
         v => { show.mesh = v; redraw(); });
if (W.length) addCheck(controls, 'edges of the complex', true, '#888',
                       v => { show.wire = v; redraw(); });
if (P.classes) {
  const sel = document.createElement('select');
  for (const m of ['class', 'region']) { const o = document.createElement('option');
    o.value = m; o.textContent = 'colour by ' + m; sel.appendChild(o); }
  sel.addEventListener('change', () => { show.color = sel.value; redraw(); });
  controls.appendChild(sel);
}
const info = document.getElementById('info');
info.style.whiteSpace = 'pre-wrap';
info.textContent = Object.entries(P.summary).map(([k, v]) =>
  k + ': ' + (typeof v === 'number' && !Number.isInteger(v) ? v.toPrecision(6) : v)).join('\n');
window.MAXAFFINE = {payload: P, numSimplices: P.num_simplices, numRegions: P.num_regions || 0,
                    project: project, rotate: (a, b) => { yaw += a; pitch += b; draw(); },
                    ready: true};
reset();
"""

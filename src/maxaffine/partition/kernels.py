"""Compiled loops over faces and vertices (numba), behind :mod:`maxaffine.partition.mesh`
and :func:`maxaffine.partition_plane`: each replaces dozens of tensor passes
over (faces x width) temporaries by one pass, and is imported (and compiled,
cached on disk) on first use.

:func:`lockstep`, the inner loop of :meth:`maxaffine.partition.mesh.Mesh.lockstep`:
one call runs lockstep iterations of cuts over a whole batch of faces: in
iteration ``i`` every face ``f`` present at the iteration's start is cut by
line ``i`` of its root's list (``lines[start[r]:start[r + 1]]`` for root
``r = origin[f]``), with the rules of ``mesh``:

- line ``l``'s function at vertex ``v``: ``vals[v, pos[l]] - vals[v, neg[l]]``
  (no second term when ``neg[l] < 0``) ``- level[l]``; a vertex within
  ``tol[l]`` of zero is *on* the line; the sides are read from the vertices'
  packed bits ``above`` / ``below`` (:func:`side_bits`; written here for new
  vertices); a face is split only when it has vertices strictly on both sides;
- a new vertex is keyed by ``support * n_key + ident[l]`` (the edge of the
  layer-start subdivision or the chord it splits, and the line) in an
  open-addressing hash table, so the faces on both sides of an edge share it;
  it is interpolated from its edge's lower-id end (both faces agree), and every
  value column is interpolated with it;
- the part where the function is positive keeps the face's row, the negative
  part is appended (with the face's origins and payload); an edge of a part
  joining two entries on the line is the chord, support
  ``chord_base + origin_layer * n_key + ident``.

The loop stops (and the caller resumes it from ``state``) when a buffer is too
small, or after an iteration that left more than ``stop_faces`` faces.
"""

from __future__ import annotations

import numba
import numpy as np

# state slots (int64 array shared with the caller)
NF, NV, WIDTH, IT, FACE, END, HCOUNT = range(7)
# return codes
DONE, STOPPED, NEED_FACES, NEED_VERTICES, NEED_WIDTH, NEED_HASH = range(6)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, inline="always")
def _slot(key, shift):
    return np.int64((np.uint64(key) * _GOLDEN) >> shift)


@numba.njit(cache=True)
def rehash(old_keys, old_ids, keys, ids):
    """Insert every entry of an old table into a new (empty, -1) one."""
    mask = keys.shape[0] - 1
    shift = np.uint64(64 - int(np.log2(keys.shape[0])))
    for i in range(old_keys.shape[0]):
        k = old_keys[i]
        if k < 0:
            continue
        h = _slot(k, shift)
        while keys[h] >= 0:
            h = (h + 1) & mask
        keys[h] = k
        ids[h] = old_ids[i]


@numba.njit(cache=True, inline="always")
def _lerp(a, b, t):
    # torch.lerp's two-sided form: exact at both ends
    return a + t * (b - a) if t < 0.5 else b - (b - a) * (1.0 - t)


@numba.njit(cache=True, nogil=True)
def lockstep(faces, sizes, support, origin, origin_layer, payload, xy, vals,
             above, below, start, lines, n_iter, pos, neg, level, tol, ident, n_key,
             chord_base,
             hkeys, hids, state, stop_faces):
    nf, nv, width = state[NF], state[NV], state[WIDTH]
    it, f, end, hcount = state[IT], state[FACE], state[END], state[HCOUNT]
    cap_f, cap_w = faces.shape[0], faces.shape[1]
    cap_v = xy.shape[0]
    ncols = vals.shape[1]
    hmask = hkeys.shape[0] - 1
    paired = pos.shape[0] > 0 and neg[0] >= 0
    hshift = np.uint64(64 - int(np.log2(hkeys.shape[0])))
    s = np.empty(cap_w, dtype=np.int8)
    ext_v = np.empty(2 * cap_w, dtype=np.int64)
    ext_s = np.empty(2 * cap_w, dtype=np.int64)
    ext_on = np.empty(2 * cap_w, dtype=np.bool_)
    ext_sign = np.empty(2 * cap_w, dtype=np.int8)
    status = DONE
    while it < n_iter:
        while f < end:
            r = origin[f]
            if it >= start[r + 1] - start[r]:
                f += 1
                continue
            li = lines[start[r] + it]
            n = sizes[f]
            # sides from the vertices' packed bits (small, cache-friendly), not
            # from their (wide) value rows
            wd = li >> 6
            bt = np.int64(li & 63)
            up = False
            down = False
            for j in range(n):
                v = faces[f, j]
                sj = np.int8((above[v, wd] >> bt) & 1) - np.int8((below[v, wd] >> bt) & 1)
                s[j] = sj
                up |= sj > 0
                down |= sj < 0
            if not (up and down):
                f += 1
                continue
            # room: crossings (new vertices, hash entries), child sizes, one row
            crossings = 0
            n_pos = 0
            n_neg = 0
            for j in range(n):
                nx = j + 1 if j + 1 < n else 0
                if s[j] * s[nx] < 0:
                    crossings += 1
                if s[j] >= 0:
                    n_pos += 1
                if s[j] <= 0:
                    n_neg += 1
            if nf + 1 > cap_f:
                status = NEED_FACES
                break
            if nv + crossings > cap_v:
                status = NEED_VERTICES
                break
            if max(n_pos, n_neg) + crossings > cap_w:
                status = NEED_WIDTH
                break
            if 2 * (hcount + crossings) > hkeys.shape[0]:
                status = NEED_HASH
                break
            ident_l = ident[li]
            m = 0
            for j in range(n):
                nx = j + 1 if j + 1 < n else 0
                a = faces[f, j]
                sup = support[f, j]
                ext_v[m] = a
                ext_s[m] = sup
                ext_on[m] = s[j] == 0
                ext_sign[m] = s[j]
                m += 1
                if s[j] * s[nx] < 0:
                    key = sup * n_key + ident_l
                    h = _slot(key, hshift)
                    vid = -1
                    while hkeys[h] >= 0:
                        if hkeys[h] == key:
                            vid = hids[h]
                            break
                        h = (h + 1) & hmask
                    if vid < 0:
                        b = faces[f, nx]
                        lo, hi = (a, b) if a < b else (b, a)
                        p, q, lev = pos[li], neg[li], level[li]
                        dlo = _line_value(vals, lo, p, q, lev)
                        t = dlo / (dlo - _line_value(vals, hi, p, q, lev))
                        vid = nv
                        xy[vid, 0] = _lerp(xy[lo, 0], xy[hi, 0], t)
                        xy[vid, 1] = _lerp(xy[lo, 1], xy[hi, 1], t)
                        for c in range(ncols):
                            vals[vid, c] = _lerp(vals[lo, c], vals[hi, c], t)
                        _vertex_sides(vals, vid, pos, neg, level, tol, paired, above, below,
                                      vid)
                        nv += 1
                        hkeys[h] = key
                        hids[h] = vid
                        hcount += 1
                    ext_v[m] = vid
                    ext_s[m] = sup  # a crossing continues its edge
                    ext_on[m] = True
                    ext_sign[m] = 0
                    m += 1
            chord = chord_base + origin_layer[f] * n_key + ident_l
            row = nf
            nf += 1
            origin[row] = origin[f]
            origin_layer[row] = origin_layer[f]
            for c in range(payload.shape[1]):
                payload[row, c] = payload[f, c]
            for side in (-1, 1):  # both parts are read from ext_*, not from the rows
                target = row if side < 0 else f
                k = 0
                first = -1
                prev = -1
                for e in range(m):
                    if ext_sign[e] * side < 0:
                        continue
                    if first < 0:
                        first = e
                    if prev >= 0:
                        support[target, k - 1] = chord if ext_on[prev] and ext_on[e] \
                            else ext_s[prev]
                    faces[target, k] = ext_v[e]
                    k += 1
                    prev = e
                support[target, k - 1] = chord if ext_on[prev] and ext_on[first] \
                    else ext_s[prev]
                for c in range(k, cap_w):
                    faces[target, c] = -1
                    support[target, c] = -1
                sizes[target] = k
                if k > width:
                    width = k
            f += 1
        if status != DONE:
            break
        it += 1
        f = 0
        end = nf
        if nf > stop_faces and it < n_iter:
            status = STOPPED
            break
    state[NF], state[NV], state[WIDTH] = nf, nv, width
    state[IT], state[FACE], state[END], state[HCOUNT] = it, f, end, hcount
    return status


@numba.njit(cache=True, inline="always")
def _line_value(vals, v, p, q, lev):
    x = vals[v, p]
    if q >= 0:
        x = x - vals[v, q]
    return x - lev


@numba.njit(cache=True)
def _vertex_sides(vals, v, pos, neg, level, tol, paired, above, below, row):
    """Bits of ``value > tol`` / ``value < -tol`` of every line at vertex ``v``
    (``paired``: every line has a second term; else none has)."""
    n_lines = pos.shape[0]
    for w in range(above.shape[1]):
        lo = w * 64
        a = np.int64(0)
        b = np.int64(0)
        for li in range(lo, min(n_lines, lo + 64)):
            if paired:  # hoisted out of the loop by the compiler
                x = vals[v, pos[li]] - vals[v, neg[li]] - level[li]
            else:
                x = vals[v, pos[li]] - level[li]
            a |= np.int64(x > tol[li]) << np.int64(li - lo)
            b |= np.int64(x < -tol[li]) << np.int64(li - lo)
        above[row, w] = a
        below[row, w] = b


@numba.njit(cache=True)
def side_bits(vals, start, pos, neg, level, tol, above, below):
    """Packed bits of ``value > tol`` (``above``) and ``value < -tol`` (``below``)
    of every line at vertices ``start .. start + len(above)`` (bit ``l`` of a row:
    word ``l // 64``, bit ``l % 64``, as :func:`maxaffine.partition.mesh.pack_bits`).
    Lines have a second term (``neg >= 0``) all or none."""
    paired = pos.shape[0] > 0 and neg[0] >= 0
    for i in range(above.shape[0]):
        _vertex_sides(vals, start + i, pos, neg, level, tol, paired, above, below, i)


@numba.njit(cache=True)
def face_reduce(faces, sizes, values, use_and, out):
    """Bitwise OR (or AND) of the rows of ``values`` (V, k) int64 over each face's
    vertices, into ``out`` (F, k)."""
    for f in range(out.shape[0]):
        v = faces[f, 0]
        for c in range(out.shape[1]):
            out[f, c] = values[v, c]
        for j in range(1, sizes[f]):
            v = faces[f, j]
            if use_and:
                for c in range(out.shape[1]):
                    out[f, c] &= values[v, c]
            else:
                for c in range(out.shape[1]):
                    out[f, c] |= values[v, c]


@numba.njit(cache=True)
def face_areas(faces, sizes, xy, out):
    """Signed shoelace areas (positive: counter-clockwise) of faces ``0 .. len(out)``."""
    for f in range(out.shape[0]):
        n = sizes[f]
        acc = 0.0
        o = faces[f, 0]  # from the first corner: no cancellation far from the origin
        for j in range(1, n - 1):
            p = faces[f, j]
            q = faces[f, j + 1]
            acc += ((xy[p, 0] - xy[o, 0]) * (xy[q, 1] - xy[o, 1])
                    - (xy[p, 1] - xy[o, 1]) * (xy[q, 0] - xy[o, 0]))
        out[f] = 0.5 * acc


@numba.njit(cache=True, nogil=True)
def face_fits(faces, sizes, xy, outputs, interior, slopes, offsets, spread):
    """Per face: the vertex mean (``interior``) and the least-squares affine map of
    ``outputs`` (V, C) through its vertices, ``y = slopes[f] @ p + offsets[f]``
    (exact when the outputs are affine on the face). The vertices are centred at
    their mean m and expressed in the face's own frame (e along the longest
    d_j = p_j - m, and e rotated by 90 degrees), where the normal equations of a
    long thin face stay well conditioned; the slopes are ``sum_j w_j y_j`` (w_j
    from the inverse of those equations) and the offset ``mean_j y_j - slopes @ m``:
    one pass over the vertices' output rows. ``spread[f]``: the face's extent
    across e (root of the residual sum of squares of the b coordinates), below
    which rounding of the vertices' positions and values shows in the slopes."""
    c_out = outputs.shape[1]
    width = faces.shape[1]
    ws = np.empty(width)
    wt = np.empty(width)
    acc_s = np.empty(c_out)  # sums in cache, written once per face
    acc_t = np.empty(c_out)
    acc_0 = np.empty(c_out)
    for f in range(faces.shape[0]):
        n = sizes[f]
        mx = 0.0
        my = 0.0
        for j in range(n):
            v = faces[f, j]
            mx += xy[v, 0]
            my += xy[v, 1]
        mx /= n
        my /= n
        ex = 0.0
        ey = 0.0
        longest = -1.0
        for j in range(n):
            v = faces[f, j]
            dx = xy[v, 0] - mx
            dy = xy[v, 1] - my
            if dx * dx + dy * dy > longest:
                longest = dx * dx + dy * dy
                ex = dx
                ey = dy
        norm = np.sqrt(longest)
        if norm > 0:
            ex /= norm
            ey /= norm
        else:
            ex = 1.0
        gaa = 0.0
        gab = 0.0
        gbb = 0.0
        for j in range(n):
            v = faces[f, j]
            dx = xy[v, 0] - mx
            dy = xy[v, 1] - my
            a = dx * ex + dy * ey
            b = dy * ex - dx * ey
            gaa += a * a
            gab += a * b
            gbb += b * b
        det = gaa * gbb - gab * gab
        spread[f] = np.sqrt(det / gaa) if det > 0 else 0.0
        for j in range(n):
            v = faces[f, j]
            dx = xy[v, 0] - mx
            dy = xy[v, 1] - my
            a = dx * ex + dy * ey
            b = dy * ex - dx * ey
            if det > 0:
                wa = (gbb * a - gab * b) / det
                wb = (gaa * b - gab * a) / det
            else:  # no extent across e (a degenerate face): no slope across it
                wa = a / gaa if gaa > 0 else 0.0
                wb = 0.0
            ws[j] = wa * ex - wb * ey
            wt[j] = wa * ey + wb * ex
        interior[f, 0] = mx
        interior[f, 1] = my
        acc_s[:] = 0.0
        acc_t[:] = 0.0
        acc_0[:] = 0.0
        for j in range(n):
            v = faces[f, j]
            a = ws[j]
            b = wt[j]
            for c in range(c_out):
                y = outputs[v, c]
                acc_s[c] += a * y
                acc_t[c] += b * y
                acc_0[c] += y
        for c in range(c_out):
            slopes[f, c, 0] = acc_s[c]
            slopes[f, c, 1] = acc_t[c]
            offsets[f, c] = acc_0[c] / n - acc_s[c] * mx - acc_t[c] * my


@numba.njit(cache=True, inline="always")
def _coef(slopes, offsets, f, c):
    """Class ``c``'s affine score on face ``f``: (slope s, slope t, offset); a single
    output ``y`` is scored as the two classes (0, y): class 1 where ``y > 0``."""
    if slopes.shape[1] == 1:
        if c == 0:
            return 0.0, 0.0, 0.0
        c = 0
    return slopes[f, c, 0], slopes[f, c, 1], offsets[f, c]


@numba.njit(cache=True)
def class_cells(faces, sizes, xy, slopes, offsets):
    """Split the faces whose vertices disagree on the class (argmax of the face's
    affine output, the first of equal maxima; one output: its sign, as classes
    (0, y)) into class cells: for class ``c``, the face clipped by ``f_c >= f_j``.
    Only classes that no vertex winner dominates on the face (``f_w >= f_c`` at
    every vertex, hence everywhere on the convex face) can win somewhere, so only
    those are clipped against each other (a handful of a thousand classes).

    Returns per cell its face, class and first corner (CSR ``start``, M + 1), and
    per corner its coordinates and the label of the edge leaving it: the other
    class of the clip line it lies on, or -1 on the face's own boundary."""
    n_cls = 2 if slopes.shape[1] == 1 else slopes.shape[1]
    width = faces.shape[1]
    score = np.empty((width, n_cls))
    winner = np.empty(width, dtype=np.int64)
    cand = np.empty(n_cls, dtype=np.int64)
    room = width + n_cls + 2
    px = np.empty(room)
    py = np.empty(room)
    pl = np.empty(room, dtype=np.int64)
    qx = np.empty(room)
    qy = np.empty(room)
    ql = np.empty(room, dtype=np.int64)
    g = np.empty(room)
    cap = 1024
    cell_face = np.empty(cap, dtype=np.int64)
    cell_class = np.empty(cap, dtype=np.int64)
    start = np.zeros(cap + 1, dtype=np.int64)
    cap_pts = 4096
    pts = np.empty((cap_pts, 2))
    labels = np.empty(cap_pts, dtype=np.int64)
    m = 0
    for f in range(sizes.shape[0]):
        n = sizes[f]
        mixed = False
        for j in range(n):
            v = faces[f, j]
            best = 0
            for c in range(n_cls):
                a0, a1, a2 = _coef(slopes, offsets, f, c)
                score[j, c] = a0 * xy[v, 0] + a1 * xy[v, 1] + a2
                if score[j, c] > score[j, best]:
                    best = c
            winner[j] = best
            mixed |= best != winner[0]
        if not mixed:
            continue
        k = 0
        for c in range(n_cls):
            dominated = False
            for j in range(n):
                w = winner[j]
                if w == c:
                    continue
                every = True
                for q in range(n):
                    if score[q, w] < score[q, c]:
                        every = False
                        break
                if every:
                    dominated = True
                    break
            if not dominated:
                cand[k] = c
                k += 1
        for ci in range(k):
            c = cand[ci]
            size = n
            for j in range(n):
                v = faces[f, j]
                px[j] = xy[v, 0]
                py[j] = xy[v, 1]
                pl[j] = -1
            for oi in range(k):
                o = cand[oi]
                if o == c or size < 3:
                    continue
                a0, a1, a2 = _coef(slopes, offsets, f, c)
                b0, b1, b2 = _coef(slopes, offsets, f, o)
                sx, sy, s0 = a0 - b0, a1 - b1, a2 - b2
                for j in range(size):
                    g[j] = sx * px[j] + sy * py[j] + s0
                out = 0
                for j in range(size):
                    nx = j + 1 if j + 1 < size else 0
                    inside = g[j] >= 0
                    if inside:
                        qx[out] = px[j]
                        qy[out] = py[j]
                        ql[out] = pl[j]
                        out += 1
                    if inside != (g[nx] >= 0):
                        t = g[j] / (g[j] - g[nx])
                        qx[out] = px[j] + t * (px[nx] - px[j])
                        qy[out] = py[j] + t * (py[nx] - py[j])
                        # leaving the half-plane: the edge from here runs along the
                        # clip line; entering: along the edge being clipped
                        ql[out] = o if inside else pl[j]
                        out += 1
                size = out if out >= 3 else 0
                for j in range(size):
                    px[j] = qx[j]
                    py[j] = qy[j]
                    pl[j] = ql[j]
            if size < 3:
                continue
            if m == cap:
                cap *= 2
                cell_face = np.concatenate((cell_face, np.empty(cap - m, dtype=np.int64)))
                cell_class = np.concatenate((cell_class, np.empty(cap - m, dtype=np.int64)))
                start = np.concatenate((start, np.zeros(cap - m, dtype=np.int64)))
            at = start[m]
            while at + size > cap_pts:
                cap_pts *= 2
                pts = np.concatenate((pts, np.empty((cap_pts - pts.shape[0], 2))))
                labels = np.concatenate((labels, np.empty(cap_pts - labels.shape[0],
                                                          dtype=np.int64)))
            for j in range(size):
                pts[at + j, 0] = px[j]
                pts[at + j, 1] = py[j]
                labels[at + j] = pl[j]
            cell_face[m] = f
            cell_class[m] = c
            start[m + 1] = at + size
            m += 1
    return cell_face[:m], cell_class[:m], start[: m + 1], pts[: start[m]], labels[: start[m]]


@numba.njit(cache=True)
def edge_layers(bits, f1, f2, ends, out):
    """For each edge with two faces: the first layer (byte ranges ending at
    ``ends``) where the faces' packed codes differ; ``len(ends)`` if none does;
    -1 for an edge on the domain boundary (``f2 < 0``)."""
    for e in range(out.shape[0]):
        if f2[e] < 0:
            out[e] = -1
            continue
        a = f1[e]
        b = f2[e]
        layer = ends.shape[0]
        start = 0
        for k in range(ends.shape[0]):
            for j in range(start, ends[k]):
                if bits[a, j] != bits[b, j]:
                    layer = k
                    break
            if layer < ends.shape[0]:
                break
            start = ends[k]
        out[e] = layer


@numba.njit(cache=True)
def edge_table(faces, sizes, nv, support):
    """Number the undirected edges of faces ``0 .. len(sizes)`` in order of their
    keys ``lo * nv + hi``: writes each face slot's edge id (edge from vertex ``j``
    to ``j + 1``) into ``support`` (-1 past the face's size) and returns the keys
    (E,), sorted, and the edges' faces (E, 2): the lowest and highest face using
    the edge (-1 when only one does). Buckets by lower end vertex, no hashing."""
    width = support.shape[1]
    start = np.zeros(nv + 1, dtype=np.int64)
    for f in range(sizes.shape[0]):
        k = sizes[f]
        for j in range(k):
            u = faces[f, j]
            v = faces[f, j + 1] if j + 1 < k else faces[f, 0]
            start[min(u, v) + 1] += 1
    for i in range(nv):
        start[i + 1] += start[i]
    total = start[nv]
    fill = start[:nv].copy()
    hi_of = np.empty(total, dtype=np.int64)
    face_of = np.empty(total, dtype=np.int64)
    slot_of = np.empty(total, dtype=np.int64)
    for f in range(sizes.shape[0]):
        k = sizes[f]
        for j in range(width):
            if j >= k:
                support[f, j] = -1
                continue
            u = faces[f, j]
            v = faces[f, j + 1] if j + 1 < k else faces[f, 0]
            p = fill[min(u, v)]
            fill[min(u, v)] += 1
            hi_of[p] = max(u, v)
            face_of[p] = f
            slot_of[p] = f * width + j
    keys = np.empty(total, dtype=np.int64)
    edge_faces = np.empty((total, 2), dtype=np.int64)
    n = 0
    for lo in range(nv):
        a = start[lo]
        b = start[lo + 1]
        for i in range(a + 1, b):  # insertion sort by (hi, face): buckets are tiny
            h, fc, sl = hi_of[i], face_of[i], slot_of[i]
            q = i - 1
            while q >= a and (hi_of[q] > h or (hi_of[q] == h and face_of[q] > fc)):
                hi_of[q + 1], face_of[q + 1], slot_of[q + 1] = hi_of[q], face_of[q], slot_of[q]
                q -= 1
            hi_of[q + 1], face_of[q + 1], slot_of[q + 1] = h, fc, sl
        i = a
        while i < b:
            j = i + 1
            while j < b and hi_of[j] == hi_of[i]:
                j += 1
            keys[n] = lo * nv + hi_of[i]
            edge_faces[n, 0] = face_of[i]
            edge_faces[n, 1] = face_of[j - 1] if face_of[j - 1] != face_of[i] else -1
            for q in range(i, j):
                support[slot_of[q] // width, slot_of[q] % width] = n
            n += 1
            i = j
    return keys[:n], edge_faces[:n]


@numba.njit(cache=True)
def crossing_lines(faces, sizes, above, below, n_lines):
    """(face, line) pairs where the line crosses the face (some vertex strictly
    above it, some strictly below), sorted by face then line."""
    words = above.shape[1]
    up = np.empty(words, dtype=np.int64)
    down = np.empty(words, dtype=np.int64)
    cap = 1024
    face_out = np.empty(cap, dtype=np.int64)
    line_out = np.empty(cap, dtype=np.int64)
    m = 0
    for f in range(sizes.shape[0]):
        v = faces[f, 0]
        for w in range(words):
            up[w] = above[v, w]
            down[w] = below[v, w]
        for j in range(1, sizes[f]):
            v = faces[f, j]
            for w in range(words):
                up[w] |= above[v, w]
                down[w] |= below[v, w]
        for w in range(words):
            both = np.uint64(up[w] & down[w])
            while both != 0:
                low = both & (~both + np.uint64(1))  # lowest set bit
                both ^= low
                b = 0
                while low > 1:
                    low >>= np.uint64(1)
                    b += 1
                li = w * 64 + b
                if li >= n_lines:
                    continue
                if m == cap:
                    cap *= 2
                    face_out = np.concatenate((face_out, np.empty(cap - m, dtype=np.int64)))
                    line_out = np.concatenate((line_out, np.empty(cap - m, dtype=np.int64)))
                face_out[m] = f
                line_out[m] = li
                m += 1
    return face_out[:m], line_out[:m]


@numba.njit(cache=True)
def window_dominated(faces, sizes, origin_layer, vals, window, cols, unit_tol, near, top,
                     out):
    """Max-pooling: ``out[L, j, a]`` (int8, all 1 on entry) is cleared where entry
    ``a`` of window ``j`` is not dominated in some face of layer-start face ``L``:
    no valid entry ``c`` exceeds it by more than ``unit_tol[j]`` at every vertex
    of the face. Entry ``a`` of window ``j`` is value column ``cols[j, a]``;
    padding entries (``window`` False) stay dominated.

    Decided from the vertices' bits (:func:`window_bits`) where they tell: an
    entry within the tolerance of the maximum at some vertex is not dominated;
    one that never is, in a window whose maximum is the same entry at every
    vertex, is (by that entry, by more than the tolerance everywhere). Otherwise
    the entries are compared at every vertex."""
    k, r = window.shape
    words = near.shape[1]
    any_near = np.empty(words, dtype=np.int64)
    all_top = np.empty(words, dtype=np.int64)
    for f in range(sizes.shape[0]):
        lay = origin_layer[f]
        n = sizes[f]
        for w in range(words):
            any_near[w] = 0
            all_top[w] = -1
        for q in range(n):
            v = faces[f, q]
            for w in range(words):
                any_near[w] |= near[v, w]
                all_top[w] &= top[v, w]
        for j in range(k):
            one_top = False
            for c in range(r):
                bit = j * r + c
                if (all_top[bit >> 6] >> np.int64(bit & 63)) & 1:
                    one_top = True
            for a in range(r):
                if not window[j, a] or out[lay, j, a] == 0:
                    continue
                bit = j * r + a
                if (any_near[bit >> 6] >> np.int64(bit & 63)) & 1:
                    out[lay, j, a] = 0
                    continue
                if one_top:
                    continue
                dominated = False
                for c in range(r):
                    if c == a or not window[j, c]:
                        continue
                    every = True
                    ca = cols[j, a]
                    cc = cols[j, c]
                    for q in range(n):
                        v = faces[f, q]
                        if not vals[v, cc] - vals[v, ca] > unit_tol[j]:
                            every = False
                            break
                    if every:
                        dominated = True
                        break
                if not dominated:
                    out[lay, j, a] = 0


@numba.njit(cache=True)
def window_bits(vals, window, cols, unit_tol, near, top):
    """Max-pooling, per vertex (row of ``vals``), packed bits (bit ``j * R + a``,
    for the first ``k`` windows with ``words * 64 >= k * R``) of the valid entries
    of window ``j`` (value column ``cols[j, a]``): ``near``, within
    ``unit_tol[j]`` of the window's maximum; ``top`` (unless it has no columns),
    equal to it."""
    k, r = window.shape
    k = min(k, near.shape[1] * 64 // r)
    words = near.shape[1]
    want_top = top.shape[1] > 0
    x = np.empty(r)
    near_row = np.empty(words, dtype=np.int64)  # bits set in cache, rows written once
    top_row = np.empty(words, dtype=np.int64)
    for v in range(near.shape[0]):
        near_row[:] = 0
        top_row[:] = 0
        for j in range(k):
            peak = -np.inf
            for c in range(r):
                x[c] = vals[v, cols[j, c]] if window[j, c] else -np.inf
                peak = max(peak, x[c])
            lim = peak - unit_tol[j]
            for a in range(r):
                bit = j * r + a
                shift = np.int64(bit & 63)
                near_row[bit >> 6] |= np.int64(x[a] >= lim) << shift
                top_row[bit >> 6] |= np.int64(x[a] == peak) << shift
        for w in range(words):
            near[v, w] = near_row[w]
            if want_top:
                top[v, w] = top_row[w]


@numba.njit(cache=True, nogil=True)
def window_max(x, table, padded, out):
    """Max-pooling by window tables: ``out[n, j]`` the largest ``x[n, table[j, a]]``
    over the entries ``a`` of window ``j`` (``padded``: some are -1, padding,
    skipped; every window has a valid entry), the first of equal maxima, NaN
    propagated, as ``F.max_poolNd`` (whose float64 path is several times slower)."""
    k, r = table.shape
    for n in range(x.shape[0]):
        for j in range(k):
            if padded:
                peak = np.nan
                first = True
                for a in range(r):
                    t = table[j, a]
                    if t >= 0:
                        v = x[n, t]
                        if first or v > peak or v != v:
                            peak = v
                            if v != v:
                                break
                        first = False
            else:
                peak = x[n, table[j, 0]]
                for a in range(1, r):
                    v = x[n, table[j, a]]
                    if v > peak or v != v:
                        peak = v
            out[n, j] = peak


@numba.njit(cache=True, inline="always")
def _valid_bits(n_lines, w):
    """Mask of the bits of word ``w`` that are lines (< ``n_lines``)."""
    rem = n_lines - 64 * w
    if rem >= 64:
        return np.int64(-1)
    if rem <= 0:
        return np.int64(0)
    return np.int64((np.uint64(1) << np.uint64(rem)) - np.uint64(1))


@numba.njit(cache=True, inline="always")
def _low_bit(word):
    """Index of the lowest set bit of a nonzero uint64 (log2 of a power of two is
    exact in float64)."""
    return int(np.log2(np.float64(word & (~word + np.uint64(1)))))


@numba.njit(cache=True)
def vertex_creators(hkeys, hids, n_key, chord_base, leg):
    """Rows ``leg[v] = (i, j)``: the identities of the lines vertex ``v`` was made
    on, from the cut loop's key table (key ``support * n_key + ident``): ``i`` the
    line that cut, ``j`` that of the chord it cut (-1 for an edge of the layer's
    start). Rows of vertices not in the table are left as they are."""
    for h in range(hkeys.shape[0]):
        key = hkeys[h]
        if key < 0:
            continue
        v = hids[h]
        sup = key // n_key
        leg[v, 0] = key - sup * n_key
        leg[v, 1] = (sup - chord_base) % n_key if sup >= chord_base else -1


@numba.njit(cache=True)
def face_lines(faces, sizes, vals, pos, neg, level, tol, above, below, n_lines, ident,
               owner, leg, leg_owner, origin_layer, possible, ea, eb, floor, all_on,
               signs, face_flag, vertex_flag):
    """What the faces are after a layer's cuts, from the vertices' side bits.

    ``signs`` (rows: faces, packed like the side bits; skipped when it has no
    rows): bit ``l`` set iff line ``l``'s function is positive at the face's
    vertex mean (its interior point). A face lies on one side of every line up to
    the tolerance: where each vertex is strictly off the line or was made on it
    (value ~0), the side of the others decides; otherwise (a vertex within the
    tolerance that the line was not made on, or all vertices within it) the mean
    of the vertex values (the value at the vertex mean: the function is affine on
    the face), a mean within ``tol / 8`` of zero counting as zero (the lower
    piece), so a face thinner than the tolerance still gets its interior's code.

    ``face_flag`` / ``vertex_flag``: where the face may hold a sliver thinner than
    the tolerance: a vertex is within line ``l``'s tolerance although ``l`` was
    not made on it, and beyond rounding (``floor * tol[l]``) on the *other* side
    from the face's vertices that are strictly off ``l`` (``l`` was taken to run
    through that vertex although it crosses the face near it), or (``all_on``) on
    either side when every vertex is within the tolerance. Line ``l`` is *made* on
    vertex ``v`` when ``ident[l]`` is one of ``leg[v]`` (:func:`vertex_creators`),
    or ``owner[l]`` one of ``leg_owner[v]`` (the same max-pool window).
    ``possible`` (layer faces, entries; empty: all): max-pool pairs ``ea[l]``,
    ``eb[l]`` count only where both entries can be maximal. A vertex that two or
    more lines not made on it pass within the tolerance of is flagged too (three
    lines meet there: exactly, or around regions below rounding)."""
    words = above.shape[1]
    up = np.empty(words, dtype=np.int64)
    down = np.empty(words, dtype=np.int64)
    mean = np.empty(words, dtype=np.int64)
    filtered = possible.shape[0] > 0
    paired = pos.shape[0] > 0 and neg[0] >= 0
    want = signs.shape[0] > 0
    for f in range(sizes.shape[0]):
        n = sizes[f]
        for w in range(words):
            up[w] = 0
            down[w] = 0
            mean[w] = 0
        for j in range(n):
            v = faces[f, j]
            for w in range(words):
                up[w] |= above[v, w]
                down[w] |= below[v, w]
        for j in range(n):
            v = faces[f, j]
            others = 0  # lines through v that were not made on it
            for w in range(words):
                off = up[w] | down[w]
                on = ~(above[v, w] | below[v, w]) & _valid_bits(n_lines, w)
                if not all_on:
                    on &= off
                todo = np.uint64(on)
                while todo != 0:
                    b = _low_bit(todo)
                    todo &= todo - np.uint64(1)
                    li = w * 64 + b
                    bit = np.int64(1) << np.int64(b)
                    idl = ident[li]
                    own = owner[li]
                    if (idl == leg[v, 0] or idl == leg[v, 1] or own == leg_owner[v, 0]
                            or own == leg_owner[v, 1]):
                        if not off & bit:
                            mean[w] |= bit
                        continue
                    mean[w] |= bit
                    if filtered:
                        lay = origin_layer[f]
                        if possible[lay, ea[li]] == 0 or possible[lay, eb[li]] == 0:
                            continue
                    others += 1
                    x = vals[v, pos[li]] - level[li]
                    if paired:
                        x -= vals[v, neg[li]]
                    if off & bit:
                        x = -x if up[w] & bit else x
                    else:
                        x = abs(x)
                    if x > floor * tol[li]:
                        face_flag[f] = 1
                        vertex_flag[v] = 1
            if others >= 2 and not filtered:
                # three or more lines meet at v within the tolerance (counting the one
                # it was made on): exactly (e.g. a bias-free net), or around regions
                # below rounding itself; a window there tells (no face flagged). Not
                # for max-pool ties: an entry ties every dead (zero) entry of its
                # window exactly where it dies
                vertex_flag[v] = 1
        if not want:
            continue
        for w in range(words):
            bits = up[w] & ~mean[w]
            todo = np.uint64(mean[w])
            while todo != 0:
                b = _low_bit(todo)
                todo &= todo - np.uint64(1)
                li = w * 64 + b
                acc = 0.0
                for j in range(n):
                    v = faces[f, j]
                    x = vals[v, pos[li]] - level[li]
                    if paired:
                        x -= vals[v, neg[li]]
                    acc += x
                if acc > n * tol[li] * 0.125:
                    bits |= np.int64(1) << np.int64(b)
            signs[f, w] = bits


@numba.njit(cache=True)
def window_codes(faces, sizes, vals, window, cols, unit_tol, near, code):
    """Max-pooling: ``code[f, j]``, the entry of window ``j`` that is maximal at face
    ``f``'s vertex mean (its interior point; the first of equal maxima). Where one
    entry is within the tolerance of the maximum at the face's vertices (``near``
    bits, :func:`window_bits`), it is the maximum everywhere on the face; where
    several are, the entries' means over the vertices (their values at the vertex
    mean) decide, means within ``unit_tol[j] / 8`` of the largest counting as equal
    (rounding), and the first of those is chosen."""
    k, r = window.shape
    words = near.shape[1]
    seen = np.empty(words, dtype=np.int64)
    for f in range(code.shape[0]):
        n = sizes[f]
        for w in range(words):
            seen[w] = 0
        for j in range(n):
            v = faces[f, j]
            for w in range(words):
                seen[w] |= near[v, w]
        for jw in range(k):
            count = 0
            chosen = 0
            for a in range(r):
                bit = jw * r + a
                if (seen[bit >> 6] >> np.int64(bit & 63)) & 1:
                    if count == 0:
                        chosen = a
                    count += 1
            if count > 1:
                best = -np.inf
                for a in range(r):
                    if window[jw, a]:
                        acc = 0.0
                        col = cols[jw, a]
                        for j in range(n):
                            acc += vals[faces[f, j], col]
                        best = max(best, acc)
                tie = best - n * unit_tol[jw] * 0.125
                for a in range(r):
                    if window[jw, a]:
                        acc = 0.0
                        col = cols[jw, a]
                        for j in range(n):
                            acc += vals[faces[f, j], col]
                        if acc >= tie:
                            chosen = a
                            break
            code[f, jw] = chosen

"""Compiled loops over a face lattice (numba), behind :mod:`maxaffine.partition.lattice`:
one pass over a level's incidence lists instead of a dozen array passes. Imported
(and compiled, cached on disk) on first use.

A level ``k`` of the lattice lists each face's facets (faces of level ``k - 1``) as
rows ``idx[beg[f]:end[f]]`` of a buffer with room to grow (CSR ``idx[ptr[f]:ptr[f +
1]]`` for the consistency checks); level 0 are the vertices. A cut by a hyperplane
reads, per face, whether it has a vertex strictly on the positive side and one
strictly on the negative side; faces with both are cut. A cut face's positive part
is rewritten in its own row when it fits (else appended), its negative part and
section are appended; the other rows are not touched, so a cut costs what it cuts,
not what the lattice holds.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def conflicts(ptr, idx, pos, neg, pos_lo, neg_lo, ptr_lo, idx_lo, pos_lo2, neg_lo2,
              bad_lo, bad_lo2):
    """Marks where snapping values within the tolerance to zero left sides that no
    hyperplane has: a cut face with a facet entirely on the hyperplane (``bad_lo``),
    or a ridge on the hyperplane that is not in exactly one positive-side and one
    negative-side facet of the cut face (``bad_lo2``). Returns how many."""
    found = 0
    cap = 16
    buf_p = np.empty(cap, dtype=np.int64)
    buf_n = np.empty(cap, dtype=np.int64)
    for f in range(ptr.shape[0] - 1):
        if not (pos[f] and neg[f]):
            continue
        n_p = 0
        n_n = 0
        for j in range(ptr[f], ptr[f + 1]):
            g = idx[j]
            gp, gn = pos_lo[g], neg_lo[g]
            if gp and gn:
                continue
            if not gp and not gn:
                bad_lo[g] = True
                found += 1
                continue
            for i in range(ptr_lo[g], ptr_lo[g + 1]):
                e = idx_lo[i]
                if pos_lo2[e] or neg_lo2[e]:
                    continue
                if n_p + n_n + 2 > cap:
                    cap *= 2
                    nb = np.empty(cap, dtype=np.int64)
                    nb[:n_p] = buf_p[:n_p]
                    buf_p = nb
                    nb = np.empty(cap, dtype=np.int64)
                    nb[:n_n] = buf_n[:n_n]
                    buf_n = nb
                if gp:
                    buf_p[n_p] = e
                    n_p += 1
                else:
                    buf_n[n_n] = e
                    n_n += 1
        if n_p == 0 and n_n == 0:
            continue
        a = np.sort(buf_p[:n_p])
        b = np.sort(buf_n[:n_n])
        # each ridge once on each side: equal sorted lists without repeats
        ok = n_p == n_n
        if ok:
            for i in range(n_p):
                if a[i] != b[i] or (i and a[i] == a[i - 1]):
                    ok = False
                    break
        if not ok:
            for i in range(n_p):
                bad_lo2[a[i]] = True
            for i in range(n_n):
                bad_lo2[b[i]] = True
            found += 1
    return found


@numba.njit(cache=True)
def spread_down(ptr, idx, flag, flag_lo):
    """Marks the facets of every marked face."""
    for f in range(ptr.shape[0] - 1):
        if flag[f]:
            for j in range(ptr[f], ptr[f + 1]):
                flag_lo[idx[j]] = True


@numba.njit(cache=True)
def cut_bounds(cut, beg, end, idx, beg_lo, end_lo):
    """Upper bounds of the entries a cut appends: (to this level, to level k-1)."""
    here = 0
    lower = 0
    for f in cut:
        deg = end[f] - beg[f]
        here += 2 * deg + 2
        for j in range(beg[f], end[f]):
            g = idx[j]
            lower += max(1, end_lo[g] - beg_lo[g])
    return here, lower


@numba.njit(cache=True)
def vertex_bits(vals, tol, start, stop, bits):
    words = bits.shape[1]
    for v in range(start, stop):
        for w in range(words):
            bits[0, w, v] = 0
            bits[1, w, v] = 0
            bits[2, w, v] = 0
        for j in range(vals.shape[1]):
            x = vals[v, j]
            w = j >> 6
            m = np.uint64(1) << np.uint64(j & 63)
            if x > tol[j]:
                bits[0, w, v] |= m
            elif x < -tol[j]:
                bits[1, w, v] |= m
            else:
                bits[2, w, v] |= m


@numba.njit(cache=True)
def face_bits(faces, beg, end, idx, bits_lo, bits):
    words = bits.shape[1]
    for f in faces:
        for w in range(words):
            p = np.uint64(0)
            q = np.uint64(0)
            z = np.uint64(0)
            for t in range(beg[f], end[f]):
                g = idx[t]
                p |= bits_lo[0, w, g]
                q |= bits_lo[1, w, g]
                z |= bits_lo[2, w, g]
            bits[0, w, f] = p
            bits[1, w, f] = q
            bits[2, w, f] = z


@numba.njit(cache=True)
def with_bits(bits, n, w, m, a, b):
    """The faces among the first ``n`` with bit ``m`` of word ``w`` set in both
    bitsets ``a`` and ``b`` (0: P, 1: N, 2: Z)."""
    count = 0
    for f in range(n):
        if (bits[a, w, f] & m) and (bits[b, w, f] & m):
            count += 1
    out = np.empty(count, dtype=np.int64)
    count = 0
    for f in range(n):
        if (bits[a, w, f] & m) and (bits[b, w, f] & m):
            out[count] = f
            count += 1
    return out


@numba.njit(cache=True)
def cut_rows_bits(cut, n, beg, end, idx, used, bits_lo, bits_lo2, w, m, minus_lo, zero_lo,
                  beg_lo, end_lo, idx_lo, n_lo, used_lo, with_sections, minus, zero):
    """Cut the faces ``cut`` (each with vertices strictly on both sides of the line:
    bit ``m`` of word ``w`` set in both its P and N bitsets). A cut face ``F`` keeps its
    id for its positive part ``F+``, its negative part ``F-`` is appended (id ``n + i``)
    and its section ``F0`` (a face of level k-1, id ``n_lo + i``) too, written only
    ``with_sections`` (level 1: the sections are the new vertices):

    - ``F+``: the positive parts of its cut facets (their ids), its uncut facets on
      the positive side, and ``F0``; ``F-`` likewise with the facets' negative parts
      (``minus_lo``) and negative-side facets;
    - ``F0``: the sections of its cut facets (``zero_lo``) and its ridges on the line
      (taken from its positive-side facets: each such ridge is in exactly one of them,
      :func:`conflicts`).

    The facets' sides are read from their bits before the cut. ``F+`` is rewritten in
    its own row when it fits, else appended. Returns (used, used_lo, freed): the
    buffers' new fill and the entries of rows that moved (garbage)."""
    freed = 0
    for i in range(cut.shape[0]):
        f = cut[i]
        mi = n + i
        z = n_lo + i
        minus[f] = mi
        zero[f] = z
        b0 = beg[f]
        e0 = end[f]
        if with_sections:
            beg_lo[z] = used_lo
            for j in range(b0, e0):
                g = idx[j]
                gp = (bits_lo[0, w, g] & m) != 0
                gn = (bits_lo[1, w, g] & m) != 0
                if gp and gn:
                    idx_lo[used_lo] = zero_lo[g]
                    used_lo += 1
                elif gp:
                    for t in range(beg_lo[g], end_lo[g]):
                        e = idx_lo[t]
                        if not ((bits_lo2[0, w, e] & m) or (bits_lo2[1, w, e] & m)):
                            idx_lo[used_lo] = e
                            used_lo += 1
            end_lo[z] = used_lo
        beg[mi] = used
        for j in range(b0, e0):
            g = idx[j]
            gp = (bits_lo[0, w, g] & m) != 0
            gn = (bits_lo[1, w, g] & m) != 0
            if gp and gn:
                idx[used] = minus_lo[g]
                used += 1
            elif gn:
                idx[used] = g
                used += 1
        idx[used] = z
        used += 1
        end[mi] = used
        start = used
        for j in range(b0, e0):
            g = idx[j]
            if bits_lo[0, w, g] & m:
                idx[used] = g
                used += 1
        idx[used] = z
        used += 1
        size = used - start
        if size <= e0 - b0:
            for t in range(size):
                idx[b0 + t] = idx[start + t]
            end[f] = b0 + size
            freed += (e0 - b0) - size
            used = start
        else:
            beg[f] = start
            end[f] = used
            freed += e0 - b0
    return used, used_lo, freed


@numba.njit(cache=True)
def rows_in_order(beg, end, idx, n):
    """The first ``n`` rows, in face order, as CSR ``(ptr, entries)``."""
    ptr = np.empty(n + 1, dtype=np.int64)
    ptr[0] = 0
    for f in range(n):
        ptr[f + 1] = ptr[f] + end[f] - beg[f]
    out = np.empty(ptr[n], dtype=idx.dtype)
    for f in range(n):
        at = ptr[f]
        for t in range(beg[f], end[f]):
            out[at] = idx[t]
            at += 1
    return ptr, out

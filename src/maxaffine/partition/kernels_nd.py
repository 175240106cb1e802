"""Compiled loops over a face lattice (numba), behind :mod:`maxaffine.partition.lattice`:
one pass over a level's incidence lists instead of a dozen array passes. Imported
(and compiled, cached on disk) on first use.

A level ``k`` of the lattice is a CSR list: face ``f``'s facets (faces of level
``k - 1``) are ``idx[ptr[f]:ptr[f + 1]]``; level 0 are the vertices. A cut by a
hyperplane reads, per face, whether it has a vertex strictly on the positive side
(``pos``) and one strictly on the negative side (``neg``); faces with both are cut.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def sides(ptr, idx, pos_lo, neg_lo, pos, neg):
    """A face has a positive (negative) vertex iff one of its facets has."""
    for f in range(ptr.shape[0] - 1):
        p = False
        n = False
        for j in range(ptr[f], ptr[f + 1]):
            g = idx[j]
            p = p or pos_lo[g]
            n = n or neg_lo[g]
        pos[f] = p
        neg[f] = n


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
def cut_level(ptr, idx, pos, neg, pos_lo, neg_lo, minus_lo, zero_lo, ptr_lo, idx_lo,
              pos_lo2, neg_lo2, n_lo_new):
    """Cut level ``k`` by the hyperplane. A cut face ``F`` keeps its id for its
    positive part ``F+``, its negative part ``F-`` is appended, and its section
    ``F0`` (a face of level ``k - 1``, id ``n_lo_new + rank``) is returned as a new
    row of level ``k - 1``:

    - ``F+``: the positive parts of its cut facets (their ids), its uncut facets on
      the positive side, and ``F0``; ``F-`` likewise with the facets' negative parts
      (``minus_lo``);
    - ``F0``: the sections of its cut facets (``zero_lo``) and its ridges that lie on
      the hyperplane (taken from its positive-side facets: each such ridge is in
      exactly one of those, :func:`conflicts`).

    Returns ``(new_ptr, new_idx, minus, zero, f0_ptr, f0_idx)``: the level's new CSR
    (old faces then the appended ``F-``), each old face's ``F-`` and ``F0`` ids (-1
    when uncut) and the new rows of level ``k - 1``.
    """
    n = ptr.shape[0] - 1
    minus = np.full(n, -1, dtype=np.int64)
    zero = np.full(n, -1, dtype=np.int64)
    # sizes
    n_cut = 0
    new_nnz = 0
    f0_nnz = 0
    for f in range(n):
        deg = ptr[f + 1] - ptr[f]
        if not (pos[f] and neg[f]):
            new_nnz += deg
            continue
        minus[f] = n + n_cut
        zero[f] = n_lo_new + n_cut
        n_cut += 1
        n_plus = 1
        n_minus = 1
        for j in range(ptr[f], ptr[f + 1]):
            g = idx[j]
            if pos_lo[g] and neg_lo[g]:
                n_plus += 1
                n_minus += 1
                f0_nnz += 1
            elif pos_lo[g]:
                n_plus += 1
                for i in range(ptr_lo[g], ptr_lo[g + 1]):
                    e = idx_lo[i]
                    if not (pos_lo2[e] or neg_lo2[e]):
                        f0_nnz += 1
            else:
                n_minus += 1
        new_nnz += n_plus + n_minus
    new_ptr = np.empty(n + n_cut + 1, dtype=np.int64)
    new_idx = np.empty(new_nnz, dtype=np.int64)
    f0_ptr = np.empty(n_cut + 1, dtype=np.int64)
    f0_idx = np.empty(f0_nnz, dtype=np.int64)
    # the negative parts go after all old rows: write them in a second sweep
    at = 0
    z = 0
    f0_ptr[0] = 0
    for f in range(n):
        new_ptr[f] = at
        if not (pos[f] and neg[f]):
            for j in range(ptr[f], ptr[f + 1]):
                new_idx[at] = idx[j]
                at += 1
            continue
        for j in range(ptr[f], ptr[f + 1]):
            g = idx[j]
            if pos_lo[g]:  # cut (its positive part keeps the id) or positive side
                new_idx[at] = g
                at += 1
            if pos_lo[g] and neg_lo[g]:
                f0_idx[z] = zero_lo[g]
                z += 1
            elif pos_lo[g]:
                for i in range(ptr_lo[g], ptr_lo[g + 1]):
                    e = idx_lo[i]
                    if not (pos_lo2[e] or neg_lo2[e]):
                        f0_idx[z] = e
                        z += 1
        new_idx[at] = zero[f]
        at += 1
        f0_ptr[minus[f] - n + 1] = z
    for f in range(n):
        if minus[f] < 0:
            continue
        new_ptr[minus[f]] = at
        for j in range(ptr[f], ptr[f + 1]):
            g = idx[j]
            if pos_lo[g] and neg_lo[g]:
                new_idx[at] = minus_lo[g]
                at += 1
            elif neg_lo[g]:
                new_idx[at] = g
                at += 1
        new_idx[at] = zero[f]
        at += 1
    new_ptr[n + n_cut] = at
    return new_ptr, new_idx, minus, zero, f0_ptr, f0_idx


@numba.njit(cache=True)
def spread_down(ptr, idx, flag, flag_lo):
    """Marks the facets of every marked face."""
    for f in range(ptr.shape[0] - 1):
        if flag[f]:
            for j in range(ptr[f], ptr[f + 1]):
                flag_lo[idx[j]] = True


# ------------------------------------------------------- rows updated in place
# The same cut on levels stored as rows ``idx[beg[f]:end[f]]`` in a buffer with
# room to grow: a cut face's positive part is rewritten in its own row when it
# fits (else appended), its negative part and section are appended; the other
# rows are not touched, so a cut costs what it cuts, not what the lattice holds.


@numba.njit(cache=True)
def sides_rows(beg, end, idx, n, pos_lo, neg_lo, pos, neg):
    for f in range(n):
        p = False
        q = False
        for j in range(beg[f], end[f]):
            g = idx[j]
            p = p or pos_lo[g]
            q = q or neg_lo[g]
        pos[f] = p
        neg[f] = q


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
def cut_rows(cut, n, beg, end, idx, used, pos_lo, neg_lo, minus_lo, zero_lo, beg_lo,
             end_lo, idx_lo, pos_lo2, neg_lo2, n_lo, used_lo, with_sections, minus, zero):
    """Cut the faces ``cut`` (their parts and sections as in :func:`cut_level`);
    ``minus[f]`` / ``zero[f]`` get each cut face's negative part (id ``n + i``) and
    section (id ``n_lo + i`` of level k-1, written only ``with_sections``).
    Returns (used, used_lo, freed): the buffers' new fill and the entries of rows
    that moved (garbage)."""
    freed = 0
    for i in range(cut.shape[0]):
        f = cut[i]
        m = n + i
        z = n_lo + i
        minus[f] = m
        zero[f] = z
        b0 = beg[f]
        e0 = end[f]
        # the section (level k-1)
        if with_sections:
            beg_lo[z] = used_lo
            for j in range(b0, e0):
                g = idx[j]
                if pos_lo[g] and neg_lo[g]:
                    idx_lo[used_lo] = zero_lo[g]
                    used_lo += 1
                elif pos_lo[g]:
                    for t in range(beg_lo[g], end_lo[g]):
                        e = idx_lo[t]
                        if not (pos_lo2[e] or neg_lo2[e]):
                            idx_lo[used_lo] = e
                            used_lo += 1
            end_lo[z] = used_lo
        # the negative part: appended
        beg[m] = used
        for j in range(b0, e0):
            g = idx[j]
            if pos_lo[g] and neg_lo[g]:
                idx[used] = minus_lo[g]
                used += 1
            elif neg_lo[g]:
                idx[used] = g
                used += 1
        idx[used] = z
        used += 1
        end[m] = used
        # the positive part: written after the buffer's end, moved into its own row
        # when it fits there
        start = used
        for j in range(b0, e0):
            g = idx[j]
            if pos_lo[g]:
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


# ------------------------------------------------ per-face sign bits of a layer
# For the lines of one layer, every face keeps three bitsets (W words each): a
# vertex strictly positive (P), strictly negative (N), within the tolerance (Z)
# of each line. They are exact for every face at all times (a cut refreshes the
# faces it makes), so a line's cut faces are read off two bits instead of a pass
# over the lattice.


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
    """:func:`cut_rows` with the facets' sides read from their bits (before the cut)."""
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

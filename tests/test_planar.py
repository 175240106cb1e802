"""The planar helpers behind partition_plane (packed bits, the compiled side bits,
crossings, reductions and edge tables), against plain loops."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maxaffine.partition.mesh import Mesh, unpack_bits


def pack_bits(b):
    """Plain reference packing: bools (N, K) -> int64 words, bit i in word i // 64."""
    n, k = b.shape
    if n == 0 or k == 0:
        return torch.zeros((n, (k + 63) // 64), dtype=torch.int64)
    by = np.packbits(b.numpy(), axis=1, bitorder="little")
    by = np.concatenate([by, np.zeros((n, 8 * ((k + 63) // 64) - by.shape[1]), np.uint8)], 1)
    return torch.from_numpy(np.ascontiguousarray(by)).view(torch.int64)


@settings(max_examples=40)
@given(rows=st.integers(0, 9), cols=st.integers(0, 200), seed=st.integers(0, 100))
def test_packed_bits_round_trip(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    b = torch.rand((rows, cols), generator=g) < 0.3
    words = pack_bits(b)
    assert words.shape == (rows, (cols + 63) // 64) and words.dtype == torch.int64
    assert torch.equal(unpack_bits(words, cols), b)


def _cut_square(n_lines, paired, seed):
    """A unit square cut by ``n_lines`` random lines (functions of 3 value columns
    per line: a * x + b * y + c, with a second term when ``paired``)."""
    g = torch.Generator().manual_seed(seed)
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
                          dtype=torch.float64)
    mesh = Mesh(square)
    coef = torch.randn((2 * n_lines, 3), generator=g, dtype=torch.float64)
    coef[:, 2] = -(coef[:, 0] + coef[:, 1]) * torch.rand(2 * n_lines, generator=g,
                                                          dtype=torch.float64)
    mesh.set_vals(square @ coef[:, :2].T + coef[:, 2])  # affine: exact under cuts
    pos = torch.arange(n_lines)
    neg = pos + n_lines if paired else torch.full((n_lines,), -1)
    level = torch.rand(n_lines, generator=g, dtype=torch.float64) * 0.1
    tol = torch.full((n_lines,), 1e-12, dtype=torch.float64)
    mesh.begin_lines(n_lines)
    mesh.set_lines(pos, neg, level, tol, pos)
    mesh.mark()
    mesh.lockstep(torch.zeros(n_lines, dtype=torch.int64), torch.arange(n_lines))
    return mesh, pos, neg, level, tol


@settings(max_examples=25, deadline=None)
@given(n_lines=st.integers(1, 130), paired=st.booleans(), seed=st.integers(0, 1000))
def test_side_bits_crossings_and_edges_match_loops(n_lines, paired, seed):
    mesh, pos, neg, level, tol = _cut_square(n_lines, paired, seed)
    vals = mesh.vals
    value = vals[:, pos] - (vals[:, neg] if paired else 0) - level
    # the sides written at each new vertex (and at the start) equal a plain comparison
    assert torch.equal(mesh.above, pack_bits(value > tol))
    assert torch.equal(mesh.below, pack_bits(value < -tol))
    # after the cuts no line crosses any face (checked vertex by vertex), and the
    # compiled crossings agree
    fv, valid = mesh.entries(torch.arange(mesh.nf))
    for f in range(mesh.nf):
        v = value[fv[f][valid[f]]]
        assert not bool(((v > tol).any(0) & (v < -tol).any(0)).any())
    assert mesh.crossings(n_lines)[0].numel() == 0
    # edges: each undirected edge once, sorted, with the lowest and highest face
    edges, faces = mesh.edges()
    seen = {}
    for f in range(mesh.nf):
        ring = fv[f][valid[f]].tolist()
        for a, b in zip(ring, ring[1:] + ring[:1], strict=True):
            seen.setdefault((min(a, b), max(a, b)), []).append(f)
    keys = sorted(seen)
    assert [tuple(e) for e in edges.tolist()] == keys
    assert faces.tolist() == [[seen[k][0], seen[k][-1] if len(seen[k]) > 1 else -1]
                              for k in keys]
    # the cut faces tile the square
    assert abs(float(mesh.areas().sum()) - 1.0) < 1e-12
    assert bool((mesh.areas() > 0).all())


def test_crossings_before_cutting_match_loops():
    mesh = Mesh(torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
                             dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    vals = torch.randn((4, 70), generator=g, dtype=torch.float64)
    mesh.set_vals(vals)
    n = vals.shape[1]
    tol = torch.full((n,), 0.1, dtype=torch.float64)
    mesh.begin_lines(n)
    mesh.set_lines(torch.arange(n), torch.full((n,), -1), torch.zeros(n, dtype=torch.float64),
                   tol, torch.arange(n))
    face, line = mesh.crossings(n)
    expected = [li for li in range(n) if bool((vals[:, li] > 0.1).any())
                and bool((vals[:, li] < -0.1).any())]
    assert face.tolist() == [0] * len(expected) and line.tolist() == expected


def test_reductions_over_faces_match_loops():
    # a square cut into a fan of faces of different sizes
    mesh = Mesh(torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
                             dtype=torch.float64))
    vals = torch.tensor([[1.0, -2.0], [-1.0, 3.0], [2.0, 0.5], [0.5, -1.0]],
                        dtype=torch.float64)
    mesh.set_vals(vals)
    mesh.begin_lines(1)
    # the zero line of the first value column
    one = torch.zeros(1, dtype=torch.int64)
    mesh.set_lines(one, one - 1, torch.zeros(1), torch.full((1,), 1e-12), one)
    mesh.lockstep(one, one)
    assert mesh.nf == 2
    g = torch.Generator().manual_seed(0)
    data = torch.randint(-2**62, 2**62, (mesh.nv, 3), generator=g)
    fv, valid = mesh.entries(torch.arange(mesh.nf))
    for op, fn in (("or", lambda x: _fold(x, lambda a, c: a | c)),
                   ("and", lambda x: _fold(x, lambda a, c: a & c))):
        got = mesh.reduce(data, op)
        for f in range(mesh.nf):
            assert torch.equal(got[f], fn(data[fv[f][valid[f]]])), op
    # the two halves tile the square, counter-clockwise
    assert torch.allclose(mesh.areas().sum(), torch.tensor(1.0, dtype=torch.float64))
    assert bool((mesh.areas() > 0).all())


def _fold(x, fn):
    acc = x[0].clone()
    for row in x[1:]:
        acc = fn(acc, row)
    return acc


def test_prefault_helper_leaves_data_alone_and_stops():
    """The page-faulting helper of the cut loop (Linux; a no-op elsewhere): rows it
    touches keep their contents, rows before ``used`` are not touched, and stop()
    ends it (early or after it is done) without error."""
    from maxaffine.partition.mesh import _Prefault

    for halt_early in (True, False):
        buf = torch.empty((4096, 4096), dtype=torch.float64)  # 128 MiB, mostly unwritten
        buf[:10] = 7.0
        buf[3000] = 5.0
        helper = _Prefault([(buf, 10), (buf[:, :8], 10)], 4000)
        if not halt_early and helper.thread is not None:
            helper.thread.join()
        helper.stop()
        assert helper.thread is None or not helper.thread.is_alive()
        assert bool((buf[:10] == 7.0).all()) and bool((buf[3000] == 5.0).all())
    small = _Prefault([(torch.empty((8, 8)), 0)], 8)  # below the size worth a thread
    assert small.thread is None
    small.stop()

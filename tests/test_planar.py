"""The planar helpers behind partition_plane: packed bits and mesh reductions,
against plain loops."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maxaffine._planar import Mesh, pack_bits, set_bits, unpack_bits


@settings(max_examples=40)
@given(rows=st.integers(0, 9), cols=st.integers(0, 200), seed=st.integers(0, 100))
def test_packed_bits_round_trip_and_set_bits(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    b = torch.rand((rows, cols), generator=g) < 0.3
    words = pack_bits(b)
    assert words.shape == (rows, (cols + 63) // 64) and words.dtype == torch.int64
    assert torch.equal(unpack_bits(words, cols), b)
    r, i = set_bits(words, cols)
    expected = [(a, c) for a in range(rows) for c in range(cols) if b[a, c]]
    assert list(zip(r.tolist(), i.tolist(), strict=True)) == expected


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
    mesh.lockstep(one.unsqueeze(1), one, one - 1, torch.zeros(1), torch.full((1,), 1e-12), one)
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

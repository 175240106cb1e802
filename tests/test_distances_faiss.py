"""FAISS backends of the VQ distance: ``vq_distance(backend="faiss")`` equals the
built-in popcount bit for bit, ``vq_knn(index="faiss")`` returns exactly the built-in
neighbours (ties to the lower index included), ``index="faiss-ivf"`` returns exact
distances of true references with a high recall, and misuse raises named errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from maxaffine import distances
from maxaffine.distances import vq_distance, vq_knn
from maxaffine.errors import MaxAffineError, MaxAffineTypeError
from maxaffine.vq import Codes


def pooled_codes(n: int, seed: int, pieces: list[int], units: list[int], pool: int) -> Codes:
    """``n`` codes drawn from ``pool`` distinct random ones (many exact ties), each
    unit re-drawn with probability 0.2 (many near ties)."""
    gen = torch.Generator().manual_seed(seed)
    values, bits = [], []
    for r, u in zip(pieces, units, strict=True):
        base = torch.randint(0, r, (pool, u), generator=gen)
        v = base[torch.randint(0, pool, (n,), generator=gen)]
        fresh = torch.randint(0, r, (n, u), generator=gen)
        v = torch.where(torch.rand(n, u, generator=gen) < 0.2, fresh, v)
        values.append(v.to(torch.uint8))
        bits.append(1 << (max(1, (r - 1).bit_length()) - 1).bit_length())
    return Codes(tuple(f"l{i}" for i in range(len(pieces))), tuple(values), tuple(pieces),
                 tuple(bits), n)


def naive(cx: Codes, cy: Codes) -> np.ndarray:
    """(N, M) equal-weight VQ distance, one pair and one layer at a time (float64)."""
    out = np.zeros((len(cx), len(cy)))
    for a, b in zip(cx.values, cy.values, strict=True):
        fa, fb = a.flatten(1).numpy(), b.flatten(1).numpy()
        for i in range(len(cx)):
            for j in range(len(cy)):
                out[i, j] += (fa[i] != fb[j]).mean() / len(cx.values)
    return out


LAYOUT = st.lists(st.tuples(st.sampled_from([2, 3, 4, 9]),
                            st.sampled_from([1, 3, 8, 16, 24, 40, 64])), min_size=1, max_size=3)


@given(seed=st.integers(0, 10**6), n=st.integers(1, 30), m=st.integers(1, 70),
       pool=st.integers(1, 6), layout=LAYOUT, data=st.data())
def test_faiss_knn_equals_the_builtin_search(seed, n, m, pool, layout, data):
    pieces, units = [p for p, _ in layout], [u for _, u in layout]
    both = pooled_codes(n + m, seed, pieces, units, pool)
    within = data.draw(st.booleans(), "within")  # y=None: retrieval inside x, self skipped
    cx, cy = (both, None) if within else (both.select(slice(0, n)),
                                          both.select(slice(n, n + m)))
    available = len(both) - 1 if within else m
    assume(available >= 1)
    k = data.draw(st.integers(1, min(available, 25)), "k")
    layers = data.draw(st.sampled_from([None, [0], [-1]]), "layers")
    block = data.draw(st.integers(1, 40), "queries_per_block")
    weights = data.draw(st.sampled_from([None, "random"]), "weights")
    if weights == "random":
        count = len(pieces) if layers is None else 1
        weights = (np.random.default_rng(seed).random(count) + 0.05).tolist()
    want = vq_knn(None, cx, cy, k=k, layers=layers, weights=weights,
                  queries_per_block=block)
    got = vq_knn(None, cx, cy, k=k, layers=layers, weights=weights,
                 queries_per_block=block, index="faiss")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    if layers is None and weights is None:  # both are right: against the slow reference
        ref = naive(both if within else cx, both if within else cy)
        if within:
            np.fill_diagonal(ref, np.inf)
        rows = np.arange(ref.shape[0])[:, None]
        np.testing.assert_allclose(got[0].numpy(), ref[rows, got[1].numpy()], atol=1e-6)
        kth = np.sort(ref, 1)[:, k - 1:k]
        assert (ref[rows, got[1].numpy()] <= kth + 1e-6).all()


def test_ties_beyond_the_fetched_neighbours_go_to_the_lowest_index(monkeypatch):
    """60 copies of one code (more than the search fetches beyond k): the exact FAISS
    path must complete them by a range search (not by falling back to the built-in
    search) and keep the lowest indices."""
    base = pooled_codes(20, 3, [2, 4], [16, 8], pool=20)
    idx = torch.cat([torch.arange(20), torch.zeros(60, dtype=torch.int64)])
    refs = base.select(idx[torch.randperm(80, generator=torch.Generator().manual_seed(0))])
    queries = base.select([0, 1, 2])
    cases = [(queries, refs, k) for k in (1, 5, 59, 61)] + [(refs, None, 30)]
    wants = [vq_knn(None, x, y, k=k) for x, y, k in cases]

    def no_fallback(*args, **kwargs):
        raise AssertionError("the exact FAISS path fell back to the built-in search")

    monkeypatch.setattr(distances, "_exact_block", no_fallback)
    for (x, y, k), want in zip(cases, wants, strict=True):
        got = vq_knn(None, x, y, k=k, index="faiss")  # y=None: self skipped among ties
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), k


@given(seed=st.integers(0, 10**6), n=st.integers(0, 20), m=st.integers(0, 30),
       layout=st.lists(st.tuples(st.sampled_from([2, 3, 4, 9, 17]), st.integers(1, 90)),
                       min_size=1, max_size=4),
       per_layer=st.booleans(), weighted=st.booleans())
def test_faiss_distance_equals_builtin_bit_for_bit(seed, n, m, layout, per_layer, weighted):
    pieces, units = [p for p, _ in layout], [u for _, u in layout]
    both = pooled_codes(n + m, seed, pieces, units, pool=4)
    cx, cy = both.select(slice(0, n)), both.select(slice(n, n + m))
    weights = (np.random.default_rng(seed).random(len(pieces)) + 0.05).tolist() \
        if weighted else None
    want = vq_distance(None, cx, cy, weights=weights, per_layer=per_layer)
    got = vq_distance(None, cx, cy, weights=weights, per_layer=per_layer, backend="faiss")
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    same = vq_distance(None, both, backend="faiss")  # y=None
    assert torch.equal(same, vq_distance(None, both))


def test_faiss_with_a_model_and_input_batches():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                              torch.nn.ReLU(), torch.nn.Linear(32, 3))
    x, y = torch.randn(12, 5), torch.randn(90, 5)
    for index in ("faiss", "faiss-ivf"):
        got = vq_knn(net, x, y, k=4, index=index)
        assert got[0].shape == got[1].shape == (12, 4)
    assert all(torch.equal(a, b) for a, b in zip(vq_knn(net, x, y, k=4, index="faiss"),
                                                 vq_knn(net, x, y, k=4), strict=True))
    assert torch.equal(vq_distance(net, x, y, backend="faiss"), vq_distance(net, x, y))
    empty = vq_knn(net, x[:0], y, k=2, index="faiss")
    assert empty[0].shape == (0, 2) and empty[1].dtype == torch.int64


def test_ivf_is_approximate_with_exact_distances_and_high_recall():
    """Clustered codes (40 centres, 12% of units re-drawn): the inverted file visits
    16 of its 32 lists; what it returns is a true reference at its true distance, in
    the built-in order, never the query itself, and recall@10 is high."""
    codes = pooled_codes(1200, 7, [2], [256], pool=40)
    d_ivf, i_ivf = vq_knn(None, codes, k=10, index="faiss-ivf")
    d_ex, i_ex = vq_knn(None, codes, k=10)
    assert (i_ivf != torch.arange(1200)[:, None]).all()
    full = vq_distance(None, codes)
    assert torch.equal(d_ivf, full.gather(1, i_ivf))
    order = np.lexsort((i_ivf.numpy(), d_ivf.numpy()), axis=1)  # sorted: (distance, index)
    assert (order == np.arange(10)).all()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in
                      zip(i_ivf.tolist(), i_ex.tolist(), strict=True)])
    assert recall >= 0.9, recall
    assert (d_ivf >= d_ex).all()  # never closer than the true k-th neighbours


def test_errors_name_the_argument():
    c = pooled_codes(10, 0, [2, 4], [8, 8], pool=3)
    with pytest.raises(MaxAffineError, match=r"index must be one of \('exact', 'faiss', "
                                             r"'faiss-ivf'\), got str 'hnsw'"):
        vq_knn(None, c, index="hnsw")
    with pytest.raises(MaxAffineTypeError, match="index must be one of"):
        vq_knn(None, c, index=1)
    with pytest.raises(MaxAffineError, match=r"backend must be one of \('builtin', 'faiss'\)"):
        vq_distance(None, c, backend="gpu")
    with pytest.raises(MaxAffineError, match=r"weights=\[1, 2\] were given: pass "
                                             r"index='faiss' or 'exact'"):
        vq_knn(None, c, weights=[1, 2], index="faiss-ivf")
    coprime = pooled_codes(10, 0, [2, 9, 2], [997, 991, 983], pool=3)
    with pytest.raises(MaxAffineError, match=r"cannot represent .* keep fewer layers"):
        vq_knn(None, coprime, index="faiss-ivf")
    for kw in ({"layers": [1]}, {}, {"weights": [1.0, 0.0, 2.5]}):  # exact FAISS: any
        got = vq_knn(None, coprime, k=3, index="faiss", **kw)
        want = vq_knn(None, coprime, k=3, **kw)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_layout_repeats_make_hamming_proportional_to_the_vq_distance():
    """The bit strings' Hamming distance is L alpha times the equal-weight VQ distance."""
    c = pooled_codes(30, 1, [2, 4, 9], [24, 8, 16], pool=5)
    idx = [0, 1, 2]
    layout, nbits = distances._hamming_layout(c, idx)
    bits = distances._knn_bits(c, layout, nbits)
    ham = np.unpackbits(bits[:, None] ^ bits[None], axis=-1).sum(-1)
    alpha = [s * (1 if c.bits_per_unit[i] == 1 else 2) * c.num_units[i] for i, s in layout]
    assert len(set(alpha)) == 1
    np.testing.assert_allclose(ham / (len(idx) * alpha[0]), naive(c, c), atol=1e-12)

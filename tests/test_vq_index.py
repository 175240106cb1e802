"""``vq_index``: a FAISS index built once over references and searched many times
returns what ``vq_knn`` returns with the same index (exact: the built-in neighbours,
ties included; IVF: exact distances of true references), and misuse raises named
errors."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import maxaffine as ma
from maxaffine.distances import vq_index, vq_knn
from maxaffine.errors import MaxAffineError, MaxAffineTypeError
from test_distances_faiss import naive, pooled_codes

matplotlib.use("Agg")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), units=st.integers(3, 40), pool=st.integers(2, 12),
       k=st.integers(1, 5))
def test_flat_index_equals_the_exact_search(seed, units, pool, k):
    """One ReLU-like layer (many exact ties): the exhaustive index searched in blocks
    gives the built-in exact neighbours and distances."""
    refs = pooled_codes(60, seed, [2], [units], pool)
    queries = pooled_codes(23, seed + 1, [2], [units], pool)
    queries = ma.Codes(refs.names, queries.values, refs.pieces, refs.bits_per_unit, 23)
    built = vq_index(None, refs, index="faiss")
    got = built.search(queries, k, queries_per_block=7)
    want = vq_knn(None, queries, refs, k=k, index="exact")
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


def test_ivf_index_returns_true_distances_and_reuses_its_build():
    refs = pooled_codes(2000, 3, [2, 2], [32, 16], 400)
    queries = pooled_codes(50, 4, [2, 2], [32, 16], 400)
    built = vq_index(None, refs)  # faiss-ivf, both layers
    assert built.kind == "faiss-ivf" and built.lists == round(2000 ** 0.5) and built.probes == 16
    d, i = built.search(queries, 5)
    d2, i2 = built.search(queries, 5)
    assert torch.equal(d, d2) and torch.equal(i, i2)  # no rebuild, same answers
    assert torch.equal(i, vq_knn(None, queries, refs, k=5, index="faiss-ivf")[1])
    full = naive(queries, refs)  # the slow float64 reference
    rows = np.arange(50)[:, None]
    assert np.allclose(d.numpy(), full[rows, i.numpy()], atol=1e-6)  # exact distances
    assert bool((d[:, 1:] >= d[:, :-1]).all())
    exact = vq_knn(None, queries, refs, k=5, index="exact")[0]
    assert bool((d >= exact - 1e-7).all())  # never better than the true neighbours
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 5 for a, b in
                      zip(i, vq_knn(None, queries, refs, k=5)[1], strict=True)])
    assert recall > 0.6
    assert int(built.list_sizes().sum()) == 2000


def test_index_of_a_model_searches_input_batches():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    refs, queries = torch.randn(300, 4), torch.randn(20, 4)
    built = vq_index(net, refs, index="faiss")
    got = built.search(queries, 3)
    want = vq_knn(net, queries, refs, k=3)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    empty = built.search(queries[:0], 3)
    assert empty[0].shape == (0, 3) and empty[1].shape == (0, 3)
    summary = built.summary()
    assert summary["num_references"] == 300 and summary["layers"] == ["1"]
    assert json.loads(built.to_json())["list_sizes"] == [300]
    assert built.plot() is not None


def test_bad_input_is_named():
    refs = pooled_codes(100, 0, [2, 2], [8, 12], 20)
    with pytest.raises(MaxAffineError, match="index"):
        vq_index(None, refs, index="exact")
    with pytest.raises(MaxAffineError, match="one Hamming distance"):
        vq_index(None, refs, index="faiss")  # layers of different sizes
    with pytest.raises(MaxAffineError, match="empty"):
        vq_index(None, refs.select([]))
    with pytest.raises(MaxAffineTypeError):
        vq_index(None, None)
    built = vq_index(None, refs)
    with pytest.raises(MaxAffineError, match="k"):
        built.search(refs, 101)
    other = pooled_codes(5, 1, [2], [8], 3)
    with pytest.raises(MaxAffineError, match="one model"):
        built.search(other, 1)
    with pytest.raises(MaxAffineError, match="model"):
        built.search(torch.randn(3, 4), 1)  # built from codes: no model to encode inputs

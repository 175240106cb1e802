"""VQ distance: the popcount over packed codes equals a naive per-element
comparison (every bit width, random architectures, tile boundaries), the
weighted combination, and k-nearest-neighbour retrieval."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import Tensor

import maxaffine as ma
from maxaffine.vq import Codes
from strategies import INPUT_KINDS, architectures


def naive(cx: Codes, cy: Codes, layers: list[int]) -> Tensor:
    """(L, N, M) fraction of differing units, one pair and one unit at a time."""
    out = torch.zeros(len(layers), len(cx), len(cy), dtype=torch.float64)
    for li, layer in enumerate(layers):
        a, b = cx.values[layer], cy.values[layer]
        for i in range(len(cx)):
            for j in range(len(cy)):
                ai, bj = a[i].flatten().tolist(), b[j].flatten().tolist()
                out[li, i, j] = sum(u != v for u, v in zip(ai, bj, strict=True)) / len(ai)
    return out


def random_codes(n: int, seed: int, pieces: list[int], units: list[int]) -> Codes:
    """Codes with arbitrary pieces per unit (bits 1 .. 16), including unit counts that
    fill neither a byte nor a 64-bit word."""
    gen = torch.Generator().manual_seed(seed)
    values, bits = [], []
    for r, k in zip(pieces, units, strict=True):
        v = torch.randint(0, r, (n, k), generator=gen)
        # make codes agree often, so distances are not all near (r - 1) / r
        v = torch.where(torch.rand(n, k, generator=gen) < 0.5, v[:1].expand(n, k), v)
        values.append(v.to(torch.uint8) if r <= 256 else v)
        need = max(1, (r - 1).bit_length())
        bits.append(1 << (need - 1).bit_length())
    names = tuple(f"layer{i}" for i in range(len(pieces)))
    return Codes(names, tuple(values), tuple(pieces), tuple(bits), n)


@given(seed=st.integers(0, 10**6), n=st.integers(1, 24), m=st.integers(1, 24),
       layout=st.lists(st.tuples(st.sampled_from([2, 3, 4, 9, 16, 17, 300]),
                                 st.integers(1, 100)), min_size=1, max_size=4))
def test_popcount_equals_naive_for_every_bit_width(seed: int, n: int, m: int, layout):
    pieces, units = [p for p, _ in layout], [u for _, u in layout]
    both = random_codes(n + m, seed, pieces, units)
    cx, cy = both.select(slice(0, n)), both.select(slice(n, n + m))
    layers = list(range(len(pieces)))
    ref = naive(cx, cy, layers)
    got = ma.vq_distance(None, cx, cy, per_layer=True)
    assert got.shape == ref.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=0)
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(len(layers), generator=gen, dtype=torch.float64) + 0.1
    combined = ma.vq_distance(None, cx, cy, weights=w.tolist())
    expected = (w.reshape(-1, 1, 1) * ref).sum(0) / w.sum()
    torch.testing.assert_close(combined.double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", INPUT_KINDS)
@given(data=st.data())
def test_vq_distance_of_random_architectures(kind: str, data: st.DataObject):
    arch = data.draw(architectures(kind))
    x = arch.sample(5, data.draw(st.integers(0, 999)))
    y = torch.cat([x[:2] * 1.0001, arch.sample(3, data.draw(st.integers(0, 999)))])
    graph = ma.trace(arch.model, x)
    assume(graph.layers)
    cx, cy = ma.codes(graph, x), ma.codes(graph, y)
    layers = data.draw(st.lists(st.integers(0, len(cx.names) - 1), min_size=1, unique=True))
    names = [cx.names[i] for i in layers]
    ref = naive(cx, cy, layers)
    got = ma.vq_distance(graph, x, y, layers=names, per_layer=True)
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(ma.vq_distance(graph, x, y, layers=names).double(), ref.mean(0),
                               atol=1e-6, rtol=0)
    # aligned pairs agree with Codes.hamming, and d(x, x) has a zero diagonal
    ham = cx.select(slice(0, 2)).hamming(cy.select(slice(0, 2)))
    for li, name in zip(layers, names, strict=True):
        torch.testing.assert_close(got[layers.index(li), [0, 1], [0, 1]].double(),
                                   ham[name].double(), atol=1e-6, rtol=0)
    self_d = ma.vq_distance(graph, x)
    assert torch.equal(self_d.diagonal(), torch.zeros(5))
    torch.testing.assert_close(self_d, self_d.T)


def test_tiles_and_weights_by_name():
    codes = random_codes(53, 1, [2, 4, 300], [70, 33, 5])
    ref = naive(codes, codes, [0, 1, 2])
    d = ma.vq_distance(None, codes, weights={"layer0": 1.0, "layer2": 3.0})
    torch.testing.assert_close(d.double(), (ref[0] + 3 * ref[2]) / 4, atol=1e-6, rtol=0)
    assert torch.equal(ma.vq_distance(None, codes, weights={0: 1.0, -1: 3.0}), d)
    d1 = ma.vq_distance(None, codes, layers=[1])
    torch.testing.assert_close(d1.double(), ref[1], atol=1e-6, rtol=0)


def test_knn_matches_a_stable_sort_of_the_naive_distances():
    codes = random_codes(45, 7, [2, 4], [20, 9])
    ref = naive(codes, codes, [0, 1]).mean(0)
    d, i = ma.vq_knn(None, codes, k=5, queries_per_block=7)  # retrieval within: skips itself
    masked = ref.clone()
    masked.fill_diagonal_(float("inf"))
    vals, order = torch.sort(masked, dim=1, stable=True)
    torch.testing.assert_close(d.double(), vals[:, :5], atol=1e-6, rtol=0)
    torch.testing.assert_close(d.double(), masked.gather(1, i), atol=1e-6, rtol=0)
    assert not bool((i == torch.arange(45).unsqueeze(1)).any())
    assert torch.equal(i, order[:, :5])  # float32 rounding keeps the order of exact ties
    queries, refs = codes.select(slice(0, 10)), codes.select(slice(10, 45))
    d2, i2 = ma.vq_knn(None, queries, refs, k=3)
    ref2 = ref[:10, 10:]
    assert torch.equal(i2, torch.sort(ref2, dim=1, stable=True).indices[:, :3])
    assert bool((d2[:, :1] >= 0).all())


def test_knn_retrieves_perturbed_copies():
    from maxaffine.models import mlp

    torch.manual_seed(0)
    net = mlp((8,), (32, 32), 3).eval()
    base = torch.randn(20, 8)
    near = base + 1e-4 * torch.randn(20, 8)
    _, idx = ma.vq_knn(net, near, base, k=1)
    assert torch.equal(idx[:, 0], torch.arange(20))


def test_errors_name_the_culprit():
    codes = random_codes(4, 0, [2, 2], [5, 6])
    other = random_codes(4, 0, [2], [5])
    with pytest.raises(ma.MaxAffineError, match="different models"):
        ma.vq_distance(None, codes, other)
    with pytest.raises(ma.MaxAffineError, match="weights"):
        ma.vq_distance(None, codes, weights=[1.0])
    with pytest.raises(ma.MaxAffineError, match="non-negative"):
        ma.vq_distance(None, codes, weights=[1.0, -1.0])
    with pytest.raises(ma.MaxAffineError, match="no layer 'conv': the layers are"):
        ma.vq_distance(None, codes, weights={"conv": 1.0})
    with pytest.raises(ma.MaxAffineError, match="twice"):
        ma.vq_distance(None, codes, weights={"layer0": 1.0, 0: 2.0})
    with pytest.raises(ma.MaxAffineError, match="no layer"):
        ma.vq_distance(None, codes, layers=["conv"])
    with pytest.raises(ma.MaxAffineError, match="pass the model"):
        ma.vq_distance(None, torch.zeros(3, 2))
    with pytest.raises(ma.MaxAffineError, match="only 3 references"):
        ma.vq_knn(None, codes, k=4)


@pytest.mark.slow
def test_vq_distance_experiment_runs(tmp_path):
    import argparse

    from maxaffine.experiments import experiments

    exp = experiments()["vq-distance"]
    parser = argparse.ArgumentParser()
    exp.add_arguments(parser)
    args = parser.parse_args(["--train-size", "300", "--test-size", "60", "--epochs", "1",
                              "--random-label-epochs", "1", "--queries", "2",
                              "--no-progress"])
    args.out = tmp_path
    out = exp.run(args)
    text = (out / "vq_distance.md").read_text()
    assert "| trained |" in text and "| random-labels |" in text
    assert (out / "vq_retrieval.png").exists()

"""Cost of pairwise VQ distances: popcount over packed codes vs plain torch.

The demo CNN (``small_cnn((1, 28, 28), 10, channels=(8, 16))``, one epoch on the
MNIST subset, eval mode) has four VQ layers: ReLU (6,272 units), max-pool (1,568
windows of 4), ReLU (3,136), max-pool (784 windows of 4), i.e. 1,764 bytes of
packed code per image. We compute the 5,000 x 5,000 matrix of VQ distances
(mean over layers of the fraction of differing units) for all 5,000 images:

* ``maxaffine.vq_distance``: XOR + fold + popcount on 64-bit words of the packed
  codes, in row tiles (the whole matrix);
* ``torch !=``: the straightforward comparison, ``(a[i:j, None] != b[None]).sum(-1)``
  on the unpacked codes, per layer, in chunks of rows;
* ``torch one-hot matmul``: ``1 - onehot(a) @ onehot(b).T / units`` per layer with
  BLAS (float32; exact for these counts).

* ``vq_distance(backend="faiss")``: ``faiss.hammings`` per layer (max-pool layers
  one-hot encoded), the whole matrix, checked equal to ours bit for bit.

The baselines are timed on a block of rows in the same run and scaled linearly to
5,000 rows (their cost is linear in the rows); every method's block is checked
against ours.

k-NN retrieval (``vq_knn``, k = 10) of 200 query images (the first 200 codes)
among M = 10^5 (and with ``--million`` 10^6) references: the other 4,800 real codes,
then copies of random ones with each unit's code re-drawn uniformly with
probability 0.05 (a stand-in for a large dataset of similar images: the demo CNN
runs at ~1,500 images/s, so 10^6 real codes would take 11 minutes to compute).
Indexes: the built-in exact search, FAISS ``IndexBinaryFlat`` (``index="faiss"``,
checked equal to the built-in: distances and indices) and FAISS ``IndexBinaryIVF``
(``index="faiss-ivf"``, recall@10 against the exact neighbours); each call's time
includes building its index. Cases: all four layers (the equal-weight mean; the
FAISS bit string repeats layers to weigh them: 4,704 bytes per image) and the ReLU
layer ``6`` alone (3,136 units, 392 bytes: the packed codes themselves).

One torch thread, one FAISS (OpenMP) thread. Run: ``python benchmarks/distance.py
[--million] [--queries 200] [--no-matrix]`` (writes benchmarks/results/distance.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import maxaffine as ma
from maxaffine.datasets import load_dataset
from maxaffine.models import small_cnn
from maxaffine.training import fit
from maxaffine.vq import Codes

N = 5000
K = 10


def demo_codes() -> Codes:
    torch.manual_seed(0)
    data = load_dataset("mnist")
    cnn = small_cnn(data.input_shape, data.num_classes, channels=(8, 16))
    fit(cnn, data, epochs=1, progress=False)
    x = torch.cat([data.x_train, data.x_test])[:N]
    parts = [ma.codes(cnn, x[i:i + 1000]) for i in range(0, len(x), 1000)]
    values = tuple(torch.cat([p.values[k] for p in parts]) for k in range(len(parts[0].names)))
    return Codes(parts[0].names, values, parts[0].pieces, parts[0].bits_per_unit, len(x))


def torch_ne(codes: Codes, rows: int, chunk: int = 4) -> Tensor:
    """The straightforward comparison on unpacked codes: (rows, N) mean over layers."""
    out = torch.zeros(rows, len(codes))
    for v in codes.values:
        flat = v.flatten(1)
        units = flat.shape[1]
        for i in range(0, rows, chunk):
            j = min(rows, i + chunk)
            out[i:j] += (flat[i:j, None] != flat[None]).sum(-1) / units
    return out / len(codes.values)


def torch_matmul(codes: Codes, rows: int) -> Tensor:
    """One-hot codes and a matrix product per layer: (rows, N)."""
    out = torch.zeros(rows, len(codes))
    for v, r in zip(codes.values, codes.pieces, strict=True):
        flat = v.flatten(1).long()
        onehot = torch.nn.functional.one_hot(flat, r).flatten(1).float()  # (N, units * R)
        out += 1 - onehot[:rows] @ onehot.T / flat.shape[1]
    return out / len(codes.values)


def references(codes: Codes, layers: list[int], m: int, queries: int, p: float = 0.05,
               seed: int = 0) -> Codes:
    """M reference codes of ``layers``: the real codes after the first ``queries``,
    then copies of random ones with each unit re-drawn with probability ``p``."""
    rng = np.random.default_rng(seed)
    real = [codes.values[i][queries:].numpy() for i in layers]
    count = real[0].shape[0]
    out = [np.empty((m, *r.shape[1:]), dtype=np.uint8) for r in real]
    for o, r in zip(out, real, strict=True):
        o[: min(m, count)] = r[: min(m, count)]
    for start in range(count, m, 50_000):
        stop = min(m, start + 50_000)
        rows = rng.integers(0, count, stop - start)
        for o, r, i in zip(out, real, layers, strict=True):
            v = r[rows]
            redraw = rng.random(v.shape, dtype=np.float32) < p
            fresh = rng.integers(0, codes.pieces[i], v.shape, dtype=np.uint8)
            o[start:stop] = np.where(redraw, fresh, v)
    return Codes(tuple(codes.names[i] for i in layers),
                 tuple(torch.from_numpy(o) for o in out),
                 tuple(codes.pieces[i] for i in layers),
                 tuple(codes.bits_per_unit[i] for i in layers), m)


def knn_case(codes: Codes, label: str, layers: list[int], m: int, queries: int) -> dict:
    """Built-in vs FAISS exact vs FAISS IVF for one set of references."""
    refs = references(codes, layers, m, queries)
    q = codes.select(slice(0, queries))
    q = Codes(refs.names, tuple(q.values[i] for i in layers), refs.pieces,
              refs.bits_per_unit, queries)
    row: dict = {"case": label, "layers": list(refs.names), "references": m,
                 "queries": queries, "k": K}
    t0 = time.perf_counter()
    exact = ma.vq_knn(None, q, refs, k=K)
    row["seconds_builtin"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    flat = ma.vq_knn(None, q, refs, k=K, index="faiss")
    row["seconds_faiss"] = time.perf_counter() - t0
    row["faiss_equals_builtin"] = bool(torch.equal(flat[0], exact[0])
                                       and torch.equal(flat[1], exact[1]))
    assert row["faiss_equals_builtin"], label
    t0 = time.perf_counter()
    ivf = ma.vq_knn(None, q, refs, k=K, index="faiss-ivf")
    row["seconds_faiss_ivf"] = time.perf_counter() - t0
    row["ivf_recall_at_10"] = float(np.mean([
        len(set(a) & set(b)) / K for a, b in zip(ivf[1].tolist(), exact[1].tolist(),
                                                 strict=True)]))
    t0 = time.perf_counter()
    index = ma.vq_index(None, refs)  # the same IVF, built once ...
    row["seconds_ivf_build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reused = index.search(q, K)  # ... and searched: what each further query batch costs
    row["seconds_ivf_search"] = time.perf_counter() - t0
    row["ivf_index_equals_vq_knn"] = bool(torch.equal(reused[1], ivf[1]))
    assert row["ivf_index_equals_vq_knn"], label
    row["ivf_lists"] = index.lists
    row["ivf_probes"] = index.probes
    row["faiss_speedup"] = row["seconds_builtin"] / row["seconds_faiss"]
    row["ivf_speedup"] = row["seconds_builtin"] / row["seconds_faiss_ivf"]
    print(f"{label:<28} {m:>9,} {row['seconds_builtin']:>9.1f} {row['seconds_faiss']:>9.1f} "
          f"{row['faiss_speedup']:>6.1f}x {row['seconds_faiss_ivf']:>9.1f} "
          f"{row['ivf_speedup']:>6.1f}x {row['ivf_recall_at_10']:>7.3f} "
          f"{row['seconds_ivf_build']:>9.1f} {row['seconds_ivf_search']:>9.2f}", flush=True)
    return row


def knn(codes: Codes, million: bool, queries: int) -> list[dict]:
    print(f"\nk-NN (k={K}) of {queries} queries; seconds per call, index build included")
    print(f"{'case':<28} {'refs':>9} {'built-in':>9} {'faiss':>9} {'x':>7} {'ivf':>9} "
          f"{'x':>7} {'recall':>7} {'ivf build':>9} {'search':>9}")
    six = list(codes.names).index("6")
    cases = [("all layers (mean)", list(range(len(codes.names))), 100_000),
             ("layer 6 (ReLU)", [six], 100_000)]
    if million:
        cases.append(("layer 6 (ReLU)", [six], 1_000_000))
    return [knn_case(codes, label, layers, m, queries) for label, layers, m in cases]


def main(ne_rows: int = 50, matmul_rows: int = 500, *, matrix: bool = True,
         million: bool = False, queries: int = 200) -> dict:
    import faiss

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    codes = demo_codes()
    nbytes = codes.packed().shape[1]
    print(f"demo CNN codes: {len(codes)} images, layers {codes.names}, units "
          f"{codes.num_units}, {nbytes} packed bytes per image (torch {torch.__version__}, "
          f"numpy {np.__version__}, faiss {faiss.__version__}, 1 thread)")
    result = {"benchmark": "distance", "samples": N, "bytes_per_code": nbytes,
              "units": list(codes.num_units), "layers": list(codes.names),
              "torch": torch.__version__, "numpy": np.__version__,
              "faiss": faiss.__version__, "threads": 1, "machine": platform.machine()}
    if matrix:
        result["rows"] = matrix_rows(codes, ne_rows, matmul_rows)
    result["knn"] = knn(codes, million, queries)
    out = Path(__file__).parent / "results" / "distance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not matrix and out.exists():  # keep the matrix rows of an earlier run
        result["rows"] = json.loads(out.read_text()).get("rows")
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


def matrix_rows(codes: Codes, ne_rows: int, matmul_rows: int) -> list[dict]:
    """The 5,000 x 5,000 matrix: ours, FAISS, and the two torch baselines."""
    t0 = time.perf_counter()
    ours = ma.vq_distance(None, codes)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = ma.vq_distance(None, codes, backend="faiss")
    t_faiss = time.perf_counter() - t0
    assert torch.equal(theirs, ours)
    rows = [{"method": "vq_distance(backend='faiss')", "rows_timed": N,
             "seconds_timed": t_faiss, "seconds_5000x5000": t_faiss,
             "ratio_vs_ours": t_faiss / t_ours, "max_abs_diff": 0.0}]
    for name, fn, r in (("torch != (chunks of 4 rows)", torch_ne, ne_rows),
                        ("torch one-hot matmul (BLAS)", torch_matmul, matmul_rows)):
        t0 = time.perf_counter()
        block = fn(codes, r)
        dt = time.perf_counter() - t0
        err = float((block - ours[:r]).abs().max())
        assert err < 1e-5, (name, err)
        full = dt * N / r
        rows.append({"method": name, "rows_timed": r, "seconds_timed": dt,
                     "seconds_5000x5000": full, "ratio_vs_ours": full / t_ours,
                     "max_abs_diff": err})
    rows.insert(0, {"method": "maxaffine.vq_distance (popcount)", "rows_timed": N,
                    "seconds_timed": t_ours, "seconds_5000x5000": t_ours,
                    "ratio_vs_ours": 1.0, "max_abs_diff": 0.0})
    print(f"{'method':<36} {'rows timed':>10} {'s (5000x5000)':>14} {'pairs/s':>10} "
          f"{'x ours':>7}")
    for r in rows:
        print(f"{r['method']:<36} {r['rows_timed']:>10} {r['seconds_5000x5000']:>14.1f} "
              f"{N * N / r['seconds_5000x5000']:>10.3g} {r['ratio_vs_ours']:>7.2f}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--million", action="store_true",
                        help="add the k-NN case with 10^6 references (~4 GB, minutes)")
    parser.add_argument("--queries", type=int, default=200, help="k-NN queries (200)")
    parser.add_argument("--no-matrix", action="store_true",
                        help="skip the 5,000 x 5,000 matrix (keep its earlier JSON rows)")
    args = parser.parse_args()
    main(matrix=not args.no_matrix, million=args.million, queries=args.queries)

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

The baselines are timed on a block of rows in the same run and scaled linearly to
5,000 rows (their cost is linear in the rows); every method's block is checked
against ours. One torch thread. Run: ``python benchmarks/distance.py`` (writes
benchmarks/results/distance.json).
"""

from __future__ import annotations

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


def main(ne_rows: int = 50, matmul_rows: int = 500) -> dict:
    torch.set_num_threads(1)
    codes = demo_codes()
    nbytes = codes.packed().shape[1]
    print(f"demo CNN codes: {len(codes)} images, layers {codes.names}, units "
          f"{codes.num_units}, {nbytes} packed bytes per image (torch {torch.__version__}, "
          f"numpy {np.__version__}, 1 thread)")
    t0 = time.perf_counter()
    ours = ma.vq_distance(None, codes)
    t_ours = time.perf_counter() - t0
    rows = []
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
              f"{N * N / r['seconds_5000x5000']:>10.3g} {r['ratio_vs_ours']:>7.1f}")
    result = {"benchmark": "distance", "samples": N, "bytes_per_code": nbytes,
              "units": list(codes.num_units), "layers": list(codes.names),
              "torch": torch.__version__, "numpy": np.__version__, "threads": 1,
              "machine": platform.machine(), "rows": rows}
    out = Path(__file__).parent / "results" / "distance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

"""The RNTK experiment (``maxaffine reproduce rntk``): kernel ridge against
scikit-learn's KernelRidge, the crops, and a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maxaffine.experiments import rntk as exp


def test_ridge_accuracy_matches_sklearn_kernel_ridge():
    from sklearn.kernel_ridge import KernelRidge

    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(60, 5)), rng.normal(size=(25, 5))
    y, yt = rng.integers(0, 10, 60), rng.integers(0, 10, 25)
    k, kt = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / 5), \
        np.exp(-((xt[:, None] - x[None]) ** 2).sum(-1) / 5)
    scale = np.mean(np.diag(k))
    lams = (1e-3, 0.1, 1.0)
    got = exp.ridge_accuracy(k, y, kt, yt, lams)
    for lam, acc in zip(lams, got, strict=True):
        kr = KernelRidge(alpha=lam * scale, kernel="precomputed").fit(k, np.eye(10)[y] - 0.1)
        assert acc == pytest.approx(float(np.mean(kr.predict(kt).argmax(1) == yt)))
    assert exp.ridge_accuracy(k, y, k, y, (1e-8,))[0] == 1.0  # interpolates its train set


def test_crops_are_pieces_of_the_whole_sequences():
    whole, y, _, _ = exp.sequences(0, 50, 5, False, 20)
    crops, y2, _, _ = exp.sequences(0, 50, 5, True, 20)
    assert torch.equal(y, y2) and all(len(s) == 40 for s in whole)
    stacked = torch.stack(whole)
    assert abs(float(stacked.mean())) < 0.2 and abs(float(stacked.std()) - 1) < 0.2
    lengths = [len(c) for c in crops]
    assert min(lengths) >= 20 and max(lengths) <= 40 and len(set(lengths)) > 5
    for w, c in zip(whole, crops, strict=True):
        assert any(torch.equal(w[i:i + len(c)], c) for i in range(41 - len(c)))
    pad = exp.padded(crops)
    assert pad.shape == (50, 40)
    assert all(torch.equal(pad[i, :len(c)], c) and not pad[i, len(c):].any()
               for i, c in enumerate(crops))


def test_reproduce_writes_table_and_figure(tmp_path):
    from maxaffine.cli import main

    assert main(["reproduce", "rntk", "--out", str(tmp_path), "--seeds", "1",
                 "--train-size", "60", "--test-size", "30", "--rnn-epochs", "2",
                 "--no-progress"]) == 0
    table = json.loads((tmp_path / "rntk.json").read_text())
    assert [r[:2] for r in table["rows"]] == [
        [k, m] for k in exp.KERNELS for m in ("ridge", "SVM")] + [["GRU", "trained"]]
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert [r["setting"] for r in runs] == ["whole", "crops"]
    for r in runs:
        assert r["train"] == 60 and r["test"] == 30
        for res in r["results"].values():
            assert all(0.0 <= v["test"] <= 1.0 for v in res.values())
    assert (tmp_path / "rntk.md").exists() and (tmp_path / "accuracy.png").exists()


@pytest.mark.parametrize("bad", [["--min-length", "41"], ["--train-size", "5"],
                                 ["--seeds", "0"]])
def test_reproduce_refuses_bad_arguments(tmp_path, bad):
    from maxaffine.cli import main

    with pytest.raises(SystemExit) as info:
        main(["reproduce", "rntk", "--out", str(tmp_path), *bad])
    assert info.value.code == 2

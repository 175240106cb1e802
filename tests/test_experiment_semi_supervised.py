"""``maxaffine reproduce semi-supervised`` at tiny size: it writes the table (JSON +
Markdown), the runs and the figures; the three methods share the initialisation,
labels and batches; bad options exit with argparse's message."""

from __future__ import annotations

import json

import pytest
import torch

from maxaffine.cli import main
from maxaffine.datasets import load_dataset
from maxaffine.experiments.semi_supervised import labelled_split, train


def test_reproduce_writes_table_and_figures(tmp_path):
    assert main(["reproduce", "semi-supervised", "--out", str(tmp_path), "--datasets",
                 "digits", "--labels", "20,40", "--seeds", "2", "--steps", "15",
                 "--widths", "16", "--no-progress"]) == 0
    table = json.loads((tmp_path / "semi_supervised.json").read_text())
    assert [r[:2] for r in table["rows"]] == [["digits", 20], ["digits", 40]]
    assert table["columns"][2:5] == ["supervised test acc", "entropy test acc",
                                     "inversion test acc"]
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert len(runs) == 2 * 2 * 3
    assert all(0 <= r["test_acc"] <= 1 for r in runs)
    md = (tmp_path / "semi_supervised.md").read_text()
    assert "Command:" in md and "±" in md
    for fig in ("semi_supervised_accuracy.png", "templates.png"):
        assert (tmp_path / fig).stat().st_size > 1000


def test_methods_share_initialisation_and_batches():
    """With both weights 0 the entropy and inversion runs are supervised training on
    the same batches from the same initialisation: identical weights."""
    data = load_dataset("digits").subset(train=300, test=50)
    kw = dict(steps=5, widths=[8], labelled_batch=10, unlabelled_batch=20, lr=1e-2,
              alpha=0.0, beta=0.0)
    models = [train(m, data, 30, 1, **kw)[0] for m in ("supervised", "entropy", "inversion")]
    for other in models[1:]:
        for p, q in zip(models[0].parameters(), other.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-6)


def test_labelled_split_is_balanced_and_disjoint():
    y = torch.arange(100) % 10
    lab, unl = labelled_split(y, 25, 10, torch.Generator().manual_seed(0))
    counts = torch.bincount(y[lab], minlength=10)
    assert len(lab) == 25 and int(counts.min()) == 2 and int(counts.max()) == 3
    assert len(set(lab.tolist()) | set(unl.tolist())) == 100 and len(unl) == 75


@pytest.mark.parametrize("bad", [["--labels", "0"], ["--datasets", "cifar"],
                                 ["--methods", "x"], ["--alpha", "-1"]])
def test_bad_options_exit(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["reproduce", "semi-supervised", "--out", str(tmp_path), *bad])
    assert err.value.code == 2
    assert "error" in capsys.readouterr().err

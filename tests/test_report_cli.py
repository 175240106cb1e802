"""``maxaffine report MODEL --input INPUTS`` (issue 19, item 4): the demo's model sections
for a user's own model, a TorchScript file or ``module:factory`` with a state dict, on
tensor files or built-in datasets; and the named errors for bad models and inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import maxaffine as ma
from maxaffine.cli import main
from maxaffine.demo import MODEL_SECTIONS, load_model, read_inputs, run_report
from maxaffine.errors import MaxAffineError, MaxAffineTypeError

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

TITLES = ("## Models", "## Affine maps and templates",
          "## Exact partitions of a plane of input space", "## Local complexity around the data",
          "## VQ distance and retrieval")

FACTORY = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=12):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(3 * 3 * 3, width)
        self.out = nn.Linear(width, 4)

    def forward(self, x):
        z = self.pool(torch.relu(self.conv(x)))
        return self.out(torch.relu(self.fc(z.flatten(1))))


def make():
    return Net()


def gelu():
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.GELU(), nn.Linear(8, 3))


def not_a_model():
    return 42
"""


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 16),
                         nn.ReLU(), nn.Linear(16, 5)).eval()


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "user_models_r.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_models_r"


def _sections(out: Path) -> str:
    md = (out / "report.md").read_text()
    for title in TITLES:
        assert title in md, title
    html = (out / "report.html").read_text()
    assert "<a href='explore.html'>" in html
    for name in re.findall(r"\]\(([^)]+)\)", md):
        assert (out / name).is_file(), name
    return md


def test_torchscript_mlp_on_a_tensor_file(tmp_path: Path, capsys):
    net = _mlp()
    torch.jit.script(net).save(str(tmp_path / "mlp.pt"))
    x = torch.rand(60, 1, 6, 6)
    torch.save(x, tmp_path / "x.pt")
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "mlp.pt"), "--input", str(tmp_path / "x.pt"),
                 "--out", str(out), "--quick"]) == 0
    assert "report:" in capsys.readouterr().out
    md = _sections(out)
    assert "the model's own predictions" in md
    assert "| mlp | 949 | 32 | 1.000 | 1.000 |" in md
    # the explorer page holds the report's partition: the plane through three inputs
    page = (out / "explore.html").read_text()
    payload = json.loads(re.search(r"type='application/json'>(.*?)</script>", page,
                                   re.S).group(1))
    regions = int(re.search(r"\| regions \| (\d+) \|", md).group(1))
    assert payload["num_regions"] == regions and len(payload["anchors"]) == 3
    # the rebuilt TorchScript model computes what the TorchScript model does
    rebuilt = load_model(tmp_path / "mlp.pt", example=x[:8])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x))
    assert ma.trace(rebuilt, x[:1]).summary()["units"] == 32


def test_traced_torchscript_and_npy_inputs(tmp_path: Path):
    net = _mlp()
    torch.jit.trace(net, torch.zeros(1, 1, 6, 6)).save(str(tmp_path / "traced.pt"))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((40, 1, 6, 6)))
    x = read_inputs(tmp_path / "x.npy")
    assert x.shape == (40, 1, 6, 6) and x.dtype == torch.float32
    rebuilt = load_model(tmp_path / "traced.pt", example=x[:8])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x))


def test_factory_with_state_dict(tmp_path: Path, factory_module: str):
    import user_models_r

    trained = user_models_r.make()
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(-1.5).add_(0.01)
    torch.save(trained.state_dict(), tmp_path / "state.pt")
    model = load_model(f"{factory_module}:make", state_dict=tmp_path / "state.pt")
    for a, b in zip(model.state_dict().values(), trained.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = torch.rand(48, 1, 6, 6)
    data = {"x": x.numpy(), "y": np.arange(48) % 4}
    torch.save({k: torch.as_tensor(v) for k, v in data.items()}, tmp_path / "xy.pt")
    out = run_report(f"{factory_module}:make", tmp_path / "xy.pt", tmp_path / "rep",
                     state_dict=tmp_path / "state.pt", quick=True)
    md = _sections(out)
    assert "own predictions" not in md
    assert "window on the segment x1-x2" not in md  # 27 + 12 units: the whole plane
    assert len(MODEL_SECTIONS) == 5


def test_named_errors(tmp_path: Path, factory_module: str, capsys):
    torch.save(torch.rand(40, 1, 6, 6), tmp_path / "x.pt")
    torch.jit.script(_mlp()).save(str(tmp_path / "mlp.pt"))

    def error(*argv: str) -> str:
        assert main(["report", *argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("maxaffine report: error: ") and "Traceback" not in err
        return err

    # a missing model file, a missing input file
    assert "no file" in error(str(tmp_path / "missing.pt"), "--input", str(tmp_path / "x.pt"))
    assert "inputs: no file" in error(str(tmp_path / "mlp.pt"), "--input",
                                      str(tmp_path / "nope.pt"))
    # unsupported models: not TorchScript, not a spline network, not a module
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    assert "is not a TorchScript file" in error(str(tmp_path / "junk.pt"), "--input",
                                                str(tmp_path / "x.pt"))
    assert "GELU" in error(f"{factory_module}:gelu", "--input", str(tmp_path / "x.pt"))
    assert "not a torch.nn.Module" in error(f"{factory_module}:not_a_model", "--input",
                                            str(tmp_path / "x.pt"))
    assert "has no 'missing'" in error(f"{factory_module}:missing", "--input",
                                       str(tmp_path / "x.pt"))
    # a TorchScript forward that is not a chain of its layers (the factory's Net)
    import user_models_r

    torch.jit.script(user_models_r.make()).save(str(tmp_path / "net.pt"))
    assert "not a chain of its layers" in error(str(tmp_path / "net.pt"), "--input",
                                                str(tmp_path / "x.pt"))
    # inputs of the wrong shape, too few, unlabelled junk, a bad state dict
    torch.save(torch.rand(40, 1, 5, 5), tmp_path / "small.pt")
    assert "inputs of shape (1, 5, 5) do not fit the model" in error(
        str(tmp_path / "mlp.pt"), "--input", str(tmp_path / "small.pt"))
    assert "do not fit the model" in error(f"{factory_module}:make", "--input", "moons")
    torch.save(torch.rand(5, 1, 6, 6), tmp_path / "few.pt")
    assert "at least 16" in error(str(tmp_path / "mlp.pt"), "--input", str(tmp_path / "few.pt"))
    torch.save(torch.rand(40), tmp_path / "flat.pt")
    assert "(N, *input_shape)" in error(str(tmp_path / "mlp.pt"), "--input",
                                        str(tmp_path / "flat.pt"))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "bad_state.pt")
    assert "does not fit the model" in error(f"{factory_module}:make", "--input",
                                             str(tmp_path / "x.pt"), "--state-dict",
                                             str(tmp_path / "bad_state.pt"))
    (tmp_path / "file").write_text("")
    assert main(["report", str(tmp_path / "mlp.pt"), "--input", str(tmp_path / "x.pt"),
                 "--out", str(tmp_path / "file")]) == 2
    assert "pass a directory for --out" in capsys.readouterr().err


def test_api_errors(tmp_path: Path):
    with pytest.raises(MaxAffineTypeError, match="model"):
        load_model(3)
    with pytest.raises(MaxAffineTypeError, match="inputs"):
        read_inputs(3)
    with pytest.raises(MaxAffineError, match="NaN"):
        read_inputs(torch.full((20, 2), float("nan")))
    with pytest.raises(MaxAffineError, match="not a built-in dataset"):
        read_inputs("imagenet")
    with pytest.raises(MaxAffineTypeError, match="quick"):
        run_report(_mlp(), torch.rand(20, 1, 6, 6), tmp_path / "r", quick="yes")

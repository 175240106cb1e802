"""The interactive explorer (issue 19, item 3): ``Partition.to_html``, the mesh page of
``Complex`` / ``LevelSet``, ``maxaffine explore``; the page checked as data (self-contained,
its JSON equal to the partition and to independent forward passes) and in headless
Chromium (no console errors, the region count, hovering a point shows its code)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import maxaffine as ma
from maxaffine import explore
from maxaffine.cli import main
from maxaffine.errors import MaxAffineError, MaxAffineTypeError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _net(outputs: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                         nn.Linear(12, outputs)).double()


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return _net()


@pytest.fixture(scope="module")
def part(net: nn.Module) -> ma.Partition:
    return ma.partition_plane(net, ma.Slice.square(-2, 2), progress=False)


def _payload(page: str) -> dict:
    m = re.search(r"<script id='payload' type='application/json'>(.*?)</script>", page, re.S)
    assert m is not None
    return json.loads(m.group(1).replace("<\\/", "</"))


def _packed(p: dict) -> list[str]:
    """The payload's codes as hex, from either of its encodings."""
    if p["packed"] is not None:
        return p["packed"]
    base = np.unpackbits(np.frombuffer(bytes.fromhex(p["packed_base"]), dtype=np.uint8))
    out = []
    for gaps in p["packed_flips"]:
        bits = base.copy()
        bits[np.cumsum(gaps, dtype=np.int64) - 1] ^= 1
        out.append(bytes(np.packbits(bits)).hex())
    return out


def _code_hex(net: nn.Module, points: torch.Tensor) -> list[str]:
    """Packed codes of points by a plain forward pass (independent of the partition)."""
    return [bytes(r).hex() for r in ma.codes(net, points).packed().tolist()]


# ------------------------------------------------------------------ the page as data


def test_page_is_self_contained(part: ma.Partition, tmp_path: Path):
    path = part.to_html(tmp_path / "p.html")
    assert path == tmp_path / "p.html"
    page = path.read_text()
    assert page.startswith("<!doctype html>")
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(link|iframe|img)\b", page, re.I)
    assert not re.search(r"<script[^>]*\bsrc=", page, re.I)
    assert "@import" not in page and "url(" not in page


def test_payload_matches_the_partition(net: nn.Module, part: ma.Partition):
    p = _payload(explore.partition_html(part))
    n = part.num_regions
    assert p["num_regions"] == n == len(p["faces"]) == len(_packed(p)) > 20
    torch.testing.assert_close(torch.tensor(p["vertices"], dtype=torch.float64),
                               part.vertices, rtol=1e-11, atol=1e-12)
    for i in range(n):
        assert p["faces"][i] == part.faces[i, : int(part.face_sizes[i])].tolist()
    # each face's code is the code of its interior point, by a forward pass
    assert _packed(p) == _code_hex(net, part.interior)
    torch.testing.assert_close(torch.tensor(p["areas"], dtype=torch.float64), part.areas,
                               rtol=1e-7, atol=0)
    assert abs(sum(p["areas"]) - 16.0) < 1e-6
    with torch.no_grad():
        out = net(part.interior)
    assert p["predicted"] == out.argmax(1).tolist()
    assert p["edges"] == part.edges.tolist() and p["edge_layer"] == part.edge_layer.tolist()
    assert p["layer_names"] == list(part.layer_names)
    assert len(p["boundary"]) == part.decision_boundary.shape[0]
    assert p["anchors"] == [] and len(p["bounds"]) == 4
    # the maps: all 3 outputs; f(s, t) = A (s, t) + B reproduces the network inside
    assert p["map_rows"] is None and p["num_outputs"] == 3
    a, b = torch.tensor(p["slopes"], dtype=torch.float64), torch.tensor(p["offsets"])
    pred = torch.einsum("fcd,fd->fc", a, part.interior) + b.double()
    torch.testing.assert_close(pred, out, rtol=1e-5, atol=1e-5)  # maps carry 6 digits
    # bit strings per layer: the units' codes in order
    codes = ma.codes(net, part.interior)
    for k, name in enumerate(codes.names):
        want = ["".join(str(int(v)) for v in row) for row in codes[name].flatten(1)]
        assert p["layer_bits"][k] == want
    lo, hi = p["layer_bytes"][0]
    assert hi - lo == 2 and p["layer_bytes"][1] == [2, 4]


def test_largest_outputs_are_shown(part: ma.Partition):
    net = _net(outputs=7, seed=1)
    many = ma.partition_plane(net, ma.Slice.square(-1, 1), progress=False)
    p = _payload(explore.partition_html(many, max_outputs=3))
    with torch.no_grad():
        out = net(many.interior)
    for f in range(many.num_regions):
        rows = p["map_rows"][f]
        assert len(rows) == 3
        assert sorted(rows) == sorted(out[f].topk(3).indices.tolist())
        for k, c in enumerate(rows):
            assert p["slopes"][f][k] == pytest.approx(many.slopes[f, c].tolist(), rel=1e-5)


def test_anchor_inputs_are_in_the_payload():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    sl = ma.Slice.through(x[0], x[1], x[2])
    part = ma.partition_plane(net, sl, progress=False)
    p = _payload(explore.partition_html(part, title="a </script> title"))
    assert p["title"] == "a </script> title"
    torch.testing.assert_close(torch.tensor(p["anchors"], dtype=torch.float64), sl.anchors)
    assert _packed(p) == _code_hex(net, sl.to_input(part.interior))


def test_sparse_codes_of_a_cnn_window(tmp_path: Path):
    """Many units, few changing in a small window: the codes travel as a majority code
    and per-face bit flips (both decoders, here and in the page, give the codes)."""
    from maxaffine.models import small_cnn

    torch.manual_seed(0)
    cnn = small_cnn((1, 8, 8), 4, channels=(4,)).eval().double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    sl = ma.Slice.through(x[0], x[1], x[2]).zoom(0, 0.05)
    part = ma.partition_plane(cnn, sl, progress=False)
    p = _payload(explore.partition_html(part))
    assert p["packed"] is None and p["packed_base"] is not None and part.num_regions > 3
    assert _packed(p) == _code_hex(cnn, sl.to_input(part.interior))
    dense = sum(2 * part.packed.shape[1] + 3 for _ in range(part.num_regions))
    assert len(json.dumps(p["packed_flips"])) < dense
    pytest.importorskip("playwright")
    if CHROMIUM is None:
        return
    from playwright.sync_api import sync_playwright

    path = part.to_html(tmp_path / "cnn.html")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page, errors = _open(b, path)
        assert page.evaluate(f"[...Array({part.num_regions}).keys()].map(MAXAFFINE.codeHex)") \
            == _packed(p)
        assert errors == []
        b.close()


def test_bad_arguments(part: ma.Partition, tmp_path: Path):
    with pytest.raises(MaxAffineTypeError, match="path"):
        part.to_html(3)
    with pytest.raises(MaxAffineTypeError, match="path"):
        part.to_html(None)
    with pytest.raises(MaxAffineError, match="directory"):
        part.to_html(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(MaxAffineError, match="is a file"):
        part.to_html(tmp_path / "file" / "p.html")
    with pytest.raises(MaxAffineTypeError, match="Partition"):
        explore.partition_html("not a partition")
    with pytest.raises(MaxAffineError, match="max_outputs"):
        explore.partition_html(part, max_outputs=0)
    with pytest.raises(MaxAffineTypeError, match="LevelSet"):
        explore.level_set_html(part)
    with pytest.raises(MaxAffineTypeError, match="title"):
        part.to_html(tmp_path / "t.html", title=3)


@pytest.fixture(scope="module")
def complex3() -> ma.Complex:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                        nn.Linear(8, 2)).double()
    return ma.partition_box(net, -torch.ones(3), torch.ones(3), progress=False)


def test_mesh_pages(complex3: ma.Complex, tmp_path: Path):
    surface = complex3.decision_boundary()
    assert surface.num_simplices > 0
    page = complex3.to_html(tmp_path / "c.html").read_text()
    assert "http://" not in page and "https://" not in page
    p = _payload(page)
    assert p["kind"] == "mesh" and p["num_regions"] == complex3.num_regions
    assert p["triangles"] == surface.simplices.tolist()
    torch.testing.assert_close(torch.tensor(p["vertices"], dtype=torch.float64),
                               surface.vertices, rtol=1e-11, atol=1e-12)
    assert p["wire_edges"] == complex3.edges.tolist()
    level = complex3.level_set(float(complex3.vertex_outputs[:, 1].median()), 1)
    p = _payload(level.to_html(tmp_path / "l.html").read_text())
    assert len(p["triangles"]) == level.num_simplices and p["wire_edges"] == []
    # a 2-D level set: segments in the plane z = 0
    net2 = _net()
    cx2 = ma.partition_box(net2, -torch.ones(2), torch.ones(2), progress=False)
    p = _payload(cx2.to_html(tmp_path / "c2.html", level=0.0, output=0).read_text())
    assert p["segments"] == cx2.level_set(0.0, 0).simplices.tolist() and p["triangles"] == []
    assert all(v[2] == 0 for v in p["vertices"])
    net1 = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    cx1 = ma.partition_box(net1, -torch.ones(1), torch.ones(1), progress=False)
    with pytest.raises(MaxAffineError, match="1-D"):
        cx1.to_html(tmp_path / "c1.html")


def test_cli_explore_square(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    (tmp_path / "explore_model.py").write_text(
        "import torch\n"
        "def make():\n"
        "    torch.manual_seed(3)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(2, 10), torch.nn.ReLU(),\n"
        "                               torch.nn.Linear(10, 2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "page" / "square.html"
    assert main(["explore", "--model", "explore_model:make", "--square", "-1", "1",
                 "--out", str(out)]) == 0
    p = _payload(out.read_text())
    import explore_model

    want = ma.partition_plane(explore_model.make(), ma.Slice.square(-1, 1), progress=False)
    assert p["num_regions"] == want.num_regions
    assert sorted(_packed(p)) == sorted(bytes(r).hex() for r in want.packed.tolist())
    assert main(["explore", "--model", "explore_model:make", "--square", "-1", "1",
                 "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["explore", "--model", "nowhere_module:make", "--square", "-1", "1",
                 "--out", str(out)]) == 2
    assert "cannot import module 'nowhere_module'" in capsys.readouterr().err


def test_cli_explore_through_torchscript(tmp_path: Path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(9, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    torch.jit.script(net).save(str(tmp_path / "m.pt"))
    x = torch.rand(30, 1, 3, 3)
    torch.save(x, tmp_path / "x.pt")
    out = tmp_path / "t.html"
    assert main(["explore", "--model", str(tmp_path / "m.pt"), "--input", str(tmp_path / "x.pt"),
                 "--through", "0", "1", "2", "--zoom", "0.3", "--out", str(out)]) == 0
    p = _payload(out.read_text())
    bounds = torch.tensor(p["bounds"])
    anchors = torch.tensor(p["anchors"], dtype=torch.float64)
    # the square of half-width 0.3 around x1 (the plane's first anchor), through 3 inputs
    assert anchors.shape == (3, 2) and anchors[0].abs().max() == 0
    assert torch.allclose(bounds.abs().max(0).values, torch.tensor([0.3, 0.3]))
    assert abs(sum(p["areas"]) - 0.36) < 1e-7  # areas carry 8 digits


# ------------------------------------------------------------------ in the browser


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("the browser test needs Debian's chromium: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the browser test needs Playwright's Python package: "
                    "pip install playwright (no browser download needed)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, path: Path):
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_function("window.MAXAFFINE && window.MAXAFFINE.ready")
    page.wait_for_timeout(50)
    return page, errors


def _hover(page, net: nn.Module, s: float, t: float) -> tuple[str, str]:
    """Move the mouse to slice point (s, t); the tooltip and the point's own code."""
    x, y = page.evaluate(f"MAXAFFINE.toClient({s!r}, {t!r})")
    page.mouse.move(x, y)
    page.wait_for_timeout(30)
    # the point under the mouse (pixel-rounded), mapped back, coded by a forward pass
    st = page.evaluate(f"MAXAFFINE.fromClient({x!r}, {y!r})")
    code = _code_hex(net, torch.tensor([st], dtype=torch.float64))[0]
    return page.text_content("#tooltip"), code


def test_browser_partition_page(browser, net: nn.Module, part: ma.Partition, tmp_path: Path):
    page, errors = _open(browser, part.to_html(tmp_path / "p.html"))
    n = part.num_regions
    assert page.evaluate("MAXAFFINE.numRegions") == n
    assert page.evaluate("document.body.dataset.regions") == str(n)
    assert page.text_content("#count").startswith(f"{n} regions")
    assert page.evaluate("MAXAFFINE.payload.faces.length") == n
    # hover the interior points of the largest faces: the tooltip shows their codes
    for f in part.areas.argsort(descending=True)[:6].tolist():
        s, t = part.interior[f].tolist()
        text, code = _hover(page, net, s, t)
        assert f"region {f} of {n}" in text and f"code (hex): {code}" in text
        assert code == bytes(part.packed[f].tolist()).hex()
        assert page.evaluate("document.getElementById('tooltip').dataset.region") == str(f)
    # zoom in around a face and pan: hovering still finds the right region
    f = int(part.areas.argmax())
    s, t = part.interior[f].tolist()
    x, y = page.evaluate(f"MAXAFFINE.toClient({s!r}, {t!r})")
    page.mouse.move(x, y)
    page.mouse.wheel(0, -600)
    page.mouse.move(x + 5, y + 5)
    page.mouse.down()
    page.mouse.move(x + 40, y - 25, steps=4)
    page.mouse.up()
    page.wait_for_timeout(50)
    text, code = _hover(page, net, s, t)
    assert f"region {f} of {n}" in text and code in text
    # every layer toggle and the colour modes redraw without errors
    for box in page.query_selector_all("#controls input[type=checkbox]"):
        box.click()
    page.select_option("#controls select", "region")
    page.select_option("#controls select", "area")
    page.dblclick("#view")
    page.wait_for_timeout(50)
    # points outside the domain show nothing
    x, y = page.evaluate("MAXAFFINE.toClient(2.5, 2.5)")
    page.mouse.move(x, y)
    assert page.evaluate("getComputedStyle(document.getElementById('tooltip')).display") \
        == "none"
    assert errors == []
    page.close()


def test_browser_anchor_slice_page(browser, tmp_path: Path):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16),
                        nn.ReLU(), nn.Linear(16, 10)).double()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    sl = ma.Slice.through(x[0], x[1], x[2])
    part = ma.partition_plane(net, sl, progress=False)
    page, errors = _open(browser, part.to_html(tmp_path / "a.html", max_outputs=4))
    assert page.evaluate("MAXAFFINE.numRegions") == part.num_regions
    for f in part.areas.argsort(descending=True)[:4].tolist():
        s, t = part.interior[f].tolist()
        px, py = page.evaluate(f"MAXAFFINE.toClient({s!r}, {t!r})")
        page.mouse.move(px, py)
        page.wait_for_timeout(30)
        st = page.evaluate(f"MAXAFFINE.fromClient({px!r}, {py!r})")
        code = _code_hex(net, sl.to_input(torch.tensor([st], dtype=torch.float64)))[0]
        text = page.text_content("#tooltip")
        assert f"code (hex): {code}" in text and "4 largest of 10 outputs" in text
    assert errors == []
    page.close()


def test_browser_mesh_page(browser, complex3: ma.Complex, tmp_path: Path):
    page, errors = _open(browser, complex3.to_html(tmp_path / "m.html"))
    surface = complex3.decision_boundary()
    assert page.evaluate("MAXAFFINE.numSimplices") == surface.num_simplices
    assert page.evaluate("document.body.dataset.regions") == str(complex3.num_regions)
    before = page.evaluate("MAXAFFINE.project(MAXAFFINE.payload.vertices[0])")
    box = page.query_selector("#view").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 80, cy + 30, steps=5)
    page.mouse.up()
    after = page.evaluate("MAXAFFINE.project(MAXAFFINE.payload.vertices[0])")
    assert before != after  # dragging rotates the view
    page.mouse.wheel(0, -300)
    for box in page.query_selector_all("#controls input[type=checkbox]"):
        box.click()
    page.wait_for_timeout(50)
    assert errors == []
    page.close()

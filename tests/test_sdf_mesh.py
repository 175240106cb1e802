"""The SDF experiment (``maxaffine reproduce sdf-mesh``) at tiny size: the exact zero
level set of a small ReLU network is a closed surface on which the network is zero,
and marching cubes on finer grids of the same network gets closer to it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maxaffine.experiments import sdf_mesh


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model, info = sdf_mesh.train_sdf("torus", (32, 32, 32), steps=300, batch=1024, seed=0)
    assert model[0].weight.dtype == torch.float64 and info["rmse"] < 0.1
    return model


def test_exact_mesh_is_the_zero_set_and_marching_cubes_converges(net):
    ls, rows, meshes = sdf_mesh.compare(net, (8, 24), samples=4000, match=False)
    exact, coarse, fine = rows
    assert ls.is_watertight and exact["watertight"]
    assert exact["vertices"] == ls.vertices.shape[0] > 0
    with torch.no_grad():
        f = net(ls.vertices)[:, 0]
    assert float(f.abs().max()) <= 1e-9 * exact["scale"]
    # the triangles' normals point to growing values (a step each way off the centroids)
    for verts, faces in ((ls.vertices, ls.triangles), meshes[24]):
        tri = torch.as_tensor(verts)[torch.as_tensor(faces)]
        normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        step = 1e-6 * normal / normal.norm(dim=1, keepdim=True)
        with torch.no_grad():
            grows = net(tri.mean(1) + step)[:, 0] > net(tri.mean(1) - step)[:, 0]
        assert grows.double().mean() > 0.99
    assert [coarse["grid"], fine["grid"]] == [8, 24] and set(meshes) == {8, 24}
    assert 0 < fine["hausdorff"] < coarse["hausdorff"]
    # marching cubes' vertices lie on grid edges, where the network is affine unless a
    # region boundary crosses the edge: near the surface but not on it
    assert fine["max_abs_f"] < coarse["max_abs_f"]


def test_hausdorff_of_known_meshes():
    """Two parallel unit squares 0.25 apart; one of them against a copy of itself."""
    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    lifted = verts + np.array([0, 0, 0.25])
    assert sdf_mesh.hausdorff((verts, faces), (lifted, faces), samples=500) == \
        pytest.approx(0.25, abs=1e-12)
    assert sdf_mesh.hausdorff((verts, faces), (verts, faces[:, ::-1]), samples=500) < 1e-12
    shifted = verts + np.array([0.5, 0, 0])  # half overlaps: the far half is 0.5 from the square
    assert sdf_mesh.hausdorff((verts, faces), (shifted, faces), samples=5000) == \
        pytest.approx(0.5, abs=0.02)
    assert sdf_mesh.watertight(faces) is False


def test_reproduce_writes_table_and_figure(tmp_path):
    from maxaffine.cli import main

    assert main(["reproduce", "sdf-mesh", "--out", str(tmp_path), "--steps", "200",
                 "--batch", "512", "--resolutions", "8", "16", "--samples", "2000"]) == 0
    md = (tmp_path / "sdf_mesh.md").read_text()
    assert "| exact (partition_box + level_set) | - |" in md and "| marching cubes | 16^3 |" in md
    table = json.loads((tmp_path / "sdf_mesh.json").read_text())
    assert len(table["rows"]) in (3, 4)  # + the grid matching the exact vertex count
    assert (tmp_path / "sdf_mesh.png").exists() and (tmp_path / "runs.json").exists()

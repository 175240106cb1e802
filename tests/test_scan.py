"""``scan`` and ``partition_many``: a 2-worker Dask LocalCluster (separate processes,
so the graph and the batches really are pickled and shipped) gives the in-process
table bit for bit; every data source gives the same table; the columns are the
library's own measures; Parquet round trip; named errors for bad input."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from maxaffine.datasets import Dataset
from maxaffine.errors import MaxAffineError, MaxAffineTypeError, MaxAffineWarning
from maxaffine.models import mlp, small_cnn
from maxaffine.partition import Slice
from maxaffine.scanning import MEASURES, partition_many, scan
from maxaffine.stats import boundary_distance, local_complexity
from maxaffine.vq import codes

ALL = MEASURES
LC = {"radius": 0.1, "n_directions": 4}


@pytest.fixture(scope="module")
def client():
    """One 2-worker LocalCluster for the module (its start costs seconds): worker
    processes, one thread each, as on a real cluster."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    c = Client(cluster)
    c.run(lambda: __import__("maxaffine.scanning"))  # warm the workers' imports
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = small_cnn((1, 8, 8), 5, channels=(4,)).eval()  # ReLU + max-pool + ReLU
    x = torch.rand(37, 1, 8, 8)
    y = torch.randint(0, 5, (37,))
    return net, x, y


def assert_same_bits(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal tables: same columns, dtypes, values; floats compared as bit patterns."""
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for col in a.columns:
        if a[col].dtype.kind == "f":
            bits = {4: np.int32, 8: np.int64}[a[col].dtype.itemsize]
            assert np.array_equal(a[col].to_numpy().view(bits), b[col].to_numpy().view(bits))
    assert a.attrs == b.attrs


def test_cluster_scan_equals_in_process_bit_for_bit(client, setup):
    torch.set_num_threads(1)  # as dask's workers (one torch thread each)
    net, x, y = setup
    here = scan(net, x, ALL, labels=y, batch_size=8, progress=False, **LC)
    there = scan(net, x, ALL, labels=y, batch_size=8, progress=False, client=client, **LC)
    assert len(here) == 37 and list(here["index"]) == list(range(37))
    assert_same_bits(here, there)
    assert here["boundary_distance"].notna().all() and (here["boundary_distance"] > 0).all()


def test_partition_many_on_the_cluster_equals_in_process(client):
    torch.manual_seed(0)
    net = mlp((2,), (16, 16), 3).double().eval()
    slices = [Slice.square(-1, 1), Slice.square(-1e12, 1e12),
              torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)]
    with pytest.warns(MaxAffineWarning, match="merged"):  # raised on a worker, here
        there = partition_many(net, slices, client, progress=False)
    with pytest.warns(MaxAffineWarning, match="merged"):
        here = partition_many(net, slices, progress=False)
    assert len(here) == len(there) == 3
    for a, b in zip(here, there, strict=True):
        for f in dataclasses.fields(a):
            if f.name in ("seconds", "graph"):
                continue
            va, vb = getattr(a, f.name), getattr(b, f.name)
            if isinstance(va, torch.Tensor):
                assert torch.equal(va, vb), f.name
            elif f.name != "domain":
                assert va == vb, f.name
    assert here[0].num_regions > 10
    assert partition_many(net, [], client, progress=False) == []


def test_every_source_gives_the_same_table(setup):
    net, x, y = setup
    kw = {"measures": ("codes", "region", "prediction", "local_complexity"),
          "batch_size": 10, "progress": False, **LC}
    want = scan(net, x, labels=y, **kw)
    pairs = torch.utils.data.TensorDataset(x, y)

    class Items(torch.utils.data.Dataset):  # map-style, (input, int label)
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], int(y[i])

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(zip(x, y, strict=True))

    for source in (pairs, Items(), Stream(), torch.utils.data.DataLoader(pairs, batch_size=7),
                   torch.utils.data.DataLoader(Items(), batch_size=64)):
        assert_same_bits(want, scan(net, source, **kw))
    unlabelled = scan(net, torch.utils.data.TensorDataset(x), **kw)
    assert_same_bits(want.drop(columns="label"), unlabelled)
    split = Dataset("toy", x[:30], y[:30], x[30:], y[30:], 5)
    table = scan(net, split, **kw)
    assert list(table["split"]) == ["train"] * 30 + ["test"] * 7
    assert_same_bits(want, table.drop(columns="split"))


def test_columns_are_the_library_measures(setup):
    net, x, _ = setup
    table = scan(net, x, ALL, batch_size=64, progress=False, **LC)
    c = codes(net, x)
    assert [bytes(r.tolist()) for r in c.packed()] == list(table["codes"])
    assert table["codes"][0].hex() == c.packed()[0].numpy().tobytes().hex()
    assert list(table["region"]) == c.region_ids().tolist()
    with torch.no_grad():
        assert list(table["prediction"]) == net(x).argmax(1).tolist()
    lc = local_complexity(net, x, **LC)
    assert list(table["local_complexity"]) == lc.total.tolist()
    for name in lc.names:
        assert list(table[f"local_complexity[{name}]"]) == lc[name].tolist()
    bd = boundary_distance(net, x)
    np.testing.assert_array_equal(table["boundary_distance"], bd.total.numpy())
    for name in bd.names:
        np.testing.assert_array_equal(table[f"boundary_distance[{name}]"], bd[name].numpy())
    byte_ranges = table.attrs["code_bytes"]
    assert list(byte_ranges) == list(c.names)
    assert byte_ranges == {k: [v.start, v.stop] for k, v in c.byte_slices().items()}


def test_parquet_round_trip(setup, tmp_path):
    net, x, y = setup
    path = tmp_path / "scan.parquet"
    table = scan(net, x, ALL, labels=y, batch_size=16, out=path, progress=False, **LC)
    back = pd.read_parquet(path)
    assert_same_bits(table, back)
    assert back["codes"].map(type).eq(bytes).all()


def test_empty_and_single_output_models(setup):
    net, x, _ = setup
    empty = scan(net, x[:0], ALL, progress=False, **LC)
    assert len(empty) == 0 and "local_complexity[3]" in empty.columns
    torch.manual_seed(1)
    scalar = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    z = torch.randn(20, 3)
    table = scan(scalar, z, ("prediction",), progress=False)
    with torch.no_grad():
        assert list(table["prediction"]) == (scalar(z)[:, 0] > 0).long().tolist()
    assert list(table.columns) == ["index", "prediction"]


def test_scan_errors_name_the_culprit(setup, tmp_path):
    net, x, y = setup
    bad = x.clone()
    bad[20, 0, 1, 1] = float("nan")
    cases = [
        (dict(measures=("codes", "curvature")), MaxAffineError,
         r"unknown measure 'curvature' \(measures\[1\]\)"),
        (dict(measures="codes"), MaxAffineTypeError, r"measures must be a list.*\['codes'\]"),
        (dict(measures=()), MaxAffineError, "asks for nothing"),
        (dict(measures=("codes", "codes")), MaxAffineError, "twice"),
        (dict(batch_size=0), MaxAffineError, "batch_size must be >= 1"),
        (dict(batch_size="8"), MaxAffineTypeError, "batch_size must be an integer"),
        (dict(data=bad, batch_size=16), MaxAffineError,
         r"data \(batch 1, inputs 16..31\) contains 1 NaN"),
        (dict(client="tcp://scheduler:8786"), MaxAffineTypeError,
         "client must be a dask.distributed.Client"),
        (dict(measures=("local_complexity",)), MaxAffineError, "needs radius="),
        (dict(measures=("local_complexity",), radius=-1.0), MaxAffineError, "radius must be"),
        (dict(measures=("local_complexity",), radius=0.1, n_directions=65), MaxAffineError,
         "n_directions must be <= the input dimension 64"),
        (dict(labels=y[:5]), MaxAffineError, r"labels must hold one scalar label per input"),
        (dict(data=torch.utils.data.TensorDataset(x), labels=y), MaxAffineError,
         "labels= goes with a tensor"),
        (dict(out=tmp_path), MaxAffineError, "is a directory"),
        (dict(out=tmp_path / "no" / "t.parquet"), MaxAffineError, "does not exist"),
        (dict(out=3), MaxAffineTypeError, "out must be a file path"),
        (dict(data=[x]), MaxAffineTypeError, "data must be a torch.Tensor"),
        (dict(data=x[0]), MaxAffineError, r"data: the model cannot take .* shape \(1, 8, 8\)"),
        (dict(data=x[0, 0, 0]), MaxAffineError, r"data must be a batch \(N, \*input_shape\)"),
        (dict(data=x.double()), MaxAffineError, "data is torch.float64 but the model"),
        (dict(data=torch.rand(4, 1, 6, 6)), MaxAffineError, "data"),
        (dict(data=torch.utils.data.TensorDataset(x[:0])), MaxAffineError, "no input"),
        (dict(progress=1), MaxAffineTypeError, "progress must be True or False"),
    ]
    for kwargs, err, message in cases:
        kwargs = {"data": x, **kwargs}
        with pytest.raises(err, match=message):
            scan(net, progress=kwargs.pop("progress", False), **kwargs)

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"image": x[i]}

    with pytest.raises(MaxAffineTypeError, match="is a dict"):
        scan(net, Dicts(), progress=False)

    class Named(torch.utils.data.Dataset):  # labels that are not numbers
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[i], "cat"

    with pytest.raises(MaxAffineTypeError, match="labels of data's batch 0 must be numbers"):
        scan(net, Named(), progress=False)
    with pytest.raises(MaxAffineTypeError, match="model must be"):
        scan("net", x, progress=False)


def test_partition_many_errors():
    net = mlp((2,), (4,), 2).double()
    with pytest.raises(MaxAffineTypeError, match=r"slices must be a list.*\[slice\]"):
        partition_many(net, Slice.square(-1, 1))
    with pytest.raises(MaxAffineTypeError, match=r"slices\[1\] must be a maxaffine.Slice"):
        partition_many(net, [Slice.square(-1, 1), "square"])
    with pytest.raises(MaxAffineError, match=r"unknown option 'tolerance'.*'tol'"):
        partition_many(net, [Slice.square(-1, 1)], tolerance=1e-9)
    with pytest.raises(MaxAffineTypeError, match=r"client must be a dask\.distributed\.Client"):
        partition_many(net, [Slice.square(-1, 1)], client=object())
    with pytest.raises(MaxAffineError, match="tol"):  # partition_plane's own check
        partition_many(net, [Slice.square(-1, 1)], tol=0.5, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (part,) = partition_many(net, [Slice.square(-1, 1)], progress=False)
    assert abs(float(part.areas.sum()) - 4.0) < 1e-9

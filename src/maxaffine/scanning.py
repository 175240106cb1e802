"""Dataset-scale measures: one table row per input, streamed in batches, in-process or
on a Dask cluster.

:func:`scan` runs a model over a whole dataset (a tensor, a ``torch`` ``Dataset`` or
``DataLoader``, or a :class:`maxaffine.datasets.Dataset`) in batches of
``batch_size`` inputs and returns one row per input: its position, its label, and the
chosen measures, each computed by the library's own function on the batch: the VQ
code of every layer (:func:`maxaffine.codes`, packed; "Mad Max: Affine Spline
Insights into Deep Learning", Balestriero & Baraniuk, Proc. IEEE 2021, sec. 5), the
region it lies in (distinct codes numbered in order of first appearance), the
predicted class, the local complexity (:func:`maxaffine.local_complexity`; Humayun,
Balestriero & Baraniuk, ICML 2024, sec. 3) and the distance to the nearest boundary
of its region (:func:`maxaffine.boundary_distance`; Balestriero & Baraniuk, ICML 2018,
sec. 5). :func:`partition_many` computes :func:`maxaffine.partition_plane` over many
slices.

With ``client`` (a ``dask.distributed.Client``: a ``LocalCluster`` or a real cluster)
the spline graph is traced once here and sent once to every worker; each batch is
scattered to a worker and measured there by the same function, on the same batch
boundaries, so the table equals the in-process one bit for bit (given the same
torch build, CPU kind and torch thread count on both sides: float kernels may
round differently otherwise; dask's workers run one torch thread each by default).
Warnings raised on a worker (e.g. :class:`maxaffine.MaxAffineWarning`) are re-raised
here.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from . import _arguments as arg
from .errors import MaxAffineError, MaxAffineTypeError, UnsupportedOperation
from .graph import SplineGraph, check_input
from .partition import Partition, Slice, partition_plane
from .stats import boundary_distance, local_complexity
from .vq import codes_of, graph_for

if TYPE_CHECKING:
    import pandas

MEASURES = ("codes", "region", "prediction", "local_complexity", "boundary_distance")
"""What :func:`scan` can compute per input (see its docstring)."""
DEFAULT_MEASURES = ("codes", "region", "prediction")
""":func:`scan`'s default measures: the ones that cost one forward pass."""
_IN_FLIGHT = 2  # batches queued per worker thread of a Dask cluster


# ------------------------------------------------------------------- scan


def scan(model: nn.Module | SplineGraph, data: Any,
         measures: Sequence[str] = DEFAULT_MEASURES, *, labels: Tensor | None = None,
         batch_size: int = 256, radius: float | None = None,
         n_directions: int | None = None, seed: int = 0, client: Any = None,
         out: str | Path | None = None, progress: bool = True) -> pandas.DataFrame:
    """One row per input of ``data`` with the ``measures`` of ``model`` there.

    ``data``: a tensor (N, *input_shape) (``labels``: optional (N,) tensor), a
    ``torch.utils.data.Dataset`` (map-style or iterable) or ``DataLoader`` whose items
    / batches are inputs or ``(input, label, ...)`` tuples, or a
    :class:`maxaffine.datasets.Dataset` (its training inputs, then its test inputs,
    with a ``split`` column). Inputs are regrouped into batches of exactly
    ``batch_size`` (the last may be smaller) whatever the source, so every source
    gives the same table.

    Columns: ``index`` (position in the stream), ``split`` (maxaffine datasets),
    ``label`` (when the data has labels), then per measure:

    * ``codes``: the packed codes of all layers (``Codes.packed()``, bytes; the layer
      layout is in ``df.attrs["code_bytes"]``, ``bytes.hex()`` gives text);
    * ``region``: int64 ids, equal iff the codes are equal, numbered in order of first
      appearance over the whole scan;
    * ``prediction``: the argmax output class (a single output: 1 where it is > 0);
    * ``local_complexity``: the total over layers and ``local_complexity[<layer>]``
      per layer (int64), over the cross-polytope of ``radius`` (required) spanned by
      ``n_directions`` random orthonormal directions from ``seed``
      (:func:`maxaffine.local_complexity`);
    * ``boundary_distance``: the distance to the boundary of the input's region and
      ``boundary_distance[<layer>]`` per layer (the inputs' dtype;
      :func:`maxaffine.boundary_distance`).

    Cost per input (the demo CNN on MNIST, one CPU thread, ``benchmarks/scan.py``):
    ``codes``, ``region``, ``prediction`` one forward pass together (~6,500 images/s),
    ``local_complexity`` ``2 n_directions + 1`` more (~90 images/s with 25
    directions), ``boundary_distance`` a forward-mode pass per 64 input dimensions
    (~1 image/s at 784).

    ``client``: a ``dask.distributed.Client``; the batches are measured on its
    workers (module docstring), the result equal to the in-process one. ``out``: a
    file path; the table is also written there as Parquet (pyarrow; ``df.attrs``
    kept, ``pandas.read_parquet(out)`` reads it back). ``progress``: a tqdm bar of
    inputs done. Returns a ``pandas.DataFrame``; its ``attrs`` hold the layers, the
    code layout, the measures and their settings.
    """
    import pandas as pd

    measures = _measures(measures)
    batch_size = arg.integer(batch_size, "batch_size", minimum=1,
                             meaning="inputs measured per batch")
    progress = arg.flag(progress, "progress")
    seed = arg.integer(seed, "seed", minimum=0)
    if "local_complexity" in measures:
        if radius is None:
            raise MaxAffineError("measure 'local_complexity' needs radius= (the "
                                 "cross-polytope's half-diagonal, in input units: e.g. 0.1 "
                                 "for images in [0, 1])")
        radius = arg.number(radius, "radius", minimum=0.0, strict=True,
                            meaning="the cross-polytope's half-diagonal, in input units")
        if n_directions is not None:
            n_directions = arg.integer(n_directions, "n_directions", minimum=1)
    path = _out_path(out)
    client = _check_client(client)
    source, total, split = _source(data, labels, batch_size)
    batches = iter(source)
    first = next(batches, None)
    if first is None:
        raise MaxAffineError("data yielded no input: there is nothing to scan (pass a "
                             "tensor of shape (0, *input_shape) for an empty table)")
    try:
        graph = graph_for(model, first[0], "data")
    except UnsupportedOperation:
        raise
    except MaxAffineError as err:
        shape = tuple(first[0].shape) if isinstance(first[0], Tensor) else None
        raise type(err)(f"data: the model cannot take its first batch (shape {shape}): "
                        f"{err}") from None
    if n_directions is not None and n_directions > graph.input_dim:
        raise MaxAffineError(f"n_directions must be <= the input dimension "
                             f"{graph.input_dim}, got {n_directions}")
    if measures & {"boundary_distance"} and not graph.layers:
        raise MaxAffineError("measure 'boundary_distance': the model has no nonlinearity, "
                             "so its one region has no boundary")
    spec = {"measures": tuple(m for m in MEASURES if m in measures), "radius": radius,
            "n_directions": n_directions, "seed": seed}
    results: list[dict[str, Any]] = []
    label_parts: list[Tensor | None] = []

    def checked() -> Iterator[Tensor]:
        start = 0
        for i, (x, y) in enumerate(_chain(first, batches)):
            what = f"data (batch {i}, inputs {start}..{start + x.shape[0] - 1})"
            if not isinstance(x, Tensor):
                raise MaxAffineTypeError(f"{what} must be a torch.Tensor, got "
                                         f"{type(x).__name__}")
            arg.check_tensor(x, what)
            arg.check_dtype(graph.model, x, what)
            check_input(graph, x, what)
            label_parts.append(y)
            start += x.shape[0]
            yield x

    from tqdm.auto import tqdm

    with tqdm(total=total, desc="scan", unit="input", disable=not progress) as bar:
        if client is None:
            for x in checked():
                results.append(_measure_batch(graph, x, spec))
                _rewarn(results[-1].pop("__warnings__"))
                bar.update(x.shape[0])
        else:
            results = _distributed(client, graph, checked(), spec, bar)
    found = [y for y in label_parts if y is not None]
    if found and len(found) != len(label_parts):
        raise MaxAffineError("data gave labels for some batches and not for others: "
                             "give every item the same form, (input, label) or input")
    table: dict[str, Any] = {}
    n = sum(len(r["__rows__"]) for r in results)
    table["index"] = np.arange(n, dtype=np.int64)
    if split is not None:
        table["split"] = split
    if found:
        table["label"] = torch.cat(found).numpy()
    keys = [k for k in results[0] if k != "__rows__"] if results else []
    for key in keys:
        table[key] = np.concatenate([r[key] for r in results])
    if "region" in spec["measures"]:
        table["region"] = pd.factorize(pd.Series(table["region"], dtype=object))[0].astype(
            np.int64)
    if "codes" in spec["measures"]:
        table["codes"] = pd.Series(table["codes"], dtype=object).to_numpy()
    df = pd.DataFrame(table)
    layers = list(graph.layer_names)
    start = 0
    layout = {}
    for layer in graph.layers:
        nbytes = (layer.num_units * layer.bits_per_unit + 7) // 8
        layout[layer.name] = [start, start + nbytes]
        start += nbytes
    df.attrs = {"maxaffine": "scan", "layers": layers, "code_bytes": layout,
                "measures": list(spec["measures"]), "batch_size": batch_size,
                "radius": radius, "n_directions": n_directions, "seed": seed}
    if path is not None:
        try:
            df.to_parquet(path, engine="pyarrow", index=False)
        except OSError as err:
            raise MaxAffineError(f"out={str(out)!r}: the Parquet file cannot be written "
                                 f"({err})") from None
    return df


def _measures(measures: Any) -> set[str]:
    """``measures`` checked: a non-empty list of names from MEASURES."""
    if isinstance(measures, str | bytes) or not isinstance(measures, Sequence | set
                                                           | frozenset):
        raise MaxAffineTypeError(f"measures must be a list of names from {MEASURES}, got "
                                 f"{type(measures).__name__} {measures!r} (one measure: "
                                 f"[{measures!r}])")
    chosen = list(measures)
    for i, m in enumerate(chosen):
        if not isinstance(m, str):
            raise MaxAffineTypeError(f"measures[{i}] must be a measure name from {MEASURES}, "
                                     f"got {type(m).__name__} {m!r}")
        if m not in MEASURES:
            raise MaxAffineError(f"unknown measure {m!r} (measures[{i}]): choose from "
                                 f"{MEASURES}")
    if not chosen:
        raise MaxAffineError(f"measures=[] asks for nothing: choose some of {MEASURES}")
    if len(set(chosen)) != len(chosen):
        raise MaxAffineError(f"measures lists a measure twice: {chosen}")
    return set(chosen)


def _out_path(out: Any) -> Path | None:
    """``out`` as a Parquet file path whose folder exists (or None)."""
    if out is None:
        return None
    path = arg.file_path(out, "out", "scan.parquet")
    if not path.parent.is_dir():
        raise MaxAffineError(f"out={str(out)!r}: its folder {str(path.parent)!r} does not "
                             "exist; create it first")
    return path


def _check_client(client: Any) -> Any:
    """``client`` as a running ``dask.distributed.Client`` (or None)."""
    if client is None:
        return None
    try:
        from distributed import Client
    except ImportError as err:  # pragma: no cover - dask[distributed] is a dependency
        raise MaxAffineError("client= needs dask.distributed: pip install "
                             "'dask[distributed]'") from err
    if not isinstance(client, Client):
        raise MaxAffineTypeError(f"client must be a dask.distributed.Client (e.g. "
                                 f"Client(LocalCluster()) or Client('tcp://scheduler:8786')), "
                                 f"got {type(client).__name__}; None runs in this process")
    if getattr(client, "asynchronous", False):
        raise MaxAffineError("client is asynchronous (Client(asynchronous=True)): scan and "
                             "partition_many wait for their results, pass a synchronous "
                             "Client")
    if client.status != "running":
        raise MaxAffineError(f"client is not running (status {client.status!r}): connect it "
                             "again, or pass client=None")
    return client


def _chain(first: Any, rest: Iterator) -> Iterator:
    yield first
    yield from rest


# ------------------------------------------------------------------- data sources


def _source(data: Any, labels: Any, batch_size: int
            ) -> tuple[Iterator[tuple[Tensor, Tensor | None]], int | None, np.ndarray | None]:
    """(batches (x, labels or None) of exactly ``batch_size`` inputs, the number of
    inputs if known, the ``split`` column of a maxaffine Dataset or None)."""
    from torch.utils.data import DataLoader, IterableDataset
    from torch.utils.data import Dataset as TorchDataset

    from .datasets import Dataset

    if labels is not None and not isinstance(data, Tensor):
        raise MaxAffineError("labels= goes with a tensor of inputs; a Dataset or DataLoader "
                             "gives its labels as (input, label) items")
    if isinstance(data, Tensor):
        if data.dim() < 2:
            raise MaxAffineError(f"data must be a batch (N, *input_shape), got shape "
                                 f"{tuple(data.shape)}: add a batch dimension with "
                                 "data.unsqueeze(0)")
        y = None if labels is None else _labels(labels, data.shape[0])
        return _slices(data, y, batch_size), data.shape[0], None
    if isinstance(data, Dataset):
        x = torch.cat([data.x_train, data.x_test])
        y = torch.cat([data.y_train, data.y_test])
        split = np.array(["train"] * len(data.x_train) + ["test"] * len(data.x_test),
                         dtype=object)
        return _slices(x, y, batch_size), x.shape[0], split
    if isinstance(data, DataLoader):
        try:
            total = None if data.drop_last or data.batch_size is None else len(data.sampler)
        except TypeError:
            total = None
        return _regroup(iter(data), batch_size), total, None
    if isinstance(data, TorchDataset | IterableDataset):
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        try:
            total = len(data)
        except TypeError:
            total = None
        return _regroup(iter(loader), batch_size), total, None
    raise MaxAffineTypeError(f"data must be a torch.Tensor (N, *input_shape), a "
                             f"torch.utils.data.Dataset or DataLoader, or a "
                             f"maxaffine.datasets.Dataset, got {type(data).__name__}")


def _labels(labels: Any, n: int, what: str = "labels") -> Tensor:
    """``labels`` as a flat tensor of ``n`` entries (one per input)."""
    if not isinstance(labels, Tensor):
        raise MaxAffineTypeError(f"{what} must be a torch.Tensor (N,), got "
                                 f"{type(labels).__name__}")
    if labels.numel() != n or (labels.dim() > 1 and labels.shape[0] != n):
        raise MaxAffineError(f"{what} must hold one scalar label per input, (N,) = ({n},), "
                             f"got shape {tuple(labels.shape)}")
    if labels.is_complex():
        raise MaxAffineTypeError(f"{what} must be real numbers, got dtype {labels.dtype}")
    if labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
        raise MaxAffineError(f"{what} hold NaN or infinite values")
    if labels.dtype in (torch.bfloat16, torch.float16):
        labels = labels.float()  # numpy (the table's columns) has no bfloat16
    return labels.detach().reshape(n).cpu()


def _slices(x: Tensor, y: Tensor | None, batch_size: int
            ) -> Iterator[tuple[Tensor, Tensor | None]]:
    if x.shape[0] == 0:
        yield x, y
    for s in range(0, x.shape[0], batch_size):
        yield x[s:s + batch_size], None if y is None else y[s:s + batch_size]


def _split_item(batch: Any, i: int) -> tuple[Any, Tensor | None]:
    """A loader's batch as (inputs, labels or None)."""
    if isinstance(batch, tuple | list):
        if not batch:
            raise MaxAffineError(f"data's batch {i} is empty: items must be inputs or "
                                 "(input, label, ...) tuples")
        x = batch[0]
        y = batch[1] if len(batch) > 1 else None
        if y is not None:
            if not isinstance(y, Tensor):
                try:
                    y = torch.as_tensor(y)
                except (TypeError, ValueError, RuntimeError):
                    raise MaxAffineTypeError(
                        f"the labels of data's batch {i} must be numbers (one per input), "
                        f"got {type(y).__name__} {str(y)[:60]}: map them to class "
                        "indices") from None
            n = x.shape[0] if isinstance(x, Tensor) else -1
            y = _labels(y, n, f"the labels of data's batch {i}")
        return x, y
    if isinstance(batch, Mapping):
        raise MaxAffineTypeError(f"data's batch {i} is a dict (keys {list(batch)[:5]}): "
                                 "scan takes inputs or (input, label) items; wrap the "
                                 "dataset to return them")
    return batch, None


def _regroup(loader: Iterator, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    """A loader's batches regrouped into batches of exactly ``batch_size`` inputs."""
    xs: list[Tensor] = []
    ys: list[Tensor | None] = []
    held = 0
    for i, batch in enumerate(loader):
        x, y = _split_item(batch, i)
        if not isinstance(x, Tensor):
            raise MaxAffineTypeError(f"data's batch {i} holds {type(x).__name__} inputs: "
                                     "they must be torch.Tensors")
        if x.dim() < 2:
            raise MaxAffineError(f"data's batch {i} has shape {tuple(x.shape)}: a batch "
                                 "needs a batch dimension (N, *input_shape)")
        xs.append(x)
        ys.append(y)
        held += x.shape[0]
        while held >= batch_size:
            yield _take(xs, ys, batch_size)
            held -= batch_size
    if held:
        yield _take(xs, ys, held)


def _take(xs: list[Tensor], ys: list[Tensor | None], n: int
          ) -> tuple[Tensor, Tensor | None]:
    """The first ``n`` held inputs (and labels), removed from ``xs`` / ``ys``."""
    if len({y is None for y in ys}) > 1:
        raise MaxAffineError("data gave labels for some batches and not for others: "
                             "give every item the same form, (input, label) or input")
    if len({tuple(x.shape[1:]) for x in xs}) > 1:
        shapes = sorted({tuple(x.shape[1:]) for x in xs})
        raise MaxAffineError(f"data's inputs have different shapes {shapes}: every input "
                             "must have the model's input shape")
    x = torch.cat(xs)
    y = None if ys[0] is None else torch.cat(ys)  # type: ignore[arg-type]
    xs[:] = [x[n:]] if x.shape[0] > n else []
    ys[:] = ([None if y is None else y[n:]] if x.shape[0] > n else [])
    return x[:n], None if y is None else y[:n]


# ------------------------------------------------------------------- one batch


def _measure_batch(graph: SplineGraph, x: Tensor, spec: dict[str, Any]) -> dict[str, Any]:
    """The measures of one batch, as numpy columns (the function every worker runs):
    column name -> (n,) array; ``__rows__`` the batch size, ``__warnings__`` the
    warnings raised (category, message)."""
    chosen = spec["measures"]
    n = x.shape[0]
    out: dict[str, Any] = {"__rows__": np.zeros(n, dtype=np.int8)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if {"codes", "region", "prediction"} & set(chosen):
            with torch.no_grad():
                ev = graph.run(x) if n else None
            if {"codes", "region"} & set(chosen):
                if ev is None:
                    packed = np.zeros((0, 0), dtype=np.uint8)
                else:
                    packed = codes_of(graph, ev.codes, n).packed().cpu().numpy()
                rows = np.empty(n, dtype=object)
                rows[:] = [r.tobytes() for r in packed]
                for name in ("codes", "region"):
                    if name in chosen:
                        out[name] = rows
            if "prediction" in chosen:
                if ev is None:
                    out["prediction"] = np.zeros(0, dtype=np.int64)
                else:
                    y = ev.output.reshape(n, -1)
                    pred = y.argmax(1) if y.shape[1] > 1 else (y[:, 0] > 0).long()
                    out["prediction"] = pred.cpu().numpy().astype(np.int64)
        if "local_complexity" in chosen:
            lc = local_complexity(graph, x, spec["radius"], spec["n_directions"],
                                  seed=spec["seed"])
            values = lc.values.cpu().numpy().astype(np.int64)
            out["local_complexity"] = values.sum(1)
            for i, name in enumerate(lc.names):
                out[f"local_complexity[{name}]"] = values[:, i]
        if "boundary_distance" in chosen:
            bd = boundary_distance(graph, x)
            values = bd.values.detach().cpu().numpy()
            out["boundary_distance"] = values.min(1)
            for i, name in enumerate(bd.names):
                out[f"boundary_distance[{name}]"] = values[:, i]
    out["__warnings__"] = [(w.category, str(w.message)) for w in caught]
    return out


def _rewarn(caught: list[tuple[type[Warning], str]]) -> None:
    """Raise again, here, the warnings a batch raised (each message once; not the
    deprecation notices of the libraries underneath, meant for their developers)."""
    for category, message in dict.fromkeys(caught):
        if not issubclass(category, DeprecationWarning | PendingDeprecationWarning):
            warnings.warn(message, category, stacklevel=3)


def _distributed(client: Any, graph: SplineGraph, batches: Iterator[Tensor],
                 spec: dict[str, Any], bar: Any) -> list[dict[str, Any]]:
    """Measure the batches on the client's workers, at most ``_IN_FLIGHT`` per worker
    thread queued; the results in batch order."""
    from distributed import as_completed

    shipped = client.scatter(graph, broadcast=True, hash=False)
    window = max(2, _IN_FLIGHT * sum(client.nthreads().values()))
    order: dict[str, int] = {}
    done: dict[int, dict[str, Any]] = {}
    pending = as_completed()

    def collect(future: Any) -> None:
        result = future.result()  # a worker's exception is raised here
        _rewarn(result.pop("__warnings__"))
        done[order.pop(future.key)] = result
        bar.update(len(result["__rows__"]))

    for i, x in enumerate(batches):
        part = client.scatter(x, hash=False)
        future = client.submit(_measure_batch, shipped, part, spec, pure=False)
        order[future.key] = i
        pending.add(future)
        while pending.count() >= window:
            collect(next(pending))
    for future in pending:
        collect(future)
    return [done[i] for i in range(len(done))]


# ------------------------------------------------------------------- many partitions


_PARTITION_OPTIONS = tuple(
    name for name, p in inspect.signature(partition_plane).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "progress")


def partition_many(model: nn.Module | SplineGraph, slices: Sequence[Slice | Tensor],
                   client: Any = None, *, progress: bool = True,
                   **partition_kwargs: Any) -> list[Partition]:
    """:func:`maxaffine.partition_plane` of ``model`` over each of ``slices``.

    ``slices``: a list of :class:`maxaffine.Slice` (or convex polygons (K, 2) for a
    model with 2-D inputs); ``partition_kwargs``: ``partition_plane``'s options
    (``dtype``, ``tol``, ``max_regions``), the same for every slice. ``client``: a
    ``dask.distributed.Client``: the model is sent once to every worker and the
    slices are partitioned there in parallel (each result equals the in-process one
    except ``seconds``, the time it took); warnings raised there are raised here.
    ``progress``: a tqdm bar of slices done. Returns the partitions in the order of
    ``slices``.
    """
    progress = arg.flag(progress, "progress")
    client = _check_client(client)
    if isinstance(slices, Slice | Tensor | str | bytes) or not isinstance(slices, Sequence):
        raise MaxAffineTypeError(f"slices must be a list of maxaffine.Slice (or polygons "
                                 f"(K, 2)), got {type(slices).__name__}; one slice: "
                                 "[slice]")
    for i, s in enumerate(slices):
        if not isinstance(s, Slice | Tensor):
            raise MaxAffineTypeError(f"slices[{i}] must be a maxaffine.Slice or a polygon "
                                     f"tensor (K, 2), got {type(s).__name__}")
    for key in partition_kwargs:
        if key not in _PARTITION_OPTIONS:
            raise MaxAffineError(f"partition_many got an unknown option {key!r}: "
                                 f"partition_plane's options are {_PARTITION_OPTIONS}")
    if not isinstance(model, nn.Module | SplineGraph):
        raise MaxAffineTypeError(f"model must be a torch.nn.Module or a maxaffine."
                                 f"SplineGraph, got {type(model).__name__}")
    from tqdm.auto import tqdm

    results: list[Partition] = []
    with tqdm(total=len(slices), desc="partitions", unit="slice",
              disable=not progress) as bar:
        if client is None:
            for s in slices:
                part, caught = _partition_one(model, s, partition_kwargs)
                _rewarn(caught)
                results.append(part)
                bar.update(1)
            return results
        if not slices:
            return results
        from distributed import as_completed

        shipped = client.scatter(model, broadcast=True, hash=False)
        futures = [client.submit(_partition_one, shipped, s, partition_kwargs, pure=False)
                   for s in slices]
        position = {f.key: i for i, f in enumerate(futures)}
        done: dict[int, Partition] = {}
        for future in as_completed(futures):
            part, caught = future.result()
            _rewarn(caught)
            done[position[future.key]] = part
            bar.update(1)
        return [done[i] for i in range(len(slices))]


def _partition_one(model: nn.Module | SplineGraph, domain: Slice | Tensor,
                   options: dict[str, Any]) -> tuple[Partition, list]:
    """One partition and the warnings it raised (the function every worker runs)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        part = partition_plane(model, domain, progress=False, **options)
    return part, [(w.category, str(w.message)) for w in caught]


__all__ = ["DEFAULT_MEASURES", "MEASURES", "partition_many", "scan"]

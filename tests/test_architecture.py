"""The layout: docs/architecture.md's "How to add an op" runs, the package's public
surface (lazy submodules, every returned type exported) and an acyclic import graph."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

import maxaffine as ma
from maxaffine import ops
from reference_partition import reference_partition

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "maxaffine"
DOC = (ROOT / "docs" / "architecture.md").read_text()


def _section(title: str) -> str:
    start = DOC.index(f"## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:] if end < 0 else DOC[start:end + 1]


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every module of the package."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


MODULES = _modules()
PUBLIC_SUBMODULES = sorted(
    name.split(".")[1] for name in MODULES
    if name.count(".") == 1 and not name.split(".")[1].startswith("_"))


# ------------------------------------------------------------------ docs/architecture.md


def test_how_to_add_an_op_is_short_and_runs():
    section = _section("How to add an op")
    assert len(section.rstrip("\n").splitlines()) <= 30
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    before = set(ops._REGISTRY)
    ns: dict[str, typing.Any] = {"__name__": "architecture"}
    try:
        torch.manual_seed(0)
        exec(compile(block, "docs/architecture.md: How to add an op", "exec"), ns)
        net, part = ns["net"], ns["part"]
        graph = ma.trace(net, torch.zeros(1, 2, dtype=torch.float64))
        assert [(u.kind, u.num_pieces) for u in graph.layers] == [("ClippedReLU", 3)]
        x = torch.randn(64, 2, dtype=torch.float64) * 2
        amap = ma.affine_map(graph, x)
        torch.testing.assert_close(amap.reconstruct(), net(x), rtol=0, atol=1e-12)
        codes = ma.codes(graph, x)
        assert set(codes["1"].unique().tolist()) <= {0, 1, 2}
        # the plane partition: face codes are their interior points', the faces tile
        # the square, and the regions are those of the slow reference
        assert torch.equal(ma.codes(graph, part.interior).packed(), part.packed)
        assert abs(float(part.areas.sum()) - 16.0) < 1e-9
        ref = {code for _, code in reference_partition(graph, ma.Slice.square(-2, 2))}
        assert {bytes(c.tolist()) for c in part.packed} == ref
        assert part.num_regions == len(ref) > 1
    finally:
        for key in [k for k in ops._REGISTRY if k not in before]:
            del ops._REGISTRY[key]  # other tests in this process enumerate the registry


def test_architecture_names_every_module():
    """Each module of the package has its place in the layout."""
    missing = []
    for name, (path, package) in MODULES.items():
        if name == "maxaffine" or (name.count(".") > 1 and not package):
            continue  # submodules of a subpackage go under its entry
        mention = f"{path.parent.name}/" if package else path.name
        if f"`{mention}" not in DOC:
            missing.append(mention)
    assert not missing, f"docs/architecture.md does not place: {missing}"


# ------------------------------------------------------------------ public surface


def _fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter; its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_submodules_are_lazy_attributes():
    lazy = {"maxaffine.cli", "maxaffine.demo", "maxaffine.experiments"}
    out = _fresh(
        "import sys, maxaffine as ma\n"
        f"early = sorted(m for m in {sorted(lazy | {'matplotlib', 'numba'})!r} "
        "if m in sys.modules)\n"
        "print(early)\n"
        f"for name in {PUBLIC_SUBMODULES!r}:\n"
        "    module = getattr(ma, name)\n"
        "    assert module is sys.modules['maxaffine.' + name], name\n"
        "    assert name in dir(ma), name\n"
        "print(ma.losses.template_orthogonality.__module__, ma.experiments.experiments()"
        "['beta-vq'].name)\n")
    early, used = out.splitlines()
    assert early == "[]", f"import maxaffine imported {early}"
    assert used == "maxaffine.losses beta-vq"
    with pytest.raises(AttributeError, match="no attribute 'lattice'"):
        ma.lattice  # noqa: B018  (private modules are not attributes)


def test_every_name_in_all_resolves():
    assert len(set(ma.__all__)) == len(ma.__all__)
    for name in ma.__all__:
        assert getattr(ma, name) is not None, name
    namespace: dict[str, typing.Any] = {}
    exec("from maxaffine import *", namespace)
    assert set(ma.__all__) <= set(namespace)


def _classes(annotation: typing.Any, out: set[type]) -> None:
    if isinstance(annotation, type):
        if annotation.__module__.startswith("maxaffine"):
            out.add(annotation)
        return
    for arg in typing.get_args(annotation):
        _classes(arg, out)


_LAZY_TYPES = {"pandas": importlib.import_module("pandas")}


def _returned(obj: typing.Any) -> set[type]:
    """maxaffine classes that ``obj`` (a function, or a class's public methods,
    properties and fields) returns."""
    out: set[type] = set()
    functions = [obj] if not isinstance(obj, type) and callable(obj) else []
    if isinstance(obj, type):
        for name, value in vars(obj).items():
            if name.startswith("_") and name != "__call__":
                continue
            value = value.fget if isinstance(value, property) else value
            value = getattr(value, "__func__", getattr(value, "func", value))
            if callable(value):
                functions.append(value)
        if dataclasses.is_dataclass(obj):
            hints = typing.get_type_hints(obj)
            for f in dataclasses.fields(obj):
                if not f.name.startswith("_"):
                    _classes(hints[f.name], out)
    for fn in functions:
        try:
            # third-party types imported lazily (under TYPE_CHECKING) resolve here
            hints = typing.get_type_hints(fn, localns=_LAZY_TYPES)
        except (NameError, TypeError) as err:
            raise AssertionError(f"{fn.__qualname__}: annotations do not resolve ({err})") \
                from err
        _classes(hints.get("return"), out)
    return out


def test_every_returned_type_is_exported():
    """What public functions and the methods of their results return is importable
    from ``maxaffine`` (the op contract's own types from ``maxaffine.ops``)."""
    seen: set[type] = set()
    todo = [getattr(ma, name) for name in ma.__all__]
    while todo:
        for klass in _returned(todo.pop()) - seen:
            seen.add(klass)
            todo.append(klass)
    missing = sorted(
        f"{k.__module__}.{k.__name__}" for k in seen
        if not (k.__name__ in ma.__all__ and getattr(ma, k.__name__) is k)
        and not (k.__module__ == "maxaffine.ops" and k.__name__ in ops.__all__))
    assert not missing, f"returned but not exported: {missing}"
    assert {ma.Evaluation, ma.PowerCells, ma.LocalComplexity} <= seen


# ------------------------------------------------------------------ imports


def _runtime_imports(tree: ast.Module, functions: bool = False
                     ) -> typing.Iterator[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported (with ``functions``, also
    those inside functions, which run when they are called); never those under
    ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
        elif functions or not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef
                                         | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))


def _imported(name: str, functions: bool = False) -> set[str]:
    """The package's modules that importing ``name`` imports directly (with the
    subpackages on the way, except ``name``'s own; the root package, imported first
    anyway, only where a name is taken from it)."""
    path, package = MODULES[name]
    here = name if package else name.rpartition(".")[0]
    out: set[str] = set()

    def add(target: str) -> None:
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            module = ".".join(parts[:i])
            # (a module's own packages are imported before it, never by it)
            if module in MODULES and module != name and not name.startswith(module + "."):
                out.add(module)

    for node in _runtime_imports(ast.parse(path.read_text()), functions):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
            continue
        if node.level:
            base = here.split(".")[: len(here.split(".")) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source.split(".")[0] != "maxaffine":
            continue
        add(source)
        for alias in node.names:
            if f"{source}.{alias.name}" in MODULES:
                add(f"{source}.{alias.name}")
            elif source == "maxaffine" and name != "maxaffine":
                out.add("maxaffine")
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_module_level_imports_have_no_cycle():
    graph = {name: _imported(name) for name in MODULES}
    assert graph["maxaffine.partition.plane"] >= {"maxaffine.graph", "maxaffine.vq"}  # sanity
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


def test_imports_in_functions_have_no_cycle_either():
    # lazy imports inside functions too: data flows one way (the package's __init__,
    # which re-exports, excepted)
    graph = {name: _imported(name, functions=True) - {"maxaffine"} for name in MODULES}
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


def test_every_module_imports_first():
    """Each module imports on its own, as the first of the package (a fresh
    interpreter for each, torch kept: partial initialisation shows as an error)."""
    out = _fresh(
        "import importlib, sys, torch\n"
        f"for name in {sorted(MODULES)!r}:\n"
        "    for m in [m for m in sys.modules if m.split('.')[0] == 'maxaffine']:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "print('ok')\n")
    assert out.strip() == "ok"

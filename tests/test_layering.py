"""The house's layering, read from the source with :mod:`ast` (nothing is imported):

- no import cycle between cxr_max modules, nor between its subpackages (``cxr_max.mimic``,
  ``cxr_max.drift``, ...; a top-level module such as ``cxr_max.builder`` is a unit of its own);
- no module imports another module's private names (``from cxr_max.x import _name``, ``x._name`` on an
  imported cxr_max module, or ``cxr_max.x._name`` after ``import cxr_max.x``) in ``cxr_max/``, ``recipes/``,
  ``builders/``, ``benchmarks/``. This test is the project's one check of that (ruff is not a dependency).

Every import counts, the ones inside functions too (a lazy import hides a cycle, it does not remove it),
except those under ``if TYPE_CHECKING:`` (annotations only, never run). Importing a submodule imports its
parent packages; that edge is not a cycle.

The ``KNOWN_*`` sets list what is still left, each with the reason; the tests fail on anything new *and*
on an entry that has gone (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "cxr_max"
SCANNED = ("cxr_max", "recipes", "builders", "benchmarks")

KNOWN_MODULE_CYCLES: set[frozenset[str]] = set()
KNOWN_SUBPACKAGE_CYCLES: set[frozenset[str]] = set()
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The cxr_max module a dotted name lives in (the longest module prefix), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skip.update(id(n) for n in ast.walk(child))
    return skip


def _imports(module: str | None, path: Path) -> list[tuple[ast.stmt, str, list[str]]]:
    """``(node, imported module or package, [names])`` for every cxr_max import that runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _type_checking_nodes(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "cxr_max":
                    out.append((node, alias.name, []))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if module is None:
                    continue
                pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            if base.split(".")[0] == "cxr_max":
                out.append((node, base, [a.name for a in node.names]))
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for _, base, names in _imports(module, path):
            for target in {_resolve(f"{base}.{n}") for n in names} if names else {_resolve(base)}:
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.add(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.add(frozenset(comp))
    return found


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_cycle_finder_by_hand():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e2"}, "e2": set()}
    assert _cycles(graph) == {frozenset({"a", "b", "c"})}
    assert _cycles({"x": {"y"}, "y": set()}) == set()


def test_no_module_import_cycles():
    assert _cycles(_graph()) == KNOWN_MODULE_CYCLES


def test_no_subpackage_import_cycles():
    units: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        units.setdefault(_unit(module), set()).update(_unit(t) for t in targets if _unit(t) != _unit(module))
    assert _cycles(units) == KNOWN_SUBPACKAGE_CYCLES


def test_mimic_reads_no_higher_layer():
    """The MIMIC reader depends only on errors and labels (not on the builder, trajectories or teachers)."""
    graph = _graph()
    for module in (m for m in graph if _unit(m) == "cxr_max.mimic"):
        outside = {_unit(t) for t in graph[module]} - {"cxr_max.mimic"}
        assert outside <= {"cxr_max.errors", "cxr_max.labels"}, (module, outside)


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attribute lookups on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _private_uses(module: str | None, path: Path) -> set[str]:
    """The other cxr_max modules' private names (``_name``, not dunders) that the file at ``path`` uses."""
    found = set()
    aliases: dict[str, str] = {}  # local name -> the cxr_max module it is bound to
    for node, base, names in _imports(module, path):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases.setdefault("cxr_max", "cxr_max")  # ``import cxr_max.x`` binds ``cxr_max``
            continue
        for alias in node.names:
            full = f"{base}.{alias.name}"
            if full in MODULES:
                aliases[alias.asname or alias.name] = full
            elif alias.name.startswith("_") and not alias.name.startswith("__") and _resolve(base) != module:
                found.add(full)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        chain = _dotted(node.value)
        if chain is None or chain.split(".")[0] not in aliases:
            continue
        head, _, rest = chain.partition(".")
        owner = aliases[head] + (f".{rest}" if rest else "")
        if owner in MODULES and owner != module:
            found.add(f"{owner}.{node.attr}")
    return found


def test_private_finder_by_hand(tmp_path):
    src = tmp_path / "probe.py"
    src.write_text(
        "import cxr_max.evaluation.labeler\n"
        "import cxr_max.drift.findings as F\n"
        "from cxr_max.evaluation import clinical\n"
        "from cxr_max.evaluation.runner import _check_pairs, as_text\n"
        "def f(x):\n"
        "    self._cache = x._private  # attributes of non-modules are not imports\n"
        "    return (cxr_max.evaluation.labeler._prepare(x), F._side, clinical._nanmean0, clinical.__name__,\n"
        "            cxr_max.evaluation.labeler.clauses(x))\n")
    assert _private_uses(None, src) == {
        "cxr_max.evaluation.runner._check_pairs", "cxr_max.evaluation.labeler._prepare",
        "cxr_max.drift.findings._side", "cxr_max.evaluation.clinical._nanmean0"}
    src.write_text("from cxr_max.evaluation import labeler\nlabeler.clauses('x')\n")
    assert _private_uses(None, src) == set()


def test_no_private_imports_across_modules():
    found = set()
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            module = next((m for m, p in MODULES.items() if p == path), None)
            rel = path.relative_to(REPO).as_posix()
            found.update((rel, name) for name in _private_uses(module, path))
    assert found == KNOWN_PRIVATE_IMPORTS

"""Imports go one way: no cycle in the package, and the library never imports the projects
built on it (tasks/, experiments/, benchmarks/)."""

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "ernie_m_jax"
USERS = ("tasks", "experiments", "benchmarks")


def import_graph(root: Path, packages) -> Dict[str, Set[str]]:
    """module -> project modules it imports, from every import statement at any depth."""
    modules = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path

    def resolve(name: str):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets.update([base, *(f"{base}.{a.name}" for a in node.names)])
        graph[name] = {t for t in map(resolve, targets) if t and t != name}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), leaving out a package
    whose __init__ re-exports its own submodules."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            head = min(component)
            if len(component) > 1 and not all(m.startswith(head) for m in component):
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_project():
    graph = import_graph(ROOT, (LIBRARY, *USERS))
    assert len(graph) > 40
    assert cycles(graph) == []


def test_the_library_never_imports_tasks_experiments_or_benchmarks():
    graph = import_graph(ROOT, (LIBRARY, *USERS))
    upward = {m: sorted(t for t in targets if t.split(".")[0] in USERS)
              for m, targets in graph.items() if m.split(".")[0] == LIBRARY}
    assert {m: t for m, t in upward.items() if t} == {}


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "__init__.py").write_text("")
    (tmp_path / "lib" / "a.py").write_text("def f():\n    from lib import b\n")
    (tmp_path / "lib" / "b.py").write_text("from . import a\nimport tasks.x\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "x.py").write_text("")
    graph = import_graph(tmp_path, ("lib", "tasks"))
    assert cycles(graph) == [["lib.a", "lib.b"]]
    assert {"lib.a", "tasks.x"} <= graph["lib.b"]

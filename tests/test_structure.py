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


# Every import inside a function of the library or tasks/, and why it is not at the top (there
# is no cycle to break: `test_no_import_cycle_in_the_project` holds with all of them moved up).
# A new one needs its reason here; "*" covers every import of that module.
FUNCTION_LEVEL_IMPORTS = {
    ("ernie_m_jax.cli", "*"): "each subcommand imports only what it runs, so --help, flag "
                              "errors and `smoke` answer before TensorFlow or orbax load",
    ("ernie_m_jax.aot.hardware", "libtpu"): "the tpu extra, loaded after the environment "
                                            "variables libtpu reads are set",
    ("ernie_m_jax.aot.hardware", "jax.experimental.topologies"): "with libtpu, as above",
    ("ernie_m_jax.console", "tensorflow"): "imported with its start-up lines filtered out",
    ("ernie_m_jax.metrics", "tensorflow"): "only the TensorBoard writer needs it; FLOP "
                                           "counts (benchmarks, compile) do not load it",
    ("ernie_m_jax.data.cache", "apache_beam"): "the cache extra",
    ("ernie_m_jax.data.cache", "seqio.scripts.cache_tasks_main"): "needs apache_beam",
    ("ernie_m_jax.export.hf_import", "torch"): "only for pytorch_model.bin weights; torch "
                                               "is not a dependency",
}


def function_level_imports(root: Path, packages) -> Set[tuple]:
    """(module, imported name) of every import statement inside a function."""
    found = set()
    for package in packages:
        for path in (root / package).rglob("*.py"):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            for function in ast.walk(ast.parse(path.read_text())):
                if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(function):
                    if isinstance(node, ast.Import):
                        found.update((module, a.name) for a in node.names)
                    elif isinstance(node, ast.ImportFrom):
                        found.update((module, f"{node.module}.{a.name}") for a in node.names)
    return found


def test_function_level_imports_are_the_listed_ones_each_with_its_reason():
    found = function_level_imports(ROOT, (LIBRARY, "tasks"))
    everything = {module for module, name in FUNCTION_LEVEL_IMPORTS if name == "*"}
    unlisted = sorted(i for i in found if i not in FUNCTION_LEVEL_IMPORTS
                      and i[0] not in everything)
    assert unlisted == [], "move these to the top, or give the reason in FUNCTION_LEVEL_IMPORTS"
    stale = sorted(i for i in FUNCTION_LEVEL_IMPORTS if i[1] != "*" and i not in found)
    assert stale == []
    assert any(module == "ernie_m_jax.cli" for module, _ in found)


def test_the_import_scan_sees_nested_imports(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.py").write_text(
        "import os\n\ndef f():\n    def g():\n        from lib import b\n    import json\n")
    assert function_level_imports(tmp_path, ("lib",)) == {("lib.a", "lib.b"),
                                                           ("lib.a", "json")}


# gin binds a configurable when it is called: one called for a default argument is called once,
# at import, before any gin file is parsed, and silently ignores the run's bindings.
def gin_configurables(root: Path, packages) -> Set[str]:
    """Names of the classes and functions decorated `@gin.configurable`."""
    names = set()
    for package in packages:
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and any(
                        "gin.configurable" in ast.unparse(d) for d in node.decorator_list):
                    names.add(node.name)
    return names


def gin_default_arguments(root: Path, packages) -> List[str]:
    """`module:function(argument)` for every default that calls a gin configurable."""
    configurables = gin_configurables(root, packages)
    found = []
    for package in packages:
        for path in (root / package).rglob("*.py"):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    continue
                args = node.args
                positional = args.posonlyargs + args.args
                pairs = list(zip(positional[len(positional) - len(args.defaults):],
                                 args.defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
                for arg, default in pairs:
                    calls = [c for c in ast.walk(default) if isinstance(c, ast.Call)] \
                        if default is not None else []
                    if any(ast.unparse(c.func).rpartition(".")[2] in configurables
                           for c in calls):
                        found.append(f"{module}:{getattr(node, 'name', 'lambda')}({arg.arg})")
    return found


def test_no_gin_configurable_is_a_default_argument():
    assert {"MeshConfig", "SpecialTokens", "TrainConfig", "DataConfig"} <= gin_configurables(
        ROOT, (LIBRARY, "tasks"))
    assert gin_default_arguments(ROOT, (LIBRARY, *USERS)) == []


def test_the_gin_default_scan_sees_one(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.py").write_text(
        "import gin\n\n@gin.configurable\nclass C:\n    pass\n\n"
        "def f(x, c=C(), *, d=None, e=dict(c=C())):\n    pass\n\ndef g(c=None):\n    pass\n")
    assert gin_default_arguments(tmp_path, ("lib",)) == ["lib.a:f(c)", "lib.a:f(e)"]

"""The floors of docs/design.md §3: arrows point down only, no import circle, algorithms never
import environments. Read from the source (every import, at module level or inside a
function), so a lazy import cannot hide a circle."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dsorl"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict:
    """`{module: {dsorl modules it imports}}`, `from dsorl.x import y` counted as `dsorl.x`
    (or `dsorl.x.y` when that is a module)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("dsorl")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dsorl"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    found.add(sub if sub in modules else node.module)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_algorithms_never_import_environments():
    bad = {m: sorted(d for d in deps if d.startswith("dsorl.envs"))
           for m, deps in _imports().items() if m.startswith("dsorl.algorithms")}
    assert not {m: d for m, d in bad.items() if d}, bad


def test_no_import_circle_below_the_package_root():
    # the package root and the sub-package __init__s re-export: leave them out
    graph = {m: {d for d in deps if d not in ("dsorl", "dsorl.envs", "dsorl.algorithms",
                                               "dsorl.estimators", "dsorl.jobs")}
             for m, deps in _imports().items()
             if m not in ("dsorl", "dsorl.envs", "dsorl.algorithms", "dsorl.estimators",
                          "dsorl.jobs")}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_core_floors_do_not_import_upper_floors():
    core = ("dsorl._checks", "dsorl._struct", "dsorl.graph", "dsorl.mdp", "dsorl.markov",
            "dsorl.sparse", "dsorl.krylov",
            "dsorl.gamma_sweep", "dsorl.fixed_point", "dsorl.episodic", "dsorl.lmdp")
    upper = ("dsorl.algorithms", "dsorl.estimators", "dsorl.envs", "dsorl.jobs", "dsorl.sweep",
             "dsorl.chain_models", "dsorl.planning", "dsorl.objectives", "dsorl.cli")
    graph = _imports()
    bad = {m: sorted(d for d in graph[m] if d.startswith(upper)) for m in core if m in graph}
    assert not {m: d for m, d in bad.items() if d}, bad

"""The package's modules form layers: no module imports, at any depth, one that imports it back.

Imports inside functions count too: a deferred import hides a circle from the
interpreter, not from a reader.
"""
import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "lib"


def module_imports() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE_ROOT.joinpath("medseg").rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE_ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        # A package's own __init__ is not an edge back to its submodules' parent.
        graph[name] = {m for m in imported if m in modules and m != name and not name.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_one_that_imports_it_back():
    graph = module_imports()
    assert len(graph) > 50 and "medseg.imageio" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_volumes_and_metrics_sit_below_their_users():
    graph = module_imports()
    assert "medseg.imageio" not in graph["medseg.dicom.series"]
    assert "medseg.pipeline.training" not in graph["medseg.pipeline.postprocess"]
    assert graph["medseg.volume"] <= {"medseg.errors"}
    assert graph["medseg.pipeline.metrics"] == set()

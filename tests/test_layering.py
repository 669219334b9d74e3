"""The layering of docs/architecture.md, checked on the import graph.

Every import of a spa module (at module level or inside a function; not those
under ``if TYPE_CHECKING``) must point to the same layer or one below, and the
graph of modules must have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]

#: Lowest layer first; a module belongs to the first entry that is a prefix of its name.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("spa.errors", "spa.progress", "spa.constants", "spa.destinations", "spa.model_check", "spa.model_io", "spa.ir_shapes", "spa.graph_outputs", "spa.ort", "spa.ort_segments", "spa.zoo_data"),
    ("spa.calibration", "spa.zoo", "spa.testbeds"),
    ("spa.pass_manager",),
    ("spa.analysis",),
    ("spa.quant",),
    ("spa.pruning",),
    ("spa.verify", "spa.stats", "spa.trt"),
    ("spa.passes",),
    ("spa.workflows",),
    ("spa.cli",),
)


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] == "passes":
        parts = ["spa", "passes", *parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> int | None:
    if module == "spa":
        return 0
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name in known:
                found.add(name)
    found.discard(module)
    return found


def import_graph() -> nx.DiGraph:
    files = [*ROOT.joinpath("spa").rglob("*.py"), *ROOT.joinpath("passes").rglob("*.py")]
    modules = {_module_name(path): path for path in files}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for module, path in modules.items():
        for target in _imports(path, module, set(modules)):
            graph.add_edge(module, target)
    return graph


def test_every_module_has_a_layer() -> None:
    assert [m for m in import_graph() if _layer(m) is None] == []


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{source} (layer {_layer(source)}) imports {target} (layer {_layer(target)})"
        for source, target in import_graph().edges
        if (_layer(target) or 0) > (_layer(source) or 0)
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    graph = import_graph()
    # A package importing its own submodules (to re-export them) is not a cycle.
    for source, target in list(graph.edges):
        if target.startswith(source + "."):
            graph.remove_edge(source, target)
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert cycles == []


def test_the_layering_test_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an analysis module importing a pass is reported."""
    source = "from spa.passes.prune import apply_plan\n"
    path = tmp_path / "spa" / "analysis" / "bad.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    found = _imports(path, "spa.analysis.bad", {"spa.passes.prune"})
    assert found == {"spa.passes.prune"}
    assert _layer("spa.passes.prune") > _layer("spa.analysis.bad")  # type: ignore[operator]

"""The import graph points one way (issue 15): the HTTP layer never imports the CLI, and no
two modules import each other — also not through a function-level (lazy) import, which only
hides a circle. Imports under `if TYPE_CHECKING:` count too: they are the same dependency."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "smtprelay"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def test_http_never_imports_the_cli() -> None:
    graph = _graph()
    offenders = sorted(f"{m} imports {t}" for m, ts in graph.items() if m.startswith("smtprelay.http")
                       for t in ts if t == "smtprelay.cli" or t.startswith("smtprelay.cli."))
    assert offenders == []


def test_no_two_modules_import_each_other() -> None:
    graph = _graph()
    pairs = sorted({tuple(sorted((a, b))) for a, ts in graph.items() for b in ts if a in graph.get(b, set())})
    assert pairs == []


def test_no_longer_import_circles() -> None:
    """Not only pairs: no module reaches itself through any chain of imports. Package
    `__init__` re-exports are followed too."""
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert cycles == []

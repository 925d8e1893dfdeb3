"""Dependencies point one way, read from the import statements (ast), so they stay true.

shared <- agent <- (nothing); shared <- controller (+ agent.runtime to re-run golden
vectors); firmware_sim may use all three through public names; the controller's
modules import each other without cycles. Imports under ``if TYPE_CHECKING:`` do not
count (they never run); imports inside functions do.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "controller", "firmware_sim", "shared")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_pkg: bool) -> Iterator[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import that runs."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_pkg else module.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            yield node.lineno, base, [a.name for a in node.names]
        stack.extend(ast.iter_child_nodes(node))


def _all_imports() -> list[tuple[str, str, int, str, list[str]]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            mod = _module_name(path)
            tree = ast.parse(path.read_text(), str(path))
            for line, target, names in _imports(tree, mod, path.name == "__init__.py"):
                out.append((f"{path.relative_to(ROOT)}:{line}", mod, line, target, names))
    return out


IMPORTS = _all_imports()


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _violations(importer_pkg: str, allowed: Callable[[str], bool]) -> list[str]:
    return [
        f"{where}: {mod} imports {target}"
        for where, mod, _, target, _names in IMPORTS
        if _top(mod) == importer_pkg and _top(target) in PACKAGES and not allowed(target)
    ]


def test_shared_imports_only_shared() -> None:
    assert _violations("shared", lambda t: _top(t) == "shared") == []


def test_agent_imports_only_agent_and_shared() -> None:
    assert _violations("agent", lambda t: _top(t) in ("agent", "shared")) == []


def test_controller_imports_of_the_agent_are_its_model_runtimes_only() -> None:
    def allowed(t: str) -> bool:
        return _top(t) in ("controller", "shared") or t == "agent.runtime"

    assert _violations("controller", allowed) == []


def test_firmware_sim_uses_public_names_only() -> None:
    bad = []
    for where, mod, _, target, names in IMPORTS:
        if _top(mod) != "firmware_sim" or _top(target) not in PACKAGES or _top(target) == "firmware_sim":
            continue
        if any(part.startswith("_") for part in target.split(".")) or any(n.startswith("_") for n in names):
            bad.append(f"{where}: private name from {target}")
        if target.startswith("agent.runtime."):
            bad.append(f"{where}: {target} is a runtime's internals; use agent.runtime")
    assert bad == []


def test_nothing_imports_tests_or_scripts() -> None:
    bad = [f"{w}: {t}" for w, _m, _l, t, _n in IMPORTS if _top(t) in ("tests", "scripts")]
    assert bad == []


def _controller_graph() -> dict[str, set[str]]:
    modules = {mod for _w, mod, _l, _t, _n in IMPORTS if _top(mod) == "controller"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for _w, mod, _l, target, names in IMPORTS:
        if _top(mod) != "controller" or _top(target) != "controller":
            continue
        for cand in [f"{target}.{n}" for n in names] + [target]:
            if cand in modules and cand != mod:
                graph[mod].add(cand)
                break
    return graph


def test_controller_modules_have_no_import_cycles() -> None:
    graph = _controller_graph()
    # A package's __init__ re-exporting its modules is not a cycle of concerns.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    """The reader is not blind: a function-local import counts, a TYPE_CHECKING one does not."""
    src = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import controller.app\n"
        "def f():\n    from controller.core import db\n"
    )
    found = list(_imports(ast.parse(src), "agent.x", False))
    assert [t for _l, t, _n in found if _top(t) == "controller"] == ["controller.core"]


def test_controller_layers_core_then_concerns_then_api() -> None:
    """core uses no other part of the controller; the concern packages never reach up into the API, CLI, web console or app."""
    upper = ("controller.api", "controller.cli", "controller.web", "controller.app", "controller.server")
    bad = []
    for where, mod, _l, target, _n in IMPORTS:
        if _top(target) != "controller":
            continue
        if mod.startswith("controller.core") and not target.startswith("controller.core") and target != "controller":
            bad.append(f"{where}: core imports {target}")
        concern = mod.split(".")[1] if mod.count(".") >= 1 else ""
        if concern not in ("api", "cli", "web", "app", "server", "migrations", "__main__") and target.startswith(upper):
            bad.append(f"{where}: {mod} reaches up into {target}")
    assert bad == []

"""The layout stays readable: no module imports another's private names, and kdistill has no import cycle.

Both are checked on the source (every import statement, also those inside functions), so a lazy import
that closes a cycle fails here even though Python would tolerate it at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.joinpath("kdistill").rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(imported kdistill module, imported name or '', line) for every import statement in the file."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("kdistill")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("kdistill"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                # `from kdistill.x import y` names the module kdistill.x.y when that is a module
                found.append((sub, "", node.lineno) if sub in modules else (base, a.name, node.lineno))
    return found


def test_no_module_imports_a_private_name_of_another():
    modules = all_modules()
    offenders = [
        f"{path.relative_to(SRC)}:{line}: from {target} import {name}"
        for mod, path in modules.items()
        for target, name, line in imports_of(path, modules)
        if (name.startswith("_") and target != mod)
        or any(p.startswith("_") for p in target.split(".")[1:])
        and not target.endswith("__init__")
    ]
    assert offenders == [], "private names imported across modules:\n" + "\n".join(offenders)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (as a closed path), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_kdistill_has_no_import_cycle():
    modules = all_modules()
    graph = {
        mod: {target for target, _, _ in imports_of(path, modules) if target in modules and target != mod}
        for mod, path in modules.items()
    }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("package", ["classic", "lm", "encoders", "generate", "runs", "losses", "cli"])
def test_task_and_shared_packages_exist_with_their_entry_points(package):
    root = SRC / "kdistill" / package
    assert (root / "__init__.py").is_file()
    if package in ("classic", "lm", "encoders"):
        assert (root / "recipe.py").is_file() and (root / "config.py").is_file()


def test_nothing_but_the_cli_imports_the_cli():
    modules = all_modules()
    offenders = [
        f"{mod} imports {target}"
        for mod, path in modules.items()
        if not mod.startswith("kdistill.cli")
        for target, _, _ in imports_of(path, modules)
        if target.startswith("kdistill.cli")
    ]
    assert offenders == []

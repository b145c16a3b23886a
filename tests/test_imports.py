"""The import graph of cnnkit/ has no cycles, the layout keeps its floor plan, and every entry point
lists every command.

Edges come from the AST of every module under cnnkit/: each `import cnnkit.x` and
`from cnnkit.x import y` anywhere in the file, at module level or inside a function. Lazy imports
count too: a cycle that only works because one side imports late is still a cycle a reader has
to untangle, and one refactor away from an ImportError. Imports under `if TYPE_CHECKING:` do not
count as cycles: they never run, so they cannot leave a module half-initialised; they only name a
type for an annotation. But a TYPE_CHECKING import of a module that imports the importer back is
refused on its own (test_no_type_checking_back_references): it is a lower room naming a higher
one's types, i.e. rendering what it should only describe.

An edge goes to the module named (`from cnnkit.data import cache` names the module
cnnkit.data.cache; `from cnnkit.data import Split` names the package cnnkit.data). Importing a
submodule also runs its parent package's __init__, but that implicit edge is not counted: a
package that re-exports its submodules' names is the usual layout, and it only breaks when a
submodule imports the package itself, which is an explicit edge and is caught.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cnnkit"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_edges(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The cnnkit modules that the module `name` (with text `source`) imports when it runs."""
    edges = set()
    for node in _runtime_nodes(ast.parse(source)):
        edges |= _imported(node, name, is_package, modules)
    return edges


def type_checking_edges(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The cnnkit modules that `name` imports only for annotations, under `if TYPE_CHECKING:`."""
    edges = set()
    for block in ast.walk(ast.parse(source)):
        if isinstance(block, ast.If) and _is_type_checking(block.test):
            for statement in block.body:
                for node in ast.walk(statement):
                    edges |= _imported(node, name, is_package, modules)
    return edges


def _imported(node: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The cnnkit modules one import statement names (none for any other node)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            package = name if is_package else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        # `from a import b` imports the module a.b when there is one, else a name from a.
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    else:
        return set()
    edges = set()
    for target in targets:
        # `import cnnkit.a.b` names cnnkit.a.b; keep the longest prefix that is one of ours.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def _runtime_nodes(tree: ast.AST):
    """Every node of the tree except what sits under `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)  # the else branch does run
            else:
                stack.append(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_graph(root: Path, edges=import_edges) -> dict[str, set[str]]:
    """Module name → the modules it imports (`edges`: at run time, or type_checking_edges), for every
    .py file under `root` (a package folder)."""
    files = {module_name(p, root.parent): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    return {name: edges(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", modules)
            for name, path in files.items()}


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A path of imports start → ... → goal in `graph`, or None."""
    came_from: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        node = todo.pop()
        if node == goal:
            path = [node]
            while (node := came_from[node]) is not None:
                path.append(node)
            return path[::-1]
        for nxt in sorted(graph.get(node, ())):
            if nxt not in came_from:
                came_from[nxt] = node
                todo.append(nxt)
    return None


def back_references(root: Path) -> list[str]:
    """Each `if TYPE_CHECKING:` import of a module that imports the importer back (at run time, maybe
    through others), as 'a ⇢ b → ... → a'. Such an annotation names a room above its own."""
    runtime = import_graph(root)
    found = []
    for name, targets in import_graph(root, type_checking_edges).items():
        for target in sorted(targets):
            if (path := reaches(runtime, target, name)) is not None:
                found.append(f"{name} ⇢ " + " → ".join(path))
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None. Depth-first search with white/grey/black marks."""
    state: dict[str, int] = {}  # absent: unseen, 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


# ---------------------------------------------------------------------------------------- the detector


def test_find_cycle_on_small_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None  # a diamond is fine
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y2"}, "y2": {"y"}}) == ["y", "y2", "y"]


def test_edges_count_lazy_relative_and_submodule_imports(tmp_path: Path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
                              "def f():\n    import pkg.sub.c  # lazy\n")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.c import thing\n")
    (pkg / "sub" / "c.py").write_text("from ..a import x\nthing = 1\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]


# ---------------------------------------------------------------------------------------- cnnkit


def test_cnnkit_has_no_import_cycles():
    graph = import_graph(PACKAGE)
    assert "cnnkit.cli.app" in graph and graph["cnnkit.cli.app"] <= {"cnnkit", "cnnkit.errors"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_back_references_detector(tmp_path: Path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import H\n"
                                "    from pkg.side import S\n")
    (pkg / "mid.py").write_text("import pkg.low\n")
    (pkg / "high.py").write_text("def f():\n    from pkg import mid  # lazy counts\n")
    (pkg / "side.py").write_text("x = 1\n")
    assert import_graph(pkg, type_checking_edges)["pkg.low"] == {"pkg.high", "pkg.side"}
    # low names high for an annotation, and high imports low (through mid): a back-reference. side is fine.
    assert back_references(pkg) == ["pkg.low ⇢ pkg.high → pkg.mid → pkg.low"]


def test_no_type_checking_back_references():
    """A module that only names a higher room's type under TYPE_CHECKING still depends on that room:
    the lower room should describe (data), and the command or the report module render."""
    found = back_references(PACKAGE)
    assert not found, "TYPE_CHECKING import of a module that imports the importer: " + "; ".join(found)


def test_at_most_eight_loose_modules():
    """`ls cnnkit/*.py`: the modules every room uses, and nothing else; a new module goes in a package."""
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(loose) <= 8, f"{len(loose)} modules at the top of cnnkit/: {', '.join(loose)}"


def test_evaluation_does_not_import_training():
    graph = import_graph(PACKAGE)
    assert "cnnkit.training.fit" not in graph["cnnkit.evaluation.evaluate"]


COMMANDS = ("models", "train", "eval", "predict", "look", "runs", "plot", "export", "data", "config", "shapes", "sweep",
            "tune")


@pytest.mark.parametrize("entry", [["-m", "cnnkit"], ["-m", "cnnkit.cli"]])
def test_every_entry_point_lists_every_command(entry: list[str]):
    out = subprocess.run([sys.executable, *entry, "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    listed = {line.split()[1] for line in out.stdout.splitlines() if line.startswith("│ ") and len(line.split()) > 1}
    assert set(COMMANDS) <= listed, out.stdout
    # A command registered by a module other than the first one must reach this entry point too.
    sub = subprocess.run([sys.executable, *entry, "eval", "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert sub.returncode == 0 and "--checkpoint" in sub.stdout, sub.stdout + sub.stderr


def test_console_script_lists_every_command():
    script = Path(sys.executable).parent / "cnnkit"
    if not script.exists():
        pytest.skip("the cnnkit console script is not installed next to this python")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(f"│ {command} " in out.stdout for command in COMMANDS), out.stdout

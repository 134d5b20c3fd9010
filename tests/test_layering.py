"""Arrows only point down: the sans-IO cores touch no socket, clock or loop."""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "looper"
# The clock and randomness too: a machine gets them from its adapter (its Environment).
IO_MODULES = {
    "asyncio", "socket", "selectors", "ssl", "time", "threading", "subprocess", "aiodns", "uvloop", "os", "random",
    "secrets",
}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(folder: str = "") -> dict[str, set[str]]:
    return {str(p.relative_to(PACKAGE)): imports_of(p) for p in (PACKAGE / folder).rglob("*.py")}


def test_proto_is_sans_io_and_stdlib_only():
    found = modules("proto")
    assert "proto/observer.py" in found
    for name, imported in found.items():
        for module in imported:
            top = module.split(".")[0]
            assert top not in IO_MODULES, f"{name} imports {module}"
            assert top in sys.stdlib_module_names or module == "looper.events" or module.startswith(
                "looper.proto"
            ) or top == "__future__", f"{name} imports {module}"


def test_yaml_only_in_config_and_aiodns_only_in_net():
    for name, imported in modules().items():
        tops = {m.split(".")[0] for m in imported}
        if "yaml" in tops:
            assert name == "config.py", name
        if "aiodns" in tops:
            assert name.startswith("net/"), name


def test_nothing_below_imports_upward():
    for name, imported in modules().items():
        looper_imports = {m for m in imported if m.startswith("looper.")}
        if name.startswith("proto/") or name == "events.py":
            assert looper_imports <= {"looper.events"} | {m for m in looper_imports if m.startswith("looper.proto")}, name
        if name.startswith(("net/", "proto/", "analysis/")) or name in {"config.py", "policy.py", "eventlog.py"}:
            assert not any(m.startswith("looper.cli") for m in looper_imports), name
        # The programs on top: the command line, and the demo that runs the trap.
        if not name.startswith("net/") and name not in ("cli.py", "demo.py"):
            assert not any(m.startswith("looper.net") for m in looper_imports), name


def test_the_import_graph_has_no_cycle():
    """Type-checking imports count too: a cycle there is a design cycle."""
    graph = {}
    for name, imported in modules().items():
        module = "looper." + name[:-3].replace("/", ".").removesuffix(".__init__")
        graph[module] = {m for m in imported if m.startswith("looper.") and m != module}
    visiting, done = [], set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, "import cycle: " + " -> ".join(visiting[visiting.index(module):] + [module])
        visiting.append(module)
        for imported in graph.get(module, ()):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)

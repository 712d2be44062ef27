"""The edges between the project's layers, read from the source (nothing is imported):

- no import cycle between the project's modules, imports inside functions counted;
- `auf_assets.core` never imports Dagster, directly or through the project modules it imports;
- `resources` imports nothing of `auf_assets` outside `auf_assets.core`;

and the seeds that moved into core for it are the ones stored rounds were made with.
"""

from __future__ import annotations

import ast
from pathlib import Path

from auf_assets.core.seeding import stable_hash, stable_seed

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("auf_assets", "resources", "sensors")


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_names(source: str, module: str, is_package: bool) -> list[str]:
    """Every name `source` imports, anywhere in the file (inside functions too), absolute:
    `import a.b` gives a.b, `from a import b` gives a.b (a module or a name in a)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = package[: len(package) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            names += [f"{origin}.{alias.name}" for alias in node.names]
    return names


def _project_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is a project module (a.b.c -> a.b when c is a name)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> the project modules it imports, module -> the other top-level packages)."""
    modules = project_modules(root)
    graph: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for module, path in modules.items():
        names = imported_names(path.read_text(), module, path.name == "__init__.py")
        inside = {_project_module(n, modules) for n in names}
        graph[module] = {m for m in inside if m is not None and m != module}
        external[module] = {n.split(".")[0] for n in names if _project_module(n, modules) is None}
    return graph, external


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules that import each other in a ring: the strongly connected components of more
    than one module (Tarjan's algorithm, without recursion), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def describe_cycles(graph: dict[str, set[str]], cycles: list[list[str]]) -> str:
    lines = []
    for members in cycles:
        lines.append("cycle: " + ", ".join(members))
        for module in members:
            inside = sorted(graph[module] & set(members))
            lines.append(f"  {module} imports {', '.join(inside)}")
    return "\n".join(lines)


def in_core(module: str) -> bool:
    return module == "auf_assets.core" or module.startswith("auf_assets.core.")


def loaded_with(module: str, graph: dict[str, set[str]]) -> set[str]:
    """The project modules that importing `module` runs: what it imports, what those import,
    and the packages (their __init__) above each of them."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name not in graph:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:end]) for end in range(1, len(parts))]
        todo += graph[name]
    return seen


# -- the checks of the helpers themselves ------------------------------------------------------


def test_the_import_reader_sees_imports_inside_functions_and_relative_ones():
    source = (
        "import os\nfrom a.b import c\n"
        "def f():\n    from .sibling import g\n    from .. import up\n    import x.y\n"
    )
    names = imported_names(source, "pkg.sub.mod", is_package=False)
    assert names == ["os", "a.b.c", "pkg.sub.sibling.g", "pkg.up", "x.y"]
    assert imported_names("from . import m", "pkg.sub", is_package=True) == ["pkg.sub.m"]


def test_the_cycle_finder_finds_rings_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    assert "b imports c" in describe_cycles(graph, import_cycles(graph))


def test_a_module_loads_its_imports_and_the_packages_above_them():
    graph = {"p": set(), "p.q": {"p.r"}, "p.r": {"s.t"}, "s": {"x"}, "s.t": set(), "x": set()}
    assert loaded_with("p.q", graph) == {"p", "p.q", "p.r", "s", "s.t", "x"}


# -- the project ------------------------------------------------------------------------------


def test_no_import_cycles_between_the_project_modules():
    graph, _ = import_graph()
    assert len(graph) > 50 and "auf_assets.core.policy" in graph  # the project was read
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (imports inside functions count):\n" + describe_cycles(
        graph, cycles
    )


def test_core_never_imports_dagster():
    graph, external = import_graph()
    core = [m for m in graph if in_core(m)]
    assert len(core) > 10
    offenders = {}
    for module in core:
        through = sorted(
            m
            for m in loaded_with(module, graph)
            if any(name == "dagster" or name.startswith("dagster_") for name in external[m])
        )
        if through:
            offenders[module] = through
    assert not offenders, "auf_assets.core loads Dagster: " + "; ".join(
        f"{m} through {', '.join(via)}" for m, via in sorted(offenders.items())
    )


def test_resources_use_nothing_of_auf_assets_but_its_core():
    graph, _ = import_graph()
    outside = {
        module: sorted(m for m in imports if m.startswith("auf_assets.") and not in_core(m))
        for module, imports in graph.items()
        if module.split(".")[0] == "resources"
    }
    outside = {m: names for m, names in outside.items() if names}
    assert not outside, "resources import auf_assets outside auf_assets.core: " + "; ".join(
        f"{m} imports {', '.join(names)}" for m, names in sorted(outside.items())
    )


def test_the_seeds_are_the_ones_stored_rounds_were_made_with():
    # Values of the former auf_assets.reporting functions: ids and seeds in existing stores.
    assert stable_hash("round-0001", "member", "text") == "ebe2d8c73dffd1e0"
    assert stable_hash("x", length=40) == "2d711642b726b04401627ca9fbac32f5c8530fb1"
    assert stable_seed("round-0001", 0) == 1855077389
    assert stable_seed(7, "a\x1fb", None) == 1686055986


#: The most lines a module of the project may have (benchmarks/ and tests/ aside): a module a
#: newcomer can hold in their head.
MAX_MODULE_LINES = 650


def test_every_module_is_small_enough_to_read():
    too_long = {
        str(path.relative_to(ROOT)): n
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"

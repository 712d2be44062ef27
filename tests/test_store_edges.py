"""The store's edge: no module outside `resources/store` writes SQL or opens the database.

Every statement lives in an intention-named method of the store (one module per area), so a
second backend (issue 20) replaces one package. The scan reads the source with `ast`: string
constants that look like SQL, calls of the store's private helpers (and of the generic ones a
store had before they became private), its test-only accessor, and imports of `duckdb` or of a
private name of the store are reported with their file and line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("auf_assets", "resources", "sensors")
STORE_PACKAGE = ROOT / "resources" / "store"

# Upper-case keywords only: prose ("select pairs from the scores") is not SQL.
SQL = re.compile(
    r"\bSELECT\b.*\bFROM\b|\bINSERT\s+(OR\s+(IGNORE|REPLACE)\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b"
    r"|\bDELETE\s+FROM\b|\bCREATE\s+(UNIQUE\s+)?(TABLE|INDEX)\b|\bALTER\s+TABLE\b",
    re.DOTALL,
)
# Callable on any object: the store's private helpers and its test-only accessor.
PRIVATE_CALLS = {"_query", "_scalar", "_connect", "_transaction", "sql_for_tests"}
# The generic names a store offered before, flagged when called on something named *store.
GENERIC_CALLS = {"query", "scalar", "connect", "transaction", "execute"}


def _text(node: ast.AST) -> str | None:
    """The literal text of a string constant or of an f-string's constant parts."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else " x "
            for v in node.values
        )
    return None


def _receiver(node: ast.AST) -> str:
    """The last name of a call's receiver: `env.store.query()` -> "store"."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def violations(path: Path, source: str) -> list[str]:
    """Each place in `source` that reaches past the store's edge, as "file:line: what"."""
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    tree = ast.parse(source, filename=str(path))
    # An f-string is read whole; its constant parts are not read again on their own.
    parts = {
        id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values
    }
    found = []
    for node in ast.walk(tree):
        what = None
        text = None if id(node) in parts else _text(node)
        if text is not None and SQL.search(text):
            what = f"SQL string {' '.join(text.split())[:60]!r}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            receiver = _receiver(node.func.value)
            if name in PRIVATE_CALLS or (
                name in GENERIC_CALLS and receiver.lower().endswith("store")
            ):
                what = f"call of the store's SQL helper {receiver}.{name}()"
        elif isinstance(node, ast.Import):
            if any(a.name.split(".")[0] == "duckdb" for a in node.names):
                what = "import of duckdb"
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] == "duckdb":
                what = "import from duckdb"
            elif module.startswith("resources.store") and any(
                a.name.startswith("_") for a in node.names
            ):
                what = f"import of a private name of {module}"
        if what:
            found.append(f"{where}:{node.lineno}: {what}")
    return sorted(set(found), key=lambda v: (v.split(":")[0], int(v.split(":")[1])))


def scanned_files() -> list[Path]:
    files = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if not path.is_relative_to(STORE_PACKAGE) and path != STORE_PACKAGE.with_suffix(".py"):
                files.append(path)
    return files


def test_no_sql_outside_the_store():
    found = [v for path in scanned_files() for v in violations(path, path.read_text())]
    assert not found, "SQL or database access outside resources/store:\n" + "\n".join(found)


def test_the_scan_finds_each_kind_of_reach_past_the_edge(tmp_path):
    source = (
        "import duckdb\n"
        "from resources.store import _insert\n"
        "rows = store.query('SELECT a FROM t WHERE b = ?', [1])\n"
        "n = self.store.scalar('SELECT count(*) ' 'FROM t')\n"
        "store._query(f'DELETE FROM {table}')\n"
        "text = 'select the pairs from the scores'  # prose, not SQL\n"
        "frame.query('x > 1')  # not a store\n"
        "con = ctx.store._connect()\n"
        "env.store.sql_for_tests('ALTER TABLE t ADD COLUMN c INTEGER')\n"
    )
    found = violations(tmp_path / "example.py", source)
    lines = [int(v.split(":")[1]) for v in found]
    assert lines == [1, 2, 3, 3, 4, 4, 5, 5, 8, 9, 9], found


def test_the_scanned_tree_is_the_project_and_the_store_is_left_out():
    files = scanned_files()
    assert any(p.parent.name == "round" and p.name == "judgements.py" for p in files)
    assert not any(p.is_relative_to(STORE_PACKAGE) for p in files)
    assert STORE_PACKAGE.is_dir(), "the store is a package, one module per area"


def test_each_area_of_the_store_is_a_module_small_enough_to_read():
    sizes = {p.name: len(p.read_text().splitlines()) for p in STORE_PACKAGE.glob("*.py")}
    assert {"schema.py", "base.py", "ledger.py"} <= set(sizes)
    assert max(sizes.values()) < 600, sizes

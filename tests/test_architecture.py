"""The layers of docs/architecture.md, enforced on the import graph of the source (read with `ast`,
nothing imported).

From the bottom: `schemas` (the contracts), `plumbing` (shared operational plumbing), the
services (`ingest`, `streams`, `sinks.clickhouse`, `sinks.query`, `sinks.notify`), and the
runner and CLI `cosnap_metrics`. A module may import its own unit and the units below it: an
import pointing up, or sideways to another service, fails the test, named by file, line and
import. Every import counts, the function-local ones too. `sinks/__init__.py` is only the package
of three services and imports nothing of the project. The client SDK (`cosnap_metrics_sdk`) stands
beside the stack: it imports none of the server's packages and the server none of it; neither
imports `bench` or `tests`.

Imports under `if TYPE_CHECKING:` run only under the type checker. In server code they may point
up or sideways, but they are edges of the graph checked for cycles like any other: a type-only
import back into a unit that imports the importer at runtime is refused, because an annotation
that pydantic, msgspec or `typing.get_type_hints` evaluates turns it into a runtime import, and
the loop with it. In the SDK, which is installed and type-checked alone, they count in full.
"""

from __future__ import annotations

import ast
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Where each unit's modules are, relative to the repository.
SOURCES = {
    "schemas": Path("schemas"),
    "plumbing": Path("plumbing"),
    "ingest": Path("ingest"),
    "streams": Path("streams"),
    "sinks": Path("sinks"),
    "cosnap_metrics": Path("cosnap_metrics"),
    "cosnap_metrics_sdk": Path("sdk/python/cosnap_metrics_sdk"),
}
# The server's units, bottom up: a unit may import those of a lower rank.
RANK = {
    "schemas": 0,
    "plumbing": 1,
    "ingest": 2,
    "streams": 2,
    "sinks.clickhouse": 2,
    "sinks.query": 2,
    "sinks.notify": 2,
    "cosnap_metrics": 3,
}
SERVICES = {unit for unit, rank in RANK.items() if rank == 2}
SINKS_PACKAGE = "sinks"  # the package of three services; imports nothing of the project
SDK = "cosnap_metrics_sdk"
OUTSIDE = {"bench", "tests"}  # outside the layering: nothing of the server or the SDK imports them
UNITS = set(RANK) | {SINKS_PACKAGE, SDK}
TOP_LEVEL = {unit.split(".")[0] for unit in UNITS} | OUTSIDE


@dataclass(frozen=True)
class Import:
    file: str  # relative to the root
    line: int
    importer: str  # module name
    target: str  # the project module imported (the deepest known one)
    type_only: bool  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        kind = " (under TYPE_CHECKING)" if self.type_only else ""
        return f"{self.file}:{self.line}: {self.importer} imports {self.target}{kind}"


def unit_of(module: str) -> str | None:
    """The unit a project module belongs to (the longest unit that is a prefix of its name)."""
    parts = module.split(".")
    for size in range(len(parts), 0, -1):
        candidate = ".".join(parts[:size])
        if candidate in UNITS or candidate in OUTSIDE:
            return candidate
    return None


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every `.py` of every unit under `root`."""
    found: dict[str, Path] = {}
    for top, directory in SOURCES.items():
        base = root / directory
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = [top, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """Every import of a module, wherever it stands, with whether it is under TYPE_CHECKING."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str, tuple[str, ...], int, bool]] = []  # line, module, names, level
        self._type_only = False

    def _visit_block(self, nodes: list[ast.stmt], type_only: bool) -> None:
        before, self._type_only = self._type_only, type_only
        for node in nodes:
            self.visit(node)
        self._type_only = before

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        test, body, orelse = node.test, self._type_only, self._type_only
        if _is_type_checking(test):
            body = True
        elif (
            isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and _is_type_checking(test.operand)
        ):
            orelse = True
        self._visit_block(node.body, body)
        self._visit_block(node.orelse, orelse)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((node.lineno, alias.name, (), 0, self._type_only))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        names = tuple(alias.name for alias in node.names)
        self.found.append((node.lineno, node.module or "", names, node.level, self._type_only))

    def visit_Call(self, node: ast.Call) -> None:
        # importlib.import_module("x.y") and __import__("x.y") with a literal name
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                self.found.append((node.lineno, first.value, (), 0, self._type_only))
        self.generic_visit(node)


def imports(root: Path) -> tuple[dict[str, Path], list[Import]]:
    """Every module under `root` and every import of a project module they make."""
    known = modules(root)
    found: list[Import] = []
    for module, path in known.items():
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_bytes(), filename=str(path)))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for line, name, names, level, type_only in visitor.found:
            if level:
                base = package.split(".")
                base = base[: len(base) - (level - 1)] if level > 1 else base
                name = ".".join([*base, name] if name else base)
            if name.split(".")[0] not in TOP_LEVEL:
                continue  # the standard library or a third-party package
            targets = [f"{name}.{item}" for item in names if f"{name}.{item}" in known] or [name]
            relative = path.relative_to(root).as_posix()
            found.extend(Import(relative, line, module, target, type_only) for target in targets)
    return known, found


def direction_problem(edge: Import) -> str | None:
    """Why `edge` breaks the layering, or None when it may stand."""
    source, target = unit_of(edge.importer), unit_of(edge.target)
    assert source is not None, edge
    if target is None:
        return f"imports {edge.target}, which is in no layer"
    if source == target:
        return None
    if target in OUTSIDE:
        return f"imports {target}, which is outside the layering"
    if source == SDK:
        return "the client SDK imports the server"
    if target == SDK:
        return "server code imports the client SDK"
    if edge.type_only:
        return None  # type-only: only the cycle check applies
    if source == SINKS_PACKAGE:
        return f"{source} is only the package of its services and imports nothing of the project"
    if target == SINKS_PACKAGE:
        return None  # the bare package holds nothing
    if RANK[target] > RANK[source]:
        return f"upward: {source} imports {target}"
    if RANK[target] == RANK[source]:
        return f"sideways: service {source} imports service {target}"
    return None


def direction_violations(found: list[Import]) -> list[str]:
    return [f"{edge}: {problem}" for edge in found if (problem := direction_problem(edge)) is not None]


def cycles(found: list[Import]) -> list[str]:
    """Each loop of imports between units (runtime and type-only imports alike), with an import
    that makes each of its edges."""
    witness: dict[tuple[str, str], Import] = {}
    for edge in found:
        source, target = unit_of(edge.importer), unit_of(edge.target)
        if source and target and source != target:
            witness.setdefault((source, target), edge)
    graph: dict[str, set[str]] = {}
    for source, target in witness:
        graph.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = {start}, [start]
        while todo:
            for following in graph.get(todo.pop(), ()):
                if following == goal:
                    return True
                if following not in seen:
                    seen.add(following)
                    todo.append(following)
        return False

    # Strongly connected components: units each of which reaches the other.
    components: list[list[str]] = []
    for unit in sorted(graph):
        if any(unit in component for component in components):
            continue
        component = [
            other
            for other in sorted(graph)
            if other == unit or (reaches(unit, other) and reaches(other, unit))
        ]
        if len(component) > 1:
            components.append(component)
    return [
        f"import cycle between {', '.join(component)}: "
        + "; ".join(str(witness[pair]) for pair in sorted(witness) if set(pair) <= set(component))
        for component in components
    ]


def _problems(root: Path) -> tuple[dict[str, Path], list[Import], list[str]]:
    known, found = imports(root)
    return known, found, direction_violations(found) + cycles(found)


def test_imports_point_down_the_layers_and_form_no_cycle() -> None:
    known, found, problems = _problems(ROOT)
    assert not problems, 'imports against docs/architecture.md, "Layers":\n' + "\n".join(problems)

    # Not vacuous: the walk found the tree as it is, and its imports.
    per_unit: dict[str, int] = {}
    for module in known:
        unit = unit_of(module)
        assert unit is not None, module
        per_unit[unit] = per_unit.get(unit, 0) + 1
    assert set(per_unit) == UNITS, per_unit
    assert per_unit[SINKS_PACKAGE] == 1, "a module in sinks/ outside its three services"
    assert all(count >= 3 for unit, count in per_unit.items() if unit != SINKS_PACKAGE), per_unit
    assert len(known) >= 80, len(known)
    between = [edge for edge in found if unit_of(edge.importer) != unit_of(edge.target)]
    assert len(found) >= 150 and len(between) >= 60, (len(found), len(between))
    # the runner's imports of the services stand inside functions
    assert any(
        edge.importer == "cosnap_metrics.cli" and edge.target.startswith("sinks.query") for edge in found
    )


def test_every_package_has_its_place_in_the_layers() -> None:
    """A new package cannot escape the check: each one installed, and each top-level package of the
    repository, is a unit (a subpackage of `sinks` a service of its own) or outside the layering."""
    installed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert {unit_of(package) for package in installed} <= UNITS
    assert {package for package in installed if package.startswith("sinks.")} == {
        unit for unit in SERVICES if unit.startswith("sinks.")
    }
    top = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert top <= TOP_LEVEL, top - TOP_LEVEL
    assert {f"sinks.{path.parent.name}" for path in ROOT.glob("sinks/*/__init__.py")} <= SERVICES


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_flags_what_it_must_and_only_that(tmp_path: Path) -> None:
    """A synthetic tree with one import of every kind: the test above cannot pass by seeing nothing."""
    type_checking = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
    _write(
        tmp_path,
        {
            "schemas/__init__.py": "",
            "schemas/events.py": "import os\nfrom . import keys\n",
            "schemas/keys.py": "",
            "plumbing/__init__.py": "",
            "plumbing/status.py": "from schemas import events\ndef late():\n    from ingest.app import app\n",
            "ingest/__init__.py": "",
            "ingest/app.py": "from plumbing import status\nimport streams.windows\napp = 1\n",
            "streams/__init__.py": "",
            "streams/windows.py": type_checking + "    from sinks.query.reader import Reader\n",
            "sinks/__init__.py": "",
            "sinks/query/__init__.py": "",
            "sinks/query/reader.py": "from sinks import clickhouse\nfrom ..clickhouse import writer\n",
            "sinks/clickhouse/__init__.py": "",
            "sinks/clickhouse/writer.py": type_checking + "    from cosnap_metrics.cli import main\n",
            "sinks/notify/__init__.py": "import importlib\nimportlib.import_module('bench.kafka')\n",
            "cosnap_metrics/__init__.py": "",
            "cosnap_metrics/cli.py": "import sinks.clickhouse.writer\nfrom cosnap_metrics_sdk import hooks\n",
            "sdk/python/cosnap_metrics_sdk/__init__.py": "",
            "sdk/python/cosnap_metrics_sdk/webhooks.py": type_checking + "    from schemas.keys import KEY\n",
        },
    )
    _, found, problems = _problems(tmp_path)
    assert len(found) == 13, found
    flagged = {problem.split(": ")[0] for problem in problems if not problem.startswith("import cycle")}
    assert flagged == {
        "plumbing/status.py:3",  # upward, inside a function
        "ingest/app.py:2",  # sideways
        "sinks/query/reader.py:1",  # sideways, a subpackage named by `from sinks import`
        "sinks/query/reader.py:2",  # sideways, relative
        "sinks/notify/__init__.py:2",  # import_module of bench
        "cosnap_metrics/cli.py:2",  # server imports the SDK
        "sdk/python/cosnap_metrics_sdk/webhooks.py:3",  # the SDK imports the server, even type-only
    }, problems
    loops = [problem for problem in problems if problem.startswith("import cycle")]
    # plumbing <-> ingest (runtime), and sinks.clickhouse <-> cosnap_metrics through a type-only
    # import; the type-only sideways import of streams makes no loop and is allowed.
    assert len(loops) == 2, loops
    assert loops[0].startswith("import cycle between cosnap_metrics, sinks.clickhouse: ")
    assert "sinks/clickhouse/writer.py:3" in loops[0]
    assert loops[1].startswith("import cycle between ingest, plumbing: ")
    assert not any("streams/windows.py" in problem for problem in problems)


# Directories of the repository that hold no source of the project.
NOT_SOURCE = {".git", ".venv", "build", "node_modules", "__pycache__", ".mypy_cache", ".pytest_cache"}


def _python_files(root: Path, suffixes: tuple[str, ...] = (".py",)) -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [
            name
            for name in subdirectories
            if name not in NOT_SOURCE and not name.endswith(".egg-info") and not name.startswith(".ruff")
        ]
        yield from (Path(directory) / name for name in files if name.endswith(suffixes))


def test_no_source_cites_the_design_document_of_old() -> None:
    """Docstrings and comments (of code, SQL, configuration and docs) point at docs/architecture.md
    or docs/reference.md; the design document they once cited by section is gone."""
    stale = "DESIGN \N{SECTION SIGN}"
    files = list(_python_files(ROOT, (".py", ".sql", ".yaml", ".yml", ".md", ".mjs", ".toml")))
    assert len(files) >= 180, len(files)
    citing = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if stale in line
    ]
    assert not citing, citing

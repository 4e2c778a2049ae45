"""The house rules of the source tree: arrows point one way, and no file grows too large.

Commands -> engines -> `clienthello`: the capture engine (`sniinspect.capture`) and the
router (`sniinspect.route`) never import each other, and `clienthello` imports nothing
of `sniinspect`. Checked on the source text (every import statement, also those inside
functions), so a lazy import cannot hide a wrong arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"sniinspect": ROOT / "cli", "clienthello": ROOT / "clienthello"}
MAX_LINES = 700
LARGE_DATA_TABLES = {ROOT / "clienthello" / "_iana.py"}  # the IANA registries, as data


def _module_name(path: Path) -> str:
    for package, folder in PACKAGE_DIRS.items():
        if folder in path.parents:
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return ".".join((package, *parts))
    raise AssertionError(path)


def _imports(path: Path) -> set[str]:
    """Every module the file imports, resolved to absolute names."""
    return _imports_of(path.read_text(), _module_name(path), path.name == "__init__.py")


def _imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports (as the module ``module``), as absolute names."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                name = ".".join([*base, name] if name else base)
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _sources(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


ENGINES = {
    "sniinspect.capture": ROOT / "cli" / "capture",
    "sniinspect.route": ROOT / "cli" / "route",
}
# The modules each engine must not reach: the other engine, the old flat names that
# now re-export it, and the commands above both.
FORBIDDEN = {
    "sniinspect.capture": (
        "sniinspect.route",
        "sniinspect.router",
        "sniinspect.main",
    ),
    "sniinspect.route": (
        "sniinspect.capture",
        "sniinspect.pcap",
        "sniinspect.main",
    ),
}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_engines_do_not_import_each_other(engine: str) -> None:
    folder = ENGINES[engine]
    files = _sources(folder)
    assert files, f"{folder} has no modules"
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in sorted(_imports(path))
        if any(_within(name, bad) for bad in FORBIDDEN[engine])
    ]
    assert not wrong, "\n".join(wrong)


def test_engine_modules_do_not_import_click_except_commands() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports click"
        for folder in ENGINES.values()
        for path in _sources(folder)
        if path.name != "command.py" and any(_within(n, "click") for n in _imports(path))
    ]
    assert not wrong, "\n".join(wrong)


def test_clienthello_imports_nothing_of_sniinspect() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources(ROOT / "clienthello")
        for name in sorted(_imports(path))
        if _within(name, "sniinspect")
    ]
    assert not wrong, "\n".join(wrong)


def test_import_checker_sees_a_wrong_arrow() -> None:
    # The check must be able to fail: relative and lazy imports are resolved and found.
    source = "def f():\n    from ..route import table\n    import sniinspect.router\n"
    found = _imports_of(source, "sniinspect.capture.probe")
    assert "sniinspect.route.table" in found
    assert "sniinspect.router" in found
    assert any(_within(n, "sniinspect.route") for n in found)


def test_no_source_file_over_the_limit() -> None:
    long = []
    for folder in PACKAGE_DIRS.values():
        for path in _sources(folder):
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES and path not in LARGE_DATA_TABLES:
                long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, "\n".join(long)

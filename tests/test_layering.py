"""The package's shape (README "Layout"): few top-level modules, small files, short functions, and the import
contracts of pyproject.toml (make test runs lint-imports too; here `pytest` alone catches an upward import or
a cycle)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lmjax"


def test_few_top_level_modules_small_files_and_short_functions():
    top = [p for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= 12, sorted(p.name for p in top)
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        assert len(source.splitlines()) <= 700, path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                assert node.end_lineno - start + 1 <= 120, f"{path}:{node.lineno} {node.name}"


def test_the_import_contracts_hold():
    pytest.importorskip("importlinter", reason="make test installs import-linter")
    from importlinter import cli

    assert cli.lint_imports(config_filename=str(PACKAGE.parent / "pyproject.toml")) == 0

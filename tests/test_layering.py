"""The package's shape (README "Layout"): few top-level modules, small files, short functions. The import
contracts are pyproject.toml's, which make test checks with lint-imports before the suite."""

import ast
from pathlib import Path

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

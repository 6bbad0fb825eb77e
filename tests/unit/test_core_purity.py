"""core/ is the business: it imports the standard library and itself, nothing else."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "core"
FORBIDDEN = {
    "aiogram",
    "wechatpy",
    "sqlalchemy",
    "PIL",
    "pyzbar",
    "cryptography",
    "bot",
    "handlers",
    "storage",
    "vision",
}


def imported_roots(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.append((node.lineno, node.module.split(".")[0]))
    return roots


CORE_FILES = sorted(CORE.rglob("*.py"))


def test_core_has_modules_to_check() -> None:
    assert {p.name for p in CORE_FILES} >= {"model.py", "catalog.py", "pricing.py", "audit.py"}


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_imports_only_the_standard_library_and_core(path: Path) -> None:
    for line, root in imported_roots(path):
        assert root not in FORBIDDEN, f"{path.name}:{line} imports {root}"
        assert root == "core" or root in sys.stdlib_module_names, (
            f"{path.name}:{line} imports {root}, which is neither stdlib nor core"
        )


def test_the_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom sqlalchemy import select\nfrom . import money\n")
    assert imported_roots(bad) == [(1, "os"), (2, "sqlalchemy")]

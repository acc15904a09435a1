"""The router is built on public APIs only: no private module or name of anyio, asyncio,
pydicom, pynetdicom or any other dependency is imported anywhere under router/, and the
DICOM layer does not reach for anyio's backend internals by name."""

from __future__ import annotations

import ast
from pathlib import Path

import router
import router.dicom

SOURCES = sorted(Path(router.__file__).parent.rglob("*.py"))
DICOM_SOURCES = sorted(Path(router.dicom.__file__).parent.glob("*.py"))


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and part != "__future__" for part in dotted.split("."))


def test_no_private_module_or_name_is_imported() -> None:
    offenders = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("router"):
                    continue  # our own modules may use their own private names
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                offenders += [f"{path}:{node.lineno} {n}" for n in names if _private(n)]
            elif isinstance(node, ast.Import):
                offenders += [
                    f"{path}:{node.lineno} {a.name}" for a in node.names if _private(a.name)
                ]
    assert offenders == []


def test_no_backend_internals_are_named() -> None:
    """Nor are anyio's backend classes recognised by their module or attribute names."""
    offenders = [
        f"{path.name}:{node.lineno} {node.value!r}"
        for path in DICOM_SOURCES
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and any(s in node.value for s in ("anyio._", "_backends", "_transport", "_protocol"))
    ]
    assert offenders == []

"""The real dependency order, checked on the source: every import, at module top or inside a
function, read from the syntax tree.

    toolchain commands (cli, jobs, verify, bench, fieldbench, info, ...)
      -> exporters
        -> toolchain core (checkpoint, gate, model, manifest and the package's version)
          -> runtime
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

CORE = {"toolchain", "toolchain.checkpoint", "toolchain.gate", "toolchain.model", "toolchain.manifest"}


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                # "from . import gate" names a submodule; "from . import __version__" the package
                out |= {f"{mod}.{a.name}" if not node.module and _is_module(f"{mod}.{a.name}") else mod
                        for a in node.names}
            else:
                out.add(node.module or "")
    return {m for m in out if m.split(".")[0] in ("toolchain", "exporters", "runtime")}


def _is_module(name: str) -> bool:
    base = ROOT / name.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _files("runtime"), ids=lambda p: p.name)
def test_runtime_imports_nothing_above_it(path):
    assert not {m for m in _imports(path) if not m.startswith("runtime")}


@pytest.mark.parametrize("path", _files("exporters"), ids=lambda p: p.name)
def test_exporters_use_only_the_toolchain_core(path):
    above = {m for m in _imports(path) if m.startswith("toolchain")} - CORE
    assert not above, f"{path.name} imports {sorted(above)}: exporters may use only {sorted(CORE)}"


@pytest.mark.parametrize("name", sorted(CORE - {"toolchain"}))
def test_toolchain_core_never_reaches_up(name):
    path = ROOT / (name.replace(".", "/") + ".py")
    up = {m for m in _imports(path) if m.startswith("exporters") or (m.startswith("toolchain") and m not in CORE)}
    assert not up, f"{name} imports {sorted(up)}"


def test_the_check_sees_imports_inside_functions():
    # verify.py imports exporters only inside its function: the walker must still find it
    assert "exporters.graph" in _imports(ROOT / "toolchain" / "verify.py")
    assert "toolchain.manifest" in _imports(ROOT / "exporters" / "__init__.py")

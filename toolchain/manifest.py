"""The artifact folder's manifest and the library versions it records.

Part of the toolchain's core (with ``checkpoint``, ``gate`` and ``model``): ``exporters``
builds on these, and the commands above (``cli``, ``jobs``, ``verify``, ``bench``, ...) build
on ``exporters``. Nothing here imports ``exporters``.
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path
from typing import Any

from runtime.fileio import atomic_write_json, sha256_file

from . import __version__

LIBRARIES = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "click", "matplotlib")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries the artifacts depend on."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def write_manifest(out_dir: Path) -> dict[str, Any]:
    """SHA-256 and size of every file in ``out_dir`` (but the manifest and resume state)."""
    files = {}
    for p in sorted(out_dir.rglob("*")):
        if p.is_file() and p.name not in ("manifest.json", "last.pt") and not p.name.startswith("."):
            rel = p.relative_to(out_dir).as_posix()
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"schema_version": 1, "tool": "lenet-tool", "tool_version": __version__,
                "libraries": library_versions(), "files": files}
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest

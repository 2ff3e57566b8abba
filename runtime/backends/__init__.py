"""Backend registry: one module a backend, looked up by name or by file type."""

from __future__ import annotations

from pathlib import Path

from ..formats import format_for_path
from .base import Backend, BackendUnavailable
from .ort import OnnxRuntimeBackend
from .ov import OpenVINOBackend
from .trt import TensorRTBackend

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (OnnxRuntimeBackend, OpenVINOBackend, TensorRTBackend)}

__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "available_backends", "backend_for_path"]


def available_backends() -> dict[str, str]:
    """{name: what it runs on} for the backends usable here."""
    out = {}
    for name, cls in BACKENDS.items():
        ok, why = cls.available()
        if ok:
            out[name] = why
    return out


def backend_for_path(path: str | Path) -> str:
    """The default backend for this file, from the shared format table (others may load it too:
    :attr:`Backend.formats`)."""
    return format_for_path(path).backend

"""File formats the runtime loads, by suffix: the one table both the exporters' target
table and the runtime's backend lookup read (it lives here, at the bottom of the
dependency chain, so that ``runtime`` needs nothing above it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileFormat:
    """One exported file kind."""

    name: str
    filename: str  # the file name export writes in the artifact folder
    precision: str
    backend: str  # the runtime backend that loads it by default (backend="auto")


FORMATS: tuple[FileFormat, ...] = (
    FileFormat("onnx", "model.onnx", "fp32", "onnxruntime"),
    FileFormat("onnx-int8", "model.int8.onnx", "int8", "onnxruntime"),
    FileFormat("onnx-fp16", "model.fp16.onnx", "fp16", "onnxruntime"),
    FileFormat("tensorrt", "model.engine", "from-onnx", "tensorrt"),
)


def format_for_path(path: str | Path) -> FileFormat:
    """The format of an exported file, by its name (``*.engine`` is a TensorRT plan).

    Raises:
        ValueError: the suffix is not one the runtime loads.
    """
    name = Path(path).name
    for fmt in FORMATS:
        if name == fmt.filename:
            return fmt
    suffix = Path(path).suffix
    by_suffix = {Path(f.filename).suffix: f for f in FORMATS if f.precision in ("fp32", "from-onnx")}
    if suffix in by_suffix:
        return by_suffix[suffix]
    raise ValueError(f"{path}: unknown model file type {suffix!r}: expected one of "
                     f"{', '.join(sorted({Path(f.filename).suffix for f in FORMATS}))}")

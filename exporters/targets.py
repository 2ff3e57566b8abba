"""The one table of export targets: each row holds its exporter, its options and its help,
and the table drives the CLI's choices, the dispatch and (through ``runtime.formats``) the
runtime's file-type lookup. A new row is a new target everywhere, tests included."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.formats import FORMATS, FileFormat

_BY_NAME = {f.name: f for f in FORMATS}


@dataclass(frozen=True)
class ExportInputs:
    """The data an export may need: test images to validate on, training images to calibrate int8."""

    test_images: np.ndarray  # uint8 (N, 1, 28, 28), already cut to --validate-images
    test_labels: np.ndarray | None
    calib_images: np.ndarray | None  # uint8 (M, 1, 28, 28) training images, or None


#: (artifact folder, the target's row, its options with defaults filled in, the data) -> ExportResult
Exporter = Callable[[Path, "Target", dict[str, Any], ExportInputs], Any]


@dataclass(frozen=True)
class Target:
    """One thing ``lenet-tool export --target`` can make."""

    name: str
    format: FileFormat | None  # None: the target writes a folder, not a file the runtime loads
    options: tuple[str, ...]  # export options this target takes
    exporter: Exporter
    description: str  # shown in ``lenet-tool export --help``
    defaults: tuple[tuple[str, Any], ...] = ()  # this target's own defaults, over DEFAULTS
    folder: str = ""  # what a folder target writes, relative to the artifact

    @property
    def filename(self) -> str:
        return self.format.filename if self.format else self.folder

    @property
    def precision(self) -> str:
        return self.format.precision if self.format else "from-source"


# The exporters import torch and onnx only when they run, so the table stays cheap to import.

def _export_float(artifact: Path, t: Target, opts: dict[str, Any], data: ExportInputs) -> Any:
    from .onnx_export import export_float
    return export_float(artifact, t.filename, t.precision, opset=int(opts["opset"]), images=data.test_images,
                        labels=data.test_labels, validate=len(data.test_images) > 0)


def _export_int8(artifact: Path, t: Target, opts: dict[str, Any], data: ExportInputs) -> Any:
    from . import calibration_sample
    from .onnx_export import export_int8
    if data.calib_images is None:
        raise ValueError("int8 export needs calibration images from the training set")
    k = int(opts["calibration_images"])
    if k < 1:
        raise ValueError(f"--calibration-images {k}: expected at least 1")
    return export_int8(artifact, t.filename, opset=int(opts["opset"]), images=data.test_images,
                       labels=data.test_labels, calib_images=calibration_sample(artifact, data.calib_images, k),
                       int8_format=str(opts["int8_format"]), validate=len(data.test_images) > 0)


def _export_trt(artifact: Path, t: Target, opts: dict[str, Any], data: ExportInputs) -> Any:
    import time

    from runtime.backends.trt import sidecar_path

    from .onnx_export import ExportResult, Staging
    from .tensorrt import export_plan, validate_plan
    src = str(opts["source"])
    if src not in TRT_SOURCES:
        raise ValueError(f"--source {src!r}: expected one of {', '.join(TRT_SOURCES)}")
    t0 = time.perf_counter()
    cache = Path(opts["timing_cache"]) if opts["timing_cache"] else artifact / "timing.cache"
    with Staging(artifact) as stage:  # built and validated aside, renamed into place only if it passes
        tmp = export_plan(artifact, artifact / TRT_SOURCES[src], min_batch=int(opts["min_batch"]),
                          opt_batch=int(opts["opt_batch"]), max_batch=int(opts["max_batch"]),
                          workspace_mib=int(opts["workspace_mib"]), timing_cache=cache, out=stage.path(t.filename))
        report = validate_plan(tmp, artifact, data.test_images, data.test_labels) if len(data.test_images) else None
        path = stage.commit(t.filename)
        stage.commit(sidecar_path(tmp).name)
    return ExportResult(path, report, time.perf_counter() - t0, {"source": TRT_SOURCES[src]})


def _export_triton(artifact: Path, t: Target, opts: dict[str, Any], data: ExportInputs) -> Any:
    import time

    from .onnx_export import ExportResult
    from .triton import export_repository
    src = str(opts["source"])
    if src not in TRITON_SOURCES:
        raise ValueError(f"--source {src!r}: expected one of {', '.join(TRITON_SOURCES)}")
    t0 = time.perf_counter()
    folder, summary = export_repository(
        artifact, artifact / TRITON_SOURCES[src], name=str(opts["model_name"]),
        max_batch=None if opts["max_batch"] is None else int(opts["max_batch"]),
        preferred_batch=int(opts["preferred_batch"]), queue_delay_us=int(opts["queue_delay_us"]),
        instances=int(opts["instances"]))
    return ExportResult(folder, None, time.perf_counter() - t0, {"source": TRITON_SOURCES[src], "triton": summary})


COMMON = ("opset", "validate_images")
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("onnx", _BY_NAME["onnx"], COMMON, _export_float,
           "fp32 ONNX, uint8 image in, gated outputs; preprocessing and gate in the graph"),
    Target("onnx-int8", _BY_NAME["onnx-int8"], (*COMMON, "calibration_images", "int8_format"), _export_int8,
           "int8 static quantization (ONNX Runtime) of the second convolution; QDQ is what TensorRT consumes"),
    Target("onnx-fp16", _BY_NAME["onnx-fp16"], COMMON, _export_float,
           "fp16 network with fp32 preprocessing, gate and outputs, for GPU targets"),
    Target("trt", _BY_NAME["tensorrt"], ("source", "validate_images", "min_batch", "opt_batch", "max_batch",
                                         "workspace_mib", "timing_cache"), _export_trt,
           "TensorRT plan built from one of the ONNX files, plus its sidecar JSON"),
    Target("triton", None, ("source", "model_name", "max_batch", "preferred_batch", "queue_delay_us", "instances"),
           _export_triton, "Triton Inference Server model repository ARTIFACT/triton/NAME (config.pbtxt checked "
           "as Triton's ModelConfig against the model file) from model.onnx or --source int8|fp16|trt",
           defaults=(("max_batch", None),), folder="triton"),
)}

#: ``--source`` of the trt target: each ONNX target's file, by its short name (onnx, int8, fp16).
TRT_SOURCES: dict[str, str] = {t.name.removeprefix("onnx-"): t.filename for t in TARGETS.values()
                               if t.filename.endswith(".onnx")}
#: ``--source`` of the triton target: the ONNX files, or the TensorRT plan (served as model.plan).
TRITON_SOURCES: dict[str, str] = {**TRT_SOURCES, "trt": TARGETS["trt"].filename}

def target_for_file(filename: str) -> str:
    """The target that writes ``filename`` (``model.int8.onnx`` -> ``onnx-int8``), for "export it first" hints."""
    return next((t.name for t in TARGETS.values() if t.filename == filename), "onnx")


DEFAULTS = {"opset": 17, "validate_images": 10000, "calibration_images": 5000, "int8_format": "qdq",
            "source": "onnx", "min_batch": 1, "opt_batch": 32, "max_batch": 1024, "workspace_mib": 256,
            "timing_cache": None, "model_name": "lenet", "preferred_batch": 64, "queue_delay_us": 100,
            "instances": 1}


def check_options(target: str, given: dict[str, object]) -> dict[str, object]:
    """Options for ``target``: defaults filled in; one the target does not take is an error.

    Raises:
        ValueError: unknown target, or an option the target does not support (listing those it does).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    t = TARGETS[target]
    bad = [k for k, v in given.items() if v is not None and k not in t.options]
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        takes = ", ".join("--" + k.replace("_", "-") for k in t.options)
        raise ValueError(f"target {target!r} does not take {flags}: it takes {takes}")
    defaults = {**DEFAULTS, **dict(t.defaults)}
    return {k: (given.get(k) if given.get(k) is not None else defaults[k]) for k in t.options}

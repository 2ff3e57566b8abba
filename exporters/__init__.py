"""Checkpoint -> ONNX (fp32, int8 QDQ, fp16) -> TensorRT plan, driven by one target table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .targets import TARGETS, check_options

__all__ = ["TARGETS", "check_options", "export"]


def export(artifact: Path, target: str, *, test_images: np.ndarray, test_labels: np.ndarray | None,
           calib_images: np.ndarray | None = None, **options: Any) -> Any:
    """Export ``target`` into ``artifact`` (validated where it can run here), update the manifest.

    Raises:
        ValueError: unknown target or an option it does not take.
        exporters.validate.ValidationError: the file disagrees with PyTorch (it is not kept).
    """
    from toolchain.jobs import write_manifest

    from .onnx_export import export_float, export_int8
    opts = check_options(target, options)
    t = TARGETS[target]
    n = int(opts.get("validate_images", 0) or 0)
    imgs = test_images[:n] if n else test_images[:0]
    labels = test_labels[:n] if test_labels is not None and n else None
    if target in ("onnx", "onnx-fp16"):
        result = export_float(artifact, t.filename, t.precision, opset=int(opts["opset"]), images=imgs, labels=labels,
                              validate=n > 0)
    elif target == "onnx-int8":
        if calib_images is None:
            raise ValueError("int8 export needs calibration images from the training set")
        k = int(opts["calibration_images"])
        if k < 1:
            raise ValueError(f"--calibration-images {k}: expected at least 1")
        result = export_int8(artifact, t.filename, opset=int(opts["opset"]), images=imgs, labels=labels,
                             calib_images=calib_images[:k], int8_format=str(opts["int8_format"]), validate=n > 0)
    else:
        from .onnx_export import ExportResult
        from .tensorrt import export_plan
        sources = {"onnx": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
        src = str(opts["source"])
        if src not in sources:
            raise ValueError(f"--source {src!r}: expected one of {', '.join(sources)}")
        cache = Path(opts["timing_cache"]) if opts["timing_cache"] else artifact / "timing.cache"
        path = export_plan(artifact, artifact / sources[src], min_batch=int(opts["min_batch"]),
                           opt_batch=int(opts["opt_batch"]), max_batch=int(opts["max_batch"]),
                           workspace_mib=int(opts["workspace_mib"]), timing_cache=cache)
        result = ExportResult(path, None, 0.0, {"source": sources[src]})
    write_manifest(artifact)
    return result

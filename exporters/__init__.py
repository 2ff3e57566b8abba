"""Checkpoint -> ONNX (fp32, int8 QDQ, fp16) -> TensorRT plan, driven by one target table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .targets import TARGETS, check_options

__all__ = ["TARGETS", "check_options", "export"]


def calibration_sample(artifact: Path, train_images: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """``k`` training images for int8 calibration: a seeded random sample, never from the held-out split.

    A random sample covers the classes and styles evenly (the first rows of a file need not);
    the held-out split stays untouched for the gate. When ``train_images`` is not the data the
    checkpoint was trained on (its size differs), all of it is eligible.
    """
    from toolchain.checkpoint import load_checkpoint
    split = load_checkpoint(artifact / "checkpoint.pt").get("split") or {}
    eligible = np.arange(len(train_images))
    held = split.get("holdout_indices")
    if held is not None and split.get("n_train", -1) + split.get("n_holdout", -1) == len(train_images):
        eligible = np.setdiff1d(eligible, np.asarray(held, dtype=np.int64))
    pick = np.random.default_rng(seed).permutation(eligible)[:k]
    return np.ascontiguousarray(train_images[np.sort(pick)])


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
                             calib_images=calibration_sample(artifact, calib_images, k),
                             int8_format=str(opts["int8_format"]), validate=n > 0)
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

"""Checkpoint -> ONNX (fp32, int8 QDQ, fp16) -> TensorRT plan -> Triton model repository, driven by one
target table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .targets import TARGETS, ExportInputs, check_options

__all__ = ["TARGETS", "ExportInputs", "check_options", "export"]


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
    """Export ``target`` into ``artifact`` with the exporter its table row holds (validated where
    it can run here), then update the manifest.

    Raises:
        ValueError: unknown target or an option it does not take.
        exporters.validate.ValidationError: the file disagrees with PyTorch (it is not kept).
    """
    from toolchain.manifest import write_manifest

    opts = check_options(target, options)
    t = TARGETS[target]
    n = int(opts.get("validate_images", 0) or 0)
    data = ExportInputs(test_images[:n] if n else test_images[:0],
                        test_labels[:n] if test_labels is not None and n else None, calib_images)
    result = t.exporter(artifact, t, opts, data)
    # What TensorRT's parser would say of an ONNX file, known before any GPU sees it.
    if result.path.is_file() and result.path.suffix == ".onnx":
        from .trt_rules import check_trt_rules
        result.details["trt_rules"] = [str(v) for v in check_trt_rules(result.path)]
    write_manifest(artifact)
    return result

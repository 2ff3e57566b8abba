"""Build the metadata JSON that every exported file carries (schema in runtime.metadata)."""

from __future__ import annotations

from typing import Any

from runtime.metadata import INPUT_NAME, OUTPUT_NAMES, SCHEMA_VERSION
from toolchain import __version__
from toolchain.manifest import library_versions


def build_metadata(ckpt: dict[str, Any], *, checkpoint_sha256: str, precision: str, opset: int,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Class names, input spec, preprocessing, the whole gate and provenance, as JSON-able data."""
    split = ckpt.get("split") or {}
    return {
        "schema_version": SCHEMA_VERSION,
        "class_names": list(ckpt["class_names"]),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", 1, 28, 28], "range": [0, 255],
                  "layout": "NCHW, one grayscale channel"},
        "outputs": {
            "logits": {"dtype": "float32", "shape": ["N", len(ckpt["class_names"])]},
            "confidence": {"dtype": "float32", "shape": ["N"], "definition": ckpt["calibration"]["score_definition"]},
            "label": {"dtype": "int64", "shape": ["N"]},
            "accepted": {"dtype": "bool", "shape": ["N"], "definition": "confidence >= gate.threshold"},
        },
        "output_order": list(OUTPUT_NAMES),
        "preprocessing": {**ckpt["preprocess"], "scale": "pixel / 255", "inside_graph": True,
                          "polarity_rule": "mean pixel > 0.5 -> invert" if ckpt["preprocess"]["polarity"] == "auto"
                          else "none"},
        "gate": dict(ckpt["calibration"]),
        "precision": precision,
        "architecture": dict(ckpt["arch"]),
        "provenance": {
            "tool": "lenet-tool", "tool_version": __version__, "checkpoint_sha256": checkpoint_sha256,
            "dataset_sha256": split.get("dataset_sha256"), "dataset_source": split.get("dataset_source"),
            "opset": opset, "libraries": library_versions(),
            "train_config": dict(ckpt["train_config"]),
        },
        **(extra or {}),
    }

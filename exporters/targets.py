"""The one table of export targets: it drives the CLI's choices, the dispatch and (through
``runtime.formats``) the runtime's file-type lookup."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.formats import FORMATS, FileFormat

_BY_NAME = {f.name: f for f in FORMATS}


@dataclass(frozen=True)
class Target:
    """One thing ``lenet-tool export --target`` can make."""

    name: str
    format: FileFormat
    device: str  # where the file is meant to run: cpu, gpu or any
    options: tuple[str, ...]  # export options this target takes
    needs: tuple[str, ...]  # importable modules the export needs
    description: str

    @property
    def filename(self) -> str:
        return self.format.filename

    @property
    def precision(self) -> str:
        return self.format.precision


COMMON = ("opset", "validate_images")
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("onnx", _BY_NAME["onnx"], "any", COMMON, ("onnx", "onnxruntime"),
           "fp32 ONNX, uint8 image in, gated outputs; preprocessing and gate in the graph"),
    Target("onnx-int8", _BY_NAME["onnx-int8"], "any", (*COMMON, "calibration_images", "int8_format"),
           ("onnx", "onnxruntime"),
           "int8 static quantization (ONNX Runtime) of the network; QDQ is what TensorRT consumes"),
    Target("onnx-fp16", _BY_NAME["onnx-fp16"], "gpu", COMMON, ("onnx", "onnxruntime"),
           "fp16 network with fp32 preprocessing, gate and outputs, for GPU targets"),
    Target("trt", _BY_NAME["tensorrt"], "gpu", ("source", "min_batch", "opt_batch", "max_batch", "workspace_mib",
                                                "timing_cache"), ("tensorrt", "cuda"),
           "TensorRT plan built from one of the ONNX files, plus its sidecar JSON"),
)}

DEFAULTS = {"opset": 17, "validate_images": 10000, "calibration_images": 5000, "int8_format": "qdq",
            "source": "onnx", "min_batch": 1, "opt_batch": 32, "max_batch": 1024, "workspace_mib": 256,
            "timing_cache": None}


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
    return {k: (given.get(k) if given.get(k) is not None else DEFAULTS[k]) for k in t.options}

"""ONNX -> TensorRT plan with the TensorRT 10/11 Python API, plus its sidecar JSON.

Unexercised on the project's machines (TensorRT cannot be installed there); written
against the documented API: strongly typed network (TensorRT 11 removed the FP16/INT8
builder flags: precision comes from the ONNX file, QDQ for int8, a cast model for fp16),
every parser error reported, one optimisation profile, a workspace limit and a timing
cache reused between builds. The plan is written bare so ``trtexec --loadEngine`` and
Triton load it; everything else goes into ``model.engine.json``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.trt import compute_capability, sidecar_path
from runtime.fileio import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file
from runtime.metadata import INPUT_NAME, METADATA_KEY


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a GPU is missing: the message says what and how to install it."""


def require_tensorrt() -> Any:
    """Import TensorRT and check for a CUDA GPU, or say what is missing and how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable(
            "--target trt needs TensorRT's Python package and an NVIDIA GPU: TensorRT is not installed here. "
            "Install it on a GPU machine with 'pip install tensorrt' (wheels come from NVIDIA's index, "
            "pypi.nvidia.com) and 'pip install cuda-python'; then rerun the export there") from None
    try:
        compute_capability()
    except Exception as e:  # no cuda-python, no driver or no device
        raise TensorRTUnavailable(f"--target trt needs an NVIDIA GPU and the CUDA runtime: {e}") from None
    return trt


def parse_onnx(trt: Any, network: Any, logger: Any, onnx_bytes: bytes, source: Path) -> None:
    """Parse ONNX into ``network``; on failure raise with every parser error, not just the first."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ValueError(f"{source}: TensorRT's ONNX parser failed with {len(errors)} error(s):\n  " +
                         "\n  ".join(errors))


def build_plan(onnx_path: Path, *, min_batch: int, opt_batch: int, max_batch: int, workspace_mib: int,
               timing_cache: Path | None, precision: str = "fp32") -> tuple[bytes, dict[str, Any]]:
    """Build a serialized plan; returns the bytes and what the sidecar records of the build.

    ``precision`` is the ONNX file's: for ``fp32`` TF32 is turned off (TensorRT allows it by
    default, and the plan is then validated with fp32 tolerances; on an H100 TF32 moved logits
    by 1.5e-3). A timing cache from another GPU or TensorRT version is not used (TensorRT
    refuses it): the build starts from an empty cache, which then replaces the file.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"batch profile min {min_batch}, opt {opt_batch}, max {max_batch}: expected "
                         "1 <= min <= opt <= max")
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    # TensorRT 10 needs the flag for strong typing; in 11 every network is strongly typed.
    network = builder.create_network(1 << int(flag) if flag is not None else 0)
    parse_onnx(trt, network, logger, onnx_path.read_bytes(), onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (min_batch, 1, 28, 28), (opt_batch, 1, 28, 28), (max_batch, 1, 28, 28))
    config.add_optimization_profile(profile)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if not cache_bytes:
            raise ValueError(f"{onnx_path}: TensorRT refused an empty timing cache")
        # The artifact folder travels between machines, and its cache with it.
        warnings.warn(f"{timing_cache}: a timing cache from another GPU or TensorRT version; building without it "
                      "(the file is replaced by this build's cache)", stacklevel=2)
        if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
            raise ValueError(f"{onnx_path}: TensorRT refused an empty timing cache")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ValueError(f"{onnx_path}: TensorRT could not build a plan (see the log above)")
    final = config.get_timing_cache() if timing_cache is not None else None
    if final is not None:
        atomic_write_bytes(timing_cache, bytes(final.serialize()))
    return bytes(plan), {"tensorrt_version": trt.__version__, "compute_capability": compute_capability(),
                         "profile": {"min": min_batch, "opt": opt_batch, "max": max_batch},
                         "tf32": not (precision == "fp32" and tf32 is not None),
                         "workspace_mib": workspace_mib, "timing_cache": str(timing_cache) if timing_cache else None}


def sidecar(onnx_meta: dict[str, Any], plan: bytes, build: dict[str, Any], source: Path) -> dict[str, Any]:
    """The sidecar: the ONNX file's metadata plus the plan's hash, versions and profile."""
    return {**onnx_meta, "tensorrt": {"plan_sha256": sha256_bytes(plan), "precision": onnx_meta["precision"],
                                      "source_onnx": source.name, "source_onnx_sha256": sha256_file(source),
                                      **build}}


def onnx_metadata(path: Path) -> dict[str, Any]:
    """The lenet_tool metadata of an ONNX file (parsed with the runtime's limits)."""
    import onnx

    from runtime.metadata import parse_metadata
    proto = onnx.load(str(path), load_external_data=False)
    value = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
    return parse_metadata(value, str(path))


def export_plan(artifact: Path, source: Path, *, min_batch: int, opt_batch: int, max_batch: int,
                workspace_mib: int, timing_cache: Path | None, out: Path | None = None) -> Path:
    """Build ``model.engine`` (or ``out``) from ``source`` and write it with its sidecar, atomically."""
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such ONNX file: export it first (lenet-tool export --target "
                                f"{'onnx' if source.name == 'model.onnx' else 'onnx-int8/onnx-fp16'})")
    meta = onnx_metadata(source)
    plan, build = build_plan(source, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                             workspace_mib=workspace_mib, timing_cache=timing_cache, precision=meta["precision"])
    path = out if out is not None else artifact / "model.engine"
    atomic_write_bytes(path, plan)
    atomic_write_json(sidecar_path(path), sidecar(meta, plan, build, source))
    return path


def describe(meta: dict[str, Any]) -> str:
    """One line about a sidecar's build."""
    t = meta["tensorrt"]
    return (f"TensorRT {t['tensorrt_version']}, compute capability {t['compute_capability']}, {t['precision']}, "
            f"profile {json.dumps(t['profile'])}")


def validate_plan(plan: Path, artifact: Path, images: np.ndarray, labels: np.ndarray | None) -> Any:
    """Run a built plan through runtime's TensorRT backend beside the PyTorch graph, as every ONNX
    file is; raise :class:`exporters.validate.ValidationError` on a mismatch (the tolerances of the
    ONNX file it was built from)."""
    from runtime.backends.trt import TensorRTBackend

    from .graph import GatedModel
    from .onnx_export import load_calibrated, run_in_chunks, torch_reference
    from .validate import ValidationError, compare
    ckpt, _, pipeline = load_calibrated(artifact)
    graph = GatedModel(pipeline, ckpt["calibration"])
    backend = TensorRTBackend(plan)
    try:
        got = run_in_chunks(backend, images)
    finally:
        backend.close()
    report = compare(plan.name, backend.metadata["precision"], torch_reference(graph, images), got, graph.threshold,
                     labels)
    if not report.passed:
        raise ValidationError(report)
    return report

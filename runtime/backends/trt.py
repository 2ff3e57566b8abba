"""TensorRT backend: a bare plan plus its sidecar JSON (TensorRT 10 and 11 Python API).

Unexercised on the project's machines: TensorRT cannot be installed there (its PyPI
libraries package downloads from NVIDIA's own index). The checks of the plan against its
sidecar are plain functions, tested without TensorRT.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import ArtifactError, load_json_file, sha256_file
from ..metadata import INPUT_NAME, OUTPUT_NAMES, MetadataError, check_metadata
from .base import Backend, BackendUnavailable, import_backend_library

SIDECAR_SUFFIX = ".json"


def sidecar_path(plan: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    plan = Path(plan)
    return plan.with_name(plan.name + SIDECAR_SUFFIX)


def read_sidecar(plan: str | Path) -> dict[str, Any]:
    """Read and check the sidecar of a plan (metadata schema plus the ``tensorrt`` section)."""
    side = sidecar_path(plan)
    if not side.is_file():
        raise MetadataError(f"{plan}: no sidecar {side.name} beside the plan: expected the file 'lenet-tool export "
                            "--target trt' writes with it; rebuild the plan with that command")
    meta = check_metadata(load_json_file(side), str(side))
    trt_info = meta.get("tensorrt")
    need = ("plan_sha256", "tensorrt_version", "compute_capability", "precision", "profile")
    if not isinstance(trt_info, dict) or any(k not in trt_info for k in need):
        raise MetadataError(f"{side}: no complete 'tensorrt' section: expected {', '.join(need)}")
    return meta


def check_plan(plan: str | Path, meta: dict[str, Any], tensorrt_version: str | None,
               compute_capability: str | None) -> None:
    """Refuse a plan whose hash, TensorRT version or compute capability does not match.

    ``tensorrt_version``/``compute_capability`` are those of this machine (``None``
    skips that check, for tools that only inspect). Each message says how to rebuild.
    """
    info = meta["tensorrt"]
    rebuild = "rebuild it here with 'lenet-tool export --target trt' from the ONNX file"
    got = sha256_file(plan)
    if got != info["plan_sha256"]:
        raise ArtifactError(f"{plan}: SHA-256 {got} does not match the sidecar's {info['plan_sha256']}: the plan "
                            f"was changed or replaced after export; {rebuild}")
    if tensorrt_version is not None and str(tensorrt_version) != str(info["tensorrt_version"]):
        raise ArtifactError(f"{plan}: built with TensorRT {info['tensorrt_version']}, this machine has TensorRT "
                            f"{tensorrt_version}: plans are not portable across versions; {rebuild}")
    if compute_capability is not None and str(compute_capability) != str(info["compute_capability"]):
        raise ArtifactError(f"{plan}: built for compute capability {info['compute_capability']}, this GPU is "
                            f"{compute_capability}: plans are specific to a GPU architecture; {rebuild}")


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise BackendUnavailable(f"cuda-python is not installed ({e}): pip install cuda-python") from None
    return cudart


def _check(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime error {err}")
    return rest[0] if len(rest) == 1 else rest


def compute_capability(device: int = 0) -> str:
    """``major.minor`` of a CUDA device, through cuda-python."""
    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(device))
    return f"{props.major}.{props.minor}"


def _trt() -> Any:
    return import_backend_library("tensorrt", "TensorRT",
                                  "pip install tensorrt (NVIDIA's index); it needs an NVIDIA GPU and driver")


class TensorRTBackend(Backend):
    """Runs a TensorRT plan. One execution context (and CUDA stream and buffers) per thread:
    contexts are not thread-safe, the engine is, so threads never share a context."""

    name = "tensorrt"
    options = ("device",)
    formats = ("tensorrt",)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            trt = _trt()
            cc = compute_capability()
        except (BackendUnavailable, RuntimeError) as e:
            return False, str(e)
        return True, f"TensorRT {trt.__version__} on a GPU of compute capability {cc}"

    def _load(self, device: int = 0) -> None:
        meta = read_sidecar(self.path)
        trt = _trt()
        self._cudart = _cudart()
        _check(self._cudart.cudaSetDevice(device))
        check_plan(self.path, meta, trt.__version__, compute_capability(device))
        self.metadata = meta
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"{self.path}: TensorRT could not deserialize the plan")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        if set(names) != {INPUT_NAME, *OUTPUT_NAMES}:
            raise MetadataError(f"{self.path}: plan tensors {names}: expected {INPUT_NAME} and {list(OUTPUT_NAMES)}")
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._init_state(device, int(meta["tensorrt"]["profile"]["min"]), int(meta["tensorrt"]["profile"]["max"]))

    def _init_state(self, device: int, min_batch: int, max_batch: int) -> None:
        """Per-thread contexts, the in-flight count that ``close`` waits for, the profile's batch range."""
        self._device, self._min_batch, self._max_batch = device, min_batch, max_batch
        self._local = threading.local()
        self._contexts: list[Any] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._closed = False

    @property
    def providers(self) -> list[str]:
        return [f"tensorrt (compute capability {self.metadata['tensorrt']['compute_capability']})"]

    def _context(self) -> Any:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            # The current CUDA device is per host thread: a new thread starts on GPU 0.
            _check(self._cudart.cudaSetDevice(self._device))
            ctx = self._engine.create_execution_context()
            stream = _check(self._cudart.cudaStreamCreate())
            self._local.ctx, self._local.stream, self._local.buffers = ctx, stream, {}
            with self._lock:
                self._contexts.append((ctx, stream, self._local.buffers))
        return self._local.ctx

    def _buffer(self, name: str, nbytes: int) -> int:
        bufs = self._local.buffers
        ptr, size = bufs.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self._cudart.cudaFree(ptr))
            ptr = _check(self._cudart.cudaMalloc(nbytes))
            bufs[name] = (ptr, nbytes)
        return int(ptr)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        n = images.shape[0]
        if n > self._max_batch:  # the plan's profile caps the batch: split, never fail
            parts = [self.run(images[i:i + self._max_batch]) for i in range(0, n, self._max_batch)]
            return {k: np.concatenate([p[k] for p in parts]) for k in OUTPUT_NAMES}
        if n < self._min_batch:  # and floors it: pad with blank frames, keep the first n answers
            pad = np.zeros((self._min_batch - n, *images.shape[1:]), dtype=images.dtype)
            out = self.run(np.concatenate([images, pad]))
            return {k: v[:n] for k, v in out.items()}
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.path}: this TensorRT backend was closed")
            self._in_flight += 1
        try:
            return self._run(images)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._idle.notify_all()

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        cudart = self._cudart
        ctx = self._context()
        stream = self._local.stream
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if not ctx.set_input_shape(INPUT_NAME, tuple(images.shape)):
            raise ValueError(f"{self.path}: TensorRT refused input shape {tuple(images.shape)}: the plan's profile "
                             f"takes batches of {self._min_batch} to {self._max_batch}")
        src = np.ascontiguousarray(images)
        ptr = self._buffer(INPUT_NAME, src.nbytes)
        _check(cudart.cudaMemcpyAsync(ptr, src.ctypes.data, src.nbytes, h2d, stream))
        ctx.set_tensor_address(INPUT_NAME, ptr)
        outs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(ctx.get_tensor_shape(name))
            outs[name] = np.empty(shape, dtype=self._dtypes[name])
            ctx.set_tensor_address(name, self._buffer(name, max(outs[name].nbytes, 1)))
        if not ctx.execute_async_v3(stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")
        for name, arr in outs.items():
            _check(cudart.cudaMemcpyAsync(arr.ctypes.data, self._local.buffers[name][0], arr.nbytes, d2h, stream))
        _check(cudart.cudaStreamSynchronize(stream))
        return outs

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new runs, wait (up to ``timeout`` s) for those in flight on any thread, then free
        every thread's context, stream and buffers, and the engine."""
        with self._idle:
            self._closed = True
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise RuntimeError(f"{self.path}: {self._in_flight} TensorRT run(s) still in flight after "
                                   f"{timeout:g} s; not freeing their buffers")
            for _, stream, bufs in self._contexts:
                for ptr, _ in bufs.values():
                    self._cudart.cudaFree(ptr)
                bufs.clear()
                self._cudart.cudaStreamDestroy(stream)
            self._contexts.clear()  # the contexts go with their last reference
            self._engine = None

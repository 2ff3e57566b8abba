"""OpenVINO backend (Intel CPUs, GPUs and NPUs) for the exported ONNX files."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, MetadataError, parse_metadata
from .base import Backend, BackendUnavailable, import_backend_library

#: ``precision`` option -> OpenVINO's INFERENCE_PRECISION_HINT. f32 by default: on CPUs with
#: bf16 units OpenVINO would otherwise compute in bf16, and the gate was certified in f32.
PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16"}
#: Frames per inference request (:meth:`OpenVINOBackend.run`).
RUN_CHUNK = 1024


def _ov() -> Any:
    return import_backend_library("openvino", "OpenVINO", "pip install openvino (or lenet-tool[openvino])")


class OpenVINOBackend(Backend):
    """Runs an exported ``.onnx`` file through OpenVINO (``device`` CPU by default).

    ``precision``: ``f32`` (default), or ``bf16``/``f16`` where the device has them: faster, and
    the decisions near the threshold may then differ from the certified f32 ones. One compiled
    model serves every thread, each with its own infer request (OpenVINO's requests are not
    shared between threads).
    """

    name = "openvino"
    options = ("device", "precision", "threads")
    formats = ("onnx", "onnx-int8", "onnx-fp16")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            ov = _ov()
        except BackendUnavailable as e:
            return False, str(e)
        return True, f"OpenVINO {ov.__version__} on {', '.join(ov.Core().available_devices)}"

    def _load(self, device: str = "CPU", precision: str = "f32", threads: int | None = None) -> None:
        ov = _ov()
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        core = ov.Core()
        if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
            raise BackendUnavailable(f"OpenVINO device {device!r} is not here; available devices are "
                                     f"{', '.join(core.available_devices)}")
        try:
            model = core.read_model(str(self.path))
        except Exception as e:  # OpenVINO raises its own RuntimeError subtypes for a bad file
            raise MetadataError(f"{self.path}: OpenVINO cannot read this file ({str(e).splitlines()[0][:300]})") \
                from None
        key = ["framework", METADATA_KEY]  # where OpenVINO's ONNX reader puts metadata_props
        meta = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else None
        self.metadata = parse_metadata(meta, str(self.path))
        names = [i.get_any_name() for i in model.inputs]
        outs = [o.get_any_name() for o in model.outputs]
        if names != [INPUT_NAME] or tuple(outs) != OUTPUT_NAMES:
            raise MetadataError(f"{self.path}: graph inputs {names} and outputs {outs}: expected ['{INPUT_NAME}'] "
                                f"and {list(OUTPUT_NAMES)}")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision]}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, device, config)
        self.device, self.precision = device, precision
        self._ports = [self.compiled.output(n) for n in OUTPUT_NAMES]
        self._local = threading.local()
        self._lock = threading.Lock()
        self._requests: list[Any] = []

    @property
    def providers(self) -> list[str]:
        return [f"OpenVINO {self.device} ({self.precision})"]

    def _request(self) -> Any:
        if self.compiled is None:
            raise RuntimeError(f"{self.path}: this OpenVINO backend was closed")
        req = getattr(self._local, "request", None)
        if req is None:
            req = self.compiled.create_infer_request()
            self._local.request = req
            with self._lock:
                self._requests.append(req)
        return req

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        # In chunks: OpenVINO 2026.4's CPU plugin (f32, on an AVX-512 EPYC) computed frames
        # past about the 5,000th of one large batch wrongly (logits up to 0.08 off its own
        # batch-1 answer on the seed-protocol test frames; every batch of 4,096 or fewer
        # agreed with ONNX Runtime to 5e-6), and a chunk costs no throughput at this size.
        parts = []
        for i in range(0, len(images), RUN_CHUNK):
            res = self._request().infer({INPUT_NAME: images[i:i + RUN_CHUNK]})  # copies the outputs out
            parts.append([np.asarray(res[p]) for p in self._ports])
        # One chunk (every batch-1 call) is returned as it is, without a copy.
        columns = parts[0] if len(parts) == 1 else [np.concatenate(c) for c in zip(*parts)]
        out = dict(zip(OUTPUT_NAMES, columns))
        out["accepted"] = out["accepted"].astype(bool)  # OpenVINO hands booleans back as bytes
        return out

    def close(self) -> None:
        with self._lock:
            self._requests.clear()
        self._local = threading.local()
        self.compiled = None

"""ONNX Runtime backend (CPU, and CUDA where onnxruntime-gpu is installed)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, MetadataError, parse_metadata
from .base import Backend, BackendUnavailable, import_backend_library

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _ort() -> Any:
    return import_backend_library("onnxruntime", "onnxruntime",
                                  "pip install onnxruntime (or onnxruntime-gpu for CUDA)")


class OnnxRuntimeBackend(Backend):
    """Runs an exported ``.onnx`` file through ``onnxruntime.InferenceSession``.

    ``providers`` is an ordered preference list, as ONNX Runtime's own; by default the
    fastest available (CUDA before CPU). A requested provider that is not available is an
    error listing those that are, and the session is checked to really run on the first
    one asked for: ONNX Runtime itself would fall back to the CPU silently.
    """

    name = "onnxruntime"
    options = ("providers", "threads")
    formats = ("onnx", "onnx-int8", "onnx-fp16")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            ort = _ort()
        except BackendUnavailable as e:
            return False, str(e)
        return True, f"onnxruntime {ort.__version__} with {', '.join(ort.get_available_providers())}"

    @staticmethod
    def default_providers() -> list[str]:
        avail = _ort().get_available_providers()
        # TensorRT EP builds engines on first use (minutes): only when asked for by name.
        return [p for p in PREFERENCE[1:] if p in avail]

    def _load(self, providers: list[str] | None = None, threads: int | None = None) -> None:
        ort = _ort()
        avail = ort.get_available_providers()
        wanted = list(providers) if providers else self.default_providers()
        missing = [p for p in wanted if p not in avail]
        if missing:
            raise BackendUnavailable(f"requested execution provider(s) {', '.join(missing)}, available providers are "
                                     f"{', '.join(avail)}")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=wanted)
        except Exception as e:  # ORT raises its own exception types for a bad file
            raise MetadataError(f"{self.path}: ONNX Runtime cannot load this file ({str(e).splitlines()[0][:300]})") \
                from None
        active = self.session.get_providers()
        if active[0] != wanted[0]:
            raise BackendUnavailable(f"requested {wanted[0]} but the session runs on {', '.join(active)}")
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata = parse_metadata(meta, str(self.path))
        names = [i.name for i in self.session.get_inputs()]
        outs = [o.name for o in self.session.get_outputs()]
        if names != [INPUT_NAME] or tuple(outs) != OUTPUT_NAMES:
            raise MetadataError(f"{self.path}: graph inputs {names} and outputs {outs}: expected ['{INPUT_NAME}'] "
                                f"and {list(OUTPUT_NAMES)}")
        self._outputs = list(OUTPUT_NAMES)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe: one session serves every thread.
        return dict(zip(self._outputs, self.session.run(self._outputs, {INPUT_NAME: images})))

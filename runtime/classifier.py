"""``Classifier``: what device code embeds to run confidence-gated inference."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BACKENDS, BackendUnavailable, backend_for_path
from .backends.base import Backend
from .formats import format_for_path


@dataclass(frozen=True)
class Prediction:
    """A batch's results: ``labels`` int64 ``(N,)``, ``confidences`` float32 ``(N,)``,
    ``accepted`` bool ``(N,)`` and the raw ``logits`` float32 ``(N, C)``."""

    labels: np.ndarray
    confidences: np.ndarray
    accepted: np.ndarray
    logits: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Result:
    """One image's result. ``accepted`` False means: do not act on this reading."""

    label: int
    class_name: str
    confidence: float
    accepted: bool


def as_batch(images: Any) -> np.ndarray:
    """Validate images and return them as contiguous uint8 ``(N, 1, 28, 28)``.

    Accepts uint8, or floats in [0, 1] (rounded to the nearest of 256 levels, the
    resolution the model was trained at), shaped ``(28, 28)``, ``(N, 28, 28)`` or
    ``(N, 1, 28, 28)``.

    Raises:
        ValueError: naming what was given and what is expected.
    """
    a = np.asarray(images)
    if a.dtype == np.uint8:
        x = a
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError(f"images hold NaN or infinite values (dtype {a.dtype}, shape {a.shape}): "
                             "expected finite pixels in [0, 1]")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"float images span [{lo:.4g}, {hi:.4g}]: expected values in [0, 1] "
                             "(or uint8 pixels 0-255)")
        x = np.rint(a * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"images of dtype {a.dtype}: expected uint8 or floats in [0, 1]")
    if x.ndim == 2 and x.shape == (28, 28):
        x = x.reshape(1, 1, 28, 28)
    elif x.ndim == 3 and x.shape[1:] == (28, 28):
        x = x.reshape(x.shape[0], 1, 28, 28)
    elif not (x.ndim == 4 and x.shape[1:] == (1, 28, 28)):
        raise ValueError(f"images of shape {a.shape}: expected (28, 28), (N, 28, 28) or (N, 1, 28, 28)")
    if x.shape[0] == 0:
        raise ValueError("an empty batch: expected at least one image")
    return np.ascontiguousarray(x)


class Classifier:
    """Confidence-gated digit classification from an exported model file.

    Args:
        path: ``model.onnx`` (any precision) or ``model.engine`` (with its sidecar).
        backend: ``"auto"`` (the fastest available for this file), or a name in
            :data:`runtime.backends.BACKENDS`. A backend that is unavailable is an
            error listing those that are; there is no silent fallback.
        threshold: override the calibrated gate threshold (warns: the guarantee that
            came with the calibrated one does not hold for another).
        **options: passed to the backend (``providers``, ``threads`` for ONNX Runtime;
            ``device`` for TensorRT).
    """

    def __init__(self, path: str | Path, backend: str = "auto", *, threshold: float | None = None,
                 **options: Any) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file")
        wanted = backend_for_path(path) if backend == "auto" else backend
        if wanted not in BACKENDS:
            raise ValueError(f"backend {backend!r}: expected 'auto' or one of {', '.join(BACKENDS)}")
        fmt = format_for_path(path)
        if fmt.name not in BACKENDS[wanted].formats:
            loaders = [n for n, b in BACKENDS.items() if fmt.name in b.formats]
            raise ValueError(f"backend {backend!r} cannot load {path.name}: it is a {fmt.name} file, which "
                             f"{', '.join(loaders)} load")
        cls = BACKENDS[wanted]
        cls.check_options(options)  # a typo is an error even where the backend is missing
        ok, why = cls.available()
        if not ok:
            usable = [n for n, b in BACKENDS.items() if b.available()[0]]
            raise BackendUnavailable(f"backend {wanted!r} is not available here: {why}; available backends: "
                                     f"{', '.join(usable) or 'none'}")
        self._backend: Backend = cls(path, **options)
        self.path = path
        self.backend_reason = ("auto: " if backend == "auto" else "") + why
        gate = self._backend.metadata["gate"]
        self.calibrated_threshold = float(gate["threshold"])
        self.class_names: list[str] = list(self._backend.metadata["class_names"])
        self._override: np.float32 | None = None
        if threshold is not None:
            if not (isinstance(threshold, (int, float)) and 0.0 <= float(threshold) <= 1.0):
                raise ValueError(f"threshold {threshold!r}: expected a number in [0, 1]")
            self._override = np.float32(threshold)
            warnings.warn(f"gate threshold overridden: {float(threshold):.6g} instead of the calibrated "
                          f"{self.calibrated_threshold:.6g}; the calibrated risk guarantee does not apply",
                          stacklevel=2)

    # -- what is running
    @property
    def metadata(self) -> dict[str, Any]:
        return self._backend.metadata

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def providers(self) -> list[str]:
        return self._backend.providers

    @property
    def input_spec(self) -> dict[str, Any]:
        return self._backend.input_spec

    @property
    def threshold(self) -> float:
        return float(self._override) if self._override is not None else self.calibrated_threshold

    @property
    def threshold_overridden(self) -> bool:
        return self._override is not None

    # -- inference
    def predict(self, images: Any) -> Prediction:
        """Labels, confidences and accept flags for a batch (see :func:`as_batch` for inputs)."""
        out = self._backend.run(as_batch(images))
        if self._override is None:
            accepted = out["accepted"]
        else:
            # A frame the gate refused outright (energy floor, novelty ceiling: confidence 0) stays
            # refused whatever the threshold: those refusals say "no digit", not "unsure".
            accepted = (out["confidence"] >= self._override) & (out["confidence"] > 0)
        return Prediction(out["label"], out["confidence"], accepted, out["logits"])

    def classify(self, image: Any) -> Result:
        """One image ``(28, 28)`` or ``(1, 28, 28)`` -> one :class:`Result`."""
        a = np.asarray(image)
        if a.shape not in ((28, 28), (1, 28, 28), (1, 1, 28, 28)):
            raise ValueError(f"image of shape {a.shape}: expected one image, (28, 28)")
        p = self.predict(a.reshape(28, 28))
        label = int(p.labels[0])
        return Result(label, self.class_names[label], float(p.confidences[0]), bool(p.accepted[0]))

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Classifier({str(self.path)!r}, backend={self.backend!r}, providers={self.providers}, "
                f"threshold={self.threshold:.6g}{' (overridden)' if self.threshold_overridden else ''})")

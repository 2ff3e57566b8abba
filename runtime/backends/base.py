"""The one small base class every backend implements."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class BackendUnavailable(RuntimeError):
    """A backend's library, driver or device is missing here."""


def import_backend_library(module: str, label: str, install: str) -> Any:
    """Import a backend's library lazily, or say it is missing and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailable(f"{label} is not installed ({e}): {install}") from None


class Backend(ABC):
    """Loads one model file and runs uint8 ``(N, 1, 28, 28)`` batches through it.

    Subclasses set ``name`` and implement ``available``, ``_load`` and ``run``. Input
    validation happens once, in :class:`runtime.Classifier`, before any backend runs.
    """

    name: ClassVar[str]
    #: The keyword options ``_load`` takes; anything else is refused (a typo must not run on defaults).
    options: ClassVar[tuple[str, ...]] = ()
    #: The file formats (``runtime.formats`` names) this backend loads.
    formats: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str | Path, **options: Any) -> None:
        self.check_options(options)
        self.path = Path(path)
        self.metadata: dict[str, Any] = {}
        self._load(**options)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Refuse options this backend does not take, naming those it does."""
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            takes = ", ".join(cls.options) if cls.options else "none"
            raise ValueError(f"backend {cls.name!r} does not take the option(s) {', '.join(unknown)}: "
                             f"it takes {takes}")

    @classmethod
    @abstractmethod
    def available(cls) -> tuple[bool, str]:
        """(usable here, why not / what it will run on)."""

    @abstractmethod
    def _load(self) -> None:
        """Open the file, read and check its metadata into ``self.metadata`` (subclasses take
        their :attr:`options` as keywords)."""

    @abstractmethod
    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run a validated uint8 ``(N, 1, 28, 28)`` batch; returns the four outputs by name."""

    @property
    def providers(self) -> list[str]:
        """What the backend actually runs on (execution providers, device)."""
        return [self.name]

    @property
    def input_spec(self) -> dict[str, Any]:
        return dict(self.metadata.get("input", {}))

    def close(self) -> None:
        """Release resources (the backend is unusable afterwards)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

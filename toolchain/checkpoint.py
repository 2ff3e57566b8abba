"""The checkpoint file: a plain dict that ``torch.load(..., weights_only=True)`` reads."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from runtime.fileio import ArtifactError, atomic_write_bytes

FORMAT = "lenet-tool-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("arch", "preprocess", "state_dict", "train_config", "split", "class_names")


def save_checkpoint(path: str | os.PathLike[str], ckpt: dict[str, Any]) -> None:
    """Serialise ``ckpt`` in memory, then write it atomically (a kill never leaves half a file)."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **ckpt}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a checkpoint with ``weights_only=True`` (no code runs from the file).

    Raises:
        ArtifactError: missing, corrupt, foreign, or from a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such checkpoint: expected a checkpoint.pt written by 'lenet-tool train'")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean the same here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{path}: not a readable checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a lenet-tool checkpoint: expected a dict with format {FORMAT!r}")
    version = ckpt.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{path}: format_version {version!r}: expected an integer")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: checkpoint format version {version} is newer than this tool reads ({FORMAT_VERSION}): "
            "upgrade lenet-tool"
        )
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise ArtifactError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


def build_pipeline(ckpt: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the preprocessing + network of a checkpoint, in eval mode, on the CPU."""
    from .model import ArchConfig, Novelty, Pipeline, PreprocessConfig

    try:
        model = Pipeline(ArchConfig(**ckpt["arch"]), PreprocessConfig(**ckpt["preprocess"]))
        model.net.load_state_dict(ckpt["state_dict"])
        if ckpt.get("novelty"):
            model.novelty = Novelty(ckpt["novelty"]["mean"], ckpt["novelty"]["basis"])
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as e:
        raise ArtifactError(f"checkpoint does not match its architecture: {str(e).splitlines()[0]}") from None
    return model.eval()

"""The metadata every exported model carries: one versioned JSON object.

ONNX files hold it in ``metadata_props['lenet_tool']``; TensorRT plans in the sidecar
``model.engine.json``. Only JSON is ever parsed (with size and depth limits).
"""

from __future__ import annotations

from typing import Any

from .fileio import ArtifactError, loads_json_limited

SCHEMA_VERSION = 1
METADATA_KEY = "lenet_tool"
REQUIRED = ("schema_version", "class_names", "input", "outputs", "preprocessing", "gate", "precision", "provenance")
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "confidence", "label", "accepted")


class MetadataError(ArtifactError):
    """Model metadata is missing, malformed or from a newer schema."""


def parse_metadata(text: str | bytes | None, source: str) -> dict[str, Any]:
    """Parse and check a metadata JSON document.

    Raises:
        MetadataError: naming ``source`` and what was expected.
    """
    if text is None:
        raise MetadataError(f"{source}: no '{METADATA_KEY}' metadata: expected a model exported by 'lenet-tool export'")
    try:
        meta = loads_json_limited(text, what=f"{source} metadata")
    except ArtifactError as e:
        raise MetadataError(str(e)) from None
    return check_metadata(meta, source)


def check_metadata(meta: Any, source: str) -> dict[str, Any]:
    """Check the schema of already-parsed metadata (see :func:`parse_metadata`)."""
    if not isinstance(meta, dict):
        raise MetadataError(f"{source}: metadata is a {type(meta).__name__}: expected a JSON object")
    version = meta.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MetadataError(f"{source}: metadata schema_version {version!r}: expected an integer")
    if version > SCHEMA_VERSION:
        raise MetadataError(f"{source}: metadata schema_version {version} is newer than this runtime reads "
                            f"({SCHEMA_VERSION}): upgrade lenet-tool")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise MetadataError(f"{source}: metadata lacks {', '.join(missing)}")
    gate = meta["gate"]
    if not isinstance(gate, dict) or not isinstance(gate.get("threshold"), (int, float)):
        raise MetadataError(f"{source}: metadata gate has no numeric threshold")
    names = meta["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise MetadataError(f"{source}: metadata class_names: expected a list of strings")
    return meta

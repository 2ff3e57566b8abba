"""File helpers shared by every layer: hashing, atomic writes, bounded JSON.

They live in ``runtime`` because it is the bottom of the dependency chain
(``toolchain -> exporters -> runtime``) and needs them itself to check plans.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

#: JSON metadata is small; anything far larger is not ours and is refused before parsing.
MAX_JSON_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 32


class ArtifactError(ValueError):
    """An artifact (checkpoint, model, sidecar, manifest) is missing, corrupt or foreign."""


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The bytes go to a temporary file in the same folder, are fsync'd, then renamed over
    the target (rename is atomic on POSIX within one file system).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Opened with mode 0666 so the kernel applies the process umask, as for any new file; reading
    # the umask (os.umask sets it to read it) would race with other threads creating files.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Ctrl-C or a full disk mid-write: drop the partial file, keep the old one.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write UTF-8 text (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON with a trailing newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _depth(obj: Any, limit: int) -> int:
    stack = [(obj, 1)]
    deepest = 0
    while stack:
        cur, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(cur, dict):
            stack.extend((v, d + 1) for v in cur.values())
        elif isinstance(cur, list):
            stack.extend((v, d + 1) for v in cur)
    return deepest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def loads_json_limited(text: str | bytes, *, what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse untrusted JSON with a size and nesting limit; NaN/Infinity are refused.

    Args:
        text: the JSON document.
        what: names the source in error messages (a file, a metadata key).
        max_bytes: the largest document accepted.

    Raises:
        ArtifactError: the document is too large, too deep or not valid JSON.
    """
    size = len(text)
    if size > max_bytes:
        raise ArtifactError(f"{what}: JSON of {size} bytes is larger than the {max_bytes}-byte limit")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"{what}: not valid JSON ({e})") from None
    if _depth(obj, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ArtifactError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def load_json_file(path: str | os.PathLike[str], *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read and parse a JSON file with :func:`loads_json_limited`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    if path.stat().st_size > max_bytes:
        raise ArtifactError(f"{path}: {path.stat().st_size} bytes is larger than the {max_bytes}-byte JSON limit")
    return loads_json_limited(path.read_bytes(), what=str(path), max_bytes=max_bytes)

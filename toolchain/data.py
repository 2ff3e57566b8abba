"""Datasets: the embedded MNIST (gzip'd IDX), IDX folders and the seed's CSV format.

Every reader validates what it reads and raises :class:`DataError` naming the file, the
line (for CSV) or the field (for IDX) and what was expected. Images are returned as
``uint8 (N, 28, 28)`` and labels as ``int64 (N,)``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.fileio import atomic_write_bytes, sha256_file

IMAGE_SIZE = 28
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
NUM_CLASSES = 10
EMBEDDED_MNIST = Path(__file__).parent / "datasets" / "mnist"

# The four IDX file names of MNIST (Fashion-MNIST and others reuse them).
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(ValueError):
    """Input data is malformed; the message names the file, line or field."""


@dataclass(frozen=True)
class Dataset:
    """Images and labels of one split, with where they came from."""

    images: np.ndarray  # uint8 (N, 28, 28)
    labels: np.ndarray  # int64 (N,)
    source: str
    #: Where the split was read from, so it can be read again: ``kind`` (csv, idx, embedded),
    #: ``path`` (absolute) and ``files`` (the names read). :func:`fingerprint` adds each file's
    #: SHA-256 where the origin is recorded; reading never hashes (it would add a third to a CSV's).
    origin: dict[str, Any] | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def sha256(self) -> str:
        """SHA-256 over the image bytes then the label bytes (as int64, little-endian)."""
        h = hashlib.sha256(np.ascontiguousarray(self.images).tobytes())
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()


# --------------------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: np.uint8}


def _read_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip stream ({e}); expected a gzip'd IDX file") from None
    return data


def read_idx(path: str | Path, expected_sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzip'd) into a uint8 array.

    Args:
        path: the file.
        expected_sha256: if given, the SHA-256 of the decompressed bytes must match.

    Raises:
        DataError: short or corrupt file, bad magic, unsupported dtype, checksum mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = _read_maybe_gzip(path)
    if expected_sha256 is not None:
        got = hashlib.sha256(raw).hexdigest()
        if got != expected_sha256:
            raise DataError(
                f"{path}: checksum mismatch: SHA-256 of the decompressed bytes is {got}, "
                f"expected {expected_sha256}"
            )
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header (expected at least 4)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0:
        raise DataError(f"{path}: bad IDX magic 0x{raw[:4].hex()}: expected 0x0000 then dtype and rank bytes")
    if dtype_code not in _IDX_DTYPES:
        raise DataError(f"{path}: IDX dtype code 0x{dtype_code:02x} is not supported: expected 0x08 (uint8)")
    if ndim == 0:
        raise DataError(f"{path}: IDX rank 0: expected 1 (labels) or 3 (images)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header of rank {ndim} ({header} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {kind}: {len(raw)} bytes, expected {expected} for dimensions {list(dims)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _pair(images: np.ndarray, labels: np.ndarray, img_path: Path, lbl_path: Path, num_classes: int) -> Dataset:
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{img_path}: images of shape {list(images.shape)}: expected [N, 28, 28]")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: labels of shape {list(labels.shape)}: expected [N]")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{lbl_path}: {labels.shape[0]} labels for {images.shape[0]} images in {img_path}: expected equal counts"
        )
    if labels.size and int(labels.max()) >= num_classes:
        i = int(np.argmax(labels >= num_classes))
        raise DataError(f"{lbl_path}: label {int(labels[i])} at index {i} is outside the classes 0-{num_classes - 1}")
    return Dataset(images, labels.astype(np.int64), source=str(img_path))


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no {stem} or {stem}.gz: expected the four MNIST-named IDX files")


def load_idx_folder(folder: str | Path, split: str, *, num_classes: int = NUM_CLASSES,
                    checksums: dict[str, str] | None = None) -> Dataset:
    """Load one split ('train' or 't10k'-named 'test') from a folder of IDX files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder: expected a folder holding IDX files")
    img_stem, lbl_stem = IDX_NAMES[split]
    img_path, lbl_path = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
    sums = checksums or {}
    images = read_idx(img_path, sums.get(img_stem))
    labels = read_idx(lbl_path, sums.get(lbl_stem))
    ds = _pair(images, labels, img_path, lbl_path, num_classes)
    origin = {"kind": "idx", "path": str(folder.resolve()), "split": split, "files": [img_path.name, lbl_path.name]}
    return Dataset(ds.images, ds.labels, source=ds.source, origin=origin)


def read_checksums(path: Path) -> dict[str, str]:
    """Parse a ``sha256sum``-style file into {file name: hex digest}."""
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(f"{path}, line {n}: expected '<sha256>  <file name>'")
        out[parts[1].lstrip("*")] = parts[0]
    return out


def embedded_mnist(split: str) -> Dataset:
    """The MNIST split shipped with the tool, checked against its SHA256SUMS on load."""
    sums = read_checksums(EMBEDDED_MNIST / "SHA256SUMS")
    ds = load_idx_folder(EMBEDDED_MNIST, split, checksums=sums)
    return Dataset(ds.images, ds.labels, source=f"embedded MNIST ({split})", origin={"kind": "embedded", "split": split})


# --------------------------------------------------------------------------- CSV

_ALLOWED_BYTES = b"0123456789,\n"
_PAD = np.full(3, 10, dtype=np.uint8)  # three '\n' so that look-backs at a chunk start read separators
_NL = np.full(1, 10, dtype=np.uint8)
_NEWLINE_FLAG = np.uint16(1 << 12)  # marks a value that ends a line; pixel values stay below 1000
_CHUNK_BYTES = 1 << 20  # about 580 rows: fits in L2, so the passes below stay in cache


def _column_name(field: int) -> str:
    return "label" if field == 0 else f"pixel {field - 1}"


def _expected(field: int, num_classes: int) -> str:
    return f"a label 0-{num_classes - 1}" if field == 0 else "a pixel 0-255"


def _locate(raw: bytes, begin: int, pos: int) -> tuple[int, int, str]:
    """(0-based line from ``begin``, field index, the field's text) of byte ``pos``; error path only."""
    line = raw.count(b"\n", begin, pos)
    line_start = max(raw.rfind(b"\n", begin, pos) + 1, begin)
    field = raw.count(b",", line_start, pos)
    lo = max(raw.rfind(b",", line_start, pos) + 1, line_start)
    hi = pos
    while hi < len(raw) and raw[hi:hi + 1] not in (b",", b"\n") and hi - lo < 20:
        hi += 1
    return line, field, raw[lo:hi].decode("latin-1")


def _parse_chunk(b: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """Decode one run of whole lines to uint16 values (line-ending ones flagged).

    ``b`` is the chunk preceded by 3 bytes of look-back (the end of the previous line, or
    newline padding); its last byte is a newline. Returns the values, the offset (in the
    chunk, after the look-back) of the first byte that is not a digit, ',' or newline (-1 if
    none), and whether any field is empty or longer than 3 digits. Fields are at most 3
    digits (pixels 0-255, labels 0-9), so the value ending at a separator ``j`` is
    ``d[j-1] + 10*d[j-2] + 100*d[j-3]`` with each term kept only if its byte is a digit of the
    same field: a few elementwise passes and one ``np.compress`` (2.5x faster than boolean
    indexing here), no gather. numpy releases the GIL in all of them, so chunks run in parallel.
    """
    body = b[3:]
    isd = b >= 48
    stray = (body > 57) | (~isd[3:] & (body != 44) & (body != 10))
    if stray.any():
        return np.empty(0, np.uint16), int(np.argmax(stray)), True
    d = np.subtract(b, 48, dtype=np.uint8)
    d *= isd
    d16 = d.astype(np.uint16)
    sep = ~isd[3:]
    v = d16[1:-2] * np.uint16(10)
    v += d16[2:-1]
    hundreds = d16[:-3]
    hundreds *= isd[1:-2]  # a digit three back belongs to this field only if two back does
    hundreds *= np.uint16(100)
    v += hundreds
    v += (body == 10) * _NEWLINE_FLAG
    run = isd[3:] & isd[2:-1]
    run &= isd[1:-2]
    run &= isd[:-3]
    bad = bool(run.any()) or bool((sep & ~isd[2:-1]).any())
    return np.compress(sep, v), -1, bad


def _line_chunks(raw: bytes, start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """Split ``raw[start:stop]`` into (lo, hi) spans of whole lines of about ``size`` bytes."""
    spans = []
    i = start
    while i < stop:
        j = raw.find(b"\n", min(i + size, stop) - 1, stop)
        j = stop if j < 0 else j + 1
        spans.append((i, j))
        i = j
    return spans


def read_csv(path: str | Path, *, num_classes: int = NUM_CLASSES) -> Dataset:
    """Read the seed's CSV format: ``label,p0,...,p783`` per row, pixels 0-255.

    A header row (a first line that is not all integers, such as ``label,1x1,...``)
    is skipped. CRLF line ends are accepted. Parsing is vectorised over the raw bytes in
    cache-sized chunks on a small thread pool, and every row is still checked: column
    count, integer fields, pixel and label range, a truncated last line.

    Raises:
        DataError: naming the file, the 1-based line, the column and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    origin = {"kind": "csv", "path": str(path.resolve()), "files": [path.name]}
    ncols = NUM_PIXELS + 1
    if not raw or raw.isspace():
        raise DataError(f"{path}: empty file: expected rows of 'label,p0,...,p783'")
    if b"\r" in raw:
        raw = raw.replace(b"\r", b"")
    first_line = 1
    begin = 0
    nl = raw.find(b"\n")
    head = raw if nl < 0 else raw[:nl]
    if head.translate(None, _ALLOWED_BYTES):
        fields = head.count(b",") + 1
        if fields != ncols:
            raise DataError(
                f"{path}, line 1: header with {fields} columns: expected {ncols} (label and 784 pixels)"
            )
        begin = len(raw) if nl < 0 else nl + 1
        first_line = 2
    end = len(raw)
    while end > begin and raw[end - 1] == 10:  # trailing blank lines are tolerated
        end -= 1
    if end == begin:
        raise DataError(f"{path}: no data rows: expected rows of 'label,p0,...,p783'")
    missing_newline = end == len(raw)
    stop = end if missing_newline else end + 1  # the data, through its last newline

    def fail(pos: int, what: str) -> DataError:
        line, field, text = _locate(raw, begin, pos)
        return DataError(f"{path}, line {first_line + line}, {_column_name(field)}: "
                         f"{what.format(text=repr(text))}: expected {_expected(field, num_classes)}")

    arr = np.frombuffer(raw, dtype=np.uint8)
    spans = _line_chunks(raw, begin, stop, _CHUNK_BYTES)

    def view(span: tuple[int, int]) -> np.ndarray:
        lo, hi = span
        if lo - begin >= 3 and not (missing_newline and hi == stop):
            return arr[lo - 3:hi]  # look back into the previous line: it ends with a newline
        # The first chunk gets newline padding as look-back (a header is not digits); a last
        # line without a newline gets one. Only these chunks are copied, not the whole file.
        tail = _NL if missing_newline and hi == stop else np.empty(0, np.uint8)
        return np.concatenate([_PAD, arr[lo:hi], tail])

    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda s: _parse_chunk(view(s)), spans))
    for (lo, hi), (_, stray_at, bad) in zip(spans, parts):
        if stray_at >= 0:
            raise fail(lo + stray_at, "{text} is not an integer")
        if bad:  # find the first offending field, exactly, in this chunk only
            for m in re.finditer(rb"(?:^|(?<=[,\n]))(\d{4,}|)(?=[,\n]|$)", raw[lo:hi], re.M):
                pos = lo + m.start()
                raise fail(pos, "empty field" if not m.group(1) else "{text} is out of range")
    values = np.concatenate([p[0] for p in parts])
    ends = np.flatnonzero(values >= _NEWLINE_FLAG)
    counts = np.diff(ends, prepend=-1)
    if np.any(counts != ncols):
        row = int(np.argmax(counts != ncols))
        line = first_line + row
        if missing_newline and row == len(counts) - 1:
            raise DataError(
                f"{path}, line {line}: truncated last line: {int(counts[row])} columns and no final "
                f"newline: expected {ncols} (label and 784 pixels)"
            )
        raise DataError(f"{path}, line {line}: {int(counts[row])} columns: expected {ncols} (label and 784 pixels)")
    values[ends] -= _NEWLINE_FLAG
    table = values.reshape(-1, ncols)
    labels = table[:, 0]
    pixels = table[:, 1:]
    if pixels.max() > 255:
        row, col = np.unravel_index(int(np.argmax(pixels > 255)), pixels.shape)
        raise DataError(
            f"{path}, line {first_line + int(row)}, pixel {int(col)}: {int(pixels[row, col])} is out of range: "
            "expected a pixel 0-255"
        )
    if labels.max() >= num_classes:
        row = int(np.argmax(labels >= num_classes))
        raise DataError(
            f"{path}, line {first_line + row}, label: {int(labels[row])} is outside the classes "
            f"0-{num_classes - 1}"
        )
    images = pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return Dataset(images, labels.astype(np.int64), source=str(path), origin=origin)


def to_csv_bytes(ds: Dataset) -> bytes:
    """Encode a dataset in the seed's CSV format (no header), vectorised."""
    table = np.concatenate([ds.labels.reshape(-1, 1), ds.images.reshape(len(ds), -1).astype(np.int64)], axis=1)
    # Lookup table of each value's decimal text, then join: much faster than np.savetxt.
    text = np.array([str(i).encode() for i in range(256)], dtype=object)
    lines = [b",".join(text[row].tolist()) for row in table]
    return b"\n".join(lines) + b"\n"


def write_csv(ds: Dataset, path: str | Path) -> None:
    """Write a dataset as a seed CSV file, atomically."""
    atomic_write_bytes(path, to_csv_bytes(ds))


# --------------------------------------------------------------------------- choosing

def load_dataset(*, csv: str | Path | None = None, idx_dir: str | Path | None = None, split: str,
                 num_classes: int = NUM_CLASSES) -> Dataset:
    """Load one split from a CSV file, an IDX folder, or (neither given) the embedded MNIST."""
    if csv is not None and idx_dir is not None:
        raise DataError(f"give a CSV file or an IDX folder for the {split} split, not both")
    if csv is not None:
        return read_csv(csv, num_classes=num_classes)
    if idx_dir is not None:
        return load_idx_folder(idx_dir, split, num_classes=num_classes)
    return embedded_mnist(split)


def _origin_paths(origin: dict[str, Any]) -> list[Path]:
    path = Path(str(origin.get("path")))
    return [path] if origin.get("kind") == "csv" else [path / name for name in origin.get("files") or []]


def fingerprint(origin: dict[str, Any] | None) -> dict[str, Any] | None:
    """``origin`` with ``files`` as {file name: SHA-256 of its bytes} (a missing file: ``missing``),
    what a checkpoint records so the data can be checked when read again."""
    if not origin or origin.get("kind") not in ("csv", "idx"):
        return origin
    return {**origin, "files": {p.name: sha256_file(p) if p.is_file() else "missing" for p in _origin_paths(origin)}}


def load_recorded(origin: dict[str, Any] | None, split: str, *, what: str) -> Dataset:
    """Read a split again from where ``origin`` (a :func:`fingerprint`-ed :attr:`Dataset.origin`)
    says it came from, after checking that every file still has the recorded SHA-256.

    ``what`` names whose record it is (the checkpoint) in messages. With no record (an older
    checkpoint) the embedded MNIST is read, as before.

    Raises:
        DataError: the file or folder is gone, or its bytes changed since they were recorded.
    """
    if not origin or origin.get("kind") == "embedded":
        return embedded_mnist(split)
    kind, path = origin.get("kind"), Path(str(origin.get("path")))
    option = "--idx-dir" if kind == "idx" else f"--{split}-csv"
    if kind not in ("csv", "idx"):
        raise DataError(f"{what}: recorded {split} data of kind {kind!r}: expected csv, idx or embedded")
    if not path.exists():
        raise DataError(f"{what}: its {split} data was read from {path}, which is no longer there: pass the data "
                        f"with {option}")
    recorded = origin.get("files") or {}
    now = (fingerprint(origin) or {}).get("files") or {}
    changed = sorted(name for name in set(recorded) | set(now) if recorded.get(name) != now.get(name))
    if changed:  # refused before a byte is parsed
        name = changed[0]
        raise DataError(f"{path}: {name} changed since {what} recorded it (SHA-256 now "
                        f"{str(now.get(name))[:16]}..., recorded {str(recorded.get(name))[:16]}...): pass the data "
                        f"it was made with ({option}), or train again")
    return read_csv(path) if kind == "csv" else load_idx_folder(path, str(origin.get("split", split)))


MAX_NAME_CHARS = 64


def parse_class_names(text: str, *, num_classes: int = NUM_CLASSES) -> list[str]:
    """Class names from ``a,b,c,...`` (label order) or from a file holding one name a line.

    Raises:
        DataError: not ``num_classes`` names, or an empty, duplicate, over-long or
            unprintable name (the message names which).
    """
    path = Path(text)
    if "," not in text and path.is_file():
        if path.stat().st_size > 64 * 1024:
            raise DataError(f"{path}: {path.stat().st_size} bytes: expected a small text file, one class name a line")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text: expected one class name a line") from None
        while lines and not lines[-1].strip():
            lines.pop()
        names, where = [line.strip() for line in lines], str(path)
    else:
        names, where = [part.strip() for part in text.split(",")], "--class-names"
    if len(names) != num_classes:
        raise DataError(f"{where}: {len(names)} class names: expected {num_classes}, in label order 0-{num_classes - 1}")
    for i, name in enumerate(names):
        if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise DataError(f"{where}: class {i} name {name!r}: expected 1-{MAX_NAME_CHARS} printable characters")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise DataError(f"{where}: class name {dup!r} appears twice: expected {num_classes} different names")
    return names

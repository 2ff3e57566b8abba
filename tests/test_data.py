"""Dataset readers: good files, and every kind of bad file with its message pinned."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from tests.conftest import csv_row, write_rows
from toolchain.data import DataError, Dataset, embedded_mnist, load_idx_folder, read_csv, read_idx, write_csv


def _rows(n: int = 3, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    return [csv_row(int(lab), im) for lab, im in zip(labels, imgs)], imgs, labels


def test_embedded_mnist_checksums_and_counts(mnist_train, mnist_test):
    assert mnist_train.images.shape == (60000, 28, 28) and mnist_train.images.dtype == np.uint8
    assert np.bincount(mnist_test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(mnist_train.labels)[:3].tolist() == [5923, 6742, 5958]


def test_csv_round_trip_without_and_with_header(tmp_path):
    rows, imgs, labels = _rows(5)
    ds = read_csv(write_rows(tmp_path / "a.csv", rows))
    assert np.array_equal(ds.images, imgs) and np.array_equal(ds.labels, labels)
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    ds2 = read_csv(write_rows(tmp_path / "b.csv", [header, *rows]))
    assert np.array_equal(ds2.images, imgs)


def test_csv_crlf_and_missing_final_newline(tmp_path):
    rows, imgs, _ = _rows(2)
    ds = read_csv(write_rows(tmp_path / "a.csv", rows, newline="\r\n", final=False))
    assert np.array_equal(ds.images, imgs)


def test_csv_writer_matches_reader(tmp_path, mnist_test):
    small = Dataset(mnist_test.images[:50], mnist_test.labels[:50], "t")
    write_csv(small, tmp_path / "t.csv")
    back = read_csv(tmp_path / "t.csv")
    assert np.array_equal(back.images, small.images) and np.array_equal(back.labels, small.labels)
    assert (tmp_path / "t.csv").read_text().splitlines()[0].startswith("7,0,0,")


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r[:1] + [r[1].rsplit(",", 1)[0]] + r[2:], r"line 2: 784 columns: expected 785"),
    (lambda r: r[:1] + [r[1] + ",0"] + r[2:], r"line 2: 786 columns: expected 785 \(label and 784 pixels\)"),
    (lambda r: r[:2] + ["3," + ",".join(["0"] * 783)], r"line 3: 784 columns: expected 785"),
    (lambda r: [r[0], "5," + ",".join(["0"] * 10 + ["x7"] + ["0"] * 773)],
     r"line 2, pixel 10: 'x7' is not an integer: expected a pixel 0-255"),
    (lambda r: [r[0], "5," + ",".join(["0"] * 10 + ["1.5"] + ["0"] * 773)], r"line 2, pixel 10: '1.5' is not an integer"),
    (lambda r: [r[0], "5," + ",".join(["0"] * 10 + ["-1"] + ["0"] * 773)], r"line 2, pixel 10: '-1' is not an integer"),
    (lambda r: [r[0], "5," + ",".join(["0"] * 20 + ["256"] + ["0"] * 763)],
     r"line 2, pixel 20: 256 is out of range: expected a pixel 0-255"),
    (lambda r: [r[0], "5," + ",".join(["0"] * 20 + ["1000"] + ["0"] * 763)], r"line 2, pixel 20: '1000' is out of range"),
    (lambda r: [r[0], "12," + ",".join(["0"] * 784)], r"line 2, label: 12 is outside the classes 0-9"),
    (lambda r: [r[0], "5," + ",".join(["0"] * 5 + [""] + ["0"] * 778)], r"line 2, pixel 5: empty field"),
    (lambda r: [r[0], "", r[1]], r"line 2, label: empty field"),
])
def test_csv_bad_rows_name_line_and_field(tmp_path, mutate, message):
    rows, _, _ = _rows(3)
    with pytest.raises(DataError, match=message):
        read_csv(write_rows(tmp_path / "bad.csv", mutate(rows)))


def test_csv_truncated_last_line(tmp_path):
    rows, _, _ = _rows(2)
    path = tmp_path / "cut.csv"
    path.write_text(rows[0] + "\n" + rows[1][:200])
    with pytest.raises(DataError, match=r"cut.csv, line 2: truncated last line: \d+ columns and no final newline"):
        read_csv(path)


def test_csv_empty_and_header_only(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match=r"e.csv: empty file: expected rows of 'label,p0,...,p783'"):
        read_csv(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("label," + ",".join(f"p{i}" for i in range(784)) + "\n")
    with pytest.raises(DataError, match="no data rows"):
        read_csv(tmp_path / "h.csv")
    (tmp_path / "h2.csv").write_text("label,a,b\n1,2,3\n")
    with pytest.raises(DataError, match=r"line 1: header with 3 columns: expected 785"):
        read_csv(tmp_path / "h2.csv")


def test_csv_large_file_spans_many_chunks(tmp_path, mnist_test):
    small = Dataset(mnist_test.images[:3000], mnist_test.labels[:3000], "t")
    write_csv(small, tmp_path / "big.csv")  # ~5.5 MB: several 1 MiB chunks
    assert np.array_equal(read_csv(tmp_path / "big.csv").images, small.images)
    text = (tmp_path / "big.csv").read_text().splitlines()
    text[2500] = text[2500].replace(",0,", ",0,,", 1)
    (tmp_path / "big.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match="line 2501, pixel 1: empty field"):
        read_csv(tmp_path / "big.csv")
    text[2500] = text[2500].replace(",0,,", ",0,", 1)
    text[1999] = text[1999][:-1] + "x"  # a stray byte in a later chunk, at the end of a line
    header = "label," + ",".join(f"p{i}" for i in range(784))
    (tmp_path / "big.csv").write_text(header + "\r\n" + "\r\n".join(text))  # header, CRLF, no final newline
    with pytest.raises(DataError, match=r"line 2001, pixel 783: '\d*x' is not an integer"):
        read_csv(tmp_path / "big.csv")
    text[1999] = text[1999][:-1] + "0"
    (tmp_path / "big.csv").write_text(header + "\r\n" + "\r\n".join(text))
    assert np.array_equal(read_csv(tmp_path / "big.csv").labels, small.labels)


def _idx(shape: tuple[int, ...], data: bytes | None = None, dtype: int = 0x08) -> bytes:
    n = int(np.prod(shape))
    return struct.pack(">HBB", 0, dtype, len(shape)) + struct.pack(f">{len(shape)}I", *shape) + (
        data if data is not None else bytes(n))


def test_idx_reads_gzip_and_plain(tmp_path):
    raw = _idx((2, 28, 28))
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    assert read_idx(tmp_path / "a").shape == (2, 28, 28)
    assert read_idx(tmp_path / "a.gz").shape == (2, 28, 28)


@pytest.mark.parametrize("content, message", [
    (b"\x00\x00", r"2 bytes, too short for an IDX header"),
    (b"\x01\x02\x08\x03" + bytes(12), r"bad IDX magic 0x01020803"),
    (_idx((2, 28, 28), dtype=0x0D)[:16], r"IDX dtype code 0x0d is not supported: expected 0x08"),
    (_idx((2, 28, 28))[:-5], r"truncated: 1579 bytes, expected 1584 for dimensions \[2, 28, 28\]"),
    (_idx((2, 28, 28)) + b"x", r"has trailing bytes"),
    (b"\x1f\x8b" + b"garbage", r"corrupt gzip stream"),
])
def test_idx_bad_files(tmp_path, content, message):
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_idx(tmp_path / "bad")


def test_idx_checksum_mismatch_and_folder(tmp_path):
    img = _idx((3, 28, 28))
    lab = struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 3) + bytes([1, 2, 3])
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(img)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(lab))
    ds = load_idx_folder(tmp_path, "test")
    assert ds.labels.tolist() == [1, 2, 3]
    with pytest.raises(DataError, match=r"checksum mismatch: SHA-256 of the decompressed bytes is [0-9a-f]{64}, expected 00"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte", expected_sha256="00" * 32)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(lab[:-1] + bytes([11])))
    with pytest.raises(DataError, match=r"label 11 at index 2 is outside the classes 0-9"):
        load_idx_folder(tmp_path, "test")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz"):
        load_idx_folder(tmp_path, "test")


def test_embedded_dataset_is_verified(monkeypatch, tmp_path):
    import shutil

    import toolchain.data as data
    src = data.EMBEDDED_MNIST
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    raw = gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[:-1] + bytes([(raw[-1] + 1) % 10])))
    monkeypatch.setattr(data, "EMBEDDED_MNIST", tmp_path)
    with pytest.raises(DataError, match="checksum mismatch"):
        embedded_mnist("test")


def test_cli_export_csv_reproduces_the_notebook_files(tmp_path):
    from click.testing import CliRunner

    from toolchain.cli import main
    img = _idx((4, 28, 28), bytes(range(256)) * 12 + bytes(4 * 784 - 3072))
    lab = struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 4) + bytes([3, 1, 4, 1])
    for split in ("train", "t10k"):
        (tmp_path / f"{split}-images-idx3-ubyte").write_bytes(img)
        (tmp_path / f"{split}-labels-idx1-ubyte").write_bytes(lab)
    r = CliRunner().invoke(main, ["data", "export-csv", str(tmp_path / "out"), "--idx-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    back = read_csv(tmp_path / "out" / "mnist_train.csv")
    assert back.labels.tolist() == [3, 1, 4, 1]
    assert np.array_equal(back.images, np.frombuffer(img[16:], np.uint8).reshape(4, 28, 28))
    first = (tmp_path / "out" / "mnist_test.csv").read_text().splitlines()[0].split(",")
    assert len(first) == 785 and first[:4] == ["3", "0", "1", "2"]

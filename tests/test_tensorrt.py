"""TensorRT: sidecar and plan checks run everywhere; building and running need TensorRT and a GPU,
which cannot be installed on this project's machines (NVIDIA's index is unreachable), so those skip."""

from __future__ import annotations

import json

import pytest

from exporters.tensorrt import sidecar
from runtime.backends.trt import check_plan, read_sidecar, sidecar_path
from runtime.fileio import ArtifactError
from runtime.metadata import MetadataError

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False
needs_trt = pytest.mark.skipif(not HAVE_TRT, reason="TensorRT is not installable on this project's machines "
                                                      "(its wheels come from NVIDIA's index, which they cannot reach)")


def _meta() -> dict:
    return {"schema_version": 1, "class_names": [str(i) for i in range(10)], "input": {"name": "image"},
            "outputs": {}, "preprocessing": {}, "gate": {"threshold": 0.9, "method": "guaranteed", "score": "msp"},
            "precision": "fp32", "provenance": {}}


@pytest.fixture
def plan(tmp_path):
    p = tmp_path / "model.engine"
    p.write_bytes(b"serialized plan bytes")
    src = tmp_path / "model.onnx"
    src.write_bytes(b"onnx")
    side = sidecar(_meta(), p.read_bytes(), {"tensorrt_version": "10.9.0", "compute_capability": "9.0",
                                             "profile": {"min": 1, "opt": 32, "max": 1024}}, src)
    sidecar_path(p).write_text(json.dumps(side))
    return p


def test_sidecar_format(plan):
    meta = read_sidecar(plan)
    t = meta["tensorrt"]
    assert t["source_onnx"] == "model.onnx" and len(t["plan_sha256"]) == 64
    assert t["profile"] == {"min": 1, "opt": 32, "max": 1024} and t["precision"] == "fp32"
    check_plan(plan, meta, "10.9.0", "9.0")  # all match: no error
    assert plan.read_bytes() == b"serialized plan bytes"  # the plan itself stays bare


def test_plan_without_sidecar(plan):
    sidecar_path(plan).unlink()
    with pytest.raises(MetadataError, match=r"no sidecar model.engine.json beside the plan.*export --target trt"):
        read_sidecar(plan)


def test_tampered_plan_version_and_gpu_mismatch(plan):
    meta = read_sidecar(plan)
    with pytest.raises(ArtifactError, match="built with TensorRT 10.9.0, this machine has TensorRT 11.0.0.*rebuild"):
        check_plan(plan, meta, "11.0.0", "9.0")
    with pytest.raises(ArtifactError, match="built for compute capability 9.0, this GPU is 8.6.*rebuild"):
        check_plan(plan, meta, "10.9.0", "8.6")
    plan.write_bytes(b"serialized plan bytez")
    with pytest.raises(ArtifactError, match="does not match the sidecar's.*changed or replaced after export"):
        check_plan(plan, meta, None, None)


def test_future_sidecar_schema(plan):
    side = json.loads(sidecar_path(plan).read_text())
    side["schema_version"] = 7
    sidecar_path(plan).write_text(json.dumps(side))
    with pytest.raises(MetadataError, match="schema_version 7 is newer than this runtime reads"):
        read_sidecar(plan)


@pytest.mark.tensorrt
@needs_trt
def test_build_and_run_plan(artifact):  # pragma: no cover - needs TensorRT and a GPU
    import numpy as np

    import exporters
    from runtime import Classifier
    exporters.export(artifact, "onnx", test_images=np.zeros((4, 1, 28, 28), np.uint8), test_labels=None)
    exporters.export(artifact, "trt", test_images=np.zeros((4, 1, 28, 28), np.uint8), test_labels=None, max_batch=64)
    clf = Classifier(artifact / "model.engine")
    onnx_clf = Classifier(artifact / "model.onnx")
    x = np.random.default_rng(0).integers(0, 256, (100, 1, 28, 28), dtype=np.uint8)
    assert np.array_equal(clf.predict(x).labels, onnx_clf.predict(x).labels)

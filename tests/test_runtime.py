"""runtime: input validation, backends, thread safety, lean import (verify, predict and bench have their own files)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import warnings

import numpy as np
import onnx
import pytest

from runtime import BackendUnavailable, Classifier, MetadataError, as_batch
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def art(onnx_artifact):
    return onnx_artifact


@pytest.fixture(scope="module")
def clf(art):
    return Classifier(art / "model.onnx", providers=["CPUExecutionProvider"])


def test_predict_shapes_and_dtypes(clf, mnist_test):
    p = clf.predict(mnist_test.images[:5])
    assert p.labels.shape == (5,) and p.labels.dtype == np.int64
    assert p.confidences.dtype == np.float32 and p.accepted.dtype == np.bool_ and p.logits.shape == (5, 10)
    same = [clf.predict(mnist_test.images[:5, None]), clf.predict(mnist_test.images[:5].astype(np.float32) / 255)]
    for q in same:
        assert np.array_equal(q.labels, p.labels) and np.allclose(q.confidences, p.confidences)
    r = clf.classify(mnist_test.images[0])
    assert r.label == int(p.labels[0]) and r.class_name == str(r.label) and isinstance(r.accepted, bool)
    assert clf.backend == "onnxruntime" and clf.providers == ["CPUExecutionProvider"]
    assert clf.metadata["schema_version"] == 1 and clf.input_spec["dtype"] == "uint8"


@pytest.mark.parametrize("images, message", [
    (np.zeros((28, 27), np.uint8), r"images of shape \(28, 27\): expected \(28, 28\), \(N, 28, 28\) or \(N, 1, 28, 28\)"),
    (np.zeros((2, 3, 28, 28), np.uint8), r"shape \(2, 3, 28, 28\)"),
    (np.full((28, 28), np.nan, np.float32), "images hold NaN or infinite values"),
    (np.full((28, 28), np.inf), "NaN or infinite"),
    (np.full((28, 28), 2.0), r"float images span \[2, 2\]: expected values in \[0, 1\]"),
    (np.full((28, 28), -0.5, np.float32), r"span \[-0.5, -0.5\]"),
    (np.zeros((28, 28), np.int32), "images of dtype int32: expected uint8 or floats in"),
    (np.zeros((0, 28, 28), np.uint8), "an empty batch"),
])
def test_bad_inputs_are_value_errors(clf, images, message):
    with pytest.raises(ValueError, match=message):
        clf.predict(images)
    with pytest.raises(ValueError, match=message):
        as_batch(images)


def test_classify_wants_one_image(clf):
    with pytest.raises(ValueError, match=r"image of shape \(2, 28, 28\): expected one image"):
        clf.classify(np.zeros((2, 28, 28), np.uint8))


def test_threshold_override_warns_and_applies(art, mnist_test):
    with pytest.warns(UserWarning, match="gate threshold overridden.*guarantee does not apply"):
        loose = Classifier(art / "model.onnx", threshold=0.0)
    assert loose.threshold_overridden and loose.threshold == 0.0
    p = loose.predict(mnist_test.images[:50])
    assert (p.accepted == (p.confidences > 0)).all() and p.accepted.mean() > 0.8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strict = Classifier(art / "model.onnx")
    assert not strict.threshold_overridden
    with pytest.raises(ValueError, match=r"threshold 1.5: expected a number in \[0, 1\]"):
        Classifier(art / "model.onnx", threshold=1.5)


def test_backends_refuse_options_they_do_not_take(art, tmp_path):
    # 'provider' for 'providers': it must not run on the default providers without a word
    with pytest.raises(ValueError, match=r"backend 'onnxruntime' does not take the option\(s\) provider: it takes "
                                         r"providers, threads"):
        Classifier(art / "model.onnx", provider=["CPUExecutionProvider"])
    from runtime.backends import BACKENDS
    with pytest.raises(ValueError, match=r"backend 'tensorrt' does not take the option\(s\) devise, threads: it "
                                         r"takes device"):
        BACKENDS["tensorrt"].check_options({"devise": 1, "threads": 2})
    (tmp_path / "m.engine").write_bytes(b"plan")  # refused before TensorRT's absence is even looked at
    with pytest.raises(ValueError, match="does not take the option"):
        Classifier(tmp_path / "m.engine", devise=1)


def test_backend_choice_errors(art, tmp_path):
    with pytest.raises(BackendUnavailable, match=r"requested execution provider\(s\) CUDAExecutionProvider, "
                       r"available providers are .*CPUExecutionProvider"):
        Classifier(art / "model.onnx", providers=["CUDAExecutionProvider"])
    with pytest.raises(ValueError, match="backend 'tensorrt' cannot load model.onnx: it is a onnx file, which "
                                         "onnxruntime, openvino load"):
        Classifier(art / "model.onnx", backend="tensorrt")
    with pytest.raises(ValueError, match="backend 'tflite': expected 'auto' or one of onnxruntime, openvino, tensorrt"):
        Classifier(art / "model.onnx", backend="tflite")
    (tmp_path / "x.tflite").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown model file type '.tflite'"):
        Classifier(tmp_path / "x.tflite")
    with pytest.raises(FileNotFoundError, match="no such model file"):
        Classifier(tmp_path / "nothing.onnx")


def test_tensorrt_backend_unavailable_is_explicit(tmp_path):
    (tmp_path / "model.engine").write_bytes(b"plan")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT installed")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailable, match="backend 'tensorrt' is not available here: TensorRT is not installed"
                       ".*available backends: onnxruntime"):
        Classifier(tmp_path / "model.engine")


def _with_metadata(src, dst, value):
    proto = onnx.load(str(src))
    for p in proto.metadata_props:
        if p.key == "lenet_tool":
            p.value = value
    onnx.save(proto, str(dst))
    return dst


def test_metadata_from_the_future_and_malformed(art, tmp_path):
    meta = json.loads(next(p.value for p in onnx.load(str(art / "model.onnx")).metadata_props if p.key == "lenet_tool"))
    meta["schema_version"] = 2
    path = _with_metadata(art / "model.onnx", tmp_path / "model.onnx", json.dumps(meta))
    with pytest.raises(MetadataError, match=r"schema_version 2 is newer than this runtime reads \(1\): upgrade"):
        Classifier(path)
    path = _with_metadata(art / "model.onnx", tmp_path / "model.onnx", "{'gate': __import__('os')}")
    with pytest.raises(MetadataError, match="not valid JSON"):
        Classifier(path)
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(MetadataError, match="ONNX Runtime cannot load this file"):
        Classifier(tmp_path / "model.onnx")


def test_thread_safety_eight_threads(clf, mnist_test):
    batches = [mnist_test.images[i * 100:(i + 1) * 100] for i in range(32)]
    serial = [clf.predict(b) for b in batches]
    results: dict[int, object] = {}

    def work(k: int) -> None:
        for i in range(k, len(batches), 8):
            results[i] = clf.predict(batches[i])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, s in enumerate(serial):
        assert np.array_equal(results[i].labels, s.labels) and np.array_equal(results[i].confidences, s.confidences)


def test_runtime_imports_without_torch(art):
    # A meta-path hook makes torch (and the toolchain's other heavy libraries) unimportable.
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'pandas', 'click', 'matplotlib', 'onnx', 'toolchain', 'exporters'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import numpy as np
import runtime
clf = runtime.Classifier({str(art / 'model.onnx')!r})
p = clf.predict(np.zeros((2, 28, 28), np.uint8))
assert p.labels.shape == (2,)
assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas', 'click', 'matplotlib')]
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr




RUNTIME_PYTHON = ROOT / ".venv-runtime" / "bin" / "python"
# Run by .venv-runtime's python: the crops of an .npz through preprocess_batch, the model and
# find_digits, with the runtime alone (no torch there), into another .npz.
DEVICE_SIDE = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import runtime
clf = runtime.Classifier(sys.argv[2], providers=["CPUExecutionProvider"])
crops, out = np.load(sys.argv[3]), {}
for k in crops.files:
    if k == "frame":
        digits = runtime.find_digits(crops[k])
        out["frame/boxes"] = np.array([d.box for d in digits], dtype=np.int64).reshape(-1, 4)
        out["frame/images"] = np.stack([d.image for d in digits]) if digits else np.zeros((0, 28, 28), np.uint8)
        continue
    fr = runtime.preprocess_batch(crops[k])
    p = clf.predict(fr.images)
    out[k + "/images"], out[k + "/labels"], out[k + "/accepted"] = fr.images, p.labels, p.accepted
    out[k + "/refused"] = np.array([r or "" for r in fr.refusals])
np.savez(sys.argv[4], **out)
print(json.dumps({"numpy": np.__version__, "torch": "torch" in sys.modules}))
"""


@pytest.mark.skipif(not RUNTIME_PYTHON.exists(),
                    reason="no .venv-runtime: scripts/setup.sh makes it from runtime/requirements.txt")
def test_the_runtime_installed_alone_decides_as_here(art, mnist_test, tmp_path):
    # A device installs runtime/requirements.txt alone: pip's newest numpy (2.x), where this venv
    # keeps 1.26 for PyTriton. Its frames may differ by a grey level or so (numpy's own matrix
    # products round differently), but what the device does must not: the same refusals, labels
    # and acceptances, and find_digits the same boxes.
    from benchmarks.frame_scenes import compose
    from toolchain import field, fieldbench
    digits = mnist_test.images[:300]
    rng = np.random.default_rng(5)
    crops = {"mild": fieldbench.render_crops(digits, field.MILD, 77),
             "harsh": fieldbench.render_crops(digits, field.HARSH, 78),
             "rgb": fieldbench.render_crops(digits[:100], field.LEVELS["rgb"], 79),
             "clutter": fieldbench.render_crops(fieldbench.non_digit_frames("clutter", 100, rng), field.MILD, 80)}
    frame, _ = compose(mnist_test.images[300:305], rng)
    crops["frame"] = np.clip(frame + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "crops.npz", **crops)
    script = tmp_path / "device_side.py"
    script.write_text(DEVICE_SIDE)
    args = [str(ROOT), str(art / "model.onnx"), str(tmp_path / "crops.npz")]
    r = subprocess.run([str(RUNTIME_PYTHON), str(script), *args, str(tmp_path / "device.npz")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    versions = json.loads(r.stdout.strip().splitlines()[-1])
    assert not versions["torch"]
    r = subprocess.run([sys.executable, str(script), *args, str(tmp_path / "here.npz")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    device, here = np.load(tmp_path / "device.npz"), np.load(tmp_path / "here.npz")
    assert sorted(device.files) == sorted(here.files)
    for k in here.files:
        if k.endswith("/images"):
            a, b = device[k].astype(int), here[k].astype(int)
            assert a.shape == b.shape, k
            # A threshold's pixel on the other side moves a frame by a few levels (at most 5 of 255
            # over 34,500 crops, numpy 2.4.6 against 1.26.4).
            worst = int(np.abs(a - b).max(initial=0))
            assert worst <= 16, f"{k}: frames {worst} grey levels apart under numpy {versions['numpy']}"
        else:
            differ = np.flatnonzero(device[k] != here[k]) if device[k].shape == here[k].shape else "shape"
            assert len(differ) == 0, f"{k}: numpy {versions['numpy']} differs from {np.__version__} at {differ}"

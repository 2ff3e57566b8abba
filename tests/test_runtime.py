"""runtime: input validation, backends, thread safety, lean import, preprocess, verify, predict, bench."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import warnings

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from runtime import BackendUnavailable, Classifier, MetadataError, as_batch
from tests.conftest import ROOT
from toolchain.cli import main


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
    with pytest.raises(ValueError, match="backend 'tensorrt' cannot load model.onnx: it is a onnxruntime file"):
        Classifier(art / "model.onnx", backend="tensorrt")
    with pytest.raises(ValueError, match="backend 'tflite': expected 'auto' or one of onnxruntime, tensorrt"):
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


def test_verify_passes_then_catches_tampering(art, tmp_path, mnist_test):
    r = CliRunner().invoke(main, ["verify", str(art), "--json", "--field-images", "200"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    mild = res["field_mild"]["levels"]["mild"]
    assert res["field_mild"]["n"] == 200 and 0.5 < mild["accuracy"] <= 1 and 0 <= mild["coverage"] <= 1
    rep = res["files"][0]["reports"]
    assert set(rep) == {"test", "seed_protocol"} and rep["test"]["n"] == 10000
    assert rep["test"]["max_abs_logit_diff"] <= 1e-4 and rep["test"]["label_agreement"] == 1.0

    bad = tmp_path / "art"
    shutil.copytree(art, bad)
    proto = onnx.load(str(bad / "model.onnx"))
    w = next(t for t in proto.graph.initializer if len(t.dims) == 4)  # a conv weight
    arr = onnx.numpy_helper.to_array(w).copy()
    arr.flat[0] += 0.5
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    onnx.save(proto, str(bad / "model.onnx"))
    r = CliRunner().invoke(main, ["verify", str(bad), "--field-images", "100"])
    assert r.exit_code == 1
    assert "SHA-256 differs from manifest.json" in r.output and "field, mild camera crops" not in r.output
    assert "max |logit difference|" in r.output and "would have passed with: logits_atol" in r.output


def test_verify_fails_on_a_model_that_really_differs(art, tmp_path, small_split, mnist_test):
    """Export another model's graph into this artifact (manifest updated): only the numbers can tell."""
    import torch

    import exporters
    from toolchain import jobs
    from toolchain.gate import GateConfig
    from toolchain.train import fit, make_config
    torch.set_num_threads(2)
    tr, te = small_split
    other = tmp_path / "other"
    fit(make_config(epochs=1, seed=5), tr, other)
    jobs.calibrate(other, holdout=jobs.holdout_from_checkpoint(
        __import__("toolchain.checkpoint", fromlist=["x"]).load_checkpoint(other / "checkpoint.pt"), tr, "x"),
        test=te, gate_cfg=GateConfig(target_risk=0.1, delta=0.2))
    exporters.export(other, "onnx", test_images=te.images[:100, None], test_labels=None)
    mixed = tmp_path / "mixed"
    shutil.copytree(art, mixed)
    shutil.copy(other / "model.onnx", mixed / "model.onnx")
    jobs.write_manifest(mixed)
    r = CliRunner().invoke(main, ["verify", str(mixed)])
    assert r.exit_code == 1 and "FAIL" in r.output and "SHA-256 differs" not in r.output


def test_predict_images_and_csv(art, tmp_path, mnist_test):
    from PIL import Image
    paths = []
    for i in range(3):
        big = Image.fromarray(255 - mnist_test.images[i]).resize((60, 60))
        p = tmp_path / f"d{i}.png"
        big.save(p)
        paths.append(str(p))
    r = CliRunner().invoke(main, ["predict", str(art), *paths, "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["results"]
    assert [row["label"] for row in rows] == mnist_test.labels[:3].tolist()
    line = ",".join(["7"] + [str(v) for v in mnist_test.images[0].reshape(-1)])
    r = CliRunner().invoke(main, ["predict", str(art / "model.onnx"), "-"], input=line + "\n")
    assert r.exit_code == 0 and "stdin:1: 7 (confidence" in r.output
    (tmp_path / "x.png").write_bytes(b"not a png")
    r = CliRunner().invoke(main, ["predict", str(art), str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "cannot decode as an image" in r.output
    r = CliRunner().invoke(main, ["predict", str(art), "-"], input="1,2,3\n")
    assert r.exit_code == 2 and "stdin, line 1: 3 columns: expected 784 pixels or label,784 pixels" in r.output


def b_text(art) -> str:
    r = CliRunner().invoke(main, ["bench", str(art), "--iters", "100", "--seconds", "0.02", "--no-check"])
    assert r.exit_code == 0, r.output
    return r.output


def test_bench_reports_baselines(art):
    r = CliRunner().invoke(main, ["bench", str(art), "--iters", "200", "--seconds", "0.05", "--no-check", "--json",
                                  "--soak", "2000"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    one = res["results"][0]
    assert set(one["latency_us"]) == {"classifier", "bare_session", "torch_eager", "crop_to_decision"}
    # Crop to decision is the preprocessing plus the model call: never faster than the call alone.
    assert one["latency_us"]["crop_to_decision"]["p50"] > one["latency_us"]["classifier"]["p50"]
    pre = one["preprocess_us"]
    assert pre["crop_480_p50_us"] > 0 and pre["crop_64_p50_us"] > 0 and pre["batch_64_per_crop_us"] > 0
    assert "runtime.preprocess p50: 64x64 crop" in b_text(art)
    thr, lu, q = one["throughput_img_s"], one["latency_us"], one["ratios"]
    assert set(thr) == {"1", "32", "256", "1024"}
    assert all(v > 0 for runners in thr.values() for v in runners.values())
    # every ratio is the one its name says, from the figures printed beside it
    assert q["p50_vs_bare"] == pytest.approx(lu["classifier"]["p50"] / lu["bare_session"]["p50"])
    assert q["speedup_vs_torch"] == pytest.approx(lu["torch_eager"]["p50"] / lu["classifier"]["p50"])
    assert q["throughput_1024_vs_bare"] == pytest.approx(thr["1024"]["classifier"] / thr["1024"]["bare_session"])
    for runner in ("classifier", "bare_session", "torch_eager"):
        assert 0 < lu[runner]["p50"] <= lu[runner]["p99"]
    assert res["soak"]["predictions"] == 2000 and res["import_runtime_seconds"] > 0

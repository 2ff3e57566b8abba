"""The OpenVINO backend: the same decisions as ONNX Runtime on every exported ONNX file, f32 by
default, thread-safe, and a graph with no operator whose meaning differs between the two."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest

from runtime import Classifier

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install lenet-tool[openvino])")


@pytest.fixture(scope="module")
def files(all_onnx_files):
    return all_onnx_files


@pytest.mark.parametrize("name, min_agree", [("model.onnx", 1.0), ("model.fp16.onnx", 0.999),
                                             ("model.int8.onnx", 0.999)])
def test_openvino_decides_as_onnxruntime(files, mnist_test, name, min_agree):
    from toolchain.verify import seed_protocol_images as seed_protocol
    ref = Classifier(files / name, providers=["CPUExecutionProvider"])
    got = Classifier(files / name, backend="openvino")
    assert got.backend == "openvino" and got.providers == ["OpenVINO CPU (f32)"]
    for images in (mnist_test.images, seed_protocol(mnist_test.images)):
        a, b = ref.predict(images), got.predict(images)
        assert (a.labels == b.labels).mean() >= min_agree
        assert (a.accepted == b.accepted).mean() >= min_agree
        assert b.accepted.dtype == np.bool_ and b.labels.dtype == np.int64 and b.confidences.dtype == np.float32
        if name == "model.onnx":
            assert np.abs(a.logits - b.logits).max() <= 1e-4


def test_graph_has_no_reduce_log_sum_exp(files):
    """OpenVINO 2026.4 computes ReduceLogSumExp with the opset-17 axes attribute over the whole
    tensor (one energy for a whole batch): the gate's log-sum-exp is written in basic ops."""
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        ops = {n.op_type for n in onnx.load(str(files / name)).graph.node}
        assert not ops & {"ReduceLogSumExp", "ReduceLogSum"}, name


def test_the_quirk_the_graph_avoids_is_real():
    """The one-node model that shows it: if OpenVINO ever fixes it, this says so."""
    from onnx import TensorProto, helper
    node = helper.make_node("ReduceLogSumExp", ["x"], ["y"], axes=[1], keepdims=0)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU")
    y = np.asarray(compiled(x)[compiled.outputs[0]])
    expected = np.log(np.exp(x).sum(1))
    if y.shape == expected.shape and np.allclose(y, expected, atol=1e-5):
        pytest.skip(f"OpenVINO {ov.__version__} computes ReduceLogSumExp per row now")
    assert y.size == 1  # one value for the whole batch


def test_openvino_serves_many_threads(files, mnist_test):
    clf = Classifier(files / "model.onnx", backend="openvino")
    images = mnist_test.images[:400]
    serial = clf.predict(images)
    out: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        out[i] = np.concatenate([clf.predict(images[j:j + 50]).labels for j in range(0, 400, 50)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(v, serial.labels) for v in out.values()) and len(out) == 8


def test_openvino_options(files):
    with pytest.raises(ValueError, match="precision 'int4': expected one of f32, bf16, f16"):
        Classifier(files / "model.onnx", backend="openvino", precision="int4")
    with pytest.raises(ValueError, match=r"backend 'openvino' does not take the option\(s\) providers: it takes "
                                         "device, precision, threads"):
        Classifier(files / "model.onnx", backend="openvino", providers=["CPUExecutionProvider"])
    from runtime import BackendUnavailable
    with pytest.raises(BackendUnavailable, match="OpenVINO device 'NPU' is not here; available devices are CPU"):
        Classifier(files / "model.onnx", backend="openvino", device="NPU")
    clf = Classifier(files / "model.onnx", backend="openvino", precision="bf16", threads=1)
    assert clf.providers == ["OpenVINO CPU (bf16)"] and clf.predict(np.zeros((3, 28, 28), np.uint8)).labels.shape == (3,)
    clf.close()
    with pytest.raises(RuntimeError, match="this OpenVINO backend was closed"):
        clf.predict(np.zeros((3, 28, 28), np.uint8))

"""The onnx-tensorrt parser's rules, checked without TensorRT: each rule on a graph that breaks
it, the exported files (which must pass), and the int8 file as quantize_static writes it by default."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from exporters.trt_rules import check_trt_rules
from toolchain.cli import main


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_exported_files_pass(exported_for_rules):
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        assert check_trt_rules(exported_for_rules / name) == [], name


def test_int8_as_quantize_static_writes_it_by_default_fails(exported_for_rules, tmp_path, mnist_train):
    """Biases quantized (ONNX Runtime's default): INT32 DequantizeLinear inputs, refused by the parser."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"image": mnist_train.images[:100, None].copy()}])

        def get_next(self):
            return next(self.it, None)

    out = tmp_path / "int8-bias.onnx"
    quantize_static(str(exported_for_rules / "model.onnx"), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv"], extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    found = [v for v in check_trt_rules(out) if v.op == "DequantizeLinear"]
    assert found and all("is INT32: TensorRT dequantizes only INT8, INT4 or FP8" in v.rule for v in found)
    r = CliRunner().invoke(main, ["info", str(out), "--check", "trt"])
    assert r.exit_code == 1 and "violates the TensorRT parser's rules" in r.output and "is INT32" in r.output
    r = CliRunner().invoke(main, ["info", str(exported_for_rules / "model.int8.onnx"), "--check", "trt"])
    assert r.exit_code == 0 and "TensorRT parser rules: none broken" in r.output


def test_each_rule_on_a_graph_that_breaks_it():
    x = _vi("x", TensorProto.UINT8, [1, 4])
    # UINT8 input read by something else than Cast, and a UINT8 tensor inside the network
    m = _model([helper.make_node("Identity", ["x"], ["y"], name="id")], [x], [_vi("z", TensorProto.FLOAT, [1, 4])])
    m.graph.node.append(helper.make_node("Cast", ["y"], ["z"], to=TensorProto.FLOAT, name="cast"))
    rules = [str(v) for v in check_trt_rules(m)]
    assert "id (Identity): reads the UINT8 network input 'x' directly: TensorRT needs it cast first" in rules
    assert "id (Identity): output 'y' is UINT8: TensorRT takes UINT8 only as a network input or output" in rules
    # axes from a computed tensor, an unsupported operator, a DOUBLE output
    f = _vi("f", TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Identity", ["one"], ["ax"], name="ident"),
             helper.make_node("ReduceSum", ["f", "ax"], ["r"], name="rsum", keepdims=0),
             helper.make_node("Det", ["sq"], ["d"], name="det"),
             helper.make_node("MatMul", ["f", "ft"], ["sq"], name="mm"),
             helper.make_node("Cast", ["d"], ["dd"], to=TensorProto.DOUBLE, name="todouble")]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.ones((3, 2), np.float32), "ft")]
    m = _model(nodes, [f], [_vi("r", TensorProto.FLOAT, [2]), _vi("dd", TensorProto.DOUBLE, [])], inits)
    rules = [str(v) for v in check_trt_rules(m)]
    assert "rsum (ReduceSum): input 1 ('ax') must be a constant (an initializer or a Constant node)" in rules
    assert "det (Det): not an operator the onnx-tensorrt parser supports" in rules
    assert any(r.startswith("dd (graph I/O): data type DOUBLE: TensorRT network I/O takes") for r in rules)
    # asymmetric quantization: a UINT8 zero point
    q = [helper.make_node("QuantizeLinear", ["f", "sc", "zp"], ["q"], name="q"),
         helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["dq"], name="dq")]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "sc"),
             numpy_helper.from_array(np.array(128, np.uint8), "zp")]
    rules = [str(v) for v in check_trt_rules(_model(q, [f], [_vi("dq", TensorProto.FLOAT, [2, 3])], inits))]
    assert any(r.startswith("q (QuantizeLinear): y_zero_point 'zp' must be INT8 and zero") for r in rules)
    assert any(r.startswith("dq (DequantizeLinear): input 'q' is UINT8") for r in rules)
    assert "dq (DequantizeLinear): x_zero_point must be zero" in rules


@pytest.fixture(scope="module")
def exported_for_rules(all_onnx_files):
    return all_onnx_files

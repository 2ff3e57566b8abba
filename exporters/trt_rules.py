"""The onnx-tensorrt parser's documented rules, checked on an ONNX file without TensorRT.

TensorRT cannot be installed on this project's machines, so a file that its ONNX parser would
refuse is caught here instead, by reading the graph. The rules are those of the parser's
operator notes (onnx-tensorrt, ``docs/operators.md``, and the TensorRT developer guide's
"Working with Quantized Types" and I/O data types):

- network I/O data types: FLOAT, FLOAT16, BFLOAT16, INT8, INT32, INT64, BOOL, UINT8, FP8, INT4;
- UINT8 only at the network's edge: a UINT8 input may feed ``Cast`` nodes only, and no tensor
  inside the network may be UINT8;
- ``DequantizeLinear``: ``x`` must be INT8, INT4 or FP8 ("only activation types allowed as input
  to this layer": an INT32 bias, as ``quantize_static`` writes by default, is refused) and its
  zero point must be zero; ``QuantizeLinear``: ``y_zero_point`` must be INT8 and zero (TensorRT
  quantizes symmetrically);
- inputs the parser needs as constants: ``axes`` of Slice, Squeeze, Unsqueeze and the Reduce*
  operators that take them as an input, the ``K`` of TopK, a Conv's or ConvTranspose's weights
  (an initializer, or a DequantizeLinear of one);
- operators: those the operator matrix marks supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid
HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min Mish Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN
RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size
Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# ONNX TensorProto data types, by number (kept here so the names read in messages).
_DTYPES = {1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
           9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 16: "BFLOAT16", 17: "FLOAT8E4M3FN",
           18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ", 21: "UINT4", 22: "INT4"}
IO_TYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "INT8", "INT32", "INT64", "BOOL", "UINT8", "FLOAT8E4M3FN",
                      "INT4"})
DQ_INPUT_TYPES = frozenset({"INT8", "INT4", "FLOAT8E4M3FN"})
# (operator, input index) that must be constant, and from which opset the input exists.
CONSTANT_INPUTS = {("Slice", 3): 10, ("Squeeze", 1): 13, ("Unsqueeze", 1): 13, ("TopK", 1): 10,
                   ("ReduceSum", 1): 13, **{(op, 1): 18 for op in (
                       "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
                       "ReduceLogSumExp", "ReduceSumSquare")}}


@dataclass(frozen=True)
class Violation:
    """One rule the parser would enforce, broken at one node (or graph input/output)."""

    node: str
    op: str
    rule: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}): {self.rule}"


def check_trt_rules(model: Any) -> list[Violation]:
    """Every violation of the rules above in ``model`` (an ``onnx.ModelProto`` or a path)."""
    import onnx
    from onnx import numpy_helper

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    dtype = {v.name: _DTYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type))
             for v in [*g.input, *g.output, *g.value_info]}
    inits = {i.name: i for i in g.initializer}
    dtype.update({name: _DTYPES.get(i.data_type, str(i.data_type)) for name, i in inits.items()})
    constants = set(inits)
    producer: dict[str, Any] = {}
    for n in g.node:
        for o in n.output:
            producer[o] = n
            if n.op_type == "Constant":
                constants.add(o)
                for a in n.attribute:
                    if a.name == "value":
                        dtype[o] = _DTYPES.get(a.t.data_type, str(a.t.data_type))
    graph_io = {v.name for v in [*g.input, *g.output]}
    out: list[Violation] = []
    for v in [*g.input, *g.output]:
        if dtype.get(v.name) not in IO_TYPES:
            out.append(Violation(v.name, "graph I/O", f"data type {dtype.get(v.name)}: TensorRT network I/O takes "
                                                      f"{', '.join(sorted(IO_TYPES))}"))
    for n in g.node:
        name = n.name or f"{n.op_type}->{n.output[0] if n.output else '?'}"
        if n.op_type not in SUPPORTED_OPS:
            out.append(Violation(name, n.op_type, "not an operator the onnx-tensorrt parser supports"))
        for o in n.output:
            if dtype.get(o) == "UINT8" and o not in graph_io:
                out.append(Violation(name, n.op_type, f"output {o!r} is UINT8: TensorRT takes UINT8 only as a network "
                                                      "input or output"))
        for i, x in enumerate(n.input):
            if dtype.get(x) == "UINT8" and x in {v.name for v in g.input} and n.op_type != "Cast":
                out.append(Violation(name, n.op_type, f"reads the UINT8 network input {x!r} directly: TensorRT needs "
                                                      "it cast first"))
            since = CONSTANT_INPUTS.get((n.op_type, i))
            if since is not None and opset >= since and x and x not in constants:
                out.append(Violation(name, n.op_type, f"input {i} ({x!r}) must be a constant (an initializer or a "
                                                      "Constant node)"))
        if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1:
            w = n.input[1]
            via_dq = w in producer and producer[w].op_type == "DequantizeLinear" and producer[w].input[0] in constants
            if w not in constants and not via_dq:
                out.append(Violation(name, n.op_type, f"weights {w!r} must be an initializer (or a DequantizeLinear "
                                                      "of one)"))
        if n.op_type == "DequantizeLinear":
            if dtype.get(n.input[0]) not in DQ_INPUT_TYPES:
                out.append(Violation(name, n.op_type, f"input {n.input[0]!r} is {dtype.get(n.input[0])}: TensorRT "
                                                      "dequantizes only INT8, INT4 or FP8 (only activation types "
                                                      "allowed as input to this layer)"))
            if len(n.input) > 2 and n.input[2] in inits and numpy_helper.to_array(inits[n.input[2]]).any():
                out.append(Violation(name, n.op_type, "x_zero_point must be zero"))
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2]:
            zp = n.input[2]
            if dtype.get(zp) != "INT8" or (zp in inits and numpy_helper.to_array(inits[zp]).any()):
                out.append(Violation(name, n.op_type, f"y_zero_point {zp!r} must be INT8 and zero (TensorRT quantizes "
                                                      f"symmetrically; it is {dtype.get(zp)})"))
    return out

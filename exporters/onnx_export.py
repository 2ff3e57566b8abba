"""Checkpoint -> ONNX (fp32, fp16, int8), validated against PyTorch before it is kept.

Exporter: torch.onnx's TorchScript-based exporter (``dynamo=False``) at opset 17. It is
in every torch from 2.4 to 2.14 with the same behaviour and needs no onnxscript (which
the GPU machines' stock image lacks); the graph is small and static, so nothing the
dynamo exporter adds is needed. Export uses a batch of 2 and marks the batch axis
dynamic so it is never specialised.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.fileio import ArtifactError, sha256_file
from runtime.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES
from toolchain.checkpoint import build_pipeline, load_checkpoint

from .graph import GatedModel
from .metadata import build_metadata
from .validate import Report, ValidationError, compare


@dataclass
class ExportResult:
    """A written file, its validation report and how long export took."""

    path: Path
    report: Report | None
    seconds: float
    details: dict[str, Any]


def load_calibrated(artifact: Path) -> tuple[dict[str, Any], str, torch.nn.Module]:
    """The artifact's checkpoint (which must carry a gate), its SHA-256, and its pipeline."""
    path = artifact / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    if not ckpt.get("calibration"):
        raise ArtifactError(f"{path}: the checkpoint has no calibrated gate: run 'lenet-tool calibrate {artifact}'")
    return ckpt, sha256_file(path), build_pipeline(ckpt)


CHUNK = 256  # frames per run when validating


@torch.no_grad()
def torch_reference(model: GatedModel, images: np.ndarray, batch: int = 512) -> dict[str, np.ndarray]:
    """The four outputs of the PyTorch graph for uint8 ``(N, 1, 28, 28)`` images."""
    model.eval()
    outs: list[tuple[torch.Tensor, ...]] = []
    for i in range(0, len(images), batch):
        outs.append(model(torch.from_numpy(np.array(images[i:i + batch], dtype=np.uint8))))
    return {k: torch.cat([o[j] for o in outs]).numpy() for j, k in enumerate(OUTPUT_NAMES)}


def to_onnx(model: GatedModel, opset: int) -> Any:
    """Trace ``model`` to an ``onnx.ModelProto`` with a dynamic batch axis, constants folded."""
    import onnx

    buf = io.BytesIO()
    dummy = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    dynamic = {name: {0: "N"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    kwargs: dict[str, Any] = {}
    if "dynamo" in torch.onnx.export.__code__.co_varnames:
        kwargs["dynamo"] = False  # torch >= 2.5 has both exporters; the TorchScript one is the default before 2.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice in torch >= 2.9
        torch.onnx.export(model.eval(), (dummy,), buf, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, **kwargs)
    proto = onnx.load_from_string(buf.getvalue())
    narrow_gather_indices(proto)
    return proto


def narrow_gather_indices(proto: Any) -> int:
    """Make the constant tap indices of each ``GatherElements`` (the test-time views', broadcast
    over the batch by an ``Expand``) int32 instead of torch's int64; returns how many.

    The ``Expand`` writes the indices out for every frame of a batch: in int64 that copy was 9%
    of ONNX Runtime's time at batch 1024 (``benchmarks/int8_forms.py``'s profile). ONNX allows
    int32 indices, and TensorRT uses int32 indices anyway. Only constants that nothing else reads
    are changed, and only when every index fits.
    """
    import onnx
    from onnx import numpy_helper

    nodes = list(proto.graph.node)
    by_output = {o: n for n in nodes for o in n.output}
    readers: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    changed = 0
    for n in nodes:
        if n.op_type != "GatherElements":
            continue
        expand = by_output.get(n.input[1])
        if expand is None or expand.op_type != "Expand" or readers.get(n.input[1]) != 1:
            continue
        const = by_output.get(expand.input[0])
        if const is None or const.op_type != "Constant" or readers.get(expand.input[0]) != 1:
            continue
        attr = next((a for a in const.attribute if a.name == "value"), None)
        if attr is None or attr.t.data_type != onnx.TensorProto.INT64:
            continue
        values = numpy_helper.to_array(attr.t)
        if values.size and (values.min() < -2**31 or values.max() >= 2**31):
            continue
        attr.t.CopyFrom(numpy_helper.from_array(values.astype(np.int32), attr.t.name))
        changed += 1
    return changed


def attach_metadata(proto: Any, meta: dict[str, Any]) -> Any:
    """Set the one ``lenet_tool`` metadata entry (JSON), replacing any earlier one; and state the
    graph's shapes plainly for every runtime (see :func:`plain_shapes`)."""
    plain_shapes(proto, len(meta["class_names"]))
    keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(meta, sort_keys=True, allow_nan=False)
    proto.producer_name = "lenet-tool"
    return proto


def plain_shapes(proto: Any, num_classes: int) -> None:
    """``logits`` is ``[N, num_classes]``, not the symbolic ``ReduceMeanlogits_dim_1`` the exporter
    leaves after the views' mean; and intermediate ``value_info`` hints (the quantizer's shape
    inference leaves dozens with dims like ``unk__0``) are dropped: runtimes infer them, and tract
    refused the int8 file on them."""
    del proto.graph.value_info[:]
    for out in proto.graph.output:
        if out.name == "logits":
            dim = out.type.tensor_type.shape.dim[1]
            dim.Clear()
            dim.dim_value = num_classes


def run_onnx(path: Path, images: np.ndarray, threads: int | None = None) -> dict[str, np.ndarray]:
    """The four outputs of an ONNX file on the CPU, through runtime's ONNX Runtime backend."""
    from runtime.backends.ort import OnnxRuntimeBackend

    return run_in_chunks(OnnxRuntimeBackend(path, providers=["CPUExecutionProvider"], threads=threads), images)


def run_in_chunks(backend: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    """A runtime backend's four outputs on ``images``, run ``CHUNK`` frames at a time.

    Chunks of a few hundred frames: with the test-time views the network sees several times as
    many, and ONNX Runtime ran 10,000 frames 2.5x faster in chunks of 256 than of 4096.
    """
    parts = [backend.run(np.ascontiguousarray(images[i:i + CHUNK])) for i in range(0, len(images), CHUNK)]
    return {k: np.concatenate([p[k] for p in parts]) for k in OUTPUT_NAMES}


def validate_against_pytorch(path: Path, name: str, precision: str, reference: GatedModel, images: np.ndarray,
                             labels: np.ndarray | None) -> Report:
    """Run ``path`` and the fp32 PyTorch graph on ``images``; raise :class:`ValidationError` on a mismatch."""
    report = compare(name, precision, torch_reference(reference, images), run_onnx(path, images), reference.threshold,
                     labels)
    if not report.passed:
        raise ValidationError(report)
    return report


class Staging:
    """A scratch folder inside the artifact: files are built and validated there, then moved
    into place with an atomic rename, so a failed or interrupted export leaves nothing behind."""

    def __init__(self, artifact: Path) -> None:
        artifact.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=".export-", dir=artifact))
        self.artifact = artifact

    def path(self, name: str) -> Path:
        return self.dir / name

    def commit(self, name: str) -> Path:
        final = self.artifact / name
        (self.dir / name).replace(final)
        return final

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def export_float(artifact: Path, filename: str, precision: str, *, opset: int, images: np.ndarray,
                 labels: np.ndarray | None, validate: bool = True) -> ExportResult:
    """Export the fp32 or fp16 graph, check it, validate it against PyTorch, then keep it."""
    import onnx

    t0 = time.perf_counter()
    ckpt, sha, pipeline = load_calibrated(artifact)
    graph = GatedModel(pipeline, ckpt["calibration"], half=precision == "fp16")
    proto = attach_metadata(to_onnx(graph, opset), build_metadata(ckpt, checkpoint_sha256=sha, precision=precision,
                                                                   opset=opset))
    onnx.checker.check_model(proto, full_check=True)
    with Staging(artifact) as stage:
        tmp = stage.path(filename)
        onnx.save(proto, str(tmp))
        report = validate_against_pytorch(tmp, filename, precision, GatedModel(pipeline, ckpt["calibration"]),
                                          images, labels) if validate else None
        path = stage.commit(filename)
    return ExportResult(path, report, time.perf_counter() - t0, {"opset": opset, "exporter": "torch.onnx (TorchScript)"})


def center_conv_input(model: Any, conv_name: str, calib_images: np.ndarray) -> bool:
    """Shift a convolution's input to be symmetric about zero, exactly, before int8 quantization.

    The second convolution reads ReLU-and-max-pool outputs, all >= 0: symmetric int8 (the only
    kind TensorRT takes: zero point 0) would spend half its codes on values that never occur.
    With ``c`` the middle of the input's range on ``calib_images``, ``Conv(x) = Conv(x - c) +
    c * sum(W)`` per output channel, so a ``Sub`` goes in front and the bias absorbs the rest:
    the float model is unchanged (to rounding) and the quantized input gets all 8 bits. On
    Fashion-MNIST's LeNet this took int8 label agreement from 99.15% to 99.56% (max logit
    difference 3.6 to 0.43); on MNIST's from 99.94% to 99.98%. Only a convolution without
    padding is shifted (padding would insert zeros that no longer mean zero). Edits ``model``
    in place; returns whether it did.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    g = model.graph
    conv = next(n for n in g.node if n.name == conv_name)
    pads = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0])
    auto_pad = next((a.s for a in conv.attribute if a.name == "auto_pad"), b"NOTSET")
    inits = {i.name: i for i in g.initializer}
    if any(pads) or auto_pad not in (b"NOTSET", b"VALID") or len(conv.input) < 3 or conv.input[1] not in inits \
            or conv.input[2] not in inits:
        return False
    x_name = conv.input[0]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(x_name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    lo, hi = np.inf, -np.inf
    for i in range(0, len(calib_images), 500):
        x = sess.run([x_name], {INPUT_NAME: np.ascontiguousarray(calib_images[i:i + 500])})[0]
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    c = (lo + hi) / 2
    w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
    g.initializer.remove(inits[conv.input[2]])
    g.initializer.append(numpy_helper.from_array((b + c * w.sum(axis=(1, 2, 3))).astype(np.float32), conv.input[2]))
    g.initializer.append(numpy_helper.from_array(np.array(c, dtype=np.float32), f"{conv_name}_input_center"))
    shifted = f"{x_name}_centered"
    g.node.insert(list(g.node).index(conv), helper.make_node("Sub", [x_name, f"{conv_name}_input_center"], [shifted],
                                                             name=f"{conv_name}_center"))
    conv.input[0] = shifted
    return True


def quantize_int8(fp32_path: Path, out_path: Path, calib_images: np.ndarray, fmt: str,
                  exclude: Sequence[str] = ()) -> None:
    """Static int8 quantization with ONNX Runtime of the network's convolutions but the first
    (and but the nodes named in ``exclude``): in practice the second convolution.

    ``qdq``: QuantizeLinear/DequantizeLinear pairs with symmetric int8 activations and
    weights, the form TensorRT consumes. ``qoperator``: QLinearConv/QGemm with uint8
    activations, ONNX Runtime's CPU form. Preprocessing, views, novelty residual (its two
    MatMuls) and gate stay in float.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT_NAME: np.ascontiguousarray(calib_images[i:i + 200])}
                                 for i in range(0, len(calib_images), 200)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    import onnx

    qdq = fmt == "qdq"
    nodes = onnx.load(str(fp32_path)).graph.node
    # Only the second convolution is quantized: 58% of the network's multiply-adds. Measured on a
    # field-trained model (onnxruntime 1.32, symmetric QDQ, per-channel, MinMax; Percentile and
    # Entropy calibration alike): with every Conv/Gemm but the head int8, 97.2% of accept decisions
    # agreed with fp32; with the first convolution float too, 99.6% on the test set but 99.3% on
    # its seed-protocol version (the 99.5% bound fails); with the fully connected layers float as
    # well, 99.8% / 99.7% and logits within 0.34. The first convolution reads the normalised
    # pixels; the first fully connected layer and the head set the logits, which feed the gate's
    # energy floor and confidence directly.
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    keep_float = convs[:1]
    source = fp32_path
    if qdq:  # QOperator's uint8 activations have a zero point already
        model = onnx.load(str(fp32_path))
        if any([center_conv_input(model, name, calib_images) for name in convs[1:] if name not in exclude]):
            source = out_path.with_name(out_path.stem + ".centered.onnx")
            onnx.save(model, str(source))
    quantize_static(str(source), str(out_path), Reader(), nodes_to_exclude=keep_float + list(exclude),
                    quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                    per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QInt8 if qdq else QuantType.QUInt8,
                    # Not MatMul: the novelty residual's projections are MatMuls, and like the
                    # logits they feed a refusal limit directly. Not Gemm: see above.
                    op_types_to_quantize=["Conv"],
                    calibrate_method=CalibrationMethod.MinMax,
                    # Biases stay float: quantized they become INT32 DequantizeLinear inputs, which
                    # TensorRT's parser refuses (onnx-tensorrt#850, onnxruntime#14229).
                    extra_options={"ActivationSymmetric": qdq, "WeightSymmetric": True, "QuantizeBias": False})


def export_int8(artifact: Path, filename: str, *, opset: int, images: np.ndarray, labels: np.ndarray | None,
                calib_images: np.ndarray, int8_format: str, validate: bool = True) -> ExportResult:
    """fp32 export, then int8 quantization calibrated on training images, then validation."""
    import onnx

    if int8_format not in ("qdq", "qoperator"):
        raise ValueError(f"int8 format {int8_format!r}: expected 'qdq' or 'qoperator'")
    t0 = time.perf_counter()
    ckpt, sha, pipeline = load_calibrated(artifact)
    graph = GatedModel(pipeline, ckpt["calibration"])
    with Staging(artifact) as stage:
        fp32 = stage.path("fp32.onnx")
        onnx.save(to_onnx(graph, opset), str(fp32))
        tmp = stage.path(filename)
        quantize_int8(fp32, tmp, calib_images, int8_format)
        meta = build_metadata(ckpt, checkpoint_sha256=sha, precision="int8", opset=opset,
                              extra={"quantization": {"format": int8_format, "calibration_images": len(calib_images),
                                                      "method": "minmax, per-channel weights, symmetric "
                                                                "activations with the convolution's input centred"}})
        proto = attach_metadata(onnx.load(str(tmp)), meta)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        report = validate_against_pytorch(tmp, filename, "int8", graph, images, labels) if validate else None
        path = stage.commit(filename)
    return ExportResult(path, report, time.perf_counter() - t0,
                        {"opset": opset, "int8_format": int8_format, "calibration_images": len(calib_images)})

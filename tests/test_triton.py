"""``export --target triton``: the model repository, parsed as Triton's own ModelConfig and held
against its model file. Needs tritonclient (the [serve] extra); skips with that reason without it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("tritonclient.grpc.model_config_pb2",
                    reason="tritonclient (Triton's ModelConfig protobuf) is not installed: pip install '.[serve]'")

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from exporters.triton import TritonConfigError, check_repository, export_repository, io_spec
from runtime.fileio import sha256_file
from toolchain.cli import main


@pytest.fixture
def art(all_onnx_files, tmp_path) -> Path:
    """A copy of the session artifact with its three ONNX files (no triton folder yet)."""
    out = tmp_path / "art"
    shutil.copytree(all_onnx_files, out, ignore=shutil.ignore_patterns("triton"))
    return out


def _parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_export_writes_a_repository_triton_parses(art):
    r = CliRunner().invoke(main, ["export", str(art), "--target", "triton"])
    assert r.exit_code == 0, r.output
    assert "config.pbtxt parses as Triton's ModelConfig and matches 1/model.onnx: platform onnxruntime_onnx" in r.output
    cfg = _parse(art / "triton/lenet/config.pbtxt")
    assert cfg.name == "lenet" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 1024
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input] == \
        [("image", "TYPE_UINT8", [1, 28, 28])]
    outs = {o.name: (mc.DataType.Name(o.data_type), list(o.dims), o.HasField("reshape"), list(o.reshape.shape))
            for o in cfg.output}
    assert outs == {"logits": ("TYPE_FP32", [10], False, []), "confidence": ("TYPE_FP32", [1], True, []),
                    "label": ("TYPE_INT64", [1], True, []), "accepted": ("TYPE_BOOL", [1], True, [])}
    assert list(cfg.dynamic_batching.preferred_batch_size) == [64]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, mc.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == [(1, "KIND_CPU")]
    model = art / "triton/lenet/1/model.onnx"
    assert sha256_file(model) == sha256_file(art / "model.onnx")
    meta = json.loads((art / "metrics.json").read_text())
    p = {k: v.string_value for k, v in cfg.parameters.items()}
    assert float(p["lenet_tool.gate_threshold"]) == meta["gate"]["threshold"]
    assert p["lenet_tool.model_sha256"] == sha256_file(model) and p["lenet_tool.source_file"] == "model.onnx"
    manifest = json.loads((art / "manifest.json").read_text())["files"]
    assert manifest["triton/lenet/config.pbtxt"]["sha256"] == sha256_file(art / "triton/lenet/config.pbtxt")
    assert manifest["triton/lenet/1/model.onnx"]["sha256"] == sha256_file(model)


def test_repository_comes_after_the_file_it_copies(art):
    (art / "model.onnx").unlink()
    r = CliRunner().invoke(main, ["export", str(art), "--target", "triton", "--target", "onnx"])
    assert r.exit_code == 0, r.output
    assert r.output.index("onnx: wrote") < r.output.index("triton: wrote")
    assert sha256_file(art / "triton/lenet/1/model.onnx") == sha256_file(art / "model.onnx")


def test_model_name_sources_and_options(art):
    r = CliRunner().invoke(main, ["export", str(art), "--target", "triton", "--source", "int8", "--model-name",
                                  "digits-int8", "--max-batch", "256", "--preferred-batch", "32", "--queue-delay-us",
                                  "500", "--instances", "2", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)[0]["triton"]
    assert summary["max_batch_size"] == 256 and summary["preferred_batch_size"] == [32]
    assert summary["max_queue_delay_microseconds"] == 500 and summary["instances"] == 2
    cfg = _parse(art / "triton/digits-int8/config.pbtxt")
    assert cfg.name == "digits-int8" and cfg.parameters["lenet_tool.precision"].string_value == "int8"
    assert sha256_file(art / "triton/digits-int8/1/model.onnx") == sha256_file(art / "model.int8.onnx")
    # A second model joins the repository; the first stays.
    assert CliRunner().invoke(main, ["export", str(art), "--target", "triton", "--source", "fp16"]).exit_code == 0
    assert sorted(p.name for p in (art / "triton").iterdir()) == ["digits-int8", "lenet"]
    assert _parse(art / "triton/lenet/config.pbtxt").parameters["lenet_tool.precision"].string_value == "fp16"


def test_plan_source_is_served_as_model_plan(art, onnx_artifact):
    """No TensorRT here: a stand-in plan with a real sidecar (the exporter only copies and checks it)."""
    import onnx

    from exporters.tensorrt import sidecar
    from runtime.backends.trt import sidecar_path
    from runtime.metadata import METADATA_KEY, parse_metadata
    m = onnx.load(str(art / "model.onnx"))
    meta = parse_metadata({p.key: p.value for p in m.metadata_props}[METADATA_KEY], "model.onnx")
    plan = art / "model.engine"
    plan.write_bytes(b"stand-in serialized plan")

    def write_sidecar(lo: int, hi: int) -> None:
        side = sidecar(meta, plan.read_bytes(), {"tensorrt_version": "10.9.0", "compute_capability": "9.0",
                                                 "profile": {"min": lo, "opt": 32, "max": hi}}, art / "model.onnx")
        sidecar_path(plan).write_text(json.dumps(side))

    write_sidecar(1, 512)
    folder, s = export_repository(art, plan)
    assert s["platform"] == "tensorrt_plan" and s["max_batch_size"] == 512  # capped at the profile's maximum
    cfg = _parse(folder / "config.pbtxt")
    assert [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group] == ["KIND_GPU"]
    assert (folder / "1/model.plan").read_bytes() == plan.read_bytes() and (folder / "1/model.plan.json").is_file()
    with pytest.raises(TritonConfigError, match=r"max_batch_size: 1024 is above the plan's profile maximum 512"):
        export_repository(art, plan, max_batch=1024)
    write_sidecar(4, 512)
    with pytest.raises(TritonConfigError, match=r"profile starts at batch 4; Triton sends batches from 1"):
        export_repository(art, plan)
    plan.write_bytes(b"another plan")  # the sidecar no longer matches: refused before anything is written
    with pytest.raises(ValueError, match="does not match the sidecar's"):
        export_repository(art, plan)
    assert (folder / "1/model.plan").read_bytes() == b"stand-in serialized plan"  # the earlier one is intact


# Each edit of a good config, and the words the check must answer it with.
TAMPER = [
    ("name", lambda t: t.replace('name: "lenet"\nplatform', 'name: "other"\nplatform'),
     r"name: 'other', expected the folder's name 'lenet'"),
    ("platform", lambda t: t.replace('"onnxruntime_onnx"', '"pytorch_libtorch"'), r"platform: 'pytorch_libtorch'"),
    ("input dtype", lambda t: t.replace("TYPE_UINT8", "TYPE_FP32"),
     r"input 'image' data_type: TYPE_FP32, the model's is uint8 \(TYPE_UINT8\)"),
    ("input dims", lambda t: t.replace("dims: 28\n  dims: 28", "dims: 28\n  dims: 27"),
     r"input 'image' dims: \[1, 28, 27\], expected \[1, 28, 28\]"),
    ("missing reshape", lambda t: t.replace("  reshape {\n  }\n", "", 1),
     r"output 'confidence' dims: \[1\] does not fit the model's \['N'\]"),
    ("output dropped", lambda t: t.replace('output {\n  name: "accepted"', 'output {\n  name: "accepted2"'),
     r"output: \['logits', 'confidence', 'label', 'accepted2'\], expected"),
    ("threshold", lambda t: t.replace('key: "lenet_tool.gate_threshold"\n  value {\n    string_value: "',
                                      'key: "lenet_tool.gate_threshold"\n  value {\n    string_value: "0.5'),
     r"parameters\['lenet_tool.gate_threshold'\]: '0.5"),
    ("no batching", lambda t: re.sub(r"dynamic_batching \{[^}]*\}\n", "", t),
     r"dynamic_batching: missing: requests would not be batched together"),
    ("unknown field", lambda t: t.replace("dynamic_batching {", "xdb {"), r"not a Triton ModelConfig.*xdb"),
    ("preferred", lambda t: t.replace("preferred_batch_size: 64", "preferred_batch_size: 4096"),
     r"dynamic_batching.preferred_batch_size: 4096, expected 1..max_batch_size \(1024\)"),
    ("syntax", lambda t: t.replace("max_batch_size: 1024", "max_batch_size: 10 24"), r"not a Triton ModelConfig.*:"),
]


@pytest.mark.parametrize("what,edit,message", TAMPER, ids=[t[0] for t in TAMPER])
def test_tampered_config_is_refused(art, what, edit, message):
    folder, _ = export_repository(art, art / "model.onnx")
    cfg = folder / "config.pbtxt"
    cfg.write_text(edit(cfg.read_text()))
    with pytest.raises(TritonConfigError, match=message) as e:
        check_repository(art / "triton", "lenet")
    assert str(cfg) in str(e.value)


def test_replaced_model_file_is_refused(art):
    folder, _ = export_repository(art, art / "model.onnx")
    shutil.copyfile(art / "model.fp16.onnx", folder / "1/model.onnx")
    with pytest.raises(TritonConfigError, match=r"parameters\['lenet_tool.model_sha256'\]: '[0-9a-f]{64}', expected"):
        check_repository(art / "triton", "lenet")


def test_bad_input_is_a_clear_error(art):
    runner = CliRunner()
    r = runner.invoke(main, ["export", str(art), "--target", "triton", "--model-name", "../x"])
    assert r.exit_code == 2 and "--model-name '../x': expected letters, digits" in r.output
    (art / "model.engine").unlink(missing_ok=True)
    r = runner.invoke(main, ["export", str(art), "--target", "triton", "--source", "trt"])
    assert r.exit_code == 2 and "model.engine: no such file: export it first with" in r.output
    assert "--target trt" in r.output
    r = runner.invoke(main, ["export", str(art), "--target", "triton", "--preferred-batch", "2048"])
    assert r.exit_code == 2 and "--preferred-batch 2048: expected at most --max-batch (1024)" in r.output
    r = runner.invoke(main, ["export", str(art), "--target", "triton", "--opset", "18"])
    assert r.exit_code == 2 and "target 'triton' does not take --opset" in r.output
    r = runner.invoke(main, ["export", str(art), "--target", "trt", "--source", "trt"])
    assert r.exit_code == 2 and "--source 'trt': expected one of onnx, int8, fp16" in r.output
    assert not (art / "triton").exists() or not any((art / "triton").iterdir())
    assert not list(art.glob(".triton-*"))  # no staging folder left behind


def test_failed_check_keeps_the_earlier_repository(art, monkeypatch):
    folder, _ = export_repository(art, art / "model.onnx")
    before = (folder / "config.pbtxt").read_text()
    import exporters.triton as tr

    def broken(repo, name):
        raise TritonConfigError("simulated: the written config failed its check")
    monkeypatch.setattr(tr, "check_repository", broken)
    with pytest.raises(TritonConfigError, match="simulated"):
        export_repository(art, art / "model.fp16.onnx")
    assert (folder / "config.pbtxt").read_text() == before
    assert sha256_file(folder / "1/model.onnx") == sha256_file(art / "model.onnx")
    assert not list(art.glob(".triton-*"))


def test_io_spec_is_the_model_contract(art):
    from runtime import Classifier
    with Classifier(art / "model.onnx") as clf:
        inputs, outputs = io_spec(clf.metadata)
    assert [(s.name, s.dtype, s.dims) for s in inputs] == [("image", "uint8", (1, 28, 28))]
    assert [(s.name, s.triton_type, s.dims, s.reshape) for s in outputs] == [
        ("logits", "TYPE_FP32", (10,), None), ("confidence", "TYPE_FP32", (1,), ()),
        ("label", "TYPE_INT64", (1,), ()), ("accepted", "TYPE_BOOL", (1,), ())]

"""lenet-tool verify: hashes and numbers, every exported file against PyTorch."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from click.testing import CliRunner

from toolchain.cli import main


@pytest.fixture(scope="module")
def art(onnx_artifact):
    return onnx_artifact


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


@pytest.mark.slow  # trains a model end to end
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


def test_verify_every_runtime_prints_one_agreement_table(art):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install lenet-tool[openvino])")
    r = CliRunner().invoke(main, ["verify", str(art), "--runtime", "all", "--field-images", "0", "--json"])
    assert r.exit_code == 0, r.output
    rows = {(p["file"].rsplit("/", 1)[-1], p["backend"]) for p in json.loads(r.output)["files"]}
    assert {("model.onnx", "onnxruntime"), ("model.onnx", "openvino")} <= rows
    text = CliRunner().invoke(main, ["verify", str(art), "--runtime", "all", "--field-images", "0"]).output
    table = text[text.index("Every installed runtime against PyTorch"):].splitlines()
    assert "not installed here: tensorrt" in table[0]
    ov_row = next(line for line in table if line.startswith("model.onnx") and "openvino" in line)
    assert ov_row.split()[2:7] == ["100.000%", "/", "100.000%", "100.000%", "/"]

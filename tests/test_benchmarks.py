"""Benchmark scripts that need no GPU: the GPU check's closing table reads what its steps wrote, and the
frame-scenes benchmark runs every scene."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_summary


def test_summary_reads_junit_xml_and_json(tmp_path):
    (tmp_path / "gpu_tests.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="3" failures="1" errors="0" skipped="0"/></testsuites>')
    (tmp_path / "gpu_infer.json").write_text(json.dumps([{"device": "cuda", "batch": 1024, "img_s": 1.5e6}]))
    (tmp_path / "gpu_gate.json").write_text(json.dumps([{"name": "seed 0", "coverage": 0.95, "risk": 0.001,
                                                          "letters": 0.007, "fashion": 0.0006, "seconds": 30}]))
    table = dict(gpu_summary.rows(tmp_path))
    assert table["CUDA tests"] == "2 passed, 1 failed, 0 skipped"
    assert table["train, default recipe"] == "not run"
    assert table["inference cuda batch 1024"] == "1,500,000 images/s"
    assert table["gate, seed 0"] == "coverage 95.00% risk 0.100% letters 0.70% fashion 0.06% (30 s)"


def test_summary_prefers_the_no_pytest_runners_json(tmp_path):
    (tmp_path / "gpu_tests.json").write_text(json.dumps({"passed": 2, "failed": 0}))
    assert dict(gpu_summary.rows(tmp_path))["CUDA tests"] == "2 passed, 0 failed"
    assert dict(gpu_summary.rows(tmp_path / "missing"))["CUDA tests"] == "not run"


def test_frame_scenes_runs_every_scene(onnx_artifact):
    import frame_scenes
    res = frame_scenes.run(onnx_artifact, frames=2, seed=0)
    assert list(res) == list(frame_scenes.SCENES) + list(frame_scenes.PHOTOS)
    assert all(sum(r.values()) == 2 for r in res.values())


def test_border_band_paints_each_side(onnx_artifact):
    import border_band
    for side in border_band.SIDES:
        rows = border_band.run(onnx_artifact, 4, "mild", side, 250, blur=1.0, noise=4.0)
        assert [r["share"] for r in rows] == list(border_band.SHARES)
        assert all(r["right"] + r["wrong"] + r["preprocess_refused"] + r["gate_refused"] == 4 for r in rows)


def test_views_forms_compares_equal_views():
    """The previous form that benchmarks/views_forms.py times is the same rotation as the exported one."""
    import torch
    import views_forms

    from toolchain.model import Views
    new = Views((-15.0, 15.0), background=-1.0, classes=10)
    old = views_forms.GatherViews((-15.0, 15.0), background=-1.0, classes=10)  # as the script builds it
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    assert (old.index >= 784).any()  # the previous form's taps outside the frame read its padding pixel
    assert torch.allclose(new.expand(x), old.expand(x), atol=1e-6)
    logits = torch.rand(15, 10)
    assert torch.equal(new.combine(logits), old.combine(logits))


def test_batch_chunks_times_both_forms_and_restores_the_budgets():
    import batch_chunks

    from toolchain import field
    budgets = (batch_chunks.P.CHUNK_PIXELS, field.RENDER_PIXELS)
    rows = batch_chunks.measure(crops=300, turns=1)  # harsh: two render chunks and 11 preprocessing ones
    assert [(r["level"], r["step"]) for r in rows] == [("mild", "render"), ("mild", "preprocess"),
                                                      ("harsh", "render"), ("harsh", "preprocess")]
    assert all(r["same_output"] and r["whole_s"] > 0 and r["chunked_s"] > 0 for r in rows)
    assert (batch_chunks.P.CHUNK_PIXELS, field.RENDER_PIXELS) == budgets


def test_frame_scenes_counts_readings_acted_on_in_frames_without_digits(onnx_artifact):
    import frame_scenes

    from toolchain.fieldbench import NON_DIGIT_KINDS
    res = frame_scenes.run_no_digits(onnx_artifact, frames=3, seed=0)
    assert list(res) == list(NON_DIGIT_KINDS)
    assert all(0 <= r["acted"] <= r["found"] <= r["frames"] == 3 for r in res.values())
    assert sum(r["found"] for r in res.values()) > 0  # texture and clutter always leave pieces to read


def test_preprocess_numpy_times_each_environment_in_turn(capsys):
    import preprocess_numpy
    rows = preprocess_numpy.run([sys.executable, sys.executable], rounds=2, crops=2)
    assert [r["numpy"] for r in rows] == [np.__version__] * 2
    assert all(r["small_us"] > 0 and r["big_us"] > 0 for r in rows)
    assert rows[0]["small_ratio"] == rows[0]["big_ratio"] == 1.0  # the first is the baseline
    preprocess_numpy.main(["--python", sys.executable, "--rounds", "1", "--crops", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["python", "numpy", "64x64", "us"] and np.__version__ in out[1]


def test_preprocess_floor_is_a_working_normaliser(mnist_test):
    """The floor benchmark's normaliser gives back an MNIST frame from its camera-like crop (2x, dark
    on grey paper) and from its inverse, so the time it prints is a normaliser's."""
    import preprocess_floor
    corr = []
    for frame in mnist_test.images[:50]:
        big = np.kron(frame.astype(np.float32), np.ones((2, 2), np.float32))
        crop = np.full((64, 64), 200.0, np.float32)
        crop[4:60, 4:60] -= big * (150 / 255)
        for c in (crop.astype(np.uint8), (255 - crop).astype(np.uint8)):
            out = preprocess_floor.lean_normalise(c)
            assert out.shape == (28, 28) and out.dtype == np.uint8 and out.max() >= 254  # truncated
            corr.append(np.corrcoef(out.ravel().astype(float), frame.ravel().astype(float))[0, 1])
    assert min(corr) > 0.7 and np.median(corr) > 0.93  # runtime.preprocess: 0.81 and 0.97 on such crops
    try:
        preprocess_floor.lean_normalise(np.full((64, 64), 128, np.uint8))
    except ValueError as e:
        assert "no ink" in str(e)
    else:
        raise AssertionError("a blank crop was normalised")


def test_preprocess_floor_times_both_and_prints_the_table(onnx_artifact, capsys):
    import preprocess_floor
    preprocess_floor.main([str(onnx_artifact), "--rounds", "1", "--crops", "2", "--read", "20"])
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:3] == ["normaliser", "64x64", "us"]
    assert [line.split()[0] for line in out[2:4]] == ["lean", "preprocess"]
    assert out[3].split()[2] == "1.000x"  # preprocess is the baseline
    assert out[4].startswith("one numpy call")

"""lenet-tool calibrate: re-fitting the gate of a trained artifact, and its bad inputs."""

from __future__ import annotations

import gzip
import json
import shutil
import struct

import pytest
import torch
from click.testing import CliRunner

from runtime.fileio import sha256_file
from toolchain import gate
from toolchain.checkpoint import build_pipeline, load_checkpoint, save_checkpoint
from toolchain.cli import main
from toolchain.data import write_csv
from toolchain.train import predict_logits, predict_novelty


@pytest.fixture(scope="module")
def setup(artifact, small_split, tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    tr, te = small_split
    write_csv(tr, d / "train.csv")
    write_csv(te, d / "test.csv")
    return d


def _run(art, setup, *args):
    return CliRunner().invoke(main, ["calibrate", str(art), "--train-csv", str(setup / "train.csv"),
                                     "--test-csv", str(setup / "test.csv"), *args])


def test_recalibrate_with_the_seed_rule_updates_everything(artifact, setup, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    before = json.loads((art / "metrics.json").read_text())
    r = _run(art, setup, "--method", "seed", "--json")
    assert r.exit_code == 0, r.output
    g = json.loads(r.output)
    calib = json.loads((art / "calibration.json").read_text())
    assert calib["method"] == "seed" and calib["score"] == "seed-minmax" and len(calib["logit_min"]) == 10
    # The held-out split and one field rendering of each frame the preprocessing kept.
    assert calib["fit"]["split"] == "holdout" and calib["fit"]["n"] == 1200 + g["field_holdout"]["frames"]
    assert load_checkpoint(art / "checkpoint.pt")["calibration"]["threshold"] == calib["threshold"]
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["gate"]["method"] == "seed" and metrics["gate"]["threshold"] == calib["threshold"]
    assert metrics["test"] == before["test"] and metrics["train"] == before["train"]  # training metrics are kept
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["files"]["calibration.json"]["sha256"] == sha256_file(art / "calibration.json")
    methods = [(row["method"], row["score"]) for row in g["comparison"]]
    assert {("seed", "seed-minmax"), ("guaranteed", "msp"), ("guaranteed", "energy"),
            ("guaranteed", "msp-energy")} <= set(methods)
    kinds = set(g["comparison"][0]["ood_acceptance"])
    assert {"uniform-noise", "gaussian-noise", "black", "white", "letters", "scrambled-digits", "fashion"} <= kinds


def test_letters_count_as_seen_once_the_field_showed_printed_ones(artifact, setup, tmp_path):
    assert "letters" not in json.loads((artifact / "metrics.json").read_text())["gate"]["ood_seen_in_training"]
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    ckpt = load_checkpoint(art / "checkpoint.pt")
    ckpt["field_outliers"] = ["blots", "printed-letters"]  # as 'train' records a field bank with glyphs
    save_checkpoint(art / "checkpoint.pt", {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    r = _run(art, setup, "--json")
    assert r.exit_code == 0, r.output
    assert "letters" in json.loads(r.output)["ood_seen_in_training"]


def test_novelty_ceiling_is_fitted_and_optional(artifact, setup, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    r = _run(art, setup, "--target-risk", "0.03", "--delta", "0.1", "--novelty-ceiling", "99", "--json")
    assert r.exit_code == 0, r.output
    calib = json.loads((art / "calibration.json").read_text())
    assert calib["score"] == "msp-energy" and calib["novelty_ceiling_percentile"] == 99
    assert "novelty residual" in calib["score_definition"]
    # A digit's raw frame and its rendering stay on one side of the division.
    assert calib["score_fit"]["divided_by"] == "digit"
    g = json.loads(r.output)
    seed_row = next(row for row in g["comparison"] if row["score"] == "seed-minmax")
    assert g["versus_seed_rule"]["seed_coverage"] == seed_row["test"]["coverage"] > 0
    # A checkpoint from before the novelty basis still calibrates, without the ceiling.
    ckpt = load_checkpoint(art / "checkpoint.pt")
    del ckpt["novelty"]
    save_checkpoint(art / "checkpoint.pt", {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    r = _run(art, setup, "--target-risk", "0.03", "--delta", "0.1", "--one-frame-per-digit")
    assert r.exit_code == 0, r.output
    calib = json.loads((art / "calibration.json").read_text())
    assert "novelty_ceiling" not in calib
    # One frame of each certifying digit: no more certifying frames than held-out digits outside the fit.
    assert calib["score_fit"]["divided_by"] == "digit, one frame of each certifying"
    assert calib["certification"]["n"] <= 1200 - calib["score_fit"]["n"] // 2
    r = _run(art, setup, "--novelty-ceiling", "0")
    assert r.exit_code == 2 and "novelty ceiling 0.0: expected a percentile in (0, 100]" in r.output


def test_tampered_novelty_basis_is_refused(artifact, tmp_path):
    from runtime.fileio import ArtifactError
    from toolchain.checkpoint import build_pipeline
    ckpt = load_checkpoint(artifact / "checkpoint.pt")
    ckpt["novelty"] = {**ckpt["novelty"], "basis": torch.zeros(100, 48)}
    with pytest.raises(ArtifactError, match=r"checkpoint does not match its architecture: novelty mean \[784\] and "
                                            r"basis \[100, 48\]: expected \[D\] and \[D, K\]"):
        build_pipeline(ckpt)


def test_text_report_is_a_side_by_side_table(artifact, setup, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    r = _run(art, setup, "--target-risk", "0.03", "--delta", "0.1")
    assert r.exit_code == 0, r.output
    assert "Gate comparison" in r.output and "ECE (15 bins)" in r.output and " *" in r.output
    assert "Held-out frames accepted but labelled otherwise: " in r.output


def test_accepted_errors_are_listed_most_sure_first():
    import numpy as np

    from toolchain import jobs
    logits = np.array([[5.0, 0, 0], [0, 9.0, 0], [0, 0, 1.0], [7.0, 0, 0], [0, 6.0, 0]])
    labels = np.array([0, 2, 1, 1, 0])  # wrong: frames 1 (sure), 2 (unsure), 3, 4
    calib = {"score": "msp", "temperature": 1.0, "threshold": 0.9}
    rows = jobs.accepted_errors(calib, logits, labels, None, rows=np.array([10, 11, 12, 13, 14]))
    # frame 2 (score 0.58) is refused, so it is no accepted error; the others come most sure first
    assert [(r["holdout_index"], r["training_row"], r["label"], r["predicted"]) for r in rows] == \
        [(1, 11, 2, 1), (3, 13, 1, 0), (4, 14, 0, 1)]
    assert rows[0]["confidence"] > rows[1]["confidence"] > rows[2]["confidence"] > 0.9
    assert "training_row" not in jobs.accepted_errors(calib, logits, labels, None)[0]


def test_calibrate_names_the_accepted_held_out_errors(artifact, setup, tmp_path, monkeypatch):
    import numpy as np

    from toolchain import gate
    from toolchain.checkpoint import build_pipeline
    from toolchain.data import read_csv
    from toolchain.jobs import _outputs
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    r = _run(art, setup, "--target-risk", "0.03", "--delta", "0.1", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    errs = out["accepted_holdout_errors"]
    assert out["accepted_holdout_error_count"] == len(errs)  # under the listing cap here
    ckpt = load_checkpoint(art / "checkpoint.pt")
    train = read_csv(setup / "train.csv")
    rows = np.asarray(ckpt["split"]["holdout_indices"])
    logits, novelty = _outputs(build_pipeline(ckpt), train.images[rows])
    conf = gate.confidence_np(logits, ckpt["calibration"], novelty)
    wrong = (conf >= ckpt["calibration"]["threshold"]) & (logits.argmax(1) != train.labels[rows])
    raw = [e for e in errs if not e["field"]]
    assert len(raw) == int(wrong.sum()) > 0 and len(errs) >= len(raw)
    for e in raw:
        assert e["training_row"] == rows[e["holdout_index"]]
    for e in errs:  # field renderings name the training row of the frame they were rendered from
        assert train.labels[e["training_row"]] == e["label"] and e["field"] == (e["holdout_index"] >= len(rows))
    assert (art / "report" / "gate_accepted_errors.png").stat().st_size > 1000
    # metrics.json lists a bounded number of them, and counts them all.
    from toolchain import jobs
    monkeypatch.setattr(jobs, "ACCEPTED_ERRORS_LISTED", 1)
    out = json.loads(_run(art, setup, "--target-risk", "0.03", "--delta", "0.1", "--json").output)
    assert len(out["accepted_holdout_errors"]) == 1 and out["accepted_holdout_error_count"] == len(errs)
    assert out["accepted_holdout_errors"][0] == errs[0]


def test_cannot_certify_exits_1_under_strict_risk(artifact, setup, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    before = (art / "calibration.json").read_bytes()
    r = _run(art, setup, "--target-risk", "0.00001", "--strict-risk")
    assert r.exit_code == 1
    assert "cannot certify a selective risk of 1e-05" in r.output
    assert (art / "calibration.json").read_bytes() == before  # nothing written


def test_uncertifiable_risk_climbs_the_ladder(artifact, setup, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    r = _run(art, setup, "--target-risk", "0.00001", "--json")
    assert r.exit_code == 0, r.output
    g = json.loads(r.output)
    calib = json.loads((art / "calibration.json").read_text())
    assert g["requested_risk"] == 1e-05 and g["certified"] is True
    assert g["target_risk"] in gate.RISK_LADDER and g["target_risk"] == calib["target_risk"]
    assert calib["certified_bound"] <= calib["target_risk"]
    # the first rung the held-out data can certify: the rung below it fails at the first threshold
    assert g["certification_line"].startswith(f"Gate: certified selective risk <= {100 * g['target_risk']:g}% ")
    assert "the asked 0.001% could not be certified" in g["certification_line"]
    text = _run(art, setup, "--target-risk", "0.00001").output
    assert g["certification_line"] in text


@pytest.mark.parametrize("args, message", [
    (["--target-risk", "0"], r"Invalid value for '?--target-risk'?: 0.0: expected a value in \(0, 1\)"),
    (["--delta", "1"], r"Invalid value for '?--delta'?: 1.0: expected a value in \(0, 1\)"),
])
def test_bad_options_exit_2(artifact, setup, args, message):
    r = _run(artifact, setup, *args)
    assert r.exit_code == 2
    assert __import__("re").search(message, r.output), r.output


def test_checkpoint_without_holdout_split(artifact, setup, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    ckpt = load_checkpoint(art / "checkpoint.pt")
    ckpt["split"] = {}
    save_checkpoint(art / "checkpoint.pt", {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    r = _run(art, setup)
    assert r.exit_code == 2
    assert "the checkpoint records no held-out split: expected one written by 'lenet-tool train'" in r.output


def test_other_training_data_is_refused(artifact, setup, tmp_path):
    r = CliRunner().invoke(main, ["calibrate", str(artifact), "--test-csv", str(setup / "test.csv")])
    assert r.exit_code == 2 and "the checkpoint was trained on 'mnist[:6000]'" in r.output


def test_ood_data_of_wrong_size(artifact, setup, tmp_path):
    raw = struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 2, 32, 32) + bytes(2 * 32 * 32)
    (tmp_path / "ood-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    r = _run(artifact, setup, "--ood-data", str(tmp_path / "ood-idx3-ubyte.gz"))
    assert r.exit_code == 2 and "images of shape [2, 32, 32]: expected [N, 28, 28] (28x28 grayscale)" in r.output
    (tmp_path / "ood.csv").write_text("0," + ",".join(["0"] * 1024) + "\n")
    r = _run(artifact, setup, "--ood-data", str(tmp_path / "ood.csv"))
    assert r.exit_code == 2 and "line 1: 1025 columns: expected 785" in r.output


def test_user_ood_data_is_measured(artifact, setup, tmp_path, mnist_test):
    from toolchain.data import Dataset
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    flipped = Dataset(mnist_test.images[:300, ::-1, :].copy(), mnist_test.labels[:300], "upside-down digits")
    write_csv(flipped, tmp_path / "flipped.csv")
    r = _run(art, setup, "--ood-data", str(tmp_path / "flipped.csv"), "--json", "--target-risk", "0.03")
    assert r.exit_code == 0, r.output
    acc = json.loads(r.output)["ood_acceptance"]
    key = next(k for k in acc if k.startswith("user:"))
    # the share the gate accepts, computed again from the calibrated checkpoint by hand
    ckpt = load_checkpoint(art / "checkpoint.pt")
    x = torch.from_numpy(flipped.images.copy()).unsqueeze(1)
    model = build_pipeline(ckpt)
    with torch.no_grad():
        logits, nov = predict_logits(model, x).double().numpy(), predict_novelty(model, x).double().numpy()
    conf = gate.confidence_np(logits, ckpt["calibration"], nov)
    assert acc[key] == pytest.approx(float((conf >= ckpt["calibration"]["threshold"]).mean()), abs=1e-12)

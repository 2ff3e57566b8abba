"""Model shapes, training that learns, checkpoints, resume, and the training CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from toolchain.checkpoint import build_pipeline, load_checkpoint, save_checkpoint
from toolchain.cli import main
from toolchain.model import ArchConfig, LeNet, Pipeline, PreprocessConfig, count_parameters
from toolchain.train import fit, make_config


@pytest.mark.parametrize("arch", ["lenet5", "lenet5-classic"])
def test_model_shapes_and_parameter_count(arch):
    net = LeNet(ArchConfig(arch))
    assert count_parameters(net) == 61706
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    kinds = {type(m).__name__ for m in net.modules()}
    assert ({"Sigmoid", "AvgPool2d"} <= kinds) == (arch == "lenet5-classic")
    assert ({"ReLU", "MaxPool2d"} <= kinds) == (arch == "lenet5")


def test_polarity_auto_inverts_dark_on_light():
    pre = Pipeline(ArchConfig(), PreprocessConfig(polarity="auto")).pre
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 10:18, 12:15] = 1.0
    both = torch.cat([x[:1], 1 - x[1:]])  # second frame: dark ink on light paper
    out = pre(both)
    assert torch.equal(out[0], out[1])
    assert torch.equal(Pipeline(ArchConfig(), PreprocessConfig(polarity="none")).pre(both)[1], (1 - x[1] - 0.5) / 0.5)


def test_test_time_views_average_rotated_frames():
    """The views are the frame plus bilinear rotations with the background filled, logits averaged."""
    import math

    import torch.nn.functional as F
    torch.manual_seed(0)
    rotations = (-15.0, 7.5)
    pipe = Pipeline(ArchConfig(), PreprocessConfig(view_rotations=rotations)).eval()
    single = Pipeline(ArchConfig(), PreprocessConfig()).eval()
    single.net.load_state_dict(pipe.net.state_dict())
    x = torch.zeros(3, 1, 28, 28)
    x[:, :, 6:22, 12:16] = 1.0
    x[2] = 1 - x[2]  # dark on light: canonicalised first, so its views match frame 0's

    def rotated(img: torch.Tensor, deg: float) -> torch.Tensor:
        r = math.radians(deg)
        theta = torch.tensor([[[math.cos(r), -math.sin(r), 0.0], [math.sin(r), math.cos(r), 0.0]]]).expand(len(img), -1, -1)
        return F.grid_sample(img, F.affine_grid(theta, list(img.shape), align_corners=False), align_corners=False)

    canon = x.clone()
    canon[2] = 1 - canon[2]
    expected = torch.stack([single(canon)] + [single(rotated(canon, a)) for a in rotations]).mean(0)
    with torch.no_grad():
        assert torch.allclose(pipe(x), expected, atol=1e-5)
        assert torch.allclose(pipe(x)[0], pipe(x)[2], atol=1e-5)
        assert not torch.allclose(pipe(x), single(x), atol=1e-3)
    assert make_config().view_rotations == (-15.0, 15.0)
    assert make_config("seed").view_rotations == ()
    with pytest.raises(ValueError, match=r"view rotation 90.0: expected non-zero degrees in \[-45, 45\]"):
        make_config(view_rotations=(90,))
    with pytest.raises(ValueError, match="9 view rotations: expected at most 8"):
        make_config(view_rotations=tuple(range(1, 10)))


def test_outliers_include_chimeras_of_two_classes():
    from toolchain.augment import make_outliers
    labels = torch.arange(400) % 2
    x = (labels == 0).float().view(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous()  # class 0 white, 1 black

    def chimeras(lab: torch.Tensor) -> float:
        out = make_outliers(x, torch.Generator().manual_seed(0), lab)
        binary = ((out == 0) | (out == 1)).flatten(1).all(1)
        both = (out.flatten(1).amax(1) == 1) & (out.flatten(1).amin(1) == 0)
        return (binary & both).float().mean().item()

    # A chimera joins part of one frame to the rest of another: only when their classes differ.
    assert 0.35 < chimeras(labels) < 0.55
    assert chimeras(torch.zeros(400, dtype=torch.long)) == 0.0


def test_recipes_and_bad_options():
    seed = make_config("seed")
    assert (seed.arch, seed.optimizer, seed.lr, seed.momentum, seed.batch_size, seed.invert_p, seed.epochs) == \
        ("lenet5-classic", "sgd", 0.01, 0.9, 100, 0.5, 940)
    with pytest.raises(ValueError, match=r"holdout fraction 1.0: expected a value in \(0, 1\)"):
        make_config(holdout_fraction=1.0)
    with pytest.raises(ValueError, match="recipe 'fast': expected one of default, seed"):
        make_config("fast")
    with pytest.raises(ValueError, match="device 'tpu': expected auto, cpu or cuda"):
        make_config(device="tpu")


def test_short_training_learns_and_checkpoint_round_trips(tmp_path, small_split):
    torch.set_num_threads(2)
    tr, te = small_split
    res = fit(make_config(epochs=2), tr, tmp_path)
    assert res.history[-1]["val_accuracy"] > 0.85  # from 10% at chance
    assert res.history[-1]["val_loss"] < res.history[0]["val_loss"]
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True inside
    assert ckpt["split"]["n_holdout"] == 1200 and len(ckpt["split"]["holdout_indices"]) == 1200
    model = build_pipeline(ckpt)
    x = torch.from_numpy(te.images[:64].copy()).unsqueeze(1).float() / 255
    assert torch.allclose(model(x), res.model(x), atol=1e-6)
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert raw["format"] == "lenet-tool-checkpoint" and raw["format_version"] == 1


def test_resume_after_interruption_continues_where_it_stopped(tmp_path, small_split):
    torch.set_num_threads(2)
    tr, _ = small_split

    class Kill(Exception):
        pass

    def die(rec):
        if rec["epoch"] == 2:
            raise Kill  # as if killed right after epoch 2's files were written

    with pytest.raises(Kill):
        fit(make_config(epochs=3), tr, tmp_path, on_epoch=die)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    resumed = fit(make_config(epochs=3), tr, tmp_path, resume=True)
    straight = fit(make_config(epochs=3), tr, tmp_path / "straight")
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    # Same seed, same data, RNG state restored: the resumed run is the uninterrupted run.
    assert resumed.history[-1]["val_loss"] == pytest.approx(straight.history[-1]["val_loss"], rel=1e-4)
    with pytest.raises(ValueError, match=r"different training settings \(lr\)"):
        fit(make_config(epochs=3, lr=0.1), tr, tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"\(epochs\).*--epochs may change only with a constant schedule"):
        fit(make_config(epochs=5), tr, tmp_path, resume=True)
    # A run from before printed characters weighed apart (its config lacks the key) had them at 1.
    state = load_checkpoint(tmp_path / "last.pt")
    del state["train_config"]["glyph_weight"]
    save_checkpoint(tmp_path / "last.pt", state)
    with pytest.raises(ValueError, match=r"different training settings \(glyph_weight\)"):
        fit(make_config(epochs=3), tr, tmp_path, resume=True)
    assert fit(make_config(epochs=3, glyph_weight=1.0), tr, tmp_path, resume=True).history[-1]["epoch"] == 3


def test_printed_characters_are_marked_and_weigh_apart(mnist_train):
    from toolchain.train import GLYPH_LABEL, OUTLIER_LABEL, _field_batch, outlier_loss
    x = torch.from_numpy(mnist_train.images[:300].copy()).unsqueeze(1)
    y = torch.from_numpy(mnist_train.labels[:300].astype(np.int64))
    _, marked = _field_batch(x, y, torch.Generator().manual_seed(0), outliers=0.5, printed=True)
    glyphs = (marked[:150] == GLYPH_LABEL).float().mean()
    assert set(marked[:150].tolist()) == {OUTLIER_LABEL, GLYPH_LABEL} and 0.2 < glyphs < 0.47  # a third
    assert (marked[150:] >= 0).all()
    _, plain = _field_batch(x, y, torch.Generator().manual_seed(0), outliers=0.5)
    assert (plain[:150] == OUTLIER_LABEL).all()  # data that is not digits gets no printed characters
    logits = torch.randn(4, 10)
    labels = torch.tensor([OUTLIER_LABEL, GLYPH_LABEL, 3, GLYPH_LABEL])
    ce_uniform = -logits.log_softmax(1).mean(1)
    want = 0.2 * (ce_uniform[0] + 3.0 * (ce_uniform[1] + ce_uniform[3])) / 2
    cfg = make_config(outlier_weight=0.2, glyph_weight=3.0)
    assert torch.isclose(outlier_loss(logits, labels, 2, cfg), want)
    with pytest.raises(ValueError, match=r"glyph weight -1.0: expected a value in \[0, 100\]"):
        make_config(glyph_weight=-1.0)


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import runtime.fileio as fileio
    save_checkpoint(tmp_path / "c.pt", {"x": torch.ones(2)})
    before = (tmp_path / "c.pt").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c.pt", {"x": torch.zeros(2)})
    assert (tmp_path / "c.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "not a readable checkpoint"),
    (None, "no such checkpoint"),
])
def test_bad_checkpoints(tmp_path, content, message):
    path = tmp_path / "checkpoint.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_foreign_and_future_checkpoints(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="not a lenet-tool checkpoint"):
        load_checkpoint(tmp_path / "a.pt")
    torch.save({"format": "lenet-tool-checkpoint", "format_version": 9}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match=r"format version 9 is newer than this tool reads \(1\): upgrade lenet-tool"):
        load_checkpoint(tmp_path / "b.pt")


def test_malicious_pickle_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": Evil()}))
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.slow  # trains a model end to end
def test_cli_train_writes_the_artifact_contract(tmp_path, small_split):
    from toolchain.data import write_csv
    tr, te = small_split
    write_csv(tr, tmp_path / "mnist_train.csv")
    write_csv(te, tmp_path / "mnist_test.csv")
    out = tmp_path / "art"
    r = CliRunner().invoke(main, ["train", "--out", str(out), "--epochs", "2", "--threads", "2", "--json",
                                  "--train-csv", str(tmp_path / "mnist_train.csv"),
                                  "--test-csv", str(tmp_path / "mnist_test.csv"), "--target-risk", "0.03"])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.output)
    t = metrics["test"]
    cm = np.array(t["confusion"])
    # the figures agree with one another: per class and overall accuracy from the confusion matrix
    assert cm.sum() == len(te) and np.allclose(t["per_class_accuracy"], cm.diagonal() / cm.sum(1))
    assert t["accuracy"] == pytest.approx(cm.trace() / cm.sum()) and t["accuracy"] > 0.85
    assert 0.5 < t["seed_protocol_accuracy"] < t["accuracy"] + 0.05 and t["loss"] > 0
    g = metrics["gate"]
    assert g["threshold"] == json.loads((out / "calibration.json").read_text())["threshold"]
    assert g["test"]["coverage"] == pytest.approx(g["test"]["accepted"] / len(te))
    assert g["test"]["selective_risk"] == pytest.approx(g["test"]["errors"] / max(g["test"]["accepted"], 1))
    history = metrics["train"]["history"]
    assert metrics["train"]["epochs"] == len(history) == 2 and metrics["train"]["seconds"] > 0
    assert metrics["train"]["best_val_loss"] == pytest.approx(min(h["val_loss"] for h in history))
    assert metrics["class_names"] == [str(i) for i in range(10)]
    names = {p.name for p in out.iterdir()}
    assert {"checkpoint.pt", "calibration.json", "metrics.json", "manifest.json", "report"} <= names
    plots = {p.name for p in (out / "report").iterdir()}
    assert {"loss_curves.png", "samples.png", "confusion_matrix.png", "reliability.png", "risk_coverage.png",
            "gate_scores.png"} <= plots
    manifest = json.loads((out / "manifest.json").read_text())
    assert "checkpoint.pt" in manifest["files"] and "report/loss_curves.png" in manifest["files"]
    assert manifest["libraries"]["torch"]


@pytest.mark.parametrize("args, message", [
    (["--train-csv", "{bad}"], "line 2, pixel 3: 'abc' is not an integer"),
    (["--epochs", "0"], "epochs 0: expected at least 1"),
    (["--field-fraction", "1.5"], r"field fraction 1.5: expected a value in \[0, 1\)"),
    (["--view-rotations", "10,x"], "'10,x': expected comma-separated degrees such as -15,-7.5,7.5,15, or 'none'"),
    (["--target-risk", "2"], r"Invalid value for '?--target-risk'?: 2.0: expected a value in \(0, 1\)"),
])
def test_cli_train_bad_input_exits_2(tmp_path, args, message):
    bad = tmp_path / "bad.csv"
    bad.write_text("1," + ",".join(["0"] * 784) + "\n2,0,0,0,abc," + ",".join(["0"] * 780) + "\n")
    args = [a.replace("{bad}", str(bad)) for a in args]
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2, r.output
    assert np.any([message in line or __import__("re").search(message, line) for line in r.output.splitlines()]), \
        r.output

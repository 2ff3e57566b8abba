"""The field: camera rendering, the torch twin of runtime.preprocess, field training and `lenet-tool field`."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from runtime import Classifier, find_digits, preprocess_batch
from runtime.preprocess import REASONS, refit_tables, robust_residuals
from toolchain import field, fieldbench
from toolchain.cli import main
from toolchain.fieldbench import non_digit_frames, object_edge, render_crops


@pytest.fixture(scope="module")
def digits(mnist_test):
    return torch.from_numpy(mnist_test.images[:300].copy()).float().unsqueeze(1) / 255.0


@pytest.mark.parametrize("name", ["clean", "mild", "harsh", "specks", "gradient", "noise", "blur", "jpeg",
                                  "polarity", "scale", "perspective"])
def test_torch_twin_agrees_with_numpy(digits, name):
    crops = field.render(digits, field.LEVELS[name], torch.Generator().manual_seed(3))
    frames, code = field.preprocess_torch(crops)
    ref = preprocess_batch(torch.round(crops * 255).to(torch.uint8).numpy())
    ours = torch.round(frames * 255).to(torch.uint8).numpy().astype(int)
    same_refusal = np.array([(REASONS[k - 1] if k else None) == r for k, r in zip(code.tolist(), ref.refusals)])
    assert same_refusal.mean() >= 0.99
    diff = np.abs(ours - ref.images.astype(int)).reshape(len(ours), -1).max(1)[same_refusal]
    assert np.mean(diff <= 1) >= 0.98 and diff.max() <= 8, np.percentile(diff, [50, 99, 100])


def _blots(n: int, seed: int) -> np.ndarray:
    """Light-on-dark solid ellipses as wide as a digit (the field benchmark's clutter blots)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28] + 0.5
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        cx, cy = rng.uniform(11, 17, 2)
        a, b = rng.uniform(6, 11, 2)
        out[i] = (((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1) * 255
    return out


def test_solid_ink_is_refused_and_uneven_light_is_not(digits):
    """A blot the flattening would hollow into a '0' is refused as solid ink, by numpy and the
    twin alike; digits under the harsh level's light fall-off and vignetting are not."""
    crops = render_crops(_blots(200, 5), field.MILD, 3)
    ref = preprocess_batch(crops).refusals
    _, code = field.preprocess_torch(torch.from_numpy(crops).float() / 255)
    assert [REASONS[k - 1] if k else None for k in code.tolist()] == list(ref)
    assert ref.count("solid-ink") >= 80, ref.count("solid-ink")  # the rest are small enough to keep paper in every tile
    # Training keeps them (as hollowed rings among its outliers): the twin can skip the check.
    frames, kept = field.preprocess_torch(torch.from_numpy(crops).float() / 255, solid=False)
    solid = torch.tensor([r == "solid-ink" for r in ref])
    assert (kept[solid] == 0).all() and (frames[solid].amax((1, 2)) > 0.9).all()
    for name in ("harsh", "gradient", "vignette"):
        lit = preprocess_batch(render_crops((digits[:, 0].numpy() * 255).astype(np.uint8), field.LEVELS[name], 4))
        assert lit.refusals.count("solid-ink") <= 3, (name, lit.refusals.count("solid-ink"))


def _object_edges(n: int, seed: int) -> np.ndarray:
    """The field benchmark's clutter edges, light on dark."""
    rng = np.random.default_rng(seed)
    return np.stack([object_edge(rng) for _ in range(n)]).astype(np.uint8) * 255


def test_an_object_that_turns_the_polarity_test_is_refused(digits):
    """An object as large as the paper around it can make the paper look like the ink: the
    object's tiles then stand below the light's surface, and the crop is refused as solid ink
    (before that check, 65-72 of 200 such crops were; the frames that passed were the paper's
    edge along the object, a fair '1'). numpy and the twin agree; digits under light falling
    off and a vignette beyond the harsh level's, at its lowest contrast, are not refused."""
    crops = render_crops(_object_edges(200, 6), field.MILD, 3)
    ref = preprocess_batch(crops).refusals
    _, code = field.preprocess_torch(torch.from_numpy(crops).float() / 255)
    assert [REASONS[k - 1] if k else None for k in code.tolist()] == list(ref)
    assert ref.count("solid-ink") >= 90, ref.count("solid-ink")
    dim = replace(field.HARSH, gradient=(0.45, 0.45), vignette=(0.3, 0.3), contrast=(0.3, 0.3))
    lit = preprocess_batch(render_crops((digits[:, 0].numpy() * 255).astype(np.uint8), dim, 4))
    assert lit.refusals.count("solid-ink") <= 3, lit.refusals.count("solid-ink")


@pytest.mark.parametrize("kind", ["plane", "surface"])
@pytest.mark.parametrize("tiles", [(4, 4), (3, 4), (3, 3)])
def test_the_refit_tables_give_the_least_squares_refit(kind, tiles):
    """``solid_tiles`` refits without the quarter of the tiles highest above the first fit by a
    pseudo-inverse looked up by that set's rank: the same residuals as a least-squares fit of
    the kept tiles (ties among the highest included), in numpy and the twin."""
    ty, tx = tiles
    a, refit, ranks = refit_tables(kind, ty, tx)
    k, m = ty * tx, ty * tx // 4
    v = np.random.default_rng(8).normal(size=(300, k))
    v[:50] = np.round(v[:50])  # ties
    first = v - v @ np.linalg.pinv(a).T @ a.T  # as the module computes it, so ties order alike
    want = np.empty_like(v)
    for i in range(len(v)):
        kept = np.sort(np.argsort(first[i], kind="stable")[:k - m])
        want[i] = v[i] - a @ np.linalg.lstsq(a[kept], v[i, kept], rcond=None)[0]
    assert np.abs(robust_residuals(v, a, refit, ranks) - want).max() < 1e-9
    # The twin's first fit may differ from numpy's in the last bit, which orders exact ties
    # otherwise: it is held to the rows without them.
    twin = field._robust_residuals(torch.from_numpy(v[50:]), a, refit, ranks).numpy()
    assert np.abs(twin - want[50:]).max() < 1e-9


def test_a_blurred_stroke_is_not_thickened(digits, mnist_test):
    """A blurred stroke's skirt is paper below INK_FLOOR of the ink's level, so a blurred crop's
    frame stays close to the MNIST frame it was shot from (17.8 grey levels apart on average
    without the floor, 13.7 with it); training's frames keep the skirt (``ink_floor=0``)."""
    raw = mnist_test.images[:300]
    crops = render_crops(raw, field.LEVELS["blur"], 4)
    frames = preprocess_batch(crops).images
    assert np.abs(frames.astype(int) - raw.astype(int)).mean() < 15
    x = torch.from_numpy(crops).float() / 255
    floored, _ = field.preprocess_torch(x)
    assert np.abs(np.rint(floored.numpy() * 255) - frames).max() <= 1
    unfloored, _ = field.preprocess_torch(x, ink_floor=0.0)
    assert unfloored.sum() > 1.05 * floored.sum()


@pytest.mark.parametrize("width, window, kept", [(8, False, 0.8), (20, False, 0.3), (4, True, 0.6)])
def test_twin_agrees_on_a_dark_band_along_a_border(digits, width, window, kept):
    crops = field.render(digits[:100], field.MILD, torch.Generator().manual_seed(8))
    crops[:, :, -width:] = 25 / 255  # a bezel along the right border (on the 256 levels numpy is given)
    if window:  # and the other three: a meter's window
        crops[:, :width], crops[:, -width:], crops[:, :, :width] = 25 / 255, 25 / 255, 25 / 255
    assert (field._border_bands(crops)[:, 3] > width).float().mean() > 0.9  # cut off, in both
    frames, code = field.preprocess_torch(crops)
    ref = preprocess_batch(torch.round(crops * 255).to(torch.uint8).numpy())
    assert [REASONS[k - 1] if k else None for k in code.tolist()] == list(ref.refusals)
    assert ref.ok.mean() > kept  # the rest: digits that run into the band
    diff = np.abs(torch.round(frames * 255).numpy().astype(int) - ref.images.astype(int))[ref.ok]
    assert diff.max() <= 8 and np.mean(diff.reshape(len(diff), -1).max(1) <= 1) >= 0.98


def test_render_is_seeded_and_shaped(digits):
    a = field.render(digits[:20], field.HARSH, torch.Generator().manual_seed(1))
    b = field.render(digits[:20], field.HARSH, torch.Generator().manual_seed(1))
    c = field.render(digits[:20], field.HARSH, torch.Generator().manual_seed(2))
    assert a.shape == (20, 96, 96) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and torch.equal(torch.round(a * 255) / 255, a)
    clean = field.render(digits[:20], field.CLEAN)
    # Clean crops: dark ink on 0.85 paper, nothing else.
    assert torch.isclose(clean[:, :4, :4], torch.tensor(0.85), atol=1 / 255).all() and clean.min() < 0.3


def test_render_gives_the_same_crops_whatever_the_chunking(digits, monkeypatch):
    # Every draw comes first, so a seed's crops (and the generator after them) do not depend on
    # how many crops are shot at a time.
    g_one, g_all = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    whole = field.render(digits[:7], field.HARSH, g_all)
    monkeypatch.setattr(field, "RENDER_PIXELS", 96 * 96 * 2)  # two crops a chunk, the last alone
    chunked = field.render(digits[:7], field.HARSH, g_one)
    assert torch.equal(whole, chunked)
    assert torch.equal(torch.rand(4, generator=g_all), torch.rand(4, generator=g_one))


def test_colourise_keeps_the_luma(digits):
    gray = field.render(digits[:10], field.MILD, torch.Generator().manual_seed(0))
    rgb = field.colourise(gray, torch.Generator().manual_seed(0))
    luma = rgb @ torch.tensor([0.299, 0.587, 0.114])
    assert rgb.shape == (10, 64, 64, 3) and (luma - gray).abs().max() < 0.02
    assert (rgb[..., 0] - rgb[..., 2]).abs().max() > 0.01  # really tinted


def test_field_frames_are_mnist_like(digits, mnist_test):
    frames, code = field.field_frames(digits[:200], field.MILD, torch.Generator().manual_seed(0))
    assert frames.shape == (200, 1, 28, 28) and (code == 0).float().mean() > 0.98
    ok = code == 0
    corr = [np.corrcoef(f.ravel(), d.ravel())[0, 1] for f, d in zip(frames[ok, 0].numpy(), digits[:200][ok, 0].numpy())]
    assert np.median(corr) > 0.85


def test_bank_holds_field_digits_and_labelled_outliers(mnist_train):
    from toolchain.train import FieldBank
    x = torch.from_numpy(mnist_train.images[:500].copy()).unsqueeze(1)
    y = torch.from_numpy(mnist_train.labels[:500].astype(np.int64))
    g = torch.Generator().manual_seed(0)
    bank = FieldBank.build(x, y, 256, g, outliers=0.25)
    assert bank.x.dtype == torch.uint8 and bank.x.shape == (256, 1, 28, 28)
    assert (bank.y[:64] == -1).all() and (bank.y[64:] >= 0).all()
    before = bank.x.clone()
    bank.refresh(x, y, 32, g, outliers=0.0)
    changed = (bank.x != before).flatten(1).any(1)
    assert changed[:32].float().mean() > 0.9 and not changed[32:].any() and bank.cursor == 32


def test_bank_holds_printed_digits_labelled_by_their_character(mnist_train):
    from toolchain.train import PRINTED_SHARE, _field_batch
    x = torch.from_numpy(mnist_train.images[:2000].copy()).unsqueeze(1)
    y = torch.from_numpy(mnist_train.labels[:2000].astype(np.int64))
    _, fy = _field_batch(x, y, torch.Generator().manual_seed(0), outliers=0.0, printed=True)
    relabelled = (fy != y).float().mean().item()  # a printed digit replaced the handwritten one (9 in 10 differ)
    assert 0.5 * 0.9 * PRINTED_SHARE < relabelled < 1.5 * 0.9 * PRINTED_SHARE and (fy >= 0).all()


def test_printed_characters_only_for_digit_data(mnist_train):
    from toolchain import ood
    from toolchain.train import looks_like_digits
    x, y = mnist_train.images[:3000], mnist_train.labels[:3000]
    assert looks_like_digits(x, y) and looks_like_digits(255 - x, y)  # either polarity
    assert not looks_like_digits(x, (y + 1) % 10)  # digits, but not in label order
    letters, which = ood.font_glyphs(2000, np.random.default_rng(0), chars="ABCDEFGHIJ")
    assert not looks_like_digits(letters, which)  # a dataset of ten letters
    assert not looks_like_digits(ood.fashion(3000), np.arange(3000) % 10)
    assert not looks_like_digits(np.zeros((10, 32, 32), np.uint8), np.arange(10))


def test_glyphs_are_seeded_printed_characters():
    from toolchain import ood
    a, ia = ood.font_glyphs(64, np.random.default_rng(3))
    b, ib = ood.font_glyphs(64, np.random.default_rng(3))
    assert a.shape == (64, 28, 28) and a.dtype == np.uint8 and np.array_equal(a, b) and np.array_equal(ia, ib)
    assert (a.reshape(64, -1).max(axis=1) > 128).all() and ia.max() < len(ood.GLYPHS)
    d, lab = ood.font_glyphs(200, np.random.default_rng(4), chars="0123456789")
    assert set(lab.tolist()) == set(range(10))
    p, plab = ood.printed_digits(50, np.random.default_rng(5))
    assert p.shape == (50, 28, 28) and plab.dtype == np.int64 and (p.reshape(50, -1).max(axis=1) > 128).all()
    # The measure's face is not a training face: the same character differs.
    assert not any(np.array_equal(p[i], d[j]) for i in range(50) for j in range(200))


def test_glyphs_need_matplotlibs_faces(monkeypatch, tmp_path):
    import matplotlib

    from toolchain import ood
    monkeypatch.setattr(matplotlib, "get_data_path", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"lacks DejaVuSans.ttf, .*expected the TrueType faces matplotlib ships"):
        ood.font_glyphs(1, np.random.default_rng(0))


def test_field_outliers_are_a_third_glyphs(mnist_train):
    x = torch.from_numpy(mnist_train.images[:900].copy()).float().unsqueeze(1) / 255
    glyphs = {g.tobytes() for g in field.glyph_bank(torch.device("cpu"))[0].numpy()}
    def glyph_share(**kw):
        out, marked = field.make_field_outliers(x, torch.Generator().manual_seed(1), **kw)
        in_bank = np.array([f.tobytes() in glyphs for f in torch.round(out[:, 0] * 255).to(torch.uint8).numpy()])
        assert marked.dtype == torch.bool and (marked.numpy() == in_bank).all()  # the glyphs, and only they
        return in_bank.mean()
    assert 0.28 < glyph_share(glyphs=True) < 0.39 and glyph_share() == 0.0


def test_the_benchmarks_lines_cross_at_thirty_degrees_at_least(monkeypatch):
    rng = np.random.default_rng(3)
    seps = []
    for k in (2, 3, 4) * 2000:
        u = rng.random(k)
        a = fieldbench.crossing_angles(u)
        x = np.sort(np.remainder(a, math.pi))
        assert a[0] == u[0] * math.pi
        assert np.diff(np.append(x, x[0] + math.pi)).min() >= math.radians(fieldbench.MIN_CROSSING) - 1e-9, (k, u)
        if k == 2:
            seps.append(math.degrees(np.remainder(a[1] - a[0], math.pi)))
    assert min(seps) < 33 and max(seps) > 147  # every crossing from 30 to 150 degrees, not only near 90
    # The clutter's lines are drawn at those angles: flattened to 0, every bundle turns into
    # horizontal stripes (every row one value), a third of the clutter; at the real angles, none.
    def stripes() -> int:
        f = non_digit_frames("clutter", 300, np.random.default_rng(0))
        rows_flat = (f == f[:, :, :1]).all(axis=2).all(axis=1)
        return int((rows_flat & (f.min(axis=(1, 2)) != f.max(axis=(1, 2)))).sum())
    assert stripes() == 0
    monkeypatch.setattr(fieldbench, "crossing_angles", lambda u: np.zeros(len(u)))
    assert 70 < stripes() < 130


def test_non_digit_kinds_render(mnist_test):
    rng = np.random.default_rng(0)
    for kind in ("paper", "texture", "clutter", "letters", "clothing"):
        f = non_digit_frames(kind, 8, rng)
        assert f.shape == (8, 28, 28) and f.dtype == np.uint8
    with pytest.raises(ValueError, match="non-digit kind 'x'"):
        non_digit_frames("x", 1, rng)
    crops = render_crops(mnist_test.images[:4], field.LEVELS["rgb"], 0)
    assert crops.shape == (4, 64, 64, 3) and crops.dtype == np.uint8


@pytest.fixture(scope="module")
def art(onnx_artifact):
    return onnx_artifact


def test_the_gate_is_calibrated_on_field_frames_too(artifact):
    metrics = json.loads((artifact / "metrics.json").read_text())
    fh = metrics["gate"]["field_holdout"]
    calib = json.loads((artifact / "calibration.json").read_text())
    assert fh["frames"] + fh["refused_by_preprocess"] == 1200  # one rendering of each held-out frame
    assert calib["fit"]["n"] == 1200 + fh["frames"]


def test_field_command(art):
    r = CliRunner().invoke(main, ["field", str(art), "--images", "150", "--non-digits", "40", "--level", "clean",
                                  "--level", "harsh", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert set(res["levels"]) == {"clean", "harsh"} and res["model"].startswith("model.onnx")
    for row in res["levels"].values():
        assert 0 <= row["selective_risk"] <= 1 and row["accepted"] <= row["n"] == 150
        assert row["coverage"] == pytest.approx(row["accepted"] / 150)
    assert res["levels"]["clean"]["accuracy"] > 0.8  # the session's tiny model, on clean crops
    mf = res["mnist_frames"]
    assert mf["raw"]["n"] == mf["preprocessed"]["n"] == 150
    assert abs(mf["raw"]["accuracy"] - mf["preprocessed"]["accuracy"]) < 0.05  # preprocess keeps MNIST's frames
    assert set(res["non_digits"]) == {"paper", "texture", "clutter", "letters", "clothing", "all"}
    kinds = [v["coverage"] for k, v in res["non_digits"].items() if k != "all"]
    assert res["non_digits"]["all"]["coverage"] == pytest.approx(np.mean(kinds))
    pr = res["printed_digits"]
    assert pr["n"] == 150 and pr["coverage"] == pytest.approx(pr["accepted"] / 150)
    assert (art / "field.json").is_file() and (art / "report" / "field.png").stat().st_size > 1000
    text = CliRunner().invoke(main, ["field", str(art), "--images", "50", "--non-digits", "0", "--level", "mild"])
    assert text.exit_code == 0 and "mild" in text.output and "Field benchmark: 50 test digits" in text.output
    assert "printed " in text.output and "not calibrated for" in text.output
    bad = CliRunner().invoke(main, ["field", str(art), "--level", "foggy"])
    assert bad.exit_code == 2 and "field level(s) foggy: expected some of clean, mild, harsh" in bad.output


def test_field_refuses_a_model_file_older_than_the_gate(art, tmp_path):
    import shutil

    from toolchain.checkpoint import load_checkpoint, save_checkpoint
    stale = tmp_path / "art"
    shutil.copytree(art, stale)
    ckpt = load_checkpoint(stale / "checkpoint.pt")
    ckpt["calibration"] = {**ckpt["calibration"], "threshold": 0.5}  # as if recalibrated after export
    save_checkpoint(stale / "checkpoint.pt", {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    r = CliRunner().invoke(main, ["field", str(stale), "--images", "20", "--non-digits", "0", "--level", "clean"])
    assert r.exit_code == 2 and "the artifact was recalibrated after export" in r.output, r.output


def test_outright_refusals_survive_a_threshold_override(art):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    with pytest.warns(UserWarning):
        loose = Classifier(art / "model.onnx", threshold=0.0)
    p = loose.predict(noise)
    assert (p.confidences == 0).all() and not p.accepted.any()


def test_predict_reads_every_digit_of_a_photo(art, tmp_path, mnist_test):
    from PIL import Image
    idx = [3, 2, 1]  # a 0, a 1 and a 2
    frame = np.full((90, 240), 200.0)
    for j, i in enumerate(idx):
        frame[14:70, 20 + 72 * j:76 + 72 * j] -= 150 * np.kron(mnist_test.images[i] / 255.0, np.ones((2, 2)))
    path = tmp_path / "meter.png"
    Image.fromarray(frame.astype(np.uint8)).save(path)
    assert len(find_digits(np.asarray(Image.open(path)))) == 3
    r = CliRunner().invoke(main, ["predict", str(art), str(path), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["results"]
    assert [row["label"] for row in rows] == mnist_test.labels[idx].tolist()
    assert all(row["input"].startswith(f"{path}@") and len(row["box"]) == 4 for row in rows)
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(tmp_path / "blank.png")
    r = CliRunner().invoke(main, ["predict", str(art), str(tmp_path / "blank.png")])
    assert r.exit_code == 0 and "REFUSED (no digit found)" in r.output


def test_target_misses_carry_their_interval():
    """A miss on 2,000 crops says how far the share on all such crops can be (Wilson, 95%)."""
    from toolchain.fieldbench import missed_targets, wilson
    lo, hi = wilson(50, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)
    assert wilson(0, 100)[0] == 0.0 and round(wilson(0, 100)[1], 4) == 0.037
    rows = {"harsh": {"n": 2000, "accuracy": 0.9685, "selective_risk": 0.0024, "accepted": 1689}}
    nd = {k: {"n": 1000, "coverage": c} for k, c in zip("abcde", (0.0, 0.0, 0.014, 0.045, 0.012))}
    nd["all"] = {"coverage": 0.0142}
    mnist = {"raw": {"n": 2000, "accuracy": 0.9915, "coverage": 0.907},
             "preprocessed": {"n": 2000, "accuracy": 0.99, "coverage": 0.925}}
    missed = missed_targets(rows, nd, mnist)
    assert missed == ["MNIST frames through preprocess: accuracy 99.00% vs 99.15% raw (target: within 0.1 point; "
                      "3 more of 2,000 frames wrong)",
                      "harsh accuracy 96.85% (target >= 97%; 95% interval 95.99-97.53% over 2,000)",
                      "non-digit crops accepted 1.42% (target <= 0.5%; 95% interval 1.13-1.79% over 5,000)"]

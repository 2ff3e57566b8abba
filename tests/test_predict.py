"""lenet-tool predict: image files, photos with several digits, CSV rows on stdin."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from toolchain.cli import main


@pytest.fixture(scope="module")
def art(onnx_artifact):
    return onnx_artifact


def test_predict_images_and_csv(art, tmp_path, mnist_test):
    from PIL import Image
    paths = []
    for i in range(3):
        big = Image.fromarray(255 - mnist_test.images[i]).resize((60, 60))
        p = tmp_path / f"d{i}.png"
        big.save(p)
        paths.append(str(p))
    r = CliRunner().invoke(main, ["predict", str(art), *paths, "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["results"]
    assert [row["label"] for row in rows] == mnist_test.labels[:3].tolist()
    line = ",".join(["7"] + [str(v) for v in mnist_test.images[0].reshape(-1)])
    r = CliRunner().invoke(main, ["predict", str(art / "model.onnx"), "-"], input=line + "\n")
    assert r.exit_code == 0 and "stdin:1: 7 (confidence" in r.output
    (tmp_path / "x.png").write_bytes(b"not a png")
    r = CliRunner().invoke(main, ["predict", str(art), str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "cannot decode as an image" in r.output
    r = CliRunner().invoke(main, ["predict", str(art), "-"], input="1,2,3\n")
    assert r.exit_code == 2 and "stdin, line 1: 3 columns: expected 784 pixels or label,784 pixels" in r.output

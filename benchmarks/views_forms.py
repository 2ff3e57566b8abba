"""The test-time views in ONNX Runtime: the element gather the exporter writes (``GatherElements``)
against the previous form (``Gather`` on axis 1 of the frames padded with a background pixel),
each as the whole gated graph of an artifact, timed in the same run. Also checks that both
give the same decisions on the test frames.

    .venv/bin/python benchmarks/views_forms.py [ARTIFACT] [--threads 1]   # default artifacts/lenet
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from exporters.graph import GatedModel
from exporters.onnx_export import load_calibrated
from toolchain.data import embedded_mnist
from toolchain.model import Views


class GatherViews(Views):
    """The previous form: frames shifted by the background, padded with a zero pixel that the
    outside taps read, ``index_select`` (ONNX ``Gather`` on axis 1)."""

    def __init__(self, rotations: tuple[float, ...], background: float, size: int = 28) -> None:
        super().__init__(rotations, background, size)
        index = self.index.reshape(self.count - 1, 4, -1).clone()
        index[self.weight == 0] = size * size  # the zero pixel
        self.index = index.reshape(-1)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        n, pixels = x.shape[0], self.size * self.size
        shifted = x.reshape(n, pixels) - self.background
        padded = torch.cat([shifted, torch.zeros_like(shifted[:, :1])], dim=1)
        taps = padded.index_select(1, self.index).reshape(n, self.count - 1, 4, pixels)
        rotated = (taps * self.weight).sum(dim=2) + self.background
        rotated = rotated.transpose(0, 1).reshape((self.count - 1) * n, 1, self.size, self.size)
        return torch.cat([x, rotated], dim=0)


def session(model: torch.nn.Module, threads: int) -> ort.InferenceSession:
    f = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28, dtype=torch.uint8),), f, input_names=["image"],
                      output_names=["logits", "confidence", "label", "accepted"],
                      dynamic_axes={"image": {0: "N"}}, opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])


def p50_us(fn: Callable[[np.ndarray], object], x: np.ndarray, iters: int) -> float:
    for _ in range(min(200, iters)):
        fn(x)
    ts = np.empty(iters)
    for i in range(iters):
        t = time.perf_counter()
        fn(x)
        ts[i] = time.perf_counter() - t
    return float(np.median(ts) * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", nargs="?", default="artifacts/lenet")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt, _, pipe = load_calibrated(Path(args.artifact))
    if pipe.views.count == 1:
        sys.exit(f"{args.artifact}: the model has no test-time views (view_rotations is empty)")
    old = copy.deepcopy(pipe)  # copy.copy would share the module dict, and so the views
    old.views = GatherViews(pipe.pre.cfg.view_rotations, pipe.views.background, classes=pipe.views.classes)
    forms = {"GatherElements (exported)": GatedModel(pipe, ckpt["calibration"]).eval(),
             "Gather axis 1 (previous)": GatedModel(old, ckpt["calibration"]).eval()}
    images = np.ascontiguousarray(embedded_mnist("test").images[:, None])
    rows, outs = [], {}
    for name, model in forms.items():
        s = session(model, args.threads)
        outs[name] = np.concatenate([s.run(["accepted"], {"image": images[i:i + 256]})[0]
                                     for i in range(0, len(images), 256)])
        def run(x: np.ndarray, s: ort.InferenceSession = s) -> object:
            return s.run(None, {"image": x})

        def eager(x: np.ndarray, model: torch.nn.Module = model) -> object:
            return model(torch.from_numpy(x))
        b1 = p50_us(run, images[:1], args.iters)
        b256 = p50_us(run, images[:256], max(20, args.iters // 40)) / 256
        with torch.inference_mode():
            t1 = p50_us(eager, images[:1], max(200, args.iters // 4))
        rows.append((name, b1, b256, t1))
    (new_name, *_), (old_name, *_) = rows
    agree = float((outs[new_name] == outs[old_name]).mean() * 100)
    print(f"{'form':<28} {'ORT batch-1 p50 us':>19} {'ORT us/frame, batch 256':>24} {'torch eager batch-1 us':>23}")
    for name, b1, b256, t1 in rows:
        print(f"{name:<28} {b1:>19.1f} {b256:>24.1f} {t1:>23.1f}")
    print(f"previous / exported: batch 1 {rows[1][1] / rows[0][1]:.2f}x, batch 256 {rows[1][2] / rows[0][2]:.2f}x; "
          f"accept decisions agree on {agree:.2f}% of {len(images):,} test frames")


if __name__ == "__main__":
    main()

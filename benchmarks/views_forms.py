"""The test-time views in ONNX Runtime: the element gather the exporter writes (``GatherElements``)
against the previous form (``Gather`` on axis 1 of the frames padded with a background pixel),
each as the whole gated graph of an artifact exported as ``lenet-tool export`` does, timed in
turns in one run as ``lenet-tool bench`` times its runners. Also checks that both give the same
decisions on the test frames.

    .venv/bin/python benchmarks/views_forms.py [ARTIFACT] [--threads 1]   # default artifacts/lenet
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from exporters.graph import GatedModel
from exporters.onnx_export import load_calibrated, to_onnx
from toolchain.bench import _latencies_together
from toolchain.data import embedded_mnist
from toolchain.model import Views


class GatherViews(Views):
    """The previous form: frames shifted by the background, padded with a zero pixel that the
    outside taps read, ``index_select`` (ONNX ``Gather`` on axis 1)."""

    def __init__(self, rotations: tuple[float, ...], background: float, size: int = 28,
                 classes: int | None = None) -> None:
        super().__init__(rotations, background, size, classes)
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
    """``model`` through the exporter's own ``to_onnx`` (opset 17), on the CPU."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(to_onnx(model, 17).SerializeToString(), so, providers=["CPUExecutionProvider"])


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
    sessions = {name: session(model, args.threads) for name, model in forms.items()}
    outs = {name: np.concatenate([s.run(["accepted"], {"image": images[i:i + 256]})[0]
                                  for i in range(0, len(images), 256)]) for name, s in sessions.items()}

    def runner(s: ort.InferenceSession) -> object:
        return lambda x: s.run(None, {"image": x})

    def eager(model: torch.nn.Module) -> object:
        return lambda x: model(torch.from_numpy(x))
    b1 = _latencies_together({k: runner(s) for k, s in sessions.items()}, images[:1], args.iters)
    b256 = _latencies_together({k: runner(s) for k, s in sessions.items()}, images[:256], max(20, args.iters // 40))
    with torch.inference_mode():
        t1 = _latencies_together({k: eager(m) for k, m in forms.items()}, images[:1], max(200, args.iters // 4))
    rows = [(name, np.median(b1[name]) * 1e6, np.median(b256[name]) * 1e6 / 256, np.median(t1[name]) * 1e6)
            for name in forms]
    new_name, old_name = forms
    agree = float((outs[new_name] == outs[old_name]).mean() * 100)
    print(f"{'form':<28} {'ORT batch-1 p50 us':>19} {'ORT us/frame, batch 256':>24} {'torch eager batch-1 us':>23}")
    for name, u1, u256, e1 in rows:
        print(f"{name:<28} {u1:>19.1f} {u256:>24.1f} {e1:>23.1f}")
    print(f"previous / exported: batch 1 {rows[1][1] / rows[0][1]:.2f}x, batch 256 {rows[1][2] / rows[0][2]:.2f}x; "
          f"accept decisions agree on {agree:.2f}% of {len(images):,} test frames")


if __name__ == "__main__":
    main()

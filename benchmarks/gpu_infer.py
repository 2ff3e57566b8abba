"""PyTorch-CUDA inference throughput of the gated graph at large batch: the GPU reference figure.

    PYTHONPATH=. python3 benchmarks/gpu_infer.py [--batches 1024 16384 65536]

Uses a freshly initialised LeNet with the default recipe's test-time views (throughput does
not depend on the weights) unless --checkpoint names a trained artifact folder. Compared in
the same run with the same model on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporters.graph import GatedModel
from toolchain.model import ArchConfig, Pipeline, PreprocessConfig
from toolchain.train import make_config


def throughput(model: torch.nn.Module, device: torch.device, batch: int, seconds: float = 1.0) -> float:
    x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, device=device)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 1024, 16384, 65536])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.checkpoint:
        from exporters.onnx_export import load_calibrated
        ckpt, _, pipe = load_calibrated(args.checkpoint)
        calib = ckpt["calibration"]
    else:
        # The default recipe's test-time views are part of the graph a device runs.
        pipe = Pipeline(ArchConfig(), PreprocessConfig(view_rotations=make_config().view_rotations))
        calib = {"score": "msp", "temperature": 1.0, "threshold": 0.9}
    rows = []
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        model = GatedModel(pipe, calib).to(dev).eval()
        for b in args.batches:
            if dev.type == "cpu" and b > 16384:
                continue
            rows.append({"device": str(dev), "batch": b, "img_s": throughput(model, dev, b)})
    print(f"{'device':<8} {'batch':>7} {'images/s':>14}")
    for r in rows:
        print(f"{r['device']:<8} {r['batch']:>7} {r['img_s']:>14,.0f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

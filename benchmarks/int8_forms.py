"""int8 on the CPU: the shipped QDQ file vs its QOperator form vs fp32, with ONNX Runtime's
per-operator profile, to say why int8 is slower here and what is faster.

    .venv/bin/python benchmarks/int8_forms.py [ARTIFACT]   # default artifacts/lenet (needs model.onnx)
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from exporters import calibration_sample
from exporters.onnx_export import quantize_int8
from exporters.targets import DEFAULTS
from toolchain.data import embedded_mnist


def session(path: Path, threads: int, profile: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def throughput(path: Path, x: np.ndarray, threads: int, seconds: float = 2.0) -> float:
    s = session(path, threads)
    for _ in range(3):
        s.run(None, {"image": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        s.run(None, {"image": x})
        n += len(x)
    return n / (time.perf_counter() - t0)


def op_shares(path: Path, x: np.ndarray, threads: int) -> list[tuple[str, float]]:
    s = session(path, threads, profile=True)
    for _ in range(10):
        s.run(None, {"image": x})
    trace = s.end_profiling()
    events = json.load(open(trace))
    os.unlink(trace)
    c: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            c[e["args"]["op_name"]] += e["dur"]
    total = sum(c.values())
    return [(k, 100 * v / total) for k, v in c.most_common(4)]


def main() -> None:
    art = Path(sys.argv[1] if len(sys.argv) > 1 else "artifacts/lenet")
    fp32 = art / "model.onnx"
    # The exporter's own quantization and calibration sample, so the forms are the shipped int8 file's.
    calib = calibration_sample(art, embedded_mnist("train").images[:, None], DEFAULTS["calibration_images"])
    x = embedded_mnist("test").images[:1024, None].copy()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        # The exporter quantizes the second convolution only (exporters.onnx_export.quantize_int8).
        variants = {"fp32": fp32}
        for name, fmt in (("int8 QDQ (s8s8), second conv (shipped)", "qdq"),
                          ("int8 QOperator (u8s8), second conv", "qoperator")):
            p = Path(d) / f"{len(variants)}.onnx"
            quantize_int8(fp32, p, calib, fmt)
            variants[name] = p
        for threads in (1, 2):
            base = None
            for name, p in variants.items():
                t = throughput(p, x, threads)
                base = base or t
                rows.append((threads, name, t, t / base, op_shares(p, x, threads) if threads == 2 else []))
    print(f"{'threads':>7}  {'model':<40} {'img/s (batch 1024)':>19} {'vs fp32':>8}  top operators (share of kernel time)")
    for threads, name, t, r, ops in rows:
        print(f"{threads:>7}  {name:<40} {t:>19,.0f} {r:>7.2f}x  " + ", ".join(f"{k} {v:.0f}%" for k, v in ops))


if __name__ == "__main__":
    main()

"""Field rendering and the torch twin of runtime.preprocess: crops per second on each device,
beside numpy's preprocess_batch on the CPU in the same run.

    python3 benchmarks/field_gpu.py --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import preprocess_batch  # noqa: E402
from toolchain import field  # noqa: E402
from toolchain.data import embedded_mnist  # noqa: E402


def _rate(fn, n: int, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def _device_rows(dev: str, x: torch.Tensor, crops: torch.Tensor, n: int) -> list[dict]:
    """Render and twin crops/s on ``dev`` (synchronised, so GPU time is counted)."""
    xd, cd = x.to(dev), crops.to(dev)
    g = torch.Generator(device=dev).manual_seed(0)

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()
    return [{"what": "render", "device": dev, "crops_s": _rate(lambda: (field.render(xd, field.TRAIN_LEVEL, g), sync()), n)},
            {"what": "torch twin", "device": dev, "crops_s": _rate(lambda: (field.preprocess_torch(cd), sync()), n)}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    x = torch.from_numpy(embedded_mnist("test").images[:args.batch, None].copy()).float() / 255.0
    rows = []
    crops_cpu = field.render(x, field.TRAIN_LEVEL, torch.Generator().manual_seed(0))
    u8 = torch.round(crops_cpu * 255).to(torch.uint8).numpy()
    rows.append({"what": "numpy preprocess_batch", "device": "cpu",
                 "crops_s": _rate(lambda: preprocess_batch(u8), args.batch)})
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        rows.extend(_device_rows(dev, x, crops_cpu, args.batch))
    for r in rows:
        print(f"{r['what']:<24} {r['device']:<5} {r['crops_s']:>12,.0f} crops/s (batch {args.batch})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""CUDA: training with data resident on the GPU, the gated graph and the field's torch twin of
runtime.preprocess on the GPU (skipped without one).

Also runnable without pytest (the GPU machines' stock image has none):
``PYTHONPATH=. python3 tests/test_cuda.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]


def test_train_on_cuda_learns(tmp_path, small_split):
    from toolchain.train import fit, make_config
    tr, _ = small_split
    res = fit(make_config(epochs=2, device="cuda"), tr, tmp_path)
    assert res.device.startswith("cuda") and res.history[-1]["val_accuracy"] > 0.85


def test_gated_graph_same_on_cuda_and_cpu(artifact, mnist_test):
    from exporters.graph import GatedModel
    from exporters.onnx_export import load_calibrated
    ckpt, _, pipe = load_calibrated(artifact)
    model = GatedModel(pipe, ckpt["calibration"]).eval()
    x = torch.from_numpy(mnist_test.images[:2000, None].copy())
    with torch.inference_mode():
        cpu = model(x)
        gpu = [t.cpu() for t in model.cuda()(x.cuda())]  # cuDNN's default: TF32 convolutions on Ampere and later
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            exact = [t.cpu() for t in model(x.cuda())]
    # In full fp32 the GPU matches the CPU to float rounding; TF32's 10-bit mantissa moves
    # logits by ~1e-3 (1.5e-3 measured on an H100), which may flip a near-threshold decision.
    assert np.abs(cpu[0].numpy() - exact[0].numpy()).max() < 1e-4
    assert (cpu[2] == exact[2]).float().mean() > 0.9995 and (cpu[3] == exact[3]).float().mean() > 0.9995
    assert np.abs(cpu[0].numpy() - gpu[0].numpy()).max() < 1e-2
    assert (cpu[2] == gpu[2]).float().mean() > 0.999 and (cpu[3] == gpu[3]).float().mean() > 0.999


def test_field_twin_on_cuda_matches_numpy(mnist_test):
    from runtime import preprocess_batch
    from toolchain import field
    x = torch.from_numpy(mnist_test.images[:512, None].copy()).float().cuda() / 255.0
    crops = field.render(x, field.HARSH, torch.Generator(device="cuda").manual_seed(0))
    frames, code = field.preprocess_torch(crops)
    ref = preprocess_batch(torch.round(crops * 255).to(torch.uint8).cpu().numpy())
    ok = (code.cpu().numpy() == 0) & ref.ok
    assert ok.mean() > 0.97 and ((code.cpu().numpy() == 0) == ref.ok).mean() > 0.99
    diff = np.abs(torch.round(frames * 255).cpu().numpy().astype(int) - ref.images.astype(int))
    assert np.mean(diff[ok].reshape(ok.sum(), -1).max(1) <= 1) > 0.97


if __name__ == "__main__":  # the same checks with hand-made fixtures, for a machine without pytest
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from toolchain import jobs
    from toolchain.data import Dataset, embedded_mnist
    from toolchain.gate import GateConfig
    from toolchain.train import make_config
    if not torch.cuda.is_available():
        print("SKIP: no CUDA GPU on this machine")
        sys.exit(0)
    train, test = embedded_mnist("train"), embedded_mnist("test")
    split = (Dataset(train.images[:6000], train.labels[:6000], "mnist[:6000]"),
             Dataset(test.images[:2000], test.labels[:2000], "mnist-test[:2000]"))
    import json
    import traceback
    passed = failed = 0
    with tempfile.TemporaryDirectory() as d:
        art = Path(d) / "art"

        def gated_graph() -> None:
            jobs.train(make_config("default", epochs=3, device="cuda"), art, *split,
                       gate_cfg=GateConfig(target_risk=0.02, delta=0.1))
            test_gated_graph_same_on_cuda_and_cpu(art, test)

        for check in (lambda: test_train_on_cuda_learns(Path(d) / "a", split), gated_graph,
                      lambda: test_field_twin_on_cuda_matches_numpy(test)):
            try:
                check()
                passed += 1
            except Exception:  # report every failure and go on, as pytest would
                traceback.print_exc()
                failed += 1
    print(f"{passed} passed, {failed} failed")
    if len(sys.argv) > 2 and sys.argv[1] == "--json":
        Path(sys.argv[2]).write_text(json.dumps({"passed": passed, "failed": failed}))
    sys.exit(1 if failed else 0)

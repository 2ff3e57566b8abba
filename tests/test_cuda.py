"""CUDA: training with data resident on the GPU, and the gated graph on the GPU (skipped without one)."""

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
        gpu = [t.cpu() for t in model.cuda()(x.cuda())]
    assert np.abs(cpu[0].numpy() - gpu[0].numpy()).max() < 1e-3
    assert (cpu[2] == gpu[2]).float().mean() > 0.999

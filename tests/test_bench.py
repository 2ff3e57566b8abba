"""lenet-tool bench: the runtime timed beside its baselines, every ratio what its name says."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from toolchain.cli import main


@pytest.fixture(scope="module")
def art(onnx_artifact):
    return onnx_artifact


def b_text(art) -> str:
    r = CliRunner().invoke(main, ["bench", str(art), "--iters", "100", "--seconds", "0.02", "--no-check"])
    assert r.exit_code == 0, r.output
    return r.output


def test_bench_reports_baselines(art):
    r = CliRunner().invoke(main, ["bench", str(art), "--iters", "200", "--seconds", "0.05", "--no-check", "--json",
                                  "--soak", "2000"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    one = res["results"][0]
    from runtime.backends import BACKENDS
    with_ov = {"openvino"} if BACKENDS["openvino"].available()[0] else set()
    assert set(one["latency_us"]) == {"classifier", "bare_session", "torch_eager", "crop_to_decision"} | with_ov
    # Crop to decision is the preprocessing plus the model call: never faster than the call alone.
    assert one["latency_us"]["crop_to_decision"]["p50"] > one["latency_us"]["classifier"]["p50"]
    pre = one["preprocess_us"]
    assert pre["crop_480_p50_us"] > 0 and pre["crop_64_p50_us"] > 0 and pre["batch_64_per_crop_us"] > 0
    assert "runtime.preprocess p50: 64x64 crop" in b_text(art)
    assert pre["numpy"] == np.__version__ and f"numpy {np.__version__})" in b_text(art)
    thr, lu, q = one["throughput_img_s"], one["latency_us"], one["ratios"]
    assert set(thr) == {"1", "32", "256", "1024"}
    assert all(v > 0 for runners in thr.values() for v in runners.values())
    # every ratio is the one its name says, from the figures printed beside it
    assert q["p50_vs_bare"] == pytest.approx(lu["classifier"]["p50"] / lu["bare_session"]["p50"])
    assert q["speedup_vs_torch"] == pytest.approx(lu["torch_eager"]["p50"] / lu["classifier"]["p50"])
    assert q["throughput_1024_vs_bare"] == pytest.approx(thr["1024"]["classifier"] / thr["1024"]["bare_session"])
    if with_ov:  # OpenVINO beside ONNX Runtime, same run
        assert q["openvino_p50_vs_classifier"] == pytest.approx(lu["openvino"]["p50"] / lu["classifier"]["p50"])
        assert thr["1024"]["openvino"] > 0
    for runner in ("classifier", "bare_session", "torch_eager"):
        assert 0 < lu[runner]["p50"] <= lu[runner]["p99"]
    assert res["soak"]["predictions"] == 2000 and res["import_runtime_seconds"] > 0


def test_runners_behind_a_ratio_are_timed_in_turns():
    """Each runner's calls come in blocks that take turns with the others', every block after
    untimed warm-up calls; the throughputs likewise."""
    import numpy as np

    from toolchain.bench import _latencies_together, _throughput_together
    calls: list[str] = []
    runners = {k: (lambda x, k=k: calls.append(k)) for k in "abc"}
    lat = _latencies_together(runners, np.zeros(1), iters=40, blocks=4)
    assert {k: len(v) for k, v in lat.items()} == {"a": 40, "b": 40, "c": 40}
    runs = [k for i, k in enumerate(calls) if i == 0 or calls[i - 1] != k]  # one entry per block
    assert runs == list("abc") * 4
    calls.clear()
    thr = _throughput_together(runners, np.zeros(3), seconds=0.004, blocks=2)
    assert set(thr) == set("abc") and all(v > 0 for v in thr.values())
    assert [k for i, k in enumerate(calls) if i == 0 or calls[i - 1] != k] == list("abc") * 2

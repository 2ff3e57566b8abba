"""``lenet-tool serve``: a live Triton Inference Server on loopback (free ports), started and stopped
by the tests. Needs the [serve] extra (nvidia-pytriton ships tritonserver); skips with that reason
where it is not installed."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pytriton.triton", reason="nvidia-pytriton (tritonserver) is not installed: pip install '.[serve]'")
pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install '.[serve]'")

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from runtime import Classifier
from toolchain.cli import main
from toolchain.serve import ServeOptions, check_ports, free_ports, launch, python_libdir_fix


@pytest.fixture(scope="module")
def server(onnx_artifact):
    s = launch(onnx_artifact / "model.onnx")
    yield s
    rc, _ = s.terminate()
    assert rc == 0, "\n".join(s.lines[-20:])


def _infer(url: str, images: np.ndarray, grpc: bool = False) -> dict[str, np.ndarray]:
    mod = grpcclient if grpc else httpclient
    c = mod.InferenceServerClient(url)
    try:
        i = mod.InferInput("image", list(images.shape), "UINT8")
        i.set_data_from_numpy(images)
        r = c.infer("lenet", [i])
        return {k: r.as_numpy(k) for k in ("logits", "confidence", "label", "accepted")}
    finally:
        c.close()


def test_ready_line_and_interface(server, onnx_artifact):
    line = server.lines[-1]
    assert line.startswith("Serving 'lenet' (model.onnx on onnxruntime, gate threshold ") and "ready in" in line
    c = httpclient.InferenceServerClient(server.http_url)
    try:
        assert c.is_model_ready("lenet")
        cfg = c.get_model_config("lenet")
    finally:
        c.close()
    assert cfg["max_batch_size"] == 1024
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [64]
    assert [(t["name"], t["data_type"], t["dims"]) for t in cfg["input"]] == [("image", "TYPE_UINT8", [1, 28, 28])]
    # The same names, types and dims as the repository 'export --target triton' writes.
    from exporters.triton import io_spec
    with Classifier(onnx_artifact / "model.onnx") as clf:
        _, outputs = io_spec(clf.metadata)
    assert [(t["name"], t["data_type"], t["dims"]) for t in cfg["output"]] == \
        [(s.name, s.triton_type, list(s.dims)) for s in outputs]
    # Triton's Prometheus metrics, on their own port, name the model.
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'nv_inference_request_success{model="lenet"' in text


def test_served_decisions_equal_the_classifier_on_all_test_images(server, onnx_artifact, mnist_test):
    images = mnist_test.images[:, None]
    with Classifier(onnx_artifact / "model.onnx") as clf:
        want = clf.predict(images)
    got = {k: [] for k in ("logits", "confidence", "label", "accepted")}
    for start in range(0, len(images), 1000):  # HTTP, 1,000 images a request
        for k, v in _infer(server.http_url, images[start:start + 1000]).items():
            got[k].append(v)
    got = {k: np.concatenate(v) for k, v in got.items()}
    assert len(got["label"]) == len(images) == 10000
    assert got["label"].shape == (10000, 1) and got["label"].dtype == np.int64
    assert np.array_equal(got["label"][:, 0], want.labels)
    assert np.array_equal(got["accepted"][:, 0], want.accepted)
    assert np.abs(got["confidence"][:, 0] - want.confidences).max() <= 1e-6
    assert np.abs(got["logits"] - want.logits).max() <= 1e-5
    # gRPC, and batch-1 requests that dynamic batching groups: the same answers.
    g = _infer(server.grpc_url, images[:300], grpc=True)
    assert np.array_equal(g["label"][:, 0], want.labels[:300]) and np.array_equal(g["accepted"][:, 0], want.accepted[:300])
    results: dict[int, dict] = {}

    def one(k: int) -> None:
        results[k] = _infer(server.http_url, images[k:k + 1])
    threads = [threading.Thread(target=one, args=(k,)) for k in range(64)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert [int(results[k]["label"][0, 0]) for k in range(64)] == want.labels[:64].tolist()
    assert max(abs(float(results[k]["confidence"][0, 0]) - float(want.confidences[k])) for k in range(64)) <= 1e-6


def _raw(port: int, header: dict, body: bytes, header_len: int | None = None) -> tuple[int, str]:
    """POST a KServe v2 request by hand, so the body can be wrong in ways a client library would not allow."""
    head = json.dumps(header).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v2/models/lenet/infer", body=head + body,
                     headers={"Inference-Header-Content-Length": str(len(head) if header_len is None else header_len)})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def _request(shape: list[int], dtype: str, nbytes: int) -> dict:
    return {"inputs": [{"name": "image", "shape": shape, "datatype": dtype, "parameters": {"binary_data_size": nbytes}}],
            "outputs": [{"name": "label", "parameters": {"binary_data": False}}]}


BAD = [
    ("wrong dtype", _request([2, 1, 28, 28], "FP32", 2 * 784 * 4), 2 * 784 * 4,
     "inference input 'image' data-type is 'FP32', but model 'lenet' expects 'UINT8'"),
    ("wrong shape", _request([2, 1, 28, 27], "UINT8", 2 * 28 * 27), 2 * 28 * 27,
     "unexpected shape for input 'image' for model 'lenet'. Expected [-1,1,28,28], got [2,1,28,27]"),
    ("empty batch", _request([0, 1, 28, 28], "UINT8", 0), 0, "input byte size mismatch for input 'image'"),
    ("batch above the maximum", _request([1025, 1, 28, 28], "UINT8", 1025 * 784), 1025 * 784,
     "inference request batch-size must be <= 1024 for 'lenet'"),
    ("truncated body", _request([2, 1, 28, 28], "UINT8", 2 * 784), 700,
     "unexpected size for input 'image', expecting 868 additional bytes"),
]


@pytest.mark.parametrize("what,header,nbytes,message", BAD, ids=[b[0] for b in BAD])
def test_bad_request_gets_triton_error_and_server_keeps_serving(server, onnx_artifact, mnist_test, what, header,
                                                                nbytes, message):
    status, body = _raw(server.http_port, header, bytes(nbytes))
    assert status == 400, body
    assert message in json.loads(body)["error"]
    good = _infer(server.http_url, mnist_test.images[:8, None])  # the next request is answered correctly
    with Classifier(onnx_artifact / "model.onnx") as clf:
        assert np.array_equal(good["label"][:, 0], clf.predict(mnist_test.images[:8]).labels)


def test_bad_request_through_the_client_library(server):
    c = httpclient.InferenceServerClient(server.http_url)
    try:
        x = np.zeros((1, 1, 28, 28), np.float32)
        i = httpclient.InferInput("image", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException, match="data-type is 'FP32', but model 'lenet' expects 'UINT8'"):
            c.infer("lenet", [i])
        with pytest.raises(InferenceServerException, match="unknown model"):
            c.infer("no-such-model", [i])
    finally:
        c.close()


def test_sigterm_drains_in_flight_requests_and_exits_0(onnx_artifact):
    s = launch(onnx_artifact / "model.onnx", "--instances", "2", "--drain-timeout", "3")
    assert "2 instances" in s.lines[-1]
    signalled = threading.Event()
    log: list[tuple[float, bool, str]] = []
    lock = threading.Lock()
    x = np.zeros((4, 1, 28, 28), np.uint8)

    def client() -> None:
        c = httpclient.InferenceServerClient(s.http_url, connection_timeout=5, network_timeout=30)
        for _ in range(20000):  # bounded; ends soon after the signal
            i = httpclient.InferInput("image", list(x.shape), "UINT8")
            i.set_data_from_numpy(x)
            t0 = time.perf_counter()
            try:
                ok, err = c.infer("lenet", [i]).as_numpy("label").shape == (4, 1), ""
            except Exception as e:
                ok, err = False, repr(e)
            with lock:
                log.append((t0, ok, err))
            if signalled.is_set() and not ok:
                break
        c.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    [t.start() for t in threads]
    time.sleep(2.0)
    t_signal = time.perf_counter()
    signalled.set()
    rc, seconds = s.terminate(timeout=60)
    [t.join(60) for t in threads]
    assert rc == 0, "\n".join(s.lines[-20:])
    before = [e for e in log if e[0] < t_signal]
    assert len(before) > 20
    assert all(ok for _, ok, _ in before), [e for e in before if not e[1]][:3]  # nothing sent before it was lost
    assert any(line.startswith("SIGTERM: draining in-flight requests") for line in s.lines)
    assert any(line.startswith("Stopped in ") for line in s.lines)
    assert seconds < 60  # a hang guard only; the figure is serve_bench's


def test_options_and_environment_checks(onnx_artifact, tmp_path):
    with pytest.raises(ValueError, match=r"--preferred-batch 128: expected at most --max-batch \(64\)"):
        ServeOptions(max_batch=64, preferred_batch=128).check()
    with pytest.raises(ValueError, match=r"--http-port 0: expected 1..65535"):
        ServeOptions(http_port=0).check()
    with pytest.raises(ValueError, match="expected three different ports"):
        ServeOptions(http_port=9000, grpc_port=9000).check()
    with pytest.raises(ValueError, match="--model-name 'a b'"):
        ServeOptions(model_name="a b").check()
    import os
    cores = len(os.sched_getaffinity(0))
    r = ServeOptions().resolved()
    assert r.instances == min(4, cores) and r.threads == max(1, cores // r.instances)
    assert ServeOptions(instances=1).resolved().threads == cores and ServeOptions(threads=3).resolved().threads == 3
    with pytest.raises(ValueError, match="--instances 0: expected 1..64"):
        ServeOptions(instances=0).check()
    import socket
    port = free_ports(1)[0]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        with pytest.raises(ValueError, match=f"--http-port {port}: cannot listen on 127.0.0.1:{port}"):
            check_ports("127.0.0.1", {"http": port})
    env = {"LD_LIBRARY_PATH": "/opt/x"}
    added = python_libdir_fix(env)
    if added is not None:  # a shared libpython: its folder goes first, once
        assert env["LD_LIBRARY_PATH"] == f"{added}:/opt/x"
        assert python_libdir_fix(env) is None and env["LD_LIBRARY_PATH"] == f"{added}:/opt/x"
    r = CliRunner().invoke(main, ["serve", str(tmp_path), "--http-port", "18000"])
    assert r.exit_code == 2 and "model.onnx: no such file: export it first" in r.output


RACE_LOG = ('E1203 01:01:07.241721 pb_stub.cc:366] "Failed to initialize Python stub: TritonModelException: Model '
            'initialize error: Traceback (most recent call last):\\n  File \\"/tmp/folderUIBKqT/1/model.py\\", line 425, '
            'in initialize\\n    inference_handler_config = get_config_from_handshake_server(handshake_socket)\\n'
            '  [...]\\nConnectionRefusedError: [Errno 111] Connection refused\\n"\n')


class _FakeTriton:
    """pytriton.triton's Triton, failing its first ``fails`` starts as the log says."""

    starts = 0

    def __init__(self, config) -> None:
        self.config = config

    def bind(self, **kw) -> None:
        pass

    def run(self) -> None:
        _FakeTriton.starts += 1
        if _FakeTriton.starts <= _FakeTriton.fails:
            Path(self.config.log_file).write_text(_FakeTriton.log)
            raise RuntimeError("Model lenet:1 failed to load")

    def stop(self) -> None:
        pass

    def get_access_token(self) -> str:
        return "fake"


@pytest.mark.parametrize("fails, log, started", [(1, RACE_LOG, True), (3, RACE_LOG, False),
                                                 (1, "E1203 some other load error\n", False)])
def test_pytritons_start_up_race_starts_triton_again(onnx_artifact, monkeypatch, fails, log, started):
    # With two instances, PyTriton 0.7.0's second stub can connect to the first's handshake socket
    # between its bind and its listen: refused, the model fails to load (one fresh-clone CI run).
    # Started again, up to START_TRIES times in all; any other failure is the user's to see at once.
    import types

    import toolchain.serve as serve
    fake = types.SimpleNamespace(TritonConfig=types.SimpleNamespace, Triton=_FakeTriton)
    monkeypatch.setattr(serve, "_pytriton", lambda: fake)
    monkeypatch.setattr(_FakeTriton, "starts", 0)
    monkeypatch.setattr(_FakeTriton, "fails", fails, raising=False)
    monkeypatch.setattr(_FakeTriton, "log", log, raising=False)
    h, g, m = free_ports(3)
    s = serve.Server(onnx_artifact / "model.onnx", ServeOptions(address="127.0.0.1", http_port=h, grpc_port=g,
                                                                metrics_port=m, instances=2))
    if started:
        s.start()
        assert s.restarts == 1 and _FakeTriton.starts == 2
        assert s.describe().endswith("(started 2 times: PyTriton's start-up race)")
        s._triton = None  # the fake has no server to unload
        s.stop()
    else:
        with pytest.raises(serve.ServeError, match="did not start"):
            s.start()
        assert _FakeTriton.starts == (serve.START_TRIES if fails >= serve.START_TRIES and log == RACE_LOG else 1)


def test_missing_pytriton_is_a_clear_error(onnx_artifact, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "pytriton.triton", None)
    h, g, m = free_ports(3)
    r = CliRunner().invoke(main, ["serve", str(onnx_artifact), "--http-port", str(h), "--grpc-port", str(g),
                                  "--metrics-port", str(m)])
    assert r.exit_code == 2
    assert "serving needs nvidia-pytriton" in r.output and "pip install 'lenet-tool[serve]'" in r.output

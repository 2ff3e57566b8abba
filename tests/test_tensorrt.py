"""TensorRT: sidecar and plan checks run everywhere; building and running need TensorRT and a GPU,
which cannot be installed on this project's machines (NVIDIA's index is unreachable), so those skip."""

from __future__ import annotations

import json

import pytest

from exporters.tensorrt import sidecar
from runtime.backends.trt import check_plan, read_sidecar, sidecar_path
from runtime.fileio import ArtifactError
from runtime.metadata import MetadataError

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False
needs_trt = pytest.mark.skipif(not HAVE_TRT, reason="TensorRT is not installable on this project's machines "
                                                      "(its wheels come from NVIDIA's index, which they cannot reach)")


def _meta() -> dict:
    return {"schema_version": 1, "class_names": [str(i) for i in range(10)], "input": {"name": "image"},
            "outputs": {}, "preprocessing": {}, "gate": {"threshold": 0.9, "method": "guaranteed", "score": "msp"},
            "precision": "fp32", "provenance": {}}


@pytest.fixture
def plan(tmp_path):
    p = tmp_path / "model.engine"
    p.write_bytes(b"serialized plan bytes")
    src = tmp_path / "model.onnx"
    src.write_bytes(b"onnx")
    side = sidecar(_meta(), p.read_bytes(), {"tensorrt_version": "10.9.0", "compute_capability": "9.0",
                                             "profile": {"min": 1, "opt": 32, "max": 1024}}, src)
    sidecar_path(p).write_text(json.dumps(side))
    return p


def test_sidecar_format(plan):
    meta = read_sidecar(plan)
    t = meta["tensorrt"]
    assert t["source_onnx"] == "model.onnx" and len(t["plan_sha256"]) == 64
    assert t["profile"] == {"min": 1, "opt": 32, "max": 1024} and t["precision"] == "fp32"
    check_plan(plan, meta, "10.9.0", "9.0")  # all match: no error
    assert plan.read_bytes() == b"serialized plan bytes"  # the plan itself stays bare


def test_plan_without_sidecar(plan):
    sidecar_path(plan).unlink()
    with pytest.raises(MetadataError, match=r"no sidecar model.engine.json beside the plan.*export --target trt"):
        read_sidecar(plan)


def test_tampered_plan_version_and_gpu_mismatch(plan):
    meta = read_sidecar(plan)
    with pytest.raises(ArtifactError, match="built with TensorRT 10.9.0, this machine has TensorRT 11.0.0.*rebuild"):
        check_plan(plan, meta, "11.0.0", "9.0")
    with pytest.raises(ArtifactError, match="built for compute capability 9.0, this GPU is 8.6.*rebuild"):
        check_plan(plan, meta, "10.9.0", "8.6")
    plan.write_bytes(b"serialized plan bytez")
    with pytest.raises(ArtifactError, match="does not match the sidecar's.*changed or replaced after export"):
        check_plan(plan, meta, None, None)


def test_future_sidecar_schema(plan):
    side = json.loads(sidecar_path(plan).read_text())
    side["schema_version"] = 7
    sidecar_path(plan).write_text(json.dumps(side))
    with pytest.raises(MetadataError, match="schema_version 7 is newer than this runtime reads"):
        read_sidecar(plan)


@pytest.mark.tensorrt
@needs_trt
def test_build_and_run_plan(artifact):  # pragma: no cover - needs TensorRT and a GPU
    import numpy as np

    import exporters
    from runtime import Classifier
    exporters.export(artifact, "onnx", test_images=np.zeros((4, 1, 28, 28), np.uint8), test_labels=None)
    exporters.export(artifact, "trt", test_images=np.zeros((4, 1, 28, 28), np.uint8), test_labels=None, max_batch=64)
    clf = Classifier(artifact / "model.engine")
    onnx_clf = Classifier(artifact / "model.onnx")
    x = np.random.default_rng(0).integers(0, 256, (100, 1, 28, 28), dtype=np.uint8)
    assert np.array_equal(clf.predict(x).labels, onnx_clf.predict(x).labels)


# --------------------------------------------------------------------------- the builder, against a stand-in
# TensorRT cannot be installed here: these run build_plan against a stand-in module that records
# what the builder was told, shaped on the TensorRT 10/11 Python API (the calls build_plan makes).

class _Cache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return b"cache from this build"


class _Config:
    def __init__(self, accept_cache: bool) -> None:
        self.cleared, self.accept_cache, self.cache = [], accept_cache, None

    def set_memory_pool_limit(self, pool, size):
        self.pool = (pool, size)

    def clear_flag(self, flag):
        self.cleared.append(flag)

    def create_timing_cache(self, data):
        return _Cache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        ok = self.accept_cache or not cache.data  # another GPU's cache is refused, an empty one never
        if ok:
            self.cache = cache
        return ok

    def get_timing_cache(self):
        return self.cache

    def add_optimization_profile(self, profile):
        self.profile = profile


def _fake_trt(accept_cache: bool = True):
    import types
    config = _Config(accept_cache)
    profile = types.SimpleNamespace(set_shape=lambda *a: None)
    builder = types.SimpleNamespace(create_network=lambda flags: object(), create_builder_config=lambda: config,
                                    create_optimization_profile=lambda: profile,
                                    build_serialized_network=lambda network, cfg: b"plan bytes")
    trt = types.SimpleNamespace(
        __version__="10.9.0", Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
        Builder=lambda logger: builder, NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=0),
        OnnxParser=lambda network, logger: types.SimpleNamespace(parse=lambda data: True),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"), BuilderFlag=types.SimpleNamespace(TF32="TF32"))
    return trt, config


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    import sys

    import exporters.tensorrt as et

    def install(accept_cache: bool = True):
        trt, config = _fake_trt(accept_cache)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(et, "compute_capability", lambda device=0: "9.0")
        (tmp_path / "model.onnx").write_bytes(b"onnx bytes")
        return config
    return install


def test_fp32_plans_are_built_without_tf32(stand_in, tmp_path):
    from exporters.tensorrt import build_plan
    config = stand_in()
    plan, build = build_plan(tmp_path / "model.onnx", min_batch=1, opt_batch=8, max_batch=64, workspace_mib=16,
                             timing_cache=None, precision="fp32")
    assert plan == b"plan bytes" and config.cleared == ["TF32"] and build["tf32"] is False
    config = stand_in()
    _, build = build_plan(tmp_path / "model.onnx", min_batch=1, opt_batch=8, max_batch=64, workspace_mib=16,
                          timing_cache=None, precision="fp16")
    assert config.cleared == [] and build["tf32"] is True


def test_a_timing_cache_from_another_gpu_is_replaced_not_fatal(stand_in, tmp_path):
    from exporters.tensorrt import build_plan
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"cache from an A100")
    stand_in(accept_cache=False)
    with pytest.warns(UserWarning, match="a timing cache from another GPU or TensorRT version; building without it"):
        plan, _ = build_plan(tmp_path / "model.onnx", min_batch=1, opt_batch=8, max_batch=64, workspace_mib=16,
                             timing_cache=cache)
    assert plan == b"plan bytes" and cache.read_bytes() == b"cache from this build"
    stand_in(accept_cache=True)  # a cache this GPU wrote is used and rewritten
    build_plan(tmp_path / "model.onnx", min_batch=1, opt_batch=8, max_batch=64, workspace_mib=16, timing_cache=cache)
    assert cache.read_bytes() == b"cache from this build"


# --------------------------------------------------------------------------- the backend, against a stand-in

class _Ctx:
    def __init__(self, engine):
        self.engine, self.shape = engine, None

    def set_input_shape(self, name, shape):
        ok = self.engine.lo <= shape[0] <= self.engine.hi
        self.shape = shape if ok else None
        return ok

    def set_tensor_address(self, name, ptr):
        pass

    def get_tensor_shape(self, name):
        n = self.shape[0] if self.shape else -1  # TensorRT gives -1 dims after a refused shape
        return {"logits": (n, 10)}.get(name, (n,))

    def execute_async_v3(self, stream):
        self.engine.gate.wait(5)
        return True


class _Engine:
    def __init__(self, lo, hi):
        import threading
        self.lo, self.hi, self.gate = lo, hi, threading.Event()
        self.gate.set()

    def create_execution_context(self):
        return _Ctx(self)


class _Cudart:
    """Records the devices set (one call a new thread), and what is allocated and freed."""

    def __init__(self):
        import itertools
        self.device_of, self.live, self.streams = [], set(), set()
        self._ids = itertools.count(1)
        self.cudaMemcpyKind = type("K", (), {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2})

    def cudaSetDevice(self, d):
        self.device_of.append(d)
        return (0,)

    def cudaStreamCreate(self):
        s = next(self._ids)
        self.streams.add(s)
        return (0, s)

    def cudaStreamDestroy(self, s):
        self.streams.discard(s)
        return (0,)

    def cudaMalloc(self, n):
        p = next(self._ids)
        self.live.add(p)
        return (0, p)

    def cudaFree(self, p):
        self.live.discard(p)
        return (0,)

    def cudaMemcpyAsync(self, *a):
        return (0,)

    def cudaStreamSynchronize(self, s):
        return (0,)


def _backend(lo=4, hi=16, device=1):
    import numpy as np

    from runtime.backends.trt import TensorRTBackend
    b = TensorRTBackend.__new__(TensorRTBackend)  # what _load sets, without a GPU
    b.path, b.metadata, b._cudart, b._engine = "model.engine", {}, _Cudart(), _Engine(lo, hi)
    b._dtypes = {"logits": np.dtype(np.float32), "confidence": np.dtype(np.float32), "label": np.dtype(np.int64),
                 "accepted": np.dtype(np.bool_)}
    b._init_state(device, lo, hi)
    return b


def test_batches_below_and_above_the_profile_run():
    import numpy as np
    b = _backend(lo=4, hi=16)
    for n in (1, 3, 4, 16, 40):
        out = b.run(np.zeros((n, 1, 28, 28), np.uint8))
        assert out["logits"].shape == (n, 10) and out["accepted"].shape == (n,)


def test_a_refused_input_shape_is_an_error_not_a_crash():
    import numpy as np
    b = _backend(lo=4, hi=16)
    b._min_batch = 1  # a sidecar that claims more than the plan takes
    with pytest.raises(ValueError, match=r"TensorRT refused input shape \(2, 1, 28, 28\): the plan's profile takes "
                                         "batches of 1 to 16"):
        b.run(np.zeros((2, 1, 28, 28), np.uint8))


def test_every_thread_runs_on_the_device_asked_for():
    import threading

    import numpy as np
    b = _backend(device=1)
    threads = [threading.Thread(target=b.run, args=(np.zeros((4, 1, 28, 28), np.uint8),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b._cudart.device_of == [1, 1, 1, 1]  # one context a thread, each made on device 1


def test_close_waits_for_runs_in_flight_then_frees_every_threads_resources():
    import threading
    import time

    import numpy as np
    b = _backend()
    b.run(np.zeros((4, 1, 28, 28), np.uint8))  # this thread's context
    b._engine.gate.clear()  # the next run blocks inside execute
    t = threading.Thread(target=b.run, args=(np.zeros((4, 1, 28, 28), np.uint8),))
    t.start()
    time.sleep(0.2)
    with pytest.raises(RuntimeError, match=r"1 TensorRT run\(s\) still in flight after 0.1 s"):
        b.close(timeout=0.1)
    assert b._cudart.live  # nothing freed under a running thread
    b._engine.gate.set()
    t.join()
    b.close()
    assert not b._cudart.live and not b._cudart.streams and b._engine is None
    with pytest.raises(RuntimeError, match="this TensorRT backend was closed"):
        b.run(np.zeros((4, 1, 28, 28), np.uint8))

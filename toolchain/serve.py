"""``lenet-tool serve``: the gated Classifier behind NVIDIA Triton Inference Server, through PyTriton.

The server is Triton's own ``tritonserver`` (HTTP/gRPC, dynamic batching, metrics), shipped in the
``nvidia-pytriton`` wheel; PyTriton's Python backend hands each batch Triton forms to a
:class:`runtime.Classifier` in this process. The model is bound under the name, inputs and outputs
that ``lenet-tool export --target triton`` writes (:func:`exporters.triton.io_spec`), so a client
written against one works against the other.
"""

from __future__ import annotations

import os
import signal
import socket
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.targets import DEFAULTS as REPOSITORY_DEFAULTS
from exporters.triton import check_model_name, io_spec

DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


class ServeUnavailable(RuntimeError):
    """nvidia-pytriton (which ships tritonserver) is not installed or cannot run here."""


class ServeError(RuntimeError):
    """Triton did not start, or exited while serving."""


@dataclass(frozen=True)
class ServeOptions:
    """What ``lenet-tool serve`` takes (the CLI's defaults are these). Name, batch size and dynamic
    batching default to what ``export --target triton`` writes, so the served model and the
    exported repository agree unless asked otherwise."""

    model_name: str = REPOSITORY_DEFAULTS["model_name"]
    backend: str = "auto"
    address: str = "0.0.0.0"
    http_port: int = DEFAULT_PORTS["http"]
    grpc_port: int = DEFAULT_PORTS["grpc"]
    metrics_port: int = DEFAULT_PORTS["metrics"]
    max_batch: int = REPOSITORY_DEFAULTS["max_batch"]
    instances: int | None = None  # None: one per CPU core, at most 4 (see resolved())
    preferred_batch: int = REPOSITORY_DEFAULTS["preferred_batch"]
    queue_delay_us: int = REPOSITORY_DEFAULTS["queue_delay_us"]
    drain_timeout: int = 5
    threads: int | None = None

    def resolved(self) -> ServeOptions:
        """Instances and threads filled in for this machine: one instance per core (at most 4), the
        cores shared among them. Measured on 2 cores, same run conditions (docs/serving.md): 2
        instances of 1 thread served batch-64 requests at 0.87-0.91x the in-process rate, 1 instance
        of ONNX Runtime's default 2 threads at 0.68-0.71x (its spinning threads compete with Triton's)."""
        from dataclasses import replace
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        instances = self.instances if self.instances is not None else max(1, min(4, cores))
        threads = self.threads if self.threads is not None else max(1, cores // instances)
        return replace(self, instances=instances, threads=threads)

    def check(self) -> None:
        """Raise ValueError naming the first option out of range."""
        check_model_name(self.model_name)
        for flag, v, lo, hi in (("--http-port", self.http_port, 1, 65535), ("--grpc-port", self.grpc_port, 1, 65535),
                                ("--metrics-port", self.metrics_port, 1, 65535), ("--max-batch", self.max_batch, 1, None),
                                ("--instances", 1 if self.instances is None else self.instances, 1, 64),
                                ("--threads", 1 if self.threads is None else self.threads, 1, 256),
                                ("--preferred-batch", self.preferred_batch, 1, None),
                                ("--queue-delay-us", self.queue_delay_us, 0, None),
                                ("--drain-timeout", self.drain_timeout, 1, 600)):
            if v < lo or (hi is not None and v > hi):
                raise ValueError(f"{flag} {v}: expected {lo}..{hi}" if hi else f"{flag} {v}: expected at least {lo}")
        if self.preferred_batch > self.max_batch:
            raise ValueError(f"--preferred-batch {self.preferred_batch}: expected at most --max-batch ({self.max_batch})")
        ports = [self.http_port, self.grpc_port, self.metrics_port]
        if len(set(ports)) != 3:
            raise ValueError(f"--http-port/--grpc-port/--metrics-port {ports}: expected three different ports")


def python_libdir_fix(env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """Put this interpreter's own ``LIBDIR`` first on ``LD_LIBRARY_PATH`` (returns it, or None if not needed).

    Triton's Python backend stub links ``libpython3.X.so``; where the running Python was built apart
    from the system's (pyenv, conda), the stub otherwise loads the system library, and model load
    fails with ``'_thread.RLock' object has no attribute '_recursion_count'``. tritonserver inherits
    this process's environment, so setting it here, before the server starts, is enough.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not any(Path(libdir).glob("libpython3*.so*")):  # a static build: nothing to point at
        return None
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
    if parts[:1] == [libdir]:
        return None
    env["LD_LIBRARY_PATH"] = ":".join([libdir, *[p for p in parts if p != libdir]])
    return libdir


def _pytriton() -> Any:
    try:
        import pytriton.triton as triton_mod
    except ImportError as e:
        raise ServeUnavailable(f"serving needs nvidia-pytriton (it ships tritonserver): {e}; install it with: "
                               "pip install 'lenet-tool[serve]'") from None
    return triton_mod


def local_host(address: str) -> str:
    """Where this machine reaches a server listening on ``address`` (all interfaces -> loopback)."""
    return "127.0.0.1" if address in ("0.0.0.0", "") else address


def check_ports(address: str, ports: dict[str, int]) -> None:
    """Raise ValueError naming a port already taken (tritonserver's own message comes late and buried)."""
    host = local_host(address)
    for what, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise ValueError(f"--{what}-port {port}: cannot listen on {host}:{port} ({e.strerror}); pick a free "
                                 "port") from None


def make_infer(clf: Any, counter: dict[str, int], lock: threading.Lock) -> Callable[..., Any]:
    """A PyTriton inference callable over one Classifier: Triton's batch in, the gated outputs out.

    Per-image scalars go back as ``[N, 1]``: the ``dims: [1]`` the repository's config declares.
    """
    from pytriton.decorators import batch

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        p = clf.predict(image)
        with lock:
            counter["batches"] += 1
            counter["images"] += len(p)
        # Exact numpy types: PyTriton (strict) tells int64 from longlong, which ONNX Runtime may return.
        return {"logits": p.logits.astype(np.float32, copy=False),
                "confidence": p.confidences.astype(np.float32, copy=False)[:, None],
                "label": p.labels.astype(np.int64, copy=False)[:, None],
                "accepted": p.accepted.astype(np.bool_, copy=False)[:, None]}
    return infer


#: Triton is started at most this many times when a start fails on :func:`handshake_race`.
START_TRIES = 3


def handshake_race(log_tail: str) -> bool:
    """Whether a failed Triton start's log shows PyTriton's start-up race: with two or more model
    instances, the first instance's stub opens a Unix socket to hand the others its configuration,
    and another instance, polling for the socket's file, can connect between the file's bind and its
    listen and be refused (PyTriton 0.7.0, ``proxy/model.py``; seen in one fresh-clone CI run of
    this project, both instances initialising in the same millisecond). Nothing about the model or
    the options is wrong then: starting again works."""
    return "get_config_from_handshake_server" in log_tail and "ConnectionRefusedError" in log_tail


class Server:
    """Triton with the Classifier bound; ``start()`` blocks until the model is ready, ``stop()`` drains.

    Args:
        model_path: the exported file to serve (``model.onnx``, ``model.int8.onnx``, ``model.fp16.onnx``
            or ``model.engine``).
        opts: ports, batching and instances.
    """

    def __init__(self, model_path: Path, opts: ServeOptions) -> None:
        opts.check()
        self.model_path, self.opts = Path(model_path), opts.resolved()
        self._triton: Any = None
        self._classifiers: list[Any] = []
        self.counter = {"batches": 0, "images": 0}
        self._lock = threading.Lock()
        self.log_path: Path | None = None
        self.ready_seconds: float | None = None
        self.drained: bool | None = None
        self.restarts = 0  # Triton starts that a known PyTriton race failed (:func:`handshake_race`)

    def start(self) -> float:
        """Load the model, start tritonserver and wait for the model to be ready; seconds taken."""
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

        from runtime import Classifier
        t0 = time.perf_counter()
        o = self.opts
        triton_mod = _pytriton()
        check_ports(o.address, {"http": o.http_port, "grpc": o.grpc_port, "metrics": o.metrics_port})
        python_libdir_fix()
        # PyTriton hands tensors between Triton's Python stub and this process through a shared-memory
        # store whose every allocation and release is a round trip to a multiprocessing manager; its
        # documented switch sends them inline over ZeroMQ instead. Measured here with wrk, 8 clients:
        # batch-1 requests 451 -> 1,103 a second, batch-64 7,317 -> 8,507 images a second. Both this
        # process and the stub (tritonserver's child) read it, so it is set before Triton starts.
        os.environ.setdefault("PYTRITON_NO_TENSORSTORE", "1")
        # One Classifier (one backend session) per instance: Triton runs instances concurrently.
        self._classifiers = [Classifier(self.model_path, o.backend, **self._backend_options()) for _ in range(o.instances)]
        meta = self._classifiers[0].metadata
        inputs, outputs = io_spec(meta)
        infer = [make_infer(c, self.counter, self._lock) for c in self._classifiers]
        for attempt in range(1, START_TRIES + 1):
            fd, log = tempfile.mkstemp(prefix="lenet-tool-triton-", suffix=".log")
            os.close(fd)
            self.log_path = Path(log)
            cfg = triton_mod.TritonConfig(http_address=o.address, grpc_address=o.address, metrics_address=o.address,
                                          http_port=o.http_port, grpc_port=o.grpc_port, metrics_port=o.metrics_port,
                                          exit_timeout_secs=o.drain_timeout, log_file=self.log_path, log_verbose=0,
                                          allow_gpu_metrics=False)
            self._triton = triton_mod.Triton(config=cfg)
            self._triton.bind(
                model_name=o.model_name, infer_func=infer if len(infer) > 1 else infer[0],
                inputs=[Tensor(name=s.name, dtype=np.dtype(s.dtype), shape=s.dims) for s in inputs],
                outputs=[Tensor(name=s.name, dtype=np.dtype(s.dtype), shape=s.dims) for s in outputs],
                config=ModelConfig(max_batch_size=o.max_batch, batcher=DynamicBatcher(
                    max_queue_delay_microseconds=o.queue_delay_us, preferred_batch_size=[o.preferred_batch])),
                strict=False)  # the outputs are the Classifier's; the tests check them against it
            try:
                self._triton.run()
                break
            except Exception as e:
                tail = self.log_tail()
                if attempt < START_TRIES and handshake_race(tail):
                    self.restarts += 1
                    self._triton.stop()
                    self._triton = None
                    continue
                self.stop()
                raise ServeError(f"Triton Inference Server did not start: {e}" + (
                    f"\nlast log lines:\n{tail}" if tail else "")) from None
        self.ready_seconds = time.perf_counter() - t0
        return self.ready_seconds

    def _backend_options(self) -> dict[str, Any]:
        from runtime.backends import BACKENDS, backend_for_path
        name = backend_for_path(self.model_path) if self.opts.backend == "auto" else self.opts.backend
        takes = getattr(BACKENDS.get(name), "options", ())
        return {"threads": self.opts.threads} if "threads" in takes else {}  # TensorRT has no CPU threads

    def alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def log_tail(self, n: int = 12) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> float:
        """Stop taking requests, let those in flight finish (up to ``drain_timeout``), stop tritonserver."""
        t0 = time.perf_counter()
        if self._triton is not None:
            self.drained = self._unload(deadline=t0 + self.opts.drain_timeout)
            self._triton.stop()
            self._triton = None
        for c in self._classifiers:
            c.close()
        self._classifiers = []
        return time.perf_counter() - t0

    def _unload(self, deadline: float) -> bool:
        """Unload the model first: Triton answers new requests with an error at once and lets those it
        has accepted finish; only then is the server stopped. Stopping it with the model loaded makes
        it wait for open keep-alive connections, serve what they keep sending, and cut the requests in
        flight when its exit timeout ends (seen here: 8 of 3,000 lost, and a crash on the way out).
        True when the model was out of service before ``deadline``."""
        from pytriton.triton import TRITON_ACCESS_HEADER
        from tritonclient.http import InferenceServerClient
        o = self.opts
        host = local_host(o.address)
        headers = {TRITON_ACCESS_HEADER: self._triton.get_access_token()}
        try:
            client = InferenceServerClient(f"{host}:{o.http_port}", connection_timeout=2.0, network_timeout=2.0)
        except Exception:
            return False
        try:
            # Triton takes the model out of service at once and finishes what it has accepted before it
            # finalizes the instances; the server's own shutdown then waits for that (exit timeout).
            client.unload_model(o.model_name, headers=headers)
            while time.perf_counter() < deadline:
                if not client.is_model_ready(o.model_name):
                    return True
                time.sleep(0.02)
        except Exception:  # the server is going anyway; its own exit timeout still drains
            return False
        finally:
            client.close()
        return False

    def describe(self) -> str:
        """The ready line (after :meth:`start`)."""
        o, c = self.opts, self._classifiers[0]
        return (f"Serving {o.model_name!r} ({self.model_path.name} on {c.backend}, gate threshold {c.threshold:.6g}, "
                f"{o.instances} instance{'s' if o.instances != 1 else ''} x {o.threads} "
                f"thread{'s' if o.threads != 1 else ''}, max batch {o.max_batch}) on Triton Inference Server: "
                f"HTTP {o.address}:{o.http_port}, gRPC {o.address}:{o.grpc_port}, "
                f"metrics {o.address}:{o.metrics_port}/metrics; ready in {self.ready_seconds:.1f} s"
                + (f" (started {self.restarts + 1} times: PyTriton's start-up race)" if self.restarts else ""))


def serve_forever(model_path: Path, opts: ServeOptions, echo: Callable[[str], None]) -> dict[str, Any]:
    """Serve until SIGINT or SIGTERM, then drain and stop. Returns what was served.

    Raises:
        ServeUnavailable, ServeError, ValueError: see :class:`Server`.
    """
    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        got.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server = Server(model_path, opts)
    try:
        server.start()
        echo(server.describe())
        while not stop.wait(0.5):
            if not server.alive():
                tail = server.log_tail()
                raise ServeError("Triton Inference Server exited while serving" + (f"; last log lines:\n{tail}"
                                                                                    if tail else ""))
        name = signal.Signals(got[0]).name if got else "signal"
        echo(f"{name}: draining in-flight requests (up to {opts.drain_timeout} s), then stopping")
        seconds = server.stop()
        echo(f"Stopped in {seconds:.1f} s: {server.counter['images']} images served in {server.counter['batches']} "
             "batches")
        if server.log_path is not None:
            server.log_path.unlink(missing_ok=True)
        return {"signal": name, "stop_seconds": seconds, **server.counter}
    finally:
        server.stop()
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- a server in a child process
# For the tests and benchmarks/serve_bench.py: the real CLI in its own process, as an operator runs it.

def free_ports(n: int = 3, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` right now (the OS picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class ChildServer:
    """A ``lenet-tool serve`` process on loopback: its ports, its output so far, how long it took to be ready."""

    proc: Any
    http_port: int
    grpc_port: int
    metrics_port: int
    ready_seconds: float
    lines: list[str]

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def terminate(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM, then wait; (exit status, seconds from the signal to the exit). Killed after ``timeout``."""
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except Exception:
            self.proc.kill()
            rc = self.proc.wait()
        seconds = time.perf_counter() - t0
        if self.proc.stdout is not None:
            self.lines += self.proc.stdout.read().splitlines()
        return rc, seconds


def launch(model: Path, *args: str, timeout: float = 90.0) -> ChildServer:
    """Start ``lenet-tool serve model --address 127.0.0.1`` on free ports; return once it says it is ready.

    Raises:
        ServeError: it exited or said nothing ready within ``timeout`` seconds (its output included).
    """
    import subprocess
    import sys
    http, grpc, metrics = free_ports(3)
    cmd = [sys.executable, "-m", "toolchain.cli", "serve", str(model), "--address", "127.0.0.1",
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), *args]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root)
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:  # a thread, so a silent child cannot block past the timeout
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Serving ") and "ready in" in line:
                found.set()
                return
        found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    found.wait(timeout)
    ready = time.perf_counter() - t0
    if not (lines and lines[-1].startswith("Serving ")):
        proc.kill()
        proc.wait()
        raise ServeError(f"'{' '.join(cmd)}' was not ready after {ready:.0f} s; it printed:\n" + "\n".join(lines[-20:]))
    reader.join(1)
    return ChildServer(proc, http, grpc, metrics, ready, lines)

"""Triton serving against the in-process Classifier, in the same run (issue 13's load test).

Starts ``lenet-tool serve`` on loopback (free ports) and times, for each request size, N client
*processes* (so client-side Python does not share one GIL) sending requests for a bounded time:
throughput, p50/p99 latency and errors. Beside it, in the same run and on the same model file, the
in-process ``Classifier.predict`` at the same batch sizes, before the server starts and after it
stops. Also: process start to the ready line, and SIGTERM to exit once the clients are done.
Every loop is bounded in count and time.

    python benchmarks/serve_bench.py [--artifact artifacts/lenet] [--clients 8] [--seconds 10]
                                     [--batch 1 --batch 64] [--protocol http|grpc] [--client tritonclient|wrk]
                                     [--instances N] [--serve-arg=ARG ...] [--json F]

Targets (printed, not asserted): batch-1 served throughput >= 0.5x the in-process batch-1 rate,
batch-64 >= 0.8x the in-process batch-64 throughput, 0 errors, ready <= 15 s, SIGTERM to exit <= 10 s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolchain.serve import launch  # noqa: E402

TARGETS = {"batch1_vs_inprocess_min": 0.5, "batch64_vs_inprocess_min": 0.8, "ready_s_max": 15.0,
           "sigterm_exit_s_max": 10.0}
MAX_REQUESTS = 1_000_000  # per client: a bound besides the time


def in_process(model: Path, batch: int, seconds: float, images: np.ndarray) -> dict:
    """The in-process Classifier's rate at ``batch`` (one thread, as device code calls it)."""
    from runtime import Classifier
    with Classifier(model) as clf:
        x = images[:batch]
        for _ in range(20):
            clf.predict(x)
        n, lat, t0 = 0, [], time.perf_counter()
        while time.perf_counter() - t0 < seconds and n < MAX_REQUESTS:
            s = time.perf_counter()
            clf.predict(x)
            lat.append(time.perf_counter() - s)
            n += 1
        wall = time.perf_counter() - t0
    lat_ms = np.array(lat) * 1e3
    return {"requests": n, "images_per_s": n * batch / wall, "p50_ms": float(np.percentile(lat_ms, 50)),
            "p99_ms": float(np.percentile(lat_ms, 99))}


def _client(url: str, protocol: str, batch: int, seconds: float, start_at: float, seed: int, out: mp.Queue) -> None:
    """One client process: requests of ``batch`` images until ``seconds`` have passed; latencies and errors."""
    if protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc
    c = tc.InferenceServerClient(url)
    x = np.random.default_rng(seed).integers(0, 256, (batch, 1, 28, 28), dtype=np.uint8)
    lat, errors, first_error = [], 0, ""
    while time.time() < start_at:  # every client starts together
        time.sleep(0.001)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds and len(lat) + errors < MAX_REQUESTS:
        i = tc.InferInput("image", [batch, 1, 28, 28], "UINT8")
        i.set_data_from_numpy(x)
        s = time.perf_counter()
        try:
            r = c.infer("lenet", [i])
            if r.as_numpy("label").shape != (batch, 1):
                raise ValueError(f"label shape {r.as_numpy('label').shape}")
            lat.append(time.perf_counter() - s)
        except Exception as e:
            errors += 1
            first_error = first_error or repr(e)[:300]
    wall = time.perf_counter() - t0
    c.close()
    out.put({"lat": lat, "errors": errors, "first_error": first_error, "wall": wall})


def served(url: str, protocol: str, clients: int, batch: int, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    start_at = time.time() + 3.0  # time for the spawned clients to import
    procs = [ctx.Process(target=_client, args=(url, protocol, batch, seconds, start_at, k, q)) for k in range(clients)]
    [p.start() for p in procs]
    results = [q.get(timeout=seconds + 120) for _ in procs]
    [p.join(30) for p in procs]
    lat_ms = np.concatenate([np.array(r["lat"]) for r in results]) * 1e3
    wall = max(r["wall"] for r in results)
    errors = sum(r["errors"] for r in results)
    return {"requests": len(lat_ms), "images_per_s": len(lat_ms) * batch / wall,
            "p50_ms": float(np.percentile(lat_ms, 50)) if len(lat_ms) else None,
            "p99_ms": float(np.percentile(lat_ms, 99)) if len(lat_ms) else None,
            "errors": errors, "first_error": next((r["first_error"] for r in results if r["first_error"]), "")}


def served_wrk(http_url: str, clients: int, batch: int, seconds: float) -> dict:
    """The same load from wrk (a C load generator, Debian package ``wrk``): ``clients`` keep-alive
    connections on 2 threads posting one binary KServe v2 request, so the clients' own Python cost
    does not count against the server."""
    import re
    import shutil
    import subprocess
    import tempfile
    if not shutil.which("wrk"):
        raise RuntimeError("wrk is not on PATH (apt-get install wrk)")
    head = json.dumps({"inputs": [{"name": "image", "shape": [batch, 1, 28, 28], "datatype": "UINT8",
                                   "parameters": {"binary_data_size": batch * 784}}],
                       "outputs": [{"name": n, "parameters": {"binary_data": True}}
                                   for n in ("logits", "confidence", "label", "accepted")]}).encode()
    x = np.random.default_rng(0).integers(0, 256, (batch, 1, 28, 28), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as d:
        body = Path(d) / "body.bin"
        body.write_bytes(head + x.tobytes())
        script = Path(d) / "post.lua"
        # Every non-200 answer is counted, so an error response is not mistaken for a served request.
        script.write_text(f'local f = io.open("{body}", "rb"); wrk.body = f:read("*all"); f:close()\n'
                          f'wrk.method = "POST"\nwrk.headers["Inference-Header-Content-Length"] = "{len(head)}"\n'
                          'bad = 0\nfunction response(status, headers, body) if status ~= 200 then bad = bad + 1 end end\n')
        r = subprocess.run(["wrk", "-t", "2", "-c", str(clients), "-d", f"{seconds:g}s", "--latency", "-s", str(script),
                            f"http://{http_url}/v2/models/lenet/infer"], capture_output=True, text=True,
                           timeout=seconds + 60)
    out = r.stdout

    def ms(label: str) -> float | None:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        return None if not m else float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    n = int(re.search(r"(\d+) requests in", out).group(1)) if "requests in" in out else 0
    wall = float(re.search(r"requests in ([\d.]+)s", out).group(1)) if "requests in" in out else seconds
    non2xx = int(re.search(r"Non-2xx or 3xx responses: (\d+)", out).group(1)) if "Non-2xx" in out else 0
    sock = re.search(r"Socket errors: (.*)", out)
    return {"requests": n - non2xx, "images_per_s": (n - non2xx) * batch / wall, "p50_ms": ms("50"), "p99_ms": ms("99"),
            "errors": non2xx + (sum(int(v) for v in re.findall(r"\d+", sock.group(1))) if sock else 0),
            "first_error": (f"{non2xx} non-200 answers" if non2xx else "") + (f" socket errors: {sock.group(1)}"
                                                                             if sock else "")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "lenet")
    ap.add_argument("--source", default="model.onnx", help="The file in ARTIFACT to serve.")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, action="append", help="Request sizes (repeatable; default 1 and 64).")
    ap.add_argument("--protocol", choices=["http", "grpc"], default="grpc", help="tritonclient's protocol.")
    ap.add_argument("--client", choices=["tritonclient", "wrk"], default="tritonclient",
                    help="Python processes with tritonclient (what a user's code costs), or wrk over HTTP (a C load "
                         "generator: the server's own capacity).")
    ap.add_argument("--instances", type=int, default=None, help="Default: serve's (one per core, at most 4).")
    ap.add_argument("--serve-arg", action="append", default=[], help="Passed to 'lenet-tool serve' (repeatable), "
                    "e.g. --serve-arg=--threads --serve-arg=1.")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    a = ap.parse_args(argv)
    batches = a.batch or [1, 64]
    model = a.artifact / a.source
    if not model.is_file():
        print(f"{model}: no such file: run 'bash scripts/main.sh' (or lenet-tool export) first", file=sys.stderr)
        return 2
    from toolchain.data import embedded_mnist
    images = embedded_mnist("test").images[:, None]
    who = "wrk connections (HTTP)" if a.client == "wrk" else f"tritonclient processes ({a.protocol})"
    print(f"model {model}; {a.clients} {who} x {a.seconds:g} s per request size; in-process Classifier beside it")
    # The in-process rate is taken before the server starts and again after it stops (this machine's
    # speed drifts over minutes); the ratio is against the mean of the two.
    before = {b: in_process(model, b, min(a.seconds, 5.0), images) for b in batches}
    server = launch(model, *(["--instances", str(a.instances)] if a.instances else []), *a.serve_arg)
    print(server.lines[-1])
    rows = []
    try:
        for b in batches:
            if a.client == "wrk":
                s = served_wrk(server.http_url, a.clients, b, a.seconds)
            else:
                s = served(server.grpc_url if a.protocol == "grpc" else server.http_url, a.protocol, a.clients, b,
                           a.seconds)
            rows.append({"batch": b, "served": s})
    finally:
        # SIGTERM with the clients gone: what an operator's 'docker stop' or Kubernetes sees.
        rc, stop_s = server.terminate()
    after = {b: in_process(model, b, min(a.seconds, 5.0), images) for b in batches}
    for r in rows:
        b = r["batch"]
        r["in_process"] = {"before": before[b], "after": after[b],
                           "images_per_s": (before[b]["images_per_s"] + after[b]["images_per_s"]) / 2}
        r["ratio"] = r["served"]["images_per_s"] / r["in_process"]["images_per_s"]
    print(f"\n{'requests':>9} {'clients':>7} {'served img/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
          f"{'in-process img/s (before, after)':>33} {'ratio':>6}")
    for r in rows:
        s = r["served"]
        print(f"{'batch ' + str(r['batch']):>9} {a.clients:>7} {s['images_per_s']:>13,.0f} {s['p50_ms']:>8.2f} "
              f"{s['p99_ms']:>8.2f} {s['errors']:>6} {r['in_process']['images_per_s']:>10,.0f} "
              f"({r['in_process']['before']['images_per_s']:>7,.0f}, {r['in_process']['after']['images_per_s']:>7,.0f})"
              f"    {r['ratio']:>5.2f}x")
        if s["first_error"]:
            print(f"  first error: {s['first_error']}")
    print(f"start to ready {server.ready_seconds:.1f} s (process spawn to the ready line); SIGTERM to exit "
          f"{stop_s:.1f} s, exit status {rc}")
    missed = []
    for r in rows:
        key = {1: "batch1_vs_inprocess_min", 64: "batch64_vs_inprocess_min"}.get(r["batch"])
        if key and r["ratio"] < TARGETS[key]:
            missed.append(f"batch {r['batch']} served {r['ratio']:.2f}x in-process (target >= {TARGETS[key]}x)")
        if r["served"]["errors"]:
            missed.append(f"batch {r['batch']}: {r['served']['errors']} errors (target 0)")
    if server.ready_seconds > TARGETS["ready_s_max"]:
        missed.append(f"ready in {server.ready_seconds:.1f} s (target <= {TARGETS['ready_s_max']:g} s)")
    if stop_s > TARGETS["sigterm_exit_s_max"] or rc != 0:
        missed.append(f"SIGTERM to exit {stop_s:.1f} s, status {rc} (target <= {TARGETS['sigterm_exit_s_max']:g} s, 0)")
    print("targets: " + ("all met" if not missed else "missed: " + "; ".join(missed)))
    if a.json:
        a.json.write_text(json.dumps({"client": a.client, "clients": a.clients, "seconds": a.seconds, "protocol": a.protocol,
                                      "instances": a.instances, "rows": rows, "ready_s": server.ready_seconds,
                                      "sigterm_exit_s": stop_s, "exit_status": rc, "targets": TARGETS,
                                      "missed": missed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

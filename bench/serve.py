"""Serving overhead: the same champion models called over HTTP (`bentoml serve`) vs. in-process,
interleaved in one run so that machine load hits both alike.

Each repeat measures, in turn:
  * latency of one patch: in-process (check + rgops.serving.encode), HTTP /extract_patches with the
    JSON float-list body, HTTP with the base64 float32 body;
  * latency of one image from a 2,000-gene profile: in-process (normalise + generate + PNG, what the
    route does), HTTP /generate;
  * requests/s with CONCURRENCY clients (one keep-alive connection each) vs. CONCURRENCY in-process threads;
  * the floor: requests/s of the same clients against a bare ASGI app under uvicorn that answers a
    constant body and does no work (what this client on this machine can measure of any Python server).
The client sends pre-serialised bodies over http.client (no per-request JSON encoding, no client
library overhead), so it is not the bottleneck. Ratios are reported as min and median over repeats.
Targets (issue 13): one-patch HTTP p50 <= 2 x in-process + 5 ms; HTTP throughput >= 70% of
in-process at 8 clients; /generate HTTP <= 1.5 x in-process. Writes bench/results/serve.json.

    .venv/bin/python bench/serve.py [--n 60] [--repeats 3] [--seconds 5] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _serving_harness import KEY, N_GENES, S, device, local_stack, percentiles  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "serve.json"


class Poster:
    """One keep-alive connection posting a pre-serialised body; raises on a non-200."""

    def __init__(self, base: str, path: str, body: bytes) -> None:
        u = urlparse(base)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        self.path, self.body = path, body
        self.headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def __call__(self) -> None:
        self.conn.request("POST", self.path, self.body, self.headers)
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{self.path}: HTTP {r.status} {data[:200]!r}")


def _latency(fn: Callable[[], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _throughput(make: Callable[[], Callable[[], None]], clients: int, seconds: float) -> dict[str, float]:
    fns = [make() for _ in range(clients)]
    stop = time.perf_counter() + seconds
    counts, errors = [0] * clients, [0] * clients

    def worker(i: int) -> None:
        while time.perf_counter() < stop:
            try:
                fns[i]()
                counts[i] += 1
            except Exception:  # noqa: BLE001 - counted, reported
                errors[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"requests": sum(counts), "errors": sum(errors), "rps": sum(counts) / wall}


def _ratios(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "each": values}


def _setup(uri: str) -> dict:
    from rgops import serving

    rng = np.random.default_rng(0)
    patch = rng.uniform(-1, 1, (S, S)).astype(np.float32)
    profile = {f"GENE{j}": float(v) for j, v in enumerate(rng.uniform(1, 10, N_GENES))}
    resolve, load = serving.registry_source(uri, "cpu")
    cae = load("rgops-cae", resolve("rgops-cae", "champion"), "champion")
    gan = load("rgops-gan", resolve("rgops-gan", "champion"), "champion")

    def local_encode() -> None:
        serving.encode(cae, serving.check_patches(patch, S))

    def local_generate() -> None:
        g = serving.normalise_profile(gan.panel, profile, impute=False).genes
        base64.b64encode(serving.png(serving.generate(gan, g, 1, 0, 16)[0]))

    return {"local_encode": local_encode, "local_generate": local_generate, "bodies": {
        "json": orjson.dumps({"patches": [{"pixels": patch.tolist()}]}),
        "b64": orjson.dumps({"patches": [{"pixels_b64": base64.b64encode(patch.astype("<f4").tobytes()).decode()}]}),
        "generate": orjson.dumps({"profile": profile, "n_samples": 1, "seed": 0})}}


FLOOR_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the body like a real server
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"[]"})
"""


@contextlib.contextmanager
def floor_server() -> Iterator[str]:
    """A bare ASGI app under uvicorn (one process, like the server's one worker) answering ``[]``."""
    with tempfile.TemporaryDirectory(prefix="rgops-floor-") as tmp:
        (Path(tmp) / "floor_app.py").write_text(FLOOR_APP)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "floor_app:app", "--port", str(port), "--log-level",
                                 "warning", "--no-access-log"], cwd=tmp)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(20)


def _one_repeat(base: str, s: dict, n: int, clients: int, seconds: float, floor: str) -> dict:
    b = s["bodies"]
    lat = {"patch_in_process": percentiles(_latency(s["local_encode"], n)),
           "patch_http_json": percentiles(_latency(Poster(base, "/extract_patches", b["json"]), n)),
           "patch_http_b64": percentiles(_latency(Poster(base, "/extract_patches", b["b64"]), n)),
           "generate_in_process": percentiles(_latency(s["local_generate"], max(10, n // 4))),
           "generate_http": percentiles(_latency(Poster(base, "/generate", b["generate"]), max(10, n // 4)))}
    thr = {"in_process": _throughput(lambda: s["local_encode"], clients, seconds),
           "http_b64": _throughput(lambda: Poster(base, "/extract_patches", b["b64"]), clients, seconds),
           "http_floor": _throughput(lambda: Poster(floor, "/extract_patches", b["b64"]), clients, seconds)}
    return {"latency": lat, "throughput": thr}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--batching", choices=("greedy", "adaptive", "none"), default="greedy",
                    help="serve.batching of the server (results: serve.json, serve_adaptive.json, serve_no_batching.json)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="serve.torch_threads of the server (default: params.yaml's)")
    ap.add_argument("--workers", type=int, default=None,
                    help="serve.workers of the server (default: params.yaml's, 0: one per core, at most 4)")
    ap.add_argument("--out", type=Path, default=None, help="results file (default: by --batching)")
    args = ap.parse_args()
    out = {"greedy": OUT, "adaptive": OUT.with_name("serve_adaptive.json"),
           "none": OUT.with_name("serve_no_batching.json")}[args.batching]
    extra = "" if args.torch_threads is None else f"  torch_threads: {args.torch_threads}\n"
    extra += "" if args.workers is None else f"  workers: {args.workers}\n"
    out = args.out or out
    with local_stack(f"  batching: {args.batching}\n{extra}") as (base, uri, _), floor_server() as floor:
        s = _setup(uri)
        for body in ("json", "b64"):  # warm up both paths (and BentoML's batcher)
            _latency(Poster(base, "/extract_patches", s["bodies"][body]), 40)
        _latency(s["local_encode"], 10)
        meta = Poster(base, "/metadata", b"{}")
        meta.conn.request("GET", "/metadata", headers=meta.headers)
        runtime = json.loads(meta.conn.getresponse().read())["runtime"]
        import torch

        # the in-process baseline at its best for concurrent callers: one intra-op thread per call (more
        # threads than cores made calls 6-13x slower under load, issue 13), whatever the server uses
        torch.set_num_threads(1)
        _latency(s["local_encode"], 10)
        _latency(s["local_generate"], 3)
        repeats = [_one_repeat(base, s, args.n, args.concurrency, args.seconds, floor) for _ in range(args.repeats)]
    summary = _summarise(repeats)
    res = {"device": device(), "server_runtime": runtime, "in_process_torch_threads": torch.get_num_threads(), "patch_size": S, "n_genes": N_GENES,
           "batching": args.batching,
           "concurrency": args.concurrency, "repeats": repeats, "summary": summary,
           "note": "2-core machine shared with other jobs; HTTP and in-process interleaved in each repeat"}
    for k, v in summary.items():
        print(f"{k}: min {v['min']:.2f}, median {v['median']:.2f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


def _summarise(repeats: list[dict]) -> dict[str, dict]:
    def p50(r: dict, k: str) -> float:
        return r["latency"][k]["p50_ms"]

    return {
        # target <= 1: HTTP p50 of one patch against 2 x in-process + 5 ms
        "patch_http_json_p50_over_target": _ratios([p50(r, "patch_http_json") / (2 * p50(r, "patch_in_process") + 5)
                                                    for r in repeats]),
        "patch_http_b64_p50_over_target": _ratios([p50(r, "patch_http_b64") / (2 * p50(r, "patch_in_process") + 5)
                                                   for r in repeats]),
        "patch_http_b64_p50_over_in_process": _ratios([p50(r, "patch_http_b64") / p50(r, "patch_in_process")
                                                       for r in repeats]),
        # target >= 0.7
        "throughput_http_over_in_process": _ratios([r["throughput"]["http_b64"]["rps"] / r["throughput"]["in_process"]["rps"]
                                                    for r in repeats]),
        # what this client can measure of a server that does nothing, against in-process
        "throughput_floor_over_in_process": _ratios([r["throughput"]["http_floor"]["rps"]
                                                     / r["throughput"]["in_process"]["rps"] for r in repeats]),
        "throughput_http_over_floor": _ratios([r["throughput"]["http_b64"]["rps"] / r["throughput"]["http_floor"]["rps"]
                                               for r in repeats]),
        # target <= 1.5
        "generate_http_over_in_process": _ratios([p50(r, "generate_http") / p50(r, "generate_in_process")
                                                  for r in repeats]),
    }


if __name__ == "__main__":
    main()

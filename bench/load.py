"""A bounded load test on localhost: CLIENTS concurrent clients for SECONDS against `bentoml serve`.

Each client alternates one-patch extraction (/extract_patches, base64 float32 body) and one-image
generation (/generate, 2,000-gene profile). Reports requests, errors (any non-200 other than a shed
503, or a transport error), shed 503s (and whether each carried Retry-After and an rgops body),
p50/p99 latency, and writes bench/results/load.json. The issue's numbers are the defaults: 32
clients x 60 s.

    .venv/bin/python bench/load.py [--clients 32] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _serving_harness import KEY, N_GENES, S, device, local_stack, percentiles  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "load.json"


def _bodies(patch_size: int, genes: list[str]) -> list[tuple[str, bytes]]:
    """The two request bodies, serialised once (orjson): a base64 float32 patch and a profile."""
    import base64

    import orjson

    rng = np.random.default_rng(0)
    patch = rng.uniform(-1, 1, (patch_size, patch_size)).astype("<f4")
    profile = {g: float(v) for g, v in zip(genes, rng.uniform(1, 10, len(genes)))}
    return [("/extract_patches", orjson.dumps({"patches": [{"pixels_b64": base64.b64encode(patch.tobytes()).decode()}]})),
            ("/generate", orjson.dumps({"profile": profile, "n_samples": 1}))]


def run_load(base: str, key: str, clients: int, seconds: float, patch_size: int, genes: list[str]) -> dict:
    """Drive ``clients`` threads for ``seconds``; return counts, errors and latency percentiles.

    Bodies are serialised once (orjson) and posted over one keep-alive http.client connection per
    client, so the client is not the bottleneck. A 503 counts as shed load (it must carry
    Retry-After and an rgops body), anything else that is not a 200 as an error."""
    import http.client
    from urllib.parse import urlparse

    bodies = _bodies(patch_size, genes)
    u = urlparse(base)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    stop = time.perf_counter() + seconds
    lat: dict[str, list[float]] = {p: [] for p, _ in bodies}
    errors: list[str] = []
    shed: list[bool] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        k = i
        while time.perf_counter() < stop:
            path, body = bodies[k % 2]
            k += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                r = conn.getresponse()
                data = r.read()
                status, retry = r.status, r.getheader("retry-after")
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
                status, retry, data = 0, None, type(exc).__name__.encode()
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                if status == 200:
                    lat[path].append(ms)
                elif status == 503:
                    shed.append(bool(retry) and b'"request_id"' in data)
                else:
                    errors.append(f"{path} {status}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    every = lat["/extract_patches"] + lat["/generate"]
    return {"clients": clients, "seconds": seconds, "wall_s": wall, "requests": len(every) + len(errors) + len(shed),
            "errors": len(errors), "error_examples": sorted(set(errors))[:10], "rps": len(every) / wall,
            "shed_503": len(shed), "shed_503_with_retry_after_and_rgops_body": sum(shed),
            "all": percentiles(every) if every else None,
            "by_route": {p: percentiles(v) for p, v in lat.items() if v}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    with local_stack() as (base, _, _):
        res = run_load(base, KEY, args.clients, args.seconds, S, [f"GENE{j}" for j in range(N_GENES)])
    res["device"] = device()
    print(f"{args.clients} clients x {args.seconds:.0f} s: {res['requests']} requests, {res['errors']} errors, "
          f"{res['rps']:.1f} req/s, p50 {res['all']['p50_ms']:.0f} ms, p99 {res['all']['p99_ms']:.0f} ms")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

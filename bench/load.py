"""A bounded load test on localhost: CLIENTS concurrent clients for SECONDS against `bentoml serve`.

Each client alternates one-patch extraction (/extract_patches) and one-image generation
(/generate). Reports requests, errors (any non-200 or transport error), p50/p99 latency, and
writes bench/results/load.json. The issue's numbers are the defaults: 32 clients x 60 s.

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


def run_load(base: str, key: str, clients: int, seconds: float, patch_size: int, genes: list[str]) -> dict:
    """Drive ``clients`` threads for ``seconds``; return counts, errors and latency percentiles."""
    import httpx

    rng = np.random.default_rng(0)
    bodies = [("/extract_patches", {"patches": [{"pixels": rng.uniform(-1, 1, (patch_size, patch_size)).round(3).tolist()}]}),
              ("/generate", {"profile": {g: float(v) for g, v in zip(genes, rng.uniform(1, 10, len(genes)))},
                             "n_samples": 1})]
    stop = time.perf_counter() + seconds
    lat: dict[str, list[float]] = {p: [] for p, _ in bodies}
    errors: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            k = i
            while time.perf_counter() < stop:
                path, body = bodies[k % 2]
                k += 1
                t0 = time.perf_counter()
                try:
                    r = c.post(path, json=body)
                    ok = r.status_code == 200
                    why = f"{path} {r.status_code}"
                except httpx.HTTPError as exc:
                    ok, why = False, f"{path} {type(exc).__name__}"
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    (lat[path].append(ms) if ok else errors.append(why))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    every = lat["/extract_patches"] + lat["/generate"]
    return {"clients": clients, "seconds": seconds, "wall_s": wall, "requests": len(every) + len(errors),
            "errors": len(errors), "error_examples": sorted(set(errors))[:10], "rps": len(every) / wall,
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

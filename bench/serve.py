"""Serving overhead: the same champion models called over HTTP (`bentoml serve`) vs. in-process.

Measures, in one run on this machine:
  * latency p50/p99 of one patch through /extract_patches vs. rgops.serving.encode in-process;
  * latency of one generated image through /generate vs. rgops.serving.generate in-process;
  * requests/s with CONCURRENCY concurrent clients for both, HTTP vs. in-process threads.
Prints ratios and writes bench/results/serve.json.

    .venv/bin/python bench/serve.py [--n 100] [--seconds 10] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _serving_harness import KEY, N_GENES, S, device, local_stack, percentiles  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "serve.json"


def _latency(fn, n: int, warmup: int) -> list[float]:  # noqa: ANN001
    # BentoML's adaptive batching first trains its latency model on some dozens of requests,
    # waiting for batches that a single client never forms; measure after that.
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _throughput(make_fn, clients: int, seconds: float) -> dict[str, float]:  # noqa: ANN001
    stop = time.perf_counter() + seconds
    counts, errors = [0] * clients, [0] * clients

    def worker(i: int) -> None:
        fn = make_fn()
        while time.perf_counter() < stop:
            try:
                fn()
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
    return {"requests": sum(counts), "errors": sum(errors), "seconds": wall, "rps": sum(counts) / wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    import httpx

    from rgops import serving

    rng = np.random.default_rng(0)
    patch = rng.uniform(-1, 1, (S, S)).astype(np.float32)
    profile = {f"GENE{j}": float(v) for j, v in enumerate(rng.uniform(1, 10, N_GENES))}
    body_patch = {"patches": [{"pixels": patch.round(4).tolist()}]}
    body_gen = {"profile": profile, "n_samples": 1, "seed": 0}
    with local_stack() as (base, uri, _):
        resolve, load = serving.registry_source(uri, serving.ServeConfig().torch_device())
        runtime = httpx.get(f"{base}/metadata", headers={"Authorization": f"Bearer {KEY}"}).json()["runtime"]
        cae = load("rgops-cae", resolve("rgops-cae", "champion"), "champion")
        gan = load("rgops-gan", resolve("rgops-gan", "champion"), "champion")
        x = serving.check_patches(patch, S)
        g = serving.normalise_profile(gan.panel, profile, impute=False).genes

        def http(path: str, body: dict):  # noqa: ANN202
            def make():  # noqa: ANN202
                c = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)

                def call() -> None:
                    r = c.post(path, json=body)
                    if r.status_code != 200:
                        raise RuntimeError(r.status_code)
                return call
            return make

        def local_encode() -> None:
            serving.encode(cae, x)

        def local_generate() -> None:
            serving.generate(gan, g, 1, 0, 16)

        res = {"device": device(), "server_runtime": runtime, "patch_size": S, "n_genes": N_GENES, "concurrency": args.concurrency,
               "latency": {
                   "extract_one_patch": {"http": percentiles(_latency(http("/extract_patches", body_patch)(), args.n, 60)),
                                         "in_process": percentiles(_latency(local_encode, args.n, 5))},
                   "generate_one_image": {"http": percentiles(_latency(http("/generate", body_gen)(), args.n, 5)),
                                          "in_process": percentiles(_latency(local_generate, args.n, 5))}},
               "throughput": {
                   "extract_one_patch": {"http": _throughput(http("/extract_patches", body_patch), args.concurrency, args.seconds),
                                         "in_process": _throughput(lambda: local_encode, args.concurrency, args.seconds)},
                   "generate_one_image": {"http": _throughput(http("/generate", body_gen), args.concurrency, args.seconds),
                                          "in_process": _throughput(lambda: local_generate, args.concurrency, args.seconds)}}}
    for name in ("extract_one_patch", "generate_one_image"):
        lat, thr = res["latency"][name], res["throughput"][name]
        print(f"{name}: p50 http {lat['http']['p50_ms']:.1f} ms vs in-process {lat['in_process']['p50_ms']:.1f} ms "
              f"(x{lat['http']['p50_ms'] / lat['in_process']['p50_ms']:.1f}); p99 http {lat['http']['p99_ms']:.1f} ms; "
              f"{args.concurrency} clients: http {thr['http']['rps']:.1f} req/s vs in-process "
              f"{thr['in_process']['rps']:.1f} req/s (x{thr['http']['rps'] / thr['in_process']['rps']:.2f}), "
              f"http errors {thr['http']['errors']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

"""Shared set-up of the serving benchmarks: a real MLflow registry (SQLite) with tiny champions,
and a real `bentoml serve` process on localhost."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-api-key-0123456789abcdef"
N_GENES = 2000  # the real panel's size: /generate's cost is dominated by the profile's handling
S = 64


def publish_champions(tracking_uri: str, seed: int = 0) -> dict[str, str]:
    """Log the default-sized CAE and GAN generator (S=64, 2,000 genes), register, approve @champion."""
    import torch

    from rgops.data.datasets import GenePanel
    from rgops.models.cae import CAEConfig, ConditionalAE
    from rgops.models.gan import GANConfig, Generator
    from rgops.promotion import PromoteConfig, evaluate_gates
    from rgops.registry import Decision, Registry, kind_of
    from rgops.tracking import MlflowTracker, log_model, model_card

    torch.manual_seed(seed)
    genes = tuple(f"GENE{j}" for j in range(N_GENES))
    panel = GenePanel(genes, np.full(N_GENES, 2.0), np.full(N_GENES, 0.5), n_train=100)
    registry = Registry(tracking_uri)
    versions = {}
    for kind, cfg in (("cae", CAEConfig(image_size=S, n_genes=N_GENES)), ("gan", GANConfig(image_size=S, n_genes=N_GENES))):
        module = ConditionalAE(cfg) if kind == "cae" else Generator(cfg)
        card = model_card(kind, cfg, panel, None, {}, "b" * 64, "", "bench")
        with MlflowTracker(experiment="bench", tracking_uri=tracking_uri) as tracker:
            uri = log_model(module, kind, cfg, panel, card)
            run_id = tracker.run_id
        info = registry.register(kind, uri, run_id, metrics={}, data_version={"data_digest": "b" * 64}, actor="bench")
        report = evaluate_gates(kind_of(info.name), {}, PromoteConfig(require_validation=False),
                                champion_version=registry.aliases(info.name).get("champion"))
        registry.record_gates(info.name, info.version, report)
        registry.decide(info.name, info.version, Decision(True, "bench", "bench champion"))
        versions[kind] = info.version
    return versions


@contextlib.contextmanager
def local_stack(serve_params: str = "") -> Iterator[tuple[str, str, Path]]:
    """Yield (base URL, tracking URI, temp folder) with a server running; stop it afterwards."""
    import httpx

    with tempfile.TemporaryDirectory(prefix="rgops-bench-") as tmp_s:
        tmp = Path(tmp_s)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        os.environ.setdefault("RGOPS_API_KEYS", KEY)
        cwd = os.getcwd()
        os.chdir(tmp)  # a SQLite store puts artifacts under the working directory: keep them in tmp
        try:
            publish_champions(uri)
        finally:
            os.chdir(cwd)
        (tmp / "params.yaml").write_text("serve:\n  reload_poll_s: 0\n" + serve_params)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "RGOPS_API_KEYS": KEY, "BENTOML_HOME": str(tmp / "bentoml"),
               "RGOPS_PARAMS": str(tmp / "params.yaml"), "BENTOML_DO_NOT_TRACK": "true"}
        with open(tmp / "server.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "services.service:RgopsService",
                                     "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
            (tmp / "server.pid").write_text(str(proc.pid))  # benches that read the server's memory find it here
            base = f"http://127.0.0.1:{port}"
            try:
                deadline = time.time() + 180
                while True:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError((tmp / "server.log").read_text()[-3000:])
                    with contextlib.suppress(httpx.HTTPError):
                        if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                            break
                    time.sleep(1)
                yield base, uri, tmp
            finally:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean())}


def device() -> dict[str, object]:
    import platform

    import torch

    return {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}

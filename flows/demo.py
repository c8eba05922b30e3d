"""The main job, end to end on embedded defaults: what `make demo` runs.

synthetic cohort -> Prefect retrain flow (validate -> ingest -> validate -> train CAE + GAN ->
evaluate -> register -> gate -> promote) -> `bentoml serve` of the champions -> one real request to
each service -> where to look.

Everything lands in one folder (default ``demo-output/``): the cohort and its ground truth, the
datasets, the validation and evaluation reports, the MLflow SQLite store and its artifacts, the
service's answers. Nothing needs a server set up beforehand: MLflow uses SQLite, Prefect its ephemeral
API, BentoML a local store under the output folder.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rgops.errors import RgopsError

log = logging.getLogger("rgops.demo")

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DemoResult:
    """What the demo did, where it put it, and how long each step took (seconds)."""

    out: Path
    tracking_uri: str
    steps: dict[str, float] = field(default_factory=dict)
    retrain: dict[str, Any] = field(default_factory=dict)
    extract: dict[str, Any] = field(default_factory=dict)
    generate: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return sum(self.steps.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cohort_matches(cohort: Path, config: Any) -> bool:
    """A cohort written earlier by `rgops synth` with the same generator config can be reused."""
    from rgops.config import to_dict

    meta = cohort / "cohort.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("config") == to_dict(config)
    except (OSError, ValueError):
        return False


def _step(result: DemoResult, name: str, fn: Callable[[], Any]) -> Any:
    log.info("demo: %s ...", name)
    t0 = time.perf_counter()
    value = fn()
    result.steps[name] = round(time.perf_counter() - t0, 1)
    log.info("demo: %s done in %.1f s", name, result.steps[name])
    return value


def _study_zip(cohort: Path, dest: Path) -> Path:
    """Zip one patient's CT series and SEG, as a PACS export would hand them over."""
    patient = sorted(p for p in (cohort / "ct").iterdir() if p.is_dir())[0]
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, f in enumerate(sorted(patient.rglob("*.dcm"))):
            zf.write(f, arcname=f"{i:04d}.dcm")  # no source identifiers in the archive's names
    return dest


def _first_profile_tsv(cohort: Path) -> str:
    """genes.tsv cut to its gene column and one sample column, renamed (no source id leaves)."""
    lines = (cohort / "genes.tsv").read_text().splitlines()
    return "\n".join("\t".join(line.split("\t")[:2]) if i else "gene_symbol\tsample"
                     for i, line in enumerate(lines)) + "\n"


def _check(response: httpx.Response, route: str) -> None:
    if response.status_code >= 400:
        raise RgopsError(f"{route} answered {response.status_code}: {response.text[:500]}")


def _serve_and_call(result: DemoResult, cohort: Path, tracking_uri: str, port: int | None) -> None:
    """Start the services on the champions, call /extract and /generate once each, stop them."""
    out = result.out
    key = secrets.token_urlsafe(32)
    key_file = out / "api-key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    port = port or _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "RGOPS_API_KEYS_FILE": str(key_file),
           "BENTOML_HOME": str(out / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("RGOPS_API_KEYS", None)
    server_log = out / "server.log"
    with open(server_log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "services.service:RgopsService",
                                 "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120.0,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            _step(result, "serve: start", lambda: _wait_ready(client, proc, server_log))
            (out / "responses").mkdir(exist_ok=True)
            _step(result, "serve: extract", lambda: _call_extract(client, result, cohort))
            _step(result, "serve: generate", lambda: _call_generate(client, result, cohort))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    result.files["responses"] = str(out / "responses")
    result.files["server log"] = str(server_log)


def _wait_ready(client: httpx.Client, proc: subprocess.Popen, server_log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RgopsError(f"bentoml serve exited with {proc.returncode}; see {server_log}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RgopsError(f"the services did not become ready in {timeout_s:.0f} s; see {server_log}")
        time.sleep(1.0)


def _call_extract(client: httpx.Client, result: DemoResult, cohort: Path) -> None:
    study = _study_zip(cohort, result.out / "study.zip")
    with open(study, "rb") as fh:
        r = client.post("/extract", files={"files": ("study.zip", fh, "application/zip")})
    _check(r, "/extract")
    result.extract = r.json()
    (result.out / "responses" / "extract.json").write_text(json.dumps(result.extract, indent=2))


def _call_generate(client: httpx.Client, result: DemoResult, cohort: Path) -> None:
    # A real expression profile has a few missing values: ask for imputation with the training
    # means, and the answer lists the genes it imputed.
    r = client.post("/generate", json={"profile_tsv": _first_profile_tsv(cohort), "sample": "sample",
                                       "n_samples": 4, "seed": 0, "dicom": True, "impute": True})
    _check(r, "/generate")
    gen = r.json()
    for i, png in enumerate(gen["png"]):
        (result.out / "responses" / f"generated_{i}.png").write_bytes(base64.b64decode(png))
    for i, dcm in enumerate(gen.get("dicom", [])):
        (result.out / "responses" / f"generated_{i}.dcm").write_bytes(base64.b64decode(dcm))
    result.generate = {k: v for k, v in gen.items() if k not in ("png", "dicom")}
    result.generate["n_png"] = len(gen["png"])
    result.generate["n_dicom"] = len(gen.get("dicom", []))


def run_demo(out: str | Path = "demo-output", params_path: str | Path = "params.yaml", preset: str = "demo",
             patients: int | None = None, port: int | None = None, serve: bool = True) -> DemoResult:
    """Run the whole loop once on embedded defaults and return what happened.

    Args:
        out: folder for everything the demo writes (reused: an existing cohort of the same config is kept).
        params_path: params.yaml (the ``synth`` section sizes the cohort).
        preset: training preset (``demo`` by default; ``tiny`` for a quick look).
        patients: override ``synth.n_patients``.
        port: port of the services (default: a free one).
        serve: start the services and call each once.
    """
    from rgops.data.synth import generate_cohort, synth_config
    from rgops.tracking import resolve_tracking_uri

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params_path = Path(params_path).resolve()
    if not os.environ.get("RGOPS_TRACKING_URI") and not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["RGOPS_TRACKING_URI"] = f"sqlite:///{out / 'mlflow.db'}"
    tracking_uri = resolve_tracking_uri()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    result = DemoResult(out=out, tracking_uri=tracking_uri)

    cohort = out / "cohort"
    config = synth_config(params_path, n_patients=patients)
    if _cohort_matches(cohort, config):
        log.info("demo: reusing the synthetic cohort in %s (same generator config)", cohort)
        result.steps["synth (reused)"] = 0.0
    else:
        _step(result, "synth", lambda: generate_cohort(cohort, config, overwrite=True))
    result.files["cohort"] = str(cohort)

    import importlib

    retrain = importlib.import_module("flows.retrain").retrain
    result.retrain = _step(result, "retrain flow", lambda: retrain(
        cohort=str(cohort), workdir=str(out / "work"), params_path=str(params_path), preset=preset,
        approval="auto", tracking_uri=tracking_uri))
    result.files["datasets"] = str(out / "work" / "datasets")
    result.files["evaluation report"] = str(out / "work" / "evaluation" / "report" / "report.html")
    result.files["validation reports"] = str(out / "work" / "reports")

    if serve:
        _serve_and_call(result, cohort, tracking_uri, port)
    return result

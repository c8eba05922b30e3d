"""The BentoML service as a real `bentoml serve` process on localhost, against a real MLflow
registry (SQLite) with a promoted @champion, called over HTTP."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.helpers import free_port
from tests.helpers import running_server as start_and_stop

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-api-key-0123456789abcdef"
GENES = tuple(f"GENE{j}" for j in range(6))
S = 32


def publish_tiny_champions(tracking_uri: str, seed: int = 0, patch: dict | None = None) -> dict[str, str]:
    """Log a tiny CAE and GAN generator with rgops.tracking, register them and approve @champion
    (``patch``: the patch contract their cards carry, as ingest's ``patch_spec.json`` would give it)."""
    import torch

    from rgops.data.datasets import GenePanel
    from rgops.models.cae import CAEConfig, ConditionalAE
    from rgops.models.gan import GANConfig, Generator
    from rgops.promotion import PromoteConfig, evaluate_gates
    from rgops.registry import Decision, Registry, kind_of
    from rgops.tracking import MlflowTracker, log_model, model_card

    torch.manual_seed(seed)
    panel = GenePanel(GENES, np.linspace(1.0, 2.0, len(GENES)), np.full(len(GENES), 0.5), n_train=8)
    cae_cfg = CAEConfig(image_size=S, n_genes=len(GENES), latent_dim=4, gene_embed_dim=4, gene_hidden=8,
                        widths=(8, 8), groups=4)
    gan_cfg = GANConfig(image_size=S, n_genes=len(GENES), z_dim=8, gene_embed_dim=8, gene_hidden=8,
                        g_channels=8, max_channels=16, groups=4)
    registry = Registry(tracking_uri)
    versions = {}
    for kind, module, cfg in (("cae", ConditionalAE(cae_cfg), cae_cfg), ("gan", Generator(gan_cfg), gan_cfg)):
        card = model_card(kind, cfg, panel, None, {}, "d" * 64, "", "test")
        if patch is not None:
            card["patch"] = patch
        with MlflowTracker(experiment="serve-test", tracking_uri=tracking_uri) as tracker:
            uri = log_model(module, kind, cfg, panel, card)
            run_id = tracker.run_id
        info = registry.register(kind, uri, run_id, metrics={}, data_version={"data_digest": "d" * 64},
                                 description="tiny test model", actor="ci")
        champion = registry.aliases(info.name).get("champion")
        report = evaluate_gates(kind_of(info.name), {}, PromoteConfig(require_validation=False),
                                champion_version=champion)
        registry.record_gates(info.name, info.version, report)
        registry.decide(info.name, info.version, Decision(True, "ci", "test champion"))
        versions[kind] = info.version
    return versions


def _publish_in(folder: Path, uri: str, seed: int = 0, patch: dict | None = None) -> dict[str, str]:
    """Publish from inside ``folder``: a SQLite store keeps its artifacts under the working
    directory (rgops.tracking.default_artifact_location), which must not be the checkout."""
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(folder)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        return publish_tiny_champions(uri, seed, patch)
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


@contextlib.contextmanager
def running_server(tmp: Path, serve_params: str, patch: dict | None = None):
    """A real `bentoml serve` over tiny champions in a SQLite registry under ``tmp``:
    yields (base URL, tracking URI, versions, log path, the `bentoml serve` Popen)."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "RGOPS_TRACKING_URI": uri}
    versions = _publish_in(tmp, uri, patch=patch)
    params = tmp / "params.yaml"
    params.write_text(serve_params)
    env.update({"RGOPS_API_KEYS": KEY, "BENTOML_HOME": str(tmp / "bentoml"), "RGOPS_PARAMS": str(params),
                "BENTOML_DO_NOT_TRACK": "true"})
    port = free_port()
    cmd = [sys.executable, "-m", "bentoml", "serve", "services.service:RgopsService", "--host", "127.0.0.1",
           "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with start_and_stop(cmd, f"{base}/readyz", tmp / "server.log", cwd=ROOT, env=env, timeout=150) as proc:
        yield base, uri, versions, tmp / "server.log", proc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, tracking URI, versions, log path): one `bentoml serve` process for the module."""
    # BentoML's adaptive batcher here; the fuzz suite's server runs the default (the greedy batcher)
    # two worker processes whatever the machine's cores: reloads and /metrics must act as one server
    params = ("serve:\n  max_request_mb: 1\n  max_samples: 4\n  reload_poll_s: 0\n  traversal_steps: 3\n"
              "  batching: adaptive\n  workers: 2\n")
    with running_server(tmp_path_factory.mktemp("serve"), params) as (base, uri, versions, log, _):
        yield base, uri, versions, log


def _client(base: str, key: str | None = KEY):
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base, headers=headers, timeout=60)


def _series_files() -> tuple[list[tuple[str, bytes]], list[str]]:
    sys.path.insert(0, str(ROOT / "tests" / "unit" / "data"))
    from rg_dicom_factory import planted_strings, seg_for, ct_slices, tumour_mask

    mask = tumour_mask((6, S, S), (3.0, 15.0, 17.0), 4.0)
    slices = ct_slices("R01-777", 6, S, mask=mask, seed=1)
    files = []
    for i, ds in enumerate([*slices, seg_for(slices, mask)]):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        files.append((f"f{i}.dcm", buf.getvalue()))
    return files, planted_strings("R01-777")


def test_probes_open_everything_else_needs_a_key(server) -> None:
    base = server[0]
    with _client(base, None) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        r = c.post("/extract_patches", json={"patches": []})
        assert r.status_code == 401 and "Bearer" in r.json()["message"]
        assert c.get("/metadata").status_code == 401
    with _client(base, "wrong-key-0123456789abcdef") as c:
        assert c.post("/generate", json={}).status_code == 401
    with _client(base, None) as c:
        twice = c.post("/generate", json={}, headers=[("Authorization", f"Bearer {KEY}"),
                                                       ("Authorization", f"Bearer {KEY}")])
        assert twice.status_code == 401 and twice.json()["error"] == "Unauthorized"
        spaced = c.post("/generate", json={}, headers={"Authorization": f"Bearer  {KEY}"})
        assert spaced.status_code == 401
        for path in ("/patient-R01-777-secret", "/x/y/z"):
            assert c.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
        metrics = c.get("/metrics").text
        assert 'route="other"' in metrics and "patient-R01" not in metrics and 'route="/generate"' in metrics


def test_metrics_count_every_worker(server) -> None:
    base = server[0]
    for _ in range(12):  # a fresh connection each: the two workers share them
        with _client(base, None) as c:
            assert c.get("/livez").status_code == 200
    with _client(base, None) as c:
        text = c.get("/metrics").text
        assert 'rgops_requests_total{route="/livez",method="GET",status="200"} 12' in text, text[-2000:]
        # ready means every worker has its models: a balancer never routes to a worker that would answer 503
        assert c.get("/readyz").json()["workers"] == {"count": 2, "not_ready": []}


def test_metadata_names_versions_and_genes(server) -> None:
    base, _, versions, _ = server
    with _client(base) as c:
        r = c.get("/metadata")
    assert r.status_code == 200, r.text
    models = r.json()["models"]
    assert models["rgops-cae"]["version"] == versions["cae"] and models["rgops-cae"]["alias"] == "champion"
    assert models["rgops-gan"]["genes"] == list(GENES) and len(models["rgops-gan"]["weights_sha256"]) == 64
    assert r.headers["x-request-id"] == r.json()["request_id"]
    assert r.json()["runtime"]["device"] in ("cpu", "cuda") and r.json()["runtime"]["torch_threads"] >= 1


def test_dicom_series_in_features_out_no_phi(server) -> None:
    base, _, versions, log = server
    files, planted = _series_files()
    with _client(base) as c:
        r = c.post("/extract", files=[("files", (n, b, "application/dicom")) for n, b in files])
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["latent"]) == 4 and body["model"]["version"] == versions["cae"]
        assert body["program_scores"] is None and "program head" in body["program_scores_reason"]
        assert body["request_id"] and body["patch"]["slices"][0]["crop_side_px"] > 0
        # the same series as a zip gives the same features
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for n, b in files:
                zf.writestr(f"study/{n}", b)
        z = c.post("/extract", files=[("files", ("study.zip", buf.getvalue(), "application/zip"))])
        assert z.status_code == 200 and np.allclose(z.json()["latent"], body["latent"])
        # ready patches as .npy
        npy = io.BytesIO()
        np.save(npy, np.zeros((2, 1, S, S), np.float32))
        arr = c.post("/extract", files=[("files", ("p.npy", npy.getvalue(), "application/octet-stream"))])
        assert arr.status_code == 200, arr.text
        assert len(arr.json()["patches"]) == 2 and len(arr.json()["patches"][0]["latent"]) == 4
        # one slice + a box
        one = c.post("/extract", files=[("files", files[3])], data={"box": "[10, 12, 20, 22]"})
        assert one.status_code == 200, one.text
        # one slice + a mask (.npy): the mask is the box, so the features are the same
        m = np.zeros((S, S), np.uint8)
        m[10:20, 12:22] = 1
        mbuf = io.BytesIO()
        np.save(mbuf, m)
        masked = c.post("/extract", files=[("files", files[3]), ("files", ("mask.npy", mbuf.getvalue()))])
        assert masked.status_code == 200, masked.text
        assert np.allclose(masked.json()["latent"], one.json()["latent"])
        wrong = io.BytesIO()
        np.save(wrong, np.ones((S, S + 1), np.uint8))
        bad = c.post("/extract", files=[("files", files[3]), ("files", ("mask.npy", wrong.getvalue()))])
        assert bad.status_code == 422 and "grid" in bad.json()["message"]
    text = r.text + z.text + one.text + log.read_text(errors="replace")
    assert not [p for p in planted if p in text]


def test_ready_patches_match_the_dicom_path_and_batch(server) -> None:
    base = server[0]
    rng = np.random.default_rng(0)
    patches = [{"pixels": rng.uniform(-1, 1, (S, S)).round(4).tolist()} for _ in range(3)]
    with _client(base) as c:
        r = c.post("/extract_patches", json={"patches": patches})
        assert r.status_code == 200, r.text
        out = r.json()
        assert len(out) == 3 and all(o["error"] is None and len(o["latent"]) == 4 for o in out)
        bad = c.post("/extract_patches", json={"patches": [{"pixels": [[0.0] * S] * S}, {"pixels": [[5.0] * S] * S}]})
        assert bad.status_code == 200 and bad.json()[0]["error"] is None and "expected [-1, 1]" in bad.json()[1]["error"]
        # concurrent requests share batched model calls; each gets its own patches' results
        alone = [c.post("/extract_patches", json={"patches": [p]}).json()[0]["latent"] for p in patches]
        together: dict[int, list] = {}
        threads = [threading.Thread(target=lambda k=k: together.__setitem__(k, c.post(
            "/extract_patches", json={"patches": [patches[k % 3]] * (1 + k % 2)}).json())) for k in range(9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for k, out_k in together.items():
            assert len(out_k) == 1 + k % 2
            assert all(np.allclose(o["latent"], alone[k % 3], atol=1e-5) for o in out_k)
        runtime = c.get("/metadata").json()["runtime"]
        assert runtime["batching"] == "adaptive"
        assert runtime["tracing"] is False  # serve.tracing defaults to off: no spans nobody exports
        ragged = c.post("/extract_patches", json={"patches": [{"pixels": [[0.0, 1.0], [0.0]]}]})
        assert ragged.status_code == 422 and "pixels" in ragged.json()["message"]
        typo = c.post("/generate", json={"profile": {"GENE0": "Quixote-secret-value"}})
        assert typo.status_code == 422 and "GENE0" in typo.json()["message"]
        assert "Quixote" not in typo.text  # the field is named, the value is not echoed
    assert "Quixote-secret-value" not in server[3].read_text(errors="replace")


def test_profile_in_png_and_dicom_sc_out(server) -> None:
    from PIL import Image

    base, _, versions, _ = server
    profile = {g: 5.0 + i for i, g in enumerate(GENES)}
    with _client(base) as c:
        r = c.post("/generate", json={"profile": profile, "n_samples": 2, "seed": 3, "dicom": True,
                                      "traverse_genes": ["GENE0", "GENE1"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["version"] == versions["gan"] and body["imputed"] is False
    pngs = [Image.open(io.BytesIO(base64.b64decode(p))) for p in body["png"]]
    assert [im.size for im in pngs] == [(S, S), (S, S)]
    ds = pydicom.dcmread(io.BytesIO(base64.b64decode(body["dicom"][0])))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.PatientID == "SYNTHETIC" and "SYNTHETIC" in ds.SeriesDescription and ds.BurnedInAnnotation == "NO"
    assert versions["gan"] in ds.ImageComments and ds.pixel_array.shape == (S, S)
    assert ds.StudyInstanceUID and ds.SOPInstanceUID != pydicom.dcmread(
        io.BytesIO(base64.b64decode(body["dicom"][1]))).SOPInstanceUID
    strip = Image.open(io.BytesIO(base64.b64decode(body["traversal"]["png"])))
    assert strip.size[0] > 3 * S - 1 and body["traversal"]["offsets"][0] < 0


def test_tsv_profile_and_imputation(server) -> None:
    base = server[0]
    tsv = "gene_symbol\tS1\n" + "".join(f"{g}\t{i + 1}\n" for i, g in enumerate(GENES[:-1]))
    with _client(base) as c:
        r = c.post("/generate", json={"profile_tsv": tsv})
        assert r.status_code == 422 and "GENE5" in r.json()["message"]
        ok = c.post("/generate", json={"profile_tsv": tsv, "impute": True})
    assert ok.status_code == 200 and ok.json()["imputed_genes"] == ["GENE5"]


@pytest.mark.parametrize("payload, status, needle", [
    ({"profile": {g: 1.0 for g in GENES[:4]}}, 422, "GENE4"),
    ({"profile": {**{g: 1.0 for g in GENES}, "GENE2": None}}, 422, "NaN"),
    ('{"profile": {' + ", ".join(f'"{g}": {"NaN" if g == "GENE2" else 1.0}' for g in GENES) + "}}", 422, "NaN"),
    ({"profile": {**{g: 1.0 for g in GENES}, "GENE2": -3.0}}, 422, "negative"),
    ({"profile": {g: 1.0 for g in GENES}, "n_samples": 99}, 422, "n_samples"),
    ({}, 422, "exactly one"),
])
def test_bad_profiles_are_4xx(server, payload, status, needle) -> None:
    with _client(server[0]) as c:
        if isinstance(payload, str):  # a JSON NaN token, which httpx will not write itself
            r = c.post("/generate", content=payload, headers={"Content-Type": "application/json"})
        else:
            r = c.post("/generate", json=payload)
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]


def test_bad_uploads_are_4xx_and_the_server_lives_on(server) -> None:
    base = server[0]
    files, _ = _series_files()
    with _client(base) as c:
        r = c.post("/extract", files=[("files", ("x.dcm", b"not dicom at all", "application/dicom"))])
        assert r.status_code == 422 and "not a DICOM" in r.json()["message"]
        cut = files[0][1][: len(files[0][1]) - 300]
        r = c.post("/extract", files=[("files", ("cut.dcm", cut, "application/dicom"))])
        assert r.status_code == 422 and "truncated" in r.json()["message"]
        r = c.post("/extract", files=[("files", (n, b, "application/dicom")) for n, b in files[:-1]])
        assert r.status_code == 422 and "no DICOM SEG" in r.json()["message"] and "series 1: CT" in r.json()["message"]
        # a multipart body cut short (no closing boundary)
        raw = (b"--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.dcm\"\r\n"
               b"Content-Type: application/dicom\r\n\r\n" + files[0][1][:500])
        r = c.post("/extract", content=raw, headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
        assert r.status_code == 400 and "truncated" in r.json()["message"]
        big = c.post("/extract", files=[("files", ("big.dcm", b"\0" * (2 * 1024 * 1024), "application/dicom"))])
        assert big.status_code == 413 and "limit" in big.json()["message"]
        chunked = c.post("/generate", content=iter([b"{" + b" " * 700_000, b" " * 700_000 + b"}"]),
                         headers={"Content-Type": "application/json"})  # no Content-Length
        assert chunked.status_code == 413
        assert c.get("/readyz").status_code == 200
    # a plain urllib client (it sends the whole body before reading) sees the JSON refusals, not a reset
    import urllib.error
    import urllib.request

    for key, status in (("wrong-key-0123456789abcdef", 401), (KEY, 413)):
        req = urllib.request.Request(f"{base}/extract", data=b"\0" * (3 * 1024 * 1024), method="POST",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=B"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=60)
        assert err.value.code == status and json.loads(err.value.read())["request_id"]


def test_reload_follows_the_alias(server) -> None:
    base, uri, versions, _ = server
    from rgops.registry import Registry

    reg = Registry(uri)
    with _client(base) as c:
        r = c.post("/admin/reload")
        assert r.status_code == 200 and r.json()["models"]["rgops-cae"]["changed"] is False
    folder = Path(uri.removeprefix("sqlite:///")).parent
    cae_v2 = _publish_in(folder, uri, seed=1)["cae"]
    assert reg.aliases("rgops-cae")["champion"] == cae_v2 != versions["cae"]
    with _client(base) as c:
        r = c.post("/admin/reload")
        got = r.json()["models"]["rgops-cae"]
        assert r.status_code == 200, r.text
        assert (got["version"], got["changed"], got["last_reload_ok"]) == (cae_v2, True, True)
        assert r.json()["workers"] == {"count": 2, "not_synced": []}  # both workers reloaded before the answer
        assert c.get("/metadata").json()["models"]["rgops-cae"]["version"] == cae_v2
    for _ in range(8):  # fresh connections land on either worker: every one serves v2 already
        with _client(base) as c:
            assert c.get("/metadata").json()["models"]["rgops-cae"]["version"] == cae_v2
    # a champion whose weights were altered after registration is refused; v2 keeps serving
    cae_v3 = _publish_in(folder, uri, seed=2)["cae"]
    caes = [p for p in (folder / "mlartifacts").rglob("model.pth")
            if '"kind": "cae"' in (p.parent.parent / "extra_files" / "config.json").read_text()]
    newest = max(caes, key=lambda p: p.stat().st_mtime)
    newest.write_bytes(newest.read_bytes() + b"tampered")
    with _client(base) as c:
        r = c.post("/admin/reload").json()["models"]["rgops-cae"]
        assert r["version"] == cae_v2 and r["changed"] is False and "SHA-256" in r["last_reload_error"], r
        ready = c.get("/readyz")  # still ready (v2 serves), and it says the last reload failed
        assert ready.status_code == 200 and "SHA-256" in ready.json()["models"]["rgops-cae"]["last_reload_error"]
        assert "SHA-256" in c.get("/metadata").json()["models"]["rgops-cae"]["reload"]["last_reload_error"]
        assert reg.aliases("rgops-cae")["champion"] == cae_v3
        assert c.get("/metadata").json()["models"]["rgops-cae"]["version"] == cae_v2
        assert c.post("/extract_patches", json={"patches": [{"pixels": [[0.0] * S] * S}]}).json()[0]["model"][
            "version"] == cae_v2


def test_bentoml_sync_client_as_in_the_readme(server, tmp_path) -> None:
    import bentoml

    base = server[0]
    files, _ = _series_files()
    zpath = tmp_path / "study.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for n, b in files:
            zf.writestr(n, b)
    with bentoml.SyncHTTPClient(base, token=KEY, timeout=60) as client:
        feats = client.extract(files=[zpath])
        out = client.generate(profile={g: 2.0 for g in GENES[:3]}, impute=True, n_samples=1, dicom=True)
    assert len(feats["latent"]) == 4
    assert out["imputed_genes"] == list(GENES[3:])
    assert pydicom.dcmread(io.BytesIO(base64.b64decode(out["dicom"][0]))).PatientName == "SYNTHETIC"


def test_bounded_load_has_no_errors(server) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from load import run_load

    res = run_load(server[0], KEY, clients=8, seconds=5, patch_size=S, genes=list(GENES))
    assert res["requests"] > 8 and res["errors"] == 0, res["error_examples"]
    assert res["all"]["p99_ms"] > 0
    assert res["shed_503"] == res["shed_503_with_retry_after_and_rgops_body"]  # shed load says when to retry

"""rgops.serving in-process: models built here (real torch modules), no web server."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from rgops import serving
from rgops.data.datasets import GenePanel
from rgops.errors import (
    ConfigError,
    DicomError,
    GeneMismatchError,
    GeneTableError,
    IntegrityError,
    LimitExceeded,
    RegistryError,
    ServiceUnavailable,
    ShapeError,
)
from rgops.export import to_secondary_capture
from rgops.models.cae import CAEConfig, ConditionalAE
from rgops.models.gan import GANConfig, Generator
from rgops.models.program_head import ProgramHead
from rgops.serving.config import UploadLimits

GENES = ("EGFR", "KRAS", "TP53", "MYC", "VIM", "HIF1A")
S = 16


@pytest.fixture(scope="module")
def panel() -> GenePanel:
    return GenePanel(GENES, np.linspace(1, 2, len(GENES)), np.full(len(GENES), 0.5))


def _cae(panel: GenePanel, conditioning: str = "decoder", seed: int = 0) -> ConditionalAE:
    torch.manual_seed(seed)
    return ConditionalAE(CAEConfig(image_size=S, n_genes=len(panel), latent_dim=4, gene_embed_dim=4,
                                   gene_hidden=8, widths=(8, 8), groups=4, conditioning=conditioning)).eval()


@pytest.fixture(scope="module")
def cae(panel: GenePanel) -> serving.ServedModel:
    return serving.ServedModel("rgops-cae", "1", "champion", "cae", _cae(panel), panel)


@pytest.fixture(scope="module")
def gan(panel: GenePanel) -> serving.ServedModel:
    torch.manual_seed(0)
    gen = Generator(GANConfig(image_size=S, n_genes=len(panel), z_dim=8, gene_embed_dim=8, gene_hidden=8,
                              g_channels=8, max_channels=16, groups=4)).eval()
    return serving.ServedModel("rgops-gan", "3", "champion", "gan", gen, panel)


def _profile(**over: float | None) -> dict[str, float | None]:
    prof: dict[str, float | None] = {g: 10.0 + i for i, g in enumerate(GENES)}
    prof.update(over)
    return prof


# --- extraction ---------------------------------------------------------------------------------


def test_encode_matches_direct_module_call(cae: serving.ServedModel) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, S, S)).astype(np.float32)
    feats = serving.encode(cae, serving.check_patches(x, S))
    with torch.no_grad():
        want = cae.module.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(feats.latent, want, rtol=1e-5, atol=1e-6)
    row = feats.row(1)
    assert len(row["latent"]) == 4 and row["program_scores"] is None
    assert "no program head" in row["program_scores_reason"]


def test_program_head_scores_are_the_linear_map(cae: serving.ServedModel) -> None:
    head = ProgramHead(("hypoxia", "emt"), np.arange(8.0).reshape(2, 4), np.array([0.5, -1.0]))
    model = serving.ServedModel(cae.name, cae.version, cae.alias, cae.kind, cae.module, cae.panel, program_head=head)
    x = np.zeros((1, 1, S, S), np.float32)
    feats = serving.encode(model, x)
    assert feats.program_names == ("hypoxia", "emt")
    np.testing.assert_allclose(feats.program_scores, feats.latent @ head.coef.T + head.intercept)
    assert set(feats.row(0)["program_scores"]) == {"hypoxia", "emt"}


@pytest.mark.parametrize("bad, why", [
    (np.zeros((1, 1, S, S + 1)), "shape"),
    (np.zeros((0, 1, S, S)), "shape"),
    (np.full((1, 1, S, S), np.nan), "NaN"),
    (np.full((1, 1, S, S), 3.0), "expected [-1, 1]"),
    ([[1.0, 2.0], [3.0]], "rectangular"),
])
def test_check_patches_refuses(bad: object, why: str) -> None:
    with pytest.raises(ShapeError, match=pytest.importorskip("re").escape(why)):
        serving.check_patches(bad, S)


def test_encode_items_isolates_a_bad_item(cae: serving.ServedModel) -> None:
    good = np.zeros((S, S)).tolist()
    out = serving.encode_items(cae, [(good, None, None), (np.zeros((S, 3)).tolist(), None, None), (good, None, None)])
    assert out[0]["error"] is None and out[2]["error"] is None
    assert out[0]["latent"] == out[2]["latent"]
    assert out[1]["latent"] is None and out[1]["error"].startswith("ShapeError")
    assert out[1]["model"]["version"] == "1"


def test_encoder_conditioned_cae_needs_a_profile(panel: GenePanel) -> None:
    model = serving.ServedModel("rgops-cae", "2", None, "cae", _cae(panel, "encoder"), panel)
    x = np.zeros((1, 1, S, S), np.float32)
    with pytest.raises(GeneMismatchError, match="reads a gene profile"):
        serving.encode(model, x)
    g = serving.normalise_profile(panel, _profile(), impute=False).genes
    assert serving.encode(model, x, g).latent.shape == (1, 4)
    out = serving.encode_items(model, [(x[0, 0].tolist(), None, None), (x[0, 0].tolist(), _profile(), None)])
    assert "send 'profile'" in out[0]["error"] and out[1]["error"] is None


# --- DICOM upload -------------------------------------------------------------------------------


def _dicom_bytes() -> bytes:
    return to_secondary_capture(np.zeros((S, S), np.float32), "m", "1")


def test_read_dicom_upload_files_and_zip() -> None:
    import zipfile

    blob = _dicom_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/1.dcm", blob)
        zf.writestr("a/2.dcm", blob)
    out = serving.read_dicom_upload([("x.dcm", blob), ("s.zip", buf.getvalue())], UploadLimits(max_files=10))
    assert len(out) == 3 and all(isinstance(d, pydicom.Dataset) for d in out)
    with pytest.raises(LimitExceeded, match="at most 2"):
        serving.read_dicom_upload([("s.zip", buf.getvalue()), ("x.dcm", blob)], UploadLimits(max_files=2))


@pytest.mark.parametrize("data, why", [
    (b"hello, not dicom", "not a DICOM Part 10 file"),
    (_dicom_bytes()[:400], "truncated"),
    (_dicom_bytes()[:-100], "truncated"),
    (b"PK\x03\x04 broken zip", "not a readable zip"),
])
def test_read_dicom_upload_refuses_bad_bytes(data: bytes, why: str) -> None:
    with pytest.raises(DicomError, match=why):
        serving.read_dicom_upload([("f", data)], UploadLimits(max_files=10))


def test_read_dicom_upload_refuses_nothing() -> None:
    with pytest.raises(DicomError, match="no files uploaded"):
        serving.read_dicom_upload([], UploadLimits(max_files=10))


# --- generation ---------------------------------------------------------------------------------


def test_generate_is_seeded_and_in_range(gan: serving.ServedModel) -> None:
    g = serving.normalise_profile(gan.panel, _profile(), impute=False).genes
    a = serving.generate(gan, g, 3, seed=7, max_samples=4)
    b = serving.generate(gan, g, 3, seed=7, max_samples=4)
    assert a.shape == (3, 1, S, S) and np.array_equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert not np.array_equal(a, serving.generate(gan, g, 3, seed=8, max_samples=4))
    with pytest.raises(ShapeError, match="between 1 and 4"):
        serving.generate(gan, g, 5, seed=0, max_samples=4)


def test_missing_genes_named_unless_imputed(panel: GenePanel) -> None:
    prof = _profile()
    del prof["TP53"], prof["VIM"]
    with pytest.raises(GeneMismatchError, match="TP53, VIM"):
        serving.normalise_profile(panel, prof, impute=False)
    norm = serving.normalise_profile(panel, {**prof, "EXTRA1": 1.0}, impute=True)
    assert norm.imputed == ("TP53", "VIM") and norm.ignored == 1
    assert norm.genes[0, GENES.index("TP53")] == pytest.approx(0.0)  # training mean -> z = 0


@pytest.mark.parametrize("over, why", [({"EGFR": float("nan")}, "missing \\(NaN\\)"),
                                      ({"EGFR": None}, "missing \\(NaN\\)"),
                                      ({"KRAS": -1.0}, "negative"),
                                      ({"KRAS": "high"}, "not a number")])
def test_bad_values_refused(panel: GenePanel, over: dict, why: str) -> None:
    with pytest.raises(GeneTableError, match=why):
        serving.normalise_profile(panel, _profile(**over), impute=False)


def test_nan_imputed_on_request(panel: GenePanel) -> None:
    norm = serving.normalise_profile(panel, _profile(EGFR=None), impute=True)
    assert norm.imputed == ("EGFR",)


def test_profile_from_tsv(panel: GenePanel) -> None:
    text = "gene_symbol\tR01-001\tR01-002\n" + "".join(f"{g}\t{i}\t{i + 1}\n" for i, g in enumerate(GENES))
    s = serving.profile_from_tsv(text, "R01-002")
    assert s["EGFR"] == 1.0 and s.index.tolist() == list(GENES)
    with pytest.raises(GeneTableError, match="2 sample columns"):
        serving.profile_from_tsv(text)
    with pytest.raises(GeneTableError, match="'gene_symbol' first"):
        serving.profile_from_tsv("gene\tx\nEGFR\t1\n")
    with pytest.raises(GeneTableError, match="non-numeric"):
        serving.profile_from_tsv("gene_symbol\tx\nEGFR\tabc\n")
    one = serving.profile_from_tsv("gene_symbol\tx\nEGFR\t\nKRAS\t2\n")
    assert np.isnan(one["EGFR"]) and one["KRAS"] == 2.0


def test_traversal_moves_only_named_genes(gan: serving.ServedModel) -> None:
    g = serving.normalise_profile(gan.panel, _profile(), impute=False).genes
    strip, offsets = serving.traversal(gan, g, ["HIF1A", "VIM"], steps=5, span=2.0, seed=1)
    assert strip.shape == (5, 1, S, S) and offsets == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert not np.allclose(strip[0], strip[-1])
    with pytest.raises(GeneMismatchError, match="NOPE"):
        serving.traversal(gan, g, ["NOPE"], steps=3, span=1.0, seed=0)


# --- model slot ---------------------------------------------------------------------------------


def test_model_slot_swaps_when_the_alias_moves(panel: GenePanel) -> None:
    alias = {"champion": "1"}
    loads: list[str] = []

    def load(name: str, version: str, a: str | None) -> serving.ServedModel:
        loads.append(version)
        return serving.ServedModel(name, version, a, "cae", _cae(panel, seed=int(version)), panel)

    slot = serving.ModelSlot("rgops-cae", "champion", lambda n, a: alias.get(a), load)
    with pytest.raises(ServiceUnavailable, match="no model loaded"):
        slot.current  # noqa: B018
    assert slot.refresh() and slot.current.version == "1"
    held = slot.current  # a request in flight keeps its model
    assert not slot.refresh() and loads == ["1"]
    alias["champion"] = "2"
    assert slot.refresh() and slot.current.version == "2" and held.version == "1"
    alias.clear()
    with pytest.raises(RegistryError, match="no @champion"):
        slot.refresh()
    assert slot.current.version == "2"  # keeps serving


def test_model_slot_keeps_old_version_when_load_fails(panel: GenePanel) -> None:
    alias = {"champion": "1"}

    def load(name: str, version: str, a: str | None) -> serving.ServedModel:
        if version == "2":
            raise IntegrityError("weights digest differs")
        return serving.ServedModel(name, version, a, "cae", _cae(panel), panel)

    slot = serving.ModelSlot("rgops-cae", "champion", lambda n, a: alias.get(a), load)
    slot.refresh()
    alias["champion"] = "2"
    with pytest.raises(IntegrityError):
        slot.refresh()
    assert slot.current.version == "1"


def test_model_slot_reads_are_never_blocked_by_a_reload(panel: GenePanel) -> None:
    gate = threading.Event()
    alias = {"champion": "1"}

    def load(name: str, version: str, a: str | None) -> serving.ServedModel:
        if version == "2":
            gate.wait(5)
        return serving.ServedModel(name, version, a, "cae", _cae(panel), panel)

    slot = serving.ModelSlot("rgops-cae", "champion", lambda n, a: alias.get(a), load)
    slot.refresh()
    alias["champion"] = "2"
    t = threading.Thread(target=slot.refresh)
    t.start()
    assert slot.current.version == "1"  # answered while the reload is loading
    gate.set()
    t.join(5)
    assert slot.current.version == "2"


# --- several workers act as one server -------------------------------------------------------------


@pytest.fixture()
def other_worker():  # noqa: ANN201 - a real second process, standing in for another server worker
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait(10)


def _slot(panel: GenePanel, alias: dict[str, str]) -> serving.ModelSlot:
    def load(name: str, version: str, a: str | None) -> serving.ServedModel:
        return serving.ServedModel(name, version, a, "cae", _cae(panel), panel)

    return serving.ModelSlot("rgops-cae", "champion", lambda n, a: alias.get(a), load)


def test_a_reload_reaches_every_worker(panel: GenePanel, tmp_path, other_worker) -> None:  # noqa: ANN001
    from rgops.serving.workers import WorkerGroup

    alias = {"champion": "1"}
    here, there = WorkerGroup(tmp_path), WorkerGroup(tmp_path, pid=other_worker.pid)
    here.join()
    there.join()
    assert here.live_pids() == sorted([here.pid, other_worker.pid])
    slot_here, slot_there = _slot(panel, alias), _slot(panel, alias)
    mine = serving.Reloader([slot_here], poll_s=0, timeout_s=5, group=here)
    theirs = serving.Reloader([slot_there], poll_s=0, timeout_s=5, group=there, watch_s=0.02)
    mine.reload_now()
    theirs.start()  # loads v1, then watches the folder (poll_s=0: no polling of the registry)
    try:
        alias["champion"] = "2"
        models, workers = mine.reload_everywhere()
        assert models["rgops-cae"]["version"] == "2" and models["rgops-cae"]["changed"] is True
        assert workers == {"count": 2, "not_synced": []}
        assert slot_there.current.version == "2"  # the other worker reloaded before the answer
    finally:
        theirs.stop()
    # a worker that does not answer in time is named; the answer still comes
    time.sleep(0.1)
    alias["champion"] = "3"
    mine.timeout_s = 0.3
    _, workers = mine.reload_everywhere()
    assert workers == {"count": 2, "not_synced": [other_worker.pid]} and slot_here.current.version == "3"
    other_worker.kill()
    other_worker.wait(10)
    _, workers = mine.reload_everywhere()  # an exited worker is not waited for
    assert workers == {"count": 1, "not_synced": []}


def test_a_move_one_worker_polls_reaches_the_others(panel: GenePanel, tmp_path, other_worker) -> None:  # noqa: ANN001
    from rgops.serving.workers import WorkerGroup

    alias = {"champion": "1"}
    here, there = WorkerGroup(tmp_path), WorkerGroup(tmp_path, pid=other_worker.pid)
    here.join()
    there.join()
    slot_here, slot_there = _slot(panel, alias), _slot(panel, alias)
    polling = serving.Reloader([slot_here], poll_s=0.2, timeout_s=5, group=here, watch_s=0.02)
    waiting = serving.Reloader([slot_there], poll_s=3600, timeout_s=5, group=there, watch_s=0.02)  # never polls
    polling.start()
    waiting.start()
    try:
        deadline = time.monotonic() + 10
        while not (slot_here.ready and slot_there.ready) and time.monotonic() < deadline:
            time.sleep(0.02)
        alias["champion"] = "2"
        deadline = time.monotonic() + 10
        while slot_there.current.version != "2" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert slot_here.current.version == "2" and slot_there.current.version == "2"
    finally:
        polling.stop()
        waiting.stop()


def test_the_server_is_ready_when_every_worker_is(panel: GenePanel, tmp_path, other_worker) -> None:  # noqa: ANN001
    from rgops.serving.workers import WorkerGroup

    here, there = WorkerGroup(tmp_path), WorkerGroup(tmp_path, pid=other_worker.pid)
    here.join()
    there.join()
    their_alias: dict[str, str] = {}
    mine = serving.Reloader([_slot(panel, {"champion": "1"})], poll_s=0, timeout_s=5, group=here)
    theirs = serving.Reloader([_slot(panel, their_alias)], poll_s=0, timeout_s=5, group=there)
    mine.reload_now()
    assert here.not_ready() == [other_worker.pid]  # started, has published nothing yet
    theirs.reload_now()  # its registry has no @champion yet: nothing loaded
    assert here.not_ready() == [other_worker.pid]
    their_alias["champion"] = "1"
    theirs.reload_now()
    assert here.not_ready() == [] and there.not_ready() == []


def test_a_reused_pid_is_not_a_worker(tmp_path, other_worker) -> None:  # noqa: ANN001
    from rgops.serving.workers import WorkerGroup

    here = WorkerGroup(tmp_path)
    here.join()
    # an exited worker's file whose PID another process has taken since: its start time differs
    (tmp_path / f"worker-{other_worker.pid}").write_text("1")
    assert here.live_pids() == [here.pid]
    WorkerGroup(tmp_path, pid=other_worker.pid).join()
    assert here.live_pids() == sorted([here.pid, other_worker.pid])


def test_metrics_sum_every_worker(tmp_path, other_worker) -> None:  # noqa: ANN001
    from rgops.serving.workers import WorkerGroup
    from services.metrics import RequestMetrics

    here, there = WorkerGroup(tmp_path), WorkerGroup(tmp_path, pid=other_worker.pid)
    here.join()
    there.join()
    routes = frozenset({"/generate", "/metrics"})
    mine, theirs = RequestMetrics(routes, here), RequestMetrics(routes, there)
    for _ in range(3):
        mine.observe("/generate", "POST", 200, 0.02)
    theirs.observe("/generate", "POST", 200, 2.0)
    theirs.observe("/patient-R01", "GET", 404, 0.001)
    text = mine.render().decode()  # asks the other worker for a fresh snapshot: no sleep needed
    assert 'rgops_requests_total{route="/generate",method="POST",status="200"} 4' in text
    assert 'rgops_request_seconds_bucket{route="/generate",method="POST",status="200",le="0.025"} 3' in text
    assert 'rgops_requests_total{route="other",method="GET",status="404"} 1' in text and "patient" not in text
    other_worker.kill()
    other_worker.wait(10)
    # an exited worker's counts stay in the totals: counters never go backwards
    assert 'rgops_requests_total{route="/generate",method="POST",status="200"} 4' in mine.render().decode()
    single = RequestMetrics(routes)  # one worker: no folder, its own counts
    single.observe("/generate", "POST", 200, 0.02)
    assert 'rgops_requests_total{route="/generate",method="POST",status="200"} 1' in single.render().decode()


def test_worker_count_and_torch_threads() -> None:
    cfg = serving.ServeConfig()
    assert cfg.worker_count(cpus=2) == 2 and cfg.worker_count(cpus=64) == 4 and cfg.worker_count(cpus=1) == 1
    assert cfg.torch_thread_count(cpus=2) == 1 and cfg.torch_thread_count(cpus=64) == 4
    assert serving.ServeConfig(workers=1, threads=2).torch_thread_count(cpus=8) == 4
    with pytest.raises(ConfigError, match="serve.workers"):
        serving.ServeConfig(workers=-1)


# --- configuration ------------------------------------------------------------------------------


def test_api_keys_from_env_and_file(tmp_path) -> None:  # noqa: ANN001
    from services.security import load_api_keys

    f = tmp_path / "keys"
    f.write_text("# ops\nfile-key-0123456789abcdef\n\n")
    keys = load_api_keys({"RGOPS_API_KEYS": "env-key-0123456789abcdef, ", "RGOPS_API_KEYS_FILE": str(f)})
    assert keys == (b"env-key-0123456789abcdef", b"file-key-0123456789abcdef")
    with pytest.raises(ConfigError, match="no API keys"):
        load_api_keys({})
    with pytest.raises(ConfigError, match="shorter than 16"):
        load_api_keys({"RGOPS_API_KEYS": "short"})
    with pytest.raises(ConfigError, match="cannot be read"):
        load_api_keys({"RGOPS_API_KEYS_FILE": str(tmp_path / "absent")})


def test_serve_config_from_params() -> None:
    assert serving.ServeConfig.from_params(None).host == "127.0.0.1"
    assert serving.ServeConfig.from_params({"serve": {"port": 8080}}).port == 8080
    with pytest.raises(ConfigError, match="unknown key"):
        serving.ServeConfig.from_params({"serve": {"prot": 1}})
    with pytest.raises(ConfigError, match="max_samples"):
        serving.ServeConfig.from_params({"serve": {"max_samples": 0}})
    assert serving.ServeConfig(device="cpu").torch_device() == "cpu"
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert serving.ServeConfig().torch_device() == want
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            serving.ServeConfig(device="cuda").torch_device()


def test_profile_series_roundtrip_is_panel_order(panel: GenePanel) -> None:
    s = pd.Series({g: 5.0 for g in reversed(GENES)})
    g = serving.normalise_profile(panel, s, impute=False).genes
    assert g.shape == (1, len(GENES))
    np.testing.assert_allclose(g[0], (np.log2(6.0) - panel.mean) / panel.std, rtol=1e-6)


def test_npy_patches(cae: serving.ServedModel) -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 1, S, S), np.float32))
    data = buf.getvalue()
    assert serving.is_npy(data) and not serving.is_npy(_dicom_bytes())
    assert serving.read_npy_patches(data, S, 4).shape == (2, 1, S, S)
    with pytest.raises(LimitExceeded, match="at most"):
        serving.read_npy_patches(data, S, 1)
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ShapeError, match="object arrays are refused"):
        serving.read_npy_patches(obj.getvalue(), S, 4)


def test_error_mapping_and_key_check() -> None:
    from services.errors import RequestTooLarge, Unauthorized, status_of
    from services.security import key_matches

    from rgops.errors import DicomDecodeError, PromotionRefused, RgopsError, SegmentationError, TrackingError

    assert status_of(GeneMismatchError("x")) == 422 and status_of(GeneTableError("x")) == 422
    assert status_of(SegmentationError("x")) == 422 and status_of(DicomDecodeError("x")) == 415
    assert status_of(RegistryError("x")) == 404 and status_of(PromotionRefused("x")) == 409
    assert status_of(IntegrityError("x")) == 409 and status_of(ConfigError("x")) == 400
    assert status_of(RequestTooLarge("x")) == 413 and status_of(Unauthorized("x")) == 401
    assert status_of(TrackingError("x")) == 503 and status_of(RgopsError("x")) == 400
    keys = (b"a" * 20, b"b" * 20)
    assert key_matches(b"b" * 20, keys) and not key_matches(b"b" * 19, keys) and not key_matches(b"", keys)


def test_cli_serve_refuses_to_start_without_keys(monkeypatch) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from rgops.cli import app

    monkeypatch.delenv("RGOPS_API_KEYS", raising=False)
    monkeypatch.delenv("RGOPS_API_KEYS_FILE", raising=False)
    result = CliRunner().invoke(app, ["serve", "--port", "3999"])
    assert result.exit_code == 1 and "no API keys configured" in result.output


def test_npy_mask() -> None:
    def npy(a: np.ndarray) -> bytes:
        b = io.BytesIO()
        np.save(b, a)
        return b.getvalue()

    m = np.zeros((4, 4), np.uint8)
    m[1, 2] = 1
    assert serving.read_npy_mask([npy(m)]).shape == (4, 4)
    for bad in (np.zeros((4, 4)), np.ones((1, 4, 4)), np.array(["a", "b"]).reshape(1, 2)):
        with pytest.raises(ShapeError, match="tumour mask"):
            serving.read_npy_mask([npy(bad)])
    with pytest.raises(ShapeError, match="2 .npy files"):
        serving.read_npy_mask([npy(m), npy(m)])

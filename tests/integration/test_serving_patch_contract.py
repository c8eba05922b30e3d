"""The served crop follows the patch contract of the model, which ingest's params decide: a CAE trained
on datasets ingested with another ``ingest.hu_window`` carries that window in its card, `/metadata`
shows it, and `/extract` cuts the uploaded DICOM with it (a real `bentoml serve`, real SQLite registry)."""

from __future__ import annotations

import numpy as np
import pytest

from rgops.data.ingest import IngestConfig
from tests.integration.test_services import S, _client, _series_files, running_server

pytestmark = pytest.mark.integration

WINDOW = [-300.0, 200.0]  # not the default [-1000, 500]


@pytest.fixture(scope="module")
def narrow_window_server(tmp_path_factory):
    spec = IngestConfig.from_params({"ingest": {"hu_window": WINDOW, "patch_size": S}}).spec()
    params = "serve:\n  reload_poll_s: 0\n"
    with running_server(tmp_path_factory.mktemp("window"), params, patch=spec.to_json()) as stack:
        yield stack, spec


def test_hu_window_from_ingest_params_reaches_metadata_and_the_crop(narrow_window_server) -> None:
    from rgops import serving
    from rgops.data.patch import PatchSpec
    from rgops.serving.uploads import read_dicom_upload

    (base, uri, versions, _, _), spec = narrow_window_server
    files, _ = _series_files()
    with _client(base) as c:
        meta = c.get("/metadata").json()["models"]["rgops-cae"]
        r = c.post("/extract", files=[("files", (n, b, "application/dicom")) for n, b in files])
    assert meta["patch"]["hu_window"] == WINDOW
    assert r.status_code == 200, r.text
    resolve, load = serving.registry_source(uri, "cpu")
    model = load("rgops-cae", versions["cae"], "champion")
    assert model.spec == spec

    def latent(with_spec: PatchSpec) -> np.ndarray:
        datasets = read_dicom_upload(files, serving.ServeConfig().limits)
        patches, _ = serving.patch_from_dicom(datasets, with_spec)
        return serving.encode(model, patches).latent.mean(axis=0)

    served = np.asarray(r.json()["latent"])
    np.testing.assert_allclose(served, latent(spec), rtol=1e-5, atol=1e-6)
    default_window = PatchSpec.from_json({**spec.to_json(), "hu_window": [-1000.0, 500.0]})
    assert not np.allclose(served, latent(default_window), atol=1e-6)  # the window really changes the crop

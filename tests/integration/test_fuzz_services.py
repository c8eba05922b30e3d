"""Whatever a client sends, the services answer a 4xx with an rgops error body or a 200 with finite
output, never a 5xx, and memory stays bounded. A real `bentoml serve` (default limits: 1 GiB bodies,
2 GiB decompressed) over tiny champions, called over HTTP.

* A seeded Hypothesis corpus of 520 malformed requests (tests/integration/fuzz_cases.py: mutated
  DICOM series and SEGs, zips, .npy files, JSON bodies and multipart forms) runs one request at a
  time; the server must answer every one and stay alive. bench/fuzz.py runs the same strategies longer.
* Zip bombs, a header declaring 100,000 RLE frames and a .npy header claiming 2^38 patches are refused
  while the server's peak RSS (VmHWM in /proc, reset before) grows by less than 200 MB.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.fuzz_cases import all_cases, check_answer
from tests.integration.test_services import GENES, S, _client, _series_files, running_server

pytestmark = pytest.mark.integration

N_CASES = 520
SERIES, PLANTED = _series_files()
GOOD_PATCH = {"patches": [{"pixels": np.zeros((S, S)).tolist()}]}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    params = "serve:\n  max_samples: 4\n  reload_poll_s: 0\n  traversal_steps: 3\n"
    with running_server(tmp_path_factory.mktemp("fuzz"), params) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(fuzz_server):
    with _client(fuzz_server[0]) as c:
        yield c


ANSWERS: list[tuple[str, int]] = []


@settings(max_examples=N_CASES, derandomize=True, database=None, deadline=None, print_blob=True,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_corpus_never_5xx(client, data) -> None:  # noqa: ANN001
    case = data.draw(all_cases(SERIES, GENES, S), label="case")
    r = case.send(client)
    ANSWERS.append((case.kind, r.status_code))
    problem = check_answer(r.status_code, r.content)
    assert problem is None, f"{case.kind} -> {problem}"


def test_fuzz_corpus_ran_and_the_server_lives(fuzz_server, client) -> None:
    assert len(ANSWERS) >= 500, f"only {len(ANSWERS)} fuzz cases ran (run the whole module)"
    kinds = {k.split("-")[0] for k, _ in ANSWERS}
    assert {"dicom", "zip", "npy", "json"} <= kinds and any(s == 200 for _, s in ANSWERS)
    assert client.get("/readyz").status_code == 200
    assert client.post("/extract_patches", json=GOOD_PATCH).status_code == 200
    log = fuzz_server[3].read_text(errors="replace")
    assert "PPPPPPPPPPPPPPPP" not in log  # long client file names are never logged
    assert not [p for p in PLANTED if p in log]  # nor identifiers from the DICOM headers


# --- memory ------------------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    from tests.integration.test_serve_lifecycle import descendants

    return [pid, *sorted(descendants(pid))]


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _zip_bomb(prefix: bytes = b"", gib: float = 1.0) -> bytes:
    """A zip of about 1 MB whose one member expands to ``gib`` GiB (``prefix`` then zeros)."""
    buf = io.BytesIO()
    zero = b"\0" * (1 << 20)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("study/bomb.dcm", "w", force_zip64=True) as w:
        w.write(prefix)
        for _ in range(int(gib * 1024)):
            w.write(zero)
    return buf.getvalue()


def _rle_frames_bomb() -> bytes:
    """A real CT slice re-declared as RLE with 100,000 frames (a 48.8 GiB allocation if believed)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "data"))
    from rg_dicom_factory import ct_slices

    ds = ct_slices("R01-999", 1, 256)[0]
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.NumberOfFrames = 100000
    ds.PixelData = encapsulate([b"\0" * 64])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _npy_claiming(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 4096


def test_bombs_are_refused_with_bounded_memory(fuzz_server, client) -> None:
    proc = fuzz_server[4]
    assert client.post("/extract_patches", json=GOOD_PATCH).status_code == 200  # warm
    pids = _tree(proc.pid)
    before = {p: _status(p, "VmRSS") for p in pids}
    for p in pids:
        Path(f"/proc/{p}/clear_refs").write_text("5")  # reset each process's peak RSS (VmHWM)
    cases = {
        "zip bomb (zeros)": ("files", ("s.zip", _zip_bomb(), "application/zip")),
        "zip bomb (DICOM preamble, then zeros)": ("files", ("s.zip", _zip_bomb(b"\0" * 128 + b"DICM"), "application/zip")),
        "100,000 RLE frames": ("files", ("ct.dcm", _rle_frames_bomb(), "application/dicom")),
        ".npy claiming 2^38 patches": ("files", ("p.npy", _npy_claiming((2**38, 1, S, S)), "application/octet-stream")),
    }
    for what, part in cases.items():
        r = client.post("/extract", files=[part])
        assert r.status_code in (413, 415, 422) and r.json()["request_id"], f"{what}: {r.status_code} {r.text[:300]}"
    deep = client.post("/generate", content=b'{"traverse_genes": ' + b"[" * 100000 + b"]" * 100000 + b"}",
                       headers={"Content-Type": "application/json"})
    assert deep.status_code == 422 and "max_json_depth" in deep.json()["message"]
    growth = {p: _status(p, "VmHWM") - before[p] for p in pids if Path(f"/proc/{p}").exists()}
    assert max(growth.values()) < 200 * 1024 * 1024, {p: g // 2**20 for p, g in growth.items()}
    assert client.post("/extract_patches", json=GOOD_PATCH).status_code == 200  # and it still answers

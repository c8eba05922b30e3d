"""Server memory while a thin-slice CT study is uploaded to ``/extract`` (issue #12: 300 MB uploads go
through with the server's memory bounded).

A synthetic thin-slice chest CT (512 x 512, 0.625 mm slices, one patient, with its SEG) is written
once under ``--work``. A real `bentoml serve` (tiny @champion models, ``bench/_serving_harness.py``)
receives the study as a multipart upload of every file and as one zip; a sampler reads the resident
memory (``VmRSS`` from ``/proc``) of the server's whole process tree every 20 ms. Each upload size is
measured in the same run, so the growth can be read against the upload size:

* ``quarter``: the central quarter of the slices (and the SEG frames that reference them);
* ``full``: the whole study (about 300 MB).

Reports per upload: bytes sent, status, seconds, the tree's RSS before, its peak during the request
and after, the growth and growth / upload size. Writes ``bench/results/upload_rss.json``.
Run: ``python bench/upload_rss.py [--slices 580]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _serving_harness import KEY, device, local_stack  # noqa: E402


def _study(work: Path, slices: int) -> list[Path]:
    """The thin-slice study's files (cached): CT slices and the SEG."""
    from rgops.data.synth import SynthConfig, generate_cohort

    cohort = work / f"thin-{slices}"
    if not (cohort / "cohort.json").is_file():
        t = time.perf_counter()
        generate_cohort(cohort, SynthConfig(n_patients=1, seed=5, n_genes=64, genes_per_module=8, image_size=512,
                                            field_of_view_mm=350.0, slice_thickness_mm=(0.625,),
                                            min_slices=slices, max_slices=slices), overwrite=True)
        print(f"study written in {time.perf_counter() - t:.0f} s", flush=True)
    patient = sorted((cohort / "ct").iterdir())[0]
    return sorted(p for p in patient.rglob("*") if p.is_file())


def _subset(files: list[Path], fraction: float, out: Path) -> list[Path]:
    """The central ``fraction`` of the CT slices by position, and a SEG cut to the frames that reference them."""
    import pydicom

    cts, segs = [], []
    for p in files:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        (segs if ds.Modality == "SEG" else cts).append((float(ds.ImagePositionPatient[2]) if ds.Modality != "SEG"
                                                         else 0.0, p, ds))
    cts.sort(key=lambda t: t[0])
    k = max(1, int(len(cts) * fraction))
    keep = cts[(len(cts) - k) // 2: (len(cts) - k) // 2 + k]  # the tumour sits near the middle of the volume
    uids = {ds.SOPInstanceUID for _, _, ds in keep}
    seg = pydicom.dcmread(segs[0][1])
    frames = [i for i, f in enumerate(seg.PerFrameFunctionalGroupsSequence)
              if f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID in uids]
    if not frames:
        raise SystemExit("the chosen slices hold no tumour; use a larger fraction")
    pixels = seg.pixel_array
    pixels = pixels[None] if pixels.ndim == 2 else pixels
    import numpy as np

    seg.PerFrameFunctionalGroupsSequence = [seg.PerFrameFunctionalGroupsSequence[i] for i in frames]
    seg.NumberOfFrames = len(frames)
    seg.PixelData = np.packbits(pixels[frames].astype(np.uint8).reshape(-1), bitorder="little").tobytes()
    seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence = [
        r for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence if r.ReferencedSOPInstanceUID in uids]
    out.mkdir(parents=True, exist_ok=True)
    seg_path = out / "seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    return [p for _, p, _ in keep] + [seg_path]


def _tree(pid: int) -> list[int]:
    """``pid`` and every descendant (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _rss(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class Sampler:
    """Peak resident memory of a process tree while a block runs (sampled every ``period`` seconds)."""

    def __init__(self, pid: int, period: float = 0.02) -> None:
        self.pids, self.period, self.peak = _tree(pid), period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss(self.pids))
            time.sleep(self.period)

    def __enter__(self) -> "Sampler":
        self.before = _rss(self.pids)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss(self.pids))


def _zip(files: list[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for p in files:
            zf.write(p, p.name)
    return buf.getvalue()


def _upload(base: str, pid: int, name: str, files: list[Path], as_zip: bool) -> dict[str, object]:
    import httpx

    headers = {"Authorization": f"Bearer {KEY}"}
    if as_zip:
        body = _zip(files)
        parts = [("files", ("study.zip", body, "application/zip"))]
        sent = len(body)
    else:
        handles = [open(p, "rb") for p in files]  # httpx streams open files: the client holds no copy
        parts = [("files", (p.name, h, "application/dicom")) for p, h in zip(files, handles)]
        sent = sum(p.stat().st_size for p in files)
    try:
        with Sampler(pid) as s, httpx.Client(base_url=base, headers=headers, timeout=900) as c:
            t0 = time.perf_counter()
            r = c.post("/extract", files=parts)
            seconds = time.perf_counter() - t0
    finally:
        if not as_zip:
            for h in handles:
                h.close()
    time.sleep(1.0)
    after = _rss(s.pids)
    row = {"upload": name, "as_zip": as_zip, "files": len(files), "sent_mb": round(sent / 2**20, 1),
           "status": r.status_code, "seconds": round(seconds, 1), "rss_before_mb": round(s.before / 2**20),
           "rss_peak_mb": round(s.peak / 2**20), "rss_after_mb": round(after / 2**20),
           "growth_mb": round((s.peak - s.before) / 2**20), "growth_over_upload": round((s.peak - s.before) / sent, 2)}
    if r.status_code != 200:
        row["error"] = r.text[:300]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=580, help="CT slices of 512 x 512 (580: about 300 MB)")
    ap.add_argument("--work", type=Path, default=ROOT / ".rgops" / "bench-upload")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "upload_rss.json")
    args = ap.parse_args()
    os.environ.setdefault("RGOPS_PSEUDONYM_KEY", "bench-key-0123456789abcdef-not-secret")
    files = _study(args.work, args.slices)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rgops-upload-") as tmp:
        quarter = _subset(files, 0.25, Path(tmp) / "quarter")
        with local_stack() as (base, _uri, stack):
            pid = int((stack / "server.pid").read_text())
            for name, chosen in (("quarter", quarter), ("full", files)):
                for as_zip in (False, True):
                    rows.append(_upload(base, pid, name, chosen, as_zip))
    doc = {"device": device(), "slices": args.slices, "rows": rows,
           "note": "RSS of the bentoml serve process tree (server + worker), sampled every 20 ms from /proc; the "
                   "client runs on the same 2-core machine"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

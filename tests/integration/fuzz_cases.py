"""Malformed requests for the services, as Hypothesis strategies over real inputs.

Shared by the CI fuzz test (tests/integration/test_fuzz_services.py) and the longer run in
bench/fuzz.py. Each case is a :class:`Case`: a route and what to send. The mutations start from
real DICOM (a CT series and its SEG written with pydicom/highdicom), real zips, real .npy files and
valid JSON bodies, and corrupt them the ways clients and networks do: bit flips (mostly in the
header), VR and length fields overwritten, truncation, zip flags and methods, deep nesting, wrong
field names, text in file fields, long file names, huge numbers.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st


@dataclass
class Case:
    route: str
    files: list[tuple[str, tuple[str, bytes | str, str]]] = field(default_factory=list)
    data: dict[str, str] = field(default_factory=dict)
    json_body: bytes | None = None
    kind: str = ""

    def send(self, client: Any) -> Any:
        if self.json_body is not None:
            return client.post(self.route, content=self.json_body, headers={"Content-Type": "application/json"})
        return client.post(self.route, files=self.files or None, data=self.data or None)


def zipped(files: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            zf.writestr(f"study/{name}", data)
    return buf.getvalue()


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with bit flips (mostly in the first 2 KB: the header), overwritten VR/length bytes, or cut."""
    out = bytearray(data)
    how = draw(st.sampled_from(["flip", "flip", "vr", "length", "truncate", "splice"]))
    head = min(len(out), 2048)
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, head - 1) | st.integers(0, len(out) - 1))
            out[pos] ^= 1 << draw(st.integers(0, 7))
    elif how == "vr":
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(132, head - 2))
            out[pos:pos + 2] = draw(st.sampled_from([b"XX", b"\x00\x00", b"SQ", b"UN", b"OB", b"DS", b"zz"]))
    elif how == "length":
        pos = draw(st.integers(132, head - 4))
        out[pos:pos + 4] = struct.pack("<I", draw(st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFFF, 2**31 - 1, 7])))
    elif how == "truncate":
        out = out[: draw(st.integers(0, len(out) - 1))]
    else:
        a, b = sorted(draw(st.lists(st.integers(0, len(out)), min_size=2, max_size=2)))
        out = out[:a] + out[b:]
    return bytes(out)


@st.composite
def dicom_cases(draw: st.DrawFn, series: list[tuple[str, bytes]]) -> Case:
    files = list(series)
    k = draw(st.integers(0, len(files) - 1))
    files[k] = (files[k][0], draw(mutated_bytes(files[k][1])))
    if draw(st.booleans()):
        return Case("/extract", files=[("files", ("study.zip", zipped(files), "application/zip"))], kind="dicom-zip")
    return Case("/extract", files=[("files", (n, b, "application/dicom")) for n, b in files], kind="dicom")


@st.composite
def zip_cases(draw: st.DrawFn, series: list[tuple[str, bytes]]) -> Case:
    data = bytearray(zipped(series))
    how = draw(st.sampled_from(["mutate", "encrypted", "method", "members"]))
    if how == "mutate":
        data = bytearray(draw(mutated_bytes(bytes(data))))
    elif how in ("encrypted", "method"):
        for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # local and central headers
            start = 0
            while (pos := data.find(sig, start)) >= 0:
                if how == "encrypted":
                    off = pos + (6 if sig == b"PK\x03\x04" else 8)
                    data[off] |= 1
                else:
                    off = pos + (8 if sig == b"PK\x03\x04" else 10)
                    data[off:off + 2] = struct.pack("<H", draw(st.sampled_from([6, 99, 1, 97])))
                start = pos + 4
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for i in range(draw(st.integers(0, 40))):
                zf.writestr(f"d{i}/", b"") if draw(st.booleans()) else zf.writestr(f"f{i}.dcm", b"x" * i)
        data = bytearray(buf.getvalue())
    return Case("/extract", files=[("files", ("s.zip", bytes(data), "application/zip"))], kind=f"zip-{how}")


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@st.composite
def npy_cases(draw: st.DrawFn, size: int) -> Case:
    shape = tuple(draw(st.lists(st.integers(0, 40), min_size=0, max_size=5)))
    dtype = draw(st.sampled_from(["<f4", "<f8", "<i2", "|u1", "|b1", "<c8"]))
    arr = np.zeros(shape, dtype=dtype) if math.prod(shape) < 200_000 else np.zeros((1,), dtype)
    data = _npy(arr)
    if draw(st.booleans()):  # a header that lies about the shape
        claimed = draw(st.sampled_from([(2**38, 1, size, size), (2, 1, 9_999_999, 9), (size, size), (),
                                        (2**62, 2**62)]))
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": claimed})
        data = buf.getvalue() + b"\0" * draw(st.integers(0, 4096))
    if draw(st.booleans()):
        data = draw(mutated_bytes(data + b"\0" * 2048))
    return Case("/extract", files=[("files", ("p.npy", data, "application/octet-stream"))], kind="npy")


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@st.composite
def json_cases(draw: st.DrawFn, genes: tuple[str, ...], size: int) -> Case:
    route = draw(st.sampled_from(["/generate", "/extract_patches"]))
    how = draw(st.sampled_from(["fields", "values", "deep", "garbage"]))
    if route == "/generate":
        body: dict[str, Any] = {"profile": {g: draw(st.floats(0, 20)) for g in genes}, "impute": True}
        keys = ["profile", "profile_tsv", "sample", "n_samples", "seed", "impute", "dicom", "traverse_genes"]
    else:
        body = {"patches": [{"pixels": [[0.0] * size] * size}]}
        keys = ["patches"]
    if how == "fields":
        body[draw(st.sampled_from(keys + ["file", "x" * 300, ""]))] = draw(json_values)
    elif how == "values":
        target = body["profile"] if route == "/generate" else body["patches"][0]
        key = draw(st.sampled_from(list(genes) + ["pixels", "pixels_b64", "mm_per_px", "seed"]))
        target[key] = draw(json_values | st.sampled_from([2**64, 2**64 + 1, -1, 10**30]))
        if route == "/generate" and draw(st.booleans()):
            body["seed"] = draw(st.sampled_from([2**64, 2**63, -1, 2**64 - 1, 1.5, "7"]))
    text = json.dumps(body, allow_nan=True)
    if how == "deep":
        text = text[:-1] + ', "traverse_genes": ' + nested(draw(st.integers(30, 3000))) + "}"
    elif how == "garbage":
        text = draw(mutated_bytes(text.encode() + b" " * 64)).decode("latin-1")
    return Case(route, json_body=text.encode("utf-8", "surrogatepass"), kind=f"json-{how}")


@st.composite
def form_cases(draw: st.DrawFn, series: list[tuple[str, bytes]]) -> Case:
    ct = series[0]
    how = draw(st.sampled_from(["text-files", "wrong-name", "long-name", "deep-box", "box-values"]))
    if how == "text-files":
        return Case("/extract", data={"files": draw(st.sampled_from(["http://127.0.0.1:1/x", "file:///etc/passwd",
                                                                      "", "x" * 500]))}, kind=how)
    if how == "wrong-name":
        name = draw(st.sampled_from(["file", "Files", "files[]", "upload", "box"]))
        return Case("/extract", files=[(name, (ct[0], ct[1], "application/dicom"))], kind=how)
    if how == "long-name":
        fname = "P" * draw(st.integers(200, 400)) + ".dcm"
        return Case("/extract", files=[("files", (fname, ct[1], "application/dicom"))], kind=how)
    if how == "deep-box":
        return Case("/extract", files=[("files", (ct[0], ct[1], "application/dicom"))],
                    data={"box": nested(draw(st.integers(30, 3000)))}, kind=how)
    box = draw(st.lists(st.integers(-(2**70), 2**70) | st.sampled_from([0, 4, 16, 31]), min_size=0, max_size=6))
    return Case("/extract", files=[("files", (ct[0], ct[1], "application/dicom"))], data={"box": json.dumps(box)},
                kind=how)


def all_cases(series: list[tuple[str, bytes]], genes: tuple[str, ...], size: int) -> st.SearchStrategy[Case]:
    return st.one_of(dicom_cases(series), dicom_cases(series), zip_cases(series), npy_cases(size),
                     json_cases(genes, size), form_cases(series))


def finite(value: Any) -> bool:
    """Whether every number in a JSON value is finite."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True


def check_answer(status: int, body: bytes) -> str | None:
    """What is wrong with an answer to a malformed request, or None: a 4xx with an rgops error body, or
    a 200 with finite output; never a 5xx."""
    if status >= 500:
        return f"HTTP {status}: {body[:300]!r}"
    try:
        data = json.loads(body)
    except ValueError:
        return f"HTTP {status} without a JSON body: {body[:120]!r}"
    if status >= 400:
        if not (isinstance(data, dict) and {"error", "message", "request_id"} <= set(data)):
            return f"HTTP {status} without an rgops error body: {body[:300]!r}"
        return None
    return None if finite(data) else f"HTTP {status} with non-finite numbers"

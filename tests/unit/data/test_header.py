"""rgops.data.header reads raw header bytes itself; it must return what pydicom's converted value gives."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from rgops.data import header

SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
_NUMBER = st.one_of(st.integers(-(10**7), 10**7).map(str), st.floats(width=32).map(lambda v: f"{v:.6g}"),
                    st.floats().map(repr), st.sampled_from(["", " ", "+.5", "5.", "1e3", "-0", "1_0"]))
#: well-formed values (several numbers, padded) most of the time, and jumbles of number characters
NUMBER_BYTES = st.one_of(
    st.tuples(st.lists(_NUMBER, max_size=4), st.sampled_from(["", " ", "\\x00"]))
    .map(lambda t: ("\\".join(t[0]) + t[1]).encode()),
    st.binary(max_size=24).map(lambda b: bytes(b"0123456789+-.eE \\\\nax_"[c % 22] for c in b)))
TEXT_BYTES = st.one_of(
    st.tuples(st.lists(st.integers(0, 10**12).map(str), min_size=1, max_size=8).map(".".join),  # UIDs, padded
              st.sampled_from(["", " ", "\\x00", "  "]), st.sampled_from(["", " "]))
    .map(lambda t: (t[2] + t[0] + t[1]).encode()),
    st.binary(max_size=20), st.text(alphabet=" .0123456789ABCDXYZ_\\\x00", max_size=20).map(lambda s: s.encode()))


def _raw_dataset(keyword: str, vr: str | None, value: bytes, little: bool = True) -> Dataset:
    """A dataset holding one element as pydicom's reader leaves it: raw bytes, not yet converted."""
    tag = tag_for_keyword(keyword)
    return Dataset({tag: RawDataElement(tag, vr, len(value), value, 0, vr is None, little)})


def _outcome(read, *args):
    """The value returned, or the kind of failure (both readers must fail alike)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read(*args)
        except Exception as exc:  # noqa: BLE001  which error, compared between the readers
            return type(exc).__name__


def _pydicom_numbers(ds: Dataset, keyword: str):
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if value is None or value == "":
        return []
    return [float(v) for v in ([value] if isinstance(value, (str, bytes, int, float)) else value)]


def _pydicom_integer(ds: Dataset, keyword: str):
    value = ds.get(keyword)
    return None if value is None or value == "" else int(value)


def _same(a, b) -> bool:
    if isinstance(a, list) and isinstance(b, list):  # NaN == NaN here
        return len(a) == len(b) and all(x == y or (x != x and y != y) for x, y in zip(a, b))
    return a == b


@SETTINGS
@given(value=NUMBER_BYTES, keyword=st.sampled_from(["PixelSpacing", "RescaleSlope", "InstanceNumber"]),
       implicit=st.booleans())
def test_numbers_are_pydicoms(value, keyword, implicit):
    vr = None if implicit else ("IS" if keyword == "InstanceNumber" else "DS")
    got = _outcome(header.numbers, _raw_dataset(keyword, vr, value), keyword)
    want = _outcome(_pydicom_numbers, _raw_dataset(keyword, vr, value), keyword)
    assert _same(got, want), (value, got, want)


@SETTINGS
@given(value=st.one_of(NUMBER_BYTES, st.binary(max_size=4)), keyword=st.sampled_from(["Rows", "InstanceNumber"]),
       little=st.booleans())
def test_integers_are_pydicoms(value, keyword, little):
    vr = "US" if keyword == "Rows" else "IS"
    got = _outcome(header.integer, _raw_dataset(keyword, vr, value, little), keyword)
    want = _outcome(_pydicom_integer, _raw_dataset(keyword, vr, value, little), keyword)
    assert got == want, (value, got, want)


@SETTINGS
@given(value=TEXT_BYTES, keyword=st.sampled_from(["Modality", "SOPClassUID"]), implicit=st.booleans())
def test_text_is_pydicoms(value, keyword, implicit):
    vr = None if implicit else ("CS" if keyword == "Modality" else "UI")
    got = _outcome(header.text, _raw_dataset(keyword, vr, value), keyword)
    want = _outcome(lambda ds: str(ds.get(keyword, "")), _raw_dataset(keyword, vr, value))
    assert got == want, (value, got, want)


def test_absent_converted_and_other_vrs_are_read_as_pydicom_reads_them():
    ds = Dataset()
    assert header.numbers(ds, "PixelSpacing") is None and header.integer(ds, "Rows") is None
    assert header.text(ds, "Modality") == "" and header.text(ds, "Modality", "x") == "x"
    ds.PixelSpacing, ds.Rows, ds.Modality, ds.InstanceNumber = [0.5, "0.25"], 512, "CT", "7"
    assert header.numbers(ds, "PixelSpacing") == [0.5, 0.25] and header.integer(ds, "Rows") == 512
    assert header.text(ds, "Modality") == "CT" and header.integer(ds, "InstanceNumber") == 7
    # a DS written as FD (a corrupt or odd file) is not parsed as text
    odd = _raw_dataset("RescaleSlope", "FD", (1.0).hex().encode()[:8])
    assert _outcome(header.numbers, odd, "RescaleSlope") == _outcome(_pydicom_numbers, odd, "RescaleSlope")
    with pytest.raises(KeyError, match="not a DICOM keyword"):
        header.numbers(ds, "NoSuchKeyword")


def test_raw_elements_stay_raw():
    ds = _raw_dataset("PixelSpacing", "DS", b"0.5\\0.5 ")
    assert header.numbers(ds, "PixelSpacing") == [0.5, 0.5]
    assert isinstance(ds.get_item(tag_for_keyword("PixelSpacing")), RawDataElement)

"""Header values of a pydicom dataset, read from an element's bytes while pydicom has not converted it.

pydicom converts an element's value on first access: about 17 us for a DS, UI or US, most of what
ingest spends on the dozen header values it reads from every CT slice (values a bare read never
converts). These readers parse a raw element's bytes themselves when they are plain, and the
element stays raw:
- DS and IS: digits, signs, points, exponents, spaces and value separators, every value a number;
- CS and UI: printable ASCII with no value separator (one value);
- US: two bytes.
Anything else (an element already converted, another VR, unusual characters, several values where
one is read, a deferred value) is read through pydicom, so every reader returns what reading the
converted value would (``tests/unit/data/test_header.py`` compares both on random values).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from rgops.data.rawseq import dictionary_vr

_NUMBERS = re.compile(rb"[0-9+\-.eE \\]*")  # what DS and IS values are made of (PS3.5 6.2)
_WHOLE = re.compile(rb" *[+-]?[0-9]+ *")  # one IS value pydicom converts without a fraction
_PLAIN = re.compile(rb"[ !-\[\]-~\x00]*")  # printable ASCII, padding, no backslash
_MISSING = object()


@functools.lru_cache(maxsize=None)
def _tag(keyword: str) -> BaseTag:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword!r} is not a DICOM keyword")
    return BaseTag(tag)


def _raw(ds: Dataset, keyword: str, vrs: tuple[str, ...]) -> tuple[bytes | None, str, Any]:
    """``(raw bytes, VR, element)`` of ``keyword`` in ``ds``: the bytes only while the element is still
    raw and of one of ``vrs`` (an implicit-VR element: by the dictionary), else None; the element is
    ``_MISSING`` when absent."""
    tag = _tag(keyword)
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None:
        return None, "", _MISSING
    if not isinstance(elem, RawDataElement) or elem.value is None:
        return None, "", elem
    vr = elem.VR or dictionary_vr(int(tag))
    return (elem.value if vr in vrs else None), vr, elem


def _converted(ds: Dataset, keyword: str) -> Any:
    return ds[_tag(keyword)].value


def numbers(ds: Dataset, keyword: str) -> list[float] | None:
    """The values of a DS or IS element as floats: None when absent, ``[]`` when empty.

    Raises:
        ValueError, TypeError: a value is not a number (the caller names the file and attribute).
    """
    raw, _, elem = _raw(ds, keyword, ("DS", "IS"))
    if elem is _MISSING:
        return None
    if raw is not None and _NUMBERS.fullmatch(raw):
        try:
            return [float(v) for v in raw.split(b"\\")] if raw.strip(b" ") else []
        except ValueError:
            pass  # an empty or malformed value among them: pydicom decides
    value = _converted(ds, keyword)
    if value is None or value == "":
        return []
    return [float(v) for v in ([value] if isinstance(value, (str, bytes, int, float)) else value)]


def integer(ds: Dataset, keyword: str) -> int | None:
    """One US or IS value as an int: None when absent or empty.

    Raises:
        ValueError, TypeError: the value is not one whole number.
    """
    raw, vr, elem = _raw(ds, keyword, ("US", "IS"))
    if elem is _MISSING:
        return None
    if raw is not None and vr == "US" and len(raw) == 2:
        return int.from_bytes(raw, "little" if elem.is_little_endian else "big")
    if raw is not None and vr == "IS" and _WHOLE.fullmatch(raw):
        return int(raw)
    value = _converted(ds, keyword)
    if value is None or value == "":
        return None
    return int(value)


def text(ds: Dataset, keyword: str, default: str = "") -> str:
    """``str(ds.get(keyword, default))`` for a CS or UI element."""
    raw, vr, elem = _raw(ds, keyword, ("CS", "UI"))
    if elem is _MISSING:
        return default
    if raw is not None and _PLAIN.fullmatch(raw):
        value = raw.decode("ascii").rstrip(" \0")
        return value.strip() if vr == "UI" else value  # pydicom's UID strips its value again
    return str(_converted(ds, keyword))


__all__ = ["integer", "numbers", "text"]

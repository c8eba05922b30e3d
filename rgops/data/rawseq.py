"""DICOM sequences read and rewritten from their encoded bytes, without building pydicom Datasets.

A SEG carries one PerFrameFunctionalGroupsSequence item per frame, each with sequences three levels
deep. pydicom reads sequences of defined length lazily and builds a ``Dataset`` for every item when
one is first touched (about 70 us an item); de-identifying and reading the SEGs of a 16-patient
cohort that way cost more than reading all of its CT and SEG files (``bench/ingest.py``). Both
jobs need little of it: de-identification walks every element once to remap UIDs, and the SEG
read wants two values per frame. This module parses the bytes of such a sequence into plain
:class:`RawItem` objects, lets callers change them, and encodes them again.

Only little-endian encodings (explicit and implicit VR, the transfer syntaxes of nearly every CT
and SEG) are read. Anything unusual raises :class:`RawSequenceError`, and callers then use
pydicom's own reading, so a malformed sequence gets the same treatment as before.

Encoding writes every item and sequence with its defined length; element values that nobody
changed are written back byte for byte.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

#: Explicit VR with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_HEAD = struct.Struct("<HHI")  # tag group, tag element, 4-byte length (implicit VR and item tags)
_EXPLICIT = struct.Struct("<HH2sH")  # tag, VR, 2-byte length
_INTS = {"US": "<H", "UL": "<I", "SS": "<h", "SL": "<i"}


class RawSequenceError(ValueError):
    """The bytes are not a sequence this reader handles; read them with pydicom instead."""


@dataclass(slots=True)
class RawElement:
    """One element of an item: ``value`` is the encoded bytes, or the items of a sequence (VR SQ)."""

    tag: int
    vr: str
    value: bytes | list[RawItem]


class RawItem:
    """One sequence item: its elements in file order, and a small part of ``Dataset``'s reading API
    (``get``, ``in``, ``len``) for the values the SEG read needs."""

    __slots__ = ("elements",)

    def __init__(self, elements: list[RawElement]) -> None:
        self.elements = elements

    def element(self, keyword: str) -> RawElement | None:
        tag = tag_for_keyword(keyword)
        return next((e for e in self.elements if e.tag == tag), None)

    def __contains__(self, keyword: str) -> bool:
        return self.element(keyword) is not None

    def __len__(self) -> int:
        return len(self.elements)

    def get(self, keyword: str, default: Any = None) -> Any:
        """The decoded value of ``keyword``: items for a sequence, ints for US/UL/SS/SL, strings
        (a list when multi-valued) for text and UIDs; ``default`` when absent or empty."""
        e = self.element(keyword)
        if e is None:
            return default
        if isinstance(e.value, list):
            return e.value
        if not e.value:
            return default
        if e.vr in _INTS:
            try:
                values = [v for (v,) in struct.iter_unpack(_INTS[e.vr], e.value)]
            except struct.error:
                raise RawSequenceError(f"{keyword} holds {len(e.value)} bytes, not whole {e.vr} values") from None
            return values[0] if len(values) == 1 else values
        values = text_values(e.value)
        return values[0] if len(values) == 1 else values

    def __getattr__(self, keyword: str) -> Any:
        if keyword[:1].isupper():
            value = self.get(keyword)
            if value is not None:
                return value
        raise AttributeError(keyword)


def text_values(raw: bytes) -> list[str]:
    """The values of a text or UID element as pydicom reads UIDs: latin-1, trailing NULs and spaces
    stripped, split on backslashes."""
    return raw.decode("latin-1").rstrip("\0 ").split("\\") if raw else []


def encode_text(values: list[str], pad: bytes = b" ") -> bytes:
    """Values joined with backslashes and padded to an even length (UIDs pad with NUL)."""
    raw = "\\".join(values).encode("latin-1")
    return raw + pad if len(raw) % 2 else raw


def dictionary_vr(tag: int) -> str:
    """The VR pydicom's dictionary gives ``tag`` (how an implicit-VR element is read); ``UN`` for a
    private or unknown tag."""
    if tag & 0x10000:
        return "UN"
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def parse(data: bytes, implicit: bool) -> list[RawItem]:
    """The items of a sequence value (the bytes after the sequence's length field).

    Raises:
        RawSequenceError: the bytes are truncated, hold something other than items, or hold an
            element this reader leaves to pydicom (undefined length other than a sequence).
    """
    view = memoryview(data)
    try:
        return _items(view, 0, len(view), implicit, undefined=False)[0]
    except RecursionError:  # nested deeper than Python's stack: pydicom decides what that is
        raise RawSequenceError("sequences nested too deep to parse here") from None


def _head(view: memoryview, pos: int, end: int) -> tuple[int, int]:
    """``(tag, 4-byte length field)`` of the header at ``pos`` (items, delimiters, implicit VR)."""
    if pos + 8 > end:
        raise RawSequenceError(f"truncated header at byte {pos}")
    group, element, length = _HEAD.unpack_from(view, pos)
    return group << 16 | element, length


def _body(read: Any, view: memoryview, pos: int, end: int, length: int, implicit: bool) -> tuple[list[Any], int]:
    """``read`` (:func:`_items` or :func:`_elements`) over a value of ``length`` bytes at ``pos``, or up to
    its delimiter when the length is undefined."""
    if length == _UNDEFINED:
        return read(view, pos, end, implicit, undefined=True)
    if pos + length > end:
        raise RawSequenceError(f"a value of {length} bytes at byte {pos} runs past its parent")
    return read(view, pos, pos + length, implicit, undefined=False)


def _items(view: memoryview, pos: int, end: int, implicit: bool, undefined: bool) -> tuple[list[RawItem], int]:
    items: list[RawItem] = []
    while pos < end:
        tag, length = _head(view, pos, end)
        if tag == _SEQ_END:
            if not undefined:
                raise RawSequenceError("sequence delimiter in a sequence of defined length")
            return items, pos + 8
        if tag != _ITEM:
            raise RawSequenceError(f"expected an item at byte {pos}, found tag {tag:08X}")
        elements, pos = _body(_elements, view, pos + 8, end, length, implicit)
        items.append(RawItem(elements))
    if undefined:
        raise RawSequenceError("sequence of undefined length without its delimiter")
    return items, pos


def _elements(view: memoryview, pos: int, end: int, implicit: bool, undefined: bool) -> tuple[list[RawElement], int]:
    out: list[RawElement] = []
    while pos < end:
        tag, length = _head(view, pos, end)
        if tag == _ITEM_END:
            if not undefined:
                raise RawSequenceError("item delimiter in an item of defined length")
            return out, pos + 8
        if tag >> 16 == 0xFFFE:
            raise RawSequenceError(f"unexpected delimiter {tag:08X} at byte {pos}")
        if implicit:
            vr = "SQ" if length == _UNDEFINED else dictionary_vr(tag)
            pos += 8
        else:
            _, _, vr_bytes, short = _EXPLICIT.unpack_from(view, pos)
            vr = vr_bytes.decode("latin-1")
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise RawSequenceError(f"truncated element header at byte {pos}")
                (length,) = struct.unpack_from("<I", view, pos + 8)
                pos += 12
            elif vr.isalpha() and vr.isupper():
                length = short
                pos += 8
            else:
                raise RawSequenceError(f"element {tag:08X} has no valid VR")
            if vr == "UN" and dictionary_vr(tag) != "UN":  # pydicom would decode it with its dictionary VR (a sequence?)
                raise RawSequenceError(f"element {tag:08X} is encoded as UN")
        if vr == "SQ":
            items, pos = _body(_items, view, pos, end, length, implicit)
            out.append(RawElement(tag, vr, items))
            continue
        if length == _UNDEFINED or pos + length > end:
            raise RawSequenceError(f"element {tag:08X} has an undefined or overlong length")
        out.append(RawElement(tag, vr, bytes(view[pos:pos + length])))
        pos += length
    if undefined:
        raise RawSequenceError("item of undefined length without its delimiter")
    return out, pos


def encode(items: list[RawItem], implicit: bool) -> bytes:
    """The bytes of a sequence value holding ``items``, every item and sequence of defined length."""
    return b"".join(_encode_items(items, implicit))


def _encode_items(items: list[RawItem], implicit: bool) -> Iterator[bytes]:
    for item in items:
        body = b"".join(_encode_element(e, implicit) for e in item.elements)
        yield _HEAD.pack(0xFFFE, 0xE000, len(body))
        yield body


def _encode_element(e: RawElement, implicit: bool) -> bytes:
    value = encode(e.value, implicit) if isinstance(e.value, list) else e.value
    group, element = e.tag >> 16, e.tag & 0xFFFF
    if implicit:
        return _HEAD.pack(group, element, len(value)) + value
    if e.vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", group, element, e.vr.encode("latin-1"), len(value)) + value
    if len(value) > 0xFFFF:
        raise RawSequenceError(f"element {e.tag:08X} ({e.vr}) holds {len(value)} bytes, more than its VR allows")
    return _EXPLICIT.pack(group, element, e.vr.encode("latin-1"), len(value)) + value


def raw_items(ds: Dataset, keyword: str) -> list[RawItem] | None:
    """The items of sequence ``keyword`` of ``ds`` parsed from its bytes, when pydicom has not yet
    decoded it and it is little endian; None otherwise (absent, decoded, or not readable here).
    Read only: the items may be shared with other callers."""
    tag = tag_for_keyword(keyword)
    elem = ds.get_item(tag, keep_deferred=True) if tag is not None and tag in ds else None
    if not is_raw_sequence(tag or 0, elem):
        return None
    try:
        return list(_parse_shared(elem.value, elem.is_implicit_VR))
    except RawSequenceError:
        return None


@functools.lru_cache(maxsize=4)  # a few: a large SEG's parsed frames are megabytes
def _parse_shared(data: bytes, implicit: bool) -> tuple[RawItem, ...]:
    """:func:`parse` for readers: ingest reads a SEG's ReferencedSeriesSequence three times. The
    items are shared between callers, so :func:`raw_items` callers must not change them."""
    return tuple(parse(data, implicit))


def is_raw_sequence(tag: int, elem: object) -> bool:
    """Whether ``elem`` is a little-endian sequence pydicom has not decoded yet."""
    if not isinstance(elem, RawDataElement) or not elem.is_little_endian or not isinstance(elem.value, bytes):
        return False
    vr = elem.VR or dictionary_vr(tag)
    return vr == "SQ"


def replaced(elem: RawDataElement, items: list[RawItem]) -> RawDataElement:
    """A copy of the raw sequence element ``elem`` holding ``items`` (encoded as ``elem`` was)."""
    value = encode(items, elem.is_implicit_VR)
    return elem._replace(length=len(value), value=value)


__all__ = ["RawElement", "RawItem", "RawSequenceError", "dictionary_vr", "encode", "encode_text", "is_raw_sequence",
           "parse", "raw_items", "replaced", "text_values"]

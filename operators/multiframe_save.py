"""Save a large multi-frame DICOM object (a SEG with thousands of frames) several times faster than
``Dataset.save_as``.

pydicom re-encodes every Per-Frame Functional Groups item from scratch; in a SEG these items repeat a
handful of values (one plane position per slice, one segment number per segment, one source reference per
slice). Here each distinct functional-group element is encoded once by pydicom and the bytes are reused;
the header is written by pydicom as usual and the Per-Frame Functional Groups Sequence (5200,9230) and
Pixel Data (7FE0,0010), the last two elements, are appended (PS3.5 7.1 and 7.5: explicit VR little
endian, sequence and items of defined length), byte for byte what pydicom itself writes. Only Explicit
VR Little Endian is handled this way; anything else is saved by pydicom.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.uid import ExplicitVRLittleEndian

PER_FRAME_FUNCTIONAL_GROUPS = 0x52009230
PIXEL_DATA = 0x7FE00010
_ITEM = b"\xfe\xff\x00\xe0"

# How to recognise a repeated value of a functional-group element, by tag.
_CACHE_KEYS: dict[int, Callable[[DataElement], object]] = {
    0x00089124: lambda e: id(e.value),  # Derivation Image Sequence: the writer shares one object per slice
    0x00209113: lambda e: tuple(str(v) for v in e.value[0].ImagePositionPatient),  # Plane Position
    0x0062000A: lambda e: int(e.value[0].ReferencedSegmentNumber),  # Segment Identification
    0x00209116: lambda e: tuple(str(v) for v in e.value[0].ImageOrientationPatient),  # Plane Orientation
}


def _encode(elem: DataElement, encodings: list[str] | str | None) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


def _encode_per_frame_groups(ds: Dataset, encodings: list[str] | str | None) -> bytes:
    cache: dict[tuple[int, object], bytes] = {}
    parts = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        content = []
        for tag in sorted(item.keys()):
            elem = item[tag]
            key_of = _CACHE_KEYS.get(int(tag))
            if key_of is None:
                content.append(_encode(elem, encodings))
                continue
            key = (int(tag), key_of(elem))
            encoded = cache.get(key)
            if encoded is None:
                encoded = cache[key] = _encode(elem, encodings)
            content.append(encoded)
        body = b"".join(content)
        parts.extend((_ITEM, struct.pack("<I", len(body)), body))
    items = b"".join(parts)
    return struct.pack("<HH", 0x5200, 0x9230) + b"SQ\x00\x00" + struct.pack("<I", len(items)) + items


def save_multiframe(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM file (preamble + file meta) to ``path``."""
    explicit_le = ds.file_meta.get("TransferSyntaxUID") == ExplicitVRLittleEndian
    last_tags = sorted(int(t) for t in ds.keys())[-2:]
    if not explicit_le or last_tags != [PER_FRAME_FUNCTIONAL_GROUPS, PIXEL_DATA]:
        ds.save_as(path, enforce_file_format=True)
        return
    encodings = ds.get("SpecificCharacterSet", None)
    # Pixel Data's VR is "OB or OW" until resolved from Bits Allocated, as pydicom does when saving.
    pixel_elem = correct_ambiguous_vr_element(ds[PIXEL_DATA], ds, True)
    tail = _encode_per_frame_groups(ds, encodings) + _encode(pixel_elem, encodings)
    per_frame = ds[PER_FRAME_FUNCTIONAL_GROUPS]
    pixel_data = ds[PIXEL_DATA]
    del ds[PER_FRAME_FUNCTIONAL_GROUPS]
    del ds[PIXEL_DATA]
    try:
        head = DicomBytesIO()
        ds.save_as(head, enforce_file_format=True)
    finally:
        ds[PER_FRAME_FUNCTIONAL_GROUPS] = per_frame
        ds[PIXEL_DATA] = pixel_data
    with open(path, "wb") as handle:
        handle.write(head.getvalue())
        handle.write(tail)

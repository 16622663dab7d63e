"""Coded anatomy and recommended display colours for every TotalSegmentator ``total_mr`` structure.

The codes live in ``anatomy_codes.json`` next to this module. Each structure has a Segmented Property
Category (CID 7150: SCT 91723000 "Anatomical Structure"), a Segmented Property Type (CID 7151 where DICOM
lists the structure, else the SNOMED CT concept TotalSegmentator / 3D Slicer use), an optional Type
Modifier for laterality (CID 244 Left/Right), an Anatomic Region (CID 4031 Common Anatomic Regions) and a
fixed RGB colour, so the same structure looks the same in every viewer and every run. The ``source``
field of each entry says where its type code was verified. No structure falls back to a generic code: a
name not in the table is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import highdicom as hd

from operators.segmentation_result import ResultWriterError

ANATOMY_CODES_PATH = Path(__file__).with_name("anatomy_codes.json")


class UnknownStructureError(ResultWriterError):
    """A structure name has no coded anatomy entry."""


@dataclass(frozen=True)
class CodeTriple:
    scheme: str
    value: str
    meaning: str

    def concept(self) -> hd.sr.CodedConcept:
        return hd.sr.CodedConcept(value=self.value, scheme_designator=self.scheme, meaning=self.meaning)


@dataclass(frozen=True)
class StructureAnatomy:
    """Everything a DICOM object needs to describe one segmented structure."""

    label: int  # TotalSegmentator total_mr label value
    name: str  # TotalSegmentator structure name, e.g. "kidney_left"
    display_name: str  # human-readable, e.g. "kidney left"
    category: CodeTriple
    property_type: CodeTriple
    type_modifier: CodeTriple | None
    anatomic_region: CodeTriple
    color_rgb: tuple[int, int, int]
    source: str

    @property
    def color_hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.color_rgb)

    def color_cielab(self) -> hd.color.CIELabColor:
        """Recommended Display CIELab Value (PS3.3 C.8.20.2) converted from the sRGB colour."""
        return hd.color.CIELabColor.from_rgb(*self.color_rgb)


def _triple(d: dict | None) -> CodeTriple | None:
    return None if d is None else CodeTriple(d["scheme"], d["value"], d["meaning"])


@lru_cache(maxsize=1)
def load_anatomy_table() -> dict[str, StructureAnatomy]:
    """All coded structures keyed by TotalSegmentator name."""
    data = json.loads(ANATOMY_CODES_PATH.read_text(encoding="utf-8"))
    table: dict[str, StructureAnatomy] = {}
    for e in data["classes"]:
        table[e["name"]] = StructureAnatomy(
            label=int(e["label"]),
            name=e["name"],
            display_name=e["display_name"],
            category=_triple(e["category"]),  # type: ignore[arg-type]
            property_type=_triple(e["type"]),  # type: ignore[arg-type]
            type_modifier=_triple(e.get("type_modifier")),
            anatomic_region=_triple(e["anatomic_region"]),  # type: ignore[arg-type]
            color_rgb=tuple(int(c) for c in e["color_rgb"]),  # type: ignore[arg-type]
            source=e["source"],
        )
    return table


def anatomy_for(name: str) -> StructureAnatomy:
    """Coded anatomy of one structure; raises UnknownStructureError rather than inventing a code."""
    table = load_anatomy_table()
    try:
        return table[name]
    except KeyError:
        raise UnknownStructureError(
            f"structure '{name}' has no coded anatomy in {ANATOMY_CODES_PATH.name}; add its SNOMED CT codes "
            "there before writing DICOM objects for it"
        ) from None


def check_classes_coded(classes: dict[int, str]) -> None:
    """Fail early, before anything is written, if any class of a model profile lacks codes."""
    missing = sorted(name for name in classes.values() if name not in load_anatomy_table())
    if missing:
        raise UnknownStructureError(f"no coded anatomy for structures: {', '.join(missing)}")

"""Index a folder of DICOM files by study, series and frame, reading headers only.

Pixel data is not read here (``stop_before_pixels``); the volume builder decodes it later, only for the
stacks that were selected. Every file is either indexed or recorded as skipped with a reason, so the
selection report can account for all of the input.

Geometry comes from the Image Plane Module (PS3.3 C.7.6.2) for single-frame images and from the
Plane Position / Plane Orientation / Pixel Measures functional groups (PS3.3 C.7.6.16.2.3-2.1) for
multi-frame Enhanced MR (per-frame groups override shared ones, PS3.3 C.7.6.16).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from operators.errors import InputError

logger = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"

# SOP classes that never hold an image to segment; anything without Rows/Columns is skipped too.
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection",
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR Spectroscopy",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data",
}


@dataclass(frozen=True)
class FrameInfo:
    """Header facts about one 2D frame: one single-frame instance, or one frame of a multi-frame one."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None  # 1-based within a multi-frame instance, None for single-frame
    rows: int
    columns: int
    position: tuple[float, float, float] | None  # ImagePositionPatient, LPS mm
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row cosines, column cosines
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns), mm
    slice_thickness: float | None
    image_type: tuple[str, ...]
    instance_number: int | None
    acquisition_number: int | None
    echo_number: int | None
    echo_time: float | None
    b_value: float | None
    temporal_position: int | None
    trigger_time: float | None
    complex_component: str | None
    stack_id: str | None  # FrameContentSequence StackID of Enhanced MR
    rescale_slope: float
    rescale_intercept: float
    samples_per_pixel: int
    photometric: str


@dataclass
class SeriesInfo:
    """All indexed frames of one series, plus the series- and study-level attributes used for selection."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    series_description: str
    series_number: int | None
    frame_of_reference_uid: str | None
    attributes: dict[str, object]  # study/series attributes by DICOM keyword, for rule matching
    frames: list[FrameInfo] = field(default_factory=list)

    @property
    def sop_class_uids(self) -> set[str]:
        return {f.sop_class_uid for f in self.frames}

    @property
    def instance_count(self) -> int:
        return len({f.sop_instance_uid for f in self.frames})

    @property
    def image_types(self) -> set[str]:
        return {value.upper() for f in self.frames for value in f.image_type}


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass
class DicomIndex:
    root: Path
    series: dict[str, SeriesInfo] = field(default_factory=dict)  # by SeriesInstanceUID, in first-seen order
    skipped: list[SkippedFile] = field(default_factory=list)
    files_seen: int = 0

    def studies(self) -> dict[str, list[SeriesInfo]]:
        grouped: dict[str, list[SeriesInfo]] = {}
        for s in self.series.values():
            grouped.setdefault(s.study_instance_uid, []).append(s)
        return grouped


# Study- and series-level keywords offered to selection rules (the SDK matches DICOMStudy/DICOMSeries
# properties plus any attribute of the first instance).
RULE_KEYWORDS = (
    "StudyInstanceUID", "StudyDescription", "StudyDate", "StudyID", "AccessionNumber", "PatientID",
    "PatientName", "PatientPosition", "SeriesInstanceUID", "SeriesDescription", "SeriesNumber", "Modality",
    "BodyPartExamined", "ProtocolName", "SequenceName", "ScanningSequence", "SequenceVariant",
    "MRAcquisitionType", "Manufacturer", "ManufacturerModelName", "MagneticFieldStrength", "SliceThickness",
    "RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "ImageType", "ImageOrientationPatient",
    "ContrastBolusAgent", "Laterality",
)  # fmt: skip


def iter_files(root: Path) -> Iterator[Path]:
    """All regular files under ``root``, recursively, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def read_header(path: Path) -> Dataset:
    """Read a DICOM header without pixel data; raise InvalidDicomError for anything that is not DICOM.

    Files without the 128-byte preamble are accepted only when they parse and carry SOP identifiers, so
    arbitrary binary files are not mistaken for DICOM.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            raise InvalidDicomError("no DICOM preamble and no SOP identifiers") from None
        return ds


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return values if len(values) == n else None


def _image_type(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip().upper() for v in value.split("\\") if v.strip())
    return tuple(str(v).strip().upper() for v in value)  # type: ignore[union-attr]


def _first_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    if ds is None:
        return None
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _functional_group(frame_groups: Dataset | None, shared: Dataset | None, keyword: str) -> Dataset | None:
    """The first item of a functional group macro, per-frame first, then shared (PS3.3 C.7.6.16)."""
    return _first_item(frame_groups, keyword) or _first_item(shared, keyword)


def _single_frame(path: Path, ds: Dataset) -> FrameInfo:
    return FrameInfo(
        path=path,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        frame_number=None,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        slice_thickness=_float(ds.get("SliceThickness")),
        image_type=_image_type(ds.get("ImageType")),
        instance_number=_int(ds.get("InstanceNumber")),
        acquisition_number=_int(ds.get("AcquisitionNumber")),
        echo_number=_int(ds.get("EchoNumbers")),
        echo_time=_float(ds.get("EchoTime")),
        b_value=_float(ds.get("DiffusionBValue")),
        temporal_position=_int(ds.get("TemporalPositionIdentifier")),
        trigger_time=_float(ds.get("TriggerTime")),
        complex_component=str(ds.ComplexImageComponent) if ds.get("ComplexImageComponent") else None,
        stack_id=None,
        rescale_slope=_float(ds.get("RescaleSlope")) or 1.0,
        rescale_intercept=_float(ds.get("RescaleIntercept")) or 0.0,
        samples_per_pixel=_int(ds.get("SamplesPerPixel")) or 1,
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
    )


def _multi_frame(path: Path, ds: Dataset) -> list[FrameInfo]:
    """One FrameInfo per frame of an enhanced multi-frame image (Enhanced MR and similar IODs)."""
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    n_frames = int(ds.get("NumberOfFrames", 1))
    frames = []
    for index in range(n_frames):
        groups = per_frame[index] if index < len(per_frame) else None
        position = _functional_group(groups, shared, "PlanePositionSequence")
        orientation = _functional_group(groups, shared, "PlaneOrientationSequence")
        measures = _functional_group(groups, shared, "PixelMeasuresSequence")
        content = _functional_group(groups, shared, "FrameContentSequence")
        transform = _functional_group(groups, shared, "PixelValueTransformationSequence")
        frame_type = _functional_group(groups, shared, "MRImageFrameTypeSequence")
        echo = _functional_group(groups, shared, "MREchoSequence")
        diffusion = _functional_group(groups, shared, "MRDiffusionSequence")
        timing = _functional_group(groups, shared, "CardiacSynchronizationSequence")
        thickness = measures.get("SliceThickness") if measures is not None else None
        frames.append(
            FrameInfo(
                path=path,
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                frame_number=index + 1,
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                position=_floats(position.get("ImagePositionPatient"), 3) if position else None,  # type: ignore[arg-type]
                orientation=_floats(orientation.get("ImageOrientationPatient"), 6) if orientation else None,
                pixel_spacing=_floats(measures.get("PixelSpacing"), 2) if measures else None,  # type: ignore[arg-type]
                slice_thickness=_float(thickness if thickness is not None else ds.get("SliceThickness")),
                image_type=_image_type(frame_type.get("FrameType") if frame_type else ds.get("ImageType")),
                instance_number=_int(ds.get("InstanceNumber")),
                acquisition_number=_int(ds.get("AcquisitionNumber")),
                echo_number=None,
                echo_time=_float(echo.get("EffectiveEchoTime")) if echo else None,
                b_value=_float(diffusion.get("DiffusionBValue")) if diffusion else None,
                temporal_position=_int(content.get("TemporalPositionIndex")) if content else None,
                trigger_time=_float(timing.get("NominalCardiacTriggerDelayTime")) if timing else None,
                complex_component=(
                    str(frame_type.get("ComplexImageComponent"))
                    if frame_type is not None and frame_type.get("ComplexImageComponent")
                    else None
                ),
                stack_id=str(content.StackID) if content is not None and content.get("StackID") else None,
                rescale_slope=(_float(transform.get("RescaleSlope")) if transform else None)
                or _float(ds.get("RescaleSlope"))
                or 1.0,
                rescale_intercept=(_float(transform.get("RescaleIntercept")) if transform else None)
                or _float(ds.get("RescaleIntercept"))
                or 0.0,
                samples_per_pixel=_int(ds.get("SamplesPerPixel")) or 1,
                photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
            )
        )
    return frames


def frames_of(path: Path, ds: Dataset) -> list[FrameInfo]:
    """The frames of one image instance, multi-frame or not."""
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return _multi_frame(path, ds)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        # Legacy multi-frame without functional groups: frames share the Image Plane Module geometry,
        # which cannot place them in space individually; the builder rejects such stacks.
        base = _single_frame(path, ds)
        return [
            FrameInfo(**{**base.__dict__, "frame_number": i + 1, "position": None})
            for i in range(int(ds.NumberOfFrames))
        ]
    return [_single_frame(path, ds)]


def _skip_reason(ds: Dataset) -> str | None:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        return "DICOMDIR (media directory, not an image)"
    if sop_class in NON_IMAGE_SOP_CLASSES:
        return f"non-image object: {NON_IMAGE_SOP_CLASSES[sop_class]} ({sop_class})"
    if "Rows" not in ds or "Columns" not in ds:
        return f"non-image object (no Rows/Columns; SOP class {sop_class or 'missing'})"
    if not ds.get("SOPInstanceUID") or not ds.get("SeriesInstanceUID") or not ds.get("StudyInstanceUID"):
        return "missing SOPInstanceUID, SeriesInstanceUID or StudyInstanceUID"
    return None


def _series_attributes(ds: Dataset) -> dict[str, object]:
    attributes: dict[str, object] = {}
    for keyword in RULE_KEYWORDS:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if isinstance(value, pydicom.multival.MultiValue):
            value = [v if isinstance(v, (int, float)) else str(v) for v in value]
        elif isinstance(value, (pydicom.valuerep.DSfloat, pydicom.valuerep.IS)):
            value = float(value) if isinstance(value, pydicom.valuerep.DSfloat) else int(value)
        elif not isinstance(value, (int, float)):
            value = str(value)
        attributes[keyword] = value
    return attributes


def index_files(paths: Iterable[Path], root: Path) -> DicomIndex:
    index = DicomIndex(root=root)
    seen_instances: dict[str, Path] = {}
    for path in paths:
        index.files_seen += 1
        try:
            ds = read_header(path)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            reason = "not a DICOM file" if isinstance(exc, InvalidDicomError) else f"unreadable: {exc}"
            index.skipped.append(SkippedFile(path, reason))
            logger.debug("skip %s: %s", path, reason)
            continue
        reason = _skip_reason(ds)
        if reason is None:
            sop_uid = str(ds.SOPInstanceUID)
            if sop_uid in seen_instances:
                reason = f"duplicate SOPInstanceUID {sop_uid} (already read from {seen_instances[sop_uid]})"
        if reason is not None:
            index.skipped.append(SkippedFile(path, reason))
            logger.debug("skip %s: %s", path, reason)
            continue
        try:
            frames = frames_of(path, ds)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            index.skipped.append(SkippedFile(path, f"malformed image header: {exc}"))
            continue
        seen_instances[str(ds.SOPInstanceUID)] = path
        series_uid = str(ds.SeriesInstanceUID)
        series = index.series.get(series_uid)
        if series is None:
            series = SeriesInfo(
                study_instance_uid=str(ds.StudyInstanceUID),
                series_instance_uid=series_uid,
                modality=str(ds.get("Modality", "")).upper(),
                series_description=str(ds.get("SeriesDescription", "")),
                series_number=_int(ds.get("SeriesNumber")),
                frame_of_reference_uid=str(ds.FrameOfReferenceUID) if ds.get("FrameOfReferenceUID") else None,
                attributes=_series_attributes(ds),
            )
            index.series[series_uid] = series
        series.frames.extend(frames)
    reasons: dict[str, int] = {}
    for skipped in index.skipped:
        kind = skipped.reason.split(":")[0].split(" (")[0]
        reasons[kind] = reasons.get(kind, 0) + 1
    logger.info(
        "indexed %d files: %d series, %d skipped %s",
        index.files_seen,
        len(index.series),
        len(index.skipped),
        reasons or "",
    )
    return index


def scan_folder(root: Path) -> DicomIndex:
    """Index every DICOM file under ``root`` (recursively)."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"input folder {root} does not exist")
    if root.is_file():
        return index_files([root], root.parent)
    return index_files(iter_files(root), root)

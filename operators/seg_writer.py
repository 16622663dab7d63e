"""DICOM Segmentation Storage (PS3.3 A.51) for one labelled volume, written with highdicom.

One segment per structure present (empty structures are omitted and reported back), each with coded
category / type / laterality modifier / anatomic region and a fixed display colour from
:mod:`operators.anatomy_codes`, Algorithm Identification (PS3.3 C.8.20.2 / CID 7162: name, version,
model profile and weights checksums as Algorithm Parameters), the same Study and Frame of Reference as
the source and a new Series. Frames are referenced to exactly the source instances (and, for Enhanced
MR, the exact frame numbers) the volume was built from, so a Dixon stack split from one series points at
its own images only.

Frame geometry is taken from the volume's affine, not re-derived from the sources: SEG frame for slice
``k`` has Image Position ``affine @ (0, 0, k)``, the source's orientation and pixel spacing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from operators.anatomy_codes import StructureAnatomy, anatomy_for, check_classes_coded
from operators.multiframe_save import save_multiframe
from operators.segmentation_result import ResultWriterError, SegmentationResult

logger = logging.getLogger(__name__)

SEG_MANUFACTURER = "totalseg-mri-deploy"
SEG_MODEL_NAME = "TotalSegmentator MRI MONAI Deploy application"


@dataclass(frozen=True)
class SegWriterOptions:
    """What the SEG looks like and how fast it is written (bench/seg_writer_benchmark.py measures them)."""

    segmentation_type: str = (
        "BINARY"  # BINARY: what OHIF and Slicer read most widely; LABELMAP: highdicom>=0.28
    )
    omit_empty_frames: bool = True  # a frame per (segment, slice) only where the segment has voxels
    workers: int = 0  # highdicom frame-encoding worker processes (0 = in this process)
    series_number: int | None = None  # default: 7000 + source series number (keeps SEG beside its source)
    series_description: str | None = None
    manufacturer: str = SEG_MANUFACTURER
    device_serial_number: str = "0"


@dataclass
class SegWriteOutcome:
    """What was written, for the SR writer and the report."""

    path: Path | None
    dataset: hd.seg.Segmentation
    segment_numbers: dict[int, int]  # class label -> segment number in the SEG
    omitted_structures: list[str] = field(default_factory=list)  # empty classes, not in the SEG
    seconds: float = 0.0

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)


# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1): derived objects must
# carry them, empty if unknown. Vendor headers sometimes omit them; highdicom copies them from the source.
PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _share_per_frame_geometry(ds: Dataset) -> None:
    """Enhanced MR may keep Pixel Measures / Plane Orientation per frame (Philips does); highdicom looks
    for them in the shared functional groups. Copy frame 1's into the in-memory shared group when they
    are the same for every frame (the SEG's own geometry comes from the volume, not from these)."""
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return
    if "SharedFunctionalGroupsSequence" not in ds:
        ds.SharedFunctionalGroupsSequence = DicomSequence([Dataset()])
    shared = ds.SharedFunctionalGroupsSequence[0]
    frames = ds.PerFrameFunctionalGroupsSequence
    for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if keyword in shared or keyword not in frames[0]:
            continue
        first = frames[0][keyword][0]
        if all(keyword in f and f[keyword][0] == first for f in frames):
            setattr(shared, keyword, DicomSequence([first]))


def read_source_datasets(result: SegmentationResult) -> list[Dataset]:
    """The source instances of the volume, once each, in slice order, without pixel data (not needed).

    Missing Type 2 patient / study attributes are added empty to these in-memory copies (never to the
    files), so derived objects stay valid when a source lacks e.g. PatientName or StudyID.
    """
    seen: dict[str, Dataset] = {}
    for frame in result.volume.sources:
        key = str(frame.path)
        if key in seen:
            continue
        try:
            ds = pydicom.dcmread(frame.path, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise ResultWriterError(f"cannot read source instance {frame.path}: {exc}") from exc
        if str(ds.SOPInstanceUID) != frame.sop_instance_uid:
            raise ResultWriterError(
                f"source file {frame.path} holds SOP Instance {ds.SOPInstanceUID}, "
                f"expected {frame.sop_instance_uid}"
            )
        for keyword in PATIENT_STUDY_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
        _share_per_frame_geometry(ds)
        seen[key] = ds
    return list(seen.values())


def _segment_description(
    segment_number: int, anatomy: StructureAnatomy, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    description = hd.seg.SegmentDescription(
        segment_number=segment_number,
        segment_label=anatomy.display_name[:64],
        segmented_property_category=anatomy.category.concept(),
        segmented_property_type=anatomy.property_type.concept(),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id=anatomy.name,
        anatomic_regions=[anatomy.anatomic_region.concept()],
        display_color=anatomy.color_cielab(),
    )
    if anatomy.type_modifier is not None:
        # Segmented Property Type Modifier Code Sequence (0062,0011) is nested in the type code item
        # (PS3.3 C.8.20.2, Segment Description Macro): laterality, CID 244.
        description.SegmentedPropertyTypeCodeSequence[
            0
        ].SegmentedPropertyTypeModifierCodeSequence = DicomSequence([anatomy.type_modifier.concept()])
    return description


def algorithm_identification(result: SegmentationResult) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=result.algorithm.name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=result.algorithm.version[:64] or "unknown",
        source=f"TotalSegmentator {result.algorithm.model_profile}"[:64],
        parameters=result.algorithm.parameters(),
    )


def _source_position(ds: Dataset, frame_number: int | None) -> np.ndarray:
    """ImagePositionPatient of one source frame (single-frame header or Enhanced MR functional groups)."""
    if frame_number is None:
        return np.array([float(v) for v in ds.ImagePositionPatient])
    groups = ds.PerFrameFunctionalGroupsSequence[frame_number - 1]
    if "PlanePositionSequence" not in groups:
        groups = ds.SharedFunctionalGroupsSequence[0]
    return np.array([float(v) for v in groups.PlanePositionSequence[0].ImagePositionPatient])


def _slices_on_source_grid(
    result: SegmentationResult, sources: list[Dataset]
) -> tuple[np.ndarray, np.ndarray]:
    """Label planes and positions, one per source frame.

    Normally slice k of the volume is source frame k. A stack the volume builder resampled to uniform
    spacing has interpolated slices; the SEG must still sit on the source frames (that is what viewers
    overlay it on), so each source frame takes the labels of the nearest resampled slice.
    """
    affine = np.asarray(result.volume.affine_lps, dtype=np.float64)
    if result.volume.slices_match_sources:
        positions = affine[:3, 3] + np.outer(np.arange(result.volume.shape[2]), affine[:3, 2])
        return result.labels, positions
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    positions = np.array(
        [_source_position(by_uid[f.sop_instance_uid], f.frame_number) for f in result.volume.sources]
    )
    k = (np.linalg.inv(affine) @ np.c_[positions, np.ones(len(positions))].T)[2]
    nearest = np.clip(np.rint(k).astype(int), 0, result.volume.shape[2] - 1)
    return result.labels[:, :, nearest], positions


def _geometry(
    result: SegmentationResult, positions: np.ndarray
) -> tuple[hd.PlaneOrientationSequence, hd.PixelMeasuresSequence, list[hd.PlanePositionSequence]]:
    affine = np.asarray(result.volume.affine_lps, dtype=np.float64)
    si, sj, sk = result.volume.spacing
    row_dir = affine[:3, 0] / si  # direction of increasing column index = ImageOrientationPatient[0:3]
    col_dir = affine[:3, 1] / sj
    orientation = hd.PlaneOrientationSequence(
        coordinate_system="PATIENT", image_orientation=[float(v) for v in (*row_dir, *col_dir)]
    )
    measures = hd.PixelMeasuresSequence(
        pixel_spacing=[float(sj), float(si)],  # PixelSpacing = (between rows, between columns)
        slice_thickness=float(sk),
        spacing_between_slices=float(sk) if result.volume.slices_match_sources else None,
    )
    plane_positions = [
        hd.PlanePositionSequence(coordinate_system="PATIENT", image_position=[float(v) for v in p])
        for p in positions
    ]
    return orientation, measures, plane_positions


def _default_series_description(result: SegmentationResult) -> str:
    source = result.volume.series_description or f"series {result.volume.series_number or ''}".strip()
    return f"SEG {result.algorithm.model_profile} of {source}"[:64]


def build_segmentation(
    result: SegmentationResult,
    options: SegWriterOptions | None = None,
    source_datasets: list[Dataset] | None = None,
) -> SegWriteOutcome:
    """Build (not write) the SEG; raises ResultWriterError when nothing is segmented or inputs disagree."""
    options = options or SegWriterOptions()
    started = time.perf_counter()
    counts = result.validate()
    check_classes_coded(result.classes)
    present = result.present_labels(counts)
    omitted = result.absent_structures(counts)
    if not present:
        raise ResultWriterError(
            f"no structure was found in {result.volume.label}: "
            "a DICOM Segmentation needs at least one segment"
        )
    sources = source_datasets if source_datasets is not None else read_source_datasets(result)
    algorithm = algorithm_identification(result)

    segment_numbers = {label: number for number, label in enumerate(present, start=1)}
    descriptions = [
        _segment_description(segment_numbers[label], anatomy_for(result.classes[label]), algorithm)
        for label in present
    ]
    labels, slice_positions = _slices_on_source_grid(result, sources)
    # Label values -> consecutive segment numbers (highdicom's label-map input style); absent classes -> 0.
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint8 if len(present) < 256 else np.uint16)
    for label, number in segment_numbers.items():
        lut[label] = number
    # [i, j, k] -> frames [k, row=j, column=i]
    frames = np.ascontiguousarray(np.transpose(lut[labels], (2, 1, 0)))

    orientation, measures, positions = _geometry(result, slice_positions)
    series_number = options.series_number
    if series_number is None:
        series_number = 7000 + (result.volume.series_number or 0)

    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=options.segmentation_type,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=options.manufacturer,
            manufacturer_model_name=SEG_MODEL_NAME,
            software_versions=result.algorithm.version or "unknown",
            device_serial_number=options.device_serial_number,
            content_description=f"{result.algorithm.name} {result.algorithm.model_profile}"[:64],
            content_label="TOTALSEG_MRI",
            series_description=options.series_description or _default_series_description(result),
            plane_orientation=orientation,
            pixel_measures=measures,
            plane_positions=positions,
            omit_empty_frames=options.omit_empty_frames,
            workers=options.workers,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ResultWriterError(
            f"highdicom refused the segmentation of {result.volume.label}: {exc}"
        ) from exc
    _reference_exact_source_frames(seg, result, slice_positions)
    # UTF-8 for every text we copy from the source (non-ASCII patient names), PS3.5 6.1.2.3.
    seg.SpecificCharacterSet = "ISO_IR 192"
    return SegWriteOutcome(
        path=None,
        dataset=seg,
        segment_numbers=segment_numbers,
        omitted_structures=omitted,
        seconds=time.perf_counter() - started,
    )


def _reference_exact_source_frames(seg: Dataset, result: SegmentationResult, positions: np.ndarray) -> None:
    """Point every SEG frame at the very source frame of its plane (PS3.3 C.7.6.16.2.6 Derivation Image).

    highdicom matches frames to sources by position; with two stacks at the same positions in one
    Enhanced MR instance (Dixon water/fat) it could pick the other stack's frame, so set them from the
    volume's own plane -> source table instead.
    """
    purpose = hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")
    derivation_code = hd.sr.CodedConcept("113076", "DCM", "Segmentation")
    # One Derivation Image item per plane, shared by that plane's frames of every segment (saves time).
    derivations: dict[int, DicomSequence] = {}
    for item in seg.PerFrameFunctionalGroupsSequence:
        position = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        distances = np.linalg.norm(positions - position, axis=1)
        index = int(np.argmin(distances))
        if distances[index] > 1e-2:
            raise ResultWriterError(
                f"SEG frame at {position.tolist()} lies on no slice of {result.volume.label}"
            )
        if index not in derivations:
            source = result.volume.sources[index]
            source_item = Dataset()
            source_item.ReferencedSOPClassUID = source.sop_class_uid
            source_item.ReferencedSOPInstanceUID = source.sop_instance_uid
            if source.frame_number is not None:
                source_item.ReferencedFrameNumber = source.frame_number
            source_item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
            # The frame is the source frame's own grid (same plane, pixel spacing and matrix): C.7.6.16.2.6.
            source_item.SpatialLocationsPreserved = "YES"
            derivation = Dataset()
            derivation.DerivationCodeSequence = DicomSequence([derivation_code])
            derivation.SourceImageSequence = DicomSequence([source_item])
            derivations[index] = DicomSequence([derivation])
        item.DerivationImageSequence = derivations[index]
    # Referenced Series Sequence (Common Instance Reference Module, PS3.3 C.12.2): the source instances.
    instances: dict[str, str] = {}
    for frame in result.volume.sources:
        instances.setdefault(frame.sop_instance_uid, frame.sop_class_uid)
    series_item = Dataset()
    series_item.SeriesInstanceUID = result.volume.series_instance_uid
    series_item.ReferencedInstanceSequence = DicomSequence()
    for sop_instance_uid, sop_class_uid in instances.items():
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class_uid
        ref.ReferencedSOPInstanceUID = sop_instance_uid
        series_item.ReferencedInstanceSequence.append(ref)
    seg.ReferencedSeriesSequence = DicomSequence([series_item])


def write_segmentation(
    result: SegmentationResult,
    path: Path,
    options: SegWriterOptions | None = None,
    source_datasets: list[Dataset] | None = None,
) -> SegWriteOutcome:
    """Build the SEG and save it to ``path`` (the caller stages ``path`` in a temporary folder)."""
    outcome = build_segmentation(result, options, source_datasets)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_multiframe(outcome.dataset, path)
    outcome.path = path
    logger.info(
        "wrote SEG %s: %d segments, %d frames, %d empty structures omitted, %.2f s",
        path.name,
        len(outcome.segment_numbers),
        int(outcome.dataset.NumberOfFrames),
        len(outcome.omitted_structures),
        outcome.seconds,
    )
    return outcome

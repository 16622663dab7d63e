"""Realistic MR source series written with pydicom for the result-writer tests, plus their Volumes.

Classic MR Image Storage (one instance per slice) in any orientation, and Enhanced MR Image Storage (one
multi-frame instance with per-frame Plane Position / Frame Content functional groups). The Volume of each
is built from the geometry the files were written with, independently of the project's volume builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from operators.segmentation_result import AlgorithmInfo, SegmentationResult
from operators.volume import SourceFrame, Volume

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"

ORIENTATIONS = {
    # row direction cosine, column direction cosine (LPS)
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


def oblique_orientation(degrees: float = 20.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """An axial plane tilted about the L-R axis and then the A-P axis."""
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    m = ry @ rx
    return tuple(m[:, 0].tolist()), tuple(m[:, 1].tolist())


@dataclass
class SourceSeries:
    volume: Volume
    paths: list[Path]
    datasets: list[Dataset]


def _patient_study(ds: Dataset, study_uid: str, *, patient_name: str | None, minimal: bool) -> None:
    if patient_name is not None:
        if not patient_name.isascii():
            ds.SpecificCharacterSet = "ISO_IR 192"  # a real non-ASCII header declares its character set
        ds.PatientName = patient_name
    elif not minimal:
        ds.PatientName = "Test^Writer"
    ds.PatientID = "WRITER-001"
    ds.PatientBirthDate = "" if minimal else "19700101"
    ds.PatientSex = "" if minimal else "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "101010"
    ds.ReferringPhysicianName = ""
    if not minimal:
        ds.StudyID = "S1"
        ds.AccessionNumber = "ACC1"
        ds.StudyDescription = "MR abdomen"


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
    return meta


def _mr_common(ds: Dataset) -> None:
    ds.Modality = "MR"
    ds.Manufacturer = "pydicom test writer"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.EchoTime = 10.0
    ds.RepetitionTime = 500.0
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = 1.5
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0


def write_classic_series(
    folder: Path,
    *,
    shape: tuple[int, int, int] = (24, 20, 12),
    spacing: tuple[float, float, float] = (1.5, 1.25, 3.0),
    orientation: str | tuple = "axial",
    origin: tuple[float, float, float] = (-20.0, -15.0, 30.0),
    series_description: str = "T1 test",
    patient_name: str | None = None,
    minimal: bool = False,
    seed: int = 0,
) -> SourceSeries:
    """One MR Image Storage instance per slice; shape is (ni=columns, nj=rows, nk=slices)."""
    row_dir, col_dir = ORIENTATIONS[orientation] if isinstance(orientation, str) else orientation
    row = np.asarray(row_dir, dtype=float)
    col = np.asarray(col_dir, dtype=float)
    normal = np.cross(row, col)
    ni, nj, nk = shape
    si, sj, sk = spacing
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 1000, size=shape).astype(np.uint16)
    study_uid, series_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths, datasets, sources = [], [], []
    for k in range(nk):
        sop_uid = generate_uid()
        ds = Dataset()
        ds.file_meta = _file_meta(MR_IMAGE_STORAGE, sop_uid)
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        _patient_study(ds, study_uid, patient_name=patient_name, minimal=minimal)
        _mr_common(ds)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 5
        ds.SeriesDescription = series_description
        if not minimal:
            ds.SoftwareVersions = "VE11"
        else:
            ds.SoftwareVersions = ""
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * sk * normal]
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.PixelSpacing = [sj, si]
        ds.SliceThickness = sk
        ds.Rows, ds.Columns = nj, ni
        ds.PixelData = np.ascontiguousarray(image[:, :, k].T).tobytes()
        path = folder / f"slice{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        datasets.append(ds)
        sources.append(SourceFrame(path, MR_IMAGE_STORAGE, sop_uid, None))
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = row * si, col * sj, normal * sk, origin
    volume = Volume(
        array=image.astype(np.float32),
        affine_lps=affine,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        stack_id="1",
        series_description=series_description,
        series_number=5,
        frame_of_reference_uid=for_uid,
        sources=sources,
    )
    return SourceSeries(volume, paths, datasets)


def write_enhanced_mr(
    folder: Path,
    *,
    shape: tuple[int, int, int] = (20, 16, 10),
    spacing: tuple[float, float, float] = (1.25, 1.25, 2.5),
    orientation: str = "sagittal",
    origin: tuple[float, float, float] = (10.0, -30.0, 60.0),
    seed: int = 1,
    stacks: int = 1,
    volume_stack: int = 1,
) -> SourceSeries:
    """One Enhanced MR Image Storage instance with per-frame functional groups.

    ``stacks`` > 1 repeats the same positions (like Dixon water / fat in one instance, StackID 1, 2, ...);
    the returned Volume is stack ``volume_stack`` (1-based) and references only its frames.
    """
    row, col = (np.asarray(v, dtype=float) for v in ORIENTATIONS[orientation])
    normal = np.cross(row, col)
    ni, nj, nk = shape
    si, sj, sk = spacing
    image = np.random.default_rng(seed).integers(0, 1000, size=shape).astype(np.uint16)
    study_uid, series_uid, for_uid, sop_uid = (generate_uid() for _ in range(4))
    ds = Dataset()
    ds.file_meta = _file_meta(ENHANCED_MR_IMAGE_STORAGE, sop_uid)
    ds.SOPClassUID = ENHANCED_MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    _patient_study(ds, study_uid, patient_name="Enhanced^Source", minimal=False)
    _mr_common(ds)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 7
    ds.SeriesDescription = "Enhanced T2"
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20260101", "101010", "20260101101010"
    ds.NumberOfFrames = nk * stacks
    ds.Rows, ds.Columns = nj, ni
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [sj, si]
    measures.SliceThickness = sk
    measures.SpacingBetweenSlices = sk
    shared.PixelMeasuresSequence = DicomSequence([measures])
    plane_orientation = Dataset()
    plane_orientation.ImageOrientationPatient = [float(v) for v in (*row, *col)]
    shared.PlaneOrientationSequence = DicomSequence([plane_orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    dim_uid = generate_uid()
    dim = Dataset()
    dim.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = DicomSequence([dim])
    index = Dataset()
    index.DimensionOrganizationUID = dim_uid
    index.DimensionIndexPointer = pydicom.tag.Tag("InStackPositionNumber")
    index.FunctionalGroupPointer = pydicom.tag.Tag("FrameContentSequence")
    ds.DimensionIndexSequence = DicomSequence([index])
    per_frame = []
    for stack in range(stacks):
        for k in range(nk):
            item = Dataset()
            position = Dataset()
            position.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * sk * normal]
            item.PlanePositionSequence = DicomSequence([position])
            content = Dataset()
            content.StackID = str(stack + 1)
            content.InStackPositionNumber = k + 1
            content.DimensionIndexValues = [k + 1]
            item.FrameContentSequence = DicomSequence([content])
            per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    planes = np.ascontiguousarray(np.transpose(image, (2, 1, 0)))
    ds.PixelData = np.concatenate([planes + 1000 * s for s in range(stacks)]).astype(np.uint16).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = row * si, col * sj, normal * sk, origin
    volume = Volume(
        array=image.astype(np.float32),
        affine_lps=affine,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        stack_id=str(volume_stack),
        series_description="Enhanced T2",
        series_number=7,
        frame_of_reference_uid=for_uid,
        sources=[
            SourceFrame(path, ENHANCED_MR_IMAGE_STORAGE, sop_uid, (volume_stack - 1) * nk + k + 1)
            for k in range(nk)
        ],
    )
    return SourceSeries(volume, [path], [ds])


def blob_labels(shape: tuple[int, int, int], classes: dict[int, str], seed: int = 0) -> np.ndarray:
    """Non-overlapping boxes, one per class label, at distinct asymmetric places (catches any flip)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint8)
    for label in classes:
        size = [max(1, s // 4) for s in shape]
        start = [int(rng.integers(0, s - z + 1)) for s, z in zip(shape, size, strict=True)]
        box = tuple(slice(a, a + z) for a, z in zip(start, size, strict=True))
        labels[box] = label
    return labels


DEMO_ALGORITHM = AlgorithmInfo(
    name="TotalSegmentator MRI",
    version="0.1.0",
    model_profile="total_mr",
    weights_sha256=("a" * 64, "b" * 64),
)


def make_result(series: SourceSeries, classes: dict[int, str], seed: int = 0) -> SegmentationResult:
    return SegmentationResult(
        volume=series.volume,
        labels=blob_labels(series.volume.shape, classes, seed),
        classes=classes,
        algorithm=DEMO_ALGORITHM,
        timings={"inference": 1.5},
    )

"""A synthetic multi-series MR DICOM study of the torso phantom, with ground-truth labels and a manifest.

``write_study(out_dir, seed)`` writes, deterministically from the seed (same seed -> byte-identical files):

- ``dicom/``: one patient, one study (one StudyInstanceUID and FrameOfReferenceUID) holding a tri-plane
  localizer, axial / coronal / oblique stacks, a Dixon series with four image types, an Enhanced MR
  multi-frame instance, a series stored with lossless compressed transfer syntaxes, a projection (MIP)
  series, a two-slice series, a Basic Text SR document and a non-DICOM ``notes.txt``; files sit in nested
  folders, some without a ``.dcm`` suffix, so that loaders have to scan recursively and read headers;
- ``ground_truth/``: total_mr label volumes (NIfTI-1, uint8, RAS affine = diag(-1, -1, 1, 1) @ LPS affine)
  on the exact voxel grid of every volume a correct loader should build;
- ``manifest.json``: each series, what a correct series selector should do with it, and the geometry.

Voxel grids follow ``operators.volume``: ``array[i, j, k]`` with i along the DICOM row direction
(ImageOrientationPatient[0:3]), j along the column direction (ImageOrientationPatient[3:6]) and k along the
slice normal (row x column) in ascending position. References: PS3.3 A.4 (MR Image IOD), A.36.2 (Enhanced
MR Image IOD), A.35.1 (Basic Text SR IOD), C.7.6.2 (Image Plane), C.7.6.16 (Multi-frame Functional Groups).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from scipy import ndimage

from app.synthetic.phantom import (
    LABELS,
    TISSUE_INDEX,
    Contrast,
    TorsoPhantom,
    contrast,
    dixon_contrasts,
    render,
    render_many,
)
from operators.errors import TotalSegMRIError

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MANUFACTURER = "Synthetic"
PIXEL_SCALE = 1000.0  # stored value per unit of rendered intensity
BITS_STORED = 12
MAX_STORED = (1 << BITS_STORED) - 1


class SyntheticStudyError(TotalSegMRIError, ValueError):
    """The synthetic study cannot be written as asked (bad seed/scale, output folder not empty)."""


@dataclass
class SyntheticSeries:
    """One series of the synthetic study and what a correct series selector should make of it."""

    series_instance_uid: str
    series_number: int
    description: str
    kind: str  # e.g. "axial", "dixon", "enhanced_multiframe", "localizer"
    expected: str  # "selected" or "rejected:<reason category>"
    n_volumes_expected: int
    files: list[Path]
    # one per expected volume, named as operators.stack_split names stacks: "1" for a single-stack series,
    # "ImageType=ORIGINAL\\PRIMARY\\M\\DIXON\\W" for each Dixon image type
    stack_ids: list[str]
    sop_class_uid: str = str(MRImageStorage)
    transfer_syntaxes: list[str] = field(default_factory=list)
    image_types: dict[str, list[str]] = field(default_factory=dict)  # stack id -> ImageType
    affines_lps: dict[str, list[list[float]]] = field(default_factory=dict)  # stack id -> 4x4
    shapes: dict[str, list[int]] = field(default_factory=dict)  # stack id -> [ni, nj, nk]
    contrast: str = ""

    def ground_truth_key(self, stack_id: str) -> str:
        return ground_truth_key(self.series_instance_uid, stack_id, len(self.stack_ids))


@dataclass
class SyntheticStudy:
    root: Path
    study_instance_uid: str
    series: list[SyntheticSeries]
    ground_truth: dict[str, Path]  # ground_truth_key(series uid, stack id) -> NIfTI label path
    patient_id: str = ""
    frame_of_reference_uid: str = ""
    non_dicom_files: list[Path] = field(default_factory=list)
    manifest_path: Path | None = None

    def series_by_number(self, number: int) -> SyntheticSeries:
        for s in self.series:
            if s.series_number == number:
                return s
        raise KeyError(number)


def ground_truth_key(series_uid: str, stack_id: str, n_stacks: int) -> str:
    """``series_uid`` for a single-volume series, ``series_uid:stack_id`` when the series holds several."""
    return series_uid if n_stacks == 1 else f"{series_uid}:{stack_id}"


# ------------------------------------------------------------------------------------------- geometry


def _rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


AXIAL = (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))
CORONAL = (np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0]))
SAGITTAL = (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0]))


def _ds_number(value: float) -> str:
    """A Decimal String of at most 16 characters (PS3.5 6.2), without float noise like 1.5000000000000002."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:
        text = f"{value:.10g}"
    return text


@dataclass(frozen=True)
class StackGeometry:
    """Equally spaced parallel slices; all values are the ones written to DICOM (rounded as written)."""

    row_dir: tuple[float, float, float]  # ImageOrientationPatient[0:3]: direction of increasing column index
    col_dir: tuple[float, float, float]  # ImageOrientationPatient[3:6]: direction of increasing row index
    columns: int
    rows: int
    n_slices: int
    column_spacing: float  # PixelSpacing[1]: mm between adjacent columns
    row_spacing: float  # PixelSpacing[0]: mm between adjacent rows
    slice_step: float  # mm between adjacent slice centres along the normal
    slice_thickness: float
    origin: tuple[float, float, float]  # ImagePositionPatient of slice k = 0 (centre of its first voxel)

    @staticmethod
    def centred(
        orientation,
        columns: int,
        rows: int,
        n_slices: int,
        column_spacing: float,
        row_spacing: float,
        slice_step: float,
        slice_thickness: float | None = None,
        centre=(0.0, 0.0, 0.0),
    ) -> StackGeometry:
        r = np.round(np.asarray(orientation[0], dtype=float), 6)
        c = np.round(np.asarray(orientation[1], dtype=float), 6)
        n = np.cross(r, c)
        origin = (
            np.asarray(centre, dtype=float)
            - r * column_spacing * (columns - 1) / 2
            - c * row_spacing * (rows - 1) / 2
            - n * slice_step * (n_slices - 1) / 2
        )
        return StackGeometry(
            tuple(float(v) for v in r),
            tuple(float(v) for v in c),
            int(columns),
            int(rows),
            int(n_slices),
            float(column_spacing),
            float(row_spacing),
            float(slice_step),
            float(slice_thickness if slice_thickness is not None else slice_step),
            tuple(float(v) for v in np.round(origin, 3)),
        )

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.row_dir), np.asarray(self.col_dir))

    def position(self, k: int) -> list[float]:
        """ImagePositionPatient of slice k, rounded as it is written (3 decimals)."""
        p = np.asarray(self.origin) + k * self.slice_step * self.normal
        return [float(v) for v in np.round(p, 3)]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.columns, self.rows, self.n_slices)

    @property
    def affine_lps(self) -> np.ndarray:
        """Voxel (i, j, k) -> LPS mm, exactly as a reader derives it from the written tags."""
        a = np.eye(4)
        a[:3, 0] = np.asarray(self.row_dir) * self.column_spacing
        a[:3, 1] = np.asarray(self.col_dir) * self.row_spacing
        first, last = np.asarray(self.position(0)), np.asarray(self.position(self.n_slices - 1))
        a[:3, 2] = (
            (last - first) / (self.n_slices - 1) if self.n_slices > 1 else self.normal * self.slice_step
        )
        a[:3, 3] = first
        return a


# ------------------------------------------------------------------------------------------- context


@dataclass
class _Context:
    seed: int
    scale: float
    phantom: TorsoPhantom
    tmp_root: Path
    study_uid: str
    frame_of_reference_uid: str
    patient_id: str
    study_date: str
    study_time: str
    patient: dict
    series: list[SyntheticSeries] = field(default_factory=list)
    ground_truth: dict[str, Path] = field(default_factory=dict)

    def uid(self, *parts: object) -> UID:
        return generate_uid(entropy_srcs=["totalseg-mri-synthetic", str(self.seed), *(str(p) for p in parts)])

    def rng(self, *parts: int) -> np.random.Generator:
        return np.random.default_rng([0x5E51E5, self.seed, *parts])

    def n(self, value: int, minimum: int = 8) -> int:
        """Matrix size scaled by ``scale``."""
        return max(minimum, int(round(value * self.scale)))

    def stack(
        self,
        orientation,
        matrix: tuple[int, int, int],
        spacing: tuple[float, float, float],
        *,
        slice_thickness: float | None = None,
        centre=(0.0, 0.0, 0.0),
        min_matrix: int = 8,
    ) -> StackGeometry:
        """A centred stack of ``matrix`` (columns, rows, slices) at full scale with ``spacing`` (between
        columns, between rows, between slices); matrix and slice count shrink with ``scale``, the field of
        view stays."""
        (columns, rows, n_slices), (column_spacing, row_spacing, slice_step) = matrix, spacing
        nc, nr, ns = self.n(columns, min_matrix), self.n(rows, min_matrix), self.n(n_slices, 4)
        return StackGeometry.centred(
            orientation,
            nc,
            nr,
            ns,
            column_spacing * columns / nc,
            row_spacing * rows / nr,
            slice_step * n_slices / ns,
            slice_thickness=slice_thickness,
            centre=centre,
        )

    def series_time(self, series_number: int) -> str:
        # two minutes per series, bounded so that a late-evening study never runs past midnight
        minutes = 2 * min(series_number, 30)
        t = dt.datetime.strptime(self.study_time, "%H%M%S") + dt.timedelta(minutes=minutes)
        return t.strftime("%H%M%S")


def _new_context(out_tmp: Path, seed: int, scale: float) -> _Context:
    rng = np.random.default_rng([0xDA7E, seed])
    study_date = (dt.date(2021, 1, 4) + dt.timedelta(days=int(rng.integers(0, 1500)))).strftime("%Y%m%d")
    study_time = f"{int(rng.integers(7, 18)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
    birth = (dt.date(1940, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 60)))).strftime("%Y%m%d")
    sex = "F" if rng.random() < 0.5 else "M"
    age = int(study_date[:4]) - int(birth[:4]) - (1 if study_date[4:] < birth[4:] else 0)
    patient_id = f"SYN{seed:08d}"
    ctx = _Context(
        seed=seed,
        scale=scale,
        phantom=TorsoPhantom(seed),
        tmp_root=out_tmp,
        study_uid="",
        frame_of_reference_uid="",
        patient_id=patient_id,
        study_date=study_date,
        study_time=study_time,
        patient={
            "PatientName": f"PHANTOM^SYNTHETIC^{seed}",
            "PatientID": patient_id,
            "PatientBirthDate": birth,
            "PatientSex": sex,
            "PatientAge": f"{age:03d}Y",
            "PatientWeight": _ds_number(float(np.round(rng.uniform(55, 95), 1))),
            "PatientSize": _ds_number(float(np.round(rng.uniform(1.55, 1.95), 2))),
        },
    )
    ctx.study_uid = ctx.uid("study")
    ctx.frame_of_reference_uid = ctx.uid("frame-of-reference")
    return ctx


# ------------------------------------------------------------------------------------------- datasets


def _common_dataset(
    ctx: _Context, s: SyntheticSeries, sop_class_uid: str, sop_instance_uid: str, modality: str = "MR"
) -> Dataset:
    """Patient, General Study, General Series, General Equipment and SOP Common modules (PS3.3 C.7, C.12)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = ctx.study_date
    ds.InstanceCreationTime = ctx.series_time(s.series_number)
    ds.StudyDate = ctx.study_date
    ds.SeriesDate = ctx.study_date
    ds.ContentDate = ctx.study_date
    ds.StudyTime = ctx.study_time
    ds.SeriesTime = ctx.series_time(s.series_number)
    ds.ContentTime = ctx.series_time(s.series_number)
    ds.AccessionNumber = f"ACC{ctx.seed:07d}"
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "Synthetic Imaging Centre"
    ds.ReferringPhysicianName = ""
    ds.StationName = "SYNMR01"
    ds.StudyDescription = "MR ABDOMEN SYNTHETIC PHANTOM"
    ds.SeriesDescription = s.description
    ds.ManufacturerModelName = "Torso Phantom Simulator"
    for key, value in ctx.patient.items():
        setattr(ds, key, value)
    ds.StudyInstanceUID = ctx.study_uid
    ds.SeriesInstanceUID = s.series_instance_uid
    ds.StudyID = f"{ctx.seed % 100000:d}"
    ds.SeriesNumber = s.series_number
    ds.DeviceSerialNumber = "0000001"
    ds.SoftwareVersions = "phantom-1.0"
    return ds


def _mr_acquisition(ds: Dataset, c: Contrast, *, three_d: bool, field_strength: float) -> None:
    """MR Image module acquisition attributes (PS3.3 C.8.3.1) from the contrast's timing hints."""
    gradient_echo = c.repetition_time_ms < 100
    sequence = ("*fl3d1" if three_d else "*fl2d1") if gradient_echo else "*tse2d1"
    ds.ScanningSequence = "GR" if gradient_echo else "SE"
    ds.SequenceVariant = ["SP", "SK"] if gradient_echo else ["SK", "SP"]
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D" if three_d else "2D"
    ds.SequenceName = sequence
    ds.AngioFlag = "N"
    ds.RepetitionTime = _ds_number(c.repetition_time_ms)
    ds.EchoTime = _ds_number(c.echo_time_ms)
    ds.EchoTrainLength = 1 if gradient_echo else 128
    ds.FlipAngle = _ds_number(10.0 if gradient_echo else 160.0)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds_number(42.577478 * field_strength)
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = _ds_number(field_strength)
    ds.PixelBandwidth = _ds_number(445.0)
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "ABDOMEN"


def _pixel_module(ds: Dataset, rows: int, columns: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0


def _to_stored(image: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """Rendered intensities -> unsigned stored values such that real = stored * slope + intercept."""
    real = image * PIXEL_SCALE
    return np.clip(np.round((real - intercept) / slope), 0, MAX_STORED).astype(np.uint16)


def _window(stored: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> tuple[str, str]:
    lo, hi = np.percentile(stored, [1, 99.5]) * slope + intercept
    return _ds_number(float(np.round((lo + hi) / 2))), _ds_number(float(max(1.0, np.round(hi - lo))))


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


def _save(ds: Dataset, path: Path, transfer_syntax: UID = ExplicitVRLittleEndian) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _write_nifti_labels(labels: np.ndarray, affine_lps: np.ndarray, path: Path) -> None:
    """uint8 NIfTI-1, RAS affine in qform and sform (code 1); gzip mtime 0 keeps the bytes reproducible."""
    import nibabel as nib

    affine_ras = LPS_TO_RAS @ affine_lps
    img = nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), affine_ras)
    img.set_qform(affine_ras, code=1)
    img.set_sform(affine_ras, code=1)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(img.to_bytes())


# ------------------------------------------------------------------------------------------- writers


def _new_series(
    ctx: _Context,
    number: int,
    description: str,
    kind: str,
    expected: str,
    n_volumes: int,
    stack_ids: list[str],
    contrast_name: str = "",
    sop_class_uid: str = str(MRImageStorage),
) -> SyntheticSeries:
    s = SyntheticSeries(
        series_instance_uid=ctx.uid("series", number),
        series_number=number,
        description=description,
        kind=kind,
        expected=expected,
        n_volumes_expected=n_volumes,
        files=[],
        stack_ids=stack_ids,
        sop_class_uid=sop_class_uid,
        contrast=contrast_name,
    )
    ctx.series.append(s)
    return s


def _series_folder(ctx: _Context, s: SyntheticSeries, nested: str = "") -> Path:
    name = "".join(ch if ch.isalnum() else "_" for ch in s.description).strip("_")
    base = ctx.tmp_root / "dicom" / ctx.patient_id / f"{ctx.study_date}_MR"
    return (
        base / nested / f"S{s.series_number:03d}_{name}"
        if nested
        else base / f"S{s.series_number:03d}_{name}"
    )


def _record_volume(
    ctx: _Context,
    s: SyntheticSeries,
    stack_id: str,
    geometry: StackGeometry,
    labels: np.ndarray,
    image_type: list[str],
    gt_path: Path | None = None,
) -> None:
    s.image_types[stack_id] = list(image_type)
    s.affines_lps[stack_id] = geometry.affine_lps.round(6).tolist()
    s.shapes[stack_id] = list(geometry.shape)
    if labels is None:
        return
    key = s.ground_truth_key(stack_id)
    if gt_path is None:
        gt_path = ctx.tmp_root / "ground_truth" / f"series{s.series_number:03d}_labels.nii.gz"
        _write_nifti_labels(labels, geometry.affine_lps, gt_path)
    ctx.ground_truth[key] = gt_path


def _write_classic_stack(
    ctx: _Context,
    s: SyntheticSeries,
    geometry: StackGeometry,
    image: np.ndarray,
    c: Contrast,
    *,
    image_type: list[str],
    folder: Path,
    first_instance: int = 1,
    file_name: str = "IM{:05d}",
    reverse: bool = False,
    slope: float = 1.0,
    intercept: float = 0.0,
    echo_number: int = 1,
    three_d: bool = False,
    transfer_syntaxes: Sequence[UID] = (ExplicitVRLittleEndian,),
    sop_offset: int = 0,
    extra: dict | None = None,
) -> None:
    """One single-frame MR Image Storage instance per slice (PS3.3 A.4)."""
    stored = _to_stored(image, slope, intercept)
    center, width = _window(stored, slope, intercept)
    order = range(geometry.n_slices - 1, -1, -1) if reverse else range(geometry.n_slices)
    for n, k in enumerate(order):
        number = first_instance + n
        ds = _common_dataset(ctx, s, MRImageStorage, ctx.uid("instance", s.series_number, sop_offset + k))
        ds.ImageType = image_type
        ds.AcquisitionNumber = 1
        ds.AcquisitionDate = ctx.study_date
        ds.AcquisitionTime = ctx.series_time(s.series_number)
        ds.InstanceNumber = number
        ds.FrameOfReferenceUID = ctx.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        _mr_acquisition(ds, c, three_d=three_d, field_strength=3.0)
        ds.EchoNumbers = echo_number
        ds.SliceThickness = _ds_number(geometry.slice_thickness)
        ds.SpacingBetweenSlices = _ds_number(geometry.slice_step)
        ds.PixelSpacing = [_ds_number(geometry.row_spacing), _ds_number(geometry.column_spacing)]
        ds.ImageOrientationPatient = [_ds_number(v) for v in (*geometry.row_dir, *geometry.col_dir)]
        position = geometry.position(k)
        ds.ImagePositionPatient = [_ds_number(v) for v in position]
        ds.SliceLocation = _ds_number(float(np.dot(position, geometry.normal)))
        _pixel_module(ds, geometry.rows, geometry.columns)
        ds.WindowCenter, ds.WindowWidth = center, width
        if slope != 1.0 or intercept != 0.0:
            ds.RescaleIntercept = _ds_number(intercept)
            ds.RescaleSlope = _ds_number(slope)
            ds.RescaleType = "US"
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        pixels = np.ascontiguousarray(stored[:, :, k].T)  # (rows, columns): row index runs along col_dir
        ts = transfer_syntaxes[n % len(transfer_syntaxes)]
        ds.PixelData = pixels.astype("<u2").tobytes()
        if ts.is_compressed:
            ds.LossyImageCompression = "00"
            with _quiet_logger("openjpeg"):  # it logs every tile at INFO
                ds.compress(ts, pixels, generate_instance_uid=False)
        path = _save(ds, folder / file_name.format(number), ts)
        s.files.append(path)
        if str(ts) not in s.transfer_syntaxes:
            s.transfer_syntaxes.append(str(ts))


def _render_series(
    ctx: _Context,
    series_number: int,
    geometry: StackGeometry,
    c: Contrast,
    *,
    bias: float = 0.3,
    noise: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    return render(
        ctx.phantom, geometry.shape, geometry.affine_lps, c, ctx.rng(series_number), bias=bias, noise=noise
    )


def _localizer(ctx: _Context) -> None:
    """Tri-plane localizer: 3 axial, 3 coronal, 3 sagittal images in one series (rejected as a localizer)."""
    s = _new_series(ctx, 1, "localizer_3plane", "localizer", "rejected:localizer", 0, [], "t2")
    c = contrast("t2", ctx.rng(1, 0))
    size, spacing = ctx.n(256), 400.0 / ctx.n(256)
    folder = _series_folder(ctx, s)
    planes = (
        (AXIAL, 30.0, (0.0, 0.0, 20.0)),
        (CORONAL, 30.0, (0.0, 10.0, 0.0)),
        (SAGITTAL, 40.0, (0.0, 0.0, 0.0)),
    )
    for p, (orientation, step, centre) in enumerate(planes):
        g = StackGeometry.centred(
            orientation, size, size, 3, spacing, spacing, step, slice_thickness=8.0, centre=centre
        )
        image, _ = render(ctx.phantom, g.shape, g.affine_lps, c, ctx.rng(1, p + 1), bias=0.4, noise=0.04)
        _write_classic_stack(
            ctx,
            s,
            g,
            image,
            c,
            image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"],
            folder=folder,
            first_instance=1 + 3 * p,
            sop_offset=3 * p,
            extra={"ProtocolName": "localizer"},
        )


def _axial_t1(ctx: _Context) -> None:
    s = _new_series(ctx, 2, "t1_vibe_tra", "axial", "selected", 1, ["1"], "t1")
    c = contrast("t1", ctx.rng(2, 0))
    g = ctx.stack(AXIAL, (192, 160, 72), (1.8, 1.6, 4.0))
    image, labels = _render_series(ctx, 2, g, c)
    _write_classic_stack(
        ctx,
        s,
        g,
        image,
        c,
        image_type=["ORIGINAL", "PRIMARY", "M", "ND"],
        folder=_series_folder(ctx, s),
        file_name="IM{:05d}.dcm",
        three_d=True,
        slope=2.0,
        intercept=-10.0,
        extra={"ProtocolName": "t1_vibe_tra"},
    )
    _record_volume(ctx, s, "1", g, labels, ["ORIGINAL", "PRIMARY", "M", "ND"])


def _coronal_t2(ctx: _Context) -> None:
    s = _new_series(ctx, 3, "t2_haste_cor", "coronal", "selected", 1, ["1"], "t2")
    c = contrast("t2", ctx.rng(3, 0))
    g = ctx.stack(
        CORONAL,
        (176, 176, 44),
        (1.9, 1.9, 6.0),
        slice_thickness=5.0,
        centre=(0.0, 5.0, 0.0),
    )
    image, labels = _render_series(ctx, 3, g, c)
    # Implicit VR and instance numbers running opposite to the slice normal: loaders must sort by position.
    _write_classic_stack(
        ctx,
        s,
        g,
        image,
        c,
        image_type=["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"],
        folder=_series_folder(ctx, s, "cor"),
        file_name="{:d}",
        reverse=True,
        transfer_syntaxes=(ImplicitVRLittleEndian,),
        extra={"ProtocolName": "t2_haste_cor"},
    )
    _record_volume(ctx, s, "1", g, labels, ["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"])


def _oblique_t2(ctx: _Context) -> None:
    s = _new_series(ctx, 4, "t2_tse_tra_obl", "oblique", "selected", 1, ["1"], "t2")
    c = contrast("t2", ctx.rng(4, 0))
    tilt = _rotation("x", 17.0) @ _rotation("y", 6.0)
    orientation = (tilt @ AXIAL[0], tilt @ AXIAL[1])
    g = ctx.stack(
        orientation,
        (160, 144, 56),
        (2.0, 1.9, 5.0),
        slice_thickness=4.5,
        centre=(0.0, 0.0, -10.0),
    )
    image, labels = _render_series(ctx, 4, g, c)
    _write_classic_stack(
        ctx,
        s,
        g,
        image,
        c,
        image_type=["ORIGINAL", "PRIMARY", "M", "NORM"],
        folder=_series_folder(ctx, s),
        extra={"ProtocolName": "t2_tse_tra_obl"},
    )
    _record_volume(ctx, s, "1", g, labels, ["ORIGINAL", "PRIMARY", "M", "NORM"])


# (last ImageType value, contrast, EchoNumbers): Siemens-style Dixon, in-phase is the second echo at 3 T
DIXON_TYPES = (("IN", "dixon_in", 2), ("OPP", "dixon_opp", 1), ("W", "dixon_water", 1), ("F", "dixon_fat", 1))
DIXON_IMAGE_TYPES = {suffix: ["ORIGINAL", "PRIMARY", "M", "DIXON", suffix] for suffix, _, _ in DIXON_TYPES}


def image_type_stack_id(image_type: Sequence[str]) -> str:
    """Stack id of a volume set apart by its ImageType (the naming of ``operators.stack_split``)."""
    return "ImageType=" + "\\".join(image_type)


def _dixon(ctx: _Context) -> None:
    """One series holding in-phase, opposed-phase, water and fat images at the same positions (4 volumes)."""
    s = _new_series(
        ctx,
        5,
        "t1_vibe_dixon_tra",
        "dixon",
        "selected",
        4,
        [image_type_stack_id(t) for t in DIXON_IMAGE_TYPES.values()],
        "dixon",
    )
    contrasts = dixon_contrasts(ctx.rng(5, 0))
    g = ctx.stack(
        AXIAL,
        (160, 128, 60),
        (2.2, 2.2, 5.0),
        centre=(0.0, 0.0, 10.0),
    )
    images, labels = render_many(
        ctx.phantom, g.shape, g.affine_lps, [contrasts[n] for _, n, _ in DIXON_TYPES], ctx.rng(5)
    )
    folder = _series_folder(ctx, s, "dixon")
    gt_path = None
    for index, ((suffix, name, echo), image) in enumerate(zip(DIXON_TYPES, images, strict=True)):
        image_type = DIXON_IMAGE_TYPES[suffix]
        stack_id = image_type_stack_id(image_type)
        _write_classic_stack(
            ctx,
            s,
            g,
            image,
            contrasts[name],
            image_type=image_type,
            folder=folder,
            first_instance=1 + index * g.n_slices,
            sop_offset=index * g.n_slices,
            echo_number=echo,
            three_d=True,
            extra={"ProtocolName": "t1_vibe_dixon_tra"},
        )
        _record_volume(ctx, s, stack_id, g, labels, image_type, gt_path)
        gt_path = ctx.ground_truth[s.ground_truth_key(stack_id)]  # one label file serves all four volumes


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _item(**attributes) -> Dataset:
    item = Dataset()
    for key, value in attributes.items():
        setattr(item, key, value)
    return item


def _enhanced_mr(ctx: _Context) -> None:
    """One Enhanced MR Image Storage instance with functional groups (PS3.3 A.36.2, C.7.6.16, C.8.13)."""
    s = _new_series(
        ctx,
        6,
        "t1_fl3d_sag_enhanced",
        "enhanced_multiframe",
        "selected",
        1,
        ["1"],
        "t1",
        sop_class_uid=str(EnhancedMRImageStorage),
    )
    c = contrast("t1", ctx.rng(6, 0))
    g = ctx.stack(
        SAGITTAL,
        (128, 160, 64),
        (2.0, 2.0, 5.0),
        centre=(0.0, 0.0, 0.0),
    )
    image, labels = _render_series(ctx, 6, g, c)
    stored = _to_stored(image)
    center, width = _window(stored)
    image_type = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    acquired = f"{ctx.study_date}{ctx.series_time(6)}.000000"

    ds = _common_dataset(ctx, s, EnhancedMRImageStorage, ctx.uid("instance", 6, 0))
    ds.ImageType = image_type
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = ctx.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "ABDOMEN"
    ds.ProtocolName = "t1_fl3d_sag"
    # Enhanced MR Image module (C.8.13.1)
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = acquired
    ds.AcquisitionDuration = 42.0
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = _ds_number(3.0)
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = "synthetic phantom"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = "T1"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    # MR Pulse Sequence module (C.8.13.4)
    ds.PulseSequenceName = "fl3d"
    ds.MRAcquisitionType = "3D"
    ds.EchoPulseSequence = "GRADIENT"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE"
    ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1
    # Acquisition Context module (C.7.6.14): type 2, empty
    ds.AcquisitionContextSequence = DicomSequence([])
    # Multi-frame Dimension module (C.7.6.17): stack and in-stack position
    organization = ctx.uid("dimension-organization", 6)
    ds.DimensionOrganizationSequence = DicomSequence([_item(DimensionOrganizationUID=organization)])
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = DicomSequence(
        [
            _item(
                DimensionOrganizationUID=organization,
                DimensionIndexPointer=Tag("StackID"),
                FunctionalGroupPointer=Tag("FrameContentSequence"),
                DimensionDescriptionLabel="Stack ID",
            ),
            _item(
                DimensionOrganizationUID=organization,
                DimensionIndexPointer=Tag("InStackPositionNumber"),
                FunctionalGroupPointer=Tag("FrameContentSequence"),
                DimensionDescriptionLabel="In-Stack Position",
            ),
        ]
    )
    # Image Pixel + Multi-frame Functional Groups modules (C.7.6.3, C.7.6.16)
    _pixel_module(ds, g.rows, g.columns)
    ds.NumberOfFrames = g.n_slices
    ds.SharedFunctionalGroupsSequence = DicomSequence(
        [
            _item(
                PixelMeasuresSequence=DicomSequence(
                    [
                        _item(
                            PixelSpacing=[_ds_number(g.row_spacing), _ds_number(g.column_spacing)],
                            SliceThickness=_ds_number(g.slice_thickness),
                            SpacingBetweenSlices=_ds_number(g.slice_step),
                        )
                    ]
                ),
                PlaneOrientationSequence=DicomSequence(
                    [_item(ImageOrientationPatient=[_ds_number(v) for v in (*g.row_dir, *g.col_dir)])]
                ),
                MRImageFrameTypeSequence=DicomSequence(
                    [
                        _item(
                            FrameType=image_type,
                            PixelPresentation="MONOCHROME",
                            VolumetricProperties="VOLUME",
                            VolumeBasedCalculationTechnique="NONE",
                            ComplexImageComponent="MAGNITUDE",
                            AcquisitionContrast="T1",
                        )
                    ]
                ),
                MRTimingAndRelatedParametersSequence=DicomSequence(
                    [
                        _item(
                            RepetitionTime=_ds_number(c.repetition_time_ms),
                            FlipAngle=_ds_number(10.0),
                            EchoTrainLength=1,
                            RFEchoTrainLength=1,
                            GradientEchoTrainLength=1,
                            SpecificAbsorptionRateSequence=DicomSequence(
                                [
                                    _item(
                                        SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                                        SpecificAbsorptionRateValue=0.4,
                                    )
                                ]
                            ),
                            GradientOutputType="DB_DT",
                            GradientOutput=50.0,
                            OperatingModeSequence=DicomSequence(
                                [
                                    _item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL"),
                                    _item(OperatingModeType="RF", OperatingMode="IEC_NORMAL"),
                                    _item(OperatingModeType="GRADIENT", OperatingMode="IEC_NORMAL"),
                                ]
                            ),
                        )
                    ]
                ),
                MRFOVGeometrySequence=DicomSequence(
                    [
                        _item(
                            InPlanePhaseEncodingDirection="ROW",
                            MRAcquisitionFrequencyEncodingSteps=g.rows,
                            MRAcquisitionPhaseEncodingStepsInPlane=g.columns,
                            PercentSampling=_ds_number(100.0),
                            PercentPhaseFieldOfView=_ds_number(100.0),
                            MRAcquisitionPhaseEncodingStepsOutOfPlane=g.n_slices,
                        )
                    ]
                ),
                MREchoSequence=DicomSequence([_item(EffectiveEchoTime=float(c.echo_time_ms))]),
                MRModifierSequence=DicomSequence(
                    [
                        _item(
                            InversionRecovery="NO",
                            FlowCompensation="NONE",
                            T2Preparation="NO",
                            SpectrallySelectedExcitation="NONE",
                            SpatialPresaturation="NONE",
                            PartialFourier="NO",
                            ParallelAcquisition="NO",
                        )
                    ]
                ),
                MRImagingModifierSequence=DicomSequence(
                    [
                        _item(
                            MagnetizationTransfer="NONE",
                            BloodSignalNulling="NO",
                            Tagging="NONE",
                            TransmitterFrequency=127.7,
                            PixelBandwidth=_ds_number(445.0),
                        )
                    ]
                ),
                MRReceiveCoilSequence=DicomSequence(
                    [
                        _item(
                            ReceiveCoilName="Body",
                            ReceiveCoilManufacturerName="",
                            ReceiveCoilType="BODY",
                            QuadratureReceiveCoil="YES",
                        )
                    ]
                ),
                MRTransmitCoilSequence=DicomSequence(
                    [_item(TransmitCoilName="Body", TransmitCoilManufacturerName="", TransmitCoilType="BODY")]
                ),
                MRAveragesSequence=DicomSequence([_item(NumberOfAverages=_ds_number(1.0))]),
                FrameAnatomySequence=DicomSequence(
                    [
                        _item(
                            AnatomicRegionSequence=DicomSequence([_code("818981001", "SCT", "Abdomen")]),
                            FrameLaterality="U",
                        )
                    ]
                ),
                FrameVOILUTSequence=DicomSequence([_item(WindowCenter=center, WindowWidth=width)]),
            )
        ]
    )
    frames = []
    for k in range(g.n_slices):
        frames.append(
            _item(
                FrameContentSequence=DicomSequence(
                    [
                        _item(
                            FrameAcquisitionDateTime=acquired,
                            FrameReferenceDateTime=acquired,
                            FrameAcquisitionDuration=round(42000.0 / g.n_slices, 3),
                            StackID="1",
                            InStackPositionNumber=k + 1,
                            DimensionIndexValues=[1, k + 1],
                        )
                    ]
                ),
                PlanePositionSequence=DicomSequence(
                    [_item(ImagePositionPatient=[_ds_number(v) for v in g.position(k)])]
                ),
                PixelValueTransformationSequence=DicomSequence(
                    [_item(RescaleIntercept="0", RescaleSlope="1", RescaleType="US")]
                ),
            )
        )
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.ContentDate = ctx.study_date
    ds.ContentTime = ctx.series_time(6)
    # frames in k order: (frames, rows, columns)
    ds.PixelData = np.ascontiguousarray(np.transpose(stored, (2, 1, 0))).astype("<u2").tobytes()
    path = _save(ds, ctx.tmp_root / "dicom" / "enhanced" / "multiframe" / "EMR00001")
    s.files.append(path)
    s.transfer_syntaxes.append(str(ExplicitVRLittleEndian))
    _record_volume(ctx, s, "1", g, labels, image_type)


def _compressed(ctx: _Context) -> None:
    """An axial PD stack whose slices cycle through three lossless compressed transfer syntaxes."""
    s = _new_series(ctx, 7, "pd_tse_tra_compressed", "compressed", "selected", 1, ["1"], "pd")
    c = contrast("pd", ctx.rng(7, 0))
    g = ctx.stack(
        AXIAL,
        (144, 128, 50),
        (2.4, 2.2, 6.0),
        slice_thickness=5.0,
        min_matrix=32,  # J2K needs >= 32 px, centre=(0.0, 0.0, -5.0),
    )
    image, labels = _render_series(ctx, 7, g, c)
    _write_classic_stack(
        ctx,
        s,
        g,
        image,
        c,
        image_type=["ORIGINAL", "PRIMARY", "M", "ND"],
        folder=_series_folder(ctx, s, "archive/compressed"),
        file_name="I{:04d}.dcm",
        transfer_syntaxes=(JPEG2000Lossless, JPEGLSLossless, RLELossless),
        extra={"ProtocolName": "pd_tse_tra"},
    )
    _record_volume(ctx, s, "1", g, labels, ["ORIGINAL", "PRIMARY", "M", "ND"])


def _projection(ctx: _Context) -> None:
    """Radial maximum-intensity projections of bright blood (DERIVED\\SECONDARY\\PROJECTION IMAGE)."""
    s = _new_series(ctx, 8, "t1_fl3d_angio_MIP_rad", "projection", "rejected:derived", 0, [], "t1")
    base = contrast("t1", ctx.rng(8, 0))
    bright = list(base.intensities)
    for vessel in ("aorta", "inferior_vena_cava", "heart"):
        bright[TISSUE_INDEX[vessel]] = 1.6  # inflow-enhanced blood dominates the projection
    c = replace(base, name="angio", intensities=tuple(bright))
    size = ctx.n(128)
    spacing = 360.0 / size
    volume_geometry = StackGeometry.centred(AXIAL, size, size, size, spacing, spacing, spacing)
    volume, _ = _render_series(ctx, 8, volume_geometry, c, noise=0.02)
    angles = (0.0, 30.0, 60.0, 90.0, 120.0, 150.0)
    folder = _series_folder(ctx, s, "derived")
    stored_all = []
    for angle in angles:
        rotated = ndimage.rotate(volume, angle, axes=(0, 1), reshape=False, order=1, mode="constant")
        stored_all.append(rotated.max(axis=1))  # project along y (anterior-posterior): an (x, z) image
    for n, (angle, mip) in enumerate(zip(angles, stored_all, strict=True)):
        spin = _rotation("z", -angle)
        orientation = (spin @ CORONAL[0], spin @ CORONAL[1])
        g = StackGeometry.centred(orientation, size, size, 1, spacing, spacing, spacing)
        # the MIP image is indexed (x, z ascending); the coronal row direction points inferior: flip z
        _write_classic_stack(
            ctx,
            s,
            g,
            mip[:, ::-1, None],
            c,
            image_type=["DERIVED", "SECONDARY", "PROJECTION IMAGE"],
            folder=folder,
            first_instance=1 + n,
            sop_offset=n,
            extra={"DerivationDescription": f"maximum intensity projection, {angle:g} degrees"},
        )


def _two_slices(ctx: _Context) -> None:
    s = _new_series(ctx, 9, "t2_haste_tra_2sl", "too_few_slices", "rejected:too_few_slices", 0, [], "t2")
    c = contrast("t2", ctx.rng(9, 0))
    g = StackGeometry.centred(
        AXIAL,
        ctx.n(160),
        ctx.n(128),
        2,
        2.2 * 160 / ctx.n(160),
        2.2 * 128 / ctx.n(128),
        8.0,
        slice_thickness=6.0,
        centre=(0.0, 0.0, 40.0),
    )
    image, _ = _render_series(ctx, 9, g, c)
    _write_classic_stack(
        ctx,
        s,
        g,
        image,
        c,
        image_type=["ORIGINAL", "PRIMARY", "M", "NORM"],
        folder=_series_folder(ctx, s),
        file_name="IMG{:03d}",
    )


def _text_report(ctx: _Context) -> None:
    """A minimal Basic Text SR document (PS3.3 A.35.1): not an image, a loader must skip it."""
    s = _new_series(
        ctx,
        99,
        "phantom_report",
        "structured_report",
        "rejected:non_image",
        0,
        [],
        sop_class_uid=str(BasicTextSRStorage),
    )
    ds = _common_dataset(ctx, s, BasicTextSRStorage, ctx.uid("instance", 99, 0), modality="SR")
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence([])
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = DicomSequence([])
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence([_code("18748-4", "LN", "Diagnostic imaging report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentSequence = DicomSequence(
        [
            _item(
                RelationshipType="CONTAINS",
                ValueType="TEXT",
                ConceptNameCodeSequence=DicomSequence([_code("121071", "DCM", "Finding")]),
                TextValue=f"Synthetic torso phantom, seed {ctx.seed}. No findings: this is not a patient.",
            )
        ]
    )
    path = _save(ds, ctx.tmp_root / "dicom" / ctx.patient_id / "reports" / "SR00001")
    s.files.append(path)
    s.transfer_syntaxes.append(str(ExplicitVRLittleEndian))


def _notes(ctx: _Context) -> Path:
    path = ctx.tmp_root / "dicom" / ctx.patient_id / "notes.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"Synthetic MR study, seed {ctx.seed}. Not DICOM: loaders must skip this file.\n")
    return path


# ------------------------------------------------------------------------------------------- study


def _manifest(ctx: _Context, non_dicom: list[Path]) -> dict:
    def rel(p: Path) -> str:
        return p.relative_to(ctx.tmp_root).as_posix()

    series = []
    for s in ctx.series:
        series.append(
            {
                "series_instance_uid": s.series_instance_uid,
                "series_number": s.series_number,
                "description": s.description,
                "kind": s.kind,
                "expected": s.expected,
                "n_volumes_expected": s.n_volumes_expected,
                "stack_ids": s.stack_ids,
                "sop_class_uid": s.sop_class_uid,
                "transfer_syntaxes": s.transfer_syntaxes,
                "contrast": s.contrast,
                "n_files": len(s.files),
                "files": [rel(p) for p in s.files],
                "volumes": [
                    {
                        "stack_id": stack,
                        "image_type": s.image_types.get(stack, []),
                        "shape": s.shapes.get(stack),
                        "affine_lps": s.affines_lps.get(stack),
                        "ground_truth": rel(ctx.ground_truth[s.ground_truth_key(stack)]),
                        "ground_truth_key": s.ground_truth_key(stack),
                    }
                    for stack in s.stack_ids
                ],
            }
        )
    return {
        "generator": "app.synthetic.dicom_study",
        "seed": ctx.seed,
        "scale": ctx.scale,
        "patient_id": ctx.patient_id,
        "study_instance_uid": ctx.study_uid,
        "frame_of_reference_uid": ctx.frame_of_reference_uid,
        "labels": {str(k): v for k, v in LABELS.items()},
        "index_convention": (
            "array[i, j, k]: i along ImageOrientationPatient[0:3], j along [3:6], k along the slice normal "
            "(row x column) in ascending position; NIfTI affine is RAS"
        ),
        "series": series,
        "non_dicom_files": [rel(p) for p in non_dicom],
        "ground_truth": {k: rel(v) for k, v in sorted(ctx.ground_truth.items())},
    }


def write_study(out_dir: Path, seed: int = 0, *, scale: float = 1.0) -> SyntheticStudy:
    """Write the synthetic study under ``out_dir`` (must be absent or empty) and return its description.

    ``scale`` (0 < scale <= 2) multiplies matrix sizes and slice counts, keeping the fields of view; use
    about 0.25-0.5 for fast tests. The output appears atomically: it is built in a temporary sibling folder
    and renamed into place, so a failure leaves no partial study behind.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SyntheticStudyError(f"seed must be a non-negative integer, got {seed!r}")
    if not (0.0 < float(scale) <= 2.0):
        raise SyntheticStudyError(f"scale must be in (0, 2], got {scale!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SyntheticStudyError(f"output folder {out_dir} already exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        ctx = _new_context(tmp, int(seed), float(scale))
        for step in (
            _localizer,
            _axial_t1,
            _coronal_t2,
            _oblique_t2,
            _dixon,
            _enhanced_mr,
            _compressed,
            _projection,
            _two_slices,
            _text_report,
        ):
            step(ctx)
            logger.debug("wrote series step %s", step.__name__)
        non_dicom = [_notes(ctx)]
        manifest = _manifest(ctx, non_dicom)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    def moved(p: Path) -> Path:
        return out_dir / p.relative_to(tmp)

    for s in ctx.series:
        s.files = [moved(p) for p in s.files]
    study = SyntheticStudy(
        root=out_dir,
        study_instance_uid=ctx.study_uid,
        series=ctx.series,
        ground_truth={k: moved(v) for k, v in ctx.ground_truth.items()},
        patient_id=ctx.patient_id,
        frame_of_reference_uid=ctx.frame_of_reference_uid,
        non_dicom_files=[moved(p) for p in non_dicom],
        manifest_path=out_dir / "manifest.json",
    )
    logger.info("wrote synthetic study (seed %d, %d series) to %s", seed, len(study.series), out_dir)
    return study


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m app.synthetic.dicom_study -o DIR [--seed N] [--scale S]``."""
    parser = argparse.ArgumentParser(
        prog="python -m app.synthetic.dicom_study",
        description="Write a synthetic multi-series MR DICOM study of a torso "
        "phantom with ground-truth total_mr labels.",
    )
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder (absent or empty)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--scale", type=float, default=1.0, help="matrix size factor, e.g. 0.5 (default 1)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        study = write_study(args.output, args.seed, scale=args.scale)
    except SyntheticStudyError as exc:
        logger.error("%s", exc)
        return exc.exit_code
    logger.info(
        "%d series, %d ground-truth volumes, manifest %s",
        len(study.series),
        len(study.ground_truth),
        study.manifest_path,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Write classic single-frame MR series from an array and a voxel->LPS affine, for geometry tests.

The pixel data of the series built from Debian's Colin27 template (``/usr/share/mricron/templates``) is a
real T1 head acquisition; only the DICOM wrapping is ours, so the geometry under test is exactly known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_series(
    folder: Path,
    array: np.ndarray,
    affine_lps: np.ndarray,
    *,
    seed: str = "series",
    description: str = "T1 test series",
    series_number: int = 1,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "NONE"),
    rescale: tuple[float, float] = (1.0, 0.0),
    positions: list[np.ndarray] | None = None,
    modality: str = "MR",
    study_uid: str | None = None,
    shuffle: bool = True,
    series_uid: str | None = None,
    extra: dict[str, object] | None = None,
    file_prefix: str = "IM",
) -> list[Path]:
    """One file per slice k of ``array[i, j, k]``; stored values = (array - intercept) / slope, as uint16.

    ``positions`` overrides the slice positions (to make gaps, uneven spacing or shear); slices are written
    in a shuffled order so that readers must sort them by geometry.
    """
    folder.mkdir(parents=True, exist_ok=True)
    column_step, row_step, slice_step = affine_lps[:3, 0], affine_lps[:3, 1], affine_lps[:3, 2]
    dc, dr = np.linalg.norm(column_step), np.linalg.norm(row_step)
    iop = list(column_step / dc) + list(row_step / dr)
    study_uid = study_uid or generate_uid(entropy_srcs=["study", seed])
    series_uid = series_uid or generate_uid(entropy_srcs=["series", seed])
    for_uid = generate_uid(entropy_srcs=["for", seed])
    slope, intercept = rescale
    paths = []
    order = np.random.default_rng(0).permutation(array.shape[2]) if shuffle else range(array.shape[2])
    for k in order:
        position = positions[k] if positions is not None else affine_lps[:3, 3] + k * slice_step
        stored = np.clip(np.round((array[:, :, k] - intercept) / slope), 0, 65535).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["sop", seed, str(k)])
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = "Test^Geometry", "GEOM1", "20260101", "120000"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, int(k) + 1
        ds.SeriesDescription = description
        ds.ImageType = list(image_type)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.PixelSpacing = [f"{dr:.6f}", f"{dc:.6f}"]
        ds.SliceThickness = f"{np.linalg.norm(slice_step):.6f}"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(stored.T).tobytes()  # rows = j, columns = i
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value(int(k)) if callable(value) else value)
        path = folder / f"{file_prefix}{int(k):04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def oblique_affine(spacing: tuple[float, float, float], angles_deg: tuple[float, float, float], origin) -> np.ndarray:
    """Voxel->LPS affine with axes rotated by Euler angles (x, y, z) from the axial orientation."""
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine

"""A 3D image volume on a known patient geometry, as built from one DICOM stack.

Index convention (the same as ITK, nibabel and dcm2niix): ``array[i, j, k]`` where ``i`` runs along the
DICOM row direction (across columns, ImageOrientationPatient[0:3]), ``j`` along the column direction
(down rows, ImageOrientationPatient[3:6]) and ``k`` along the slice normal in the order the slices were
sorted. ``affine_lps`` maps ``(i, j, k, 1)`` to patient coordinates in millimetres in the DICOM patient
coordinate system (LPS, PS3.3 C.7.6.2.1.1); ``affine_ras`` is the same mapping in the RAS+ convention
used by NIfTI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class SourceFrame:
    """One DICOM frame that became one slice (``k``) of a volume."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None  # 1-based frame number in a multi-frame instance; None for single-frame


@dataclass
class Volume:
    """Voxels plus geometry plus the DICOM provenance needed to write derived objects."""

    array: np.ndarray  # float32, shape (ni, nj, nk)
    affine_lps: np.ndarray  # 4x4, voxel index -> LPS mm
    study_instance_uid: str
    series_instance_uid: str
    stack_id: str  # unique within the series, e.g. "1" or "ImageType=W" or "EchoNumbers=2"
    modality: str = "MR"
    series_description: str = ""
    series_number: int | None = None
    frame_of_reference_uid: str | None = None
    # The frames the volume was built from, sorted along the normal: one per slice k unless the stack was
    # resampled to uniform spacing (then ``slices_match_sources`` is False and slice k is interpolated).
    sources: list[SourceFrame] = field(default_factory=list)
    slices_match_sources: bool = True
    notes: list[str] = field(default_factory=list)  # e.g. "resampled non-uniform slice spacing"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        return tuple(float(v) for v in np.linalg.norm(self.affine_lps[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def affine_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.affine_lps

    @property
    def label(self) -> str:
        """A file-system-safe name for this volume, unique within a study."""
        number = f"{self.series_number:04d}" if self.series_number is not None else "0000"
        stack = "".join(c if c.isalnum() or c in "-." else "_" for c in self.stack_id)
        return f"series{number}_{self.series_instance_uid[-12:]}_{stack}".rstrip("_")

    def to_nifti(self):
        """A nibabel NIfTI-1 image in RAS+ world coordinates (qform and sform set, code 1 = scanner)."""
        import nibabel as nib

        img = nib.Nifti1Image(np.asarray(self.array, dtype=np.float32), self.affine_ras)
        img.set_qform(self.affine_ras, code=1)
        img.set_sform(self.affine_ras, code=1)
        img.header.set_xyzt_units("mm", "sec")
        return img

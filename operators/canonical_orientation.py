"""Reorient a voxel array to the closest canonical (RAS+) axis order and back, in memory.

TotalSegmentator runs its networks on ``nibabel.as_closest_canonical(img)``: the voxel axes are permuted and
flipped so that i, j, k run as closely as possible towards +R, +A, +S of NIfTI's RAS+ world (towards the
patient's right, anterior and superior; DICOM's LPS patient axes: PS3.3 C.7.6.2.1.1). The same nibabel
orientation helpers are used here on the :class:`~operators.volume.Volume`'s RAS affine, so the canonical
array is exactly the one TotalSegmentator feeds to nnU-Net, without a NIfTI round trip. Oblique volumes are
not resampled: the closest axis wins, as in nibabel. An already canonical volume is passed through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

_RAS = axcodes2ornt("RAS")


@dataclass(frozen=True)
class CanonicalView:
    """A canonical array, its affine, and what is needed to map arrays on its grid back."""

    array: np.ndarray
    affine_ras: np.ndarray  # voxel -> RAS mm of the canonical array
    orientation: np.ndarray  # nibabel ornt of the source array (source axes -> RAS)
    source_shape: tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.orientation, _RAS))

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along the canonical axes as a NIfTI header stores it (float32), in float64."""
        return np.linalg.norm(self.affine_ras[:3, :3], axis=0).astype(np.float32).astype(np.float64)

    def to_source(self, canonical_array: np.ndarray) -> np.ndarray:
        """Map an array on the canonical grid (e.g. labels) back onto the source voxel grid."""
        if self.is_identity:
            return canonical_array
        back = ornt_transform(_RAS, self.orientation)
        result = np.ascontiguousarray(apply_orientation(canonical_array, back))
        if result.shape != self.source_shape:
            raise ValueError(f"reoriented shape {result.shape} differs from source shape {self.source_shape}")
        return result


def to_closest_canonical(array: np.ndarray, affine_ras: np.ndarray) -> CanonicalView:
    """Permute/flip ``array`` (indexed like the affine's voxel axes) to the closest RAS+ orientation."""
    orientation = io_orientation(affine_ras)
    shape = tuple(int(s) for s in array.shape)
    if np.array_equal(orientation, _RAS):
        return CanonicalView(array, np.asarray(affine_ras, dtype=np.float64), orientation, shape)  # type: ignore[arg-type]
    canonical = np.ascontiguousarray(apply_orientation(array, orientation))
    affine = np.asarray(affine_ras, dtype=np.float64) @ inv_ornt_aff(orientation, shape)
    return CanonicalView(canonical, affine, orientation, shape)  # type: ignore[arg-type]

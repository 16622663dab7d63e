"""Export volumes and their label maps as NIfTI-1 (RAS+), the format research pipelines and dcm2niix users expect."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from operators.segmentation_result import SegmentationResult
from operators.volume import Volume

NIFTI_FOLDER = "nifti"


def export_volumes(volumes: list[Volume], folder: Path) -> list[Path]:
    """Write ``<label>.nii.gz`` per volume into ``folder``; returns the paths in volume order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for volume in volumes:
        path = folder / f"{volume.label}.nii.gz"
        nib.save(volume.to_nifti(), path)
        paths.append(path)
    return paths


def export_segmentations(results: list[SegmentationResult], folder: Path) -> list[Path]:
    """Write each volume and its label map (``<label>_seg.nii.gz``, total_mr label numbers) on the same grid."""
    paths = export_volumes([r.volume for r in results], folder)
    for result in results:
        image = result.volume.to_nifti()
        dtype = np.uint8 if int(result.labels.max(initial=0)) < 256 else np.uint16
        labels = nib.Nifti1Image(result.labels.astype(dtype), image.affine, image.header)
        labels.set_data_dtype(dtype)
        labels.header["scl_slope"], labels.header["scl_inter"] = 1, 0
        path = folder / f"{result.volume.label}_seg.nii.gz"
        nib.save(labels, path)
        paths.append(path)
    return paths

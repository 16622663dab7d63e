"""Export built volumes as NIfTI-1 (RAS+), the format research pipelines and dcm2niix users expect."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib

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

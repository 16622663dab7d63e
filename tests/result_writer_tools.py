"""Independent tools the result-writer tests validate against: dciodvfy (dicom3tools) and dcmqi.

A missing tool fails the test with what to install; nothing is skipped silently.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from operators.volume import Volume

# dciodvfy warnings that are expected on our objects, each with the reason it is acceptable.
JUSTIFIED_DCIODVFY_WARNINGS: dict[str, str] = {
    # regular expression matched against the warning line -> why it is acceptable
    r"</StudyID\(0020,0010\)> - Missing attribute or value that would be needed to build DICOMDIR": (
        "Only when the source has no StudyID. Study ID is Type 2 in the General Study module, so empty is "
        "valid; it identifies the study as the RIS/scanner named it, and inventing one would make the "
        "derived objects disagree with the rest of the study. It matters only for building a DICOMDIR."
    ),
    r"</(PatientName|ReferringPhysicianName|NameOfPhysiciansReadingStudy)\(....,....\)\[1\]> - Value "
    r"dubious for this VR \[PN\] = <[^>]*> - Retired Person Name form": (
        "Vendor headers (Toshiba MR_small: '----'; Philips Enhanced phantom: names without '^') hold person "
        "names in the retired free-text form. Patient and General Study attributes are copied unchanged "
        "into derived objects because they must match the other instances of the study; the values are "
        "still legal PN, dciodvfy only flags the form."
    ),
}


def require_tool(name: str, install: str) -> str:
    venv_bin = Path(sys.executable).parent / name  # pip console scripts of the running interpreter
    path = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {install}")
    return path


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Errors and warnings dciodvfy reports on one file."""
    exe = require_tool("dciodvfy", "apt-get install dicom3tools")
    proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, errors="replace")
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def assert_dciodvfy_clean(path: Path) -> list[str]:
    """No errors; every warning must be in JUSTIFIED_DCIODVFY_WARNINGS. Returns the warnings."""
    errors, warnings = dciodvfy(path)
    assert not errors, f"dciodvfy errors in {path.name}:\n" + "\n".join(errors)
    unjustified = [w for w in warnings if not any(re.search(p, w) for p in JUSTIFIED_DCIODVFY_WARNINGS)]
    assert not unjustified, f"unjustified dciodvfy warnings in {path.name}:\n" + "\n".join(unjustified)
    return warnings


def dcmqi_label_volume(
    seg_path: Path, volume: Volume, segment_to_label: dict[int, int], tmp: Path
) -> np.ndarray:
    """Read a SEG with dcmqi's segimage2itkimage and resample its segments onto ``volume``'s grid.

    dcmqi writes one NIfTI per segment on the geometry it reconstructs from the SEG frames; each voxel of
    our grid is looked up by world position (which must land on dcmqi's voxel centres exactly).
    """
    exe = require_tool("segimage2itkimage", "pip install dcmqi")
    out = tmp / f"dcmqi_{seg_path.stem}"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [exe, "--inputDICOM", str(seg_path), "--outputDirectory", str(out), "-t", "nifti"],
        check=True,
        capture_output=True,
    )
    labels = np.zeros(volume.shape, dtype=np.uint16)
    ijk = np.indices(volume.shape).reshape(3, -1)
    world = volume.affine_ras @ np.vstack([ijk, np.ones(ijk.shape[1])])
    for number, label in segment_to_label.items():
        image = nib.load(out / f"{number}.nii.gz")
        data = np.asarray(image.dataobj)
        index = np.linalg.inv(image.affine) @ world
        rounded = np.rint(index[:3]).astype(int)
        assert np.allclose(index[:3], rounded, atol=1e-3), "dcmqi grid is not the source grid"
        inside = np.all((rounded >= 0) & (rounded < np.array(data.shape)[:, None]), axis=0)
        values = np.zeros(ijk.shape[1], dtype=bool)
        values[inside] = data[tuple(rounded[:, inside])] > 0
        flat = labels.reshape(-1)
        assert not np.any(flat[values]), f"segment {number} overlaps another segment in dcmqi's output"
        flat[values] = label
    return labels

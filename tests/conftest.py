from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

# The suite runs networks eagerly (bit-identical to nnUNetPredictor) and keeps nothing in ~/.cache; the
# compiled CPU path is tested with explicit cache folders (test_engine_compiled.py, test_app.py).
os.environ["TOTALSEG_MRI_COMPILE_CACHE"] = "off"

COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")
NIBABEL_DICOM = Path(nib.__file__).parent / "nicom" / "tests" / "data"


def require_tool(name: str, package: str) -> str:
    """The tool's path; a missing tool fails the test with what to install (never a silent skip)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install {package} (make setup-test does this)")
    return path


@pytest.fixture(scope="session")
def colin27_2mm() -> np.ndarray:
    """Debian mricron-data's Colin27 T1 head (1 mm), every second voxel: a real MR volume, 91x109x91."""
    if not COLIN27.exists():
        pytest.fail(f"{COLIN27} missing: apt-get install mricron-data (make setup-test does this)")
    data = np.asarray(nib.load(COLIN27).dataobj, dtype=np.float32)[::2, ::2, ::2]
    return np.ascontiguousarray(data)


@pytest.fixture(scope="session")
def philips_mprage(tmp_path_factory) -> Path:
    """nibabel's Philips Enhanced MR MPRAGE (176 frames, per-frame functional groups), decompressed."""
    folder = tmp_path_factory.mktemp("philips")
    target = folder / "philips_mprage.dcm"
    with gzip.open(NIBABEL_DICOM / "philips_mprage.dcm.gz") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


def run_dcm2niix(dicom_folder: Path, out_folder: Path) -> list[Path]:
    exe = require_tool("dcm2niix", "dcm2niix")
    out_folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "-z", "n", "-b", "n", "-f", "%s_%j", "-o", str(out_folder), str(dicom_folder)],
                   check=True, capture_output=True)
    return sorted(out_folder.glob("*.nii"))


@pytest.fixture(scope="module")
def two_parts(tmp_path_factory):
    """(models root, profile) of two random-weight nnU-Net parts (tests/engine_helpers.two_part_models)."""
    from tests.engine_helpers import two_part_models

    root = tmp_path_factory.mktemp("models")
    return root, two_part_models(root)
